"""Terms of a :class:`~nmcfx.solver.problem.Problem`: each adds pieces to fields' residuals.

Units: mesh in µm, time in s, occupancy θ dimensionless. Every residual is an amount of Li
per step (θ·µm^d): transient equations are multiplied by dt, and the electron-conservation
equation by dt·F⁻¹N_L⁻¹, so all blocks share one scale and one Newton tolerance.

θ-dependent material properties are *nodal* coefficients: Σ_i p(θ_i) φ_i, evaluated with NumPy
at every Newton iterate (:meth:`Term.update`). Written as p_h + p'_h (θ − θ_frozen), with
θ_frozen the iterate itself, their UFL derivative is the exact derivative of the nodal
representation when integrated with the vertex rule (P1), so Newton stays quadratic.

=====================  ===========================================================
term                   residual contribution
=====================  ===========================================================
TimeDerivative         (a0 θ + a1 θ_n + a2 θ_{n-1}) v            (lumped mass for P1)
NonlinearDiffusion     dt D_chem(θ) P∇θ·∇v                        (P = diag(1,1,0) in 3D)
SurfaceFlux            dt q_s v   on named boundary sectors (q in µm s⁻¹ of θ)
StressDrivenFlux       −dt θ D_eff(θ) P∇χ·∇v, χ = Ω:σ/(N_L R T) of the last mechanics solves (two-way)
ButlerVolmer           dt η_s i(θ, φ_s, φ_l)/(F N_L) v on reacting facets; the same current
                       leaves the electron field φ_s if that is a field
Conduction             dt σ(θ) ∇φ_s·∇ψ /(F N_L)   (σ per region, constant or nodal σ(θ))
CurrentControl         galvanostatic Σ∫i = I, or potentiostatic cell voltage = V, on a real unknown
=====================  ===========================================================
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import ufl
from petsc4py import PETSc

from dolfinx import fem

from nmcfx.materials.constants import FARADAY, GAS_CONSTANT

from .problem import Field, Problem, Term

THETA_CLIP = 1e-6  # nodal properties are evaluated at θ clipped to [THETA_CLIP, 1 − THETA_CLIP]
I0_CLIP = 1e-12  # ... except the exchange current, whose zero at θ = 1 bounds the occupancy


def theta_to_flux_scale(site_concentration: float) -> float:
    """(A m⁻²) → µm s⁻¹ of θ: q = j / (F N_L) × 1e6."""
    return 1e6 / (FARADAY * site_concentration)


def vertex_measure(kind: str, domain, subdomain_data=None):
    """A measure with the vertex quadrature rule (nodal integration)."""
    return ufl.Measure(kind, domain=domain, subdomain_data=subdomain_data,
                       metadata={"quadrature_rule": "vertex", "quadrature_degree": 1})


def basal_gradient(mesh):
    """∇ projected on the a/b plane in 3D (no transport along the c axis = z, Xu 2022 Eq. 10)."""
    if mesh.geometry.dim == 3 and mesh.topology.dim == 3:
        proj = ufl.as_matrix([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
        return lambda w: ufl.dot(proj, ufl.grad(w))
    return ufl.grad


class NodalCoefficient:
    """p(θ) represented nodally on θ's space: value p_h, derivative p'_h and the linearisation
    point, so that ``expr(theta)`` = p_h + p'_h (θ − θ_frozen) has the exact nodal Jacobian."""

    def __init__(self, field: Field, name: str, fn: Callable, dfn: Callable, frozen: fem.Function | None = None):
        self.field = field
        self.fn, self.dfn = fn, dfn
        self.value = fem.Function(field.V, name=name)
        self.derivative = fem.Function(field.V, name=f"d{name}")
        self.frozen = frozen

    def update(self, theta_clipped: np.ndarray):
        self.value.x.array[:] = self.fn(theta_clipped)
        self.derivative.x.array[:] = self.dfn(theta_clipped)

    def expr(self):
        if self.frozen is None:
            return self.value
        return self.value + self.derivative * (self.field.u - self.frozen)


