"""Sweep throughput: 100 cases of the Lun disk (S × rate × η) on N local workers.

    python benchmarks/sweep_throughput.py                # 100 cases, 2 workers (~1-2 min on 2 cores)
    python benchmarks/sweep_throughput.py --workers 1 --limit 20
    python benchmarks/sweep_throughput.py --fresh 3      # also: 3 cases as fresh `nmcfx run` processes

Prints cases per minute, the one-time start-up of a worker (interpreter, imports, first
JIT), the overhead per case (the time workers spend outside cases, amortised: dispatch,
start-up, idle tail) next to the case itself, the split of a case into validation +
mesh and solve, and, for comparison, what a fresh process per case costs. Peak RSS of
the workers from getrusage. Timings are never asserted (see README.md).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SWEEP = HERE / "sweep_lun_disk.toml"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--limit", type=int, help="only the first N cases")
    p.add_argument("--fresh", type=int, default=3, help="cases also run as fresh `nmcfx run` processes (0: none)")
    p.add_argument("--keep", metavar="DIR", help="sweep directory to keep (default: a temporary one)")
    args = p.parse_args(argv)

    from mpi4py import MPI  # noqa: F401

    from nmcfx.sweep.definition import load_sweep
    from nmcfx.sweep.engine import Plan
    from nmcfx.sweep.local import LocalPool
    from nmcfx.sweep.results import gather

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="nmcfx-sweep-bench-"))
    if work.exists() and args.keep:
        shutil.rmtree(work)
    try:
        t_validate = time.perf_counter()
        sweep = load_sweep(SWEEP)
        plan = Plan(sweep, work)
        t_validate = time.perf_counter() - t_validate
        plan.write_manifest()
        payloads = plan.payloads()[: args.limit] if args.limit else plan.payloads()
        n = len(payloads)
        print(f"sweep: {SWEEP.name}, {n} cases (validated in {t_validate:.2f} s), {args.workers} local workers",
              file=sys.stderr)
        done = []
        t0 = time.perf_counter()
        with LocalPool(args.workers, work / "logs") as pool:
            pool.run(payloads, work, lambda o: (done.append(o), print(f"  {len(done)}/{n} {o['name']}: "
                                                                      f"{o['status']} {o['wall_s']:.2f} s",
                                                                      file=sys.stderr)))
            startup = list(pool.startup_s)
        wall = time.perf_counter() - t0
        res = gather(work)
        ok = [r for r in res.rows if r["status"] == "done"][: n]
        case_wall = [r["wall_s"] for r in ok]
        solve_wall = [r["wall_time_s"] for r in ok]
        setup_wall = [c - s for c, s in zip(case_wall, solve_wall)]
        busy = sum(case_wall)
        overhead = (args.workers * wall - busy) / n
        peak_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0

        fresh = []
        if args.fresh:
            from nmcfx.spec import RunSpec

            exe = [sys.executable, "-m", "nmcfx"]
            for c in plan.cases[: args.fresh]:
                cfgdir = work / "fresh" / c.name
                cfgdir.mkdir(parents=True)
                _write_toml(c.spec, cfgdir / "case.toml")
                RunSpec.from_toml(cfgdir / "case.toml")  # the same config, as a file
                t = time.perf_counter()
                subprocess.run(exe + ["run", str(cfgdir / "case.toml"), "-o", str(cfgdir / "out"), "-q"], check=True,
                               capture_output=True)
                total = time.perf_counter() - t
                import json

                inner = json.loads((cfgdir / "out" / "summary.json").read_text())["wall_time_s"]
                fresh.append((total, inner))

        print()
        print("| quantity | value |")
        print("|---|---|")
        print(f"| cases (done / failed) | {len(ok)} / {n - len(ok)} |")
        print(f"| sweep wall time, {args.workers} workers | {wall:.1f} s |")
        print(f"| **cases per minute** | **{60 * n / wall:.1f}** |")
        print(f"| worker start-up, once per worker (interpreter, imports, MPI) | "
              f"{statistics.mean(startup):.2f} s |" if startup else "| worker start-up | n/a |")
        print(f"| case wall, median (validation + mesh + solve + marker) | {statistics.median(case_wall):.2f} s |")
        print(f"|   of which solve (execute: solver set-up, time loop, outputs) | "
              f"{statistics.median(solve_wall):.2f} s |")
        print(f"|   of which validation + mesh + marker | {statistics.median(setup_wall):.3f} s |")
        print(f"| **overhead per case** (worker time outside cases / cases) | **{overhead:.3f} s** "
              f"({100 * overhead / statistics.mean(case_wall):.1f} % of a mean case) |")
        if fresh:
            tot = statistics.mean(t for t, _ in fresh)
            inner = statistics.mean(i for _, i in fresh)
            print(f"| fresh `nmcfx run` process per case ({len(fresh)} cases): process wall / in-process solve | "
                  f"{tot:.2f} s / {inner:.2f} s: **{tot - inner:.2f} s start-up per case** |")
        print(f"| peak RSS of a worker | {peak_children:.0f} MB |")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def _write_toml(spec, path: Path):
    """A run config as TOML (the subset the configs use: tables, arrays of tables, scalars, lists)."""
    lines = []

    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f'"{k}" = {value(x)}' for k, x in v.items()) + " }"
        return repr(v)

    def table(name, d):
        scalars = {k: v for k, v in d.items() if not (isinstance(v, dict) or _is_table_list(v))}
        if name:
            lines.append(f"[{name}]")
        for k, v in scalars.items():
            lines.append(f"{k} = {value(v)}")
        for k, v in d.items():
            if isinstance(v, dict):
                table(f"{name}.{k}" if name else k, v)
            elif _is_table_list(v):
                for item in v:
                    lines.append(f"[[{name}.{k}]]" if name else f"[[{k}]]")
                    for kk, vv in item.items():
                        lines.append(f"{kk} = {value(vv)}")

    table("", spec.config)
    path.write_text("\n".join(lines) + "\n")


def _is_table_list(v) -> bool:
    return isinstance(v, list) and v and all(isinstance(x, dict) for x in v)


if __name__ == "__main__":
    main()
