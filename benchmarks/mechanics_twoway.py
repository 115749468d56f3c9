"""What two-way chemo-mechanics costs and changes: the flagship run one-way vs two-way.

    python benchmarks/mechanics_twoway.py               # cost (3 repeats) + effect + dt check (~1-2 min)
    python benchmarks/mechanics_twoway.py --repeats 1 --mesh 0.06 0.02

The flagship run (Xu 2022 particle, C/3 delithiation from θ₀ = 0.95, 60 min) through
``prepare`` + ``execute`` with ``[mechanics]`` (generalised plane strain, P2 displacement),
outputs off (fields = "none", figures = false), serial, in one process: one untimed warm-up
of each variant (JIT caches), then the variants alternate (one, two, one, two, …) so that they
see the same machine load; CPU time (``process_time``, the steady measure on a shared machine)
and wall time, best and median. Then the effect of the coupling on θ — the front's arrival at
the centre (θ_centre has dropped by 0.05), the largest centre–surface difference and the final
θ field — and the staggering error: the same pair with ``solver.dt_max_s`` halved twice
(120 → 60 → 30 s), the two-way minus one-way difference of each, at fixed times (the 10 and
20 min snapshots: the spread max θ − min θ, and max|θ_two − θ_one|) and at the end; and the
same for the first 10 min of the lithiation example (from θ = 0.2, in the c-axis collapse where
Ω_c is large and the coupling strong), where one-way, two-way and two-way without extrapolation
are compared at dt_max = 120, 30, 7.5 s.

Numbers are printed, never asserted.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from mpi4py import MPI  # noqa: F401  (before dolfinx)

import numpy as np


class _Grab:
    """Observer: θ_centre − θ_surface,min per record, the final θ, the coupling's own time."""

    def start(self, sim, restore=None):
        self.d = []
        self.snaps = {}

    def record(self, sim, rec):
        self.d.append((rec.time_s, rec.theta_center - rec.theta_surface_min))

    def snapshot(self, sim, t):
        self.snaps[round(t / 60.0)] = sim.solver.theta.x.array.copy()

    def step_end(self, sim, info):
        pass

    def finish(self, sim):
        self.theta = sim.solver.theta.x.array.copy()
        mech = next(o for o in sim.observers if hasattr(o, "two_way"))
        self.coupling_s = mech.coupling_time
        self.mech_s = mech.solver.counters.assembly_time + mech.solver.counters.solve_time + \
            mech.solver.counters.post_time


