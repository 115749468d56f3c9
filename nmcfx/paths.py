"""Output paths checked before anything is computed or written.

Each check raises :class:`~nmcfx.errors.InputError` naming the option (``-o``, ``--csv``,
...) with one line, and writes nothing::

    check_output_dir("runs/x", "--output")        # a directory that exists or can be made
    check_output_file("table.csv", "--csv")       # a file that can be (re)written
    check_output_file("fig.xyz", "--plot", suffixes=figure_suffixes())   # and its format

They are local (no MPI); call them on rank 0 through :func:`nmcfx.parallel.run_on_root`
when only rank 0 writes.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from nmcfx.errors import InputError


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not os.path.lexists(p) and p != p.parent:
        p = p.parent
    return p


def _writable_dir(d: Path) -> bool:
    """Can files be created in ``d``? Tried with an unnamed temporary file, because
    permission bits do not tell for root, read-only mounts or pseudo file systems."""
    if not os.access(d, os.W_OK | os.X_OK):
        return False
    try:
        with tempfile.TemporaryFile(dir=d):
            return True
    except OSError:
        return False


def check_output_dir(path, field: str) -> Path:
    """``path`` is a writable directory, or can be created as one (nothing is created)."""
    p = Path(path)
    if p.exists():
        if not p.is_dir():
            raise InputError(field, f"{p} exists and is not a directory")
        if not _writable_dir(p):
            raise InputError(field, f"cannot write into {p}: permission denied or read-only file system")
        return p
    anchor = _nearest_existing(p)
    if not anchor.is_dir():
        raise InputError(field, f"cannot create {p}: {anchor} is a file, not a directory")
    if not _writable_dir(anchor):
        raise InputError(field, f"cannot create {p}: {anchor} is not writable (permission denied or read-only)")
    return p


def check_output_file(path, field: str, *, suffixes: tuple[str, ...] | None = None) -> Path:
    """``path`` can be written as a file (its directory exists or can be made); with
    ``suffixes``, its extension must be one of them (e.g. ``(".png", ".pdf")``)."""
    p = Path(path)
    if suffixes is not None and p.suffix.lower() not in suffixes:
        raise InputError(field, f"{p}: unsupported file type {p.suffix or '(none)'!r}; use one of {list(suffixes)}")
    if p.is_dir():
        raise InputError(field, f"{p} is a directory, not a file")
    if p.exists():
        try:
            with open(p, "ab"):  # opened for appending, not changed
                pass
        except OSError as exc:
            raise InputError(field, f"cannot overwrite {p}: {exc.strerror or exc}") from None
        return p
    anchor = _nearest_existing(p.parent)
    if not anchor.is_dir():
        raise InputError(field, f"cannot write {p}: {anchor} is a file, not a directory")
    if not _writable_dir(anchor):
        raise InputError(field, f"cannot write {p}: {anchor} is not writable (permission denied or read-only)")
    return p


def figure_suffixes() -> tuple[str, ...]:
    """File extensions matplotlib can write (``.png``, ``.pdf``, ``.svg``, ...)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    return tuple(f".{ext}" for ext in sorted(FigureCanvasAgg(Figure()).get_supported_filetypes()))
