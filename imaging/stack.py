"""Image stacks: reading (TIFF, .npy, .npz), frame times, pixel size, temporal binning, writing.

An :class:`ImageStack` holds the frames as float64 ``(n_frames, rows, cols)``, the frame
times in seconds and the pixel size in µm. Where a value comes from is recorded in
``info`` (``"argument"``, ``"metadata"`` or ``"default"``):

* frame times: explicit ``times_s`` or ``frame_rate_hz`` > the file's metadata (ImageJ
  ``finterval``/``tunit``, a ``times_s`` property written by :func:`save_stack`, OME
  ``Plane DeltaT``; .npz key ``times_s`` or ``frame_rate_hz``) > the 10 Hz camera of
  Xu et al. (Joule 2022, Experimental Procedures: "a consistent frame rate of 10 Hz").
* pixel size: explicit > metadata (TIFF X resolution with an ImageJ/OME length unit;
  .npz key ``pixel_size_um``) > 34.7 nm, the effective pixel of the same setup
  (166.7× magnification).

Temporal binning averages groups of consecutive frames (the papers bin 20–100 frames of
the 10 Hz camera); it happens while reading, so a long raw stack never sits in memory
at full length.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from nmcfx.errors import InputError

#: Camera frame rate of the operando setup (Xu et al., Joule 2022).
DEFAULT_FRAME_RATE_HZ = 10.0
#: Effective pixel size of the setup, µm (34.7 nm px⁻¹).
DEFAULT_PIXEL_SIZE_UM = 0.0347
#: Smallest frame accepted (rows and columns).
MIN_FRAME_SIDE = 16

TIFF_SUFFIXES = (".tif", ".tiff")
SUFFIXES = TIFF_SUFFIXES + (".npy", ".npz")


@dataclass
class ImageStack:
    """Frames ``(n, rows, cols)`` (float64), times in s, pixel size in µm."""

    frames: np.ndarray
    times_s: np.ndarray
    pixel_size_um: float = DEFAULT_PIXEL_SIZE_UM
    source: str = ""
    info: dict = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.frames.shape[1]), int(self.frames.shape[2])

    def __post_init__(self):
        self.frames = np.asarray(self.frames, dtype=float)
        self.times_s = np.asarray(self.times_s, dtype=float)


# ---------------------------------------------------------------------------- validation
def check_frame_rate(value, field: str = "frame_rate_hz") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0.0 < value <= 1.0e5:
        raise InputError(field, f"must be a frame rate in (0, 1e5] Hz, got {value!r}")
    return float(value)


def check_pixel_size(value, field: str = "pixel_size_um") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 1e-4 <= value <= 100.0:
        raise InputError(field, f"must be a pixel size in [1e-4, 100] µm, got {value!r}")
    return float(value)


def check_times(times, n: int, field: str = "times_s") -> np.ndarray:
    try:
        t = np.asarray(times, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise InputError(field, "must be a list of frame times in seconds") from None
    if t.size != n:
        raise InputError(field, f"has {t.size} times for {n} frames; give one time per frame")
    if not np.all(np.isfinite(t)):
        raise InputError(field, "frame times must be finite numbers (s)")
    if n > 1 and not np.all(np.diff(t) > 0):
        k = int(np.flatnonzero(np.diff(t) <= 0)[0])
        raise InputError(field, f"frame times must increase strictly; time {k + 1} ({t[k + 1]:g} s) "
                                f"<= time {k} ({t[k]:g} s)")
    return t


def check_frames(arr, field: str = "stack", min_frames: int = 2) -> np.ndarray:
    """Validate a raw array as a greyscale stack (n, rows, cols); squeeze singleton axes."""
    a = np.asarray(arr)
    if a.dtype.kind not in "uif":
        raise InputError(field, f"pixel type {a.dtype} is not supported; use 8/16/32-bit integers or floats")
    if a.ndim > 3:
        squeezed = a.reshape([s for s in a.shape if s != 1]) if 1 in a.shape else a
        if squeezed.ndim == 3:
            a = squeezed
    if a.ndim == 3 and a.shape[-1] in (3, 4) and a.shape[0] > 4:
        raise InputError(field, f"looks like a colour image of shape {a.shape}; give a greyscale stack "
                                "(frames, rows, cols)")
    if a.ndim == 2:
        raise InputError(field, f"holds a single frame of {a.shape[0]}×{a.shape[1]} pixels; the analysis needs "
                                f"at least {min_frames} frames (a reference frame and one later frame)")
    if a.ndim != 3:
        raise InputError(field, f"must be a stack of frames (frames, rows, cols), got an array of shape {a.shape}")
    if a.shape[0] < min_frames:
        raise InputError(field, f"holds {a.shape[0]} frame(s); the analysis needs at least {min_frames} "
                                "(a reference frame and one later frame)")
    if min(a.shape[1:]) < MIN_FRAME_SIDE:
        raise InputError(field, f"frames of {a.shape[1]}×{a.shape[2]} pixels are too small; "
                                f"need at least {MIN_FRAME_SIDE}×{MIN_FRAME_SIDE}")
    return a


# ---------------------------------------------------------------------------- reading
def load_stack(path, *, frame_rate_hz: float | None = None, times_s=None, pixel_size_um: float | None = None,
               bin_frames: int = 1, field: str = "stack") -> ImageStack:
    """Read a multi-page TIFF (8/16-bit, float), a .npy array or a .npz archive.

    ``bin_frames`` > 1 averages groups of that many consecutive frames (an incomplete
    last group is dropped and reported in ``info``); times are the group means.
    Raises :class:`InputError` for a missing, unreadable or corrupt file, a single frame,
    colour images, non-finite pixels or inconsistent times.
    """
    path = Path(path)
    if frame_rate_hz is not None:
        frame_rate_hz = check_frame_rate(frame_rate_hz, "frame_rate_hz")
    if pixel_size_um is not None:
        pixel_size_um = check_pixel_size(pixel_size_um, "pixel_size_um")
    if frame_rate_hz is not None and times_s is not None:
        raise InputError("frame_rate_hz", "give frame times or a frame rate, not both")
    if isinstance(bin_frames, bool) or not isinstance(bin_frames, (int, np.integer)) or not 1 <= bin_frames <= 100000:
        raise InputError("bin_frames", f"must be an integer >= 1 (the papers bin 20-100 frames), got {bin_frames!r}")
    if not path.is_file():
        raise InputError(field, f"file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise InputError(field, f"{path.name}: unknown file type {suffix!r}; supported: {', '.join(SUFFIXES)}")
    if suffix in TIFF_SUFFIXES:
        frames, meta = _read_tiff(path, bin_frames, field)
    else:
        frames, meta = _read_numpy(path, bin_frames, field)
    n_raw = meta["n_raw"]
    info = {"file": str(path), "format": meta["format"], "dtype": meta["dtype"], "n_raw_frames": n_raw,
            "bin_frames": int(bin_frames), "dropped_frames": n_raw - frames.shape[0] * bin_frames}
    # ---- frame times (of the raw frames), then binned
    if times_s is not None:
        t_raw = check_times(times_s, n_raw, "times_s")
        info["times_from"] = "argument"
    elif frame_rate_hz is not None:
        t_raw = np.arange(n_raw) / frame_rate_hz
        info["times_from"] = f"argument: {frame_rate_hz:g} Hz"
    elif meta.get("times_s") is not None:
        t_raw = check_times(meta["times_s"], n_raw, f"{field} (frame times in the file)")
        info["times_from"] = "metadata"
    elif meta.get("interval_s"):
        t_raw = np.arange(n_raw) * float(meta["interval_s"])
        info["times_from"] = f"metadata: frame interval {meta['interval_s']:g} s"
    else:
        t_raw = np.arange(n_raw) / DEFAULT_FRAME_RATE_HZ
        info["times_from"] = f"default: {DEFAULT_FRAME_RATE_HZ:g} Hz camera"
    nb = frames.shape[0]
    times = t_raw[: nb * bin_frames].reshape(nb, bin_frames).mean(axis=1)
    # ---- pixel size
    if pixel_size_um is not None:
        px, info["pixel_size_from"] = pixel_size_um, "argument"
    elif meta.get("pixel_size_um"):
        px = check_pixel_size(meta["pixel_size_um"], f"{field} (pixel size in the file)")
        info["pixel_size_from"] = "metadata"
    else:
        px, info["pixel_size_from"] = DEFAULT_PIXEL_SIZE_UM, "default: 34.7 nm"
    if meta.get("extra"):
        info["file_metadata"] = meta["extra"]
    if meta.get("read_warnings"):
        info["read_warnings"] = meta["read_warnings"]
    return ImageStack(frames, times, px, str(path), info)


def _binned(chunks, n_raw: int, bin_frames: int, field: str) -> np.ndarray:
    """Average consecutive groups of ``bin_frames`` from an iterator of frame blocks."""
    nb = n_raw // bin_frames
    if nb < 2:
        raise InputError("bin_frames", f"binning {n_raw} frame(s) by {bin_frames} leaves {nb}; "
                                       "need at least 2 binned frames")
    out = None
    k = 0
    for block in chunks:
        block = np.asarray(block, dtype=float)
        if out is None:
            out = np.empty((nb,) + block.shape[1:], dtype=float)
        for i in range(0, block.shape[0], bin_frames):
            if k >= nb:
                break
            grp = block[i:i + bin_frames]
            if grp.shape[0] < bin_frames:
                break
            out[k] = grp.mean(axis=0)
            k += 1
    if not np.all(np.isfinite(out)):
        raise InputError(field, "contains non-finite pixel values (NaN or inf)")
    return out


def _read_numpy(path: Path, bin_frames: int, field: str):
    meta: dict = {"format": path.suffix.lower()[1:]}
    try:
        if path.suffix.lower() == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.keys())
                key = next((k for k in ("frames", "stack", "images", "data") if k in keys), None)
                if key is None:
                    arrays = [k for k in keys if z[k].ndim >= 2]
                    if len(arrays) != 1:
                        raise InputError(field, f"{path.name}: cannot tell which array holds the frames "
                                                f"(keys {keys}); name it 'frames'")
                    key = arrays[0]
                arr = z[key]
                if "times_s" in keys:
                    meta["times_s"] = z["times_s"]
                if "frame_rate_hz" in keys:
                    meta["interval_s"] = 1.0 / check_frame_rate(float(z["frame_rate_hz"]),
                                                                 f"{field} (frame_rate_hz in the file)")
                if "pixel_size_um" in keys:
                    meta["pixel_size_um"] = float(z["pixel_size_um"])
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - numpy raises many types for corrupt files
        raise InputError(field, f"cannot read {path.name} as a NumPy file: {exc}") from None
    arr = check_frames(arr, field)
    meta["dtype"] = str(arr.dtype)
    meta["n_raw"] = arr.shape[0]
    return _binned([arr], arr.shape[0], bin_frames, field), meta


class _TiffLog(logging.Handler):
    """Collects tifffile's log messages while a file is read (so none reach stderr)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(re.sub(r"<tifffile\.[^>]*>\s*", "", record.getMessage()))

    def __enter__(self):
        self._logger = logging.getLogger("tifffile")
        self._saved = self._logger.propagate
        self._logger.addHandler(self)
        self._logger.propagate = False
        return self

    def __exit__(self, *exc):
        self._logger.removeHandler(self)
        self._logger.propagate = self._saved
        return False


