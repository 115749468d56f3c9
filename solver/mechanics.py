"""Chemo-mechanics of a particle: small-strain quasi-static elasticity with a chemical eigenstrain.

    ∇·σ = 0,   σ = f(θ) C : (ε(u) − ε_ch(θ)),   σ·n = 0 on the whole surface,

ε(u) = sym ∇u, ε_ch = diag(ε_a(θ), ε_a(θ), ε_c(θ)) in the crystal frame (c ∥ z, as the
transport tensor of Xu 2022 Eq. 10), stress-free at θ_ref; C isotropic or transversely
isotropic about z (:mod:`nmcfx.materials.mechanics`), f(θ) an optional modulus factor.
Units: µm (mesh), MPa (stress), so u is in µm.

The surface is traction-free, so u is defined up to a rigid motion: the load is
self-equilibrated, the rigid-body modes are the null space of the stiffness matrix and
are removed from the solution (the displacement written out has no component along the
Euclidean-orthonormalised rigid modes). Linear solvers (2D default: direct, factorised once while C
does not change): on one rank PETSc's sparse Cholesky with the rigid modes pinned at three DOFs,
on several MUMPS Cholesky with null-pivot detection; or CG + GAMG with the rigid modes as
near-null space (3D default).

One-way in 2D with a constant modulus, a step is cheap: the eigenstrain load is linear in the nodal
ε_a, ε_c, so b = K (ε_a + α ε_c) with K assembled once; the independent stress components are
evaluated straight into an array (:meth:`ElasticitySolver.stress_components`) and the tensor field
``sigma`` is filled only when asked for (:meth:`ElasticitySolver.sync_fields`). A run's solver can
be kept for the next run on the same mesh (:func:`acquire_solver`, :func:`release_solver`).

2D meshes are basal-plane (a–b) cross-sections; the out-of-plane strain ε_zz is set by
``assumption_2d``:

* ``plane_strain``: ε_zz = 0 (a prism clamped along c);
* ``plane_stress``: σ_zz = 0 (a thin plate);
* ``generalized_plane_strain`` (default): ε_zz = e₀ + e₁(x − x_c) + e₂(y − y_c) with zero
  axial force and bending moments, ∫σ_zz {1, x − x_c, y − y_c} dA = 0 (a long free prism).
  Solved by superposition: one solve for the eigenstrain with ε_zz = 0 plus the three
  responses to unit ε_zz modes (computed once while C is constant) and a 3×3 system.

Usage (any θ Function on any particle mesh)::

    from nmcfx.materials.mechanics import default_mechanics
    mech = ElasticitySolver(particle.mesh, theta, default_mechanics(), theta_ref=0.95)
    mech.solve()
    s = mech.invariants()          # σ1, von Mises, hydrostatic at the stress nodes (MPa)
    mech.destroy()                 # free the PETSc objects (and their MPI communicators) when done

In a run, :class:`nmcfx.solver.mechanics_outputs.MechanicsObserver` does this after every
accepted time step (one-way coupling θ → σ), configured by the ``[mechanics]`` table
(:func:`mechanics_from_config`).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import ufl
from mpi4py import MPI
from petsc4py import PETSc

import dolfinx
import dolfinx.fem.petsc
import dolfinx.la
from dolfinx import fem

from nmcfx.errors import InputError, SolverError

ASSUMPTIONS_2D = ("generalized_plane_strain", "plane_strain", "plane_stress")
COUPLINGS = ("one_way", "two_way")
MODELS = ("linear_elastic",)

#: Direct Cholesky (MUMPS) with null-pivot detection for the singular (traction-free) stiffness: 2D beyond
#: PINNED_MAX_DOFS, or with the user's own factorisation options.
DIRECT_OPTIONS = {
    "ksp_type": "preonly",
    "pc_type": "cholesky",  # symmetric: ~10 % faster than LU here
    "pc_factor_mat_solver_type": "mumps",
    "mat_mumps_icntl_24": 1,  # detect the null pivots (rigid modes)
    "mat_mumps_icntl_25": 0,  # return one solution of the consistent singular system
}
#: On several ranks the same, every rank factorising the whole gathered matrix (``pc_type = redundant``),
#: up to this many displacement DOFs (beyond: MUMPS). Parallel MUMPS orders its sums differently from run
#: to run (dynamic scheduling), so stresses differed in the last digits between identical runs; the
#: gathered factorisation gives the same bits every time.
PINNED_MAX_DOFS = 50_000
#: 2D on one rank: PETSc's own sparse Cholesky (METIS nested-dissection ordering where PETSc has METIS,
#: else its own) of the stiffness with the rigid modes pinned (three DOFs held at zero; the rigid part is
#: removed from the solution afterwards): its back-solve is ~40 % cheaper than MUMPS' at 7-24k DOFs (a
#: run does one per step), its factorisation 2× dearer (once per run, or once for runs reusing the solver).
PINNED_OPTIONS = {
    "ksp_type": "preonly",
    "pc_type": "cholesky",
    "pc_factor_mat_solver_type": "petsc",
    "pc_factor_mat_ordering_type": "metisnd",
}


def _pinned_options(ranks: int = 1) -> dict:
    """:data:`PINNED_OPTIONS`, with PETSc's own nested dissection if this PETSc has no METIS ordering; on
    several ranks for the gathered matrix on every rank (``pc_type = redundant``)."""
    global _ORDERING
    if _ORDERING is None:
        m = PETSc.Mat().createAIJ(size=(2, 2), nnz=2, comm=PETSc.COMM_SELF)
        m.setValues([0, 1], [0, 1], np.eye(2))
        m.assemble()
        try:
            _ORDERING = "metisnd"
            m.getOrdering("metisnd")
        except PETSc.Error:
            _ORDERING = "nd"
        finally:
            m.destroy()
    opts = PINNED_OPTIONS | {"pc_factor_mat_ordering_type": _ORDERING}
    if ranks == 1:
        return opts
    return {"ksp_type": "preonly", "pc_type": "redundant"} | {f"redundant_{k}": v for k, v in opts.items()}


_ORDERING = None
#: 3D: CG + smoothed-aggregation AMG with the rigid-body modes as near-null space.
ITERATIVE_OPTIONS = {
    "ksp_type": "cg",
    "ksp_rtol": 1e-8,  # stresses to ~1e-7 relative, far below the discretisation error
    "ksp_atol": 1e-14,
    "ksp_max_it": 500,
    "pc_type": "gamg",
    "pc_gamg_type": "agg",
    "pc_gamg_threshold": 0.01,
    "mg_levels_ksp_type": "chebyshev",
    "mg_levels_pc_type": "jacobi",
    "mg_levels_ksp_max_it": 3,
}


# ============================================================================ configuration
@dataclass(frozen=True)
class MechanicsSettings:
    """Solver and output settings of the ``[mechanics]`` table (material keys are separate)."""

    model: str = "linear_elastic"
    coupling: str = "one_way"
    assumption_2d: str = "generalized_plane_strain"
    degree: int = 2  # displacement element degree (stresses are discontinuous, one degree lower or θ's)
    reference_theta: float | None = None  # stress-free occupancy; None → the protocol's initial θ
    flaw_size_um: float = 0.1  # depth of the surface flaw of the fracture indicator (an assumption: set yours)
    toughness_MPa_sqrt_m: float | None = None  # K_Ic; without it only K_I and G are reported
    xrd_wavelength_A: float = 1.5406  # Cu Kα1
    xrd_fwhm_deg: float = 0.05  # instrumental broadening of the simulated peaks (2θ, degrees)
    solver: str = "auto"  # auto (2D: direct, 3D: iterative) | direct | iterative
    petsc_options: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


#: keys of ``[mechanics]`` read by the material side
MATERIAL_KEYS = ("stiffness", "E_GPa", "nu", "C11_GPa", "C12_GPa", "C13_GPa", "C33_GPa", "C44_GPa",
                 "lattice_csv", "modulus_csv")
SETTINGS_KEYS = tuple(MechanicsSettings.__dataclass_fields__)


@dataclass(frozen=True)
class MechanicsSetup:
    """A validated ``[mechanics]`` table: settings, material and the stress-free occupancy."""

    settings: MechanicsSettings
    material: object  # nmcfx.materials.mechanics.MechanicalMaterial
    theta_ref: float

    def describe(self) -> dict:
        return {"settings": self.settings.to_dict(), "theta_ref": self.theta_ref,
                "material": self.material.describe()}


def _number(field_name, v, lo=-math.inf, hi=math.inf, lo_open=True, hi_open=True, what="a number") -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        raise InputError(field_name, f"must be {what}, got {v!r}")
    v = float(v)
    ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        lb, rb = ("(" if lo_open else "["), (")" if hi_open else "]")
        raise InputError(field_name, f"must be in {lb}{lo:g}, {hi:g}{rb}, got {v!r}")
    return v


def _path(field_name, value, base_dir) -> Path:
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise InputError(field_name, f"must be a file path (string), got {value!r}")
    p = Path(os.fspath(value)).expanduser()
    return p if p.is_absolute() or base_dir is None else Path(base_dir) / p


def mechanics_from_config(cfg: dict, *, base_dir=None, theta0: float | None = None) -> MechanicsSetup | None:
    """Validate the ``[mechanics]`` table of a run config (None if there is none).

    ``theta0`` is the run's initial occupancy: the default stress-free state, which the
    lattice table must cover. Every problem is an :class:`InputError` naming the key.

    >>> s = mechanics_from_config({"mechanics": {"assumption_2d": "plane_stress"}}, theta0=0.95)
    >>> s.settings.assumption_2d, s.theta_ref
    ('plane_stress', 0.95)
    """
    from nmcfx.materials.mechanics import (
        STIFFNESS_KINDS,
        MechanicalMaterial,
        Stiffness,
        default_mechanics,
        load_lattice_table,
        load_modulus_table,
    )

    table = cfg.get("mechanics")
    if table is None:
        return None
    if not isinstance(table, dict):
        raise InputError("mechanics", f"must be a table ([mechanics]), got {type(table).__name__}")
    allowed = set(SETTINGS_KEYS) | set(MATERIAL_KEYS)
    extra = sorted(set(table) - allowed)
    if extra:
        raise InputError("mechanics", f"unknown key(s) {extra}; allowed: {sorted(allowed)}")
    geometry = cfg.get("geometry")
    if isinstance(geometry, dict) and geometry.get("shape") in ("electrode", "electrode_3d"):
        raise InputError("mechanics", "stress is computed for single particles so far; the composite electrode "
                                      "does not take a [mechanics] table yet")
    d = dict(table)
    out = {}
    model = d.get("model", "linear_elastic")
    if model not in MODELS:
        raise InputError("mechanics.model", f"must be one of {list(MODELS)}, got {model!r}")
    coupling = d.get("coupling", "one_way")
    if not isinstance(coupling, str) or coupling not in COUPLINGS:
        raise InputError("mechanics.coupling", f"must be 'one_way' (θ → σ) or 'two_way' (θ ⇄ σ: the stress-driven "
                                               f"flux of μ − Ω:σ/N_L), got {coupling!r}")
    if "assumption_2d" in d and d["assumption_2d"] not in ASSUMPTIONS_2D:
        raise InputError("mechanics.assumption_2d", f"must be one of {list(ASSUMPTIONS_2D)}, "
                                                    f"got {d['assumption_2d']!r}")
    for key in ("model", "coupling", "assumption_2d"):
        if key in d:
            out[key] = d[key]
    if "degree" in d:
        if d["degree"] not in (1, 2) or isinstance(d["degree"], bool):
            raise InputError("mechanics.degree", f"must be 1 or 2, got {d['degree']!r}")
        out["degree"] = int(d["degree"])
    if "solver" in d:
        if d["solver"] not in ("auto", "direct", "iterative"):
            raise InputError("mechanics.solver", f"must be 'auto', 'direct' or 'iterative', got {d['solver']!r}")
        out["solver"] = d["solver"]
    if "reference_theta" in d:
        out["reference_theta"] = _number("mechanics.reference_theta", d["reference_theta"], 0.0, 1.0,
                                         what="an occupancy in (0, 1)")
    if "flaw_size_um" in d:
        out["flaw_size_um"] = _number("mechanics.flaw_size_um", d["flaw_size_um"], 0.0, 1e3, what="a size > 0 µm")
    if "toughness_MPa_sqrt_m" in d:
        out["toughness_MPa_sqrt_m"] = _number("mechanics.toughness_MPa_sqrt_m", d["toughness_MPa_sqrt_m"], 0.0,
                                              1e3, what="a toughness > 0 MPa m^0.5")
    if "xrd_wavelength_A" in d:
        out["xrd_wavelength_A"] = _number("mechanics.xrd_wavelength_A", d["xrd_wavelength_A"], 0.0, 5.0)
    if "xrd_fwhm_deg" in d:
        out["xrd_fwhm_deg"] = _number("mechanics.xrd_fwhm_deg", d["xrd_fwhm_deg"], 0.0, 5.0)
    if "petsc_options" in d:
        if not isinstance(d["petsc_options"], dict):
            raise InputError("mechanics.petsc_options", "must be a table of PETSc option names to values")
        out["petsc_options"] = dict(d["petsc_options"])
    settings = MechanicsSettings(**out)

    # ---- material: defaults of the run's material, overridden key by key
    mat_name = (cfg.get("material") or {}).get("name", "NMC-Ni87") if isinstance(cfg.get("material"), dict) \
        else "NMC-Ni87"
    base = default_mechanics(mat_name) if isinstance(mat_name, str) else default_mechanics()
    kind = d.get("stiffness", "isotropic")
    if kind not in STIFFNESS_KINDS:
        raise InputError("mechanics.stiffness", f"must be one of {list(STIFFNESS_KINDS)}, got {kind!r}")
    ti_keys = ("C11_GPa", "C12_GPa", "C13_GPa", "C33_GPa", "C44_GPa")
    if kind == "isotropic":
        stray = [k for k in ti_keys if k in d]
        if stray:
            raise InputError(f"mechanics.{stray[0]}", "belongs to stiffness = 'transversely_isotropic'")
        if "E_GPa" in d or "nu" in d:
            stiff = Stiffness.isotropic(d.get("E_GPa", base.stiffness.E_GPa), d.get("nu", base.stiffness.nu),
                                        source="user input ([mechanics])")
        else:
            stiff = base.stiffness
    else:
        stray = [k for k in ("E_GPa", "nu") if k in d]
        if stray:
            raise InputError(f"mechanics.{stray[0]}", "belongs to stiffness = 'isotropic'")
        missing = [k for k in ti_keys if k not in d]
        if missing:
            raise InputError(f"mechanics.{missing[0]}", "is required for stiffness = 'transversely_isotropic' "
                                                        f"(give all of {', '.join(ti_keys)})")
        stiff = Stiffness.transversely_isotropic(*(d[k] for k in ti_keys), source="user input ([mechanics])")
    lattice = base.lattice
    if "lattice_csv" in d:
        lattice = load_lattice_table(_path("mechanics.lattice_csv", d["lattice_csv"], base_dir))
    modulus = None
    if "modulus_csv" in d:
        modulus = load_modulus_table(_path("mechanics.modulus_csv", d["modulus_csv"], base_dir), stiff)
    material = MechanicalMaterial(base.name, lattice, stiff, modulus)

    theta_ref = settings.reference_theta if settings.reference_theta is not None else theta0
    if theta_ref is None:
        theta_ref = 0.95
    if not lattice.covers(theta_ref):
        key = "mechanics.reference_theta" if settings.reference_theta is not None else "mechanics.lattice_csv"
        raise InputError(key, f"the lattice table covers θ in [{lattice.theta_min:g}, {lattice.theta_max:g}], "
                              f"which does not include the stress-free occupancy θ₀ = {theta_ref:g}")
    return MechanicsSetup(settings, material, float(theta_ref))


# ============================================================================ the solver
@dataclass
class MechanicsCounters:
    solves: int = 0
    iterations: int = 0
    assembly_time: float = 0.0
    solve_time: float = 0.0
    post_time: float = 0.0
    factorizations: int = 0


def _voigt(e):
    """3×3 strain → Voigt 6-vector (11, 22, 33, 23, 13, 12) with engineering shears."""
    return ufl.as_vector([e[0, 0], e[1, 1], e[2, 2], 2 * e[1, 2], 2 * e[0, 2], 2 * e[0, 1]])


def _tensor(s):
    """Voigt 6-vector of stress → symmetric 3×3 tensor."""
    return ufl.as_matrix([[s[0], s[5], s[4]], [s[5], s[1], s[3]], [s[4], s[3], s[2]]])


def _solver_kind(solver: str, tdim: int) -> str:
    kind = solver if solver != "auto" else ("direct" if tdim == 2 else "iterative")
    if kind not in ("direct", "iterative"):
        raise InputError("mechanics.solver", f"must be 'auto', 'direct' or 'iterative', got {solver!r}")
    return kind


def _constitutive_law(tdim: int, assumption: str, Cm, f):
    """``(stress, strain3, eig)`` as UFL builders: ``strain3(w, ezz)`` the 3×3 strain of w (None: zero
    displacement) with the out-of-plane strain ezz (2D), ``eig(ea, ec)`` the crystal-frame eigenstrain
    tensor, ``stress(w, eig_t, ezz)`` = f Cm : (strain3(w, ezz) − eig_t); plane stress: ezz follows from
    σ_zz = 0 (ezz=None). (Closures of locals only, never of a solver: no reference cycle keeps a solver's
    communicators alive after its last use; MPI has a limited number of them.)"""
    plane_stress = tdim == 2 and assumption == "plane_stress"

    def strain3(w, ezz=0.0):
        e = ufl.sym(ufl.grad(w)) if w is not None else ufl.as_matrix([[0.0] * tdim] * tdim)
        if tdim == 3:
            return e
        return ufl.as_matrix([[e[0, 0], e[0, 1], 0.0], [e[1, 0], e[1, 1], 0.0], [0.0, 0.0, ezz]])

    def eig(ea, ec):
        return ufl.as_matrix([[ea, 0.0, 0.0], [0.0, ea, 0.0], [0.0, 0.0, ec]])

    def stress(w, eig_t, ezz=None):
        if plane_stress:
            d = _voigt(strain3(w, 0.0) - eig_t)
            ezz_el = -(Cm[2, 0] * d[0] + Cm[2, 1] * d[1] + Cm[2, 5] * d[5]) / Cm[2, 2]  # ε_zz − ε*_zz
            e3 = strain3(w, ezz_el + eig_t[2, 2])
        else:
            e3 = strain3(w, 0.0 if ezz is None else ezz)
        return f * _tensor(ufl.dot(Cm, _voigt(e3 - eig_t)))

    return stress, strain3, eig


class ElasticitySolver:
    """Quasi-static elasticity with the chemical eigenstrain of a θ field (see module docstring).

    Parameters: ``mesh`` (µm), ``theta`` (a scalar Lagrange :class:`dolfinx.fem.Function` on
    it, read at every :meth:`solve`), ``material`` (:class:`~nmcfx.materials.mechanics.MechanicalMaterial`),
    ``theta_ref`` (stress-free occupancy). ``extra_rhs(solver, v)`` may add a UFL linear form
    (body forces, tractions; manufactured solutions use it).

    After :meth:`solve`: ``u`` (displacement, µm), ``sigma`` (3×3 stress tensor in MPa, a
    discontinuous Lagrange function, full 3D tensor also in 2D), ``ezz_coefficients``
    (generalised plane strain), and :meth:`invariants` at the stress nodes.
    """

    LABEL = "mechanics"  # (error messages)

    def __init__(self, mesh, theta: fem.Function, material, *, theta_ref: float,
                 assumption_2d: str = "generalized_plane_strain", degree: int = 2, solver: str = "auto",
                 petsc_options: dict | None = None, extra_rhs=None, prefix: str = "nmcfx_mech_"):
        self._body(mesh, material, theta_ref, assumption_2d, degree)
        tdim = self.tdim
        self.theta = theta
        Vth = theta.function_space
        self.eps_a = fem.Function(Vth, name="eps_a")
        self.eps_c = fem.Function(Vth, name="eps_c")
        self.variable_modulus = material.modulus is not None
        self.fmod = fem.Function(Vth, name="modulus_factor") if self.variable_modulus else None
        self.C = material.stiffness.voigt() * 1e3  # GPa → MPa
        # material and geometry enter as Constants: one compiled form serves every mesh and material
        Cm = fem.Constant(mesh, PETSc.ScalarType(1.0) * self.C)
        th_deg = Vth.element.basix_element.degree
        dx = self._body_geometry(th_deg)
        stress, strain3, eig = self._constitutive_law(Cm, self.fmod if self.variable_modulus else 1.0)
        ev = self._displacement_forms(stress, strain3, eig, eigenstrain_load=False)
        V = self.V
        # the eigenstrain load is linear in the nodal values of ε_a, ε_c: with a constant modulus it is
        # b = K_a ε_a + K_c ε_c, K assembled once (one compiled form, the selector picks the column). 2D
        # only: in 3D a step costs a CG solve, and the two matrices would hold ~60 nonzeros per DOF
        self.linear_load = extra_rhs is None and not self.variable_modulus and tdim == 2
        L = -ufl.inner(stress(None, self.eig_t), ev) * dx
        if extra_rhs is not None:
            L = L + extra_rhs(self, ufl.TestFunction(V))
        self.L_ufl = L  # the load as a UFL form (compiled as ``L_form`` where it is assembled as a form)
        if self.linear_load:
            self._eig_sel = fem.Constant(mesh, np.zeros(2, dtype=PETSc.ScalarType))
            wth = ufl.TrialFunction(Vth)
            self._K_form = fem.form(-ufl.inner(stress(None, eig(self._eig_sel[0] * wth, self._eig_sel[1] * wth)),
                                               ev) * dx)
            self.L_form = None
        else:
            self.L_form = fem.form(L)

        self._stress_spaces(th_deg)
        self._compact_setup()
        self._theta_copy = fem.Function(Vth)  # θ of the current run, copied here: the Expression outlives runs
        self._theta_on_stress_nodes = fem.Function(self.Ss)
        self._theta_expr = fem.Expression(self._theta_copy, self.Ss.element.interpolation_points)
        self._zz_moment_vectors()

        # ---- linear algebra
        self.A = dolfinx.fem.petsc.create_matrix(self.a_form)
        self.b = dolfinx.fem.petsc.create_vector(V)
        self.x = dolfinx.fem.petsc.create_vector(V)
        self.nullspace_vectors = self._rigid_body_modes()
        self.nullspace = PETSc.NullSpace().create(vectors=self.nullspace_vectors, comm=self.comm)
        kind = _solver_kind(solver, tdim)
        # 2D up to PINNED_MAX_DOFS, no user choice of the factorisation: the pinned PETSc Cholesky (on
        # several ranks of the gathered matrix, on every rank)
        self._pins = self._pins_owned = None
        if kind == "direct" and tdim == 2 and 2 * V.dofmap.index_map.size_global <= PINNED_MAX_DOFS and not any(
                str(k).startswith(("pc_", "mat_")) for k in (petsc_options or {})):
            self._pins, self._pins_owned = self._pinned_dofs()
        self._create_ksp(kind, ITERATIVE_OPTIONS if kind == "iterative" else DIRECT_OPTIONS if self._pins is None
                         else _pinned_options(self.comm.size), petsc_options, prefix)
        self.K = None
        if self.linear_load:
            self.K = []
            for sel in np.eye(2):
                self._eig_sel.value = sel
                K = dolfinx.fem.petsc.assemble_matrix(self._K_form)
                K.assemble()
                self.K.append(K)
            # in-plane loads of 2D sections see one combination of ε_a and ε_c: K_c = α K_a, one product
            da, dc = (K.getValuesCSR()[2] for K in self.K)
            dots = self.comm.allreduce(np.array([da @ dc, da @ da, np.abs(dc).max(initial=0.0)]), op=MPI.SUM)
            self._alpha = dots[0] / dots[1] if dots[1] > 0 else 0.0
            off = self.comm.allreduce(float(np.abs(dc - self._alpha * da).max(initial=0.0)), op=MPI.MAX)
            if off <= 1e-13 * max(self.comm.allreduce(float(np.abs(dc).max(initial=0.0)), op=MPI.MAX), 1e-300):
                self.K.pop().destroy()
            self._eig_vecs = [self.K[0].createVecRight() for _ in self.K]
        self._n_theta = Vth.dofmap.index_map.size_local
        self.cache: dict = {}  # what users derive from this solver's mesh and spaces (kept with a reused solver)
        self._update_coefficients()

    # ------------------------------------------------------------------ set-up shared with subclasses
    def _body(self, mesh, material, theta_ref: float, assumption_2d: str, degree: int):
        """The body's mesh, material, stress-free θ, 2D assumption (checked) and displacement degree."""
        if assumption_2d not in ASSUMPTIONS_2D:
            raise InputError("mechanics.assumption_2d", f"must be one of {list(ASSUMPTIONS_2D)}, got {assumption_2d!r}")
        self.mesh, self.comm, self.material = mesh, mesh.comm, material
        self.theta_ref = float(theta_ref)
        self.tdim = mesh.topology.dim
        self.assumption = assumption_2d if self.tdim == 2 else "3d"
        self.degree = degree
        self.counters = MechanicsCounters()

    def _body_geometry(self, th_deg: int):
        """Volume, centroid, the ε_zz modes g_k (2D: 1, x − x_c, y − y_c), their coefficients ``p`` and
        selector ``gsel``, and the integration measure (returned): exact for the bilinear form
        (ε(w):ε(v)), the eigenstrain load (θ-degree × ε(v)) and ∫σ_zz g."""
        mesh, comm, degree = self.mesh, self.comm, self.degree
        x = ufl.SpatialCoordinate(mesh)
        one = fem.Constant(mesh, PETSc.ScalarType(1.0))
        vol = comm.allreduce(fem.assemble_scalar(fem.form(one * ufl.dx(domain=mesh))), op=MPI.SUM)
        self.volume = vol
        self.centroid = np.array([comm.allreduce(fem.assemble_scalar(fem.form(x[i] * ufl.dx(domain=mesh))),
                                                 op=MPI.SUM) / vol for i in range(mesh.geometry.dim)])
        # ---- out-of-plane strain modes (generalised plane strain): ε_zz = Σ p_k g_k
        self.p = fem.Constant(mesh, np.zeros(3, dtype=PETSc.ScalarType))  # coefficients of the solution
        self.gsel = fem.Constant(mesh, np.zeros(3, dtype=PETSc.ScalarType))  # selects one mode in set-up forms
        if self.tdim == 2:
            xc = fem.Constant(mesh, np.asarray(self.centroid[:2], dtype=PETSc.ScalarType))
            self.gmodes = [one, x[0] - xc[0], x[1] - xc[1]]
        else:
            self.gmodes = []
        qdeg = max(2 * (degree - 1), th_deg + degree - 1, degree) + (th_deg if self.variable_modulus else 0)
        self.dx = ufl.Measure("dx", domain=mesh, metadata={"quadrature_degree": qdeg})
        return self.dx

    def _constitutive_law(self, Cm, f):
        """σ(w, ε*, ε_zz) = f C : (ε(w, ε_zz) − ε*) for this body's 2D assumption (``Cm``: the 6×6 Voigt
        stiffness, a Constant or a UFL expression; ``f``: the modulus factor); returns
        ``(stress, strain3, eig)`` and keeps the first two."""
        stress, strain3, eig = _constitutive_law(self.tdim, self.assumption, Cm, f)
        self._stress, self._strain3 = stress, strain3
        return stress, strain3, eig

    def _displacement_forms(self, stress, strain3, eig, *, eigenstrain_load: bool):
        """Displacement space and ``u``, the stiffness form, the ε_zz mode loads (generalised plane strain),
        the stress and strain of the solution as UFL; with ``eigenstrain_load`` also ``L_form``. Returns the
        virtual strain ε(v) (in-plane only in 2D)."""
        mesh, dx = self.mesh, self.dx
        self.V = V = fem.functionspace(mesh, ("Lagrange", self.degree, (self.tdim,)))
        self.u = fem.Function(V, name="displacement_um")
        zero_eig = eig(0.0, 0.0)
        self.eig_t = eig(self.eps_a, self.eps_c)
        w, v = ufl.TrialFunction(V), ufl.TestFunction(V)
        ev = strain3(v, 0.0)
        self.a_form = fem.form(ufl.inner(stress(w, zero_eig), ev) * dx)
        if eigenstrain_load:
            self.L_form = fem.form(-ufl.inner(stress(None, self.eig_t), ev) * dx)
        self.gps = self.tdim == 2 and self.assumption == "generalized_plane_strain"
        self._g_sel = None
        if self.gps:
            self._g_sel = g_sel = sum(self.gsel[k] * g for k, g in enumerate(self.gmodes))
            self.L_mode = fem.form(-ufl.inner(stress(None, zero_eig, g_sel), ev) * dx)
            self.u_modes = [fem.Function(V) for _ in self.gmodes]
            self._M = None
        ezz_total = sum(self.p[k] * g for k, g in enumerate(self.gmodes)) if self.gps else 0.0
        self.sigma_ufl = stress(self.u, self.eig_t, ezz_total)
        self.strain_ufl = strain3(self.u, ezz_total)
        return ev

    def _stress_spaces(self, th_deg: int):
        """The discontinuous stress spaces and ``sigma``. With P1 θ, one degree below u: for P1 u the stress
        is cell-wise constant and sampled at the cell midpoint, where ε_ch(θ) equals its cell mean — the
        consistent value; for P2 u it is linear and DG1 is exact. With P2 θ (the default of 2D flux
        particles) the eigenstrain is quadratic: DG of θ's degree holds it exactly."""
        self.stress_degree = self.degree - 1 if th_deg == 1 else max(self.degree - 1, th_deg)
        self.S = fem.functionspace(self.mesh, ("Discontinuous Lagrange", self.stress_degree, (3, 3)))
        self.Ss = fem.functionspace(self.mesh, ("Discontinuous Lagrange", self.stress_degree))
        self.sigma = fem.Function(self.S, name="stress_MPa")

    def _zz_moment_vectors(self):
        """Generalised plane strain: ∫ f g_k dx = f · m_k for any f in the stress space (exact: f g_k is
        integrated by the form)."""
        if not self.gps:
            return
        m_form = fem.form(self._g_sel * ufl.TestFunction(self.Ss) * self.dx)
        n_s = self.Ss.dofmap.index_map.size_local
        self._m = []
        for k in range(3):
            self.gsel.value = np.eye(3)[k]
            vec = fem.assemble_vector(m_form)
            vec.scatter_reverse(dolfinx.la.InsertMode.add)
            self._m.append(vec.array[:n_s].copy())
        self.gsel.value = np.zeros(3)
        self._mode_sigma = None

    def _create_ksp(self, kind: str, defaults: dict, petsc_options: dict | None, prefix: str):
        """The linear solver: ``defaults`` overridden by the user's ``petsc_options`` (kept in
        :attr:`petsc_options`), set through ``prefix`` and removed from PETSc's database again."""
        self.solver_kind = kind
        opts = dict(defaults)
        opts.update({str(k): v for k, v in (petsc_options or {}).items()})
        self.petsc_options = opts
        self.ksp = PETSc.KSP().create(self.comm)
        self.ksp.setOptionsPrefix(prefix)
        popts = PETSc.Options()
        for k, val in opts.items():
            popts[f"{prefix}{k}"] = val
        self.ksp.setFromOptions()
        if kind == "iterative":  # θ changes little between time steps: start from the last solution
            self.ksp.setInitialGuessNonzero(True)
        # the inner solver of pc_type = redundant reads its options at the first set-up: kept till then
        self._setup_options = [f"{prefix}{k}" for k in opts if str(k).startswith("redundant_")]
        for k in opts:
            if f"{prefix}{k}" not in self._setup_options:
                del popts[f"{prefix}{k}"]
        self._matrix_ready = False

    def _drop_setup_options(self):
        popts = PETSc.Options()
        for k in getattr(self, "_setup_options", ()):
            del popts[k]
        self._setup_options = []

    def _rebind(self, theta: fem.Function, material, theta_ref: float):
        """Serve a new run (:func:`acquire_solver`): read ``theta`` (same space layout), take the lattice
        table of ``material`` (same stiffness) and ``theta_ref``; start from u = 0 as a new solver does."""
        self.theta, self.material, self.theta_ref = theta, material, float(theta_ref)
        self.counters = MechanicsCounters()
        self.u.x.array[:] = 0.0
        if self.gps:
            self.p.value = np.zeros(3)
        self._stress_c = np.zeros_like(self._stress_c)
        self._sigma_synced = False
        self._update_coefficients()

    def destroy(self):
        """Free the PETSc objects now (solver, matrices, vectors, null space): MUMPS and PETSc hold MPI
        communicators, of which a process has a limited number. The solver is unusable afterwards."""
        if self in _POOL:  # (destroyed by its user while kept for reuse: never hand it out again)
            _POOL.remove(self)
        self._drop_setup_options()  # (destroyed before its first set-up)
        for obj in (getattr(self, "K", None) or []) + getattr(self, "_eig_vecs", []):
            obj.destroy()
        self.K, self._eig_vecs = [], []
        for name in ("ksp", "A", "b", "x", "nullspace", "near_nullspace"):  # (subclasses: near_nullspace)
            obj = getattr(self, name, None)
            if obj is not None:
                obj.destroy()
        for v in getattr(self, "nullspace_vectors", ()):
            v.destroy()
        self.nullspace_vectors = []

    # ------------------------------------------------------------------ set-up helpers
    def _rigid_body_modes(self) -> list:
        """Euclidean-orthonormal rigid-body modes as PETSc vectors of the owned DOFs (2D: 2
        translations + 1 rotation; 3D: 3 + 3). Plain PETSc vectors on purpose: wrapping DOLFINx
        vectors keeps their MPI communicators alive for the life of the process."""
        V = self.V
        im, bs = V.dofmap.index_map, V.dofmap.index_map_bs
        n = im.size_local
        X = V.tabulate_dof_coordinates()[:n] - np.pad(self.centroid, (0, 3 - len(self.centroid)))
        arrs = [np.zeros((n, bs)) for _ in range(3 if bs == 2 else 6)]
        for i in range(bs):
            arrs[i][:, i] = 1.0
        if bs == 2:
            arrs[2][:, 0], arrs[2][:, 1] = -X[:, 1], X[:, 0]
        else:
            arrs[3][:, 0], arrs[3][:, 1] = -X[:, 1], X[:, 0]
            arrs[4][:, 1], arrs[4][:, 2] = -X[:, 2], X[:, 1]
            arrs[5][:, 2], arrs[5][:, 0] = -X[:, 0], X[:, 2]
        basis = []
        for a in arrs:  # modified Gram–Schmidt in the Euclidean inner product of the DOF values
            v = self.A.createVecRight()
            v.array[:] = a.ravel()
            for q in basis:
                v.axpy(-v.dot(q), q)
            v.scale(1.0 / v.norm())
            basis.append(v)
        return basis

    def _remove_rigid_modes(self, vec):
        """vec −= Σ_k (vec · n_k) n_k over the orthonormal rigid-body modes, with sums in a fixed order
        (NumPy's pairwise summation, one allreduce). PETSc's ``MatNullSpaceRemove`` does the same with
        BLAS kernels whose rounding depends on where the vectors lie in memory: two identical runs
        differed in the last digits of every stress."""
        modes = self.__dict__.get("_rigid_arrays")
        if modes is None:
            modes = self._rigid_arrays = [v.getArray(readonly=True).copy() for v in self.nullspace_vectors]
        arr = vec.getArray()
        dots = np.array([np.multiply(arr, q).sum() for q in modes])
        if self.comm.size > 1:
            dots = self.comm.allreduce(dots, op=MPI.SUM)
        for d, q in zip(dots, modes):
            arr -= d * q

    def _update_coefficients(self):
        th = np.clip(self.theta.x.array, 0.0, 1.0)
        ea, ec = self.material.eigenstrain(th, self.theta_ref)
        self.eps_a.x.array[:] = ea
        self.eps_c.x.array[:] = ec
        if self.variable_modulus:
            self.fmod.x.array[:] = self.material.modulus_factor(th)

    def _pinned_dofs(self) -> tuple[np.ndarray, np.ndarray]:
        """Three DOFs that fix the rigid motion of a 2D body: both components at the node farthest from
        the centroid and, at the node farthest from that one, the component across the line joining
        them (ties: the lowest global node). Returns those of them this rank owns, as global and as
        local indices."""
        im = self.V.dofmap.index_map
        n, start = im.size_local, im.local_range[0]
        X = self.V.tabulate_dof_coordinates()[:n, :2]

        def farthest(p):
            d = np.linalg.norm(X - p, axis=1)
            k = int(np.argmax(d)) if n else -1
            mine = (float(d[k]), -(start + k), *X[k]) if n else (-1.0, 0, 0.0, 0.0)
            best = max(self.comm.allgather(mine)) if self.comm.size > 1 else mine
            return -int(best[1]), np.array(best[2:])

        i, xi = farthest(self.centroid[:2])
        j, xj = farthest(xi)
        d = xj - xi
        pins = np.array([2 * i, 2 * i + 1, 2 * j + (1 if abs(d[0]) >= abs(d[1]) else 0)], dtype=PETSc.IntType)
        owned = pins[(pins >= 2 * start) & (pins < 2 * (start + n))]
        return owned, owned - 2 * start

    def _assemble_matrix(self):
        self.A.zeroEntries()
        dolfinx.fem.petsc.assemble_matrix(self.A, self.a_form)
        self.A.assemble()
        if self._pins is not None:  # rows and columns of the pinned DOFs → identity: regular, still symmetric
            self.A.zeroRowsColumns(self._pins, 1.0)
        else:
            self.A.setNullSpace(self.nullspace)
        self.A.setNearNullSpace(self.nullspace)
        self.ksp.setOperators(self.A)
        self._mumps_controls()
        if self._setup_options:
            self.ksp.setUp()
            self._drop_setup_options()
        self.counters.factorizations += 1
        self._matrix_ready = True

    def _mumps_controls(self) -> bool:
        """Hand the ``mat_mumps_icntl_*`` options (null-pivot detection, …) to MUMPS' factor matrix:
        the prefixed options are gone from the database by the time the factorisation is set up.
        Returns whether the factorisation is MUMPS'."""
        pc = self.ksp.getPC()
        if self.petsc_options.get("pc_factor_mat_solver_type") != "mumps" or pc.getType() not in ("lu", "cholesky"):
            return False
        pc.setFactorSetUpSolverType()
        F = pc.getFactorMatrix()
        for k, v in self.petsc_options.items():
            if str(k).startswith("mat_mumps_icntl_"):
                F.setMumpsIcntl(int(k.rsplit("_", 1)[1]), int(v))
        return True

    def _solve_into(self, L_form, target: fem.Function) -> int:
        t0 = MPI.Wtime()
        if self.solver_kind == "iterative":
            with self.x.localForm() as xl:
                xl.array[:] = target.x.array
        if L_form is None:  # the eigenstrain load: b = K_a ε_a + K_c ε_c (owned entries; ghosts unused)
            n = self._n_theta
            if len(self.K) == 1:  # b = K_a (ε_a + α ε_c)
                q = self._eig_vecs[0]
                qa = q.array
                np.multiply(self.eps_c.x.array[:n], self._alpha, out=qa)
                qa += self.eps_a.x.array[:n]
                self.K[0].mult(q, self.b)
            else:
                ea, ec = self._eig_vecs
                ea.array[:] = self.eps_a.x.array[:n]
                ec.array[:] = self.eps_c.x.array[:n]
                self.K[0].mult(ea, self.b)
                self.K[1].multAdd(ec, self.b, self.b)
        else:
            with self.b.localForm() as bl:
                bl.set(0.0)
            dolfinx.fem.petsc.assemble_vector(self.b, L_form)
            self.b.ghostUpdate(addv=PETSc.InsertMode.ADD, mode=PETSc.ScatterMode.REVERSE)
        self._remove_rigid_modes(self.b)  # exact equilibrium of the discrete load
        if self._pins is not None:  # (a load without rigid-mode part is met at the pins too)
            self.b.array[self._pins_owned] = 0.0
        return self._solve_load_into(target, t0)

    def _solve_load_into(self, target: fem.Function, t0: float) -> int:
        """Solve for the load in ``b`` (assembled since ``t0``), without rigid motion where the body is
        free, into ``target``; returns the linear iterations."""
        t1 = MPI.Wtime()
        self.ksp.solve(self.b, self.x)
        reason = self.ksp.getConvergedReason()
        if reason < 0:
            raise SolverError(f"{self.LABEL}: linear solver failed (KSP reason {reason}, "
                              f"{self.ksp.getIterationNumber()} iterations)")
        if self.nullspace is not None:
            self._remove_rigid_modes(self.x)  # no rigid motion in the displacement
        if self.comm.size == 1:
            target.x.array[:] = self.x.array_r
        else:
            self.x.ghostUpdate(addv=PETSc.InsertMode.INSERT, mode=PETSc.ScatterMode.FORWARD)
            with self.x.localForm() as xl:
                target.x.array[:] = xl.array_r
        self.counters.assembly_time += t1 - t0
        self.counters.solve_time += MPI.Wtime() - t1
        return self.ksp.getIterationNumber()

    # ------------------------------------------------------------------ solve
    def solve(self, fields: bool = True) -> int:
        """Displacement and stress for the current θ; returns the linear iterations.

        ``fields=False`` leaves the tensor field :attr:`sigma` to be filled on demand (:meth:`sync_fields`;
        :meth:`stress_nodes` does it): the stress components (:meth:`stress_components`), invariants and
        surface stresses are up to date either way."""
        self._update_coefficients()
        if self.variable_modulus or not self._matrix_ready:
            t0 = MPI.Wtime()
            self._assemble_matrix()
            self.counters.assembly_time += MPI.Wtime() - t0
            if self.gps:
                self._M = None
        its = 0
        if self.gps and self._M is None:  # responses to unit ε_zz modes: once while C is constant
            its += self._gps_modes()
        its += self._solve_into(self.L_form, self.u)
        t0 = MPI.Wtime()
        if self.gps:
            self.p.value = np.zeros(3)
            sc = self._evaluate_components()
            p = np.linalg.solve(self._M, -self._zz_moments(sc))
            self.p.value = p
            self.u.x.array[:] += self._mode_u @ p  # superposition of the ε_zz mode responses
            sc += (self._mode_stack @ p).reshape(sc.shape)
        else:
            sc = self._evaluate_components()
        self._stress_c = sc
        self._sigma_synced = False
        if fields:
            self.sync_fields()
        self.counters.post_time += MPI.Wtime() - t0
        self.counters.solves += 1
        self.counters.iterations += its
        return its

    def _compact_setup(self):
        """The evaluation of the independent stress components (2D sections: σ_xz = σ_yz = 0) straight
        into an array, on every local cell (ghosts too: the tensor field's ghost values are filled as an
        interpolation would); the tensor field ``sigma`` is filled from it when asked for. (Called by
        ``__init__``; subclasses that build their own spaces get it at their first solve.)"""
        tdim, mesh, C = self.tdim, self.mesh, getattr(self, "C", None)
        planar = tdim == 2 and (C is None or (np.allclose(C[3:5, [0, 1, 2, 5]], 0.0)
                                              and np.allclose(C[[0, 1, 2, 5], 3:5], 0.0)))
        self.components = COMPONENTS_2D if planar else COMPONENTS_3D
        pts = self.Ss.element.interpolation_points
        self._comp_expr = fem.Expression(ufl.as_vector([self.sigma_ufl[i, j] for i, j in self.components]), pts)
        imap = mesh.topology.index_map(tdim)
        n_cells = imap.size_local + imap.num_ghosts
        self._cells = np.arange(n_cells, dtype=np.int32)
        self._comp_buffer = np.zeros((n_cells, pts.shape[0], len(self.components)))
        smap = self.Ss.dofmap.index_map
        n_all = smap.size_local + smap.num_ghosts
        self._n_stress = smap.size_local
        order = np.asarray(self.Ss.dofmap.list[:n_cells], dtype=np.int64).ravel()  # (cell, point) → stress node
        self._node_order = None if np.array_equal(order, np.arange(n_all)) else order
        self._stress_c = np.zeros((n_all, len(self.components)))
        self._sigma_synced = True

    def _evaluate_components(self) -> np.ndarray:
        """The stress components (:attr:`components`) of the current u, ε_ch and ε_zz at the local (owned,
        then ghost) stress nodes, (n, k) in MPa (a new array)."""
        if not hasattr(self, "_comp_expr"):
            self._compact_setup()
        vals = self._comp_expr.eval(self.mesh, self._cells, self._comp_buffer).reshape(-1, len(self.components))
        if self._node_order is None:
            return vals.copy()
        out = np.empty_like(vals)
        out[self._node_order] = vals
        return out

    def stress_components(self) -> np.ndarray:
        """Stress at the owned stress nodes as columns (n, k) in MPa, one per entry of :attr:`components`
        ((i, j) of σ; 2D sections: xx, yy, zz, xy — σ_xz = σ_yz = 0). A view: do not modify."""
        return self._stress_c[: self._n_stress]

    def sync_fields(self):
        """Fill the tensor field :attr:`sigma` (owned nodes) from the last solve's stress components."""
        if self._sigma_synced:
            return
        n, sc = len(self._stress_c), self._stress_c  # owned and ghost nodes
        s = self.sigma.x.array[: 9 * n].reshape(n, 3, 3)
        if len(self.components) < 6:
            s[:] = 0.0
        for k, (i, j) in enumerate(self.components):
            s[:, i, j] = sc[:, k]
            s[:, j, i] = sc[:, k]
        self._sigma_synced = True

    def _zz_moments(self, comps) -> np.ndarray:
        """∫σ_zz g_k dx, k = 0, 1, 2, of stress components (owned stress nodes, :attr:`components` columns)."""
        szz = comps[: self._n_stress, self.components.index((2, 2))]
        local = np.array([szz @ m for m in self._m])
        return local if self.comm.size == 1 else self.comm.allreduce(local, op=MPI.SUM)

    def _gps_modes(self) -> int:
        """Displacement and stress responses to ε_zz = g_k (no eigenstrain) and the 3×3 matrix of their
        axial force and moments ∫σ_zz g_j; by linearity the stress of a mode is σ(u_k, g_k) with the
        eigenstrain switched off."""
        its = 0
        for k, um in enumerate(self.u_modes):
            self.gsel.value = np.eye(3)[k]
            its += self._solve_into(self.L_mode, um)
        self.gsel.value = np.zeros(3)
        saved = self.u.x.array.copy()
        self.eps_a.x.array[:] = 0.0
        self.eps_c.x.array[:] = 0.0
        self._mode_sigma = []
        for k, um in enumerate(self.u_modes):
            self.u.x.array[:] = um.x.array
            self.p.value = np.eye(3)[k]
            self._mode_sigma.append(self._evaluate_components())
        self.u.x.array[:] = saved
        self._update_coefficients()
        self._M = np.column_stack([self._zz_moments(sk) for sk in self._mode_sigma])
        self._mode_u = np.column_stack([um.x.array for um in self.u_modes])
        self._mode_stack = np.stack([sk.ravel() for sk in self._mode_sigma], axis=1)
        return its

    def stress_of(self, w, ezz=None):
        """UFL stress (MPa) of a displacement ``w`` with this solver's eigenstrain and assumption
        (``ezz``: out-of-plane strain for plane strain / generalised plane strain; default 0)."""
        return self._stress(w, self.eig_t, ezz)

    @property
    def ezz_coefficients(self) -> np.ndarray:
        """Generalised plane strain: (e₀, e₁, e₂) of ε_zz = e₀ + e₁(x − x_c) + e₂(y − y_c) (zeros otherwise)."""
        return np.array(self.p.value, dtype=float) if self.gps else np.zeros(3)

    # ------------------------------------------------------------------ post-processing
    def stress_node_coordinates(self) -> np.ndarray:
        """Owned stress-node coordinates (n, 3) in µm (a view, do not modify)."""
        if not hasattr(self, "_X"):
            self._X = self.Ss.tabulate_dof_coordinates()[: self.Ss.dofmap.index_map.size_local].copy()
        return self._X

    def stress_nodes(self) -> tuple[np.ndarray, np.ndarray]:
        """Owned stress-node coordinates (n, 3) and stress tensors (n, 3, 3) in MPa (views, do not modify)."""
        if hasattr(self, "_sigma_synced"):  # (also serves objects that fill ``sigma`` themselves)
            self.sync_fields()
        n = self.S.dofmap.index_map.size_local
        if not hasattr(self, "_X"):
            self._X = self.Ss.tabulate_dof_coordinates()[:n].copy()
        return self._X, self.sigma.x.array[: 9 * n].reshape(n, 3, 3)

    def invariants(self, principal=("sigma1", "sigma2", "sigma3")) -> dict[str, np.ndarray]:
        """σ1 ≥ σ2 ≥ σ3 (principal; ``principal`` names those wanted), von Mises and hydrostatic stress at
        the owned stress nodes (MPa)."""
        if not hasattr(self, "_stress_c"):  # not solved yet, or an object that fills ``sigma`` itself
            _, s = self.stress_nodes()
            return stress_invariants(s, planar=self.tdim == 2)
        return component_invariants(self.stress_components(), self.components, principal)

    def theta_at_stress_nodes(self) -> np.ndarray:
        self._theta_copy.x.array[:] = self.theta.x.array
        self._theta_on_stress_nodes.interpolate(self._theta_expr)
        return self._theta_on_stress_nodes.x.array[: self.Ss.dofmap.index_map.size_local].copy()

    def strain_from_stress(self, s: np.ndarray, theta_nodes: np.ndarray) -> np.ndarray:
        """Total strain ε = C⁻¹σ/f + ε_ch at stress nodes (n, 3, 3), from the stresses and θ there."""
        comp = np.linalg.inv(self.C)
        sv = np.stack([s[:, 0, 0], s[:, 1, 1], s[:, 2, 2], s[:, 1, 2], s[:, 0, 2], s[:, 0, 1]], axis=1)
        f = self.material.modulus_factor(theta_nodes)
        ev = (sv @ comp.T) / f[:, None]
        ea, ec = self.material.eigenstrain(theta_nodes, self.theta_ref)
        e = np.zeros_like(s)
        e[:, 0, 0], e[:, 1, 1], e[:, 2, 2] = ev[:, 0] + ea, ev[:, 1] + ea, ev[:, 2] + ec
        e[:, 1, 2] = e[:, 2, 1] = 0.5 * ev[:, 3]
        e[:, 0, 2] = e[:, 2, 0] = 0.5 * ev[:, 4]
        e[:, 0, 1] = e[:, 1, 0] = 0.5 * ev[:, 5]
        return e

    def normal_strains(self, theta_nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """ε_xx, ε_yy, ε_zz (total strain, :meth:`strain_from_stress`) at the owned stress nodes, from the
        last solve's stress components and θ there."""
        if not hasattr(self, "_compliance"):
            self._compliance = np.linalg.inv(self.C)
        voigt = {(0, 0): 0, (1, 1): 1, (2, 2): 2, (1, 2): 3, (0, 2): 4, (0, 1): 5}
        sc = self.stress_components()
        f = self.material.modulus_factor(theta_nodes)
        ea, ec = self.material.eigenstrain(theta_nodes, self.theta_ref)
        out = []
        for row, eig in ((0, ea), (1, ea), (2, ec)):
            e = np.zeros(len(sc))
            for k, ij in enumerate(self.components):
                e += self._compliance[row, voigt[ij]] * sc[:, k]
            out.append(e / f + eig)
        return tuple(out)

    def stress_node_weights(self) -> np.ndarray:
        """∫φ_i dx of the scalar stress space (owned nodes): volume weights of the stress nodes."""
        if not hasattr(self, "_weights"):
            v = ufl.TestFunction(self.Ss)
            vec = fem.assemble_vector(fem.form(v * self.dx))
            vec.scatter_reverse(dolfinx.la.InsertMode.add)
            self._weights = vec.array[: self.Ss.dofmap.index_map.size_local].copy()
        return self._weights

    @property
    def num_dofs(self) -> int:
        return self.V.dofmap.index_map.size_global * self.V.dofmap.index_map_bs

    def describe(self) -> dict:
        return {"assumption": self.assumption, "degree": self.degree, "stress_degree": self.stress_degree,
                "dofs": self.num_dofs, "solver": self.solver_kind, "petsc_options": self.petsc_options,
                "theta_ref": self.theta_ref, "centroid_um": self.centroid.tolist()}


# ============================================================================ reuse across runs
#: Elasticity solvers released by finished runs, kept for the next run on the same mesh (serial only).
_POOL: list[ElasticitySolver] = []
#: How many released solvers are kept (each holds its factorisation: ~10 MB at 20k displacement DOFs).
POOL_SIZE = 2


def _pool_key(mesh, theta, material, settings: dict):
    Vth = theta.function_space
    el = Vth.element.basix_element
    return (id(mesh), el.family, el.degree, Vth.dofmap.index_map.size_local, material.modulus is not None,
            material.stiffness.voigt().tobytes(), tuple(sorted((k, repr(v)) for k, v in settings.items())))


def acquire_solver(mesh, theta: fem.Function, material, *, theta_ref: float, **settings) -> ElasticitySolver:
    """An :class:`ElasticitySolver` for these arguments: one a finished run released
    (:func:`release_solver`) on the same mesh, θ space, stiffness and settings — its spaces, compiled
    forms, factorisation, load operator and generalised-plane-strain modes kept, rebound to this ``theta``,
    ``material`` (lattice table) and ``theta_ref`` — or a new one. A sweep or a calibration runs many
    times on one (cached) mesh; only ``mesh.comm.size == 1``: parallel PETSc objects must be freed on
    all ranks together, so they are never kept. Usage::

        ms = acquire_solver(mesh, theta, material, theta_ref=0.95)
        ...
        release_solver(ms)      # kept for the next run (serial) or destroyed
    """
    if mesh.comm.size == 1 and settings.get("extra_rhs") is None:
        key = _pool_key(mesh, theta, material, settings)
        for i, ms in enumerate(_POOL):
            if ms._pool_key == key and ms.mesh is mesh and np.array_equal(
                    ms.eps_a.function_space.dofmap.list, theta.function_space.dofmap.list):
                _POOL.pop(i)
                ms._rebind(theta, material, theta_ref)
                return ms
    ms = ElasticitySolver(mesh, theta, material, theta_ref=theta_ref, **settings)
    ms._pool_key = (_pool_key(mesh, theta, material, settings)
                    if mesh.comm.size == 1 and settings.get("extra_rhs") is None else None)
    return ms


def release_solver(ms: ElasticitySolver | None):
    """Give back a solver of :func:`acquire_solver`: kept for reuse (serial, at most :data:`POOL_SIZE`,
    the oldest destroyed) or destroyed now (collective on the solver's communicator)."""
    if ms is None:
        return
    if getattr(ms, "_pool_key", None) is None or ms.comm.size != 1 or os.environ.get("NMCFX_MESH_CACHE", "1") == "0":
        ms.destroy()
        return
    if ms in _POOL:
        return
    _POOL.insert(0, ms)
    while len(_POOL) > POOL_SIZE:
        _POOL[-1].destroy()


def clear_solver_pool():
    """Destroy the solvers kept for reuse."""
    while _POOL:
        _POOL[-1].destroy()


# ============================================================================ stress invariants (NumPy)
def principal_stresses(s: np.ndarray) -> np.ndarray:
    """Eigenvalues (descending) of symmetric 3×3 tensors s (n, 3, 3), closed form (trigonometric)."""
    s = np.asarray(s, dtype=float)
    q = np.trace(s, axis1=1, axis2=2) / 3.0
    p1 = s[:, 0, 1] ** 2 + s[:, 0, 2] ** 2 + s[:, 1, 2] ** 2
    d0, d1, d2 = s[:, 0, 0] - q, s[:, 1, 1] - q, s[:, 2, 2] - q
    p2 = d0**2 + d1**2 + d2**2 + 2 * p1
    p = np.sqrt(p2 / 6.0)
    safe = p > 1e-300 + 1e-14 * np.abs(q)
    ps = np.where(safe, p, 1.0)
    b00, b11, b22 = d0 / ps, d1 / ps, d2 / ps
    b01, b02, b12 = s[:, 0, 1] / ps, s[:, 0, 2] / ps, s[:, 1, 2] / ps
    det = b00 * (b11 * b22 - b12**2) - b01 * (b01 * b22 - b12 * b02) + b02 * (b01 * b12 - b11 * b02)
    r = np.clip(det / 2.0, -1.0, 1.0)
    phi = np.arccos(r) / 3.0
    e1 = q + 2 * p * np.cos(phi)
    e3 = q + 2 * p * np.cos(phi + 2.0 * np.pi / 3.0)
    e2 = 3 * q - e1 - e3
    out = np.stack([e1, e2, e3], axis=1)
    out[~safe] = q[~safe, None]
    return out


#: the independent stress components ((i, j) of σ) a solver computes: 2D basal sections (σ_xz = σ_yz = 0)
COMPONENTS_2D = ((0, 0), (1, 1), (2, 2), (0, 1))
COMPONENTS_3D = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


def component_invariants(c: np.ndarray, components=COMPONENTS_3D,
                         principal=("sigma1", "sigma2", "sigma3")) -> dict[str, np.ndarray]:
    """:func:`stress_invariants` of stresses given as columns (n, k) of the ``components`` (i, j) of σ
    (missing ones are zero). With σ_xz = σ_yz = 0, σ_zz is principal and the in-plane pair is closed form
    (then only the ``principal`` stresses named are computed)."""
    col = {ij: c[:, k] for k, ij in enumerate(components)}
    sxx, syy, szz, sxy = col[(0, 0)], col[(1, 1)], col[(2, 2)], col[(0, 1)]
    if (1, 2) in col:
        s = np.empty((len(c), 3, 3))
        for (i, j), v in col.items():
            s[:, i, j] = s[:, j, i] = v
        return stress_invariants(s)
    m = 0.5 * (sxx + syy)
    d = sxx - syy
    r = np.hypot(0.5 * d, sxy)
    a, b = m + r, m - r
    vm = np.sqrt(0.5 * (d**2 + (syy - szz) ** 2 + (szz - sxx) ** 2) + 3.0 * sxy**2)
    out = {"von_mises": vm, "hydrostatic": (sxx + syy + szz) / 3.0}
    if "sigma1" in principal:
        out["sigma1"] = np.maximum(a, szz)
    if "sigma2" in principal:
        out["sigma2"] = np.minimum(np.maximum(szz, b), a)
    if "sigma3" in principal:
        out["sigma3"] = np.minimum(b, szz)
    return out


def stress_invariants(s: np.ndarray, planar: bool = False) -> dict[str, np.ndarray]:
    """σ1, σ2, σ3, von Mises and hydrostatic (mean) stress of tensors s (n, 3, 3).

    ``planar``: σ_xz = σ_yz = 0 (2D sections with c ∥ z): σ_zz is principal, the in-plane pair in
    closed form."""
    if planar:
        c = 0.5 * (s[:, 0, 0] + s[:, 1, 1])
        r = np.hypot(0.5 * (s[:, 0, 0] - s[:, 1, 1]), s[:, 0, 1])
        pr = np.sort(np.stack([c + r, c - r, s[:, 2, 2]], axis=1), axis=1)[:, ::-1]
    else:
        pr = principal_stresses(s)
    vm = np.sqrt(0.5 * ((s[:, 0, 0] - s[:, 1, 1]) ** 2 + (s[:, 1, 1] - s[:, 2, 2]) ** 2
                        + (s[:, 2, 2] - s[:, 0, 0]) ** 2)
                 + 3.0 * (s[:, 0, 1] ** 2 + s[:, 1, 2] ** 2 + s[:, 0, 2] ** 2))
    return {"sigma1": pr[:, 0], "sigma2": pr[:, 1], "sigma3": pr[:, 2], "von_mises": vm,
            "hydrostatic": np.trace(s, axis1=1, axis2=2) / 3.0}


# ============================================================================ surface (hoop) stress
class SurfaceStress:
    """Tangential ("hoop") normal stress t·σ·t at the stress nodes on the particle surface.

    2D: t is the in-plane tangent of each boundary facet. 3D: t = e_z × n / |e_z × n| (the
    azimuthal direction about the c axis), on facets with |n_z| < 0.7 (lateral faces; basal
    faces and sphere poles are left out). Angles are polar angles about the centroid. With a
    piecewise-constant stress (P1 displacement) the boundary cell's value is placed at the
    facet midpoint.
    """

    def __init__(self, solver: ElasticitySolver):
        mesh = solver.mesh
        tdim, fdim = mesh.topology.dim, mesh.topology.dim - 1
        mesh.topology.create_connectivity(fdim, tdim)
        facets = dolfinx.mesh.exterior_facet_indices(mesh.topology)
        n_owned_cells = mesh.topology.index_map(tdim).size_local
        f2c = mesh.topology.connectivity(fdim, tdim)
        Ss = solver.Ss
        X = Ss.tabulate_dof_coordinates()
        x = mesh.geometry.x
        dofs, tangents, points = [], [], []
        cells = np.array([f2c.links(f)[0] for f in facets], dtype=np.int32)
        keep = cells < n_owned_cells
        facets, cells = facets[keep], cells[keep]
        if len(facets):
            fverts = dolfinx.mesh.entities_to_geometry(mesh, fdim, facets)[:, : fdim + 1]
            cmid = x[dolfinx.mesh.entities_to_geometry(mesh, tdim, cells)].mean(axis=1)
        for k, c in enumerate(cells):
            cd = Ss.dofmap.cell_dofs(int(c))
            P = x[fverts[k]]
            if tdim == 2:
                t = P[1] - P[0]
                size = np.linalg.norm(t)
                t = t / size
                nrm = np.array([t[1], -t[0], 0.0])
            else:
                nrm = np.cross(P[1] - P[0], P[2] - P[0])
                size = math.sqrt(np.linalg.norm(nrm))
                nrm = nrm / np.linalg.norm(nrm)
                if (P.mean(axis=0) - cmid[k]) @ nrm < 0:
                    nrm = -nrm
                if abs(nrm[2]) > 0.7:
                    continue
                t = np.cross([0.0, 0.0, 1.0], nrm)
                t /= np.linalg.norm(t)
            if solver.stress_degree == 0:
                on, where = cd[:1], P.mean(axis=0)[None, :]
            else:
                on = cd[np.abs((X[cd] - P[0]) @ nrm) < 1e-8 * size]
                where = X[on]
            dofs.extend(on.tolist())
            tangents.extend([t] * len(on))
            points.extend(where.tolist())
        self.dofs = np.asarray(dofs, dtype=np.int64)
        self.t = np.asarray(tangents, dtype=float).reshape(-1, 3)
        self.points = np.asarray(points, dtype=float).reshape(-1, 3)
        c = solver.centroid
        self.angle_deg = np.degrees(np.arctan2(self.points[:, 1] - c[1], self.points[:, 0] - c[0])) % 360.0
        self.solver = solver

    def hoop(self) -> np.ndarray:
        """t·σ·t (MPa) at the surface nodes owned by this rank."""
        if not len(self.dofs):
            return np.zeros(0)
        sv = self.solver
        if not hasattr(sv, "_stress_c"):  # an object that fills the tensor field ``sigma`` itself
            s = sv.sigma.x.array.reshape(-1, 3, 3)[self.dofs]
            return np.einsum("ni,nij,nj->n", self.t, s, self.t)
        c = sv.stress_components()[self.dofs]
        t = self.t
        out = np.zeros(len(self.dofs))
        for k, (i, j) in enumerate(sv.components):
            out += (t[:, i] * t[:, j] * (1.0 if i == j else 2.0)) * c[:, k]
        return out


# ============================================================================ fracture indicator
def surface_flaw_indicator(sigma_MPa: float, flaw_size_um: float, E_prime_GPa: float,
                           toughness_MPa_sqrt_m: float | None = None, geometry_factor: float = 1.12) -> dict:
    """Energy release rate of a surface flaw of depth a under the tensile stress σ across it.

    K_I = Y σ √(π a) (Y = 1.12, the edge crack in a half space), G = K_I²/E' (E' = E/(1 − ν²),
    plane strain). Compressive stress gives K_I = G = 0. With a toughness K_Ic the index
    G/G_c = (K_I/K_Ic)² is returned too (≥ 1: the flaw grows).

    >>> round(surface_flaw_indicator(100.0, 0.1, 180.0)["K_I_MPa_sqrt_m"], 4)
    0.0628
    """
    a = flaw_size_um * 1e-6
    s = max(float(sigma_MPa), 0.0)
    K = geometry_factor * s * math.sqrt(math.pi * a)  # MPa √m
    G = (K * 1e6) ** 2 / (E_prime_GPa * 1e9)  # J m⁻²
    out = {"K_I_MPa_sqrt_m": K, "G_J_m2": G, "fracture_index": math.nan}
    if toughness_MPa_sqrt_m is not None:
        out["fracture_index"] = (K / toughness_MPa_sqrt_m) ** 2
    return out


# ============================================================================ two-way coupling
def partial_strains(material, theta, theta_ref: float, h: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """Ω_a, Ω_c = dε_a/dθ, dε_c/dθ: the partial strain of one Li site (per unit occupancy) of the
    eigenstrain diag(ε_a, ε_a, ε_c), by central differences of the C¹ (PCHIP) lattice tables,
    one-sided at the ends of the table (constant beyond them: Ω = 0 there). Ω/N_L is the partial
    molar volume tensor (m³ mol⁻¹).

    >>> from nmcfx.materials.mechanics import default_mechanics
    >>> oa, oc = partial_strains(default_mechanics(), np.array([0.8]), 0.95)
    >>> bool(oa[0] > 0 > oc[0])     # Li expands a, contracts c (c collapses only at low θ)
    True
    """
    lat = material.lattice
    th = np.asarray(theta, dtype=float)
    lo = np.clip(th - h, lat.theta_min, lat.theta_max)
    hi = np.clip(th + h, lat.theta_min, lat.theta_max)
    ea_lo, ec_lo = material.eigenstrain(lo, theta_ref)
    ea_hi, ec_hi = material.eigenstrain(hi, theta_ref)
    span = np.where(hi > lo, hi - lo, 1.0)
    return (ea_hi - ea_lo) / span, (ec_hi - ec_lo) / span


class StressPotential:
    """χ = Ω(θ):σ / (N_L R T), the stress part of the Li chemical potential in units of RT
    (dimensionless), as a continuous function on θ's space.

    Ω:σ = Ω_a (σ_xx + σ_yy) + Ω_c σ_zz in the crystal frame (:func:`partial_strains`, evaluated
    at the nodes of θ); σ is the stress of the last :meth:`ElasticitySolver.solve` (MPa = 10⁶
    J m⁻³), discontinuous between cells, so the product is L2-projected onto θ's (continuous)
    space — the stress-driven flux needs its gradient. The mass matrix is assembled once
    (serial: factorised once, Cholesky; several ranks: CG + Jacobi to 1e-12). Usage::

        pot = StressPotential(mech, material.site_concentration, material.temperature_K)
        mech.solve(); chi = pot.update()        # χ at θ's nodes (local + ghosts)
    """

    def __init__(self, mech: ElasticitySolver, site_concentration: float, temperature_K: float,
                 prefix: str = "nmcfx_chi_"):
        from nmcfx.materials.constants import GAS_CONSTANT

        self.mech = mech
        V = mech.theta.function_space
        self.omega_a = fem.Function(V, name="omega_a")
        self.omega_c = fem.Function(V, name="omega_c")
        self.chi = fem.Function(V, name="stress_potential")
        self.scale = 1e6 / (site_concentration * GAS_CONSTANT * temperature_K)  # MPa → units of N_L R T
        s, v, w = mech.sigma, ufl.TestFunction(V), ufl.TrialFunction(V)
        p = V.element.basix_element.degree
        dx = ufl.Measure("dx", domain=mech.mesh, metadata={"quadrature_degree": 2 * p + mech.stress_degree})
        self.rhs_form = fem.form(self.scale * (self.omega_a * (s[0, 0] + s[1, 1]) + self.omega_c * s[2, 2]) * v * dx)
        self.M = dolfinx.fem.petsc.assemble_matrix(fem.form(w * v * ufl.Measure(
            "dx", domain=mech.mesh, metadata={"quadrature_degree": 2 * p})))
        self.M.assemble()
        self.b = dolfinx.fem.petsc.create_vector(V)
        self.x = dolfinx.fem.petsc.create_vector(V)
        self.ksp = PETSc.KSP().create(mech.comm)
        self.ksp.setOptionsPrefix(prefix)
        self.ksp.setOperators(self.M)
        if mech.comm.size == 1:  # factorised once: a back-solve per step (CG + Jacobi to 1e-12: ~10x slower)
            self.ksp.setType("preonly")
            self.ksp.getPC().setType("cholesky")
            self.ksp.getPC().setFactorSolverType("petsc")
        else:  # (no MUMPS: its clean-up is collective, and a failed run leaves this to the garbage collector)
            self.ksp.setType("cg")
            self.ksp.getPC().setType("jacobi")
            self.ksp.setTolerances(rtol=1e-12, atol=1e-30, max_it=1000)
            self.ksp.setInitialGuessNonzero(True)
        self.time = 0.0
        self.kappa = np.zeros_like(self.chi.x.array)

    def update(self) -> np.ndarray:
        """χ from the solver's current σ and θ (call after :meth:`ElasticitySolver.solve`)."""
        t0 = MPI.Wtime()
        mech = self.mech
        oa, oc = partial_strains(mech.material, np.clip(mech.theta.x.array, 0.0, 1.0), mech.theta_ref)
        self.omega_a.x.array[:] = oa
        self.omega_c.x.array[:] = oc
        # κ = f(θ) Ω:C:Ω/(N_L R T): how fast χ falls as θ rises at a fully constrained point — an upper
        # bound of the free body's response, used to make the staggered coupling stable (terms.py)
        C = mech.C
        ca = C[0, 0] + C[1, 1] + 2 * C[0, 1]
        cc = C[0, 2] + C[1, 2]
        self.kappa[:] = self.scale * mech.material.modulus_factor(mech.theta.x.array) * (
            ca * oa * oa + 2 * cc * oa * oc + C[2, 2] * oc * oc)
        mech.sync_fields()  # the form reads the tensor field
        with self.b.localForm() as bl:
            bl.set(0.0)
        dolfinx.fem.petsc.assemble_vector(self.b, self.rhs_form)
        self.b.ghostUpdate(addv=PETSc.InsertMode.ADD, mode=PETSc.ScatterMode.REVERSE)
        self.ksp.solve(self.b, self.x)
        if self.ksp.getConvergedReason() < 0:
            raise SolverError(f"two-way mechanics: projection of Ω:σ failed (KSP reason {self.ksp.getConvergedReason()})")
        self.x.ghostUpdate(addv=PETSc.InsertMode.INSERT, mode=PETSc.ScatterMode.FORWARD)
        with self.x.localForm() as xl:
            self.chi.x.array[:] = xl.array_r
        self.time += MPI.Wtime() - t0
        return self.chi.x.array

    def destroy(self):
        for obj in (self.ksp, self.M, self.b, self.x):
            obj.destroy()
