"""The composite electrode on the problem core (Sharma et al., Nano Lett. 2022; physics.md §4).

Fields (:class:`~nmcfx.solver.problem.Field`):

* θ_p — Li occupancy in every NMC particle p (its own submesh, transient), with the
  particle's material (D_chem, V_oc, i0) and scaling S;
* φ_s — electron potential in the electronic conductors NMC ∪ CBD (one submesh), φ_s = 0 at
  the current collector;
* φ_l — the electrolyte potential, one real unknown (electrolyte model ``uniform``: φ_l and
  c_l constant in space, what 004 argues for at C/20); the cell voltage is φ_s(collector) − φ_l = −φ_l.

Terms: per particle :class:`TimeDerivative` + :class:`NonlinearDiffusion` (the §1 transport)
and :class:`ButlerVolmer` on the particle's faces that touch the electrolyte or the porous CBD
(the same current enters θ_p and leaves φ_s); :class:`Conduction` of φ_s with σ_CBD (constant)
and σ_NMC(θ_p) following the local Li content; :class:`CurrentControl` on φ_l (galvanostatic:
Σ reaction currents = applied current; potentiostatic: cell voltage = V). NMC|CBD and NMC|NMC
contacts carry φ_s continuously (one Lagrange field).

Usage::

    electrode = electrode_from_config({"shape": "electrode", "preset": "sharma2022"})
    model = ElectrodeModel(electrode, [material] * len(electrode.particles), ElectrodeSettings())
    model.set_initial(0.98)
    model.set_control("current", j_mean)   # A m⁻² over the reacting surface
    model.solve_step(dt, None, 1)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import ufl
from mpi4py import MPI
from petsc4py import PETSc

import dolfinx
from dolfinx import fem

from nmcfx.errors import InputError
from nmcfx.materials.constants import FARADAY, GAS_CONSTANT

from .exports import BoundaryExtremes, FieldIntegral, PointProbe, owned_weights
from .problem import Field, Problem, StepResult, Term
from .simulation import Simulation
from .terms import (
    I0_CLIP,
    THETA_CLIP,
    ButlerVolmer,
    Conduction,
    CurrentControl,
    NonlinearDiffusion,
    TimeDerivative,
    theta_to_flux_scale,
)

ELECTROLYTE_MODELS = ("uniform", "resolved")
#: σ_NMC history: "reversible" σ(θ) of the local θ now; "irreversible" σ(min θ reached so far) — the
#: metallic state of the first delithiation is kept on re-lithiation (Nishizawa et al., Chem. Commun.
#: 1998, 1631, on Li1−xCoO2; 004's ref. 40)
CONDUCTIVITY_HISTORIES = ("reversible", "irreversible")


@dataclass(frozen=True)
class ElectrodeSettings:
    """The ``[electrode]`` table: electron and electrolyte physics of a composite electrode."""

    electrolyte: str = "uniform"  # φ_l, c_l uniform (004 at C/20) | "resolved" (solver/electrolyte.py)
    cbd_conductivity_S_m: float = 1.0e4  # σ_CBD (004: ~1e4 S m⁻¹)
    nmc_conductivity_csv: str | None = None  # σ_NMC(θ) table (default: materials/data/nmc_conductivity_default.csv)
    near_surface_depth_um: float = 0.5  # depth of the near-surface mean θ (the optical proxy)
    onset_drop: float = 0.05  # a particle's reaction onset: its mean θ has dropped this much in a charge
    # σ_NMC of the local θ ("reversible") or of the lowest θ each node has reached ("irreversible")
    nmc_conductivity_history: str = "reversible"
    # resolved electrolyte (solver/electrolyte.py; defaults and provenance there and in materials/data/README.md)
    electrolyte_concentration_mol_m3: float = 1000.0  # initial = reference c_l (i0_ref applies there)
    cbd_porosity: float = 0.5  # electrolyte volume fraction of the CBD
    bruggeman_exponent: float = 1.5  # κ_eff = κ ε^b, D_eff = D ε^b in the CBD
    electrolyte_csv: str | None = None  # own property table (default: LiPF6, Valøen & Reimers 2005)
    electrolyte_conductivity_S_m: float | None = None  # constant overrides of single properties
    electrolyte_diffusivity_m2_s: float | None = None
    electrolyte_transference_number: float | None = None
    electrolyte_thermodynamic_factor: float | None = None

    @classmethod
    def from_dict(cls, d: dict | None) -> "ElectrodeSettings":
        d = dict(d or {})
        names = set(cls.__dataclass_fields__)
        extra = set(d) - names
        if extra:
            raise InputError("electrode", f"unknown key(s) {sorted(extra)}; allowed: {sorted(names)}")
        out = {}
        if "electrolyte" in d:
            if d["electrolyte"] not in ELECTROLYTE_MODELS:
                raise InputError("electrode.electrolyte", f"must be one of {list(ELECTROLYTE_MODELS)}, "
                                                          f"got {d['electrolyte']!r}")
            out["electrolyte"] = d["electrolyte"]
        if "nmc_conductivity_history" in d:
            if d["nmc_conductivity_history"] not in CONDUCTIVITY_HISTORIES:
                raise InputError("electrode.nmc_conductivity_history", f"must be one of {list(CONDUCTIVITY_HISTORIES)}, "
                                                                       f"got {d['nmc_conductivity_history']!r}")
            out["nmc_conductivity_history"] = d["nmc_conductivity_history"]
        for key, lo, hi in (("cbd_conductivity_S_m", 0.0, 1e9), ("near_surface_depth_um", 0.0, 100.0),
                            ("onset_drop", 0.0, 0.5)):
            if key in d:
                v = d[key]
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo < v <= hi:
                    raise InputError(f"electrode.{key}", f"must be a number in ({lo:g}, {hi:g}], got {v!r}")
                out[key] = float(v)
        if "nmc_conductivity_csv" in d:
            if not isinstance(d["nmc_conductivity_csv"], str):
                raise InputError("electrode.nmc_conductivity_csv", "must be a path to a CSV (theta,sigma_S_m)")
            out["nmc_conductivity_csv"] = d["nmc_conductivity_csv"]
        from .electrolyte import validate_settings

        out.update(validate_settings(d))
        return cls(**out)

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------- facets
def reacting_facets(mesh, cell_tags, facet_tags, particle_tag: int, non_reacting_regions: tuple[int, ...],
                    blocked_boundaries: tuple[int, ...]) -> np.ndarray:
    """(cell, local facet) pairs of the owned facets where particle ``particle_tag`` reacts: facets
    shared with a cell of another region that is not in ``non_reacting_regions`` (another particle),
    and exterior facets not tagged with one of ``blocked_boundaries`` (collector, box sides)."""
    tdim = mesh.topology.dim
    fdim = tdim - 1
    mesh.topology.create_connectivity(fdim, tdim)
    mesh.topology.create_connectivity(tdim, fdim)
    f2c = mesh.topology.connectivity(fdim, tdim)
    c2f = mesh.topology.connectivity(tdim, fdim)
    n_cells = mesh.topology.index_map(tdim).size_local + mesh.topology.index_map(tdim).num_ghosts
    region = np.full(n_cells, -1, dtype=np.int64)
    region[cell_tags.indices] = cell_tags.values
    cells = cell_tags.find(particle_tag)
    n_owned_facets = mesh.topology.index_map(fdim).size_local
    blocked = set()
    if facet_tags is not None:
        for b in blocked_boundaries:
            blocked.update(facet_tags.find(b).tolist())
    out = []
    for c in cells:
        for lf, f in enumerate(c2f.links(c)):
            if f >= n_owned_facets:
                continue
            cs = f2c.links(f)
            if len(cs) == 1:
                if f in blocked:
                    continue
            else:
                other = cs[0] if cs[1] == c else cs[1]
                r = region[other]
                if r == particle_tag or r in non_reacting_regions:
                    continue
            out += [c, lf]
    return np.asarray(out, dtype=np.int32)


def sub_facets_on(field: Field, parent_facets: np.ndarray) -> np.ndarray:
    """Facets of ``field``'s submesh that coincide with ``parent_facets`` of the parent mesh."""
    sub = field.mesh
    parent = field.parent
    fdim = sub.topology.dim - 1
    parent.topology.create_connectivity(fdim, 0)
    pf2v = parent.topology.connectivity(fdim, 0)
    wanted = {tuple(sorted(pf2v.links(f))) for f in parent_facets}
    sub.topology.create_connectivity(fdim, sub.topology.dim)
    sub.topology.create_connectivity(fdim, 0)
    candidates = dolfinx.mesh.exterior_facet_indices(sub.topology)
    sf2v = sub.topology.connectivity(fdim, 0)
    out = []
    for f in candidates:
        verts = sf2v.links(f)
        pv = field.vertex_map.sub_topology_to_topology(np.asarray(verts, dtype=np.int32), inverse=False)
        if tuple(sorted(pv)) in wanted:
            out.append(f)
    return np.asarray(out, dtype=np.int32)


