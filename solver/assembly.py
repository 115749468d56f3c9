"""Residual and Jacobian of one transient field with NumPy on precomputed element tensors.

For the single particle — θ with a lumped (P1) or consistent (P2) mass, the nonlinear
diffusion ∇·(D(θ) P∇θ) with a *nodal* coefficient D_h = Σ_a D(θ_a) φ_a, and piecewise
constant fluxes on boundary sectors — every Newton iterate is a fixed linear combination
of per-cell tensors that depend on the mesh only:

    K^a_T[b, e] = ∫_T φ_a  P∇φ_e · ∇φ_b          (one matrix per local coefficient DOF a)

so that, with θ_T and D_T the cell's nodal values,

    residual   F_b += dt Σ_a D_a (K^a θ_T)_b
    Jacobian   J_be += dt [Σ_a D_a K^a_be + D'_e (K^e θ_T)_b]     (exact for the nodal D_h)

On affine cells K^a_T = Σ_m g_T,m R_m: the symmetric metric |det J| J⁻¹ P J⁻ᵀ (m = 3 components
in 2D, 6 in 3D) times reference tensors R_m integrated once, so P2 keeps only g per cell and
Σ_a D_a K^a is one matrix product per iterate. The tensors are integrated with basix
quadrature (exact: degree 2p for P_p), scattered
into a fixed CSR pattern with one ``bincount`` per iterate, and the PETSc matrix shares the
CSR value array (no copy, the LU's symbolic factorisation is reused). This is the same
discrete problem as the UFL forms of :mod:`.terms` (P1: the vertex-rule Jacobian of the
nodal coefficient is exactly this one; checked to round-off in the tests) at a fraction of
the cost of DOLFINx's cell-by-cell assembly for small meshes, where Python-side packing and
per-cell insertion dominate. P2 gets the exact Jacobian of the nodal coefficient (the UFL
path uses the product of interpolants, which is not).

Used by :class:`~.problem.Problem` when every term of a single-field problem supports it
(``Term.nodal_assembly``) on one MPI rank; otherwise DOLFINx assembles the forms.
"""

from __future__ import annotations

import weakref

import basix
import numpy as np
from petsc4py import PETSc

import dolfinx

_STATIC: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

#: Largest number of cells (per rank) assembled this way: the element tensors and scatter map take
#: ~0.3 kB per P1 tetrahedron (~0.1 kB per triangle); larger 3D meshes use DOLFINx's forms.
NODAL_MAX_CELLS = {1: 10**7, 2: 10**7, 3: 300_000}


def mesh_static(mesh) -> dict:
    """A dict of data derived from ``mesh`` alone (element tensors, weights, probe cells), kept as
    long as the mesh lives: a second solver on the same (cached) mesh reuses it instead of
    recomputing or recompiling forms. Keys are chosen by the users of the data."""
    try:
        return _STATIC.setdefault(mesh, {})
    except TypeError:  # not weak-referenceable: no reuse
        return {}


def static_value(mesh, key, factory):
    """``mesh_static(mesh)[key]``, computed by ``factory()`` the first time."""
    store = mesh_static(mesh)
    if key not in store:
        store[key] = factory()
    return store[key]


