"""2D particle cross-sections (disk, ellipse, contour, Xu 2022 reference) and their meshes.

A cross-section is described by a small frozen spec object (:class:`Disk`,
:class:`Ellipse`, :class:`Contour`, :class:`ReferenceXu2022`); :func:`mesh_2d` meshes
any of them, :func:`prism <nmcfx.geometries.shapes3d.prism>` extrudes any of them.
The functions :func:`disk`, :func:`ellipse`, :func:`contour` and
:func:`reference_particle_xu2022` are shortcuts. All lengths are in µm.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from mpi4py import MPI

from nmcfx.errors import InputError, MeshError
from nmcfx.materials._roots import brentq

from . import _gmsh
from ._elliptic import ellipe
from ._build import build_particle
from ._outline import CircleOutline, ContourOutline, EllipseOutline, clean_contour_points, polygon_area
from ._validate import in_range, number, optional_positive, positive, positive_pair
from .limits import MeshLimits, mesh_limits
from .particle import ParticleMesh
from .sectors import POSITION_TOL, Arc, Layout, Sector, check_overlaps, make_layout, parse_sectors




#: Xu et al., Joule 2022: the particle's measured cross-section.
XU2022_AREA_UM2 = 4.87
XU2022_PERIMETER_UM = 8.06



def ellipse_perimeter(a: float, b: float) -> float:
    """Exact perimeter of an ellipse with semi-axes a, b (complete elliptic integral)."""
    a, b = max(a, b), min(a, b)
    return 4.0 * a * float(ellipe(1.0 - (b / a) ** 2))


@functools.cache
def xu2022_semi_axes_um() -> tuple[float, float]:
    """Semi-axes (a >= b) of the ellipse with area 4.87 µm² and perimeter 8.06 µm."""
    A, P = XU2022_AREA_UM2, XU2022_PERIMETER_UM

    def mismatch(ratio: float) -> float:
        a = math.sqrt(A / (math.pi * ratio))
        return ellipse_perimeter(a, ratio * a) - P

    ratio = brentq(mismatch, 1e-3, 1.0, xtol=1e-15)
    a = math.sqrt(A / (math.pi * ratio))
    return a, ratio * a


# --------------------------------------------------------------------------------------
# Cross-section specs
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Disk:
    """Circular cross-section of diameter ``diameter_um``, centred at the origin."""

    diameter_um: float

    def validated(self, prefix: str = "geometry") -> Disk:
        return Disk(positive(self.diameter_um, f"{prefix}.diameter_um"))

    def characteristic_size_um(self) -> float:
        return self.diameter_um

    def estimate(self) -> tuple[float, float]:
        r = 0.5 * self.diameter_um
        return math.pi * r * r, 2.0 * math.pi * r

    def outline(self, prefix: str = "geometry"):
        return CircleOutline(0.5 * self.diameter_um)

    def describe(self) -> str:
        return f"disk d = {self.diameter_um:g} µm"


@dataclass(frozen=True)
class Ellipse:
    """Elliptic cross-section, semi-axes (a, b) with a along the direction ``angle_deg``
    (counter-clockwise from +x), centred at the origin."""

    semi_axes_um: tuple[float, float]
    angle_deg: float = 0.0

    def validated(self, prefix: str = "geometry") -> Ellipse:
        a, b = positive_pair(self.semi_axes_um, f"{prefix}.semi_axes_um")
        angle = in_range(self.angle_deg, f"{prefix}.angle_deg", -360.0, 360.0, unit="deg")
        return Ellipse((a, b), angle)

    def characteristic_size_um(self) -> float:
        return 2.0 * min(self.semi_axes_um)

    def estimate(self) -> tuple[float, float]:
        a, b = self.semi_axes_um
        return math.pi * a * b, ellipse_perimeter(a, b)

    def outline(self, prefix: str = "geometry"):
        return EllipseOutline(*self.semi_axes_um, self.angle_deg)

    def describe(self) -> str:
        a, b = self.semi_axes_um
        rot = f", rotated {self.angle_deg:g}°" if self.angle_deg else ""
        return f"ellipse semi-axes {a:.4g} × {b:.4g} µm{rot}"


@dataclass(frozen=True)
class ReferenceXu2022:
    """The particle of Xu et al. (Joule 2022): an ellipse with area 4.87 µm² and
    perimeter 8.06 µm (semi-axes from :func:`xu2022_semi_axes_um`), long axis along
    ``angle_deg``."""

    angle_deg: float = 0.0

    def validated(self, prefix: str = "geometry") -> ReferenceXu2022:
        return ReferenceXu2022(in_range(self.angle_deg, f"{prefix}.angle_deg", -360.0, 360.0, unit="deg"))

    def as_ellipse(self) -> Ellipse:
        return Ellipse(xu2022_semi_axes_um(), self.angle_deg)

    def characteristic_size_um(self) -> float:
        return self.as_ellipse().characteristic_size_um()

    def estimate(self) -> tuple[float, float]:
        return XU2022_AREA_UM2, XU2022_PERIMETER_UM

    def outline(self, prefix: str = "geometry"):
        return self.as_ellipse().outline(prefix)

    def describe(self) -> str:
        a, b = xu2022_semi_axes_um()
        rot = f", rotated {self.angle_deg:g}°" if self.angle_deg else ""
        return f"Xu 2022 reference particle (ellipse {a:.4f} × {b:.4f} µm{rot})"


@dataclass(frozen=True, eq=False)
class Contour:
    """Smooth closed outline through contour points (x, y in µm, any orientation; a
    repeated closing point is ignored). ``smoothing_um`` > 0 lets the periodic spline
    deviate from noisy points by about that much (RMS) instead of interpolating them.
    Curves with more than 300 knot spans are re-interpolated at 300 points equally
    spaced in arc length (gmsh slows down on long splines); the largest distance of the
    input points from the final outline is ``info["contour_max_deviation_um"]``."""

    points_um: Any
    smoothing_um: float = 0.0
    points_key: str = field(default="points_um", repr=False)

    def validated(self, prefix: str = "geometry") -> Contour:
        sm = number(self.smoothing_um, f"{prefix}.smoothing_um", what="a number >= 0 µm")
        if sm < 0:
            raise InputError(f"{prefix}.smoothing_um", f"must be >= 0 µm, got {sm:g}")
        # Noisy points may zig-zag across each other; with smoothing only the smoothed
        # curve must not cross itself (checked when it is built).
        pts = clean_contour_points(self.points_um, f"{prefix}.{self.points_key}", check_crossings=sm == 0)
        pts.setflags(write=False)
        c = Contour(pts, sm, self.points_key)
        if sm > 0.25 * c.characteristic_size_um():
            raise InputError(
                f"{prefix}.smoothing_um",
                f"must be <= {0.25 * c.characteristic_size_um():.3g} µm (a quarter of the particle size), got {sm:g}",
            )
        return c

    def characteristic_size_um(self) -> float:
        area, perimeter = self.estimate()
        return 4.0 * area / perimeter  # hydraulic diameter (= d for a disk)

    def estimate(self) -> tuple[float, float]:
        p = np.asarray(self.points_um)
        return abs(polygon_area(p)), float(np.linalg.norm(p - np.roll(p, -1, axis=0), axis=1).sum())

    def outline(self, prefix: str = "geometry"):
        return ContourOutline(np.asarray(self.points_um), self.smoothing_um, f"{prefix}.{self.points_key}")

    def describe(self) -> str:
        sm = f", smoothing {self.smoothing_um:g} µm" if self.smoothing_um else ""
        return f"contour through {len(self.points_um)} points{sm}"


CrossSection = Disk | Ellipse | Contour | ReferenceXu2022


def validate_section(section: Any, prefix: str) -> CrossSection:
    if not isinstance(section, (Disk, Ellipse, Contour, ReferenceXu2022)):
        raise InputError(
            prefix,
            f"must be a cross-section (Disk, Ellipse, Contour, ReferenceXu2022), got {type(section).__name__}",
        )
    return section.validated(prefix)


# --------------------------------------------------------------------------------------
# Mesh sizes
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MeshSizes:
    bulk: float
    surface: float | None
    grading_width: float
    limits: MeshLimits = field(default_factory=MeshLimits)
    center: float | None = None  #: cell size at the centroid (None: no refinement there)
    center_width: float | None = None  #: distance over which it grows to the bulk size
    estimated_cells: float = 0.0  #: rough cell count from the sizes (before meshing)

    @property
    def boundary(self) -> float:
        """Cell size on the (reactive) boundary."""
        return self.bulk if self.surface is None else self.surface

    def as_info(self) -> dict:
        return {
            "mesh_size_um": self.bulk,
            "surface_mesh_size_um": self.surface,
            "grading_width_um": self.grading_width,
            "center_mesh_size_um": self.center,
            "center_grading_width_um": self.center_width,
        } | self.limits.as_info()

    def size_field(self, model, entity_dim: int, entities: list[int], center=None) -> None:
        """Set gmsh's background size field (surface grading, and centre grading at ``center``)."""
        _gmsh.set_size_field(model, entity_dim, entities, self.bulk, self.surface, self.grading_width,
                             center=center if self.center is not None else None, center_size=self.center,
                             center_width=self.center_width)


