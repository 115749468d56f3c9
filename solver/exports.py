"""Derived quantities of a problem's fields: small classes, each built once and evaluated cheaply.

Every value is identical on all ranks (collective calls: every rank must call them).

==================  =======================================================================
export              value
==================  =======================================================================
FieldIntegral       ∫u dx over the field's region (exact for the FE field: Σ u_i ∫φ_i)
BoundaryExtremes    min and max of u at the DOFs on the field's boundary (or given facets)
BoundaryMean        ∫g(u) ds / ∫ds for a nodal function g (e.g. V_oc on the surface)
PointValues         u at points (each point evaluated by one owning rank)
ThresholdRegion     area fraction and centre of mass of {u > threshold} (Lun 2025 Fig. 5d)
FormValue           any scalar form (e.g. a reaction current)
==================  =======================================================================
"""

from __future__ import annotations

import numpy as np
import ufl
from mpi4py import MPI
from petsc4py import PETSc

import dolfinx
from dolfinx import fem

from nmcfx.errors import InputError

from .problem import Field


def owned_weights(field: Field, measure, entity_maps=None) -> np.ndarray:
    """∫φ_i over ``measure`` for the owned DOFs of ``field``: Σ w_i u_i = ∫u exactly."""
    vec = fem.assemble_vector(fem.form(field.test * measure, entity_maps=entity_maps))
    vec.scatter_reverse(dolfinx.la.InsertMode.add)
    return vec.array[: field.V.dofmap.index_map.size_local].copy()


class FieldIntegral:
    """∫u over the field's region (µm^d) and its measure."""

    def __init__(self, field: Field, entity_maps=None, quadrature_degree: int | None = None):
        self.field = field
        q = quadrature_degree or 2 * field.degree
        dx = field.dx({"quadrature_degree": q})
        self.weights = owned_weights(field, dx, entity_maps)
        self.comm = field.mesh.comm
        self.measure = self.comm.allreduce(float(self.weights.sum()), op=MPI.SUM)

    def __call__(self, u: fem.Function | None = None) -> float:
        w = self.weights
        arr = (u or self.field.u).x.array
        return self.comm.allreduce(float(w @ arr[: len(w)]), op=MPI.SUM)

    def mean(self) -> float:
        return self() / self.measure


class BoundaryExtremes:
    """min/max of u over the owned DOFs on ``facets`` of the field's own mesh (default: its
    whole boundary)."""

    def __init__(self, field: Field, facets: np.ndarray | None = None):
        mesh = field.mesh
        fdim = mesh.topology.dim - 1
        mesh.topology.create_connectivity(fdim, fdim + 1)
        if facets is None:
            facets = dolfinx.mesh.exterior_facet_indices(mesh.topology)
        dofs = fem.locate_dofs_topological(field.V, fdim, facets)
        self.dofs = dofs[dofs < field.V.dofmap.index_map.size_local]
        self.field = field
        self.comm = mesh.comm

    def __call__(self) -> tuple[float, float]:
        vals = self.field.u.x.array[self.dofs]
        lo = vals.min() if vals.size else np.inf
        hi = vals.max() if vals.size else -np.inf
        return self.comm.allreduce(lo, op=MPI.MIN), self.comm.allreduce(hi, op=MPI.MAX)


class BoundaryMean:
    """∫ g(u) ds / ∫ ds with g evaluated at the nodes (vertex-rule weights on ``measure``)."""

    def __init__(self, field: Field, measure, entity_maps=None):
        self.field = field
        self.weights = owned_weights(field, measure, entity_maps)
        self.comm = field.mesh.comm
        self.measure = self.comm.allreduce(float(self.weights.sum()), op=MPI.SUM)

    def __call__(self, g=None) -> float:
        w = self.weights
        vals = self.field.u.x.array[: len(w)]
        if g is not None:
            vals = g(vals)
        return self.comm.allreduce(float(w @ vals), op=MPI.SUM) / self.measure


class FormValue:
    """A scalar form, assembled and summed over ranks."""

    def __init__(self, form, comm, entity_maps=None):
        self.form = fem.form(form, entity_maps=entity_maps)
        self.comm = comm

    def __call__(self) -> float:
        return self.comm.allreduce(fem.assemble_scalar(self.form), op=MPI.SUM)


