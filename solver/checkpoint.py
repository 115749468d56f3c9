"""Checkpoint and resume of a run (``nmcfx run … --resume``).

A checkpoint lives in ``<run dir>/checkpoint/``:

* ``state.json`` — the commit point: the controller's state (time, protocol position, step
  sizes, BDF history flag, Li ledger, the GITT skip state, the capacity at the start of the
  current step, counters), which array slot is current, and how many records and bytes of
  each appended file belong to the checkpoint. Written last (to a temporary name, synced,
  renamed);
* ``history.jsonl``, ``steps.jsonl`` — the time-series records and the protocol-step log,
  **appended** at every save (never rewritten);
* ``series.<i>.<name>.f64`` — observers' per-step data (e.g. the line profiles behind the
  kymograph, the θ maps at the snapshot times), raw float64 rows, appended the same way;
* ``rank<r>.<slot>.npz`` — the owned DOF values of every field's history (θ_n, θ_{n−1}, the
  potentials — e.g. the particle potential of a Butler–Volmer run) on MPI rank r, with a
  fingerprint of the DOF layout; ``observers.<slot>.npz`` — the observers' other state.
  Saves alternate between slot 0 and 1 and ``state.json`` names the current one.

So a save costs the same at step 100 000 as at step 10 (the fields plus the records since
the last save), and a save interrupted at any moment — killed, a second Ctrl-C, a full
disk — leaves the previous checkpoint whole: the slot it names is not touched, and bytes
appended beyond the counts in ``state.json`` are ignored on resume (and cut off by the
next save).

Resuming needs the same config (checked by hash), the same number of MPI ranks and the same
mesh (the DOF count and each rank's DOF layout: the mesh partition depends on the number of
ranks). :meth:`Checkpointer.validate` checks the files without a model (the CLI runs it
before meshing); :meth:`Checkpointer.read` checks every rank's arrays against the model
before the resumed run writes anything; a problem is reported in one line::

    ckpt = Checkpointer(outdir / "checkpoint", comm, config)
    ckpt.validate()          # rank 0: raises InputError("--resume", ...) naming what is wrong
    ckpt.read(solver)        # collective, after the model is built
    state = ckpt.load(sim)   # restores the controller and every field
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
import zipfile
from dataclasses import asdict, is_dataclass
from pathlib import Path

import numpy as np

from nmcfx.errors import InputError
from nmcfx.parallel import collective_errors, describe_os_error

FORMAT = 3
#: checkpoints at least this far apart (wall time) are synced to disk by default
SYNC_MIN_INTERVAL_S = 10.0
#: Field of the errors raised while reading a checkpoint (the CLI option that asks for it).
FIELD = "--resume"
HINT = "; run again without --resume (with --overwrite) to start afresh"
HISTORY, STEPS = "history.jsonl", "steps.jsonl"
_SERIES_KEY = re.compile(r"^(\d+):([A-Za-z0-9_]+)$")
_FINITE = ("t", "t_step_start", "dt", "ledger", "ledger_prev", "I0", "step_capacity0")
_COUNTS = ("k", "mpi_size", "num_dofs", "observers")
_COUNTERS = ("steps", "rejected_steps", "newton_iterations", "linear_iterations")


def config_hash(cfg: dict) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Checkpointer:
    """Saves and restores a :class:`~nmcfx.solver.simulation.Simulation` (see the module docstring).

    ``comm`` may be None for :meth:`validate` alone (the CLI's early check on rank 0)."""

    #: fsync every file before the commit, so that a checkpoint survives a crash of the machine,
    #: not only of the process (a few ms per file). None: when checkpoints are at least
    #: :data:`SYNC_MIN_INTERVAL_S` apart — it then costs < 0.5 % of the run; a checkpoint at
    #: every step (``checkpoint_wall_s`` = 1e-9, as in tests) stays fast
    fsync: bool | None = None

    def __init__(self, directory: Path | str, comm, config: dict, every_wall_s: float = 120.0):
        self.dir = Path(directory)
        self.comm = comm
        self.hash = config_hash(config)
        self.every = every_wall_s
        self._last = time.monotonic()
        self._slot = 0  # array slot the next save writes (the one state.json does not name)
        self._appended: dict[str, tuple] = {}  # appended file → (items, bytes, row shape) written (rank 0)
        self._exact: set[str] = set()  # appended files whose length this process has set (no torn tail)
        self._layout = None  # DOF-layout fingerprint of this rank (computed once)
        self._read_cache = None  # what read() validated, for load()
        self.durable = self.fsync if self.fsync is not None else every_wall_s >= SYNC_MIN_INTERVAL_S

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
        """Checkpoint ``sim`` (collective). A write error on any rank raises the same
        ``InputError("--output", …)`` on every rank, leaving the previous checkpoint whole."""
        sv, comm, slot = sim.solver, self.comm, self._slot
        fixed = [o.state() if hasattr(o, "state") else {} for o in sim.observers]
        series = [o.appended_state() if hasattr(o, "appended_state") else {} for o in sim.observers]
        arrays = dict(sv.problem.state_arrays())
        arrays.update(self._layout_fingerprint(sv.problem))
        with collective_errors(comm, "--output"):
            self.dir.mkdir(parents=True, exist_ok=True)
            _write_npz(self.dir / rank_file(comm.rank, slot), arrays, self.durable)
        with collective_errors(comm, "--output"):  # the commit, once every rank's arrays are on disk
            if comm.rank == 0:
                flat = {f"{i}:{key}": val for i, st in enumerate(fixed) for key, val in (st or {}).items()}
                _write_npz(self.dir / f"observers.{slot}.npz", flat, self.durable)
                state = self._controller_state(sim, k=k, t_step_start=t_step_start, dt=dt, obs=obs, snaps=snaps)
                state["slot"] = slot
                state["observers"] = len(fixed)
                state["history"] = self._append(HISTORY, sim.history, _encode_lines)
                state["steps"] = self._append(STEPS, sim.step_log, _encode_lines)
                state["series"] = {f"{i}:{name}": self._append(series_file(i, name), rows, _encode_rows)
                                   for i, st in enumerate(series) for name, rows in (st or {}).items()}
                _write_atomic(self.state_file, json.dumps(state, default=_jsonable), self.durable)
        self._slot = 1 - slot
        self._last = time.monotonic()

    def _controller_state(self, sim, *, k, t_step_start, dt, obs, snaps) -> dict:
        sv, c = sim.solver, sim.solver.counters
        return {
            "format": FORMAT, "config_hash": self.hash, "mpi_size": self.comm.size, "num_dofs": sv.num_dofs,
            "t": sim.t, "k": k, "t_step_start": t_step_start, "dt": dt, "dt_prev": sim._dt_prev,
            "have_prev": sim._have_prev, "ledger": sim._ledger, "ledger_prev": sim._ledger_prev, "I0": sim._I0,
            "skip_group": sim._skip_group, "step_capacity0": sim._step_capacity0, "obs": obs, "snaps": list(snaps),
            "counters": {key: getattr(c, key) for key in _COUNTERS},
        }

    def _append(self, name: str, items, encode) -> dict:
        """Append ``items`` beyond those already written to ``name``; cut any torn tail (rank 0)."""
        done, size, shape = self._appended.get(name, (0, 0, None))
        if len(items) > done or name not in self._exact:
            path = self.dir / name
            self._exact.discard(name)
            with open(path, "r+b" if path.exists() else "wb") as fh:
                fh.seek(size)
                if len(items) > done:
                    data, new_shape = encode(items[done:])
                    if shape is not None and new_shape != shape:
                        raise ValueError(f"{name}: rows of shape {new_shape} after rows of shape {shape}")
                    shape = new_shape
                    fh.write(data)
                fh.truncate()
                _sync(fh, self.durable)
                size = fh.tell()
            self._appended[name] = (len(items), size, shape)
            self._exact.add(name)  # its length is known: unchanged until something is appended
        return {"count": len(items), "bytes": size} | ({} if shape is None else {"row_shape": shape})

    def _layout_fingerprint(self, problem) -> dict:
        if self._layout is None:
            self._layout = layout_fingerprint(problem)
        return self._layout

    # ------------------------------------------------------------------ read
    def validate(self, mpi_size: int | None = None) -> dict:
        """Check the checkpoint as far as its files go and return its state (any one process).

        ``state.json`` (format, every field's type and range), the config hash, the number of
        ranks (``mpi_size``, default the communicator's), the appended files against the
        counts it names, ``observers.<slot>.npz`` and every rank's array file. Raises one
        ``InputError("--resume", …)`` naming the first problem.
        """
        state = self._read_state()
        size = mpi_size if mpi_size is not None else self.comm.size
        if state["config_hash"] != self.hash:
            raise InputError(FIELD, "the config differs from the one of the checkpointed run")
        if state["mpi_size"] != size:
            raise InputError(FIELD, f"the checkpoint was written by {state['mpi_size']} MPI rank(s); "
                                    f"resume with mpiexec -n {state['mpi_size']}")
        self._lines(HISTORY, state["history"], parse=False)
        self._lines(STEPS, state["steps"], parse=False)
        for key, info in state["series"].items():
            i, name = _SERIES_KEY.match(key).groups()
            self._rows(series_file(int(i), name), info)
        for name in [f"observers.{state['slot']}.npz"] + [rank_file(r, state["slot"]) for r in range(size)]:
            self._open_npz(name, load=False)
        return state

    def read(self, solver) -> dict:
        """Collective: :meth:`validate` on rank 0, then every rank reads its field arrays and
        checks them against ``solver`` (DOF count, this rank's DOF layout). The same
        ``InputError("--resume", …)`` on every rank if anything is wrong; nothing is written.
        Returns the state; :meth:`load` then restores it."""
        comm = self.comm
        shared = observers = None
        with collective_errors(comm, FIELD):
            if comm.rank == 0:
                state = self.validate(comm.size)
                shared = {"state": state, "history": self._lines(HISTORY, state["history"]),
                          "steps": self._lines(STEPS, state["steps"])}
                observers = self._observers(state)
        shared = comm.bcast(shared, root=0) if comm.size > 1 else shared
        state = shared["state"]
        expected = {key: arr.shape for key, arr in solver.problem.state_arrays().items()}
        layout = self._layout_fingerprint(solver.problem)
        arrays = None
        with collective_errors(comm, FIELD):
            if state["num_dofs"] != solver.num_dofs:
                raise InputError(FIELD, f"the checkpoint in {self.dir} is for another mesh ({state['num_dofs']} "
                                        f"DOFs, this run has {solver.num_dofs}){HINT}")
            arrays = self._rank_arrays(rank_file(comm.rank, state["slot"]), expected, layout)
        self._read_cache = (shared, observers, arrays)
        return state

    def load(self, sim) -> dict:
        """Restore ``sim`` (controller and every field) from the checkpoint; returns the state
        (with ``observers``: what each observer saved, on rank 0)."""
        if self._read_cache is None:
            self.read(sim.solver)
        shared, observers, arrays = self._read_cache
        self._read_cache = None
        state = dict(shared["state"])
        sv = sim.solver
        sv.problem.load_state_arrays(arrays)
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
        sim.history = [sim.record_from_dict(r) for r in shared["history"]]
        sim.step_log = shared["steps"]
        # the next save appends after the committed part of every file and writes the other slot
        self._appended = {HISTORY: (state["history"]["count"], state["history"]["bytes"], None),
                          STEPS: (state["steps"]["count"], state["steps"]["bytes"], None)}
        for key, info in state["series"].items():
            i, name = _SERIES_KEY.match(key).groups()
            self._appended[series_file(int(i), name)] = (info["count"], info["bytes"], info.get("row_shape"))
        self._exact = set()
        self._slot = 1 - state["slot"]
        state["observers"] = observers if self.comm.rank == 0 else [{} for _ in range(state["observers"])]
        return state

    # ------------------------------------------------------------------ read: pieces (rank 0 unless noted)
    def _damaged(self, what: str) -> InputError:
        return InputError(FIELD, f"the checkpoint in {self.dir} is damaged ({what}){HINT}")

    def _read_state(self) -> dict:
        if not self.state_file.is_file():
            raise InputError(FIELD, f"no checkpoint in {self.dir} to resume from")
        try:
            state = json.loads(self.state_file.read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise self._damaged(f"state.json: {describe_os_error(exc) if isinstance(exc, OSError) else exc}") \
                from None
        if not isinstance(state, dict):
            raise self._damaged("state.json is not a table")
        if state.get("format") != FORMAT:
            raise InputError(FIELD, f"the checkpoint in {self.dir} has format {state.get('format')!r}; this nmcfx "
                                    f"reads format {FORMAT}{HINT}")
        problem = _state_problem(state)
        if problem:
            raise self._damaged(f"state.json: {problem}")
        return state

    def _lines(self, name: str, info: dict, parse: bool = True) -> list:
        """The first ``info["count"]`` records of an appended JSON-lines file (``info["bytes"]`` long)."""
        data = self._read_prefix(name, info["bytes"])
        lines = data.split(b"\n")
        if lines[-1] != b"" or len(lines) - 1 != info["count"]:
            raise self._damaged(f"{name}: {max(len(lines) - 1, 0)} complete records where state.json names "
                                f"{info['count']}")
        if not parse:
            return []
        out = []
        for i, line in enumerate(lines[:-1]):
            try:
                rec = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise self._damaged(f"{name}, record {i + 1}: {exc}") from None
            if not isinstance(rec, dict):
                raise self._damaged(f"{name}, record {i + 1} is not a table")
            out.append(rec)
        return out

    def _rows(self, name: str, info: dict) -> np.ndarray:
        shape = tuple(info.get("row_shape") or ())
        data = self._read_prefix(name, info["bytes"])
        per_row = 8 * int(np.prod(shape, dtype=int))
        if info["count"] and len(data) != info["count"] * per_row:
            raise self._damaged(f"{name}: {len(data)} bytes for {info['count']} rows of shape {shape}")
        return np.frombuffer(data, dtype="<f8").reshape((info["count"], *shape)) if info["count"] else np.zeros((0,))

    def _read_prefix(self, name: str, nbytes: int) -> bytes:
        path = self.dir / name
        try:
            with open(path, "rb") as fh:
                data = fh.read(nbytes)
        except OSError as exc:
            raise self._damaged(f"{name}: {exc.strerror or exc}") from None
        if len(data) < nbytes:
            raise self._damaged(f"{name} is truncated: {len(data)} of the {nbytes} bytes state.json names")
        return data

    def _open_npz(self, name: str, load: bool = True) -> dict:
        path = self.dir / name
        if not path.is_file():
            raise self._damaged(f"{name} is missing")
        try:
            with np.load(path, allow_pickle=False) as data:
                return {key: data[key] for key in data.files} if load else {key: None for key in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
            raise self._damaged(f"{name} is not a readable array file: {type(exc).__name__}: {exc}") from None

    def _observers(self, state: dict) -> list[dict]:
        observers = [{} for _ in range(state["observers"])]
        for key, val in self._open_npz(f"observers.{state['slot']}.npz").items():
            i, _, name = key.partition(":")
            if not i.isdigit() or int(i) >= len(observers):
                raise self._damaged(f"observers.{state['slot']}.npz: unexpected entry {key!r}")
            observers[int(i)][name] = val
        for key, info in state["series"].items():
            i, name = _SERIES_KEY.match(key).groups()
            if int(i) >= len(observers):
                raise self._damaged(f"state.json: series {key!r} of observer {i} of {len(observers)}")
            observers[int(i)][name] = self._rows(series_file(int(i), name), info)
        return observers

    def _rank_arrays(self, name: str, expected: dict, layout: dict) -> dict:
        """This rank's field arrays, checked against the model (any rank; inside collective_errors)."""
        data = self._open_npz(name)
        missing = sorted(set(expected) - set(data))
        if missing:
            raise self._damaged(f"{name} lacks {missing}")
        for key, shape in expected.items():
            if data[key].shape != shape:
                raise InputError(FIELD, f"the checkpoint in {self.dir} is for another mesh ({name}: {key} has "
                                        f"{data[key].size} values on this rank, the model {int(np.prod(shape))}){HINT}")
        for key, value in layout.items():
            saved = data.get(key)
            if saved is None or saved.shape != value.shape or not np.allclose(saved, value, rtol=1e-9, atol=1e-12):
                raise InputError(FIELD, f"the checkpoint in {self.dir} is for another mesh: the DOF layout of "
                                        f"{key.split(':', 1)[1]} differs (another gmsh version?){HINT}")
        return {key: data[key] for key in expected}


# ---------------------------------------------------------------------- helpers
def rank_file(rank: int, slot: int) -> str:
    return f"rank{rank}.{slot}.npz"


def series_file(observer: int, name: str) -> str:
    return f"series.{observer}.{name}.f64"


def layout_fingerprint(problem) -> dict:
    """Per field on this rank: (owned DOFs, Σ (i+1)·(x + 2y + 3z) over its owned DOF
    coordinates) — another mesh, or the same one numbered differently, changes it."""
    out = {}
    for f in problem.fields:
        if f.is_real:
            continue
        n = f.V.dofmap.index_map.size_local
        x = f.V.tabulate_dof_coordinates()[:n]
        weights = np.arange(1, n + 1, dtype=float)
        out[f"layout:{f.name}"] = np.array([float(n), float(weights @ (x @ np.array([1.0, 2.0, 3.0])))])
    return out


def _state_problem(state: dict) -> str | None:
    """What is wrong with a parsed ``state.json`` (None if nothing)."""
    missing = [k for k in (*_FINITE, *_COUNTS, "config_hash", "dt_prev", "have_prev", "skip_group", "obs", "snaps",
                           "counters", "slot", "history", "steps", "series") if k not in state]
    if missing:
        return f"lacks {missing}"

    def finite(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    def count(v):
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    for key in _FINITE:
        if not finite(state[key]):
            return f"{key} = {state[key]!r}"
    for key in _COUNTS:
        if not count(state[key]):
            return f"{key} = {state[key]!r}"
    t = state["t"]
    checks = [
        ("t", t >= 0), ("dt", state["dt"] > 0), ("I0", state["I0"] > 0),
        ("t_step_start", 0 <= state["t_step_start"] <= t),
        ("dt_prev", state["dt_prev"] is None or (finite(state["dt_prev"]) and state["dt_prev"] > 0)),
        ("have_prev", isinstance(state["have_prev"], bool)),
        ("slot", state["slot"] in (0, 1) and not isinstance(state["slot"], bool)),
        ("skip_group", state["skip_group"] is None or count(state["skip_group"])),
        ("obs", isinstance(state["obs"], dict) and all(isinstance(v, (int, float)) for v in state["obs"].values())),
        ("snaps", isinstance(state["snaps"], list) and all(finite(v) for v in state["snaps"])),
        ("counters", isinstance(state["counters"], dict) and all(count(state["counters"].get(k)) for k in _COUNTERS)),
        ("config_hash", isinstance(state["config_hash"], str)),
    ]
    for key in ("history", "steps"):
        info = state[key]
        checks.append((key, isinstance(info, dict) and count(info.get("count")) and count(info.get("bytes"))))
    series = state["series"]
    ok = isinstance(series, dict)
    for key, info in (series.items() if ok else ()):
        ok = ok and bool(_SERIES_KEY.match(str(key))) and isinstance(info, dict) and count(info.get("count")) \
            and count(info.get("bytes")) and (info.get("row_shape") is None or (
                isinstance(info["row_shape"], list) and all(count(n) for n in info["row_shape"])))
    checks.append(("series", ok))
    for key, good in checks:
        if not good:
            return f"{key} = {state[key]!r}"
    if state["history"]["count"] < 1:
        return "history holds no record"
    return None


def _encode_lines(items) -> tuple[bytes, None]:
    text = "".join(json.dumps(_record_dict(r), default=_jsonable) + "\n" for r in items)
    return text.encode("utf-8"), None


def _encode_rows(rows) -> tuple[bytes, list]:
    arr = np.asarray(rows, dtype="<f8")
    return arr.tobytes(), list(arr.shape[1:])


def _sync(fh, durable: bool):
    fh.flush()
    if durable:
        os.fsync(fh.fileno())


def _write_npz(path: Path, arrays: dict, durable: bool = True):
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
        _sync(fh, durable)


def _write_atomic(path: Path, text: str, durable: bool = True):
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        _sync(fh, durable)
    os.replace(tmp, path)
    if durable:  # the rename itself
        try:
            fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            pass


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
