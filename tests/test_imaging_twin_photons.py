"""Blind twin at a realistic photon count (issue 12), the quick version of
``studies/twin_calibration.py``: a particle shape and an S the other tests do not use, stacks
rendered by the study's own renderer (P1 interpolation of the mesh field, 265 nm PSF with pixel
integration, random-walk drift, marker, Poisson + read noise, integer counts — not
``imaging/forward.py``) at 2000 photons per pixel, analysed and calibrated with the package
defaults as the README says, over four noise seeds. Each S must be within 5 % of the truth and
the reported 95 % interval must contain it (allowing one miss in four), with z-scores that show
the reported error is not too small.
"""

from __future__ import annotations

import json
import math
import textwrap

import numpy as np
import pytest
from conftest import ROOT  # noqa: F401  (mpi4py before dolfinx)
from mpi4py import MPI

from nmcfx.cli import main
from nmcfx.studies import twin_calibration as tc

SEEDS = (0, 1, 2, 3)
STEP_MIN = 2.0
N_PRE = 5


def frame_times_since_current() -> np.ndarray:
    return np.arange(-(N_PRE - 1), int(tc.CHARGE_MIN / STEP_MIN) + 1) * STEP_MIN * 60.0


@pytest.fixture(scope="module")
def truth(tmp_path_factory):
    d = tmp_path_factory.mktemp("twin_photons")
    cfg = tc.truth_config(quick=True)
    cfg["output"]["snapshot_times_min"] = [float(t) / 60 for t in frame_times_since_current() if t >= 0]
    return {"dir": d, "maps": tc.truth_maps(cfg, d / "truth", MPI.COMM_SELF)}


CAL = """
[geometry]
shape = "contour"
contour_csv = "ana/outline.csv"
mesh_size_um = 0.2
surface_mesh_size_um = 0.07
[protocol]
initial_theta = 0.95
[[protocol.steps]]
type = "charge"
c_rate = 0.3333333333333333
duration_min = 40
[calibration]
analysis = "ana"
S_range = [1.5, 5.0]
S_grid = 5
cache_dir = "../cache"
"""


def _one_seed(truth, seed, capsys) -> dict:
    d = truth["dir"] / f"seed{seed}"
    d.mkdir()
    t = frame_times_since_current()
    cam = tc.Camera(photons=2000.0, fov=(96, 96), marker_rc=(12.0, 84.0), supersample=3)
    frames, _ = tc.render_twin(truth["maps"], t, cam, seed=100 + seed)
    stack = d / "stack.npz"
    np.savez_compressed(stack, frames=frames, times_s=t - t[0], pixel_size_um=tc.PIXEL_UM)
    t_current = float(-t[0])
    code = main(["analyze", str(stack), "-o", str(d / "ana"), "--reference-time-s", f"{t_current:g}",
                 "--no-figures"])
    assert code == 0, capsys.readouterr()
    (d / "cal.toml").write_text(textwrap.dedent(CAL))
    code = main(["calibrate", str(d / "cal.toml"), "-o", str(d / "cal")])
    text = capsys.readouterr()
    assert code == 0, text
    r = json.loads((d / "cal" / "calibration.json").read_text())
    s = json.loads((d / "ana" / "summary.json").read_text())
    assert s["warnings"] == [] and r["warnings"] == [], (s["warnings"], r["warnings"])
    return r


def test_twin_at_2000_photons_over_seeds(truth, capsys):
    rows = [_one_seed(truth, seed, capsys) for seed in SEEDS]
    z = []
    for seed, r in zip(SEEDS, rows):
        err = r["S"] / tc.S_TRUE - 1.0
        lo, hi = r["S_interval_95"]
        z.append(math.log(r["S"] / tc.S_TRUE) / r["S_sigma_rel"])
        print(f"seed {seed}: S = {r['S']:.4f} ({err * 100:+.1f} %), ± {r['S_sigma_rel'] * 100:.1f} % "
              f"(reference {r['uncertainty']['S_sigma_rel_reference'] * 100:.1f} %, frames "
              f"{r['uncertainty']['S_sigma_rel_frames'] * 100:.1f} %), 95 % [{lo:.3f}, {hi:.3f}], A = {r['A']:.4f}, "
              f"region {r['region']}, fit_offset {r['fit_offset']}")
    errors = np.array([r["S"] / tc.S_TRUE - 1.0 for r in rows])
    assert np.all(np.abs(errors) < 0.05)
    covered = [r["S_interval_95"][0] <= tc.S_TRUE <= r["S_interval_95"][1] for r in rows]
    assert sum(covered) >= len(rows) - 1
    assert math.sqrt(np.mean(np.square(z))) < 2.5  # the reported σ is not much smaller than the real error
    assert all(r["S_sigma_rel"] < 0.05 for r in rows)  # and precise enough to be useful
    assert all(abs(r["A"] - tc.A_TRUE) < 0.05 for r in rows)
