"""nmcfx.imaging on synthetic images (no transport simulation): reading, drift, contrast,
kymographs, asymmetry, outline → mesh, and bad input through `nmcfx analyze`/`calibrate`."""

from __future__ import annotations

import math
import textwrap

import numpy as np
import pytest
from conftest import ROOT  # noqa: F401  (imports mpi4py before dolfinx)
from mpi4py import MPI
from scipy.special import ellipe

from nmcfx.cli import main
from nmcfx.errors import InputError
from nmcfx.imaging import (
    AnalysisOptions,
    AsymmetryRule,
    ImageStack,
    Microscope,
    analyze,
    bin_stack,
    classify,
    com_offset,
    correct_drift,
    fit_gaussian_spot,
    line_kymograph,
    load_stack,
    mask_outline,
    measure_drift,
    outline_mesh,
    particle_mask,
    psf_sigma_um,
    render_stack,
    save_stack,
    total_contrast,
)

PX = 0.0347
SHAPE = (96, 96)


def core_theta(times_s, shape=SHAPE, radius_um=1.2, core_offset_um=(0.0, 0.0), theta0=0.95, front_speed=0.8e-3,
               center_rc=None):
    """θ maps of a disk with a shrinking Li-rich core: θ = θ0 in a core of radius R(1 − v t)
    centred at ``core_offset_um`` (x, y) from the particle centre, θ = θ0 − 0.2 outside it."""
    rows, cols = shape
    rc = ((rows - 1) / 2, (cols - 1) / 2) if center_rc is None else center_rc
    r, c = np.mgrid[:rows, :cols].astype(float)
    x, y = (c - rc[1]) * PX, (r - rc[0]) * PX
    inside = x**2 + y**2 <= radius_um**2
    out = np.full((len(times_s),) + shape, np.nan)
    for k, t in enumerate(times_s):
        rcore = radius_um * max(0.0, 1.0 - front_speed * t)
        core = (x - core_offset_um[0]) ** 2 + (y - core_offset_um[1]) ** 2 <= rcore**2
        th = np.where(core, theta0, theta0 - 0.2 * min(1.0, t / 60.0 + 0.2) if t > 0 else theta0)
        out[k] = np.where(inside, th, np.nan)
    return out, inside


def synthetic_stack(n=8, drift=None, noise=True, marker=True, **kw):
    times = np.arange(n) * 60.0
    theta, inside = core_theta(times, **kw)
    scope = Microscope(marker_rc=(10.0, 10.0) if marker else None, photons_per_unit=1e5 if noise else None,
                       read_noise=0.002 if noise else 0.0, seed=3)
    return render_stack(theta, times, scope, drift_rc=drift, inside=inside), theta, inside


# ----------------------------------------------------------------------------- basics
def test_psf_sigma_from_resolution():
    # 265 nm taken as the FWHM of a Gaussian: σ = 265 / 2.3548 nm = 112.5 nm = 3.24 px
    assert psf_sigma_um(0.265) == pytest.approx(0.265 / (2 * math.sqrt(2 * math.log(2))))
    assert Microscope().psf_sigma_px == pytest.approx(3.243, abs=1e-3)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_tiff_roundtrip_keeps_times_and_pixel_size(tmp_path, dtype):
    st, _, _ = synthetic_stack(n=4, noise=False)
    st.times_s = np.array([0.0, 2.0, 5.0, 9.0])
    st.pixel_size_um = 0.05
    path = save_stack(tmp_path / "s.tif", st, dtype=dtype)
    back = load_stack(path)
    assert back.frames.shape == st.frames.shape
    np.testing.assert_allclose(back.times_s, st.times_s)
    assert back.pixel_size_um == pytest.approx(0.05)
    assert back.info["times_from"] == "metadata" and back.info["pixel_size_from"] == "metadata"
    scale = back.frames.max() / st.frames.max()
    tol = {"uint8": 3e-2, "uint16": 1e-4, "float32": 1e-6}[dtype]
    np.testing.assert_allclose(back.frames / scale, st.frames, atol=tol * st.frames.max())
    # an explicit frame rate wins over the metadata
    assert load_stack(path, frame_rate_hz=2.0).times_s[-1] == pytest.approx(1.5)


