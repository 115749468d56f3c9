"""Resolved rocksalt film vs the η blocking model (Lun et al., EES 2025; physics.md §2).

Lun et al. model an aged particle's uneven rocksalt layer by a flux ratio η = j_RSL/j_NMC on
part of the surface. ``nmcfx.solver.rocksalt`` estimates η from the film thickness δ with a
series-resistance argument, η(δ) = 1/(1 + δ/δ_c), δ_c = L/ratio (L the equivalent radius,
ratio = D_layered/D_rocksalt ≈ 3000). This study checks that estimate against a resolved
film: a 2.4 µm disk whose outline is covered over a quarter (−45°…45°) by a layer δ thick
(``geometries.disk_with_shell``: film added outside, NMC core = the unshelled disk) in which
D = D_chem(θ)/ratio (``TransportSolver(diffusivity_scale=...)``).

Surface model. At a fixed cell current the *total* current is fixed and the film decides how
it distributes. A prescribed uniform flux on the outer boundary would force the covered arc
to pass the same current as the free surface whatever the film (the film would only lower
the occupancy at its outer face) — it cannot redistribute anything. So every resolved run
uses Butler–Volmer kinetics with the particle potential φ_s as a global unknown fixed by the
galvanostatic constraint (``SurfaceSettings(model="butler_volmer")``): where the film
resists, the local overpotential is not enough and the current goes elsewhere. The flux
split is an output: η_eff = (current through the covered arc per unit length) / (current
through the free surface per unit length), assembled from the solver's BV current density.

Models compared, per δ and rate (all on the same core mesh, same protocol):

* ``resolved``   film resolved, D_film = D_chem/ratio, BV on the outer boundary;
* ``eta_bv``     no film, η(δ) scaling the exchange current of the arc (the solver's
                 rocksalt/blocking option with BV: "the same surface model");
* ``eta_flux``   no film, prescribed flux with j_arc = η(δ) j_free (Lun's model, physics.md §2);
* ``eta_fit``    as ``eta_flux`` but with η = 1/(1 + δ/δ_c,fit), δ_c,fit fitted to the resolved runs of
                 that rate (median over δ of δ·η_eff/(1 − η_eff)): what remains once the size of η is
                 right (the time dependence of the resolved flux split);
* ``free_bv`` / ``free_flux``: no film, no blocking (references).

Protocol: 0.95 → charge at the given mA/g (per NMC mass) until the NMC surface occupancy
reaches 0.2 anywhere. The NMC surface is the circle r = R: the free outline plus the
core/film interface — the film's own outer face is rocksalt, not NMC; where it reaches 0.2
is reported separately. Observables: θ maps at 10 and 20 min, θ at the centre and the
NMC-surface minimum, d (distance between the centre of the Li-rich core θ > 0.95 − 0.0475
and the particle's centre, core cells only), Li extracted at the cut-off (mAh per g NMC),
η_eff instantaneous and cumulative.

Run::

    python studies/lun2025_rocksalt_shell.py -o runs/rocksalt_shell            # full (~2-4 min)
    mpiexec -n 2 python studies/lun2025_rocksalt_shell.py -o runs/rocksalt_shell
    python studies/lun2025_rocksalt_shell.py --quick -o /tmp/rs                # one δ, coarse

Outputs in DIR: ``table.csv`` (one row per δ and rate: resolved vs models; plus a mesh/time-step
check row), ``cases.csv``
(one row per run), ``study.json`` (configs, mesh reports, versions, results), ``summary.md``,
figures ``theta_maps_<rate>.png``, ``traces_<rate>.png``, ``eta_eff.png``, ``capacity.png``;
per run ``cases/<name>/timeseries.csv``, ``images.npz`` and ``result.json``.

Every run is a case of the sweep engine: its parameters are :class:`nmcfx.spec.Params`
(digest over all of them), :func:`nmcfx.sweep.case.execute_case` runs :func:`case_task` in
this process (the meshes are cached across cases) and writes the atomic completion marker
``cases/<name>/case.json`` (or ``error.json``) last. Finished runs whose marker holds the
same digest are skipped, so an interrupted study resumes; ``--force`` reruns.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from mpi4py import MPI

import numpy as np

from nmcfx.solver.outputs import write_json

# --------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------

FULL = {
    "diameter_um": 2.4,
    "arc_deg": (-45.0, 45.0),
    "ratio": 3000.0,
    "theta0": 0.95,
    "cutoff": 0.2,
    "mesh_size_um": 0.1,
    "surface_mesh_size_um": 0.02,
    "shell_layers": 4,
    "deltas_nm": (0.25, 0.5, 1.0, 2.0, 4.0),
    "rates_mA_g": (100.0, 400.0),
    "snapshots_min": (5.0, 10.0, 20.0),
    "theta_tol": 2e-3,
    "convergence_check": True,
}
QUICK = FULL | {
    "mesh_size_um": 0.2,
    "surface_mesh_size_um": 0.05,
    "shell_layers": 2,
    "deltas_nm": (1.0,),
    "rates_mA_g": (100.0,),
    "convergence_check": False,
}
MODELS = ("resolved", "eta_bv", "eta_flux", "eta_fit", "free_bv", "free_flux")
FILM_MODELS = ("resolved", "eta_bv", "eta_flux", "eta_fit")  # cases with a thickness δ
LI_RICH_DROP = 0.05 * 0.95  # as the solver's Simulation (Lun 2025 Fig. 5d: contrast < 0.05)


@dataclass(frozen=True)
class Case:
    model: str
    delta_nm: float  # film thickness (resolved) or the thickness η is estimated from (eta_*)
    rate_mA_g: float
    ratio: float
    diameter_um: float
    arc_deg: tuple
    mesh_size_um: float
    surface_mesh_size_um: float
    shell_layers: int
    theta0: float
    cutoff: float
    snapshots_min: tuple
    theta_tol: float
    tag: str = ""  # e.g. "fine" for the convergence check
    eta_value: float | None = None  # eta_fit: the η to prescribe
    max_duration_min: float | None = None  # stop earlier than the cut-off (tests)

    @property
    def name(self) -> str:
        base = f"{self.model}_r{self.rate_mA_g:g}"
        if self.model not in ("free_bv", "free_flux"):
            base += f"_d{self.delta_nm:g}nm"
        if self.ratio != 3000.0 and self.model in FILM_MODELS:
            base += f"_ratio{self.ratio:g}"
        return base + (f"_{self.tag}" if self.tag else "")

    @property
    def kinetics(self) -> bool:
        return self.model in ("resolved", "eta_bv", "free_bv")

    @property
    def mesh_delta_nm(self) -> float:
        return self.delta_nm if self.model == "resolved" else 0.0

    def params(self):
        """The case as sweep parameters (:class:`nmcfx.spec.Params`): its digest is the case's identity."""
        from nmcfx.spec import Params

        return Params(asdict(self), name=self.name)

    @classmethod
    def from_params(cls, params) -> "Case":
        d = params.config
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def make_case(cfg: dict, model: str, delta: float, rate: float, **over) -> Case:
    c = Case(model=model, delta_nm=float(delta), rate_mA_g=float(rate), ratio=cfg["ratio"],
             diameter_um=cfg["diameter_um"], arc_deg=tuple(cfg["arc_deg"]), mesh_size_um=cfg["mesh_size_um"],
             surface_mesh_size_um=cfg["surface_mesh_size_um"], shell_layers=cfg["shell_layers"],
             theta0=cfg["theta0"], cutoff=cfg["cutoff"], snapshots_min=tuple(cfg["snapshots_min"]),
             theta_tol=cfg["theta_tol"])
    return replace(c, **over) if over else c


