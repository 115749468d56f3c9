"""nmcfx against the independent scikit-fem peer on Lun 2025 Fig. 4c, side by side (issue 10, targets 1-2).

    ./dev run python benchmarks/peer_race.py                 # ~1 min (+ ~3-4 min once for the references)
    ./dev run python benchmarks/peer_race.py --repeat 7 --rounds 3 --peer /path/to/skfem_disk.py

The case: a 2.4 µm disk, the arc -45°..45° blocked with η = 0.3, 100 mA/g from θ₀ = 0.95 for
20 min (Lun 2025 Fig. 4c). nmcfx runs it through ``nmcfx.run`` (load → prepare → execute, the
path of ``nmcfx run``) with its *defaults* (no mesh size, no solver settings: P2 on the
degree-dependent graded mesh) and outputs off; the peer (``../shared/peers/skfem_disk.py``,
needs ``scikit-fem``, the ``bench`` extra) at its ~1 %-accurate setting ``--mesh circle
--nrefs 4`` with the D_chem table written by ``nmcfx materials show NMC-Ni87 --points 4001
--csv``. What is printed:

* **accuracy**: θ_center, θ_surface_min and θ_mean at 5/10/15/20 min against a converged nmcfx
  reference (P2, mesh 0.04/0.013 µm, ``theta_tol = 2e-5``; cached in ``benchmarks/.cache``,
  keyed by the sources of solver/, materials/, geometries/ and the configs), as the largest
  |θ − θ_ref| over quantities and times divided by the particle's θ drop at that time,
  θ₀ − θ_mean,ref(t). Also for the unblocked ``disk_100mAg`` example (as shipped, and with
  its mesh sizes removed, i.e. the defaults). A coarser run (0.06/0.02 µm, ``theta_tol =
  1e-4``) bounds the reference's own error;
* **warm time**: each solver in its own process, an untimed first solve, then ``--repeat``
  solves in the same process (wall and CPU; best and median over all rounds; rounds
  alternate nmcfx and peer so both see the same machine load); the ratio nmcfx / peer;
* **whole process**: the ``nmcfx run`` CLI on the config (a fresh process; JIT cache filled by
  ``./dev setup``) against a fresh peer process: wall, CPU and peak RSS (``os.wait4``);
* peak RSS of the warm-timing processes.

Timings are never asserted. JSON goes to ``benchmarks/results/peer_race.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = HERE / ".cache"
RESULTS = HERE / "results"
PEER_CANDIDATES = (ROOT.parent / "shared" / "peers" / "skfem_disk.py", Path("/work/shared/peers/skfem_disk.py"))
PEER_SETTINGS = {  # the peer's ~1 %-accurate setting (its docstring), and a finer one at about nmcfx's accuracy
    "peer": ["--mesh", "circle", "--nrefs", "4"],
    "peer_fine": ["--mesh", "circle", "--nrefs", "5", "--tol", "5e-4"],
}
PEER_ARGS = PEER_SETTINGS["peer"]
TABLE = CACHE / "dchem_table.csv"
THETA0 = 0.95
TIMES_MIN = (5, 10, 15, 20)
QUANTITIES = ("theta_center", "theta_surface_min", "theta_mean")
REFERENCE = {"mesh_size_um": 0.04, "surface_mesh_size_um": 0.04 / 3, "theta_tol": 2e-5}
CHECK = {"mesh_size_um": 0.06, "surface_mesh_size_um": 0.02, "theta_tol": 1e-4}
TARGET_ERROR, TARGET_RATIO = 0.01, 0.5

#: Lun 2025 Fig. 4c at the defaults with its default outputs (memory_2d.py runs it so)
FIG4C_BASE = """
title = "Lun 2025 Fig. 4c: 2.4 µm disk, ¼ of the surface blocked (η = 0.3), 100 mA/g, 20 min, defaults"

[geometry]
shape = "disk"
diameter_um = 2.4
sectors = [{ name = "blocked", start_deg = -45, end_deg = 45 }]

[surface]
model = "flux"
blocking = { blocked = 0.3 }

[protocol]
initial_theta = 0.95
steps = [{ type = "charge", current_mA_g = 100, duration_min = 20 }]