def clipped(field: Field) -> np.ndarray:
    return np.clip(field.u.x.array, THETA_CLIP, 1.0 - THETA_CLIP)


# ---------------------------------------------------------------------------- transport
class TimeDerivative(Term):
    """BDF time derivative × dt, lumped (vertex rule) for P1 so that fronts stay monotone."""

    def __init__(self, field: Field, *, lumped: bool = True):
        self.field = field
        self.fields = (field,)
        self.lumped = lumped

    def measure(self):
        f = self.field
        if self.lumped and f.degree == 1:
            return f.dx({"quadrature_rule": "vertex", "quadrature_degree": 1})
        return f.dx({"quadrature_degree": 2 * f.degree})

    def residuals(self, p: Problem):
        f = self.field
        a0, a1, a2 = p.bdf
        self.increment = a0 * f.u + a1 * f.u_n + a2 * f.u_nm1
        self._dxm = self.measure()
        return {f: self.increment * f.test * self._dxm}

    def jacobian(self, p, row, col, residual):
        if col is self.field:
            return p.bdf[0] * col.trial * row.test * self._dxm
        return None

    def nodal_assembly(self, p: Problem):
        return {"mass": "lumped" if (self.lumped and self.field.degree == 1) else "consistent"}


class NonlinearDiffusion(Term):
    """dt D_chem(θ) P∇θ·∇v with the nodal D_chem of ``material`` (m² s⁻¹ → µm² s⁻¹), times an
    optional cell-wise factor ``scale`` (e.g. a resolved rocksalt film: a DG0 function)."""

    def __init__(self, field: Field, material, *, scale=None, name: str = "D_chem"):
        self.field = field
        self.fields = (field,)
        self.material = material
        self.scale = scale
        self.name = name

    def setup(self, p: Problem):
        f = self.field
        mat = self.material
        self.D = NodalCoefficient(f, self.name, lambda th: mat.D_chem(th) * 1e12, lambda th: mat.dD_chem(th) * 1e12)
        # a dense Hermite table of D_chem (materials/lookup.py): ~10x cheaper than the analytic
        # PCHIP + OCV-derivative evaluation, relative difference < 1e-7 (tests/test_materials.py);
        # only for a Material's own D_chem (objects standing in for one are evaluated as they are)
        from nmcfx.materials.nmc import Material

        self._lookup = mat.D_chem_lookup(scale=1e12) if type(mat).D_chem is Material.D_chem and isinstance(
            mat, Material) else None
        # views of θ, D and D' (fixed memory), read at every iterate
        self._arrays = (f.u.x.array, self.D.value.x.array, self.D.derivative.x.array)

    #: set by an assembler that asks for D' itself (:meth:`derivative_values`) only where it builds a
    #: Jacobian: :meth:`update` then evaluates D alone (most residual evaluations need no Jacobian)
    derivative_on_demand = False
    _derivative_stale = True
    _located = None  # the table position of θ at the last update (lookup only)

    def update(self, p: Problem):
        lazy = self.derivative_on_demand
        self._derivative_stale = lazy
        if self._lookup is not None:
            theta, D, dD = self._arrays
            # located once: derivative_values evaluates D' at the same θ from it
            self._located = self._lookup.locate(theta)
            self._lookup.evaluate_located(self._located, D, None if lazy else dD)
        elif lazy:
            self.D.value.x.array[:] = self.D.fn(clipped(self.field))
        else:
            self.D.update(clipped(self.field))

    def derivative_values(self) -> np.ndarray:
        """D'(θ) at the point of the last :meth:`update` (evaluated now if that update skipped it)."""
        if self._derivative_stale:
            if self._lookup is not None:
                theta, _, dD = self._arrays
                located = self._located if self._located is not None else self._lookup.locate(theta)
                self._lookup.evaluate_located(located, None, dD)
            else:
                self.D.derivative.x.array[:] = self.D.dfn(clipped(self.field))
            self._derivative_stale = False
        return self.D.derivative.x.array

    @staticmethod
    def projection_matrix(mesh):
        """P of the basal-plane gradient (3D: diag(1, 1, 0)), None for the plain gradient."""
        if mesh.geometry.dim == 3 and mesh.topology.dim == 3:
            return np.diag([1.0, 1.0, 0.0])
        return None

    def nodal_assembly(self, p: Problem):
        return {"diffusion": self} if self.scale is None else None

    def residuals(self, p: Problem):
        f = self.field
        q = 2 * f.degree
        self._dx = f.dx({"quadrature_degree": q})
        self._dx_nodal = f.dx({"quadrature_rule": "vertex", "quadrature_degree": 1}) if f.degree == 1 else self._dx
        self._grad = basal_gradient(p.mesh)
        D, dD = self.D.value, self.D.derivative
        self._Dk = D if self.scale is None else self.scale * D
        self._dDk = dD if self.scale is None else self.scale * dD
        return {f: p.dt * self._Dk * ufl.inner(self._grad(f.u), ufl.grad(f.test)) * self._dx}

    def jacobian(self, p, row, col, residual):
        if col is not self.field:
            return None
        f, g = self.field, self._grad
        # d/dθ_j of Σ_i D(θ_i) φ_i is D'(θ_j) φ_j: for P1 the vertex rule integrates the product of
        # the nodal D' and the trial function exactly that way (∇θ·∇v is constant per cell)
        return (p.dt * self._Dk * ufl.inner(g(f.trial), ufl.grad(f.test)) * self._dx
                + p.dt * self._dDk * f.trial * ufl.inner(g(f.u), ufl.grad(f.test)) * self._dx_nodal)


