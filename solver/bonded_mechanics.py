"""One elastic body of several materials: NMC particles bonded to the carbon-binder network (CBD).

    ∇·σ = 0 on NMC ∪ CBD,   σ = f(θ) C_NMC : (ε(u) − ε_ch(θ)) in NMC,   σ = C_CBD : ε(u) in CBD,

u continuous across every NMC|CBD and NMC|NMC facet (a perfect bond), u = 0 on the clamped facets
(an electrode's current collector), traction-free elsewhere (the pores: the electrolyte carries no
load). Without clamped facets the body is free and its rigid-body modes are removed, as for a free
particle. The NMC eigenstrain is that of :class:`~nmcfx.solver.mechanics.ElasticitySolver`
(crystal frame, c ∥ z); the CBD has none. The stiffness is piecewise: a cell indicator χ (DG0, 1 in
NMC) blends two constant 6×6 matrices, C = χ C_NMC + (1 − χ) C_CBD, so one compiled form serves
every layout and material.

θ lives on each particle's own mesh (a submesh of the electrode); it is copied cell by cell into a
discontinuous field of θ's degree on the body's mesh (exact: the same element on the same cells),
so the eigenstrain may jump across an NMC|NMC contact, as θ does between two particles.

The solve, generalised plane strain, stresses and invariants are those of ``ElasticitySolver``
(this class reuses them); what differs is the set-up (cell-wise stiffness, θ from several meshes),
the Dirichlet condition and the null space. A part of the body that neither touches the clamped
facets nor is bonded to a part that does would be free to move: the direct solver's null-pivot count
detects it at the first factorisation (a :class:`SolverError` naming the count); runs refuse such
layouts before meshing anything else (:func:`nmcfx.solver.electrode_mechanics.check_bonded_layout`).

Usage (a disk inclusion with eigenstrain in a clamped ring; ``tags``: 1 inclusion, 2 ring)::

    theta = fem.Function(fem.functionspace(mesh, ("DG", 0)))   # any θ field; here on the body's mesh
    theta.x.array[:] = 0.9
    cells = np.arange(n_local_cells, dtype=np.int32)
    body = BondedElasticitySolver(mesh, tags.find(1), [(theta, cells, cells)], default_mechanics(),
                                  Stiffness.isotropic(1.0, 0.3), theta_ref=0.95, clamped_facets=outer)
    body.solve()
    s = body.invariants()          # σ1, von Mises, hydrostatic at the stress nodes (MPa)
    body.destroy()
"""

from __future__ import annotations

import numpy as np
from mpi4py import MPI
from petsc4py import PETSc

import dolfinx
import dolfinx.fem.petsc
from dolfinx import fem

from nmcfx.errors import SolverError

from .mechanics import DIRECT_OPTIONS, ITERATIVE_OPTIONS, ElasticitySolver, _solver_kind


