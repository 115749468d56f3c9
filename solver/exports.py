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

import basix
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
    """∫u over the field's region (µm^d) and its measure (``weights``: precomputed ∫φ_i)."""

    def __init__(self, field: Field, entity_maps=None, quadrature_degree: int | None = None, weights=None):
        self.field = field
        if weights is None:
            q = quadrature_degree or 2 * field.degree
            dx = field.dx({"quadrature_degree": q})
            weights = owned_weights(field, dx, entity_maps)
        self.weights = weights
        self.comm = field.mesh.comm
        self.measure = self.comm.allreduce(float(self.weights.sum()), op=MPI.SUM)

    def __call__(self, u: fem.Function | None = None) -> float:
        w = self.weights
        arr = (u or self.field.u).x.array
        local = float(w @ arr[: len(w)])
        return local if self.comm.size == 1 else self.comm.allreduce(local, op=MPI.SUM)

    def mean(self) -> float:
        return self() / self.measure


class BoundaryExtremes:
    """min/max of u over the owned DOFs on ``facets`` of the field's own mesh (default: its
    whole boundary)."""

    def __init__(self, field: Field, facets: np.ndarray | None = None, dofs: np.ndarray | None = None):
        mesh = field.mesh
        if dofs is None:
            fdim = mesh.topology.dim - 1
            mesh.topology.create_connectivity(fdim, fdim + 1)
            if facets is None:
                facets = dolfinx.mesh.exterior_facet_indices(mesh.topology)
            dofs = fem.locate_dofs_topological(field.V, fdim, facets)
            dofs = dofs[dofs < field.V.dofmap.index_map.size_local]
        self.dofs = dofs
        self.field = field
        self.comm = mesh.comm

    def __call__(self) -> tuple[float, float]:
        vals = self.field.u.x.array[self.dofs]
        lo = float(vals.min()) if vals.size else np.inf
        hi = float(vals.max()) if vals.size else -np.inf
        if self.comm.size == 1:
            return lo, hi
        both = reduce_array(self.comm, np.array([lo, -hi]), MPI.MIN)
        return float(both[0]), float(-both[1])


