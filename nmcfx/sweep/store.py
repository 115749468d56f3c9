"""The sweep directory: manifest, one folder per case, atomic completion markers.

    DIR/sweep.json            the manifest: the sweep definition and every case (index,
                              name, overrides, digest); what `--task ID` and `status` read
    DIR/cases/<name>/         the case's run directory (timeseries.csv, summary.json, ...)
    DIR/cases/<name>/case.json    completion marker, written last and atomically
                                  (status, digest, summary numbers, metrics, wall time)
    DIR/cases/<name>/error.json   a failed case: its one-line reason (and traceback)
    DIR/results.csv, results.nc   the gathered table (``collect``)
    DIR/logs/                 worker logs (local backend); DIR/slurm/ scripts and job logs

A case is *done* when its marker holds the digest the case has now (config + the files
it reads, + the task and its options when not the default); a marker with another digest
is *stale* and the case runs again. Killing a
sweep at any moment loses no finished case: a marker only exists complete.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from nmcfx.errors import InputError

MANIFEST = "sweep.json"
MARKER = "case.json"
ERROR = "error.json"
CASES = "cases"
FORMAT = 1


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, data) -> None:
    from nmcfx.spec import plain

    atomic_write_text(path, json.dumps(plain(data), indent=1, default=str, allow_nan=True) + "\n")


def read_json(path: Path) -> dict | None:
    """The JSON object in ``path``, or None if it is absent or unreadable."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


@dataclass
class CaseState:
    index: int
    name: str
    state: str  # done | failed | stale | pending
    record: dict | None = None

    @property
    def reason(self) -> str:
        return (self.record or {}).get("reason") or ""


class SweepDir:
    """Paths and states inside one sweep directory."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    def case_dir(self, name: str) -> Path:
        return self.root / CASES / name

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    def read_manifest(self) -> dict:
        data = read_json(self.manifest_path)
        if data is None:
            raise InputError("sweep", f"{self.root} is not a sweep directory (no readable {MANIFEST})")
        if data.get("format") != FORMAT:
            raise InputError("sweep", f"{self.manifest_path}: unknown manifest format {data.get('format')!r}")
        return data

    def write_manifest(self, sweep, cases) -> dict:
        from nmcfx import __version__
        from nmcfx.solver.run import git_revision

        data = {"format": FORMAT, "name": sweep.name, "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "nmcfx_version": __version__, "git_revision": git_revision(),
                "definition_digest": sweep.definition_digest(), "sweep": sweep.to_dict(),
                "labels": sweep.coordinate_labels(),
                "cases": [{"index": c.index, "name": c.name, "overrides": c.overrides, "coords": c.coords,
                           "digest": c.digest} for c in cases]}
        atomic_write_json(self.manifest_path, data)
        return data

    def clear(self, name: str) -> Path:
        """Remove a case's markers before it runs (it is pending until a new one is written);
        returns the case directory (created)."""
        d = self.case_dir(name)
        d.mkdir(parents=True, exist_ok=True)
        for stale in (MARKER, ERROR):
            (d / stale).unlink(missing_ok=True)
        return d

    def mark(self, name: str, record: dict) -> Path:
        """Write a finished case's marker atomically, last: ``case.json`` if ``record["status"]``
        is ``"done"``, else ``error.json``. ``record`` must hold the case's ``digest``."""
        path = self.case_dir(name) / (MARKER if record.get("status") == "done" else ERROR)
        atomic_write_json(path, record)
        return path

    def state(self, name: str, digest: str, index: int = -1) -> CaseState:
        d = self.case_dir(name)
        marker = read_json(d / MARKER)
        if marker is not None and marker.get("status") == "done":
            if marker.get("digest") == digest:
                return CaseState(index, name, "done", marker)
            return CaseState(index, name, "stale", marker)
        err = read_json(d / ERROR)
        if err is not None and err.get("digest") == digest:
            return CaseState(index, name, "failed", err)
        return CaseState(index, name, "pending", None)

    def states(self, cases) -> list[CaseState]:
        return [self.state(c.name, c.digest, c.index) for c in cases]
