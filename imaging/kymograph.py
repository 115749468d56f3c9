"""Line-cut kymographs: contrast along a line vs position and time (or capacity).

Lun et al. (seed 000, Fig. 5c) follow the differential intensity along a horizontal
line cut across a particle against the charge passed ("capacity"); Xu et al. (Joule
2022, Fig. 3E) along a line through the centre against time.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass

import numpy as np

from nmcfx.errors import InputError


@dataclass
class Kymograph:
    """``values[k, j]``: contrast of frame k at sample j of the line from ``p0`` to ``p1`` (row, col)."""

    p0_rc: tuple[float, float]
    p1_rc: tuple[float, float]
    positions_um: np.ndarray  # (m,) distance from p0
    times_s: np.ndarray  # (n,)
    values: np.ndarray  # (n, m)
    inside: np.ndarray  # (m,) sample on the particle mask
    linewidth_px: int = 1

    def write_csv(self, path, capacity_mAh_g=None):
        """Long format: time_s[, capacity_mAh_g], position_um, inside, contrast."""
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            head = ["time_s"] + (["capacity_mAh_g"] if capacity_mAh_g is not None else []) + \
                   ["position_um", "inside_mask", "contrast"]
            w.writerow(head)
            for k, t in enumerate(self.times_s):
                cap = [f"{capacity_mAh_g[k]:.6g}"] if capacity_mAh_g is not None else []
                for j, s in enumerate(self.positions_um):
                    w.writerow([f"{t:.6g}"] + cap + [f"{s:.6g}", int(self.inside[j]), f"{self.values[k, j]:.6g}"])


def check_line(p0_rc, p1_rc, shape, field: str = "line") -> tuple[tuple[float, float], tuple[float, float]]:
    p0 = tuple(float(v) for v in p0_rc)
    p1 = tuple(float(v) for v in p1_rc)
    for p in (p0, p1):
        if not (0 <= p[0] <= shape[0] - 1 and 0 <= p[1] <= shape[1] - 1):
            raise InputError(field, f"end point (row {p[0]:g}, col {p[1]:g}) is outside the "
                                    f"{shape[0]}×{shape[1]} frame")
    if np.hypot(p1[0] - p0[0], p1[1] - p0[1]) < 2:
        raise InputError(field, "the line is shorter than 2 px")
    return p0, p1


def default_line(mask: np.ndarray, center_rc, margin_px: int = 4):
    """Horizontal line through ``center_rc`` spanning the mask on that row plus a margin."""
    r = int(round(center_rc[0]))
    cols = np.flatnonzero(mask[r])
    if cols.size == 0:
        cols = np.flatnonzero(mask.any(axis=0))
    c0 = max(0, int(cols.min()) - margin_px)
    c1 = min(mask.shape[1] - 1, int(cols.max()) + margin_px)
    return (float(r), float(c0)), (float(r), float(c1))


def line_kymograph(values: np.ndarray, times_s, mask: np.ndarray, p0_rc, p1_rc, *, pixel_size_um: float,
                   linewidth_px: int = 1) -> Kymograph:
    """Sample every frame along the line (skimage.measure.profile_line, bilinear, averaged
    over ``linewidth_px`` pixels across the line)."""
    from skimage.measure import profile_line

    p0, p1 = check_line(p0_rc, p1_rc, mask.shape)
    if isinstance(linewidth_px, bool) or not isinstance(linewidth_px, (int, np.integer)) or not 1 <= linewidth_px <= 50:
        raise InputError("line_width_px", f"must be an integer in [1, 50], got {linewidth_px!r}")
    vals = np.nan_to_num(np.asarray(values, dtype=float))
    prof = np.array([profile_line(v, p0, p1, linewidth=linewidth_px, order=1, mode="nearest", reduce_func=np.mean)
                     for v in vals])
    inside = profile_line(mask.astype(float), p0, p1, linewidth=1, order=0, mode="constant") > 0.5
    length = float(np.hypot(p1[0] - p0[0], p1[1] - p0[1]))
    s = np.linspace(0.0, length, prof.shape[1]) * pixel_size_um
    return Kymograph(p0, p1, s, np.asarray(times_s, dtype=float), prof, inside, int(linewidth_px))
