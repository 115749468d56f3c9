"""nmcfx performance benchmarks: prints a table, writes benchmarks/results/latest.json.

    python benchmarks/run_benchmarks.py                 # full: 2 mesh sizes, 1 and 2 ranks (~2 min)
    python benchmarks/run_benchmarks.py --quick         # example mesh sizes, serial only
    python benchmarks/run_benchmarks.py --ranks 1 2 --repeat 3

What runs (each case in its own process, so peak RSS is per case; 2-rank cases under mpiexec):
  * ``flagship`` (Xu 2022 particle, C/3, 60 min) and ``disk_100mAg`` (2.4 µm disk, 100 mA/g,
    20 min), each at the example's mesh size and at half of it, exactly as ``nmcfx run`` runs
    them (``nmcfx.run`` on the example's RunSpec: prepare + execute), with all outputs and - for
    the disk - with outputs off;
  * the disk at a fixed backward-Euler step through the framework and through the bare
    DOLFINx script ``bare_dolfinx_disk.py``: the framework's overhead at equal steps;
  * whole ``nmcfx run`` processes of the disk, Fig. 4c and the flagship with their default outputs
    (``memory_2d.py``): peak RSS, anonymous and file-backed (issue 10 target 6, < 200 MB);
  * a converged reference of the disk (fine mesh, tight ``theta_tol``; cached in
    ``benchmarks/.cache``) against which θ_center, θ_mean and θ_surface_min at 5/10/15/20 min
    are compared.
Timings are never asserted; targets are printed next to the measurements.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORKER = HERE / "_worker.py"
CACHE = HERE / ".cache"
RESULTS = HERE / "results"

MESHES = {  # (interior, surface) element sizes in µm: the example's, then half of it
    "disk_100mAg": [(0.15, 0.05), (0.075, 0.025)],
    "flagship": [(0.12, 0.04), (0.06, 0.02)],
}
REFERENCE = {"mesh": (0.0375, 0.0125), "theta_tol": 1e-5}  # disk: h/4 and theta_tol 2e-3/200
FIXED_DT_S = 30.0
FIXED_CASES = ("fig4c", "disk")  # Lun 2025 Fig. 4c (arc blocked with η = 0.3; the target's case), unblocked disk
OFF = {"fields": "none", "figures": False}
SWEEP = [  # the disk, serial, example mesh; settings changed through the config only
    {"label": "example settings, outputs off", "output": OFF},
    {"label": "solver.theta_tol = 5e-3", "solver": {"theta_tol": 5e-3}, "output": OFF},
    {"label": "solver.theta_tol = 1e-2", "solver": {"theta_tol": 1e-2}, "output": OFF},
    {"label": "solver.theta_tol = 5e-4", "solver": {"theta_tol": 5e-4}, "output": OFF},
    {"label": "solver.time_scheme = bdf1", "solver": {"time_scheme": "bdf1"}, "output": OFF},
    {"label": "LU: PETSc native instead of MUMPS", "petsc_options": {"pc_factor_mat_solver_type": "petsc"},
     "output": OFF},
    {"label": "snes_rtol = 1e-6", "petsc_options": {"snes_rtol": 1e-6}, "output": OFF},
    {"label": "mesh 0.24/0.08 µm", "geometry": {"mesh_size_um": 0.24, "surface_mesh_size_um": 0.08}, "output": OFF},
    {"label": "mesh 0.3/0.1 µm", "geometry": {"mesh_size_um": 0.3, "surface_mesh_size_um": 0.1}, "output": OFF},
    {"label": "example settings, all outputs"},
    {"label": "all outputs, image_pixels = 80", "output": {"image_pixels": 80}},
    {"label": "VTX fields only (figures = false)", "output": {"figures": False}},
    {"label": "figures only (fields = 'none')", "output": {"fields": "none"}},
]
QUANTITIES = ("theta_center", "theta_mean", "theta_surface_min")
TARGET_WALL_S = 1.5
TARGET_ACCURACY = 0.01
TARGET_OVERHEAD = 1.10  # issue 10 target 3, on the blocked case (fig4c)


# ----------------------------------------------------------------------------- subprocesses
def _env():
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MPLBACKEND", "Agg")
    return env


def _mpiexec():
    cand = Path(sys.executable).parent / "mpiexec"
    return str(cand) if cand.exists() else (shutil.which("mpiexec") or "mpiexec")


def launch(script: Path, args: list[str], ranks: int, label: str, timeout: float = 600) -> dict:
    """Run ``script args --json F`` on ``ranks`` ranks; return the JSON it wrote (or an error)."""
    fd, out = tempfile.mkstemp(suffix=".json", prefix="nmcfx-bench-")
    os.close(fd)
    cmd = [sys.executable, str(script), *args, "--json", out]
    if ranks > 1:
        cmd = [_mpiexec(), "-n", str(ranks), *cmd]
    print(f"  running {label} ...", end="", flush=True, file=sys.stderr)
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            print(f" FAILED ({p.returncode})\n{p.stderr[-3000:]}", file=sys.stderr)
            return {"error": p.stderr[-3000:], "returncode": p.returncode}
        with open(out) as fh:
            res = json.load(fh)
        res["process_wall_s"] = wall
        print(f" {wall:.1f} s", file=sys.stderr)
        return res
    except subprocess.TimeoutExpired:
        print(" TIMEOUT", file=sys.stderr)
        return {"error": f"timeout after {timeout} s"}
    finally:
        Path(out).unlink(missing_ok=True)


# ----------------------------------------------------------------------------- reference
def _reference_key() -> str:
    h = hashlib.sha256(json.dumps(REFERENCE, sort_keys=True).encode())
    files = [ROOT / "studies" / "examples" / "disk_100mAg.toml", WORKER]
    for folder in ("solver", "materials", "geometries"):
        files += sorted((ROOT / folder).rglob("*.py")) + sorted((ROOT / folder).rglob("*.csv"))
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def reference(recompute: bool) -> dict:
    key = _reference_key()
    path = CACHE / "disk_reference.json"
    if path.exists() and not recompute:
        data = json.loads(path.read_text())
        if data.get("key") == key:
            data["cached"] = True
            return data
    h, hs = REFERENCE["mesh"]
    print("  (computing the converged disk reference once; cached in benchmarks/.cache/)", file=sys.stderr)
    data = launch(WORKER, ["reference", "--mesh", str(h), str(hs), "--theta-tol", str(REFERENCE["theta_tol"])], 1,
                  f"reference disk h={h} theta_tol={REFERENCE['theta_tol']:g}")
    if "error" in data:
        return data
    data["key"] = key
    CACHE.mkdir(exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    data["cached"] = False
    return data


def deviation(obs: list[dict], ref: dict) -> dict | None:
    """Max relative deviation |θ − θ_ref| / θ_ref over the report times and quantities."""
    if not obs or "observables" not in ref:
        return None
    refs = {round(o["time_s"]): o for o in ref["observables"]}
    worst = {"rel": 0.0, "abs": 0.0, "where": ""}
    end = 0.0
    for o in obs:
        r = refs.get(round(o["time_s"]))
        if r is None:
            continue
        for q in QUANTITIES:
            d = abs(o[q] - r[q])
            rel = d / abs(r[q])
            if round(o["time_s"]) == max(refs):
                end = max(end, rel)
            if rel > worst["rel"]:
                worst = {"rel": rel, "abs": d, "where": f"{q} @ {o['time_s'] / 60:g} min"}
    worst["rel_at_end"] = end
    return worst


# ----------------------------------------------------------------------------- formatting
def fmt_s(x) -> str:
    return "-" if x is None else f"{x:.3f}" if x < 10 else f"{x:.2f}"


def print_cases(cases: list[dict]):
    head = (f"{'case':<12} {'h/h_s µm':<11} {'rk':>2} {'out':<4} {'DOFs':>5} {'steps':>7} {'Newt':>5} {'lin':>5} "
            f"{'mesh':>6} {'setup':>6} {'asm':>6} {'LU':>6} {'snes':>6} {'py':>6} {'output':>6} {'ckpt':>6} "
            f"{'wall':>6} {'RSS MB':>7}")
    print(head)
    print("-" * len(head))
    for c in cases:
        if "error" in c:
            print(f"{c.get('example', '?'):<12} ERROR: {c['error'].splitlines()[-1] if c['error'] else ''}")
            continue
        t = c["timings"]
        setup = t["execute"] - t["loop"] + t["out_start"]
        outp = t["outputs"] - t["out_start"]
        print(f"{c['example']:<12} {c['mesh']:g}/{c['surface_mesh']:g}".ljust(25)
              + f" {c['ranks']:>2} {c['outputs']:<4} {c['dofs']:>5} {c['steps']:>4}({c['rejected_steps']:>1})"
              f" {c['newton_iterations']:>5} {c['linear_iterations']:>5} {fmt_s(t['mesh']):>6} {fmt_s(setup):>6}"
              f" {fmt_s(t['assembly']):>6} {fmt_s(t['linear_solve']):>6} {fmt_s(t['snes_other']):>6}"
              f" {fmt_s(t['framework_python']):>6} {fmt_s(outp):>6} {fmt_s(t.get('checkpoint', 0.0)):>6}"
              f" {fmt_s(t['wall']):>6} {c['peak_rss_mb']:>7.0f}")
    print("  columns (s, warm, median of repeats, max over ranks): mesh = gmsh + distribution (prepare);"
          " setup = forms/SNES,\n  metadata, probes, output set-up; asm = residual + Jacobian assembly incl. the"
          " NumPy D_chem(θ) update;\n  LU = PETSc factorisation + triangular solves; snes = rest of the Newton"
          " solve; py = framework Python per\n  step (observables, error estimate, predictor, ledger, records);"
          " output = CSV rows, snapshots, VTX, figures;\n  ckpt = checkpoint writes (solver/checkpoint.py); wall = prepare + execute in-process. RSS = peak"
          " resident memory of the process (max over ranks), incl. ~130 MB of imports.")


def breakdown(c: dict) -> list[tuple[str, float]]:
    t = c["timings"]
    parts = [
        ("mesh (gmsh + distribute)", t["mesh"]),
        ("solver set-up (forms, SNES, measures)", t["solver_setup"]),
        ("metadata.json (git, versions)", t["metadata"]),
        ("output set-up (image/line probes, VTX open)", t["out_start"]),
        ("assembly: NumPy D_chem(θ), dD_chem(θ)", t["coefficients"]),
        ("assembly: forms F, J (DOLFINx)", t["assembly"] - t["coefficients"]),
        ("linear solve (LU factorisation + solves)", t["linear_solve"]),
        ("SNES other (norms, line search, checks)", t["snes_other"]),
        ("framework Python per step", t["framework_python"]),
        ("outputs per step (line probe, CSV rows)", t["out_record"] + t["out_step_end"]),
        ("snapshots (image probe + VTX writes)", t["out_snapshot"]),
        ("finish: figure theta_maps.png", t.get("fig_theta_maps", 0.0)),
        ("finish: figure center_trace.png", t.get("fig_center_trace", 0.0)),
        ("finish: figure kymograph.png", t.get("fig_kymograph", 0.0)),
        ("finish: line_profiles.csv, closing", t["out_finish"] - t["out_figures"]),
        ("checkpoints (state.json + rank npz)", t.get("checkpoint", 0.0)),
    ]
    rest = t["wall"] - sum(v for _, v in parts)
    parts.append(("rest (summary, Simulation init, barriers)", rest))
    return parts


def print_breakdown(c: dict, title: str):
    print(title)
    wall = c["timings"]["wall"]
    for name, v in breakdown(c):
        print(f"  {name:<46} {v:7.3f} s  {100 * v / wall:5.1f} %")
    print(f"  {'total (warm in-process wall)':<46} {wall:7.3f} s")


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="nmcfx performance benchmarks (timings are printed, never asserted)")
    p.add_argument("--quick", action="store_true", help="example mesh sizes only, serial only")
    p.add_argument("--ranks", type=int, nargs="+", default=None, help="MPI sizes (default: 1 2; --quick: 1)")
    p.add_argument("--repeat", type=int, default=None,
                   help="timed repeats per disk case (default 3; flagship cases 1); medians are reported")
    p.add_argument("--skip-flagship", action="store_true")
    p.add_argument("--no-sweep", action="store_true", help="skip the settings sweep of the disk")
    p.add_argument("--recompute-reference", action="store_true", help="ignore the cached disk reference")
    p.add_argument("--json", default=str(RESULTS / "latest.json"), help="where to write the numbers")
    args = p.parse_args(argv)
    ranks = args.ranks or ([1] if args.quick else [1, 2])
    nmesh = 1 if args.quick else 2
    rep_disk = args.repeat or 3
    rep_flag = args.repeat or 1
    t_start = time.perf_counter()
    load0 = os.getloadavg()[0]

    print("nmcfx benchmarks", file=sys.stderr)
    ref = reference(args.recompute_reference)

    cases = []
    for r in ranks:
        for ex in ([] if args.skip_flagship else ["flagship"]) + ["disk_100mAg"]:
            for h, hs in MESHES[ex][:nmesh]:
                for outputs in (("full", "none") if ex == "disk_100mAg" else ("full",)):
                    rep = rep_disk if ex == "disk_100mAg" else rep_flag
                    c = launch(WORKER, ["framework", "--example", ex, "--mesh", str(h), str(hs), "--outputs",
                                        outputs, "--repeat", str(rep),
                                        "--warmup", "full" if ex == "disk_100mAg" else "short"], r,
                               f"{ex} h={h} ranks={r} outputs={outputs}")
                    c.setdefault("example", ex)
                    if "error" not in c and ex == "disk_100mAg":
                        c["accuracy"] = deviation(c.get("observables"), ref)
                    cases.append(c)

    fixed = []
    for case in FIXED_CASES:
        for r in ranks:
            for h, hs in MESHES["disk_100mAg"][:nmesh]:
                fw = launch(WORKER, ["fixed", "--case", case, "--mesh", str(h), str(hs), "--dt", str(FIXED_DT_S),
                                     "--repeat", str(args.repeat or (5 if h == MESHES["disk_100mAg"][0][0] else 3))],
                            r, f"fixed-step framework + bare DOLFINx, {case} h={h} ranks={r}")
                bare = fw["tiers"]["bare"] if "tiers" in fw else fw
                fixed.append({"case": case, "ranks": r, "mesh": h, "surface_mesh": hs, "framework": fw, "bare": bare,
                              "peak_rss_mb": fw.get("peak_rss_mb")})

    sweep = None
    if 1 in ranks and not args.no_sweep:
        sweep = launch(WORKER, ["sweep", "--variants", json.dumps(SWEEP), "--repeat", "1" if args.quick else "2"], 1,
                       f"settings sweep ({len(SWEEP)} variants, disk, serial)")
        for v in sweep.get("variants", []):
            v["accuracy"] = deviation(v.get("observables"), ref)

    # the CLI as a user runs it, a second time (JIT cache filled): includes interpreter start + imports
    cli = None
    if 1 in ranks:
        with tempfile.TemporaryDirectory() as d:
            cmd = [str(Path(sys.executable).parent / "nmcfx"), "run", "--example", "disk_100mAg", "-q", "-o", d]
            print("  running CLI `nmcfx run --example disk_100mAg` ...", end="", flush=True, file=sys.stderr)
            t0 = time.perf_counter()
            pr = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True)
            cli = time.perf_counter() - t0 if pr.returncode == 0 else None
            print(f" {cli:.1f} s" if cli else " FAILED", file=sys.stderr)
    # peak memory of whole 2D processes with their default outputs (figures included): issue 10 target 6
    memory = None
    if 1 in ranks:
        from memory_2d import run_cases, summarise

        memory = summarise(run_cases(["disk_100mAg", "fig4c", "fig4c_off"] + ([] if args.skip_flagship else ["flagship"]),
                                     1, Path(sys.executable).parent / "nmcfx"))

    report(args, ref, cases, fixed, sweep, cli, load0, time.perf_counter() - t_start, memory)
    sys.stdout.flush()
    return 0


def report(args, ref, cases, fixed, sweep, cli, load0, elapsed, memory=None):
    now = datetime.datetime.now().astimezone()
    load1 = os.getloadavg()[0]
    print()
    print(f"nmcfx benchmarks  {now:%Y-%m-%d %H:%M %Z}  host {platform.node()}  {os.cpu_count()} cores  "
          f"load avg {load0:.2f} -> {load1:.2f}  ({elapsed:.0f} s)")
    print("warm = timed in-process after an untimed first run in the same process (the whole case for the disk,"
          " 1 simulated\nminute for the flagship): JIT caches, imports and first-call costs are paid")
    if max(load0, load1) > 0.5:
        print(f"NOTE: the machine was not idle (load {max(load0, load1):.1f} on {os.cpu_count()} cores): "
              "timings are inflated/noisy")
    print()
    print("[1] `nmcfx run` (prepare + execute), warm")
    print_cases(cases)

    # ---- accuracy
    print()
    if "error" in ref:
        print("[2] accuracy: reference failed")
    else:
        print(f"[2] accuracy of the disk vs a converged reference (h = {ref['mesh']}/{ref['surface_mesh']} µm, "
              f"{ref['dofs']} DOFs, theta_tol = {ref['theta_tol']:g}, {ref['steps']} {ref['time_scheme']} steps"
              f"{', cached' if ref.get('cached') else ''})")
        print("    max over t = 5, 10, 15, 20 min of |θ − θ_ref|/θ_ref for θ_center, θ_mean, θ_surface_min")
        for c in cases:
            a = c.get("accuracy")
            if a:
                print(f"  {c['example']} h={c['mesh']:g} ranks={c['ranks']} outputs={c['outputs']:<4}: "
                      f"max rel dev {100 * a['rel']:.3f} % ({a['where']}, |Δθ| = {a['abs']:.1e}); "
                      f"at 20 min {100 * a['rel_at_end']:.3f} %")
        for f in fixed:
            fw = f["framework"]
            if "error" not in fw:
                a = deviation(fw["tiers"]["execute"]["observables"], ref)
                b = deviation(f["bare"].get("observables"), ref) if "observables" in f["bare"] else None
                if a:
                    print(f"  fixed BE dt={FIXED_DT_S:g}s h={f['mesh']:g} ranks={f['ranks']}: framework "
                          f"{100 * a['rel']:.3f} % ({a['where']}), bare "
                          f"{'-' if b is None else f'{100 * b['rel']:.3f} %'}")
                    f["accuracy"] = {"framework": a, "bare": b}

    # ---- overhead
    print()
    print(f"[3] framework overhead at equal steps: backward Euler, fixed dt = {FIXED_DT_S:g} s "
          f"({round(1200 / FIXED_DT_S)} steps), same mesh, same discretisation (P1: `[solver] degree = 1`),")
    print("    SNES tolerances and LU package as the bare script. The bare script's solve() runs in the same process,"
          "\n    interleaved with the framework variants (same machine load); times (s) are of the fastest of the repeats"
          "\n    (least disturbed by other jobs), '(median)' is the wall ratio of the median repeats.")
    print("    nmcfx run  = prepare + execute with output.fields='none', figures=false (solver: bdf1,"
          " dt_initial_s = dt_max_s = dt,\n                 theta_tol = 0.05 so no step is rejected or resized)")
    print("    Simulation = the same time loop without the RunOutputs observer and checkpoints (per-step"
          " observables, error\n                 estimate and predictor kept)")
    print("    solve_step = TransportSolver.solve_step + accept driven directly with the bare script's dt sequence"
          " and initial\n                 guess (θ_n), nmcfx's Newton (update criterion, chord steps: fewer iterations)")
    print("    run, PETSc / step, PETSc = nmcfx run / solve_step with PETSc's Newton test (`snes_rtol = 1e-10`, the bare"
          " script's):\n                 the same Newton iterations, the same arithmetic as the bare script")
    head = (f"  {'case':<6} {'h':>6} {'rk':>2} {'variant':<11} {'DOFs':>5} {'steps':>5} {'Newton':>6} {'mesh':>6} {'setup':>6}"
            f" {'loop':>6} {'asm':>6} {'LU':>6} {'wall':>6} {'wall ratio':>10} {'loop ratio':>10} {'(median)':>8}")
    print(head)
    for f in fixed:
        fw, bare = f["framework"], f["bare"]
        if "error" in fw or "error" in bare:
            print(f"  {f['case']:<6} {f['mesh']:>6g} {f['ranks']:>2} ERROR")
            continue
        names = {"bare": "bare", "execute": "nmcfx run", "simulation": "Simulation", "solver_core": "solve_step",
                 "execute_petsc": "run, PETSc", "solver_core_petsc": "step, PETSc"}
        bb, bm = bare["best"]["timings"], bare["timings"]
        f["ratios"] = {}
        for k in names:
            if k not in fw["tiers"]:
                continue
            tier = fw["tiers"][k]
            t, tm = tier["best"]["timings"], tier["timings"]
            rw, rl, rwm = t["wall"] / bb["wall"], t["loop"] / bb["loop"], tm["wall"] / bm["wall"]
            if k != "bare":
                f["ratios"][names[k]] = {"wall": rw, "loop": rl, "wall_median": rwm,
                                         "loop_median": tm["loop"] / bm["loop"]}
            print(f"  {f['case']:<6} {f['mesh']:>6g} {f['ranks']:>2} {names[k]:<11} {tier['dofs']:>5} {tier['steps']:>5}"
                  f" {tier['newton_iterations']:>6} {t['mesh']:6.3f} {t['wall'] - t['mesh'] - t['loop']:6.3f}"
                  f" {t['loop']:6.3f} {t['assembly']:6.3f} {t['linear_solve']:6.3f} {t['wall']:6.3f} {rw:9.2f}x"
                  f" {rl:9.2f}x {rwm:7.2f}x")
        core = fw["tiers"].get("solver_core_petsc", fw["tiers"]["solver_core"])
        dth = max((abs(a[q] - b[q]) for a, b in zip(core["observables"], bare["observables"]) for q in QUANTITIES),
                  default=float("nan"))
        same = core["newton_iterations"] == bare["newton_iterations"] and core["dofs"] == bare["dofs"]
        f["consistency"] = {"same_newton_and_dofs": same, "max_abs_dtheta": dth}
        print(f"  {'':>9} check: step, PETSc vs bare: {'same' if same else 'DIFFERENT'} DOFs and Newton counts,"
              f" max |Δθ| = {dth:.1e} at the report times"
              + ("" if same and dth < 1e-8 else "  <- WARNING: bare script no longer mirrors the framework"))
        t = fw["tiers"]["execute"]["best"]["timings"]
        extra = t["wall"] - bb["wall"]
        parts = {"output set-up (probes)": t["out_start"], "checkpoints": t.get("checkpoint", 0.0),
                 "metadata.json": t["metadata"], "per-step observables + records": t["framework_python"]
                 + t["out_record"] + t["out_step_end"] + t["out_snapshot"]}
        parts["rest (Newton its saved by the predictor, noise)"] = extra - sum(parts.values())
        f["overhead_parts_s"] = parts
        print(f"  {'':>9} `nmcfx run` − bare = {extra:+.3f} s: "
              + ", ".join(f"{k} {v:+.3f}" for k, v in parts.items()))
    print("  (the framework's predictor - linear extrapolation of the last two states - saves Newton iterations,"
          " which is\n   why `Simulation` can be cheaper than the bare loop at equal steps)")

    # ---- targets
    print()
    print("[4] targets (printed, never asserted)")
    head_full = next((c for c in cases if c.get("example") == "disk_100mAg" and c.get("ranks") == 1
                      and c.get("outputs") == "full" and c.get("mesh") == MESHES["disk_100mAg"][0][0]
                      and "error" not in c), None)
    head_none = next((c for c in cases if c.get("example") == "disk_100mAg" and c.get("ranks") == 1
                      and c.get("outputs") == "none" and c.get("mesh") == MESHES["disk_100mAg"][0][0]
                      and "error" not in c), None)
    targets = {}
    for key, name, c in (("disk_full_outputs", "disk, all outputs (= `nmcfx run --example disk_100mAg`)", head_full),
                         ("disk_outputs_off", "disk, outputs off (fields='none', figures=false)", head_none)):
        if not c:
            continue
        w = c["timings"]["wall"]
        rel = (c.get("accuracy") or {}).get("rel")
        ok = w <= TARGET_WALL_S and rel is not None and rel <= TARGET_ACCURACY
        targets[key] = {"wall_s": w, "wall_s_all": c["wall_s_all"], "first_run_wall_s": c.get("first_run_wall_s"),
                        "target_s": TARGET_WALL_S, "accuracy_rel": rel, "accuracy_target": TARGET_ACCURACY, "met": ok}
        print(f"  {name}:\n    warm wall {w:.3f} s (median of {', '.join(f'{x:.2f}' for x in c['wall_s_all'])};"
              f" first run in the process {c.get('first_run_wall_s', float('nan')):.2f} s) vs <= {TARGET_WALL_S} s;"
              f" θ within {'?' if rel is None else f'{100 * rel:.2f}'} % of the reference vs <= 1 %"
              f"  ->  {'MET' if ok else 'MISSED'}")
    if cli is not None:
        targets["cli_process_wall_s"] = cli
        imp = head_full.get("import_s") if head_full else None
        first = head_full.get("first_run_wall_s") if head_full else None
        extra = ""
        if imp is not None and first is not None:
            extra = (f" = imports of dolfinx/petsc4py/gmsh/nmcfx {imp:.2f} s + first run in the process"
                     f" {first:.2f} s\n     + interpreter start/exit and CLI {cli - imp - first:.2f} s")
        print(f"    (for comparison, the CLI process `nmcfx run --example disk_100mAg -q`, JIT cache filled:"
              f" {cli:.2f} s{extra})")
    if memory:
        from memory_2d import TARGET_MB, print_table

        targets["memory_2d"] = memory
        print(f"  peak RSS of whole 2D `nmcfx run` processes (default outputs, figures included) vs < {TARGET_MB:.0f} MB:")
        print_table(memory)
    f1 = next((f for f in fixed if f["case"] == "fig4c" and f["ranks"] == 1 and f["mesh"] == MESHES["disk_100mAg"][0][0]
               and "ratios" in f), None)
    if f1:
        r = f1["ratios"]
        ok = r["nmcfx run"]["wall"] <= TARGET_OVERHEAD
        targets["overhead"] = {"wall_ratio": r["nmcfx run"]["wall"], "loop_ratio_simulation": r["Simulation"]["loop"],
                               "loop_ratio_solve_step": r["solve_step"]["loop"], "target": TARGET_OVERHEAD, "met": ok}
        print(f"  framework overhead at equal steps (Fig. 4c, blocked arc, P1, serial, example mesh):\n    `nmcfx run` (outputs off) / bare ="
              f" {r['nmcfx run']['wall']:.2f}x wall (median repeats {r['nmcfx run']['wall_median']:.2f}x)"
              f" vs <= {TARGET_OVERHEAD}x  ->  {'MET' if ok else 'MISSED'}\n    time loop only: Simulation"
              f" {r['Simulation']['loop']:.2f}x, solve_step {r['solve_step']['loop']:.2f}x")
    if head_full:
        print()
        print_breakdown(head_full, "[5] where the time goes: disk_100mAg, example mesh, serial, all outputs (warm)")
    if head_none:
        print_breakdown(head_none, "    the same with outputs off")

    if sweep and "variants" in sweep:
        print()
        print("[6] settings sweep: the disk, serial, changed through the config only (warm, median; accuracy as in [2])")
        base = sweep["variants"][0]["timings"]["wall"]
        print(f"  {'variant':<36} {'DOFs':>5} {'steps':>7} {'Newton':>6} {'solve':>6} {'o-set':>6} {'figs':>6}"
              f" {'wall':>6} {'vs 1st':>7} {'max rel dev':>11}")
        for v in sweep["variants"]:
            t = v["timings"]
            a = v.get("accuracy") or {}
            print(f"  {v['label']:<36} {v['dofs']:>5} {v['steps']:>4}({v['rejected_steps']:>1}) {v['newton_iterations']:>6}"
                  f" {t['solve_step']:6.3f} {t['out_start']:6.3f} {t['out_figures']:6.3f} {t['wall']:6.3f}"
                  f" {t['wall'] / base:6.2f}x {100 * a.get('rel', float('nan')):10.3f}%")
        print("  (solve = time in solve_step (Newton: assembly + LU), o-set = output set-up (image/line probes),"
              " figs = the three\n   PNG figures; 'vs 1st' = wall relative to the first row; medians of few repeats on"
              " a shared machine: ±10 %)")
    elif sweep:
        print("\n[6] settings sweep failed")

    out = {
        "date": now.isoformat(timespec="seconds"), "host": platform.node(), "cpu_count": os.cpu_count(),
        "load_avg": [load0, load1], "elapsed_s": elapsed, "argv": sys.argv[1:], "git_revision": _git_rev(),
        "targets": targets, "reference": ref, "cases": cases, "fixed_step_comparison": fixed, "sweep": sweep,
        "cli_process_wall_s": cli, "memory_2d": memory,
    }
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, default=float))
    print(f"\nnumbers in {path}")


def _git_rev() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
