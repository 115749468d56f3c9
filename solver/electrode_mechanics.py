"""Stress in the particles of a composite electrode: one-way θ → σ (physics.md §4, §6).

With ``[mechanics]`` on a ``[geometry] shape = "electrode"`` (or ``"electrode_3d"``) run, the
particles' stress follows their θ after every accepted step, in one of two models
(``electrode_bonding``):

* ``"free"`` (the default): every NMC particle gets its own
  :class:`~nmcfx.solver.mechanics.ElasticitySolver` on its submesh, traction-free on its whole
  boundary, NMC|CBD and NMC|NMC contacts included, rigid-body modes removed. The CBD carries no
  load: the limit of a compliant binder (E_CBD ≪ E_NMC).
* ``"bonded"``: the particles and the carbon-binder network are one elastic body
  (:class:`BondedElectrode`, a :class:`~nmcfx.solver.bonded_mechanics.BondedElasticitySolver` on the
  solid NMC ∪ CBD, the mesh of φ_s): perfectly bonded contacts, NMC stiffness and eigenstrain in the
  particles, an isotropic CBD (``cbd_youngs_modulus_GPa``, ``cbd_poisson_ratio``; defaults and
  sources in ``materials/data/README-mechanics.md``) without eigenstrain, the current collector
  clamped (u = 0) and every other boundary traction-free (the pores hold electrolyte, no load).
  2D sections default to plane strain (the coating is held along its depth by the foil). A
  particle that swells or shrinks against its neighbours and the network is stressed where a free
  one would not be. Each particle's columns are read from the body's stress on that particle
  (:class:`ParticleView`); the CBD adds ``cbd_sigma1_max_MPa`` and ``cbd_von_mises_max_MPa`` and
  the body's u and σ go to ``displacement_body.bp`` / ``stress_body.bp`` (VTX) at the snapshots.

:class:`ElectrodeMechanicsObserver` solves all particles after every accepted step and adds to
each row of ``timeseries.csv``, per particle ``<P>``:

    sigma1_max_MPa_<P>          peak tensile (max principal) stress in the particle
    sigma1_max_r_over_R_<P>     where: distance from the particle's centroid / its largest radius
    hoop_surface_max_MPa_<P>    peak surface hoop stress t·σ·t (tangent of the particle's boundary)
    sigma1_max_MPa, hoop_surface_max_MPa   the largest over all particles

and writes ``particles_stress.csv`` (per charge/discharge step and particle: the onset of
``particles.csv``, the peak σ1 and hoop stress and when they occur, the peak time minus the onset),
``particles_stress.png`` (the per-particle traces with the onsets marked), ``stress_maps.png`` (σ1
and hydrostatic stress over the electrode at the snapshot times) and ``mechanics.json`` (settings,
material, per-particle DOFs, peaks, cost). Stresses in MPa (tension > 0), times in s (h in the
per-step table).

Usage (the run path does this for a config with ``[mechanics]``)::

    setup = electrode_mechanics_from_config(cfg, base_dir=".", theta0=0.99)
    obs = ElectrodeMechanicsObserver(setup, outdir, output_settings, comm)
    sim = ElectrodeSimulation(model, material, protocol, solver_settings, observers=[obs, outputs])
    sim.run()
    for o in (outputs, obs):  # the figures, drawn from their data alone (rank 0)
        if o.figure_job:
            o.figure_job()

The observer must come before the :class:`~nmcfx.solver.electrode_outputs.ElectrodeOutputs` in
the list: it adds its columns to the record the outputs then write.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from mpi4py import MPI

from nmcfx.errors import InputError

from .mechanics import ElasticitySolver, MechanicsSetup, SurfaceStress, mechanics_from_config
from .outputs import _fmt, write_json
from .rundir import resumed_part

#: ``[mechanics]`` keys that only an electrode takes
ELECTRODE_KEYS = ("electrode_bonding", "cbd_youngs_modulus_GPa", "cbd_poisson_ratio")
#: "free": each particle traction-free; "bonded": particles + CBD as one body, clamped at the collector
BONDINGS = ("free", "bonded")
CBD_KEYS = ("cbd_youngs_modulus_GPa", "cbd_poisson_ratio")
#: the bonded body's boundary conditions (reported in mechanics.json and the run's last line)
BONDED_BOUNDARY = ("current collector clamped (u = 0); every other boundary traction-free (pores, separator "
                   "side, box sides); NMC|CBD and NMC|NMC contacts perfectly bonded")

#: per-particle columns added to timeseries.csv (``<column>_<particle>``)
PARTICLE_COLUMNS = ("sigma1_max_MPa", "sigma1_max_r_over_R", "hoop_surface_max_MPa")
TABLE_COLUMNS = ("step", "description", "particle", "onset_h", "sigma1_peak_MPa", "sigma1_peak_h",
                 "sigma1_peak_r_over_R", "theta_mean_at_sigma1_peak", "sigma1_peak_minus_onset_h",
                 "hoop_peak_MPa", "hoop_peak_h", "hoop_peak_minus_onset_h")


@dataclass(frozen=True)
class ElectrodeMechanicsSetup:
    """A validated ``[mechanics]`` table of an electrode run: the particle setup, the bonding and, for
    ``"bonded"``, the CBD's stiffness."""

    particle: MechanicsSetup
    bonding: str = "free"
    cbd: object = None  # nmcfx.materials.mechanics.Stiffness (bonded), else None

    def describe(self) -> dict:
        out = self.particle.describe() | {"electrode_bonding": self.bonding}
        if self.bonding == "bonded":
            out |= {"cbd_stiffness": self.cbd.describe(), "boundary_conditions": BONDED_BOUNDARY}
        return out


