"""Dense tables of θ-dependent properties for the solver's inner loop.

The solver evaluates D_chem(θ) and its derivative at every mesh node at every Newton
iterate. The analytic evaluation (PCHIP of ln D_Li, the OCV's first and second
derivatives with their tanh terms) costs ~0.3 µs per node and ~25 NumPy calls; a cubic
Hermite table on a uniform θ grid costs a dozen calls and no transcendental functions.

:class:`HermiteTable` samples a function and its derivative at 2^14 + 1 uniform nodes and
interpolates with the cubic Hermite polynomial through both; the derivative it returns is
the exact derivative of that interpolant, so Newton's Jacobian stays exact for the
discrete problem. For the default material the table reproduces D_chem to < 1e-7 relative
(measured 5e-8; the sharpest feature, the OCV step above θ = 0.97, is ~40 nodes wide) and
dD_chem to < 1e-5 of its largest magnitude (measured 3e-6); ``tests/test_materials.py``
checks both on a grid 7× finer than the table. Only D_chem enters the residual, so the
converged θ moves by ~1e-8 relative; dD_chem only steers Newton. Example::

    >>> import numpy as np
    >>> t = HermiteTable(np.sin, np.cos, 0.0, 1.0)
    >>> value, slope = t(np.array([0.3]))
    >>> bool(abs(value[0] - np.sin(0.3)) < 1e-14), bool(abs(slope[0] - np.cos(0.3)) < 1e-10)
    (True, True)
"""

from __future__ import annotations

import numpy as np

DEFAULT_NODES = 2**14 + 1


class HermiteTable:
    """Cubic Hermite interpolant of ``fn`` (derivative ``dfn``) on [lo, hi], ``nodes`` uniform nodes,
    values multiplied by ``scale``. Arguments outside [lo, hi] are clipped (value and slope at the end)."""

    def __init__(self, fn, dfn, lo: float, hi: float, nodes: int = DEFAULT_NODES, scale: float = 1.0):
        if not (hi > lo and nodes >= 2):
            raise ValueError("need hi > lo and at least 2 nodes")
        x = np.linspace(lo, hi, nodes)
        f = np.asarray(fn(x), dtype=float) * scale
        d = np.asarray(dfn(x), dtype=float) * scale
        h = (hi - lo) / (nodes - 1)
        self.lo, self.hi, self.h, self.inv_h = float(lo), float(hi), h, 1.0 / h
        self.nodes = nodes
        # p(u) = c0 + u (c1 + u (c2 + u c3)) on [x_i, x_i+1], u = (x − x_i)/h
        f0, f1, d0, d1 = f[:-1], f[1:], d[:-1] * h, d[1:] * h
        self.coef = np.column_stack([f0, d0, 3.0 * (f1 - f0) - 2.0 * d0 - d1, 2.0 * (f0 - f1) + d0 + d1])
        # the slope's coefficients (c1, 2 c2, 3 c3): gathered only where a derivative is asked for
        self._slope_coef = np.column_stack([self.coef[:, 1], 2.0 * self.coef[:, 2], 3.0 * self.coef[:, 3]])
        self.last = nodes - 2

    def __call__(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        v = np.empty(np.shape(theta))
        d = np.empty(np.shape(theta))
        self.evaluate(np.asarray(theta, dtype=float), v, d)
        return v, d

    def evaluate(self, theta: np.ndarray, value: np.ndarray | None, derivative: np.ndarray | None) -> None:
        """value[:] = p(θ), derivative[:] = p'(θ) (θ clipped to [lo, hi]); either may be None (not evaluated)."""
        self.evaluate_located(self.locate(theta), value, derivative)

    def locate(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(i, u): the table interval of every θ (clipped to [lo, hi]) and the local coordinate in it,
        u = (θ − x_i)/h, for :meth:`evaluate_located` (so a value now and a slope later at the same θ
        locate it once)."""
        s = np.maximum(theta, self.lo)  # (= np.clip, a third of its cost)
        np.minimum(s, self.hi, out=s)
        s -= self.lo
        s *= self.inv_h
        i = s.astype(np.intp)
        np.minimum(i, self.last, out=i)
        s -= i  # u
        return i, s

    def evaluate_located(self, located: tuple[np.ndarray, np.ndarray], value: np.ndarray | None,
                         derivative: np.ndarray | None) -> None:
        """:meth:`evaluate` at the θ of ``located`` (from :meth:`locate`)."""
        i, u = located
        # value: Horner; slope: (c1 + u (2 c2 + 3 u c3)) / h
        if value is not None:
            c = np.take(self.coef, i, axis=0)  # (n, 4) rows: one gather (indexing is ~4x slower)
            np.multiply(u, c[:, 3], out=value)
            value += c[:, 2]
            value *= u
            value += c[:, 1]
            value *= u
            value += c[:, 0]
        if derivative is None:
            return
        c = np.take(self._slope_coef, i, axis=0)
        np.multiply(u, c[:, 2], out=derivative)
        derivative += c[:, 1]
        derivative *= u
        derivative += c[:, 0]
        derivative *= self.inv_h
