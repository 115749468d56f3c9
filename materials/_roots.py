"""A bracketing root finder (Brent's method) without SciPy (see :mod:`._pchip` for why).

Brent, *Algorithms for Minimization without Derivatives* (1973), ch. 4: inverse quadratic
interpolation or secant steps while they stay inside the bracket and shrink it fast enough,
bisection otherwise; converges when the bracket is below 4 ε |x| + ``xtol``.

    >>> round(brentq(lambda x: x * x - 2.0, 0.0, 2.0, xtol=1e-14), 12)
    1.414213562373
"""

from __future__ import annotations

import math
import sys

_EPS = sys.float_info.epsilon


def brentq(f, a: float, b: float, xtol: float = 2e-12, maxiter: int = 200) -> float:
    """A root of ``f`` in [a, b] (f(a), f(b) of opposite signs)."""
    fa, fb = float(f(a)), float(f(b))
    if fa == 0.0:
        return float(a)
    if fb == 0.0:
        return float(b)
    if math.copysign(1.0, fa) == math.copysign(1.0, fb):
        raise ValueError("f(a) and f(b) must have opposite signs")
    c, fc = a, fa
    d = e = b - a
    for _ in range(maxiter):
        if math.copysign(1.0, fb) == math.copysign(1.0, fc):
            c, fc = a, fa
            d = e = b - a
        if abs(fc) < abs(fb):  # b is the best guess so far
            a, b, c = b, c, b
            fa, fb, fc = fb, fc, fb
        tol = 2.0 * _EPS * abs(b) + 0.5 * xtol
        m = 0.5 * (c - b)
        if abs(m) <= tol or fb == 0.0:
            return float(b)
        if abs(e) >= tol and abs(fa) > abs(fb):
            s = fb / fa
            if a == c:  # secant
                p, q = 2.0 * m * s, 1.0 - s
            else:  # inverse quadratic interpolation
                q, r = fa / fc, fb / fc
                p = s * (2.0 * m * q * (q - r) - (b - a) * (r - 1.0))
                q = (q - 1.0) * (r - 1.0) * (s - 1.0)
            if p > 0.0:
                q = -q
            else:
                p = -p
            if 2.0 * p < min(3.0 * m * q - abs(tol * q), abs(e * q)):
                e, d = d, p / q
            else:
                d = e = m
        else:
            d = e = m
        a, fa = b, fb
        b = b + (d if abs(d) > tol else math.copysign(tol, m))
        fb = float(f(b))
    raise RuntimeError("brentq did not converge")
