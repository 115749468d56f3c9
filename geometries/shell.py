"""A disk with a resolved thin surface film (a rocksalt layer, Lun 2025) on part of its outline.

Geometry (lengths in µm, the film thickness in nm)::

             outer arc of the film  = sector "blocked"  (reactive)
           .-------------------------.
    edge  |  film (region "shell")  |  edge = sector "shell_edge" (inert, 2 × δ long)
          '-------------------------'
             core/film interface (internal, radius R)
    core: the full disk of radius R = diameter/2 (region "core"); the uncovered part of
    its outline is the sector "surface" (reactive)

The film is **added outside** the particle: the NMC core is exactly the unshelled disk
(same area, same mass, same current at a given mA/g), and the film occupies
R ≤ r ≤ R + δ over the covered polar-angle range. The covered arc is named ``blocked``
and the rest of the outline ``surface``, as in the blocking studies, so the same
protocols and observables apply. The two short radial end faces of a partial film are
a third, inert sector ``shell_edge`` (no reaction: the electrolyte sees the film edge
over only 2δ ≤ 8 nm, and treating it as reactive would add a film-free shortcut at
the corner).

Mesh: the film is a structured layer (gmsh transfinite surfaces) of ``shell_layers``
rows of right-angled triangles across δ, with the same node spacing along the arc as
the core's boundary (``surface_mesh_size_um``), so a layer ~1000× thinner than the
particle costs only a few hundred cells. The core is meshed with Frontal-Delaunay
triangles graded from the surface size at the outline to ``mesh_size_um`` inside.
Every outline arc (film outer arc, interface, free surface) has prescribed node
counts, so ``shell_thickness_nm = 0`` gives the same core mesh with the same sector
split and no film: the reference for comparisons (the η model on an identical mesh).

Cell tags: ``regions = {"core": 1, "shell": 2}``; :meth:`ShelledParticleMesh.diffusivity_scale`
turns them into the DG0 factor the transport solver takes (1 in the core, 1/ratio in the
film).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from mpi4py import MPI

from nmcfx.errors import InputError, MeshError

from . import _gmsh
from ._build import mesh_and_distribute, particle_from
from ._validate import in_range, number, optional_positive, positive
from .particle import ParticleMesh

REGIONS = {"core": 1, "shell": 2}
BLOCKED = "blocked"
SHELL_EDGE = "shell_edge"
SURFACE = "surface"
#: Largest angular span of one circle-arc entity (OCC arcs through a centre need < 180°).
_MAX_PIECE_RAD = 0.5 * math.pi


@dataclass
class ShelledParticleMesh(ParticleMesh):
    """A :class:`ParticleMesh` with a resolved surface film.

    ``measure``/``centroid`` are those of core + film; ``core_measure`` and
    ``shell_measure`` split the area by region. ``sector_measure["blocked"]`` is the
    length of the film's outer arc, (R + δ)·Δφ.
    """

    cell_tags: object = None
    regions: dict = field(default_factory=lambda: dict(REGIONS))
    radius_um: float = 0.0
    shell_thickness_nm: float = 0.0
    shell_arc_deg: tuple[float, float] | None = None
    core_measure: float = 0.0
    shell_measure: float = 0.0

    @property
    def shell_thickness_um(self) -> float:
        return self.shell_thickness_nm * 1e-3

    @property
    def has_shell(self) -> bool:
        return self.shell_thickness_nm > 0.0

    @property
    def covered_angle_rad(self) -> float:
        if self.shell_arc_deg is None:
            return 2.0 * math.pi
        a0, a1 = self.shell_arc_deg
        span = (a1 - a0) % 360.0
        return math.radians(360.0 if span == 0.0 else span)

    def diffusivity_scale(self, ratio: float, name: str = "diffusivity_scale"):
        """DG0 function: 1 in the core, 1/ratio in the film (``TransportSolver(diffusivity_scale=...)``)."""
        from dolfinx import fem

        ratio = positive(ratio, "diffusivity_ratio", unit="")
        Q = fem.functionspace(self.mesh, ("DG", 0))
        f = fem.Function(Q, name=name)
        f.x.array[:] = 1.0
        f.x.array[self.cell_tags.find(self.regions["shell"])] = 1.0 / ratio
        f.x.scatter_forward()
        return f

    def region_indicator(self, region: str = "core", name: str | None = None):
        """DG0 function: 1 on the cells of ``region`` ("core" or "shell"), 0 elsewhere."""
        from dolfinx import fem

        if region not in self.regions:
            raise InputError("region", f"must be one of {sorted(self.regions)}, got {region!r}")
        Q = fem.functionspace(self.mesh, ("DG", 0))
        f = fem.Function(Q, name=name or region)
        f.x.array[:] = 0.0
        f.x.array[self.cell_tags.find(self.regions[region])] = 1.0
        f.x.scatter_forward()
        return f

    def on_nmc_surface(self, points: np.ndarray) -> np.ndarray:
        """Mask of points on the NMC surface: the circle r = R (free outline + core/film interface).

        Mesh nodes on the interface lie on the circle to round-off; the first film layer is
        δ/shell_layers away, so the tolerance is a small fraction of that.
        """
        p = np.asarray(points, dtype=float)
        r = np.hypot(p[:, 0], p[:, 1])
        layers = int(self.info.get("shell_layers", 1))
        tol = 1e-6 if not self.has_shell else min(1e-6, 0.01 * self.shell_thickness_um / layers)
        return np.abs(r - self.radius_um) < tol


# --------------------------------------------------------------------------------------
# rank-0 gmsh model
# --------------------------------------------------------------------------------------


def _pieces(a0: float, a1: float) -> list[float]:
    """Break points a0 < ... < a1 so that no piece spans more than _MAX_PIECE_RAD."""
    n = max(1, math.ceil((a1 - a0) / _MAX_PIECE_RAD - 1e-9))
    return list(np.linspace(a0, a1, n + 1))


def _mesh_on_root(model, R: float, t: float, arc: tuple[float, float] | None, h: float, hs: float,
                  grading: float, layers: int) -> dict:
    occ = model.occ
    full = arc is None
    if full:
        a0, a1 = 0.0, 2.0 * math.pi
    else:
        a0 = math.radians(arc[0])
        span = math.radians((arc[1] - arc[0]) % 360.0)
        a1 = a0 + span
    covered = _pieces(a0, a1)
    free = [] if full else _pieces(a1, a0 + 2.0 * math.pi)
    centre = occ.addPoint(0.0, 0.0, 0.0)

    def ring(angles, radius, close):
        todo = angles[:-1] if close else angles
        pts = [occ.addPoint(radius * math.cos(a), radius * math.sin(a), 0.0) for a in todo]
        return pts + [pts[0]] if close else pts

    # NMC outline at radius R: covered pieces then free pieces, sharing end points
    inner = ring(covered, R, full)
    if full:
        free_pts = []
    else:
        free_pts = [inner[-1]] + [occ.addPoint(R * math.cos(a), R * math.sin(a), 0.0) for a in free[1:-1]] + [inner[0]]
    in_arcs = [occ.addCircleArc(inner[k], centre, inner[k + 1]) for k in range(len(inner) - 1)]
    free_arcs = [occ.addCircleArc(free_pts[k], centre, free_pts[k + 1]) for k in range(len(free_pts) - 1)]
    core_loop = occ.addCurveLoop(in_arcs + free_arcs)
    core = occ.addPlaneSurface([core_loop])

    shells, out_arcs, radial, edges = [], [], [], []
    if t > 0.0:
        outer = ring(covered, R + t, full)
        out_arcs = [occ.addCircleArc(outer[k], centre, outer[k + 1]) for k in range(len(outer) - 1)]
        radial = [occ.addLine(inner[k], outer[k]) for k in range(len(inner) - (1 if full else 0))]
        for k in range(len(in_arcs)):
            kk = (k + 1) % len(radial) if full else k + 1
            loop = occ.addCurveLoop([in_arcs[k], radial[kk], out_arcs[k], radial[k]])
            shells.append(occ.addPlaneSurface([loop]))
        if not full:
            edges = [radial[0], radial[-1]]
    occ.remove([(0, centre)])
    occ.synchronize()

    # node counts: along every arc piece from the surface size; across the film `layers` rows
    def n_nodes(length):
        return max(3, math.ceil(length / hs) + 1)

    for k, c in enumerate(in_arcs):
        n = n_nodes(R * (covered[k + 1] - covered[k]))
        model.mesh.setTransfiniteCurve(c, n)
        if out_arcs:
            model.mesh.setTransfiniteCurve(out_arcs[k], n)
    for k, c in enumerate(free_arcs):
        model.mesh.setTransfiniteCurve(c, n_nodes(R * (free[k + 1] - free[k])))
    for c in radial:
        model.mesh.setTransfiniteCurve(c, layers + 1)
    for s in shells:
        model.mesh.setTransfiniteSurface(s, arrangement="Left")

    model.addPhysicalGroup(2, [core], tag=REGIONS["core"], name="core")
    if shells:
        model.addPhysicalGroup(2, shells, tag=REGIONS["shell"], name="shell")
    sectors = {BLOCKED: 1}
    model.addPhysicalGroup(1, out_arcs if t > 0.0 else in_arcs, tag=1, name=BLOCKED)
    if free_arcs:
        sectors[SURFACE] = 2
        model.addPhysicalGroup(1, free_arcs, tag=2, name=SURFACE)
    if edges:
        sectors[SHELL_EDGE] = 3
        model.addPhysicalGroup(1, edges, tag=3, name=SHELL_EDGE)

    _gmsh.set_mesh_options(2)
    _gmsh.set_size_field(model, 1, in_arcs + free_arcs, h, hs, grading)
    info = _gmsh.generate(model, 2, "disk with a surface film")
    import gmsh

    # quality per region (gmsh minSICN) and the film cells' aspect ratio
    for name, surfs in (("core", [core]), ("shell", shells)):
        tags = []
        for s in surfs:
            for et in model.mesh.getElements(2, s)[1]:
                tags.extend(et)
        info[f"num_cells_{name}"] = len(tags)
        if tags:
            q = np.asarray(gmsh.model.mesh.getElementQualities(tags, "minSICN"))
            info[f"quality_min_{name}"] = float(q.min())
            info[f"quality_mean_{name}"] = float(q.mean())
    if shells:
        info["shell_aspect_ratio"] = float(hs / (t / layers))
    reactive = tuple(s for s in (BLOCKED, SURFACE) if s in sectors)
    return {"sectors": sectors, "reactive": reactive, "info": info}


# --------------------------------------------------------------------------------------
# public builder
# --------------------------------------------------------------------------------------


def disk_with_shell(
    diameter_um: float,
    shell_thickness_nm: float,
    *,
    shell_arc_deg: tuple[float, float] | None = (-45.0, 45.0),
    mesh_size_um: float | None = None,
    surface_mesh_size_um: float | None = None,
    grading_width_um: float | None = None,
    shell_layers: int = 4,
    comm: MPI.Comm = MPI.COMM_WORLD,
    verbose: bool = False,
    prefix: str = "geometry",
) -> ShelledParticleMesh:
    """Mesh a disk of diameter ``diameter_um`` whose outline is covered, over the polar
    angles ``shell_arc_deg = (start, end)`` (counter-clockwise, degrees from +x; None:
    the whole outline), by a film ``shell_thickness_nm`` thick added outside the disk.

    Sizes (µm): ``mesh_size_um`` in the bulk (default d/20), ``surface_mesh_size_um`` on
    the outline and along the film (default bulk/3), grading over ``grading_width_um``
    (default d/10). ``shell_layers`` rows of cells across the film. Collective over
    ``comm`` (gmsh runs on rank 0). ``shell_thickness_nm = 0``: no film, the same core
    mesh and sectors.
    """
    d = positive(diameter_um, f"{prefix}.diameter_um")
    delta = in_range(shell_thickness_nm, f"{prefix}.shell_thickness_nm", 0.0, 0.1 * d * 1e3, unit="nm")
    R = 0.5 * d
    h = d / 20.0 if mesh_size_um is None else positive(mesh_size_um, f"{prefix}.mesh_size_um")
    if h > 0.5 * d:
        raise InputError(f"{prefix}.mesh_size_um", f"must be <= {0.5 * d:.4g} µm, got {h:g}")
    hs = optional_positive(surface_mesh_size_um, f"{prefix}.surface_mesh_size_um")
    hs = h / 3.0 if hs is None else hs
    if hs > h:
        raise InputError(f"{prefix}.surface_mesh_size_um", f"must be in (0, {h:.4g}] µm (<= mesh_size_um), got {hs:g}")
    w = 0.1 * d if grading_width_um is None else positive(grading_width_um, f"{prefix}.grading_width_um")
    if isinstance(shell_layers, bool) or not isinstance(shell_layers, (int, np.integer)) or not 1 <= shell_layers <= 64:
        raise InputError(f"{prefix}.shell_layers", f"must be an integer in [1, 64], got {shell_layers!r}")
    if shell_arc_deg is not None:
        if isinstance(shell_arc_deg, (str, bytes)) or not hasattr(shell_arc_deg, "__len__") or len(shell_arc_deg) != 2:
            raise InputError(f"{prefix}.shell_arc_deg", f"must be (start, end) in degrees or None, got {shell_arc_deg!r}")
        s0 = in_range(shell_arc_deg[0], f"{prefix}.shell_arc_deg[0]", -360.0, 360.0, unit="deg")
        s1 = in_range(shell_arc_deg[1], f"{prefix}.shell_arc_deg[1]", -360.0, 360.0, unit="deg")
        span = (s1 - s0) % 360.0
        if span == 0.0 and s1 != s0:
            shell_arc_deg = None  # a full turn
        elif span < 1.0 or span > 359.0:
            raise InputError(f"{prefix}.shell_arc_deg", f"the covered arc must span 1°-359° (or None: all), "
                                                        f"got {span:g}°")
        else:
            shell_arc_deg = (s0, s1)
    if shell_arc_deg is None and delta == 0.0:
        raise InputError(f"{prefix}.shell_thickness_nm", "a full film needs a thickness > 0")
    number(R, "radius")
    t = delta * 1e-3
    # rough size check (units mistakes)
    est = 2.3 * math.pi * R * R / (hs * h) + 2 * shell_layers * 2 * math.pi * R / hs
    if est > 2e6:
        raise InputError(f"{prefix}.surface_mesh_size_um", f"would give about {est:.2g} cells; use larger sizes")

    what = f"disk d = {d:g} µm with a {delta:g} nm film"
    meta, data = mesh_and_distribute(
        comm, lambda model: _mesh_on_root(model, R, t, shell_arc_deg, h, hs, w, shell_layers), 2, what, verbose
    )
    if data.facet_tags is None or data.cell_tags is None:
        raise MeshError(f"the {what} mesh has no tagged cells/facets")
    data.cell_tags.name = "regions"
    region_area = _region_measures(data.mesh, data.cell_tags)
    particle = particle_from(
        meta, data, 2, what, cls=ShelledParticleMesh,
        cell_tags=data.cell_tags,
        regions=dict(REGIONS),
        radius_um=R,
        shell_thickness_nm=delta,
        shell_arc_deg=shell_arc_deg,
        core_measure=region_area.get(REGIONS["core"], 0.0),
        shell_measure=region_area.get(REGIONS["shell"], 0.0),
    )
    dphi = 2.0 * math.pi if shell_arc_deg is None else math.radians((shell_arc_deg[1] - shell_arc_deg[0]) % 360.0)
    particle.info.update({
        "shape": what,
        "diameter_um": d,
        "shell_thickness_nm": delta,
        "shell_arc_deg": None if shell_arc_deg is None else list(shell_arc_deg),
        "shell_layers": int(shell_layers),
        "mesh_size_um": h,
        "surface_mesh_size_um": hs,
        "grading_width_um": w,
        # exact shape: core + film area, reactive outline (free arc + the film's outer arc)
        "reference": {"area": math.pi * R * R + 0.5 * dphi * ((R + t) ** 2 - R * R),
                      "perimeter": R * (2.0 * math.pi - dphi) + (R + t) * dphi,
                      "core_area": math.pi * R * R, "shell_area": 0.5 * dphi * ((R + t) ** 2 - R * R),
                      "covered_arc_um": R * dphi},
    })
    return particle


def _region_measures(mesh, cell_tags) -> dict[int, float]:
    """Area of each tagged region (owned cells, summed over ranks)."""
    n_owned = mesh.topology.index_map(2).size_local
    x = mesh.geometry.x[:, :2]
    out = {}
    for value in np.unique(np.concatenate(mesh.comm.allgather(np.unique(cell_tags.values)))):
        cells = cell_tags.find(int(value))
        cells = cells[cells < n_owned]
        c = x[mesh.geometry.dofmaps[0][cells]]
        e1, e2 = c[:, 1] - c[:, 0], c[:, 2] - c[:, 0]
        area = float(0.5 * np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]).sum())
        out[int(value)] = mesh.comm.allreduce(area, op=MPI.SUM)
    return out