def run(coupling: str, mesh, tmp: str, dt_max: float | None = None, case: str = "flagship") -> dict:
    from nmcfx.config import example_path, load_config
    from nmcfx.solver.run import execute, prepare

    cfg = load_config(example_path(case))
    if case == "lithiation":  # the first 10 min from θ = 0.2: in the c-axis collapse (large Ω_c)
        cfg["protocol"]["steps"][0]["duration_min"] = 10
        cfg["output"] = dict(cfg.get("output", {}), snapshot_times_min=[5, 10])
    cfg["geometry"] = dict(cfg["geometry"], mesh_size_um=mesh[0], surface_mesh_size_um=mesh[1])
    cfg["output"] = dict(cfg.get("output", {}), progress=False, fields="none", figures=False)
    cfg["mechanics"] = {"assumption_2d": "generalized_plane_strain", "coupling": coupling}
    if dt_max is not None:
        cfg["solver"] = {"dt_max_s": dt_max}
    g = _Grab()
    c0, w0 = time.process_time(), time.perf_counter()
    s = execute(prepare(cfg), f"{tmp}/{case}-{coupling}-{dt_max}", overwrite=True, observers=[g])
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    d = np.array(g.d)
    i = int(np.argmax(d[:, 1]))
    return {"cpu": cpu, "wall": wall, "steps": s["steps"], "dofs": s["dofs"], "front_min": s["front_at_center_min"],
            "max_dtheta": float(d[i, 1]), "max_dtheta_min": float(d[i, 0] / 60.0), "theta": g.theta, "snaps": g.snaps,
            "coupling_s": g.coupling_s, "mech_s": g.mech_s, "mass_balance": s["max_abs_mass_balance_error"],
            "theta_center": s["theta_center_final"], "rejected": s["rejected_steps"]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--mesh", type=float, nargs=2, default=(0.12, 0.04), metavar=("H", "H_SURFACE"))
    ap.add_argument("--skip-dt", action="store_true", help="skip the dt_max halving")
    a = ap.parse_args(argv)
    mesh = tuple(a.mesh)
    with tempfile.TemporaryDirectory() as tmp:
        for c in ("one_way", "two_way"):  # warm-up: JIT caches, imports
            run(c, mesh, tmp)
        res = {"one_way": [], "two_way": []}
        for _ in range(a.repeats):
            for c in ("one_way", "two_way"):
                res[c].append(run(c, mesh, tmp))
        one, two = res["one_way"][-1], res["two_way"][-1]
        print(f"\nflagship (Xu particle, C/3, 60 min), mesh {mesh[0]}/{mesh[1]} µm, θ DOFs {one['dofs']}, "
              f"outputs off, serial, {a.repeats} repeats")
        print("| coupling | steps | CPU best (s) | CPU median (s) | wall best (s) | mechanics solves (s) | "
              "Ω:σ projection + load (s) | front at centre (min) | max θ_c − θ_s (at min) | mass balance |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for c, rs in res.items():
            r = rs[-1]
            print(f"| {c} | {r['steps']} | {min(x['cpu'] for x in rs):.2f} | "
                  f"{statistics.median(x['cpu'] for x in rs):.2f} | {min(x['wall'] for x in rs):.2f} | "
                  f"{r['mech_s']:.3f} | {r['coupling_s']:.3f} | {r['front_min']:.3f} | "
                  f"{r['max_dtheta']:.4f} ({r['max_dtheta_min']:.1f}) | {r['mass_balance']:.1e} |")
        ratio = [t["cpu"] / o["cpu"] for o, t in zip(res["one_way"], res["two_way"])]
        print(f"two-way / one-way CPU: best {min(x['cpu'] for x in res['two_way']) / min(x['cpu'] for x in res['one_way']):.3f}, "
              f"median of pairs {statistics.median(ratio):.3f}")
        print(f"effect: front {two['front_min'] - one['front_min']:+.3f} min, max Δθ "
              f"{two['max_dtheta'] - one['max_dtheta']:+.5f} ({(two['max_dtheta'] / one['max_dtheta'] - 1) * 100:+.1f} %), "
              f"final θ max|two − one| {np.abs(two['theta'] - one['theta']).max():.2e}")
        if a.skip_dt:
            return
        from nmcfx.solver.terms import StressDrivenFlux

        one_way = {dt: run("one_way", mesh, tmp, dt) for dt in DT_MAX}
        defaults = StressDrivenFlux.__init__.__kwdefaults__
        for label, extrapolate in (("extrapolated (default)", True), ("not extrapolated", False)):
            defaults["extrapolate"] = extrapolate
            dt_table(label, {dt: run("two_way", mesh, tmp, dt) for dt in DT_MAX}, one_way)
        defaults["extrapolate"] = True
        print("\nlithiation from θ = 0.2 at C/3, first 10 min (the c-axis collapse: Ω_c ≈ +0.1):")
        print("| scheme | dt_max (s) | steps | rejected | θ_centre at 10 min | two − one | spread at 5 min |")
        print("|---|---|---|---|---|---|---|")
        ref = {dt: run("one_way", mesh, tmp, dt, "lithiation") for dt in DT_MAX_LITH}
        for dt, r in ref.items():
            print(f"| one-way | {dt:g} | {r['steps']} | {r['rejected']} | {r['theta_center']:.5f} | – | "
                  f"{np.ptp(r['snaps'][5]):.5f} |")
        for label, extrapolate in (("two-way", True), ("two-way, not extrapolated", False)):
            defaults["extrapolate"] = extrapolate
            for dt in DT_MAX_LITH:
                r = run("two_way", mesh, tmp, dt, "lithiation")
                print(f"| {label} | {dt:g} | {r['steps']} | {r['rejected']} | {r['theta_center']:.5f} | "
                      f"{r['theta_center'] - ref[dt]['theta_center']:+.5f} | {np.ptp(r['snaps'][5]):.5f} |", flush=True)
        defaults["extrapolate"] = True


DT_MAX = (120.0, 60.0, 30.0)
DT_MAX_LITH = (120.0, 30.0, 7.5)


def dt_table(label, two_way, one_way):
    """Two-way − one-way at the same dt_max (spread = max θ − min θ over the particle)."""
    def spread(r, m):
        return float(np.ptp(r["snaps"][m]))

    print(f"\nflagship, staggering error, stress load {label}:")
    print("| dt_max (s) | steps | Δfront (min) | Δspread 10 min | Δspread 20 min | max|two − one| 20 min | "
          "max|two − one| 60 min |")
    print("|---|---|---|---|---|---|---|")
    for dt in DT_MAX:
        o, t = one_way[dt], two_way[dt]
        print(f"| {dt:g} | {t['steps']} | {t['front_min'] - o['front_min']:+.3f} | "
              f"{spread(t, 10) - spread(o, 10):+.5f} | {spread(t, 20) - spread(o, 20):+.5f} | "
              f"{np.abs(t['snaps'][20] - o['snaps'][20]).max():.4e} | "
              f"{np.abs(t['theta'] - o['theta']).max():.4e} |", flush=True)


if __name__ == "__main__":
    main()