def test_numpy_inputs_defaults_and_binning(tmp_path):
    frames = np.random.default_rng(0).random((10, 20, 24))
    np.save(tmp_path / "a.npy", frames)
    st = load_stack(tmp_path / "a.npy")
    assert st.pixel_size_um == pytest.approx(0.0347) and st.times_s[1] == pytest.approx(0.1)  # 10 Hz camera
    b = load_stack(tmp_path / "a.npy", bin_frames=3)
    assert b.n_frames == 3 and b.info["dropped_frames"] == 1
    np.testing.assert_allclose(b.frames[1], frames[3:6].mean(axis=0))
    np.testing.assert_allclose(b.times_s, [0.1, 0.4, 0.7])
    np.testing.assert_allclose(bin_stack(st, 5).frames[1], frames[5:].mean(axis=0))
    # binning while reading a TIFF page by page gives the same frames
    save_stack(tmp_path / "a.tif", ImageStack(frames, np.arange(10) * 0.5), dtype="float32")
    bt = load_stack(tmp_path / "a.tif", bin_frames=3)
    np.testing.assert_allclose(bt.frames, b.frames, rtol=1e-6)
    np.testing.assert_allclose(bt.times_s, [0.5, 2.0, 3.5])
    np.savez(tmp_path / "b.npz", frames=frames, times_s=np.arange(10) * 3.0, pixel_size_um=0.1)
    z = load_stack(tmp_path / "b.npz")
    assert z.times_s[-1] == 27.0 and z.pixel_size_um == 0.1


# ----------------------------------------------------------------------------- drift
def test_gaussian_spot_fit_is_subpixel():
    r, c = np.mgrid[:31, :31]
    rng = np.random.default_rng(1)
    for r0, c0 in [(15.3, 14.8), (14.61, 16.27)]:
        img = 0.3 + np.exp(-((r - r0) ** 2 + (c - c0) ** 2) / (2 * 3.24**2)) + rng.normal(0, 0.005, r.shape)
        f = fit_gaussian_spot(img, (15, 15), 7)
        assert abs(f.row - r0) < 0.02 and abs(f.col - c0) < 0.02
        assert f.sigma_px == pytest.approx(3.24, rel=0.03)


@pytest.mark.parametrize("method", ["gaussian", "phase"])
def test_drift_recovered_and_corrected(method):
    rng = np.random.default_rng(4)
    drift = np.cumsum(rng.normal(0, 0.6, (8, 2)), axis=0)
    drift -= drift[0]
    st, _, _ = synthetic_stack(n=8, drift=drift)
    keep_off = particle_mask(st.frames[0])[0]
    tr = measure_drift(st.frames, st.times_s, 0, method=method, exclude=keep_off)
    assert np.abs(tr.drift_rc - drift).max() < 0.1
    if method == "gaussian":
        assert tr.spot_rc == pytest.approx((10.0, 10.0), abs=0.05)  # found automatically
    still, _, _ = synthetic_stack(n=8, noise=False)
    moved, _, _ = synthetic_stack(n=8, drift=drift, noise=False)
    fixed = correct_drift(moved.frames, measure_drift(moved.frames, moved.times_s, 0, spot_rc=(10, 10)))
    inner = (slice(12, -12), slice(12, -12))
    assert np.abs(fixed[:, inner[0], inner[1]] - still.frames[:, inner[0], inner[1]]).max() < 0.01