def electrode_mechanics_from_config(cfg: dict, *, base_dir=None, theta0: float | None = None
                                    ) -> ElectrodeMechanicsSetup | None:
    """Validate ``[mechanics]`` of an electrode config (None without one): the electrode's own keys
    here, the rest as for a particle (:func:`~nmcfx.solver.mechanics.mechanics_from_config`; one
    mechanical material for every particle, that of the run's ``[material]``).

    ``electrode_bonding = "bonded"`` takes ``cbd_youngs_modulus_GPa`` (> 0) and ``cbd_poisson_ratio``
    (in (−1, 0.5)), defaults :data:`~nmcfx.materials.mechanics.DEFAULT_CBD_E_GPA` and
    :data:`~nmcfx.materials.mechanics.DEFAULT_CBD_NU`, and 2D sections default to plane strain (the
    coating is held along its depth by the foil) unless ``assumption_2d`` is given.

    >>> s = electrode_mechanics_from_config({"geometry": {"shape": "electrode"}, "mechanics": {}}, theta0=0.99)
    >>> s.bonding, s.particle.theta_ref
    ('free', 0.99)
    >>> b = electrode_mechanics_from_config({"geometry": {"shape": "electrode"},
    ...                                      "mechanics": {"electrode_bonding": "bonded"}}, theta0=0.99)
    >>> b.particle.settings.assumption_2d, b.cbd.E_GPa
    ('plane_strain', 1.0)
    """
    from nmcfx.materials.mechanics import DEFAULT_CBD_E_GPA, DEFAULT_CBD_NU, CBD_SOURCE, Stiffness

    from .mechanics import _number

    table = cfg.get("mechanics")
    if table is None:
        return None
    if not isinstance(table, dict):
        raise InputError("mechanics", f"must be a table ([mechanics]), got {type(table).__name__}")
    bonding = table.get("electrode_bonding", "free")
    if not isinstance(bonding, str) or bonding not in BONDINGS:
        raise InputError("mechanics.electrode_bonding", f"must be 'free' (each particle traction-free) or 'bonded' "
                                                        f"(particles and CBD as one elastic body), got {bonding!r}")
    if table.get("coupling", "one_way") == "two_way":
        raise InputError("mechanics.coupling", "'two_way' is available for single particles only; a composite "
                                               "electrode takes coupling = 'one_way' (θ → σ after every step)")
    cbd = None
    if bonding == "free":
        for key in CBD_KEYS:
            if key in table:
                raise InputError(f"mechanics.{key}", "applies to electrode_bonding = 'bonded' (free particles do "
                                                     "not load the CBD)")
    else:
        E = _number("mechanics.cbd_youngs_modulus_GPa", table.get("cbd_youngs_modulus_GPa", DEFAULT_CBD_E_GPA),
                    0.0, 1e3, hi_open=False, what="a Young's modulus > 0 GPa")
        nu = _number("mechanics.cbd_poisson_ratio", table.get("cbd_poisson_ratio", DEFAULT_CBD_NU), -1.0, 0.5,
                     what="a Poisson's ratio in (-1, 0.5)")
        user = any(k in table for k in CBD_KEYS)
        cbd = Stiffness.isotropic(E, nu, source="user input ([mechanics])" if user else CBD_SOURCE)
    particle_cfg = {k: v for k, v in cfg.items() if k != "geometry"}  # the particle rules, no electrode refusal
    particle_cfg["mechanics"] = {k: v for k, v in table.items() if k not in ELECTRODE_KEYS}
    if bonding == "bonded" and "assumption_2d" not in table:
        particle_cfg["mechanics"]["assumption_2d"] = "plane_strain"
    setup = mechanics_from_config(particle_cfg, base_dir=base_dir, theta0=theta0)
    return ElectrodeMechanicsSetup(setup, bonding, cbd)


