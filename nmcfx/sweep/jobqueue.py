"""The ``dask`` backend: clusters other than SLURM through dask-jobqueue.

dask-jobqueue starts Dask workers as batch jobs on PBS/Torque, SGE, LSF, HTCondor, OAR,
Moab and SLURM; each worker process imports nmcfx once and runs case after case (one
thread per process: a case is one MPI.COMM_SELF simulation). Install it with
``pip install 'nmcfx[cluster]'``. Settings (``[dask]`` in the sweep file)::

    [dask]
    cluster = "pbs"        # pbs | sge | lsf | htcondor | oar | moab | slurm | local
    jobs = 4               # batch jobs to start (each runs `processes` workers)
    cores = 8              # per job; processes defaults to cores (one thread each)
    memory = "16GB"        # per job
    walltime = "02:00:00"
    queue = "workq"
    account = "myproject"
    job_script_prologue = ["module load apptainer"]
    # any other keyword of the dask_jobqueue cluster class is passed through

``cluster = "local"`` runs a ``distributed.LocalCluster`` of ``workers`` processes on this
machine (what the tests use).
"""

from __future__ import annotations

import math
import os

from nmcfx.errors import InputError
from nmcfx.log import get_logger

log = get_logger("nmcfx.sweep")

CLUSTERS = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "sge": "SGECluster", "lsf": "LSFCluster",
            "htcondor": "HTCondorCluster", "oar": "OARCluster", "moab": "MoabCluster", "local": None}
OWN_KEYS = ("cluster", "jobs", "workers")


def check_available(settings: dict) -> None:
    """One clear line if dask-jobqueue is missing or the cluster kind is unknown."""
    kind = settings.get("cluster", "local")
    if kind not in CLUSTERS:
        raise InputError("dask.cluster", f"must be one of {list(CLUSTERS)}, got {kind!r}")
    for key in ("jobs", "workers"):
        v = settings.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise InputError(f"dask.{key}", f"must be an integer >= 1, got {v!r}")
    try:
        import distributed  # noqa: F401

        if kind != "local":
            import dask_jobqueue  # noqa: F401
    except ImportError:
        raise InputError("--backend dask", "needs dask-jobqueue: pip install 'nmcfx[cluster]' "
                                           "(nothing was run)") from None


def make_cluster(settings: dict, workers: int | None = None):
    """The Dask cluster described by ``settings`` (not yet scaled for jobqueue kinds)."""
    check_available(settings)
    kind = settings.get("cluster", "local")
    opts = {k: v for k, v in settings.items() if k not in OWN_KEYS}
    if kind == "local":
        from distributed import LocalCluster

        n = workers or settings.get("workers") or os.cpu_count() or 1
        return LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None, **opts)
    import dask_jobqueue

    opts.setdefault("cores", 1)
    opts.setdefault("memory", "2GB")
    opts.setdefault("processes", opts["cores"])  # one thread per worker process
    try:
        return getattr(dask_jobqueue, CLUSTERS[kind])(**opts)
    except TypeError as exc:
        raise InputError("dask", f"{CLUSTERS[kind]}: {exc}") from None


def _case_on_worker(payload: dict, root: str) -> dict:
    """Runs inside a Dask worker process (imports happen once per process)."""
    from mpi4py import MPI

    from .case import execute_case

    return execute_case(payload, root, MPI.COMM_SELF)


def run_dask(payloads: list[dict], root, settings: dict, workers: int | None, progress) -> None:
    from distributed import Client, as_completed

    from .case import one_line, record_failure

    cluster = make_cluster(settings, workers)
    try:
        if settings.get("cluster", "local") != "local":
            cluster.scale(jobs=settings.get("jobs", 1))
            log.info("dask backend: %s, %d job(s); job script:\n%s", type(cluster).__name__, settings.get("jobs", 1),
                     cluster.job_script())
        else:
            log.info("dask backend: LocalCluster with %d worker process(es)", len(cluster.workers))
        with Client(cluster) as client:
            futures = {client.submit(_case_on_worker, p, str(root), key=f"nmcfx-{p['index']}-{p['digest']}",
                                     pure=False): p for p in payloads}
            for fut in as_completed(futures):
                p = futures[fut]
                try:
                    out = fut.result()
                except Exception as exc:  # noqa: BLE001 - e.g. KilledWorker: the case fails, the sweep goes on
                    reason = f"dask worker lost: {one_line(exc)}"
                    record_failure(root, p, reason)
                    out = {"index": p["index"], "name": p["name"], "status": "failed", "wall_s": math.nan,
                           "reason": reason, "numbers": {}}
                progress(out)
    finally:
        cluster.close()
