"""The ``local`` backend: a persistent pool of N worker processes.

Each worker is one ``python -m nmcfx.sweep.local WORKER_FD`` started once: it imports
DOLFINx and the solver, then runs case after case on ``MPI.COMM_SELF`` (forms compiled
for the first case are reused), so a case costs its own run, not an interpreter start,
imports and JIT. Cases go to the workers as JSON lines on their stdin; outcomes come
back as JSON lines on a private pipe (the solver's and gmsh's own output goes to
``DIR/logs/worker-<i>.log``). The environment of the workers has the MPI process-manager
variables removed, so each initialises MPI as a singleton.

A worker that dies (segfault, out of memory) fails only the case it was running (with
that reason) and is replaced. If the coordinating process is killed, the workers see
their stdin close, finish the case they run (its marker is complete) and exit.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

from nmcfx.log import get_logger

log = get_logger(__name__)

_PM_PREFIXES = ("PMI_", "PMIX_", "HYDRA_", "HYDI_", "OMPI_", "MPI_LOCALRANKID", "MPI_LOCALNRANKS", "SLURM_MPI")


def clean_environment(env=None) -> dict:
    """A copy of the environment without MPI process-manager variables, one thread per process."""
    env = {k: v for k, v in dict(os.environ if env is None else env).items() if not k.startswith(_PM_PREFIXES)}
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MPLBACKEND", "Agg")
    return env


class _Worker:
    def __init__(self, slot: int, logdir: Path):
        self.slot = slot
        r, w = os.pipe()
        logdir.mkdir(parents=True, exist_ok=True)
        self.log_path = logdir / f"worker-{slot}.log"
        self._log = open(self.log_path, "a")
        self.proc = subprocess.Popen([sys.executable, "-m", "nmcfx.sweep.local", str(w)], stdin=subprocess.PIPE,
                                     stdout=self._log, stderr=subprocess.STDOUT, pass_fds=(w,),
                                     env=clean_environment(), text=True, start_new_session=False)
        os.close(w)
        self.events = os.fdopen(r, "r")
        self.payload: dict | None = None
        self.ready = False
        self.started = time.perf_counter()
        self.ready_after_s = None

    def send(self, payload: dict):
        self.payload = payload
        self.proc.stdin.write(json.dumps(payload) + "\n")
        self.proc.stdin.flush()

    def close(self, kill: bool = False):
        try:
            if kill:
                self.proc.kill()
            elif self.proc.stdin and not self.proc.stdin.closed:
                self.proc.stdin.close()
        except (OSError, ValueError):
            pass

    def reap(self, timeout: float):
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fh in (self.events, self._log):
            try:
                fh.close()
            except OSError:
                pass


class LocalPool:
    """``with LocalPool(2, logdir) as pool: pool.run(payloads, sweep_dir, on_outcome)``.

    The workers persist across ``run`` calls (a calibration may call it repeatedly).
    """

    def __init__(self, workers: int, logdir: str | Path):
        self.n = max(1, int(workers))
        self.logdir = Path(logdir)
        self.workers: list[_Worker] = []
        self.startup_s: list[float] = []
        self.start_failures = 0

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(kill=exc_type is not None)

    def _spawn(self, slot: int) -> _Worker:
        w = _Worker(slot, self.logdir)
        self.workers.append(w)
        return w

    def run(self, payloads: list[dict], sweep_dir: str | Path, on_outcome=None) -> list[dict]:
        """Run every payload; ``on_outcome(outcome)`` as each finishes. Returns the outcomes."""
        from .case import record_failure

        queue = deque(payloads)
        outcomes = []
        want = min(self.n, len(queue))
        while len([w for w in self.workers if w.proc.poll() is None]) < want:
            self._spawn(len(self.workers))
        sel = selectors.DefaultSelector()
        for w in self.workers:
            if w.proc.poll() is None:
                sel.register(w.events, selectors.EVENT_READ, w)
        sweep_dir = str(sweep_dir)

        def feed(w: _Worker):
            if queue and w.ready and w.payload is None:
                p = dict(queue.popleft())
                p["sweep_dir"] = sweep_dir
                w.send(p)

        try:
            while queue or any(w.payload is not None for w in self.workers):
                for key, _ in sel.select(timeout=0.5):
                    w = key.data
                    line = w.events.readline()
                    if not line:  # the worker closed its pipe: it is exiting
                        sel.unregister(w.events)
                        continue
                    msg = json.loads(line)
                    if msg.get("event") == "ready":
                        w.ready = True
                        w.ready_after_s = time.perf_counter() - w.started
                        self.startup_s.append(w.ready_after_s)
                    elif msg.get("event") == "done":
                        w.payload = None
                        outcomes.append(msg["outcome"])
                        if on_outcome:
                            on_outcome(msg["outcome"])
                    feed(w)
                # workers that died: fail the case they held, replace them
                for w in list(self.workers):
                    code = w.proc.poll()
                    if code is None:
                        continue
                    if not w.ready:
                        self.start_failures += 1
                        if self.start_failures >= 3:
                            tail = w.log_path.read_text(errors="replace").strip().splitlines()[-5:]
                            raise RuntimeError(f"sweep workers cannot start (exit code {code}); {w.log_path}:\n"
                                               + "\n".join(tail))
                    if w.payload is not None:
                        p = w.payload
                        reason = (f"worker process died (exit code {code}"
                                  + (", killed: out of memory?" if code in (-9, 137) else "")
                                  + f"); see {w.log_path}")
                        record_failure(sweep_dir, p, reason)
                        out = {"index": p["index"], "name": p["name"], "status": "failed", "wall_s": float("nan"),
                               "reason": reason, "numbers": {}}
                        outcomes.append(out)
                        if on_outcome:
                            on_outcome(out)
                        w.payload = None
                    self.workers.remove(w)
                    try:
                        sel.unregister(w.events)
                    except (KeyError, ValueError):
                        pass
                    w.reap(1.0)
                    if queue:
                        nw = self._spawn(max((x.slot for x in self.workers), default=-1) + 1)
                        sel.register(nw.events, selectors.EVENT_READ, nw)
        finally:
            sel.close()
        return outcomes

    def close(self, kill: bool = False):
        for w in self.workers:
            w.close(kill=kill)
        for w in self.workers:
            w.reap(timeout=30.0 if not kill else 5.0)
        self.workers = []


# ----------------------------------------------------------------------------- the worker
def _worker_main(fd: int) -> int:
    events = os.fdopen(fd, "w", buffering=1)

    def send(msg: dict):
        try:
            events.write(json.dumps(msg, default=str) + "\n")
            events.flush()
        except (BrokenPipeError, OSError):
            pass  # the coordinator is gone; the marker on disk is what counts

    from mpi4py import MPI

    import dolfinx  # noqa: F401  (imported once, before the first case)

    import nmcfx.solver.run  # noqa: F401

    from nmcfx.log import setup

    from .case import execute_case

    setup()  # the cases' log lines (mesh, protocol) go to this worker's log file
    send({"event": "ready", "pid": os.getpid()})
    for line in sys.stdin:
        if not line.strip():
            continue
        payload = json.loads(line)
        outcome = execute_case(payload, payload["sweep_dir"], MPI.COMM_SELF)
        sys.stdout.flush()
        send({"event": "done", "outcome": outcome})
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(int(sys.argv[1])))
