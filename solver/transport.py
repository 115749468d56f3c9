"""Occupancy-dependent Li diffusion in one particle (Xu et al., Joule 2022, SI Eqs. 12-15):
the single-particle configuration of the problem core (:mod:`nmcfx.solver.problem`).

Unknown: Li occupancy θ on the particle mesh (µm, s); with Butler–Volmer kinetics also the
particle potential φ_s, one real (global) unknown.

    ∂θ/∂t = ∇·(D_chem(θ) P ∇θ)            in the particle
    −D_chem(θ) P∇θ·n = q_s                  on boundary sector s  (q > 0: Li leaves)

with D_chem = D_eff θ (−F/RT) dV_oc/dθ (the thermodynamic factor of Eq. 12),
P = I in 2D (basal-plane cross-section) and P = diag(1, 1, 0) in 3D (Eq. 10: no
transport along the c axis, which is z). q_s = j_s / (F N_L), prescribed (``flux``) or
from Butler–Volmer kinetics with the particle potential set by a current or voltage control.

Fields and terms: θ (transient) with :class:`TimeDerivative`, :class:`NonlinearDiffusion`
and :class:`SurfaceFlux` or :class:`ButlerVolmer`; with kinetics, φ_s (real) with
:class:`CurrentControl`. Discretisation: Lagrange P1 (or P2); backward Euler (or
variable-step BDF2); nodal coefficients (no tanh/pow of the unknown inside UFL, fixed
quadrature); lumped (vertex-rule) mass so P1 fronts stay free of undershoot. Testing the
residual with v = 1 shows Li is conserved by every Newton iterate to round-off.
"""

from __future__ import annotations

import numpy as np
import ufl
from mpi4py import MPI
from petsc4py import PETSc

from dolfinx import fem

from nmcfx.errors import InputError
from nmcfx.materials.constants import FARADAY, GAS_CONSTANT

from .assembly import static_value
from .exports import BoundaryExtremes, BoundaryMean, FieldIntegral, PointProbe, ThresholdRegion, reduce_array
from .problem import DEFAULT_PETSC_OPTIONS, Field, Problem, SolverCounters, StepResult
from .terms import (
    ButlerVolmer,
    CurrentControl,
    ExtraResidual,
    NonlinearDiffusion,
    SurfaceFlux,
    TimeDerivative,
    theta_to_flux_scale,
    vertex_measure,
)

__all__ = ["DEFAULT_PETSC_OPTIONS", "PointProbe", "SolverCounters", "StepResult", "TransportSolver", "reduce_array"]