def resolve_sizes(
    char_size: float,
    mesh_size_um: Any,
    surface_mesh_size_um: Any,
    grading_width_um: Any,
    *,
    measure: float,
    boundary: float,
    tdim: int,
    prefix: str = "geometry",
    limits: MeshLimits | None = None,
    center_mesh_size_um: Any = None,
    center_grading_width_um: Any = None,
) -> MeshSizes:
    """Validate mesh sizes; defaults: bulk = size/20, no surface refinement, width = size/10.

    ``measure``/``boundary`` (area & perimeter, or volume & reactive area) give an
    estimate of the cell count, refused above ``limits.max_cells`` before gmsh runs
    (see :mod:`.limits`; typically a units mistake).
    """
    limits = MeshLimits(prefix=prefix) if limits is None else limits
    if mesh_size_um is None:
        h = char_size / 20.0
    else:
        h = positive(mesh_size_um, f"{prefix}.mesh_size_um")
        if h > 0.5 * char_size:
            raise InputError(
                f"{prefix}.mesh_size_um",
                f"must be <= {0.5 * char_size:.4g} µm (half the smallest particle size, {char_size:.4g} µm), got {h:g}",
            )
    hs = optional_positive(surface_mesh_size_um, f"{prefix}.surface_mesh_size_um")
    if hs is not None and hs > h:
        raise InputError(
            f"{prefix}.surface_mesh_size_um", f"must be in (0, {h:.4g}] µm (<= mesh_size_um), got {hs:g}"
        )
    if grading_width_um is None:
        w = 0.1 * char_size
    else:
        w = positive(grading_width_um, f"{prefix}.grading_width_um")
    hc = optional_positive(center_mesh_size_um, f"{prefix}.center_mesh_size_um")
    if hc is not None and hc > h:
        raise InputError(
            f"{prefix}.center_mesh_size_um", f"must be in (0, {h:.4g}] µm (<= mesh_size_um), got {hc:g}"
        )
    wc = None
    if hc is not None:
        wc = 2.0 * w if center_grading_width_um is None else positive(center_grading_width_um,
                                                                      f"{prefix}.center_grading_width_um")
    # Rough cell count: equilateral simplices, surface size in the graded band.
    per = 2.3 if tdim == 2 else 8.5
    hb = h if hs is None else math.sqrt(hs * h) if tdim == 2 else (hs * hs * h) ** (1 / 3)
    band = min(boundary * w, measure)
    cells = per * ((measure - band) / h**tdim + band / hb**tdim)
    bulk_only = per * measure / h**tdim
    limits.check_estimate(cells, "mesh_size_um" if hs is None or bulk_only > limits.max_cells
                          else "surface_mesh_size_um")
    return MeshSizes(h, hs, w, limits, hc, wc, float(cells))