class BondedElasticitySolver(ElasticitySolver):
    """Elasticity of a body of NMC and CBD cells with the NMC's chemical eigenstrain (module docstring).

    Parameters: ``mesh`` (the body, µm), ``nmc_cells`` (local cell indices of the NMC cells, ghosts
    may be included; every other cell is CBD), ``theta_sources`` (a list of ``(theta, source_cells,
    body_cells)``: a scalar Lagrange θ Function on some mesh, and matching cells of that mesh and of
    the body — the same parent cells), ``material`` (the NMC's
    :class:`~nmcfx.materials.mechanics.MechanicalMaterial`), ``cbd`` (a
    :class:`~nmcfx.materials.mechanics.Stiffness`, isotropic), ``theta_ref``, ``clamped_facets``
    (facets of ``mesh`` with u = 0; empty on every rank: a free body). The rest as for
    :class:`ElasticitySolver`.

    After :meth:`solve`: ``u``, ``sigma`` (3×3, MPa, discontinuous), ``invariants()``, and
    ``nmc_stress_dofs`` / ``cbd_stress_dofs`` (owned scalar stress-space DOFs of each material).
    """

    LABEL = "mechanics (bonded)"

    def __init__(self, mesh, nmc_cells, theta_sources, material, cbd, *, theta_ref: float,
                 clamped_facets=None, assumption_2d: str = "plane_strain", degree: int = 2, solver: str = "auto",
                 petsc_options: dict | None = None, prefix: str = "nmcfx_bonded_"):
        self._body(mesh, material, theta_ref, assumption_2d, degree)
        if cbd.kind != "isotropic":
            raise ValueError("the CBD stiffness must be isotropic")
        tdim = self.tdim
        self.cbd = cbd
        self.sources = list(theta_sources)
        th_deg = max(th.function_space.element.basix_element.degree for th, _, _ in self.sources)
        n_cells = mesh.topology.index_map(tdim).size_local + mesh.topology.index_map(tdim).num_ghosts

        # ---- regions: χ = 1 in NMC cells (DG0); θ copied into a DG field of θ's degree
        Q0 = fem.functionspace(mesh, ("Discontinuous Lagrange", 0))
        self.chi = chi = fem.Function(Q0, name="nmc_indicator")
        nmc = np.zeros(n_cells, dtype=bool)
        nmc[np.asarray(nmc_cells, dtype=np.int64)] = True
        chi.x.array[:] = 0.0
        cell_dof = Q0.dofmap.list[:, 0]  # DG0: one dof per cell
        chi.x.array[cell_dof] = nmc.astype(float)
        chi.x.scatter_forward()  # the owner's word for ghost cells (callers may pass owned cells only)
        nmc = chi.x.array[cell_dof] > 0.5
        self.Vth = Vth = fem.functionspace(mesh, ("Discontinuous Lagrange", th_deg))
        self.theta = fem.Function(Vth, name="theta_body")
        dm = Vth.dofmap.list
        n_owned_cells = mesh.topology.index_map(tdim).size_local
        self._nmc_theta_dofs = np.unique(dm[np.flatnonzero(nmc)].ravel())
        self.eps_a = fem.Function(Vth, name="eps_a")
        self.eps_c = fem.Function(Vth, name="eps_c")
        self.variable_modulus = material.modulus is not None
        self.fmod = fem.Function(Vth, name="modulus_factor") if self.variable_modulus else None
        if self.fmod is not None:
            self.fmod.x.array[:] = 1.0
        self._owned_source_cells = []
        for th, src, dst in self.sources:
            src, dst = np.asarray(src, dtype=np.int32), np.asarray(dst, dtype=np.int32)
            own = dst < n_owned_cells
            self._owned_source_cells.append((th, src[own], dst[own]))

        self.C = material.stiffness.voigt() * 1e3  # GPa → MPa (NMC, crystal frame)
        self.C_cbd = cbd.voigt() * 1e3
        Cn = fem.Constant(mesh, PETSc.ScalarType(1.0) * self.C)
        Cc = fem.Constant(mesh, PETSc.ScalarType(1.0) * self.C_cbd)
        self._body_geometry(th_deg)
        f = (chi * self.fmod + (1.0 - chi)) if self.variable_modulus else 1.0
        stress, strain3, eig = self._constitutive_law(chi * Cn + (1.0 - chi) * Cc, f)
        self._displacement_forms(stress, strain3, eig, eigenstrain_load=True)
        V = self.V

        # ---- stress space (as ElasticitySolver: exact for the eigenstrain's degree)
        self._stress_spaces(th_deg)
        self._sigma_expr = fem.Expression(self.sigma_ufl, self.S.element.interpolation_points)
        n_s = self.Ss.dofmap.index_map.size_local
        sdm = self.Ss.dofmap.list[:n_owned_cells]
        owned_nmc = nmc[:n_owned_cells]
        self.nmc_stress_dofs = np.unique(sdm[owned_nmc].ravel())
        self.cbd_stress_dofs = np.unique(sdm[~owned_nmc].ravel())
        self.nmc_stress_dofs = self.nmc_stress_dofs[self.nmc_stress_dofs < n_s]
        self.cbd_stress_dofs = self.cbd_stress_dofs[self.cbd_stress_dofs < n_s]
        self._zz_moment_vectors()

        # ---- boundary condition and null space
        facets = np.zeros(0, dtype=np.int32) if clamped_facets is None else np.asarray(clamped_facets, np.int32)
        self.clamped = self.comm.allreduce(len(facets), op=MPI.SUM) > 0
        mesh.topology.create_connectivity(tdim - 1, tdim)
        dofs = fem.locate_dofs_topological(V, tdim - 1, facets)
        self.bcs = [fem.dirichletbc(np.zeros(tdim, dtype=PETSc.ScalarType), dofs, V)] if self.clamped else []
        self.A = dolfinx.fem.petsc.create_matrix(self.a_form)
        self.b = dolfinx.fem.petsc.create_vector(V)
        self.x = dolfinx.fem.petsc.create_vector(V)
        self.nullspace_vectors = self._rigid_body_modes()
        self.near_nullspace = PETSc.NullSpace().create(vectors=self.nullspace_vectors, comm=self.comm)
        # clamped: no null space (the collector holds the body); free: the rigid modes, removed
        self.nullspace = None if self.clamped else self.near_nullspace
        self.expected_null_pivots = 0 if self.clamped else len(self.nullspace_vectors)

        kind = _solver_kind(solver, tdim)
        self._create_ksp(kind, DIRECT_OPTIONS if kind == "direct" else ITERATIVE_OPTIONS, petsc_options, prefix)
        self._update_coefficients()

    # ------------------------------------------------------------------ overrides
    def _update_coefficients(self):
        """θ of every source → the body's DG θ (owned cells, then the ghosts), then ε_a, ε_c (and f) at the
        NMC nodes; zero eigenstrain (and f = 1) in the CBD."""
        for th, src, dst in self._owned_source_cells:
            self.theta.interpolate(th, cells0=src, cells1=dst)
        self.theta.x.scatter_forward()
        idx = self._nmc_theta_dofs
        th = np.clip(self.theta.x.array[idx], 0.0, 1.0)
        ea, ec = self.material.eigenstrain(th, self.theta_ref)
        self.eps_a.x.array[:] = 0.0
        self.eps_c.x.array[:] = 0.0
        self.eps_a.x.array[idx] = ea
        self.eps_c.x.array[idx] = ec
        if self.variable_modulus:
            self.fmod.x.array[idx] = self.material.modulus_factor(th)

    def _assemble_matrix(self):
        self.A.zeroEntries()
        dolfinx.fem.petsc.assemble_matrix(self.A, self.a_form, bcs=self.bcs)
        self.A.assemble()
        if self.nullspace is not None:
            self.A.setNullSpace(self.nullspace)
        self.A.setNearNullSpace(self.near_nullspace)
        self.ksp.setOperators(self.A)
        self.counters.factorizations += 1
        self._matrix_ready = True
        if self.solver_kind == "direct":
            self._check_null_pivots()

    def _check_null_pivots(self):
        """A part of the body free to move shows as extra null pivots of the factorisation (MUMPS
        INFOG(28) with ICNTL(24) = 1, :data:`DIRECT_OPTIONS`): refuse it rather than return an arbitrary
        rigid motion."""
        if not self._mumps_controls():
            return
        self.ksp.setUp()
        n_null = int(self.ksp.getPC().getFactorMatrix().getMumpsInfog(28))
        if n_null > self.expected_null_pivots:
            raise SolverError(f"mechanics (bonded): the elastic body has {n_null - self.expected_null_pivots} "
                              f"rigid-body mode(s) more than expected: a particle or a CBD piece is not bonded to "
                              f"the {'clamped collector' if self.clamped else 'rest of the body'}")

    def _solve_into(self, L_form, target: fem.Function) -> int:
        t0 = MPI.Wtime()
        if self.solver_kind == "iterative":
            with self.x.localForm() as xl:
                xl.array[:] = target.x.array
        with self.b.localForm() as bl:
            bl.set(0.0)
        dolfinx.fem.petsc.assemble_vector(self.b, L_form)
        self.b.ghostUpdate(addv=PETSc.InsertMode.ADD, mode=PETSc.ScatterMode.REVERSE)
        if self.bcs:
            dolfinx.fem.petsc.set_bc(self.b, self.bcs)  # u = 0: no lifting needed
        if self.nullspace is not None:
            self._remove_rigid_modes(self.b)
        return self._solve_load_into(target, t0)

    def theta_at_stress_nodes(self) -> np.ndarray:  # pragma: no cover - not used for a bonded body
        raise NotImplementedError("the bonded body's θ lives on the particles' meshes")

    def describe(self) -> dict:
        return super().describe() | {"clamped": self.clamped, "cbd": self.cbd.describe()}