# ----------------------------------------------------------------------------- contrast, kymograph, asymmetry
def test_contrast_mask_and_kymograph_follow_the_model():
    st, theta, inside = synthetic_stack(n=6, noise=False, front_speed=2e-3)
    mask, thr = particle_mask(st.frames[0])
    assert abs(mask.sum() - inside.sum()) < 0.02 * inside.sum()
    c = total_contrast(st.frames, 0, mask)
    A, th0 = Microscope().contrast_A, Microscope().theta0
    # deep inside the particle and far from the front the contrast is A (θ0 − θ)
    rim = (48, 48 + 24)
    assert c[5][rim] == pytest.approx(A * (th0 - theta[5][rim]), abs=2e-3)
    assert abs(c[5][48, 48]) < 2e-3  # core: still Li-rich
    k = line_kymograph(c, st.times_s, mask, (48, 5), (48, 90), pixel_size_um=PX)
    assert k.values.shape == (6, k.positions_um.size)
    assert k.positions_um[-1] == pytest.approx(85 * PX)
    assert k.inside.sum() == pytest.approx(2 * 1.2 / PX, abs=3)


def test_asymmetry_of_an_off_centre_core_and_classification():
    off = (0.35, -0.2)
    st, theta, inside = synthetic_stack(n=8, noise=True, core_offset_um=off, front_speed=1.2e-3)
    mask, _ = particle_mask(st.frames[0])
    c = total_contrast(st.frames, 0, mask)
    tr = com_offset(c, mask, st.times_s, pixel_size_um=PX)
    # the core is a disk of radius R(1 − v t) at `off`: its centre of mass is `off` until it
    # reaches the particle edge (R(1 − v t) + |off| ≤ R)
    for k in range(1, 6):
        rcore = 1.2 * (1 - 1.2e-3 * st.times_s[k])
        if rcore + math.hypot(*off) <= 1.15 and rcore > 0.3:
            assert tr.offset_xy_um[k] == pytest.approx(off, abs=0.03)
    assert classify(tr)["label"] == "asymmetric"
    st2, _, _ = synthetic_stack(n=8, noise=True, front_speed=1.2e-3)
    mask2, _ = particle_mask(st2.frames[0])
    tr2 = com_offset(total_contrast(st2.frames, 0, mask2), mask2, st2.times_s, pixel_size_um=PX)
    assert np.nanmax(tr2.d_um[1:6]) < 0.03
    assert classify(tr2)["label"] == "symmetric"
    assert classify(tr2, AsymmetryRule(min_core_frames=50))["label"] == "undetermined"


# ----------------------------------------------------------------------------- outline → geometry
def _render_shape(inside, blur_px=3.24):
    from scipy import ndimage

    img = np.where(inside, 1.0, 0.3)
    return ndimage.gaussian_filter(img, blur_px)


@pytest.mark.parametrize("shape", ["ellipse", "superellipse"])
def test_outline_mesh_matches_area_and_perimeter(tmp_path, shape):
    rows, cols = 120, 130
    r, c = np.mgrid[:rows, :cols].astype(float)
    x, y = (c - 64.3) * PX, (r - 59.6) * PX
    ang = math.radians(25)
    u, v = x * math.cos(ang) + y * math.sin(ang), -x * math.sin(ang) + y * math.cos(ang)
    a, b = 1.5, 1.0
    if shape == "ellipse":
        inside = (u / a) ** 2 + (v / b) ** 2 <= 1
        area, perim = math.pi * a * b, 4 * a * ellipe(1 - (b / a) ** 2)
    else:  # |u/a|^4 + |v/b|^4 <= 1, measured on a dense polygon
        inside = (u / a) ** 4 + (v / b) ** 4 <= 1
        t = np.linspace(0, 2 * math.pi, 20001)[:-1]
        pu = a * np.sign(np.cos(t)) * np.abs(np.cos(t)) ** 0.5
        pv = b * np.sign(np.sin(t)) * np.abs(np.sin(t)) ** 0.5
        area = 0.5 * abs(np.sum(pu * np.roll(pv, -1) - np.roll(pu, -1) * pv))
        perim = np.hypot(np.diff(np.r_[pu, pu[:1]]), np.diff(np.r_[pv, pv[:1]])).sum()
    img = _render_shape(inside)
    mask, thr = particle_mask(img)
    o = mask_outline(img, mask, pixel_size_um=PX)
    assert o.area_um2 == pytest.approx(area, rel=0.02)
    assert o.perimeter_um == pytest.approx(perim, rel=0.02)
    p = outline_mesh(o, mesh_size_um=0.15, comm=MPI.COMM_SELF)
    assert p.measure == pytest.approx(area, rel=0.02)
    assert p.boundary_measure == pytest.approx(perim, rel=0.02)
    # the CSV is a valid geometry.contour_csv
    from nmcfx.geometries import geometry_from_config

    o.write_csv(tmp_path / "outline.csv")
    q = geometry_from_config({"shape": "contour", "contour_csv": "outline.csv", "mesh_size_um": 0.2},
                             comm=MPI.COMM_SELF, base_dir=tmp_path)
    assert q.measure == pytest.approx(p.measure, rel=1e-3)


