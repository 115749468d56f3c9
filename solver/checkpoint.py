"""Checkpoint and resume of a run (``nmcfx run … --resume``).

A checkpoint lives in ``<run dir>/checkpoint/``:

* ``state.json`` — the controller's state (time, protocol position, step sizes, BDF history
  flag, Li ledger, the GITT skip state, the capacity at the start of the current step,
  counters, observer count) and how many history records and step-log entries belong to it;
  written last, to a temporary name and renamed: it is the commit point;
* ``history.jsonl``, ``steps.jsonl`` — the time-series records and protocol-step log,
  **appended** at every save (never rewritten), so a checkpoint costs the same at step 100 000
  as at step 10; lines beyond the counts in ``state.json`` (a save interrupted after appending)
  are ignored on resume;
* ``rank<r>.npz`` — the owned DOF values of every field's history (θ_n, θ_{n−1}, and the
  potentials — e.g. the particle potential of a Butler–Volmer run) per MPI rank;
* ``observers.npz`` — what the observers need to redraw their figures (rank 0).

Resuming needs the same config (checked by hash) and the same number of MPI ranks (the mesh
partition, hence the DOF layout, depends on it); a damaged checkpoint is reported in one line.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path

import numpy as np

from nmcfx.errors import InputError

FORMAT = 2
STATE_KEYS = ("format", "config_hash", "mpi_size", "num_dofs", "t", "k", "t_step_start", "dt", "dt_prev",
              "have_prev", "ledger", "ledger_prev", "I0", "obs", "snaps", "counters", "n_history", "n_steps",
              "observers", "skip_group", "step_capacity0")


def config_hash(cfg: dict) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Checkpointer:
    def __init__(self, directory: Path | str, comm, config: dict, every_wall_s: float = 120.0):
        self.dir = Path(directory)
        self.comm = comm
        self.hash = config_hash(config)
        self.every = every_wall_s
        self._last = time.monotonic()
        self._written_history = 0  # records already appended to history.jsonl (rank 0)
        self._written_steps = 0

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
        if comm.rank == 0:
            self.dir.mkdir(parents=True, exist_ok=True)
            if self._written_history == 0 and self._written_steps == 0:
                # a fresh run (or the first save after a resume, which rewrote the valid prefix)
                for name in ("history.jsonl", "steps.jsonl"):
                    (self.dir / name).unlink(missing_ok=True)
        comm.Barrier()
        arrays = self.dir / f"rank{comm.rank}.npz"
        tmp = self.dir / f"rank{comm.rank}.tmp.npz"
        np.savez(tmp, **sv.problem.state_arrays())
        tmp.replace(arrays)
        observers = [o.state() if hasattr(o, "state") else {} for o in sim.observers]
        comm.Barrier()
        if comm.rank == 0:
            # observer arrays (figure data) go to an npz, one key per observer and field
            flat = {f"{i}:{key}": val for i, st in enumerate(observers) for key, val in (st or {}).items()}
            tmp_obs = self.dir / "observers.tmp.npz"
            np.savez(tmp_obs, **flat)
            tmp_obs.replace(self.dir / "observers.npz")
            self._append(self.dir / "history.jsonl", [_record_dict(r) for r in sim.history[self._written_history:]])
            self._written_history = len(sim.history)
            self._append(self.dir / "steps.jsonl", sim.step_log[self._written_steps:])
            self._written_steps = len(sim.step_log)
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
                "n_history": len(sim.history),
                "n_steps": len(sim.step_log),
                "observers": len(observers),
                "skip_group": sim._skip_group,
                "step_capacity0": sim._step_capacity0,
            }
            tmp_state = self.dir / "state.json.tmp"
            tmp_state.write_text(json.dumps(state, default=_jsonable))
            tmp_state.replace(self.state_file)
        comm.Barrier()
        self._last = time.monotonic()

    @staticmethod
    def _append(path: Path, rows: list):
        if not rows:
            path.touch()
            return
        with open(path, "a") as fh:
            for r in rows:
                fh.write(json.dumps(r, default=_jsonable) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    # ------------------------------------------------------------------ read
    def load(self, sim) -> dict:
        """Restore ``sim`` (controller and every field) from the checkpoint; returns the state."""
        comm = self.comm
        payload = None
        if comm.rank == 0:
            try:
                payload = ("ok", self._read_rank0())
            except InputError as exc:
                payload = ("error", str(exc).split(": ", 1)[-1])
        payload = comm.bcast(payload, root=0)
        if payload[0] == "error":
            raise InputError("--resume", payload[1])
        state, history, steps, observers = payload[1]
        if state["config_hash"] != self.hash:
            raise InputError("--resume", "the config differs from the one of the checkpointed run")
        if state["mpi_size"] != comm.size:
            raise InputError("--resume", f"the checkpoint was written by {state['mpi_size']} MPI rank(s); "
                                         f"resume with mpiexec -n {state['mpi_size']}")
        sv = sim.solver
        if state["num_dofs"] != sv.num_dofs:
            raise InputError("--resume", "the mesh differs from the checkpointed run")
        problem = None
        try:
            with np.load(self.dir / f"rank{comm.rank}.npz") as data:
                sv.problem.load_state_arrays(data)
        except (OSError, ValueError, KeyError, EOFError) as exc:
            problem = f"rank{comm.rank}.npz is damaged or from another mesh ({type(exc).__name__}: {exc})"
        problem = comm.allgather(problem)
        bad = next((p for p in problem if p), None)
        if bad:
            raise InputError("--resume", f"the checkpoint in {self.dir} cannot be used: {bad}; "
                                         "run again without --resume (with --overwrite) to start afresh")
        sim.t = state["t"]
        sim._dt_prev = state["dt_prev"]
        sim._have_prev = state["have_prev"]
        sim._ledger = state["ledger"]
        sim._ledger_prev = state["ledger_prev"]
        sim._I0 = state["I0"]
        sim._skip_group = state["skip_group"]
        sim._step_capacity0 = state["step_capacity0"]
        for key, val in state["counters"].items():
            setattr(sv.counters, key, val)
        sim.history = [sim.record_from_dict(r) for r in history]
        sim.step_log = steps
        self._written_history = 0  # the next save rewrites the valid prefix (dropping a torn tail)
        self._written_steps = 0
        state["observers"] = observers if comm.rank == 0 else [{} for _ in range(state["observers"])]
        return state

    def _read_rank0(self):
        d = self.dir
        if not self.state_file.is_file():
            raise InputError("--resume", f"no checkpoint in {d} to resume from")
        damaged = f"the checkpoint in {d} is damaged"
        hint = "; run again without --resume (with --overwrite) to start afresh"
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError("--resume", f"{damaged} (state.json: {exc}){hint}") from None
        if not isinstance(state, dict):
            raise InputError("--resume", f"{damaged} (state.json is not a table){hint}")
        if state.get("format") != FORMAT:
            raise InputError("--resume", f"the checkpoint in {d} has format {state.get('format')!r}, this nmcfx "
                                         f"writes {FORMAT}{hint}")
        missing = [k for k in STATE_KEYS if k not in state]
        if missing:
            raise InputError("--resume", f"{damaged} (state.json lacks {missing}){hint}")
        for key in ("t", "dt", "ledger", "I0"):
            v = state[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise InputError("--resume", f"{damaged} (state.json: {key} = {v!r}){hint}")
        if state["t"] < 0 or state["dt"] <= 0:
            raise InputError("--resume", f"{damaged} (state.json: t = {state['t']!r}, dt = {state['dt']!r}){hint}")
        history = self._read_lines(d / "history.jsonl", state["n_history"], damaged, hint)
        steps = self._read_lines(d / "steps.jsonl", state["n_steps"], damaged, hint)
        observers = [{} for _ in range(state["observers"])]
        try:
            with np.load(d / "observers.npz") as obs_data:
                for key in obs_data.files:
                    i, name = key.split(":", 1)
                    observers[int(i)][name] = obs_data[key]
        except (OSError, ValueError, KeyError, EOFError, IndexError) as exc:
            raise InputError("--resume", f"{damaged} (observers.npz: {exc}){hint}") from None
        return state, history, steps, observers

    @staticmethod
    def _read_lines(path: Path, n: int, damaged: str, hint: str) -> list:
        if n == 0:
            return []
        try:
            with open(path) as fh:
                lines = [next(fh) for _ in range(n)]
            return [json.loads(ln) for ln in lines]
        except (OSError, StopIteration, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError("--resume", f"{damaged} ({path.name}: fewer than the {n} valid records the state "
                                         f"names, {type(exc).__name__}){hint}") from None


def _record_dict(r) -> dict:
    if is_dataclass(r):
        return asdict(r)
    return dict(r)


def _jsonable(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return str(o)
