"""3D particles: prisms over any 2D cross-section (z = crystal c axis), cylinders, spheres.

Prisms span z in [-height/2, height/2]. Their lateral faces carry the cross-section's
sectors (reactive); the end faces are the inert sectors ``"basal_bottom"`` (z < 0) and
``"basal_top"``. A sphere has one reactive sector, ``"surface"``. All lengths in µm.
"""

from __future__ import annotations

import math
from typing import Any

from mpi4py import MPI

from nmcfx.errors import InputError, MeshError, NmcfxError

from . import _gmsh
from ._build import build_particle
from ._validate import positive
from .particle import ParticleMesh
from .limits import mesh_limits
from .sectors import BASAL_BOTTOM, BASAL_TOP, SURFACE, parse_sectors
from .shapes2d import (
    CrossSection,
    Disk,
    MeshSizes,
    outline_info,
    place_sectors,
    resolve_sizes,
    section_surface,
    validate_section,
)


def _prism_on_root(model, section, height, sector_list, sizes: MeshSizes, sectors_field: str) -> dict:
    outline = section.outline()
    layout = place_sectors(outline, sector_list, sectors_field, sizes.boundary)
    surf, curve_names = section_surface(model, outline, layout, z=-0.5 * height)
    occ = model.occ
    out = occ.extrude([(2, surf)], 0.0, 0.0, height)
    occ.synchronize()
    volumes = [t for d, t in out if d == 3]
    if len(volumes) != 1:
        raise MeshError(f"extruding the cross-section gave {len(volumes)} volumes instead of 1")
    vol = volumes[0]
    face_names: dict[int, str] = {}
    for _, f in model.getBoundary([(3, vol)], oriented=False):
        x0, y0, z0, x1, y1, z1 = model.getBoundingBox(2, f)
        if z1 - z0 < 1e-6 * height:
            face_names[f] = BASAL_TOP if 0.5 * (z0 + z1) > 0.0 else BASAL_BOTTOM
            continue
        bottom = [c for _, c in model.getBoundary([(2, f)], oriented=False) if abs(c) in curve_names]
        if len(bottom) != 1:
            raise MeshError(f"could not tell which cross-section curve lateral face {f} comes from")
        face_names[f] = curve_names[abs(bottom[0])]
    lateral_names = [n for n in layout.names]
    names = lateral_names + [BASAL_BOTTOM, BASAL_TOP]
    if sorted(set(face_names.values())) != sorted(names):
        raise MeshError(f"prism faces {sorted(set(face_names.values()))} do not match sectors {names}")
    tags = {name: i + 1 for i, name in enumerate(names)}
    model.addPhysicalGroup(3, [vol], tag=1, name="particle")
    for name in names:
        model.addPhysicalGroup(2, [f for f, n in face_names.items() if n == name], tag=tags[name], name=name)
    lateral = [f for f, n in face_names.items() if n in lateral_names]
    _gmsh.set_mesh_options(3)
    sizes.size_field(model, 2, lateral, center=outline.centroid[:2])  # the prism's axis
    what = f"prism over {section.describe()}, height {height:g} µm"
    info = _gmsh.generate(model, 3, what, sizes.limits)
    info.update(sizes.as_info())
    info["shape"] = what
    info["height_um"] = height
    info["cross_section"] = {"area": outline.area, "perimeter": outline.perimeter, "shape": section.describe()}
    info["reference"] = {"volume": outline.area * height, "reactive_area": outline.perimeter * height}
    info.update(outline_info(outline))
    return {"sectors": tags, "reactive": tuple(lateral_names), "info": info}


MESHERS = ("auto", "gmsh", "extrude")


