"""Small input-validation helpers shared by the geometry builders.

Every helper raises :class:`nmcfx.errors.InputError` naming the dotted field path and
the allowed range, so that the CLI can print a one-line message.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any

from nmcfx.errors import InputError


def is_number(value: Any) -> bool:
    """True for real numbers (int/float/numpy scalars) but not for bools."""
    return isinstance(value, Real) and not isinstance(value, bool)


def number(value: Any, field: str, *, what: str = "a number") -> float:
    """A finite real number."""
    if not is_number(value):
        raise InputError(field, f"must be {what}, got {_show(value)}")
    x = float(value)
    if not math.isfinite(x):
        raise InputError(field, f"must be {what} (finite), got {x}")
    return x


def positive(value: Any, field: str, *, unit: str = "µm") -> float:
    """A finite number > 0."""
    u = f" {unit}" if unit else ""
    x = number(value, field, what=f"a number > 0{u}")
    if x <= 0.0:
        raise InputError(field, f"must be > 0{u}, got {_fmt(x)}")
    return x


def optional_positive(value: Any, field: str, *, unit: str = "µm") -> float | None:
    return None if value is None else positive(value, field, unit=unit)


def in_range(value: Any, field: str, lo: float, hi: float, *, unit: str = "") -> float:
    """A finite number in the closed interval [lo, hi]."""
    u = f" {unit}" if unit else ""
    x = number(value, field, what=f"a number in [{_fmt(lo)}, {_fmt(hi)}]{u}")
    if not lo <= x <= hi:
        raise InputError(field, f"must be in [{_fmt(lo)}, {_fmt(hi)}]{u}, got {_fmt(x)}")
    return x


def positive_pair(value: Any, field: str, *, unit: str = "µm") -> tuple[float, float]:
    """Two finite numbers > 0 (a list/tuple of length 2)."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise InputError(field, f"must be a pair [a, b] of numbers > 0 {unit}, got {_show(value)}")
    return (
        positive(value[0], f"{field}[0]", unit=unit),
        positive(value[1], f"{field}[1]", unit=unit),
    )


def boolean(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise InputError(field, f"must be true or false, got {_show(value)}")
    return value


def _fmt(x: float) -> str:
    return f"{x:g}"


def _show(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"
