"""Checkpoint and resume of a run (``nmcfx run … --resume``).

A checkpoint lives in ``<run dir>/checkpoint/``: ``state.json`` (time, protocol position,
step-size history, Li ledger, every time-series record, observer state) written by rank 0,
and one ``rank<r>.npz`` per rank with the owned DOF values of θ_n and θ_{n-1}, and
``observers.npz`` with the figure data gathered so far (rank 0). Files are
written to temporary names and renamed, and ``state.json`` (the commit point) last, so a
run killed mid-write resumes from the previous complete checkpoint.

Resuming needs the same config (checked by hash) and the same number of MPI ranks (the
mesh partition, hence the DOF layout, depends on it).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from nmcfx.errors import InputError

from .simulation import StepRecord

FORMAT = 1


def config_hash(cfg: dict) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Checkpointer:
    def __init__(self, directory: Path | str, comm, config: dict, every_wall_s: float = 120.0):
        self.dir = Path(directory)
        self.comm = comm
        self.hash = config_hash(config)
        self.every = every_wall_s
        self._last = time.monotonic()

    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    def exists(self) -> bool:
        return bool(self.comm.bcast(self.state_file.is_file() if self.comm.rank == 0 else None, root=0))

    def due(self) -> bool:
        # decided on rank 0 so that all ranks checkpoint together
        flag = (time.monotonic() - self._last) >= self.every if self.comm.rank == 0 else None
        return bool(self.comm.bcast(flag, root=0))

    # ------------------------------------------------------------------ write
    def save(self, sim, *, k, t_step_start, dt, obs, snaps):
        sv, comm = sim.solver, self.comm
        n = sv._n_owned
        if comm.rank == 0:
            self.dir.mkdir(parents=True, exist_ok=True)
        comm.Barrier()
        arrays = self.dir / f"rank{comm.rank}.npz"
        tmp = self.dir / f"rank{comm.rank}.tmp.npz"
        np.savez(tmp, theta_n=sv.theta_n.x.array[:n], theta_nm1=sv.theta_nm1.x.array[:n])
        tmp.replace(arrays)
        observers = [o.state() if hasattr(o, "state") else {} for o in sim.observers]
        comm.Barrier()
        if comm.rank == 0:
            # observer arrays (figure data) go to an npz, one key per observer and field
            flat = {f"{i}:{key}": val for i, st in enumerate(observers) for key, val in (st or {}).items()}
            tmp_obs = self.dir / "observers.tmp.npz"
            np.savez(tmp_obs, **flat)
            tmp_obs.replace(self.dir / "observers.npz")
            c = sv.counters
            state = {
                "format": FORMAT,
                "config_hash": self.hash,
                "mpi_size": comm.size,
                "num_dofs": sv.num_dofs,
                "t": sim.t,
                "k": k,
                "t_step_start": t_step_start,
                "dt": dt,
                "dt_prev": sim._dt_prev,
                "have_prev": sim._have_prev,
                "ledger": sim._ledger,
                "ledger_prev": sim._ledger_prev,
                "I0": sim._I0,
                "obs": obs,
                "snaps": list(snaps),
                "counters": {"steps": c.steps, "rejected_steps": c.rejected_steps,
                             "newton_iterations": c.newton_iterations, "linear_iterations": c.linear_iterations},
                "history": [asdict(r) for r in sim.history],
                "step_log": sim.step_log,
                "observers": len(observers),
            }
            tmp_state = self.dir / "state.json.tmp"
            tmp_state.write_text(json.dumps(state, default=_jsonable))
            tmp_state.replace(self.state_file)
        comm.Barrier()
        self._last = time.monotonic()

    # ------------------------------------------------------------------ read
    def load(self, sim) -> dict:
        comm = self.comm
        state = None
        if comm.rank == 0 and self.state_file.is_file():
            state = json.loads(self.state_file.read_text())
        state = comm.bcast(state, root=0)
        if state is None:
            raise InputError("--resume", f"no checkpoint in {self.dir}")
        if state.get("format") != FORMAT:
            raise InputError("--resume", f"checkpoint format {state.get('format')} is not {FORMAT}")
        if state["config_hash"] != self.hash:
            raise InputError("--resume", "the config differs from the one of the checkpointed run")
        if state["mpi_size"] != comm.size:
            raise InputError("--resume", f"the checkpoint was written by {state['mpi_size']} MPI rank(s); "
                                         f"resume with mpiexec -n {state['mpi_size']}")
        sv = sim.solver
        if state["num_dofs"] != sv.num_dofs:
            raise InputError("--resume", "the mesh differs from the checkpointed run")
        data = np.load(self.dir / f"rank{comm.rank}.npz")
        n = sv._n_owned
        for name, f in (("theta_n", sv.theta_n), ("theta_nm1", sv.theta_nm1)):
            if data[name].shape != (n,):
                raise InputError("--resume", "the DOF layout differs from the checkpointed run")
            f.x.array[:n] = data[name]
            f.x.scatter_forward()
        sv.theta.x.array[:] = sv.theta_n.x.array
        sim.t = state["t"]
        sim._dt_prev = state["dt_prev"]
        sim._have_prev = state["have_prev"]
        sim._ledger = state["ledger"]
        sim._ledger_prev = state["ledger_prev"]
        sim._I0 = state["I0"]
        observers = [{} for _ in range(state["observers"])]
        if comm.rank == 0:
            with np.load(self.dir / "observers.npz") as obs_data:
                for key in obs_data.files:
                    i, name = key.split(":", 1)
                    observers[int(i)][name] = obs_data[key]
        state["observers"] = observers
        for key, val in state["counters"].items():
            setattr(sv.counters, key, val)
        sim.history = [StepRecord(**r) for r in state["history"]]
        sim.step_log = state["step_log"]
        return state


def _jsonable(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return str(o)
