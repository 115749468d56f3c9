"""One benchmark case in one process (serial or under mpiexec); called by run_benchmarks.py.

    python benchmarks/_worker.py framework --example disk_100mAg --mesh 0.15 0.05 --outputs full --json OUT
    python benchmarks/_worker.py fixed     --mesh 0.15 0.05 --dt 30 --json OUT
    python benchmarks/_worker.py reference --mesh 0.0375 0.0125 --theta-tol 1e-5 --json OUT
    python benchmarks/_worker.py sweep --variants '[{"label": "x", "solver": {"theta_tol": 0.005}}]' --json OUT

Every run is built as a :class:`nmcfx.spec.RunSpec` (``nmcfx.load("example:…")`` with dotted
overrides) and, in the ``framework``, ``sweep`` and ``reference`` modes and the fixed-step
``execute`` tier, runs through ``nmcfx.run`` exactly as ``nmcfx run`` does. Only the fixed-step
comparison's ``simulation`` and ``solver_core`` tiers build the solver below ``execute`` from
``spec.prepare()`` on purpose: they measure the layers the framework adds over the bare
DOLFINx script. The process per case is kept for clean timings (peak RSS per case, no state
carried over from another case).

Every mode first runs an untimed warm-up (same forms; the whole case with ``--warmup full``,
else 1 simulated minute) so that the timed
runs see filled JIT caches and already-imported plotting/IO modules: the figures are
*warm* in-process times. Timings are taken by wrapping library methods from the outside
(no library code is changed) and from PETSc's event log; on several ranks every figure is
the maximum over ranks. Rank 0 writes the JSON.
"""

from __future__ import annotations

import time

T_PROCESS = time.perf_counter()  # before the heavy imports (the process itself started a bit earlier)

from mpi4py import MPI  # noqa: E402, I001  (must precede dolfinx / petsc4py)

import argparse
import functools
import json
import resource
import shutil
import tempfile
import tomllib
from pathlib import Path

import numpy as np
from petsc4py import PETSc

COMM = MPI.COMM_WORLD
CLOCK = time.perf_counter
PETSC_EVENTS = ("PCSetUp", "KSPSolve", "SNESFunctionEval", "SNESJacobianEval", "SNESLineSearch")


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


RSS_AFTER_IMPORT = None  # set in main()


# ----------------------------------------------------------------------------- instrumentation
class Timers:
    """Accumulated wall time per label, plus call counts."""

    def __init__(self):
        self.t: dict[str, float] = {}
        self.n: dict[str, int] = {}
        self.solver = None  # the last TransportSolver constructed

    def reset(self):
        self.t.clear()
        self.n.clear()
        self.solver = None

    def add(self, key, dt):
        self.t[key] = self.t.get(key, 0.0) + dt
        self.n[key] = self.n.get(key, 0) + 1


T = Timers()


def _timed(key, fn, key2=None):
    @functools.wraps(fn)
    def wrapper(*a, **k):
        t0 = CLOCK()
        try:
            return fn(*a, **k)
        finally:
            T.add(key, CLOCK() - t0)
            if key2:
                T.add(key2, CLOCK() - t0)

    return wrapper


