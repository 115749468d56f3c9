"""The run directory before a run starts: checked, protected, then created.

:func:`prepare_run_directory` is the first thing :func:`nmcfx.solver.run.execute` does to
the disk, after every table of the config has been validated. It either leaves the
directory ready for the run or raises one :class:`~nmcfx.errors.InputError` on every rank
having written nothing:

* a new run into a missing or empty directory (or one holding unrelated files): created;
* a new run into a directory holding an earlier run's results or checkpoint: refused,
  unless ``overwrite`` — then those files (and only those, :data:`RESULT_NAMES`) are
  deleted;
* ``resume``: the checkpoint must be there, whole, and written by the same config and
  number of MPI ranks; nothing is removed here (``execute`` removes ``summary.json``, written
  again at the end, once the checkpoint has been read against the mesh).

::

    prepare_run_directory("runs/flagship", config=cfg, comm=comm)                  # new run
    prepare_run_directory("runs/flagship", config=cfg, overwrite=True, comm=comm)  # replace
    prepare_run_directory("runs/flagship", config=cfg, resume=True, comm=comm)     # continue
"""

from __future__ import annotations

import shutil
from pathlib import Path

from mpi4py import MPI

from nmcfx.errors import InputError
from nmcfx.parallel import run_on_root
from nmcfx.paths import check_output_dir

#: What a run leaves in its directory (plus the field files of RESULT_PATTERNS); an
#: earlier run is recognised by any of them, and ``overwrite`` deletes exactly these.
RESULT_NAMES = ("metadata.json", "metadata-resumed.json", "summary.json", "timeseries.csv", "steps.csv",
                "line_profiles.csv", "theta_maps.png", "center_trace.png", "kymograph.png", "fields.npz",
                "particles.csv", "voltage.png", "particles.png", "electrode_maps.png", "potential_maps.png",
                "checkpoint")
RESULT_PATTERNS = tuple(f"{stem}{part}.{ext}" for stem in ("theta", "fields") for part in ("", "-part*")
                        for ext in ("bp", "xdmf", "h5"))
#: Field of the errors raised here (the CLI option that names the directory).
FIELD = "--output"


def resumed_part(outdir: Path, stem: str, resumed: bool, suffixes=(".bp", ".xdmf")) -> str:
    """The suffix of a field file's name: "" for a new run; for a resumed one "-partK", the first K ≥ 2
    with no ``stem-partK`` file yet (VTX/XDMF files cannot be continued: a resume writes a new one)."""
    if not resumed:
        return ""
    k = 2
    while any((Path(outdir) / f"{stem}-part{k}{suf}").exists() for suf in suffixes):
        k += 1
    return f"-part{k}"


def earlier_results(outdir: Path) -> list[str]:
    """Names of an earlier run's files in ``outdir`` (sorted; empty if none or no directory)."""
    outdir = Path(outdir)
    if not outdir.is_dir():
        return []
    found = {n for n in RESULT_NAMES if (outdir / n).exists()}
    for pattern in RESULT_PATTERNS:
        found.update(p.name for p in outdir.glob(pattern))
    return sorted(found)


def check_run_directory(outdir, *, config: dict, resume: bool = False, overwrite: bool = False,
                        comm=MPI.COMM_WORLD) -> list[str]:
    """Everything :func:`prepare_run_directory` checks, writing nothing (collective).

    Returns the earlier run's files that ``overwrite`` would delete. The CLI calls it
    before meshing, so a refusal comes at once.
    """
    return run_on_root(comm, _check_on_root, Path(outdir), config, resume, overwrite, comm.size, field=FIELD)


def prepare_run_directory(outdir, *, config: dict, resume: bool = False, overwrite: bool = False,
                          comm=MPI.COMM_WORLD) -> Path:
    """Check and create ``outdir`` for a run (collective; rank 0 touches the disk). See the module docstring."""
    outdir = Path(outdir)

    def on_root():
        found = _check_on_root(outdir, config, resume, overwrite, comm.size)
        if resume:  # execute() removes summary.json once the checkpoint has been read against the mesh
            return
        for name in found:
            path = outdir / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        outdir.mkdir(parents=True, exist_ok=True)

    run_on_root(comm, on_root, field=FIELD)
    return outdir


def _check_on_root(outdir: Path, config: dict, resume: bool, overwrite: bool, mpi_size: int) -> list[str]:
    check_output_dir(outdir, FIELD)
    if resume:
        check_resumable(outdir / "checkpoint", config, mpi_size)
        return []
    found = earlier_results(outdir)
    if found and not overwrite:
        shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
        raise InputError(FIELD, f"{outdir} holds an earlier run ({shown}); add --overwrite to replace it, "
                                "--resume to continue it, or choose another directory")
    return found


def check_resumable(checkpoint_dir: Path, config: dict, mpi_size: int) -> dict:
    """The checkpoint in ``checkpoint_dir`` can be resumed with ``config`` on ``mpi_size`` ranks
    (any one process; returns its state).

    :meth:`Checkpointer.validate <nmcfx.solver.checkpoint.Checkpointer.validate>`: every file
    of the checkpoint, the config and the number of ranks, so a refused resume stops before
    anything is written. The field arrays are checked against the mesh by
    :meth:`~nmcfx.solver.checkpoint.Checkpointer.read` once the model is built, still before
    the resumed run writes anything.
    """
    from .checkpoint import Checkpointer

    return Checkpointer(checkpoint_dir, None, config).validate(mpi_size)
