"""Closed 2D outlines (circle, ellipse, smooth contour) and their gmsh/OCC curves.

An outline knows its analytic (or densely sampled) area, perimeter and centroid, maps
polar angles about the centroid and arbitrary points to *arc-length positions*
``s`` in [0, 1) (counter-clockwise from the boundary point at polar angle 0), and adds
its curves to an OpenCASCADE model, cut at the positions of a sector layout so that
every cut point becomes a model vertex (hence a mesh vertex).
"""

from __future__ import annotations

import math

import numpy as np

from nmcfx.errors import InputError
from nmcfx.materials._roots import brentq as brent_root

from ._elliptic import ellipe, ellipeinc
from .sectors import Layout


# SciPy is imported on first use, by contours only: disks and ellipses need none of it (import ~0.5 s,
# ~45 MB; benchmarks/README.md)
def splev(*args, **kwargs):  # noqa: D103
    from scipy.interpolate import splev as f

    return f(*args, **kwargs)


def splprep(*args, **kwargs):  # noqa: D103
    from scipy.interpolate import splprep as f

    return f(*args, **kwargs)


def brentq(*args, **kwargs):  # noqa: D103
    from scipy.optimize import brentq as f

    return f(*args, **kwargs)


def cKDTree(*args, **kwargs):  # noqa: D103
    from scipy.spatial import cKDTree as f

    return f(*args, **kwargs)


TWO_PI = 2.0 * math.pi
# Contours are handed to gmsh as cubic splines with at most this many knot spans.
MAX_SPANS = 300


class CircleOutline:
    kind = "circle"

    def __init__(self, radius: float):
        self.r = float(radius)
        self.centroid = (0.0, 0.0)
        self.area = math.pi * self.r**2
        self.perimeter = TWO_PI * self.r

    def s_at_angle(self, theta_deg: float, field: str) -> float:
        return (theta_deg / 360.0) % 1.0

    def s_of_point(self, x: float, y: float) -> float:
        return (math.atan2(y, x) / TWO_PI) % 1.0

    def add_curves(self, occ, layout: Layout, z: float = 0.0) -> list[int]:
        if layout.closed:
            return [occ.addCircle(0.0, 0.0, z, self.r)]
        angles = [TWO_PI * p[0] for p in layout.pieces]
        curves = []
        for k, a0 in enumerate(angles):
            a1 = angles[(k + 1) % len(angles)]
            while a1 <= a0:
                a1 += TWO_PI
            curves.append(occ.addCircle(0.0, 0.0, z, self.r, angle1=a0, angle2=a1))
        return curves


class EllipseOutline:
    """Ellipse centred at the origin, semi-axes a (along the rotated x axis) and b."""

    kind = "ellipse"

    def __init__(self, a: float, b: float, angle_deg: float = 0.0):
        alpha = math.radians(angle_deg)
        if a < b:  # OCC wants r1 >= r2: rotate the frame by 90°
            a, b, alpha = b, a, alpha + 0.5 * math.pi
        self.a, self.b, self.alpha = float(a), float(b), alpha
        self.m = 1.0 - (self.b / self.a) ** 2
        self.centroid = (0.0, 0.0)
        self.area = math.pi * self.a * self.b
        self.perimeter = 4.0 * self.a * float(ellipe(self.m))
        self._E90 = float(ellipeinc(0.5 * math.pi, self.m))
        self.psi0 = self._psi_of_polar(0.0)
        self.L0 = self._arclength(self.psi0)

    # eccentric anomaly psi: point = R(alpha) (a cos psi, b sin psi)
    def _arclength(self, psi: float) -> float:
        """Arc length from psi = 0 to psi (any real psi)."""
        return self.a * (float(ellipeinc(psi + 0.5 * math.pi, self.m)) - self._E90)

    def _psi_of_polar(self, theta: float) -> float:
        phi = theta - self.alpha
        return math.atan2(self.a * math.sin(phi), self.b * math.cos(phi))

    def _s_of_psi(self, psi: float) -> float:
        return ((self._arclength(psi) - self.L0) / self.perimeter) % 1.0

    def _psi_of_s(self, s: float) -> float:
        if s <= 0.0:
            return self.psi0
        target = self.L0 + s * self.perimeter
        return brent_root(lambda p: self._arclength(p) - target, self.psi0, self.psi0 + TWO_PI, xtol=1e-14)

    def s_at_angle(self, theta_deg: float, field: str) -> float:
        return self._s_of_psi(self._psi_of_polar(math.radians(theta_deg)))

    def s_of_point(self, x: float, y: float) -> float:
        c, s = math.cos(self.alpha), math.sin(self.alpha)
        xr, yr = c * x + s * y, -s * x + c * y
        return self._s_of_psi(math.atan2(yr / self.b, xr / self.a))

    def add_curves(self, occ, layout: Layout, z: float = 0.0) -> list[int]:
        axes = dict(zAxis=[0.0, 0.0, 1.0], xAxis=[math.cos(self.alpha), math.sin(self.alpha), 0.0])
        if layout.closed:
            return [occ.addEllipse(0.0, 0.0, z, self.a, self.b, **axes)]
        psis = [self._psi_of_s(p[0]) for p in layout.pieces]
        curves = []
        for k, p0 in enumerate(psis):
            p1 = psis[(k + 1) % len(psis)]
            while p1 <= p0:
                p1 += TWO_PI
            curves.append(occ.addEllipse(0.0, 0.0, z, self.a, self.b, angle1=p0, angle2=p1, **axes))
        return curves