[output]
snapshot_times_min = [5, 10, 15, 20]
"""
FIG4C_TOML = FIG4C_BASE + 'fields = "none"\nfigures = false\nprogress = false\n'


# ----------------------------------------------------------------------------- configs
def case_config(case: str) -> dict:
    """``fig4c`` (defaults), ``disk_100mAg`` (the example as shipped) or ``disk_defaults``
    (the example without its mesh sizes); outputs off."""
    if case == "fig4c":
        return tomllib.loads(FIG4C_TOML)
    from nmcfx.config import example_path, load_config

    cfg = load_config(example_path("disk_100mAg"))
    if case == "disk_defaults":
        cfg["geometry"] = {k: v for k, v in cfg["geometry"].items() if "mesh_size" not in k}
    cfg["output"] = dict(cfg.get("output", {}), fields="none", figures=False, progress=False)
    return cfg


def observables(ts: dict) -> dict:
    """θ_center, θ_surface_min, θ_mean at the report times from a run's time series."""
    import numpy as np

    out = {}
    for m in TIMES_MIN:
        i = int(np.argmin(np.abs(ts["time_s"] - 60.0 * m)))
        assert abs(ts["time_s"][i] - 60.0 * m) < 1e-6, "snapshot times are hit exactly"
        out[str(m)] = {q: float(ts[q][i]) for q in QUANTITIES}
    return out


def run_case(case: str, outdir: Path, overrides: dict | None = None):
    import nmcfx

    return nmcfx.run(case_config(case), outdir, overrides=overrides, progress=False)


# ----------------------------------------------------------------------------- workers (own processes)
def worker_nmcfx(repeat: int) -> dict:
    """Fig. 4c at the defaults: a first (untimed) run, then ``repeat`` timed runs in this process;
    afterwards the two unblocked disks once each (accuracy only)."""
    from mpi4py import MPI  # noqa: F401  (before dolfinx)

    import nmcfx  # noqa: F401

    work = Path(tempfile.mkdtemp(prefix="nmcfx-race-"))
    try:
        t0 = time.perf_counter()
        run_case("fig4c", work / "first")
        first = time.perf_counter() - t0
        wall, cpu = [], []
        for i in range(repeat):
            t0, c0 = time.perf_counter(), time.process_time()
            r = run_case("fig4c", work / f"run{i}")
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        s = r.summary
        res = {"first_s": first, "wall": wall, "cpu": cpu, "peak_rss_mb": rss, "obs": observables(r.timeseries),
               "dofs": s["dofs"], "steps": s["steps"], "rejected": s["rejected_steps"],
               "newton": s["newton_iterations"], "other_cases": {}}
        for case in ("disk_100mAg", "disk_defaults"):
            r = run_case(case, work / case)
            res["other_cases"][case] = {"obs": observables(r.timeseries), "dofs": r.summary["dofs"],
                                        "steps": r.summary["steps"]}
        return res
    finally:
        shutil.rmtree(work, ignore_errors=True)


def worker_peer(repeat: int, peer: Path, setting: str) -> dict:
    """The peer's own CLI (``main``: first solve, then ``--repeat`` warm ones) imported into this
    process, with its ``solve`` wrapped from the outside to also record CPU time."""
    spec = importlib.util.spec_from_file_location("skfem_disk", peer)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cpu, inner = [], mod.solve

    def solve(*a, **k):
        c0 = time.process_time()
        try:
            return inner(*a, **k)
        finally:
            cpu.append(time.process_time() - c0)

    mod.solve = solve
    fd, out = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    sys.argv = [str(peer), *PEER_SETTINGS[setting], "--table", str(TABLE), "--repeat", str(repeat), "--json", out, "-q"]
    try:
        mod.main()
        raw = json.loads(Path(out).read_text())
    finally:
        os.unlink(out)
    last = (raw["warm"] or [raw["cold"]])[-1]
    obs = {k: {q: v[q] for q in QUANTITIES} for k, v in last["obs"].items()}
    return {"first_s": raw["cold"]["wall"], "wall": [w["wall"] for w in raw["warm"]], "cpu": cpu[1:],
            "peak_rss_mb": raw["peak_rss_mb"], "obs": obs, "dofs": last["dofs"], "steps": last["steps"],
            "rejected": last["rejected"], "newton": last["newton"]}


