"""Prisms meshed in parallel: the cross-section by gmsh (2D, small), the layers by every rank.

A prism over a cross-section (z = the crystal's c axis) is a stack of identical layers. gmsh
meshes only the cross-section, on rank 0, with the usual size field (surface and centre
grading) and sectors; the triangles, their boundary edges and sector tags are broadcast, and
every rank builds its own share of the layers: each triangular prism is cut into three
tetrahedra with the diagonal of every side face running from the lower-numbered bottom vertex
to the higher-numbered top vertex, so neighbouring prisms agree and the mesh is conforming
whichever rank builds which layer. DOLFINx then partitions the distributed cells (graph
partitioner on all ranks) and the side and end faces get their sector tags from the
per-rank facet lists. Nothing 3D is ever held by one rank, and gmsh's serial 3D mesher —
minutes and gigabytes for millions of cells — is not involved.

Used by :func:`~nmcfx.geometries.shapes3d.prism` for large meshes (``mesher = "auto"``, from
:data:`EXTRUDE_MIN_CELLS` estimated cells) or on request (``mesher = "extrude"``).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from mpi4py import MPI

from nmcfx.errors import MeshError

#: ``mesher = "auto"`` extrudes prisms whose estimated cell count reaches this.
EXTRUDE_MIN_CELLS = 200_000


def section_arrays(model) -> dict:
    """Nodes (x, y), triangles and tagged boundary edges (physical group tags) of the meshed
    cross-section in the gmsh ``model`` (rank 0)."""
    tags, xyz, _ = model.mesh.getNodes()
    index = np.full(int(tags.max()) + 1, -1, dtype=np.int64)
    index[tags.astype(np.int64)] = np.arange(len(tags))
    tri = np.concatenate([index[np.asarray(n, dtype=np.int64)].reshape(-1, 3)
                          for t, _, n in zip(*model.mesh.getElements(2)) if t == 2])
    used = np.unique(tri)
    remap = np.full(len(tags), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    xy = xyz.reshape(-1, 3)[used, :2]
    edges, edge_tags = [], []
    for dim, group in model.getPhysicalGroups(1):
        for ent in model.getEntitiesForPhysicalGroup(dim, group):
            for t, _, n in zip(*model.mesh.getElements(1, ent)):
                if t == 1:
                    e = remap[index[np.asarray(n, dtype=np.int64)]].reshape(-1, 2)
                    edges.append(e)
                    edge_tags.append(np.full(len(e), group, dtype=np.int32))
    return {"xy": xy, "triangles": remap[tri], "edges": np.concatenate(edges), "edge_tags": np.concatenate(edge_tags)}


def layer_count(height: float, size: float) -> int:
    """Layers of about the bulk cell size ``size`` over ``height`` (at least one)."""
    return max(1, int(round(height / size)))


def extruded_mesh(comm: MPI.Comm, section: dict, height: float, layers: int, tag_bottom: int, tag_top: int):
    """The distributed DOLFINx mesh and facet tags of ``section`` extruded over z ∈ [−h/2, h/2]."""
    import basix.ufl
    import ufl

    import dolfinx
    from dolfinx.io import distribute_entity_data
    from dolfinx.mesh import meshtags_from_entities

    xy, tri = section["xy"], np.sort(section["triangles"], axis=1)  # sorted: the diagonal rule below
    n2 = len(xy)
    # layers [k0, k1) of cells on this rank; node rows of layers [j0, j1) (all of them together once)
    k0, k1 = _share(layers, comm)
    j0, j1 = _share(layers + 1, comm)
    z = np.linspace(-0.5 * height, 0.5 * height, layers + 1)
    x = np.empty(((j1 - j0) * n2, 3))
    for j in range(j0, j1):
        x[(j - j0) * n2:(j - j0 + 1) * n2, :2] = xy
        x[(j - j0) * n2:(j - j0 + 1) * n2, 2] = z[j]
    cells = []
    a, b, c = (tri[:, i].astype(np.int64) for i in range(3))
    for k in range(k0, k1):
        lo, hi = k * n2, (k + 1) * n2
        # (a<b<c bottom; primes on top): (a,b,c,c'), (a,b,b',c'), (a,a',b',c')
        cells += [np.column_stack([a + lo, b + lo, c + lo, c + hi]),
                  np.column_stack([a + lo, b + lo, b + hi, c + hi]),
                  np.column_stack([a + lo, a + hi, b + hi, c + hi])]
    cells = np.concatenate(cells) if cells else np.zeros((0, 4), dtype=np.int64)
    element = basix.ufl.element("Lagrange", "tetrahedron", 1, shape=(3,))
    mesh = dolfinx.mesh.create_mesh(comm, cells, ufl.Mesh(element), x)

    # facets: side faces (two triangles per boundary edge and layer, split like the prisms) and end faces
    e = np.sort(section["edges"], axis=1).astype(np.int64)
    et = section["edge_tags"]
    facets, values = [], []
    for k in range(k0, k1):
        lo, hi = k * n2, (k + 1) * n2
        p, q = e[:, 0], e[:, 1]  # p < q: the diagonal runs p (bottom) → q' (top)
        facets += [np.column_stack([p + lo, q + lo, q + hi]), np.column_stack([p + lo, p + hi, q + hi])]
        values += [et, et]
    if k0 == 0 and k1 > k0:
        facets.append(tri.astype(np.int64))
        values.append(np.full(len(tri), tag_bottom, dtype=np.int32))
    if k1 == layers and k1 > k0:
        facets.append(tri.astype(np.int64) + layers * n2)
        values.append(np.full(len(tri), tag_top, dtype=np.int32))
    facets = np.concatenate(facets) if facets else np.zeros((0, 3), dtype=np.int64)
    values = np.concatenate(values) if values else np.zeros(0, dtype=np.int32)
    local, local_values = distribute_entity_data(mesh, 2, facets, values)
    mesh.topology.create_connectivity(2, 3)
    tags = meshtags_from_entities(mesh, 2, dolfinx.graph.adjacencylist(local), local_values.astype(np.int32))
    return SimpleNamespace(mesh=mesh, facet_tags=tags, cell_tags=None)


def _share(n: int, comm: MPI.Comm) -> tuple[int, int]:
    """This rank's contiguous block of range(n)."""
    size, rank = comm.size, comm.rank
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def check(layers: int, triangles: int, limits, what: str) -> int:
    """The cell count (3 tetrahedra per triangle and layer), refused above ``limits.max_cells``."""
    cells = 3 * layers * triangles
    if limits is not None and cells > limits.max_cells:
        raise MeshError(f"the {what} would have {cells:.3g} cells, above max_cells = {limits.max_cells:.3g}")
    return cells


__all__ = ["EXTRUDE_MIN_CELLS", "check", "extruded_mesh", "layer_count", "section_arrays"]