def clean_contour_points(points, field: str, check_crossings: bool = True) -> np.ndarray:
    """Validate contour points: (N, 2) finite, >= 3 distinct, not self-crossing (unless
    ``check_crossings`` is off, e.g. for noisy points that will be smoothed); returns
    them counter-clockwise. Consecutive duplicates and a repeated closing point are
    dropped.
    """
    try:
        p = np.asarray(points, dtype=float)
    except (TypeError, ValueError) as exc:
        raise InputError(field, f"must be an (N, 2) array of x, y in µm ({exc})") from None
    if p.ndim != 2 or p.shape[1] != 2:
        raise InputError(field, f"must be an (N, 2) array of x, y in µm, got shape {p.shape}")
    if not np.all(np.isfinite(p)):
        bad = int(np.argwhere(~np.isfinite(p))[0, 0])
        raise InputError(f"{field}[{bad}]", "must be finite numbers (no NaN/inf)")
    if len(p) == 0:
        raise InputError(field, "needs at least 3 distinct points, got 0")
    scale = max(float(np.ptp(p[:, 0])), float(np.ptp(p[:, 1])), 1e-300)
    tol = 1e-9 * scale
    keep = [0]
    for i in range(1, len(p)):
        if np.linalg.norm(p[i] - p[keep[-1]]) > tol:
            keep.append(i)
    p = p[keep]
    while len(p) > 1 and np.linalg.norm(p[-1] - p[0]) <= tol:
        p = p[:-1]
    if len(p) < 3:
        raise InputError(field, f"needs at least 3 distinct points, got {len(p)}")
    seg = find_self_intersection(p) if check_crossings else None
    if seg is not None:
        i, j = seg
        raise InputError(
            field,
            f"contour intersects itself (segment {i}-{i + 1} crosses segment {j}-{(j + 1) % len(p)}); "
            "points must trace the outline once, in order",
        )
    area = polygon_area(p)
    if abs(area) <= 1e-12 * scale**2:
        raise InputError(field, "points are collinear (the contour encloses no area)")
    if area < 0:
        p = p[::-1].copy()
    return p