class SurfaceFlux(Term):
    """Prescribed outward θ flux q_s (µm s⁻¹, > 0: Li leaves) on boundary sectors (facet tags)."""

    def __init__(self, field: Field, facet_tags, sectors: dict[str, int]):
        self.field = field
        self.fields = (field,)
        self.facet_tags = facet_tags
        self.sectors = dict(sectors)

    def setup(self, p: Problem):
        self.q = {s: fem.Constant(p.mesh, PETSc.ScalarType(0.0)) for s in self.sectors}

    def residuals(self, p: Problem):
        f = self.field
        ds = ufl.Measure("ds", domain=p.mesh, subdomain_data=self.facet_tags,
                         metadata={"quadrature_degree": f.degree})
        return {f: _sum(p.dt * self.q[s] * f.test * ds(tag) for s, tag in self.sectors.items())}

    def nodal_assembly(self, p: Problem):
        from .assembly import sector_load

        from .assembly import static_value

        f = self.field
        # ∫φ_i ds per sector depends on the mesh only: kept with it (no form to compile on a reused mesh)
        return {"loads": [(static_value(p.mesh, ("sector_load", f.degree, int(tag)),
                                        lambda tag=tag: sector_load(f, self.facet_tags, tag, f.degree)), self.q[s])
                          for s, tag in self.sectors.items()]}


