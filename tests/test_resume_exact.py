"""Interrupted runs resume bit for bit (issue 7): an electrode run, a Butler–Volmer particle killed
inside a CC step, inside a GITT sequence that its stop condition ends and inside a CV hold, and a
real Ctrl-C (SIGINT) sent to ``nmcfx run``."""

from __future__ import annotations

import copy
import csv
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI

from conftest import nmcfx_cmd
from nmcfx.solver import electrode_outputs, outputs
from nmcfx.solver.run import execute, prepare


class Crash(Exception):
    pass


def _text(path) -> str:
    return Path(path).read_text()


def _crash_after(monkeypatch, cls, t_kill: float):
    """Make ``cls.record`` (an outputs observer) raise once the run has passed ``t_kill`` seconds: the
    process dies after an accepted step, with the checkpoint of the step before on disk."""
    original = cls.record

    def crashing(self, sim, rec):
        original(self, sim, rec)
        t = rec["time_s"] if isinstance(rec, dict) else rec.time_s
        if t > t_kill:
            raise Crash()

    monkeypatch.setattr(cls, "record", crashing)
    return original


def _resume_matches(monkeypatch, cfg, cls, t_kill, base, full_dir, files=("timeseries.csv", "steps.csv")):
    comm = MPI.COMM_WORLD
    cut = f"{base}/cut-{t_kill:g}"
    original = _crash_after(monkeypatch, cls, t_kill)
    with pytest.raises(Crash):
        execute(prepare(cfg, comm=comm), cut, comm=comm)
    monkeypatch.setattr(cls, "record", original)
    resumed = execute(prepare(cfg, comm=comm), cut, comm=comm, resume=True)
    if comm.rank == 0:
        for name in files:
            _same(f"{cut}/{name}", f"{full_dir}/{name}", exact=comm.size == 1)
    return resumed


def _same(a, b, exact: bool):
    """Identical files (serial), or — on several ranks, where MUMPS's dynamic scheduling makes even
    two uninterrupted runs differ in the last bits — the same rows and numbers to 1e-10 relative."""
    ta, tb = _text(a), _text(b)
    if exact:
        assert ta == tb, a
        return
    ra, rb = list(csv.reader(ta.splitlines())), list(csv.reader(tb.splitlines()))
    assert len(ra) == len(rb) and ra[0] == rb[0], a
    for j, col in enumerate(ra[0]):
        if col.endswith(("_total", "balance_error", "iterations")):
            continue  # iteration counts and round-off measures
        u, v = [r[j] for r in ra[1:]], [r[j] for r in rb[1:]]
        try:
            fu, fv = np.array(u, dtype=float), np.array(v, dtype=float)
        except ValueError:
            assert u == v, (a, col)
            continue
        scale = max(1.0, float(np.nanmax(np.abs(fu))) if np.isfinite(fu).any() else 1.0)  # (all-NaN columns)
        assert np.array_equal(np.isnan(fu), np.isnan(fv)), (a, col)
        assert np.nanmax(np.abs(fu - fv), initial=0.0) <= 1e-10 * scale, (a, col)


# ============================================================================ Butler–Volmer particle
BV = {
    "title": "Butler-Volmer: CC, GITT ended by its condition, CV hold, rest",
    "geometry": {"shape": "disk", "diameter_um": 2.4, "mesh_size_um": 0.3, "surface_mesh_size_um": 0.12},
    "surface": {"model": "butler_volmer"},
    "protocol": {"initial_theta": 0.95, "steps": [
        {"type": "charge", "current_mA_g": 200, "duration_min": 5},
        {"type": "gitt", "direction": "charge", "current_mA_g": 400, "pulse_min": 2, "rest_min": 2, "pulses": 6,
         "until": ["voltage_V >= 3.75"]},  # met in pulse 4 of 6
        {"type": "hold", "voltage_V": 3.7, "duration_min": 4},
        {"type": "rest", "duration_min": 2}]},
    "solver": {"checkpoint_wall_s": 1e-9},  # a checkpoint after every step
    "output": {"fields": "none", "figures": False, "progress": False},
}


@pytest.fixture(scope="module")
def bv_full(tmp_path_factory):
    comm = MPI.COMM_WORLD
    base = comm.bcast(str(tmp_path_factory.mktemp("bv")), root=0)
    summary = execute(prepare(BV, comm=comm), f"{base}/full", comm=comm)
    return base, summary


# serial only: checkpoints every step make the 2-rank Butler–Volmer particle ~20× slower (the parallel
# checkpoint path is covered by the electrode below and by test_checkpoint.py)
@pytest.mark.parametrize("t_kill, where", [(150.0, "charge at 200 mA/g"), (1000.0, "gitt rest 3"),
                                           (1250.0, "hold at 3.7 V")])
