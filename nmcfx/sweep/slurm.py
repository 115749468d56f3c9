"""The ``slurm`` backend: one job array, one array task per unfinished case.

``nmcfx sweep SWEEP.toml -o DIR --backend slurm`` validates every case, writes
``DIR/sweep.json`` and ``DIR/slurm/array-<stamp>.sbatch`` and submits it with ``sbatch``,
then submits ``DIR/slurm/collect-<stamp>.sbatch`` with ``--dependency=afterany:<array>``,
which gathers the table when every task has ended (or run ``nmcfx sweep collect DIR``).
Each array task runs ``nmcfx sweep DIR --task $SLURM_ARRAY_TASK_ID``: the case with that
index in the manifest, on the task's ranks. Submitting again submits only the cases
that are not done (cancelled, failed, timed out, or whose inputs changed).

Settings (``[slurm]`` in the sweep file; every key optional)::

    [slurm]
    partition = "standard"
    time = "00:30:00"             # per case
    mem = "4G"                    # or mem_per_cpu = "2G"
    account = "myproject"
    qos = "normal"
    cpus_per_task = 1
    ranks_per_case = 1            # > 1: the case runs on that many MPI ranks (via `launcher`)
    launcher = "srun"             # how a multi-rank case is started (e.g. "srun --mpi=pmi2")
    max_parallel = 50             # at most this many tasks at once (--array=...%50)
    job_name = "nmcfx-lun"
    sbatch_options = ["--constraint=cpu"]          # further #SBATCH lines
    setup = ["module load apptainer"]               # shell lines before the command
    command = "apptainer exec nmcfx.sif nmcfx"      # default: this Python's `-m nmcfx`
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from nmcfx.errors import InputError
from nmcfx.log import get_logger

from .store import SweepDir, atomic_write_json, atomic_write_text, read_json

log = get_logger("nmcfx.sweep")

KEYS = ("partition", "time", "mem", "mem_per_cpu", "account", "qos", "cpus_per_task", "ranks_per_case", "launcher",
        "max_parallel", "job_name", "sbatch_options", "setup", "command")
DEFAULT_MAX_ARRAY = 1001
_SAFE = re.compile(r"^[A-Za-z0-9_.:+,=/@%\-]*$")


def slurm_settings(d: dict | None) -> dict:
    """Validate the ``[slurm]`` table (one :class:`InputError` naming the key)."""
    d = dict(d or {})
    extra = set(d) - set(KEYS)
    if extra:
        raise InputError(f"slurm.{sorted(extra)[0]}", f"unknown key; allowed: {list(KEYS)}")
    for key in ("partition", "time", "mem", "mem_per_cpu", "account", "qos", "job_name"):
        if key in d and (not isinstance(d[key], str) or not d[key] or not _SAFE.match(d[key])):
            raise InputError(f"slurm.{key}", f"must be a plain word such as '00:30:00', got {d[key]!r}")
    for key, lo in (("cpus_per_task", 1), ("ranks_per_case", 1), ("max_parallel", 1)):
        if key in d and (isinstance(d[key], bool) or not isinstance(d[key], int) or d[key] < lo):
            raise InputError(f"slurm.{key}", f"must be an integer >= {lo}, got {d[key]!r}")
    for key in ("sbatch_options", "setup"):
        if key in d and (not isinstance(d[key], list) or not all(isinstance(x, str) for x in d[key])):
            raise InputError(f"slurm.{key}", "must be a list of strings")
    for key in ("command", "launcher"):
        if key in d and (not isinstance(d[key], str) or not d[key].strip()):
            raise InputError(f"slurm.{key}", f"must be a non-empty command string, got {d.get(key)!r}")
    return d


def default_command() -> str:
    """This installation's nmcfx, by the absolute path of its interpreter."""
    return shlex.join([sys.executable, "-m", "nmcfx"])