def study_cases(cfg: dict) -> list[Case]:
    cases = []
    for rate in cfg["rates_mA_g"]:
        cases += [make_case(cfg, "free_bv", 0.0, rate), make_case(cfg, "free_flux", 0.0, rate)]
        for d in cfg["deltas_nm"]:
            cases += [make_case(cfg, m, d, rate) for m in ("resolved", "eta_bv", "eta_flux")]
    if cfg.get("convergence_check"):
        # the resolved 1 nm film at 100 mA/g on a finer mesh: surface size / 2, twice the layers
        d = 1.0 if 1.0 in cfg["deltas_nm"] else cfg["deltas_nm"][0]
        cases.append(make_case(cfg, "resolved", d, cfg["rates_mA_g"][0], surface_mesh_size_um=cfg["surface_mesh_size_um"] / 2,
                               mesh_size_um=cfg["mesh_size_um"] / 2, shell_layers=2 * cfg["shell_layers"],
                               theta_tol=cfg["theta_tol"] / 4, tag="fine"))
    return cases


# --------------------------------------------------------------------------------------
# one run
# --------------------------------------------------------------------------------------

_MESHES: dict = {}


def particle_for(case: Case, comm):
    from nmcfx.geometries import disk_with_shell

    key = (case.mesh_delta_nm, case.diameter_um, case.arc_deg, case.mesh_size_um, case.surface_mesh_size_um,
           case.shell_layers, comm.size)
    if key not in _MESHES:
        _MESHES[key] = disk_with_shell(case.diameter_um, case.mesh_delta_nm, shell_arc_deg=case.arc_deg,
                                       mesh_size_um=case.mesh_size_um,
                                       surface_mesh_size_um=case.surface_mesh_size_um,
                                       shell_layers=case.shell_layers, comm=comm)
    return _MESHES[key]


def eta_model(case: Case, particle) -> tuple[float, float]:
    """(η(δ), δ_c in nm) of nmcfx.solver.rocksalt for the NMC core (the same for every model: the film's
    area is not part of the equivalent radius)."""
    from types import SimpleNamespace

    from nmcfx.solver import rocksalt

    core = SimpleNamespace(dim=2, measure=particle.core_measure, boundary_measure=particle.boundary_measure)
    dc = rocksalt.critical_thickness_nm(core, case.ratio, length_factor=1.0)  # the a-priori L = R estimate
    return rocksalt.eta_from_thickness(case.delta_nm, dc), dc