def worker_reference(case: str, level: str) -> dict:
    from mpi4py import MPI  # noqa: F401

    s = REFERENCE if level == "reference" else CHECK
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        r = run_case(case, Path(d) / "ref", {f"geometry.{k}": v for k, v in s.items() if k != "theta_tol"}
                     | {"solver.theta_tol": s["theta_tol"]})
    return {"settings": s, "obs": observables(r.timeseries), "dofs": r.summary["dofs"], "steps": r.summary["steps"],
            "wall_s": time.perf_counter() - t0}


# ----------------------------------------------------------------------------- driver
def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), MPLBACKEND="Agg")


def launch_worker(*args: str) -> dict:
    fd, out = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        subprocess.run([sys.executable, __file__, "worker", *args, "--json", out], cwd=ROOT, env=_env(), check=True)
        return json.loads(Path(out).read_text())
    finally:
        os.unlink(out)


def timed_process(cmd: list[str]) -> dict:
    """Wall time, CPU time and peak RSS of one fresh process (``os.wait4``: this child's own rusage)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{p.stderr.read().decode()[-2000:]}")
    p.stderr.close()
    return {"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "peak_rss_mb": ru.ru_maxrss / 1024}


def source_key(extra) -> str:
    """Hash of ``extra``, the Fig. 4c config, the disk example and the physics sources."""
    h = hashlib.sha256(json.dumps([extra, FIG4C_TOML], sort_keys=True).encode())
    files = [ROOT / "studies" / "examples" / "disk_100mAg.toml"]
    for folder in ("solver", "materials", "geometries"):
        files += sorted((ROOT / folder).rglob("*.py")) + sorted((ROOT / folder).rglob("*.csv"))
    for f in files:
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:16]


def references(recompute: bool) -> dict:
    """Converged reference and coarser check of the blocked and the unblocked disk (cached)."""
    path = CACHE / "peer_race_reference.json"
    key = source_key([REFERENCE, CHECK])
    if path.exists() and not recompute:
        data = json.loads(path.read_text())
        if data.get("key") == key:
            return data
    data = {"key": key}
    for case in ("fig4c", "disk_100mAg"):
        for level in ("reference", "check"):
            print(f"  computing the {level} run of {case} (once; cached in benchmarks/.cache/) ...", file=sys.stderr)
            data[f"{case}/{level}"] = launch_worker("reference", "--case", case, "--level", level)
    CACHE.mkdir(exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    return data


def error(obs: dict, ref: dict) -> dict:
    """Largest |θ − θ_ref| over quantities and times, as a fraction of θ₀ − θ_mean,ref(t)."""
    worst = {"frac": -1.0}
    for t, r in ref.items():
        drop = THETA0 - r["theta_mean"]
        for q in QUANTITIES:
            d = abs(obs[t][q] - r[q])
            if d / drop > worst["frac"]:
                worst = {"frac": d / drop, "abs": d, "where": f"{q} @ {t} min"}
    return worst


def write_table():
    TABLE.parent.mkdir(exist_ok=True)
    key = source_key("table")
    stamp = TABLE.with_suffix(".key")
    if not TABLE.exists() or not stamp.exists() or stamp.read_text() != key:
        subprocess.run([sys.executable, "-m", "nmcfx", "materials", "show", "NMC-Ni87", "--points", "4001",
                        "--csv", str(TABLE)], cwd=ROOT, env=_env(), check=True, stdout=subprocess.DEVNULL)
        stamp.write_text(key)


def summarise(runs: list[dict]) -> dict:
    wall = [w for r in runs for w in r["wall"]]
    cpu = [c for r in runs for c in r["cpu"]]
    out = {k: runs[-1][k] for k in ("obs", "dofs", "steps", "rejected", "newton")}
    out.update(wall_best=min(wall), wall_median=statistics.median(wall), cpu_best=min(cpu),
               cpu_median=statistics.median(cpu), first_s=[r["first_s"] for r in runs], walls=wall, cpus=cpu,
               peak_rss_mb=max(r["peak_rss_mb"] for r in runs))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeat", type=int, default=5, help="warm solves per process (after an untimed first one)")
    p.add_argument("--rounds", type=int, default=2, help="alternating nmcfx/peer processes for the warm times")
    p.add_argument("--process-repeat", type=int, default=3, help="fresh whole processes of each")
    p.add_argument("--peer", type=Path, default=next((c for c in PEER_CANDIDATES if c.exists()), PEER_CANDIDATES[0]))
    p.add_argument("--no-fine-peer", action="store_true", help="skip the peer's finer setting")
    p.add_argument("--recompute-reference", action="store_true")
    args = p.parse_args(argv)
    if not args.peer.exists():
        print(f"peer_race: --peer {args.peer} does not exist", file=sys.stderr)
        return 2
    load0 = os.getloadavg()
    write_table()
    refs = references(args.recompute_reference)

    print(f"  warm runs: {args.rounds} round(s) of {args.repeat} ...", file=sys.stderr)
    runs = {"nmcfx": [], "peer": []} | ({} if args.no_fine_peer else {"peer_fine": []})
    for _ in range(args.rounds):
        runs["nmcfx"].append(launch_worker("nmcfx", "--repeat", str(args.repeat)))
        for k in [k for k in runs if k != "nmcfx"]:
            runs[k].append(launch_worker("peer", "--repeat", str(args.repeat), "--peer", str(args.peer),
                                         "--setting", k))
    res = {k: summarise(v) for k, v in runs.items()}

    print("  whole processes ...", file=sys.stderr)
    with tempfile.TemporaryDirectory() as d:
        cfg = Path(d) / "fig4c.toml"
        cfg.write_text(FIG4C_TOML)
        cmds = {"nmcfx": lambda i: [sys.executable, "-m", "nmcfx", "run", str(cfg), "-q", "-o", f"{d}/cli{i}"],
                "peer": lambda i: [sys.executable, str(args.peer), *PEER_ARGS, "--table", str(TABLE), "-q"]}
        procs = {k: [] for k in cmds}
        for i in range(args.process_repeat):
            for k, cmd in cmds.items():
                procs[k].append(timed_process(cmd(i)))
    for k, v in procs.items():
        w = [x["wall_s"] for x in v]
        res[k]["process"] = {"wall_best": min(w), "wall_median": statistics.median(w), "walls": w,
                             "cpu_best": min(x["cpu_s"] for x in v), "cpus": [x["cpu_s"] for x in v],
                             "peak_rss_mb": max(x["peak_rss_mb"] for x in v)}

    ref = {c: refs[f"{c}/reference"]["obs"] for c in ("fig4c", "disk_100mAg")}
    for v in res.values():
        v["error"] = error(v["obs"], ref["fig4c"])
    others = {c: error(v["obs"], ref["disk_100mAg"]) | {"dofs": v["dofs"], "steps": v["steps"]}
              for c, v in runs["nmcfx"][-1]["other_cases"].items()}
    ref_check = {c: error(refs[f"{c}/check"]["obs"], ref[c]) for c in ref}
    ratio = {k: {m: res["nmcfx"][m] / res[k][m] for m in ("wall_best", "wall_median", "cpu_best", "cpu_median")}
             for k in res if k != "nmcfx"}
    report(res, others, refs, ref_check, ratio, load0)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "peer_race.json"
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M:%S"), "host": os.uname().nodename,
                               "load_before": load0, "load_after": os.getloadavg(), "args": vars(args) | {
                                   "peer": str(args.peer)}, "peer_settings": PEER_SETTINGS, "fig4c_toml": FIG4C_TOML,
                               "results": res, "other_cases": others, "reference": refs,
                               "reference_check": ref_check, "ratio": ratio}, indent=1))
    print(f"\nJSON: {out.relative_to(ROOT)}")
    return 0


def pct(e: dict) -> str:
    return f"{100 * e['frac']:.2f} % ({e['where']})"


def report(res, others, refs, ref_check, ratio, load0):
    r = refs["fig4c/reference"]
    print(f"\nLun 2025 Fig. 4c (2.4 µm disk, ¼ blocked η = 0.3, 100 mA/g, 20 min); load average {load0[0]:.1f} "
          f"→ {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"reference: nmcfx P2 {r['settings']['mesh_size_um']:g}/{r['settings']['surface_mesh_size_um']:.4g} µm, "
          f"theta_tol {r['settings']['theta_tol']:g}, {r['dofs']} DOFs, {r['steps']} steps; its distance to a coarser "
          f"run ({CHECK['mesh_size_um']:g}/{CHECK['surface_mesh_size_um']:g} µm, {CHECK['theta_tol']:g}): "
          f"{pct(ref_check['fig4c'])}")
    print("error = max |θ − θ_ref| over θ_center, θ_surface_min, θ_mean at 5/10/15/20 min, / (θ₀ − θ_mean,ref(t))\n")
    head = (f"{'':<28} {'DOFs':>5} {'steps':>6} {'Newton':>6}  {'error, % of θ drop':<34} {'warm wall best/med s':>20} "
            f"{'warm CPU best/med s':>19} {'process wall best/med, CPU s':>28} {'RSS warm/proc MB':>16}")
    print(head)
    print("-" * len(head))
    labels = {"nmcfx": "nmcfx defaults (nmcfx.run)", "peer": "peer, nrefs 4 (its setting)",
              "peer_fine": "peer, nrefs 5, tol 5e-4"}
    for k, v in res.items():
        pr = v.get("process")
        steps = f"{v['steps']}({v['rejected']})"
        proc = f"{pr['wall_best']:.2f} / {pr['wall_median']:.2f}, {pr['cpu_best']:.2f}" if pr else "-"
        rss = f"{v['peak_rss_mb']:.0f} / {pr['peak_rss_mb']:.0f}" if pr else f"{v['peak_rss_mb']:.0f} / -"
        print(f"{labels[k]:<28} {v['dofs']:>5} {steps:>6} {v['newton']:>6}  {pct(v['error']):<34} "
              f"{v['wall_best']:>9.3f} / {v['wall_median']:<8.3f} {v['cpu_best']:>8.3f} / {v['cpu_median']:<8.3f} "
              f"{proc:>28} {rss:>16}")
    print()
    for k, r in ratio.items():
        print(f"ratio nmcfx / {labels[k]}, warm: wall best {r['wall_best']:.2f}, median {r['wall_median']:.2f}; "
              f"CPU best {r['cpu_best']:.2f}, median {r['cpu_median']:.2f}")
    print("first solve in its process (s): " + ", ".join(
        f"{k} {' '.join(f'{x:.2f}' for x in v['first_s'])}" for k, v in res.items()))
    print("\naccuracy of the unblocked disk (reference: the same settings, "
          f"{refs['disk_100mAg/reference']['dofs']} DOFs; coarser check {pct(ref_check['disk_100mAg'])}):")
    for c, e in others.items():
        print(f"  {c:<14} {e['dofs']:>5} DOFs {e['steps']:>3} steps  {pct(e)}")
    worst = max([res["nmcfx"]["error"]["frac"]] + [e["frac"] for e in others.values()])
    print(f"\ntarget 1 (nmcfx within {100 * TARGET_ERROR:g} % of the θ drop): worst {100 * worst:.2f} % → "
          f"{'met' if worst <= TARGET_ERROR else 'MISSED'}; peer {100 * res['peer']['error']['frac']:.2f} %")
    r = ratio["peer"]
    verdict = "met" if max(r["cpu_median"], r["wall_median"]) <= TARGET_RATIO else "MISSED"
    print(f"target 2 (warm nmcfx / peer at its setting ≤ {TARGET_RATIO}): {r['cpu_median']:.2f} (median CPU), "
          f"{r['wall_median']:.2f} (median wall) → {verdict}")


def worker_main(argv) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=("nmcfx", "peer", "reference"))
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--peer", type=Path)
    p.add_argument("--case", default="fig4c")
    p.add_argument("--level", choices=("reference", "check"), default="reference")
    p.add_argument("--setting", choices=tuple(PEER_SETTINGS), default="peer")
    p.add_argument("--json", required=True)
    a = p.parse_args(argv)
    res = {"nmcfx": lambda: worker_nmcfx(a.repeat), "peer": lambda: worker_peer(a.repeat, a.peer, a.setting),
           "reference": lambda: worker_reference(a.case, a.level)}[a.kind]()
    Path(a.json).write_text(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[2:]) if sys.argv[1:2] == ["worker"] else main())
