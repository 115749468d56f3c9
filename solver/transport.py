"""Occupancy-dependent Li diffusion in a particle (Xu et al., Joule 2022, SI Eqs. 12-15).

Unknown: Li occupancy θ. Internal units: µm (mesh) and s.

    ∂θ/∂t = ∇·(D_chem(θ) P ∇θ)            in the particle
    −D_chem(θ) P∇θ·n = q_s                  on boundary sector s  (q > 0: Li leaves)

with D_chem = D_eff θ (−F/RT) dV_oc/dθ (the thermodynamic factor of Eq. 12),
P = I in 2D (basal-plane cross-section) and P = diag(1, 1, 0) in 3D (Eq. 10: no
transport along the c axis, which is z). q_s = j_s / (F N_L).

Discretisation: Lagrange P1 (or P2); backward Euler (or variable-step BDF2); the
θ-dependent coefficient is represented nodally, D_h = Σ D_chem(θ_i) φ_i, so the
nonlinearity costs one vectorised table evaluation per Newton iterate and the
quadrature degree stays fixed (no tanh/pow of the unknown inside UFL). The lumped
(vertex-rule) mass matrix keeps P1 fronts free of undershoot. Testing the residual
with v = 1 shows Li is conserved by every Newton iterate to round-off.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import basix.ufl
import numpy as np
import ufl
from mpi4py import MPI
from petsc4py import PETSc

import dolfinx
import dolfinx.fem.petsc
from dolfinx import fem

from nmcfx.errors import InputError
from nmcfx.materials.constants import FARADAY, GAS_CONSTANT

#: SNES/KSP defaults: Newton with backtracking line search, direct MUMPS LU.
DEFAULT_PETSC_OPTIONS = {
    "snes_type": "newtonls",
    "snes_linesearch_type": "bt",
    "snes_rtol": 1e-10,
    "snes_atol": 1e-13,  # × particle measure (µm^d): set per problem, see TransportSolver
    "snes_stol": 0.0,
    "snes_max_it": 12,
    "ksp_type": "preonly",
    "pc_type": "lu",
    "pc_factor_mat_solver_type": "mumps",
}


@dataclass
class StepResult:
    converged: bool
    newton_iterations: int
    linear_iterations: int
    reason: int
    assembly_time: float = 0.0
    solve_time: float = 0.0


@dataclass
class SolverCounters:
    steps: int = 0
    rejected_steps: int = 0
    newton_iterations: int = 0
    linear_iterations: int = 0
    residual_evaluations: int = 0
    jacobian_evaluations: int = 0
    assembly_time: float = 0.0
    solve_time: float = 0.0
    extras: dict = field(default_factory=dict)


class TransportSolver:
    """Owns the function space, forms and SNES of the θ equation on one particle mesh.

    ``material`` needs ``D_chem(theta)`` and ``dD_chem(theta)`` in m² s⁻¹ and
    ``site_concentration`` in mol m⁻³ (see :mod:`nmcfx.materials`).
    """

    def __init__(
        self,
        particle,
        material,
        *,
        degree: int = 1,
        time_scheme: str = "bdf1",
        mass_lumping: bool = True,
        petsc_options: dict | None = None,
        prefix: str = "nmcfx_theta_",
        extra_residual=None,
        surface=None,
        sector_weights: dict | None = None,
        diffusivity_scale=None,
    ):
        if degree not in (1, 2):
            raise InputError("solver.degree", f"must be 1 or 2, got {degree!r}")
        if time_scheme not in ("bdf1", "bdf2"):
            raise InputError("solver.time_scheme", f"must be 'bdf1' or 'bdf2', got {time_scheme!r}")
        self.particle = particle
        self.material = material
        self.mesh = mesh = particle.mesh
        self.comm = mesh.comm
        self.degree = degree
        self.time_scheme = time_scheme
        self.counters = SolverCounters()
        gdim = mesh.geometry.dim
        tdim = mesh.topology.dim

        self.V = V = fem.functionspace(mesh, ("Lagrange", degree))
        self.theta = fem.Function(V, name="theta")  # θ at t_{n+1} (Newton iterate)
        self.theta_n = fem.Function(V, name="theta_n")
        self.theta_nm1 = fem.Function(V, name="theta_nm1")
        self.D = fem.Function(V, name="D_chem")  # µm² s⁻¹, nodal
        self.dD = fem.Function(V, name="dD_chem")

        self.dt = fem.Constant(mesh, PETSc.ScalarType(1.0))
        self.time = fem.Constant(mesh, PETSc.ScalarType(0.0))  # t_{n+1}, for time-dependent extra terms
        # dθ/dt ≈ (a0 θ + a1 θ_n + a2 θ_{n-1}) / dt ; BE: (1, -1, 0)
        self.bdf = [fem.Constant(mesh, PETSc.ScalarType(c)) for c in (1.0, -1.0, 0.0)]

        # Boundary sectors: one flux constant per sector (µm s⁻¹, positive = Li out).
        self.sector_names = list(particle.sectors)
        self.q = {s: fem.Constant(mesh, PETSc.ScalarType(0.0)) for s in self.sector_names}

        # Measures with the quadrature degree chosen on purpose.
        qdeg = 2 * degree
        dx = ufl.Measure("dx", domain=mesh, metadata={"quadrature_degree": qdeg})
        if mass_lumping and degree == 1:
            dxm = ufl.Measure("dx", domain=mesh, metadata={"quadrature_rule": "vertex", "quadrature_degree": 1})
        else:
            dxm = ufl.Measure("dx", domain=mesh, metadata={"quadrature_degree": qdeg})
        ds = ufl.Measure("ds", domain=mesh, subdomain_data=particle.facet_tags, metadata={"quadrature_degree": degree})
        self.dx, self.ds = dx, ds
        # nodal (vertex-rule) boundary measure: integrands built from nodal coefficients of θ
        # are then evaluated exactly at the vertices, and their Jacobians are exact
        ds_nodal = ufl.Measure("ds", domain=mesh, subdomain_data=particle.facet_tags,
                               metadata={"quadrature_rule": "vertex", "quadrature_degree": 1})
        self.reactive = [s for s in particle.reactive_sectors if s in particle.sectors]
        self.kinetics = surface is not None and surface.model == "butler_volmer"
        weights = {s: 1.0 for s in self.reactive} | dict(sector_weights or {})
        self.eta = {s: fem.Constant(mesh, PETSc.ScalarType(weights[s])) for s in self.reactive}
        self.Uh = fem.Function(V, name="V_oc")  # nodal V_oc(θ) (V)

        if gdim == 3 and tdim == 3:
            proj = ufl.as_matrix([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
            grad_p = lambda w: ufl.dot(proj, ufl.grad(w))  # noqa: E731  (c axis = z)
        else:
            grad_p = ufl.grad

        th, v = self.theta, ufl.TestFunction(V)
        dth = ufl.TrialFunction(V)
        a0, a1, a2 = self.bdf
        # the residual is multiplied by dt: it then measures Li (θ·µm^d), so the SNES absolute
        # tolerance bounds the Li-balance defect of a step whatever the step size
        dt = self.dt
        increment = a0 * th + a1 * self.theta_n + a2 * self.theta_nm1
        # optional cell-wise factor on D (e.g. a resolved rocksalt shell: a DG0 function)
        Dk = self.D if diffusivity_scale is None else diffusivity_scale * self.D
        dDk = self.dD if diffusivity_scale is None else diffusivity_scale * self.dD
        F = increment * v * dxm + dt * Dk * ufl.inner(grad_p(th), ufl.grad(v)) * dx
        if not self.kinetics:  # prescribed fluxes; with kinetics the flux is i_BV/(F N_L)
            for s in self.sector_names:
                F += dt * self.q[s] * v * ds(particle.sectors[s])
        J = a0 * dth * v * dxm
        J += dt * Dk * ufl.inner(grad_p(dth), ufl.grad(v)) * dx
        # d/dθ_j of Σ_i D(θ_i) φ_i is D'(θ_j) φ_j. For P1 the vertex rule integrates the
        # product of the nodal D' and the trial function exactly that way (∇θ·∇v is constant
        # per cell), so the Jacobian is exact and Newton converges quadratically.
        dx_nodal = ufl.Measure("dx", domain=mesh, metadata={"quadrature_rule": "vertex", "quadrature_degree": 1})
        J += dt * dDk * dth * ufl.inner(grad_p(th), ufl.grad(v)) * (dx_nodal if degree == 1 else dx)
        if extra_residual is not None:
            # hook for sources / non-uniform fluxes (manufactured solutions)
            extra = dt * extra_residual(self, th, v)
            F += extra
            J += ufl.derivative(extra, th, dth)
        self._scale = 1e6 / (FARADAY * material.site_concentration)  # A m⁻² → µm s⁻¹ of θ
        one = fem.Constant(mesh, PETSc.ScalarType(1.0))
        ds_r = ds_nodal(tuple(int(particle.sectors[s]) for s in self.reactive))
        self._ds_reactive = ds_r

        opts = dict(DEFAULT_PETSC_OPTIONS)
        measure = float(getattr(particle, "measure", 1.0) or 1.0)
        opts["snes_atol"] = DEFAULT_PETSC_OPTIONS["snes_atol"] * measure  # per-step Li-balance defect ≲ 1e-12 relative
        if petsc_options:
            opts.update({str(k): v for k, v in petsc_options.items()})
        self.petsc_options = opts
        if self.kinetics:
            self._build_kinetics(surface, F, J, th, v, dth, ds_nodal, prefix, opts)
        else:
            self.phi = None
            self.F_ufl, self.J_ufl = F, J
            self.problem = dolfinx.fem.petsc.NonlinearProblem(
                F, self.theta, J=J, petsc_options_prefix=prefix, petsc_options=opts
            )
            self._wrap_callbacks()

        # Observables (compiled once).
        self._mass_form = fem.form(self.theta * dx)
        # nodal weights ∫φ_i (owned DOFs): Σ w_i θ_i = ∫θ_h exactly, at NumPy cost per step
        v_ = ufl.TestFunction(V)
        self._w_mass = self._owned_weights(fem.form(v_ * dx))
        self._w_surface = self._owned_weights(fem.form(v_ * self._ds_reactive))
        self.volume = self.comm.allreduce(fem.assemble_scalar(fem.form(one * dx)), op=MPI.SUM)
        self.sector_measure = {
            s: self.comm.allreduce(fem.assemble_scalar(fem.form(one * ds(particle.sectors[s]))), op=MPI.SUM)
            for s in self.sector_names
        }
        fdim = tdim - 1
        n_owned = V.dofmap.index_map.size_local
        reactive = [s for s in particle.reactive_sectors if s in particle.sectors]
        facets = np.concatenate(
            [particle.facet_tags.find(particle.sectors[s]) for s in reactive] or [np.zeros(0, np.int32)]
        )
        mesh.topology.create_connectivity(fdim, tdim)
        dofs = fem.locate_dofs_topological(V, fdim, facets)
        self._surface_dofs = dofs[dofs < n_owned]
        self._n_owned = n_owned
        self._probes: dict[str, PointProbe] = {}

    # ------------------------------------------------------------------ kinetics
    def _build_kinetics(self, surface, F, J, th, v, dth, ds_nodal, prefix, opts):
        """Butler–Volmer surface with the particle potential φ_s as a global (real) unknown.

        i = η_s i0(θ) [exp(α_a f η_ov) − exp(−α_c f η_ov)], η_ov = φ_s − φ_l − V_oc(θ),
        f = F/RT (seed 004 Eqs. 1–3). The φ_s equation is either the galvanostatic
        constraint Σ_s ∫ i ds = j̄ Γ (CC, rest) or φ_s = V_set (CV hold), switched by
        constants so one compiled problem serves every protocol step.
        """
        mesh, mat = self.mesh, self.material
        V = self.V
        R = fem.functionspace(mesh, basix.ufl.real_element(mesh.basix_cell(), ()))
        self.R = R
        self.phi = fem.Function(R, name="phi_s")
        mu, dphi = ufl.TestFunction(R), ufl.TrialFunction(R)
        self.theta_frozen = fem.Function(V)
        self.dUh = fem.Function(V)
        self.i0h = fem.Function(V)
        self.di0h = fem.Function(V)
        self.phi_l = fem.Constant(mesh, PETSc.ScalarType(surface.electrolyte_potential_V))
        self._c_ratio = surface.electrolyte_concentration_ratio
        self.w_cc = fem.Constant(mesh, PETSc.ScalarType(1.0))
        self.w_cv = fem.Constant(mesh, PETSc.ScalarType(0.0))
        self.j_set = fem.Constant(mesh, PETSc.ScalarType(0.0))  # A m⁻², mean over the reactive surface
        self.V_set = fem.Constant(mesh, PETSc.ScalarType(0.0))
        f = FARADAY / (GAS_CONSTANT * mat.temperature_K)
        # frozen linearisation: equal to the nodal values at θ = θ_frozen (= the iterate),
        # with the nodal derivative as its θ-derivative → exact Jacobian under the vertex rule
        U = self.Uh + self.dUh * (th - self.theta_frozen)
        i0 = self.i0h + self.di0h * (th - self.theta_frozen)
        over = self.phi - self.phi_l - U
        i_bv = i0 * (ufl.exp(mat.alpha_a * f * over) - ufl.exp(-mat.alpha_c * f * over))
        self._i_bv = i_bv
        sc = self._scale
        tags = self.particle.sectors
        F_th = sum(self.dt * self.eta[s] * sc * i_bv * v * ds_nodal(tags[s]) for s in self.reactive)
        cur = sum(self.eta[s] * sc * i_bv * mu * ds_nodal(tags[s]) for s in self.reactive)
        ds_r = self._ds_reactive
        cv_scale = sc * mat.i0_ref_A_m2 * f
        F_phi = self.w_cc * (cur - sc * self.j_set * mu * ds_r) + self.w_cv * cv_scale * (self.phi - self.V_set) * mu * ds_r
        F0 = F + F_th
        J00 = J + ufl.derivative(F_th, th, dth)
        J01 = ufl.derivative(F_th, self.phi, dphi)
        J10 = ufl.derivative(F_phi, th, dth)
        J11 = ufl.derivative(F_phi, self.phi, dphi)
        self.F_ufl, self.J_ufl = [F0, F_phi], [[J00, J01], [J10, J11]]
        self._current_form = fem.form(sum(self.eta[s] * i_bv * ds_nodal(tags[s]) for s in self.reactive))
        self.problem = dolfinx.fem.petsc.NonlinearProblem(
            self.F_ufl, [self.theta, self.phi], J=self.J_ufl, kind="mpi", petsc_options_prefix=prefix,
            petsc_options=opts,
        )
        snes = self.problem.solver
        F_ctx = {"u": self.problem.u, "residual": self.problem.F, "jacobian": self.problem.J, "bcs": []}
        if (blocks := self.problem.b.getAttr("_blocks")) is not None:
            F_ctx["_blocks"] = blocks
        J_ctx = {"u": self.problem.u, "jacobian": self.problem.J, "preconditioner": None, "bcs": []}
        counters, clock = self.counters, MPI.Wtime
        assemble_F = dolfinx.fem.petsc.assemble_residual
        assemble_J = dolfinx.fem.petsc.assemble_jacobian

        def residual(snes_, x, b):
            t0 = clock()
            x.ghostUpdate(addv=PETSc.InsertMode.INSERT, mode=PETSc.ScatterMode.FORWARD)
            dolfinx.fem.petsc.assign(x, [self.theta, self.phi])
            self._update_coefficients()
            assemble_F(snes_, x, b, **F_ctx)
            counters.residual_evaluations += 1
            counters.assembly_time += clock() - t0

        def jacobian(snes_, x, A, P):
            t0 = clock()
            dolfinx.fem.petsc.assign(x, [self.theta, self.phi])
            self._update_coefficients()
            assemble_J(snes_, x, A, P, **J_ctx)
            counters.jacobian_evaluations += 1
            counters.assembly_time += clock() - t0

        snes.setFunction(residual, self.problem.b)
        snes.setJacobian(jacobian, self.problem.A, self.problem.P_mat)

    def set_control(self, mode: str, value: float):
        """Butler–Volmer runs: "current" (mean current density j̄ in A m⁻², + = charge) or
        "voltage" (φ_s in V vs Li/Li⁺)."""
        if mode == "current":
            self.w_cc.value, self.w_cv.value, self.j_set.value = 1.0, 0.0, value
        elif mode == "voltage":
            self.w_cc.value, self.w_cv.value, self.V_set.value = 0.0, 1.0, value
            self.phi.x.array[:] = value
        else:
            raise ValueError(mode)

    @property
    def voltage(self) -> float:
        """Cell voltage vs Li/Li⁺: φ_s − φ_l (Butler–Volmer), else the surface-averaged V_oc."""
        if self.phi is not None:
            return float(self.phi.x.array[0] - self.phi_l.value)
        return self.voltage_at_rest()

    def current_density(self) -> float:
        """Mean current density over the reactive surface (A m⁻², + = charge/delithiation)."""
        gam = sum(self.sector_measure[s] for s in self.reactive)
        if self.phi is not None:
            return self.comm.allreduce(fem.assemble_scalar(self._current_form), op=MPI.SUM) / gam
        return self.boundary_outflow() / gam / self._scale

    # ------------------------------------------------------------------ SNES glue
    def _update_coefficients(self):
        """Nodal D_chem(θ) (and, with kinetics, V_oc, i0) and derivatives at the current iterate."""
        th = np.clip(self.theta.x.array, 1e-6, 1.0 - 1e-6)
        mat = self.material
        self.D.x.array[:] = mat.D_chem(th) * 1e12
        self.dD.x.array[:] = mat.dD_chem(th) * 1e12
        if self.kinetics:
            self.theta_frozen.x.array[:] = self.theta.x.array
            self.Uh.x.array[:] = mat.ocv(th)
            self.dUh.x.array[:] = mat.docv(th)
            self.i0h.x.array[:] = mat.i0(th, self._c_ratio)
            self.di0h.x.array[:] = mat.di0(th, self._c_ratio)

    def _wrap_callbacks(self):
        """Own SNES callbacks: update the nodal coefficients, then assemble.

        No Dirichlet conditions here, so the residual is a plain vector assembly (DOLFINx's
        generic callback also applies lifting, which costs a Jacobian-sized pass).
        """
        snes = self.problem.solver
        F_form, J_form = self.problem.F, self.problem.J
        assemble_vector = dolfinx.fem.petsc.assemble_vector
        assemble_matrix = dolfinx.fem.petsc.assemble_matrix
        counters = self.counters
        clock = MPI.Wtime
        theta = self.theta

        def residual(snes_, x, b):
            t0 = clock()
            x.ghostUpdate(addv=PETSc.InsertMode.INSERT, mode=PETSc.ScatterMode.FORWARD)
            with x.localForm() as xl:
                theta.x.array[:] = xl.array_r
            self._update_coefficients()
            with b.localForm() as bl:
                bl.set(0.0)
            assemble_vector(b, F_form)
            b.ghostUpdate(addv=PETSc.InsertMode.ADD, mode=PETSc.ScatterMode.REVERSE)
            counters.residual_evaluations += 1
            counters.assembly_time += clock() - t0

        def jacobian(snes_, x, A, P):
            t0 = clock()
            # normally the point of the last residual evaluation; refresh the coefficients if not
            n = self._n_owned
            if not np.array_equal(x.array_r[:n], theta.x.array[:n]):
                x.ghostUpdate(addv=PETSc.InsertMode.INSERT, mode=PETSc.ScatterMode.FORWARD)
                with x.localForm() as xl:
                    theta.x.array[:] = xl.array_r
                self._update_coefficients()
            A.zeroEntries()
            assemble_matrix(A, J_form)
            A.assemble()
            counters.jacobian_evaluations += 1
            counters.assembly_time += clock() - t0

        snes.setFunction(residual, self.problem.b)
        snes.setJacobian(jacobian, self.problem.A, None)

    # ------------------------------------------------------------------ state
    def set_initial(self, theta0):
        """Uniform (float) or callable θ₀(x) initial state."""
        for f in (self.theta, self.theta_n, self.theta_nm1):
            if callable(theta0):
                f.interpolate(theta0)
            else:
                f.x.array[:] = float(theta0)
        self._update_coefficients()
        if self.phi is not None:  # start at open circuit
            self.phi.x.array[:] = self.voltage_at_rest()

    def voltage_at_rest(self) -> float:
        """Surface-averaged V_oc(θ) + φ_l: the potential at which no net current flows (uniform θ)."""
        w = self._w_surface
        u_nodes = self.material.ocv(np.clip(self.theta.x.array[: len(w)], 1e-6, 1 - 1e-6))
        gam = sum(self.sector_measure[s] for s in self.reactive)
        u = self.comm.allreduce(float(w @ u_nodes), op=MPI.SUM) / gam
        return u + (float(self.phi_l.value) if self.phi is not None else 0.0)

    def set_fluxes(self, fluxes_um_per_s: dict[str, float]):
        """Set the boundary flux of every sector (µm s⁻¹; missing sectors get 0)."""
        unknown = set(fluxes_um_per_s) - set(self.q)
        if unknown:
            raise InputError("sectors", f"unknown sector(s) {sorted(unknown)}; mesh has {self.sector_names}")
        for s, c in self.q.items():
            c.value = float(fluxes_um_per_s.get(s, 0.0))

    def boundary_outflow(self) -> float:
        """∮ q ds (µm^(d-1)·µm s⁻¹) at the current state: the rate of change of −∫θ dx."""
        if self.phi is not None:
            return self.comm.allreduce(fem.assemble_scalar(self._current_form), op=MPI.SUM) * self._scale
        return sum(float(self.q[s].value) * self.sector_measure[s] for s in self.sector_names)

    def set_bdf_coefficients(self, dt: float, dt_prev: float | None, order: int):
        self.dt.value = dt
        if order == 1 or dt_prev is None:
            coeffs = (1.0, -1.0, 0.0)
        else:
            w = dt / dt_prev
            coeffs = ((1 + 2 * w) / (1 + w), -(1 + w), w * w / (1 + w))
        for c, val in zip(self.bdf, coeffs):
            c.value = val
        return coeffs

    # ------------------------------------------------------------------ solve
    def solve_step(self, dt: float, dt_prev: float | None, order: int, guess: np.ndarray | None = None) -> StepResult:
        """One implicit step from (θ_n, θ_{n-1}) to θ (left in ``self.theta``)."""
        self.set_bdf_coefficients(dt, dt_prev, order)
        if guess is not None:
            self.theta.x.array[:] = guess
        else:
            self.theta.x.array[:] = self.theta_n.x.array
        t0 = MPI.Wtime()
        a_before = self.counters.assembly_time
        snes = self.problem.solver
        try:
            self.problem.solve()
            reason = snes.getConvergedReason()
        except PETSc.Error:
            reason = -100
        its = snes.getIterationNumber()
        lits = snes.getLinearSolveIterations()
        converged = reason > 0 and bool(np.all(np.isfinite(self.theta.x.array)))
        if converged:
            th = self.theta.x.array
            converged = bool(th.min() > 0.0 and th.max() < 1.0)
            if self.phi is not None:
                converged = converged and bool(np.all(np.isfinite(self.phi.x.array)))
        converged = bool(self.comm.allreduce(converged, op=MPI.LAND))
        wall = MPI.Wtime() - t0
        asm = self.counters.assembly_time - a_before
        self.counters.newton_iterations += its
        self.counters.linear_iterations += lits
        self.counters.solve_time += wall - asm
        return StepResult(converged, its, lits, reason, asm, wall - asm)

    def accept(self):
        """Shift history after an accepted step."""
        self.theta_nm1.x.array[:] = self.theta_n.x.array
        self.theta_n.x.array[:] = self.theta.x.array

    # ------------------------------------------------------------------ observables
    def _owned_weights(self, form) -> np.ndarray:
        vec = fem.assemble_vector(form)
        vec.scatter_reverse(dolfinx.la.InsertMode.add)
        return vec.array[: self.V.dofmap.index_map.size_local].copy()

    def integral_theta(self, f: fem.Function | None = None) -> float:
        """∫θ dx (µm^d), exact for the finite-element field (Σ θ_i ∫φ_i)."""
        if f is not None and f is not self.theta:
            raise ValueError("integral_theta works on self.theta only")
        w = self._w_mass
        return self.comm.allreduce(float(w @ self.theta.x.array[: len(w)]), op=MPI.SUM)

    def theta_mean(self) -> float:
        return self.integral_theta() / self.volume

    def surface_min_max(self) -> tuple[float, float]:
        vals = self.theta.x.array[self._surface_dofs]
        lo = vals.min() if vals.size else np.inf
        hi = vals.max() if vals.size else -np.inf
        return self.comm.allreduce(lo, op=MPI.MIN), self.comm.allreduce(hi, op=MPI.MAX)

    def li_rich_offset(self, theta_threshold: float) -> tuple[float, float, np.ndarray]:
        """Area (volume) fraction of the Li-rich region θ > ``theta_threshold``, the distance
        d (µm) between its centre of mass and the particle's (Lun 2025, Fig. 5d), and that
        centre of mass (µm); d and the centre are NaN once the region has vanished."""
        if not hasattr(self, "_lr_thr"):
            mesh = self.mesh
            self._lr_thr = fem.Constant(mesh, PETSc.ScalarType(0.0))
            dxq = ufl.Measure("dx", domain=mesh, metadata={"quadrature_degree": 4})
            x = ufl.SpatialCoordinate(mesh)
            ind = ufl.conditional(ufl.gt(self.theta, self._lr_thr), 1.0, 0.0)
            gdim = mesh.geometry.dim
            self._lr_forms = [fem.form(ind * dxq)] + [fem.form(ind * x[i] * dxq) for i in range(gdim)]
            one = fem.Constant(mesh, PETSc.ScalarType(1.0))
            com = [fem.assemble_scalar(fem.form(one * x[i] * dxq)) for i in range(gdim)]
            self._particle_com = reduce_array(self.comm, np.array(com), MPI.SUM) / self.volume
        self._lr_thr.value = theta_threshold
        vals = reduce_array(self.comm, np.array([fem.assemble_scalar(f) for f in self._lr_forms]), MPI.SUM)
        frac = vals[0] / self.volume
        if vals[0] <= 1e-9 * self.volume:
            return float(frac), float("nan"), np.full(len(vals) - 1, np.nan)
        com = vals[1:] / vals[0]
        return float(frac), float(np.linalg.norm(com - self._particle_com)), com

    @property
    def particle_center_of_mass(self) -> np.ndarray:
        if not hasattr(self, "_particle_com"):
            self.li_rich_offset(0.5)
        return self._particle_com

    def add_probe(self, name: str, points: np.ndarray):
        self._probes[name] = PointProbe(self.mesh, np.asarray(points, dtype=float))

    def probe(self, name: str, f: fem.Function | None = None) -> np.ndarray:
        """Values of θ (or ``f``) at the probe points, identical on all ranks."""
        return self._probes[name].evaluate(f if f is not None else self.theta)

    @property
    def num_dofs(self) -> int:
        im = self.V.dofmap.index_map
        return im.size_global * self.V.dofmap.index_map_bs


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
