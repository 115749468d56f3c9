"""Build a particle mesh from the ``[geometry]`` table of a (parsed) TOML config.

Schema (lengths in µm)::

    shape = "xu2022"            # disk | ellipse | contour | xu2022 | prism | cylinder | sphere
                                # (electrode | electrode_3d: composite electrodes, see electrode.py)
    diameter_um = 5.0           # disk, cylinder, sphere
    semi_axes_um = [2.0, 1.0]   # ellipse
    angle_deg = 0.0             # ellipse, xu2022: direction of the first semi-axis
    contour_csv = "outline.csv" # contour: 2-column CSV x_um,y_um (header line optional)
    contour_points_um = [[0, 0], [1, 0], [0, 1]]   # contour: ... or the points inline
    smoothing_um = 0.0          # contour: allowed RMS deviation of the smooth outline
    height_um = 2.0             # prism, cylinder
    mesher = "auto"             # prism, cylinder: gmsh (3D, rank 0) | extrude (layers in parallel) | auto (by size)
    [geometry.cross_section]    # prism: a 2D geometry (shape + its keys, optional sectors)
    mesh_size_um = ...          # bulk cell size; default 1/20 of the smallest particle size (P1),
                                # 1/10 with quadratic elements (see DEFAULT_SIZES)
    surface_mesh_size_um = ...  # cell size at the reactive surface; default mesh_size_um / 3 (P1), / 2 (P2)
    grading_width_um = ...      # distance over which sizes grade; default 1/10 particle size
    center_mesh_size_um = ...   # cell size at the centroid (axis of a prism); default none (P1), mesh_size_um / 2 (P2)
    center_grading_width_um = . # distance over which it grows to mesh_size_um; default 2 × grading_width_um
    min_quality = 0.1           # refuse a mesh whose worst cell is below this (gmsh minSICN, (0, 1])
    max_cells = ...             # refuse larger meshes; default: what fits in half the memory (limits.py)
    sectors = [{name = "a", start_deg = 45, end_deg = 135},
               {name = "b", start_fraction = 0.5, end_fraction = 0.6}]
    verbose = false             # show gmsh output
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from mpi4py import MPI

from nmcfx.errors import InputError
from nmcfx.parallel import describe_os_error, run_on_root

from ._validate import boolean, positive
from .particle import ParticleMesh
from .shapes2d import Contour, Disk, Ellipse, ReferenceXu2022, mesh_2d
from .shapes3d import cylinder, prism, sphere

SHAPES_2D = ("disk", "ellipse", "contour", "xu2022")
SHAPES = SHAPES_2D + ("prism", "cylinder", "sphere")
DEFAULT_SHAPE = "xu2022"
MESH_KEYS = ("mesh_size_um", "surface_mesh_size_um", "grading_width_um", "center_mesh_size_um",
             "center_grading_width_um", "min_quality", "max_cells")
COMMON_KEYS = ("shape",) + MESH_KEYS + ("sectors", "verbose")
SHAPE_KEYS: dict[str, tuple[str, ...]] = {
    "disk": ("diameter_um",),
    "ellipse": ("semi_axes_um", "angle_deg"),
    "contour": ("contour_csv", "contour_points_um", "smoothing_um"),
    "xu2022": ("angle_deg",),
    "prism": ("height_um", "cross_section", "mesher"),
    "cylinder": ("diameter_um", "height_um", "mesher"),
    "sphere": ("diameter_um",),
}
#: Surface cell size relative to the bulk size when the config does not say.
DEFAULT_SURFACE_RATIO = 1.0 / 3.0
#: Default sizes by element degree: bulk size as a fraction of the particle size, surface and
#: centre sizes as fractions of the bulk size. Quadratic elements on a mesh twice as coarse,
#: refined at the surface and toward the centroid (where a shrinking core ends), keep θ within
#: 0.3-0.4 % of the particle's θ drop on the 2.4 µm disk at 100 mA/g (benchmarks/README.md);
#: the linear defaults are those of earlier versions (1-2 %).
DEFAULT_SIZES = {1: (1.0 / 20.0, DEFAULT_SURFACE_RATIO, None), 2: (1.0 / 10.0, 0.5, 0.5)}


def geometry_from_config(
    cfg: Mapping[str, Any] | None,
    comm: MPI.Comm = MPI.COMM_WORLD,
    *,
    base_dir: str | os.PathLike | None = None,
    prefix: str = "geometry",
    degree: int = 1,
) -> ParticleMesh:
    """Validate a ``[geometry]`` table and build the mesh (collective over ``comm``).

    ``base_dir`` resolves a relative ``contour_csv`` (default: the working directory);
    pass the directory of the config file. ``degree`` (of the elements the mesh is for)
    chooses the default sizes (:data:`DEFAULT_SIZES`). Every problem raises
    :class:`InputError` naming the field, e.g. ``geometry.cross_section.semi_axes_um[1]``.
    """
    cfg = {} if cfg is None else cfg
    if not isinstance(cfg, Mapping):
        raise InputError(prefix, f"must be a table, got {type(cfg).__name__}")
    if cfg.get("shape") in ("electrode", "electrode_3d"):  # composite electrodes: geometries/electrode.py
        from .electrode import electrode_from_config

        return electrode_from_config(cfg, comm, base_dir=base_dir, prefix=prefix)
    shape = _shape(cfg, prefix, SHAPES)
    _check_keys(cfg, COMMON_KEYS + SHAPE_KEYS[shape], shape, prefix)
    verbose = boolean(cfg["verbose"], f"{prefix}.verbose") if "verbose" in cfg else False
    sectors = cfg.get("sectors")

    if shape in SHAPES_2D:
        section = _section(cfg, shape, prefix, comm, base_dir)
        char = section.characteristic_size_um()
        sizes = _sizes(cfg, char, prefix, degree)
        return mesh_2d(section, comm=comm, sectors=sectors, verbose=verbose, prefix=prefix, **sizes)

    if shape == "sphere":
        d = positive(_required(cfg, "diameter_um", shape, prefix), f"{prefix}.diameter_um")
        return sphere(d, comm=comm, sectors=sectors, verbose=verbose, prefix=prefix, **_sizes(cfg, d, prefix, degree))

    height = positive(_required(cfg, "height_um", shape, prefix), f"{prefix}.height_um")
    if shape == "cylinder":
        d = positive(_required(cfg, "diameter_um", shape, prefix), f"{prefix}.diameter_um")
        sizes = _sizes(cfg, min(d, height), prefix, degree)
        return cylinder(d, height, comm=comm, sectors=sectors, verbose=verbose, prefix=prefix,
                        mesher=cfg.get("mesher", "auto"), **sizes)

    # prism
    cs_prefix = f"{prefix}.cross_section"
    cs = cfg.get("cross_section", {})
    if not isinstance(cs, Mapping):
        raise InputError(cs_prefix, f"must be a table (shape + its keys), got {type(cs).__name__}")
    for key in MESH_KEYS + ("verbose",):
        if key in cs:
            raise InputError(f"{cs_prefix}.{key}", f"set {key} in [{prefix}], not in the cross-section")
    cs_shape = _shape(cs, cs_prefix, SHAPES_2D)
    _check_keys(cs, ("shape", "sectors") + SHAPE_KEYS[cs_shape], cs_shape, cs_prefix)
    if "sectors" in cs:
        if sectors is not None:
            raise InputError(f"{cs_prefix}.sectors", f"sectors are given both here and in {prefix}.sectors; keep one")
        sectors = cs["sectors"]
    section = _section(cs, cs_shape, cs_prefix, comm, base_dir)
    sizes = _sizes(cfg, min(section.characteristic_size_um(), height), prefix, degree)
    return prism(section, height, comm=comm, sectors=sectors, verbose=verbose, prefix=prefix,
                 mesher=cfg.get("mesher", "auto"), **sizes)


# --------------------------------------------------------------------------------------


def _shape(cfg: Mapping, prefix: str, allowed: tuple[str, ...]) -> str:
    shape = cfg.get("shape", DEFAULT_SHAPE)
    if not isinstance(shape, str) or shape not in allowed:
        raise InputError(f"{prefix}.shape", f"must be one of {list(allowed)}, got {shape!r}")
    return shape


def _check_keys(cfg: Mapping, allowed: tuple[str, ...], shape: str, prefix: str) -> None:
    for key in cfg:
        if key not in allowed:
            what = "is not used by" if any(key in v for v in SHAPE_KEYS.values()) else "is not a key of"
            raise InputError(
                f"{prefix}.{key}",
                f"{what} shape {shape!r}; allowed keys: {', '.join(sorted(allowed))}",
            )


def _required(cfg: Mapping, key: str, shape: str, prefix: str) -> Any:
    if key not in cfg:
        raise InputError(f"{prefix}.{key}", f"is required for shape {shape!r}")
    return cfg[key]


def _section(cfg: Mapping, shape: str, prefix: str, comm: MPI.Comm, base_dir) -> Any:
    if shape == "disk":
        section = Disk(_required(cfg, "diameter_um", shape, prefix))
    elif shape == "ellipse":
        section = Ellipse(_required(cfg, "semi_axes_um", shape, prefix), cfg.get("angle_deg", 0.0))
    elif shape == "xu2022":
        section = ReferenceXu2022(cfg.get("angle_deg", 0.0))
    else:
        has_csv, has_pts = "contour_csv" in cfg, "contour_points_um" in cfg
        if has_csv == has_pts:
            raise InputError(
                f"{prefix}.contour_csv",
                "give exactly one of contour_csv (path to a CSV x_um,y_um) or contour_points_um (list of [x, y])",
            )
        if has_csv:
            points, key = read_contour_csv(cfg["contour_csv"], f"{prefix}.contour_csv", comm, base_dir), "contour_csv"
        else:
            points, key = cfg["contour_points_um"], "contour_points_um"
        section = Contour(points, cfg.get("smoothing_um", 0.0), points_key=key)
    return section.validated(prefix)


def _sizes(cfg: Mapping, char_size: float, prefix: str, degree: int = 1) -> dict:
    bulk, surface, center = DEFAULT_SIZES[2 if degree == 2 else 1]
    h = cfg.get("mesh_size_um")
    if h is None:
        h = bulk * char_size
    else:
        positive(h, f"{prefix}.mesh_size_um")  # validated again (with range) by the builder
    hs = cfg.get("surface_mesh_size_um")
    if hs is None:
        hs = surface * float(h)
    hc = cfg.get("center_mesh_size_um")
    if hc is None and center is not None:
        hc = center * float(h)
    return {"mesh_size_um": h, "surface_mesh_size_um": hs, "grading_width_um": cfg.get("grading_width_um"),
            "center_mesh_size_um": hc,
            "center_grading_width_um": cfg.get("center_grading_width_um"),
            "min_quality": cfg.get("min_quality"), "max_cells": cfg.get("max_cells")}


def read_contour_csv(path: Any, field: str, comm: MPI.Comm = MPI.COMM_WORLD, base_dir=None):
    """Read a 2-column CSV (x_um, y_um; optional header, '#' comments) on rank 0 and
    broadcast the (N, 2) list of points."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise InputError(field, f"must be a path to a CSV file, got {path!r}")
    full = os.path.join(os.fspath(base_dir), os.fspath(path)) if base_dir is not None else os.fspath(path)
    # any failure on rank 0 (unreadable, not UTF-8, ...) is raised on every rank: none waits in a bcast
    return run_on_root(comm, _parse_csv, full, field, field=field)


def _parse_csv(path: str, field: str) -> list[tuple[float, float]]:
    try:
        with open(path, encoding="utf-8-sig") as fh:
            lines = fh.read().splitlines()
    except OSError as exc:
        raise InputError(field, f"cannot read {path!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise InputError(field, f"{path}: {describe_os_error(exc)}") from None
    points: list[tuple[float, float]] = []
    first = True
    for lineno, raw in enumerate(lines, start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        cells = [c.strip() for c in line.split(",")]
        try:
            if len(cells) != 2:
                raise ValueError
            x, y = float(cells[0]), float(cells[1])
        except ValueError:
            if first:  # header line
                first = False
                continue
            raise InputError(field, f"{path}:{lineno}: expected two numbers 'x_um,y_um', got {raw.strip()!r}") from None
        first = False
        points.append((x, y))
    if len(points) < 3:
        raise InputError(field, f"{path} holds {len(points)} points; a contour needs at least 3")
    return points
