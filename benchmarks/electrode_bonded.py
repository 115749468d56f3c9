"""Benchmark: the cost of electrode mechanics, free particles vs the bonded body (particles + CBD).

The preset electrode's first charge (Sharma 2022 Fig. 4a layout, C/20; the configuration of
``electrode_first_charge.py``) is run three times in one process — without ``[mechanics]``, with free
particles and with ``electrode_bonding = "bonded"`` (both plane strain, P2) — in turn, ``--repeat``
times, after a warm-up. Prints displacement DOFs, solves, factorisations, the mechanics observer's
time per accepted step and the whole run's wall time; never asserts. Through ``prepare``/``execute``
like ``nmcfx run`` (outputs off).

    python benchmarks/electrode_bonded.py [--mesh-size 1.5] [--hours 6] [--repeat 2]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

from mpi4py import MPI

sys.path.insert(0, str(Path(__file__).resolve().parent))
from electrode_first_charge import config  # noqa: E402

CASES = {"none": None,
         "free": {"electrode_bonding": "free", "assumption_2d": "plane_strain"},
         "bonded": {"electrode_bonding": "bonded", "assumption_2d": "plane_strain"}}


def run_case(cfg: dict, comm) -> dict:
    from nmcfx.solver.run import execute, prepare

    with tempfile.TemporaryDirectory() as d:
        out = comm.bcast(d if comm.rank == 0 else None, root=0)
        t0 = time.perf_counter()
        s = execute(prepare(cfg, comm=comm), f"{out}/run", comm=comm, progress=False)
        wall = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)
        mech = None
        if comm.rank == 0 and Path(f"{out}/run/mechanics.json").exists():
            mech = json.loads(Path(f"{out}/run/mechanics.json").read_text())
        mech = comm.bcast(mech, root=0)
    res = {"wall_s": wall, "steps": s["steps"]}
    if mech:
        res.update(dofs=sum(mech["resolved"]["dofs"].values()), solves=mech["cost"]["solves"],
                   factorizations=mech["cost"]["factorizations"], mechanics_s=mech["cost"]["observer_time_s"],
                   ms_per_step=1e3 * mech["cost"]["observer_time_s"] / max(1, s["steps"] + 1))
    return res


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mesh-size", type=float, default=1.5, help="bulk mesh size (µm)")
    p.add_argument("--hours", type=float, default=6.0, help="simulated hours of the first charge")
    p.add_argument("--repeat", type=int, default=2)
    args = p.parse_args()
    comm = MPI.COMM_WORLD
    base = config(args.mesh_size, args.hours)
    run_case(copy.deepcopy(base) | {"protocol": {"initial_theta": 0.99, "steps": [
        {"type": "charge", "c_rate": 0.05, "duration_min": 30}]}, "mechanics": CASES["bonded"]}, comm)  # warm-up
    rows = {k: [] for k in CASES}
    for _ in range(args.repeat):
        for key, mech in CASES.items():
            cfg = copy.deepcopy(base)
            if mech:
                cfg["mechanics"] = dict(mech)
            rows[key].append(run_case(cfg, comm))
    if comm.rank == 0:
        print(f"preset electrode, mesh {args.mesh_size} µm, {args.hours:g} h of C/20 charge, {comm.size} rank(s); "
              f"best of {args.repeat}")
        none = min(r["wall_s"] for r in rows["none"])
        for key, rs in rows.items():
            best = min(rs, key=lambda r: r["wall_s"])
            extra = "" if key == "none" else (
                f", {best['dofs']} displacement DOFs, {best['solves']} solves, {best['factorizations']} "
                f"factorisation(s), mechanics {best['mechanics_s']:.2f} s = {best['ms_per_step']:.1f} ms/step")
            print(f"  {key:>6s}: run {best['wall_s']:.1f} s ({100 * (best['wall_s'] / none - 1):+.0f} % vs none), "
                  f"{best['steps']} steps{extra}")


if __name__ == "__main__":
    main()
