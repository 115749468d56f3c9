"""Peak memory of whole 2D `nmcfx run` processes, as a user runs them (issue 10 target 6).

    python benchmarks/memory_2d.py                  # every 2D example, Lun 2025 Fig. 4c, an electrode; 3 runs each (~3 min)
    python benchmarks/memory_2d.py --repeat 5 --cases disk_100mAg fig4c

Each case is a fresh ``nmcfx run`` process with its default outputs (VTX fields, figures). Its
peak resident set size comes from the kernel (``wait4``'s ``ru_maxrss``); the parent also polls
``/proc/PID/status`` every millisecond and reports, at the largest sample, how much of it is the
process's own memory (``RssAnon``) and how much are pages of shared libraries and fonts mapped
from files (``RssFile``). The file-backed part depends on the page cache (the same libraries map
~26 MB more in a venv installed minutes earlier; 60 MB more while the run loaded gmsh itself),
the anonymous part does not: compare RSS within one venv, and anonymous memory across venvs. Numbers are printed next to the 200 MB target,
never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from peer_race import FIG4C_BASE

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TARGET_MB = 200.0

#: Lun 2025 Fig. 4c at the defaults (the configuration of peer_race.py) with its default outputs
FIG4C_TOML = FIG4C_BASE
OUTPUTS_OFF = '\nfields = "none"\nfigures = false\n'

#: the preset composite electrode (Sharma 2022 Fig. 4a-like, README's mesh) for 2 h at C/20, default outputs
ELECTRODE_TOML = """
title = "preset electrode, 2 h at C/20"
[geometry]
shape = "electrode"
preset = "sharma2022"
mesh_size_um = 1.5
surface_mesh_size_um = 0.6
[protocol]
initial_theta = 0.99
steps = [{ type = "charge", c_rate = 0.05, duration_min = 120 }]
"""

#: case -> (what it is, `nmcfx run` arguments before -o; "{fig4c}" / "{fig4c_off}": the configs above)
CASES = {
    "disk_100mAg": ("2.4 µm disk, 100 mA/g, 20 min (example)", ["--example", "disk_100mAg"]),
    "fig4c": ("Lun 2025 Fig. 4c, defaults", ["{fig4c}"]),
    "fig4c_off": ("the same, outputs off", ["{fig4c_off}"]),
    "lun2025_charge": ("aged disk to the 0.2 cut-off (example)", ["--example", "lun2025_charge"]),
    "flagship": ("Xu 2022 particle, C/3, 60 min (example)", ["--example", "flagship"]),
    "charge_rest": ("example", ["--example", "charge_rest"]),
    "lithiation": ("example", ["--example", "lithiation"]),
    "xu2022_cccv": ("Butler–Volmer CC/CCCV cycle (example)", ["--example", "xu2022_cccv"]),
    "xu2022_stress": ("with mechanics (example)", ["--example", "xu2022_stress"]),
    "electrode": ("preset electrode (9 particles), 2 h at C/20", ["{electrode}"]),
}


def _status_mb(pid: int) -> dict:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                    out[key] = int(value.split()[0]) / 1024.0
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


def process_peak_rss(cmd: list[str], *, cwd=None, env=None, poll_s: float = 1e-3) -> dict:
    """Run ``cmd`` to completion; its peak RSS (MB, from the kernel) and the anonymous / file-backed
    split at the largest polled sample.

    >>> r = process_peak_rss([sys.executable, "-c", "x = bytearray(50 * 2**20)"])
    >>> r["returncode"], r["peak_mb"] > 50
    (0, True)
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    best: dict = {}
    while os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        s = _status_mb(proc.pid)
        if s.get("VmRSS", 0.0) > best.get("VmRSS", 0.0):
            best = s
        time.sleep(poll_s)
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    return {"peak_mb": usage.ru_maxrss / 1024.0, "anon_mb": best.get("RssAnon"), "file_mb": best.get("RssFile"),
            "shmem_mb": best.get("RssShmem"), "wall_s": time.perf_counter() - t0,
            "cpu_s": usage.ru_utime + usage.ru_stime, "returncode": os.waitstatus_to_exitcode(status),
            "stderr_tail": err[-2000:] if status else ""}


def run_cases(names, repeat: int, nmcfx: Path) -> dict:
    """``repeat`` rounds over ``names`` (interleaved, so load changes hit every case alike)."""
    results = {n: [] for n in names}
    with tempfile.TemporaryDirectory(prefix="nmcfx-mem-") as d:
        d = Path(d)
        (d / "fig4c.toml").write_text(FIG4C_TOML)
        (d / "fig4c_off.toml").write_text(FIG4C_TOML + OUTPUTS_OFF)
        (d / "electrode.toml").write_text(ELECTRODE_TOML)
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        for i in range(repeat):
            for n in names:
                args = [a.format(fig4c=d / "fig4c.toml", fig4c_off=d / "fig4c_off.toml", electrode=d / "electrode.toml")
                        for a in CASES[n][1]]
                print(f"  {n} ({i + 1}/{repeat}) ...", end="", flush=True, file=sys.stderr)
                r = process_peak_rss([str(nmcfx), "run", *args, "-o", str(d / n), "--overwrite"], cwd=d, env=env)
                print(f" {r['peak_mb']:.0f} MB" if r["returncode"] == 0 else " FAILED", file=sys.stderr)
                results[n].append(r)
    return results


def summarise(results: dict) -> dict:
    out = {}
    for n, runs in results.items():
        ok = [r for r in runs if r["returncode"] == 0]
        if not ok:
            out[n] = {"error": runs[-1]["stderr_tail"] if runs else "not run"}
            continue
        med = {k: statistics.median(r[k] for r in ok if r[k] is not None) for k in ("peak_mb", "anon_mb", "file_mb")}
        out[n] = {**med, "peak_mb_all": [r["peak_mb"] for r in ok], "wall_s": statistics.median(r["wall_s"] for r in ok),
                  "cpu_s": statistics.median(r["cpu_s"] for r in ok), "under_target": med["peak_mb"] < TARGET_MB}
    return out


def print_table(summary: dict):
    print(f"{'case':<16} {'what':<42} {'peak RSS':>9} {'anon':>6} {'file':>6} {'wall':>6}  target < {TARGET_MB:.0f} MB")
    for n, s in summary.items():
        if "error" in s:
            print(f"{n:<16} ERROR {s['error'].strip().splitlines()[-1:] if s['error'] else ''}")
            continue
        print(f"{n:<16} {CASES[n][0]:<42} {s['peak_mb']:7.1f} MB {s['anon_mb']:6.1f} {s['file_mb']:6.1f}"
              f" {s['wall_s']:5.2f}s  {'met' if s['under_target'] else 'MISSED'}")
    print("  median of the runs; peak RSS = ru_maxrss of the whole `nmcfx run` process (default outputs: VTX + figures,\n"
          "  unless 'outputs off'); anon / file = RssAnon / RssFile (MB) at the largest 1 ms sample: the process's own\n"
          "  memory / shared-library and font pages mapped from files (page-cache dependent: compare within one venv)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", choices=tuple(CASES), default=list(CASES), help="which runs (default: all)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", default=str(HERE / "results" / "memory_2d.json"))
    args = p.parse_args(argv)
    nmcfx = Path(sys.executable).parent / "nmcfx"
    summary = summarise(run_cases(args.cases, args.repeat, nmcfx))
    print_table(summary)
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"python": sys.executable, "target_mb": TARGET_MB, "cases": summary}, indent=1))
    print(f"numbers in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