def _extruded_prism(comm, section, height, sector_list, sizes: MeshSizes, prefix: str, verbose: bool) -> ParticleMesh:
    """A prism meshed in parallel: the cross-section by gmsh on rank 0, the layers by every rank
    (:mod:`._extrude`)."""
    from . import _build, _extrude
    from ._gmsh import GmshModel
    from .shapes2d import _mesh_section_on_root

    what = f"prism over {section.describe()}, height {height:g} µm (extruded)"
    key = _build._cache_key(comm, ("prism-extruded", section, height, sector_list, sizes, prefix))
    key = None if verbose else key
    if key is not None and key in _build._CACHE:
        return _build._CACHE[key]
    status = None
    if comm.rank == 0:
        session = GmshModel(verbose)
        try:
            model = session.open()
            meta2d = _mesh_section_on_root(model, section, sector_list, sizes, f"{prefix}.sectors")
            status = ("ok", meta2d, _extrude.section_arrays(model))
        except InputError as exc:
            status = ("input", exc.field, _build._raw_message(exc))
        except NmcfxError as exc:
            status = ("mesh", str(exc))
        except Exception as exc:  # gmsh raises plain Exception
            status = ("mesh", f"gmsh failed on the cross-section of the {what}: {exc}")
        finally:
            session.close()
    status = comm.bcast(status, root=0)
    if status[0] == "input":
        raise InputError(status[1], status[2])
    if status[0] == "mesh":
        raise MeshError(status[1])
    _, meta2d, arrays = status
    lateral = list(meta2d["sectors"])
    names = lateral + [BASAL_BOTTOM, BASAL_TOP]
    tags = {name: i + 1 for i, name in enumerate(names)}
    if any(meta2d["sectors"][n] != tags[n] for n in lateral):
        raise MeshError("cross-section sector tags do not match the prism's")
    layers = _extrude.layer_count(height, sizes.bulk)
    _extrude.check(layers, len(arrays["triangles"]), sizes.limits, what)
    data = _extrude.extruded_mesh(comm, arrays, height, layers, tags[BASAL_BOTTOM], tags[BASAL_TOP])
    info = dict(meta2d["info"])
    info["quality_measure"] = "gmsh minSICN of the cross-section (layers extruded from it)"
    outline = section.outline()
    info.update(sizes.as_info())
    info.update({"shape": what, "height_um": height, "layers": layers, "mesher": "extrude (parallel)",
                 "cross_section": {"area": outline.area, "perimeter": outline.perimeter,
                                   "shape": section.describe(), "triangles": int(len(arrays["triangles"])),
                                   "vertices": int(len(arrays["xy"]))},
                 "reference": {"volume": outline.area * height, "reactive_area": outline.perimeter * height}})
    particle = _build.particle_from({"sectors": tags, "reactive": tuple(lateral), "info": info}, data, 3, what)
    if key is not None and particle.info["num_cells"] <= _build.MESH_CACHE_MAX_CELLS:
        _build._CACHE[key] = particle
        while len(_build._CACHE) > _build.MESH_CACHE_SIZE:
            _build._CACHE.popitem(last=False)
    return particle


def _prism(
    section: Any,
    height_um: Any,
    *,
    section_prefix: str,
    comm: MPI.Comm,
    mesh_size_um,
    surface_mesh_size_um,
    grading_width_um,
    sectors,
    verbose: bool,
    prefix: str,
    min_quality=None,
    max_cells=None,
    center_mesh_size_um=None,
    center_grading_width_um=None,
    mesher: str = "auto",
) -> ParticleMesh:
    section = validate_section(section, section_prefix)
    if mesher not in MESHERS:
        raise InputError(f"{prefix}.mesher", f"must be one of {list(MESHERS)}, got {mesher!r}")
    height = positive(height_um, f"{prefix}.height_um")
    sector_list = parse_sectors(sectors, f"{prefix}.sectors")
    area, perimeter = section.estimate()
    sizes = resolve_sizes(
        min(section.characteristic_size_um(), height),
        mesh_size_um,
        surface_mesh_size_um,
        grading_width_um,
        measure=area * height,
        boundary=perimeter * height,
        tdim=3,
        prefix=prefix,
        limits=mesh_limits(3, min_quality, max_cells, prefix=prefix, comm=comm),
        center_mesh_size_um=center_mesh_size_um,
        center_grading_width_um=center_grading_width_um,
    )
    if mesher == "auto":
        from ._extrude import EXTRUDE_MIN_CELLS

        mesher = "extrude" if sizes.estimated_cells >= EXTRUDE_MIN_CELLS else "gmsh"
    if mesher == "extrude":
        return _extruded_prism(comm, section, height, sector_list, sizes, prefix, verbose)
    return build_particle(
        comm,
        lambda model: _prism_on_root(model, section, height, sector_list, sizes, f"{prefix}.sectors"),
        3,
        f"prism over {section.describe()}",
        verbose,
        cache_key=("prism", section, height, sector_list, sizes, prefix),
    )