def array_ranges(indices: list[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` → ``"0-2,5,7-8"``."""
    out, idx = [], sorted(set(indices))
    i = 0
    while i < len(idx):
        j = i
        while j + 1 < len(idx) and idx[j + 1] == idx[j] + 1:
            j += 1
        out.append(str(idx[i]) if i == j else f"{idx[i]}-{idx[j]}")
        i = j + 1
    return ",".join(out)


def max_array_size() -> int:
    """The cluster's MaxArraySize (array indices must be below it); 1001 if unknown."""
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=20).stdout
        m = re.search(r"^MaxArraySize\s*=\s*(\d+)", out, re.M)
        return int(m.group(1)) if m else DEFAULT_MAX_ARRAY
    except (OSError, subprocess.SubprocessError):
        return DEFAULT_MAX_ARRAY


def _header(name: str, s: dict, output: str, ntasks: int) -> list[str]:
    lines = ["#!/bin/bash", f"#SBATCH --job-name={name}", f"#SBATCH --output={output}",
             f"#SBATCH --ntasks={ntasks}", f"#SBATCH --cpus-per-task={s.get('cpus_per_task', 1)}"]
    for key, opt in (("partition", "partition"), ("time", "time"), ("mem", "mem"), ("mem_per_cpu", "mem-per-cpu"),
                     ("account", "account"), ("qos", "qos")):
        if key in s:
            lines.append(f"#SBATCH --{opt}={s[key]}")
    lines += [f"#SBATCH {opt}" for opt in s.get("sbatch_options", [])]
    return lines


def write_scripts(root: Path, sweep, chunks: list[tuple[int, list[int]]], s: dict, stamp: str) -> tuple[list, Path]:
    """The array script of each chunk (offset, task ids) and the collect script."""
    sdir = root / "slurm"
    logs = sdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    command = s.get("command") or default_command()
    k = s.get("ranks_per_case", 1)
    launch = (s.get("launcher", "srun") + " ") if k > 1 else ""
    job = s.get("job_name", f"nmcfx-{sweep.name}")[:64]
    env = ["set -eo pipefail", "export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MPLBACKEND=Agg", *s.get("setup", []),
           f"cd {shlex.quote(str(Path.cwd()))}"]
    digest = sweep.definition_digest()
    scripts = []
    for n, (offset, ids) in enumerate(chunks):
        array = array_ranges(ids) + (f"%{s['max_parallel']}" if "max_parallel" in s else "")
        lines = _header(job, s, str(logs / "%A_%a.out"), k) + [f"#SBATCH --array={array}", "",
                                                                 f"# nmcfx sweep {sweep.name}: one case per array task "
                                                                 "(written by `nmcfx sweep --backend slurm`)", *env,
                                                                 f"exec {launch}{command} sweep "
                                                                 f"{shlex.quote(str(root.resolve()))} --task "
                                                                 f"$(({offset} + SLURM_ARRAY_TASK_ID)) --expect {digest}"]
        path = sdir / f"array-{stamp}-{n}.sbatch"
        atomic_write_text(path, "\n".join(lines) + "\n")
        scripts.append(path)
    lines = _header(f"{job}-collect"[:64], {k: v for k, v in s.items() if k not in ("cpus_per_task",)},
                    str(logs / "collect-%j.out"), 1) + ["", f"# gathers the table of nmcfx sweep {sweep.name}", *env,
                                                       f"exec {command} sweep collect "
                                                       f"{shlex.quote(str(root.resolve()))}"]
    collect = sdir / f"collect-{stamp}.sbatch"
    atomic_write_text(collect, "\n".join(lines) + "\n")
    return scripts, collect


def _sbatch(args: list[str]) -> str:
    proc = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        raise InputError("--backend slurm", f"sbatch failed: {msg[-1] if msg else f'exit code {proc.returncode}'}")
    return proc.stdout.strip().split(";")[0]


def submit(sweep, outdir, *, force: bool = False) -> dict:
    """Validate, write the manifest and scripts, submit the array and the collect job."""
    from .engine import Plan, collect_results

    if shutil.which("sbatch") is None:
        raise InputError("--backend slurm", "sbatch not found on PATH: submit from a SLURM login node, or use "
                                            "--backend local, mpi or dask (nothing was submitted)")
    s = slurm_settings(sweep.settings.get("slurm"))
    plan = Plan(sweep, outdir, force)
    root = plan.dir.root
    if not plan.todo:
        log.info("sweep %s: all %d case(s) done; nothing to submit", sweep.name, len(plan.cases))
        collect_results(root)
        return {"array_jobs": [], "collect_job": None, "cases": []}
    plan.write_manifest()
    m = max_array_size()
    chunks: dict[int, list[int]] = {}
    for c in plan.todo:
        offset = (c.index // m) * m
        chunks.setdefault(offset, []).append(c.index - offset)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    scripts, collect = write_scripts(root, sweep, sorted(chunks.items()), s, stamp)
    ids = []
    try:
        for p in scripts:
            ids.append(_sbatch([str(p)]))
    except InputError as exc:
        if not ids:
            raise  # nothing was submitted
        raise InputError("--backend slurm", f"{exc} after job array(s) {','.join(ids)} were submitted; "
                                            "submit again to add the rest") from None
    try:
        cid = _sbatch([f"--dependency=afterany:{':'.join(ids)}", str(collect)])
    except InputError as exc:
        log.warning("the collect job was not submitted (%s): run `nmcfx sweep collect %s` when the array ends",
                    exc, root)
        cid = None
    record = {"submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "array_jobs": ids, "collect_job": cid,
              "cases": [c.index for c in plan.todo], "scripts": [str(p) for p in scripts], "collect": str(collect)}
    history = read_json(root / "slurm" / "jobs.json") or {"submissions": []}
    history["submissions"].append(record)
    atomic_write_json(root / "slurm" / "jobs.json", history)
    log.info("sweep %s: submitted %d case(s) as job array %s (%d already done); collect job %s runs after it",
             sweep.name, len(plan.todo), ",".join(ids), len(plan.done), cid)
    log.info("follow with `nmcfx sweep status %s`; logs in %s/", root, root / "slurm" / "logs")
    return record


def run_task(root, task_id: int, expect: str | None = None) -> int:
    """One array task: run case ``task_id`` of the manifest on ``MPI.COMM_WORLD``."""
    from mpi4py import MPI

    from .case import execute_case, raise_on_sigterm
    from .definition import Case, Sweep

    sd = SweepDir(root)
    manifest = sd.read_manifest()
    if expect and manifest.get("definition_digest") != expect:
        raise InputError("--task", f"the sweep in {root} changed after this job was submitted; submit it again")
    entries = manifest["cases"]
    if not 0 <= task_id < len(entries):
        raise InputError("--task", f"must be a case index in [0, {len(entries) - 1}], got {task_id}")
    e = entries[task_id]
    sweep = Sweep.from_dict(manifest["sweep"])
    spec = sweep.base.with_overrides(e["overrides"], name=e["name"], validate=False)
    case = Case(e["index"], e["name"], e["overrides"], e["coords"], spec, sweep.task, dict(sweep.task_options))
    st = sd.state(case.name, case.digest, case.index)
    if st.state == "done":
        log.info("case %d %s: already done (same inputs), skipped", task_id, case.name)
        return 0
    raise_on_sigterm()
    log.info("case %d %s: running on %d rank(s)", task_id, case.name, MPI.COMM_WORLD.size)
    out = execute_case(sweep.payload(case), root, MPI.COMM_WORLD)
    if out["status"] == "done":
        log.info("case %d %s: done in %.1f s", task_id, case.name, out["wall_s"])
        return 0
    log.info("case %d %s: FAILED: %s", task_id, case.name, out["reason"])
    return 1


def queue_state(root) -> str | None:
    """What SLURM says about the jobs this directory submitted (None if it submitted none)."""
    jobs = read_json(Path(root) / "slurm" / "jobs.json")
    if not jobs or not jobs.get("submissions"):
        return None
    last = jobs["submissions"][-1]
    ids = last["array_jobs"] + ([last["collect_job"]] if last.get("collect_job") else [])
    text = f"last submission {last['submitted']}: array {','.join(last['array_jobs'])}, collect {last['collect_job']}"
    if shutil.which("squeue") is None:
        return text
    try:
        proc = subprocess.run(["squeue", "-h", "-j", ",".join(ids), "-o", "%i %T"], capture_output=True, text=True,
                              timeout=20)
    except (OSError, subprocess.SubprocessError):
        return text
    counts: dict[str, int] = {}
    for line in proc.stdout.split("\n"):
        if line.strip():
            state = line.split()[-1].lower()
            counts[state] = counts.get(state, 0) + 1
    queued = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "nothing queued"
    return f"{text}; in the queue: {queued}"

