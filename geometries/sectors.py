"""Named boundary sectors.

A sector is a contiguous, counter-clockwise piece of the particle outline, given either

* by polar angles in degrees about the centroid, measured from +x (``unit="deg"``); a
  range may wrap through 0° (``start=315, end=45``), ``start=0, end=360`` is the whole
  outline; or
* by arc-length fractions of the perimeter (``unit="fraction"``), counted
  counter-clockwise from the boundary point at polar angle 0; ``start=0.9, end=0.1``
  wraps, ``start=0, end=1`` is the whole outline.

Whatever the user sectors leave uncovered becomes the sector ``"surface"``. In 3D the
sectors of a cross-section name the lateral faces of the extruded prism, and the end
faces are ``"basal_bottom"`` and ``"basal_top"``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from nmcfx.errors import InputError

from ._validate import in_range

#: Name of the sector made of everything not covered by user sectors.
SURFACE = "surface"
#: Names of the (non-reactive) end faces of prisms/cylinders.
BASAL_BOTTOM = "basal_bottom"
BASAL_TOP = "basal_top"
RESERVED_NAMES = (SURFACE, BASAL_BOTTOM, BASAL_TOP)

UNITS = ("deg", "fraction")
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}$")
# Two sector end points closer than this (as a fraction of the perimeter) are one point
# (avoids sliver boundary edges); overlaps shorter than this are ignored.
POSITION_TOL = 1e-7


@dataclass(frozen=True)
class Sector:
    """A named piece of the outline from ``start`` to ``end`` (counter-clockwise).

    ``unit`` is ``"deg"`` (polar angle about the centroid, from +x; values in
    [-360, 360]) or ``"fraction"`` (arc-length fraction of the perimeter from the
    boundary point at angle 0; values in [0, 1]).
    """

    name: str
    start: float
    end: float
    unit: str = "deg"

    @property
    def span(self) -> float:
        """Extent in the sector's own unit (degrees or fraction), in (0, 360] / (0, 1]."""
        period = 360.0 if self.unit == "deg" else 1.0
        if self.end - self.start == period:
            return period
        return (self.end - self.start) % period

    @property
    def is_full(self) -> bool:
        return self.span == (360.0 if self.unit == "deg" else 1.0)


_DICT_FORMS = (
    ("start_deg", "end_deg", "deg"),
    ("start_fraction", "end_fraction", "fraction"),
)


def parse_sector(item: Any, field: str) -> Sector:
    """Validate one sector given as a :class:`Sector` or a dict.

    Dict forms: ``{name, start_deg, end_deg}``, ``{name, start_fraction, end_fraction}``
    or ``{name, start, end, unit}``.
    """
    if isinstance(item, Sector):
        name, start, end, unit = item.name, item.start, item.end, item.unit
    elif isinstance(item, Mapping):
        keys = set(item)
        allowed = {"name", "start_deg", "end_deg", "start_fraction", "end_fraction", "start", "end", "unit"}
        unknown = sorted(str(k) for k in keys - allowed)
        if unknown:
            raise InputError(
                field,
                f"unknown key(s) {unknown}; a sector is {{name, start_deg, end_deg}} or "
                "{name, start_fraction, end_fraction}",
            )
        forms = [f for f in _DICT_FORMS if f[0] in keys or f[1] in keys]
        generic = "start" in keys or "end" in keys or "unit" in keys
        if len(forms) + generic != 1:
            raise InputError(
                field,
                "give exactly one of (start_deg, end_deg) or (start_fraction, end_fraction)",
            )
        if generic:
            skey, ekey = "start", "end"
            unit = item.get("unit", "deg")
        else:
            skey, ekey, unit = forms[0]
        for k in (skey, ekey):
            if k not in keys:
                raise InputError(f"{field}.{k}", "is missing")
        if "name" not in keys:
            raise InputError(f"{field}.name", "is missing")
        name, start, end = item["name"], item[skey], item[ekey]
    else:
        raise InputError(field, f"must be a table {{name, start_deg, end_deg}} or a Sector, got {type(item).__name__}")

    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InputError(
            f"{field}.name",
            f"must be 1-64 characters from letters, digits, '_', '-', '.', got {name!r}",
        )
    if name in RESERVED_NAMES:
        raise InputError(
            f"{field}.name",
            f"{name!r} is reserved ('surface' is the uncovered remainder, 'basal_*' are "
            "prism end faces); choose another name",
        )
    if unit not in UNITS:
        raise InputError(f"{field}.unit", f"must be one of {list(UNITS)}, got {unit!r}")
    if unit == "deg":
        start = in_range(start, f"{field}.start", -360.0, 360.0, unit="deg")
        end = in_range(end, f"{field}.end", -360.0, 360.0, unit="deg")
    else:
        start = in_range(start, f"{field}.start", 0.0, 1.0)
        end = in_range(end, f"{field}.end", 0.0, 1.0)
    sector = Sector(name, start, end, unit)
    if sector.span == 0.0:
        raise InputError(
            field,
            f"sector {name!r} is empty (start == end modulo a full turn); use start=0, "
            f"end={360 if unit == 'deg' else 1} for the whole outline",
        )
    return sector


