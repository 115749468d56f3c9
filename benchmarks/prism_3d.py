"""3D at scale: a prism over a 2.4 µm disk, 100 mA g⁻¹ for 20 min, serial and on 2 ranks.

Runs ``nmcfx.solver.run.prepare`` + ``execute`` (what ``nmcfx run`` does; fields, figures and
checkpoints off) in a fresh process per rank count and prints, side by side: DOFs, cells, the
mesher and the linear solver chosen, steps, Newton and Krylov iterations, time per step, the
meshing and time-loop walls, the PETSc linear-solve time (PCSetUp + KSPSolve), peak RSS (max
per rank and the sum over ranks), the Li balance, and the 1 → 2 rank parallel efficiency of
the time loop (the solve phase) and of the linear solves. On a shared machine the wall times
include other jobs' share of the cores, so the time loop's CPU time per rank (max over ranks;
MPICH ranks busy-poll while waiting, so communication counts) is printed too, and its ratio is
the efficiency an idle machine would show. Nothing is asserted.

    python benchmarks/prism_3d.py                                   # ~1 M DOFs, 1 and 2 ranks
    python benchmarks/prism_3d.py --mesh-size 0.05 --ranks 1        # smaller, serial only
    python benchmarks/prism_3d.py --mesh-size 0.05 --lu             # the same with MUMPS LU forced
    python benchmarks/prism_3d.py --mesh-only                       # DOFs/cells/meshing, no run

The mesh: the 2D cross-section by gmsh (bulk ``--mesh-size``, ``--surface-mesh-size`` at the
lateral surface), extruded in layers of the bulk size by every rank (``mesher = "extrude"``,
:mod:`nmcfx.geometries._extrude`). Progress goes to stderr, the table to stdout, every number
to ``benchmarks/results/prism_3d.json`` (git-ignored).
"""

from __future__ import annotations

import time

T_PROCESS = time.perf_counter()

from mpi4py import MPI  # noqa: E402, I001  (must precede dolfinx / petsc4py)

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
COMM = MPI.COMM_WORLD


