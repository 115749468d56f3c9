"""Elliptic integrals of the second kind without SciPy (what the ellipse outlines need of it).

An ellipse's perimeter and arc lengths are complete and incomplete elliptic integrals of the
second kind, E(m) and E(φ | m) (parameter m = k², as ``scipy.special.ellipe``/``ellipeinc``).
Importing ``scipy.special`` and ``scipy.optimize`` for them cost an elliptic particle's run
~40 MB of peak memory (benchmarks/README.md, "Memory of a 2D run"), so they are computed here
by the arithmetic-geometric mean (complete) and from Carlson's symmetric integrals (incomplete;
DLMF 19.25.9), evaluated by the duplication theorem and the DLMF 19.36.1/19.36.2 series once the
arguments agree to 1e-3 (series error ~1e-20); ``tests/test_geometries.py`` compares them with
SciPy to round-off.

    >>> round(4.0 * ellipe(0.0), 12) == round(2.0 * 3.141592653589793, 12)  # circle, radius 1
    True
    >>> round(ellipeinc(3.141592653589793 / 2, 0.5) - ellipe(0.5), 15)
    0.0
"""

from __future__ import annotations

import math

_CLOSE = 1e-3  # |1 - argument / mean| below which the series is used


def carlson_rf(x: float, y: float, z: float) -> float:
    """R_F(x, y, z) for x, y, z >= 0, at most one of them zero (DLMF 19.16.1)."""
    while True:
        a = (x + y + z) / 3.0
        if max(abs(a - x), abs(a - y), abs(a - z)) <= _CLOSE * a:
            break
        sx, sy, sz = math.sqrt(x), math.sqrt(y), math.sqrt(z)
        lam = sx * sy + sy * sz + sz * sx
        x, y, z = 0.25 * (x + lam), 0.25 * (y + lam), 0.25 * (z + lam)
    X, Y = 1.0 - x / a, 1.0 - y / a
    Z = -(X + Y)
    e2, e3 = X * Y - Z * Z, X * Y * Z
    return (1.0 - e2 / 10.0 + e3 / 14.0 + e2 * e2 / 24.0 - 3.0 * e2 * e3 / 44.0 - 5.0 * e2**3 / 208.0
            + 3.0 * e3 * e3 / 104.0 + e2 * e2 * e3 / 16.0) / math.sqrt(a)


def carlson_rd(x: float, y: float, z: float) -> float:
    """R_D(x, y, z) for x, y >= 0 (not both zero), z > 0 (DLMF 19.16.5)."""
    total, scale = 0.0, 1.0
    while True:
        a = (x + y + 3.0 * z) / 5.0
        if max(abs(a - x), abs(a - y), abs(a - z)) <= _CLOSE * a:
            break
        sx, sy, sz = math.sqrt(x), math.sqrt(y), math.sqrt(z)
        lam = sx * sy + sy * sz + sz * sx
        total += scale / (sz * (z + lam))
        scale *= 0.25
        x, y, z = 0.25 * (x + lam), 0.25 * (y + lam), 0.25 * (z + lam)
    X, Y = 1.0 - x / a, 1.0 - y / a
    Z = -(X + Y) / 3.0
    xy, zz = X * Y, Z * Z
    e2, e3, e4, e5 = xy - 6.0 * zz, (3.0 * xy - 8.0 * zz) * Z, 3.0 * (xy - zz) * zz, xy * zz * Z
    series = (1.0 - 3.0 * e2 / 14.0 + e3 / 6.0 + 9.0 * e2 * e2 / 88.0 - 3.0 * e4 / 22.0
              - 9.0 * e2 * e3 / 52.0 + 3.0 * e5 / 26.0)
    return 3.0 * total + scale * series / (a * math.sqrt(a))


def ellipe(m: float) -> float:
    """Complete elliptic integral of the second kind E(m), 0 <= m <= 1, by the arithmetic-geometric
    mean (DLMF 19.8.6): E = π/(2 AGM(1, √(1−m))) (1 − Σ 2^(n−1) c_n²), c_0² = m, c_(n+1) = (a_n − b_n)/2."""
    if m == 1.0:
        return 1.0
    a, b, c = 1.0, math.sqrt(1.0 - m), math.sqrt(m)
    weight, total = 0.5, 0.5 * m
    for _ in range(40):  # quadratic convergence: ~6 rounds for m < 0.999
        if c <= 2e-16 * a:
            break
        a, b, c = 0.5 * (a + b), math.sqrt(a * b), 0.5 * (a - b)
        weight *= 2.0
        total += weight * c * c
    return math.pi / (2.0 * a) * (1.0 - total)


def ellipeinc(phi: float, m: float) -> float:
    """Incomplete elliptic integral of the second kind E(φ | m) = ∫₀^φ √(1 − m sin²t) dt, any real φ,
    0 <= m <= 1 (quasi-periodic: E(φ + kπ | m) = E(φ | m) + 2k E(m))."""
    k = round(phi / math.pi)
    r = phi - k * math.pi  # in [-π/2, π/2]
    s, c = math.sin(r), math.cos(r)
    d = 1.0 - m * s * s
    if m == 1.0:  # E(r | 1) = sin r
        return s + 2.0 * k
    part = s * carlson_rf(c * c, d, 1.0) - m / 3.0 * s**3 * carlson_rd(c * c, d, 1.0) if s else 0.0
    return part + (2.0 * k * ellipe(m) if k else 0.0)