class StressDrivenFlux(Term):
    """Two-way chemo-mechanics: the stress-driven part of the Li flux, −dt θ D_eff(θ) P∇χ·∇v.

    Derivation from Xu 2022 Eq. 12. With μ = −F V_oc(θ) (J mol⁻¹ of Li, vs Li/Li⁺), Eq. 12,
    J = (N_L F/RT) θ D_eff ∂V_oc/∂θ ∇θ, is J = −(N_L θ D_eff/RT) ∇μ: the mobility is N_L θ D_eff/RT
    (the θ·D_eff of D_chem = D_eff θ (−F/RT) ∂V_oc/∂θ). The elastic energy per volume,
    W = ½(ε − ε_ch(θ)):C:(ε − ε_ch(θ)), changes with θ at fixed strain by ∂W/∂θ = −σ:Ω(θ),
    Ω = ∂ε_ch/∂θ (per unit occupancy; Ω/N_L is the partial molar volume tensor), so per mole of Li
    μ = −F V_oc(θ) − Ω:σ/N_L and

        J = −N_L D_chem ∇θ + (θ D_eff/RT) ∇(Ω:σ),   or in θ units (J/N_L, µm s⁻¹):
        J_θ = −D_chem P∇θ + θ D_eff P∇χ,            χ = Ω:σ/(N_L R T)

    (P the basal projection of the transport tensor in 3D). Li moves up the gradient of Ω:σ:
    towards regions where the lattice it would expand is in tension. The weak form adds
    −dt ∫ θ D_eff P∇χ·∇v to θ's residual; the boundary condition stays J·n = q (total flux).
    Not included: the modulus term ½ f'(θ) ε_el:C:ε_el of a θ-dependent stiffness, and the shift
    Ω:σ/(F N_L) of the equilibrium potential in Butler–Volmer kinetics (≲ 1 mV at 100 MPa).

    Staggered, stabilised. After each accepted step and mechanics solve, :meth:`set_potential`
    takes χⁿ, the mobility Mⁿ = θⁿD_eff(θⁿ) and κⁿ = f Ω:C:Ω/(N_L R T) (how fast χ falls as θ
    rises at a fully constrained point: an upper bound of the free body's response). The next
    step approximates χⁿ⁺¹ ≈ χ* − κⁿ(θⁿ⁺¹ − θ*), with χ*, θ* extrapolated linearly in time from
    the last two accepted states (χⁿ, θⁿ alone at the first step, or with ``extrapolate=False``).
    The κ part is an implicit diffusion Mκ on the increment θ − θ* — without it the explicit
    stress flux, itself diffusion-like (∝ Ω:C:Ω), is unstable where Ω is large (the c collapse
    near θ ≈ 0.2–0.45: comparable to D_chem there). It vanishes with θ − θ* (O(dt²)), so the
    splitting stays second order in dt (first without extrapolation; check: halve
    ``solver.dt_max_s``, benchmarks/README.md). Implementation: Mκ is added to the nodal D_chem
    of θ's :class:`NonlinearDiffusion` (same Jacobian structure), the rest are two fixed load
    vectors per step, bⁿ and its change (× dt/Δtₙ), from −∫ M P∇χ·∇φ_i and +∫ Mκ P∇θ·∇φ_i —
    the NumPy assembly path stays available, and Σ_i b_i = 0 (Σ_i φ_i = 1): Li is conserved to
    round-off. Usage::

        flux = problem.add_term(StressDrivenFlux(theta_field, material))
        ...                                            # after every accepted step at time t:
        mech.solve(); flux.set_potential(stress_potential.update(), t, stress_potential.kappa)
    """

    def __init__(self, field: Field, material, *, extrapolate: bool = True, stabilise: bool = True):
        self.field = field
        self.fields = (field,)
        self.material = material
        self.extrapolate = extrapolate
        self.stabilise = stabilise
        self._forms = None
        self.times: list[float] = []  # tⁿ⁻¹, tⁿ of the loads

    def setup(self, p: Problem):
        f = self.field
        V = f.V
        self.mobility = fem.Function(V, name="stress_mobility")  # M = θ D_eff(θ) in µm² s⁻¹ (last accepted θ)
        self.potential = fem.Function(V, name="stress_potential")  # χ = Ω:σ/(N_L R T)
        self.stiffness = fem.Function(V, name="stress_stabilisation")  # M κ (µm² s⁻¹)
        self._chi_p, self._M_p = fem.Function(V), fem.Function(V)  # χⁿ⁻¹, Mⁿ⁻¹ (forms path)
        self._th, self._th_p = fem.Function(V), fem.Function(V)  # θⁿ, θⁿ⁻¹ (forms path)
        self._theta_s = fem.Function(V)  # the θ of a stabilisation load
        self.one = fem.Constant(p.mesh, PETSc.ScalarType(1.0))
        self.ratio = fem.Constant(p.mesh, PETSc.ScalarType(0.0))  # dt/Δtₙ of the extrapolation (0: none)
        self.load = np.zeros_like(f.u.x.array)  # bⁿ (local + ghost entries of owned cells, like a sector load)
        self.load_change = np.zeros_like(self.load)  # bⁿ − bⁿ⁻¹
        self.diffusion = next((t for t in p.terms if isinstance(t, NonlinearDiffusion) and t.field is f), None)
        if self.stabilise and (self.diffusion is None or self.diffusion.scale is not None):
            raise ValueError("the stabilised stress-driven flux needs θ's NonlinearDiffusion without a scale")

    def residuals(self, p: Problem):
        f = self.field
        dx = f.dx({"quadrature_degree": max(3 * f.degree - 2, 1)})
        g = basal_gradient(p.mesh)
        v = ufl.grad(f.test)
        r = self.ratio
        flux, flux_prev = self.mobility * g(self.potential), self._M_p * g(self._chi_p)
        self._ufl_flux = -ufl.inner(flux, v) * dx  # bⁿ of the loads
        self._ufl_stab = ufl.inner(self.stiffness * g(self._theta_s), v) * dx  # s(θ) = ∫ Mκ P∇θ·∇φ
        # the forms path writes out what the loads hold (the implicit + dt s(θ) is in the diffusion)
        res = -ufl.inner(flux + r * (flux - flux_prev), v) * dx
        if self.stabilise:
            theta_pred = self._th + r * (self._th - self._th_p)
            res = res - ufl.inner(self.stiffness * g(theta_pred), v) * dx
        return {f: p.dt * res}

    def nodal_assembly(self, p: Problem):
        return {"loads": [(self.load, self.one), (self.load_change, self.ratio)]}

    def update(self, p: Problem):
        ok = self.extrapolate and len(self.times) == 2 and self.times[1] > self.times[0]
        self.ratio.value = float(p.dt.value) / (self.times[1] - self.times[0]) if ok else 0.0
        if self.stabilise:  # the implicit part + dt ∫ Mκ P∇θ·∇v (after the diffusion's own update)
            self.diffusion.D.value.x.array[:] += self.stiffness.x.array

    def set_potential(self, chi: np.ndarray | None = None, time_s: float | None = None,
                      kappa: np.ndarray | None = None):
        """Take χ and κ (θ's space, local + ghosts) of the accepted state at ``time_s``, and the
        mobility at the current θ; rebuild the loads: bⁿ − s(θⁿ) and its change since the last call,
        (bⁿ − bⁿ⁻¹) − (s(θⁿ) − s(θⁿ⁻¹)), s with the current Mκ."""
        first = not self.times
        self._chi_p.x.array[:] = self.potential.x.array
        self._M_p.x.array[:] = self.mobility.x.array
        self._th_p.x.array[:] = self.field.u.x.array if first else self._th.x.array
        self._th.x.array[:] = self.field.u.x.array
        if chi is not None:
            self.potential.x.array[:] = chi
        th = clipped(self.field)
        self.mobility.x.array[:] = th * self.material.D_eff(th) * 1e12
        use_kappa = kappa is not None and self.stabilise
        self.stiffness.x.array[:] = self.mobility.x.array * kappa if use_kappa else 0.0
        if self._forms is None:
            self._forms = fem.form(self._ufl_flux), fem.form(self._ufl_stab)
        flux_form, stab_form = self._forms
        b = fem.assemble_vector(flux_form).array.copy()
        change = np.zeros_like(b) if first else b - self._flux_load
        self._flux_load = b
        load = b
        if self.stabilise:
            self._theta_s.x.array[:] = self._th.x.array
            s_now = fem.assemble_vector(stab_form).array.copy()
            self._theta_s.x.array[:] = self._th_p.x.array
            s_prev = fem.assemble_vector(stab_form).array.copy()
            load = b - s_now
            change = change - (s_now - s_prev)
        self.load[:] = load
        self.load_change[:] = change
        self.times = (self.times + [float(time_s if time_s is not None else np.nan)])[-2:]

    @property
    def active(self) -> bool:
        return bool(np.any(self.load != 0.0))