class TransportSolver:
    """The θ equation (and, with kinetics, the particle potential) on one particle mesh.

    ``material`` needs ``D_chem(theta)`` and ``dD_chem(theta)`` in m² s⁻¹ and
    ``site_concentration`` in mol m⁻³ (see :mod:`nmcfx.materials`). ``problem`` is the
    underlying :class:`~nmcfx.solver.problem.Problem`. ``extra_terms``: callables
    ``make(solver) -> Term`` adding terms of other models to θ's residual before the Newton
    solver is built (two-way mechanics: :class:`~nmcfx.solver.terms.StressDrivenFlux`).
    """

    def __init__(
        self,
        particle,
        material,
        *,
        degree: int | None = 1,
        time_scheme: str = "bdf1",
        mass_lumping: bool = True,
        petsc_options: dict | None = None,
        prefix: str = "nmcfx_theta_",
        extra_residual=None,
        surface=None,
        sector_weights: dict | None = None,
        diffusivity_scale=None,
        films: dict[str, float] | None = None,
        film_diffusivity_ratio: float = 3000.0,
        assembly: str = "auto",
        extra_terms=(),
    ):
        degree = 1 if degree is None else degree
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
        self.sector_names = list(particle.sectors)
        self.reactive = [s for s in particle.reactive_sectors if s in particle.sectors]
        self.kinetics = surface is not None and surface.model == "butler_volmer"
        self._scale = theta_to_flux_scale(material.site_concentration)  # A m⁻² → µm s⁻¹ of θ

        measure = float(getattr(particle, "measure", 1.0) or 1.0)  # per-step Li-balance defect ≲ 1e-12 relative
        self.problem = pb = Problem(mesh, petsc_options=petsc_options, prefix=prefix, atol_measure=measure,
                                    assembly=assembly)
        self.counters = pb.counters
        self.dt, self.time, self.bdf = pb.dt, pb.time, pb.bdf
        self.field = th = pb.add_field(Field("theta", degree=degree, transient=True))
        self.phi_field = pb.add_field(Field.real("phi_s")) if self.kinetics else None
        pb.build_spaces()
        self.V = th.V
        self.theta, self.theta_n, self.theta_nm1 = th.u, th.u_n, th.u_nm1
        self.theta.name = "theta"

        pb.add_term(TimeDerivative(th, lumped=mass_lumping))
        self.diffusion = pb.add_term(NonlinearDiffusion(th, material, scale=diffusivity_scale))
        self.D, self.dD = self.diffusion.D.value, self.diffusion.D.derivative
        tags = particle.sectors
        weights = {s: 1.0 for s in self.reactive} | dict(sector_weights or {})
        self.eta = {s: fem.Constant(mesh, PETSc.ScalarType(weights[s])) for s in self.reactive}
        ds_nodal = vertex_measure("ds", mesh, particle.facet_tags)
        self._ds_reactive = ds_nodal(tuple(int(tags[s]) for s in self.reactive))
        if self.kinetics:
            self.phi = self.phi_field.u
            self.phi_l = fem.Constant(mesh, PETSc.ScalarType(surface.electrolyte_potential_V))
            films = {self.reactive.index(s): d for s, d in (films or {}).items() if s in self.reactive}
            self.reaction = pb.add_term(ButlerVolmer(
                th, self.phi_field, self.phi_l, [(ds_nodal(tags[s]), self.eta[s]) for s in self.reactive], material,
                concentration_ratio=surface.electrolyte_concentration_ratio, films=films,
                film_diffusivity_ratio=film_diffusivity_ratio))
            f = FARADAY / (GAS_CONSTANT * material.temperature_K)
            self.control = pb.add_term(CurrentControl(self.phi_field, [self.reaction], self.phi - self.phi_l,
                                                      cv_scale=material.i0_ref_A_m2 * f))
            self.flux = None
        else:
            self.phi = self.phi_l = self.reaction = self.control = None
            self.flux = pb.add_term(SurfaceFlux(th, particle.facet_tags, tags))
        if extra_residual is not None:  # sources / non-uniform fluxes (manufactured solutions)
            pb.add_term(ExtraResidual(th, extra_residual, owner=self))
        # terms of other models on θ, built from this solver (two-way mechanics: the stress-driven flux)
        self.extra_terms = [pb.add_term(make(self)) for make in extra_terms]
        pb.initialise()
        self.petsc_options = pb.petsc_options
        self.q = self.flux.q if self.flux is not None else {}

        # observables: weights and measures depend on the mesh only; a solver on the same (cached)
        # mesh reuses them instead of compiling and assembling their forms again
        ds = ufl.Measure("ds", domain=mesh, subdomain_data=particle.facet_tags, metadata={"quadrature_degree": degree})
        self.dx, self.ds = self._integral_measure(), ds
        key = ("transport_observables", degree, tuple(sorted((k, int(v)) for k, v in tags.items())),
               tuple(self.reactive))
        static = static_value(mesh, key, lambda: self._mesh_observables(th, tags))
        self._integral = FieldIntegral(th, weights=static["integral_weights"])
        self.volume = static["volume"]
        self.sector_measure = dict(static["sector_measure"])
        self._surface_mean = BoundaryMean(th, self._ds_reactive, weights=static["surface_weights"])
        self._surface = BoundaryExtremes(th, dofs=static["surface_dofs"])
        self._n_owned = th.n_owned
        self._probes: dict[str, PointProbe] = {}
        self._li_rich: ThresholdRegion | None = None
        if self.kinetics:
            self._current_form = fem.form(self.reaction.amps_form())

    def _integral_measure(self):
        return ufl.Measure("dx", domain=self.mesh, metadata={"quadrature_degree": 2 * self.degree})

    def _mesh_observables(self, th, tags) -> dict:
        """What the observables need of the mesh (computed once per mesh, see ``static_value``)."""
        mesh, comm = self.mesh, self.comm
        one = fem.Constant(mesh, PETSc.ScalarType(1.0))
        facets = np.concatenate(
            [self.particle.facet_tags.find(tags[s]) for s in self.reactive] or [np.zeros(0, np.int32)])
        return {
            "integral_weights": FieldIntegral(th).weights,
            "volume": comm.allreduce(fem.assemble_scalar(fem.form(one * self._integral_measure())), op=MPI.SUM),
            "sector_measure": {s: comm.allreduce(fem.assemble_scalar(fem.form(one * self.ds(tags[s]))), op=MPI.SUM)
                               for s in self.sector_names},
            "surface_weights": BoundaryMean(th, self._ds_reactive).weights,
            "surface_dofs": BoundaryExtremes(th, facets).dofs,
        }

    # ------------------------------------------------------------------ controls
    def set_control(self, mode: str, value: float):
        """Butler–Volmer runs: "current" (mean current density j̄ in A m⁻², + = charge) or
        "voltage" (cell voltage φ_s − φ_l in V vs Li/Li⁺)."""
        if mode == "current":
            self.control.set_current(value)
        elif mode == "voltage":
            self.control.set_voltage(value)
            self.phi.x.array[:] = value + float(self.phi_l.value)
        else:
            raise ValueError(mode)

    def set_fluxes(self, fluxes_um_per_s: dict[str, float]):
        """Set the boundary flux of every sector (µm s⁻¹; missing sectors get 0)."""
        unknown = set(fluxes_um_per_s) - set(self.q)
        if unknown:
            raise InputError("sectors", f"unknown sector(s) {sorted(unknown)}; mesh has {self.sector_names}")
        for s, c in self.q.items():
            c.value = float(fluxes_um_per_s.get(s, 0.0))

    # the Butler–Volmer current (studies read it per sector)
    @property
    def _i_bv(self):
        return self.reaction.i if self.reaction is not None else None

    def _update_coefficients(self):
        """Nodal coefficients (D_chem, and with kinetics V_oc, i0) at the current iterate."""
        self.problem.update_coefficients()

    # ------------------------------------------------------------------ observables
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

    def voltage_at_rest(self) -> float:
        """Surface-averaged V_oc(θ) + φ_l: the potential at which no net current flows (uniform θ)."""
        u = self._surface_mean(lambda th: self.material.ocv(np.clip(th, 1e-6, 1 - 1e-6)))
        return u + (float(self.phi_l.value) if self.phi is not None else 0.0)

    def boundary_outflow(self) -> float:
        """∮ q ds (µm^(d-1)·µm s⁻¹) at the current state: the rate of change of −∫θ dx."""
        if self.phi is not None:
            return self.comm.allreduce(fem.assemble_scalar(self._current_form), op=MPI.SUM) * self._scale
        return sum(float(self.q[s].value) * self.sector_measure[s] for s in self.sector_names)

    def integral_theta(self, f: fem.Function | None = None) -> float:
        """∫θ dx (µm^d), exact for the finite-element field (Σ θ_i ∫φ_i)."""
        if f is not None and f is not self.theta:
            raise ValueError("integral_theta works on self.theta only")
        return self._integral()

    def theta_mean(self) -> float:
        return self.integral_theta() / self.volume

    def surface_min_max(self) -> tuple[float, float]:
        return self._surface()

    def li_rich_offset(self, theta_threshold: float) -> tuple[float, float, np.ndarray]:
        """Area (volume) fraction of the Li-rich region θ > ``theta_threshold``, the distance
        d (µm) between its centre of mass and the particle's (Lun 2025, Fig. 5d), and that
        centre of mass (µm); d and the centre are NaN once the region has vanished."""
        if self._li_rich is None:
            self._li_rich = ThresholdRegion(self.field)
        return self._li_rich(theta_threshold)

    @property
    def particle_center_of_mass(self) -> np.ndarray:
        if self._li_rich is None:
            self._li_rich = ThresholdRegion(self.field)
        return self._li_rich.center_of_mass

    def add_probe(self, name: str, points: np.ndarray):
        self._probes[name] = PointProbe(self.mesh, np.asarray(points, dtype=float))

    def probe(self, name: str, f: fem.Function | None = None) -> np.ndarray:
        """Values of θ (or ``f``) at the probe points, identical on all ranks."""
        return self._probes[name].evaluate(f if f is not None else self.theta)

    @property
    def num_dofs(self) -> int:
        return self.field.num_dofs

    # ------------------------------------------------------------------ state and stepping
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
            self.phi_field.u_n.x.array[:] = self.phi.x.array

    def set_bdf_coefficients(self, dt: float, dt_prev: float | None, order: int):
        return self.problem.set_time_step(dt, dt_prev, order)

    def solve_step(self, dt: float, dt_prev: float | None, order: int, guess: np.ndarray | None = None) -> StepResult:
        """One implicit step from (θ_n, θ_{n-1}) to θ (left in ``self.theta``)."""
        self.problem.set_time_step(dt, dt_prev, order)
        if isinstance(guess, list):  # the time loop predicts every transient field
            guess = guess[0]
        self.theta.x.array[:] = guess if guess is not None else self.theta_n.x.array
        res = self.problem.solve()
        if res.converged:  # occupancies must stay in (0, 1)
            th = self.theta.x.array
            ok = bool(th.min() > 0.0 and th.max() < 1.0)
            res.converged = ok if self.comm.size == 1 else bool(self.comm.allreduce(ok, op=MPI.LAND))
        return res

    def close(self) -> None:
        """Free the solver's PETSc objects now (collective; :meth:`Problem.close`)."""
        self.problem.close()

    def accept(self):
        """Shift history after an accepted step."""
        self.problem.accept()