def polygon_area(p: np.ndarray) -> float:
    x, y = p[:, 0], p[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _segments_cross(p: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Whether polygon edges i and j (arrays) properly cross."""
    n = len(p)
    a1, b1 = p[i], p[(i + 1) % n]
    a2, b2 = p[j], p[(j + 1) % n]

    def orient(o, q, r):
        return (q[:, 0] - o[:, 0]) * (r[:, 1] - o[:, 1]) - (q[:, 1] - o[:, 1]) * (r[:, 0] - o[:, 0])

    return (orient(a1, b1, a2) * orient(a1, b1, b2) < 0) & (orient(a2, b2, a1) * orient(a2, b2, b1) < 0)


def find_self_intersection(p: np.ndarray) -> tuple[int, int] | None:
    """First pair (i, j), i < j, of non-adjacent polygon edges that properly cross, or None.

    Edges are bucketed on a grid (cell ~ 2 median edge lengths) and only edges sharing a
    cell are tested, so this is ~O(n) for reasonable outlines.
    """
    n = len(p)
    if n < 4:
        return None
    a, b = p, np.roll(p, -1, axis=0)
    lo_xy, hi_xy = np.minimum(a, b), np.maximum(a, b)
    cell = 2.0 * float(np.median(np.linalg.norm(b - a, axis=1)))
    origin = p.min(axis=0)
    if not cell > 0:
        cell = max(float(np.ptp(p)), 1e-300)
    lo = np.floor((lo_xy - origin) / cell).astype(np.int64)
    hi = np.floor((hi_xy - origin) / cell).astype(np.int64)
    counts = (hi[:, 0] - lo[:, 0] + 1) * (hi[:, 1] - lo[:, 1] + 1)
    if counts.sum() > 50 * n:  # a few very long edges: fall back to all pairs
        ii, jj = np.triu_indices(n, k=1)
    else:
        seg, cx, cy = [], [], []
        for e in np.nonzero(counts > 0)[0]:
            xs = np.arange(lo[e, 0], hi[e, 0] + 1)
            ys = np.arange(lo[e, 1], hi[e, 1] + 1)
            gx, gy = np.meshgrid(xs, ys, indexing="ij")
            seg.append(np.full(gx.size, e))
            cx.append(gx.ravel())
            cy.append(gy.ravel())
        seg, cx, cy = np.concatenate(seg), np.concatenate(cx), np.concatenate(cy)
        key = (cx - cx.min()) * (cy.max() - cy.min() + 1) + (cy - cy.min())
        order = np.argsort(key, kind="stable")
        key, seg = key[order], seg[order]
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        ends = np.r_[starts[1:], len(key)]
        pi, pj = [], []
        for s0, s1 in zip(starts, ends):
            if s1 - s0 > 1:
                members = seg[s0:s1]
                x, y = np.triu_indices(len(members), k=1)
                pi.append(members[x])
                pj.append(members[y])
        if not pi:
            return None
        ii, jj = np.concatenate(pi), np.concatenate(pj)
        ii, jj = np.minimum(ii, jj), np.maximum(ii, jj)
        pair = np.unique(ii * n + jj)
        ii, jj = pair // n, pair % n
    keep = (jj - ii > 1) & ~((ii == 0) & (jj == n - 1))
    ii, jj = ii[keep], jj[keep]
    hit = _segments_cross(p, ii, jj)
    if hit.any():
        k = int(np.argmax(hit))
        return int(ii[k]), int(jj[k])
    return None


class ContourOutline:
    """Smooth closed curve through (or, with smoothing, near) contour points.

    The curve is a periodic cubic spline (scipy ``splprep(per=1)``) through the points,
    or, with ``smoothing_um > 0``, a smoothing spline that may deviate from them by
    about that much (RMS). gmsh receives exactly this spline (as B-splines cut at the
    sector end points), so arc-length fractions computed here are those of the model.
    """

    kind = "contour"

    def __init__(self, points: np.ndarray, smoothing_um: float, field: str):
        p = np.asarray(points, dtype=float)  # cleaned, CCW
        self.field = field
        n = len(p)
        closed = np.vstack([p, p[:1]])
        s = n * smoothing_um**2
        try:
            self.tck, u = splprep([closed[:, 0], closed[:, 1]], s=s, per=1, k=3, quiet=2)
        except Exception as exc:  # pragma: no cover - scipy edge cases
            raise InputError(field, f"could not fit a closed spline through the points ({exc})") from None
        if self._num_spans() > MAX_SPANS:
            # Many points: gmsh gets slow with long B-splines. Re-interpolate the curve at
            # MAX_SPANS points equally spaced in arc length (deviation is reported).
            uu = np.linspace(0.0, 1.0, 64 * MAX_SPANS + 1)
            xy = np.column_stack(splev(uu, self.tck))
            L = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(xy, axis=0), axis=1))])
            us = np.interp(np.linspace(0.0, L[-1], MAX_SPANS, endpoint=False), L, uu)
            q = np.column_stack(splev(us, self.tck))
            q = np.vstack([q, q[:1]])
            self.tck, _ = splprep([q[:, 0], q[:, 1]], s=0.0, per=1, k=3, quiet=2)
        # Dense table of arc length, and area/centroid by Green's theorem, all with
        # Simpson's rule on a fine grid (errors ~1e-12 relative).
        m = int(min(max(4096, 32 * self._num_spans()), 200_000))
        self.ud = np.linspace(0.0, 1.0, m + 1)
        self.xy = np.column_stack(splev(self.ud, self.tck))
        half = np.linspace(0.0, 1.0, 2 * m + 1)
        x, y = splev(half, self.tck)
        dx, dy = splev(half, self.tck, der=1)
        w = np.full(2 * m + 1, 2.0)
        w[1::2] = 4.0
        w[0] = w[-1] = 1.0
        w /= 6.0 * m  # Simpson weights over [0, 1]
        speed = np.hypot(dx, dy)
        self.Lc = np.concatenate([[0.0], np.cumsum((speed[:-2:2] + 4 * speed[1:-1:2] + speed[2::2]) / (6.0 * m))])
        self.perimeter = float(self.Lc[-1])
        self.area = float(0.5 * np.sum(w * (x * dy - y * dx)))
        if self.area <= 0:
            raise InputError(field, "the smoothed contour encloses no area (reduce smoothing_um)")
        self.centroid = (
            float(np.sum(w * x * x * dy) / (2.0 * self.area)),
            float(-np.sum(w * y * y * dx) / (2.0 * self.area)),
        )
        # Position 0: where the ray from the centroid along +x meets the curve (outermost
        # hit); if it misses (centroid outside a C-shaped particle), the curve point whose
        # polar angle is closest to 0.
        hits = self._ray_hits(0.0)
        if hits:
            self.u0 = max(hits, key=lambda h: h[1])[0]
        else:
            rel = self.xy[:-1] - np.asarray(self.centroid)
            self.u0 = float(self.ud[int(np.argmin(np.abs(np.arctan2(rel[:, 1], rel[:, 0]))))])
        self.L0 = self._L(self.u0)
        # Distance of the input points from the final curve (nearest dense sample).
        self.max_deviation = float(cKDTree(self.xy).query(p)[0].max())
        if find_self_intersection(self._check_polygon()) is not None:
            raise InputError(
                field,
                "the smooth curve through the points intersects itself (points too irregular, or "
                "smoothing_um too large)",
            )

    # --- parametrisation helpers -------------------------------------------------
    def _L(self, u: float) -> float:
        """Arc length from parameter 0 to u (u taken modulo 1 unless already in [0, 1])."""
        if not 0.0 <= u <= 1.0:
            u = u % 1.0
        return float(np.interp(u, self.ud, self.Lc))

    def _u_of_L(self, L: float) -> float:
        return float(np.interp(L % self.perimeter, self.Lc, self.ud))

    def _s_of_u(self, u: float) -> float:
        return ((self._L(u) - self.L0) / self.perimeter) % 1.0

    def _u_of_s(self, s: float) -> float:
        return self._u_of_L(self.L0 + s * self.perimeter)

    def _point(self, u: float) -> np.ndarray:
        return np.array([float(v) for v in splev(u % 1.0, self.tck)])

    def _ray_hits(self, theta: float) -> list[tuple[float, float]]:
        """Curve parameters where the ray from the centroid at angle theta crosses the curve."""
        c = np.asarray(self.centroid)
        d = np.array([math.cos(theta), math.sin(theta)])
        rel = self.xy - c
        f = d[0] * rel[:, 1] - d[1] * rel[:, 0]
        g = rel @ d
        hits = []
        sign = f >= 0
        for j in np.nonzero(sign[:-1] != sign[1:])[0]:
            t = f[j] / (f[j] - f[j + 1])
            if g[j] + t * (g[j + 1] - g[j]) <= 0:
                continue  # crossing of the opposite half-line
            fu = lambda u: float(d[0] * (splev(u, self.tck)[1] - c[1]) - d[1] * (splev(u, self.tck)[0] - c[0]))
            try:
                u = brentq(fu, self.ud[j], self.ud[j + 1], xtol=1e-15)
            except ValueError:
                u = self.ud[j] + t * (self.ud[j + 1] - self.ud[j])
            hits.append((u % 1.0, float(g[j] + t * (g[j + 1] - g[j]))))
        return hits

    def _num_spans(self) -> int:
        t = self.tck[0]
        return int(np.unique(t[(t > 0.0) & (t < 1.0)]).size + 1)

    def _check_polygon(self) -> np.ndarray:
        """Eight samples per knot span: fine enough to see loops of the spline."""
        knots = np.unique(np.clip(self.tck[0], 0.0, 1.0))
        u = (knots[:-1, None] + np.diff(knots)[:, None] * np.arange(8)[None, :] / 8.0).ravel()
        return np.column_stack(splev(u, self.tck))

    # --- outline interface -----------------------------------------------------------
    def s_at_angle(self, theta_deg: float, field: str) -> float:
        hits = self._ray_hits(math.radians(theta_deg))
        if len(hits) != 1:
            raise InputError(
                field,
                f"the ray at {theta_deg:g}° from the contour centroid meets the outline "
                f"{len(hits)} times (contour not star-shaped there); use start_fraction/end_fraction",
            )
        return self._s_of_u(hits[0][0])

    def s_of_point(self, x: float, y: float) -> float:
        k = int(np.argmin(np.sum((self.xy - np.array([x, y])) ** 2, axis=1)))
        return self._s_of_u(self.ud[k])

    def add_curves(self, occ, layout: Layout, z: float = 0.0) -> list[int]:
        """Add the spline as OCC B-splines, cut at the layout's cut points and at u = 0.

        Each piece is the *same* cubic as the scipy spline, written as one Bézier
        segment per knot span (degree 3, interior knots of multiplicity 3), so the gmsh
        curve and the curve used to place sectors coincide exactly and stay C2 across
        cut points.
        """
        cuts = [0.0] if layout.closed else [self._u_of_s(p[0]) for p in layout.pieces]
        cuts = sorted(set(cuts) | {0.0})
        merged: list[float] = []
        for u in cuts:
            if not merged or u - merged[-1] > 1e-12:
                merged.append(u)
        if 1.0 - merged[-1] <= 1e-12 and len(merged) > 1:
            merged.pop()
        if len(merged) == 1:
            merged.append(0.5)
        ends = merged + [1.0]
        vertex = [occ.addPoint(*self._point(u), z) for u in merged]
        vertex.append(vertex[0])
        knots = np.unique(np.clip(self.tck[0], 0.0, 1.0))
        curves = []
        for k in range(len(merged)):
            ua, ub = ends[k], ends[k + 1]
            inner = knots[(knots > ua + 1e-12) & (knots < ub - 1e-12)]
            spans = np.concatenate([[ua], inner, [ub]])
            pos = np.column_stack(splev(spans, self.tck))
            der = np.column_stack(splev(spans, self.tck, der=1))
            tags = [vertex[k]]
            for i in range(len(spans) - 1):
                dt = (spans[i + 1] - spans[i]) / 3.0
                p1 = pos[i] + dt * der[i]
                p2 = pos[i + 1] - dt * der[i + 1]
                tags.append(occ.addPoint(p1[0], p1[1], z))
                tags.append(occ.addPoint(p2[0], p2[1], z))
                tags.append(vertex[k + 1] if i == len(spans) - 2 else occ.addPoint(pos[i + 1][0], pos[i + 1][1], z))
            mult = [4] + [3] * (len(spans) - 2) + [4]
            curves.append(occ.addBSpline(tags, degree=3, knots=list(spans), multiplicities=mult))
            occ.remove([(0, t) for t in tags[1:-1]])
        return curves