def _read_tiff(path: Path, bin_frames: int, field: str):
    with _TiffLog() as log:
        frames, meta = _read_tiff_quiet(path, bin_frames, field, log)
    if log.messages:
        meta["read_warnings"] = sorted(set(log.messages))[:10]
    return frames, meta


def _truncation(tf, path: Path, log: _TiffLog, n_found: int) -> str | None:
    """Why the file looks truncated (pages announced but missing, data beyond its end), or None."""
    size = path.stat().st_size
    announced = None
    if tf.is_imagej and tf.imagej_metadata:
        v = tf.imagej_metadata.get("images")
        announced = int(v) if isinstance(v, (int, float)) and v > 0 else None
    if announced is not None and announced > n_found:
        return f"its metadata announces {announced} frames but only {n_found} can be read"
    for page in tf.pages:
        offsets = getattr(page, "dataoffsets", ()) or ()
        counts = getattr(page, "databytecounts", ()) or ()
        if any(o + c > size for o, c in zip(offsets, counts)):
            return "pixel data run past the end of the file"
    bad = [m for m in log.messages if "invalid page offset" in m or "corrupted" in m]
    if bad:
        return f"tifffile: {bad[0]}"
    return None


def _read_tiff_quiet(path: Path, bin_frames: int, field: str, log: _TiffLog):
    import tifffile

    meta: dict = {"format": "tiff"}
    try:
        tf = tifffile.TiffFile(path)
    except Exception as exc:  # noqa: BLE001 - tifffile raises TiffFileError, ValueError, struct.error, ...
        raise InputError(field, f"cannot read {path.name} as a TIFF file ({type(exc).__name__}: {exc})") from None
    try:
        with tf:
            if not tf.series:
                raise InputError(field, f"{path.name} is not a readable TIFF stack (no images found; corrupt file?)")
            series = tf.series[0]
            n_found = int(np.prod([s for s, a in zip(series.shape, series.axes) if a not in "YXS"])) \
                if series.axes else 1
            why = _truncation(tf, path, log, n_found)
            if why is not None:
                raise InputError(field, f"{path.name} looks truncated or corrupt ({why}); copy the file again")
            shape = tuple(series.shape)
            dtype = np.dtype(series.dtype)
            meta["dtype"] = str(dtype)
            _tiff_metadata(tf, meta)
            if dtype.kind not in "uif":
                raise InputError(field, f"pixel type {dtype} is not supported; use 8/16/32-bit integers or floats")
            if "S" in series.axes and shape[series.axes.index("S")] > 1:
                raise InputError(field, f"{path.name} holds colour (RGB) images; give a greyscale stack")
            squeezed = tuple(s for s in shape if s != 1)
            pages_as_frames = False
            if (len(squeezed) == 2 or len(shape) == 2) and len(tf.series) > 1 and all(
                    tuple(s.shape) == shape and np.dtype(s.dtype) == dtype for s in tf.series):
                # one single-page series per frame (written page by page): the pages are the frames
                pages_as_frames = True
                squeezed = (len(tf.series),) + squeezed[-2:]
            elif len(squeezed) == 2 or len(shape) == 2:
                raise InputError(field, f"{path.name} holds a single frame of {shape[-2]}×{shape[-1]} pixels; the "
                                        "analysis needs at least 2 frames (a reference frame and one later frame)")
            if len(squeezed) != 3:
                raise InputError(field, f"{path.name}: expected a greyscale stack (frames, rows, cols), got shape "
                                        f"{shape} (axes {series.axes!r})")
            n = squeezed[0]
            if pages_as_frames:
                def chunks():
                    for i in range(0, n, 64):
                        block = np.stack([tf.series[j].asarray() for j in range(i, min(n, i + 64))])
                        yield check_frames(block.reshape((-1,) + squeezed[1:]), field, min_frames=1)

                frames = _binned(chunks(), n, bin_frames, field)
            elif len(tf.pages) == n and bin_frames > 1:
                step = max(bin_frames, (64 // bin_frames) * bin_frames)

                def chunks():
                    for i in range(0, n, step):
                        block = tf.asarray(key=range(i, min(n, i + step)))
                        yield check_frames(block.reshape((-1,) + squeezed[1:]), field, min_frames=1)

                frames = _binned(chunks(), n, bin_frames, field)
            else:
                arr = check_frames(series.asarray().reshape(squeezed), field)
                frames = _binned([arr], n, bin_frames, field)
            meta["n_raw"] = n
    except InputError:
        raise
    except MemoryError:
        raise InputError(field, f"{path.name} does not fit in memory; bin it on reading (bin_frames)") from None
    except Exception as exc:  # noqa: BLE001 - truncated/corrupt pixel data
        raise InputError(field, f"cannot read the pixel data of {path.name} ({type(exc).__name__}: {exc}); "
                                "the file may be truncated or corrupt") from None
    return frames, meta


_UM_UNITS = {"um": 1.0, "µm": 1.0, "\u00b5m": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0,
             "\\u00b5m": 1.0, "nm": 1e-3, "nanometer": 1e-3, "mm": 1e3, "millimeter": 1e3}
_T_UNITS = {"s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0, "ms": 1e-3, "millisecond": 1e-3,
            "min": 60.0, "minute": 60.0, "h": 3600.0, "hour": 3600.0}


def _tiff_metadata(tf, meta: dict):
    """Frame times and pixel size from ImageJ or OME metadata (whatever is present)."""
    extra = {}
    ij = tf.imagej_metadata if tf.is_imagej else None
    if ij:
        tunit = _T_UNITS.get(str(ij.get("tunit", "s")).strip().lower(), 1.0)
        fint = ij.get("finterval")
        if isinstance(fint, (int, float)) and fint > 0:
            meta["interval_s"] = float(fint) * tunit
        props = ij.get("Properties") or {}
        if isinstance(props, dict) and "times_s" in props:
            try:
                meta["times_s"] = json.loads(props["times_s"])
            except (TypeError, ValueError):
                pass
        unit = _UM_UNITS.get(str(ij.get("unit", "")).strip().lower())
        if unit is not None:
            res = tf.pages[0].tags.get("XResolution")
            if res is not None:
                num, den = res.value
                if num > 0:
                    meta["pixel_size_um"] = den / num * unit
        extra = {k: v for k, v in ij.items() if isinstance(v, (int, float, str))}
    elif tf.is_ome and tf.ome_metadata:
        try:
            root = ET.fromstring(tf.ome_metadata)
            ns = {"ome": root.tag.split("}")[0].strip("{")} if root.tag.startswith("{") else {}
            pix = root.find(".//ome:Pixels", ns) if ns else root.find(".//Pixels")
            if pix is not None:
                psx = pix.get("PhysicalSizeX")
                unit = _UM_UNITS.get((pix.get("PhysicalSizeXUnit") or "µm").lower())
                if psx and unit:
                    meta["pixel_size_um"] = float(psx) * unit
                planes = pix.findall("ome:Plane", ns) if ns else pix.findall("Plane")
                dts = [(p.get("DeltaT"), p.get("DeltaTUnit") or "s") for p in planes]
                if dts and all(d is not None for d, _ in dts):
                    meta["times_s"] = [float(d) * _T_UNITS.get(u.lower(), 1.0) for d, u in dts]
                ti = pix.get("TimeIncrement")
                if ti and "times_s" not in meta:
                    meta["interval_s"] = float(ti) * _T_UNITS.get((pix.get("TimeIncrementUnit") or "s").lower(), 1.0)
        except (ET.ParseError, ValueError):
            pass
    if "pixel_size_um" not in meta and not ij:
        res = tf.pages[0].tags.get("XResolution")
        runit = tf.pages[0].tags.get("ResolutionUnit")
        if res is not None and runit is not None and int(runit.value) == 3:  # centimetre
            num, den = res.value
            if num > 0:
                meta["pixel_size_um"] = den / num * 1e4
    meta["extra"] = extra


# ---------------------------------------------------------------------------- binning
def bin_stack(stack: ImageStack, n: int) -> ImageStack:
    """Average groups of ``n`` consecutive frames (incomplete last group dropped)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise InputError("bin_frames", f"must be an integer >= 1, got {n!r}")
    if n == 1:
        return stack
    nb = stack.n_frames // n
    if nb < 2:
        raise InputError("bin_frames", f"binning {stack.n_frames} frames by {n} leaves {nb}; need at least 2")
    m = nb * n
    frames = stack.frames[:m].reshape((nb, n) + stack.shape).mean(axis=1)
    times = stack.times_s[:m].reshape(nb, n).mean(axis=1)
    info = dict(stack.info, bin_frames=stack.info.get("bin_frames", 1) * n,
                dropped_frames=stack.info.get("dropped_frames", 0) + stack.n_frames - m)
    return replace(stack, frames=frames, times_s=times, info=info)


# ---------------------------------------------------------------------------- writing
def save_stack(path, stack: ImageStack, *, dtype: str = "uint16", counts_per_unit: float | None = None) -> Path:
    """Write a stack as an ImageJ TIFF (``.tif``; uint8, uint16 or float32) or ``.npz``.

    The TIFF carries the pixel size (X/Y resolution in µm), the mean frame interval
    (``finterval``) and the exact frame times (property ``times_s``), so :func:`load_stack`
    reads them back. Integer types are scaled by ``counts_per_unit`` (default: the
    brightest pixel maps to 90 % of the range). Written to a temporary name, then renamed.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if suffix == ".npz":
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, frames=stack.frames.astype(np.float32), times_s=stack.times_s,
                                pixel_size_um=stack.pixel_size_um)
        os.replace(tmp, path)
        return path
    if suffix not in TIFF_SUFFIXES:
        raise InputError("output", f"{path.name}: write .tif/.tiff or .npz, not {suffix!r}")
    import tifffile

    dt = np.dtype(dtype)
    if dt.kind == "u":
        top = np.iinfo(dt).max
        scale = counts_per_unit if counts_per_unit is not None else 0.9 * top / max(float(stack.frames.max()), 1e-30)
        data = np.clip(np.rint(stack.frames * scale), 0, top).astype(dt)
    elif dt == np.float32:
        scale, data = 1.0, stack.frames.astype(np.float32)
    else:
        raise InputError("dtype", f"must be uint8, uint16 or float32, got {dtype!r}")
    t = stack.times_s
    interval = float(np.mean(np.diff(t))) if len(t) > 1 else 0.0
    px = stack.pixel_size_um
    tifffile.imwrite(tmp, data, imagej=True, resolution=(1.0 / px, 1.0 / px),
                     metadata={"axes": "TYX", "unit": "um", "finterval": interval, "tunit": "s",
                               "Properties": {"times_s": json.dumps([float(x) for x in t]),
                                              "counts_per_unit": f"{scale:.9g}"}})
    os.replace(tmp, path)
    return path


def parse_rc(text: str, field: str, n: int = 2) -> tuple[float, ...]:
    """Parse 'ROW,COL' (or n comma-separated numbers) from the command line."""
    parts = [p for p in re.split(r"[,\s]+", str(text).strip()) if p]
    try:
        vals = tuple(float(p) for p in parts)
    except ValueError:
        vals = ()
    if len(vals) != n or not all(math.isfinite(v) for v in vals):
        raise InputError(field, f"expected {n} comma-separated numbers, got {text!r}")
    return vals

