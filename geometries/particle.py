"""The meshed particle handed to the solver, and mesh measurements."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from mpi4py import MPI

import dolfinx.mesh

from nmcfx.errors import MeshError


@dataclass
class ParticleMesh:
    """A distributed particle mesh (coordinates in µm) with named boundary sectors.

    ``facet_tags`` tags every boundary facet with the value ``sectors[name]`` of its
    sector. All measures are assembled from the mesh itself and are identical on all
    ranks. ``boundary_measure`` is the perimeter (2D) or the area of the *reactive*
    surface (3D, excludes the basal faces of prisms).
    """

    mesh: dolfinx.mesh.Mesh
    facet_tags: dolfinx.mesh.MeshTags
    sectors: dict[str, int]
    dim: int
    centroid: tuple[float, ...]
    measure: float
    boundary_measure: float
    sector_measure: dict[str, float]
    reactive_sectors: tuple[str, ...]
    info: dict = field(default_factory=dict)

    @property
    def comm(self) -> MPI.Comm:
        return self.mesh.comm

    def reactive_tags(self) -> tuple[int, ...]:
        """Facet tag values of the reactive sectors."""
        return tuple(self.sectors[n] for n in self.reactive_sectors)

    def sector_outline(self, name: str) -> np.ndarray:
        """Ordered boundary points (µm) of sector ``name``, identical on all ranks (collective).

        2D: the vertices of the sector's boundary facets, shape (N, 2), chained along the
        outline and oriented counter-clockwise about the centroid; a sector covering the whole
        outline is returned closed (last point = first point, starting at the vertex of
        smallest polar angle ≥ 0). 3D: the trace of the sector's facets on the plane z =
        mid-height of the mesh, shape (N, 3), ordered the same way. A sector made of several
        disconnected pieces returns them in order of polar angle, separated by a row of NaN
        (matplotlib breaks lines there). Meant for figures (e.g. outlining blocked arcs).
        """
        if name not in self.sectors:
            raise KeyError(f"no sector {name!r}; the mesh has {sorted(self.sectors)}")
        mesh = self.mesh
        comm = self.comm
        tdim = mesh.topology.dim
        fdim = tdim - 1
        mesh.topology.create_connectivity(fdim, tdim)
        n_owned = mesh.topology.index_map(fdim).size_local
        facets = self.facet_tags.find(self.sectors[name])
        facets = np.asarray(facets[facets < n_owned], dtype=np.int32)
        x = mesh.geometry.x
        if len(facets):
            pts = x[dolfinx.mesh.entities_to_geometry(mesh, fdim, facets)][:, : fdim + 1, :]  # affine vertices
        else:
            pts = np.zeros((0, fdim + 1, 3))
        if tdim == 3:
            zlo = comm.allreduce(float(x[:, 2].min()) if len(x) else np.inf, op=MPI.MIN)
            zhi = comm.allreduce(float(x[:, 2].max()) if len(x) else -np.inf, op=MPI.MAX)
            segments = _plane_trace(pts, 0.5 * (zlo + zhi))
        else:
            segments = pts
        gathered = comm.gather(np.ascontiguousarray(segments), root=0)
        out = None
        if comm.rank == 0:
            segs = np.concatenate(gathered) if gathered else np.zeros((0, 2, 3))
            out = _chain_segments(segs, np.asarray(self.centroid, dtype=float), tdim)
        return comm.bcast(out, root=0)

    def summary(self) -> str:
        i = self.info
        if self.dim == 2:
            size = f"area {self.measure:.4g} µm², perimeter {self.boundary_measure:.4g} µm"
            unit_b = "µm"
        else:
            size = f"volume {self.measure:.4g} µm³, reactive area {self.boundary_measure:.4g} µm²"
            unit_b = "µm²"
        lines = [
            f"{i.get('shape', 'particle')} ({self.dim}D)",
            f"  mesh: {i['num_cells']} cells, {i['num_vertices']} vertices on {i.get('num_ranks', 1)} rank(s)",
            f"  {size}",
        ]
        ref = i.get("reference") or {}
        if ref:
            parts = []
            for key, measured, unit in (
                ("area", self.measure if self.dim == 2 else None, "µm²"),
                ("perimeter", self.boundary_measure if self.dim == 2 else None, "µm"),
                ("volume", self.measure if self.dim == 3 else None, "µm³"),
                ("reactive_area", self.boundary_measure if self.dim == 3 else None, "µm²"),
            ):
                if key in ref and measured is not None:
                    err = 100.0 * (measured - ref[key]) / ref[key]
                    parts.append(f"{key.replace('_', ' ')} {ref[key]:.4g} {unit} ({err:+.3f} %)")
            if parts:
                lines.append("  exact shape: " + ", ".join(parts))
        if "contour_max_deviation_um" in i:
            lines.append(f"  outline passes within {i['contour_max_deviation_um']:.2g} µm of every contour point")
        lines.append(
            f"  h: {i['h_min']:.3g}-{i['h_max']:.3g} µm (mean near reactive surface "
            f"{i['h_surface_mean']:.3g}, elsewhere {i['h_interior_mean']:.3g})"
        )
        limits = ""
        if "min_quality_limit" in i:
            limits = f"   (limits: min quality {i['min_quality_limit']:g}, cells {i['max_cells_limit']:.3g})"
        lines.append(
            f"  quality ({i.get('quality_measure', '?')}): min {i['quality_min']:.3f}, mean {i['quality_mean']:.3f}"
            + limits
        )
        sec = ", ".join(
            f"{n}{'' if n in self.reactive_sectors else ' (inert)'} {self.sector_measure[n]:.4g} {unit_b}"
            for n in self.sectors
        )
        lines.append(f"  sectors: {sec}")
        return "\n".join(lines)


def measure_mesh(mesh, facet_tags, sectors: dict[str, int], reactive: tuple[str, ...]) -> dict:
    """Volume/area, centroid, sector measures and cell sizes from the mesh (numpy).

    Each rank sums over the cells/facets it owns; rank 0 adds the partial sums in rank
    order and broadcasts, so every rank gets bit-identical numbers.
    """
    comm = mesh.comm
    topo = mesh.topology
    tdim = topo.dim
    fdim = tdim - 1
    x = mesh.geometry.x[:, :tdim]
    n_cells = topo.index_map(tdim).size_local
    c = x[mesh.geometry.dofmaps[0][:n_cells]]  # (n, tdim+1, tdim), affine simplices
    if tdim == 2:
        e1, e2 = c[:, 1] - c[:, 0], c[:, 2] - c[:, 0]
        vol = 0.5 * np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0])
    else:
        vol = np.abs(np.linalg.det(c[:, 1:] - c[:, :1])) / 6.0
    moments = (vol[:, None] * c.mean(axis=1)).sum(axis=0) if n_cells else np.zeros(tdim)
    diam = np.zeros(n_cells)
    nv = c.shape[1]
    for a in range(nv):
        for b in range(a + 1, nv):
            diam = np.maximum(diam, np.linalg.norm(c[:, a] - c[:, b], axis=1))

    topo.create_connectivity(fdim, tdim)
    n_facets = topo.index_map(fdim).size_local

    def facet_measure(idx: np.ndarray) -> float:
        idx = np.asarray(idx, dtype=np.int32)
        idx = idx[idx < n_facets]
        if len(idx) == 0:
            return 0.0
        p = x[dolfinx.mesh.entities_to_geometry(mesh, fdim, idx)]
        if tdim == 2:
            return float(np.linalg.norm(p[:, 1] - p[:, 0], axis=1).sum())
        return float(0.5 * np.linalg.norm(np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]), axis=1).sum())

    exterior = dolfinx.mesh.exterior_facet_indices(topo)
    names = list(sectors)
    per_sector = [facet_measure(facet_tags.indices[facet_tags.values == sectors[n]]) for n in names]

    # Cells touching the reactive surface vs the others (for the grading check).
    reactive_facets = facet_tags.indices[np.isin(facet_tags.values, [sectors[n] for n in reactive])]
    f2c = topo.connectivity(fdim, tdim)
    near = np.zeros(n_cells, dtype=bool)
    cells = f2c.array[f2c.offsets[reactive_facets]]  # a boundary facet has one cell
    near[cells[cells < n_cells]] = True

    local = np.concatenate(
        [
            [vol.sum()],
            moments,
            [facet_measure(exterior)],
            per_sector,
            [diam[near].sum(), near.sum(), diam[~near].sum(), (~near).sum()],
        ]
    )
    extremes = np.array([diam.min() if n_cells else np.inf, -(diam.max() if n_cells else -np.inf)])
    gathered = comm.gather((local, extremes), root=0)
    if comm.rank == 0:
        total = np.zeros_like(local)
        ext = np.full(2, np.inf)
        for loc, mm in gathered:
            total += loc
            ext = np.minimum(ext, mm)
        result = (total, ext)
    else:
        result = None
    total, ext = comm.bcast(result, root=0)

    measure = float(total[0])
    if not measure > 0.0:
        raise MeshError("the mesh has zero volume/area")
    centroid = tuple(float(v) / measure for v in total[1 : 1 + tdim])
    k = 1 + tdim
    exterior_total = float(total[k])
    sector_measure = {n: float(v) for n, v in zip(names, total[k + 1 : k + 1 + len(names)])}
    hb, nb, hi, ni = total[k + 1 + len(names) :]
    tagged = sum(sector_measure.values())
    if abs(tagged - exterior_total) > 1e-9 * exterior_total:
        raise MeshError(
            f"boundary facets are not all tagged: tagged measure {tagged:.6g} vs boundary {exterior_total:.6g}"
        )
    for n, v in sector_measure.items():
        if not v > 0.0:
            raise MeshError(f"sector {n!r} received no boundary facets (mesh too coarse for it?)")
    return {
        "measure": measure,
        "centroid": centroid,
        "sector_measure": sector_measure,
        "boundary_measure": float(sum(sector_measure[n] for n in reactive)),
        "h_min": float(ext[0]),
        "h_max": float(-ext[1]),
        "h_surface_mean": float(hb / nb) if nb else math.nan,
        "h_interior_mean": float(hi / ni) if ni else math.nan,
        "num_cells": int(topo.index_map(tdim).size_global),
        "num_vertices": int(topo.index_map(0).size_global),
        "num_ranks": comm.size,
    }


def _plane_trace(triangles: np.ndarray, z: float) -> np.ndarray:
    """Segments (n, 2, 3) where the triangles (m, 3, 3) cross the plane of height z.

    A vertex on the plane counts as above it, so a mesh edge lying in the plane is produced
    once (by the triangle below it) and no crossing is lost or doubled at vertices.
    """
    if len(triangles) == 0:
        return np.zeros((0, 2, 3))
    s = triangles[:, :, 2] - z
    above = s >= 0.0
    out = []
    for tri, sd, ab in zip(triangles, s, above):
        if ab.all() or not ab.any():
            continue
        cut = []
        for a, b in ((0, 1), (1, 2), (2, 0)):
            if ab[a] != ab[b]:
                w = sd[a] / (sd[a] - sd[b])
                cut.append(tri[a] + w * (tri[b] - tri[a]))
        if len(cut) == 2:
            cut = np.array(cut)
            cut[:, 2] = z
            out.append(cut)
    return np.array(out) if out else np.zeros((0, 2, 3))


def _chain_segments(segments: np.ndarray, centroid: np.ndarray, tdim: int) -> np.ndarray:
    """Join segments (n, 2, 3) that share end points into ordered polylines (see sector_outline)."""
    ncoord = 2 if tdim == 2 else 3
    if len(segments) == 0:
        return np.zeros((0, ncoord))
    pts = segments.reshape(-1, 3)
    scale = max(float(np.abs(pts).max()), 1.0)
    keys = np.round(pts / (1e-9 * scale)).astype(np.int64)
    uniq, inv = np.unique(keys, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    coords = np.zeros((len(uniq), 3))
    coords[inv] = pts
    edges = {tuple(sorted(e)) for e in inv.reshape(-1, 2).tolist() if e[0] != e[1]}
    nbrs: dict[int, list[int]] = {}
    for a, b in edges:
        nbrs.setdefault(a, []).append(b)
        nbrs.setdefault(b, []).append(a)
    c = np.zeros(3)
    c[: len(centroid)] = centroid[:3]
    ang = np.mod(np.arctan2(coords[:, 1] - c[1], coords[:, 0] - c[0]), 2 * np.pi)
    ang[ang > 2 * np.pi - 1e-9] = 0.0  # a point on the +x ray with y = -0.0…1 counts as angle 0
    unvisited = set(nbrs)
    chains = []
    # open chains first (start at an end point), then closed loops
    for start in sorted(unvisited, key=lambda v: (len(nbrs[v]) != 1, ang[v])):
        if start not in unvisited:
            continue
        chain = [start]
        unvisited.discard(start)
        prev, cur = None, start
        while True:
            nxt = [n for n in nbrs[cur] if n != prev and n in unvisited]
            if not nxt:
                break
            prev, cur = cur, nxt[0]
            chain.append(cur)
            unvisited.discard(cur)
        closed = len(chain) > 2 and chain[0] in nbrs[chain[-1]] and all(len(nbrs[v]) == 2 for v in chain)
        p = coords[chain] - c
        # orientation: signed area swept about the centroid (> 0: counter-clockwise)
        swept = np.sum(p[:-1, 0] * p[1:, 1] - p[:-1, 1] * p[1:, 0])
        if closed:
            swept += p[-1, 0] * p[0, 1] - p[-1, 1] * p[0, 0]
        if swept < 0:
            chain = chain[::-1]
        if closed:
            k = int(np.argmin(ang[chain]))
            chain = chain[k:] + chain[:k]
            chain.append(chain[0])
        chains.append(chain)
    chains.sort(key=lambda ch: ang[ch[0]])
    rows = []
    for i, ch in enumerate(chains):
        if i:
            rows.append(np.full((1, ncoord), np.nan))
        rows.append(coords[ch, :ncoord])
    return np.concatenate(rows)
