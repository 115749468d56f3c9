"""The multi-field problem core: fields on tagged regions of one mesh, coupled by terms.

A :class:`Problem` holds

* **fields** — unknowns, each a Lagrange function on a set of cells of the parent mesh
  (a submesh when the set is not the whole mesh) or one real, global value
  (:meth:`Field.real`), with the time history its terms need;
* **terms** — pieces of the residual (diffusion, a surface flux, Butler–Volmer on exterior
  facets or on interfaces between regions, ohmic conduction, a current or voltage control),
  each contributing to one or more fields' residuals (:mod:`nmcfx.solver.terms`);
* Dirichlet conditions on fields.

Every integral is written on the parent mesh (DOLFINx 0.11 allows one integration domain
per form) with the submeshes' entity maps, and one Newton solve advances all fields
together (a blocked ``NonlinearProblem``; a single field keeps the plain one). Terms may
carry nodal coefficients (D_chem(θ), V_oc(θ), σ(θ), …) that are refreshed with NumPy at
every Newton iterate, so UFL never sees tanh/exp of an unknown, and may supply exact
Jacobian blocks for them. Usage::

    problem = Problem(mesh, cell_tags=tags)
    theta = problem.add_field(Field("theta", tags=(PARTICLE,), transient=True))
    phi_s = problem.add_field(Field("phi_s", tags=(PARTICLE, CARBON)))
    phi_l = problem.add_field(Field.real("phi_l"))
    problem.add_term(TimeDerivative(theta, lumped=True))
    problem.add_term(NonlinearDiffusion(theta, material))
    problem.add_term(Conduction(phi_s, conductivities))
    bv = problem.add_term(ButlerVolmer(theta, phi_s, phi_l, facets, material))
    problem.add_term(CurrentControl(phi_l, [bv], voltage=-phi_l.u))
    problem.initialise()                 # spaces → forms → Newton solver
    problem.set_time_step(dt, dt_prev, order)
    result = problem.solve()
    problem.accept()                     # shift the histories

Internal units: µm (mesh coordinates) and s. The residual of every transient field is
multiplied by dt, so it measures an amount (θ·µm^d) and the SNES absolute tolerance bounds
the conservation defect of a step whatever the step size.
"""

from __future__ import annotations

import signal
import sys
import weakref
from dataclasses import dataclass, field

import basix.ufl
import numpy as np
import ufl
from mpi4py import MPI
from petsc4py import PETSc

import dolfinx
from dolfinx import fem

from .jit import configure as _configure_jit

_configure_jit()  # nmcfx's own JIT cache directory (solver/jit.py)