# ---------------------------------------------------------------------------- the model
class _BatchedNodalUpdate(Term):
    """Refreshes the nodal coefficients of every particle in one vectorised pass per material
    (D_chem, V_oc, i0 and σ_NMC of all particles at once) instead of one small pass per term."""

    def __init__(self, model: "ElectrodeModel"):
        self.model = model

    def residuals(self, problem):
        return {}

    def setup(self, problem):
        m = self.model
        for t in m.diffusions + m.reactions + [m.conduction]:
            t.auto_update = False
        groups: dict[int, list[int]] = {}
        for i, mat in enumerate(m.materials):
            groups.setdefault(id(mat), []).append(i)
        self.groups = [(m.materials[idx[0]], idx) for idx in groups.values()]
        nodal = {id(th): coeff for th, frozen, coeff in m.conduction._nodal}
        self.sigma = [(nodal[id(th)], next(fz for t2, fz, _ in m.conduction._nodal if t2 is th)) for th in m.thetas]

    def update(self, problem):
        m = self.model
        for mat, idx in self.groups:
            raw = [m.thetas[i].u.x.array for i in idx]
            sizes = np.cumsum([0] + [len(a) for a in raw])
            cat = np.concatenate(raw)
            th = np.clip(cat, THETA_CLIP, 1.0 - THETA_CLIP)
            th_i0 = np.clip(cat, I0_CLIP, 1.0 - I0_CLIP)  # as ButlerVolmer.update
            bv = m.reactions[idx[0]]
            cr = bv.concentration_ratio
            values = {"D": mat.D_chem(th) * 1e12, "dD": mat.dD_chem(th) * 1e12, "U": mat.ocv(th),
                      "dU": mat.docv(th), "i0": mat.i0(th_i0, cr), "di0": mat.di0(th_i0, cr),
                      "s": m.sigma(th), "ds": m.sigma.derivative(th)}
            if m.theta_min is not None:  # irreversible: σ(min(θ, θ_min)), σ' only where θ is below θ_min
                lowest = np.clip(np.concatenate([m.theta_min[i].x.array for i in idx]), THETA_CLIP, 1.0 - THETA_CLIP)
                below = th < lowest
                values["s"] = m.sigma(np.minimum(th, lowest))
                values["ds"] = np.where(below, values["ds"], 0.0)
            for j, i in enumerate(idx):
                sl = slice(sizes[j], sizes[j + 1])
                d, r = m.diffusions[i], m.reactions[i]
                d.D.value.x.array[:] = values["D"][sl]
                d.D.derivative.x.array[:] = values["dD"][sl]
                r.frozen.x.array[:] = raw[j]
                r.U.value.x.array[:] = values["U"][sl]
                r.U.derivative.x.array[:] = values["dU"][sl]
                r.i0.value.x.array[:] = values["i0"][sl]
                r.i0.derivative.x.array[:] = values["di0"][sl]
                coeff, frozen = self.sigma[i]
                frozen.x.array[:] = raw[j]
                coeff.value.x.array[:] = values["s"][sl]
                coeff.derivative.x.array[:] = values["ds"][sl]