def check_bonded_layout(cfg: dict, electrode) -> None:
    """A bonded body needs every particle held: bonded (through CBD or touching NMC) to a part that
    touches the clamped collector. Particles without such a path (the geometry's electronic-path
    analysis, allowed by ``[geometry] unconnected = 'warn'``) are refused by name, before anything is
    written."""
    table = cfg.get("mechanics")
    if not isinstance(table, dict) or table.get("electrode_bonding") != "bonded":
        return
    loose = [p["name"] for p in electrode.particles if not p.get("path", True)]
    if loose:
        raise InputError("mechanics.electrode_bonding", f"'bonded' needs every particle bonded to the clamped "
                                                        f"collector; particle(s) {', '.join(loose)} touch neither CBD "
                                                        f"nor NMC on a path to it (use 'free', or connect them)")


def check_particle_table(cfg: dict) -> None:
    """A single particle's ``[mechanics]`` must not carry the electrode's keys (one clear line)."""
    table = cfg.get("mechanics")
    if isinstance(table, dict):
        for key in ELECTRODE_KEYS:
            if key in table:
                raise InputError(f"mechanics.{key}", "applies to composite electrodes only "
                                                     "([geometry] shape = 'electrode' or 'electrode_3d')")


def electrode_mechanics_observers(run, outdir, comm) -> list:
    """The observer an electrode run needs for its ``[mechanics]`` table (none without one); the
    hook of :func:`nmcfx.solver.run.execute`."""
    setup = electrode_mechanics_from_config(run.config, base_dir=run.base_dir, theta0=run.protocol.initial_theta)
    if setup is None:
        return []
    return [ElectrodeMechanicsObserver(setup, outdir, run.output, comm, title=run.title)]


def _max_loc(comm, value: float, payload) -> tuple[float, list]:
    allv = comm.allgather((value, list(payload)))
    best = max(range(len(allv)), key=lambda i: (allv[i][0], -i))
    return allv[best]


class ParticleStress:
    """One particle's elasticity solve and its per-step numbers (σ1 max and where, hoop max).
    ``solver``: the particle's stress from elsewhere (a :class:`ParticleView` of the bonded body)
    instead of its own free-particle :class:`ElasticitySolver`."""

    def __init__(self, name: str, theta_field, setup: MechanicsSetup, index: int, solver=None):
        st = setup.settings
        self.name = name
        self.solver = ms = solver if solver is not None else ElasticitySolver(
            theta_field.mesh, theta_field.u, setup.material, theta_ref=setup.theta_ref,
            assumption_2d=st.assumption_2d, degree=st.degree, solver=st.solver, petsc_options=st.petsc_options,
            prefix=f"nmcfx_mech_p{index}_")
        self.surface = SurfaceStress(ms)
        self.comm = ms.comm
        c = np.zeros(3)
        c[: len(ms.centroid)] = ms.centroid
        self.center = c
        pts = self.surface.points
        rmax = float(np.max(np.linalg.norm(pts[:, : ms.tdim] - c[: ms.tdim], axis=1))) if len(pts) else 0.0
        self.radius = self.comm.allreduce(rmax, op=MPI.MAX)
        from dolfinx import fem

        self.f_s1 = fem.Function(ms.Ss, name=f"sigma1_MPa_{name}")
        self.f_h = fem.Function(ms.Ss, name=f"hydrostatic_MPa_{name}")
        self.n = ms.Ss.dofmap.index_map.size_local

    def solve(self) -> dict:
        ms, comm, n = self.solver, self.comm, self.n
        its = ms.solve()
        X, _ = ms.stress_nodes()
        inv = ms.invariants()
        self.f_s1.x.array[:n] = inv["sigma1"]
        self.f_h.x.array[:n] = inv["hydrostatic"]
        if n:
            i = int(np.argmax(inv["sigma1"]))
            s1, loc = float(inv["sigma1"][i]), X[i]
        else:
            s1, loc = -np.inf, np.zeros(3)
        s1, loc = _max_loc(comm, s1, loc)
        loc = np.asarray(loc)
        d = ms.tdim
        r = float(np.linalg.norm(loc[:d] - self.center[:d]) / self.radius) if self.radius > 0 else math.nan
        hoop = self.surface.hoop()
        hx = comm.allreduce(float(hoop.max()) if len(hoop) else -np.inf, op=MPI.MAX)
        out = {"sigma1_max_MPa": s1, "sigma1_max_r_over_R": r, "hoop_surface_max_MPa": hx, "iterations": its}
        if isinstance(ms, ParticleView):  # bonded: how hard the body holds the particle
            out["sigma_mean_MPa"] = ms.mean_stress()
        return out

    def destroy(self):
        if self.solver is not None:
            self.solver.destroy()
            self.solver = None


