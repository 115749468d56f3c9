"""Worker process of the calibration: one simulation on MPI.COMM_SELF.

The parent starts ``python -m nmcfx.imaging._worker TASK RESULT`` (a fresh interpreter,
so no main-module re-import, no inherited state) with the MPI process-manager variables
removed from its environment, so the worker initialises MPI as a singleton even when
the parent runs under ``mpiexec``. Task and result are pickle files in a private
temporary directory.
"""

from __future__ import annotations

import os
import pickle
import sys

_PM_PREFIXES = ("PMI_", "PMIX_", "HYDRA_", "HYDI_", "OMPI_", "MPI_LOCALRANKID", "MPI_LOCALNRANKS")


def clean_environment(env=None) -> dict:
    """A copy of the environment without MPI process-manager variables."""
    env = dict(os.environ if env is None else env)
    return {k: v for k, v in env.items() if not k.startswith(_PM_PREFIXES)}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    task_path, result_path = argv
    with open(task_path, "rb") as fh:
        task = pickle.load(fh)
    from mpi4py import MPI

    from nmcfx.errors import NmcfxError

    from .calibrate import simulate_tables

    try:
        result = simulate_tables(task, MPI.COMM_SELF)
    except NmcfxError as exc:
        result = {"error": f"{type(exc).__name__}: {exc}"}
    tmp = result_path + ".tmp"
    with open(tmp, "wb") as fh:
        pickle.dump(result, fh, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, result_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