# --------------------------------------------------------------------------------------
# Sector placement and the cross-section surface (rank 0 only)
# --------------------------------------------------------------------------------------


#: A sector must span at least this many boundary cells (fewer cannot carry its own flux).
MIN_SECTOR_CELLS = 2


def place_sectors(outline, sectors: list[Sector], prefix: str, boundary_cell_um: float | None = None) -> Layout:
    """Place the sectors on the outline. With ``boundary_cell_um`` (the cell size there), a
    sector shorter than :data:`MIN_SECTOR_CELLS` cells is refused: the mesh cannot resolve it."""
    arcs = []
    for i, s in enumerate(sectors):
        f = f"{prefix}[{i}]"
        if s.unit == "fraction":
            start, length = s.start % 1.0, s.span
        else:
            start = outline.s_at_angle(s.start, f)
            if s.is_full:
                length = 1.0
            else:
                length = (outline.s_at_angle(s.end, f) - start) % 1.0
        if length < 10 * POSITION_TOL:
            raise InputError(f, f"sector {s.name!r} is shorter than 1e-6 of the perimeter on this outline")
        arc_um = length * outline.perimeter
        if boundary_cell_um is not None and arc_um < MIN_SECTOR_CELLS * boundary_cell_um:
            span = f"{s.span:g}°" if s.unit == "deg" else f"a fraction {s.span:g} of the perimeter"
            raise InputError(
                f, f"sector {s.name!r} ({span}) is {arc_um:.3g} µm long, shorter than {MIN_SECTOR_CELLS} boundary "
                   f"cells of {boundary_cell_um:.3g} µm: the mesh cannot resolve it; widen it or refine "
                   "surface_mesh_size_um")
        arcs.append(Arc(s.name, start, length))
    check_overlaps(arcs, prefix)
    return make_layout(arcs)


