"""Benchmark: the preset composite electrode's first charge (Sharma 2022 Fig. 4a layout, C/20 to 4.3 V).

Prints DOFs, steps, Newton and linear iterations, wall time split into meshing / set-up / time
loop, and peak memory (RSS) — never asserts. Runs through ``prepare``/``execute`` like
``nmcfx run`` (outputs off, so the time is the simulation's).

    python benchmarks/electrode_first_charge.py [--mesh-size 1.5] [--hours 25]
    mpiexec -n 2 python benchmarks/electrode_first_charge.py
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time

from mpi4py import MPI


def config(mesh_size: float, hours: float) -> dict:
    return {
        "title": "benchmark: preset electrode, first charge at C/20",
        "geometry": {"shape": "electrode", "preset": "sharma2022", "mesh_size_um": mesh_size,
                     "surface_mesh_size_um": 0.4 * mesh_size},
        "protocol": {"initial_theta": 0.99,
                     "steps": [{"type": "charge", "c_rate": 0.05, "duration_min": 60.0 * hours,
                                "until": ["voltage_V >= 4.3"]}]},
        "solver": {"dt_max_s": 900.0},
        "output": {"fields": "none", "figures": False, "progress": False, "snapshot_times_min": []},
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mesh-size", type=float, default=1.5, help="bulk mesh size (µm); default 1.5 (the study's)")
    p.add_argument("--hours", type=float, default=25.0, help="cap on the charge duration (h)")
    p.add_argument("--json", help="also write the numbers to this file")
    args = p.parse_args()
    comm = MPI.COMM_WORLD
    from nmcfx.solver.run import execute, prepare

    cfg = config(args.mesh_size, args.hours)
    t0 = time.perf_counter()
    run = prepare(cfg, comm=comm)
    t_mesh = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:
        out = comm.bcast(d if comm.rank == 0 else None, root=0)
        t1 = time.perf_counter()
        s = execute(run, f"{out}/run", comm=comm, progress=False)
        t_run = time.perf_counter() - t1
    peak_mb = comm.allreduce(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, op=MPI.MAX)
    res = {"ranks": comm.size, "mesh_size_um": args.mesh_size, "dofs": s["dofs"], "simulated_h": s["end_time_h"],
           "end_voltage_V": s["voltage_final_V"], "capacity_mAh_g": s["capacity_mAh_g"], "steps": s["steps"],
           "rejected": s["rejected_steps"], "newton": s["newton_iterations"], "linear": s["linear_iterations"],
           "mesh_s": t_mesh, "run_s": t_run, "assembly_s": s["assembly_time_s"], "peak_rss_MB": peak_mb,
           "onset_spread_h": s["charge_steps"][0]["onset_spread_h"] if s["charge_steps"] else None,
           "max_li_balance": s["max_abs_mass_balance_error"], "max_charge_balance": s["max_abs_charge_balance_error"]}
    if comm.rank == 0:
        print("preset electrode, first charge (C/20 to 4.3 V), outputs off")
        print(f"  ranks {res['ranks']}, mesh {args.mesh_size:g} µm, {res['dofs']} DOFs")
        print(f"  simulated {res['simulated_h']:.2f} h to {res['end_voltage_V']:.3f} V, {res['capacity_mAh_g']:.1f} mAh/g")
        print(f"  {res['steps']} steps ({res['rejected']} retried), {res['newton']} Newton, {res['linear']} linear iterations")
        print(f"  wall: mesh {res['mesh_s']:.1f} s + run {res['run_s']:.1f} s (assembly {res['assembly_s']:.1f} s)"
              f"   target: <= 300 s on one core")
        print(f"  peak RSS {res['peak_rss_MB']:.0f} MB; balances Li {res['max_li_balance']:.1e}, "
              f"charge {res['max_charge_balance']:.1e}")
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(res, fh, indent=2)


if __name__ == "__main__":
    main()
