"""Calibration of the diffusivity scaling S and the contrast factor A against images.

Xu et al. (Joule 2022, Supplementary Eqs. 16–18, Fig. S2): with the linear contrast
model Ī = A (θ₀ − θ), minimise

    e(S, A) = sqrt( mean_k [ Ī_k,measured − A (θ₀ − θ_k(S)) ]² )

over the frames k (and here optionally over pixels too). For a given S the minimising
A is closed-form least squares, A*(S) = Σ Ī X / Σ X² with X = θ₀ − θ(S), so only S
needs a search: a coarse log-spaced grid of S (simulations run in parallel and are
cached on disk), then a bounded Brent refinement (scipy ``minimize_scalar``) around the
best grid point. Each S is one simulation of the protocol with snapshots at the frame
times and θ probed at the pixels the measured region needs.

Model of a pixel's contrast (``blur = true``, the default with an analysis directory):
A · G∗(1_p Δθ) / G∗(1_p), the simulated Δθ = θ₀ − θ on the pixel grid blurred by the
same Gaussian PSF as the microscope (normalised convolution: a uniformly bright particle
on a dark background), which stays linear in A. Regions:

    mask    every mask pixel farther than edge_margin_px from the edge (space-time; default)
    center  pixels within center_radius_px of the particle centroid, averaged (Eq. 18 as published)
    line    the pixels of the analysis' line cut inside that eroded mask (space-time)
    pixels  a list of [row, col] of the analysed frames, each its own series
    trace   a CSV trace (time_s, contrast) compared with θ at one point (default: centroid)

Every simulation probes θ on the whole particle and its PSF neighbourhood, so one serves
every region; every S is compared over the same frames (those all simulated S reach).

Offset (``fit_offset``, default true, chosen by the twin study): the general linear model of Eqs. 16–17,
(I − I₀)/I₀ = A(1 − θ) + B, is reduced in the paper to B = −A(1 − θ₀) by assuming I = I₀
at θ₀, i.e. Ī = A(θ₀ − θ). Noise in the reference frame I₀ breaks that assumption: every
contrast frame inherits the same error, a constant offset of the measured contrast that
biases S. With ``fit_offset`` the model is Ī = A(θ₀ − θ) + B with one B for the whole
region (all frames and all compared pixels; one per pixel would absorb the spatial
signal of the space-time regions), (A, B) in closed form for each S (linear least
squares: A = cov(M, X)/var(X), B = mean(M) − A mean(X)).

Uncertainty (:mod:`.uncertainty`): the noise measured before the current
(:mod:`.noise`: the reference noise shared by every frame, and each frame's own) is
resampled and re-fitted on a dense profile e(S) interpolated between the simulated S —
no new simulation; the 68 % and 95 % intervals are basic bootstrap intervals of S, A (B).
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from nmcfx.errors import InputError

from .checks import baseline_check
from .contrast import disk_region, eroded
from .noise import NoiseModel, measure_noise
from .forward import DEFAULT_RESOLUTION_UM, blur_contrast, psf_sigma_um

CACHE_SCHEMA = 2
REGIONS = ("center", "mask", "line", "pixels", "trace")
RUN_TABLES = ("title", "geometry", "material", "protocol", "solver", "output")


# ---------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class CalibrationSettings:
    analysis: Path | None = None  # directory written by `nmcfx analyze`
    trace_csv: Path | None = None  # or a measured trace (time_s, contrast)
    region: str = "mask"  # space-time fit over the particle: the twin study's choice (README)
    center_radius_px: float | None = None  # None: the analysis' centre region
    pixels: tuple = ()
    point_um: tuple[float, float] | None = None  # region "trace": where θ is taken (default: mesh centroid)
    edge_margin_px: float | None = None  # None: 2 σ of the PSF
    S_range: tuple[float, float] = (1.5, 8.0)
    S_grid: int = 7
    S_tol: float = 0.005  # relative tolerance of the Brent refinement
    refine: bool = True
    A_points: int = 61
    workers: int = 1
    cache_dir: Path | None = None
    blur: bool = True
    resolution_um: float | None = None  # None: the analysis' value (265 nm by default)
    align: str = "centroid"  # centroid | none
    t_max_min: float | None = None
    resamples: int = 300  # noise resamples (reference and frame noise) re-fitted on the cached simulations
    seed: int = 0
    fit_offset: bool = True  # fit Ī = A(θ₀ − θ) + B (one B for the region); false: Eq. 18 as published (B = 0)
    cache_max_mb: float = 1000.0  # the cache is pruned (least recently used first) above this size

    KEYS = ("analysis", "trace_csv", "region", "center_radius_px", "pixels", "point_um", "edge_margin_px", "S_range",
            "S_grid", "S_tol", "refine", "A_points", "workers", "cache_dir", "blur", "resolution_um", "align",
            "t_max_min", "resamples", "bootstrap", "seed", "fit_offset", "cache_max_mb")

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}


def _num(d, key, lo, hi, *, integer=False, lo_open=False, unit=""):
    v = d[key]
    f = f"calibration.{key}"
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)) \
            or not math.isfinite(v):
        raise InputError(f, f"must be {'an integer' if integer else 'a number'} in "
                            f"{'(' if lo_open else '['}{lo:g}, {hi:g}]{unit}, got {v!r}")
    if (v <= lo if lo_open else v < lo) or v > hi:
        raise InputError(f, f"must be in {'(' if lo_open else '['}{lo:g}, {hi:g}]{unit}, got {v!r}")
    return int(v) if integer else float(v)


def _bool(d, key):
    if not isinstance(d[key], bool):
        raise InputError(f"calibration.{key}", f"must be true or false, got {d[key]!r}")
    return d[key]


def settings_from_dict(d: dict | None, base_dir: Path) -> CalibrationSettings:
    """Validate the ``[calibration]`` table (module docstring and README for the keys)."""
    if d is None:
        raise InputError("calibration", "missing: a calibration config needs a [calibration] table")
    if not isinstance(d, dict):
        raise InputError("calibration", "must be a table")
    extra = set(d) - set(CalibrationSettings.KEYS)
    if extra:
        raise InputError("calibration", f"unknown key(s) {sorted(extra)}; allowed: {list(CalibrationSettings.KEYS)}")
    out: dict = {}
    base_dir = Path(base_dir)
    if ("analysis" in d) == ("trace_csv" in d):
        raise InputError("calibration", "give exactly one of analysis (a directory written by `nmcfx analyze`) "
                                        "or trace_csv (columns time_s, contrast)")
    for key in ("analysis", "trace_csv", "cache_dir"):
        if key in d:
            v = d[key]
            if not isinstance(v, str) or not v.strip():
                raise InputError(f"calibration.{key}", f"must be a path (string), got {v!r}")
            p = Path(v).expanduser()
            out[key] = p if p.is_absolute() else base_dir / p
    if "analysis" in out:
        if not (out["analysis"] / "contrast.npz").is_file():
            raise InputError("calibration.analysis", f"{out['analysis']} holds no contrast.npz; give a directory "
                                                     "written by `nmcfx analyze`")
    if "trace_csv" in out and not out["trace_csv"].is_file():
        raise InputError("calibration.trace_csv", f"file not found: {out['trace_csv']}")
    region = d.get("region", "trace" if "trace_csv" in d else "mask")
    if region not in REGIONS:
        raise InputError("calibration.region", f"must be one of {list(REGIONS)}, got {region!r}")
    if ("trace_csv" in out) != (region == "trace"):
        raise InputError("calibration.region", "region 'trace' goes with trace_csv, the other regions with analysis")
    out["region"] = region
    if "center_radius_px" in d:
        out["center_radius_px"] = _num(d, "center_radius_px", 0, 100, unit=" px")
    if "pixels" in d:
        v = d["pixels"]
        ok = isinstance(v, list) and v and all(isinstance(p, list) and len(p) == 2 and all(
            isinstance(x, int) and not isinstance(x, bool) for x in p) for p in v)
        if not ok:
            raise InputError("calibration.pixels", "must be a non-empty list of [row, col] integer pairs")
        out["pixels"] = tuple(tuple(p) for p in v)
    if region == "pixels" and "pixels" not in out:
        raise InputError("calibration.pixels", "region 'pixels' needs a list of [row, col] pixels")
    if "point_um" in d:
        v = d["point_um"]
        if not (isinstance(v, list) and len(v) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                            and math.isfinite(x) for x in v)):
            raise InputError("calibration.point_um", "must be [x, y] in µm (mesh coordinates)")
        out["point_um"] = (float(v[0]), float(v[1]))
    if "edge_margin_px" in d:
        out["edge_margin_px"] = _num(d, "edge_margin_px", 0, 100, unit=" px")
    if "S_range" in d:
        v = d["S_range"]
        if not (isinstance(v, list) and len(v) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                            and math.isfinite(x) for x in v)):
            raise InputError("calibration.S_range", f"must be [S_min, S_max], got {v!r}")
        lo, hi = float(v[0]), float(v[1])
        if not 0.01 <= lo < hi <= 1000:
            raise InputError("calibration.S_range", f"must satisfy 0.01 <= S_min < S_max <= 1000, got {v!r}")
        out["S_range"] = (lo, hi)
    if "S_grid" in d:
        out["S_grid"] = _num(d, "S_grid", 3, 200, integer=True)
    if "S_tol" in d:
        out["S_tol"] = _num(d, "S_tol", 1e-5, 0.2)
    if "A_points" in d:
        out["A_points"] = _num(d, "A_points", 5, 1000, integer=True)
    if "workers" in d:
        out["workers"] = _num(d, "workers", 1, 256, integer=True)
    if "resamples" in d and "bootstrap" in d:
        raise InputError("calibration.bootstrap", "is the old name of resamples; give one of them")
    for key in ("resamples", "bootstrap"):  # bootstrap: the old name
        if key in d:
            out["resamples"] = _num(d, key, 0, 100000, integer=True)
    if "cache_max_mb" in d:
        out["cache_max_mb"] = _num(d, "cache_max_mb", 1, 1e7, unit=" MB")
    if "seed" in d:
        out["seed"] = _num(d, "seed", 0, 2**31 - 1, integer=True)
    if "resolution_um" in d:
        out["resolution_um"] = _num(d, "resolution_um", 0, 10, lo_open=True, unit=" µm")
    if "t_max_min" in d:
        out["t_max_min"] = _num(d, "t_max_min", 0, 1e6, lo_open=True, unit=" min")
    for key in ("refine", "blur", "fit_offset"):
        if key in d:
            out[key] = _bool(d, key)
    if "align" in d:
        if d["align"] not in ("centroid", "none"):
            raise InputError("calibration.align", f"must be 'centroid' or 'none', got {d['align']!r}")
        out["align"] = d["align"]
    if "cache_dir" not in out:
        out["cache_dir"] = base_dir / "nmcfx-cache"
    from nmcfx.paths import check_output_dir

    check_output_dir(out["cache_dir"], "calibration.cache_dir")
    return CalibrationSettings(**out)


def load_calibration_config(path) -> tuple[dict, CalibrationSettings, Path]:
    """Read CONFIG.toml: the run tables and a validated [calibration] table."""
    from nmcfx.config import check_top_level, read_toml

    path = Path(path)
    cfg = read_toml(path)
    cal = cfg.pop("calibration", None)
    extra = set(cfg) - set(RUN_TABLES)
    if extra:
        raise InputError("config", f"unknown top-level key(s) {sorted(extra)}; allowed: "
                                   f"{list(RUN_TABLES) + ['calibration']}")
    check_top_level(cfg)
    base = path.resolve().parent
    return cfg, settings_from_dict(cal, base), base


# ---------------------------------------------------------------------------- the measured data
@dataclass
class Target:
    """Measured data and where the model must be sampled."""

    times_s: np.ndarray  # (n,) relative to the current start
    measured: np.ndarray  # (n, m) contrast series (m = 1 for centre/trace)
    points_um: np.ndarray  # (p, 2) probe points in mesh coordinates
    theta0: float
    region_kind: str
    # pixel bookkeeping (analysis mode)
    crop_shape: tuple[int, int] | None = None
    needed: np.ndarray | None = None  # (h, w) bool: pixels probed
    region: np.ndarray | None = None  # (h, w) bool: pixels compared
    sigma_px: float | None = None
    average: bool = False
    info: dict = field(default_factory=dict)
    # noise (analysis mode: measured from the frames before the current)
    noise: NoiseModel | None = None
    i0: np.ndarray | None = None  # (h, w) reference intensity
    pixel_measured: np.ndarray | None = None  # (n, region pixels) contrast of the compared pixels
    trace_sigma: float | None = None  # region "trace": noise of one sample (second differences)
    warnings: list = field(default_factory=list)
    baseline: dict = field(default_factory=dict)


def _frame_selection(t: np.ndarray, settings: CalibrationSettings, protocol, field: str, what: str) -> np.ndarray:
    t_end = protocol.nominal_duration_s
    t_max = settings.t_max_min * 60.0 if settings.t_max_min is not None else math.inf
    sel = (t > 0) & (t <= t_max) & (t <= (t_end if t_end is not None else math.inf) + 1e-9)
    if sel.sum() < 3:
        raise InputError(field, f"only {int(sel.sum())} {what} after the current start within the protocol duration "
                                "and t_max_min; need at least 3")
    return sel


def build_target(settings: CalibrationSettings, particle, protocol) -> Target:
    """Load the measured data, choose frames and pixels, and map pixels to mesh points."""
    theta0 = protocol.initial_theta
    if settings.region == "trace":
        t, y = _read_trace(settings.trace_csv)
        sel = _frame_selection(t, settings, protocol, "calibration.trace_csv", "samples")
        pt = settings.point_um if settings.point_um is not None else tuple(particle.centroid[:2])
        ys = y[sel]
        d2 = ys[2:] - 2 * ys[1:-1] + ys[:-2]  # a smooth trace cancels; the noise remains (variance 6σ²)
        sig = 1.4826 * float(np.median(np.abs(d2 - np.median(d2)))) / math.sqrt(6.0) if d2.size >= 3 else 0.0
        return Target(t[sel], ys[:, None], np.array([pt], dtype=float), theta0, "trace",
                      info={"source": str(settings.trace_csv), "point_um": list(pt)}, trace_sigma=sig)
    z = _read_analysis(settings.analysis)
    contrast, mask = z["contrast"], z["mask"]
    px = float(z["pixel_size_um"])
    res = settings.resolution_um if settings.resolution_um is not None else float(z.get("resolution_um",
                                                                                      DEFAULT_RESOLUTION_UM))
    sigma_px = psf_sigma_um(res) / px
    t = np.asarray(z["times_rel_s"], dtype=float)
    sel = _frame_selection(t, settings, protocol, "calibration.analysis", "frames")
    h, w = mask.shape
    margin = settings.edge_margin_px if settings.edge_margin_px is not None else 2.0 * sigma_px
    cen = tuple(float(v) for v in z["centroid_rc"])
    origin = [int(v) for v in z["crop_origin_rc"]]
    kind = settings.region
    if kind == "center":
        region = (z["center_region"].astype(bool) if settings.center_radius_px is None
                  else disk_region((h, w), cen, settings.center_radius_px, within=mask))
    elif kind == "mask":
        region = eroded(mask, margin)
    elif kind == "line":
        from skimage.draw import line as draw_line

        (r0, c0), (r1, c1) = np.rint(z["line_rc"]).astype(int)
        rr, cc = draw_line(r0, c0, r1, c1)
        ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
        region = np.zeros((h, w), bool)
        region[rr[ok], cc[ok]] = True
        region &= eroded(mask, margin)
    else:  # pixels, given in full-frame coordinates
        region = np.zeros((h, w), bool)
        for k, (r, c) in enumerate(settings.pixels):
            rc, cc_ = r - origin[0], c - origin[1]
            if not (0 <= rc < h and 0 <= cc_ < w) or not mask[rc, cc_]:
                raise InputError(f"calibration.pixels[{k}]", f"pixel (row {r}, col {c}) is not on the particle mask")
            region[rc, cc_] = True
    if not region.any():
        raise InputError("calibration.region", f"region {kind!r} has no pixel (edge_margin_px = {margin:.3g} too large?)")
    bad = ~np.all(np.isfinite(contrast[sel][:, region]), axis=1)
    if bad.any():
        k = int(np.flatnonzero(sel)[np.flatnonzero(bad)[0]])
        raise InputError("calibration.analysis", f"contrast.npz: frame {k} (t = {t[k]:g} s) has non-finite contrast "
                                                 f"in the compared region; re-run `nmcfx analyze`")
    # probe every pixel any region of this analysis could need, so one simulation serves them all
    if settings.blur:
        from scipy import ndimage

        needed = ndimage.binary_dilation(mask, iterations=int(math.ceil(4.0 * sigma_px)) + 1)
    else:
        needed = mask.copy()
    needed |= region
    rr, cc = np.nonzero(needed)
    if settings.align == "centroid":
        xc, yc = particle.centroid[0], particle.centroid[1]
        pts = np.column_stack([xc + (cc - cen[1]) * px, yc + (rr - cen[0]) * px])
    else:
        pts = np.column_stack([(cc + origin[1]) * px, (rr + origin[0]) * px])
    pix = contrast[sel][:, region].astype(float)
    average = kind == "center"
    meas = pix.mean(axis=1, keepdims=True) if average else pix
    # noise, measured from the frames before the current
    i0 = np.asarray(z["reference_frame"], dtype=float)
    pre = t <= 1e-9
    n_avg, ref_frames = _reference_frames(z, contrast, pre)
    noise = measure_noise(contrast, i0, mask, pre, reference_average=n_avg)
    base = baseline_check(contrast, t, mask, i0, pre, ref_frames, noise)
    warnings = base.pop("warnings")
    return Target(t[sel], meas, pts, theta0, kind, (h, w), needed, region, sigma_px if settings.blur else None, average,
                  info={"source": str(settings.analysis), "pixel_size_um": px, "region_pixels": int(region.sum()),
                        "probe_points": int(len(pts)), "edge_margin_px": margin, "psf_sigma_px": sigma_px,
                        "resolution_um": res, "frames": int(sel.sum()), "align": settings.align,
                        "reference_frames": [int(k) for k in ref_frames]},
                  noise=noise, i0=i0, pixel_measured=pix, warnings=warnings, baseline=base)


def _reference_frames(z: dict, contrast: np.ndarray, pre: np.ndarray) -> tuple[int, list]:
    """How many frames were averaged into I₀ (stored by `nmcfx analyze`; for older analyses the
    trailing pre-current frames whose contrast sums to zero at every pixel)."""
    ref = int(z["reference_index"])
    if "reference_frames" in z:
        frames = [int(k) for k in np.atleast_1d(z["reference_frames"])]
        return len(frames), frames
    n_avg = 1
    for n in range(int(pre.sum()), 1, -1):
        first = ref - n + 1
        if first >= 0 and np.nanmax(np.abs(contrast[first:ref + 1].sum(axis=0))) < 1e-4 * n:
            n_avg = n
            break
    return n_avg, list(range(ref - n_avg + 1, ref + 1))


#: Keys `nmcfx calibrate` needs in contrast.npz.
ANALYSIS_KEYS = ("contrast", "mask", "center_region", "times_rel_s", "reference_index", "pixel_size_um",
                 "crop_origin_rc", "centroid_rc", "line_rc", "reference_frame")


def _read_analysis(path: Path) -> dict:
    f = "calibration.analysis"
    try:
        with np.load(Path(path) / "contrast.npz", allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as exc:  # noqa: BLE001 - numpy raises many types for corrupt files
        raise InputError(f, f"cannot read {path}/contrast.npz ({type(exc).__name__}: {exc}); re-run "
                            "`nmcfx analyze`") from None
    missing = [k for k in ANALYSIS_KEYS if k not in data]
    if missing:
        raise InputError(f, f"{path}/contrast.npz lacks {', '.join(missing)}; re-run `nmcfx analyze` to write it")
    c, mask = data["contrast"], data["mask"]
    if c.ndim != 3 or mask.ndim != 2 or c.shape[1:] != mask.shape or data["reference_frame"].shape != mask.shape \
            or data["center_region"].shape != mask.shape:
        raise InputError(f, f"{path}/contrast.npz: the contrast stack {c.shape}, mask {mask.shape} and reference "
                            f"{data['reference_frame'].shape} do not fit together; re-run `nmcfx analyze`")
    t = np.asarray(data["times_rel_s"], dtype=float).reshape(-1)
    if t.size != c.shape[0] or not np.all(np.isfinite(t)) or np.any(np.diff(t) <= 0):
        raise InputError(f, f"{path}/contrast.npz: times_rel_s must hold {c.shape[0]} increasing finite times")
    data["times_rel_s"] = t
    mask = mask.astype(bool)
    data["mask"] = mask
    if mask.sum() < 3:
        raise InputError(f, f"{path}/contrast.npz: the particle mask is empty ({int(mask.sum())} pixels)")
    inside = c[:, mask]
    bad = ~np.all(np.isfinite(inside), axis=1)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise InputError(f, f"{path}/contrast.npz: frame {k} (t = {t[k]:g} s) holds "
                            f"{int((~np.isfinite(inside[k])).sum())} non-finite contrast values inside the particle "
                            f"({int(bad.sum())} such frame(s)); re-run `nmcfx analyze`")
    i0 = np.asarray(data["reference_frame"], dtype=float)
    if not np.all(np.isfinite(i0[mask])) or np.any(i0[mask] <= 0):
        raise InputError(f, f"{path}/contrast.npz: the reference frame must be finite and > 0 on the particle")
    px = float(data["pixel_size_um"])
    if not math.isfinite(px) or px <= 0:
        raise InputError(f, f"{path}/contrast.npz: pixel_size_um must be > 0, got {px!r}")
    ref = int(data["reference_index"])
    if not 0 <= ref < c.shape[0]:
        raise InputError(f, f"{path}/contrast.npz: reference_index {ref} is not a frame index")
    return data


def _read_trace(path: Path) -> tuple[np.ndarray, np.ndarray]:
    t, y = [], []
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = [r for r in csv.reader(fh) if r and not r[0].lstrip().startswith("#")]
    except OSError as exc:
        raise InputError("calibration.trace_csv", f"cannot read {path}: {exc}") from None
    if not rows:
        raise InputError("calibration.trace_csv", f"{path} is empty")
    head = [h.strip() for h in rows[0]]
    if "time_s" in head and "contrast" in head:
        it, iy, body = head.index("time_s"), head.index("contrast"), rows[1:]
    else:
        it, iy, body = 0, 1, rows
    for n, r in enumerate(body, start=2):
        try:
            t.append(float(r[it]))
            y.append(float(r[iy]))
        except (ValueError, IndexError):
            raise InputError("calibration.trace_csv", f"{path}:{n}: expected numbers time_s, contrast") from None
    t, y = np.array(t), np.array(y)
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(y))) or np.any(np.diff(t) <= 0):
        raise InputError("calibration.trace_csv", "times must increase strictly and values be finite")
    return t, y


# ---------------------------------------------------------------------------- simulations
#: The sweep task of one S (run by :func:`nmcfx.sweep.case.execute_case` in a worker).
SCAN_TASK = "nmcfx.imaging.calibrate:scan_task"
ENTRY = "theta.npz"  # what scan_task leaves in its case directory: a cache entry


def scan_spec(cfg: dict, base_dir: Path, S: float):
    """The run specification of the simulation for one S (``title`` and ``[output]`` left out:
    they do not change θ, so a renamed config still finds its simulations)."""
    from nmcfx.spec import RunSpec

    cfg = copy.deepcopy(cfg)
    cfg.pop("output", None)
    cfg.pop("title", None)
    cfg.setdefault("material", {})["scaling_S"] = float(S)
    return RunSpec(cfg, base_dir, name=f"S={float(S):.10g}", validate=False)


def _task(cfg: dict, base_dir: Path, S: float, target: Target) -> dict:
    """One simulation to run: its spec, the task options (frame times, probe points) and its key."""
    from nmcfx import __version__

    spec = scan_spec(cfg, base_dir, S)
    options = {"times_s": np.asarray(target.times_s, dtype=float), "points_um": np.asarray(target.points_um, dtype=float),
               "cache_schema": CACHE_SCHEMA, "nmcfx_version": __version__}
    return {"S": float(S), "spec": spec, "options": options, "key": cache_key(spec, options)}


def cache_key(spec, options: dict) -> str:
    """The simulation's identity: the sweep case digest of its RunSpec (config + the bytes of
    every file it reads) with the task and its options (frame times and probe points by the
    SHA-256 of their bytes, cache schema, nmcfx version)."""
    from nmcfx.sweep.definition import case_digest

    arrays = {k: hashlib.sha256(np.ascontiguousarray(options[k], dtype=float).tobytes()).hexdigest()
              for k in ("times_s", "points_um")}
    return case_digest(spec.digest, SCAN_TASK, {**options, **arrays})


def simulate_tables(spec, times_s, points_um, comm, particle=None) -> dict:
    """One simulation of ``spec`` on ``comm``: θ at ``points_um`` and ``times_s``. ``particle``:
    the mesh of the spec's [geometry] on ``comm`` if already built (S does not change it)."""
    from nmcfx.materials import material_from_config
    from nmcfx.solver.protocol import protocol_from_dict
    from dataclasses import replace

    from nmcfx.solver.run import particle_degree
    from nmcfx.solver.simulation import SolverSettings
    from nmcfx.solver.surface import SurfaceSettings

    from .forward import sample_theta

    t0 = time.perf_counter()
    if particle is None:
        run = spec.prepare(comm)
        particle, material, protocol, settings = run.particle, run.material, run.protocol, run.solver
    else:  # the same material, protocol and element degree as prepare() gives, without meshing again
        cfg = spec.config
        material = material_from_config(cfg.get("material", {}), spec.base_dir)
        protocol = protocol_from_dict(cfg["protocol"], material.theta0)
        settings = SolverSettings.from_dict(cfg.get("solver"))
        settings = replace(settings, degree=particle_degree(cfg, settings, SurfaceSettings.from_dict(cfg.get("surface"))))
    theta, inside, _, sim = sample_theta(particle, material, protocol, np.asarray(times_s),
                                         np.asarray(points_um), settings=settings)
    # stored as float32 in the cache: round fresh results the same way, so a cached and a fresh
    # calibration take identical steps (θ to 6e-8, far below any measurable contrast)
    theta = theta.astype(np.float32).astype(float)
    return {"S": float(spec.get("material.scaling_S")), "theta": theta, "inside": inside,
            "wall_s": time.perf_counter() - t0, "steps": sim.solver.counters.steps}