#: SNES/KSP defaults: Newton with backtracking line search, direct MUMPS LU.
DEFAULT_PETSC_OPTIONS = {
    "snes_type": "newtonls",
    "snes_linesearch_type": "bt",
    "snes_rtol": 1e-10,
    "snes_atol": 1e-13,  # × the measure of the transient region (µm^d): set per problem
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
class NewtonOutcome:
    """How a Newton solve ended when it did not run inside PETSc's SNES (a SNES converged reason)."""

    reason: int
    iterations: int
    linear_iterations: int


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


class Field:
    """An unknown: Lagrange of ``degree`` on the cells of the parent mesh tagged ``tags``
    (None: all cells), or a real global value (:meth:`real`).

    After :meth:`Problem.initialise`: ``mesh`` (the submesh, or the parent mesh), ``entity_map``
    (None on the parent), ``V``, ``u`` (the Newton iterate), ``u_n`` (last accepted value) and,
    for transient fields, ``u_nm1`` (the one before, for BDF2), ``test`` and ``trial``.
    """

    def __init__(self, name: str, *, tags: tuple[int, ...] | None = None, degree: int = 1, transient: bool = False,
                 is_real: bool = False, keep_history: bool = False):
        self.name = name
        #: keep u_{n-1} although the field is quasi-static (e.g. to extrapolate a potential)
        self.keep_history = keep_history
        self.tags = None if tags is None else tuple(int(t) for t in tags)
        self.degree = degree
        self.transient = transient
        self.is_real = is_real
        self.mesh = self.entity_map = self.V = self.u = self.u_n = self.u_nm1 = None
        self.test = self.trial = None

    @classmethod
    def real(cls, name: str) -> "Field":
        """One real, global unknown (e.g. a particle or electrolyte potential)."""
        return cls(name, is_real=True)

    def build(self, parent, cell_tags=None):
        self.parent = parent
        self.cell_tags = cell_tags
        if self.is_real:
            self.mesh = parent
            self.V = fem.functionspace(parent, basix.ufl.real_element(parent.basix_cell(), (), dtype=np.float64))
        else:
            if self.tags is None:
                self.mesh = parent
            else:
                if cell_tags is None:
                    raise ValueError(f"field {self.name!r} is defined on tags {self.tags}: the problem needs cell_tags")
                cells = np.sort(np.concatenate([cell_tags.find(t) for t in self.tags])).astype(np.int32)
                self.mesh, self.entity_map, self.vertex_map, self.geom_map = dolfinx.mesh.create_submesh(
                    parent, parent.topology.dim, cells)
            self.V = fem.functionspace(self.mesh, ("Lagrange", self.degree))
        self.u = fem.Function(self.V, name=self.name)
        self.u_n = fem.Function(self.V, name=f"{self.name}_n")
        if self.transient or self.keep_history:
            self.u_nm1 = fem.Function(self.V, name=f"{self.name}_nm1")
        self.test = ufl.TestFunction(self.V)
        self.trial = ufl.TrialFunction(self.V)

    def dx(self, metadata: dict | None = None):
        """Cell measure of the field's region on the parent mesh (where every form integrates)."""
        if self.tags is None:
            return ufl.Measure("dx", domain=self.parent, metadata=metadata or {})
        return ufl.Measure("dx", domain=self.parent, subdomain_data=self.cell_tags, metadata=metadata or {})(self.tags)

    def sub_facets(self, marker) -> np.ndarray:
        """Facets of the field's own mesh on its boundary where ``marker(x)`` holds (for Dirichlet data)."""
        fdim = self.mesh.topology.dim - 1
        self.mesh.topology.create_connectivity(fdim, fdim + 1)
        return dolfinx.mesh.locate_entities_boundary(self.mesh, fdim, marker)

    @property
    def n_owned(self) -> int:
        return self.V.dofmap.index_map.size_local * self.V.dofmap.index_map_bs

    @property
    def num_dofs(self) -> int:
        im = self.V.dofmap.index_map
        return im.size_global * self.V.dofmap.index_map_bs

    def history(self) -> dict[str, fem.Function]:
        """The functions a checkpoint must store to continue exactly."""
        out = {"u_n": self.u_n}
        if self.u_nm1 is not None:
            out["u_nm1"] = self.u_nm1
        return out

    def __repr__(self) -> str:
        where = "real" if self.is_real else ("whole mesh" if self.tags is None else f"tags {self.tags}")
        return f"Field({self.name!r}, {where}{', transient' if self.transient else ''})"


class Term:
    """A piece of the residual. Subclasses implement :meth:`residuals`; optionally
    :meth:`jacobian` (exact blocks for nodal coefficients), :meth:`update` (refresh nodal
    coefficients at a Newton iterate) and :meth:`depends_on` (fields the residual of
    ``row`` depends on; default: all fields whose function appears in it)."""

    fields: tuple[Field, ...] = ()
    #: False when another term refreshes this term's nodal coefficients (e.g. in one batch)
    auto_update: bool = True

    def residuals(self, problem: "Problem") -> dict[Field, ufl.Form]:
        raise NotImplementedError

    def jacobian(self, problem: "Problem", row: Field, col: Field, residual: ufl.Form):
        """Block d(residual of ``row``)/d``col``; None → UFL's derivative."""
        return None

    def update(self, problem: "Problem"):
        """Refresh nodal coefficients from the current iterate (called before every assembly)."""

    def setup(self, problem: "Problem"):
        """Called once the fields have spaces and before any residual is built."""

    def nodal_assembly(self, problem: "Problem") -> dict | None:
        """What this term contributes to :class:`~.assembly.NodalAssembler` (keys ``mass``,
        ``diffusion``, ``loads``), or None if it needs DOLFINx's form assembly."""
        return None


class Problem:
    """Fields on regions of ``mesh`` coupled by terms; see the module docstring."""

    def __init__(self, mesh, *, cell_tags=None, petsc_options: dict | None = None, prefix: str = "nmcfx_",
                 atol_measure: float = 1.0, block_tolerances=None, assembly: str = "auto"):
        self.mesh = mesh
        self.comm = mesh.comm
        self.cell_tags = cell_tags
        self.fields: list[Field] = []
        self.terms: list[Term] = []
        self.bcs: list = []
        self._bc_fields: list = []
        self.prefix = prefix
        self.counters = SolverCounters()
        opts = dict(DEFAULT_PETSC_OPTIONS)
        opts["snes_atol"] = DEFAULT_PETSC_OPTIONS["snes_atol"] * float(atol_measure or 1.0)
        if petsc_options:
            opts.update({str(k): v for k, v in petsc_options.items()})
        self.petsc_options = opts
        self._user_options = dict(petsc_options or {})
        self.linear_solver = "lu (mumps)"
        self.dt = fem.Constant(mesh, PETSc.ScalarType(1.0))
        self.time = fem.Constant(mesh, PETSc.ScalarType(0.0))  # t_{n+1}, for time-dependent terms
        # dθ/dt ≈ (a0 u + a1 u_n + a2 u_{n-1}) / dt ; backward Euler: (1, -1, 0)
        self.bdf = [fem.Constant(mesh, PETSc.ScalarType(c)) for c in (1.0, -1.0, 0.0)]
        self._initialised = False
        self.interrupted = False
        self._abort, self._error = False, None
        # optional: callable(problem) -> absolute tolerance per unknown (2-norm of its residual block);
        # Newton converges when every block meets its own tolerance (e.g. a charge balance per step)
        self.block_tolerances = block_tolerances
        if assembly not in ASSEMBLY_MODES:
            raise ValueError(f"assembly must be one of {ASSEMBLY_MODES}, got {assembly!r}")
        #: "auto": NumPy on precomputed element tensors (:mod:`.assembly`) where every term allows it
        #: (one field, one rank), else DOLFINx's forms; "forms": always DOLFINx; "nodal": insist
        self.assembly = assembly
        self.assembler = None  # a NodalAssembler when that path is used
        self._update_tol = None  # see set_update_tolerance
        self._lag_jacobian = 1
        self._own_newton = False
        #: other per-DOF state a checkpoint must carry (name → Function; e.g. the electrode's
        #: lowest θ reached, ``nmc_conductivity_history = "irreversible"``)
        self.extra_state: dict[str, fem.Function] = {}

    # ------------------------------------------------------------------ building
    def add_field(self, f: Field) -> Field:
        if any(g.name == f.name for g in self.fields):
            raise ValueError(f"field {f.name!r} defined twice")
        self.fields.append(f)
        if self._spaces_built:
            f.build(self.mesh, self.cell_tags)
        return f

    @property
    def _spaces_built(self) -> bool:
        return getattr(self, "_built", False)

    def add_term(self, t: Term) -> Term:
        self.terms.append(t)
        if self._spaces_built:
            t.setup(self)
        return t

    def add_dirichlet(self, f: Field, value: float, facets: np.ndarray):
        """u = ``value`` on ``facets`` of the field's own mesh (see :meth:`Field.sub_facets`)."""
        tdim = f.mesh.topology.dim
        dofs = fem.locate_dofs_topological(f.V, tdim - 1, facets)
        bc = fem.dirichletbc(PETSc.ScalarType(value), dofs, f.V)
        self.bcs.append(bc)
        self._bc_fields.append((f, bc))
        return bc

    def build_spaces(self):
        """Function spaces of every field (idempotent); terms' :meth:`Term.setup` follows."""
        if self._spaces_built:
            return
        for f in self.fields:
            f.build(self.mesh, self.cell_tags)
        self._built = True
        for t in self.terms:
            t.setup(self)

    def initialise(self):
        """The recipe: function spaces → residual and Jacobian forms → Newton solver."""
        self.build_spaces()
        self.define_forms()
        self.create_solver()
        self._initialised = True

    @property
    def unknowns(self) -> list[Field]:
        """Fields with a residual (in the order of the block system)."""
        return [f for f in self.fields if f in self._residual_parts]

    @property
    def transient_fields(self) -> list[Field]:
        return [f for f in self.fields if f.transient]

    @property
    def entity_maps(self) -> list:
        return [f.entity_map for f in self.fields if f.entity_map is not None]

    def define_forms(self):
        parts: dict[Field, list[tuple[Term, ufl.Form]]] = {}
        for t in self.terms:
            for f, form in t.residuals(self).items():
                parts.setdefault(f, []).append((t, form))
        self._residual_parts = parts
        unknowns = [f for f in self.fields if f in parts]
        self.F_ufl = [_sum(form for _, form in parts[f]) for f in unknowns]
        self.J_ufl = None  # built by :meth:`jacobian_forms` when DOLFINx assembles (not for nodal assembly)

    def jacobian_forms(self):
        """The UFL Jacobian blocks (a term's exact blocks, else UFL's derivative)."""
        if self.J_ufl is not None:
            return self.J_ufl
        parts = self._residual_parts
        unknowns = self.unknowns
        J = []
        for row in unknowns:
            J_row = []
            for col in unknowns:
                blocks = []
                for t, form in parts[row]:
                    block = t.jacobian(self, row, col, form)
                    if block is None and _depends_on(form, col):
                        block = ufl.derivative(form, col.u, col.trial)
                    if block is not None:
                        blocks.append(block)
                J_row.append(_sum(blocks) if blocks else None)
            J.append(J_row)
        self.J_ufl = J
        return J

    def _auto_linear_solver(self, unknowns: list[Field]) -> dict:
        """Linear solver by size, unless the user chose one: direct LU with PETSc's own
        factorisation and METIS nested dissection for one field up to :data:`SMALL_LU_DOFS` unknowns
        (several times faster than MUMPS there; sequential MUMPS for several fields); on several
        ranks every rank factorises the whole gathered matrix so (``pc_type = redundant``), which
        keeps parallel runs bit-reproducible (see :data:`SMALL_LU_DOFS`); GMRES with algebraic
        multigrid (GAMG) for single-field 3D problems from :data:`ITERATIVE_MIN_DOFS_3D` unknowns;
        MUMPS LU otherwise. The choice is kept in
        :attr:`linear_solver`."""
        user = self._user_options
        self.linear_solver = "lu (mumps)"
        if any(k in user for k in ("ksp_type", "pc_type", "pc_factor_mat_solver_type")):
            self.linear_solver = "user: " + ", ".join(f"{k}={user[k]}" for k in ("ksp_type", "pc_type",
                                                      "pc_factor_mat_solver_type") if k in user)
            return {}
        n = sum(f.num_dofs for f in unknowns)
        if len(unknowns) == 1 and unknowns[0].mesh.topology.dim == 3 and n >= ITERATIVE_MIN_DOFS_3D:
            self.linear_solver = "gmres + gamg"
            self.petsc_options.pop("pc_factor_mat_solver_type", None)  # (LU's; unused by GAMG)
            # tied to Newton: a linear solve need not go below a tenth of the Newton tolerance
            return dict(ITERATIVE_OPTIONS, ksp_atol=0.1 * float(self.petsc_options["snes_atol"]))
        if n > SMALL_LU_DOFS:
            return {}
        # one field: PETSc's LU (no pivoting: fine for the diffusion Jacobian); several (an electrode's
        # saddle-like blocks, a real unknown): MUMPS, which pivots
        if len(unknowns) == 1:
            ordering = "metisnd" if _ordering_available("metisnd") else "nd"
            lu, inner = f"lu (petsc, {ordering})", {"pc_factor_mat_solver_type": "petsc",
                                                    "pc_factor_mat_ordering_type": ordering}
        else:
            lu, inner = "lu (mumps)", {"pc_factor_mat_solver_type": "mumps"}
        if self.comm.size == 1:
            self.linear_solver = lu
            return inner
        self.linear_solver = f"{lu}, redundant on {self.comm.size} ranks"
        self.petsc_options.pop("pc_factor_mat_solver_type", None)  # (the outer PC is not LU)
        return {"pc_type": "redundant", "redundant_ksp_type": "preonly", "redundant_pc_type": "lu"} | {
            f"redundant_{k}": v for k, v in inner.items()}

    def nodal_assembly_spec(self) -> dict | None:
        """The terms' contributions to :class:`~.assembly.NodalAssembler`, or None if some term
        (or the problem: several fields, Dirichlet data, several ranks) needs DOLFINx's forms."""
        unknowns = self.unknowns
        if len(unknowns) != 1 or unknowns[0].is_real or self.bcs or unknowns[0].tags is not None:
            return None
        from .assembly import NODAL_MAX_CELLS, is_affine

        tdim = self.mesh.topology.dim
        if not is_affine(self.mesh) or self.mesh.topology.index_map(tdim).size_local > NODAL_MAX_CELLS[tdim]:
            return None
        spec = {"loads": []}
        for t in self.terms:
            part = t.nodal_assembly(self)
            if part is None:
                return None
            spec["loads"] += part.pop("loads", [])
            spec.update(part)
        return spec if "mass" in spec and "diffusion" in spec else None

    def create_solver(self):
        unknowns = self.unknowns
        self.petsc_options.update(self._auto_linear_solver(unknowns))
        if self.assembly != "forms":
            spec = self.nodal_assembly_spec()
            if spec is None and self.assembly == "nodal":
                raise ValueError("nodal assembly needs one P1/P2 field on the whole (affine simplex) mesh with "
                                 "TimeDerivative, NonlinearDiffusion and SurfaceFlux terms only")
            if spec is not None:
                self._create_nodal_solver(unknowns[0], spec)
                return
        import dolfinx.fem.petsc  # (imported when DOLFINx assembles: its cffi set-up costs ~0.1 s)

        emaps = self.entity_maps or None
        opts = self.petsc_options
        J_ufl = self.jacobian_forms()
        if len(unknowns) == 1:
            self.problem = dolfinx.fem.petsc.NonlinearProblem(
                self.F_ufl[0], unknowns[0].u, J=J_ufl[0][0], bcs=self.bcs or None,
                petsc_options_prefix=self.prefix, petsc_options=opts, entity_maps=emaps)
        else:
            self.problem = dolfinx.fem.petsc.NonlinearProblem(
                self.F_ufl, [f.u for f in unknowns], J=J_ufl, bcs=self.bcs or None, kind="mpi",
                petsc_options_prefix=self.prefix, petsc_options=opts, entity_maps=emaps)
        self._install_callbacks(unknowns)
        if self.block_tolerances is not None and len(unknowns) > 1:
            self._install_block_convergence_test(unknowns)

    def _create_nodal_solver(self, f: Field, spec: dict):
        from .assembly import NodalAssembler

        self.assembler = asm = NodalAssembler(f, self, mass=spec["mass"], diffusion=spec["diffusion"],
                                              loads=spec["loads"], ordering=self._nodal_ordering())
        self.problem = _NodalNonlinearProblem(self, f, asm)

    def _nodal_ordering(self) -> str | None:
        """The fill-reducing ordering the nodal assembler numbers its matrix in (one rank, the automatic
        PETSc LU): computed once per mesh instead of by every solver's factorisation (1.7 ms of a
        ~50 ms warm Fig. 4c run at 767 unknowns); the LU then uses the natural ordering of that numbering."""
        opts, user = self.petsc_options, self._user_options
        ordering = opts.get("pc_factor_mat_ordering_type")
        if (self.comm.size != 1 or opts.get("pc_factor_mat_solver_type") != "petsc" or ordering is None
                or "pc_factor_mat_ordering_type" in user or not self.linear_solver.startswith("lu (petsc")):
            return None
        return ordering

    # ------------------------------------------------------------------ SNES glue
    def _install_block_convergence_test(self, unknowns):
        sizes = [f.n_owned for f in unknowns]
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        max_it = int(self.petsc_options.get("snes_max_it", 50))
        comm = self.comm
        me = weakref.proxy(self)  # the SNES keeps its callbacks: a strong reference would keep the problem forever

        history: list[float] = []

        def test(snes, it, norms):
            _, _, fnorm = norms
            if not np.isfinite(fnorm):
                return PETSc.SNES.ConvergedReason.DIVERGED_FNORM_NAN
            if it == 0:
                history.clear()
            history.append(fnorm)
            r = snes.getFunction()[0].array_r
            local = np.array([float(np.dot(r[a:b], r[a:b])) for a, b in zip(offsets[:-1], offsets[1:])])
            block = np.sqrt(comm.allreduce(local, op=MPI.SUM))
            if np.all(block <= me._block_atol):
                return PETSc.SNES.ConvergedReason.CONVERGED_FNORM_ABS
            # round-off floor: within 100× of every tolerance and no longer decreasing (< 10 % per
            # iteration twice in a row) — the residual cannot get smaller in floating point
            if (it >= 2 and np.all(block <= 100.0 * me._block_atol)
                    and history[-1] > 0.9 * history[-2] and history[-2] > 0.9 * history[-3]):
                return PETSc.SNES.ConvergedReason.CONVERGED_FNORM_ABS
            if it >= max_it:
                return PETSc.SNES.ConvergedReason.DIVERGED_MAX_IT
            return PETSc.SNES.ConvergedReason.ITERATING

        self.problem.solver.setConvergenceTest(test)
    def update_coefficients(self):
        for t in self.terms:
            if t.auto_update:
                t.update(self)

    def _install_callbacks(self, unknowns):
        """Own SNES callbacks: copy the iterate into the fields, refresh nodal coefficients,
        assemble. A Ctrl-C inside PETSc is turned into a flag (see :meth:`solve`)."""
        import dolfinx.fem.petsc

        snes = self.problem.solver
        counters, clock = self.counters, MPI.Wtime
        # the callbacks hold the problem weakly: the SNES (C level, invisible to the garbage collector)
        # keeps them, and a strong reference would keep every problem, its meshes and their MPI
        # communicators alive for the life of the process (MPICH runs out after ~2000 communicators)
        me = weakref.proxy(self)
        if len(unknowns) == 1 and not self.bcs:
            # one field, no Dirichlet condition: a plain vector assembly (the generic callback
            # also applies lifting, which costs a Jacobian-sized pass)
            u = unknowns[0].u
            F_form, J_form = self.problem.F, self.problem.J
            n = unknowns[0].n_owned
            assemble_vector = dolfinx.fem.petsc.assemble_vector
            assemble_matrix = dolfinx.fem.petsc.assemble_matrix

            def residual(snes_, x, b):
                t0 = clock()
                x.ghostUpdate(addv=PETSc.InsertMode.INSERT, mode=PETSc.ScatterMode.FORWARD)
                with x.localForm() as xl:
                    u.x.array[:] = xl.array_r
                me.update_coefficients()
                with b.localForm() as bl:
                    bl.set(0.0)
                assemble_vector(b, F_form)
                b.ghostUpdate(addv=PETSc.InsertMode.ADD, mode=PETSc.ScatterMode.REVERSE)
                counters.residual_evaluations += 1
                counters.assembly_time += clock() - t0

            def jacobian(snes_, x, A, P):
                if me._reuse_jacobian(snes_):
                    return
                t0 = clock()
                # normally the point of the last residual evaluation; refresh the coefficients if not
                if not np.array_equal(x.array_r[:n], u.x.array[:n]):
                    x.ghostUpdate(addv=PETSc.InsertMode.INSERT, mode=PETSc.ScatterMode.FORWARD)
                    with x.localForm() as xl:
                        u.x.array[:] = xl.array_r
                    me.update_coefficients()
                A.zeroEntries()
                assemble_matrix(A, J_form)
                A.assemble()
                counters.jacobian_evaluations += 1
                counters.assembly_time += clock() - t0

            snes.setFunction(_guarded(me, residual), self.problem.b)
            snes.setJacobian(_guarded(me, jacobian), self.problem.A, None)
            return

        funcs = [f.u for f in unknowns] if len(unknowns) > 1 else unknowns[0].u
        J_ctx = {"u": self.problem.u, "jacobian": self.problem.J, "preconditioner": None, "bcs": self.bcs}
        assemble_J = dolfinx.fem.petsc.assemble_jacobian
        assign = dolfinx.fem.petsc.assign
        F_forms = self.problem.F
        blocks = self.problem.b.getAttr("_blocks")
        bcs0 = ([[bc for g, bc in self._bc_fields if g is f] for f in unknowns] if len(unknowns) > 1
                else self.bcs)
        assemble_vector = dolfinx.fem.petsc.assemble_vector
        set_bc = dolfinx.fem.petsc.set_bc

        def residual(snes_, x, b):
            # No lifting: :meth:`solve` imposes the Dirichlet data on the initial guess, so every
            # Newton update vanishes on the constrained DOFs and the lifting term is zero.
            t0 = clock()
            x.ghostUpdate(addv=PETSc.InsertMode.INSERT, mode=PETSc.ScatterMode.FORWARD)
            assign(x, funcs)
            me.update_coefficients()
            if blocks is not None:
                b.setAttr("_blocks", blocks)
                x.setAttr("_blocks", blocks)
            with b.localForm() as bl:
                bl.set(0.0)
            assemble_vector(b, F_forms)
            b.ghostUpdate(addv=PETSc.InsertMode.ADD, mode=PETSc.ScatterMode.REVERSE)
            set_bc(b, bcs0, x0=x, alpha=-1.0)
            b.ghostUpdate(addv=PETSc.InsertMode.INSERT, mode=PETSc.ScatterMode.FORWARD)
            counters.residual_evaluations += 1
            counters.assembly_time += clock() - t0

        def jacobian(snes_, x, A, P):
            if me._reuse_jacobian(snes_):
                return
            t0 = clock()
            assign(x, funcs)
            me.update_coefficients()
            assemble_J(snes_, x, A, P, **J_ctx)
            counters.jacobian_evaluations += 1
            counters.assembly_time += clock() - t0

        snes.setFunction(_guarded(me, residual), self.problem.b)
        snes.setJacobian(_guarded(me, jacobian), self.problem.A, self.problem.P_mat)

    # ------------------------------------------------------------------ Newton stopping
    def set_update_tolerance(self, tol: float | None) -> bool:
        """Also stop Newton once the iterate is within ``tol`` (∞-norm, the unknown's units) of the
        solution, as estimated from the last two updates: |Δu_k|∞ · min(1, |Δu_k|∞ / |Δu_{k-1}|∞)
        (the last update times the observed contraction; Newton's is quadratic, so this
        over-estimates), provided the iterate conserves what every full Newton step conserves to
        round-off (|Σ F| ≤ ``snes_atol``: the Li balance of a step). The time loop sets ``tol`` to
        a small fraction of its local error tolerance: iterating far below the temporal error
        buys nothing. With it, the Jacobian is refactorised every :data:`NEWTON_LAG_JACOBIAN`
        iterations: on the others the callback leaves the matrix untouched, so PETSc keeps its
        factorisation (a chord step, which keeps the balance exact and contracts by ~|Δu_0|),
        unless the user set ``snes_lag_jacobian``.

        Only for one unknown field without block tolerances, and not when the user set a Newton
        tolerance (``snes_rtol``/``snes_atol``/``snes_stol``) in ``petsc_options``: then PETSc's own
        test stays. ``None`` restores it. Returns whether the criterion is in effect."""
        user = self._user_options
        if (tol is None or len(self.unknowns) != 1 or self.block_tolerances is not None
                or any(k in user for k in ("snes_rtol", "snes_atol", "snes_stol"))):
            if self._update_tol is not None:
                self.problem.solver.setConvergenceTest("default")
                self._update_tol, self._lag_jacobian = None, 1
            return False
        if self._update_tol is None:
            self._install_update_convergence_test()
            if "snes_lag_jacobian" not in user:  # (PETSc's own lag, if set, acts before our callback)
                self._lag_jacobian = NEWTON_LAG_JACOBIAN
        self._update_tol = float(tol)
        # the nodal problem on one rank may run the same Newton iteration itself when PETSc's SNES adds
        # nothing the user asked for (see _NodalNonlinearProblem.own_newton)
        self._own_newton = not any(k.startswith("snes_") and k != "snes_max_it" for k in user)
        return True

    def _reuse_jacobian(self, snes) -> bool:
        """Whether this Newton iteration keeps the last Jacobian (and so its factorisation: the matrix
        state is left unchanged, and PETSc sets the linear solver up again only for a changed one)."""
        return self._lag_jacobian > 1 and snes.getIterationNumber() % self._lag_jacobian != 0

    def _install_update_convergence_test(self):
        snes = self.problem.solver
        opts = self.petsc_options
        atol, rtol = float(opts["snes_atol"]), float(opts["snes_rtol"])
        stol = float(opts.get("snes_stol", 0.0))
        max_it = int(opts.get("snes_max_it", 50))
        me = weakref.proxy(self)  # (the SNES keeps its callbacks: see _install_callbacks)
        Reason = PETSc.SNES.ConvergedReason
        INF = PETSc.NormType.INFINITY
        state = {"ttol": 0.0, "last": None}

        def test(snes_, it, norms):
            xnorm, ynorm, fnorm = norms
            # PETSc's default test first (SNESConvergedDefault)
            if not np.isfinite(fnorm):
                return Reason.DIVERGED_FNORM_NAN
            if it == 0:
                state["ttol"], state["last"] = max(atol, rtol * fnorm), None
            if fnorm < atol:
                return Reason.CONVERGED_FNORM_ABS
            if it == 0:
                return Reason.ITERATING
            if it >= max_it:
                return Reason.DIVERGED_MAX_IT
            if fnorm <= state["ttol"]:
                return Reason.CONVERGED_FNORM_RELATIVE
            if ynorm < stol * xnorm:
                return Reason.CONVERGED_SNORM_RELATIVE
            # the estimated distance to the solution, and the balance of the iterate
            step = snes_.getSolutionUpdate().norm(INF)
            last, state["last"] = state["last"], step
            if last is not None and step * min(1.0, step / last) <= me._update_tol:
                if abs(snes_.getFunction()[0].sum()) <= atol:
                    return Reason.CONVERGED_SNORM_RELATIVE
            return Reason.ITERATING

        snes.setConvergenceTest(test)

    # ------------------------------------------------------------------ time stepping
    def set_time_step(self, dt: float, dt_prev: float | None, order: int):
        """dt and the (variable-step) BDF coefficients of the next step."""
        self.dt.value = dt
        if order == 1 or dt_prev is None:
            coeffs = (1.0, -1.0, 0.0)
        else:
            w = dt / dt_prev
            coeffs = ((1 + 2 * w) / (1 + w), -(1 + w), w * w / (1 + w))
        for c, val in zip(self.bdf, coeffs):
            c.value = val
        return coeffs

    def solve(self) -> StepResult:
        """One Newton solve from the fields' current values; counts and times it.

        A SIGINT during the solve ends it (not converged) and sets :attr:`interrupted`; the
        caller decides what to do (the time loop checkpoints and stops)."""
        t0 = MPI.Wtime()
        a_before = self.counters.assembly_time
        snes = self.problem.solver
        for f, bc in self._bc_fields:
            bc.set(f.u.x.array)  # the initial guess meets the Dirichlet data (no lifting needed)
        if self.block_tolerances is not None:
            self._block_atol = np.asarray(self.block_tolerances(self), dtype=float)
        self._abort, self._error = False, None
        outcome = None
        with _sigint_as_flag(self):
            try:
                outcome = self.problem.solve()
                reason = snes.getConvergedReason()
            except PETSc.Error:
                reason = -100
        if self._error is not None:
            raise self._error
        if self._abort:  # Ctrl-C inside a callback: the SNES stopped at once
            reason = -101
        its = snes.getIterationNumber()
        lits = snes.getLinearSolveIterations()
        if isinstance(outcome, NewtonOutcome):  # the nodal problem's own Newton loop (see there)
            reason, its, lits = outcome.reason, outcome.iterations, outcome.linear_iterations
        ok = reason > 0
        for f in self.unknowns:
            ok = ok and bool(np.all(np.isfinite(f.u.x.array)))
        one = self.comm.size == 1
        converged = bool(ok if one else self.comm.allreduce(ok, op=MPI.LAND))
        wall = MPI.Wtime() - t0
        asm = self.counters.assembly_time - a_before
        self.counters.newton_iterations += its
        self.counters.linear_iterations += lits
        self.counters.solve_time += wall - asm
        self.interrupted = bool(self.interrupted if one else self.comm.allreduce(self.interrupted, op=MPI.LOR))
        return StepResult(converged, its, lits, reason, asm, wall - asm)

    def accept(self):
        """Shift the histories after an accepted step."""
        for f in self.fields:
            if f.u_nm1 is not None:
                f.u_nm1.x.array[:] = f.u_n.x.array
            f.u_n.x.array[:] = f.u.x.array

    def restore(self):
        """Put every field back to its last accepted value (after a failed solve)."""
        for f in self.fields:
            f.u.x.array[:] = f.u_n.x.array

    # ------------------------------------------------------------------ state
    def close(self) -> None:
        """Free the PETSc objects of the solve now (collective: every rank calls it at the same
        point). Left to Python's cyclic garbage collector they would be destroyed at different
        moments on different ranks — and MUMPS' finalisation is collective, so a job can hang."""
        nl = getattr(self, "problem", None)
        if nl is None:
            return
        for name in ("solver", "_snes", "A", "_A", "b", "_b", "x", "_x", "_dx", "_x0", "P_mat", "_P_mat"):
            obj = vars(nl).get(name)
            if obj is not None and hasattr(obj, "destroy"):
                obj.destroy()
        self.problem = None

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Owned values of every field's history, keyed ``field:which`` (what a checkpoint stores)."""
        out = {}
        for f in self.fields:
            n = f.n_owned
            for which, fn in f.history().items():
                out[f"{f.name}:{which}"] = fn.x.array[:n].copy()
            out[f"{f.name}:u"] = f.u.x.array[:n].copy()
        for name, fn in self.extra_state.items():
            out[f"extra:{name}"] = fn.x.array[: fn.function_space.dofmap.index_map.size_local].copy()
        return out

    def load_state_arrays(self, data) -> None:
        """Inverse of :meth:`state_arrays`; raises KeyError/ValueError on a mismatch."""
        for f in self.fields:
            n = f.n_owned
            for which, fn in list(f.history().items()) + [("u", f.u)]:
                arr = np.asarray(data[f"{f.name}:{which}"])
                if arr.shape != (n,):
                    raise ValueError(f"{f.name}:{which} has {arr.shape} values, expected ({n},)")
                fn.x.array[:n] = arr
                fn.x.scatter_forward()
        for name, fn in self.extra_state.items():
            n = fn.function_space.dofmap.index_map.size_local
            arr = np.asarray(data[f"extra:{name}"])
            if arr.shape != (n,):
                raise ValueError(f"extra:{name} has {arr.shape} values, expected ({n},)")
            fn.x.array[:n] = arr
            fn.x.scatter_forward()

    @property
    def num_dofs(self) -> int:
        return sum(f.num_dofs for f in self.unknowns) if self._initialised else sum(f.num_dofs for f in self.fields)


#: The Newton update criterion (:meth:`Problem.set_update_tolerance`) refactorises the Jacobian every
#: this many iterations.
NEWTON_LAG_JACOBIAN = 2

# ---------------------------------------------------------------------- linear solver by size
#: Up to this many unknowns: PETSc's LU with METIS ordering (one rank: measured 2-3x faster than
#: MUMPS on 2D particle meshes of 400-3000 unknowns, equal at ~8000; benchmarks/README.md). On several
#: ranks each rank factorises the whole gathered matrix (``pc_type = redundant``): MUMPS in parallel
#: is not reproducible from run to run — its dynamic scheduling reorders floating-point sums, and of
#: 300 refactorisations of one 2-rank matrix 12-350 came out different in the last digits (more
#: under load), so neither two parallel runs nor a resumed one would agree bit for bit; the
#: redundant LU never differed and took 0.85x MUMPS' time at 3.7 k unknowns, 1.3x at 15 k.
SMALL_LU_DOFS = 20_000
#: 3D problems from this many unknowns: GMRES + GAMG instead of LU (fill and factorisation time
#: grow much faster than the unknowns in 3D; LU does not scale across ranks). GMRES, not CG: the
#: Jacobian of D(θ)∇θ is not symmetric. ``ksp_atol`` is set per problem to 0.1 × ``snes_atol``;
#: ``ksp_rtol`` = 1e-8 keeps Newton's quadratic convergence and the Li balance ≤ 1e-10
#: (tests/test_extrude.py; benchmarks/prism_3d.py measures it at scale).
ITERATIVE_MIN_DOFS_3D = 100_000
ITERATIVE_OPTIONS = {
    "ksp_type": "gmres",
    "ksp_rtol": 1e-8,
    "ksp_max_it": 200,
    "pc_type": "gamg",
    "pc_gamg_reuse_interpolation": True,
}


def _ordering_available(name: str) -> bool:
    """Whether this PETSc build provides a matrix ordering (e.g. METIS nested dissection)."""
    cache = _ordering_available.__dict__.setdefault("cache", {})
    if name not in cache:
        A = PETSc.Mat().createAIJ((2, 2), nnz=1, comm=MPI.COMM_SELF)
        A.setValue(0, 0, 2.0)
        A.setValue(1, 1, 2.0)
        A.assemble()
        ksp = PETSc.KSP().create(MPI.COMM_SELF)
        ksp.setType("preonly")
        pc = ksp.getPC()
        pc.setType("lu")
        pc.setFactorSolverType("petsc")
        pc.setFactorOrdering(name)
        ksp.setOperators(A)
        try:
            ksp.setUp()
            cache[name] = True
        except PETSc.Error:
            cache[name] = False
        finally:
            ksp.destroy()
            A.destroy()
    return cache[name]


# ---------------------------------------------------------------------- nodal path
ASSEMBLY_MODES = ("auto", "forms", "nodal")


class _NodalNonlinearProblem:
    """SNES on the :class:`~.assembly.NodalAssembler` of a single field: the attributes of
    DOLFINx's ``NonlinearProblem`` that :class:`Problem` uses (``solver``, ``A``, ``b``, ``x``,
    ``solve``); no residual or Jacobian forms are compiled. On one rank the matrix shares the
    assembler's CSR values; on several, each rank adds its cells' entries (ghost rows go to
    their owners in the assembly) and the residual's ghost entries are summed the same way.
    With an ordering (``assembler.perm``, one rank) PETSc's vectors and matrix are in that numbering:
    entry i is DOF perm[i]."""

    def __init__(self, problem: Problem, field: Field, assembler):
        comm = problem.comm
        self.u = field.u
        self.F = self.J = None
        serial = comm.size == 1
        V = field.V
        if serial:
            self.A = assembler.create_matrix(comm)
            n = assembler.n
            self.b = PETSc.Vec().createSeq(n, comm=comm)
            self.x = PETSc.Vec().createSeq(n, comm=comm)
        else:
            import dolfinx.fem.petsc

            # the cell-wise sparsity pattern, with DOLFINx's local-to-global maps
            pattern_form = fem.form(field.trial * field.test * ufl.dx(domain=V.mesh))
            self.A = dolfinx.fem.petsc.create_matrix(pattern_form)
            self.b = dolfinx.fem.petsc.create_vector(V)
            self.x = dolfinx.fem.petsc.create_vector(V)
        self.solver = snes = PETSc.SNES().create(comm)
        prefix = problem.prefix
        snes.setOptionsPrefix(prefix)
        self.A.setOptionsPrefix(f"{prefix}A_")
        perm, iperm = (assembler.perm, assembler.iperm) if serial else (None, None)
        options = dict(problem.petsc_options)
        if perm is not None:  # the matrix is already in the fill-reducing numbering
            options["pc_factor_mat_ordering_type"] = "natural"
        # set with the prefix written out and removed the same way (a pushed prefix applies to setting
        # only: the options would stay in PETSc's database and reach the next solver of this prefix)
        opts = PETSc.Options()
        for k, v in options.items():
            opts[f"{prefix}{k}"] = v
        snes.setFromOptions()
        for k in options:
            del opts[f"{prefix}{k}"]
        counters, clock = problem.counters, MPI.Wtime
        u = field.u.x.array
        # the callbacks hold the problem weakly (as Problem's own): the SNES keeps them at C level,
        # where the garbage collector cannot see a cycle — a strong reference leaks every solver
        me = weakref.proxy(problem)

        def update():
            me.update_coefficients()

        pattern = assembler.pattern
        INSERT, ADD = PETSc.InsertMode.INSERT, PETSc.InsertMode.ADD
        FORWARD, REVERSE = PETSc.ScatterMode.FORWARD, PETSc.ScatterMode.REVERSE

        F = np.zeros(len(u)) if perm is not None else None  # the residual in DOF order

        def load_iterate(x):
            if perm is not None:
                np.take(x.array_r, iperm, out=u)
            elif serial:
                u[:] = x.array_r
            else:
                x.ghostUpdate(addv=INSERT, mode=FORWARD)
                with x.localForm() as xl:
                    u[:] = xl.array_r

        def residual(snes_, x, b):
            t0 = clock()
            load_iterate(x)
            update()
            if serial:
                with b as out:  # (the context bumps the vector's state: SNES's cached norm is refreshed)
                    if perm is None:
                        assembler.residual(out)
                    else:
                        np.take(assembler.residual(F), perm, out=out)
            else:
                with b.localForm() as bl:
                    assembler.residual(bl.array_w)
                b.ghostUpdate(addv=ADD, mode=REVERSE)
            counters.residual_evaluations += 1
            counters.assembly_time += clock() - t0

        def jacobian(snes_, x, A, P):
            if snes_ is not None and me._reuse_jacobian(snes_):
                return
            t0 = clock()
            # normally the point of the last residual evaluation: its cell terms are reused
            if serial:
                if not np.array_equal(x.array_r, u if perm is None else u[perm]):
                    load_iterate(x)
                    update()
                    assembler.invalidate()
            else:
                load_iterate(x)
                if assembler.last_iterate is None or not np.array_equal(u, assembler.last_iterate):
                    update()
                    assembler.invalidate()
            values = assembler.jacobian()
            if serial:
                A.assemble()  # the values are shared with the matrix; this marks them changed
            else:
                A.zeroEntries()
                A.setValuesLocalCSR(pattern.indptr, pattern.indices, values, addv=ADD)
                A.assemble()
            counters.jacobian_evaluations += 1
            counters.assembly_time += clock() - t0

        snes.setFunction(_guarded(me, residual), self.b)
        snes.setJacobian(_guarded(me, jacobian), self.A, None)
        self._serial = serial
        self._perm, self._iperm = perm, iperm
        self._residual, self._jacobian, self._problem = residual, jacobian, me
        self._dx = self.x.duplicate() if serial else None
        self._x0 = self.x.duplicate() if serial else None

    def solve(self):
        if self._serial:
            u, perm = self.u.x.array, self._perm
            with self.x as xa:
                xa[:] = u if perm is None else u[perm]
            outcome = self.own_newton() if self._problem._own_newton else None
            if outcome is None:
                self.solver.solve(None, self.x)
            u[:] = self.x.array_r if perm is None else self.x.array_r[self._iperm]
            return outcome
        else:
            import dolfinx.fem.petsc

            dolfinx.fem.petsc.assign(self.u, self.x)
            self.solver.solve(None, self.x)
            self.x.ghostUpdate(addv=PETSc.InsertMode.INSERT, mode=PETSc.ScatterMode.FORWARD)
            dolfinx.fem.petsc.assign(self.x, self.u)
        return self.u

    def own_newton(self) -> NewtonOutcome | None:
        """The SNES's Newton iteration (same residual, Jacobian, lag, linear solver and tests, see
        :meth:`Problem.set_update_tolerance`), run here on one rank to save what the SNES cannot
        skip: it evaluates the residual after every update, also after the one that the update
        criterion accepts — a third of the residual evaluations of a typical two-iteration step.
        That last residual is not needed for the Li balance either: a full Newton (or chord) step
        solved exactly zeroes Σ F, whose diffusion part vanishes identically and whose mass part is
        the matrix's own. Every step is a full one; if the residual norm does not decrease, the
        solve starts again from the initial guess in the SNES (with its line search): returns None.
        Otherwise the outcome (a SNES converged reason, iterations, linear iterations)."""
        pb = self._problem
        opts = pb.petsc_options
        atol, rtol = float(opts["snes_atol"]), float(opts["snes_rtol"])
        max_it, lag, tol = int(opts.get("snes_max_it", 50)), pb._lag_jacobian, pb._update_tol
        Reason = PETSc.SNES.ConvergedReason
        x, b, dx, A = self.x, self.b, self._dx, self.A
        ksp = self.solver.getKSP()
        x.copy(self._x0)
        self._residual(None, x, b)
        fnorm = b.norm()
        if not np.isfinite(fnorm):
            return NewtonOutcome(int(Reason.DIVERGED_FNORM_NAN), 0, 0)
        if fnorm < atol:
            return NewtonOutcome(int(Reason.CONVERGED_FNORM_ABS), 0, 0)
        ttol, last, lits = max(atol, rtol * fnorm), None, 0
        ksp.setOperators(A, A)
        for k in range(max_it):
            if k % lag == 0:
                self._jacobian(None, x, A, None)
            ksp.solve(b, dx)
            lits += ksp.getIterationNumber()
            if ksp.getConvergedReason() < 0:
                break
            x.axpy(-1.0, dx)
            step = dx.norm(PETSc.NormType.INFINITY)
            if last is not None and step * min(1.0, step / last) <= tol:
                return NewtonOutcome(int(Reason.CONVERGED_SNORM_RELATIVE), k + 1, lits)
            last, fprev = step, fnorm
            self._residual(None, x, b)
            fnorm = b.norm()
            if not np.isfinite(fnorm) or fnorm >= fprev:
                break  # not decreasing: the SNES with its line search takes over
            if fnorm < atol:
                return NewtonOutcome(int(Reason.CONVERGED_FNORM_ABS), k + 1, lits)
            if fnorm <= ttol:
                return NewtonOutcome(int(Reason.CONVERGED_FNORM_RELATIVE), k + 1, lits)
        self._x0.copy(x)
        extras = pb.counters.extras
        extras["newton_fallbacks"] = extras.get("newton_fallbacks", 0) + 1
        return None

    def __del__(self):
        if sys.is_finalizing():  # interpreter exit: ranks get here at different moments; destroy is collective
            return
        for obj in (getattr(self, "solver", None), getattr(self, "A", None), getattr(self, "b", None),
                    getattr(self, "x", None), getattr(self, "_dx", None), getattr(self, "_x0", None)):
            if obj is not None:
                obj.destroy()


# ---------------------------------------------------------------------- helpers
def _sum(forms):
    forms = list(forms)
    out = forms[0]
    for f in forms[1:]:
        out = out + f
    return out


def _depends_on(form: ufl.Form, f: Field) -> bool:
    return f.u in form.coefficients()


def _guarded(problem: Problem, callback):
    """Wrap a SNES callback so that no exception crosses into PETSc (which would leave the SNES
    in an error state for every later solve): a Ctrl-C sets ``problem.interrupted``, any other
    exception is kept and re-raised by :meth:`Problem.solve`; either way the residual becomes
    NaN so that SNES stops at once."""

    def wrapped(snes_, x, *args):
        if problem._abort:
            _poison(args[0])
            return
        try:
            callback(snes_, x, *args)
        except KeyboardInterrupt:
            problem.interrupted = True
            problem._abort = True
            _poison(args[0])
        except BaseException as exc:  # noqa: BLE001 - re-raised after SNESSolve returns
            problem._abort = True
            problem._error = exc
            _poison(args[0])

    return wrapped


def _poison(obj):
    if isinstance(obj, PETSc.Vec):
        with obj.localForm() as loc:
            loc.set(np.nan)


class _sigint_as_flag:
    """While solving, SIGINT sets ``problem.interrupted`` instead of raising inside PETSc."""

    def __init__(self, problem: Problem):
        self.problem = problem
        self.previous = None

    def __enter__(self):
        try:
            self.previous = signal.getsignal(signal.SIGINT)
            if self.previous is signal.default_int_handler:
                signal.signal(signal.SIGINT, self._handler)
            else:
                self.previous = None
        except ValueError:  # not the main thread
            self.previous = None
        return self

    def _handler(self, signum, frame):  # noqa: ARG002
        self.problem.interrupted = True

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        return False
