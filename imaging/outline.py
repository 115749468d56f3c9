"""Particle outline from an image → contour points in µm → a mesh of the same shape.

Xu et al. (Joule 2022) simulate "a particle with the same cross-sectional shape as the
particle examined". Here the outline is the iso-line of the (drift-corrected) reference
frame at the particle's edge level, found with :func:`skimage.measure.find_contours`
(sub-pixel, marching squares on the grey levels rather than on the binary mask, whose
staircase would inflate the perimeter), restricted to the neighbourhood of the particle
mask so the marker spot and other particles are ignored.

Edge level (``level="half"``, default): halfway between the median intensity inside
the particle (mask eroded by 3 px) and outside it (background beyond 6 px of the mask).
For a straight edge blurred by a symmetric PSF that is exactly the true edge; on a convex
edge of radius R the half-level contour lies about σ²/(2R) inside (σ the PSF's Gaussian
width: 5 nm for R = 1.2 µm). ``level="threshold"`` uses the mask threshold instead,
or give a number.

The contour is smoothed with a periodic Gaussian filter along its arc length
(``smoothing_um``, default one pixel) and resampled about every 1.5 pixels. Coordinates:
x = column × pixel size, y = row × pixel size (image axes; y points down the rows).
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from nmcfx.errors import InputError


@dataclass
class Outline:
    points_um: np.ndarray  # (N, 2) x, y in µm, counter-clockwise in (x, y), not closed
    pixel_size_um: float
    level: float
    area_um2: float
    perimeter_um: float
    raw_area_um2: float
    raw_perimeter_um: float
    smoothing_um: float

    @property
    def centroid_um(self) -> tuple[float, float]:
        x, y = self.points_um[:, 0], self.points_um[:, 1]
        xn, yn = np.roll(x, -1), np.roll(y, -1)
        cr = x * yn - xn * y
        a = 0.5 * cr.sum()
        return float(((x + xn) * cr).sum() / (6 * a)), float(((y + yn) * cr).sum() / (6 * a))

    @property
    def equivalent_diameter_um(self) -> float:
        return 2.0 * math.sqrt(self.area_um2 / math.pi)

    def write_csv(self, path) -> Path:
        """x_um,y_um CSV readable as ``geometry.contour_csv`` (temporary name, then renamed)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with open(tmp, "w", newline="") as fh:
            fh.write(f"# particle outline from an image: pixel {self.pixel_size_um:g} µm, edge level {self.level:.6g}, "
                     f"smoothing {self.smoothing_um:g} µm; area {self.area_um2:.5g} µm², "
                     f"perimeter {self.perimeter_um:.5g} µm\n")
            w = csv.writer(fh)
            w.writerow(["x_um", "y_um"])
            for x, y in self.points_um:
                w.writerow([f"{x:.6f}", f"{y:.6f}"])
        os.replace(tmp, path)
        return path


def polygon_area_perimeter(p: np.ndarray) -> tuple[float, float]:
    x, y = p[:, 0], p[:, 1]
    area = 0.5 * float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))
    perim = float(np.linalg.norm(p - np.roll(p, -1, axis=0), axis=1).sum())
    return area, perim


def edge_level(frame: np.ndarray, mask: np.ndarray) -> float:
    """Half-way between the particle interior and the surrounding background."""
    inner = ndimage.binary_erosion(mask, iterations=3)
    if not inner.any():
        inner = mask
    outer = ~ndimage.binary_dilation(mask, iterations=6)
    if not outer.any():
        raise InputError("outline", "no background around the particle to define its edge")
    return 0.5 * (float(np.median(frame[inner])) + float(np.median(frame[outer])))


