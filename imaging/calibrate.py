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

    center  pixels within center_radius_px of the particle centroid, averaged (Eq. 18)
    mask    every mask pixel farther than edge_margin_px from the edge (space-time)
    line    the pixels of the analysis' line cut inside that eroded mask (space-time)
    pixels  a list of [row, col] of the analysed frames, each its own series
    trace   a CSV trace (time_s, contrast) compared with θ at one point (default: centroid)

Offset (``fit_offset = true``, default false): the general linear model of Eqs. 16–17,
(I − I₀)/I₀ = A(1 − θ) + B, is reduced in the paper to B = −A(1 − θ₀) by assuming I = I₀
at θ₀, i.e. Ī = A(θ₀ − θ). Noise in the reference frame I₀ breaks that assumption: every
contrast frame inherits the same error, a constant offset of the measured contrast that
biases S. With ``fit_offset`` the model is Ī = A(θ₀ − θ) + B with one B for the whole
region (all frames and all compared pixels; one per pixel would absorb the spatial
signal of the space-time regions), (A, B) in closed form for each S (linear least
squares: A = cov(M, X)/var(X), B = mean(M) − A mean(X)).

Uncertainty: (i) profile: the S interval where the profiled error satisfies
M (e(S)² − e_min²) / e_min² ≤ 1 with M the number of frames (a χ² rule with σ estimated
from the residual; frames, not pixels, are counted because pixels of one frame are
strongly correlated); (ii) a moving-block bootstrap over frames, re-minimising e on the
simulations already run (parabola through the three best evaluated S).
"""

from __future__ import annotations

import concurrent.futures as cf
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

from .contrast import disk_region, eroded
from .forward import DEFAULT_RESOLUTION_UM, blur_contrast, psf_sigma_um

CACHE_SCHEMA = 1
REGIONS = ("center", "mask", "line", "pixels", "trace")
RUN_TABLES = ("title", "geometry", "material", "protocol", "solver", "output")


# ---------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class CalibrationSettings:
    analysis: Path | None = None  # directory written by `nmcfx analyze`
    trace_csv: Path | None = None  # or a measured trace (time_s, contrast)
    region: str = "center"
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
    bootstrap: int = 200
    seed: int = 0
    fit_offset: bool = False  # fit Ī = A(θ₀ − θ) + B (one B for the region) instead of Eq. 18's B = 0

    KEYS = ("analysis", "trace_csv", "region", "center_radius_px", "pixels", "point_um", "edge_margin_px", "S_range",
            "S_grid", "S_tol", "refine", "A_points", "workers", "cache_dir", "blur", "resolution_um", "align",
            "t_max_min", "bootstrap", "seed", "fit_offset")

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
    region = d.get("region", "trace" if "trace_csv" in d else "center")
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
    if "bootstrap" in d:
        out["bootstrap"] = _num(d, "bootstrap", 0, 100000, integer=True)
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


def build_target(settings: CalibrationSettings, particle, protocol) -> Target:
    """Load the measured data, choose frames and pixels, and map pixels to mesh points."""
    theta0 = protocol.initial_theta
    t_end = protocol.nominal_duration_s
    t_max = settings.t_max_min * 60.0 if settings.t_max_min is not None else math.inf
    if settings.region == "trace":
        t, y = _read_trace(settings.trace_csv)
        sel = (t > 0) & (t <= t_max) & (t <= (t_end if t_end is not None else math.inf) + 1e-9)
        if sel.sum() < 3:
            raise InputError("calibration.trace_csv", f"only {int(sel.sum())} samples after t = 0 within the protocol "
                                                      "and t_max_min; need at least 3")
        pt = settings.point_um if settings.point_um is not None else tuple(particle.centroid[:2])
        return Target(t[sel], y[sel, None], np.array([pt], dtype=float), theta0, "trace",
                      info={"source": str(settings.trace_csv), "point_um": list(pt)})
    z = _read_analysis(settings.analysis)
    contrast, mask = z["contrast"], z["mask"]
    px = float(z["pixel_size_um"])
    res = settings.resolution_um if settings.resolution_um is not None else float(z.get("resolution_um",
                                                                                      DEFAULT_RESOLUTION_UM))
    sigma_px = psf_sigma_um(res) / px
    t = np.asarray(z["times_rel_s"], dtype=float)
    sel = (t > 0) & (t <= t_max) & (t <= (t_end if t_end is not None else math.inf) + 1e-9)
    if sel.sum() < 3:
        raise InputError("calibration.analysis", f"only {int(sel.sum())} frames after the reference within the "
                                                 "protocol duration and t_max_min; need at least 3")
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
    if settings.blur:
        from scipy import ndimage

        needed = ndimage.binary_dilation(region, iterations=int(math.ceil(4.0 * sigma_px)) + 1)
    else:
        needed = region.copy()
    rr, cc = np.nonzero(needed)
    if settings.align == "centroid":
        xc, yc = particle.centroid[0], particle.centroid[1]
        pts = np.column_stack([xc + (cc - cen[1]) * px, yc + (rr - cen[0]) * px])
    else:
        pts = np.column_stack([(cc + origin[1]) * px, (rr + origin[0]) * px])
    meas = contrast[sel][:, region].astype(float)
    average = kind == "center"
    if average:
        meas = meas.mean(axis=1, keepdims=True)
    return Target(t[sel], meas, pts, theta0, kind, (h, w), needed, region, sigma_px if settings.blur else None, average,
                  info={"source": str(settings.analysis), "pixel_size_um": px, "region_pixels": int(region.sum()),
                        "probe_points": int(len(pts)), "edge_margin_px": margin, "psf_sigma_px": sigma_px,
                        "resolution_um": res, "frames": int(sel.sum()), "align": settings.align})


def _read_analysis(path: Path) -> dict:
    try:
        with np.load(Path(path) / "contrast.npz", allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as exc:  # noqa: BLE001
        raise InputError("calibration.analysis", f"cannot read {path}/contrast.npz ({exc})") from None


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
def _task(cfg: dict, base_dir: Path, S: float, target: Target) -> dict:
    return {"cfg": cfg, "base_dir": str(base_dir), "S": float(S), "times_s": target.times_s.tolist(),
            "points_um": target.points_um}


def simulate_tables(task: dict, comm, particle=None) -> dict:
    """One simulation for one S on ``comm``: θ at the task's points and times. ``particle``:
    the mesh of the task's [geometry] on ``comm`` if already built (S does not change it)."""
    from nmcfx.materials import material_from_config
    from nmcfx.solver.protocol import protocol_from_dict
    from nmcfx.solver.run import prepare
    from nmcfx.solver.simulation import SolverSettings

    from .forward import sample_theta

    cfg = copy.deepcopy(task["cfg"])
    cfg.setdefault("material", {})["scaling_S"] = task["S"]
    cfg.pop("output", None)
    base = Path(task["base_dir"])
    t0 = time.perf_counter()
    if particle is None:
        run = prepare(cfg, base_dir=base, comm=comm)
        particle, material, protocol, settings = run.particle, run.material, run.protocol, run.solver
    else:
        material = material_from_config(cfg.get("material", {}), base)
        protocol = protocol_from_dict(cfg["protocol"], material.theta0)
        settings = SolverSettings.from_dict(cfg.get("solver"))
    theta, inside, _, sim = sample_theta(particle, material, protocol, np.asarray(task["times_s"]),
                                         np.asarray(task["points_um"]), settings=settings)
    return {"S": task["S"], "theta": theta, "inside": inside, "wall_s": time.perf_counter() - t0,
            "steps": sim.solver.counters.steps}


