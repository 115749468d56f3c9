"""The stress studies in --quick mode: outputs exist, and the findings the model reproduces hold."""

from __future__ import annotations

import gc

import csv
import json
import os
from pathlib import Path

from mpi4py import MPI

import pytest

COMM = MPI.COMM_WORLD


@pytest.fixture(autouse=True)
def _free_mpi_objects():
    """Collect reference cycles after each test: meshes, vectors and solvers hold MPI communicators,
    of which a process has a limited number (context IDs)."""
    yield
    gc.collect()


def _outdir(tmp_path, name) -> str:
    return COMM.bcast(str(tmp_path / name), root=0)


@pytest.mark.mpi
def test_xu2022_stress_size_quick_and_resume(tmp_path, capsys):
    from nmcfx.studies import xu2022_stress_size as study

    out = _outdir(tmp_path, "size")
    r = study.main(["--quick", "-o", out])
    big, small = r["d2.5um_2C"], r["d0.6um_2C"]
    # 002: stress (and heterogeneity) fall with particle size
    assert big["sigma1_peak_early_MPa"] > 3 * small["sigma1_peak_early_MPa"] > 0
    assert big["hoop_peak_MPa"] > 3 * small["hoop_peak_MPa"] > 0
    assert big["max_center_minus_surface_theta"] > 2 * small["max_center_minus_surface_theta"]
    if COMM.rank == 0:
        o = Path(out)
        for f in ("stress_size.png", "stress_size.csv", "stress_size_traces.csv", "study.json"):
            assert (o / f).is_file() and (o / f).stat().st_size > 0
        rows = list(csv.DictReader(open(o / "stress_size.csv")))
        assert len(rows) == 2 and float(rows[0]["sigma1_peak_MPa"]) >= float(rows[0]["sigma1_peak_early_MPa"])
        assert json.loads((o / "study.json").read_text())["quick"] is True
        os.remove(o / "cases" / "d0.6um_2C" / "case.json")
    capsys.readouterr()
    COMM.Barrier()
    again = study.main(["--quick", "-o", out])
    assert again["d0.6um_2C"]["sigma1_peak_MPa"] == pytest.approx(small["sigma1_peak_MPa"], rel=1e-9)
    if COMM.rank == 0:
        assert capsys.readouterr().out.count("already done, skipped") == 1


@pytest.mark.mpi
def test_lun2025_stress_blocked_quick(tmp_path):
    from nmcfx.studies import lun2025_stress_blocked as study

    out = _outdir(tmp_path, "lun")  # collective: outside any rank-0 block
    k = study.main(["--quick", "-o", out])
    for t in (5, 10, 15, 20):
        sym = k[f"none@{t}min"]
        assert abs(sym["hoop_opposite_minus_blocked_MPa"]) < 0.05 * abs(sym["hoop_max_MPa"])  # symmetric disk
        assert sym["hoop_max_MPa"] - sym["hoop_min_MPa"] < 0.1 * sym["hoop_max_MPa"]
    late = k["quarter_eta0.3@20min"]
    # blocking makes the hoop stress asymmetric: by 20 min the blocked arc carries the larger tension
    assert late["hoop_mean_blocked_arc_MPa"] - late["hoop_mean_opposite_arc_MPa"] > 0.3 * late["hoop_max_MPa"]
    assert late["hoop_max_on_blocked_arc"]
    if COMM.rank == 0:
        o = Path(out)
        for f in ("stress_blocked.png", "stress_blocked.csv", "stress_blocked_hoop.csv", "study.json"):
            assert (o / f).is_file() and (o / f).stat().st_size > 0


@pytest.mark.mpi
def test_xu2022_stress_rim_quick(tmp_path):
    from nmcfx.studies import xu2022_stress_rim as study

    k = study.main(["--quick", "-o", _outdir(tmp_path, "rim")])
    assert k["error"] is None
    assert k["theta_surface_max"] - k["theta_center"] > 0.05  # the Li-rich rim around a Li-poor core
    assert k["sigma1_center_MPa"] > 50  # the centre in tension
    assert k["hoop_surface_min_MPa"] < -50  # the rim in compression
    assert 0 < k["hold_center_tension_below_10pct_min"] < 30  # relaxes in the hold
    assert abs(k["end_of_hold_sigma1_center_MPa"]) < 0.02 * k["sigma1_center_MPa"]