def piece_of(layout: Layout, s: float) -> int:
    for k, (s0, s1, _) in enumerate(layout.pieces):
        if (s - s0) % 1.0 < s1 - s0:
            return k
    return len(layout.pieces) - 1  # pragma: no cover - s within rounding of 1


def section_surface(model, outline, layout: Layout, z: float = 0.0) -> tuple[int, dict[int, str]]:
    """Add the cross-section as a plane surface at height z; return it and curve -> sector name."""
    occ = model.occ
    curves = outline.add_curves(occ, layout, z)
    loop = occ.addCurveLoop(curves)
    surf = occ.addPlaneSurface([loop])
    occ.synchronize()
    boundary = [t for _, t in model.getBoundary([(2, surf)], oriented=False)]
    names: dict[int, str] = {}
    seen: set[int] = set()
    for c in boundary:
        lo, hi = model.getParametrizationBounds(1, c)
        x, y, _ = model.getValue(1, c, [0.5 * (lo[0] + hi[0])])
        k = piece_of(layout, outline.s_of_point(x, y))
        seen.add(k)
        names[c] = layout.pieces[k][2]
    if len(seen) != len(layout.pieces):
        raise MeshError(
            f"the outline has {len(boundary)} boundary curves for {len(layout.pieces)} sector pieces "
            "(sector end points too close together?)"
        )
    return surf, names


def _mesh_section_on_root(model, section, sector_list, sizes: MeshSizes, sectors_field: str) -> dict:
    outline = section.outline()
    layout = place_sectors(outline, sector_list, sectors_field, sizes.boundary)
    surf, curve_names = section_surface(model, outline, layout)
    tags = {name: i + 1 for i, name in enumerate(layout.names)}
    model.addPhysicalGroup(2, [surf], tag=1, name="particle")
    for name in layout.names:
        model.addPhysicalGroup(1, [c for c, n in curve_names.items() if n == name], tag=tags[name], name=name)
    _gmsh.set_mesh_options(2)
    sizes.size_field(model, 1, list(curve_names), center=outline.centroid)
    info = _gmsh.generate(model, 2, section.describe(), sizes.limits)
    info.update(sizes.as_info())
    info["shape"] = section.describe()
    info["reference"] = {"area": outline.area, "perimeter": outline.perimeter}
    info.update(outline_info(outline))
    return {"sectors": tags, "reactive": tuple(layout.names), "info": info}


