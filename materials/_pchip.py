"""Piecewise cubic Hermite interpolation in NumPy (what the property tables need of SciPy).

The tables of :mod:`.tables` are PCHIP interpolants (Fritsch & Carlson, SIAM J. Numer. Anal. 17,
238 (1980), with the weighted harmonic mean of Fritsch & Butland (1984) for the interior slopes
and the shape-preserving three-point end formula), or cubic Hermite splines through given
slopes. Importing SciPy's interpolation package costs ~0.4-1 s and ~45 MB in a fresh process
(scipy.special and scipy.linalg come with it) — more than a whole small run — so the run path
uses this module instead. It computes the same slopes and the same piecewise polynomials
(``tests/test_materials.py`` compares values and derivatives with SciPy to round-off).

    >>> import numpy as np
    >>> p = pchip(np.array([0.0, 0.5, 1.0]), np.array([0.0, 1.0, 1.5]))
    >>> float(p(0.25)), float(p.derivative()(1.0))
    (0.59375, 0.5)
"""

from __future__ import annotations

import numpy as np


class PiecewiseCubic:
    """p(t) = Σ_m c[m, k] (t − x[k])^(3−m) on x[k] ≤ t ≤ x[k+1] (the layout of SciPy's ``PPoly``);
    evaluated at t clipped to [x[0], x[-1]] (callers handle extrapolation)."""

    def __init__(self, x: np.ndarray, c: np.ndarray):
        self.x = np.asarray(x, dtype=float)
        self.c = np.asarray(c, dtype=float)

    def _interval(self, t: np.ndarray) -> np.ndarray:
        k = np.searchsorted(self.x, t, side="right") - 1
        return np.clip(k, 0, len(self.x) - 2)

    def __call__(self, t):
        t = np.asarray(t, dtype=float)
        tc = np.clip(t, self.x[0], self.x[-1])
        k = self._interval(tc)
        return self.on_interval(k, tc - self.x[k])

    def on_interval(self, k: np.ndarray, s: np.ndarray) -> np.ndarray:
        """p at t = x[k] + s (k from :meth:`_interval`): for several interpolants on the same nodes,
        the interval search once."""
        out = self.c[0, k]
        for m in range(1, self.c.shape[0]):
            out = out * s + self.c[m, k]
        return out

    def derivative(self, nu: int = 1) -> "PiecewiseCubic":
        c = self.c
        for _ in range(nu):
            deg = c.shape[0] - 1
            if deg == 0:
                c = np.zeros((1, c.shape[1]))
                break
            c = c[:-1] * np.arange(deg, 0, -1, dtype=float)[:, None]
        return PiecewiseCubic(self.x, c)


def hermite(x: np.ndarray, y: np.ndarray, d: np.ndarray) -> PiecewiseCubic:
    """The cubic Hermite interpolant through values ``y`` and slopes ``d`` at nodes ``x``."""
    x, y, d = (np.asarray(a, dtype=float) for a in (x, y, d))
    h = np.diff(x)
    m = np.diff(y) / h
    c = np.empty((4, len(h)))
    c[0] = (d[:-1] + d[1:] - 2.0 * m) / h**2
    c[1] = (3.0 * m - 2.0 * d[:-1] - d[1:]) / h
    c[2] = d[:-1]
    c[3] = y[:-1]
    return PiecewiseCubic(x, c)


def pchip_slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Shape-preserving node slopes: zero at local extrema, else the weighted harmonic mean of
    the neighbouring secants; one-sided three-point formulas, limited, at the ends."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    h = np.diff(x)
    m = np.diff(y) / h
    if len(x) == 2:
        return np.array([m[0], m[0]])
    d = np.zeros_like(y)
    w1 = 2.0 * h[1:] + h[:-1]
    w2 = h[1:] + 2.0 * h[:-1]
    flat = (np.sign(m[1:]) != np.sign(m[:-1])) | (m[1:] == 0.0) | (m[:-1] == 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        harmonic = (w1 / m[:-1] + w2 / m[1:]) / (w1 + w2)
        d[1:-1] = np.where(flat, 0.0, 1.0 / harmonic)
    d[0] = _end_slope(h[0], h[1], m[0], m[1])
    d[-1] = _end_slope(h[-1], h[-2], m[-1], m[-2])
    return d


def _end_slope(h0: float, h1: float, m0: float, m1: float) -> float:
    d = ((2.0 * h0 + h1) * m0 - h0 * m1) / (h0 + h1)
    if np.sign(d) != np.sign(m0):
        return 0.0
    if np.sign(m0) != np.sign(m1) and abs(d) > 3.0 * abs(m0):
        return 3.0 * m0
    return float(d)


def pchip(x: np.ndarray, y: np.ndarray) -> PiecewiseCubic:
    """The PCHIP interpolant of (x, y)."""
    return hermite(x, y, pchip_slopes(x, y))