def mask_outline(frame: np.ndarray, mask: np.ndarray, *, pixel_size_um: float, level="half",
                 threshold: float | None = None, smoothing_um: float | None = None) -> Outline:
    """Outline of the particle in ``mask`` from the grey levels of ``frame`` (module docstring)."""
    from skimage.measure import find_contours

    frame = np.asarray(frame, dtype=float)
    mask = np.asarray(mask, bool)
    if level == "half":
        lev = edge_level(frame, mask)
    elif level == "threshold":
        if threshold is None:
            raise InputError("outline.level", "'threshold' needs the mask threshold")
        lev = float(threshold)
    elif isinstance(level, (int, float)) and not isinstance(level, bool) and math.isfinite(level):
        lev = float(level)
    else:
        raise InputError("outline.level", f"must be 'half', 'threshold' or an intensity, got {level!r}")
    near = ndimage.binary_dilation(mask, iterations=6)
    bg = float(np.median(frame[~near])) if (~near).any() else float(frame.min())
    img = np.where(near, frame, bg)
    img = np.pad(img, 1, mode="constant", constant_values=bg)
    contours = [c - 1.0 for c in find_contours(img, lev)]
    closed = [c for c in contours if len(c) > 8 and np.allclose(c[0], c[-1])]
    if not closed:
        raise InputError("outline", f"no closed outline at the edge level {lev:.6g} around the particle")
    r0, c0 = np.argwhere(mask).mean(axis=0)

    def contains(c):
        from matplotlib.path import Path as MPath

        return MPath(c[:, ::-1]).contains_point((c0, r0))

    inside = [c for c in closed if contains(c)] or closed
    best = max(inside, key=lambda c: abs(polygon_area_perimeter(c[:, ::-1])[0]))
    xy = best[:-1, ::-1] * pixel_size_um  # (col, row) → (x, y) µm
    raw_area, raw_perim = polygon_area_perimeter(xy)
    if raw_area < 0:
        xy = xy[::-1]
    sm = pixel_size_um if smoothing_um is None else float(smoothing_um)
    if not math.isfinite(sm) or sm < 0:
        raise InputError("outline.smoothing_um", f"must be >= 0 µm, got {smoothing_um!r}")
    pts = _smooth_resample(xy, sm, spacing=1.5 * pixel_size_um)
    area, perim = polygon_area_perimeter(pts)
    return Outline(pts, pixel_size_um, lev, abs(area), perim, abs(raw_area), raw_perim, sm)


def _smooth_resample(xy: np.ndarray, sigma: float, spacing: float) -> np.ndarray:
    """Periodic Gaussian smoothing along arc length, then equal arc-length resampling."""
    seg = np.linalg.norm(np.diff(np.vstack([xy, xy[:1]]), axis=0), axis=1)
    L = float(seg.sum())
    s = np.concatenate([[0.0], np.cumsum(seg)])
    # dense uniform resampling first so the filter works in arc length
    m = max(64, int(math.ceil(L / (0.25 * spacing))))
    su = np.linspace(0.0, L, m, endpoint=False)
    closed = np.vstack([xy, xy[:1]])
    dense = np.column_stack([np.interp(su, s, closed[:, 0]), np.interp(su, s, closed[:, 1])])
    if sigma > 0:
        dense = ndimage.gaussian_filter1d(dense, sigma / (L / m), axis=0, mode="wrap")
    seg = np.linalg.norm(np.diff(np.vstack([dense, dense[:1]]), axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    n = int(min(300, max(24, round(s[-1] / spacing))))
    st = np.linspace(0.0, s[-1], n, endpoint=False)
    closed = np.vstack([dense, dense[:1]])
    return np.column_stack([np.interp(st, s, closed[:, 0]), np.interp(st, s, closed[:, 1])])


def outline_mesh(outline: Outline, *, mesh_size_um: float | None = None, surface_mesh_size_um: float | None = None,
                 comm=None, sectors=None):
    """Mesh the outline with :func:`nmcfx.geometries.contour` (collective over ``comm``)."""
    from mpi4py import MPI

    from nmcfx.geometries import contour

    d = outline.equivalent_diameter_um
    h = mesh_size_um if mesh_size_um is not None else d / 20.0
    hs = surface_mesh_size_um if surface_mesh_size_um is not None else h / 3.0
    return contour(outline.points_um, 0.0, comm=comm if comm is not None else MPI.COMM_WORLD, mesh_size_um=h,
                   surface_mesh_size_um=hs, sectors=sectors)