def outline_info(outline) -> dict:
    """Extra facts about the outline worth reporting (contours: fit deviation)."""
    if hasattr(outline, "max_deviation"):
        return {"contour_max_deviation_um": outline.max_deviation}
    return {}


def mesh_2d(
    section: CrossSection,
    *,
    comm: MPI.Comm = MPI.COMM_WORLD,
    mesh_size_um: float | None = None,
    surface_mesh_size_um: float | None = None,
    grading_width_um: float | None = None,
    sectors: list | None = None,
    verbose: bool = False,
    prefix: str = "geometry",
    min_quality: float | None = None,
    max_cells: int | None = None,
    center_mesh_size_um: float | None = None,
    center_grading_width_um: float | None = None,
) -> ParticleMesh:
    """Mesh a 2D cross-section (collective over ``comm``; gmsh runs on rank 0).

    ``mesh_size_um`` is the bulk cell size (default: 1/20 of the smallest particle
    size). ``surface_mesh_size_um`` (default: none, uniform mesh) is the size on the
    boundary, growing linearly to the bulk size over ``grading_width_um`` (default:
    1/10 of the particle size). ``sectors``: list of :class:`Sector` or dicts
    ``{name, start_deg, end_deg}`` / ``{name, start_fraction, end_fraction}``.
    ``min_quality``/``max_cells``: limits of the mesh (defaults: :mod:`.limits`).
    ``center_mesh_size_um`` (default: none) refines toward the centroid as well, growing to
    the bulk size over ``center_grading_width_um`` (default: twice ``grading_width_um``).
    """
    section = validate_section(section, prefix)
    sector_list = parse_sectors(sectors, f"{prefix}.sectors")
    area, perimeter = section.estimate()
    sizes = resolve_sizes(
        section.characteristic_size_um(),
        mesh_size_um,
        surface_mesh_size_um,
        grading_width_um,
        measure=area,
        boundary=perimeter,
        tdim=2,
        prefix=prefix,
        limits=mesh_limits(2, min_quality, max_cells, prefix=prefix, comm=comm),
        center_mesh_size_um=center_mesh_size_um,
        center_grading_width_um=center_grading_width_um,
    )
    return build_particle(
        comm,
        lambda model: _mesh_section_on_root(model, section, sector_list, sizes, f"{prefix}.sectors"),
        2,
        section.describe(),
        verbose,
        cache_key=("mesh_2d", section, sector_list, sizes, prefix),
    )


def disk(diameter_um: float, **kwargs) -> ParticleMesh:
    """Mesh a disk of diameter ``diameter_um`` centred at the origin. Keyword arguments
    as :func:`mesh_2d` (comm, mesh_size_um, surface_mesh_size_um, grading_width_um,
    sectors, verbose)."""
    return mesh_2d(Disk(diameter_um), **kwargs)


def ellipse(semi_axes_um: tuple[float, float], angle_deg: float = 0.0, **kwargs) -> ParticleMesh:
    """Mesh an ellipse with semi-axes (a, b), a along ``angle_deg``; see :func:`mesh_2d`."""
    return mesh_2d(Ellipse(semi_axes_um, angle_deg), **kwargs)


def contour(points_um, smoothing_um: float = 0.0, **kwargs) -> ParticleMesh:
    """Mesh the smooth closed outline through ``points_um`` ((N, 2), µm); see :class:`Contour`
    and :func:`mesh_2d`."""
    return mesh_2d(Contour(points_um, smoothing_um), **kwargs)


def reference_particle_xu2022(angle_deg: float = 0.0, **kwargs) -> ParticleMesh:
    """Mesh the Xu et al. (Joule 2022) particle: ellipse with area 4.87 µm² and perimeter
    8.06 µm; see :func:`mesh_2d`."""
    return mesh_2d(ReferenceXu2022(angle_deg), **kwargs)
