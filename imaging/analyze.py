"""The analysis pipeline of an operando image stack, and its output directory.

    stack → temporal binning (on reading) → drift correction → particle mask (reference
    frame) → total contrast → normalised intensity, centre trace, line-cut kymograph,
    asymmetry d(t) → outline (µm) → [mesh]

:func:`analyze` computes everything in memory and raises :class:`InputError` on any bad
input before a file is written; :func:`write_analysis` then creates the directory and
writes every file through a temporary name. Times in the outputs are relative to the
current start: ``reference_time_s`` if given, else the time of the reference frame.

Output directory (see README "Image analysis and calibration"):

    metadata.json      inputs: file, stack info, options, pixel size, reference frame, versions
    summary.json       results: particle area/perimeter, spot, drift extent, classification
    drift.csv/.png     drift trace (px and µm)
    intensity.csv/.png per frame: normalised intensity, centre contrast, d, Li-rich fraction
    kymograph.csv/.png contrast along the line cut against time (or capacity)
    asymmetry.png      d(t) with the classification threshold
    contrast_maps.png  total contrast maps, zero-centred diverging scale
    reference.png      reference frame with mask outline, centre region, line and spot
    outline.csv        particle outline in µm (x_um,y_um) usable as geometry.contour_csv
    contrast.npz       cropped contrast stack, mask, times: the input of `nmcfx calibrate`
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from nmcfx.errors import InputError
from nmcfx.paths import check_output_dir

from . import figures
from .asymmetry import LI_RICH_THRESHOLD, AsymmetryRule, AsymmetryTrace, classify, com_offset
from .checks import baseline_check, detect_onset, particle_mean_trace
from .contrast import centroid_rc, disk_region, mean_in, particle_mask, reference_image, total_contrast
from .drift import DriftTrace, correct_drift, measure_drift, rereferenced
from .forward import DEFAULT_RESOLUTION_UM, psf_sigma_um
from .kymograph import Kymograph, default_line, line_kymograph
from .noise import NoiseModel, measure_noise
from .outline import Outline, mask_outline
from .stack import ImageStack, load_stack

#: Margin (px) kept around the particle in contrast.npz.
CROP_MARGIN_PX = 24


@dataclass(frozen=True)
class AnalysisOptions:
    reference_frame: int | None = None  # index of the frame before current flows (default 0)
    # or: the current start time ("auto": detected); the reference = the last frame at or before it
    reference_time_s: float | str | None = None
    # I₀ = the mean of this many frames ending at the reference frame ("all": every frame before the current)
    reference_average: int | str = "all"
    dark_offset: float = 0.0  # camera offset subtracted from every pixel (ADU, i.e. file units)
    dark_frame: str | None = None  # or a dark image/stack (file), its mean subtracted pixel by pixel
    invert: bool = False  # the particle is darker than its surroundings: mask = pixels below the threshold
    mask_file: str | None = None  # a user mask (image of the frame size, non-zero = particle) instead of a threshold
    drift: str = "gaussian"  # gaussian | phase | none
    spot_rc: tuple[float, float] | None = None  # marker spot (row, col) in the reference frame; None: automatic
    spot_box_px: int = 7
    threshold: str | float = "otsu"
    particle_rc: tuple[float, float] | None = None  # a pixel on the particle (picks the mask component)
    line: tuple[tuple[float, float], tuple[float, float]] | None = None  # ((r0, c0), (r1, c1)); None: horizontal
    line_width_px: int = 1
    li_rich_threshold: float = LI_RICH_THRESHOLD
    reaction: str = "charge"  # charge (delithiation) | discharge (lithiation)
    center_radius_px: float = 3.0
    asymmetry: AsymmetryRule = field(default_factory=AsymmetryRule)
    outline_level: str | float = "half"
    smoothing_um: float | None = None  # outline smoothing (default: one pixel)
    resolution_um: float = DEFAULT_RESOLUTION_UM
    current_mA_g: float | None = None  # for a capacity axis
    c_rate: float | None = None
    map_frames: int = 8
    figures: bool = True

    def validated(self, n_frames: int) -> "AnalysisOptions":
        o = self
        if o.reference_frame is not None and o.reference_time_s is not None:
            raise InputError("reference", "give the reference frame or the reference time, not both")
        if o.reference_frame is not None:
            k = o.reference_frame
            if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k < n_frames - 1:
                raise InputError("reference_frame", f"must be a frame index in [0, {n_frames - 2}] (a later frame "
                                                    f"must follow), got {k!r}")
        if o.reference_time_s is not None and o.reference_time_s != "auto" and not _finite(o.reference_time_s):
            raise InputError("reference_time_s", f"must be a time in s or 'auto', got {o.reference_time_s!r}")
        ra = o.reference_average
        if ra != "all" and (isinstance(ra, bool) or not isinstance(ra, (int, np.integer)) or ra < 1):
            raise InputError("reference_average", f"must be an integer >= 1 or 'all', got {ra!r}")
        if not _finite(o.dark_offset) or o.dark_offset < 0:
            raise InputError("dark_offset", f"must be a camera offset >= 0 (file units, ADU), got {o.dark_offset!r}")
        if o.dark_frame is not None and o.dark_offset:
            raise InputError("dark_offset", "give a dark offset or a dark frame, not both")
        if o.mask_file is not None and (o.invert or o.particle_rc is not None or o.threshold != "otsu"):
            raise InputError("mask_file", "a user mask replaces the threshold: drop --invert, --particle and "
                                          "--threshold")
        if o.drift not in ("gaussian", "phase", "none"):
            raise InputError("drift", f"must be 'gaussian', 'phase' or 'none', got {o.drift!r}")
        if not _finite(o.li_rich_threshold) or not 0 < o.li_rich_threshold < 10:
            raise InputError("li_rich_threshold", f"must be a contrast in (0, 10), got {o.li_rich_threshold!r}")
        if o.reaction not in ("charge", "discharge"):
            raise InputError("reaction", f"must be 'charge' or 'discharge', got {o.reaction!r}")
        if not _finite(o.center_radius_px) or not 0 <= o.center_radius_px <= 100:
            raise InputError("center_radius_px", f"must be in [0, 100] px, got {o.center_radius_px!r}")
        if not _finite(o.resolution_um) or not 0 < o.resolution_um <= 10:
            raise InputError("resolution_um", f"must be in (0, 10] µm, got {o.resolution_um!r}")
        if o.current_mA_g is not None and o.c_rate is not None:
            raise InputError("current_mA_g", "give current_mA_g or c_rate, not both")
        for name in ("current_mA_g", "c_rate"):
            v = getattr(o, name)
            if v is not None and (not _finite(v) or v <= 0):
                raise InputError(name, f"must be > 0, got {v!r}")
        if isinstance(o.map_frames, bool) or not isinstance(o.map_frames, int) or not 1 <= o.map_frames <= 64:
            raise InputError("map_frames", f"must be an integer in [1, 64], got {o.map_frames!r}")
        if o.smoothing_um is not None and (not _finite(o.smoothing_um) or not 0 <= o.smoothing_um <= 1):
            raise InputError("smoothing_um", f"must be in [0, 1] µm, got {o.smoothing_um!r}")
        return o

    def to_dict(self) -> dict:
        d = asdict(self)
        d["asymmetry"] = asdict(self.asymmetry)
        return d


def _finite(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float, np.floating)) and math.isfinite(v)


@dataclass
class AnalysisResult:
    stack: ImageStack  # drift-corrected frames
    options: AnalysisOptions
    reference_index: int
    t0_s: float
    times_rel_s: np.ndarray
    drift: DriftTrace
    mask: np.ndarray
    threshold: float
    contrast: np.ndarray
    centroid_rc: tuple[float, float]
    center_region: np.ndarray
    normalised_intensity: np.ndarray
    center_contrast: np.ndarray
    kymograph: Kymograph
    asymmetry: AsymmetryTrace
    classification: dict
    outline: Outline
    capacity_mAh_g: np.ndarray | None = None
    mesh_info: dict | None = None
    notes: list = field(default_factory=list)
    reference_image: np.ndarray | None = None  # I₀ (mean of the reference frames)
    reference_frames: tuple = ()  # indices averaged into I₀
    warnings: list = field(default_factory=list)
    noise: NoiseModel | None = None
    baseline: dict = field(default_factory=dict)
    onset: dict | None = None  # detected current onset (time_s, first_changed frame)

    @property
    def pixel_size_um(self) -> float:
        return self.stack.pixel_size_um

    def report_lines(self) -> list[str]:
        o, d, c = self.outline, self.drift, self.classification
        st = self.stack
        lines = [
            f"  stack        {st.n_frames} frames of {st.shape[0]}×{st.shape[1]} px, pixel {self.pixel_size_um * 1e3:.4g} nm "
            f"({st.info.get('pixel_size_from', '')}), times {st.info.get('times_from', '')}"
            + (f", binned by {st.info['bin_frames']}" if st.info.get("bin_frames", 1) > 1 else ""),
            f"  reference    frame {self.reference_index} (t = 0 at {self.t0_s:g} s)",
            f"  drift        {d.method}" + (f", spot at (row {d.spot_rc[0]:.1f}, col {d.spot_rc[1]:.1f})" if d.spot_rc else "")
            + f", largest {np.max(np.hypot(d.drift_rc[:, 0], d.drift_rc[:, 1])):.2f} px",
            f"  particle     {int(self.mask.sum())} px above {self.threshold:.6g}; outline area {o.area_um2:.4g} µm², "
            f"perimeter {o.perimeter_um:.4g} µm, equivalent diameter {o.equivalent_diameter_um:.4g} µm",
            f"  contrast     particle mean {self.normalised_intensity[-1]:+.4f}, centre {self.center_contrast[-1]:+.4f} "
            "in the last frame",
            f"  asymmetry    {c['label']}: {c['off_centre_frames']} of {c['core_frames']} core frames with d > "
            f"{c['d_limit_um'] * 1e3:.0f} nm" + (f" (max d {c['d_max_um'] * 1e3:.0f} nm)" if c.get("d_max_um") is not None else ""),
        ]
        if self.mesh_info:
            m = self.mesh_info
            lines.append(f"  mesh         {m['cells']} cells; area {m['area_um2']:.4g} µm², perimeter {m['perimeter_um']:.4g} µm")
        if self.noise is not None:
            nm, core = self.noise, self.mask
            sig = float(np.median(nm.sigma_rel(self.reference_image[core])))
            lines.append(f"  noise        {sig * 100:.2g} % per pixel and frame (from {nm.source}); I0 = mean of "
                         f"{len(self.reference_frames)} frame(s): {sig / math.sqrt(len(self.reference_frames)) * 100:.2g} % "
                         "per pixel")
        lines += [f"  note         {n}" for n in self.notes]
        lines += [f"  warning      {w}" for w in self.warnings]
        return lines

    def summary(self) -> dict:
        o = self.outline
        d = self.drift
        return {
            "frames": self.stack.n_frames,
            "reference_frame": self.reference_index,
            "time_zero_s": self.t0_s,
            "pixel_size_um": self.pixel_size_um,
            "mask_threshold": self.threshold,
            "mask_pixels": int(self.mask.sum()),
            "particle_centroid_rc": list(self.centroid_rc),
            "particle_area_um2": o.area_um2,
            "particle_perimeter_um": o.perimeter_um,
            "equivalent_diameter_um": o.equivalent_diameter_um,
            "outline_level": o.level,
            "drift_method": d.method,
            "drift_spot_rc": list(d.spot_rc) if d.spot_rc is not None else None,
            "drift_max_px": float(np.max(np.hypot(d.drift_rc[:, 0], d.drift_rc[:, 1]))),
            "normalised_intensity_final": float(self.normalised_intensity[-1]),
            "center_contrast_final": float(self.center_contrast[-1]),
            "asymmetry": self.classification,
            "line_rc": [list(self.kymograph.p0_rc), list(self.kymograph.p1_rc)],
            "mesh": self.mesh_info,
            "reference_frames": list(self.reference_frames),
            "current_onset_detected": self.onset,
            "noise": self.noise.to_dict() if self.noise is not None else None,
            "baseline": self.baseline,
            "notes": self.notes,
            "warnings": self.warnings,
        }


def reference_index(times_s: np.ndarray, opts: AnalysisOptions, onset_s: float | None = None) -> int:
    if opts.reference_frame is not None:
        return int(opts.reference_frame)
    t_ref = onset_s if opts.reference_time_s == "auto" else opts.reference_time_s
    if t_ref is not None:
        before = np.flatnonzero(times_s <= t_ref + 1e-9)
        if before.size == 0:
            raise InputError("reference_time_s", f"{t_ref:g} s is before the first frame ({times_s[0]:g} s)")
        k = int(before[-1])
        if k >= len(times_s) - 1:
            raise InputError("reference_time_s", f"{t_ref:g} s leaves no frame after the reference")
        return k
    return 0


def _load_image(path, field: str, shape) -> np.ndarray:
    """A 2D image (or the mean of a stack) of the frame size from .npy/.npz/.tif/.png."""
    p = Path(path)
    if not p.is_file():
        raise InputError(field, f"file not found: {p}")
    suffix = p.suffix.lower()
    try:
        if suffix == ".png":
            import matplotlib.image as mpimg

            arr = np.asarray(mpimg.imread(p), dtype=float)
            if arr.ndim == 3:
                arr = arr[..., :3].mean(axis=2) if arr.shape[2] >= 3 else arr[..., 0]
        elif suffix in (".tif", ".tiff"):
            import tifffile

            from .stack import _TiffLog

            with _TiffLog():
                arr = np.asarray(tifffile.imread(p), dtype=float)
        elif suffix == ".npy":
            arr = np.asarray(np.load(p, allow_pickle=False), dtype=float)
        elif suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                key = next((k for k in ("mask", "dark", "frames", "image") if k in z.files), z.files[0])
                arr = np.asarray(z[key], dtype=float)
        else:
            raise InputError(field, f"{p.name}: unknown file type {suffix!r}; use .npy, .npz, .tif or .png")
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - corrupt files raise many types
        raise InputError(field, f"cannot read {p.name} ({type(exc).__name__}: {exc})") from None
    if arr.ndim == 3:
        arr = arr.mean(axis=0)
    if arr.shape != tuple(shape):
        raise InputError(field, f"{p.name} is {'×'.join(map(str, arr.shape))} pixels; the frames are "
                                f"{shape[0]}×{shape[1]}")
    if not np.all(np.isfinite(arr)):
        raise InputError(field, f"{p.name} holds non-finite values")
    return arr


def user_mask(path, shape, field: str = "mask_file") -> np.ndarray:
    """A particle mask from an image file: non-zero (or above half the maximum) = particle."""
    from .contrast import MIN_MASK_PIXELS

    img = _load_image(path, field, shape)
    mask = img > 0.5 * img.max() if img.max() > 0 else np.zeros(shape, bool)
    mask = ndimage.binary_fill_holes(mask)
    if mask.sum() < MIN_MASK_PIXELS:
        raise InputError(field, f"the mask in {Path(path).name} has {int(mask.sum())} particle pixels; "
                                f"need at least {MIN_MASK_PIXELS}")
    if mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any():
        raise InputError(field, f"the mask in {Path(path).name} touches the image edge: the particle must lie "
                                "inside the field of view")
    return mask


def analyze(stack: ImageStack, opts: AnalysisOptions = AnalysisOptions()) -> AnalysisResult:
    """Run the whole pipeline in memory (no files written)."""
    opts = opts.validated(stack.n_frames)
    notes, warnings = [], []
    px = stack.pixel_size_um
    sigma_px = psf_sigma_um(opts.resolution_um) / px
    raw = _dark_subtracted(stack, opts)
    umask = user_mask(opts.mask_file, stack.shape) if opts.mask_file is not None else None

    def find_mask(frame):
        if umask is not None:
            return umask, float("nan")
        return particle_mask(frame, opts.threshold, seed_rc=opts.particle_rc, invert=opts.invert)

    # the drift is measured against the reference frame when it is known, else against the first frame
    # (the current onset is then looked for on aligned frames) and referred to the reference afterwards;
    # the particle mask of that frame keeps the automatic spot search off the particle
    known = opts.reference_frame is not None or opts.reference_time_s not in (None, "auto")
    start = reference_index(stack.times_s, opts) if known else 0
    start_mask, _ = find_mask(raw[start])
    exclude = ndimage.binary_dilation(start_mask, iterations=max(3, int(math.ceil(3 * sigma_px))))
    trace0 = measure_drift(raw, stack.times_s, start, method=opts.drift, spot_rc=opts.spot_rc,
                           box_px=opts.spot_box_px, exclude=exclude, sigma_px=sigma_px)
    onset = None
    if opts.reference_frame is None:
        onset = detect_onset(stack.times_s, particle_mean_trace(raw, start_mask, trace0.drift_rc))
    if opts.reference_time_s == "auto" and onset is None:
        raise InputError("reference_time_s", "'auto' found no current onset in the stack (the particle-mean intensity "
                                             "is not flat over at least two frames and then changing); give the "
                                             "current start time in s")
    ref = reference_index(stack.times_s, opts, onset["time_s"] if onset else None)
    if opts.reference_time_s == "auto":
        t0 = float(onset["time_s"])
        notes.append(f"current onset detected at t = {t0:.4g} s (frame {onset['first_changed']} is the first that "
                     f"changes): reference frame {ref}, t = 0 there")
    else:
        t0 = float(opts.reference_time_s) if opts.reference_time_s is not None else float(stack.times_s[ref])
    if onset is not None and opts.reference_frame is None and opts.reference_time_s is None:
        warnings.append(f"the particle's intensity starts to change at t = {onset['time_s']:.4g} s (frame "
                        f"{onset['first_changed']}), but without --reference-time-s the reference is frame 0 and "
                        f"t = 0 is {stack.times_s[0]:g} s: give --reference-time-s {onset['time_s']:.4g} (or auto)")
    elif onset is not None and opts.reference_time_s not in (None, "auto"):
        dt = float(np.median(np.diff(stack.times_s)))
        if abs(onset["time_s"] - float(opts.reference_time_s)) > 1.5 * dt:
            warnings.append(f"the particle's intensity starts to change at t = {onset['time_s']:.4g} s, not at the "
                            f"given --reference-time-s {float(opts.reference_time_s):g} s: check the current start")
    n_avg = ref + 1 if opts.reference_average == "all" else int(opts.reference_average)
    reference_image(raw, ref, n_avg)  # validates the averaging window early
    trace = rereferenced(trace0, ref)
    frames = correct_drift(raw, trace)
    lost = int(math.ceil(np.max(np.abs(trace.drift_rc)))) if trace.n_frames else 0
    i0 = reference_image(frames, ref, n_avg)
    mask, thr = find_mask(i0)
    if lost and not _clear_of_border(mask, lost + 1):
        notes.append(f"the particle comes within {lost + 1} px of the edge, where drift correction extrapolates")
    contrast = total_contrast(frames, ref, mask, reference=i0)
    pre = stack.times_s - t0 <= 1e-9
    ref_frames = tuple(range(ref - n_avg + 1, ref + 1))
    noise = measure_noise(contrast, i0, mask, pre, reference_average=n_avg)
    base = baseline_check(contrast, stack.times_s - t0, mask, i0, pre, ref_frames, noise)
    warnings += base.pop("warnings")
    cen = centroid_rc(mask)
    region = disk_region(mask.shape, cen, opts.center_radius_px, within=mask)
    norm_int = mean_in(contrast, mask)
    center = mean_in(contrast, region)
    if opts.line is not None:
        p0, p1 = opts.line
    else:
        p0, p1 = default_line(mask, cen)
    kymo = line_kymograph(contrast, stack.times_s - t0, mask, p0, p1, pixel_size_um=px,
                          linewidth_px=opts.line_width_px)
    asym = com_offset(contrast, mask, stack.times_s - t0, pixel_size_um=px, threshold=opts.li_rich_threshold,
                      reaction=opts.reaction)
    # asymmetry is judged on frames after the reference only
    after = np.arange(stack.n_frames) > ref
    cls = classify(_subset(asym, after), opts.asymmetry)
    outline = mask_outline(i0, mask, pixel_size_um=px, level=opts.outline_level, threshold=thr,
                           smoothing_um=opts.smoothing_um)
    capacity = None
    if opts.current_mA_g is not None or opts.c_rate is not None:
        i = opts.current_mA_g if opts.current_mA_g is not None else opts.c_rate * 210.0
        capacity = np.clip(stack.times_s - t0, 0, None) / 3600.0 * i
    corrected = replace(stack, frames=frames, info=dict(stack.info, drift_corrected=trace.method))
    return AnalysisResult(corrected, opts, ref, t0, stack.times_s - t0, trace, mask, thr, contrast, cen, region,
                          norm_int, center, kymo, asym, cls, outline, capacity, None, notes, i0, ref_frames, warnings,
                          noise, base, onset)


def _dark_subtracted(stack: ImageStack, opts: AnalysisOptions) -> np.ndarray:
    """The frames minus the camera offset (``dark_offset``) or the mean dark frame."""
    if opts.dark_frame is not None:
        dark = _load_image(opts.dark_frame, "dark_frame", stack.shape)
        what = f"the dark frame {Path(opts.dark_frame).name}"
    elif opts.dark_offset:
        dark = float(opts.dark_offset)
        what = f"--dark-offset {opts.dark_offset:g}"
    else:
        return stack.frames
    out = stack.frames - dark
    level = float(np.median(stack.frames[0]))
    if float(np.median(out[0])) <= 0.05 * level:
        raise InputError("dark_frame" if opts.dark_frame is not None else "dark_offset",
                         f"{what} removes almost all of the signal (median of the first frame {level:.6g} before, "
                         f"{float(np.median(out[0])):.6g} after); it must be the camera's offset, not the image level")
    return out


def _clear_of_border(mask, width) -> bool:
    return not (mask[:width].any() or mask[-width:].any() or mask[:, :width].any() or mask[:, -width:].any())


def _subset(tr: AsymmetryTrace, sel) -> AsymmetryTrace:
    return replace(tr, times_s=tr.times_s[sel], d_um=tr.d_um[sel], offset_xy_um=tr.offset_xy_um[sel],
                   rich_fraction=tr.rich_fraction[sel])


def add_mesh(result: AnalysisResult, *, mesh_size_um=None, surface_mesh_size_um=None, comm=None) -> dict:
    """Mesh the outline (nmcfx.geometries.contour) and record area/perimeter of the mesh."""
    from .outline import outline_mesh

    p = outline_mesh(result.outline, mesh_size_um=mesh_size_um, surface_mesh_size_um=surface_mesh_size_um, comm=comm)
    info = {"cells": p.info.get("num_cells"), "vertices": p.info.get("num_vertices"),
            "area_um2": p.measure, "perimeter_um": p.boundary_measure,
            "outline_area_um2": result.outline.area_um2, "outline_perimeter_um": result.outline.perimeter_um,
            "mesh_size_um": p.info.get("mesh_size_um"), "surface_mesh_size_um": p.info.get("surface_mesh_size_um")}
    result.mesh_info = info
    return info


# ---------------------------------------------------------------------------- files
def _write_text(path: Path, text: str):
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, obj):
    _write_text(Path(path), json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, Path):
        return str(o)
    return str(o)


def _csv_rows(path: Path, header, rows):
    import csv

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for r in rows:
            w.writerow([_fmt(v) for v in r])
    os.replace(tmp, path)


def _fmt(v):
    if isinstance(v, (float, np.floating)):
        return "nan" if not math.isfinite(v) else f"{v:.9g}"
    return v


def crop_box(mask: np.ndarray, margin: int = CROP_MARGIN_PX) -> tuple[slice, slice]:
    rr, cc = np.nonzero(mask)
    r0, r1 = max(0, rr.min() - margin), min(mask.shape[0], rr.max() + margin + 1)
    c0, c1 = max(0, cc.min() - margin), min(mask.shape[1], cc.max() + margin + 1)
    return slice(int(r0), int(r1)), slice(int(c0), int(c1))


def write_analysis(result: AnalysisResult, outdir, *, command=None) -> list[str]:
    """Create ``outdir`` and write every output file (each through a temporary name)."""
    from nmcfx import __version__

    outdir = check_output_dir(outdir, "--output")
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError("--output", f"cannot create {outdir}: {exc.strerror or exc}") from None
    r = result
    px = r.pixel_size_um
    written = []

    def done(name):
        written.append(name)

    # contrast.npz (the calibration input), cropped around the particle
    rs, cs = crop_box(r.mask)
    tmp = outdir / f".contrast.npz.tmp-{os.getpid()}"
    with open(tmp, "wb") as fh:
        np.savez_compressed(
            fh, contrast=r.contrast[:, rs, cs].astype(np.float32), mask=r.mask[rs, cs],
            center_region=r.center_region[rs, cs], times_s=r.stack.times_s, times_rel_s=r.times_rel_s,
            reference_index=r.reference_index, pixel_size_um=px, crop_origin_rc=np.array([rs.start, cs.start]),
            centroid_rc=np.array(r.centroid_rc) - [rs.start, cs.start],
            line_rc=np.array([r.kymograph.p0_rc, r.kymograph.p1_rc]) - [rs.start, cs.start],
            reference_frame=r.reference_image[rs, cs].astype(np.float32),
            reference_frames=np.array(r.reference_frames, dtype=int), reference_average=len(r.reference_frames),
            time_zero_s=r.t0_s, resolution_um=r.options.resolution_um, reaction=r.options.reaction)
    os.replace(tmp, outdir / "contrast.npz")
    done("contrast.npz")
    r.drift.write_csv(outdir / ".drift.csv.tmp", px, r.t0_s)
    os.replace(outdir / ".drift.csv.tmp", outdir / "drift.csv")
    done("drift.csv")
    cap = r.capacity_mAh_g
    head = ["frame", "time_s", "time_rel_s"] + (["capacity_mAh_g"] if cap is not None else []) + \
           ["normalised_intensity", "center_contrast", "d_um", "offset_x_um", "offset_y_um", "li_rich_fraction"]
    rows = []
    for k in range(r.stack.n_frames):
        rows.append([k, float(r.stack.times_s[k]), float(r.times_rel_s[k])] + ([float(cap[k])] if cap is not None else [])
                    + [float(r.normalised_intensity[k]), float(r.center_contrast[k]), float(r.asymmetry.d_um[k]),
                       float(r.asymmetry.offset_xy_um[k, 0]), float(r.asymmetry.offset_xy_um[k, 1]),
                       float(r.asymmetry.rich_fraction[k])])
    _csv_rows(outdir / "intensity.csv", head, rows)
    done("intensity.csv")
    tmpk = outdir / f".kymograph.csv.tmp-{os.getpid()}"
    r.kymograph.write_csv(tmpk, cap)
    os.replace(tmpk, outdir / "kymograph.csv")
    done("kymograph.csv")
    r.outline.write_csv(outdir / "outline.csv")
    done("outline.csv")
    if r.options.figures:
        name = Path(r.stack.source).name
        figures.drift(r.drift, outdir / "drift.png", pixel_size_um=px, t0_s=r.t0_s)
        figures.intensity(r.times_rel_s, {"normalised intensity (particle mean)": (r.normalised_intensity, "o-"),
                                          f"centre ({r.options.center_radius_px:g} px radius)": (r.center_contrast, "s-")},
                          outdir / "intensity.png", title=name)
        figures.kymograph(r.kymograph, outdir / "kymograph.png", capacity_mAh_g=cap, title=f"{name}: line cut")
        figures.asymmetry(r.asymmetry, outdir / "asymmetry.png", classification=r.classification, title=name,
                          after=r.times_rel_s > 0)
        after = [k for k in range(r.stack.n_frames) if k > r.reference_index]
        pick = np.unique(np.linspace(0, len(after) - 1, min(r.options.map_frames, len(after))).round().astype(int))
        rs8, cs8 = crop_box(r.mask, margin=8)
        line = np.array([r.kymograph.p0_rc, r.kymograph.p1_rc]) - [rs8.start, cs8.start]
        figures.contrast_maps(r.contrast[:, rs8, cs8], r.mask[rs8, cs8], r.times_rel_s, [after[i] for i in pick],
                              outdir / "contrast_maps.png", pixel_size_um=px, title=f"{name}: total contrast",
                              lines=[(tuple(line[0]), tuple(line[1]))])
        _reference_figure(r, outdir / "reference.png")
        written += ["drift.png", "intensity.png", "kymograph.png", "asymmetry.png", "contrast_maps.png", "reference.png"]
    meta = {
        "nmcfx_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command if command is not None else sys.argv,
        "source": r.stack.source,
        "stack": {k: v for k, v in r.stack.info.items() if k != "truth"},
        "options": r.options.to_dict(),
        "pixel_size_um": px,
        "psf": {"resolution_um": r.options.resolution_um, "sigma_um": psf_sigma_um(r.options.resolution_um),
                "convention": "resolution taken as the FWHM of a Gaussian PSF"},
        "reference_frame": r.reference_index,
        "time_zero_s": r.t0_s,
        "coordinates": "pixel (row, col), centres at integers; outline x = col·pixel, y = row·pixel (µm)",
        "files": written + ["metadata.json", "summary.json"],
    }
    write_json(outdir / "metadata.json", meta)
    write_json(outdir / "summary.json", r.summary())
    return written + ["metadata.json", "summary.json"]


def _reference_figure(r: AnalysisResult, path):
    ref = r.reference_image
    fig = figures._figure(4.8, 4.6)
    ax = fig.subplots()
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.92)
    ax.imshow(ref, cmap="gray", interpolation="nearest")
    o = r.outline.points_um / r.pixel_size_um
    ax.plot(np.r_[o[:, 0], o[:1, 0]], np.r_[o[:, 1], o[:1, 1]], color="gold", lw=1.0, label="outline")
    rr, cc = np.nonzero(r.center_region)
    ax.plot(cc, rr, ",", color="tab:red")
    ax.plot([r.kymograph.p0_rc[1], r.kymograph.p1_rc[1]], [r.kymograph.p0_rc[0], r.kymograph.p1_rc[0]], "--",
            color="tab:blue", lw=1, label="line cut")
    if r.drift.spot_rc is not None:
        ax.plot([r.drift.spot_rc[1]], [r.drift.spot_rc[0]], "o", mfc="none", color="tab:green", ms=12,
                label="drift marker")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(frameon=False, fontsize=7, loc="lower left", labelcolor="w")
    n_avg = len(r.reference_frames)
    ax.set_title(f"reference frame {r.reference_index}" + (f" (mean of {n_avg})" if n_avg > 1 else ""), fontsize=9)
    figures._scale_bar(ax, ref.shape, r.pixel_size_um, color="w")
    figures._save(fig, path)


def run_analysis(path, outdir, opts: AnalysisOptions = AnalysisOptions(), *, frame_rate_hz=None, times_s=None,
                 pixel_size_um=None, bin_frames: int = 1, mesh: bool = False, mesh_size_um=None, comm=None,
                 command=None) -> AnalysisResult:
    """Load, analyse and (on rank 0 of ``comm``) write ``outdir``. Nothing is written if any
    input is bad; with ``mesh`` the outline is meshed too (collective)."""
    if comm is not None:
        from nmcfx.parallel import run_on_root

        run_on_root(comm, check_output_dir, outdir, "--output")
    else:
        check_output_dir(outdir, "--output")
    stack = load_stack(path, frame_rate_hz=frame_rate_hz, times_s=times_s, pixel_size_um=pixel_size_um,
                       bin_frames=bin_frames)
    result = analyze(stack, opts)
    if mesh:
        add_mesh(result, mesh_size_um=mesh_size_um, comm=comm)
    rank = comm.rank if comm is not None else 0
    if rank == 0:
        write_analysis(result, outdir, command=command)
    if comm is not None:
        comm.Barrier()
    return result
