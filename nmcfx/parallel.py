"""Errors under MPI: a failure on one rank must never leave the other ranks waiting.

Two layers:

* **Agreed check points** — :func:`collective_errors` and :func:`run_on_root`. Code that can
  fail on some ranks only (files read or written on rank 0, ...) runs inside the block; at
  its end every rank learns whether any rank failed, and all of them raise the same
  :class:`~nmcfx.errors.NmcfxError` (the lowest failing rank's). The block itself must not
  make collective calls (a failing rank would skip them)::

      with collective_errors(comm, "--output"):
          if comm.rank == 0:
              outdir.mkdir(parents=True, exist_ok=True)

      points = run_on_root(comm, read_points, path, field="geometry.contour_csv")

  ``OSError`` and ``UnicodeDecodeError`` become :class:`~nmcfx.errors.InputError` naming
  ``field`` (a path that is a file, a read-only directory, a non-UTF-8 file are user
  errors). Any other exception is a bug: the failing rank re-raises it with its traceback,
  the others raise an ``NmcfxError`` that points to it.

* **Last resort** — :class:`ErrorGuard`, used by the CLI (and usable by any script's
  entry point) for an error that reaches the top on some ranks only while others may be
  blocked in a collective call. The ranks that get there wait up to
  :data:`AGREE_WAIT_S` seconds for the others on a private communicator (so no collective
  on ``comm`` is disturbed); if all arrive, they exit normally, else the ones that
  arrived print their line and ``MPI_Abort`` ends the whole job.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

from nmcfx.errors import InputError, MeshError, NmcfxError, SolverError

#: Seconds the ranks that reached an error wait for the others before aborting the job.
AGREE_WAIT_S = 5.0

_KINDS = {cls.__name__: cls for cls in (NmcfxError, InputError, MeshError, SolverError)}


def describe_os_error(exc: BaseException) -> str:
    """One line for a file-system or decoding error, e.g. ``runs/x: Not a directory``."""
    if isinstance(exc, UnicodeDecodeError):
        return (f"not a UTF-8 text file (byte 0x{exc.object[exc.start]:02x} at position {exc.start}); "
                "save it as UTF-8")
    if isinstance(exc, OSError):
        where = exc.filename if exc.filename is not None else ""
        if exc.filename2 is not None:
            where = f"{where} -> {exc.filename2}"
        what = exc.strerror or str(exc)
        return f"{where}: {what}" if where else what
    return f"{type(exc).__name__}: {exc}"


def _raw_message(exc: NmcfxError) -> str:
    text = str(exc)
    field = getattr(exc, "field", None)
    prefix = f"{field}: "
    return text[len(prefix):] if field and text.startswith(prefix) else text


def _report(exc: Exception, field: str | None) -> tuple:
    """(kind, field, message, expected) — picklable, enough to rebuild the error elsewhere."""
    if isinstance(exc, NmcfxError):
        return (type(exc).__name__, getattr(exc, "field", None), _raw_message(exc), True)
    if isinstance(exc, (OSError, UnicodeDecodeError)):
        return ("InputError", field or "file", describe_os_error(exc), True)
    return ("NmcfxError", None, f"{type(exc).__name__}: {exc}", False)


def _rebuild(report: tuple, rank: int) -> NmcfxError:
    kind, field, message, expected = report
    if not expected:
        return NmcfxError(f"rank {rank} failed with {message} (its traceback is above)")
    cls = _KINDS.get(kind, NmcfxError)
    if cls is InputError:
        return InputError(field or "", message)
    return cls(message)


@contextmanager
def collective_errors(comm, field: str | None = None):
    """An agreed check point: an exception on any rank inside the block is raised on all ranks.

    Collective at the end of the block (one ``allgather``); the block must not be
    collective itself. ``field`` names the input that ``OSError``/``UnicodeDecodeError``
    are blamed on (e.g. ``"--output"``, ``"geometry.contour_csv"``).
    """
    failure: Exception | None = None
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - every failure must reach the other ranks
        failure = exc
    mine = None if failure is None else _report(failure, field)
    reports = [mine] if comm.size == 1 else comm.allgather(mine)
    first = next(((r, rep) for r, rep in enumerate(reports) if rep is not None), None)
    if first is None:
        return
    rank, report = first
    if failure is not None:
        if not mine[3]:
            raise failure  # a bug: this rank keeps its own traceback
        if rank == comm.rank and isinstance(failure, NmcfxError):
            raise failure
    raise _rebuild(report, rank) from None


def run_on_root(comm, fn, *args, field: str | None = None, root: int = 0, **kwargs):
    """``fn(*args, **kwargs)`` on ``root`` only; its result (or its error) on every rank.

        points = run_on_root(comm, parse_csv, path, field="geometry.contour_csv")
    """
    result = None
    with collective_errors(comm, field):
        if comm.rank == root:
            result = fn(*args, **kwargs)
    return comm.bcast(result, root=root) if comm.size > 1 else result


class ErrorGuard:
    """The last resort against a job that hangs after an error on some ranks only.

    Create it on every rank before any work (it duplicates ``comm``, a collective call);
    when an error reaches the top, :meth:`fail` prints its line and returns the exit
    status if every rank got there within :data:`AGREE_WAIT_S` seconds, and otherwise
    prints the line on this rank and ends the whole job with ``MPI_Abort``::

        guard = ErrorGuard(comm)
        try:
            return command()
        except NmcfxError as exc:
            return guard.fail(f"nmcfx: error: {exc}", 2)
    """

    def __init__(self, comm, wait_s: float | None = None):
        self.comm = comm
        self.wait_s = AGREE_WAIT_S if wait_s is None else float(wait_s)
        self._side = comm.Dup() if comm.size > 1 else None

    def all_ranks_failed(self) -> bool:
        """True if every rank reaches this call within ``wait_s`` (always true serially)."""
        if self._side is None:
            return True
        request = self._side.Ibarrier()
        deadline = time.monotonic() + self.wait_s
        while True:
            if request.Test():
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)

    def fail(self, line: str | None, code: int) -> int:
        """Report an error that reached the top: ``line`` once (rank 0) and ``code`` if all
        ranks are here; else ``line`` from this rank and ``MPI_Abort(code)`` for the job."""
        import sys

        if self.all_ranks_failed():
            if self.comm.rank == 0 and line:
                print(line, file=sys.stderr, flush=True)
            return code
        if line:
            print(f"{line} (rank {self.comm.rank} of {self.comm.size}; aborting the others)", file=sys.stderr,
                  flush=True)
        sys.stdout.flush()
        self.comm.Abort(code)
        return code  # not reached
