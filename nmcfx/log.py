"""Logging for nmcfx: the standard :mod:`logging` module, rank 0 only.

Library code logs to the ``nmcfx`` logger tree (``get_logger(__name__)``) and never
prints. The command line (or a script) calls :func:`setup` once; after that every
message from rank 0 of ``MPI.COMM_WORLD`` goes to standard output, and other ranks stay
quiet unless a record asks to be shown from every rank (``extra=ALL_RANKS``, used by the
sweep's sub-communicator leaders, which are not world rank 0)::

    from nmcfx.log import get_logger, setup
    setup()                        # INFO and above, rank 0, to stdout
    log = get_logger(__name__)
    log.info("mesh: %d cells", n)
    log.info("case %s done", name, extra=ALL_RANKS)

Without :func:`setup` the messages follow whatever the application configured (by
default Python shows warnings and errors only).
"""

from __future__ import annotations

import logging
import sys

ROOT = "nmcfx"
#: ``extra=`` for a record that every rank may show (not only world rank 0).
ALL_RANKS = {"all_ranks": True}


def get_logger(name: str = ROOT) -> logging.Logger:
    """The logger ``name`` inside the ``nmcfx`` tree (``nmcfx.sweep`` for ``__name__``)."""
    if name != ROOT and not name.startswith(ROOT + "."):
        name = f"{ROOT}.{name}"
    return logging.getLogger(name)


def world_rank() -> int:
    """Rank in ``MPI.COMM_WORLD`` (0 without MPI)."""
    try:
        from mpi4py import MPI

        return MPI.COMM_WORLD.rank
    except ImportError:  # pragma: no cover - mpi4py is a dependency of the DOLFINx stack
        return 0


class RankZeroFilter(logging.Filter):
    """Pass records on rank 0, and records marked ``all_ranks`` on any rank."""

    def __init__(self, rank: int | None = None):
        super().__init__()
        self.rank = world_rank() if rank is None else rank

    def filter(self, record: logging.LogRecord) -> bool:
        return self.rank == 0 or bool(getattr(record, "all_ranks", False))


class _StdoutHandler(logging.StreamHandler):
    """Writes to the *current* ``sys.stdout`` (so pytest's capture and redirections work)."""

    def __init__(self):
        super().__init__(sys.stdout)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ assigns it; the property wins
        pass


def setup(level: int | str = logging.INFO, *, rank: int | None = None, fmt: str = "%(message)s") -> logging.Logger:
    """Send ``nmcfx`` log records of ``level`` and above to stdout, from rank 0 only.

    Idempotent: a second call replaces the handler installed by the first.
    """
    logger = logging.getLogger(ROOT)
    for h in list(logger.handlers):
        if getattr(h, "_nmcfx", False):
            logger.removeHandler(h)
    handler = _StdoutHandler()
    handler._nmcfx = True
    handler.setFormatter(logging.Formatter(fmt))
    handler.addFilter(RankZeroFilter(rank))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return logger
