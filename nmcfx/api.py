"""The Python API: load a run specification, run it, get the time series and summary.

    import nmcfx
    spec = nmcfx.load("run.toml")                              # validated RunSpec
    result = nmcfx.run(spec.with_overrides({"material.scaling_S": 4.0}), "runs/S4")
    result.summary["capacity_mAh_g"]                           # the numbers of summary.json
    result.timeseries["theta_center"]                          # NumPy arrays, one per column
    result.dataframe()                                         # the same as a pandas DataFrame

``nmcfx.run`` goes through ``nmcfx.solver.run.prepare`` and ``execute`` exactly like
``nmcfx run`` (which calls it), so the run directory holds the same files. It is
collective: under ``mpiexec`` every rank calls it (rank 0 writes) and every rank gets
the same result. Progress messages go to the ``nmcfx`` logger (``nmcfx.log.setup()``
shows them).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nmcfx.log import get_logger
from nmcfx.spec import RunSpec, load

log = get_logger(__name__)

__all__ = ["RunResult", "RunSpec", "load", "run"]


@dataclass
class RunResult:
    """What one run returns (identical on every rank).

    ``summary``: the headline numbers (``summary.json``); ``timeseries``: one NumPy array
    per ``timeseries.csv`` column (``time_s``, ``theta_center``, ``capacity_mAh_g``, …);
    ``steps``: one dict per protocol step (``steps.csv``); ``outdir``: the run directory.
    """

    spec: RunSpec
    outdir: Path
    summary: dict
    timeseries: dict[str, np.ndarray] = field(default_factory=dict)
    steps: list[dict] = field(default_factory=list)

    def scalars(self) -> dict[str, float | int | str | None]:
        """The summary's numbers (and short strings), without nested lists."""
        return {k: v for k, v in self.summary.items() if v is None or isinstance(v, (int, float, str))}

    def dataframe(self):
        """The time series as a pandas DataFrame (needs pandas)."""
        import pandas as pd

        return pd.DataFrame(self.timeseries)


class _History:
    """Simulation observer keeping the accepted-step records and the protocol-step log."""

    def __init__(self):
        self.records: list = []
        self.steps: list[dict] = []

    def state(self) -> dict:
        return {}

    def start(self, sim, restore=None):  # noqa: ARG002
        pass

    def record(self, sim, rec):
        pass

    def snapshot(self, sim, t):
        pass

    def step_end(self, sim, info):
        pass

    def finish(self, sim):
        self.records = list(sim.history)
        self.steps = [dict(s) for s in sim.step_log]

    def columns(self) -> dict[str, np.ndarray]:
        """One array per recorded quantity (StepRecord fields, or the keys of dict records)."""
        if not self.records:
            return {}
        first = self.records[0]
        if is_dataclass(first):
            return {f.name: np.array([getattr(r, f.name) for r in self.records]) for f in fields(first)}
        names = list(dict.fromkeys(k for r in self.records for k in r))  # e.g. electrode records
        return {n: np.array([r.get(n, np.nan) for r in self.records]) for n in names}


def run(spec: RunSpec | str | os.PathLike | Mapping, outdir: str | os.PathLike | None = None, *,
        overrides: Mapping[str, Any] | None = None, comm=None, progress: bool | None = None,
        resume: bool = False, overwrite: bool = False, observers: Sequence = (),
        keep_for_next_run: bool = True) -> RunResult:
    """Run a simulation into ``outdir`` (default ``runs/<spec name>``) and return its results.

    ``spec``: a :class:`RunSpec`, a TOML path or a config dict (validated first);
    ``overrides``: dotted keys applied before running; ``comm``: the MPI communicator the
    case runs on (default ``MPI.COMM_WORLD``); ``progress``: progress bar (default: the
    config's ``output.progress``); ``resume``: continue from ``outdir/checkpoint``;
    ``overwrite``: replace an earlier run in ``outdir`` (refused otherwise);
    ``observers``: extra ``Simulation`` observers (e.g. a θ-map recorder);
    ``keep_for_next_run``: keep the mesh and elasticity solver for a later run on the same mesh in
    this process (False frees them before the figures are drawn, as ``nmcfx run`` does).
    Bad input or an occupied ``outdir`` raises :class:`nmcfx.errors.InputError` before
    anything is written (and before meshing).
    """
    from mpi4py import MPI

    from nmcfx.solver.run import execute

    spec = load(spec, overrides)
    comm = MPI.COMM_WORLD if comm is None else comm
    outdir = Path(outdir) if outdir is not None else Path("runs") / spec.name
    try:
        from nmcfx.solver.rundir import check_run_directory
    except ImportError:  # pragma: no cover - a solver without run-directory protection
        check_run_directory = None
    if check_run_directory is not None:
        check_run_directory(outdir, config=spec.config, resume=resume, overwrite=overwrite, comm=comm)
    prepared = spec.prepare(comm)
    log.info("nmcfx: %s", prepared.title or spec.name)
    log.info("%s", prepared.particle.summary())
    for i, s in enumerate(prepared.protocol.steps):
        log.info("  step %d: %s", i, s.describe())
    if resume:
        log.info("  resuming from %s", outdir / "checkpoint")
    history = _History()
    extra = {"overwrite": overwrite} if check_run_directory is not None else {}
    summary = execute(prepared, outdir, comm=comm, progress=progress, resume=resume,
                      observers=[*observers, history], keep_for_next_run=keep_for_next_run, **extra)
    return RunResult(spec, outdir, summary, history.columns(), history.steps)
