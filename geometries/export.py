"""Write a mesh with its region (cell) and boundary (facet) tags for other tools (meshio).

``nmcfx mesh CONFIG.toml --export FILE`` calls :func:`export_mesh`; the format follows the file
name's extension (any format meshio writes: ``.msh`` gmsh, ``.vtu``/``.vtk`` ParaView,
``.xdmf``, ``.med``, ``.inp``, …). The distributed mesh is gathered to rank 0, which writes.

What the file holds (coordinates in µm):

* the cells (triangles in 2D, tetrahedra in 3D) with the cell data ``region``: the cell tag
  (particles: 1 everywhere, or the shell's core 1 / shell 2; electrodes: electrolyte 1, CBD 2,
  particle i → 100 + i);
* the tagged facets (lines in 2D, triangles in 3D) with the cell data ``boundary``: the facet
  tag (particles: the sector tags; electrodes: collector 1, separator 2, sides 3) and, for
  meshes with several regions, the interfaces between them (:data:`INTERFACE_TAGS`: NMC|
  electrolyte 11, NMC|CBD 12, NMC|NMC 13, CBD|electrolyte 14, other pairs 19);
* names of every tag value as meshio ``field_data`` (gmsh physical names in ``.msh``).

In ``.msh`` files the tags are also the gmsh physical (and elementary) tags, so gmsh and
``dolfinx.io.gmsh`` read them back as usual. Usage::

    electrode = electrode_from_config({"shape": "electrode", "preset": "sharma2022"})
    export_mesh("electrode.msh", electrode)        # collective; rank 0 writes
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

import dolfinx

from nmcfx.errors import InputError

#: facet tags given to interfaces between regions (electrodes); other region pairs get 19
INTERFACE_TAGS = {"nmc|electrolyte": 11, "nmc|cbd": 12, "nmc|nmc": 13, "cbd|electrolyte": 14}
OTHER_INTERFACE = 19
_CELL_TYPES = {2: ("triangle", "line"), 3: ("tetra", "triangle")}


def check_export_path(path, field: str = "--export") -> Path:
    """The export file, validated before anything is meshed: a format meshio writes, a writable place."""
    import meshio

    p = Path(path)
    two = "".join(p.suffixes[-2:]).lower()
    if two not in meshio.extension_to_filetypes and p.suffix.lower() not in meshio.extension_to_filetypes:
        known = ", ".join(sorted(e for e in meshio.extension_to_filetypes if e.count(".") == 1))
        raise InputError(field, f"unknown mesh format {p.suffix or '(no extension)'!r} of {p.name}; "
                                f"meshio writes {known}")
    from nmcfx.paths import check_output_file

    return check_output_file(p, field)


def _file_format(path: Path) -> str:
    import meshio

    two = "".join(path.suffixes[-2:]).lower()
    ext = two if two in meshio.extension_to_filetypes else path.suffix.lower()
    types = meshio.extension_to_filetypes[ext]
    return "gmsh" if "gmsh" in types else types[0]  # .msh is gmsh's, not ANSYS's


def region_names(obj) -> tuple[dict[int, str], dict[int, str]]:
    """(cell tag → name, facet tag → name) of a ParticleMesh, ShelledParticleMesh or ElectrodeMesh."""
    if hasattr(obj, "particle_tags"):  # an electrode
        from .electrode import BOUNDARY_NAMES, CBD_TAG, ELECTROLYTE_TAG

        cells = {ELECTROLYTE_TAG: "electrolyte", CBD_TAG: "cbd"}
        cells.update({p["tag"]: p["name"] for p in obj.particles})
        facets = dict(BOUNDARY_NAMES)
    else:
        regions = getattr(obj, "regions", None) or {"particle": 1}
        cells = {int(t): n for n, t in regions.items()}
        facets = {int(t): n for n, t in obj.sectors.items()}
    facets.update({t: n for n, t in INTERFACE_TAGS.items()})
    facets[OTHER_INTERFACE] = "interface"
    return cells, facets


def _region_kind(tag: int) -> str:
    from .electrode import CBD_TAG, ELECTROLYTE_TAG, PARTICLE_TAG0

    return "nmc" if tag >= PARTICLE_TAG0 else "cbd" if tag == CBD_TAG else \
        "electrolyte" if tag == ELECTROLYTE_TAG else str(tag)


def interface_facets(mesh, cell_tags, electrode: bool) -> tuple[np.ndarray, np.ndarray]:
    """Owned interior facets between cells of different regions, and their :data:`INTERFACE_TAGS`.

    Needs both cells of every owned facet on the rank (electrode meshes are ghosted by shared
    facets)."""
    tdim = mesh.topology.dim
    fdim = tdim - 1
    mesh.topology.create_connectivity(fdim, tdim)
    f2c = mesh.topology.connectivity(fdim, tdim)
    n_cells = mesh.topology.index_map(tdim).size_local + mesh.topology.index_map(tdim).num_ghosts
    region = np.full(n_cells, -1, dtype=np.int64)
    region[cell_tags.indices] = cell_tags.values
    n_owned = mesh.topology.index_map(fdim).size_local
    facets, tags = [], []
    for f in range(n_owned):
        cs = f2c.links(f)
        if len(cs) != 2 or region[cs[0]] == region[cs[1]]:
            continue
        if electrode:
            key = "|".join(sorted((_region_kind(int(region[cs[0]])), _region_kind(int(region[cs[1]]))),
                                  key=("nmc", "cbd", "electrolyte").index))
            tag = INTERFACE_TAGS.get(key, OTHER_INTERFACE)
        else:
            tag = OTHER_INTERFACE
        facets.append(f)
        tags.append(tag)
    return np.asarray(facets, dtype=np.int32), np.asarray(tags, dtype=np.int32)


def gather_mesh(mesh, cell_tags=None, facet_tags=None, *, interfaces: bool = True, electrode: bool = False):
    """The whole mesh on rank 0 (collective): ``(points, cells, regions, facets, boundaries)``
    with global vertex numbering; None on the other ranks. Cells without a tag get region 0;
    only tagged facets (and, with ``interfaces``, interface facets) are returned."""
    comm = mesh.comm
    tdim = mesh.topology.dim
    fdim = tdim - 1
    geom = mesh.geometry
    if geom.cmaps[0].degree != 1:
        raise InputError("--export", "only meshes with straight (degree-1) cells can be exported")
    imap = geom.index_map()
    n_local = imap.size_local + imap.num_ghosts
    glob = imap.local_to_global(np.arange(n_local, dtype=np.int32))
    n_own_nodes = imap.size_local
    n_cells = mesh.topology.index_map(tdim).size_local
    cells = glob[geom.dofmaps[0][:n_cells]]
    regions = np.zeros(n_cells, dtype=np.int32)
    if cell_tags is not None:
        own = cell_tags.indices < n_cells
        regions[cell_tags.indices[own]] = cell_tags.values[own]
    f_idx, f_val = np.zeros(0, np.int32), np.zeros(0, np.int32)
    if facet_tags is not None:
        n_own_f = mesh.topology.index_map(fdim).size_local
        own = facet_tags.indices < n_own_f
        f_idx, f_val = facet_tags.indices[own], facet_tags.values[own]
    if interfaces and cell_tags is not None:
        i_idx, i_val = interface_facets(mesh, cell_tags, electrode)
        f_idx, f_val = np.concatenate([f_idx, i_idx]), np.concatenate([f_val, i_val])
    mesh.topology.create_connectivity(fdim, tdim)
    facets = (glob[dolfinx.mesh.entities_to_geometry(mesh, fdim, f_idx.astype(np.int32))] if len(f_idx)
              else np.zeros((0, fdim + 1), dtype=np.int64))
    local = (glob[:n_own_nodes], geom.x[:n_own_nodes], cells, regions, facets, f_val)
    parts = comm.gather(local, root=0)
    if comm.rank != 0:
        return None
    n = imap.size_global
    points = np.zeros((n, 3))
    for ids, x, *_ in parts:
        points[ids] = x
    cat = lambda k, shape: np.concatenate([p[k] for p in parts]) if parts else np.zeros(shape)  # noqa: E731
    return (points, cat(2, (0, tdim + 1)).astype(np.int64), cat(3, (0,)).astype(np.int32),
            cat(4, (0, fdim + 1)).astype(np.int64), cat(5, (0,)).astype(np.int32))


def export_mesh(path, obj, *, cell_tags=None, facet_tags=None) -> dict:
    """Write ``obj`` (a ParticleMesh, ShelledParticleMesh or ElectrodeMesh) to ``path`` (collective;
    rank 0 writes, to a temporary name renamed at the end). Returns, on every rank, counts of what
    was written: ``cells``, ``facets``, ``regions`` and ``boundaries`` (tag → count)."""
    import meshio

    path = check_export_path(path)
    mesh = obj.mesh
    comm = mesh.comm
    electrode = hasattr(obj, "particle_tags")
    cell_tags = cell_tags if cell_tags is not None else getattr(obj, "cell_tags", None)
    facet_tags = facet_tags if facet_tags is not None else getattr(obj, "facet_tags", None)
    if _file_format(path) == "xdmf":
        return _export_xdmf(path, obj, cell_tags, facet_tags, electrode)
    data = gather_mesh(mesh, cell_tags, facet_tags, electrode=electrode)
    status = None
    if comm.rank == 0:
        points, cells, regions, facets, boundaries = data
        tdim = mesh.topology.dim
        if cell_tags is None:
            regions[:] = 1
        cell_type, facet_type = _CELL_TYPES[tdim]
        cnames, fnames = region_names(obj)
        blocks = [(cell_type, cells)] + ([(facet_type, facets)] if len(facets) else [])
        region = [regions] + ([np.zeros(len(facets), np.int32)] if len(facets) else [])
        boundary = [np.zeros(len(cells), np.int32)] + ([boundaries] if len(facets) else [])
        physical = [regions] + ([boundaries] if len(facets) else [])
        cell_data = {"region": region, "boundary": boundary}
        field_data = {}
        for tag in np.unique(regions):
            field_data[cnames.get(int(tag), f"region_{tag}")] = np.array([int(tag), tdim])
        for tag in np.unique(boundaries):
            field_data[fnames.get(int(tag), f"boundary_{tag}")] = np.array([int(tag), tdim - 1])
        kwargs = {}
        fmt = _file_format(path)
        if fmt.startswith("gmsh"):
            cell_data = {"gmsh:physical": physical, "gmsh:geometrical": physical}
            fmt = "gmsh22"  # the format every gmsh-reading tool (dolfinx.io.gmsh, meshio, gmsh) reads
            kwargs["binary"] = False
        m = meshio.Mesh(points, blocks, cell_data=cell_data, field_data=field_data)
        tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            meshio.write(tmp, m, file_format=fmt, **kwargs)
            os.replace(tmp, path)
            status = ("ok", {"cells": int(len(cells)), "facets": int(len(facets)),
                             "regions": {int(t): int(c) for t, c in zip(*np.unique(regions, return_counts=True))},
                             "boundaries": {int(t): int(c) for t, c in
                                            zip(*np.unique(boundaries, return_counts=True))}})
        except Exception as exc:  # noqa: BLE001 - any writer failure is reported in one line
            tmp.unlink(missing_ok=True)
            status = ("error", f"could not write {path}: {exc}")
    status = comm.bcast(status, root=0)
    if status[0] == "error":
        raise InputError("--export", status[1])
    return status[1]


def _export_xdmf(path: Path, obj, cell_tags, facet_tags, electrode: bool) -> dict:
    """XDMF (+ HDF5) through DOLFINx, in parallel: the mesh, the meshtags ``region`` (cells) and
    ``boundary`` (facets: boundary tags and interfaces) as ``dolfinx.io.XDMFFile`` reads them back."""
    from mpi4py import MPI

    import dolfinx.io

    mesh = obj.mesh
    comm = mesh.comm
    tdim = mesh.topology.dim
    fdim = tdim - 1
    n_cells = mesh.topology.index_map(tdim).size_local + mesh.topology.index_map(tdim).num_ghosts
    if cell_tags is None:
        cell_tags = dolfinx.mesh.meshtags(mesh, tdim, np.arange(n_cells, dtype=np.int32),
                                          np.ones(n_cells, dtype=np.int32))
    idx, val = np.zeros(0, np.int32), np.zeros(0, np.int32)
    if facet_tags is not None:
        idx, val = facet_tags.indices, facet_tags.values
    if getattr(obj, "cell_tags", None) is not None:
        i_idx, i_val = interface_facets(mesh, cell_tags, electrode)
        idx, val = np.concatenate([idx, i_idx]), np.concatenate([val, i_val])
    order = np.argsort(idx, kind="stable")
    idx, val = idx[order].astype(np.int32), val[order].astype(np.int32)
    mesh.topology.create_connectivity(fdim, tdim)
    facets = dolfinx.mesh.meshtags(mesh, fdim, idx, val)
    cell_tags.name, facets.name = "region", "boundary"
    if comm.rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
    comm.Barrier()
    tmp_h5 = path.with_name(f".{path.stem}.partial.h5")
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    with dolfinx.io.XDMFFile(comm, str(tmp), "w") as xdmf:
        xdmf.write_mesh(mesh)
        xdmf.write_meshtags(cell_tags, mesh.geometry)
        xdmf.write_meshtags(facets, mesh.geometry)
    comm.Barrier()
    if comm.rank == 0:  # the .xdmf names its HDF5 file: rename both and point the XML at the new name
        text = tmp.read_text().replace(tmp_h5.name, path.with_suffix(".h5").name)
        os.replace(tmp_h5, path.with_suffix(".h5"))
        path.write_text(text)
        tmp.unlink()
    comm.Barrier()

    def counts(tags, n_owned):
        own = tags.indices < n_owned
        u, c = np.unique(tags.values[own], return_counts=True)
        total = {}
        for part in comm.allgather(dict(zip(u.tolist(), c.tolist()))):
            for t, k in part.items():
                total[int(t)] = total.get(int(t), 0) + int(k)
        return dict(sorted(total.items()))

    regions = counts(cell_tags, mesh.topology.index_map(tdim).size_local)
    boundaries = counts(facets, mesh.topology.index_map(fdim).size_local)
    return {"cells": comm.allreduce(mesh.topology.index_map(tdim).size_local, op=MPI.SUM),
            "facets": int(sum(boundaries.values())), "regions": regions, "boundaries": boundaries}


def describe_export(path, counts: dict, obj) -> str:
    """One line per block of what :func:`export_mesh` wrote."""
    cnames, fnames = region_names(obj)
    regions = ", ".join(f"{cnames.get(t, t)} {t}: {n}" for t, n in counts["regions"].items())
    lines = [f"written {path}: {counts['cells']} cells (region tags {regions})"]
    if counts["facets"]:
        bnd = ", ".join(f"{fnames.get(t, t)} {t}: {n}" for t, n in counts["boundaries"].items())
        lines.append(f"  {counts['facets']} facets (boundary tags {bnd})")
    return "\n".join(lines)
