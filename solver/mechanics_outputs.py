"""Chemo-mechanical coupling in a run: θ → σ after every accepted step, and its outputs.

One-way (default): σ follows θ. Two-way (``[mechanics] coupling = "two_way"``): the observer
also hands χ = Ω:σ/(N_L R T) of each solve to the θ equation's
:class:`~nmcfx.solver.terms.StressDrivenFlux` (staggered: the next θ step uses the stress of the
last accepted state; :meth:`MechanicsObserver.coupling_term` builds that term for
:class:`~nmcfx.solver.transport.TransportSolver`'s ``extra_terms``).

:class:`MechanicsObserver` is a :class:`~nmcfx.solver.simulation.Simulation` observer. It
builds an :class:`~nmcfx.solver.mechanics.ElasticitySolver` on the transport mesh, reading
``sim.solver.theta``, and solves it after every accepted time step. It writes, next to
``timeseries.csv``:

    mechanics.csv            one row per accepted step: peak tensile (max principal) stress,
                             its location, extreme hydrostatic/von Mises stress, surface hoop
                             stress (max/min and where), centre stress, ε_zz (generalised plane
                             strain), the flaw-based fracture indicator, solver cost
    surface_hoop.csv         t·σ·t along the surface at the snapshot times
    lattice_distribution.csv at the snapshot times: the volume distribution of θ (quantiles,
                             modes and their splitting) and of the lattice parameters (stress-free
                             a(θ), c(θ) and as strained), FWHM of the simulated peaks
    xrd_profiles.csv         simulated (003) and (110) line profiles (2θ, Cu Kα1 by default), one
                             intensity column per snapshot time
    displacement.bp/, stress.bp/   u and σ (+ σ1, von Mises, hydrostatic) at the snapshots (VTX)
    stress_maps.png          σ1, hydrostatic and von Mises maps at (up to four) snapshot times
    stress_summary.png       stresses and fracture indicator vs time, surface hoop stress vs angle,
                             θ distribution and simulated (003), (110) peaks
    mechanics.json           resolved settings and material, peaks over the run, cost

Stresses in MPa (tension > 0), lengths in µm, times in s.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
from mpi4py import MPI

from .mechanics import (
    MechanicsSetup,
    StressPotential,
    SurfaceStress,
    acquire_solver,
    mechanics_from_config,
    release_solver,
    surface_flaw_indicator,
)
from .outputs import write_json
from .rundir import resumed_part

COLUMNS = (
    "time_s", "protocol_step", "theta_mean",
    "sigma1_max_MPa", "sigma1_max_x_um", "sigma1_max_y_um", "sigma1_max_z_um", "sigma1_max_r_over_R",
    "sigma3_min_MPa", "von_mises_max_MPa", "hydrostatic_max_MPa", "hydrostatic_min_MPa",
    "hoop_surface_max_MPa", "hoop_surface_max_angle_deg", "hoop_surface_min_MPa", "hoop_surface_min_angle_deg",
    "sigma1_center_MPa", "hydrostatic_center_MPa", "ezz_0", "ezz_x_per_um", "ezz_y_per_um",
    "K_I_surface_MPa_sqrt_m", "G_surface_J_m2", "fracture_index_surface",
    "K_I_interior_MPa_sqrt_m", "fracture_index_interior", "linear_iterations", "solve_time_s",
)
LATTICE_COLUMNS = (
    "time_s", "theta_mean", "theta_p05", "theta_p50", "theta_p95", "theta_spread_p95_p05",
    "theta_modes", "theta_mode_low", "theta_mode_high", "theta_mode_split",
    "a_free_mean_A", "a_free_std_A", "c_free_mean_A", "c_free_std_A",
    "a_strained_mean_A", "a_strained_std_A", "c_strained_mean_A", "c_strained_std_A",
    "fwhm_003_deg", "fwhm_110_deg",
)


def mechanics_observers(run, outdir, comm) -> list:
    """The observers a prepared run needs for its ``[mechanics]`` table (none without one).

    This is the hook of :func:`nmcfx.solver.run.execute`.
    """
    setup = mechanics_from_config(run.config, base_dir=run.base_dir, theta0=run.protocol.initial_theta)
    if setup is None:
        return []
    return [MechanicsObserver(setup, outdir, run.output, comm, title=run.title)]


def coupling_terms(observers) -> list:
    """``extra_terms`` of the transport solver for the two-way observers among ``observers``."""
    return [o.coupling_term for o in observers if isinstance(o, MechanicsObserver) and o.two_way]


class MechanicsObserver:
    """Simulation observer: one-way coupling θ → σ and the mechanics outputs (module docstring)."""

    def __init__(self, setup: MechanicsSetup, outdir, output_settings, comm, *, title: str = ""):
        self.setup = setup
        self.settings = setup.settings
        self.outdir = Path(outdir)
        self.output = output_settings
        self.comm = comm
        self.root = comm.rank == 0
        self.title = title
        self.rows: list[list[float]] = []
        self.hoop_profiles: list[tuple[float, np.ndarray]] = []  # (t, [angle, x, y, z, hoop]) rank 0
        self.images: list[tuple[float, np.ndarray]] = []
        self.lattice_rows: list[list[float]] = []
        self.xrd: list[tuple[float, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self.theta_hist: list[tuple[float, np.ndarray]] = []
        self._csv = None
        self._writers = []
        #: after finish (rank 0): draws the figures; it holds their data only, not the solver
        self.figure_job: Callable[[], None] | None = None
        self.solver = None
        self._released = False
        self.two_way = self.settings.coupling == "two_way"
        self.flux_term = None  # two-way: the StressDrivenFlux of the θ equation (coupling_term)
        self.potential = None
        self.coupling_time = 0.0

    def coupling_term(self, transport):
        """Two-way: the stress-driven flux term of ``transport``'s θ equation, fed by this observer."""
        from .terms import StressDrivenFlux

        self.flux_term = StressDrivenFlux(transport.field, transport.material)
        return self.flux_term

    # ------------------------------------------------------------------ observer API
    def state(self) -> dict:
        if not self.root:
            return {}
        st = {"rows": np.array(self.rows, dtype=float).reshape(-1, len(COLUMNS)),
              "lattice_rows": np.array(self.lattice_rows, dtype=float).reshape(-1, len(LATTICE_COLUMNS))}
        st["hoop_t"] = np.array([t for t, _ in self.hoop_profiles])
        st["hoop_n"] = np.array([len(h) for _, h in self.hoop_profiles], dtype=int)
        st["hoop"] = np.concatenate([h for _, h in self.hoop_profiles]) if self.hoop_profiles else np.zeros((0, 5))
        st["image_times"] = np.array([t for t, _ in self.images])
        st["images"] = np.array([img for _, img in self.images]) if self.images else np.zeros((0,))
        st["xrd_t"] = np.array([x[0] for x in self.xrd])
        st["xrd"] = np.array([np.stack(x[1:]) for x in self.xrd]) if self.xrd else np.zeros((0,))
        st["hist"] = np.array([h for _, h in self.theta_hist]) if self.theta_hist else np.zeros((0,))
        return st

    def start(self, sim, restore: list | None = None):
        sv = sim.solver
        st = self.settings
        t0 = time.perf_counter()
        # (a solver released by an earlier run on this mesh is reused: spaces, forms, factorisation)
        self.solver = acquire_solver(sv.mesh, sv.theta, self.setup.material, theta_ref=self.setup.theta_ref,
                                     assumption_2d=st.assumption_2d, degree=st.degree, solver=st.solver,
                                     petsc_options=st.petsc_options)
        ms = self.solver
        if self.two_way:
            if self.flux_term is None or self.flux_term.field.u is not sv.theta:
                raise RuntimeError("coupling = 'two_way' needs the stress-driven flux in the transport solver: "
                                   "pass coupling_terms(observers) as its extra_terms (solver.run.execute does)")
            self.potential = StressPotential(ms, sv.material.site_concentration, sv.material.temperature_K)
            if restore is not None:  # a resumed run: the stress-driven loads of the last two accepted states
                self._resume_coupling(sim)
        self.setup_time = time.perf_counter() - t0
        self.dim = sv.mesh.topology.dim
        # what derives from the mesh alone is kept with the solver (reused with it)
        cache = ms.cache
        if "surface" not in cache:
            from dolfinx import fem

            from .exports import PointProbe

            surface = SurfaceStress(ms)
            c = ms.centroid
            pad = np.zeros(3)
            pad[: len(c)] = c
            # characteristic radius for r/R: the largest distance of a surface node from the centroid
            rmax = float(np.max(np.linalg.norm(surface.points[:, :2] - pad[:2], axis=1))) if len(
                surface.points) else 0.0
            cache.update(surface=surface, center=pad, radius=self.comm.allreduce(rmax, op=MPI.MAX),
                         fields=[fem.Function(ms.Ss, name=n) for n in ("sigma1_MPa", "von_mises_MPa",
                                                                        "hydrostatic_MPa")],
                         center_probe=PointProbe(sv.mesh, pad[None, :], allow_outside=True))
        self.surface, self.center, self.radius = cache["surface"], cache["center"], cache["radius"]
        self.f_s1, self.f_vm, self.f_h = cache["fields"]
        self._center_probe = cache["center_probe"]
        self._n_nodes = ms.Ss.dofmap.index_map.size_local
        self.X = ms.stress_node_coordinates()
        pad = self.center
        E_b, nu_b = self.setup.material.stiffness.basal_modulus()
        self.E_prime = E_b / (1.0 - nu_b**2)
        # pixel grid for the maps (plane z = centroid in 3D)
        self._image_probe = None
        if self.output.figures:
            n = min(self.output.image_pixels, 100)
            if ("image", n) not in cache:
                cache[("image", n)] = self._image_grid(sv.mesh, pad, n)
            self._image_probe, self.extent, self.grid_shape = cache[("image", n)]
        mine = next((r for r, o in zip(restore or [], sim.observers) if o is self), None)
        if mine:
            self._restore(mine)
        if self.output.fields != "none":
            import dolfinx.io

            part = resumed_part(self.outdir, "stress", restore is not None, (".bp",))
            out_u = ms.u
            self._writers = [
                dolfinx.io.VTXWriter(self.comm, str(self.outdir / f"displacement{part}.bp"), [out_u], engine="BP4"),
                dolfinx.io.VTXWriter(self.comm, str(self.outdir / f"stress{part}.bp"),
                                     [ms.sigma, self.f_s1, self.f_vm, self.f_h], engine="BP4"),
            ]
        if self.root:
            self._csv_file = open(self.outdir / "mechanics.csv", "w", newline="")
            self._csv = csv.writer(self._csv_file)
            self._csv.writerow(COLUMNS)
            for row in self.rows:  # a resumed run: what the checkpoint holds
                self._csv.writerow([_fmt(v) for v in row])

    def _image_grid(self, mesh, pad, n):
        """Pixel grid of the stress maps: (probe, extent, shape)."""
        from .exports import PointProbe

        x = mesh.geometry.x
        lo = np.array([self.comm.allreduce(float(x[:, i].min()) if len(x) else np.inf, op=MPI.MIN)
                       for i in range(2)])
        hi = np.array([self.comm.allreduce(float(x[:, i].max()) if len(x) else -np.inf, op=MPI.MAX)
                       for i in range(2)])
        span = hi - lo
        pad_ = 0.04 * span.max()
        nx = n if span[0] >= span[1] else max(8, int(n * span[0] / span[1]))
        ny = n if span[1] >= span[0] else max(8, int(n * span[1] / span[0]))
        gx, gy = np.linspace(lo[0] - pad_, hi[0] + pad_, nx), np.linspace(lo[1] - pad_, hi[1] + pad_, ny)
        GX, GY = np.meshgrid(gx, gy)
        pts = np.column_stack([GX.ravel(), GY.ravel(), np.full(GX.size, pad[2])])
        return PointProbe(mesh, pts, allow_outside=True), (gx[0], gx[-1], gy[0], gy[-1]), GX.shape

    def _couple(self, t: float):
        """Two-way: χ = Ω:σ/(N_L R T) of this solve (state at time t) → the θ equation's stress-driven flux."""
        t0 = MPI.Wtime()
        self.flux_term.set_potential(self.potential.update(), t, self.potential.kappa)
        self.coupling_time += MPI.Wtime() - t0

    def _resume_coupling(self, sim):
        """Rebuild the loads of θⁿ⁻¹ (the field's history) and θⁿ, as the uninterrupted run holds them."""
        sv, ms = sim.solver, self.solver
        theta = sv.theta.x.array
        now = theta.copy()
        if sim._dt_prev is not None and sv.theta_nm1 is not None:
            theta[:] = sv.theta_nm1.x.array
            ms.solve()
            self._couple(sim.t - sim._dt_prev)
            theta[:] = now
        ms.solve()
        self._couple(sim.t)

    def _restore(self, mine: dict):
        if not self.root:
            return
        self.rows = [list(r) for r in np.atleast_2d(mine["rows"])] if mine["rows"].size else []
        self.lattice_rows = [list(r) for r in np.atleast_2d(mine["lattice_rows"])] if mine["lattice_rows"].size \
            else []
        off = 0
        for t, n in zip(mine["hoop_t"], mine["hoop_n"]):
            self.hoop_profiles.append((float(t), mine["hoop"][off: off + n]))
            off += n
        if mine["images"].size:
            self.images = [(float(t), img) for t, img in zip(mine["image_times"], mine["images"])]
        if mine["xrd"].size:
            self.xrd = [(float(t), *x) for t, x in zip(mine["xrd_t"], mine["xrd"])]
        if mine["hist"].size:
            self.theta_hist = [(float(t), h) for t, h in zip(mine["xrd_t"], mine["hist"])]

    def record(self, sim, rec):
        ms = self.solver
        t0 = MPI.Wtime()
        its = ms.solve(fields=False)  # the tensor field is filled at the snapshots
        if self.two_way:
            self._couple(sim.t)
        inv = ms.invariants(principal=("sigma1", "sigma3"))
        n = self._n_nodes
        self.f_s1.x.array[:n] = inv["sigma1"]
        self.f_vm.x.array[:n] = inv["von_mises"]
        self.f_h.x.array[:n] = inv["hydrostatic"]
        comm = self.comm
        # this rank's extremes: σ1 max and where, σ3 min, von Mises max, hydrostatic max/min, hoop max/min and where
        mine = np.array([-np.inf, 0.0, 0.0, 0.0, np.inf, -np.inf, -np.inf, np.inf, -np.inf, np.nan, -np.inf, np.nan])
        if n:
            i = int(np.argmax(inv["sigma1"]))
            mine[:8] = (inv["sigma1"][i], *self.X[i], inv["sigma3"].min(), inv["von_mises"].max(),
                        inv["hydrostatic"].max(), inv["hydrostatic"].min())
        hoop = self.surface.hoop()
        if len(hoop):
            j, k = int(np.argmax(hoop)), int(np.argmin(hoop))
            mine[8:] = (hoop[j], self.surface.angle_deg[j], -hoop[k], self.surface.angle_deg[k])
        if comm.size > 1:  # one collective; a maximum's location comes from the lowest rank holding it
            allv = np.array(comm.allgather(mine))
            i, j, k = (int(np.argmax(allv[:, c])) for c in (0, 8, 10))
            mine = np.array([*allv[i, :4], allv[:, 4].min(), allv[:, 5].max(), allv[:, 6].max(), allv[:, 7].min(),
                             *allv[j, 8:10], *allv[k, 10:12]])
        s1, loc, (s3, vm, hmax, hmin) = float(mine[0]), mine[1:4], mine[4:8]
        hx, ha, hn, hna = float(mine[8]), mine[9], -float(mine[10]), mine[11]
        r_over_R = float(np.linalg.norm(loc[:2] - self.center[:2]) / self.radius) if self.radius > 0 else math.nan
        cs1, ch = self._center_probe.evaluate(self.f_s1)[0], self._center_probe.evaluate(self.f_h)[0]
        if not self._center_probe.inside[0]:
            cs1 = ch = math.nan
        e = ms.ezz_coefficients
        st = self.settings
        frs = surface_flaw_indicator(hx, st.flaw_size_um, self.E_prime, st.toughness_MPa_sqrt_m)
        fri = surface_flaw_indicator(s1, st.flaw_size_um, self.E_prime, st.toughness_MPa_sqrt_m, geometry_factor=1.0)
        wall = MPI.Wtime() - t0
        if comm.size > 1:
            wall = comm.allreduce(wall, op=MPI.MAX)
        row = [sim.t, rec.protocol_step, rec.theta_mean, s1, *loc[:3], r_over_R, s3, vm, hmax, hmin, hx, ha, hn,
               hna, cs1, ch, e[0], e[1], e[2], frs["K_I_MPa_sqrt_m"], frs["G_J_m2"], frs["fracture_index"],
               fri["K_I_MPa_sqrt_m"], fri["fracture_index"], its, wall]
        if self.root:
            self.rows.append([float(v) for v in row])
            self._csv.writerow([_fmt(v) for v in row])
            self._csv_file.flush()

    def snapshot(self, sim, t: float):
        ms = self.solver
        ms.sync_fields()
        for f in (ms.sigma, self.f_s1, self.f_vm, self.f_h, ms.u):
            f.x.scatter_forward()
        for w in self._writers:
            w.write(t)
        if self._image_probe is not None:
            imgs = []
            for f in (self.f_s1, self.f_h, self.f_vm):
                img = self._image_probe.evaluate(f)
                img[~self._image_probe.inside] = np.nan
                imgs.append(img.reshape(self.grid_shape))
            if self.root:
                self.images.append((t, np.array(imgs)))
        # surface hoop profile
        hoop = self.surface.hoop()
        prof = np.column_stack([self.surface.angle_deg, self.surface.points, hoop]) if len(hoop) else np.zeros((0, 5))
        got = self.comm.gather(prof, root=0)
        # lattice-parameter distribution
        th = ms.theta_at_stress_nodes()
        exx, eyy, ezz = ms.normal_strains(th)
        w = ms.stress_node_weights()
        ref_a = float(ms.material.lattice.a(ms.theta_ref))
        ref_c = float(ms.material.lattice.c(ms.theta_ref))
        data = np.column_stack([th, w, ms.material.lattice.a(th), ms.material.lattice.c(th),
                                ref_a * (1 + 0.5 * (exx + eyy)), ref_c * (1 + ezz)])
        allv = self.comm.gather(data, root=0)
        if self.root:
            prof = np.concatenate(got)
            prof = prof[np.argsort(prof[:, 0], kind="stable")]
            self.hoop_profiles.append((t, prof))
            self._lattice_snapshot(t, np.concatenate(allv))

    def _lattice_snapshot(self, t: float, d: np.ndarray):
        th, w, af, cf, a_s, c_s = d.T
        w = w / w.sum()
        stats = lattice_statistics(th, w, af, cf, a_s, c_s)
        lam, fwhm = self.settings.xrd_wavelength_A, self.settings.xrd_fwhm_deg
        grid003, grid110 = self._xrd_grids()
        p003 = xrd_profile(grid003, c_s / 3.0, w, lam, fwhm)
        p110 = xrd_profile(grid110, a_s / 2.0, w, lam, fwhm)
        stats["fwhm_003_deg"] = profile_fwhm(grid003, p003)
        stats["fwhm_110_deg"] = profile_fwhm(grid110, p110)
        self.lattice_rows.append([t] + [stats[k] for k in LATTICE_COLUMNS[1:]])
        self.xrd.append((t, grid003, p003, grid110, p110))
        hist, _ = np.histogram(th, bins=THETA_BINS, weights=w)
        self.theta_hist.append((t, hist))

    def _xrd_grids(self):
        lat = self.setup.material.lattice
        lam = self.settings.xrd_wavelength_A
        c = lat.c(np.linspace(lat.theta_min, lat.theta_max, 201))
        a = lat.a(np.linspace(lat.theta_min, lat.theta_max, 201))
        t003 = bragg_two_theta_deg(c / 3.0, lam)
        t110 = bragg_two_theta_deg(a / 2.0, lam)
        m = 0.3 + 4 * self.settings.xrd_fwhm_deg
        return (np.linspace(t003.min() - m, t003.max() + m, 800), np.linspace(t110.min() - m, t110.max() + m, 800))

    def step_end(self, sim, info):
        pass

    def release(self):
        """Free the elasticity solver's PETSc/MUMPS objects now (collective; idempotent): they hold
        MPI communicators, and left to the garbage collector they would go at a different moment
        on each rank."""
        if self.potential is not None:
            self.potential.destroy()
            self.potential = None
        if not self._released:
            self._released = True
            release_solver(self.solver)  # serial: kept for the next run on this mesh

    def finish(self, sim):
        for w in self._writers:
            w.close()
        self._writers = []
        summary = self.summary()
        self.release()
        if not self.root:
            return
        self._csv_file.close()
        out = self.outdir
        _write_table(out / "surface_hoop.csv", ["time_s", "angle_deg", "x_um", "y_um", "z_um", "hoop_MPa"],
                     np.concatenate([np.column_stack([np.full(len(p), t), p]) for t, p in self.hoop_profiles])
                     if self.hoop_profiles else np.zeros((0, 6)))
        _write_table(out / "lattice_distribution.csv", list(LATTICE_COLUMNS),
                     np.array(self.lattice_rows, dtype=float).reshape(-1, len(LATTICE_COLUMNS)))
        # simulated line profiles, wide: one intensity column per snapshot time
        head = ["reflection", "two_theta_deg"] + [f"I_t={x[0]:g}s" for x in self.xrd]
        with open(out / "xrd_profiles.csv", "w") as fh:
            fh.write(",".join(head) + "\n")
            for name, gi, pi in (("003", 1, 2), ("110", 3, 4)):
                if self.xrd:
                    block = np.column_stack([self.xrd[0][gi]] + [x[pi] for x in self.xrd])
                    fmt = f"{name}," + ",".join(["%.6g"] * block.shape[1]) + "\n"
                    fh.writelines(fmt % tuple(row) for row in block.tolist())
        write_json(out / "mechanics.json", summary)
        if self.output.figures and self.rows:  # drawn once the run has freed its solvers (run.execute)
            rows = np.array(self.rows)
            self.figure_job = partial(_draw_figures, out, self.title, {c: rows[:, i] for i, c in enumerate(COLUMNS)},
                                      self.hoop_profiles, self.xrd, self.theta_hist, self.settings, self.images,
                                      getattr(self, "extent", None))
        if self.output.progress:
            p = summary["peak"]
            print(f"mechanics ({summary['resolved']['assumption']}): peak tensile stress {p['sigma1_max_MPa']:.0f} MPa "
                  f"at t = {p['time_s'] / 60:.1f} min (r/R = {p['r_over_R']:.2f}); surface hoop stress "
                  f"{p['hoop_surface_max_MPa']:.0f} / {p['hoop_surface_min_MPa']:.0f} MPa (max/min); "
                  f"results in mechanics.csv, stress_summary.png", flush=True)

    def summary(self) -> dict:
        """Resolved settings, peaks over the run and cost (identical on all ranks)."""
        rows = self.comm.bcast(np.array(self.rows) if self.root else None, root=0)
        ms = self.solver
        desc = ("two-way chemo-mechanical coupling, staggered (σ after every accepted step; the next θ step "
                "carries the stress-driven flux θ D_eff ∇(Ω:σ)/(N_L R T) of that σ)" if self.two_way else
                "one-way chemo-mechanical coupling (θ → σ after every accepted step)")
        out = {"description": desc + "; stresses in MPa, tension > 0", "coupling": self.settings.coupling,
               "resolved": ms.describe() | {"setup_time_s": self.setup_time}, "setup": self.setup.describe(),
               "fracture_indicator": {"flaw_size_um": self.settings.flaw_size_um,
                                      "toughness_MPa_sqrt_m": self.settings.toughness_MPa_sqrt_m,
                                      "E_prime_GPa": self.E_prime,
                                      "definition": "surface: K_I = 1.12 σ_hoop,max √(π a); interior: K_I = "
                                                    "σ1,max √(π a); G = K_I²/E', E' = E/(1 − ν²) (basal plane); "
                                                    "index = (K_I/K_Ic)²"},
               "cost": {"solves": ms.counters.solves, "linear_iterations": ms.counters.iterations,
                        "factorizations": ms.counters.factorizations,
                        "assembly_time_s": ms.counters.assembly_time, "solve_time_s": ms.counters.solve_time,
                        "stress_time_s": ms.counters.post_time,
                        "coupling_time_s": self.comm.allreduce(self.coupling_time, op=MPI.MAX),
                        "observer_time_s": float(np.sum(rows[:, COLUMNS.index("solve_time_s")])) if len(rows) else 0.0}}
        if len(rows):
            col = {c: rows[:, i] for i, c in enumerate(COLUMNS)}
            i = int(np.argmax(col["sigma1_max_MPa"]))
            j = int(np.argmax(col["hoop_surface_max_MPa"]))
            k = int(np.argmin(col["hoop_surface_min_MPa"]))
            ic = int(np.nanargmax(col["sigma1_center_MPa"])) if np.any(np.isfinite(col["sigma1_center_MPa"])) else 0
            out["peak"] = {
                "sigma1_max_MPa": col["sigma1_max_MPa"][i], "time_s": col["time_s"][i],
                "location_um": [col["sigma1_max_x_um"][i], col["sigma1_max_y_um"][i], col["sigma1_max_z_um"][i]],
                "r_over_R": col["sigma1_max_r_over_R"][i],
                "hoop_surface_max_MPa": col["hoop_surface_max_MPa"][j], "hoop_surface_max_time_s": col["time_s"][j],
                "hoop_surface_max_angle_deg": col["hoop_surface_max_angle_deg"][j],
                "hoop_surface_min_MPa": col["hoop_surface_min_MPa"][k], "hoop_surface_min_time_s": col["time_s"][k],
                "sigma1_center_max_MPa": col["sigma1_center_MPa"][ic], "sigma1_center_max_time_s": col["time_s"][ic],
                "K_I_surface_max_MPa_sqrt_m": col["K_I_surface_MPa_sqrt_m"][j],
                "G_surface_max_J_m2": col["G_surface_J_m2"][j],
                "fracture_index_surface_max": col["fracture_index_surface"][j],
            }
            out["lattice_distribution"] = [dict(zip(LATTICE_COLUMNS, r)) for r in
                                           (self.comm.bcast(self.lattice_rows if self.root else None, root=0))]
        return out