class ThresholdRegion:
    """The region {u > threshold}: its measure fraction, its centre of mass and the distance d
    between that and the whole region's centre of mass (Lun 2025 Fig. 5d). d and the centre are
    NaN once the region has vanished."""

    def __init__(self, field: Field, entity_maps=None, quadrature_degree: int = 4):
        mesh = field.parent
        self.comm = mesh.comm
        self.threshold = fem.Constant(mesh, PETSc.ScalarType(0.0))
        dxq = field.dx({"quadrature_degree": quadrature_degree})
        x = ufl.SpatialCoordinate(mesh)
        ind = ufl.conditional(ufl.gt(field.u, self.threshold), 1.0, 0.0)
        gdim = mesh.geometry.dim
        self.forms = [fem.form(ind * dxq, entity_maps=entity_maps)] + [
            fem.form(ind * x[i] * dxq, entity_maps=entity_maps) for i in range(gdim)]
        one = fem.Constant(mesh, PETSc.ScalarType(1.0))
        whole = [fem.assemble_scalar(fem.form(one * dxq, entity_maps=entity_maps))]
        whole += [fem.assemble_scalar(fem.form(one * x[i] * dxq, entity_maps=entity_maps)) for i in range(gdim)]
        whole = reduce_array(self.comm, np.array(whole), MPI.SUM)
        self.measure = float(whole[0])
        self.center_of_mass = whole[1:] / whole[0]

    def __call__(self, threshold: float) -> tuple[float, float, np.ndarray]:
        self.threshold.value = threshold
        vals = reduce_array(self.comm, np.array([fem.assemble_scalar(f) for f in self.forms]), MPI.SUM)
        frac = vals[0] / self.measure
        if vals[0] <= 1e-9 * self.measure:
            return float(frac), float("nan"), np.full(len(vals) - 1, np.nan)
        com = vals[1:] / vals[0]
        return float(frac), float(np.linalg.norm(com - self.center_of_mass)), com


class PointProbe:
    """Point evaluation that works in parallel: each point is evaluated by one owning rank.

    With ``allow_outside`` points outside the mesh are kept (value 0, ``inside`` False).
    """

    def __init__(self, mesh, points: np.ndarray, allow_outside: bool = False):
        gdim = mesh.geometry.dim
        points = np.atleast_2d(np.asarray(points, dtype=float))
        pts = np.zeros((len(points), 3))
        k = min(points.shape[1], 3)
        pts[:, :k] = points[:, :k]
        self.points = pts
        tdim = mesh.topology.dim
        n_owned_cells = mesh.topology.index_map(tdim).size_local
        tree = dolfinx.geometry.bb_tree(mesh, tdim, entities=np.arange(n_owned_cells, dtype=np.int32))
        cand = dolfinx.geometry.compute_collisions_points(tree, pts)
        colliding = dolfinx.geometry.compute_colliding_cells(mesh, cand, pts)
        comm = mesh.comm
        counts = np.diff(colliding.offsets)
        found = counts > 0
        owner = np.where(found, comm.rank, comm.size).astype(np.int64)
        owner_all = np.empty_like(owner)
        comm.Allreduce(owner, owner_all, op=MPI.MIN)
        self.inside = owner_all < comm.size
        if not allow_outside and not self.inside.all():
            missing = pts[~self.inside][:3, :gdim]
            raise InputError("probe", f"point(s) outside the particle mesh, e.g. {missing.tolist()} µm")
        mine = np.flatnonzero(owner_all == comm.rank)
        self._idx = mine
        self._cells = np.asarray(colliding.array[colliding.offsets[mine]], dtype=np.int32)
        self._comm = comm

    def evaluate(self, f: fem.Function) -> np.ndarray:
        out = np.zeros(len(self.points))
        if len(self._idx):
            out[self._idx] = f.eval(self.points[self._idx], self._cells).reshape(-1)
        total = np.empty_like(out)
        self._comm.Allreduce(out, total, op=MPI.SUM)
        return total


def reduce_array(comm, arr: np.ndarray, op) -> np.ndarray:
    """Element-wise MPI reduction of a float array (all ranks get the result)."""
    a = np.ascontiguousarray(arr, dtype=float)
    out = np.empty_like(a)
    comm.Allreduce(a, out, op=op)
    return out