class _TimedWriter:
    """Proxy around a VTX/XDMF writer that times writes (field output)."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        attr = getattr(self._inner, name)
        if name in ("write", "write_function", "write_mesh", "close"):
            return _timed("out_fields", attr)
        return attr


def install_instrumentation():
    import dolfinx.io

    from nmcfx.solver import figures, outputs, run, simulation, transport

    TS = transport.TransportSolver
    orig_init = TS.__init__

    def init(self, *a, **k):
        t0 = CLOCK()
        orig_init(self, *a, **k)
        T.add("solver_setup", CLOCK() - t0)
        T.solver = self

    TS.__init__ = init
    TS.solve_step = _timed("solve_step", TS.solve_step)
    TS._update_coefficients = _timed("coefficients", TS._update_coefficients)
    simulation.Simulation.__init__ = _timed("sim_init", simulation.Simulation.__init__)
    simulation.Simulation.run = _timed("loop", simulation.Simulation.run)
    run.metadata = _timed("metadata", run.metadata)
    run.prepare = _timed("prepare", run.prepare)  # nmcfx.run looks both up at call time
    run.execute = _timed("execute", run.execute)
    RO = outputs.RunOutputs
    for name in ("start", "record", "snapshot", "step_end", "finish", "close"):
        setattr(RO, name, _timed(f"out_{name}", getattr(RO, name)))
    try:  # checkpoints (solver/checkpoint.py), when the library has them
        from nmcfx.solver import checkpoint

        for name in ("save", "due"):
            if hasattr(checkpoint.Checkpointer, name):
                setattr(checkpoint.Checkpointer, name, _timed("checkpoint", getattr(checkpoint.Checkpointer, name)))
    except ImportError:
        pass
    for name in ("theta_maps", "center_trace", "kymograph"):
        setattr(figures, name, _timed("out_figures", getattr(figures, name), f"fig_{name}"))
    for name in ("VTXWriter", "XDMFFile"):
        cls = getattr(dolfinx.io, name)

        def factory(*a, _cls=cls, **k):
            t0 = CLOCK()
            w = _cls(*a, **k)
            T.add("out_fields", CLOCK() - t0)
            return _TimedWriter(w)

        setattr(dolfinx.io, name, factory)


def petsc_times() -> dict:
    return {e: PETSc.Log.Event(e).getPerfInfo()["time"] for e in PETSC_EVENTS}


def reduce_max(d: dict) -> dict:
    keys = sorted(set().union(*COMM.allgather(set(d))))
    return {k: COMM.allreduce(float(d.get(k, 0.0)), op=MPI.MAX) for k in keys}


# ----------------------------------------------------------------------------- configs
def example_config(name: str, mesh: tuple[float, float] | None, outputs: str | None):
    """The built-in example ``name`` as a RunSpec, with the mesh sizes and outputs of the case."""
    import nmcfx

    over = {"output.progress": False}
    if mesh is not None:
        over.update({"geometry.mesh_size_um": mesh[0], "geometry.surface_mesh_size_um": mesh[1]})
    if outputs == "none":
        over.update({"output.fields": "none", "output.figures": False})
    return nmcfx.load(f"example:{name}", over)


def warmup_config(spec):
    """Same geometry/forms/outputs, one simulated minute: fills JIT and import caches."""
    over = {f"protocol.steps[{i}].duration_min": min(float(s.get("duration_min", 1.0)), 1.0)
            for i, s in enumerate(spec.get("protocol.steps"))}
    return spec.with_overrides(over | {"output.snapshot_times_min": [0.5, 1.0]})


def variant_overrides(v: dict) -> dict:
    """Dotted overrides of a sweep variant ({label, geometry/solver/output tables, petsc_options})."""
    over = {f"{table}.{k}": val for table in ("geometry", "solver", "output") for k, val in v.get(table, {}).items()}
    if "petsc_options" in v:
        over["solver.petsc_options"] = v["petsc_options"]
    return over


def tmpdir() -> Path:
    d = tempfile.mkdtemp(prefix="nmcfx-bench-") if COMM.rank == 0 else None
    return Path(COMM.bcast(d, root=0))


def observables_from_series(series: dict, times_s) -> list[dict]:
    """θ observables at ``times_s`` from a run's time series (``RunResult.timeseries``)."""
    import numpy as np

    t_all = np.asarray(series["time_s"], dtype=float)
    out = []
    for t in times_s:
        i = int(np.argmin(np.abs(t_all - t)))
        if abs(t_all[i] - t) <= 1e-6 * max(1.0, t):
            out.append({k: float(series[k][i]) for k in ("time_s", "theta_center", "theta_mean", "theta_surface_min")})
    return out