class ElementGeometry:
    """Cell→DOF map, affine geometry and reference basis of a Lagrange space (one rank)."""

    def __init__(self, V, projection: np.ndarray | None = None, owned_only: bool = False):
        mesh = V.mesh
        tdim = mesh.topology.dim
        gdim = mesh.geometry.dim
        if not is_affine(mesh):
            raise ValueError("nodal assembly needs an affine (degree-1) mesh geometry")
        imap = mesh.topology.index_map(tdim)
        ncells = imap.size_local + (0 if owned_only else imap.num_ghosts)
        self.dofs = np.asarray(V.dofmap.list[:ncells], dtype=np.int64)
        self.n = V.dofmap.index_map.size_local + V.dofmap.index_map.num_ghosts
        self.element = V.element.basix_element
        self.degree = self.element.degree
        x = mesh.geometry.x[:, :gdim]
        g = mesh.geometry.dofmaps[0][:ncells]
        J = (x[g[:, 1:]] - x[g[:, :1]]).transpose(0, 2, 1)  # (cells, gdim, tdim): columns = edge vectors
        if gdim != tdim:
            raise ValueError("nodal assembly needs a mesh of full dimension")
        self.detJ = np.abs(np.linalg.det(J))
        self.invJ = np.linalg.inv(J)  # (cells, tdim, gdim)
        self.J = J
        self.x0 = x[g[:, 0]]
        self.tdim = tdim
        self.projection = projection

    def quadrature(self, degree: int):
        """Physical points (cells, nq, gdim), weights (cells, nq) and basis values (nq, nd)."""
        pts, wts, phi, _ = self.tabulate(degree)
        xq = self.x0[:, None, :] + np.einsum("cdk,qk->cqd", self.J, pts)
        return xq, self.detJ[:, None] * wts[None, :], phi

    def tabulate(self, degree: int):
        """Quadrature points, weights and reference values/gradients of the basis."""
        cell = self.element.cell_type
        pts, wts = basix.make_quadrature(cell, degree)
        tab = self.element.tabulate(1, pts)  # (1 + tdim, nq, ndofs, 1)
        return pts, wts, tab[0, :, :, 0], np.moveaxis(tab[1:, :, :, 0], 0, -1)  # phi (nq, nd), dphi (nq, nd, tdim)

    def physical_gradients(self, dphi_ref: np.ndarray) -> np.ndarray:
        """∇φ on every cell at every quadrature point: (cells, nq, nd, gdim)."""
        return np.einsum("qbk,ckd->cqbd", dphi_ref, self.invJ, optimize=True)

    def stiffness_tensors(self) -> np.ndarray:
        """K^a_T[b, e] = ∫_T φ_a P∇φ_e·∇φ_b, exact for affine cells: (cells, nd, nd, nd)."""
        p = self.degree
        pts, wts, phi, dphi = self.tabulate(3 * p - 2 if p > 1 else 2)
        G = self.physical_gradients(dphi)
        GP = G if self.projection is None else np.einsum("cqed,fd->cqef", G, self.projection)
        return np.einsum("q,c,qa,cqbd,cqed->cabe", wts, self.detJ, phi, G, GP, optimize=True)

    def metric_tensors(self) -> tuple[np.ndarray, np.ndarray]:
        """(g, R) with ``stiffness_tensors()`` = Σ_m g[:, m] R[m] exactly (affine cells): g (cells, m) the
        independent entries of the symmetric |det J| J⁻¹ P J⁻ᵀ (diagonal first, then k < l), R (m, nd, nd, nd)
        R_m[a, b, e] = ∫_ref φ̂_a ∂_k φ̂_b ∂_l φ̂_e (+ the (l, k) term off the diagonal)."""
        p = self.degree
        pts, wts, phi, dphi = self.tabulate(3 * p - 2 if p > 1 else 2)
        inv = self.invJ if self.projection is None else np.einsum("ckd,fd->ckf", self.invJ, self.projection)
        C = np.einsum("ckd,cld->ckl", inv, self.invJ) * self.detJ[:, None, None]  # (P∇φ_e)·∇φ_b = ∇̂φ̂_b·C∇̂φ̂_e
        tdim = self.tdim
        pairs = [(k, k) for k in range(tdim)] + [(k, l) for k in range(tdim) for l in range(k + 1, tdim)]
        ref = np.einsum("q,qa,qbk,qel->klabe", wts, phi, dphi, dphi)
        g = np.stack([C[:, k, l] for k, l in pairs], axis=1)
        R = np.stack([ref[k, l] if k == l else ref[k, l] + ref[l, k] for k, l in pairs])
        return g, R

    def mass_matrices(self) -> np.ndarray:
        """M_T[b, e] = ∫_T φ_b φ_e (consistent): (cells, nd, nd)."""
        pts, wts, phi, _ = self.tabulate(2 * self.degree)
        return np.einsum("q,c,qb,qe->cbe", wts, self.detJ, phi, phi, optimize=True)

    def reference_mass(self) -> np.ndarray:
        """∫ φ̂_b φ̂_e on the reference cell (nd, nd): ``mass_matrices()`` is |det J_T| times it."""
        pts, wts, phi, _ = self.tabulate(2 * self.degree)
        return np.einsum("q,qb,qe->be", wts, phi, phi)

    def lumped_mass(self) -> np.ndarray:
        """Vertex-rule (row-sum) mass of P1: |T|/(d+1) to each vertex."""
        w = np.repeat(self.detJ / _factorial(self.tdim) / (self.tdim + 1), self.dofs.shape[1])
        return np.bincount(self.dofs.ravel(), weights=w, minlength=self.n)


