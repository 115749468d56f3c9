"""A rocksalt film as a series resistance in the Butler–Volmer kinetics (issue 11 item 2, Lun 2025)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from mpi4py import MPI

from nmcfx.solver.run import execute, prepare


def _cfg(rate_mA_g: float, delta_nm: float | None, minutes: float | None = None) -> dict:
    surface = {"model": "butler_volmer"}
    if delta_nm is not None:
        surface["rocksalt_thickness_nm"] = {"blocked": delta_nm}
    return {
        "geometry": {"shape": "disk", "diameter_um": 2.4, "mesh_size_um": 0.25, "surface_mesh_size_um": 0.08,
                     "sectors": [{"name": "blocked", "start_deg": -45, "end_deg": 45}]},
        "surface": surface,
        "protocol": {"steps": [{"type": "charge", "current_mA_g": rate_mA_g,
                                "duration_min": minutes if minutes is not None else 60.0 * 275 / rate_mA_g,
                                "until": ["theta_surface_min <= 0.2"]}]},
        "output": {"fields": "none", "figures": False, "progress": False, "snapshot_times_min": []},
    }


def _run(tmp, name, cfg):
    comm = MPI.COMM_WORLD
    out = comm.bcast(str(tmp / name), root=0)
    summary = execute(prepare(cfg, comm=comm), out, comm=comm)
    rows = None
    if comm.rank == 0:
        with open(f"{out}/timeseries.csv") as fh:
            rows = list(csv.DictReader(fh))
    return summary, comm.bcast(rows, root=0)


@pytest.mark.mpi
def test_thin_film_is_plain_butler_volmer_and_conserves_li(tmp_path):
    plain, a = _run(tmp_path, "plain", _cfg(100, None, minutes=10))
    thin, b = _run(tmp_path, "thin", _cfg(100, 1e-9, minutes=10))  # R ≈ 4e-9 Ω m²: i R ≪ RT/F
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        assert float(rb["theta_center"]) == pytest.approx(float(ra["theta_center"]), abs=1e-8)
        assert float(rb["voltage_V"]) == pytest.approx(float(ra["voltage_V"]), abs=1e-7)
    assert thin["max_abs_mass_balance_error"] <= 1e-10
    # the nodal implicit current has its exact Jacobian: Newton stays quadratic
    assert thin["newton_iterations"] <= 6 * thin["steps"]


@pytest.mark.slow
def test_film_offset_grows_with_rate(tmp_path):
    """Lun 2025 Fig. 5d: with the film as a resistance the blocked sector's share of the current
    falls as the current grows, so the Li-rich core moves further off-centre at higher rate."""
    d = {}
    for rate in (50, 400):
        s, rows = _run(tmp_path, f"r{rate}", _cfg(rate, 1.0))
        assert s["max_abs_mass_balance_error"] <= 1e-10
        d[rate] = np.nanmax([float(r["d_um"]) for r in rows])
    assert d[400] > 1.1 * d[50] > 0.2