# ============================================================================ lattice / XRD helpers
THETA_BINS = np.linspace(0.0, 1.0, 201)


def bragg_two_theta_deg(d_A, wavelength_A: float = 1.5406):
    """Bragg angle 2θ (degrees) of a d-spacing (Å)."""
    return np.degrees(2.0 * np.arcsin(np.clip(wavelength_A / (2.0 * np.asarray(d_A, dtype=float)), -1, 1)))


def xrd_profile(grid_deg, d_A, weights, wavelength_A: float, fwhm_deg: float) -> np.ndarray:
    """Volume-weighted sum of Gaussian peaks (FWHM ``fwhm_deg``) at the Bragg angles of ``d_A``,
    normalised to unit area. Sub-binned on the grid first, so the cost does not grow with the mesh."""
    tt = bragg_two_theta_deg(d_A, wavelength_A)
    g = np.asarray(grid_deg)
    h = g[1] - g[0]
    idx = np.clip(np.rint((tt - g[0]) / h).astype(int), 0, len(g) - 1)
    binned = np.bincount(idx, weights=weights, minlength=len(g))
    sig = fwhm_deg / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    k = np.arange(-int(5 * sig / h) - 1, int(5 * sig / h) + 2) * h
    kern = np.exp(-0.5 * (k / sig) ** 2)
    prof = np.convolve(binned, kern / kern.sum(), mode="same")
    area = prof.sum() * h
    return prof / area if area > 0 else prof