class ShellObserver:
    """Per-step film diagnostics: sector currents, η_eff, NMC-surface and film minima, d (core only),
    θ images at the snapshot times. Rank 0 keeps the rows."""

    def __init__(self, sv, particle, case: Case, pixels: int = 96):
        import ufl
        from dolfinx import fem
        from petsc4py import PETSc

        from nmcfx.solver.transport import PointProbe

        self.sv, self.p, self.case = sv, particle, case
        mesh = particle.mesh
        self.comm = mesh.comm
        tdim = mesh.topology.dim
        # sector currents (A m⁻², per unit outer length): the solver's nodal BV current density
        dsn = ufl.Measure("ds", domain=mesh, subdomain_data=particle.facet_tags,
                          metadata={"quadrature_rule": "vertex", "quadrature_degree": 1})
        self.forms = {}
        if sv.kinetics:
            self.forms = {s: fem.form(sv.eta[s] * sv._i_bv * dsn(particle.sectors[s])) for s in sv.reactive}
        # dofs: NMC surface (r = R) and the covered arc's outer face (the film's, or the NMC's if no film)
        V = sv.V
        n = V.dofmap.index_map.size_local
        xyz = V.tabulate_dof_coordinates()[:n]
        self.nmc_dofs = np.flatnonzero(particle.on_nmc_surface(xyz))
        mesh.topology.create_connectivity(tdim - 1, tdim)
        outer = fem.locate_dofs_topological(V, tdim - 1, particle.facet_tags.find(particle.sectors["blocked"]))
        self.outer_dofs = outer[outer < n]
        # core-only Li-rich region and its centre (the film is not NMC)
        chi = particle.region_indicator("core")
        self._thr = fem.Constant(mesh, PETSc.ScalarType(0.0))
        dxq = ufl.Measure("dx", domain=mesh, metadata={"quadrature_degree": 4})
        x = ufl.SpatialCoordinate(mesh)
        ind = ufl.conditional(ufl.gt(sv.theta, self._thr), 1.0, 0.0) * chi
        self._lr = [fem.form(ind * dxq)] + [fem.form(ind * x[i] * dxq) for i in range(2)]
        one = [fem.assemble_scalar(fem.form(chi * dxq))] + [fem.assemble_scalar(fem.form(chi * x[i] * dxq))
                                                             for i in range(2)]
        one = self._sum(np.array(one))
        self.core_area = one[0]
        self.core_com = one[1:] / one[0]
        self._core_theta = fem.form(chi * sv.theta * dxq)
        # θ image on a pixel grid (figures)
        R = 0.5 * case.diameter_um
        g = np.linspace(-1.08 * R, 1.08 * R, pixels)
        X, Y = np.meshgrid(g, g)
        self.extent = (g[0], g[-1], g[0], g[-1])
        self._img = PointProbe(mesh, np.column_stack([X.ravel(), Y.ravel()]), allow_outside=True)
        self.images: dict[float, np.ndarray] = {}
        self.rows: list[dict] = []
        self.Q = {"blocked": 0.0, "surface": 0.0}
        self.t_prev = 0.0

    def _sum(self, a):
        out = np.empty_like(a)
        self.comm.Allreduce(np.ascontiguousarray(a, dtype=float), out, op=MPI.SUM)
        return out

    # ---- quantities
    def nmc_surface_min(self) -> float:
        th = self.sv.theta.x.array
        lo = th[self.nmc_dofs].min() if self.nmc_dofs.size else np.inf
        return self.comm.allreduce(float(lo), op=MPI.MIN)

    def outer_min(self) -> float:
        th = self.sv.theta.x.array
        lo = th[self.outer_dofs].min() if self.outer_dofs.size else np.inf
        return self.comm.allreduce(float(lo), op=MPI.MIN)

    def sector_currents(self) -> dict[str, float]:
        """Mean current density (A m⁻²) through each reactive sector, per unit length of the sector."""
        from dolfinx import fem

        sv = self.sv
        if sv.kinetics:
            sv._update_coefficients()  # linearisation point = the accepted state
            vals = self._sum(np.array([fem.assemble_scalar(self.forms[s]) for s in sv.reactive]))
            return {s: float(v) / sv.sector_measure[s] for s, v in zip(sv.reactive, vals)}
        return {s: float(sv.q[s].value) / sv._scale for s in sv.reactive}

    def core_offset(self) -> tuple[float, float]:
        from dolfinx import fem

        self._thr.value = self.case.theta0 - LI_RICH_DROP
        v = self._sum(np.array([fem.assemble_scalar(f) for f in self._lr]))
        frac = v[0] / self.core_area
        if v[0] <= 1e-9 * self.core_area:
            return frac, float("nan")
        return frac, float(np.linalg.norm(v[1:] / v[0] - self.core_com))

    # ---- observer API
    def start(self, sim, restore=None):
        self.sim = sim

    def record(self, sim, rec):
        from dolfinx import fem

        cur = self.sector_currents()
        dt = rec.time_s - self.t_prev
        self.t_prev = rec.time_s
        for s in self.Q:
            self.Q[s] += dt * cur.get(s, 0.0)
        frac, d = self.core_offset()
        core_theta = self.comm.allreduce(fem.assemble_scalar(self._core_theta), op=MPI.SUM)
        jb, js = cur.get("blocked", float("nan")), cur.get("surface", float("nan"))
        row = {
            "time_s": rec.time_s,
            "theta_center": rec.theta_center,
            "theta_nmc_surface_min": rec.theta_surface_min,  # the stop quantity (see _ShellSimulation)
            "theta_outer_min": self.outer_min(),
            "theta_core_mean": core_theta / self.core_area,
            "voltage_V": rec.voltage_V,
            "current_mA_g": rec.current_mA_g,
            "j_blocked_A_m2": jb,
            "j_free_A_m2": js,
            "eta_eff": jb / js if js else float("nan"),
            "eta_eff_cumulative": self.Q["blocked"] / self.Q["surface"] if self.Q["surface"] else float("nan"),
            "li_rich_fraction": frac,
            "d_um": d,
            "li_extracted_mol": rec.li_extracted_mol,
            "capacity_mAh_g_nmc": self.li_to_capacity(rec.li_extracted_mol),
            "mass_balance_error": rec.mass_balance_error,
            "dt_s": rec.dt_s,
        }
        self.rows.append(row)

    def li_to_capacity(self, mol: float) -> float:
        """mAh per g of NMC (the core), from the Li that left the particle."""
        sim = self.sim
        depth = sim.settings.thickness_um
        n_sites = sim.material.site_concentration * self.core_area * depth * 1e-18  # mol of sites in the core
        return mol / n_sites * sim.material.theoretical_capacity_mAh_g

    def snapshot(self, sim, t):
        img = self._img.evaluate(self.sv.theta)
        img[~self._img.inside] = np.nan
        self.images[float(t)] = img.reshape(int(math.isqrt(img.size)), -1)

    def step_end(self, sim, info):
        pass

    def finish(self, sim):
        pass


def _shell_simulation_class():
    from nmcfx.solver.simulation import Simulation

    class ShellSimulation(Simulation):
        """Stops on the NMC surface: ``theta_surface_min`` is the minimum over r = R (free outline and
        core/film interface), not over the film's outer face."""

        def __init__(self, *args, shell_observer, **kw):
            self._shell = shell_observer
            super().__init__(*args, **kw)

        def observe(self):
            obs = super().observe()
            obs["theta_outer_min"] = obs["theta_surface_min"]
            obs["theta_surface_min"] = self._shell.nmc_surface_min()
            return obs

    return ShellSimulation