class BoundaryMean:
    """∫ g(u) ds / ∫ ds with g evaluated at the nodes (vertex-rule weights on ``measure``)."""

    def __init__(self, field: Field, measure, entity_maps=None, weights=None):
        self.field = field
        self.weights = owned_weights(field, measure, entity_maps) if weights is None else weights
        self.comm = field.mesh.comm
        self.measure = self.comm.allreduce(float(self.weights.sum()), op=MPI.SUM)
        # the weights vanish away from the boundary: g is evaluated at the boundary DOFs only
        self._dofs = np.flatnonzero(self.weights)
        self._w = self.weights[self._dofs]

    def __call__(self, g=None) -> float:
        vals = self.field.u.x.array[self._dofs]
        if g is not None:
            vals = g(vals)
        local = float(self._w @ vals)
        return (local if self.comm.size == 1 else self.comm.allreduce(local, op=MPI.SUM)) / self.measure


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
    NaN once the region has vanished.

    The indicator is integrated with the degree-``quadrature_degree`` rule. A field on the whole
    (affine simplex) mesh is evaluated with NumPy at the rule's points (the same numbers as the
    forms, to round-off); a field on a submesh uses compiled forms."""

    def __init__(self, field: Field, entity_maps=None, quadrature_degree: int = 4):
        mesh = field.parent
        self.comm = mesh.comm
        self.field = field
        from .assembly import is_affine, static_value

        if field.tags is None and entity_maps is None and is_affine(mesh) and not field.is_real:
            self._quad = static_value(mesh, ("threshold_quadrature", field.degree, quadrature_degree),
                                      lambda: _QuadratureData(field.V, quadrature_degree))
            q = self._quad
            whole = reduce_array(self.comm, np.concatenate([[q.w.sum()], q.w @ q.x]), MPI.SUM)
            self.measure = float(whole[0])
            self.center_of_mass = whole[1:] / whole[0]
            return
        self._quad = None
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
        if self._quad is not None:
            q = self._quad
            w = np.where(q.values(self.field.u.x.array) > threshold, q.w, 0.0)
            vals = np.empty(1 + q.x.shape[1])
            vals[0] = w.sum()
            vals[1:] = w @ q.x
            if self.comm.size > 1:
                vals = reduce_array(self.comm, vals, MPI.SUM)
        else:
            self.threshold.value = threshold
            vals = reduce_array(self.comm, np.array([fem.assemble_scalar(f) for f in self.forms]), MPI.SUM)
        frac = vals[0] / self.measure
        if vals[0] <= 1e-9 * self.measure:
            return float(frac), float("nan"), np.full(len(vals) - 1, np.nan)
        com = vals[1:] / vals[0]
        return float(frac), float(np.linalg.norm(com - self.center_of_mass)), com


class _QuadratureData:
    """Points, weights and basis values of a quadrature rule on the owned cells of an affine mesh."""

    def __init__(self, V, degree: int):
        from .assembly import ElementGeometry

        geo = ElementGeometry(V, owned_only=True)
        xq, wq, phi = geo.quadrature(degree)
        self.x = xq.reshape(-1, xq.shape[-1])
        self.w = wq.ravel()
        self.dofs = geo.dofs
        self.phi_T = np.ascontiguousarray(phi.T)  # (nd, nq)

    def values(self, u: np.ndarray) -> np.ndarray:
        """u at every quadrature point, flattened like ``w``."""
        return (u[self.dofs] @ self.phi_T).ravel()


class PointProbe:
    """Point evaluation that works in parallel: each point is evaluated by one owning rank.

    With ``allow_outside`` points outside the mesh are kept (value 0, ``inside`` False). The
    cells holding the points are found once per mesh and point set (kept with the mesh);
    scalar Lagrange functions on an affine simplex mesh are then evaluated as a fixed
    weighted sum of DOF values (the basis functions at the points), others with
    ``Function.eval``.
    """

    def __init__(self, mesh, points: np.ndarray, allow_outside: bool = False):
        from .assembly import static_value

        gdim = mesh.geometry.dim
        points = np.atleast_2d(np.asarray(points, dtype=float))
        pts = np.zeros((len(points), 3))
        k = min(points.shape[1], 3)
        pts[:, :k] = points[:, :k]
        self.points = pts
        self.mesh = mesh
        comm = mesh.comm
        import hashlib

        key = ("probe_cells", hashlib.sha1(pts.tobytes()).hexdigest())
        self.inside, mine, cells = static_value(mesh, key, lambda: _locate(mesh, pts))
        if not allow_outside and not self.inside.all():
            missing = pts[~self.inside][:3, :gdim]
            raise InputError("probe", f"point(s) outside the particle mesh, e.g. {missing.tolist()} µm")
        self._idx = mine
        self._cells = cells
        self._comm = comm
        self._key = key
        self._basis: dict = {}

    def _weights(self, V):
        """(dofs, weights) of the points for scalar Lagrange space V, or None (use eval)."""
        from .assembly import is_affine, static_value

        el = V.element.basix_element
        if (V.mesh is not self.mesh or V.dofmap.index_map_bs != 1 or not is_affine(self.mesh)
                or el.family != basix.ElementFamily.P or len(V.value_shape) != 0):
            return None
        key = self._key + ("basis", el.degree, int(el.lagrange_variant), bool(el.discontinuous))  # DG1 ≠ P1
        return static_value(self.mesh, key,
                            lambda: _basis_at_points(V, self.points[self._idx], self._cells))

    def evaluate(self, f: fem.Function) -> np.ndarray:
        out = np.zeros(len(self.points))
        if len(self._idx):
            V = f.function_space
            wts = self._basis.get(id(V))
            if wts is None:
                wts = self._basis[id(V)] = (self._weights(V), V)  # keep V alive with its id
            wts = wts[0]
            if wts is not None:
                dofs, phi = wts
                out[self._idx] = (f.x.array[dofs] * phi).sum(axis=1)
            else:
                out[self._idx] = f.eval(self.points[self._idx], self._cells).reshape(-1)
        if self._comm.size == 1:
            return out
        total = np.empty_like(out)
        self._comm.Allreduce(out, total, op=MPI.SUM)
        return total


def _locate(mesh, pts: np.ndarray):
    """(inside, indices of the points this rank evaluates, their cells) — collective."""
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
    inside = owner_all < comm.size
    mine = np.flatnonzero(owner_all == comm.rank)
    cells = np.asarray(colliding.array[colliding.offsets[mine]], dtype=np.int32)
    return inside, mine, cells


def _basis_at_points(V, pts: np.ndarray, cells: np.ndarray):
    """Cell DOFs and basis values of V at points in those cells (affine simplices)."""
    mesh = V.mesh
    tdim = mesh.topology.dim
    x = mesh.geometry.x
    g = mesh.geometry.dofmaps[0][cells]
    x0 = x[g[:, 0], :tdim]
    J = (x[g[:, 1:], :tdim] - x0[:, None, :]).transpose(0, 2, 1)
    X = np.linalg.solve(J, (pts[:, :tdim] - x0)[:, :, None])[:, :, 0] if len(cells) else np.zeros((0, tdim))
    el = V.element.basix_element
    phi = el.tabulate(0, np.ascontiguousarray(X))[0, :, :, 0] if len(cells) else np.zeros((0, el.dim))
    dofs = np.asarray(V.dofmap.list[cells], dtype=np.int64) if len(cells) else np.zeros((0, el.dim), np.int64)
    return dofs, phi


def reduce_array(comm, arr: np.ndarray, op) -> np.ndarray:
    """Element-wise MPI reduction of a float array (all ranks get the result)."""
    a = np.ascontiguousarray(arr, dtype=float)
    if comm.size == 1:
        return a.copy()
    out = np.empty_like(a)
    comm.Allreduce(a, out, op=op)
    return out