class ExtraResidual(Term):
    """A user residual ``fn(problem, θ, v)`` (× dt), e.g. a manufactured source."""

    def __init__(self, field: Field, fn: Callable, owner=None):
        self.field = field
        self.fields = (field,)
        self.fn = fn
        self.owner = owner

    def residuals(self, p: Problem):
        return {self.field: p.dt * self.fn(self.owner if self.owner is not None else p, self.field.u, self.field.test)}


# ---------------------------------------------------------------------------- kinetics
class ButlerVolmer(Term):
    """Butler–Volmer charge transfer on reacting facets (Sharma 2022 Eqs. 1–3):

        i = η_s i0(θ) [exp(α_a f η_ov) − exp(−α_c f η_ov)],  η_ov = φ_s − φ_l − V_oc(θ),  f = F/RT

    (i > 0: anodic, Li leaves the solid). ``surfaces``: (measure, weight η_s) pairs — vertex-rule
    facet measures of θ's boundary (exterior facets, or one side of an interface). ``phi_s`` and
    ``phi_l`` are fields (real or Lagrange) or constants. The current enters θ's residual and,
    when φ_s is a Lagrange field, leaves the electron field."""

    def __init__(self, theta: Field, phi_s, phi_l, surfaces: Sequence[tuple[object, object]], material, *,
                 concentration_ratio: float = 1.0, films: dict[int, float] | None = None,
                 film_diffusivity_ratio: float = 3000.0):
        self.theta = theta
        self.phi_s, self.phi_l = phi_s, phi_l
        self.fields = tuple(f for f in (theta, phi_s, phi_l) if isinstance(f, Field))
        self.surfaces = list(surfaces)
        self.material = material
        self.concentration_ratio = concentration_ratio
        self.scale = theta_to_flux_scale(material.site_concentration)
        #: surface index → rocksalt film thickness (nm): a series resistance in the charge transfer
        self.films = {int(k): float(v) for k, v in (films or {}).items() if v > 0}
        self.film_diffusivity_ratio = film_diffusivity_ratio
        if self.films and isinstance(phi_s, Field) and not phi_s.is_real:
            raise ValueError("a film resistance needs the particle potential as one real unknown")

    def setup(self, p: Problem):
        th = self.theta
        mat = self.material
        cr = self.concentration_ratio
        self.frozen = fem.Function(th.V, name="theta_frozen")
        self.U = NodalCoefficient(th, "V_oc", mat.ocv, mat.docv, self.frozen)
        self.i0 = NodalCoefficient(th, "i0", lambda t: mat.i0(t, cr), lambda t: mat.di0(t, cr), self.frozen)
        f = FARADAY / (GAS_CONSTANT * mat.temperature_K)
        over = _value(self.phi_s) - _value(self.phi_l) - self.U.expr()
        self.overpotential = over
        self.i = self.i0.expr() * (ufl.exp(mat.alpha_a * f * over) - ufl.exp(-mat.alpha_c * f * over))
        if self.films:
            self._setup_films(p)

    def update(self, p: Problem):
        th = clipped(self.theta)
        self.frozen.x.array[:] = self.theta.u.x.array
        self.U.update(th)
        # i0 ∝ (1 − θ)^α_a vanishes at a full surface: that is the barrier that keeps θ ≤ 1, so it is
        # evaluated at θ itself (the material clips at 1e-12), not at the properties' clip
        self.i0.update(np.clip(self.theta.u.x.array, I0_CLIP, 1.0 - I0_CLIP))
        if self.films:
            self._update_films(th)

    # -- a rocksalt film in series (Lun 2025; solver/kinetics.py): nodal implicit current
    def _setup_films(self, p: Problem):
        """For film-covered surfaces the current solves i = i0 B(f(η − R(θ) i)) node by node; it is
        represented nodally as I + ∂I/∂θ (θ − θ_frozen) + ∂I/∂φ (φ_s − φ_frozen), exact at the
        vertices (vertex-rule measures) with its exact Jacobian."""
        th = self.theta
        V = th.V
        self._film_I = {k: fem.Function(V, name=f"i_film{k}") for k in self.films}
        self._film_dth = {k: fem.Function(V) for k in self.films}
        self._film_dphi = {k: fem.Function(V) for k in self.films}
        self._phi_frozen = fem.Constant(p.mesh, PETSc.ScalarType(0.0))
        phi = _value(self.phi_s)
        self.i_film = {k: self._film_I[k] + self._film_dth[k] * (th.u - self.frozen)
                       + self._film_dphi[k] * (phi - self._phi_frozen) for k in self.films}

    def _update_films(self, th_clipped: np.ndarray):
        from .kinetics import butler_volmer_series, film_resistance

        mat = self.material
        phi = float(self.phi_s.u.x.array[0]) if isinstance(self.phi_s, Field) else float(self.phi_s.value)
        phi_l = float(self.phi_l.u.x.array[0]) if isinstance(self.phi_l, Field) else float(self.phi_l.value)
        self._phi_frozen.value = phi
        U, dU = self.U.value.x.array, self.U.derivative.x.array
        i0, di0 = self.i0.value.x.array, self.i0.derivative.x.array
        eta = phi - phi_l - U
        for k, delta in self.films.items():
            film = film_resistance(delta, th_clipped, mat.D_eff(th_clipped), mat.site_concentration,
                                   dD_eff_dtheta=mat.dD_eff(th_clipped), ratio=self.film_diffusivity_ratio,
                                   temperature_K=mat.temperature_K)
            sol = butler_volmer_series(eta, i0, film.resistance, alpha_a=mat.alpha_a, alpha_c=mat.alpha_c,
                                       temperature_K=mat.temperature_K)
            self._film_I[k].x.array[:] = sol.current
            self._film_dth[k].x.array[:] = -sol.d_eta * dU + sol.d_i0 * di0 + sol.d_R * film.d_resistance_dtheta
            self._film_dphi[k].x.array[:] = sol.d_eta

    def _current(self, k: int):
        """The current density expression on surface ``k`` (with its film, if it has one)."""
        return self.i_film[k] if k in self.films else self.i

    def current_form(self, test, *, weighted: bool = True):
        """Σ_s η_s i/(F N_L) · test over the reacting facets (µm s⁻¹ of θ integrated)."""
        sc = self.scale
        if weighted:
            return _sum(eta * sc * self._current(k) * test * ds for k, (ds, eta) in enumerate(self.surfaces))
        return _sum(sc * self._current(k) * test * ds for k, (ds, _) in enumerate(self.surfaces))

    def reference_form(self, test):
        """Σ_s (1/(F N_L)) · test over the reacting facets: ∫ j_set × this = the set current."""
        return _sum(self.scale * test * ds for ds, _ in self.surfaces)

    def amps_form(self):
        """Σ_s η_s i over the reacting facets (A m⁻² × µm^(d-1))."""
        return _sum(eta * self._current(k) * ds for k, (ds, eta) in enumerate(self.surfaces))

    def residuals(self, p: Problem):
        th = self.theta
        out = {th: _sum(p.dt * eta * self.scale * self._current(k) * th.test * ds
                        for k, (ds, eta) in enumerate(self.surfaces))}
        if isinstance(self.phi_s, Field) and not self.phi_s.is_real:
            out[self.phi_s] = _sum(p.dt * eta * self.scale * self._current(k) * self.phi_s.test * ds
                                   for k, (ds, eta) in enumerate(self.surfaces))
        return out


