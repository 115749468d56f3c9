"""Running one case of a sweep, the same way on every backend.

:func:`execute_case` takes a case payload (``Sweep.payload``), runs the sweep's *task*
on a communicator into ``DIR/cases/<name>/`` and writes the completion marker
``case.json`` (or ``error.json`` with a one-line reason) atomically, last. A failure
never propagates: the sweep goes on. Only ``KeyboardInterrupt``/``SystemExit`` escape,
leaving no marker (the case is pending again).

A task is ``"module:function"`` called as ``function(spec, casedir, comm, **task_options)``.
The default, :func:`simulate`, is ``nmcfx.run``; another task returns either a
:class:`nmcfx.api.RunResult` or a dict of numbers (they become table columns), and may
write more files into ``casedir`` (e.g. θ maps, sampled fields)::

    def my_task(spec, casedir, comm, maps=False):
        result = nmcfx.run(spec, casedir, comm=comm, overwrite=True, observers=[...])
        return result
"""

from __future__ import annotations

import importlib
import math
import platform
import signal
import time
import traceback
from pathlib import Path

from .store import SweepDir


class Interrupted(Exception):
    """A case stopped by a signal (SLURM's scancel or time limit send SIGTERM)."""


def simulate(spec, casedir, comm):
    """The default task: ``nmcfx.run`` into the case directory, no progress bar. The case
    directory belongs to the sweep: a case run again replaces what an earlier attempt left."""
    from nmcfx.api import run

    return run(spec, casedir, comm=comm, progress=False, overwrite=True)


def resolve_task(path: str):
    module, _, name = path.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        from nmcfx.errors import InputError

        raise InputError("sweep.task", f"cannot import {path!r}: {exc}") from None


def one_line(exc: BaseException, limit: int = 400) -> str:
    """``"SolverError: the time step fell below ..."`` (first line, shortened)."""
    text = str(exc).strip().splitlines()
    msg = f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
    return msg if len(msg) <= limit else msg[: limit - 1] + "…"


def _number(v):
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, (int, float)):
        return v
    if v is None:
        return math.nan
    if hasattr(v, "item"):
        try:
            return _number(v.item())
        except (TypeError, ValueError):
            return None
    return None


def metric_value(timeseries: dict, metric: str) -> float:
    """``max:d_um`` etc. over a time series (NaN-aware); NaN if the column is missing."""
    import numpy as np

    fn, col = metric.split(":", 1)
    x = np.asarray(timeseries.get(col, []), dtype=float)
    if x.size == 0:
        return math.nan
    finite = x[np.isfinite(x)]
    if fn == "final":
        return float(x[-1])
    if fn == "initial":
        return float(x[0])
    if finite.size == 0:
        return math.nan
    return float({"max": np.max, "min": np.min, "mean": np.mean}[fn](finite))


def case_numbers(out, metrics) -> dict:
    """Table numbers of a task's return value: the summary's numbers, then the metrics."""
    from nmcfx.api import RunResult

    from .definition import metric_column

    if isinstance(out, RunResult):
        summary, series = out.summary, out.timeseries
    elif isinstance(out, dict):
        summary, series = out, {}
    else:
        summary, series = {}, {}
    row = {}
    for k, v in summary.items():
        n = _number(v)
        if n is not None:
            row[k] = n
    for m in metrics:
        if ":" in m:
            row[metric_column(m)] = metric_value(series, m)
        elif m not in row:
            row[m] = math.nan
    return row


def execute_case(payload: dict, sweep_dir: str | Path, comm) -> dict:
    """Run one case on ``comm`` (collective) and write its marker; returns the outcome
    (``index``, ``name``, ``status``, ``wall_s``, ``reason``, ``numbers``) on every rank."""
    from nmcfx import __version__
    from nmcfx.spec import spec_from_payload

    from .definition import DEFAULT_TASK, case_digest

    store = SweepDir(sweep_dir)
    casedir = store.case_dir(payload["name"])
    root = comm.rank == 0
    t0 = time.perf_counter()
    if root:
        store.clear(payload["name"])
    comm.Barrier()
    status, reason, tb, numbers, digest = "done", None, None, {}, payload.get("digest")
    try:
        spec = spec_from_payload(payload["spec"])
        task_path, options = payload.get("task") or DEFAULT_TASK, payload.get("task_options") or {}
        digest = case_digest(spec.digest, task_path, options)  # the files as they are now, when read
        task = resolve_task(task_path)
        out = task(spec, casedir, comm, **options)
        numbers = case_numbers(out, payload.get("metrics") or [])
    except Exception as exc:  # noqa: BLE001 - any failure is recorded and the sweep goes on
        from nmcfx.errors import NmcfxError

        status, reason = "failed", one_line(exc)
        if not isinstance(exc, (NmcfxError, Interrupted)):
            tb = traceback.format_exc()
    from mpi4py import MPI

    wall = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)
    record = {"status": status, "index": payload["index"], "name": payload["name"], "digest": digest,
              "overrides": payload.get("overrides", {}), "coords": payload.get("coords", {}),
              "numbers": numbers, "wall_s": wall, "reason": reason,
              "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(),
              "mpi_size": comm.size, "nmcfx_version": __version__}
    if tb:
        record["traceback"] = tb
    if root:
        store.mark(payload["name"], record)
    comm.Barrier()
    return {"index": payload["index"], "name": payload["name"], "status": status, "wall_s": wall,
            "reason": reason, "numbers": numbers}


def record_failure(sweep_dir: str | Path, payload: dict, reason: str) -> None:
    """Write ``error.json`` for a case whose worker died (called by the coordinating process)."""
    SweepDir(sweep_dir).mark(payload["name"], {"status": "failed", "index": payload["index"], "name": payload["name"],
                                        "digest": payload.get("digest"), "overrides": payload.get("overrides", {}),
                                        "coords": payload.get("coords", {}), "numbers": {}, "wall_s": math.nan,
                                        "reason": reason, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                        "host": platform.node()})


def raise_on_sigterm():
    """Turn SIGTERM (scancel, time limit) into :class:`Interrupted`, recorded as a failure."""

    def handler(signum, frame):  # noqa: ARG001
        raise Interrupted(f"stopped by signal {signal.Signals(signum).name} (scancel or time limit)")

    signal.signal(signal.SIGTERM, handler)