class ParticleView:
    """The bonded body's stress on one particle's own mesh (the post-processing face of an
    :class:`ElasticitySolver`: ``sigma``, ``stress_nodes``, ``invariants``, ``centroid``), copied cell
    by cell after every body solve (exact: the same discontinuous element on the same cells)."""

    stress_nodes = ElasticitySolver.stress_nodes
    invariants = ElasticitySolver.invariants

    def __init__(self, body, theta_field, body_cells, particle_cells):
        import ufl
        from dolfinx import fem
        from petsc4py import PETSc

        import dolfinx.la

        self.body = body
        self.mesh = mesh = theta_field.mesh
        self.comm = mesh.comm
        self.tdim = mesh.topology.dim
        self.stress_degree = body.stress_degree
        self.S = fem.functionspace(mesh, ("Discontinuous Lagrange", self.stress_degree, (3, 3)))
        self.Ss = fem.functionspace(mesh, ("Discontinuous Lagrange", self.stress_degree))
        self.sigma = fem.Function(self.S, name="stress_MPa")
        self.cells = (np.asarray(body_cells, dtype=np.int32), np.asarray(particle_cells, dtype=np.int32))
        x = ufl.SpatialCoordinate(mesh)
        one = fem.Constant(mesh, PETSc.ScalarType(1.0))
        vol = self.comm.allreduce(fem.assemble_scalar(fem.form(one * ufl.dx(domain=mesh))), op=MPI.SUM)
        self.centroid = np.array([self.comm.allreduce(fem.assemble_scalar(fem.form(x[i] * ufl.dx(domain=mesh))),
                                                      op=MPI.SUM) / vol for i in range(mesh.geometry.dim)])
        vec = fem.assemble_vector(fem.form(ufl.TestFunction(self.Ss) * ufl.dx(domain=mesh)))
        vec.scatter_reverse(dolfinx.la.InsertMode.add)
        self._weights = vec.array[: self.Ss.dofmap.index_map.size_local].copy() / vol  # ∫φ_i / |particle|

    def mean_stress(self) -> float:
        """Volume mean over the particle of the normal stress (MPa; exact for the discontinuous stress):
        in 2D the in-plane (σ_xx + σ_yy)/2, in 3D tr σ/3. A traction-free body's mean stress vanishes
        (∫σ dV = ∮ x ⊗ t dS = 0 for the in-plane components), so this is zero for a free particle
        under any 2D assumption; < 0 where the body squeezes a swelling particle, > 0 where it holds a
        shrinking one out."""
        _, s = self.stress_nodes()
        m = 0.5 * (s[:, 0, 0] + s[:, 1, 1]) if self.tdim == 2 else np.trace(s, axis1=1, axis2=2) / 3.0
        return self.comm.allreduce(float(self._weights @ m), op=MPI.SUM)

    def solve(self) -> int:
        """Copy the body's last stress onto this particle (the body is solved once per step by the observer)."""
        self.sigma.interpolate(self.body.sigma, cells0=self.cells[0], cells1=self.cells[1])
        self.sigma.x.scatter_forward()
        return 0

    def destroy(self):
        pass