def parse_sectors(sectors: Iterable[Any] | None, field: str = "geometry.sectors") -> list[Sector]:
    """Validate a list of sectors (names unique, ranges non-empty).

    Overlaps are checked later, once the sectors are placed on the actual outline.
    """
    if sectors is None:
        return []
    if isinstance(sectors, (str, bytes, Mapping)) or not isinstance(sectors, Iterable):
        raise InputError(field, f"must be a list of sector tables, got {type(sectors).__name__}")
    out: list[Sector] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(sectors):
        s = parse_sector(item, f"{field}[{i}]")
        if s.name in seen:
            raise InputError(
                f"{field}[{i}].name",
                f"duplicate sector name {s.name!r} (also {field}[{seen[s.name]}])",
            )
        seen[s.name] = i
        out.append(s)
    return out


@dataclass(frozen=True)
class Arc:
    """A sector placed on the outline: arc-length positions in [0, 1)."""

    name: str
    start: float  # arc-length fraction, counter-clockwise from the angle-0 point
    length: float  # fraction of the perimeter, in (0, 1]


def check_overlaps(arcs: list[Arc], field: str = "geometry.sectors") -> None:
    """Raise InputError if two placed sectors share more than an end point."""
    for j, b in enumerate(arcs):
        for i in range(j):
            a = arcs[i]
            if ((b.start - a.start) % 1.0 < a.length - POSITION_TOL) or (
                (a.start - b.start) % 1.0 < b.length - POSITION_TOL
            ):
                raise InputError(
                    f"{field}[{j}]",
                    f"sector {b.name!r} overlaps sector {a.name!r} ({field}[{i}]); sectors "
                    "must be disjoint (they may touch at end points)",
                )


@dataclass(frozen=True)
class Layout:
    """The outline cut into pieces at all sector end points.

    ``pieces[k] = (s0, s1, name)`` with ``s1 > s0`` (``s1`` may exceed 1 for the piece
    that wraps through position 0); the pieces cover the outline exactly once,
    counter-clockwise. ``names`` lists the sector names in tag order (user sectors in
    the order given, then ``"surface"`` if anything is left).
    """

    pieces: tuple[tuple[float, float, str], ...]
    names: tuple[str, ...]

    @property
    def closed(self) -> bool:
        """True if the outline is a single uncut closed curve."""
        return len(self.pieces) == 1


def make_layout(arcs: list[Arc]) -> Layout:
    """Cut the outline at every arc end point and name the pieces.

    With no arcs the outline is one closed piece named ``"surface"``. Otherwise there
    are at least two pieces (a lone cut point gets a partner half a perimeter away), so
    no piece starts and ends at the same point.
    """
    if not arcs:
        return Layout(pieces=((0.0, 1.0, SURFACE),), names=(SURFACE,))
    points: list[float] = []
    for a in arcs:
        for s in (a.start % 1.0, (a.start + a.length) % 1.0):
            if not any(_circ_dist(s, q) < POSITION_TOL for q in points):
                points.append(s)
    points.sort()
    if len(points) == 1:
        points.append((points[0] + 0.5) % 1.0)
    points.sort()
    pieces = []
    for k, s0 in enumerate(points):
        s1 = points[(k + 1) % len(points)]
        if s1 <= s0:
            s1 += 1.0
        mid = (0.5 * (s0 + s1)) % 1.0
        name = SURFACE
        for a in arcs:
            if (mid - a.start) % 1.0 < a.length:
                name = a.name
                break
        pieces.append((s0, s1, name))
    used = {p[2] for p in pieces}
    names = tuple(a.name for a in arcs) + ((SURFACE,) if SURFACE in used else ())
    return Layout(pieces=tuple(pieces), names=names)


def _circ_dist(a: float, b: float) -> float:
    d = abs(a - b) % 1.0
    return min(d, 1.0 - d)