class ElectrodeModel:
    """The electrode problem; the interface the time loop needs mirrors :class:`TransportSolver`."""

    def __init__(self, electrode, materials, settings: ElectrodeSettings, *, conductivity=None, degree: int = 1,
                 mass_lumping: bool = True, petsc_options: dict | None = None, prefix: str = "nmcfx_electrode_",
                 concentration_ratio: float = 1.0):
        from nmcfx.geometries.electrode import CBD_TAG, COLLECTOR, SIDES
        from nmcfx.materials.conductivity import load_conductivity_table

        self.electrode = electrode
        self.mesh = mesh = electrode.mesh
        self.comm = mesh.comm
        self.settings = settings
        self.dim = electrode.dim
        self.materials = list(materials)
        if len(self.materials) != len(electrode.particles):
            raise ValueError("one material per particle")
        self.material = self.materials[0]
        self.sigma = conductivity or load_conductivity_table(settings.nmc_conductivity_csv)
        self.theta_min = None  # irreversible σ history: per particle, the lowest θ each node has reached
        self.kinetics = True
        tags = electrode.particle_tags
        self.names = [p["name"] for p in electrode.particles]
        has_cbd = self.comm.allreduce(len(electrode.cell_tags.find(CBD_TAG)), op=MPI.SUM) > 0
        solid = tuple(tags) + ((CBD_TAG,) if has_cbd else ())

        self.problem = pb = Problem(mesh, cell_tags=electrode.cell_tags, petsc_options=petsc_options, prefix=prefix,
                                    atol_measure=electrode.active_measure, block_tolerances=self._block_tolerances)
        self.counters = pb.counters
        self.dt, self.bdf = pb.dt, pb.bdf
        self.thetas = [pb.add_field(Field(f"theta_{n}", tags=(t,), degree=degree, transient=True))
                       for n, t in zip(self.names, tags)]
        self.phi_s = pb.add_field(Field("phi_s", tags=solid, keep_history=True))
        self.phi_l = pb.add_field(Field("phi_l", is_real=True, keep_history=True))
        self.electrolyte = None  # resolved electrolyte: φ_l is then the separator's potential φ_ref
        if settings.electrolyte == "resolved":
            from .electrolyte import ResolvedElectrolyte

            self.electrolyte = ResolvedElectrolyte(self)  # adds the fields c_l and δφ_l
        pb.build_spaces()

        self.reactions = []
        if self.electrolyte is None:
            # one subdomain-data list for every reacting-facet measure (a form allows one per integral type)
            ds_data = [(tag, reacting_facets(mesh, electrode.cell_tags, electrode.facet_tags, tag, tuple(tags),
                                             (COLLECTOR, SIDES))) for tag in tags]
            ds_all = ufl.Measure("ds", domain=mesh, subdomain_data=ds_data,
                                 metadata={"quadrature_rule": "vertex", "quadrature_degree": 1})
            self._ds = [ds_all(tag) for tag in tags]
        else:
            self._ds = self.electrolyte.reacting_measures
        for i, (th, ds, mat) in enumerate(zip(self.thetas, self._ds, self.materials)):
            pb.add_term(TimeDerivative(th, lumped=mass_lumping))
            pb.add_term(NonlinearDiffusion(th, mat))
            bv = (ButlerVolmer(th, self.phi_s, self.phi_l, [(ds, 1.0)], mat, concentration_ratio=concentration_ratio)
                  if self.electrolyte is None else self.electrolyte.reaction(i, th, mat))
            self.reactions.append(pb.add_term(bv))
        self.diffusions = [t for t in pb.terms if isinstance(t, NonlinearDiffusion)]
        regions = [((CBD_TAG,), settings.cbd_conductivity_S_m)] if has_cbd else []
        regions += [((t,), (th, self.sigma, self.sigma.derivative)) for th, t in zip(self.thetas, tags)]
        pb.add_term(Conduction(self.phi_s, regions, self.material.site_concentration))
        f = FARADAY / (GAS_CONSTANT * self.material.temperature_K)
        self.control = pb.add_term(CurrentControl(self.phi_l, self.reactions, -self.phi_l.u,
                                                  cv_scale=self.material.i0_ref_A_m2 * f))
        # φ_s = 0 at the collector: the solid's facets on the parent's collector facets
        collector = electrode.facet_tags.find(COLLECTOR) if electrode.facet_tags is not None else np.zeros(0, np.int32)
        self._collector_facets = sub_facets_on(self.phi_s, collector)
        if self.comm.allreduce(len(self._collector_facets), op=MPI.SUM) == 0:
            raise InputError("geometry", "no electronic conductor touches the current collector")
        pb.add_dirichlet(self.phi_s, 0.0, self._collector_facets)
        if self.electrolyte is not None:
            self.electrolyte.add_transport()  # salt and charge in the pores, δφ_l = 0 at the separator
        self.conduction = next(t for t in pb.terms if isinstance(t, Conduction))
        if settings.nmc_conductivity_history == "irreversible":
            self.theta_min = [fem.Function(th.V, name=f"theta_min_{n}") for th, n in zip(self.thetas, self.names)]
            for th, low in zip(self.thetas, self.theta_min):
                low.x.array[:] = 1.0
                pb.extra_state[low.name] = low  # checkpointed with the fields
        pb.add_term(_BatchedNodalUpdate(self))
        pb.initialise()
        self.petsc_options = pb.petsc_options
        if self.electrolyte is not None:
            self.electrolyte.finish()

        # observables
        self._scale = theta_to_flux_scale(self.material.site_concentration)
        emaps = pb.entity_maps
        self._integrals = [FieldIntegral(th, entity_maps=emaps) for th in self.thetas]
        self.particle_measure = [I.measure for I in self._integrals]
        self.volume = float(sum(self.particle_measure))
        self._surface = [BoundaryExtremes(th) for th in self.thetas]
        self._surface_w = [self._boundary_weights(th) for th in self.thetas]
        self._near_w = [self._near_surface_weights(th, settings.near_surface_depth_um) for th in self.thetas]
        one = fem.Constant(mesh, PETSc.ScalarType(1.0))
        self.reacting_measure = [self.comm.allreduce(fem.assemble_scalar(fem.form(one * ds)), op=MPI.SUM)
                                 for ds in self._ds]
        self.perimeter = float(sum(self.reacting_measure))
        self._current_forms = [fem.form(r.amps_form(), entity_maps=emaps) for r in self.reactions]
        self._collector_dofs = self._owned_collector_dofs()
        self._j_ref = self.material.current_density_for_c_rate(0.05, self.volume, self.perimeter)
        self._probes: dict[str, PointProbe] = {}

    # ------------------------------------------------------------------ construction helpers
    #: relative charge defect per step allowed in the electron and control equations (2-norm of the
    #: block; the balance itself is its sum, checked ≤ 1e-10 in the tests)
    CHARGE_RTOL = 1e-11

    def _block_tolerances(self, problem) -> list[float]:
        """Newton tolerance per block: θ blocks bound the Li defect of a step (the problem's snes_atol,
        θ·µm^d); the φ_s and φ_l blocks bound the charge defect of a step relative to the charge the
        step passes (at least the charge of a C/20 step, so that rests and holds are bounded too)."""
        atol = float(problem.petsc_options["snes_atol"])
        dt = float(problem.dt.value)
        j = max(abs(float(self.control.j_set.value)), self._j_ref)
        current = self.CHARGE_RTOL * self._scale * j * self.perimeter  # θ·µm^d per s
        # the control row is a current (CC) or a scaled voltage difference (CV: 1e-12 V)
        cv = float(self.control.w_cv.value) * self.control.cv_scale * self._scale * self.perimeter * 1e-12
        extra = [] if self.electrolyte is None else self.electrolyte.block_tolerances(dt, current)  # c_l, δφ_l
        return [atol] * len(self.thetas) + [dt * current, current + cv] + extra
    def _boundary_weights(self, th: Field) -> np.ndarray:
        ds = ufl.Measure("ds", domain=th.mesh, metadata={"quadrature_rule": "vertex", "quadrature_degree": 1})
        return owned_weights(th, ds)

    def _near_surface_weights(self, th: Field, depth: float) -> np.ndarray:
        """∫φ_i over the band within ``depth`` µm of the particle's boundary (P1 nodal weights of
        a cell indicator: cells whose centre lies within the band)."""
        sub = th.mesh
        tdim = sub.topology.dim
        fdim = tdim - 1
        sub.topology.create_connectivity(fdim, tdim)
        bfacets = dolfinx.mesh.exterior_facet_indices(sub.topology)
        bverts = dolfinx.mesh.compute_incident_entities(sub.topology, bfacets, fdim, 0)
        sub.topology.create_connectivity(0, tdim)
        x = sub.geometry.x
        vx = dolfinx.mesh.entities_to_geometry(sub, 0, bverts).reshape(-1)
        pts = x[vx] if len(vx) else np.zeros((0, 3))
        gathered = self.comm.allgather(pts)
        allpts = np.concatenate(gathered) if gathered else np.zeros((0, 3))
        n_cells = sub.topology.index_map(tdim).size_local + sub.topology.index_map(tdim).num_ghosts
        mid = dolfinx.mesh.compute_midpoints(sub, tdim, np.arange(n_cells, dtype=np.int32))
        dist = _nearest_distance(mid, allpts)
        Q = fem.functionspace(sub, ("DG", 0))
        ind = fem.Function(Q)
        ind.x.array[:] = (dist <= depth).astype(float)
        dx = ufl.Measure("dx", domain=sub, metadata={"quadrature_degree": 2})
        vec = fem.assemble_vector(fem.form(ind * th.test * dx))
        vec.scatter_reverse(dolfinx.la.InsertMode.add)
        return vec.array[: th.V.dofmap.index_map.size_local].copy()

    def _owned_collector_dofs(self) -> np.ndarray:
        V = self.phi_s.V
        fdim = self.phi_s.mesh.topology.dim - 1
        dofs = fem.locate_dofs_topological(V, fdim, self._collector_facets)
        return dofs[dofs < V.dofmap.index_map.size_local]

    # ------------------------------------------------------------------ controls
    def set_control(self, mode: str, value: float):
        """"current": mean current density over the reacting surfaces (A m⁻², + = charge);
        "voltage": cell voltage (V vs Li/Li⁺)."""
        if mode == "current":
            self.control.set_current(value)
        elif mode == "voltage":
            self.control.set_voltage(value)
            # Newton starts every step from the last accepted potentials: start the hold at its voltage
            # (and its history too: Newton's guess extrapolates the last two steps, which would push
            # the jump to the hold voltage further by dt/dt_prev)
            for f in (self.phi_l.u, self.phi_l.u_n, self.phi_l.u_nm1):
                if f is not None:
                    f.x.array[:] = -value
        else:
            raise ValueError(mode)

    # ------------------------------------------------------------------ state and stepping
    @property
    def transient_fields(self):
        return self.thetas

    def set_initial(self, theta0):
        for th in self.thetas:
            for f in (th.u, th.u_n, th.u_nm1):
                if callable(theta0):
                    f.interpolate(theta0)
                else:
                    f.x.array[:] = float(theta0)
        if self.theta_min is not None:  # the history starts at the initial state
            for th, low in zip(self.thetas, self.theta_min):
                low.x.array[:] = th.u.x.array
        self.problem.update_coefficients()
        v = self.voltage_at_rest()
        self.phi_s.u.x.array[:] = 0.0
        self.phi_l.u.x.array[:] = -v
        for f in (self.phi_s, self.phi_l):
            f.u_n.x.array[:] = f.u.x.array
            f.u_nm1.x.array[:] = f.u.x.array
        if self.electrolyte is not None:
            self.electrolyte.set_initial()

    def solve_step(self, dt: float, dt_prev: float | None, order: int, guess=None) -> StepResult:
        """One implicit step of every field; ``guess``: predicted θ arrays (one per particle) or None."""
        self.problem.set_time_step(dt, dt_prev, order)
        for i, th in enumerate(self.thetas):
            th.u.x.array[:] = guess[i] if guess is not None else th.u_n.x.array
        # Newton starts from the potentials extrapolated linearly from the last two accepted steps
        # (they move fast where particles saturate or become insulating); without history (first step
        # of a protocol step: the time loop passes no dt_prev) from the last accepted ones
        for f in (self.phi_s, self.phi_l):
            if dt_prev:
                f.u.x.array[:] = f.u_n.x.array + (dt / dt_prev) * (f.u_n.x.array - f.u_nm1.x.array)
            else:
                f.u.x.array[:] = f.u_n.x.array
        if self.electrolyte is not None:  # Δc_l and δφ_l start from their last accepted values
            for f in self.electrolyte.fields:
                f.u.x.array[:] = f.u_n.x.array
        res = self.problem.solve()
        if res.converged:
            ok = all(bool(th.u.x.array.min() > 0.0 and th.u.x.array.max() < 1.0) for th in self.thetas
                     if th.u.x.array.size)
            res.converged = bool(self.comm.allreduce(ok, op=MPI.LAND))
        return res

    def close(self) -> None:
        """Free the solver's PETSc objects now (collective; :meth:`Problem.close`)."""
        self.problem.close()

    def accept(self):
        """After an accepted step (never inside Newton): shift the histories; with the irreversible
        σ history, lower each node's θ_min to its new θ."""
        if self.theta_min is not None:
            for th, low in zip(self.thetas, self.theta_min):
                np.minimum(low.x.array, th.u.x.array, out=low.x.array)
        self.problem.accept()

    # ------------------------------------------------------------------ observables
    def conductivity_theta(self, i: int) -> np.ndarray:
        """The θ (local DOF array) at which particle ``i``'s σ_NMC is evaluated: θ itself, or
        min(θ, θ_min) with the irreversible history."""
        u = self.thetas[i].u.x.array
        return u if self.theta_min is None else np.minimum(u, self.theta_min[i].x.array)

    def integral_theta(self) -> float:
        """Σ_p ∫θ_p dx (µm^d): the Li in all particles, in site units."""
        return float(sum(I() for I in self._integrals))

    def particle_means(self) -> np.ndarray:
        return np.array([I() / m for I, m in zip(self._integrals, self.particle_measure)])

    def theta_mean(self) -> float:
        return self.integral_theta() / self.volume

    def _weighted_means(self, weights) -> np.ndarray:
        vals = np.array([float(w @ th.u.x.array[: len(w)]) for w, th in zip(weights, self.thetas)])
        meas = np.array([float(w.sum()) for w in weights])
        tot = np.empty(2 * len(vals))
        self.comm.Allreduce(np.concatenate([vals, meas]), tot, op=MPI.SUM)
        n = len(vals)
        return tot[:n] / np.where(tot[n:] > 0, tot[n:], np.nan)

    def particle_surface_means(self) -> np.ndarray:
        return self._weighted_means(self._surface_w)

    def particle_near_surface_means(self) -> np.ndarray:
        return self._weighted_means(self._near_w)

    def surface_min_max(self) -> tuple[float, float]:
        lo, hi = zip(*(s() for s in self._surface))
        return float(min(lo)), float(max(hi))

    def particle_currents(self) -> np.ndarray:
        """Reaction current of every particle, ∫ i ds (A m⁻² × µm^(d-1), + = charge)."""
        vals = np.array([fem.assemble_scalar(f) for f in self._current_forms])
        out = np.empty_like(vals)
        self.comm.Allreduce(vals, out, op=MPI.SUM)
        return out

    def boundary_outflow(self) -> float:
        """Rate of change of −Σ∫θ (µm^d s⁻¹): the reaction currents in θ units."""
        return float(self.particle_currents().sum()) * self._scale

    def current_density(self) -> float:
        """Mean reaction current density over the reacting surfaces (A m⁻², + = charge)."""
        return float(self.particle_currents().sum()) / self.perimeter

    def collector_current(self) -> float:
        """Current through the collector (A m⁻² × µm^(d-1)) from the discrete electron balance: the
        residual of the φ_s equation at the collector's DOFs (exactly what the conductors deliver)."""
        F = self.problem.problem.F
        i = self.problem.unknowns.index(self.phi_s)
        b = dolfinx.fem.petsc.assemble_vector(F[i]) if isinstance(F, list) else None
        b.ghostUpdate(addv=PETSc.InsertMode.ADD, mode=PETSc.ScatterMode.REVERSE)
        val = float(b.array_r[self._collector_dofs].sum()) if len(self._collector_dofs) else 0.0
        b.destroy()
        dt = float(self.dt.value)
        # Σ over all DOFs of the residual is ∫ i ds; at convergence every non-collector entry is 0
        return self.comm.allreduce(val, op=MPI.SUM) / (dt * self._scale)

    @property
    def voltage(self) -> float:
        """Cell voltage φ_s(collector) − φ_l (V vs Li/Li⁺)."""
        return float(-self.phi_l.u.x.array[0])

    def voltage_at_rest(self) -> float:
        """Surface-weighted V_oc of all particles (the open-circuit cell voltage at uniform θ)."""
        tot = meas = 0.0
        for w, th, mat in zip(self._surface_w, self.thetas, self.materials):
            tot += float(w @ mat.ocv(np.clip(th.u.x.array[: len(w)], 1e-6, 1 - 1e-6)))
            meas += float(w.sum())
        return self.comm.allreduce(tot, op=MPI.SUM) / self.comm.allreduce(meas, op=MPI.SUM)

    def potential_drop(self) -> float:
        """Largest φ_s in the solid (V): the ohmic drop from the farthest point to the collector."""
        arr = self.phi_s.u.x.array
        hi = float(np.abs(arr).max()) if arr.size else 0.0
        return self.comm.allreduce(hi, op=MPI.MAX)

    def add_probe(self, name: str, points):
        self._probes[name] = PointProbe(self.thetas[0].mesh, np.asarray(points, dtype=float))

    @property
    def num_dofs(self) -> int:
        return self.problem.num_dofs

    @property
    def theta_fields(self):
        return [th.u for th in self.thetas]