class BondedElectrode:
    """The electrode's solid (NMC ∪ CBD, the mesh of φ_s) as one :class:`BondedElasticitySolver`,
    clamped at the current collector, reading every particle's θ; plus one :class:`ParticleView` per
    particle and the CBD's peak stresses."""

    def __init__(self, model, setup: ElectrodeMechanicsSetup):
        from dolfinx import fem

        from nmcfx.geometries.electrode import COLLECTOR

        from .bonded_mechanics import BondedElasticitySolver
        from .electrode import sub_facets_on

        st = setup.particle.settings
        solid = model.phi_s
        mesh = solid.mesh
        tdim = mesh.topology.dim
        imap = mesh.topology.index_map(tdim)
        n_local = imap.size_local
        body_cells = np.arange(n_local, dtype=np.int32)  # owned: θ is copied there, the ghosts follow
        parent = solid.entity_map.sub_topology_to_topology(body_cells, inverse=False)
        sources, per_particle = [], []
        for th in model.thetas:
            pc = np.asarray(th.entity_map.sub_topology_to_topology(np.asarray(parent, dtype=np.int32), inverse=True))
            sel = pc >= 0
            sources.append((th.u, pc[sel].astype(np.int32), body_cells[sel]))
            per_particle.append((body_cells[sel], pc[sel].astype(np.int32)))
        nmc_cells = np.concatenate([b for b, _ in per_particle]) if per_particle else np.zeros(0, np.int32)
        el = model.electrode
        collector = el.facet_tags.find(COLLECTOR) if el.facet_tags is not None else np.zeros(0, np.int32)
        clamp = sub_facets_on(solid, collector)
        self.body = BondedElasticitySolver(mesh, nmc_cells, sources, setup.particle.material, setup.cbd,
                                           theta_ref=setup.particle.theta_ref, clamped_facets=clamp,
                                           assumption_2d=st.assumption_2d, degree=st.degree, solver=st.solver,
                                           petsc_options=st.petsc_options, prefix="nmcfx_mech_bonded_")
        if not self.body.clamped:
            raise InputError("mechanics.electrode_bonding", "'bonded' needs a solid (CBD or NMC) on the current "
                                                            "collector to clamp; none touches it")
        self.views = [ParticleView(self.body, th, b, p) for th, (b, p) in zip(model.thetas, per_particle)]
        self.f_s1 = fem.Function(self.body.Ss, name="sigma1_MPa")
        self.f_h = fem.Function(self.body.Ss, name="hydrostatic_MPa")
        self.comm = mesh.comm

    def solve(self) -> tuple[int, dict]:
        """Solve the body; its CBD peaks (σ1 and von Mises, MPa; −inf without CBD)."""
        b = self.body
        its = b.solve()
        inv = b.invariants()
        n = len(inv["sigma1"])
        self.f_s1.x.array[:n] = inv["sigma1"]
        self.f_h.x.array[:n] = inv["hydrostatic"]
        cbd = b.cbd_stress_dofs
        out = {}
        for key, col in (("sigma1", "cbd_sigma1_max_MPa"), ("von_mises", "cbd_von_mises_max_MPa")):
            v = float(inv[key][cbd].max()) if len(cbd) else -np.inf
            out[col] = self.comm.allreduce(v, op=MPI.MAX)
        for v in self.views:
            v.solve()
        return its, out

    def destroy(self):
        if self.body is not None:
            self.body.destroy()
            self.body = None