class CurrentControl(Term):
    """The equation of a real unknown that sets the operating mode:

    * galvanostatic: Σ ∫ i = j_set × (reacting area) — the total current of the ``reactions``;
    * potentiostatic: ``voltage`` (a UFL expression of the unknowns, the cell voltage) = V_set.

    Both live in one compiled form switched by constants, so one problem serves every protocol
    step (CC, rest, CV hold)."""

    def __init__(self, unknown: Field, reactions: Sequence[ButlerVolmer], voltage, *, cv_scale: float):
        self.unknown = unknown
        self.fields = (unknown,)
        self.reactions = list(reactions)
        self.voltage = voltage
        self.cv_scale = cv_scale

    def setup(self, p: Problem):
        c = lambda v: fem.Constant(p.mesh, PETSc.ScalarType(v))  # noqa: E731
        self.w_cc, self.w_cv, self.j_set, self.V_set = c(1.0), c(0.0), c(0.0), c(0.0)

    def set_current(self, j_mean: float):
        """Mean current density over the reacting surfaces (A m⁻², + = charge)."""
        self.w_cc.value, self.w_cv.value, self.j_set.value = 1.0, 0.0, j_mean

    def set_voltage(self, volts: float):
        self.w_cc.value, self.w_cv.value, self.V_set.value = 0.0, 1.0, volts

    def residuals(self, p: Problem):
        mu = self.unknown.test
        cur = _sum(r.current_form(mu) for r in self.reactions)
        ref = _sum(r.reference_form(mu) for r in self.reactions)
        F = self.w_cc * (cur - self.j_set * ref) + self.w_cv * self.cv_scale * (self.voltage - self.V_set) * ref
        return {self.unknown: F}