def run_case(case: Case, comm=MPI.COMM_WORLD) -> tuple[dict, list[dict], dict]:
    """Run one case; return (result, timeseries rows, {t: image}) on every rank (rows/images complete
    on all ranks)."""
    from nmcfx.imaging.forward import release_solver
    from nmcfx.materials import get_material
    from nmcfx.solver.protocol import Protocol, Step, StopCondition
    from nmcfx.solver.simulation import SolverSettings
    from nmcfx.solver.surface import SurfaceSettings
    from nmcfx.solver.transport import TransportSolver

    if case.model not in MODELS:
        raise ValueError(f"unknown model {case.model!r}; one of {MODELS}")
    wall0 = time.perf_counter()
    p = particle_for(case, comm)
    mat = get_material()
    eta, dc = eta_model(case, p)
    weights, scale = {}, None
    if case.model in ("eta_bv", "eta_flux"):
        weights = {"blocked": eta}
    if case.model == "eta_fit":
        weights = {"blocked": case.eta_value}
    if case.model == "resolved":
        scale = p.diffusivity_scale(case.ratio)
    surface = SurfaceSettings(model="butler_volmer") if case.kinetics else None
    settings = SolverSettings(theta_tol=case.theta_tol)
    sv = TransportSolver(p, mat, degree=settings.degree, time_scheme=settings.time_scheme, surface=surface,
                         sector_weights=weights, diffusivity_scale=scale)
    obs = ShellObserver(sv, p, case)
    # the applied current is per g of NMC (the core): Simulation normalises by the whole mesh area
    rate = case.rate_mA_g * p.core_measure / p.measure
    cap_min = 60.0 * mat.theoretical_capacity_mAh_g / case.rate_mA_g
    if case.max_duration_min is not None:
        cap_min = min(cap_min, case.max_duration_min)
    step = Step("charge", current_mA_g=rate, duration_s=60.0 * cap_min,
                until=(StopCondition("theta_surface_min", "<=", case.cutoff),))
    prot = Protocol((step,), case.theta0)
    Sim = _shell_simulation_class()
    sim = Sim(sv, mat, prot, settings, snapshot_times_s=[60.0 * t for t in case.snapshots_min], observers=[obs],
              center=(0.0, 0.0), shell_observer=obs)
    try:
        sim.run()
    finally:
        release_solver(sv)  # its PETSc objects now, on every rank alike (not in a later, rank-local GC)
    wall = comm.allreduce(time.perf_counter() - wall0, op=MPI.MAX)
    rows = obs.rows
    last = rows[-1]
    dvals = np.array([r["d_um"] for r in rows], dtype=float)
    i_dmax = int(np.nanargmax(dvals)) if np.isfinite(dvals).any() else None
    res = {
        "name": case.name,
        "key": case.params().digest,
        "case": asdict(case),
        "eta_nominal": eta if case.model in FILM_MODELS else 1.0,
        "eta_prescribed": weights.get("blocked", 1.0),
        "delta_c_nm": dc,
        "end_time_min": last["time_s"] / 60.0,
        "end_reason": sim.step_log[-1]["reason"],
        "capacity_mAh_g_nmc": last["capacity_mAh_g_nmc"],
        "li_extracted_mol": last["li_extracted_mol"],
        "eta_eff_cumulative_end": last["eta_eff_cumulative"],
        "max_abs_mass_balance_error": float(max(abs(r["mass_balance_error"]) for r in rows)),
        "outer_reaches_cutoff_min": _first_crossing(rows, "theta_outer_min", case.cutoff),
        "d_max_um": None if i_dmax is None else float(dvals[i_dmax]),
        "d_max_time_min": None if i_dmax is None else rows[i_dmax]["time_s"] / 60.0,
        "mesh": {k: p.info.get(k) for k in ("num_cells", "num_vertices", "num_cells_core", "num_cells_shell",
                                               "quality_min", "quality_mean", "quality_min_core",
                                               "quality_min_shell", "shell_aspect_ratio", "h_min", "h_max")}
                | {"core_area_um2": p.core_measure, "shell_area_um2": p.shell_measure,
                   "blocked_length_um": p.sector_measure["blocked"], "dofs": sv.num_dofs},
        "steps": sv.counters.steps,
        "rejected_steps": sv.counters.rejected_steps,
        "newton_iterations": sv.counters.newton_iterations,
        "wall_time_s": wall,
        "mpi_size": comm.size,
    }
    for tm in case.snapshots_min:
        res[f"at_{tm:g}min"] = _interp_row(rows, 60.0 * tm)
    return res, rows, obs.images | {"extent": obs.extent}


def _first_crossing(rows, col, value):
    t = np.array([r["time_s"] for r in rows])
    v = np.array([r[col] for r in rows])
    below = np.flatnonzero(v <= value + 1e-9)
    if not below.size:
        return None
    i = below[0]
    if i == 0:
        return 0.0
    f = (v[i - 1] - value) / (v[i - 1] - v[i])
    return float((t[i - 1] + f * (t[i] - t[i - 1])) / 60.0)


def _interp_row(rows, t_s):
    """Values at time t (s) (linear between records); None if the run ended before."""
    t = np.array([r["time_s"] for r in rows])
    if t_s > t[-1] * (1 + 1e-9):
        return None
    out = {}
    for k in rows[0]:
        v = np.array([r[k] for r in rows], dtype=float)
        ok = np.isfinite(v)
        if k == "d_um":  # NaN once the Li-rich core has gone: no interpolation across
            i = int(np.searchsorted(t, t_s - 1e-9))
            out[k] = float(v[min(i, len(v) - 1)])
        elif ok.sum() >= 2:
            out[k] = float(np.interp(t_s, t[ok], v[ok]))
        else:
            out[k] = float("nan")
    return out


