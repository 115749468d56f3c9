"""Blind twin calibration: is S right, and is its interval honest, at real photon counts?

A particle shape and an S that the tests never use (a rounded, slightly three-lobed 2.4 µm
particle, S = 2.7, A = 1.0, θ₀ = 0.95, C/3 delithiation for 40 min) are simulated once on
a fine mesh. Each noise seed then renders a microscope stack with code of its own — **not**
``imaging/forward.py``: θ from the mesh by P1 interpolation (the mesh's own triangles) on
5 × 5 sub-pixels, a Gaussian PSF of 265 nm FWHM, pixel integration, a random-walk stage
drift, a marker spot, Poisson shot noise and camera read noise, integer counts — with
10 frames before the current and one frame per minute. Every stack is analysed and
calibrated exactly as the README says (``nmcfx analyze … --reference-time-s T
--reference-average N`` and ``nmcfx calibrate`` on the particle's own outline).

Compared over the seeds:

* main, 2000 photons per pixel: reference averaging N = 1, 3, 10 × region center/mask ×
  fit_offset false/true — how often S is within 5 % of the truth, and how often the
  reported 68 % / 95 % intervals contain it;
* photon budget: 500, 2000, 8000 photons per pixel × N = 1, 3, 10 with the package's
  default calibration settings — the precision a microscopist can expect.

Every (seed, case) is stored in ``OUT/cases/seed<k>/<case>/result.json`` as soon as it is
done; a re-run skips the finished ones (``--force`` redoes them), so an interrupted study
resumes. Simulations are cached in ``OUT/cache``.

    python studies/twin_calibration.py [-o DIR] [--quick] [--force] [--seeds N] [--cases main|flicker|budget|default|all]

Outputs (DIR, default runs/studies/twin_calibration): twin_calibration.csv (one row per seed
and case), twin_calibration_summary.csv and .md (the tables of the README),
twin_calibration.png (S error and intervals per seed), study.json. ``--quick``: 3 seeds,
coarse meshes, N = 10 only, both regions with the default fit_offset (about a minute).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

from mpi4py import MPI  # noqa: F401  (before dolfinx)

import numpy as np

from nmcfx.studies._common import QUIET_OUTPUT, Study, config_digest, parse_args, plt, write_csv

NAME = "twin_calibration"
S_TRUE = 2.7
A_TRUE = 1.0
THETA0 = 0.95
FRAME_S = 60.0
N_PRE = 10  # frames before the current
CHARGE_MIN = 40.0
PIXEL_UM = 0.0347
FWHM_UM = 0.265
FOV = (112, 112)
MARKER_RC = (14.0, 96.0)
MAIN_PHOTONS = 2000.0


# ----------------------------------------------------------------------------- the particle and its truth
def particle_outline(n: int = 180) -> list[list[float]]:
    """A rounded, slightly three-lobed particle of ~2.4 µm (not a shape the tests use)."""
    phi = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    r = 1.2 * (1.0 + 0.09 * np.cos(2.0 * (phi - 0.4)) + 0.04 * np.cos(3.0 * phi + 1.0))
    return [[float(x), float(y)] for x, y in zip(r * np.cos(phi), r * np.sin(phi))]


def protocol_table() -> dict:
    return {"initial_theta": THETA0,
            "steps": [{"type": "charge", "c_rate": 1.0 / 3.0, "duration_min": CHARGE_MIN}]}


def truth_config(quick: bool) -> dict:
    h = (0.12, 0.04) if quick else (0.05, 0.018)
    return {
        "title": f"twin truth: three-lobed 2.4 µm particle, S = {S_TRUE}, C/3 for {CHARGE_MIN:g} min",
        "geometry": {"shape": "contour", "contour_points_um": particle_outline(), "mesh_size_um": h[0],
                     "surface_mesh_size_um": h[1]},
        "material": {"scaling_S": S_TRUE},
        "protocol": protocol_table(),
        "solver": {"theta_tol": 1e-3 if quick else 3e-4},
        "output": dict(QUIET_OUTPUT, snapshot_times_min=[float(m) for m in range(int(CHARGE_MIN) + 1)]),
    }


def truth_maps(cfg: dict, outdir: Path, comm=None) -> dict:
    """Run the truth simulation (``nmcfx.run`` with a θ recorder) and return its θ maps:
    ``points``, ``triangles``, ``times_s``, ``theta`` (what :func:`render_twin` needs)."""
    from nmcfx.api import run
    from nmcfx.studies._common import FieldRecorder, case_spec, load_maps

    comm = comm if comm is not None else MPI.COMM_WORLD
    rec = FieldRecorder()
    run(case_spec("truth", cfg), outdir, comm=comm, progress=False, overwrite=True, observers=[rec])
    rec.save(Path(outdir) / "fields.npz")
    comm.Barrier()
    return load_maps(Path(outdir) / "fields.npz")


# ----------------------------------------------------------------------------- an independent renderer
@dataclass
class Camera:
    """What the twin microscope does (intensities: particle 1, background 0.3 before the current)."""

    photons: float = MAIN_PHOTONS  # photo-electrons per pixel and frame at intensity 1
    read_noise_e: float = 2.0  # camera read noise, electrons RMS
    offset_adu: float = 0.0  # camera offset (sCMOS: ~100 ADU)
    pixel_um: float = PIXEL_UM
    fwhm_um: float = FWHM_UM
    supersample: int = 4
    background: float = 0.3
    texture: float = 0.03  # RMS of a smooth brightness variation over the particle (moves with it)
    marker_amplitude: float = 1.5
    marker_rc: tuple = MARKER_RC
    fov: tuple = FOV  # rows, cols
    drift_step_px: float = 0.3  # random-walk drift per frame
    flicker: float = 0.0  # relative RMS of the illumination from frame to frame (LED, lamp)
    A: float = A_TRUE
    theta0: float = THETA0
    noise: bool = True  # False: the expected counts, no shot or read noise, as float32 (systematics)
    extra: dict = field(default_factory=dict)


def _texture_field(rng, n_modes: int = 12, wavelength_um: float = 0.6):
    k = 2 * math.pi / wavelength_um * (0.6 + 0.8 * rng.random(n_modes))
    ang = 2 * math.pi * rng.random(n_modes)
    ph = 2 * math.pi * rng.random(n_modes)
    kx, ky = k * np.cos(ang), k * np.sin(ang)

    def f(x, y):
        s = np.zeros_like(x)
        for i in range(n_modes):
            s += np.cos(kx[i] * x + ky[i] * y + ph[i])
        return s / math.sqrt(n_modes / 2.0)

    return f


def render_twin(maps: dict, times_s: np.ndarray, cam: Camera, seed: int, *, theta_times_s=None,
                noise_seed: int | None = None):
    """Render a stack from θ on the truth mesh.

    ``maps``: ``points`` (vertices, µm), ``triangles``, ``times_s`` and ``theta`` (one row per
    simulated time). ``times_s``: the frame times since the current start (≤ 0: before it,
    θ = θ₀). Returns (frames as uint16 counts — float32 without noise —, drift (n, 2) px). The particle centroid sits
    in the middle of the field; y of the mesh runs down the image rows. ``seed`` sets the drift
    and the texture, ``noise_seed`` (default: the same generator) the shot and read noise.
    """
    import matplotlib.tri as mtri
    from scipy import ndimage
    from scipy.special import ndtr

    rng = np.random.default_rng(seed)
    pts, tris = np.asarray(maps["points"]), np.asarray(maps["triangles"])
    tri = mtri.Triangulation(pts[:, 0], pts[:, 1], tris)
    finder = tri.get_trifinder()
    sim_t = np.asarray(maps["times_s"] if theta_times_s is None else theta_times_s, dtype=float)
    theta_all = np.asarray(maps["theta"], dtype=float)
    centre = pts.mean(axis=0)
    rows, cols = cam.fov
    ss = cam.supersample
    sig_px = cam.fwhm_um / (2 * math.sqrt(2 * math.log(2))) / cam.pixel_um
    pad = int(math.ceil(5 * sig_px)) + 2
    n = len(times_s)
    drift = np.cumsum(rng.normal(0.0, cam.drift_step_px, (n, 2)), axis=0)
    drift -= drift[int(np.flatnonzero(np.asarray(times_s) <= 0)[-1])]  # zero at the last frame before the current
    texture = _texture_field(rng)
    # sub-pixel centres of the padded canvas, in pixel units of the field of view
    sub = (np.arange(ss) + 0.5) / ss - 0.5
    rr = (np.arange(-pad, rows + pad)[:, None] + sub[None, :]).ravel()
    cc = (np.arange(-pad, cols + pad)[:, None] + sub[None, :]).ravel()
    R, C = np.meshgrid(rr, cc, indexing="ij")
    frames = np.empty((n, rows, cols))
    pix_r, pix_c = np.mgrid[:rows, :cols].astype(float)
    lo_xy, hi_xy = pts.min(axis=0) - cam.pixel_um, pts.max(axis=0) + cam.pixel_um
    for k, t in enumerate(times_s):
        # the scene moves by the drift: sample it at (r − d_r, c − d_c)
        x = centre[0] + (C - drift[k, 1] - 0.5 * (cols - 1)) * cam.pixel_um
        y = centre[1] + (R - drift[k, 0] - 0.5 * (rows - 1)) * cam.pixel_um
        near = (x >= lo_xy[0]) & (x <= hi_xy[0]) & (y >= lo_xy[1]) & (y <= hi_xy[1])  # only there can θ be
        xs, ys = x[near], y[near]
        inside_s = finder(xs, ys) >= 0
        dth_s = np.zeros(xs.shape)
        if t > 0:
            j = int(np.argmin(np.abs(sim_t - t)))
            if abs(sim_t[j] - t) > 1e-6:
                raise ValueError(f"no simulated θ at t = {t} s")
            interp = mtri.LinearTriInterpolator(tri, theta_all[j], trifinder=finder)
            th = np.ma.filled(interp(xs, ys), cam.theta0)
            dth_s = np.where(inside_s, cam.theta0 - th, 0.0)
        scene = np.full(x.shape, cam.background)
        i0_s = np.full(xs.shape, cam.background)
        i0_s[inside_s] = 1.0 + cam.texture * texture(xs[inside_s] - centre[0], ys[inside_s] - centre[1])
        scene[near] = i0_s * (1.0 + cam.A * dth_s)
        # Gaussian PSF by FFT (the canvas extends 5σ beyond the field; only background wraps around)
        blurred = np.fft.irfft2(ndimage.fourier_gaussian(np.fft.rfft2(scene), sig_px * ss, n=scene.shape[1]),
                                s=scene.shape)
        img = blurred.reshape(rows + 2 * pad, ss, cols + 2 * pad, ss).mean(axis=(1, 3))[pad:pad + rows, pad:pad + cols]
        mr, mc = cam.marker_rc[0] + drift[k, 0], cam.marker_rc[1] + drift[k, 1]
        pr = ndtr((pix_r + 0.5 - mr) / sig_px) - ndtr((pix_r - 0.5 - mr) / sig_px)
        pc = ndtr((pix_c + 0.5 - mc) / sig_px) - ndtr((pix_c - 0.5 - mc) / sig_px)
        img = img + cam.marker_amplitude * 2 * math.pi * sig_px**2 * pr * pc
        frames[k] = img
    if cam.flicker > 0:
        frames *= 1.0 + cam.flicker * np.random.default_rng(seed + 7919).standard_normal((n, 1, 1))
    if not cam.noise:
        return (frames * cam.photons + cam.offset_adu).astype(np.float32), drift
    nrng = rng if noise_seed is None else np.random.default_rng(noise_seed)
    counts = nrng.poisson(np.clip(frames, 0, None) * cam.photons) + nrng.normal(0.0, cam.read_noise_e, frames.shape)
    adu = np.clip(np.rint(counts + cam.offset_adu), 0, 65535).astype(np.uint16)
    return adu, drift


def frame_times_s() -> np.ndarray:
    """File times: N_PRE frames before the current (the last at the current start), then one a minute."""
    return np.arange(N_PRE + int(CHARGE_MIN)) * FRAME_S


def write_stack(path: Path, frames: np.ndarray):
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez_compressed(tmp, frames=frames, times_s=frame_times_s(), pixel_size_um=PIXEL_UM)
    tmp.replace(path)


# ----------------------------------------------------------------------------- analyse and calibrate as the README says
CAL_TOML = """
title = "twin calibration"
[geometry]
shape = "contour"
contour_csv = "{analysis}/outline.csv"
mesh_size_um = {h}
surface_mesh_size_um = {hs}
[protocol]
initial_theta = {theta0}
[[protocol.steps]]
type = "charge"
c_rate = 0.3333333333333333
duration_min = {minutes}
[calibration]
analysis = "{analysis}"
S_range = [1.2, 6.0]
S_grid = 7
workers = 1
cache_dir = "{cache}"
cache_max_mb = 20000
{extra}
"""


def _quiet(argv) -> tuple[int, str]:
    from nmcfx.cli import main

    buf_out, buf_err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(buf_out), contextlib.redirect_stderr(buf_err):
        code = main(argv)
    return code, buf_out.getvalue() + buf_err.getvalue()


def analyse(stack: Path, outdir: Path, n_avg: int) -> dict:
    if not (outdir / "summary.json").is_file():
        t_current = (N_PRE - 1) * FRAME_S
        code, text = _quiet(["analyze", str(stack), "-o", str(outdir), "--reference-time-s", f"{t_current:g}",
                             "--reference-average", str(n_avg), "--no-figures"])
        if code != 0:
            raise RuntimeError(f"nmcfx analyze failed: {text}")
    return json.loads((outdir / "summary.json").read_text())


def calibrate_case(workdir: Path, analysis: Path, cache: Path, quick: bool, settings: dict) -> dict:
    h, hs = (0.2, 0.07) if quick else (0.12, 0.04)
    extra = "\n".join(f"{k} = {json.dumps(v)}" for k, v in settings.items())
    cfg = workdir / "calibration.toml"
    cfg.write_text(textwrap.dedent(CAL_TOML.format(analysis=analysis.resolve(), h=h, hs=hs, theta0=THETA0,
                                                   minutes=CHARGE_MIN, cache=cache.resolve(), extra=extra)))
    t0 = time.perf_counter()
    code, text = _quiet(["calibrate", str(cfg), "-o", str(workdir / "calibration")])
    if code != 0:
        raise RuntimeError(f"nmcfx calibrate failed: {text}")
    r = json.loads((workdir / "calibration" / "calibration.json").read_text())
    r["wall_s"] = time.perf_counter() - t0
    return r


# ----------------------------------------------------------------------------- cases
@dataclass(frozen=True)
class Case:
    photons: float
    n_avg: int
    region: str | None  # None: the package default
    fit_offset: bool | None
    flicker: float = 0.0

    @property
    def key(self) -> str:
        reg = self.region or "default"
        off = "default" if self.fit_offset is None else ("offset" if self.fit_offset else "eq18")
        fl = f"_flicker{self.flicker * 100:g}" if self.flicker else ""
        return f"p{self.photons:g}{fl}_ref{self.n_avg}_{reg}_{off}"

    @property
    def stack_key(self) -> str:
        return f"p{self.photons:g}" + (f"_flicker{self.flicker * 100:g}" if self.flicker else "")

    def settings(self) -> dict:
        out = {}
        if self.region is not None:
            out["region"] = self.region
        if self.fit_offset is not None:
            out["fit_offset"] = self.fit_offset
        return out


def resolved_settings(case: Case) -> dict:
    """The case's calibration settings with the package defaults filled in (part of its digest, so
    a change of the defaults re-runs the cases that use them)."""
    from nmcfx.imaging import CalibrationSettings

    d = CalibrationSettings()
    return {"region": case.region or d.region, "fit_offset": d.fit_offset if case.fit_offset is None
            else case.fit_offset, "resamples": d.resamples}


def case_digest(case: Case, seed: int, quick: bool, truth_digest: str) -> str:
    return config_digest({"case": case.key, "seed": seed, "quick": quick, "truth": truth_digest,
                          "settings": resolved_settings(case)})


def finished_rows(outdir: Path, todo: list[Case], quick: bool, truth_digest: str) -> list[dict]:
    """Every finished (seed, case) of ``todo`` whose result is current (same digest), in case order."""
    rows = []
    for case in todo:
        for marker in sorted((outdir / "cases").glob(f"seed*/{case.key}/result.json")):
            r = json.loads(marker.read_text())
            if r.get("digest") == case_digest(case, int(r["seed"]), quick, truth_digest):
                rows.append(r)
    return rows


def cases(quick: bool, part: str = "all") -> list[Case]:
    if quick:
        return [Case(MAIN_PHOTONS, 10, "center", None), Case(MAIN_PHOTONS, 10, "mask", None)]
    main = [Case(MAIN_PHOTONS, n, reg, off) for n in (1, 3, 10) for reg in ("center", "mask") for off in (False, True)]
    budget = [Case(p, n, None, None) for p in (500.0, MAIN_PHOTONS, 8000.0) for n in (1, 3, 10)]
    # an LED whose brightness varies by 0.3 % from frame to frame: the reference inherits it
    flicker = [Case(MAIN_PHOTONS, n, reg, off, 0.003) for n in (1, 10) for reg in ("center", "mask")
               for off in (False, True)]
    # the shipped defaults (space-time fit with an offset, I₀ from the 10 pre-current frames), alone: more seeds
    default = [Case(MAIN_PHOTONS, 10, "mask", True)]
    return {"main": main, "budget": budget, "flicker": flicker, "default": default,
            "all": main + flicker + budget}[part]


def run_seed(study: Study, truth: dict, seed: int, todo: list[Case], cache: Path, quick: bool) -> list[dict]:
    """All cases of one noise seed (each stored as soon as it is done)."""
    seed_dir = study.outdir / "cases" / f"seed{seed:02d}"
    rows = []
    stacks: dict[str, Path] = {}
    for case in todo:
        cdir = seed_dir / case.key
        marker = cdir / "result.json"
        digest = case_digest(case, seed, quick, truth["digest"])
        if marker.is_file() and not study.force:
            r = json.loads(marker.read_text())
            if r.get("digest") == digest:
                rows.append(r)
                continue
        cdir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        if case.stack_key not in stacks:
            path = seed_dir / f"stack_{case.stack_key}.npz"
            if not path.is_file() or study.force:
                cam = Camera(photons=case.photons, flicker=case.flicker)
                frames, drift = render_twin(truth["maps"], frame_times_s() - (N_PRE - 1) * FRAME_S, cam,
                                            seed=1000 + seed)
                write_stack(path, frames)
            stacks[case.stack_key] = path
        ana = seed_dir / f"analysis_{case.stack_key}_ref{case.n_avg}"
        summary = analyse(stacks[case.stack_key], ana, case.n_avg)
        cal = calibrate_case(cdir, ana, cache, quick, case.settings())
        row = {"digest": digest, "seed": seed, "case": case.key, "photons": case.photons, "n_avg": case.n_avg,
               "flicker": case.flicker,
               "region": cal["region"], "fit_offset": cal["fit_offset"], "S": cal["S"], "A": cal["A"], "B": cal["B"],
               "S_interval_68": cal["S_interval_68"], "S_interval_95": cal["S_interval_95"],
               "S_sigma_rel": cal["S_sigma_rel"],
               "S_sigma_rel_reference": cal["uncertainty"].get("S_sigma_rel_reference"),
               "S_sigma_rel_frames": cal["uncertainty"].get("S_sigma_rel_frames"),
               "residual_to_noise": cal["uncertainty"].get("residual_to_noise"),
               "at_edge": cal["at_edge_of_S_range"], "simulated": cal["simulations"]["simulated"],
               "warnings": len(cal.get("warnings", [])) + len(summary.get("warnings", [])),
               "wall_s": time.perf_counter() - t0}
        (marker.with_suffix(".tmp")).write_text(json.dumps(row, indent=1))
        marker.with_suffix(".tmp").replace(marker)
        rows.append(row)
        study.say(f"seed {seed:2d} {case.key:<28s} S = {row['S']:.4f} ({(row['S'] / S_TRUE - 1) * 100:+.1f} %), "
                  f"± {row['S_sigma_rel'] * 100:.1f} %, {row['wall_s']:.0f} s")
    return rows


# ----------------------------------------------------------------------------- the tables
def _inside(iv, x) -> bool:
    lo, hi = iv
    return (lo is None or lo <= x) and (hi is None or x <= hi)


def summarise(rows: list[dict]) -> list[dict]:
    out = []
    for key in dict.fromkeys(r["case"] for r in rows):
        rs = [r for r in rows if r["case"] == key]
        err = np.array([r["S"] / S_TRUE - 1.0 for r in rs])
        sig = np.array([r["S_sigma_rel"] for r in rs], dtype=float)
        out.append({
            "case": key, "photons": rs[0]["photons"], "flicker": rs[0].get("flicker", 0.0), "n_avg": rs[0]["n_avg"],
            "region": rs[0]["region"],
            "fit_offset": rs[0]["fit_offset"], "seeds": len(rs),
            "S_error_mean_pct": 100 * float(err.mean()), "S_error_std_pct": 100 * float(err.std(ddof=1)) if len(rs) > 1
            else math.nan, "S_error_max_pct": 100 * float(np.abs(err).max()),
            "within_5pct": float(np.mean(np.abs(err) <= 0.05)),
            "coverage_68": float(np.mean([_inside(r["S_interval_68"], S_TRUE) for r in rs])),
            "coverage_95": float(np.mean([_inside(r["S_interval_95"], S_TRUE) for r in rs])),
            "reported_sigma_pct": 100 * float(np.median(sig)),
            "sigma_reference_pct": 100 * float(np.median([r["S_sigma_rel_reference"] or 0 for r in rs])),
            "sigma_frames_pct": 100 * float(np.median([r["S_sigma_rel_frames"] or 0 for r in rs])),
            "A_mean": float(np.mean([r["A"] for r in rs])),
            "wall_s_mean": float(np.mean([r["wall_s"] for r in rs])),
        })
    return out


def markdown(summary: list[dict]) -> str:
    head = ("| photons/px | flicker | I₀ frames | region | fit_offset | seeds | S error mean ± SD | max \\|error\\| | "
            "within 5 % | reported σ_S (ref / frames) | 68 % covers | 95 % covers |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for s in summary:
        fl = f"{s['flicker'] * 100:g} %" if s["flicker"] else "–"
        lines.append(f"| {s['photons']:g} | {fl} | {s['n_avg']} | {s['region']} | {str(s['fit_offset']).lower()} | "
                     f"{s['seeds']} | "
                     f"{s['S_error_mean_pct']:+.1f} ± {s['S_error_std_pct']:.1f} % | {s['S_error_max_pct']:.1f} % | "
                     f"{s['within_5pct']:.0%} | {s['reported_sigma_pct']:.1f} % ({s['sigma_reference_pct']:.1f} / "
                     f"{s['sigma_frames_pct']:.1f}) | {s['coverage_68']:.0%} | {s['coverage_95']:.0%} |")
    return head + "\n".join(lines) + "\n"


def precision_table(summary: list[dict]) -> str:
    """Photons per pixel × frames averaged into I₀ → the error of S with the default settings:
    the spread over the seeds (SD, %) and the reported σ_S (median, %)."""
    rows = [s for s in summary if s["case"].endswith("_default_default") and not s["flicker"]]
    photons = sorted({s["photons"] for s in rows})
    navg = sorted({s["n_avg"] for s in rows})
    if not rows:
        return ""
    out = ["| photons per pixel and frame | " + " | ".join(f"I₀ from {n} frame{'s' if n > 1 else ''}" for n in navg)
           + " |", "|---|" + "---|" * len(navg)]
    for p in photons:
        cells = []
        for n in navg:
            s = next((x for x in rows if x["photons"] == p and x["n_avg"] == n), None)
            cells.append("–" if s is None else f"{s['S_error_std_pct']:.1f} % ({s['reported_sigma_pct']:.1f} %), "
                                                f"{s['within_5pct']:.0%} within 5 %")
        out.append(f"| {p:g} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def figure(rows: list[dict], path: Path):
    pyplot = plt()
    keys = list(dict.fromkeys(r["case"] for r in rows))
    fig, ax = pyplot.subplots(figsize=(max(6.0, 0.55 * len(keys) + 2), 4.2))
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.36, top=0.92)
    for i, key in enumerate(keys):
        rs = [r for r in rows if r["case"] == key]
        for j, r in enumerate(rs):
            x = i + (j - (len(rs) - 1) / 2) * 0.6 / max(len(rs), 1)
            e = 100 * (r["S"] / S_TRUE - 1)
            lo, hi = r["S_interval_95"]
            ylo = 100 * (lo / S_TRUE - 1) if lo is not None else -30
            yhi = 100 * (hi / S_TRUE - 1) if hi is not None else 30
            ok = _inside(r["S_interval_95"], S_TRUE)
            ax.plot([x, x], [ylo, yhi], color="0.6" if ok else "tab:red", lw=0.8)
            ax.plot([x], [e], "o", ms=2.5, color="k" if ok else "tab:red")
    ax.axhspan(-5, 5, color="tab:green", alpha=0.08)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels(keys, rotation=70, fontsize=6)
    ax.set_ylabel("S error (%)")
    ax.set_ylim(-30, 30)
    ax.set_title(f"twin calibration, S = {S_TRUE}: each seed's S and its 95 % interval (red: misses the truth)",
                 fontsize=9)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=130)
    pyplot.close(fig)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> dict:
    import argparse

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--seeds", type=int, default=None)
    pre.add_argument("--cases", choices=("main", "flicker", "budget", "default", "all"), default="all")
    pre.add_argument("--report", action="store_true",
                     help="run nothing: write the tables and figure from the cases finished so far")
    known, rest = pre.parse_known_args(argv if argv is not None else sys.argv[1:])
    args = parse_args(NAME, "Blind twin calibration at real photon counts (S error and interval coverage)", rest)
    study = Study(NAME, args)
    if study.comm.size > 1:
        raise SystemExit("studies/twin_calibration.py runs serially (each calibration is serial and cached); "
                         "run it without mpiexec")
    n_seeds = known.seeds if known.seeds is not None else (3 if study.quick else 24)
    todo = cases(study.quick, known.cases)
    study.plan(1)
    cfg = truth_config(study.quick)
    res = study.case("truth", cfg, maps=True, describe=f"truth simulation, S = {S_TRUE}")
    if res.error:
        raise RuntimeError(res.error)
    truth = {"maps": res.maps, "digest": config_digest(cfg)}
    cache = study.outdir / "cache"
    t0 = time.perf_counter()
    if not known.report:
        for seed in range(n_seeds):
            run_seed(study, truth, seed, todo, cache, study.quick)
    wall = time.perf_counter() - t0
    # the tables cover every finished case (other runs of the script may have added some)
    rows = finished_rows(study.outdir, cases(study.quick, "all"), study.quick, truth["digest"])
    n_seeds = len({r["seed"] for r in rows})
    compute_h = sum(r["wall_s"] for r in rows) / 3600.0
    summary = summarise(rows) if study.comm.rank == 0 else []
    files = ["twin_calibration.csv", "twin_calibration_summary.csv", "twin_calibration.md", "twin_calibration.png"]
    if study.comm.rank == 0:
        cols = ["seed", "case", "photons", "flicker", "n_avg", "region", "fit_offset", "S", "A", "B", "S_sigma_rel",
                "S_sigma_rel_reference", "S_sigma_rel_frames", "residual_to_noise", "at_edge", "simulated", "warnings",
                "wall_s"]
        write_csv(study.outdir / "twin_calibration.csv", cols + ["S68_lo", "S68_hi", "S95_lo", "S95_hi"],
                  [[r.get(c) for c in cols] + list(r["S_interval_68"]) + list(r["S_interval_95"]) for r in rows])
        write_csv(study.outdir / "twin_calibration_summary.csv", list(summary[0]),
                  [[s[k] for k in summary[0]] for s in summary])
        md = markdown(summary) + "\nPrecision with the default settings: SD of S over the seeds (median reported " \
                                 "σ_S), and how often S is within 5 %:\n\n" + precision_table(summary)
        (study.outdir / "twin_calibration.md").write_text(
            f"Twin calibration, S = {S_TRUE}, up to {n_seeds} noise seeds, {'quick' if study.quick else 'full'}; "
            f"{len(rows)} calibrations, {compute_h:.2f} h of render + analysis + calibration wall time in total "
            f"({3600 * compute_h / max(len(rows), 1):.0f} s each on average).\n\n" + md)
        figure(rows, study.outdir / "twin_calibration.png")
        study.say("\n" + md)
    study.finish("Blind twin calibration: S error and interval coverage over noise seeds",
                 extra={"summary": summary, "seeds": n_seeds, "S_true": S_TRUE, "seed_loop_s": wall,
                        "calibrations": len(rows), "compute_h": compute_h}, outputs=files)
    return {"rows": rows, "summary": summary}


if __name__ == "__main__":
    main()