# ----------------------------------------------------------------------------- the analysis directory
def test_analyze_cli_writes_everything(tmp_path, capsys):
    drift = np.cumsum(np.random.default_rng(5).normal(0, 0.5, (8, 2)), axis=0)
    st, _, _ = synthetic_stack(n=8, drift=drift - drift[0], core_offset_um=(0.3, 0.0), front_speed=1.2e-3)
    path = save_stack(tmp_path / "p.tif", st)
    out = tmp_path / "ana"
    code = main(["analyze", str(path), "-o", str(out), "--c-rate", "0.5", "--map-frames", "4", "--mesh",
                 "--mesh-size-um", "0.2"])
    text = capsys.readouterr().out
    assert code == 0, text
    for name in ("metadata.json", "summary.json", "drift.csv", "drift.png", "intensity.csv", "intensity.png",
                 "kymograph.csv", "kymograph.png", "asymmetry.png", "contrast_maps.png", "reference.png",
                 "outline.csv", "contrast.npz"):
        assert (out / name).is_file(), name
    assert not list(out.glob(".*tmp*"))
    import json

    s = json.loads((out / "summary.json").read_text())
    assert s["asymmetry"]["label"] == "asymmetric"
    assert s["particle_area_um2"] == pytest.approx(math.pi * 1.2**2, rel=0.02)
    assert s["mesh"]["area_um2"] == pytest.approx(math.pi * 1.2**2, rel=0.02)
    assert s["mesh"]["perimeter_um"] == pytest.approx(math.pi * 2.4, rel=0.02)
    assert "mesh " in text
    head = (out / "intensity.csv").read_text().splitlines()[0]
    assert "capacity_mAh_g" in head and "d_um" in head


def test_reference_average_and_reference_time():
    st, _, _ = synthetic_stack(n=8)
    st.frames[:3] = st.frames[3]  # three identical frames before the current (no change yet)
    res = analyze(st, AnalysisOptions(reference_time_s=190.0, reference_average=3))
    assert res.reference_index == 3 and res.times_rel_s[3] == pytest.approx(-10.0)
    with pytest.raises(InputError, match="reference_average"):
        analyze(st, AnalysisOptions(reference_frame=1, reference_average=3))


# ----------------------------------------------------------------------------- bad input
def _run_bad(args, capsys, out):
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("nmcfx: error: "), err
    assert not out.exists(), "nothing may be written for a bad input"
    return err[0]


def test_bad_stacks_are_reported_and_write_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(b"II*\x00" + bytes(range(256)) * 4)
    msg = _run_bad(["analyze", str(corrupt), "-o", str(out)], capsys, out)
    assert "stack" in msg and "TIFF" in msg
    st, _, _ = synthetic_stack(n=4)
    good = save_stack(tmp_path / "good.tif", st)
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    msg = _run_bad(["analyze", str(truncated), "-o", str(out)], capsys, out)
    assert "stack" in msg
    one = save_stack(tmp_path / "one.tif", ImageStack(st.frames[:1], [0.0]))
    msg = _run_bad(["analyze", str(one), "-o", str(out)], capsys, out)
    assert "single frame" in msg or "at least 2 frames" in msg
    np.save(tmp_path / "one.npy", st.frames[0])
    assert "at least 2" in _run_bad(["analyze", str(tmp_path / "one.npy"), "-o", str(out)], capsys, out)
    (tmp_path / "x.png").write_bytes(b"\x89PNG")
    assert "unknown file type" in _run_bad(["analyze", str(tmp_path / "x.png"), "-o", str(out)], capsys, out)
    assert "file not found" in _run_bad(["analyze", str(tmp_path / "nope.tif"), "-o", str(out)], capsys, out)