def test_butler_volmer_resume_is_bit_identical(bv_full, monkeypatch, t_kill, where):
    base, full = bv_full
    log = full["protocol_steps"]
    # the GITT sequence really was cut short by its condition (pulse 4 of 6), then the hold ran
    assert [s["index"] for s in log] == [0, 1, 2, 3, 4, 5, 6, 7, 13, 14]
    assert log[7]["reason"].startswith("reached voltage_V >= 3.75")
    killed_in = next(s for s in log if s["start_time_s"] <= t_kill < s["end_time_s"])
    assert where in f"{killed_in['label']} {killed_in['description']}", killed_in
    resumed = _resume_matches(monkeypatch, BV, outputs.RunOutputs, t_kill, base, f"{base}/full")
    assert resumed["steps"] == full["steps"] and resumed["newton_iterations"] == full["newton_iterations"]


# ============================================================================ electrode
ELECTRODE = {
    "title": "two particles: charge, rest, hold",
    "geometry": {"shape": "electrode", "width_um": 16.0, "height_um": 11.0,
                 "particles": [{"shape": "disk", "center_um": [5.0, 6.0], "diameter_um": 6.0, "name": "A"},
                               {"shape": "disk", "center_um": [10.9, 6.0], "diameter_um": 6.0, "name": "B"}],
                 "strands": [{"points_um": [[5.0, 0.0], [5.0, 3.2]], "width_um": 1.2}],
                 "mesh_size_um": 1.2, "surface_mesh_size_um": 0.6},
    "protocol": {"initial_theta": 0.9, "steps": [
        {"type": "charge", "c_rate": 1.0, "duration_min": 3},
        {"type": "rest", "duration_min": 2},
        {"type": "hold", "voltage_V": 3.62, "duration_min": 2}]},
    "solver": {"checkpoint_wall_s": 1e-9, "dt_max_s": 30.0},
    "output": {"fields": "none", "figures": False, "progress": False},
}


@pytest.mark.mpi
def test_electrode_resume_is_bit_identical(tmp_path, monkeypatch):
    comm = MPI.COMM_WORLD
    base = comm.bcast(str(tmp_path), root=0)
    full = execute(prepare(ELECTRODE, comm=comm), f"{base}/full", comm=comm)
    resumed = _resume_matches(monkeypatch, ELECTRODE, electrode_outputs.ElectrodeOutputs, 200.0, base,
                              f"{base}/full", files=("timeseries.csv", "steps.csv", "particles.csv"))
    assert resumed["steps"] == full["steps"]
    assert resumed["max_abs_charge_balance_error"] <= 1e-10
    if comm.size == 1:
        assert resumed["max_abs_charge_balance_error"] == full["max_abs_charge_balance_error"]


# ============================================================================ Ctrl-C
def test_sigint_stops_with_a_checkpoint_and_resume_completes(tmp_path):
    cfg = copy.deepcopy(ELECTRODE)
    cfg["solver"]["checkpoint_wall_s"] = 3600.0  # only the Ctrl-C and the step ends checkpoint
    toml = _to_toml(cfg)
    (tmp_path / "e.toml").write_text(toml)
    full = execute(prepare(cfg, comm=MPI.COMM_SELF), tmp_path / "full", comm=MPI.COMM_SELF)
    out = tmp_path / "cut"
    proc = subprocess.Popen(nmcfx_cmd() + ["run", str(tmp_path / "e.toml"), "-o", str(out), "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    series = out / "timeseries.csv"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if series.is_file() and series.read_text().count("\n") >= 6:  # header + initial state + 4 steps
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    rows_at_signal = series.read_text().count("\n") - 1
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    waited = time.monotonic() - t0
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err and "Traceback" not in err
    assert waited < 15.0, waited  # it stops at the end of the current time step
    assert (out / "checkpoint" / "state.json").is_file()
    assert not (out / "summary.json").exists()
    rows_at_stop = series.read_text().count("\n") - 1
    assert rows_at_signal <= rows_at_stop < full["steps"] + 1  # it stopped early
    res = subprocess.run(nmcfx_cmd() + ["run", str(tmp_path / "e.toml"), "-o", str(out), "-q", "--resume"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    for name in ("timeseries.csv", "steps.csv", "particles.csv"):
        assert _text(out / name) == _text(tmp_path / "full" / name), name


def _to_toml(d: dict, prefix: str = "") -> str:
    """The small subset of TOML these configs need (tables, arrays of tables, numbers, strings, lists)."""
    import json

    scalars, tables, arrays = [], [], []
    for k, v in d.items():
        if isinstance(v, dict):
            tables.append((k, v))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            arrays.append((k, v))
        else:
            scalars.append(f"{k} = {json.dumps(v)}")
    out = "\n".join(scalars) + "\n"
    for k, v in tables:
        name = f"{prefix}{k}"
        out += f"\n[{name}]\n" + _to_toml(v, f"{name}.")
    for k, items in arrays:
        name = f"{prefix}{k}"
        for item in items:
            out += f"\n[[{name}]]\n" + _to_toml(item, f"{name}.")
    return out