def prism(
    cross_section: CrossSection,
    height_um: float,
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
    mesher: str = "auto",
) -> ParticleMesh:
    """Extrude a cross-section (:class:`Disk`, :class:`Ellipse`, :class:`Contour`,
    :class:`ReferenceXu2022`) along z over ``height_um`` (z in [-h/2, h/2]).

    ``sectors`` are placed on the cross-section outline (as in 2D) and name the lateral
    faces; the uncovered rest is ``"surface"``; the end faces are ``"basal_bottom"`` and
    ``"basal_top"`` and are not in ``reactive_sectors``. Surface refinement
    (``surface_mesh_size_um``) grades toward the reactive (lateral) faces.

    ``mesher``: ``"gmsh"`` (gmsh's 3D mesher on rank 0), ``"extrude"`` (the cross-section by
    gmsh, the layers built in parallel by every rank: :mod:`._extrude`), or ``"auto"`` (extrude
    from :data:`~._extrude.EXTRUDE_MIN_CELLS` estimated cells).
    """
    return _prism(
        cross_section,
        height_um,
        section_prefix=f"{prefix}.cross_section",
        comm=comm,
        mesh_size_um=mesh_size_um,
        surface_mesh_size_um=surface_mesh_size_um,
        grading_width_um=grading_width_um,
        sectors=sectors,
        verbose=verbose,
        prefix=prefix,
        min_quality=min_quality,
        max_cells=max_cells,
        center_mesh_size_um=center_mesh_size_um,
        center_grading_width_um=center_grading_width_um,
        mesher=mesher,
    )


def cylinder(
    diameter_um: float,
    height_um: float,
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
    mesher: str = "auto",
) -> ParticleMesh:
    """A prism over a disk of diameter ``diameter_um``; see :func:`prism`."""
    return _prism(
        Disk(diameter_um),
        height_um,
        section_prefix=prefix,
        comm=comm,
        mesh_size_um=mesh_size_um,
        surface_mesh_size_um=surface_mesh_size_um,
        grading_width_um=grading_width_um,
        sectors=sectors,
        verbose=verbose,
        prefix=prefix,
        min_quality=min_quality,
        max_cells=max_cells,
        center_mesh_size_um=center_mesh_size_um,
        center_grading_width_um=center_grading_width_um,
        mesher=mesher,
    )


def _sphere_on_root(model, radius: float, sizes: MeshSizes) -> dict:
    occ = model.occ
    vol = occ.addSphere(0.0, 0.0, 0.0, radius)
    occ.synchronize()
    faces = [f for _, f in model.getBoundary([(3, vol)], oriented=False)]
    model.addPhysicalGroup(3, [vol], tag=1, name="particle")
    model.addPhysicalGroup(2, faces, tag=1, name=SURFACE)
    _gmsh.set_mesh_options(3)
    sizes.size_field(model, 2, faces, center=(0.0, 0.0, 0.0))
    what = f"sphere d = {2 * radius:g} µm"
    info = _gmsh.generate(model, 3, what, sizes.limits)
    info.update(sizes.as_info())
    info["shape"] = what
    info["reference"] = {"volume": 4.0 / 3.0 * math.pi * radius**3, "reactive_area": 4.0 * math.pi * radius**2}
    return {"sectors": {SURFACE: 1}, "reactive": (SURFACE,), "info": info}


def sphere(
    diameter_um: float,
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
    """A sphere of diameter ``diameter_um`` centred at the origin; the whole surface is
    the reactive sector ``"surface"`` (user sectors are not supported on spheres)."""
    d = positive(diameter_um, f"{prefix}.diameter_um")
    if sectors:
        raise InputError(
            f"{prefix}.sectors", "is not supported for a sphere (its whole surface is the sector 'surface')"
        )
    r = 0.5 * d
    sizes = resolve_sizes(
        d,
        mesh_size_um,
        surface_mesh_size_um,
        grading_width_um,
        measure=4.0 / 3.0 * math.pi * r**3,
        boundary=4.0 * math.pi * r**2,
        tdim=3,
        prefix=prefix,
        limits=mesh_limits(3, min_quality, max_cells, prefix=prefix, comm=comm),
        center_mesh_size_um=center_mesh_size_um,
        center_grading_width_um=center_grading_width_um,
    )
    return build_particle(comm, lambda model: _sphere_on_root(model, r, sizes), 3, f"sphere d = {d:g} µm", verbose,
                          cache_key=("sphere", r, sizes, prefix))