# --------------------------------------------------------------------------------------
# study driver (resumable)
# --------------------------------------------------------------------------------------


TASK = "nmcfx.studies.lun2025_rocksalt_shell:case_task"


def _case_dir(out: Path, case: Case) -> Path:
    return out / "cases" / case.name


def case_task(spec, casedir, comm) -> dict:
    """The sweep task of one case (``Params`` of a :class:`Case`): run it, write its files
    (``timeseries.csv``, ``images.npz``, ``result.json``); the sweep engine writes the marker."""
    import gc

    res, rows, images = run_case(Case.from_params(spec), comm)
    gc.collect()  # the run's reference cycles (PETSc objects: collective destroy) freed on every rank here
    if comm.rank == 0:
        save_case(Path(casedir), res, rows, images)
    comm.Barrier()
    return _flat_case(res)


def load_finished(out: Path, case: Case):
    """(result, rows, images) of a case that finished with its current digest, else None."""
    from nmcfx.sweep.definition import case_digest
    from nmcfx.sweep.store import SweepDir

    if SweepDir(out).state(case.name, case_digest(case.params().digest, TASK)).state != "done":
        return None
    d = _case_dir(out, case)
    try:
        res = json.loads((d / "result.json").read_text())
        with open(d / "timeseries.csv") as fh:
            rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(fh)]
        npz = np.load(d / "images.npz")
        images = {float(k[2:]): npz[k] for k in npz.files if k.startswith("t=")}
        images["extent"] = tuple(npz["extent"])
        return res, rows, images
    except (OSError, ValueError, KeyError):
        return None


def save_case(d: Path, res, rows, images):
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "timeseries.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: repr(float(v)) for k, v in r.items()})
    np.savez(d / "images.npz", extent=np.array(images["extent"]),
             **{f"t={t:g}": img for t, img in images.items() if t != "extent"})
    write_json(d / "result.json", res)


def run_study(out: Path, cfg: dict, *, comm=MPI.COMM_WORLD, force: bool = False, log=print) -> dict:
    from nmcfx.sweep.case import execute_case
    from nmcfx.sweep.definition import case_digest

    out = Path(out)
    root = comm.rank == 0
    if root:
        out.mkdir(parents=True, exist_ok=True)
    cases = study_cases(cfg)
    total = len(cases) + len(cfg["rates_mA_g"]) * len(cfg["deltas_nm"])
    results = {}
    t0 = time.perf_counter()

    def run(case):
        n = len(results) + 1
        done = None if (force or not root) else load_finished(out, case)
        done = comm.bcast(done, root=0)
        if done is not None:
            results[case.name] = done
            if root:
                log(f"[{n}/{total}] {case.name}: finished earlier, skipped")
            return
        params = case.params()
        payload = {"index": n - 1, "name": case.name, "spec": params.to_dict(),
                   "digest": case_digest(params.digest, TASK), "task": TASK}
        outcome = execute_case(payload, out, comm)
        if outcome["status"] != "done":
            raise RuntimeError(f"case {case.name} failed: {outcome['reason']} (see {_case_dir(out, case)}/error.json)")
        done = comm.bcast(load_finished(out, case) if root else None, root=0)
        res = done[0]
        if root:
            log(f"[{n}/{total}] {case.name}: {res['end_reason']} at {res['end_time_min']:.1f} min, "
                f"{res['capacity_mAh_g_nmc']:.1f} mAh/g, η_eff {res['eta_eff_cumulative_end']:.3f}, "
                f"{res['steps']} steps, {res['wall_time_s']:.1f} s")
        results[case.name] = done

    for case in cases:
        run(case)
    # second pass: the flux-ratio model with δ_c fitted to the resolved runs of each rate
    fits = comm.bcast(fit_delta_c(cfg, results) if root else None, root=0)
    for rate in cfg["rates_mA_g"]:
        for d in cfg["deltas_nm"]:
            run(fit_case(cfg, d, rate, fits[rate]))
    wall = time.perf_counter() - t0
    if root:
        table = comparison_table(cfg, results)
        write_csv(out / "table.csv", table)
        write_csv(out / "cases.csv", [_flat_case(r[0]) for r in results.values()])
        study = {
            "title": "Resolved rocksalt film vs the η blocking model (Lun 2025)",
            "config": cfg,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": sys.argv,
            "mpi_size": comm.size,
            "wall_time_s_this_invocation": wall,
            "versions": _versions(),
            "meshes": {name: r[0]["mesh"] for name, r in results.items()},
            "results": {name: r[0] for name, r in results.items()},
            "table": table,
        }
        write_json(out / "study.json", study)
        make_figures(out, cfg, results)
        (out / "summary.md").write_text(summary_markdown(cfg, table, results))
        log(f"study written to {out} ({wall:.1f} s)")
    return results


def fit_delta_c(cfg: dict, results: dict) -> dict:
    """Per rate: median over δ of δ·η_eff/(1 − η_eff) (resolved runs, cumulative η_eff to the cut-off)."""
    out = {}
    for rate in cfg["rates_mA_g"]:
        vals = []
        for d in cfg["deltas_nm"]:
            e = results[make_case(cfg, "resolved", d, rate).name][0]["eta_eff_cumulative_end"]
            if 0.0 < e < 1.0:
                vals.append(d * e / (1.0 - e))
        out[rate] = float(np.median(vals)) if vals else float("nan")
    return out


def fit_case(cfg: dict, delta: float, rate: float, delta_c_fit: float) -> Case:
    eta = 1.0 / (1.0 + delta / delta_c_fit)
    return make_case(cfg, "eta_fit", delta, rate, eta_value=round(eta, 12))


