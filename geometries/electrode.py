"""Composite-electrode cross-sections (Sharma et al., Nano Lett. 2022, Fig. 4a) and a 3D particle
partly covered by carbon binder (Fig. S5).

An electrode is a box (width × height, µm) with the current collector at the bottom (y = 0)
and the Li source (separator side) at the top (y = height). Inside: NMC particles (disks,
ellipses, contours), each with its own cell tag; a carbon-binder domain (CBD: strands along
polylines, coatings on particle surfaces, or polygons from an image); the electrolyte-filled
pore space is the rest. Where shapes overlap, particles win over the CBD, and an earlier
particle wins over a later one; particles may touch (a small overlap makes an NMC|NMC
contact) but not overlap more than ``contact_overlap_um``.

Ways to make one (the ``[geometry]`` table with ``shape = "electrode"``)::

    shape = "electrode"
    preset = "sharma2022"          # a layout shaped like Sharma Fig. 4a (see sharma2022_layout)
    # or an explicit layout:
    width_um = 40
    height_um = 25
    [[geometry.particles]]
    shape = "disk"                 # disk | ellipse | contour
    center_um = [8, 16]
    diameter_um = 9
    [[geometry.strands]]           # a CBD strand: a polyline with a width
    points_um = [[8, 0], [8, 12]]
    width_um = 1.5
    [[geometry.coatings]]          # CBD covering an arc of a particle (coverage)
    particle = 0
    start_deg = 200
    end_deg = 340
    thickness_um = 0.8
    # or generated (seeded, reproducible):
    [geometry.generate]
    volume_fraction = 0.45
    diameter_um = [6, 10]
    coverage = 0.3                 # fraction of each particle's perimeter coated with CBD
    wired_fraction = 0.5           # fraction of coated particles wired to the collector by a strand
    seed = 1
    # or from a segmented image:
    [geometry.label_image]
    file = "labels.tif"            # TIFF or .npy label array
    pixel_size_um = 0.1
    nmc = [1]                      # label values that are NMC (each connected piece = one particle)
    cbd = [2]                      # label values that are carbon binder (everything else: electrolyte)

Cell tags: electrolyte 1, CBD 2, particle i → 100 + i. Facet tags on the box: collector 1,
Li source 2, sides 3. Interfaces between regions are found from the cell tags (see
:func:`nmcfx.solver.electrode.classify_facets`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from mpi4py import MPI

from nmcfx.errors import InputError, MeshError

from . import _gmsh
from ._build import mesh_and_distribute
from ._validate import boolean, in_range, number, positive, positive_pair

ELECTROLYTE_TAG = 1
CBD_TAG = 2
PARTICLE_TAG0 = 100
COLLECTOR, SEPARATOR, SIDES = 1, 2, 3
BOUNDARY_NAMES = {COLLECTOR: "collector", SEPARATOR: "separator", SIDES: "sides"}
PRESETS = ("sharma2022",)
PARTICLE_SHAPES = ("disk", "ellipse", "contour")
OUTLINE_POINTS = 180  # polygon resolution of outlines used for checks and coatings


# --------------------------------------------------------------------------------------
# layout specs
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ParticleSpec:
    """One NMC particle: ``shape`` disk (``diameter``), ellipse (``semi_axes``, ``angle_deg``) or
    contour (``points``, closed polygon); optional per-particle ``material`` and ``scaling_S``."""

    shape: str
    center: tuple[float, float] = (0.0, 0.0)
    diameter: float | None = None
    semi_axes: tuple[float, float] | None = None
    angle_deg: float = 0.0
    points: tuple[tuple[float, float], ...] | None = None
    name: str = ""
    material: str | None = None
    scaling_S: float | None = None

    def outline(self, n: int = OUTLINE_POINTS) -> np.ndarray:
        """Counter-clockwise outline polygon (n, 2) in µm."""
        if self.shape == "contour":
            return np.asarray(self.points, dtype=float)
        t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
        if self.shape == "disk":
            a = b = 0.5 * self.diameter
        else:
            a, b = self.semi_axes
        c, s = math.cos(math.radians(self.angle_deg)), math.sin(math.radians(self.angle_deg))
        x, y = a * np.cos(t), b * np.sin(t)
        return np.column_stack([self.center[0] + c * x - s * y, self.center[1] + s * x + c * y])

    def equivalent_radius(self) -> float:
        return math.sqrt(abs(_polygon_area(self.outline())) / math.pi)

    def centroid(self) -> np.ndarray:
        return _polygon_centroid(self.outline())


@dataclass(frozen=True)
class Strand:
    """A CBD strand: a polyline (µm) of width ``width``."""

    points: tuple[tuple[float, float], ...]
    width: float


@dataclass(frozen=True)
class Coating:
    """CBD covering particle ``particle`` between polar angles (about its centroid) ``start_deg``
    and ``end_deg`` (counter-clockwise), ``thickness`` µm thick."""

    particle: int
    start_deg: float
    end_deg: float
    thickness: float


@dataclass(frozen=True)
class ElectrodeLayout:
    width: float
    height: float
    particles: tuple[ParticleSpec, ...]
    strands: tuple[Strand, ...] = ()
    coatings: tuple[Coating, ...] = ()
    cbd_polygons: tuple[tuple[tuple[float, float], ...], ...] = ()
    contact_overlap: float = 0.25
    origin: str = "explicit"
    info: dict = field(default_factory=dict)

    def cbd_shapes(self) -> list[np.ndarray]:
        """Every CBD piece as a polygon (µm)."""
        out = [_strand_polygon(s) for s in self.strands]
        out += [poly for c in self.coatings for poly in _coating_polygons(self.particles[c.particle], c)]
        out += [np.asarray(p, dtype=float) for p in self.cbd_polygons]
        return out


# --------------------------------------------------------------------------------------
# presets and generators
# --------------------------------------------------------------------------------------
def sharma2022_layout(scale: float = 1.0) -> ElectrodeLayout:
    """A layout shaped like Sharma et al. 2022 Fig. 4a: a bottom row of well-wired particles on
    the collector, and a top row of five particles that touch their neighbours. The leftmost top
    particle (T0) has a CBD strand straight to the collector; the others are reached only through
    NMC contacts — the rightmost (T4) through four NMC particles (T3, T2, T1, T0). Lengths × ``scale``.
    """
    d = 8.0
    top_y = 19.0
    dx = d - 0.15  # neighbours overlap by 0.15 µm: an NMC|NMC contact ~1.5 µm long
    x0 = 6.0
    top = [ParticleSpec("disk", (x0 + i * dx, top_y), diameter=d, name=f"T{i}") for i in range(5)]
    bottom = [ParticleSpec("disk", (x0 + 6.0 + i * 9.0, 6.0), diameter=7.0, name=f"B{i}") for i in range(4)]
    particles = top + bottom
    strands = [Strand(((x0, 0.0), (x0, top_y - 0.5 * d + 0.2)), 1.6)]  # T0 → collector
    coatings = [Coating(0, 215.0, 325.0, 0.8)]
    # bottom row: coated from below and wired to the collector (reacts early, as in real electrodes)
    for i, p in enumerate(bottom):
        k = len(top) + i
        coatings.append(Coating(k, 225.0, 315.0, 0.8))
        strands.append(Strand(((p.center[0], 0.0), (p.center[0], p.center[1] - 3.3)), 1.2))
    width = x0 + 4 * dx + d / 2 + 2.0
    height = top_y + d / 2 + 3.0
    if scale != 1.0:
        particles = [ParticleSpec(p.shape, (p.center[0] * scale, p.center[1] * scale), diameter=p.diameter * scale,
                                  name=p.name) for p in particles]
        strands = [Strand(tuple((x * scale, y * scale) for x, y in s.points), s.width * scale) for s in strands]
        coatings = [Coating(c.particle, c.start_deg, c.end_deg, c.thickness * scale) for c in coatings]
        width, height = width * scale, height * scale
    return ElectrodeLayout(width, height, tuple(particles), tuple(strands), tuple(coatings),
                           contact_overlap=0.25 * scale, origin="preset sharma2022",
                           info={"top_row": [p.name for p in top], "chain": "T0-T1-T2-T3-T4",
                                 "wired_to_collector": ["T0"] + [p.name for p in bottom]})


def generated_layout(width: float, height: float, *, volume_fraction: float, diameter: tuple[float, float],
                     coverage: float, wired_fraction: float, seed: int, strand_width: float = 1.0,
                     coating_thickness: float = 0.6, gap: float = 0.3, prefix: str = "geometry.generate",
                     max_tries: int = 20000) -> ElectrodeLayout:
    """Random non-overlapping disks (random sequential addition) up to ``volume_fraction`` of the
    box, each coated with CBD over ``coverage`` of its perimeter (centred at a random angle), and a
    fraction ``wired_fraction`` of the coated particles wired to the collector by a vertical strand.
    Reproducible for a given ``seed``."""
    rng = np.random.default_rng(seed)
    target = volume_fraction * width * height
    placed: list[tuple[float, float, float]] = []
    area = 0.0
    tries = 0
    while area < target and tries < max_tries:
        tries += 1
        r = 0.5 * rng.uniform(*diameter)
        x = rng.uniform(r + gap, width - r - gap)
        y = rng.uniform(r + gap, height - r - gap)
        if all(math.hypot(x - a, y - b) >= r + c + gap for a, b, c in placed):
            placed.append((x, y, r))
            area += math.pi * r * r
    if area < 0.9 * target:
        raise InputError(f"{prefix}.volume_fraction",
                         f"could place only {area / (width * height):.2f} of the box with particles "
                         f"(asked {volume_fraction:g}); lower it or use smaller diameters")
    particles = [ParticleSpec("disk", (x, y), diameter=2 * r, name=f"P{i}") for i, (x, y, r) in enumerate(placed)]
    coatings, strands = [], []
    for i, (x, y, r) in enumerate(placed):
        if coverage <= 0:
            continue
        mid = rng.uniform(0.0, 360.0)
        half = 180.0 * min(coverage, 0.999)
        coatings.append(Coating(i, mid - half, mid + half, coating_thickness))
        if rng.uniform() < wired_fraction:
            # a strand straight down from the lowest point of the coating to the collector
            angles = np.radians(np.linspace(mid - half, mid + half, 50))
            k = int(np.argmin(y + (r + 0.5 * coating_thickness) * np.sin(angles)))
            px = x + (r + 0.5 * coating_thickness) * math.cos(angles[k])
            py = y + (r + 0.5 * coating_thickness) * math.sin(angles[k])
            px = min(max(px, 0.5 * strand_width), width - 0.5 * strand_width)
            strands.append(Strand(((px, 0.0), (px, py)), strand_width))
    return ElectrodeLayout(width, height, tuple(particles), tuple(strands), tuple(coatings), contact_overlap=0.0,
                           origin=f"generated (seed {seed})",
                           info={"volume_fraction_achieved": area / (width * height), "seed": seed})


def label_image_layout(labels: np.ndarray, pixel_size: float, nmc: tuple[int, ...], cbd: tuple[int, ...], *,
                       prefix: str = "geometry.label_image", min_pixels: int = 12) -> ElectrodeLayout:
    """A layout from a segmented image: every connected piece of the ``nmc`` labels becomes a
    particle (a contour), the ``cbd`` labels become CBD polygons, the rest electrolyte. Row 0 of
    the image is the top (separator side); the last row touches the collector."""
    from skimage import measure

    labels = np.asarray(labels)
    if labels.ndim != 2 or min(labels.shape) < 4:
        raise InputError(prefix, f"the label image must be a 2D array of at least 4×4 pixels, got shape {labels.shape}")
    present = set(np.unique(labels).tolist())
    missing = [v for v in nmc if v not in present]
    if missing or not nmc:
        raise InputError(f"{prefix}.nmc", f"label(s) {missing or list(nmc)} not in the image; labels present: "
                                          f"{sorted(present)[:20]}")
    if cbd and not any(v in present for v in cbd):
        raise InputError(f"{prefix}.cbd", f"label(s) {list(cbd)} not in the image; labels present: {sorted(present)[:20]}")
    ny, nx = labels.shape
    height, width = ny * pixel_size, nx * pixel_size

    def polygons(mask, grow_into=None) -> list[np.ndarray]:
        """Outline of every connected piece of ``mask``. Outlines of neighbouring pieces, traced and
        simplified separately, need not meet: a piece is first grown by two pixels into ``grow_into``
        (the CBD into the NMC, which wins the overlap when meshing, so that an NMC|CBD contact in the
        image stays a contact) and continued one row below the image (a piece on the last row meets
        the collector along its whole width once clipped to the box)."""
        from scipy.ndimage import binary_dilation

        lab = measure.label(mask, connectivity=1)
        out = []
        for region in measure.regionprops(lab):
            if region.area < min_pixels:
                continue
            piece = lab == region.label
            if grow_into is not None:
                piece = piece | (binary_dilation(piece, iterations=2) & grow_into)
            piece = np.pad(np.vstack([piece, piece[-1:]]), 1)
            contours = measure.find_contours(piece.astype(float), 0.5)
            if not contours:
                continue
            c = max(contours, key=len)
            c = measure.approximate_polygon(c, tolerance=0.5)[:-1] - 1.0  # undo the padding
            # (row, col) → (x, y) with y up and the collector at the bottom
            xy = np.column_stack([(c[:, 1] + 0.5) * pixel_size, height - (c[:, 0] + 0.5) * pixel_size])
            xy[:, 0] = np.clip(xy[:, 0], 0.0, width)
            xy[:, 1] = np.clip(xy[:, 1], 0.0, height)
            keep = np.any(np.abs(xy - np.roll(xy, 1, axis=0)) > 1e-9 * pixel_size, axis=1)  # clipped duplicates
            xy = xy[keep]
            if _polygon_area(xy) < 0:
                xy = xy[::-1]
            if len(xy) >= 3:
                out.append(xy)
        return out

    nmc_mask = np.isin(labels, nmc)
    parts = polygons(nmc_mask)
    if not parts:
        raise InputError(f"{prefix}.nmc", f"no NMC region of at least {min_pixels} pixels in the image")
    particles = tuple(ParticleSpec("contour", tuple(map(tuple, _polygon_centroid(p)[None, :]))[0],
                                   points=tuple(map(tuple, p)), name=f"P{i}") for i, p in enumerate(parts))
    cbd_polys = tuple(tuple(map(tuple, p)) for p in polygons(np.isin(labels, cbd), grow_into=nmc_mask)) if cbd else ()
    return ElectrodeLayout(width, height, particles, cbd_polygons=cbd_polys, contact_overlap=2 * pixel_size,
                           origin="label image", info={"pixels": [int(nx), int(ny)], "pixel_size_um": pixel_size})


# --------------------------------------------------------------------------------------
# validation of a layout (before meshing: one clear line per problem)
# --------------------------------------------------------------------------------------
def check_layout(layout: ElectrodeLayout, prefix: str = "geometry") -> None:
    W, H = layout.width, layout.height
    tol = 1e-9 * max(W, H)
    outlines = [p.outline() for p in layout.particles]
    for i, (p, o) in enumerate(zip(layout.particles, outlines)):
        lo, hi = o.min(axis=0), o.max(axis=0)
        if lo[0] < -tol or lo[1] < -tol or hi[0] > W + tol or hi[1] > H + tol:
            raise InputError(f"{prefix}.particles[{i}]",
                             f"particle {p.name or i} reaches outside the {W:g} × {H:g} µm box "
                             f"(x {lo[0]:.3g}..{hi[0]:.3g}, y {lo[1]:.3g}..{hi[1]:.3g} µm)")
    for i in range(len(outlines)):
        for j in range(i + 1, len(outlines)):
            depth = _penetration(layout.particles[i], outlines[i], layout.particles[j], outlines[j])
            if depth > layout.contact_overlap + tol:
                raise InputError(f"{prefix}.particles[{j}]",
                                 f"particles {layout.particles[i].name or i} and {layout.particles[j].name or j} "
                                 f"overlap by {depth:.3g} µm; touching particles may overlap by at most "
                                 f"contact_overlap_um = {layout.contact_overlap:g} µm")
    for k, c in enumerate(layout.coatings):
        if not 0 <= c.particle < len(layout.particles):
            raise InputError(f"{prefix}.coatings[{k}].particle",
                             f"must be a particle index in [0, {len(layout.particles) - 1}], got {c.particle}")
    # every CBD piece must touch something: a particle, the collector or another piece
    pieces = layout.cbd_shapes()
    for k, poly in enumerate(pieces):
        touches = poly[:, 1].min() <= 1e-6 * H + tol
        touches = touches or any(_polygons_touch(poly, o) for o in outlines)
        touches = touches or any(_polygons_touch(poly, q) for m, q in enumerate(pieces) if m != k)
        if not touches:
            name = (f"strands[{k}]" if k < len(layout.strands) else
                    f"coatings[{k - len(layout.strands)}]" if k < len(layout.strands) + len(layout.coatings) else
                    f"cbd polygon {k}")
            raise InputError(f"{prefix}.{name}", "this carbon-binder piece touches no particle, no other CBD and "
                                                 "not the collector (it would carry no current)")


# --------------------------------------------------------------------------------------
# meshing
# --------------------------------------------------------------------------------------
@dataclass
class ElectrodeMesh:
    """A distributed electrode mesh (µm) with region tags and what ``nmcfx mesh`` reports."""

    mesh: Any
    cell_tags: Any
    facet_tags: Any
    layout: ElectrodeLayout | None
    particles: list[dict]  # name, tag, material, scaling_S, area, perimeter, centroid, coverage, path
    dim: int
    info: dict

    @property
    def comm(self):
        return self.mesh.comm

    @property
    def particle_tags(self) -> list[int]:
        return [p["tag"] for p in self.particles]

    @property
    def active_measure(self) -> float:
        """Total NMC area (2D, µm²) or volume (3D, µm³)."""
        return float(sum(p["area"] for p in self.particles))

    def summary(self) -> str:
        i = self.info
        unit, aunit = ("µm", "µm²") if self.dim == 2 else ("µm²", "µm³")
        lines = [f"electrode ({self.dim}D, {i.get('origin', '')})",
                 f"  mesh: {i['num_cells']} cells, {i['num_vertices']} vertices on {i['num_ranks']} rank(s); "
                 f"quality ({i.get('quality_measure', '?')}) min {i['quality_min']:.3f}, mean {i['quality_mean']:.3f}"]
        if self.dim == 2:
            lines.append(f"  box {i['width_um']:g} × {i['height_um']:g} µm")
        lines.append("  regions: " + ", ".join(f"{k} {v:.4g} {aunit}" for k, v in i["region_measure"].items()))
        lines.append("  interfaces: " + ", ".join(f"{k} {v:.4g} {unit}" for k, v in i["interface_measure"].items()))
        lines.append("  particles (coverage = share of the surface touching CBD; path = electronic path to the "
                     "collector):")
        for p in self.particles:
            path = " → ".join(p["path"]) if p["path"] else "NONE"
            lines.append(f"    {p['name']:>4s} tag {p['tag']}: {'area' if self.dim == 2 else 'volume'} {p['area']:.4g} {aunit}, "
                         f"surface {p['perimeter']:.4g} {unit}, coverage {100 * p['coverage']:.0f} %, "
                         f"path {path}")
        lines += [f"  warning: {w}" for w in i.get("warnings", [])]
        return "\n".join(lines)


def electrode_from_config(cfg: Mapping, comm: MPI.Comm = MPI.COMM_WORLD, *, base_dir=None,
                          prefix: str = "geometry") -> ElectrodeMesh:
    """Validate ``[geometry]`` with ``shape = "electrode"`` (or ``"electrode_3d"``) and mesh it."""
    shape = cfg.get("shape")
    if shape == "electrode_3d":
        return _particle_with_patch_from_config(cfg, comm, prefix)
    layout, sizes, unconnected, verbose = layout_from_config(cfg, base_dir=base_dir, prefix=prefix)
    return mesh_electrode(layout, comm=comm, unconnected=unconnected, verbose=verbose, prefix=prefix, **sizes)


LAYOUT_KEYS = ("shape", "preset", "scale", "width_um", "height_um", "particles", "strands", "coatings", "generate",
               "label_image", "contact_overlap_um", "mesh_size_um", "surface_mesh_size_um", "unconnected", "verbose")


def layout_from_config(cfg: Mapping, *, base_dir=None, prefix: str = "geometry"):
    extra = set(cfg) - set(LAYOUT_KEYS)
    if extra:
        raise InputError(prefix, f"unknown key(s) {sorted(extra)} for shape 'electrode'; allowed: {list(LAYOUT_KEYS)}")
    sources = [k for k in ("preset", "particles", "generate", "label_image") if k in cfg]
    if len(sources) != 1:
        raise InputError(prefix, "an electrode needs exactly one of preset, particles (explicit layout), generate "
                                 f"or label_image; got {sources or 'none'}")
    src = sources[0]
    if src == "preset":
        if cfg["preset"] not in PRESETS:
            raise InputError(f"{prefix}.preset", f"must be one of {list(PRESETS)}, got {cfg['preset']!r}")
        scale = positive(cfg.get("scale", 1.0), f"{prefix}.scale", unit="")
        for key in ("width_um", "height_um", "strands", "coatings"):
            if key in cfg:
                raise InputError(f"{prefix}.{key}", "the preset fixes the layout; use an explicit layout to change it")
        layout = sharma2022_layout(scale)
    elif src == "generate":
        g = cfg["generate"]
        gp = f"{prefix}.generate"
        if not isinstance(g, Mapping):
            raise InputError(gp, "must be a table")
        allowed = ("volume_fraction", "diameter_um", "coverage", "wired_fraction", "seed", "strand_width_um",
                   "coating_thickness_um")
        if set(g) - set(allowed):
            raise InputError(gp, f"unknown key(s) {sorted(set(g) - set(allowed))}; allowed: {list(allowed)}")
        W = positive(_need(cfg, "width_um", prefix), f"{prefix}.width_um")
        H = positive(_need(cfg, "height_um", prefix), f"{prefix}.height_um")
        dmin, dmax = positive_pair(g.get("diameter_um", [6.0, 10.0]), f"{gp}.diameter_um")
        if dmin > dmax:
            raise InputError(f"{gp}.diameter_um", f"must be [min, max] with min <= max, got [{dmin:g}, {dmax:g}]")
        if dmax >= min(W, H):
            raise InputError(f"{gp}.diameter_um", f"particles of {dmax:g} µm do not fit in the {W:g} × {H:g} µm box")
        seed = g.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise InputError(f"{gp}.seed", f"must be an integer >= 0, got {seed!r}")
        layout = generated_layout(
            W, H, volume_fraction=in_range(g.get("volume_fraction", 0.4), f"{gp}.volume_fraction", 0.01, 0.6),
            diameter=(dmin, dmax), coverage=in_range(g.get("coverage", 0.3), f"{gp}.coverage", 0.0, 1.0),
            wired_fraction=in_range(g.get("wired_fraction", 0.5), f"{gp}.wired_fraction", 0.0, 1.0), seed=seed,
            strand_width=positive(g.get("strand_width_um", 1.0), f"{gp}.strand_width_um"),
            coating_thickness=positive(g.get("coating_thickness_um", 0.6), f"{gp}.coating_thickness_um"), prefix=gp)
    elif src == "label_image":
        li = cfg["label_image"]
        lp = f"{prefix}.label_image"
        if not isinstance(li, Mapping):
            raise InputError(lp, "must be a table with file, pixel_size_um, nmc and cbd")
        allowed = ("file", "pixel_size_um", "nmc", "cbd")
        if set(li) - set(allowed):
            raise InputError(lp, f"unknown key(s) {sorted(set(li) - set(allowed))}; allowed: {list(allowed)}")
        labels = read_label_image(_need(li, "file", lp), f"{lp}.file", base_dir)
        px = positive(_need(li, "pixel_size_um", lp), f"{lp}.pixel_size_um")
        nmc = _int_list(_need(li, "nmc", lp), f"{lp}.nmc")
        cbd = _int_list(li.get("cbd", []), f"{lp}.cbd")
        if set(nmc) & set(cbd):
            raise InputError(f"{lp}.cbd", f"label(s) {sorted(set(nmc) & set(cbd))} are listed as both NMC and CBD")
        layout = label_image_layout(labels, px, nmc, cbd, prefix=lp)
    else:
        W = positive(_need(cfg, "width_um", prefix), f"{prefix}.width_um")
        H = positive(_need(cfg, "height_um", prefix), f"{prefix}.height_um")
        particles = _list_of_tables(cfg["particles"], f"{prefix}.particles")
        if not particles:
            raise InputError(f"{prefix}.particles", "at least one particle is required")
        specs = tuple(_particle_spec(p, f"{prefix}.particles[{i}]", base_dir) for i, p in enumerate(particles))
        strands = tuple(_strand(s, f"{prefix}.strands[{i}]")
                        for i, s in enumerate(_list_of_tables(cfg.get("strands", []), f"{prefix}.strands")))
        coatings = tuple(_coating(c, f"{prefix}.coatings[{i}]", specs)
                         for i, c in enumerate(_list_of_tables(cfg.get("coatings", []), f"{prefix}.coatings")))
        contact = cfg.get("contact_overlap_um", 0.25)
        contact = 0.0 if contact == 0 else positive(contact, f"{prefix}.contact_overlap_um")
        layout = ElectrodeLayout(W, H, specs, strands, coatings, contact_overlap=contact)
    check_layout(layout, prefix)
    rmin = min(p.equivalent_radius() for p in layout.particles)
    mesh_size = positive(cfg.get("mesh_size_um", max(rmin / 4.0, 0.05)), f"{prefix}.mesh_size_um")
    surface = positive(cfg.get("surface_mesh_size_um", mesh_size / 2.0), f"{prefix}.surface_mesh_size_um")
    unconnected = cfg.get("unconnected", "error")
    if unconnected not in ("error", "warn"):
        raise InputError(f"{prefix}.unconnected", f"must be 'error' or 'warn', got {unconnected!r}")
    verbose = boolean(cfg.get("verbose", False), f"{prefix}.verbose")
    return layout, {"mesh_size": mesh_size, "surface_mesh_size": surface}, unconnected, verbose


def mesh_electrode(layout: ElectrodeLayout, *, comm: MPI.Comm = MPI.COMM_WORLD, mesh_size: float,
                   surface_mesh_size: float | None = None, unconnected: str = "error", verbose: bool = False,
                   prefix: str = "geometry") -> ElectrodeMesh:
    """Mesh a layout with gmsh on rank 0 and distribute it (collective)."""
    surface_mesh_size = surface_mesh_size or mesh_size / 2.0

    def on_root(model):
        return _build_2d(model, layout, mesh_size, surface_mesh_size)

    meta, data = mesh_and_distribute(comm, on_root, 2, "electrode", verbose, ghost_shared_facets=True)
    return _finish(meta, data, layout, 2, unconnected, prefix)


def _finish(meta, data, layout, tdim, unconnected, prefix) -> ElectrodeMesh:
    from nmcfx.errors import InputError as _IE

    if data.cell_tags is None:
        raise MeshError("the electrode mesh has no cell tags")
    particles = meta["particles"]
    lonely = [p["name"] for p in particles if not p["path"]]
    if lonely:
        msg = (f"particle(s) {', '.join(lonely)} have no electronic path to the collector (through CBD or "
               "touching NMC): they cannot react")
        if unconnected == "error":
            raise _IE(f"{prefix}.unconnected", msg + " — fix the network, or set unconnected = 'warn' to run anyway")
        meta["info"].setdefault("warnings", []).append(msg)
    mesh = data.mesh
    comm = mesh.comm
    tdim_ = mesh.topology.dim
    info = dict(meta["info"])
    info["num_cells"] = comm.allreduce(mesh.topology.index_map(tdim_).size_local, op=MPI.SUM)
    info["num_vertices"] = mesh.topology.index_map(0).size_global
    info["num_ranks"] = comm.size
    return ElectrodeMesh(mesh, data.cell_tags, data.facet_tags, layout, particles, tdim, info)


def _build_2d(model, layout: ElectrodeLayout, mesh_size: float, surface_size: float) -> dict:
    occ = model.occ
    W, H = layout.width, layout.height
    box = occ.addRectangle(0.0, 0.0, 0.0, W, H)
    # disjoint pieces first (an earlier particle wins an overlap, particles win over the CBD), so
    # that no sliver of one shape is left inside another; then one fragment makes them conforming
    parts: list[list[tuple[int, int]]] = []
    for p in layout.particles:
        piece = [(2, _add_particle(occ, p))]
        earlier = [dt for q in parts for dt in q]
        if earlier:
            piece, _ = occ.cut(piece, earlier, removeObject=True, removeTool=False)
        parts.append(piece)
    all_parts = [dt for q in parts for dt in q]
    cbd = [(2, _add_polygon(occ, poly)) for poly in layout.cbd_shapes()]
    if len(cbd) > 1:
        cbd, _ = occ.fuse(cbd[:1], cbd[1:])
    if cbd:
        cbd, _ = occ.cut(cbd, all_parts, removeObject=True, removeTool=False)
    tools = all_parts + cbd
    out, out_map = occ.fragment([(2, box)], tools)
    occ.synchronize()
    inside_box = {t for d, t in out_map[0] if d == 2}
    owner: dict[int, int] = {s: ELECTROLYTE_TAG for s in inside_box}  # output surface → region tag
    k = 1
    for i, piece in enumerate(parts):
        for _ in piece:
            for d, t in out_map[k]:
                if d == 2 and t in owner:
                    owner[t] = PARTICLE_TAG0 + i
            k += 1
    for _ in cbd:
        for d, t in out_map[k]:
            if d == 2 and t in owner:
                owner[t] = CBD_TAG
        k += 1
    outside = [(2, t) for d, t in out if d == 2 and t not in inside_box]
    if outside:
        occ.remove(outside, recursive=True)
        occ.synchronize()
    # regions as physical groups
    by_region: dict[int, list[int]] = {}
    for s, r in owner.items():
        by_region.setdefault(r, []).append(s)
    for r, surfs in sorted(by_region.items()):
        model.addPhysicalGroup(2, surfs, tag=r)
    # box boundary curves
    eps = 1e-6 * max(W, H)
    groups: dict[int, list[int]] = {COLLECTOR: [], SEPARATOR: [], SIDES: []}
    boundary = model.getBoundary([(2, s) for s in owner], combined=True, oriented=False)
    for _, c in boundary:
        x0, y0, _, x1, y1, _ = model.getBoundingBox(1, abs(c))
        if y1 < eps:
            groups[COLLECTOR].append(abs(c))
        elif y0 > H - eps:
            groups[SEPARATOR].append(abs(c))
        else:
            groups[SIDES].append(abs(c))
    for tag, curves in groups.items():
        if curves:
            model.addPhysicalGroup(1, curves, tag=tag)
    meta = _analyse_2d(model, layout, owner, groups)
    # sizes: fine at particle boundaries and inside thin CBD pieces
    part_curves = sorted({abs(c) for s, r in owner.items() if r >= PARTICLE_TAG0
                          for _, c in model.getBoundary([(2, s)], oriented=False)})
    cbd_curves = sorted({abs(c) for s, r in owner.items() if r == CBD_TAG
                         for _, c in model.getBoundary([(2, s)], oriented=False)})
    thin = min([s.width for s in layout.strands] + [c.thickness for c in layout.coatings] + [np.inf])
    _gmsh.set_mesh_options(2)
    fields = model.mesh.field
    thresholds = []
    for curves, size in ((part_curves, surface_size), (cbd_curves, min(surface_size, 0.5 * thin))):
        if not curves or size >= mesh_size:
            continue
        dist = fields.add("Distance")
        fields.setNumbers(dist, "CurvesList", curves)
        fields.setNumber(dist, "Sampling", 200)
        thr = fields.add("Threshold")
        fields.setNumber(thr, "InField", dist)
        fields.setNumber(thr, "SizeMin", size)
        fields.setNumber(thr, "SizeMax", mesh_size)
        fields.setNumber(thr, "DistMin", 0.0)
        fields.setNumber(thr, "DistMax", 4.0 * mesh_size)
        thresholds.append(thr)
    if thresholds:
        mn = fields.add("Min")
        fields.setNumbers(mn, "FieldsList", thresholds)
        fields.setAsBackgroundMesh(mn)
    else:
        f = fields.add("MathEval")
        fields.setString(f, "F", repr(float(mesh_size)))
        fields.setAsBackgroundMesh(f)
    q = _gmsh.generate(model, 2, "electrode")
    meta["info"].update(q)
    return meta


def _analyse_2d(model, layout: ElectrodeLayout, owner: dict[int, int], groups: dict[int, list[int]]) -> dict:
    """Areas, interface lengths, per-particle coverage and electronic paths (rank 0, from gmsh's CAD)."""
    occ = model.occ
    curve_regions: dict[int, list[int]] = {}
    for s, r in owner.items():
        for _, c in model.getBoundary([(2, s)], oriented=False):
            curve_regions.setdefault(abs(c), []).append(r)
    length = {c: occ.getMass(1, c) for c in curve_regions}
    collector = set(groups[COLLECTOR])
    region_measure = {"electrolyte": 0.0, "cbd": 0.0, "nmc": 0.0}
    part_area: dict[int, float] = {}
    for s, r in owner.items():
        a = occ.getMass(2, s)
        key = "electrolyte" if r == ELECTROLYTE_TAG else "cbd" if r == CBD_TAG else "nmc"
        region_measure[key] += a
        if r >= PARTICLE_TAG0:
            part_area[r] = part_area.get(r, 0.0) + a
    interface = {"nmc|electrolyte": 0.0, "nmc|cbd": 0.0, "nmc|nmc": 0.0, "cbd|electrolyte": 0.0,
                 "cbd|collector": 0.0, "nmc|collector": 0.0, "nmc|box sides": 0.0}
    graph: dict[str, set[str]] = {}
    perim: dict[int, float] = {}
    covered: dict[int, float] = {}

    def node(r):
        return "collector" if r == "collector" else ("CBD" if r == CBD_TAG else
                                                     layout.particles[r - PARTICLE_TAG0].name or f"P{r - PARTICLE_TAG0}")

    def link(a, b):
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set()).add(a)

    # CBD is one node per connected piece: connect CBD surfaces through shared curves
    cbd_surfs = [s for s, r in owner.items() if r == CBD_TAG]
    cbd_piece = {s: i for i, s in enumerate(cbd_surfs)}
    parent = list(range(len(cbd_surfs)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    surf_curves = {s: {abs(c) for _, c in model.getBoundary([(2, s)], oriented=False)} for s in owner}
    for i, a in enumerate(cbd_surfs):
        for b in cbd_surfs[i + 1:]:
            if surf_curves[a] & surf_curves[b]:
                parent[find(cbd_piece[a])] = find(cbd_piece[b])

    def region_node(s):
        r = owner[s]
        if r == CBD_TAG:
            return f"CBD#{find(cbd_piece[s])}"
        return node(r)

    curve_surfs: dict[int, list[int]] = {}
    for s, cs in surf_curves.items():
        for c in cs:
            curve_surfs.setdefault(c, []).append(s)
    for c, surfs in curve_surfs.items():
        regs = [owner[s] for s in surfs]
        L = length[c]
        for s in surfs:
            if owner[s] >= PARTICLE_TAG0:
                perim[owner[s]] = perim.get(owner[s], 0.0) + (L if len(surfs) == 1 or
                                                              any(owner[t] != owner[s] for t in surfs) else 0.0)
        if len(surfs) == 1:
            r = regs[0]
            if c in collector:
                if r == CBD_TAG:
                    interface["cbd|collector"] += L
                    link(region_node(surfs[0]), "collector")
                elif r >= PARTICLE_TAG0:
                    interface["nmc|collector"] += L
                    link(region_node(surfs[0]), "collector")
            elif r >= PARTICLE_TAG0:
                interface["nmc|box sides"] += L
            continue
        a, b = surfs[0], surfs[1]
        ra, rb = owner[a], owner[b]
        if ra == rb and ra != CBD_TAG:
            continue  # inside one region
        kinds = sorted(["nmc" if r >= PARTICLE_TAG0 else "cbd" if r == CBD_TAG else "electrolyte" for r in (ra, rb)])
        key = "|".join(kinds[::-1]) if kinds[0] == "cbd" and kinds[1] == "nmc" else "|".join(sorted(kinds)[::-1])
        key = {"nmc|cbd": "nmc|cbd", "cbd|nmc": "nmc|cbd", "nmc|electrolyte": "nmc|electrolyte",
               "electrolyte|nmc": "nmc|electrolyte", "nmc|nmc": "nmc|nmc", "electrolyte|cbd": "cbd|electrolyte",
               "cbd|electrolyte": "cbd|electrolyte"}.get(key)
        if key is None:
            continue
        interface[key] += L
        if key == "nmc|cbd":
            p = ra if ra >= PARTICLE_TAG0 else rb
            covered[p] = covered.get(p, 0.0) + L
        if key in ("nmc|cbd", "nmc|nmc"):
            link(region_node(a), region_node(b))
    # paths: breadth-first search from the collector
    prev = {"collector": None}
    queue = ["collector"]
    while queue:
        n = queue.pop(0)
        for m in sorted(graph.get(n, ())):
            if m not in prev:
                prev[m] = n
                queue.append(m)
    particles = []
    for i, p in enumerate(layout.particles):
        tag = PARTICLE_TAG0 + i
        name = p.name or f"P{i}"
        path = []
        if name in prev:
            n = name
            while n is not None:
                path.append("CBD" if n.startswith("CBD#") else n)
                n = prev[n]
        c = p.centroid()
        particles.append({"name": name, "tag": tag, "material": p.material, "scaling_S": p.scaling_S,
                          "area": part_area.get(tag, 0.0), "perimeter": perim.get(tag, 0.0),
                          "centroid": [float(c[0]), float(c[1])],
                          "coverage": covered.get(tag, 0.0) / perim[tag] if perim.get(tag) else 0.0,
                          "path": path, "nmc_in_path": max(0, sum(1 for n in path if n not in ("CBD", "collector"))
                                                           - 1)})
    info = {"origin": layout.origin, "width_um": layout.width, "height_um": layout.height,
            "region_measure": region_measure, "interface_measure": interface, **layout.info}
    return {"particles": particles, "info": info, "sectors": {}, "reactive": ()}


# --------------------------------------------------------------------------------------
# 3D: a particle partly covered by a CBD patch (Sharma 2022 Fig. S5)
# --------------------------------------------------------------------------------------
def particle_with_patch(diameter: float, patch_angle_deg: float, patch_thickness: float, *,
                        comm: MPI.Comm = MPI.COMM_WORLD, mesh_size: float | None = None,
                        surface_mesh_size: float | None = None, verbose: bool = False) -> ElectrodeMesh:
    """A sphere of ``diameter`` µm under a CBD cap of half-angle ``patch_angle_deg`` (about −z) and
    ``patch_thickness`` µm; the cap's outer face is the collector contact (facet tag 1), the rest
    of the sphere faces the electrolyte."""
    R, t = 0.5 * diameter, patch_thickness
    mesh_size = mesh_size or R / 5.0
    surface_mesh_size = surface_mesh_size or mesh_size / 2.0

    def on_root(model):
        occ = model.occ
        sph = occ.addSphere(0, 0, 0, R)
        shell = occ.addSphere(0, 0, 0, R + t)
        # cone of half-angle α about −z, apex at the centre, long enough to cut the shell
        L = 2.0 * (R + t)
        a = math.radians(patch_angle_deg)
        cone = occ.addCone(0, 0, 0, 0, 0, -L * math.cos(a), 0.0, L * math.sin(a)) if a < math.pi / 2 - 1e-3 else \
            occ.addBox(-L, -L, -L, 2 * L, 2 * L, L)
        cap, _ = occ.intersect([(3, shell)], [(3, cone)])
        out, out_map = occ.fragment([(3, sph)], cap)
        occ.synchronize()
        particle = [t_ for d, t_ in out_map[0] if d == 3]
        cbd = sorted({t_ for m in out_map[1:] for d, t_ in m if d == 3} - set(particle))
        model.addPhysicalGroup(3, particle, tag=PARTICLE_TAG0)
        model.addPhysicalGroup(3, cbd, tag=CBD_TAG)
        faces = model.getBoundary([(3, v) for v in particle + cbd], combined=True, oriented=False)
        cbd_faces = {abs(g) for _, g in model.getBoundary([(3, v) for v in cbd], oriented=False)}
        collector = []
        for _, f in faces:
            # the cap's outer face lies at R + t, its conical rim between R and R + t: classify by a point
            # on the face (a face's centre of mass lies inside the sphere for wide caps)
            lo, hi = model.getParametrizationBounds(2, abs(f))
            point = model.getValue(2, abs(f), 0.5 * (np.asarray(lo) + np.asarray(hi)))
            if abs(f) in cbd_faces and np.linalg.norm(point) > R + 0.75 * t:
                collector.append(abs(f))
        if not collector:
            raise MeshError("particle with a CBD patch: found no outer patch face for the collector")
        model.addPhysicalGroup(2, collector, tag=COLLECTOR)
        _gmsh.set_mesh_options(3)
        _gmsh.set_size_field(model, 2, [abs(f) for _, f in model.getBoundary([(3, v) for v in particle],
                                                                           oriented=False)],
                             mesh_size, min(surface_mesh_size, 0.5 * t), 0.3 * R)
        q = _gmsh.generate(model, 3, "particle with a CBD patch")
        area_p = sum(occ.getMass(3, v) for v in particle)
        area_c = sum(occ.getMass(3, v) for v in cbd)
        # the particle's whole surface (the covered part included)
        surf = sum(occ.getMass(2, abs(f)) for _, f in model.getBoundary([(3, v) for v in particle], combined=True,
                                                                           oriented=False))
        shared = {abs(f) for _, f in model.getBoundary([(3, v) for v in particle], oriented=False)} & \
            {abs(f) for _, f in model.getBoundary([(3, v) for v in cbd], oriented=False)}
        covered = sum(occ.getMass(2, f) for f in shared)
        info = {"origin": f"sphere {diameter:g} µm with a {patch_angle_deg:g}° CBD patch", **q,
                "region_measure": {"nmc": area_p, "cbd": area_c},
                "interface_measure": {"nmc|cbd": covered, "nmc|electrolyte": surf - covered}}
        particles = [{"name": "P0", "tag": PARTICLE_TAG0, "material": None, "scaling_S": None, "area": area_p,
                      "perimeter": surf, "centroid": [0.0, 0.0, 0.0],
                      "coverage": covered / surf, "path": ["P0", "CBD", "collector"], "nmc_in_path": 0}]
        return {"particles": particles, "info": info, "sectors": {}, "reactive": ()}

    meta, data = mesh_and_distribute(comm, on_root, 3, "particle with a CBD patch", verbose,
                                     ghost_shared_facets=True)
    return _finish(meta, data, None, 3, "error", "geometry")


def _particle_with_patch_from_config(cfg, comm, prefix):
    allowed = ("shape", "diameter_um", "patch_angle_deg", "patch_thickness_um", "mesh_size_um",
               "surface_mesh_size_um", "verbose")
    if set(cfg) - set(allowed):
        raise InputError(prefix, f"unknown key(s) {sorted(set(cfg) - set(allowed))} for shape 'electrode_3d'; "
                                 f"allowed: {list(allowed)}")
    d = positive(cfg.get("diameter_um", 8.0), f"{prefix}.diameter_um")
    ang = in_range(cfg.get("patch_angle_deg", 45.0), f"{prefix}.patch_angle_deg", 1.0, 179.0, unit="°")
    t = positive(cfg.get("patch_thickness_um", 0.1 * d), f"{prefix}.patch_thickness_um")
    ms = cfg.get("mesh_size_um")
    sms = cfg.get("surface_mesh_size_um")
    return particle_with_patch(d, ang, t, comm=comm,
                               mesh_size=None if ms is None else positive(ms, f"{prefix}.mesh_size_um"),
                               surface_mesh_size=None if sms is None else positive(sms, f"{prefix}.surface_mesh_size_um"),
                               verbose=boolean(cfg.get("verbose", False), f"{prefix}.verbose"))


# --------------------------------------------------------------------------------------
# config helpers and geometry
# --------------------------------------------------------------------------------------
def read_label_image(path, field: str, base_dir=None) -> np.ndarray:
    p = Path(path)
    if base_dir is not None and not p.is_absolute():
        p = Path(base_dir) / p
    if not p.is_file():
        raise InputError(field, f"file not found: {p}")
    try:
        if p.suffix.lower() in (".npy",):
            arr = np.load(p, allow_pickle=False)
        elif p.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            arr = tifffile.imread(p)
        else:
            raise InputError(field, f"must be a .tif/.tiff or .npy label image, got {p.name}")
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad file
        raise InputError(field, f"cannot read the label image {p}: {exc}") from None
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise InputError(field, f"must hold one 2D integer label array, got shape {arr.shape} of {arr.dtype}")
    return arr


def _need(cfg, key, prefix):
    if key not in cfg:
        raise InputError(f"{prefix}.{key}", "is required")
    return cfg[key]


def _list_of_tables(v, prefix):
    if not isinstance(v, list) or not all(isinstance(x, Mapping) for x in v):
        raise InputError(prefix, "must be an array of tables ([[...]])")
    return v


def _int_list(v, field):
    if isinstance(v, int) and not isinstance(v, bool):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        raise InputError(field, f"must be a list of integer labels, got {v!r}")
    return tuple(v)


def _point(v, field):
    if not isinstance(v, (list, tuple)) or len(v) != 2:
        raise InputError(field, f"must be [x, y] in µm, got {v!r}")
    return (number(v[0], f"{field}[0]"), number(v[1], f"{field}[1]"))


def _particle_spec(d: Mapping, prefix: str, base_dir) -> ParticleSpec:
    allowed = {"disk": ("center_um", "diameter_um"), "ellipse": ("center_um", "semi_axes_um", "angle_deg"),
               "contour": ("contour_points_um", "contour_csv")}
    shape = d.get("shape", "disk")
    if shape not in PARTICLE_SHAPES:
        raise InputError(f"{prefix}.shape", f"must be one of {list(PARTICLE_SHAPES)}, got {shape!r}")
    keys = ("shape", "name", "material", "scaling_S") + allowed[shape]
    if set(d) - set(keys):
        raise InputError(prefix, f"unknown key(s) {sorted(set(d) - set(keys))} for a {shape}; allowed: {list(keys)}")
    name = str(d.get("name", ""))
    material = d.get("material")
    if material is not None and not isinstance(material, str):
        raise InputError(f"{prefix}.material", f"must be a material name, got {material!r}")
    S = d.get("scaling_S")
    S = None if S is None else positive(S, f"{prefix}.scaling_S", unit="")
    if shape == "disk":
        return ParticleSpec("disk", _point(_need(d, "center_um", prefix), f"{prefix}.center_um"),
                            diameter=positive(_need(d, "diameter_um", prefix), f"{prefix}.diameter_um"),
                            name=name, material=material, scaling_S=S)
    if shape == "ellipse":
        return ParticleSpec("ellipse", _point(_need(d, "center_um", prefix), f"{prefix}.center_um"),
                            semi_axes=positive_pair(_need(d, "semi_axes_um", prefix), f"{prefix}.semi_axes_um"),
                            angle_deg=number(d.get("angle_deg", 0.0), f"{prefix}.angle_deg"),
                            name=name, material=material, scaling_S=S)
    if "contour_csv" in d:
        from .config import read_contour_csv

        pts = read_contour_csv(d["contour_csv"], f"{prefix}.contour_csv", MPI.COMM_SELF, base_dir)
    else:
        pts = [_point(p, f"{prefix}.contour_points_um[{i}]")
               for i, p in enumerate(_need(d, "contour_points_um", prefix))]
    pts = np.asarray(pts, dtype=float)
    if len(pts) < 3 or abs(_polygon_area(pts)) <= 0:
        raise InputError(f"{prefix}.contour_points_um", "needs at least 3 points enclosing an area")
    if _polygon_area(pts) < 0:
        pts = pts[::-1]
    return ParticleSpec("contour", tuple(_polygon_centroid(pts)), points=tuple(map(tuple, pts)), name=name,
                        material=material, scaling_S=S)


def _strand(d: Mapping, prefix: str) -> Strand:
    if set(d) - {"points_um", "width_um"}:
        raise InputError(prefix, f"unknown key(s) {sorted(set(d) - {'points_um', 'width_um'})}; allowed: "
                                 "['points_um', 'width_um']")
    pts = _need(d, "points_um", prefix)
    if not isinstance(pts, list) or len(pts) < 2:
        raise InputError(f"{prefix}.points_um", "must list at least two points [[x, y], ...] in µm")
    return Strand(tuple(_point(p, f"{prefix}.points_um[{i}]") for i, p in enumerate(pts)),
                  positive(_need(d, "width_um", prefix), f"{prefix}.width_um"))


def _coating(d: Mapping, prefix: str, particles) -> Coating:
    allowed = {"particle", "start_deg", "end_deg", "thickness_um"}
    if set(d) - allowed:
        raise InputError(prefix, f"unknown key(s) {sorted(set(d) - allowed)}; allowed: {sorted(allowed)}")
    p = _need(d, "particle", prefix)
    if isinstance(p, str):
        names = [q.name for q in particles]
        if p not in names:
            raise InputError(f"{prefix}.particle", f"no particle named {p!r}; names: {names}")
        p = names.index(p)
    if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p < len(particles):
        raise InputError(f"{prefix}.particle", f"must be a particle index in [0, {len(particles) - 1}] or a name, "
                                               f"got {p!r}")
    a0 = number(_need(d, "start_deg", prefix), f"{prefix}.start_deg")
    a1 = number(_need(d, "end_deg", prefix), f"{prefix}.end_deg")
    if not 0 < a1 - a0 <= 360:
        raise InputError(f"{prefix}.end_deg", f"must exceed start_deg by (0, 360]°, got {a0:g}..{a1:g}")
    return Coating(p, a0, a1, positive(_need(d, "thickness_um", prefix), f"{prefix}.thickness_um"))


def _add_particle(occ, p: ParticleSpec) -> int:
    if p.shape == "disk":
        r = 0.5 * p.diameter
        return occ.addDisk(p.center[0], p.center[1], 0.0, r, r)
    if p.shape == "ellipse":
        a, b = p.semi_axes
        angle = p.angle_deg
        if a < b:
            a, b, angle = b, a, angle + 90.0
        t = occ.addDisk(p.center[0], p.center[1], 0.0, a, b)
        if angle:
            occ.rotate([(2, t)], p.center[0], p.center[1], 0.0, 0, 0, 1, math.radians(angle))
        return t
    return _add_polygon(occ, np.asarray(p.points, dtype=float))


def _add_polygon(occ, poly: np.ndarray) -> int:
    pts = [occ.addPoint(float(x), float(y), 0.0) for x, y in poly]
    lines = [occ.addLine(pts[i], pts[(i + 1) % len(pts)]) for i in range(len(pts))]
    loop = occ.addCurveLoop(lines)
    return occ.addPlaneSurface([loop])


def _strand_polygon(s: Strand) -> np.ndarray:
    """Outline of a thick polyline (flat ends, mitred joints)."""
    p = np.asarray(s.points, dtype=float)
    h = 0.5 * s.width
    seg = np.diff(p, axis=0)
    nrm = np.column_stack([-seg[:, 1], seg[:, 0]]) / np.linalg.norm(seg, axis=1)[:, None]
    normals = np.vstack([nrm[:1], 0.5 * (nrm[:-1] + nrm[1:]), nrm[-1:]])
    normals /= np.maximum(np.einsum("ij,ij->i", normals, np.vstack([nrm[:1], nrm]))[:, None], 0.2)
    left, right = p + h * normals, p - h * normals
    return np.vstack([left, right[::-1]])


#: a coating spanning at least this angle (°) closes around its particle
FULL_COATING_DEG = 359.0


def _coating_polygons(p: ParticleSpec, c: Coating) -> list[np.ndarray]:
    """The CBD band(s) of a coating. A band that closes around its particle is drawn as two halves
    overlapping by 10° (gmsh fuses them into one ring): a single band from start to end would
    leave a slit at its seam — invisible to φ_s, but a crack to the bonded elastic body."""
    if c.end_deg - c.start_deg < FULL_COATING_DEG:
        return [_coating_polygon(p, c)]
    a = c.start_deg
    return [_coating_polygon(p, Coating(c.particle, a, a + 190.0, c.thickness)),
            _coating_polygon(p, Coating(c.particle, a + 180.0, a + 370.0, c.thickness))]


def _coating_polygon(p: ParticleSpec, c: Coating) -> np.ndarray:
    """The band between a particle's outline (pushed slightly inwards, so that shapes overlap) and
    the outline offset outwards by ``c.thickness``, over the angular range of the coating."""
    o = p.outline(720)
    cen = p.centroid()
    ang = np.degrees(np.arctan2(o[:, 1] - cen[1], o[:, 0] - cen[0]))
    rel = (ang - c.start_deg) % 360.0
    span = c.end_deg - c.start_deg
    keep = np.flatnonzero(rel <= span)
    if len(keep) < 2:
        raise InputError("geometry.coatings", f"the coating {c.start_deg:g}..{c.end_deg:g}° is too short")
    order = keep[np.argsort(rel[keep])]
    arc = o[order]
    # outward normals of the outline (counter-clockwise polygon)
    tang = np.gradient(arc, axis=0)
    nrm = np.column_stack([tang[:, 1], -tang[:, 0]])
    nrm /= np.linalg.norm(nrm, axis=1)[:, None]
    outer = arc + c.thickness * nrm
    inner = arc - 0.25 * c.thickness * nrm
    return np.vstack([inner, outer[::-1]])


def _polygon_area(p: np.ndarray) -> float:
    x, y = p[:, 0], p[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def _polygon_centroid(p: np.ndarray) -> np.ndarray:
    x, y = p[:, 0], p[:, 1]
    cross = x * np.roll(y, -1) - np.roll(x, -1) * y
    a = 0.5 * cross.sum()
    if abs(a) < 1e-300:
        return p.mean(axis=0)
    return np.array([((x + np.roll(x, -1)) * cross).sum(), ((y + np.roll(y, -1)) * cross).sum()]) / (6 * a)


def _inside(poly: np.ndarray, pts: np.ndarray) -> np.ndarray:
    from matplotlib.path import Path as MplPath

    return MplPath(poly).contains_points(pts)


def _distance_to_polygon(poly: np.ndarray, pts: np.ndarray) -> np.ndarray:
    a = poly
    b = np.roll(poly, -1, axis=0)
    ab = b - a
    t = np.clip(np.einsum("pij,ij->pi", pts[:, None, :] - a[None], ab) / np.maximum((ab * ab).sum(1), 1e-300), 0, 1)
    proj = a[None] + t[..., None] * ab[None]
    return np.sqrt(((pts[:, None, :] - proj) ** 2).sum(-1)).min(axis=1)


def _penetration(pa: ParticleSpec, a: np.ndarray, pb: ParticleSpec, b: np.ndarray) -> float:
    """How deep two particles overlap (µm; 0 if they do not)."""
    if pa.shape == "disk" and pb.shape == "disk":
        d = math.dist(pa.center, pb.center)
        return max(0.0, 0.5 * (pa.diameter + pb.diameter) - d)
    depth = 0.0
    ins = _inside(b, a)
    if ins.any():
        depth = max(depth, float(_distance_to_polygon(b, a[ins]).max()))
    ins = _inside(a, b)
    if ins.any():
        depth = max(depth, float(_distance_to_polygon(a, b[ins]).max()))
    return depth


def _polygons_touch(a: np.ndarray, b: np.ndarray, tol: float = 1e-6) -> bool:
    if _inside(b, a).any() or _inside(a, b).any():
        return True
    return bool(_distance_to_polygon(b, a).min() <= tol)