# ---------------------------------------------------------------------------- electrons
class Conduction(Term):
    """Ohmic conduction of electrons, dt σ ∇φ_s·∇ψ / (F N_L) (σ in S m⁻¹, converted to µm units).

    ``regions``: (tags, σ) pairs — σ a number, or a (θ field, σ(θ), dσ/dθ) triple for a
    conductivity that follows the local Li content (nodal, exact Jacobian with P1)."""

    def __init__(self, phi_s: Field, regions: Sequence[tuple[tuple[int, ...], object]], site_concentration: float):
        self.phi_s = phi_s
        self.regions = list(regions)
        self.fields = (phi_s,) + tuple(r[1][0] for r in regions if isinstance(r[1], tuple))
        self.scale = theta_to_flux_scale(site_concentration)

    def setup(self, p: Problem):
        self._nodal = []
        for tags, sigma in self.regions:
            if isinstance(sigma, tuple):
                theta, fn, dfn = sigma
                frozen = fem.Function(theta.V)
                self._nodal.append((theta, frozen, NodalCoefficient(theta, "sigma", fn, dfn, frozen)))

    def update(self, p: Problem):
        for theta, frozen, coeff in self._nodal:
            frozen.x.array[:] = theta.u.x.array
            coeff.update(clipped(theta))

    def residuals(self, p: Problem):
        phi = self.phi_s
        parts = []
        nodal = iter(self._nodal)
        for tags, sigma in self.regions:
            dx = ufl.Measure("dx", domain=p.mesh, subdomain_data=p.cell_tags,
                             metadata={"quadrature_rule": "vertex", "quadrature_degree": 1})(tuple(tags))
            s = next(nodal)[2].expr() if isinstance(sigma, tuple) else fem.Constant(p.mesh, PETSc.ScalarType(sigma))
            # σ (S m⁻¹) × 1e6: ∫σ∇φ·∇ψ in µm coordinates against currents in A m⁻² on µm facets
            parts.append(p.dt * self.scale * 1e6 * s * ufl.inner(ufl.grad(phi.u), ufl.grad(phi.test)) * dx)
        return {phi: _sum(parts)}


# ---------------------------------------------------------------------------- helpers
def _value(x):
    return x.u if isinstance(x, Field) else x


def _sum(items):
    items = list(items)
    out = items[0]
    for it in items[1:]:
        out = out + it
    return out