def _versions() -> dict:
    from nmcfx.solver.run import git_revision, package_versions

    return {"packages": package_versions(), "git_revision": git_revision(), "python": sys.version.split()[0]}


def _flat_case(res: dict) -> dict:
    out = {"name": res["name"], "model": res["case"]["model"], "delta_nm": res["case"]["delta_nm"],
           "rate_mA_g": res["case"]["rate_mA_g"], "ratio": res["case"]["ratio"], "tag": res["case"]["tag"]}
    for k in ("eta_nominal", "eta_prescribed", "end_time_min", "end_reason", "capacity_mAh_g_nmc",
              "eta_eff_cumulative_end", "d_max_um", "d_max_time_min", "outer_reaches_cutoff_min",
              "max_abs_mass_balance_error", "steps", "newton_iterations", "wall_time_s"):
        out[k] = res[k]
    for k in ("num_cells", "num_cells_shell", "quality_min", "dofs"):
        out[f"mesh_{k}"] = res["mesh"].get(k)
    for tm in res["case"]["snapshots_min"]:
        at = res.get(f"at_{tm:g}min") or {}
        for q in ("theta_center", "theta_nmc_surface_min", "d_um", "eta_eff", "eta_eff_cumulative"):
            out[f"{q}_{tm:g}min"] = at.get(q)
    return out


def _image_diff(a, b) -> float:
    if a is None or b is None:
        return float("nan")
    m = np.isfinite(a) & np.isfinite(b)
    return float(np.max(np.abs(a[m] - b[m]))) if m.any() else float("nan")


CMP = ("resolved", "eta_flux", "eta_fit", "eta_bv")  # column order of tables and maps
LABEL = {"resolved": "resolved film", "eta_flux": "η(δ) flux ratio", "eta_fit": "fitted-η flux ratio",
         "eta_bv": "η(δ) on i0 (BV)"}


def comparison_table(cfg: dict, results: dict) -> list[dict]:
    """One row per (rate, δ): the resolved film against the η models."""
    rows = []
    get = results.get
    for rate in cfg["rates_mA_g"]:
        free = get(make_case(cfg, "free_bv", 0.0, rate).name)
        for d in cfg["deltas_nm"]:
            runs = {m: get(make_case(cfg, m, d, rate).name) for m in CMP}
            runs = {m: r for m, r in runs.items() if r is not None}
            res = runs["resolved"][0]
            row = {"rate_mA_g": rate, "delta_nm": d, "ratio": cfg["ratio"], "delta_c_nm": res["delta_c_nm"],
                   "eta_model": res["eta_nominal"]}
            # the thickness scale that would make 1/(1 + δ/δ_c) reproduce the resolved η_eff
            e = res["eta_eff_cumulative_end"]
            row["delta_c_fit_nm"] = d * e / (1.0 - e) if 0 < e < 1 else float("nan")
            if "eta_fit" in runs:
                row["eta_fit_prescribed"] = runs["eta_fit"][0]["eta_prescribed"]
            for m, r in runs.items():
                row[f"eta_eff_{m}"] = r[0]["eta_eff_cumulative_end"]
            for tm in cfg["snapshots_min"]:
                for m, r in runs.items():
                    at = r[0].get(f"at_{tm:g}min")
                    row[f"eta_eff_{m}_{tm:g}min"] = None if at is None else at["eta_eff"]
            for m, r in list(runs.items()) + [("free", free)]:
                row[f"capacity_{m}_mAh_g"] = r[0]["capacity_mAh_g_nmc"] if r else None
            for m, r in list(runs.items()) + [("free", free)]:
                row[f"d_max_{m}_um"] = r[0]["d_max_um"] if r else None
            for tm in cfg["snapshots_min"]:
                for m, r in runs.items():
                    at = r[0].get(f"at_{tm:g}min")
                    row[f"d_{m}_{tm:g}min_um"] = None if at is None else at["d_um"]
                for m, r in runs.items():
                    at = r[0].get(f"at_{tm:g}min")
                    row[f"theta_center_{m}_{tm:g}min"] = None if at is None else at["theta_center"]
                for m in CMP[1:]:
                    if m in runs:
                        row[f"max_dtheta_resolved_vs_{m}_{tm:g}min"] = _image_diff(
                            runs["resolved"][2].get(60.0 * tm), runs[m][2].get(60.0 * tm))
            row["outer_reaches_cutoff_min"] = res["outer_reaches_cutoff_min"]
            for m, r in runs.items():
                row[f"end_time_{m}_min"] = r[0]["end_time_min"]
            rows.append(row)
    for r in [r for r in results.values() if r[0]["case"]["tag"] == "fine"]:
        c = r[0]["case"]
        base = get(make_case(cfg, "resolved", c["delta_nm"], c["rate_mA_g"]).name)
        if base:
            rows.append({"rate_mA_g": c["rate_mA_g"], "delta_nm": c["delta_nm"], "ratio": c["ratio"],
                         "note": "mesh/time-step check: fine run vs study run",
                         "eta_eff_resolved": base[0]["eta_eff_cumulative_end"],
                         "eta_eff_resolved_fine": r[0]["eta_eff_cumulative_end"],
                         "capacity_resolved_mAh_g": base[0]["capacity_mAh_g_nmc"],
                         "capacity_resolved_fine_mAh_g": r[0]["capacity_mAh_g_nmc"],
                         "d_max_resolved_um": base[0]["d_max_um"], "d_max_resolved_fine_um": r[0]["d_max_um"]})
    return rows


def write_csv(path: Path, rows: list[dict]):
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: _cell(r.get(k)) for k in keys})