class CSRPattern:
    """The CSR pattern of cell-local matrices and the position of every local entry in it."""

    def __init__(self, dofs: np.ndarray, n: int):
        nc, nd = dofs.shape
        rows = np.repeat(dofs, nd, axis=1).ravel()
        cols = np.tile(dofs, (1, nd)).ravel()
        key = rows * n + cols
        uniq, self.position = np.unique(key, return_inverse=True)
        self.indices = (uniq % n).astype(PETSc.IntType)
        self.indptr = np.concatenate([[0], np.cumsum(np.bincount(uniq // n, minlength=n))]).astype(PETSc.IntType)
        self.nnz = len(uniq)
        self.diagonal = np.searchsorted(uniq, np.arange(n) * (n + 1))
        self.rows = (uniq // n).astype(np.intp)  # row of every stored entry
        self.cols = self.indices  # column of every stored entry

    def matvec(self, values: np.ndarray, x: np.ndarray) -> np.ndarray:
        """(CSR matrix with these values) @ x."""
        return np.bincount(self.rows, weights=values * x[self.cols], minlength=len(self.indptr) - 1)

    def scatter(self, local: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Sum cell-local matrices (cells, nd, nd) into the CSR value array."""
        vals = np.bincount(self.position, weights=local.ravel(), minlength=self.nnz)
        if out is None:
            return vals
        out[:] = vals
        return out


class NodalAssembler:
    """Residual and Jacobian of a single transient field (see the module docstring).

    ``diffusion``: the :class:`~.terms.NonlinearDiffusion` term (its nodal coefficient
    functions are refreshed by the term's own ``update``); ``mass``: "lumped" | "consistent";
    ``loads``: constant vectors b_s (∫ φ_i over sector s) with their scalar constants q_s.
    """

    #: ``ordering``: a PETSc fill-reducing ordering (e.g. "metisnd") computed once per mesh; the matrix
    #: pattern is then numbered in it (:attr:`perm`: solver index i is DOF perm[i]), so that an LU with
    #: the "natural" ordering factorises exactly what that ordering would, without recomputing it in
    #: every solver (one rank only: several ranks assemble with DOLFINx's local numbering)
    perm = iperm = None

    def __init__(self, field, problem, *, mass: str, diffusion, loads: list[tuple[np.ndarray, object]],
                 ordering: str | None = None):
        # weakly: the SNES callbacks (C level, invisible to the garbage collector) hold this assembler
        self.field, self.problem = field, weakref.proxy(problem)
        if diffusion.scale is not None:
            raise ValueError("nodal assembly does not support a cell-wise diffusivity scale")
        if mass == "lumped" and field.V.element.basix_element.degree != 1:
            raise ValueError("lumped mass needs P1")
        # element tensors, pattern and mass depend on the mesh and the space only: a second solver on the
        # same (cached) mesh reuses them (the space's cell→DOF map is checked to be the same)
        projection = diffusion.projection_matrix(problem.mesh)
        key = ("nodal_assembler", field.V.element.basix_element.degree, mass,
               None if projection is None else projection.tobytes(), ordering)
        dofs = np.asarray(field.V.dofmap.list, dtype=np.int64)
        static = mesh_static(problem.mesh).get(key)
        if static is None or not np.array_equal(static["dofs"], dofs[:len(static["dofs"])]):
            static = self._static(field, mass, projection, ordering)
            mesh_static(problem.mesh)[key] = static
        self.__dict__.update(static)
        self.diffusion = diffusion
        diffusion.derivative_on_demand = True  # D' only where a Jacobian is built (see jacobian)
        self.loads = loads
        # NumPy views of the fields' values and of the constants' (fixed memory), read at every iterate
        self._u, self._u_n = field.u.x.array, field.u_n.x.array
        self._u_nm1 = None if field.u_nm1 is None else field.u_nm1.x.array
        self._D = diffusion.D.value.x.array
        self._bdf, self._dt = [c.value for c in problem.bdf], problem.dt.value
        self._load_values = [(b, q.value) for b, q in loads]
        self.values = np.zeros(self.pattern.nnz)  # shared with the PETSc matrix (one rank)
        self._cache = None
        self._track_iterate = problem.comm.size > 1  # (several ranks: compare with the ghosted iterate)
        self.last_iterate = None

    @staticmethod
    def _static(field, mass: str, projection, ordering: str | None = None) -> dict:
        """Geometry, element tensors, CSR pattern and mass values (see the class docstring)."""
        geo = ElementGeometry(field.V, projection=projection, owned_only=True)
        pattern = CSRPattern(geo.dofs, geo.n)
        out = {"geo": geo, "dofs": geo.dofs, "n": geo.n, "p1": geo.degree == 1}
        if ordering is not None:
            perm = fill_reducing_order(pattern, ordering)
            iperm = np.empty_like(perm)
            iperm[perm] = np.arange(len(perm))
            out["perm"], out["iperm"] = perm, iperm
            pattern = CSRPattern(iperm[geo.dofs], geo.n)
        out["pattern"] = pattern
        nc, nd = geo.dofs.shape
        if out["p1"]:
            # all K^a are the same (|T|/(d+1) K_T): keep K_T = ∫ P∇φ_e·∇φ_b only
            out["K"] = geo.stiffness_tensors()[:, 0] * (geo.tdim + 1)
        else:
            # K^a = Σ_m g_m R_m: per cell only the metric g (cells, m); the reference tensors as the matrices
            # of Σ_a D_a K^a_be = (g ⊗ D) R_A and Σ_f K^e_bf θ_f = (g ⊗ θ) R_B
            g, R = geo.metric_tensors()
            m = g.shape[1]
            out["g"] = g
            out["R_A"] = np.ascontiguousarray(R.reshape(m * nd, nd * nd))  # [(m, a), (b, e)] = R_m[a, b, e]
            out["R_B"] = np.ascontiguousarray(R.transpose(0, 3, 2, 1).reshape(m * nd, nd * nd))  # R_m[e, b, f]
        if mass == "lumped":
            out["M_lumped"] = geo.lumped_mass()
            out["M"] = None
            out["M_vals"] = np.zeros(out["pattern"].nnz)
            out["M_vals"][out["pattern"].diagonal] = out["M_lumped"] if ordering is None else out["M_lumped"][out["perm"]]
        else:
            out["M_lumped"] = None
            out["M_vals"] = out["pattern"].scatter(geo.mass_matrices())
            out["M"] = True
            # M_T = |det J_T| M_ref on affine cells: the residual's mass term cell by cell in one product
            out["M_ref"] = geo.reference_mass()
            out["detJ_column"] = geo.detJ[:, None]
        return out

    # ------------------------------------------------------------------ PETSc objects
    def create_matrix(self, comm) -> PETSc.Mat:
        p = self.pattern
        A = PETSc.Mat().createAIJWithArrays((self.n, self.n), (p.indptr, p.indices, self.values), comm=comm)
        A.setOption(PETSc.Mat.Option.NEW_NONZERO_ALLOCATION_ERR, True)
        return A

    # ------------------------------------------------------------------ evaluation
    def _cell_terms(self, theta: np.ndarray, dt: float):
        """Per-cell quantities shared by the residual and the Jacobian at one iterate. P1: the cell
        coefficient (the mean of D) and r_b = (K_T θ_T)_b; P2: θ_T and dt Σ_a D_a K^a (cells, nd·nd)."""
        D = self._D
        th = theta[self.dofs]
        if self.p1:
            Dbar = D[self.dofs].mean(axis=1)
            r = np.einsum("cbe,ce->cb", self.K, th)  # (K_T θ_T)_b
            return dt, Dbar, r
        nc, nd = self.dofs.shape
        gD = (self.g * dt)[:, :, None] * D[self.dofs][:, None, :]
        return dt, th, gD.reshape(nc, -1) @ self.R_A

    def residual(self, out: np.ndarray) -> np.ndarray:
        """F(θ) for the field's current values into ``out`` (length n)."""
        theta = self._u
        a0, a1, a2 = (float(c) for c in self._bdf)
        dt = float(self._dt)
        inc = a0 * theta + a1 * self._u_n
        if a2 != 0.0:
            inc += a2 * self._u_nm1
        cell = self._cell_terms(theta, dt)
        self._cache = cell
        self.last_iterate = theta.copy() if self._track_iterate else None
        if self.p1:
            _, Dbar, r = cell
            local = (Dbar[:, None] * dt) * r
        else:
            _, th, Kc = cell
            nc, nd = self.dofs.shape
            local = np.einsum("cbe,ce->cb", Kc.reshape(nc, nd, nd), th)  # dt Σ_a D_a (K^a θ)_b
            # Σ_b = 0 (the basis sums to one): the last entry from the others, so that each cell conserves
            # Li to its own round-off. Otherwise the reference tensors' rounding, the same in every cell,
            # adds up over the cells into a drift of the Li balance (2e-13 over the flagship)
            local[:, -1] = -local[:, :-1].sum(axis=1)
        if self.M_lumped is None:  # consistent mass, cell by cell (M_ref is symmetric)
            local += (inc[self.dofs] @ self.M_ref) * self.detJ_column
        out[:] = np.bincount(self.dofs.ravel(), weights=local.ravel(), minlength=self.n)
        if self.M_lumped is not None:
            out += self.M_lumped * inc
        for b, q in self._load_values:
            qv = float(q)
            if qv != 0.0:
                out += (dt * qv) * b
        return out

    def jacobian(self) -> np.ndarray:
        """J(θ) at the point of the last residual into the shared value array."""
        a0 = float(self._bdf[0])
        dt = float(self._dt)
        if self._cache is None or self._cache[0] != dt:
            self._cache = self._cell_terms(self._u, dt)
        dD = self.diffusion.derivative_values()[self.dofs]
        nc, nd = self.dofs.shape
        if self.p1:
            _, Dbar, r = self._cache
            local = self.K * (Dbar * dt)[:, None, None] + (r * (dt / nd))[:, :, None] * dD[:, None, :]
        else:
            _, th, Kc = self._cache
            # dt Σ_a D_a K^a_be + dt D'_e (K^e θ)_b
            gth = (self.g * dt)[:, :, None] * th[:, None, :]
            local = (gth.reshape(nc, -1) @ self.R_B).reshape(nc, nd, nd)
            local *= dD[:, None, :]
            local += Kc.reshape(nc, nd, nd)
        np.add(self.pattern.scatter(local), a0 * self.M_vals, out=self.values)
        return self.values

    def invalidate(self):
        self._cache = None


def fill_reducing_order(pattern: CSRPattern, ordering: str) -> np.ndarray:
    """PETSc's symmetric fill-reducing ``ordering`` of the pattern: row i of the reordered matrix is
    row perm[i] (what its LU factorisation uses)."""
    n = len(pattern.indptr) - 1
    A = PETSc.Mat().createAIJWithArrays((n, n), (pattern.indptr, pattern.indices, np.zeros(pattern.nnz)),
                                        comm=PETSc.COMM_SELF)
    try:
        rows, cols = A.getOrdering(ordering)
        perm = rows.getIndices().astype(np.intp)
        if not np.array_equal(perm, cols.getIndices()):
            raise ValueError(f"ordering {ordering!r} is not symmetric")
        rows.destroy()
        cols.destroy()
    finally:
        A.destroy()
    return perm


def is_affine(mesh) -> bool:
    """Simplex cells with a degree-1 coordinate map."""
    cmap = mesh.geometry.cmaps[0]
    return cmap.degree == 1 and mesh.topology.cell_type.name in ("interval", "triangle", "tetrahedron")


def _factorial(k: int) -> int:
    out = 1
    for i in range(2, k + 1):
        out *= i
    return out


def sector_load(field, facet_tags, tag: int, quadrature_degree: int) -> np.ndarray:
    """b_i = ∫ φ_i ds over the facets tagged ``tag`` (local, ghosts included)."""
    import ufl

    from dolfinx import fem

    ds = ufl.Measure("ds", domain=field.parent, subdomain_data=facet_tags,
                     metadata={"quadrature_degree": quadrature_degree})
    vec = fem.assemble_vector(fem.form(field.test * ds(int(tag))))
    return vec.array.copy()


__all__ = ["CSRPattern", "ElementGeometry", "NodalAssembler", "fill_reducing_order", "is_affine", "mesh_static",
           "sector_load", "static_value"]
