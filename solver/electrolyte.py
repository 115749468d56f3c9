"""The resolved electrolyte of a composite electrode (``[electrode] electrolyte = "resolved"``):
salt concentration c_l and electrolyte potential φ_l by concentrated-solution theory (Newman) in
the electrolyte-filled pores and the porous carbon-binder domain (CBD), Bruggeman there.

Unknowns (besides θ_p and φ_s of :mod:`nmcfx.solver.electrode`):

* φ_ref — the real unknown ``phi_l`` of the uniform model, now the electrolyte potential at the
  separator, where a Li reference sits: the cell voltage is φ_s(collector) − φ_ref, and the
  galvanostatic / potentiostatic control (:class:`~nmcfx.solver.terms.CurrentControl`) is unchanged;
* δφ_l — Lagrange on the pore network P = electrolyte ∪ CBD, δφ_l = 0 on the separator facets,
  so that φ_l(x) = φ_ref + δφ_l(x) (V vs a Li reference in the local electrolyte);
* c_l — Lagrange on P, transient, mol m⁻³, stored as its deviation Δc_l = c_l − c_l,ref (field
  ``delta_c_l``): at C/20 c_l varies by 10⁻⁴ of its value, and gradients and the salt balance of
  the deviation keep their digits where those of c_l itself would lose them to cancellation.

Equations (ε = 1 in the pores, ε = ``cbd_porosity`` in the CBD; b = ε^``bruggeman_exponent``):

    current        i_l = b [−κ(c) ∇φ_l + (2RT/F) κ(c) ν(c) ∇ln c],   ν = (1 − t₊)(1 + d ln f±/d ln c)
    charge         ∇·i_l = 0,  i_l·n = −i_BV on NMC|pore faces (n out of the pores), δφ_l = 0 at the separator
    salt (anions)  ε ∂c/∂t = −∇·N₋,  N₋ = −b D(c) ∇c − (1 − t₊) i_l / F,  N₋·n = 0 on every boundary

The salt balance is written for the anion, which neither reacts nor crosses the Li source: with the
discrete charge equation this is exactly the reaction's salt flux (1 − t₊) i_BV/F into the pores at
every NMC|electrolyte and NMC|CBD face and the balancing flux (1 − t₊) i_l·n/F out through the
separator, distributed as the current there — and ∫ε c is conserved to round-off, step by step,
because the weak form has no boundary term. The reaction (Butler–Volmer, Sharma 2022 Eqs. 1–3) is an
interface integral (:class:`InterfaceButlerVolmer`): η = φ_s − φ_ref − δφ_l − V_oc(θ) and
i0 = i0(θ) (c_l/c_l,ref)^α_a with c_l,ref = ``electrolyte_concentration_mol_m3`` (the initial value).
A particle face on the separator itself (none in the presets) reacts with the separator's
electrolyte: δφ_l = 0, c_l = c_l,ref.

Units and scaling as in :mod:`nmcfx.solver.terms`: µm, s; every residual is an amount of Li per
step in θ·µm^d (salt divided by N_L, currents multiplied by dt/(F N_L)). Coefficients are nodal
(NumPy at the vertices, :class:`~nmcfx.solver.terms.NodalCoefficient`) and every volume term uses
the vertex rule, so the UFL Jacobian is the exact derivative of the discrete residual.

Properties: :mod:`nmcfx.materials.electrolyte` (LiPF6, Valøen & Reimers 2005, by default).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import ufl
from mpi4py import MPI
from petsc4py import PETSc

import dolfinx
from dolfinx import fem

from nmcfx.errors import InputError
from nmcfx.materials.constants import FARADAY, GAS_CONSTANT

from .problem import Field, Problem, Term
from .terms import ButlerVolmer, NodalCoefficient, theta_to_flux_scale

#: ``[electrode]`` keys of the resolved electrolyte, with their defaults
SETTINGS_DEFAULTS = {
    "electrolyte_concentration_mol_m3": 1000.0,  # initial and reference salt concentration (1 mol/L)
    "cbd_porosity": 0.5,  # electrolyte volume fraction of the CBD (data/README.md: provenance)
    "bruggeman_exponent": 1.5,  # κ_eff = κ ε^b, D_eff = D ε^b (Bruggeman)
    "electrolyte_csv": None,  # own property table (materials.electrolyte.TABLE_COLUMNS)
    "electrolyte_conductivity_S_m": None,  # constant overrides of single properties
    "electrolyte_diffusivity_m2_s": None,
    "electrolyte_transference_number": None,
    "electrolyte_thermodynamic_factor": None,
}
#: (key, lower, upper, lower bound open, unit) of the numeric keys
_RANGES = (
    ("electrolyte_concentration_mol_m3", 0.0, 4000.0, True, "mol/m³"),
    ("cbd_porosity", 0.0, 1.0, True, ""),
    ("bruggeman_exponent", 0.0, 5.0, False, ""),
    ("electrolyte_conductivity_S_m", 0.0, 1e6, True, "S/m"),
    ("electrolyte_diffusivity_m2_s", 0.0, 1e-3, True, "m²/s"),
    ("electrolyte_transference_number", -10.0, 1.0, False, ""),
    ("electrolyte_thermodynamic_factor", 0.0, 100.0, True, ""),
)
_OVERRIDES = {"electrolyte_conductivity_S_m": "conductivity", "electrolyte_diffusivity_m2_s": "diffusivity",
              "electrolyte_transference_number": "transference_number",
              "electrolyte_thermodynamic_factor": "thermodynamic_factor"}


def validate_settings(d: dict) -> dict:
    """Checked values of the resolved-electrolyte keys present in the ``[electrode]`` table ``d``
    (one :class:`InputError` line per bad value)."""
    out = {}
    for key, lo, hi, lo_open, unit in _RANGES:
        if key not in d:
            continue
        v = d[key]
        u = f" {unit}" if unit else ""
        rng = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
        if key == "electrolyte_transference_number":
            rng = f"[{lo:g}, {hi:g})"
        ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
        if ok:
            ok = (v > lo if lo_open else v >= lo) and (v < hi if key == "electrolyte_transference_number" else v <= hi)
        if not ok:
            raise InputError(f"electrode.{key}", f"must be a number in {rng}{u}, got {v!r}")
        out[key] = float(v)
    if "electrolyte_csv" in d:
        if not isinstance(d["electrolyte_csv"], str):
            raise InputError("electrode.electrolyte_csv",
                             "must be a path to a CSV (c_mol_m3,kappa_S_m,D_m2_s,t_plus,thermodynamic_factor)")
        out["electrolyte_csv"] = d["electrolyte_csv"]
    return out


def properties_for(settings, temperature_K: float):
    """The electrolyte property set the settings ask for (default: Valøen & Reimers 2005)."""
    from nmcfx.materials.electrolyte import electrolyte_properties

    return electrolyte_properties(temperature_K=temperature_K, csv_path=settings.electrolyte_csv,
                                  **{name: getattr(settings, key) for key, name in _OVERRIDES.items()})


def check_run(settings, electrode, surface, material, base_dir):
    """Config-level checks of a resolved-electrolyte run (before anything is written); returns the
    settings with ``electrolyte_csv`` made absolute."""
    from nmcfx.geometries.electrode import CBD_TAG, ELECTROLYTE_TAG, SEPARATOR

    if settings.electrolyte_csv is not None:
        from pathlib import Path

        from nmcfx.materials.electrolyte import load_electrolyte_table

        p = Path(settings.electrolyte_csv)
        p = p if p.is_absolute() or base_dir is None else Path(base_dir) / p
        load_electrolyte_table(p)
        settings = replace(settings, electrolyte_csv=str(p.resolve()))
    props = properties_for(settings, material.temperature_K)
    c0 = settings.electrolyte_concentration_mol_m3
    for name in ("conductivity", "diffusivity", "thermodynamic_factor"):
        if not float(getattr(props, name)(c0)) > 0:
            raise InputError("electrode.electrolyte_concentration_mol_m3",
                             f"the electrolyte {name} at {c0:g} mol/m³ is not > 0")
    if surface.electrolyte_concentration_ratio != 1.0:
        raise InputError("surface.electrolyte_concentration_ratio",
                         "not used with electrode.electrolyte = 'resolved' (c_l is a field; set its initial "
                         "value with electrode.electrolyte_concentration_mol_m3)")
    comm = electrode.comm
    local = 0
    if electrode.dim == 2 and electrode.facet_tags is not None:
        mesh, tags = electrode.mesh, electrode.cell_tags
        fdim = mesh.topology.dim - 1
        mesh.topology.create_connectivity(fdim, fdim + 1)
        f2c = mesh.topology.connectivity(fdim, fdim + 1)
        pores = set(tags.find(ELECTROLYTE_TAG).tolist()) | set(tags.find(CBD_TAG).tolist())
        local = sum(1 for f in electrode.facet_tags.find(SEPARATOR) if f2c.links(f)[0] in pores)
    if comm.allreduce(local, op=MPI.SUM) == 0:
        raise InputError("electrode.electrolyte", "'resolved' needs a 2D electrode cross-section whose electrolyte "
                                                  "reaches the separator (top) boundary; use 'uniform' here")
    return settings


# ---------------------------------------------------------------------------- facets
def interface_facets(mesh, cell_tags, facet_tags, particle_tag: int, pore_tags, blocked_boundaries):
    """Owned reacting facets of particle ``particle_tag``: interior facets shared with a pore cell
    (``(particle cell, local facet, pore cell, local facet)`` — "+" is the particle) and exterior
    facets not on ``blocked_boundaries`` (``(cell, local facet)``), each flattened as DOLFINx wants."""
    tdim = mesh.topology.dim
    fdim = tdim - 1
    mesh.topology.create_connectivity(fdim, tdim)
    mesh.topology.create_connectivity(tdim, fdim)
    f2c = mesh.topology.connectivity(fdim, tdim)
    c2f = mesh.topology.connectivity(tdim, fdim)
    n_cells = mesh.topology.index_map(tdim).size_local + mesh.topology.index_map(tdim).num_ghosts
    region = np.full(n_cells, -1, dtype=np.int64)
    region[cell_tags.indices] = cell_tags.values
    n_owned = mesh.topology.index_map(fdim).size_local
    blocked = set()
    if facet_tags is not None:
        for b in blocked_boundaries:
            blocked.update(facet_tags.find(b).tolist())
    pores = set(pore_tags)
    inner, outer = [], []
    for c in cell_tags.find(particle_tag):
        for lf, f in enumerate(c2f.links(c)):
            if f >= n_owned:
                continue
            cs = f2c.links(f)
            if len(cs) == 1:
                if f not in blocked:
                    outer += [c, lf]
                continue
            other = cs[0] if cs[1] == c else cs[1]
            if region[other] in pores:
                lf_other = int(np.flatnonzero(c2f.links(other) == f)[0])
                inner += [c, lf, other, lf_other]
    return np.asarray(inner, dtype=np.int32), np.asarray(outer, dtype=np.int32)


def _vertex(kind, mesh, data):
    return ufl.Measure(kind, domain=mesh, subdomain_data=data,
                       metadata={"quadrature_rule": "vertex", "quadrature_degree": 1})


# ---------------------------------------------------------------------------- terms
class InterfaceButlerVolmer(ButlerVolmer):
    """Butler–Volmer across the NMC|pore interface (an interior-facet integral, "+" = particle,
    "−" = pore cell): η = φ_s − φ_ref − δφ_l − V_oc(θ), i0 = i0(θ) (c_l/c_l,ref)^α_a. The current
    enters θ, leaves φ_s and enters the electrolyte (δφ_l); on exterior reacting facets (a particle
    face on the separator) the separator's electrolyte reacts (δφ_l = 0, c_l = c_l,ref).
    Keeps the attributes of :class:`ButlerVolmer` (``frozen``, ``U``, ``i0``) that the electrode's
    batched nodal update refreshes."""

    def __init__(self, theta: Field, phi_s: Field, phi_ref: Field, electrolyte: "ResolvedElectrolyte",
                 dS, ds_outer, ds_surface, material):
        super().__init__(theta, phi_s, phi_ref, [], material, concentration_ratio=1.0)
        self.electrolyte = electrolyte
        self.dphi = electrolyte.dphi
        self.fields = (theta, phi_s, phi_ref, electrolyte.dphi, electrolyte.c_l)
        self.dS, self.ds_outer = dS, ds_outer
        self.ds_surface = ds_surface  # the whole reacting surface, one-sided (particle cells)

    def setup(self, p: Problem):
        th, mat = self.theta, self.material
        self.frozen = fem.Function(th.V, name="theta_frozen")
        self.U = NodalCoefficient(th, "V_oc", mat.ocv, mat.docv, self.frozen)
        self.i0 = NodalCoefficient(th, "i0", lambda t: mat.i0(t, 1.0), lambda t: mat.di0(t, 1.0), self.frozen)
        f = FARADAY / (GAS_CONSTANT * mat.temperature_K)

        def rate(over):
            return ufl.exp(mat.alpha_a * f * over) - ufl.exp(-mat.alpha_c * f * over)

        g = self.electrolyte.coefficients.expr(f"g{mat.alpha_a!r}")
        U, i0, phs, phr = self.U.expr(), self.i0.expr(), self.phi_s.u, self.phi_l.u
        self.i_inner = i0("+") * g("-") * rate(phs("+") - phr("+") - self.dphi.u("-") - U("+"))
        self.i_outer = i0 * rate(phs - phr - U) if self.ds_outer is not None else None

    def _integral(self, inner, outer=None):
        """∫ over the interface of ``inner`` (restricted) + ∫ over the exterior facets of ``outer``."""
        out = inner * self.dS
        if self.ds_outer is not None and outer is not None:
            out = out + outer * self.ds_outer
        return out

    def current_form(self, test, *, weighted: bool = True):  # noqa: ARG002 - no blocking on an electrode
        sc = self.scale
        return self._integral(sc * self.i_inner * test("+"), None if self.i_outer is None else sc * self.i_outer * test)

    def reference_form(self, test):
        # one-sided (particle cells): the control multiplies it by the unrestricted cell voltage
        return self.scale * test * self.ds_surface

    def amps_form(self):
        return self._integral(self.i_inner, self.i_outer)

    def residuals(self, p: Problem):
        sc, th, ps = self.scale, self.theta, self.phi_s
        out = {}
        for fld in (th, ps):
            out[fld] = self._integral(p.dt * sc * self.i_inner * fld.test("+"),
                                      None if self.i_outer is None else p.dt * sc * self.i_outer * fld.test)
        out[self.dphi] = -p.dt * sc * self.i_inner * self.dphi.test("-") * self.dS
        return out


class ElectrolyteCoefficients:
    """The c-dependent nodal coefficients of the pores in one vector-valued P1 function (value) and
    another (derivative d/dc), linearised about the Δc_l iterate: component k as a UFL expression is
    p_k + p'_k (Δc_l − Δc_frozen), whose derivative is exact with the vertex rule. One function
    instead of one per property keeps the coefficient packing of every form cheap.

    Components: κ (S m⁻¹), (2RT/F) κ ν / c (S m⁻¹ per mol m⁻³), D × 10¹² (µm² s⁻¹), 1 − t₊, and
    (c/c_ref)^α for every distinct α_a of the particles' kinetics (named ``g<α>``)."""

    def __init__(self, field: Field, props, temperature_K: float, c_ref: float, alphas):
        self.field, self.props, self.c_ref = field, props, c_ref
        self.alphas = sorted({float(a) for a in alphas})
        self.names = ["kappa", "kd", "D", "tm"] + [f"g{a!r}" for a in self.alphas]
        self.two_rt_f = 2.0 * GAS_CONSTANT * temperature_K / FARADAY
        n = len(self.names)
        Vv = fem.functionspace(field.mesh, ("Lagrange", 1, (n,)))
        self.value = fem.Function(Vv, name="electrolyte_properties")
        self.derivative = fem.Function(Vv, name="d_electrolyte_properties")
        self.frozen = fem.Function(field.V, name="delta_c_frozen")

    def expr(self, name: str):
        k = self.names.index(name)
        return self.value[k] + self.derivative[k] * (self.field.u - self.frozen)

    def evaluate(self, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Values and c-derivatives of every component at the concentrations ``c`` (mol m⁻³)."""
        pr = self.props
        k, dk = pr.conductivity(c), pr.dconductivity(c)
        t, dt = pr.transference_number(c), pr.dtransference_number(c)
        tf, dtf = pr.thermodynamic_factor(c), pr.dthermodynamic_factor(c)
        nu, dnu = (1.0 - t) * tf, -dt * tf + (1.0 - t) * dtf
        a = self.two_rt_f
        vals = [k, a * k * nu / c, pr.diffusivity(c) * 1e12, 1.0 - t]
        ders = [dk, a * (dk * nu / c + k * dnu / c - k * nu / c**2), pr.ddiffusivity(c) * 1e12, -dt]
        for al in self.alphas:
            r = c / self.c_ref
            vals.append(r**al)
            ders.append(al * r ** (al - 1.0) / self.c_ref)
        lo, hi = pr.c_range  # held constant beyond the property range: no slope there
        inside = (c > lo) & (c < hi)
        return np.column_stack(vals), np.column_stack(ders) * inside[:, None]

    def update(self, c_clipped: np.ndarray, iterate: np.ndarray):
        vals, ders = self.evaluate(c_clipped)
        self.value.x.array[:] = vals.reshape(-1)
        self.derivative.x.array[:] = ders.reshape(-1)
        self.frozen.x.array[:] = iterate


class ElectrolyteTransport(Term):
    """Salt and charge conservation in the pores (see the module docstring), with nodal κ(c),
    (2RT/F) κ ν / c, D(c), 1 − t₊(c) (:class:`ElectrolyteCoefficients`) refreshed at every Newton
    iterate in one NumPy pass."""

    def __init__(self, electrolyte: "ResolvedElectrolyte"):
        self.el = electrolyte
        self.fields = (electrolyte.c_l, electrolyte.dphi)

    def update(self, p: Problem):
        self.el.coefficients.update(self.el.clipped(), self.el.c_l.u.x.array)

    def residuals(self, p: Problem):
        el = self.el
        c, phi = el.c_l, el.dphi
        a0, a1, a2 = p.bdf
        k = {n: el.coefficients.expr(n) for n in ("kappa", "kd", "D", "tm")}
        n_l, sc = el.site_concentration, el.scale
        storage, salt, charge = [], [], []
        for tags, eps, b in el.regions:
            dxv = ufl.Measure("dx", domain=p.mesh, subdomain_data=p.cell_tags,
                              metadata={"quadrature_rule": "vertex", "quadrature_degree": 1})(tags)
            current = 1e6 * (-k["kappa"] * ufl.grad(phi.u) + k["kd"] * ufl.grad(c.u))  # A m⁻² (∇ in µm⁻¹)
            storage.append((eps / n_l) * (a0 * c.u + a1 * c.u_n + a2 * c.u_nm1) * c.test * dxv)
            salt.append(p.dt * b * ufl.inner(k["D"] / n_l * ufl.grad(c.u) + sc * k["tm"] * current,
                                             ufl.grad(c.test)) * dxv)
            charge.append(-p.dt * b * sc * ufl.inner(current, ufl.grad(phi.test)) * dxv)
        return {c: _sum(storage) + _sum(salt), phi: _sum(charge)}


# ---------------------------------------------------------------------------- the model part
class ResolvedElectrolyte:
    """Fields, terms and observables of the resolved electrolyte inside an
    :class:`~nmcfx.solver.electrode.ElectrodeModel` (which calls the three steps below)::

        el = ResolvedElectrolyte(model)          # before build_spaces: adds c_l and δφ_l
        model._ds = el.reacting_measures         # after build_spaces
        bv = el.reaction(i, theta_i, material_i) # one per particle, instead of ButlerVolmer
        el.add_transport()                       # salt and charge terms, δφ_l = 0 at the separator
    """

    SALT_RTOL = 1e-10  #: relative salt defect per step allowed (bounded through the block's 2-norm)

    def __init__(self, model):
        from nmcfx.geometries.electrode import CBD_TAG, ELECTROLYTE_TAG

        self.model = model
        s = model.settings
        el = model.electrode
        self.comm = model.comm
        has_cbd = self.comm.allreduce(len(el.cell_tags.find(CBD_TAG)), op=MPI.SUM) > 0
        self.pore_tags = (ELECTROLYTE_TAG,) + ((CBD_TAG,) if has_cbd else ())
        eps = s.cbd_porosity
        self.regions = [((ELECTROLYTE_TAG,), 1.0, 1.0)]
        if has_cbd:
            self.regions.append(((CBD_TAG,), eps, eps ** s.bruggeman_exponent))
        self.c0 = s.electrolyte_concentration_mol_m3
        self.temperature_K = model.material.temperature_K
        self.props = properties_for(s, self.temperature_K)
        self.site_concentration = model.material.site_concentration
        self.scale = theta_to_flux_scale(self.site_concentration)
        pb = model.problem
        self.c_l = pb.add_field(Field("delta_c_l", tags=self.pore_tags, transient=True))  # c_l − c_l,ref
        self.dphi = pb.add_field(Field("delta_phi_l", tags=self.pore_tags))
        self._coefficients = None

    # ------------------------------------------------------------------ construction
    OUTER = 100000  #: ds subdomain id offset of a particle's exterior reacting facets

    @property
    def reacting_measures(self):
        """Per particle: its whole reacting surface as a one-sided measure (particle cells)."""
        if not hasattr(self, "_dS"):
            self._build_measures()
        return [self._ds(t) for t in self._tags]

    def _build_measures(self):
        from nmcfx.geometries.electrode import COLLECTOR, SIDES

        from .electrode import reacting_facets

        m = self.model
        el = m.electrode
        self._tags = list(el.particle_tags)
        inner, outer, whole = [], [], []
        for tag in self._tags:
            a, b = interface_facets(m.mesh, el.cell_tags, el.facet_tags, tag, self.pore_tags, (COLLECTOR, SIDES))
            inner.append((tag, a))
            outer.append((tag + self.OUTER, b))
            whole.append((tag, reacting_facets(m.mesh, el.cell_tags, el.facet_tags, tag, tuple(self._tags),
                                               (COLLECTOR, SIDES))))
        self._dS = _vertex("dS", m.mesh, inner)
        # one ds subdomain-data list per form: the whole surfaces and the exterior parts, by id
        self._ds = _vertex("ds", m.mesh, whole + outer)
        self._has_outer = self.comm.allreduce(sum(len(b) for _, b in outer), op=MPI.SUM) > 0

    @property
    def coefficients(self) -> ElectrolyteCoefficients:
        """The pores' nodal coefficients (created once the spaces exist)."""
        if self._coefficients is None:
            self._coefficients = ElectrolyteCoefficients(self.c_l, self.props, self.temperature_K, self.c0,
                                                         [m.alpha_a for m in self.model.materials])
        return self._coefficients

    def reaction(self, index: int, theta: Field, material) -> InterfaceButlerVolmer:
        if not hasattr(self, "_dS"):
            self._build_measures()
        tag = self._tags[index]
        return InterfaceButlerVolmer(theta, self.model.phi_s, self.model.phi_l, self, self._dS(tag),
                                     self._ds(tag + self.OUTER) if self._has_outer else None, self._ds(tag), material)

    def add_transport(self):
        from nmcfx.geometries.electrode import SEPARATOR

        from .electrode import sub_facets_on

        m = self.model
        pb = m.problem
        self.transport = pb.add_term(ElectrolyteTransport(self))
        sep = m.electrode.facet_tags.find(SEPARATOR)
        self._separator_facets = sub_facets_on(self.dphi, sep)
        if self.comm.allreduce(len(self._separator_facets), op=MPI.SUM) == 0:
            raise InputError("electrode.electrolyte", "no electrolyte touches the separator: 'resolved' cannot run")
        pb.add_dirichlet(self.dphi, 0.0, self._separator_facets)

    def finish(self):
        """After the problem is initialised: weights of the observables."""
        from .exports import owned_weights

        m = self.model
        emaps = m.problem.entity_maps
        self._pore_w = []
        for tags, eps, _ in self.regions:
            dx = ufl.Measure("dx", domain=m.mesh, subdomain_data=m.electrode.cell_tags,
                             metadata={"quadrature_rule": "vertex", "quadrature_degree": 1})(tags)
            self._pore_w.append((eps, owned_weights(self.c_l, dx, emaps)))
        self.salt_weights = sum(eps * w for eps, w in self._pore_w)  # ∫ε φ_i dx (µm^d), the same as the storage
        self.pore_volume = self.comm.allreduce(float(self.salt_weights.sum()), op=MPI.SUM)  # ∫ε dx
        self.salt0 = self.c0 * self.pore_volume
        self.n_c_global = self.c_l.num_dofs
        V = self.dphi.V
        fdim = self.dphi.mesh.topology.dim - 1
        dofs = fem.locate_dofs_topological(V, fdim, self._separator_facets)
        self._separator_dofs = dofs[dofs < V.dofmap.index_map.size_local]

    # ------------------------------------------------------------------ state
    def clipped(self) -> np.ndarray:
        """c_l = c_l,ref + Δc_l at the nodes, within the property set's range (mol m⁻³)."""
        lo, hi = self.props.c_range
        return np.clip(self.c0 + self.c_l.u.x.array, max(lo, 1.0), hi)  # ≥ 1 mol/m³: ∇ln c stays finite

    @property
    def fields(self) -> tuple[Field, Field]:
        return self.c_l, self.dphi

    def set_initial(self):
        for f in (self.c_l.u, self.c_l.u_n, self.c_l.u_nm1):
            f.x.array[:] = 0.0  # c_l = c_l,ref
        for f in (self.dphi.u, self.dphi.u_n):
            f.x.array[:] = 0.0

    def block_tolerances(self, dt: float, charge_per_s: float) -> list[float]:
        """Newton tolerances of the c_l and δφ_l blocks: the salt defect of a step ≤ SALT_RTOL of the
        salt (|Σ r| ≤ √N ‖r‖), the charge defect as for φ_s."""
        salt = self.salt0 / self.site_concentration  # residual units (θ·µm^d)
        return [self.SALT_RTOL * salt / math.sqrt(max(self.n_c_global, 1)), dt * charge_per_s]

    # ------------------------------------------------------------------ observables
    def salt_change(self) -> float:
        """∫ ε (c_l − c_l,ref) dx (mol m⁻³ µm^d): zero when salt is conserved."""
        w = self.salt_weights
        return self.comm.allreduce(float(w @ self.c_l.u.x.array[: len(w)]), op=MPI.SUM)

    def concentration_range(self) -> tuple[float, float]:
        n = self.c_l.V.dofmap.index_map.size_local
        arr = self.c0 + self.c_l.u.x.array[:n]
        lo = float(arr.min()) if n else math.inf
        hi = float(arr.max()) if n else -math.inf
        return self.comm.allreduce(lo, op=MPI.MIN), self.comm.allreduce(hi, op=MPI.MAX)

    def potential_drop(self) -> float:
        """max |φ_l − φ_ref| over the pores (V)."""
        n = self.dphi.V.dofmap.index_map.size_local
        arr = self.dphi.u.x.array[:n]
        return self.comm.allreduce(float(np.abs(arr).max()) if n else 0.0, op=MPI.MAX)

    def separator_current(self) -> float:
        """Ionic current leaving through the separator (A m⁻² × µm^(d-1), + on charge), from the
        discrete charge balance at the separator DOFs (what the pores deliver there)."""
        pb = self.model.problem
        i = pb.unknowns.index(self.dphi)
        b = dolfinx.fem.petsc.assemble_vector(pb.problem.F[i])
        b.ghostUpdate(addv=PETSc.InsertMode.ADD, mode=PETSc.ScatterMode.REVERSE)
        val = float(b.array_r[self._separator_dofs].sum()) if len(self._separator_dofs) else 0.0
        b.destroy()
        dt = float(pb.dt.value)
        return -self.comm.allreduce(val, op=MPI.SUM) / (dt * self.scale)

    def interface_current(self) -> float:
        """Σ of the reaction currents that cross NMC|pore faces (A m⁻² × µm^(d-1))."""
        if not hasattr(self, "_inner_forms"):
            emaps = self.model.problem.entity_maps
            self._inner_forms = [fem.form(r.i_inner * r.dS, entity_maps=emaps) for r in self.model.reactions]
        return self.comm.allreduce(sum(fem.assemble_scalar(f) for f in self._inner_forms), op=MPI.SUM)

    def record_columns(self, dt: float) -> dict:
        """The electrolyte's columns of timeseries.csv."""
        lo, hi = self.concentration_range()
        change = self.salt_change()
        out = {"c_l_min_mol_m3": lo, "c_l_max_mol_m3": hi, "c_l_mean_mol_m3": self.c0 + change / self.pore_volume,
               "electrolyte_potential_drop_V": self.potential_drop(), "salt_balance_error": change / self.salt0}
        if dt > 0:  # relative to the current, at least that of C/20 (rests and holds stay meaningful)
            inner = self.interface_current()
            sep = self.separator_current()
            m = self.model
            out["electrolyte_charge_balance_error"] = (sep - inner) / max(abs(inner), m._j_ref * m.perimeter)
        else:
            out["electrolyte_charge_balance_error"] = 0.0
        return out

    def phi_l_offset(self) -> float:
        """φ_ref (V): φ_l = φ_ref + δφ_l."""
        return float(self.model.phi_l.u.x.array[0])


def _sum(items):
    items = list(items)
    out = items[0]
    for it in items[1:]:
        out = out + it
    return out