def rss_mb() -> float:
    """Peak resident memory of this process so far (MB; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def config(args) -> dict:
    geometry = {
        "shape": "prism", "height_um": args.height, "mesher": args.mesher,
        "mesh_size_um": args.mesh_size, "surface_mesh_size_um": args.surface_mesh_size,
        "max_cells": 50_000_000,  # above the default on machines with < 16 GB (limits.py: 1.5 kB per cell)
        "cross_section": {"shape": "disk", "diameter_um": 2.4},
    }
    solver = {}
    if args.lu:
        solver["petsc_options"] = {"ksp_type": "preonly", "pc_type": "lu", "pc_factor_mat_solver_type": "mumps"}
    return {
        "title": f"prism over a 2.4 µm disk, height {args.height:g} µm, 100 mA/g, {args.minutes:g} min",
        "geometry": geometry,
        "protocol": {"initial_theta": 0.95,
                     "steps": [{"type": "charge", "current_mA_g": 100, "duration_min": args.minutes}]},
        "solver": solver,
        "output": {"fields": "none", "figures": False, "progress": False},
    }


class Progress:
    """Simulation observer: the linear solver chosen, and one stderr line per accepted step."""

    def __init__(self):
        self.linear_solver = None
        self.t0 = None
        self.walls: list[float] = []

    def start(self, sim, restore=None):
        self.linear_solver = sim.solver.problem.linear_solver
        self.t0 = time.perf_counter()

    def record(self, sim, rec):
        now = time.perf_counter()
        self.walls.append(now - self.t0)
        if COMM.rank == 0:
            c = sim.solver.counters
            print(f"  t = {rec.time_s / 60:6.2f} min  step {c.steps:3d}  Newton {c.newton_iterations:4d}  "
                  f"Krylov {c.linear_iterations:6d}  wall {self.walls[-1]:7.1f} s  RSS {rss_mb():6.0f} MB",
                  file=sys.stderr, flush=True)

    def snapshot(self, sim, t):
        pass

    def step_end(self, sim, info):
        pass

    def finish(self, sim):
        pass


def linear_solve_time() -> float:
    from petsc4py import PETSc

    return sum(PETSc.Log.Event(e).getPerfInfo()["time"] for e in ("PCSetUp", "KSPSolve"))


def worker(args) -> None:
    """One case in this process (serial, or one rank of mpiexec)."""
    from petsc4py import PETSc

    PETSc.Log.begin()
    rss_import = rss_mb()
    from nmcfx.solver.run import execute, prepare

    cfg = config(args)
    COMM.Barrier()
    t0 = time.perf_counter()
    prepared = prepare(cfg)
    COMM.Barrier()
    t_mesh = time.perf_counter() - t0
    info = prepared.particle.info
    rss_mesh = rss_mb()
    result = {"ranks": COMM.size, "mesher": info.get("mesher", "gmsh (rank 0)"), "cells": info["num_cells"],
              "vertices": info["num_vertices"], "layers": info.get("layers"), "mesh_s": t_mesh,
              "volume_um3": prepared.particle.measure, "rss_import_mb": rss_import}
    if args.mesh_only:
        result.update(dofs=info["num_vertices"])
    else:
        progress = Progress()
        out = Path(tempfile.mkdtemp(prefix="nmcfx_prism3d_")) if COMM.rank == 0 else None
        out = Path(COMM.bcast(str(out) if out else None, root=0))
        ls0 = linear_solve_time()
        COMM.Barrier()
        t1, c1 = time.perf_counter(), time.process_time()
        summary = execute(prepared, out, progress=False, observers=[progress])
        c_loop = COMM.allreduce(time.process_time() - c1, op=MPI.MAX)
        COMM.Barrier()
        t_loop = time.perf_counter() - t1
        t_linear = COMM.allreduce(linear_solve_time() - ls0, op=MPI.MAX)
        if COMM.rank == 0:
            shutil.rmtree(out, ignore_errors=True)
        steps = summary["steps"]
        result.update(
            dofs=summary["dofs"], linear_solver=progress.linear_solver, steps=steps,
            rejected_steps=summary["rejected_steps"], newton=summary["newton_iterations"],
            krylov=summary["linear_iterations"], execute_s=t_loop, execute_cpu_s=c_loop, linear_solve_s=t_linear,
            per_step_s=t_loop / max(steps, 1), li_balance=summary["max_abs_mass_balance_error"],
            theta_mean=summary["theta_mean_final"], theta_center=summary["theta_center_final"])
    result["rss_mesh_mb"] = COMM.allreduce(rss_mesh, op=MPI.MAX)
    peak = rss_mb()
    result["rss_peak_max_mb"] = COMM.allreduce(peak, op=MPI.MAX)
    result["rss_peak_sum_mb"] = COMM.allreduce(peak, op=MPI.SUM)
    result["process_s"] = COMM.allreduce(time.perf_counter() - T_PROCESS, op=MPI.MAX)
    if COMM.rank == 0 and args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


ROWS = [("DOFs", "dofs", "{:,}"), ("cells", "cells", "{:,}"), ("layers", "layers", "{}"),
        ("mesher", "mesher", "{}"), ("linear solver", "linear_solver", "{}"),
        ("steps (rejected)", None, None), ("Newton iterations", "newton", "{}"),
        ("Krylov iterations", "krylov", "{}"), ("meshing (s)", "mesh_s", "{:.1f}"),
        ("time loop (s)", "execute_s", "{:.1f}"), ("time loop, CPU per rank (s)", "execute_cpu_s", "{:.1f}"), ("  linear solves (s)", "linear_solve_s", "{:.1f}"),
        ("time per step (s)", "per_step_s", "{:.2f}"), ("peak RSS per rank (MB)", "rss_peak_max_mb", "{:.0f}"),
        ("peak RSS, all ranks (MB)", "rss_peak_sum_mb", "{:.0f}"), ("RSS after meshing (MB)", "rss_mesh_mb", "{:.0f}"),
        ("Li balance |err|", "li_balance", "{:.1e}"), ("θ mean / centre at end", None, None),
        ("whole process (s)", "process_s", "{:.1f}")]


def table(results: list[dict]) -> str:
    lines = [f"{'':28s}" + "".join(f"{str(r['ranks']) + ' rank(s)':>22s}" for r in results)]
    for label, key, fmt in ROWS:
        cells = []
        for r in results:
            if label.startswith("steps"):
                v = f"{r['steps']} ({r['rejected_steps']})" if "steps" in r else "-"
            elif label.startswith("θ"):
                v = f"{r['theta_mean']:.5f} / {r['theta_center']:.5f}" if "theta_mean" in r else "-"
            else:
                v = fmt.format(r[key]) if r.get(key) is not None else "-"
            cells.append(f"{v:>22s}")
        lines.append(f"{label:28s}" + "".join(cells))
    one = next((r for r in results if r["ranks"] == 1), None)
    for r in results:
        if one is not None and r is not one and "execute_s" in r and "execute_s" in one:
            n = r["ranks"]
            lines.append(f"parallel efficiency 1 → {n} ranks: time loop {one['execute_s'] / (n * r['execute_s']):.0%} "
                         f"(wall), {one['execute_cpu_s'] / (n * r['execute_cpu_s']):.0%} (CPU time: what an idle "
                         f"machine would show); linear solves {one['linear_solve_s'] / (n * r['linear_solve_s']):.0%}; "
                         f"meshing {one['mesh_s'] / (n * r['mesh_s']):.0%}")
    load = os.getloadavg()[0]
    lines.append(f"load average at the end: {load:.1f} on {os.cpu_count()} cores (wall times are inflated by other "
                 "jobs; CPU time per rank is not, as MPICH ranks poll rather than sleep while they wait)")
    return "\n".join(lines)


def driver(args) -> None:
    """Each rank count in its own fresh process, one after the other (never two at once)."""
    results = []
    for n in args.ranks:
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
            path = fh.name
        cmd = [sys.executable, __file__, "--worker", "--json", path] + forwarded(args)
        if n > 1:
            cmd = ["mpiexec", "-n", str(n)] + cmd
        print(f"[prism_3d] {n} rank(s): {' '.join(cmd)}", file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True)
        results.append(json.loads(Path(path).read_text()))
        os.unlink(path)
    text = table(results)
    print(text)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "prism_3d.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=1))


def forwarded(args) -> list[str]:
    out = ["--mesh-size", str(args.mesh_size), "--surface-mesh-size", str(args.surface_mesh_size),
           "--height", str(args.height), "--minutes", str(args.minutes), "--mesher", args.mesher]
    return out + (["--lu"] if args.lu else []) + (["--mesh-only"] if args.mesh_only else [])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mesh-size", type=float, default=0.027, help="bulk cell size and layer height (µm)")
    p.add_argument("--surface-mesh-size", type=float, default=0.0135, help="cell size at the lateral surface (µm)")
    p.add_argument("--height", type=float, default=2.4, help="prism height (µm)")
    p.add_argument("--minutes", type=float, default=20.0)
    p.add_argument("--mesher", default="extrude", choices=("auto", "gmsh", "extrude"))
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--lu", action="store_true", help="force MUMPS LU (the [solver] petsc_options override)")
    p.add_argument("--mesh-only", action="store_true", help="mesh and count, no time stepping")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
    else:
        driver(args)


if __name__ == "__main__":
    main()