def particle_materials(electrode, base_material, material_cfg_for=None) -> list:
    """One material per particle: the base material, with a particle's own ``scaling_S`` if given."""
    out = []
    for p in electrode.particles:
        m = base_material
        if p.get("scaling_S") is not None:
            m = m.with_(scaling_S=p["scaling_S"])
        if p.get("material") not in (None, base_material.name) and material_cfg_for is not None:
            m = material_cfg_for(p["material"], p)
        out.append(m)
    return out


# ---------------------------------------------------------------------------- time loop
class Record(dict):
    """One accepted time step of an electrode run (a row of timeseries.csv); keys read as attributes."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


def particle_quantities(names) -> tuple[str, ...]:
    """Per-particle quantities a stop condition may watch (``theta_mean_T3 <= 0.5``)."""
    return tuple(f"{q}_{n}" for n in names for q in ("theta_mean", "theta_surface", "theta_near"))


class ElectrodeSimulation(Simulation):
    """The time loop of :class:`Simulation` on an :class:`ElectrodeModel`: the same adaptive
    steps, events, Li ledger and checkpoints; the electrode's observables and records."""

    def _setup(self, center):  # noqa: ARG002
        m = self.solver
        self.dim = m.dim
        self.area = m.volume  # total NMC measure (µm² or µm³)
        self.perimeter = m.perimeter  # total reacting surface
        self.reactive_sectors = []
        self.sector_weights = {}
        self.names = list(m.names)
        self._j_per_mA_g = self.material.current_density_for_specific_current(1.0, self.area, self.perimeter)
        rho = self.material.density_g_cm3 * 1e6  # g m⁻³
        # particle current (A m⁻² × µm^(d-1)) → mA per g of that particle
        um = 1e-6
        self._per_particle_mA_g = np.array([
            1e3 * um ** (self.dim - 1) / (rho * a * um ** self.dim) for a in m.particle_measure])

    def record_from_dict(self, d: dict):
        return Record(d)

    def observe(self) -> dict:
        m = self.solver
        cur = m.particle_currents()
        total = float(cur.sum())
        current = total / m.perimeter / self._j_per_mA_g
        smin, smax = m.surface_min_max()
        obs = {"theta_mean": m.theta_mean(), "theta_surface_min": smin, "theta_surface_max": smax,
               "voltage_V": m.voltage, "current_mA_g": current, "abs_current_mA_g": abs(current),
               "potential_drop_V": m.potential_drop()}
        for name, mean, surf, near, i_p, f in zip(self.names, m.particle_means(), m.particle_surface_means(),
                                                   m.particle_near_surface_means(), cur, self._per_particle_mA_g):
            obs[f"theta_mean_{name}"] = float(mean)
            obs[f"theta_surface_{name}"] = float(surf)
            obs[f"theta_near_{name}"] = float(near)
            obs[f"current_mA_g_{name}"] = float(i_p * f)
        obs["_sum_particle_currents"] = total
        return obs

    def _record(self, obs: dict, k: int, dt: float, its: int):
        m = self.solver
        I = m.integral_theta()
        c = m.counters
        total = obs["_sum_particle_currents"]
        coll = m.collector_current() if dt > 0 else total
        rec = Record(time_s=self.t, protocol_step=k, voltage_V=obs["voltage_V"],
                     current_mA_g=obs["current_mA_g"],
                     capacity_mAh_g=(self._I0 - I) / self.area * self.material.theoretical_capacity_mAh_g,
                     li_extracted_mol=self._li_mol(self._I0 - I),
                     theta_mean=obs["theta_mean"], theta_surface_min=obs["theta_surface_min"],
                     theta_surface_max=obs["theta_surface_max"], potential_drop_V=obs["potential_drop_V"],
                     mass_balance_error=((self._I0 - I) - self._ledger) / self._I0,
                     # relative to the step's current, or to a C/20 current in rests and fading holds
                     charge_balance_error=(coll - total) / max(abs(total), m._j_ref * m.perimeter))
        if m.electrolyte is not None:  # c_l range and mean, electrolyte potential drop, salt and charge balances
            rec.update(m.electrolyte.record_columns(dt))
        for key, val in obs.items():
            if key.startswith(("theta_mean_", "theta_surface_", "theta_near_", "current_mA_g_")):
                rec[key] = val
        rec.update(dt_s=dt, newton_iterations=its, steps_total=c.steps, rejected_total=c.rejected_steps,
                   newton_total=c.newton_iterations, linear_total=c.linear_iterations)
        self.history.append(rec)
        for o in self.observers:
            o.record(self, rec)
        return rec


def _nearest_distance(points: np.ndarray, cloud: np.ndarray, chunk_entries: int = 1 << 20) -> np.ndarray:
    """Distance from each of ``points`` to the nearest point of ``cloud`` (inf if it is empty), by brute
    force in chunks of ~``chunk_entries`` pairs: a particle's boundary has a few hundred vertices, and
    SciPy's k-d tree would load ~30 MB of SciPy into the run for it.

    >>> _nearest_distance(np.array([[0.0, 0.0, 0.0], [3.0, 4.0, 0.0]]), np.array([[0.0, 1.0, 0.0]]))
    array([1.        , 4.24264069])
    """
    out = np.full(len(points), np.inf)
    if len(cloud) == 0:
        return out
    step = max(1, chunk_entries // len(cloud))
    for i in range(0, len(points), step):
        d2 = ((points[i:i + step, None, :] - cloud[None, :, :]) ** 2).sum(axis=2)
        out[i:i + step] = np.sqrt(d2.min(axis=1))
    return out