def profile_fwhm(grid, prof) -> float:
    """Full width at half maximum of a (possibly multi-modal) profile: outermost half-max crossings."""
    if not np.any(prof > 0):
        return math.nan
    half = 0.5 * prof.max()
    above = np.flatnonzero(prof >= half)
    i0, i1 = above[0], above[-1]

    def cross(i, j):
        y0, y1 = prof[i], prof[j]
        return grid[i] + (half - y0) / (y1 - y0) * (grid[j] - grid[i]) if y1 != y0 else grid[i]

    left = cross(i0 - 1, i0) if i0 > 0 else grid[0]
    right = cross(i1, i1 + 1) if i1 < len(grid) - 1 else grid[-1]
    return float(right - left)


def theta_modes(theta, weights, bandwidth: float = 0.01, prominence: float = 0.1) -> list[float]:
    """Occupancies of the modes of the volume distribution of θ (Gaussian kernel estimate),
    most prominent first; a mode counts if its prominence is ≥ ``prominence`` × the highest."""
    grid = np.linspace(0.0, 1.0, 1001)
    h = grid[1] - grid[0]
    idx = np.clip(np.rint(np.asarray(theta) / h).astype(int), 0, len(grid) - 1)
    binned = np.bincount(idx, weights=weights, minlength=len(grid))
    k = np.arange(-int(5 * bandwidth / h), int(5 * bandwidth / h) + 1) * h
    dens = np.convolve(binned, np.exp(-0.5 * (k / bandwidth) ** 2), mode="same")
    padded = np.concatenate([[0.0], dens, [0.0]])
    peaks, prom = peak_prominences(padded)
    keep = prom >= prominence * dens.max()
    peaks, prom = peaks[keep], prom[keep]
    order = np.argsort(-prom)
    return [float(grid[peaks[i] - 1]) for i in order]


