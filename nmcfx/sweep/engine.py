"""Running a sweep on a backend: plan (validate every case, skip the finished ones),
dispatch, gather.

    from nmcfx.sweep import load_sweep, run_sweep
    results = run_sweep(load_sweep("sweep.toml"), "runs/sweep", backend="local", workers=2)
    results.dataframe()        # one row per case; results.dataset(): axes as dimensions

Backends: ``local`` (persistent worker processes, :mod:`.local`), ``mpi`` (under
``mpiexec``: cases on sub-communicators of ``ranks_per_case`` ranks, claimed one at a
time so long and short cases balance), ``slurm`` (a job array, :mod:`.slurm`) and
``dask`` (dask-jobqueue clusters: PBS, SGE, LSF, HTCondor, …, :mod:`.jobqueue`).
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path

from nmcfx.errors import InputError
from nmcfx.log import ALL_RANKS, get_logger

from .definition import Sweep
from .store import SweepDir

log = get_logger("nmcfx.sweep")
BACKENDS = ("local", "mpi", "slurm", "dask")


class Plan:
    """The cases of a sweep in a directory, split into to-run and finished."""

    def __init__(self, sweep: Sweep, root: str | Path, force: bool = False):
        self.sweep = sweep
        self.dir = SweepDir(root)
        self.cases = sweep.cases()  # validates every case before anything is written
        self.states = self.dir.states(self.cases)
        run_states = ("pending", "stale", "failed") + (("done",) if force else ())
        self.todo = [c for c, s in zip(self.cases, self.states) if s.state in run_states]
        self.done = [c for c, s in zip(self.cases, self.states) if s.state == "done" and not force]

    def write_manifest(self):
        self.dir.root.mkdir(parents=True, exist_ok=True)
        return self.dir.write_manifest(self.sweep, self.cases)

    def payloads(self) -> list[dict]:
        return [self.sweep.payload(c) for c in self.todo]


class Progress:
    """Logs one line per finished case: ``[k/N] name: done in 1.2 s``."""

    def __init__(self, total: int, already: int, group: int | None = None):
        self.total, self.k, self.failed = total, already, 0
        self.already = already
        self.group = group  # mpi: each group leader reports its own cases
        self.extra = ALL_RANKS if group is not None else None
        self.t0 = time.perf_counter()

    def eta(self) -> str:
        ran, left = self.k - self.already, self.total - self.k
        if ran < 1 or left < 1:
            return ""
        s = (time.perf_counter() - self.t0) / ran * left
        return f", about {s / 60:.0f} min left" if s >= 90 else f", about {s:.0f} s left"

    def __call__(self, outcome: dict):
        self.k += 1
        where = f"[group {self.group}]" if self.group is not None else f"[{self.k}/{self.total}]"
        eta = "" if self.group is not None else self.eta()
        if outcome["status"] == "done":
            log.info("%s %s: done in %.1f s%s", where, outcome["name"], outcome["wall_s"], eta, extra=self.extra)
        else:
            self.failed += 1
            log.info("%s %s: FAILED: %s%s", where, outcome["name"], outcome["reason"], eta, extra=self.extra)


def run_sweep(sweep: Sweep, outdir: str | Path, *, backend: str = "local", workers: int | None = None,
              ranks_per_case: int | None = None, force: bool = False, comm=None, collect: bool = True,
              pool=None):
    """Run (or submit) every unfinished case of ``sweep`` into ``outdir``.

    Returns the gathered :class:`~nmcfx.sweep.results.SweepResults` (``local``, ``mpi``,
    ``dask``; on every rank for ``mpi``) or, for ``slurm``, the submission record.
    Every case is validated first; an invalid one raises :class:`InputError` naming it and
    nothing is written. ``backend="mpi"`` without ``mpiexec`` runs the cases in this
    process (no start-up at all: what an adaptive search calling ``run_sweep`` repeatedly
    wants); ``pool``: a :class:`~nmcfx.sweep.local.LocalPool` kept open across calls.
    """
    if backend not in BACKENDS:
        raise InputError("--backend", f"must be one of {list(BACKENDS)}, got {backend!r}")
    if backend == "mpi":
        return _run_mpi(sweep, outdir, ranks_per_case=ranks_per_case, force=force, comm=comm, collect=collect)
    from mpi4py import MPI

    if MPI.COMM_WORLD.size > 1:
        raise InputError("--backend", f"{backend!r} runs in one process; under mpiexec use --backend mpi")
    if backend == "slurm":
        from .slurm import submit

        return submit(sweep, outdir, force=force)
    plan = Plan(sweep, outdir, force)
    if backend == "dask":
        from .jobqueue import check_available

        check_available(sweep.settings.get("dask", {}))
    plan.write_manifest()
    n = len(plan.cases)
    log.info("sweep %s: %d case(s), %d to run, %d already done -> %s/", sweep.name, n, len(plan.todo),
             len(plan.done), plan.dir.root)
    progress = Progress(n, len(plan.done))
    t0 = time.perf_counter()
    if plan.todo:
        if backend == "local":
            from .local import LocalPool

            if pool is not None:
                pool.run(plan.payloads(), plan.dir.root, progress)
            else:
                nw = _workers(workers, sweep.settings.get("local", {}), len(plan.todo))
                log.info("local backend: %d worker process(es); logs in %s/", nw, plan.dir.root / "logs")
                with LocalPool(nw, plan.dir.root / "logs") as own:
                    own.run(plan.payloads(), plan.dir.root, progress)
        else:
            from .jobqueue import run_dask

            run_dask(plan.payloads(), plan.dir.root, sweep.settings.get("dask", {}), workers, progress)
    log.info("ran %d case(s) in %.1f s (%d failed)", len(plan.todo), time.perf_counter() - t0, progress.failed)
    return collect_results(plan.dir.root) if collect else None


def _workers(workers, settings: dict, n_todo: int) -> int:
    w = workers if workers is not None else settings.get("workers", os.cpu_count() or 1)
    if isinstance(w, bool) or not isinstance(w, int) or w < 1:
        raise InputError("--workers", f"must be an integer >= 1, got {w!r}")
    return max(1, min(w, n_todo))


def collect_results(root: str | Path, *, plot: dict | None = None):
    """Gather the table, write ``results.csv``/``results.nc`` and the figure; log a summary."""
    from .results import gather, plot_metric

    res = gather(root)
    files = res.write()
    spec = dict(res.manifest["sweep"].get("plot") or {})
    spec.update(plot or {})
    if not spec:
        spec = default_plot(res)
    if spec and res.counts["done"]:
        try:
            files.append(plot_metric(res, spec["metric"], spec["x"], spec.get("y")))
        except InputError as exc:
            log.warning("no figure: %s", exc)
    c = res.counts
    log.info("%d case(s): %d done, %d failed, %d pending%s; table: %s", len(res.rows), c["done"], c["failed"],
             c["pending"] + c["stale"], "", ", ".join(str(f) for f in files))
    for r in res.rows:
        if r["status"] == "failed":
            log.info("  failed %s: %s", r["name"], r["reason"])
    return res


def default_plot(res) -> dict:
    """The first numeric summary column over the first two swept labels, if there are two."""
    labels = list(dict.fromkeys(res.manifest.get("labels", {}).values()))
    axes = res.manifest["sweep"]["axes"]
    if not labels:
        return {}
    metrics = res.manifest["sweep"].get("metrics") or []
    from .definition import metric_column

    first = next((metric_column(m) for m in metrics if metric_column(m) in res.numeric), None)
    bookkeeping = {"wall_s", "wall_time_s", "assembly_time_s", "mpi_size", "dofs", "steps", "rejected_steps",
                   "newton_iterations", "linear_iterations"}
    metric = (first or next((m for m in ("capacity_mAh_g", "theta_center_final") if m in res.numeric), None)
              or next((m for m in res.numeric if m not in bookkeeping), None))
    if metric is None:
        return {}
    grid_names = [a["name"] for a in axes if a["kind"] in ("grid", "zip", "cases")]
    if len(labels) == 1:
        return {"metric": metric, "x": labels[0]}
    if len(grid_names) >= 2:
        return {"metric": metric, "x": grid_names[0], "y": grid_names[1]}
    return {"metric": metric, "x": labels[0], "y": labels[1]}


# ----------------------------------------------------------------------------- mpi
def _run_mpi(sweep: Sweep, outdir, *, ranks_per_case=None, force=False, comm=None, collect=True):
    """Cases on sub-communicators of ``ranks_per_case`` ranks; a group claims its next case
    by creating ``DIR/.claims/<run>/<i>`` exclusively (no coordinator rank is lost)."""
    from mpi4py import MPI

    from .case import execute_case

    comm = MPI.COMM_WORLD if comm is None else comm
    k = ranks_per_case if ranks_per_case is not None else sweep.settings.get("mpi", {}).get("ranks_per_case", 1)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= comm.size:
        raise InputError("--ranks-per-case", f"must be an integer in [1, {comm.size}] (the MPI size), got {k!r}")
    plan = err = None
    if comm.rank == 0:
        try:
            plan = Plan(sweep, outdir, force)
            plan.write_manifest()
        except InputError as exc:
            err = exc
    err = comm.bcast(err, root=0)
    if err is not None:
        raise err
    payloads = comm.bcast(plan.payloads() if comm.rank == 0 else None, root=0)
    n_total, n_done = comm.bcast((len(plan.cases), len(plan.done)) if comm.rank == 0 else None, root=0)
    groups = comm.size // k
    root = Path(outdir)
    run_id = comm.bcast(uuid.uuid4().hex[:12] if comm.rank == 0 else None, root=0)
    claims = root / ".claims" / run_id
    if comm.rank == 0:
        log.info("sweep %s: %d case(s), %d to run, %d already done -> %s/; %d group(s) of %d rank(s)",
                 sweep.name, n_total, len(payloads), n_done, root, groups, k)
        if comm.size % k:
            log.warning("%d rank(s) idle: the MPI size %d is not a multiple of %d", comm.size % k, comm.size, k)
        claims.mkdir(parents=True, exist_ok=True)
    comm.Barrier()
    color = comm.rank // k if comm.rank < groups * k else MPI.UNDEFINED
    sub = comm.Split(color, comm.rank)
    progress = Progress(n_total, n_done, group=color if color != MPI.UNDEFINED else -1)
    if sub != MPI.COMM_NULL:
        nxt = 0
        while True:
            idx = None
            if sub.rank == 0:
                while nxt < len(payloads):
                    try:
                        os.close(os.open(claims / str(nxt), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                        idx = nxt
                        nxt += 1
                        break
                    except FileExistsError:
                        nxt += 1
            idx = sub.bcast(idx, root=0)
            if idx is None:
                break
            outcome = execute_case(payloads[idx], root, sub)
            if sub.rank == 0:
                progress(outcome)
        sub.Free()
    comm.Barrier()
    if comm.rank == 0:
        shutil.rmtree(claims, ignore_errors=True)
        try:
            claims.parent.rmdir()
        except OSError:
            pass
    res = None
    if collect:
        res = collect_results(root) if comm.rank == 0 else None
        res = comm.bcast(res, root=0)
    return res


# ----------------------------------------------------------------------------- status
def status(root: str | Path) -> dict:
    """Done/failed/pending counts of a sweep directory, failures with their reasons."""
    from .results import gather

    res = gather(root)
    c = res.counts
    out = {"name": res.manifest.get("name"), "total": len(res.rows), **c,
           "failures": [(r["name"], r["reason"]) for r in res.rows if r["status"] == "failed"],
           "pending_cases": [r["name"] for r in res.rows if r["status"] in ("pending", "stale")]}
    from .slurm import queue_state

    out["slurm"] = queue_state(root)
    return out


def format_status(st: dict, root) -> str:
    lines = [f"sweep {st['name']} in {root}/: {st['total']} case(s): {st['done']} done, {st['failed']} failed, "
             f"{st['pending'] + st['stale']} pending" + (f" ({st['stale']} with changed inputs)" if st["stale"] else "")]
    if st.get("slurm"):
        lines.append(f"  SLURM: {st['slurm']}")
    for name, reason in st["failures"][:20]:
        lines.append(f"  failed  {name}: {reason}")
    if len(st["failures"]) > 20:
        lines.append(f"  ... and {len(st['failures']) - 20} more failures (results.csv, column reason)")
    pend = st["pending_cases"]
    if pend:
        lines.append(f"  pending {', '.join(pend[:8])}" + (f", ... ({len(pend)} in all)" if len(pend) > 8 else ""))
    return "\n".join(lines)