def observables_from_history(history, times_s) -> list[dict]:
    out = []
    for t in times_s:
        for r in history:
            if abs(r.time_s - t) <= 1e-6 * max(1.0, t):
                out.append({"time_s": r.time_s, "theta_center": r.theta_center, "theta_mean": r.theta_mean,
                            "theta_surface_min": r.theta_surface_min})
                break
    return out


def median_runs(runs: list[dict]) -> dict:
    """The repeat with the median wall time (its whole breakdown, so the parts add up)."""
    order = sorted(range(len(runs)), key=lambda i: runs[i]["timings"]["wall"])
    out = dict(runs[order[(len(runs) - 1) // 2]])
    out["wall_s_all"] = [r["timings"]["wall"] for r in runs]
    out["best"] = {"timings": runs[order[0]]["timings"]}  # the fastest repeat: least disturbed by other jobs
    return out


# ----------------------------------------------------------------------------- modes
def run_framework(spec, outdir: Path) -> dict:
    """``nmcfx.run`` exactly as `nmcfx run` does, instrumented (``mesh``: inside prepare)."""
    import nmcfx

    T.reset()
    ev0 = petsc_times()
    COMM.Barrier()
    t0 = CLOCK()
    result = nmcfx.run(spec, outdir, comm=COMM, progress=False)
    t2 = CLOCK()
    summary = result.summary
    ev = {k: v - ev0[k] for k, v in petsc_times().items()}
    sv = T.solver
    c = sv.counters
    t = dict(T.t)
    outputs_loop = sum(v for k, v in t.items() if k.startswith("out_") and k not in ("out_close", "out_fields",
                                                                                      "out_figures"))
    timings = {
        "mesh": T.t.get("prepare", 0.0),  # validation + mesh
        "execute": T.t.get("execute", 0.0),
        "wall": t2 - t0,
        "solver_setup": t.get("solver_setup", 0.0),
        "metadata": t.get("metadata", 0.0),
        "sim_init": t.get("sim_init", 0.0),
        "loop": t.get("loop", 0.0),
        "solve_step": t.get("solve_step", 0.0),
        "assembly": c.assembly_time,
        "coefficients": t.get("coefficients", 0.0),
        "linear_solve": ev["PCSetUp"] + ev["KSPSolve"],
        "lu_factorization": ev["PCSetUp"],
        "out_start": t.get("out_start", 0.0),
        "out_record": t.get("out_record", 0.0),
        "out_snapshot": t.get("out_snapshot", 0.0),
        "out_step_end": t.get("out_step_end", 0.0),
        "out_fields": t.get("out_fields", 0.0),
        "out_finish": t.get("out_finish", 0.0),
        "out_figures": t.get("out_figures", 0.0),
        **{f"fig_{n}": t.get(f"fig_{n}", 0.0) for n in ("theta_maps", "center_trace", "kymograph")},
        "outputs": outputs_loop,
        "checkpoint": t.get("checkpoint", 0.0),
    }
    # max over ranks of each measured time first, then the derived ones (rank 0 does the
    # file/figure work while the others wait in a collective, so per-rank differences mislead)
    timings = reduce_max(timings)
    timings["snes_other"] = timings["solve_step"] - timings["assembly"] - timings["linear_solve"]
    timings["framework_python"] = (timings["loop"] - timings["solve_step"] - timings["outputs"]
                                   - timings["checkpoint"])
    timings["setup_other"] = timings["execute"] - timings["loop"]
    res = {
        "dofs": summary["dofs"], "steps": c.steps, "rejected_steps": c.rejected_steps,
        "newton_iterations": c.newton_iterations, "linear_iterations": c.linear_iterations,
        "residual_evaluations": c.residual_evaluations, "jacobian_evaluations": c.jacobian_evaluations,
        "end_time_min": summary["end_time_min"], "theta_center_final": summary["theta_center_final"],
        "front_at_center_min": summary["front_at_center_min"], "timings": timings,
        "petsc_options": {k: str(v) for k, v in sv.petsc_options.items()},
    }
    snaps = [60.0 * m for m in spec.get("output.snapshot_times_min", [])]
    res["observables"] = observables_from_series(result.timeseries, snaps)
    return res


def mode_framework(args) -> dict:
    spec = example_config(args.example, tuple(args.mesh) if args.mesh else None, args.outputs)
    if args.solver:
        spec = spec.with_overrides({f"solver.{k}": v for k, v in json.loads(args.solver).items()})
    work = tmpdir()
    try:
        first = run_framework(spec if args.warmup == "full" else warmup_config(spec), work / "warmup")
        runs = [run_framework(spec, work / f"run{i}") for i in range(args.repeat)]
    finally:
        if COMM.rank == 0:
            shutil.rmtree(work, ignore_errors=True)
    res = median_runs(runs)
    res.update(example=args.example, mesh=spec.get("geometry.mesh_size_um"),
               surface_mesh=spec.get("geometry.surface_mesh_size_um"), outputs=args.outputs,
               solver_overrides=json.loads(args.solver) if args.solver else {}, warmup=args.warmup,
               first_run_wall_s=first["timings"]["wall"])
    return res


def mode_sweep(args) -> dict:
    """The disk with settings varied through the config only (no library change), one process."""
    base = example_config("disk_100mAg", tuple(args.mesh) if args.mesh else None, "full")
    variants = json.loads(args.variants)
    work = tmpdir()
    out = []
    try:
        run_framework(base, work / "warmup")
        for i, v in enumerate(variants):
            spec = base.with_overrides(variant_overrides(v))
            runs = [run_framework(spec, work / f"v{i}_{r}") for r in range(args.repeat)]
            res = median_runs(runs)
            res.update(label=v["label"], variant=v)
            out.append(res)
    finally:
        if COMM.rank == 0:
            shutil.rmtree(work, ignore_errors=True)
    return {"variants": out}


def fixed_settings(dt: float) -> dict:
    # bdf1 with dt_initial = dt_max = dt; theta_tol at its upper limit (0.05) rejects no step at
    # these rates, so every step is dt (the report shows the rejected-step count)
    return {"time_scheme": "bdf1", "dt_initial_s": dt, "dt_max_s": dt, "theta_tol": 0.05}


#: the fixed-step cases and the blocked arc's η the bare script is given for each
FIXED_CASE_ETA = {"disk": 1.0, "fig4c": 0.3}


def fixed_case_config(case: str, mesh: tuple[float, float]):
    """The unblocked disk (``disk``: the disk_100mAg example) or Lun 2025 Fig. 4c (``fig4c``: the arc
    −45°…45° blocked with η = 0.3, as in peer_race.py) at the given mesh sizes, outputs off."""
    import nmcfx

    if case == "disk":
        return example_config("disk_100mAg", mesh, "none")
    from peer_race import FIG4C_TOML

    over = {"geometry.mesh_size_um": mesh[0], "geometry.surface_mesh_size_um": mesh[1]}
    return nmcfx.load(tomllib.loads(FIG4C_TOML), over)


def mode_fixed(args) -> dict:
    """The framework at a fixed step, three depths, to compare with bare_dolfinx_disk.py."""
    from nmcfx.solver.run import particle_solver
    from nmcfx.solver.simulation import Simulation

    dt = args.dt
    # P1: the bare script's discretisation (the framework's 2D default is P2; the ratio measures
    # overhead at equal arithmetic, so both sides use P1)
    spec = fixed_case_config(args.case, tuple(args.mesh)).with_overrides(
        {"solver": fixed_settings(dt) | {"degree": 1}})
    # the same with PETSc's Newton test (a user tolerance, the bare script's: nmcfx's update criterion,
    # chord steps and own Newton loop off), so that the Newton iterations are the bare script's too
    spec_petsc = fixed_case_config(args.case, tuple(args.mesh)).with_overrides(
        {"solver": fixed_settings(dt) | {"degree": 1, "petsc_options": {"snes_rtol": 1e-10}}})
    snaps_s = [60.0 * m for m in spec.get("output.snapshot_times_min")]
    work = tmpdir()

    def tier_execute(i, spec=spec):
        return run_framework(spec, work / f"exec{i}")

    def tier_simulation(core: bool, spec=spec):
        T.reset()
        ev0 = petsc_times()
        COMM.Barrier()
        t0 = CLOCK()
        pr = spec.prepare(COMM)
        t1 = CLOCK()
        st = pr.solver
        sv = particle_solver(pr.particle, pr.material, st, pr.surface)
        # the solver-core tier probes θ at the origin like the bare script (the framework probes the
        # mesh centroid, a hair off the origin on the blocked disk's asymmetric mesh)
        sim = Simulation(sv, pr.material, pr.protocol, st, snapshot_times_s=snaps_s,
                         center=0.0 * np.asarray(pr.particle.centroid) if core else None)
        t2 = CLOCK()
        if not core:
            sim.run()
            obs = observables_from_history(sim.history, snaps_s)
        else:
            # the solver core alone: the same dt sequence through solve_step/accept, observables
            # only at the report times (as the bare script does)
            step = pr.protocol.steps[0]
            sv.set_initial(pr.protocol.initial_theta)
            sv.set_fluxes(sim.sector_fluxes(sim.current_density(step)))
            n = int(round(step.duration_s / dt))
            report = {int(round(t / dt)) for t in snaps_s}
            obs = []
            for k in range(1, n + 1):
                r = sv.solve_step(dt, None, 1, None)
                if not r.converged:
                    raise RuntimeError(f"Newton failed at step {k}")
                sv.accept()
                sv.counters.steps += 1
                if k in report:
                    obs.append({"time_s": k * dt, **sim.observe()})
        t3 = CLOCK()
        ev = {k: v - ev0[k] for k, v in petsc_times().items()}
        c = sv.counters
        timings = reduce_max({"mesh": t1 - t0, "setup": t2 - t1, "loop": t3 - t2, "wall": t3 - t0,
                              "assembly": c.assembly_time, "coefficients": T.t.get("coefficients", 0.0),
                              "linear_solve": ev["PCSetUp"] + ev["KSPSolve"],
                              "solve_step": T.t.get("solve_step", 0.0)})
        return {"dofs": sv.num_dofs, "steps": c.steps, "rejected_steps": c.rejected_steps,
                "petsc_options": {k: str(v) for k, v in sv.petsc_options.items()},
                "newton_iterations": c.newton_iterations, "linear_iterations": c.linear_iterations,
                "timings": timings, "observables": obs}

    def tier_bare():
        # the bare script's own solve(), in this process and interleaved with the framework's
        # tiers so that both see the same machine load
        import bare_dolfinx_disk

        ev0 = petsc_times()
        r = bare_dolfinx_disk.solve(COMM, h=args.mesh[0], hs=args.mesh[1], dt=dt, lu=lu,
                                    eta=FIXED_CASE_ETA[args.case])
        ev = {k: v - ev0[k] for k, v in petsc_times().items()}
        t = {"mesh": r["mesh_s"], "setup": r["setup_s"], "loop": r["loop_s"], "wall": r["wall_s"],
             "assembly": r["assembly_s"], "linear_solve": ev["PCSetUp"] + ev["KSPSolve"]}
        return {"dofs": r["dofs"], "steps": r["steps"], "rejected_steps": 0, "newton_iterations": r["newton_iterations"],
                "linear_iterations": r["linear_iterations"], "timings": reduce_max(t), "observables": r["observables"],
                "lu": lu}

    try:
        run_framework(warmup_config(spec), work / "warmup")
        lu = T.solver.petsc_options.get("pc_factor_mat_solver_type", "mumps")
        tier_bare()  # warm-up of the bare forms
        runs = {"bare": [], "execute": [], "simulation": [], "solver_core": [], "execute_petsc": [],
                "solver_core_petsc": []}
        for i in range(args.repeat):
            runs["bare"].append(tier_bare())
            runs["execute"].append(tier_execute(i))
            runs["simulation"].append(tier_simulation(core=False))
            runs["solver_core"].append(tier_simulation(core=True))
            runs["execute_petsc"].append(tier_execute(f"p{i}", spec_petsc))
            runs["solver_core_petsc"].append(tier_simulation(core=True, spec=spec_petsc))
    finally:
        if COMM.rank == 0:
            shutil.rmtree(work, ignore_errors=True)
    out = {k: median_runs(v) for k, v in runs.items()}
    for v in out.values():
        v["timings"].setdefault("setup", v["timings"]["wall"] - v["timings"]["mesh"] - v["timings"]["loop"])
    return {"case": args.case, "dt_s": dt, "mesh": args.mesh[0], "surface_mesh": args.mesh[1], "tiers": out}


def mode_reference(args) -> dict:
    import nmcfx
    from nmcfx.solver.simulation import SolverSettings

    spec = example_config("disk_100mAg", tuple(args.mesh), "none").with_overrides({"solver": {"theta_tol": args.theta_tol}})
    snaps_s = [60.0 * m for m in spec.get("output.snapshot_times_min")]
    work = tmpdir()
    try:
        t0 = CLOCK()
        result = nmcfx.run(spec, work / "reference", comm=COMM, progress=False)
        wall = COMM.allreduce(CLOCK() - t0, op=MPI.MAX)
    finally:
        if COMM.rank == 0:
            shutil.rmtree(work, ignore_errors=True)
    return {"mesh": args.mesh[0], "surface_mesh": args.mesh[1], "theta_tol": args.theta_tol,
            "time_scheme": SolverSettings.from_dict(spec.get("solver")).time_scheme, "dofs": result.summary["dofs"],
            "steps": result.summary["steps"], "wall_s": wall, "ranks": COMM.size,
            "observables": observables_from_series(result.timeseries, snaps_s)}


def main(argv=None):
    global RSS_AFTER_IMPORT
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=("framework", "fixed", "reference", "sweep"))
    p.add_argument("--example", default="disk_100mAg")
    p.add_argument("--mesh", type=float, nargs=2, metavar=("H", "H_SURFACE"))
    p.add_argument("--outputs", choices=("full", "none"), default="full")
    p.add_argument("--solver", help="JSON dict merged into [solver]")
    p.add_argument("--variants", help="sweep: JSON list of {label, geometry/solver/output/petsc_options}")
    p.add_argument("--dt", type=float, default=30.0)
    p.add_argument("--case", choices=tuple(FIXED_CASE_ETA), default="fig4c", help="fixed: the case")
    p.add_argument("--theta-tol", type=float, default=1e-5)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--warmup", choices=("short", "full"), default="short",
                   help="untimed first run: 1 simulated minute (short) or the whole case (full)")
    p.add_argument("--json", required=True)
    args = p.parse_args(argv)

    import dolfinx  # noqa: F401
    import gmsh  # noqa: F401
    import nmcfx.solver.run  # noqa: F401

    import_s = COMM.allreduce(CLOCK() - T_PROCESS, op=MPI.MAX)
    RSS_AFTER_IMPORT = COMM.allreduce(rss_mb(), op=MPI.MAX)
    PETSc.Log.begin()
    install_instrumentation()
    modes = {"framework": mode_framework, "fixed": mode_fixed, "reference": mode_reference, "sweep": mode_sweep}
    res = modes[args.mode](args)
    res["ranks"] = COMM.size
    res["peak_rss_mb"] = COMM.allreduce(rss_mb(), op=MPI.MAX)
    res["rss_after_import_mb"] = RSS_AFTER_IMPORT
    res["import_s"] = import_s
    if COMM.rank == 0:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=1, default=float)


if __name__ == "__main__":
    main()