def peak_prominences(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The local maxima of ``x`` (a flat top counts once, at its middle, rounded down) and their
    topographic prominences: the height above the higher of the two lowest points between the peak
    and the nearest higher sample on either side (or the end). The definitions of SciPy's
    ``find_peaks``/``peak_prominences``, without importing SciPy (44 MB and 0.6 s for a run)."""
    x = np.asarray(x, dtype=float)
    peaks, prom = [], []
    i, n = 1, len(x)
    while i < n - 1:
        if x[i - 1] < x[i]:
            j = i + 1
            while j < n - 1 and x[j] == x[i]:
                j += 1
            if x[j] < x[i]:
                p = (i + j - 1) // 2
                left = x[:i][::-1]  # from the peak outwards
                stop = np.flatnonzero(left > x[p])
                left_min = min(x[p], left[: stop[0] if stop.size else None].min(initial=x[p]))
                right = x[j:]
                stop = np.flatnonzero(right > x[p])
                right_min = min(x[p], right[: stop[0] if stop.size else None].min(initial=x[p]))
                peaks.append(p)
                prom.append(x[p] - max(left_min, right_min))
                i = j
                continue
        i += 1
    return np.array(peaks, dtype=int), np.array(prom, dtype=float)


def _wquantile(x, w, q):
    """Weighted quantile(s) ``q`` of x (one sort for all of them)."""
    o = np.argsort(x)
    cw = np.cumsum(w[o])
    return np.interp(np.asarray(q) * cw[-1], cw, x[o])


def lattice_statistics(theta, w, a_free, c_free, a_strained, c_strained) -> dict:
    """Volume statistics of θ and of the lattice parameters at one instant (w sums to 1)."""
    modes = theta_modes(theta, w)
    two = sorted(modes[:2])
    mean = lambda v: float(np.sum(w * v))  # noqa: E731
    std = lambda v: float(np.sqrt(max(np.sum(w * (v - mean(v)) ** 2), 0.0)))  # noqa: E731
    p05, p50, p95 = (float(v) for v in _wquantile(theta, w, (0.05, 0.5, 0.95)))
    return {"theta_mean": mean(theta), "theta_p05": p05, "theta_p50": p50, "theta_p95": p95,
            "theta_spread_p95_p05": p95 - p05, "theta_modes": len(modes),
            "theta_mode_low": two[0] if len(two) == 2 else math.nan,
            "theta_mode_high": two[1] if len(two) == 2 else math.nan,
            "theta_mode_split": two[1] - two[0] if len(two) == 2 else math.nan,
            "a_free_mean_A": mean(a_free), "a_free_std_A": std(a_free),
            "c_free_mean_A": mean(c_free), "c_free_std_A": std(c_free),
            "a_strained_mean_A": mean(a_strained), "a_strained_std_A": std(a_strained),
            "c_strained_mean_A": mean(c_strained), "c_strained_std_A": std(c_strained)}


def _draw_figures(out, title, series, hoop_profiles, xrd, theta_hist, settings, images, extent):
    """stress_summary.png and stress_maps.png."""
    from . import mechanics_figures as figs
    from .figures import release_memory

    figs.stress_summary(series, hoop_profiles, xrd, theta_hist, THETA_BINS, out / "stress_summary.png", title=title,
                        toughness=settings.toughness_MPa_sqrt_m, wavelength_A=settings.xrd_wavelength_A)
    if images:
        release_memory()
        figs.stress_maps(images, extent, out / "stress_maps.png", title=title)


def _write_table(path, header, data: np.ndarray):
    """A float table as CSV (NaN written as 'nan')."""
    data = np.asarray(data, dtype=float).reshape(-1, len(header))
    data = np.where(np.isfinite(data), data, np.nan)  # ±inf written as nan too
    fmt = ",".join(["%r"] * len(header)) + "\n"
    with open(path, "w") as fh:
        fh.write(",".join(header) + "\n")
        fh.writelines(fmt % tuple(row) for row in data.tolist())


def _fmt(v):
    if isinstance(v, (float, np.floating)):
        return repr(float(v)) if math.isfinite(v) else "nan"
    if isinstance(v, np.integer):
        return int(v)
    return v
