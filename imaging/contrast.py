"""Total contrast, particle mask and region averages.

Xu et al. (Joule 2022, Experimental Procedures, Eq. 1): the total contrast of frame k is
(I_k − I₀)/I₀ with I₀ the frame before any current flows; the particle mask is an
intensity threshold on that first frame (pixels below it are background); the
"normalised intensity change" is the total contrast averaged over the particle.

Delithiation raises the intensity (positive contrast, red in the papers' maps);
lithiation lowers it.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from nmcfx.errors import InputError

#: Smallest particle mask accepted (pixels).
MIN_MASK_PIXELS = 20


def threshold_value(frame: np.ndarray, threshold="otsu", field: str = "mask.threshold") -> float:
    """``"otsu"`` (skimage.filters.threshold_otsu) or a user intensity value."""
    frame = np.asarray(frame, dtype=float)
    lo, hi = float(frame.min()), float(frame.max())
    if isinstance(threshold, str):
        if threshold.strip().lower() != "otsu":
            try:
                threshold = float(threshold)
            except ValueError:
                raise InputError(field, f"must be 'otsu' or an intensity value, got {threshold!r}") from None
        else:
            if hi <= lo:
                raise InputError(field, "the reference frame is uniform: no particle to threshold")
            from skimage.filters import threshold_otsu

            return float(threshold_otsu(frame))
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise InputError(field, f"must be 'otsu' or an intensity value, got {threshold!r}")
    if not lo <= threshold < hi:
        raise InputError(field, f"{threshold:g} leaves the particle mask empty or full; the reference frame's "
                                f"intensities span [{lo:.6g}, {hi:.6g}]")
    return float(threshold)


def _touches_edge(mask: np.ndarray) -> bool:
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


def _looks_dark(frame: np.ndarray, thr: float) -> bool:
    """Is there a compact region below the threshold that does not touch the edge (a dark particle)?"""
    labels, n = ndimage.label(frame <= thr)
    for lab in range(1, n + 1):
        comp = labels == lab
        if comp.sum() >= MIN_MASK_PIXELS and not _touches_edge(comp):
            return True
    return False


def particle_mask(frame: np.ndarray, threshold="otsu", *, seed_rc=None, invert: bool = False,
                  field: str = "mask") -> tuple[np.ndarray, float]:
    """Mask of the particle: pixels above the threshold (below it with ``invert``, for a particle
    darker than its surroundings), the connected component that holds ``seed_rc`` (default:
    the largest), holes filled.

    Raises :class:`InputError` if the mask is empty (or smaller than 20 px) or touches the
    image edge (the particle is cut off, so its shape and centre of mass are unknown).
    """
    frame = np.asarray(frame, dtype=float)
    thr = threshold_value(frame, threshold, f"{field}.threshold")
    side, other = ("below", "above") if invert else ("above", "below")
    hint = "" if invert else "; if the particle is darker than its surroundings use --invert (or --mask FILE)"
    selected = frame < thr if invert else frame > thr
    labels, n = ndimage.label(selected)
    if n == 0:
        raise InputError(field, f"the particle mask is empty (no pixel {side} the threshold {thr:.6g}){hint}")
    if seed_rc is not None:
        r, c = (int(round(v)) for v in seed_rc)
        if not (0 <= r < frame.shape[0] and 0 <= c < frame.shape[1]):
            raise InputError(f"{field}.particle", f"(row {r}, col {c}) is outside the {frame.shape[0]}×{frame.shape[1]} frame")
        lab = labels[r, c]
        if lab == 0:
            raise InputError(f"{field}.particle", f"pixel (row {r}, col {c}) is {other} the threshold {thr:.6g}: "
                                                  f"not on a particle{hint}")
    else:
        sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
        lab = int(np.argmax(sizes)) + 1
    mask = ndimage.binary_fill_holes(labels == lab)
    npx = int(mask.sum())
    if npx < MIN_MASK_PIXELS:
        raise InputError(field, f"the particle mask is empty or tiny ({npx} px {side} the threshold {thr:.6g}); "
                                f"need at least {MIN_MASK_PIXELS} px — {'raise' if invert else 'lower'} the threshold")
    if _touches_edge(mask):
        dark = "" if invert or not _looks_dark(frame, thr) else (
            "; the image holds a dark compact region inside the field: if that is the particle, use --invert "
            "(or --mask FILE)")
        raise InputError(field, f"the particle mask ({npx} px, threshold {thr:.6g}) touches the image edge: the "
                                "particle is cut off or the threshold is wrong; use a larger field of view, "
                                "another threshold, a seed pixel on the particle or a mask file" + dark)
    return mask, thr


def reference_image(frames: np.ndarray, reference_index: int, average: int = 1) -> np.ndarray:
    """I₀: the reference frame, or the mean of the ``average`` frames ending at it (all before
    the current starts), which lowers the noise every contrast frame inherits from I₀."""
    if isinstance(average, bool) or not isinstance(average, (int, np.integer)) or average < 1:
        raise InputError("reference_average", f"must be an integer >= 1, got {average!r}")
    first = reference_index - average + 1
    if first < 0:
        raise InputError("reference_average", f"averaging {average} frames ending at the reference frame "
                                              f"{reference_index} needs {average - 1 - reference_index} more frame(s) "
                                              "before it")
    return np.asarray(frames[first:reference_index + 1], dtype=float).mean(axis=0)


def total_contrast(frames: np.ndarray, reference_index: int, mask: np.ndarray | None = None,
                   reference: np.ndarray | None = None) -> np.ndarray:
    """(I_k − I₀)/I₀ for every frame (Xu 2022 Eq. 1), I₀ = ``reference`` or the reference frame.
    Pixels with I₀ ≤ 0 get NaN; inside ``mask`` that is an error (intensities must be offset-free)."""
    frames = np.asarray(frames, dtype=float)
    ref = frames[reference_index] if reference is None else np.asarray(reference, dtype=float)
    bad = ref <= 0
    if mask is not None and np.any(bad & mask):
        raise InputError("stack", "the reference frame has zero or negative intensity inside the particle; the "
                                  "total contrast needs offset-free intensities")
    safe = np.where(bad, np.nan, ref)
    return frames / safe[None] - 1.0


def mean_in(values: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Mean over a boolean region of every frame: (n,)."""
    region = np.asarray(region, bool)
    return np.asarray(values)[:, region].mean(axis=1)


def centroid_rc(mask: np.ndarray) -> tuple[float, float]:
    rr, cc = np.nonzero(mask)
    return float(rr.mean()), float(cc.mean())


def disk_region(shape, center_rc, radius_px: float, within: np.ndarray | None = None) -> np.ndarray:
    """Pixels whose centres lie within ``radius_px`` of ``center_rc`` (at least the nearest one)."""
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    d2 = (rr - center_rc[0]) ** 2 + (cc - center_rc[1]) ** 2
    region = d2 <= radius_px**2
    if not region.any():
        region = d2 == d2.min()
    if within is not None:
        region &= within
        if not region.any():
            raise InputError("region", "the region around the centre has no pixel inside the particle mask")
    return region


def eroded(mask: np.ndarray, px: float) -> np.ndarray:
    """Mask pixels at least ``px`` from the background (Euclidean distance transform)."""
    if px <= 0:
        return mask.copy()
    dist = ndimage.distance_transform_edt(mask)
    return mask & (dist > px)
