"""An interrupted run resumes from its checkpoint and ends exactly as an uninterrupted one."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from mpi4py import MPI

from nmcfx.errors import InputError
from nmcfx.solver import outputs
from nmcfx.solver.run import execute, prepare

CFG = {
    "geometry": {"shape": "disk", "diameter_um": 2.4, "mesh_size_um": 0.2, "surface_mesh_size_um": 0.07},
    "protocol": {"steps": [{"type": "charge", "current_mA_g": 100, "duration_min": 20},
                           {"type": "rest", "duration_min": 10}]},
    "solver": {"checkpoint_wall_s": 1e-9},  # checkpoint after every step
    "output": {"snapshot_times_min": [10, 25], "fields": "vtx", "figures": True, "progress": False},
}


def _rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


class Crash(Exception):
    pass


@pytest.mark.mpi
def test_resume_reproduces_uninterrupted_run(tmp_path, monkeypatch):
    comm = MPI.COMM_WORLD
    base = comm.bcast(str(tmp_path), root=0)
    full = execute(prepare(CFG, comm=comm), f"{base}/full", comm=comm)

    original = outputs.RunOutputs.record

    def crashing(self, sim, rec):
        original(self, sim, rec)
        if rec.time_s > 1500.0:  # in the rest step, after the first snapshot
            raise Crash()

    monkeypatch.setattr(outputs.RunOutputs, "record", crashing)
    with pytest.raises(Crash):
        execute(prepare(CFG, comm=comm), f"{base}/cut", comm=comm)
    monkeypatch.setattr(outputs.RunOutputs, "record", original)
    resumed = execute(prepare(CFG, comm=comm), f"{base}/cut", comm=comm, resume=True)

    assert resumed["steps"] == full["steps"]
    assert resumed["theta_center_final"] == pytest.approx(full["theta_center_final"], abs=1e-12)
    assert resumed["max_abs_mass_balance_error"] <= 1e-10
    if comm.rank == 0:
        a, b = _rows(f"{base}/full/timeseries.csv"), _rows(f"{base}/cut/timeseries.csv")
        assert len(a) == len(b)
        for ra, rb in zip(a, b):
            assert float(ra["time_s"]) == pytest.approx(float(rb["time_s"]), abs=1e-9)
            assert float(ra["theta_mean"]) == pytest.approx(float(rb["theta_mean"]), abs=1e-12)
        assert len(_rows(f"{base}/cut/steps.csv")) == 2
        assert (tmp_path / "cut" / "theta_maps.png").is_file()
        lp_a = np.loadtxt(f"{base}/full/line_profiles.csv", delimiter=",", skiprows=1)
        lp_b = np.loadtxt(f"{base}/cut/line_profiles.csv", delimiter=",", skiprows=1)
        assert lp_a.shape == lp_b.shape and np.allclose(lp_a, lp_b, atol=1e-12)


@pytest.mark.mpi
def test_resume_refuses_a_different_config(tmp_path):
    comm = MPI.COMM_WORLD
    base = comm.bcast(str(tmp_path), root=0)
    execute(prepare(CFG, comm=comm), base, comm=comm)
    other = dict(CFG, protocol={"steps": [{"type": "rest", "duration_min": 30}]})  # (snapshots at 10, 25 min)
    with pytest.raises(InputError, match="config differs"):
        execute(prepare(other, comm=comm), base, comm=comm, resume=True)
    with pytest.raises(InputError, match="no checkpoint"):
        execute(prepare(CFG, comm=comm), f"{base}/nothing-here", comm=comm, resume=True)