def _cell(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


# --------------------------------------------------------------------------------------
# figures and summary (rank 0)
# --------------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _rows(r, key):
    return np.array([q[key] for q in r[1]], dtype=float)


def make_figures(out: Path, cfg: dict, results: dict):
    plt = _plt()
    get = results.get
    R = 0.5 * cfg["diameter_um"]
    a0, a1 = (math.radians(a) for a in cfg["arc_deg"])
    arc = np.linspace(a0, a1, 50)
    arc_xy = (1.04 * R * np.cos(arc), 1.04 * R * np.sin(arc))
    deltas = cfg["deltas_nm"]
    times = cfg["snapshots_min"]
    colors = plt.cm.viridis(np.linspace(0.0, 0.85, len(deltas)))
    styles = {"resolved": "-", "eta_flux": ":", "eta_fit": "-.", "eta_bv": "--"}
    for rate in cfg["rates_mA_g"]:
        # θ maps: rows = no film + each δ; columns = model × snapshot time
        models = [m for m in CMP if get(make_case(cfg, m, deltas[0], rate).name)]
        nrow, ncol = 1 + len(deltas), len(models) * len(times)
        fig, axes = plt.subplots(nrow, ncol, figsize=(1.45 * ncol + 1.0, 1.55 * nrow + 0.6), squeeze=False)
        fig.subplots_adjust(left=0.02, right=0.93, bottom=0.02, top=0.9, wspace=0.06, hspace=0.32)
        finite = [img[np.isfinite(img)] for r in results.values() if r[0]["case"]["rate_mA_g"] == rate
                  for t, img in r[2].items() if t != "extent"]
        vmin = float(min(f.min() for f in finite)) if finite else 0.2
        im = None
        for i in range(nrow):
            for j in range(ncol):
                ax = axes[i, j]
                ax.set_xticks([])
                ax.set_yticks([])
                m, tm = models[j // len(times)], times[j % len(times)]
                if i == 0:
                    r = get(make_case(cfg, "free_bv", 0.0, rate).name) if j < len(times) else None
                    label = "no film"
                else:
                    r = get(make_case(cfg, m, deltas[i - 1], rate).name)
                    label = f"{LABEL[m]}\nδ={deltas[i - 1]:g} nm"
                if r is None:
                    ax.axis("off")
                    continue
                img = r[2].get(60.0 * tm)
                ax.set_title(f"{label}, {tm:g} min", fontsize=5.5)
                if img is None:
                    ax.text(0.5, 0.5, "ended", ha="center", va="center", transform=ax.transAxes, fontsize=7)
                    continue
                im = ax.imshow(img, origin="lower", extent=r[2]["extent"], vmin=vmin, vmax=cfg["theta0"],
                               cmap="viridis")
                if i > 0:
                    ax.plot(*arc_xy, color="crimson", lw=1.2)
        if im is not None:
            cax = fig.add_axes((0.945, 0.3, 0.012, 0.4))
            fig.colorbar(im, cax=cax, label="θ")
        fig.suptitle(f"θ maps, {rate:g} mA/g, film on the red arc (¼ of the outline)", fontsize=9)
        fig.savefig(out / f"theta_maps_{rate:g}.png", dpi=110)
        plt.close(fig)

        # traces: centre θ, NMC-surface min, d, η_eff(t)
        fig, axes = plt.subplots(2, 2, figsize=(10, 7))
        free = get(make_case(cfg, "free_bv", 0.0, rate).name)
        t_end = free[0]["end_time_min"] if free else None
        for k, d in enumerate(deltas):
            for m, ls in styles.items():
                r = get(make_case(cfg, m, d, rate).name)
                if r is None:
                    continue
                t = _rows(r, "time_s") / 60.0
                lab = f"δ={d:g} nm" if m == "resolved" else None
                axes[0, 0].plot(t, _rows(r, "theta_center"), ls, color=colors[k], lw=1.1, label=lab)
                axes[0, 1].plot(t, _rows(r, "theta_nmc_surface_min"), ls, color=colors[k], lw=1.1)
                axes[1, 0].plot(t, _rows(r, "d_um"), ls, color=colors[k], lw=1.1)
                if m in ("resolved", "eta_bv"):
                    axes[1, 1].plot(t, _rows(r, "eta_eff"), ls, color=colors[k], lw=1.1)
                elif m == "eta_flux":
                    axes[1, 1].axhline(r[0]["eta_nominal"], color=colors[k], ls=":", lw=1.0)
        if free:
            t = _rows(free, "time_s") / 60.0
            axes[0, 0].plot(t, _rows(free, "theta_center"), color="k", lw=1, label="no film")
            axes[0, 1].plot(t, _rows(free, "theta_nmc_surface_min"), color="k", lw=1)
            axes[1, 0].plot(t, _rows(free, "d_um"), color="k", lw=1)
        for ax, yl in zip(axes.flat, ("θ centre", "min θ on the NMC surface", "d (µm), Li-rich core offset",
                                      "η_eff = j_arc / j_free (instantaneous)")):
            ax.set_xlabel("time (min)")
            ax.set_ylabel(yl)
            ax.grid(alpha=0.3)
        if t_end:
            axes[0, 0].set_xlim(0, 0.5 * t_end)
        axes[0, 0].legend(fontsize=7, frameon=False)
        axes[1, 1].set_yscale("log")
        axes[1, 1].set_ylim(1e-2, 1.1)
        axes[0, 1].text(0.02, 0.03, "solid: resolved film  dotted: η(δ) flux ratio  dash-dot: fitted-η flux ratio"
                        "\ndashed: η(δ) on i0 (BV)", transform=axes[0, 1].transAxes, fontsize=7)
        fig.suptitle(f"Resolved rocksalt film vs η models, {rate:g} mA/g", fontsize=10)
        fig.tight_layout()
        fig.savefig(out / f"traces_{rate:g}.png", dpi=120)
        plt.close(fig)

    # η_eff and capacity vs δ
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    mk = dict(zip(cfg["rates_mA_g"], "os^vD"))
    dc = None
    for rate in cfg["rates_mA_g"]:
        series = {m: [get(make_case(cfg, m, d, rate).name) for d in deltas] for m in CMP}
        col = {"resolved": "tab:red", "eta_flux": "tab:green", "eta_fit": "tab:purple", "eta_bv": "tab:blue"}
        for m, rs in series.items():
            if any(r is None for r in rs):
                continue
            if m != "eta_flux":
                axes[0].plot(deltas, [r[0]["eta_eff_cumulative_end"] for r in rs], styles[m] + mk[rate],
                             color=col[m], label=f"{LABEL[m]}, {rate:g} mA/g", ms=4)
            axes[1].plot(deltas, [r[0]["capacity_mAh_g_nmc"] for r in rs], styles[m] + mk[rate], color=col[m],
                         label=f"{LABEL[m]}, {rate:g} mA/g", ms=4)
        free = get(make_case(cfg, "free_bv", 0.0, rate).name)
        if free:
            axes[1].axhline(free[0]["capacity_mAh_g_nmc"], color="k", lw=0.8, ls="-.")
        dc = series["resolved"][0][0]["delta_c_nm"]
    dd = np.geomspace(min(deltas) / 2, max(deltas) * 2, 100)
    axes[0].plot(dd, 1 / (1 + dd / dc), color="k", lw=1, label=f"rocksalt.py η(δ), δ_c = {dc:.2f} nm")
    axes[0].set_xscale("log")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("film thickness δ (nm)")
    axes[0].set_ylabel("η_eff: charge per length through arc / free, to cut-off")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("film thickness δ (nm)")
    axes[1].set_ylabel("Li extracted at NMC-surface θ = 0.2 (mAh/g)")
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    for ax in axes:
        ax.xaxis.set_major_locator(FixedLocator(list(deltas)))
        ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6.5, frameon=False)
    fig.tight_layout()
    fig.savefig(out / "eta_eff.png", dpi=120)
    plt.close(fig)


def summary_markdown(cfg: dict, table: list[dict], results: dict) -> str:
    lines = ["# Resolved rocksalt film vs η models (generated by lun2025_rocksalt_shell.py)", "",
             (f"{cfg['diameter_um']:g} µm disk, film on {cfg['arc_deg'][0]:g}°…{cfg['arc_deg'][1]:g}°, "
              f"D_film = D_chem/{cfg['ratio']:g}, θ0 = {cfg['theta0']}, charge to NMC-surface θ = {cfg['cutoff']}. "
              "η_eff = charge per unit length through the covered arc / through the free surface, to the cut-off."),
             "",
             ("| rate (mA/g) | δ (nm) | η(δ) rocksalt.py | η_eff resolved | δ_c fit (nm) | η_eff η-on-i0 (BV) | "
              "d_max resolved / η-flux / fit-flux / η-BV (µm) | Li out resolved / η-flux / fit-flux / η-BV / "
              "no film (mAh/g) |"),
             "|---|---|---|---|---|---|---|---|"]

    def f(v, fmt):
        return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt)

    for r in table:
        if "note" in r:
            continue
        dmax = " / ".join(f(r.get(f"d_max_{m}_um"), ".3f") for m in ("resolved", "eta_flux", "eta_fit", "eta_bv"))
        cap = " / ".join(f(r.get(f"capacity_{m}_mAh_g"), ".1f")
                         for m in ("resolved", "eta_flux", "eta_fit", "eta_bv", "free"))
        lines.append(f"| {r['rate_mA_g']:g} | {r['delta_nm']:g} | {r['eta_model']:.3f} | {r['eta_eff_resolved']:.3f} "
                     f"| {f(r['delta_c_fit_nm'], '.3f')} | {f(r.get('eta_eff_eta_bv'), '.3f')} | {dmax} | {cap} |")
    for r in table:
        if "note" in r:
            lines += ["", (f"Convergence ({r['note']}, δ = {r['delta_nm']:g} nm, {r['rate_mA_g']:g} mA/g): η_eff "
                           f"{r['eta_eff_resolved']:.4f} → {r['eta_eff_resolved_fine']:.4f}, capacity "
                           f"{r['capacity_resolved_mAh_g']:.2f} → {r['capacity_resolved_fine_mAh_g']:.2f} mAh/g, "
                           f"d_max {f(r['d_max_resolved_um'], '.3f')} → {f(r['d_max_resolved_fine_um'], '.3f')} µm.")]
    walls = [r[0]["wall_time_s"] for r in results.values()]
    lines += ["", (f"{len(results)} runs, {sum(walls):.0f} s of solver wall time in total "
                   f"(max {max(walls):.1f} s per run)."), ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------


def main(argv=None, comm=MPI.COMM_WORLD) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--output", default="runs/studies/lun2025_rocksalt_shell", metavar="DIR",
                    help="output directory (default: runs/studies/lun2025_rocksalt_shell)")
    ap.add_argument("--quick", action="store_true", help="one thickness (1 nm), 100 mA/g, coarse mesh")
    ap.add_argument("--deltas", type=float, nargs="+", metavar="NM", help="film thicknesses (nm)")
    ap.add_argument("--rates", type=float, nargs="+", metavar="MA_G", help="specific currents (mA/g)")
    ap.add_argument("--ratio", type=float, help="D_layered / D_rocksalt (default 3000)")
    ap.add_argument("--force", action="store_true", help="rerun finished cases")
    args = ap.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    if args.deltas:
        cfg["deltas_nm"] = tuple(args.deltas)
    if args.rates:
        cfg["rates_mA_g"] = tuple(args.rates)
    if args.ratio:
        cfg["ratio"] = args.ratio
    cfg["quick"] = bool(args.quick)
    log = print if comm.rank == 0 else (lambda *a, **k: None)
    run_study(Path(args.output), cfg, comm=comm, force=args.force, log=lambda m: log(m, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
