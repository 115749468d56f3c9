"""The slurm backend against a real one-node SLURM cluster started here (no mock).

The fixture writes a minimal slurm.conf (one node with 2 CPUs, one partition, state and
spool directories in a temporary folder, its own ports and munge socket), starts
``munged``, ``slurmctld`` and ``slurmd`` as root in the foreground, and stops exactly
those processes afterwards. Where SLURM is not installed or we are not root the test is
skipped with the reason (``.ci/run`` installs Debian's slurmctld, slurmd, slurm-client
and munge).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import nmcfx_cmd
from test_sweep import SWEEP, assert_same_numbers, write

from nmcfx.sweep import gather, load_sweep, run_sweep

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo", "scontrol")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _find(name: str) -> str | None:
    return shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.path.exists(p)),
                                      None)


CONF = """\
ClusterName=nmcfxtest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={dir}/munge.sock
CredType=cred/munge
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
KillWait=2
MinJobAge=300
NodeName=nmcfxnode NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN
PartitionName=debug Nodes=nmcfxnode Default=YES MaxTime=INFINITE State=UP
"""


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """A one-node SLURM cluster for this module; yields the environment to use it."""
    missing = [d for d in DAEMONS if _find(d) is None]
    if missing:
        pytest.skip(f"SLURM not installed (missing {', '.join(missing)}): "
                    "apt-get install slurmctld slurmd slurm-client munge (.ci/run does)")
    if os.geteuid() != 0:
        pytest.skip("starting slurmctld/slurmd needs root")
    d = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool"):
        (d / sub).mkdir()
    os.chmod(d, 0o755)
    key = d / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    conf = d / "slurm.conf"
    conf.write_text(CONF.format(dir=d, ctld_port=_free_port(), d_port=_free_port()))
    env = dict(os.environ, SLURM_CONF=str(conf))
    procs = []

    def start(cmd, log):
        procs.append(subprocess.Popen(cmd, stdout=open(d / log, "w"), stderr=subprocess.STDOUT, env=env))

    def stop():
        for p in reversed(procs):  # only the daemons started here
            if p.poll() is None:
                p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    try:
        start([_find("munged"), "-F", "--force", f"--socket={d}/munge.sock", f"--key-file={key}",
               f"--log-file={d}/munged.log", f"--pid-file={d}/munged.pid", f"--seed-file={d}/munged.seed"],
              "munged.out")
        deadline = time.time() + 20
        while not (d / "munge.sock").exists() and time.time() < deadline:
            time.sleep(0.1)
        start([_find("slurmctld"), "-D", "-i", "-f", str(conf)], "slurmctld.out")
        time.sleep(0.5)
        start([_find("slurmd"), "-D", "-f", str(conf), "-N", "nmcfxnode"], "slurmd.out")
        deadline = time.time() + 60
        state = ""
        while time.time() < deadline:
            out = subprocess.run([_find("sinfo"), "-h", "-o", "%T"], env=env, capture_output=True, text=True)
            state = out.stdout.strip()
            if state == "idle":
                break
            if any(p.poll() is not None for p in procs):
                break
            time.sleep(0.3)
        if state != "idle":
            logs = "\n".join(f"--- {f.name}\n" + f.read_text(errors="replace")[-1500:]
                             for f in sorted(d.glob("*.log")) + sorted(d.glob("*.out")))
            pytest.fail(f"the test SLURM cluster did not come up (sinfo: {state!r}):\n{logs}")
        yield env
    finally:
        stop()


def _wait_for_jobs(env, ids, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = subprocess.run(["squeue", "-h", "-j", ",".join(ids), "-o", "%i %T"], env=env, capture_output=True,
                             text=True)
        if out.returncode == 0 and not out.stdout.strip():
            return
        time.sleep(0.5)
    raise AssertionError(f"SLURM jobs {ids} still queued after {timeout} s")


def test_array_with_a_cancelled_task_resubmitted_equals_local(slurm_cluster, tmp_path, monkeypatch):
    env = slurm_cluster
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    path = write(tmp_path, SWEEP + '\n[slurm]\ntime = "00:05:00"\n')
    out = tmp_path / "slurm"
    # submit: 6 cases as one array + a dependent collect job
    proc = subprocess.run(nmcfx_cmd() + ["sweep", str(path), "-o", str(out), "--backend", "slurm"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    first = json.loads((out / "slurm" / "jobs.json").read_text())["submissions"][-1]
    assert first["cases"] == list(range(6)) and "submitted 6 case(s) as job array" in proc.stdout
    array = first["array_jobs"][0]
    script = Path(first["scripts"][0]).read_text()
    assert "#SBATCH --array=0-5" in script and "--task $((0 + SLURM_ARRAY_TASK_ID))" in script
    # kill one task (whether still pending or already running)
    subprocess.run(["scancel", f"{array}_5"], env=env, check=True)
    _wait_for_jobs(env, [array, first["collect_job"]])
    # the collect job ran after the array: a table with 5 done cases, case 5 not done
    res = gather(out)
    assert (out / "results.csv").is_file()
    states = {r["index"]: r["status"] for r in res.rows}
    assert [states[i] for i in range(5)] == ["done"] * 5 and states[5] in ("pending", "failed"), states
    status = subprocess.run(nmcfx_cmd() + ["sweep", "status", str(out)], env=env, capture_output=True, text=True)
    assert "5 done" in status.stdout and "SLURM: last submission" in status.stdout, status.stdout
    # re-submitting submits only the unfinished case
    proc = subprocess.run(nmcfx_cmd() + ["sweep", str(path), "-o", str(out), "--backend", "slurm"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    second = json.loads((out / "slurm" / "jobs.json").read_text())["submissions"][-1]
    assert second["cases"] == [5] and "#SBATCH --array=5\n" in Path(second["scripts"][0]).read_text()
    _wait_for_jobs(env, second["array_jobs"] + [second["collect_job"]])
    res = gather(out)
    assert res.counts["done"] == 6, [(r["name"], r["status"], r["reason"]) for r in res.rows]
    logs = sorted((out / "slurm" / "logs").glob("*.out"))
    assert any("done in" in p.read_text() for p in logs)
    # the same numbers as the local backend
    monkeypatch.delenv("SLURM_CONF")
    local = run_sweep(load_sweep(path), tmp_path / "local", workers=2)
    assert_same_numbers(res, local)