def scan_task(spec, casedir, comm, times_s, points_um, cache_schema=CACHE_SCHEMA, nmcfx_version=None) -> dict:  # noqa: ARG001
    """The sweep task of one S: simulate, leave the result in ``casedir/theta.npz`` (a cache
    entry, moved into the cache by the calibration) and return its numbers."""
    res = simulate_tables(spec, times_s, points_um, comm)
    if comm.rank == 0:
        write_entry(Path(casedir) / ENTRY, res)
    return {"S": res["S"], "wall_s": res["wall_s"], "steps": res["steps"]}


def write_entry(path: Path, result: dict) -> None:
    """A simulation as a compressed ``.npz`` (θ as float32), written atomically."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        np.savez_compressed(fh, S=result["S"], theta=np.asarray(result["theta"], dtype=np.float32),
                            inside=result["inside"], steps=result["steps"])
    os.replace(tmp, path)


def read_entry(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {"S": float(z["S"]), "theta": z["theta"].astype(float), "inside": z["inside"], "wall_s": 0.0,
                "steps": int(z["steps"])}


class SimulationCache:
    """On-disk cache of simulations: ``<dir>/<key>.npz``, compressed (θ as float32), written
    atomically, pruned to ``max_mb`` (least recently used entries first; a hit refreshes an
    entry's time). The key is the simulation's sweep-case digest (:func:`cache_key`)."""

    def __init__(self, directory: Path | None, max_mb: float = 1000.0):
        self.dir = Path(directory) if directory is not None else None
        self.max_bytes = int(max_mb * 1e6)
        self.pruned = 0

    def get(self, task: dict) -> dict | None:
        if self.dir is None:
            return None
        p = self.dir / f"{task['key']}.npz"
        if not p.is_file():
            return None
        try:
            hit = read_entry(p) | {"cached": True}
            os.utime(p)
            return hit
        except Exception:  # noqa: BLE001 - a damaged cache entry is recomputed
            return None

    def put(self, task: dict, result: dict, entry: Path | None = None):
        """Store a result (``entry``: a file already written by :func:`write_entry`, moved in)."""
        if self.dir is None:
            return
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            p = self.dir / f"{task['key']}.npz"
            if entry is not None:
                os.replace(entry, p)
            else:
                write_entry(p, result)
        except OSError as exc:
            raise InputError("calibration.cache_dir", f"cannot write to {self.dir}: {exc.strerror or exc}") from None
        self.prune(keep=p)

    def size_bytes(self) -> int:
        if self.dir is None or not self.dir.is_dir():
            return 0
        return sum(f.stat().st_size for f in self.dir.glob("*.npz"))

    def prune(self, keep: Path | None = None):
        """Delete least recently used entries until the cache fits in ``max_bytes``."""
        if self.dir is None:
            return
        entries = []
        for f in self.dir.glob("*.npz"):
            try:
                st = f.stat()
            except OSError:
                continue
            entries.append((st.st_mtime, st.st_size, f))
        total = sum(e[1] for e in entries)
        for _, size, f in sorted(entries):
            if total <= self.max_bytes:
                break
            if keep is not None and f == keep:
                continue
            try:
                f.unlink()
                total -= size
                self.pruned += 1
            except OSError:
                pass


def run_on_local_workers(tasks: list[dict], workers: int, cache: SimulationCache) -> list[dict]:
    """Run simulations as cases of the sweep engine on ``workers`` persistent local worker
    processes (:class:`nmcfx.sweep.local.LocalPool`: one interpreter, DOLFINx import and form
    compilation per worker, not per simulation); each result goes into ``cache``. In task order."""
    import shutil
    import tempfile

    from nmcfx.sweep.local import LocalPool

    payloads = [{"index": i, "name": t["spec"].name, "spec": t["spec"].to_dict(), "digest": t["key"],
                 "task": SCAN_TASK, "task_options": {k: v.tolist() if isinstance(v, np.ndarray) else v
                                                     for k, v in t["options"].items()}}
                for i, t in enumerate(tasks)]
    scratch = Path(tempfile.mkdtemp(prefix="nmcfx-scan-"))
    try:
        with LocalPool(workers, scratch / "logs") as pool:
            outcomes = {o["index"]: o for o in pool.run(payloads, scratch)}
        results = []
        for i, t in enumerate(tasks):
            casedir = scratch / "cases" / payloads[i]["name"]
            if outcomes[i]["status"] != "done":
                logs = "".join(f"\n{p.name}:\n" + "\n".join(p.read_text(errors="replace").strip().splitlines()[-15:])
                               for p in sorted((scratch / "logs").glob("*.log")) if "worker process died"
                               in (outcomes[i]["reason"] or ""))
                raise InputError("calibration", f"simulation for S = {t['S']:g}: {outcomes[i]['reason']}{logs}")
            res = read_entry(casedir / ENTRY) | {"wall_s": outcomes[i]["numbers"].get("wall_s", outcomes[i]["wall_s"])}
            cache.put(t, res, entry=casedir / ENTRY)
            results.append(res)
        return results
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


class Evaluator:
    """Runs (or fetches from the cache) the simulation of each S; keeps every result."""

    def __init__(self, cfg, base_dir, target: Target, settings: CalibrationSettings, comm, particle=None):
        self.cfg, self.base_dir, self.target, self.settings, self.comm = cfg, base_dir, target, settings, comm
        self.particle = particle  # the mesh on ``comm`` (reused for every S run on the whole communicator)
        self._self_particle = particle if comm.size == 1 else None
        self.cache = SimulationCache(settings.cache_dir, settings.cache_max_mb)
        self.results: dict[float, dict] = {}
        self.simulated = 0
        self.cached = 0

    def _store(self, res: dict, phase: str):
        res = dict(res)
        res["phase"] = phase
        res.setdefault("cached", False)
        self.results[res["S"]] = res
        if res["cached"]:
            self.cached += 1
        else:
            self.simulated += 1

    def _simulate(self, task: dict, comm, particle=None) -> dict:
        return simulate_tables(task["spec"], task["options"]["times_s"], task["options"]["points_um"], comm,
                               particle=particle)

    def many(self, S_values, phase: str):
        """Evaluate several S at once: cache first, then sub-communicators (MPI), the sweep
        engine's local workers (``workers > 1``) or this process."""
        comm = self.comm
        todo = []
        for S in S_values:
            if S in self.results:
                continue
            task = _task(self.cfg, self.base_dir, S, self.target)
            hit = self.cache.get(task) if comm.rank == 0 else None
            hit = comm.bcast(hit, root=0)
            if hit is not None:
                self._store(hit, phase)
            else:
                todo.append(task)
        if not todo:
            return
        if comm.size > 1:
            groups = min(comm.size, len(todo))
            color = comm.rank % groups
            sub = comm.Split(color, comm.rank)
            mine = [self._simulate(t, sub) for i, t in enumerate(todo) if i % groups == color]
            if sub.rank == 0:
                for t, r in zip([t for i, t in enumerate(todo) if i % groups == color], mine):
                    self.cache.put(t, r)
            sub.Free()
            gathered = comm.allgather(mine if comm.rank < groups else [])
            results = [r for part in gathered for r in part]
        elif self.settings.workers > 1 and len(todo) > 1:
            nproc = min(self.settings.workers, len(todo), os.cpu_count() or 1)
            results = run_on_local_workers(todo, nproc, self.cache)
        else:
            from mpi4py import MPI

            results = []
            for t in todo:
                r = self._simulate(t, MPI.COMM_SELF, particle=self._self_particle)
                self.cache.put(t, r)
                results.append(r)
        for r in results:
            self._store(r, phase)

    def one(self, S: float, phase: str) -> dict:
        """Evaluate one S using the whole communicator."""
        if S not in self.results:
            task = _task(self.cfg, self.base_dir, S, self.target)
            hit = self.cache.get(task) if self.comm.rank == 0 else None
            hit = self.comm.bcast(hit, root=0)
            if hit is None:
                hit = self._simulate(task, self.comm, particle=self.particle)
                if self.comm.rank == 0:
                    self.cache.put(task, hit)
            self._store(hit, phase)
        return self.results[S]


# ---------------------------------------------------------------------------- model vs data
def model_series(target: Target, theta: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """X = model contrast per unit A at the compared pixels: (n_frames, m)."""
    dth = np.where(inside[None, :], target.theta0 - theta, 0.0)  # NaN rows stay NaN (frames not reached)
    if target.region_kind == "trace":
        return dth
    h, w = target.crop_shape
    n = dth.shape[0]
    maps = np.zeros((n, h, w))
    maps[:, target.needed] = dth
    ins = np.zeros((h, w), bool)
    ins[target.needed] = inside
    if target.sigma_px is not None:
        maps = blur_contrast(np.nan_to_num(maps, nan=0.0), ins, target.sigma_px)
        bad = ~np.all(np.isfinite(dth), axis=1)
        maps[bad] = np.nan
    else:
        maps = np.where(ins[None], maps, 0.0)
    X = maps[:, target.region]
    if np.any(~ins[target.region]):
        X[:, ~ins[target.region]] = 0.0  # compared pixels off the model particle: no contrast predicted
    return X.mean(axis=1, keepdims=True) if target.average else X


@dataclass
class Moments:
    """Means of M², MX, X², M, X over the compared data. ``offset``: the model is A X + B
    with B profiled out (B = m − A x), so the error uses the centred moments."""

    mm: float
    mx: float
    xx: float
    n: int
    m: float = 0.0
    x: float = 0.0
    offset: bool = False

    def central(self) -> tuple[float, float, float]:
        if not self.offset:
            return self.mm, self.mx, self.xx
        return self.mm - self.m * self.m, self.mx - self.m * self.x, self.xx - self.x * self.x

    def best_A(self) -> float:
        _, mx, xx = self.central()
        return mx / xx if xx > 0 else 0.0

    def best_B(self, A=None) -> float:
        """The offset minimising e at A (0 without ``offset``, Eq. 18)."""
        if not self.offset:
            return 0.0
        return self.m - (self.best_A() if A is None else A) * self.x

    def error(self, A) -> np.ndarray:
        """e at A, minimised over B when ``offset``."""
        A = np.asarray(A, dtype=float)
        mm, mx, xx = self.central()
        return np.sqrt(np.maximum(mm - 2 * A * mx + A * A * xx, 0.0))


def moments(M: np.ndarray, X: np.ndarray, frames=None, offset: bool = False) -> Moments:
    if frames is not None:
        M, X = M[frames], X[frames]
    ok = np.all(np.isfinite(X), axis=1)
    M, X = M[ok], X[ok]
    n = M.size
    if n == 0:
        return Moments(0.0, 0.0, 0.0, 0, offset=offset)
    return Moments(float((M * M).sum() / n), float((M * X).sum() / n), float((X * X).sum() / n), n,
                   float(M.sum() / n), float(X.sum() / n), offset)


# ---------------------------------------------------------------------------- the search
@dataclass
class CalibrationResult:
    S: float
    A: float
    e_min: float
    evaluations: list  # [{S, A, B, e, phase, cached, wall_s, moments}]
    uncertainty: dict  # intervals from noise resampling (module docstring)
    target: Target
    X_best: np.ndarray
    settings: CalibrationSettings
    at_edge: bool
    counts: dict
    notes: list = field(default_factory=list)
    B: float = 0.0  # contrast offset (fit_offset; 0 for Eq. 18)
    frames_used: np.ndarray | None = None  # (n,) bool: frames every simulated S reaches (compared for every S)
    profile_curve: tuple | None = None  # (S, e) of the dense profile
    resampled_S: np.ndarray | None = None
    warnings: list = field(default_factory=list)

    @property
    def S_interval(self) -> tuple:
        return tuple(self.uncertainty.get("S_interval_68", (None, None)))

    def to_dict(self) -> dict:
        u = self.uncertainty
        return {
            "S": self.S, "A": self.A, "B": self.B, "fit_offset": self.settings.fit_offset, "e_min": self.e_min,
            "S_interval_68": u.get("S_interval_68"), "S_interval_95": u.get("S_interval_95"),
            "S_sigma_rel": u.get("S_sigma_rel"),
            "A_interval_68": u.get("A_interval_68"), "A_interval_95": u.get("A_interval_95"),
            "B_interval_68": u.get("B_interval_68"),
            "uncertainty": u,
            "at_edge_of_S_range": self.at_edge,
            "frames": int(len(self.target.times_s)),
            "frames_compared": int(len(self.target.times_s) if self.frames_used is None else self.frames_used.sum()),
            "series": int(self.target.measured.shape[1]),
            "region": self.target.region_kind,
            "target": self.target.info,
            "theta0": self.target.theta0,
            "noise": self.target.noise.to_dict() if self.target.noise is not None else None,
            "baseline": self.target.baseline,
            "simulations": self.counts,
            "evaluations": self.evaluations,
            "settings": self.settings.to_dict(),
            "notes": self.notes,
            "warnings": self.warnings,
        }


def calibrate(cfg: dict, base_dir: Path, settings: CalibrationSettings, *, comm=None, log=None) -> CalibrationResult:
    """Find (S, A) minimising e(S, A) (module docstring) and its uncertainty. Collective over ``comm``."""
    from mpi4py import MPI
    from scipy.optimize import minimize_scalar

    from nmcfx.spec import RunSpec

    comm = comm if comm is not None else MPI.COMM_WORLD
    say = log if (log is not None and comm.rank == 0) else (lambda *a: None)
    probe = RunSpec({k: v for k, v in cfg.items() if k != "output"}, base_dir, validate=False)
    run = probe.prepare(comm)  # validates every table, builds the mesh once
    target = build_target(settings, run.particle, run.protocol)
    M = target.measured
    ev = Evaluator(cfg, base_dir, target, settings, comm, particle=run.particle)
    lo, hi = settings.S_range
    grid = np.geomspace(lo, hi, settings.S_grid)
    grid = [float(f"{s:.10g}") for s in grid]
    say(f"  coarse grid: {len(grid)} values of S in [{lo:g}, {hi:g}]")
    ev.many(grid, "grid")
    cache_X: dict[float, np.ndarray] = {}

    def X_of(S):
        if S not in cache_X:
            r = ev.results[S]
            cache_X[S] = model_series(target, r["theta"], r["inside"])
        return cache_X[S]

    def common_frames():
        """Frames every simulated S reaches: e(S) of every S compares the same frames."""
        ok = np.ones(len(target.times_s), bool)
        for S in ev.results:
            ok &= np.all(np.isfinite(X_of(S)), axis=1)
        return ok

    off = settings.fit_offset

    def e_of(S):
        mo = moments(M, X_of(S), common_frames(), offset=off)
        return float(mo.error(mo.best_A())) if mo.n else math.inf

    errs = [e_of(S) for S in grid]
    j = int(np.argmin(errs))
    notes = []
    if settings.refine:
        a = grid[max(j - 1, 0)]
        b = grid[min(j + 1, len(grid) - 1)]
        xatol = settings.S_tol * grid[j]

        def f(S):
            S = float(f"{S:.10g}")
            ev.one(S, "refine")
            return e_of(S)

        res = minimize_scalar(f, bounds=(a, b), method="bounded", options={"xatol": xatol})
        say(f"  Brent refinement in [{a:.4g}, {b:.4g}]: {res.nfev} evaluations")
    ok = common_frames()
    _check_frames(ok, target, ev, X_of)
    if not ok.all():
        t_cut = target.times_s[~ok]
        short = sorted(S for S in ev.results if not np.all(np.isfinite(X_of(S))))
        notes.append(f"{int((~ok).sum())} frame(s) from t = {t_cut.min() / 60:.4g} min on lie beyond the end of the "
                     f"simulated protocol for S = {', '.join(f'{v:.4g}' for v in short)} (a stop condition ended it "
                     f"earlier); e(S) of every S compares the same {int(ok.sum())} frames")
    evaluated = sorted(ev.results)
    table = []
    for S in evaluated:
        mo = moments(M, X_of(S), ok, offset=off)
        A = mo.best_A()
        table.append({"S": S, "A": A, "B": mo.best_B(A), "e": float(mo.error(A)), "mm": mo.mm, "mx": mo.mx,
                      "xx": mo.xx, "m": mo.m, "x": mo.x,
                      "phase": ev.results[S]["phase"],
                      "cached": bool(ev.results[S].get("cached", False)),
                      "wall_s": float(ev.results[S].get("wall_s", 0.0))})
    best = min(table, key=lambda r: r["e"])
    S_best, A_best, B_best, e_best = best["S"], best["A"], best["B"], best["e"]
    if not all(math.isfinite(v) for v in (S_best, A_best, B_best, e_best)):
        raise InputError("calibration", f"the error e(S, A) is not finite (S = {S_best}, A = {A_best}); check the "
                                        "measured contrast and the protocol")
    at_edge = bool(S_best <= lo * (1 + 2 * settings.S_tol) or S_best >= hi * (1 - 2 * settings.S_tol))
    warnings = list(target.warnings)
    if at_edge:
        why = (" — the frames before the current show a reference offset or a drifting baseline, which Eq. 18 turns "
               "into an error of S: set fit_offset = true" if target.baseline.get("reference_offset_sigma") is not None
               and any("reference I0" in w or "baseline drifts" in w for w in warnings) and not off else "")
        notes.append(f"the minimum is at the edge of S_range [{lo:g}, {hi:g}]: widen the range{why}")
    X_best = X_of(S_best)
    unc, curve, resampled = _uncertainty(target, M, ok, {S: X_of(S) for S in evaluated}, settings, S_best, A_best,
                                         B_best, e_best, at_edge, notes)
    counts = {"simulated": ev.simulated, "from_cache": ev.cached, "evaluated": len(evaluated),
              "cache_pruned": ev.cache.pruned}
    return CalibrationResult(S_best, A_best, e_best, table, unc, target, X_best, settings, at_edge, counts, notes,
                             B=B_best, frames_used=ok, profile_curve=curve, resampled_S=resampled, warnings=warnings)


def _check_frames(ok, target, ev, X_of):
    if ok.sum() >= 3:
        return
    ends = {S: float(target.times_s[np.all(np.isfinite(X_of(S)), axis=1)].max(initial=0.0)) for S in ev.results}
    worst = min(ends, key=ends.get)
    raise InputError("calibration", f"only {int(ok.sum())} frame(s) are reached by every simulated S: the protocol "
                                    f"ends at t = {ends[worst] / 60:.4g} min for S = {worst:.4g} (a stop condition?); "
                                    "narrow S_range, relax the stop condition or set t_max_min")


def _sampler(target: Target, ok: np.ndarray, *, reference: bool, frames: bool):
    """Noise perturbations of the compared data (frames ``ok``) drawn from the measured noise."""
    if target.region_kind == "trace":
        sig = float(target.trace_sigma or 0.0)
        M = target.measured[ok]

        def draw(rng, k):
            d = np.zeros((k,) + M.shape)
            if frames:
                d += sig * rng.standard_normal((k,) + M.shape)
            if reference:  # the reference of a trace is taken as one sample of the same noise
                d -= (1.0 + M)[None] * sig * rng.standard_normal((k, 1, 1))
            return d

        return draw
    nm, c_pix = target.noise, target.pixel_measured[ok]

    def draw(rng, k):
        d = nm.sample(rng, target.i0, target.region, c_pix, k, reference=reference, frames=frames)
        return d.mean(axis=2, keepdims=True) if target.average else d

    return draw


def _uncertainty(target, M, ok, X_by_S, settings, S_best, A_best, B_best, e_best, at_edge, notes):
    """Intervals of S, A (and B) from resampling the measured noise on the dense profile."""
    from .uncertainty import Profile, basic_interval, resample, spread

    Mo = M[ok]
    S_nodes = sorted(X_by_S)
    prof = Profile.build(S_nodes, [X_by_S[S][ok] for S in S_nodes], settings.fit_offset)
    curve = prof.curve(Mo.ravel())
    unc: dict = {"method": "noise resampling re-fitted on the dense profile (imaging/uncertainty.py)",
                 "resamples": settings.resamples}
    if target.noise is not None:
        unc["noise_source"] = target.noise.source
    no_noise = (target.region_kind == "trace" and not target.trace_sigma) or (
        target.noise is not None and target.noise.a == 0 and target.noise.b == 0)
    if settings.resamples < 10 or no_noise:
        if no_noise:
            notes.append("no noise could be measured (too few frames): no interval")
        return unc, curve, None
    n = settings.resamples
    runs = {}
    for name, ref, fr in (("total", True, True), ("reference", True, False), ("frames", False, True)):
        runs[name] = resample(prof, Mo, _sampler(target, ok, reference=ref, frames=fr), n if name == "total"
                              else max(n // 3, 10), settings.seed)
    tot = runs["total"]
    S0, A0, B0 = tot["S0"], tot["A0"], tot["B0"]
    lo_edge = np.mean(tot["S"] <= prof.S_dense[0] * (1 + 1e-9))
    hi_edge = np.mean(tot["S"] >= prof.S_dense[-1] * (1 - 1e-9))
    open_lo95, open_hi95 = bool(hi_edge > 0.025), bool(lo_edge > 0.025)  # basic interval: sides swap
    open_lo68, open_hi68 = bool(hi_edge > 0.16), bool(lo_edge > 0.16)
    unc.update({
        "S_interval_68": list(basic_interval(S_best, S0, tot["S"], 0.68, open_low=open_lo68, open_high=open_hi68)),
        "S_interval_95": list(basic_interval(S_best, S0, tot["S"], 0.95, open_low=open_lo95, open_high=open_hi95)),
        "S_sigma_rel": spread(tot["S"], S0),
        "S_sigma_rel_reference": spread(runs["reference"]["S"], S0),
        "S_sigma_rel_frames": spread(runs["frames"]["S"], S0),
        "A_interval_68": list(basic_interval(A_best, A0, tot["A"], 0.68, log=False)),
        "A_interval_95": list(basic_interval(A_best, A0, tot["A"], 0.95, log=False)),
        "A_sigma": spread(tot["A"], A0, log=False),
        "S_profile_fit": S0,
        "resamples_at_edge": int(tot["edges"]),
    })
    if settings.fit_offset:
        unc["B_interval_68"] = list(basic_interval(B_best, B0, tot["B"], 0.68, log=False))
        unc["B_interval_95"] = list(basic_interval(B_best, B0, tot["B"], 0.95, log=False))
    # how far the residual exceeds the measured frame noise (1: the model explains the data)
    fr = _sampler(target, ok, reference=False, frames=True)(np.random.default_rng(settings.seed + 1), 8)
    noise_var = float(np.mean(fr**2))
    if noise_var > 0:
        unc["residual_to_noise"] = float(e_best**2 / noise_var)
        if unc["residual_to_noise"] > 3.0:
            notes.append(f"the fit residual is {math.sqrt(unc['residual_to_noise']):.1f}× the measured frame noise: "
                         "the model misses part of the data (shape, PSF, D(θ), drift); the interval covers noise only")
    if lo_edge + hi_edge > 0.025:
        notes.append(f"{(lo_edge + hi_edge):.0%} of the noise resamples put S at the edge of the simulated range: "
                     "the interval is open there; widen S_range")
    return unc, curve, tot["S"]


# ---------------------------------------------------------------------------- outputs
def write_calibration(result: CalibrationResult, outdir, *, config: dict, command=None) -> list[str]:
    from nmcfx import __version__

    from . import figures
    from .analyze import _csv_rows, write_json
    from nmcfx.paths import check_output_dir

    outdir = check_output_dir(outdir, "--output")
    outdir.mkdir(parents=True, exist_ok=True)
    r = result
    t = r.target
    u = r.uncertainty
    files = []
    _csv_rows(outdir / "e_profile.csv", ["S", "A_best", "e_min", "phase", "cached", "B_best"],
              [[row["S"], row["A"], row["e"], row["phase"], int(row["cached"]), row["B"]] for row in r.evaluations])
    files.append("e_profile.csv")
    meas_mean = t.measured.mean(axis=1)
    pred = r.A * r.X_best + r.B
    pred_mean = pred.mean(axis=1)
    used = r.frames_used if r.frames_used is not None else np.ones(len(t.times_s), bool)
    _csv_rows(outdir / "fit.csv", ["time_since_current_s", "measured_contrast", "predicted_contrast",
                                   "model_theta0_minus_theta", "compared"],
              [[float(t.times_s[k]), float(meas_mean[k]), float(pred_mean[k]), float(r.X_best[k].mean()), int(used[k])]
               for k in range(len(t.times_s))])
    files.append("fit.csv")
    if r.resampled_S is not None:
        _csv_rows(outdir / "resamples.csv", ["S"], [[float(v)] for v in r.resampled_S])
        files.append("resamples.csv")
    S_vals = np.array([row["S"] for row in r.evaluations])
    A_vals = np.array([row["A"] for row in r.evaluations])
    A_lo = max(0.0, 0.6 * min(A_vals.min(), r.A))
    A_hi = 1.4 * max(A_vals.max(), r.A)
    A_grid = np.linspace(A_lo, A_hi, r.settings.A_points)
    # e² = mean(M²) − 2 A mean(MX) + A² mean(X²): exact on any A grid from the stored moments
    # (fit_offset: centred moments, i.e. e minimised over B at every (S, A))
    off = r.settings.fit_offset
    E = np.array([Moments(row["mm"], row["mx"], row["xx"], 1, row["m"], row["x"], off).error(A_grid)
                  for row in r.evaluations])
    np.savez_compressed(outdir / "error_map.npz", S=S_vals, A=A_grid, e=E)
    files.append("error_map.npz")
    s95, a95 = u.get("S_interval_95"), u.get("A_interval_95")
    figures.error_map(S_vals, A_grid, E, (r.S, r.A), outdir / "error_map.png",
                      title="calibration error min over B of e(S, A, B)" if off else "",
                      S_interval=s95 if s95 and None not in s95 else None,
                      A_interval=a95 if a95 and None not in a95 else None)
    lab = {"center": "(particle centre)", "trace": "(trace)", "mask": "(mask mean)", "line": "(line-cut mean)",
           "pixels": "(pixel mean)"}[t.region_kind]
    b_txt = f", B = {r.B:.3g}" if off else ""
    figures.fit_overlay(t.times_s, meas_mean, pred_mean, outdir / "fit_overlay.png", label=lab,
                        title=f"S = {r.S:.4g}{_pm(u)}, A = {r.A:.4g}{b_txt}, e = {r.e_min:.3g}",
                        model_label="model A(θ₀ − θ) + B" if off else "model A(θ₀ − θ)")
    figures.error_profile(S_vals, [row["e"] for row in r.evaluations], r.S, u.get("S_interval_68"),
                          outdir / "error_profile.png", dense=r.profile_curve, interval95=u.get("S_interval_95"),
                          resampled_S=r.resampled_S)
    files += ["error_map.png", "fit_overlay.png", "error_profile.png"]
    if t.region is not None and not t.average:
        figures.model_vs_measured_maps(t.measured, pred, t.region, t.times_s, outdir / "model_vs_measured.png",
                                       title=f"region {t.region_kind}: measured vs A(θ₀ − θ){' + B' if off else ''} "
                                             f"at S = {r.S:.4g}, A = {r.A:.4g}{b_txt}")
        files.append("model_vs_measured.png")
    summary = r.to_dict()
    write_json(outdir / "calibration.json", summary)
    write_json(outdir / "metadata.json", {"nmcfx_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                          "command": command if command is not None else sys.argv, "config": config})
    return files + ["calibration.json", "metadata.json"]


def _pm(u: dict) -> str:
    s = u.get("S_sigma_rel")
    return f" (± {s * 100:.2g} %)" if s is not None else ""


def _iv(iv, fmt=".4g") -> str:
    if not iv:
        return "—"
    lo, hi = iv
    return f"[{'open' if lo is None else format(lo, fmt)}, {'open' if hi is None else format(hi, fmt)}]"


def format_calibration(r: CalibrationResult) -> str:
    u = r.uncertainty
    lines = [f"  best S      {r.S:.4g}" + (f"   68 % {_iv(u.get('S_interval_68'))}, 95 % {_iv(u.get('S_interval_95'))}"
                                           if "S_interval_68" in u else "   (no interval)")]
    if "S_sigma_rel" in u:
        lines.append(f"  S error     ± {u['S_sigma_rel'] * 100:.2g} % (1σ; from the reference I0 "
                     f"± {u['S_sigma_rel_reference'] * 100:.2g} %, from the frames "
                     f"± {u['S_sigma_rel_frames'] * 100:.2g} %; {u['resamples']} noise resamples, noise from "
                     f"{u.get('noise_source', 'the trace')})")
    a68 = f"   68 % {_iv(u.get('A_interval_68'))}" if "A_interval_68" in u else ""
    lines.append(f"  best A      {r.A:.4g}{a68}")
    if r.settings.fit_offset:
        b68 = f"   68 % {_iv(u.get('B_interval_68'), '.3g')}" if "B_interval_68" in u else ""
        lines.append(f"  offset B    {r.B:.4g}{b68}   (fit_offset: Ī = A(θ₀ − θ) + B)")
    n_used = int(r.frames_used.sum()) if r.frames_used is not None else len(r.target.times_s)
    lines.append(f"  e(S, A)     {r.e_min:.4g}   over {n_used} frames × {r.target.measured.shape[1]} series "
                 f"(region {r.target.region_kind})")
    c = r.counts
    lines.append(f"  simulations {c['simulated']} run, {c['from_cache']} from the cache")
    lines += [f"  note        {n}" for n in r.notes]
    lines += [f"  warning     {w}" for w in r.warnings]
    return "\n".join(lines)


def run_calibration(config_path, outdir=None, *, comm=None, log=None, command=None) -> CalibrationResult:
    """Read CONFIG.toml, calibrate, and write the output directory (rank 0)."""
    from mpi4py import MPI

    from nmcfx.paths import check_output_dir

    comm = comm if comm is not None else MPI.COMM_WORLD
    cfg, settings, base = load_calibration_config(config_path)
    outdir = Path(outdir) if outdir is not None else Path("runs") / (Path(config_path).stem + "-calibration")
    from nmcfx.parallel import run_on_root

    run_on_root(comm, check_output_dir, outdir, "--output")  # before any simulation: a bad path costs nothing
    result = calibrate(cfg, base, settings, comm=comm, log=log)
    if comm.rank == 0:
        write_calibration(result, outdir, config=cfg | {"calibration": settings.to_dict()}, command=command)
    comm.Barrier()
    return result