class ElectrodeMechanicsObserver:
    """Simulation observer: θ → σ after every accepted step, free particles or the bonded body (module
    docstring)."""

    def __init__(self, setup: ElectrodeMechanicsSetup, outdir, output_settings, comm, *, title: str = ""):
        self.setup = setup
        self.outdir = Path(outdir)
        self.output = output_settings
        self.comm = comm
        self.root = comm.rank == 0
        self.title = title
        self.particles: list[ParticleStress] = []
        self.bonded: BondedElectrode | None = None
        self._writers = []
        #: after finish (rank 0): draws the figures; it holds their data only, not the solvers
        self.figure_job: Callable[[], None] | None = None
        self.images: list[tuple[float, np.ndarray]] = []  # (t, [σ1, σ_h] on the pixel grid), rank 0
        self.wall = 0.0
        self.iterations = 0

    # ------------------------------------------------------------------ observer API
    def state(self) -> dict:
        if not self.root:
            return {}
        return {"image_times": np.array([t for t, _ in self.images]),
                "images": np.array([img for _, img in self.images]) if self.images else np.zeros((0,)),
                "wall": np.array([self.wall, self.iterations], dtype=float)}

    def start(self, sim, restore: list | None = None):
        m = sim.solver
        t0 = time.perf_counter()
        self.names = list(m.names)
        if self.setup.bonding == "bonded":
            self.bonded = BondedElectrode(m, self.setup)
            views = self.bonded.views
        else:
            views = [None] * len(self.names)
        self.particles = [ParticleStress(n, th, self.setup.particle, i, solver=v)
                          for i, (n, th, v) in enumerate(zip(self.names, m.thetas, views))]
        self.setup_time = time.perf_counter() - t0
        self._probes = []
        el = m.electrode
        if self.output.figures and el.dim == 2:
            W, H = el.info["width_um"], el.info["height_um"]
            n = min(self.output.image_pixels, 160)
            nx, ny = (n, max(8, int(n * H / W))) if W >= H else (max(8, int(n * W / H)), n)
            X, Y = np.meshgrid(np.linspace(0, W, nx), np.linspace(0, H, ny))
            pts = np.column_stack([X.ravel(), Y.ravel(), np.zeros(X.size)])
            self.extent, self.grid_shape = (0.0, W, 0.0, H), X.shape
            from .exports import PointProbe

            if self.bonded is not None:  # the whole body: particles and CBD
                self._probes = [PointProbe(self.bonded.body.mesh, pts, allow_outside=True)]
            else:
                self._probes = [PointProbe(p.solver.mesh, pts, allow_outside=True) for p in self.particles]
            self.outlines = [np.vstack([o, o[:1]]) for o in
                             (p.outline() for p in (el.layout.particles if el.layout is not None else []))]
        if self.bonded is not None and self.output.fields != "none":
            import dolfinx.io

            part = resumed_part(self.outdir, "stress_body", restore is not None, (".bp",))
            b = self.bonded
            self._writers = [
                dolfinx.io.VTXWriter(self.comm, str(self.outdir / f"displacement_body{part}.bp"), [b.body.u],
                                     engine="BP4"),
                dolfinx.io.VTXWriter(self.comm, str(self.outdir / f"stress_body{part}.bp"),
                                     [b.body.sigma, b.f_s1, b.f_h], engine="BP4")]
        mine = next((r for r, o in zip(restore or [], sim.observers) if o is self), None)
        if mine and self.root:
            if mine["images"].size:
                self.images = [(float(t), img) for t, img in zip(mine["image_times"], mine["images"])]
            self.wall, self.iterations = float(mine["wall"][0]), int(mine["wall"][1])

    def record(self, sim, rec):
        t0 = MPI.Wtime()
        top = {"sigma1_max_MPa": -np.inf, "hoop_surface_max_MPa": -np.inf}
        if self.bonded is not None:  # one body solve; the particles read their part of it
            its, cbd = self.bonded.solve()
            self.iterations += its
            rec.update(cbd)
        for p in self.particles:
            r = p.solve()
            self.iterations += r.pop("iterations")
            for key, val in r.items():
                rec[f"{key}_{p.name}"] = val
            for key in top:
                top[key] = max(top[key], r[key])
        rec.update(top)
        self.wall += self.comm.allreduce(MPI.Wtime() - t0, op=MPI.MAX)

    def snapshot(self, sim, t: float):  # noqa: ARG002
        if self._writers:  # the bonded body's u and σ (VTX, collective)
            for f in (self.bonded.f_s1, self.bonded.f_h):
                f.x.scatter_forward()
            for w in self._writers:
                w.write(t)
        if not self._probes:
            return
        imgs = np.full((2, len(self._probes[0].points)), np.nan)
        sources = [(self.bonded.f_s1, self.bonded.f_h)] if self.bonded is not None else \
            [(p.f_s1, p.f_h) for p in self.particles]
        for fs, probe in zip(sources, self._probes):
            for j, f in enumerate(fs):
                f.x.scatter_forward()
                v = probe.evaluate(f)
                imgs[j][probe.inside] = v[probe.inside]
        if self.root:
            self.images.append((t, imgs.reshape(2, *self.grid_shape)))

    def step_end(self, sim, info):
        pass

    def finish(self, sim):
        rows = particle_stress_table(sim)
        summary = self.summary(sim, rows)
        cost = [self.bonded.body.counters] if self.bonded is not None else [p.solver.counters for p in self.particles]
        self.release()
        if not self.root:
            return
        summary["cost"]["factorizations"] = int(sum(c.factorizations for c in cost))
        out = self.outdir
        with open(out / "particles_stress.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(TABLE_COLUMNS)
            for r in rows:
                w.writerow([_fmt(r[c]) if not isinstance(r[c], str) else r[c] for c in TABLE_COLUMNS])
        write_json(out / "mechanics.json", summary)
        if self.output.figures and len(sim.history) > 1:  # drawn once the run has freed its solvers
            self.figure_job = partial(_draw_figures, out, self.title, list(sim.history), self.names,
                                      list(sim.step_log), rows, self.setup.bonding, self.images,
                                      getattr(self, "extent", None), getattr(self, "outlines", None))
        if self.output.progress and summary.get("peak"):
            pk = summary["peak"]
            how = "free particles" if self.bonded is None else \
                f"bonded body, E_CBD = {self.setup.cbd.E_GPa:g} GPa, collector clamped"
            cbd = f"; CBD peak σ1 {summary['cbd_peak']['sigma1_max_MPa']:.1f} MPa" if summary.get("cbd_peak") else ""
            print(f"mechanics ({how}, {summary['resolved']['assumption']}): peak tensile stress "
                  f"{pk['sigma1_max_MPa']:.0f} MPa in {pk['particle']} at t = {pk['time_s'] / 3600:.2f} h{cbd}; "
                  f"results in timeseries.csv (sigma1_max_MPa_<P>), particles_stress.csv", flush=True)

    def release(self):
        """Free every particle's PETSc/MUMPS objects now (collective; idempotent): ``finish`` does, and
        :func:`nmcfx.solver.run.execute` after a finished run, on every rank together."""
        for p in self.particles:
            p.destroy()
        for w in self._writers:
            w.close()
        self._writers = []
        if self.bonded is not None:
            self.bonded.destroy()

    def summary(self, sim, rows) -> dict:
        bonded = self.bonded is not None
        first = self.bonded.body if bonded else self.particles[0].solver
        what = ("bonded: particles and CBD one elastic body, " + BONDED_BOUNDARY) if bonded else \
            "free particles: each traction-free on its whole boundary"
        out = {"description": "one-way chemo-mechanical coupling (θ → σ after every accepted step); " + what
                              + "; stresses in MPa, tension > 0",
               "setup": self.setup.describe(),
               "resolved": {"assumption": first.assumption, "degree": first.degree,
                            "stress_degree": first.stress_degree, "solver": first.solver_kind,
                            "dofs": {"body": first.num_dofs} if bonded else
                            {p.name: p.solver.num_dofs for p in self.particles},
                            "setup_time_s": self.setup_time},
               "cost": {"solves": int(first.counters.solves if bonded else
                                      sum(p.solver.counters.solves for p in self.particles)),
                        "linear_iterations": self.iterations, "observer_time_s": self.wall},
               "particles_stress": rows}
        hist = sim.history
        if bonded and len(hist):
            s = np.array([r.get("cbd_sigma1_max_MPa", np.nan) for r in hist], dtype=float)
            if np.any(np.isfinite(s)):
                i = int(np.nanargmax(s))
                vm = np.array([r.get("cbd_von_mises_max_MPa", np.nan) for r in hist], dtype=float)
                out["cbd_peak"] = {"sigma1_max_MPa": float(s[i]), "time_s": float(hist[i]["time_s"]),
                                   "von_mises_max_MPa": float(np.nanmax(vm))}
        if len(hist):
            best = None
            for p in self.names:
                s = np.array([r.get(f"sigma1_max_MPa_{p}", np.nan) for r in hist], dtype=float)
                if np.any(np.isfinite(s)):
                    i = int(np.nanargmax(s))
                    if best is None or s[i] > best[0]:
                        best = (float(s[i]), p, float(hist[i]["time_s"]))
            if best is not None:
                out["peak"] = {"sigma1_max_MPa": best[0], "particle": best[1], "time_s": best[2]}
        return out


# ---------------------------------------------------------------------------- analysis
def particle_stress_table(sim) -> list[dict]:
    """Per charge/discharge step and particle: the onset of ``particles.csv`` (mean θ moved by
    ``onset_drop``), the peak σ1 and surface hoop stress in the step and their times (h from the
    step start), and the peak times minus the onset."""
    from .electrode_outputs import current_steps, particle_table

    hist = sim.history
    onsets = {(r["step"], r["particle"]): r["onset_h"] for r in particle_table(sim)}
    t = np.array([r["time_s"] for r in hist])
    rows = []
    for info, sel in current_steps(sim):
        desc, k = info["description"], info["index"]
        t0 = t[sel][0]
        for name in sim.names:
            col = {c: np.array([hist[i].get(f"{c}_{name}", np.nan) for i in sel], dtype=float)
                   for c in PARTICLE_COLUMNS + ("theta_mean",)}
            onset = onsets.get((k, name), math.nan)
            i = int(np.nanargmax(col["sigma1_max_MPa"]))
            j = int(np.nanargmax(col["hoop_surface_max_MPa"]))
            ts, th = (t[sel][i] - t0) / 3600.0, (t[sel][j] - t0) / 3600.0
            rows.append({"step": int(k), "description": desc, "particle": name, "onset_h": onset,
                         "sigma1_peak_MPa": float(col["sigma1_max_MPa"][i]), "sigma1_peak_h": ts,
                         "sigma1_peak_r_over_R": float(col["sigma1_max_r_over_R"][i]),
                         "theta_mean_at_sigma1_peak": float(col["theta_mean"][i]),
                         "sigma1_peak_minus_onset_h": ts - onset,
                         "hoop_peak_MPa": float(col["hoop_surface_max_MPa"][j]), "hoop_peak_h": th,
                         "hoop_peak_minus_onset_h": th - onset})
    return rows


# ---------------------------------------------------------------------------- figures
def _draw_figures(out, title, history, names, step_log, rows, bonding, images, extent, outlines):
    """particles_stress.png and (2D) stress_maps.png."""
    particle_stress_figure(history, names, step_log, rows, out / "particles_stress.png", title=title, bonding=bonding)
    if images:
        from .figures import release_memory

        release_memory()
        stress_maps(images, extent, outlines, out / "stress_maps.png", title=title)


def particle_stress_figure(history, names, step_log, rows, path: Path, *, title: str = "", bonding: str = "free"):
    """Peak σ1 (top) and peak surface hoop stress (bottom) of every particle against time; the
    onsets of the charge steps are marked on each trace (dots)."""
    import matplotlib

    from .figures import _figure, _wrap

    t = np.array([r["time_s"] for r in history]) / 3600
    cmap = matplotlib.colormaps["tab10" if len(names) <= 10 else "tab20"]
    fig = _figure(9, 6.4)
    axes = fig.subplots(2, 1, sharex=True)
    fig.subplots_adjust(left=0.09, right=0.8, bottom=0.08, top=0.9, hspace=0.12)
    starts = {s["index"]: s["start_time_s"] / 3600 for s in step_log}
    for ax, key, label in ((axes[0], "sigma1_max_MPa", "peak tensile stress σ1 (MPa)"),
                           (axes[1], "hoop_surface_max_MPa", "peak surface hoop stress (MPa)")):
        for i, n in enumerate(names):
            y = np.array([r.get(f"{key}_{n}", np.nan) for r in history], dtype=float)
            ax.plot(t, y, color=cmap(i % cmap.N), lw=1.2, label=n)
            for r in rows:
                if r["particle"] == n and r["description"].startswith("charge") and math.isfinite(r["onset_h"]):
                    to = starts.get(r["step"], 0.0) + r["onset_h"]
                    ax.plot([to], [np.interp(to, t, y)], "o", color=cmap(i % cmap.N), ms=4)
        for s in step_log[:-1]:
            ax.axvline(s["end_time_s"] / 3600, color="0.7", lw=0.6, ls="--")
        ax.set_ylabel(label)
    axes[1].set_xlabel("time (h)")
    axes[0].legend(frameon=False, fontsize=8, bbox_to_anchor=(1.01, 1.0), loc="upper left")
    how = "free particles" if bonding == "free" else "particles bonded to the CBD (one body, collector clamped)"
    axes[0].set_title(f"{how}; dots: each particle's onset (mean θ moved by the onset drop)", fontsize=9)
    if title:
        fig.suptitle(_wrap(title, 110), fontsize=10)
    fig.savefig(path, dpi=130)


def stress_maps(images, extent, outlines, path: Path, *, title: str = ""):
    """σ1 (left) and hydrostatic stress (right) over the electrode at up to four snapshots; one
    diverging colour scale per column, centred on 0 (MPa)."""
    from .figures import _figure, _wrap

    if len(images) > 4:
        idx = np.unique(np.linspace(0, len(images) - 1, 4).round().astype(int))
        images = [images[i] for i in idx]
    fig = _figure(10.5, 2.6 * len(images) + 0.8)
    axes = fig.subplots(len(images), 2, squeeze=False)
    fig.subplots_adjust(left=0.05, right=0.92, bottom=0.05, top=0.9, wspace=0.25, hspace=0.3)
    for j, label in enumerate(("max. principal σ1 (MPa)", "hydrostatic σ_h (MPa)")):
        vals = np.concatenate([img[j][np.isfinite(img[j])] for _, img in images])
        m = max(float(np.abs(vals).max()) if vals.size else 1.0, 1e-9)
        for i, (t, img) in enumerate(images):
            ax = axes[i, j]
            h = ax.imshow(img[j], origin="lower", extent=extent, cmap="RdBu_r", vmin=-m, vmax=m,
                          interpolation="nearest")
            for o in outlines:
                ax.plot(o[:, 0], o[:, 1], color="k", lw=0.4)
            ax.set_aspect("equal")
            ax.set_title(f"t = {t / 3600:.2f} h", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.colorbar(h, ax=axes[:, j], label=label, shrink=0.8)
    if title:
        fig.suptitle(_wrap(title, 110), fontsize=10)
    fig.savefig(path, dpi=130)