def test_bad_mask_and_spot_are_reported(tmp_path, capsys):
    out = tmp_path / "out"
    st, _, _ = synthetic_stack(n=4)
    good = save_stack(tmp_path / "good.tif", st, dtype="float32")
    msg = _run_bad(["analyze", str(good), "-o", str(out), "--threshold", "10"], capsys, out)
    assert "mask.threshold" in msg
    # a mask that is empty at a threshold within range: only a few bright pixels exceed it
    msg = _run_bad(["analyze", str(good), "-o", str(out), "--threshold", str(float(st.frames[0].max()) - 1e-3)],
                   capsys, out)
    assert msg.startswith("nmcfx: error: mask") and "empty" in msg
    # a particle cut by the image edge
    cut, _, _ = synthetic_stack(n=4, center_rc=(30.0, 8.0))
    path = save_stack(tmp_path / "cut.tif", cut, dtype="float32")
    msg = _run_bad(["analyze", str(path), "-o", str(out), "--drift", "none"], capsys, out)
    assert "touches the image edge" in msg
    # a spot position on flat background cannot be fitted
    msg = _run_bad(["analyze", str(good), "-o", str(out), "--spot", "85,12"], capsys, out)
    assert "drift.spot" in msg and "cannot fit" in msg
    # no marker at all: the automatic search says so
    nomark, _, _ = synthetic_stack(n=4, marker=False)
    path = save_stack(tmp_path / "nomark.tif", nomark, dtype="float32")
    msg = _run_bad(["analyze", str(path), "-o", str(out)], capsys, out)
    assert "drift.spot" in msg and "no bright isolated marker spot" in msg and "--drift phase" in msg
    msg = _run_bad(["analyze", str(good), "-o", str(out), "--reference-frame", "9"], capsys, out)
    assert "reference_frame" in msg


CAL = """
[geometry]
shape = "disk"
diameter_um = 2.4
mesh_size_um = 0.3
[protocol]
[[protocol.steps]]
type = "charge"
c_rate = 0.5
duration_min = 5
[calibration]
trace_csv = "trace.csv"
"""


@pytest.mark.parametrize("old, new, field", [
    ('trace_csv = "trace.csv"', 'trace_csv = "trace.csv"\nS_range = [5, 2]', "calibration.S_range"),
    ('trace_csv = "trace.csv"', 'trace_csv = "trace.csv"\nbogus = 1', "calibration"),
    ('trace_csv = "trace.csv"', 'trace_csv = "missing.csv"', "calibration.trace_csv"),
    ('trace_csv = "trace.csv"', 'analysis = "nowhere"', "calibration.analysis"),
    ('trace_csv = "trace.csv"', 'trace_csv = "trace.csv"\nworkers = 0', "calibration.workers"),
    ('trace_csv = "trace.csv"', 'trace_csv = "trace.csv"\nfit_offset = "yes"', "calibration.fit_offset"),
    ('trace_csv = "trace.csv"', 'trace_csv = "trace.csv"\nfit_offset = 1', "calibration.fit_offset"),
    ('trace_csv = "trace.csv"', 'trace_csv = "trace.csv"\nregion = "mask"', "calibration.region"),
    ('diameter_um = 2.4', 'diameter_um = -1', "geometry.diameter_um"),
    ('[calibration]\ntrace_csv = "trace.csv"', '', "calibration"),
])
def test_bad_calibration_config(tmp_path, capsys, old, new, field):
    (tmp_path / "trace.csv").write_text("time_s,contrast\n60,0.01\n120,0.02\n180,0.03\n")
    cfg = tmp_path / "cal.toml"
    cfg.write_text(textwrap.dedent(CAL.replace(old, new, 1)))
    out = tmp_path / "out"
    msg = _run_bad(["calibrate", str(cfg), "-o", str(out)], capsys, out)
    assert msg.startswith(f"nmcfx: error: {field}"), msg