def cache_key(task: dict) -> str:
    from nmcfx import __version__

    cfg = copy.deepcopy(task["cfg"])
    cfg.pop("output", None)
    cfg.pop("title", None)
    cfg.get("material", {}).pop("scaling_S", None)
    files = {}
    for table, key in (("geometry", "contour_csv"), ("material", "dli_csv"), ("material", "ocv_csv")):
        v = (cfg.get(table) or {}).get(key)
        cs = ((cfg.get("geometry") or {}).get("cross_section") or {}).get(key) if table == "geometry" else None
        for item in (v, cs):
            if isinstance(item, str):
                p = Path(item) if Path(item).is_absolute() else Path(task["base_dir"]) / item
                files[item] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "missing"
    pts = np.round(np.asarray(task["points_um"], dtype=float), 9)
    blob = json.dumps({"schema": CACHE_SCHEMA, "version": __version__, "cfg": cfg, "files": files,
                       "S": float(f"{task['S']:.12g}"), "times": [round(t, 9) for t in task["times_s"]],
                       "points": hashlib.sha256(pts.tobytes()).hexdigest()}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class SimulationCache:
    """On-disk cache of simulations: ``<dir>/<key>.npz`` (written atomically)."""

    def __init__(self, directory: Path | None):
        self.dir = Path(directory) if directory is not None else None

    def get(self, task: dict) -> dict | None:
        if self.dir is None:
            return None
        p = self.dir / f"{cache_key(task)}.npz"
        if not p.is_file():
            return None
        try:
            with np.load(p, allow_pickle=False) as z:
                return {"S": float(z["S"]), "theta": z["theta"], "inside": z["inside"], "wall_s": 0.0,
                        "steps": int(z["steps"]), "cached": True}
        except Exception:  # noqa: BLE001 - a damaged cache entry is recomputed
            return None

    def put(self, task: dict, result: dict):
        if self.dir is None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        p = self.dir / f"{cache_key(task)}.npz"
        tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as fh:
            np.savez(fh, S=result["S"], theta=result["theta"], inside=result["inside"], steps=result["steps"])
        os.replace(tmp, p)


def run_in_processes(tasks: list[dict], workers: int) -> list[dict]:
    """Run simulations in up to ``workers`` fresh serial processes (``python -m
    nmcfx.imaging._worker``); results in task order."""
    import pickle
    import subprocess
    import tempfile

    from ._worker import clean_environment

    env = clean_environment()
    env.setdefault("OMP_NUM_THREADS", "1")

    def one(i_task):
        i, task = i_task
        with tempfile.TemporaryDirectory(prefix="nmcfx-cal-") as tmp:
            tp, rp = os.path.join(tmp, "task.pkl"), os.path.join(tmp, "result.pkl")
            with open(tp, "wb") as fh:
                pickle.dump(task, fh, protocol=pickle.HIGHEST_PROTOCOL)
            proc = subprocess.run([sys.executable, "-m", "nmcfx.imaging._worker", tp, rp], env=env,
                                  capture_output=True, text=True)
            if proc.returncode != 0 or not os.path.exists(rp):
                tail = "\n".join((proc.stderr or "").strip().splitlines()[-15:])
                raise RuntimeError(f"calibration worker for S = {task['S']:g} failed (exit {proc.returncode}):\n{tail}")
            with open(rp, "rb") as fh:
                res = pickle.load(fh)
        if "error" in res:
            raise InputError("calibration", f"simulation for S = {task['S']:g}: {res['error']}")
        return res

    with cf.ThreadPoolExecutor(max_workers=max(1, min(workers, len(tasks)))) as pool:
        return list(pool.map(one, enumerate(tasks)))


class Evaluator:
    """Runs (or fetches from the cache) the simulation of each S; keeps every result."""

    def __init__(self, cfg, base_dir, target: Target, settings: CalibrationSettings, comm, particle=None):
        self.cfg, self.base_dir, self.target, self.settings, self.comm = cfg, base_dir, target, settings, comm
        self.particle = particle  # the mesh on ``comm`` (reused for every S run on the whole communicator)
        self._self_particle = particle if comm.size == 1 else None
        self.cache = SimulationCache(settings.cache_dir)
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

    def many(self, S_values, phase: str):
        """Evaluate several S at once: cache first, then sub-communicators (MPI) or a process pool."""
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
            mine = [simulate_tables(t, sub) for i, t in enumerate(todo) if i % groups == color]
            if sub.rank == 0:
                for t, r in zip([t for i, t in enumerate(todo) if i % groups == color], mine):
                    self.cache.put(t, r)
            sub.Free()
            gathered = comm.allgather(mine if comm.rank < groups else [])
            results = [r for part in gathered for r in part]
        elif self.settings.workers > 1 and len(todo) > 1:
            nproc = min(self.settings.workers, len(todo), os.cpu_count() or 1)
            results = run_in_processes(todo, nproc)
            for t, r in zip(todo, results):
                self.cache.put(t, r)
        else:
            from mpi4py import MPI

            results = []
            for t in todo:
                r = simulate_tables(t, MPI.COMM_SELF, particle=self._self_particle)
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
                hit = simulate_tables(task, self.comm, particle=self.particle)
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
    evaluations: list  # [{S, A, e, phase, cached, wall_s}]
    S_profile_interval: tuple
    A_stderr: float
    bootstrap: dict | None
    target: Target
    X_best: np.ndarray
    settings: CalibrationSettings
    at_edge: bool
    counts: dict
    notes: list = field(default_factory=list)
    B: float = 0.0  # contrast offset (fit_offset; 0 for Eq. 18)

    def to_dict(self) -> dict:
        return {
            "S": self.S, "A": self.A, "B": self.B, "fit_offset": self.settings.fit_offset, "e_min": self.e_min,
            "S_profile_interval": list(self.S_profile_interval),
            "A_stderr": self.A_stderr,
            "bootstrap": self.bootstrap,
            "at_edge_of_S_range": self.at_edge,
            "frames": int(len(self.target.times_s)),
            "series": int(self.target.measured.shape[1]),
            "region": self.target.region_kind,
            "target": self.target.info,
            "theta0": self.target.theta0,
            "simulations": self.counts,
            "evaluations": self.evaluations,
            "settings": self.settings.to_dict(),
            "notes": self.notes,
        }


def calibrate(cfg: dict, base_dir: Path, settings: CalibrationSettings, *, comm=None, log=None) -> CalibrationResult:
    """Find (S, A) minimising e(S, A) (module docstring). Collective over ``comm``."""
    from mpi4py import MPI
    from scipy.optimize import minimize_scalar

    from nmcfx.solver.run import prepare

    comm = comm if comm is not None else MPI.COMM_WORLD
    say = log if (log is not None and comm.rank == 0) else (lambda *a: None)
    probe_cfg = copy.deepcopy(cfg)
    probe_cfg.pop("output", None)
    run = prepare(probe_cfg, base_dir=base_dir, comm=comm)  # validates every table, builds the mesh once
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

    off = settings.fit_offset

    def e_of(S):
        mo = moments(M, X_of(S), offset=off)
        return float(mo.error(mo.best_A()))

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
    evaluated = sorted(ev.results)
    table = []
    for S in evaluated:
        mo = moments(M, X_of(S), offset=off)
        A = mo.best_A()
        table.append({"S": S, "A": A, "B": mo.best_B(A), "e": float(mo.error(A)), "mm": mo.mm, "mx": mo.mx,
                      "xx": mo.xx, "m": mo.m, "x": mo.x,
                      "phase": ev.results[S]["phase"],
                      "cached": bool(ev.results[S].get("cached", False)),
                      "wall_s": float(ev.results[S].get("wall_s", 0.0))})
    best = min(table, key=lambda r: r["e"])
    S_best, A_best, B_best, e_best = best["S"], best["A"], best["B"], best["e"]
    at_edge = bool(S_best <= lo * (1 + 2 * settings.S_tol) or S_best >= hi * (1 - 2 * settings.S_tol))
    if at_edge:
        notes.append(f"the minimum is at the edge of S_range [{lo:g}, {hi:g}]: widen the range")
    X_best = X_of(S_best)
    mo = moments(M, X_best, offset=off)
    n_frames = int(np.all(np.isfinite(X_best), axis=1).sum())
    xx_c = mo.central()[2]
    A_stderr = float(e_best / math.sqrt(xx_c * mo.n)) if xx_c > 0 else float("nan")
    interval = _profile_interval(np.array([r["S"] for r in table]), np.array([r["e"] for r in table]), e_best, n_frames)
    boot = (_bootstrap(M, {S: X_of(S) for S in evaluated}, settings.bootstrap, settings.seed, offset=off)
            if settings.bootstrap else None)
    counts = {"simulated": ev.simulated, "from_cache": ev.cached, "evaluated": len(evaluated)}
    return CalibrationResult(S_best, A_best, e_best, table, interval, A_stderr, boot, target, X_best, settings,
                             at_edge, counts, notes, B=B_best)


def _profile_interval(S, e, e_min, n_frames) -> tuple:
    """(S_lo, S_hi) where n (e² − e_min²)/e_min² ≤ 1, linear interpolation of the profile between
    evaluated S; None on a side where the profile never rises that far."""
    order = np.argsort(S)
    S, e = S[order], e[order]
    chi = n_frames * (e**2 - e_min**2) / max(e_min**2, 1e-300)
    k = int(np.argmin(chi))

    def cross(step):
        prev, i = k, k + step
        while 0 <= i < len(S):
            if chi[i] > 1.0:
                f = (1.0 - chi[prev]) / (chi[i] - chi[prev])
                return float(S[prev] + f * (S[i] - S[prev]))
            prev, i = i, i + step
        return None

    return cross(-1), cross(+1)


def _bootstrap(M, X_by_S: dict, n_boot: int, seed: int, offset: bool = False) -> dict:
    """Moving-block bootstrap over frames; S from a parabola (in log S) through the best three."""
    rng = np.random.default_rng(seed)
    n = M.shape[0]
    L = max(1, int(round(n ** (1 / 3))))
    S_list = np.array(sorted(X_by_S))
    Xs = [X_by_S[S] for S in S_list]
    out_S, out_A = [], []
    starts = np.arange(0, n - L + 1)
    for _ in range(n_boot):
        idx = np.concatenate([np.arange(s, s + L) for s in rng.choice(starts, size=int(math.ceil(n / L)))])[:n]
        mos = [moments(M, X, idx, offset=offset) for X in Xs]
        e = np.array([mo.error(mo.best_A()) for mo in mos])
        k = int(np.argmin(e))
        if 0 < k < len(S_list) - 1:
            x = np.log(S_list[k - 1:k + 2])
            c = np.polyfit(x, e[k - 1:k + 2] ** 2, 2)
            xs = -c[1] / (2 * c[0]) if c[0] > 0 else x[1]
            xs = float(np.clip(xs, x[0], x[2]))
            S_b = math.exp(xs)
        else:
            S_b = float(S_list[k])
        kk = int(np.argmin(np.abs(S_list - S_b)))
        out_S.append(S_b)
        out_A.append(mos[kk].best_A())
    S_arr, A_arr = np.array(out_S), np.array(out_A)
    return {"resamples": n_boot, "block_frames": L, "S_std": float(S_arr.std(ddof=1)) if n_boot > 1 else None,
            "S_16_84": [float(np.percentile(S_arr, 16)), float(np.percentile(S_arr, 84))],
            "A_std": float(A_arr.std(ddof=1)) if n_boot > 1 else None,
            "A_16_84": [float(np.percentile(A_arr, 16)), float(np.percentile(A_arr, 84))]}


# ---------------------------------------------------------------------------- outputs
def write_calibration(result: CalibrationResult, outdir, *, config: dict, command=None) -> list[str]:
    from nmcfx import __version__

    from . import figures
    from .analyze import _csv_rows, write_json

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    r = result
    t = r.target
    files = []
    _csv_rows(outdir / "e_profile.csv", ["S", "A_best", "e_min", "phase", "cached", "B_best"],
              [[row["S"], row["A"], row["e"], row["phase"], int(row["cached"]), row["B"]] for row in r.evaluations])
    files.append("e_profile.csv")
    meas_mean = t.measured.mean(axis=1)
    pred = r.A * r.X_best + r.B
    pred_mean = pred.mean(axis=1)
    _csv_rows(outdir / "fit.csv", ["time_s", "measured_contrast", "predicted_contrast", "model_theta0_minus_theta"],
              [[float(t.times_s[k]), float(meas_mean[k]), float(pred_mean[k]), float(r.X_best[k].mean())]
               for k in range(len(t.times_s))])
    files.append("fit.csv")
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
    figures.error_map(S_vals, A_grid, E, (r.S, r.A), outdir / "error_map.png",
                      title="calibration error min over B of e(S, A, B)" if off else "")
    lab = {"center": "(particle centre)", "trace": "(trace)", "mask": "(mask mean)", "line": "(line-cut mean)",
           "pixels": "(pixel mean)"}[t.region_kind]
    b_txt = f", B = {r.B:.3g}" if off else ""
    figures.fit_overlay(t.times_s, meas_mean, pred_mean, outdir / "fit_overlay.png", label=lab,
                        title=f"S = {r.S:.4g}, A = {r.A:.4g}{b_txt}, e = {r.e_min:.3g}",
                        model_label="model A(θ₀ − θ) + B" if off else "model A(θ₀ − θ)")
    figures.error_profile(S_vals, [row["e"] for row in r.evaluations], r.S, r.S_profile_interval,
                          outdir / "error_profile.png")
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


def format_calibration(r: CalibrationResult) -> str:
    lo, hi = r.S_profile_interval
    iv = f"[{lo:.4g}, {hi:.4g}]" if lo is not None and hi is not None else "not bounded by the evaluated S"
    lines = [
        f"  best S      {r.S:.4g}   (profile interval {iv})",
        f"  best A      {r.A:.4g} ± {r.A_stderr:.2g}",
        *([f"  offset B    {r.B:.4g}   (fit_offset: Ī = A(θ₀ − θ) + B)"] if r.settings.fit_offset else []),
        f"  e(S, A)     {r.e_min:.4g}   over {len(r.target.times_s)} frames × {r.target.measured.shape[1]} series "
        f"(region {r.target.region_kind})",
    ]
    if r.bootstrap:
        b = r.bootstrap
        lines.append(f"  bootstrap   S 16–84 % [{b['S_16_84'][0]:.4g}, {b['S_16_84'][1]:.4g}], "
                     f"A 16–84 % [{b['A_16_84'][0]:.4g}, {b['A_16_84'][1]:.4g}] ({b['resamples']} resamples)")
    c = r.counts
    lines.append(f"  simulations {c['simulated']} run, {c['from_cache']} from the cache")
    lines += [f"  note        {n}" for n in r.notes]
    return "\n".join(lines)


def run_calibration(config_path, outdir=None, *, comm=None, log=None, command=None) -> CalibrationResult:
    """Read CONFIG.toml, calibrate, and write the output directory (rank 0)."""
    from mpi4py import MPI

    comm = comm if comm is not None else MPI.COMM_WORLD
    cfg, settings, base = load_calibration_config(config_path)
    outdir = Path(outdir) if outdir is not None else Path("runs") / (Path(config_path).stem + "-calibration")
    result = calibrate(cfg, base, settings, comm=comm, log=log)
    if comm.rank == 0:
        write_calibration(result, outdir, config=cfg | {"calibration": settings.to_dict()}, command=command)
    comm.Barrier()
    return result
