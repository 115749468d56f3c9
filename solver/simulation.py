"""Time integration of a protocol: adaptive steps, exact step ends, located stop events.

Time scheme: variable-step BDF2 (default; restarted with one backward-Euler step after
every protocol step, where the flux jumps) or backward Euler. Both conserve Li exactly
for piecewise-constant fluxes. Step-size control: the local error is estimated from the
difference between the implicit solution and a linear extrapolation of the last two
states (Milne's device; exact for BE, conservative for BDF2); steps grow when easy and
are cut and retried when the error exceeds ``theta_tol`` or Newton fails. Step ends and snapshot times are hit exactly;
a stop condition (e.g. surface θ reaching 0.2) is located by regula falsi on the step
length, so the run stops within ``event_tol`` of the threshold, not a step later.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from nmcfx.errors import InputError, SolverError
from nmcfx.materials.constants import FARADAY

from .protocol import Protocol, Step


#: Newton's estimated remaining error in θ at which a step's solve stops, as a fraction of
#: ``theta_tol`` (:meth:`~nmcfx.solver.problem.Problem.set_update_tolerance`): 1 % of the local
#: error the step is allowed anyway; Newton's quadratic convergence leaves far less in practice.
NEWTON_ERROR_FRACTION = 1e-2
#: the largest ``theta_tol`` a config may set
THETA_TOL_MAX = 0.05


@dataclass(frozen=True)
class SolverSettings:
    # None: chosen by the run path (solver.run.particle_degree): 2 for 2D particles with a prescribed
    # flux, else 1; a TransportSolver built directly with degree=None uses 1
    degree: int | None = None
    time_scheme: str = "bdf2"  # "bdf2" (variable-step, restarted with BE after each protocol step) | "bdf1"
    mass_lumping: bool = True
    dt_initial_s: float = 0.5
    dt_min_s: float = 1e-6
    dt_max_s: float = 120.0
    theta_tol: float = 2e-3  # local error per step, absolute in θ (max norm)
    growth_max: float = 2.0
    event_tol: float = 1e-6  # |θ - threshold| at which a stop event counts as located
    thickness_um: float = 1.0  # 2D only: depth of the prism the cross-section represents
    checkpoint_wall_s: float = 120.0  # wall time between checkpoints (also at every protocol-step end)
    petsc_options: dict = field(default_factory=dict)
    # "auto": NumPy on precomputed element tensors where the problem allows it (solver/assembly.py),
    # else DOLFINx's forms; "forms": always DOLFINx (same discrete problem, for comparisons)
    assembly: str = "auto"

    @classmethod
    def from_dict(cls, d: dict | None) -> "SolverSettings":
        d = dict(d or {})
        names = {f for f in cls.__dataclass_fields__}
        extra = set(d) - names
        if extra:
            raise InputError("solver", f"unknown key(s) {sorted(extra)}; allowed: {sorted(names)}")
        out = {}
        # allowed ranges (lower bound excluded): θ tolerances are absolute occupancies in (0, 1)
        ranges = {"dt_initial_s": (0.0, 1e6, "s"), "dt_min_s": (0.0, 1e3, "s"), "dt_max_s": (0.0, 1e6, "s"),
                  "theta_tol": (0.0, THETA_TOL_MAX, ""), "event_tol": (0.0, 0.01, ""),
                  "thickness_um": (0.0, 1e4, "µm"),
                  "checkpoint_wall_s": (0.0, 1e7, "s")}
        for key, (lo, hi, unit) in ranges.items():
            if key in d:
                v = d[key]
                if (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                        or not lo < v <= hi):
                    rng = f"({lo:g}, {hi:g}]" + (f" {unit}" if unit else "")
                    raise InputError(f"solver.{key}", f"must be a number in {rng}, got {v!r}")
                out[key] = float(v)
        if "growth_max" in d:
            v = d["growth_max"]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 1.0 < v <= 10.0:
                raise InputError("solver.growth_max", f"must be in (1, 10], got {v!r}")
            out["growth_max"] = float(v)
        if "degree" in d:
            if d["degree"] not in (1, 2) or isinstance(d["degree"], bool):
                raise InputError("solver.degree", f"must be 1 or 2, got {d['degree']!r}")
            out["degree"] = int(d["degree"])
        if "time_scheme" in d:
            if d["time_scheme"] not in ("bdf1", "bdf2"):
                raise InputError("solver.time_scheme", f"must be 'bdf1' or 'bdf2', got {d['time_scheme']!r}")
            out["time_scheme"] = d["time_scheme"]
        if "assembly" in d:
            if d["assembly"] not in ("auto", "forms"):
                raise InputError("solver.assembly", f"must be 'auto' or 'forms', got {d['assembly']!r}")
            out["assembly"] = d["assembly"]
        if "mass_lumping" in d:
            if not isinstance(d["mass_lumping"], bool):
                raise InputError("solver.mass_lumping", f"must be true or false, got {d['mass_lumping']!r}")
            out["mass_lumping"] = d["mass_lumping"]
        if "petsc_options" in d:
            if not isinstance(d["petsc_options"], dict):
                raise InputError("solver.petsc_options", "must be a table of PETSc option names to values")
            from .petsc_options import check_petsc_options  # a throw-away PETSc set-up: fails here, not mid-run

            out["petsc_options"] = check_petsc_options(dict(d["petsc_options"]))
        s = cls(**out)
        if s.dt_min_s > s.dt_max_s or s.dt_initial_s > s.dt_max_s:
            raise InputError("solver", "need dt_min_s <= dt_initial_s <= dt_max_s")
        return s

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class StepRecord:
    """One accepted time step: what timeseries.csv stores."""

    time_s: float
    protocol_step: int
    theta_mean: float
    theta_center: float
    theta_surface_min: float
    theta_surface_max: float
    voltage_V: float
    current_mA_g: float
    li_extracted_mol: float
    capacity_mAh_g: float
    li_rich_fraction: float
    d_um: float
    li_rich_com_x_um: float  # centre of mass of the Li-rich region (the particle's is in summary.json)
    li_rich_com_y_um: float
    mass_balance_error: float
    dt_s: float
    newton_iterations: int
    steps_total: int
    rejected_total: int
    newton_total: int
    linear_total: int


class Simulation:
    """Runs a :class:`Protocol` on a :class:`TransportSolver`.

    ``observers`` get ``start(sim)``, ``record(sim, rec)`` after every accepted step,
    ``snapshot(sim, t)`` at requested times, ``step_end(sim, info)`` and ``finish(sim)``.
    """

    def __init__(self, solver, material, protocol: Protocol, settings: SolverSettings,
                 *, snapshot_times_s=(), observers=(), center=None, li_rich_drop: float = 0.05 * 0.95):
        self.solver = solver
        self.material = material
        self.protocol = protocol
        self.settings = settings
        self.observers = list(observers)
        self.snapshot_times = sorted(float(t) for t in snapshot_times_s)
        self.li_rich_drop = li_rich_drop
        self.t = 0.0
        self.history: list = []
        self.step_log: list[dict] = []
        self._ledger = 0.0  # Li that left through the surface, µm^d of θ (the scheme's own quadrature)
        self._ledger_prev = 0.0
        self._I0 = None
        self._dt_prev = None
        self._have_prev = False
        self._checkpoint = None
        self._skip_group = None  # a GITT sequence ended by its stop condition
        self._step_capacity0 = 0.0  # capacity at the start of the current protocol step
        self._setup(center)
        # Newton stops once its remaining error is a small fraction of the step's error tolerance
        problem = getattr(solver, "problem", None)
        if hasattr(problem, "set_update_tolerance"):
            # (theta_tol beyond its allowed range — code that switches step control off with a huge
            # tolerance — does not loosen Newton beyond what the largest allowed one would)
            problem.set_update_tolerance(NEWTON_ERROR_FRACTION * min(settings.theta_tol, THETA_TOL_MAX))

    def _setup(self, center):
        """What the single particle observes: its area, reactive perimeter, blocking, centre probe."""
        solver, material = self.solver, self.material
        p = solver.particle
        self.dim = p.dim
        self.area = solver.volume  # µm² (2D) or µm³ (3D), from the mesh
        reactive = [s for s in p.reactive_sectors if s in p.sectors]
        self.reactive_sectors = reactive
        self.perimeter = sum(solver.sector_measure[s] for s in reactive)  # µm or µm²
        # blocking factors η_s (Lun 2025), owned by the solver (they enter its kinetics)
        self.sector_weights = {s: float(solver.eta[s].value) for s in reactive}
        self._j_per_mA_g = material.current_density_for_specific_current(1.0, self.area, self.perimeter)
        center = p.centroid if center is None else center
        solver.add_probe("center", np.atleast_2d(np.asarray(center, dtype=float)))

    def record_from_dict(self, d: dict):
        """A history record from its checkpointed form."""
        return StepRecord(**d)

    def _transient(self) -> list:
        """(u, u_n, u_{n-1}) functions of every transient field (predictor, error estimate)."""
        sv = self.solver
        if hasattr(sv, "transient_fields"):
            return [(f.u, f.u_n, f.u_nm1) for f in sv.transient_fields]
        return [(sv.theta, sv.theta_n, sv.theta_nm1)]

    # ------------------------------------------------------------------ physics glue
    def current_density(self, step: Step) -> float:
        """Mean boundary current density j̄ (A m⁻², positive for charge) of a step."""
        if step.kind in ("rest", "hold"):
            return 0.0
        if step.c_rate is not None:
            j = self.material.current_density_for_c_rate(step.c_rate, self.area, self.perimeter)
        else:
            j = self.material.current_density_for_specific_current(step.current_mA_g, self.area, self.perimeter)
        return step.sign * j

    def sector_fluxes(self, j_mean: float) -> dict[str, float]:
        """Per-sector θ flux (µm s⁻¹): j_s = η_s j_NMC with Σ j_s Γ_s = j̄ Γ."""
        meas = self.solver.sector_measure
        denom = sum(self.sector_weights[s] * meas[s] for s in self.reactive_sectors)
        j_nmc = j_mean * self.perimeter / denom if denom > 0 else 0.0
        scale = 1e6 / (FARADAY * self.material.site_concentration)  # (A m⁻²) → µm s⁻¹ of θ
        return {s: self.sector_weights[s] * j_nmc * scale for s in self.reactive_sectors}

    # ------------------------------------------------------------------ observables
    def observe(self) -> dict:
        sv = self.solver
        smin, smax = sv.surface_min_max()
        cur = sv.current_density() / self._j_per_mA_g
        frac, d, com = sv.li_rich_offset(self.protocol.initial_theta - self.li_rich_drop)
        return {
            "theta_mean": sv.theta_mean(),
            "theta_center": float(sv.probe("center")[0]),
            "theta_surface_min": float(smin),
            "theta_surface_max": float(smax),
            "voltage_V": sv.voltage,
            "current_mA_g": cur,
            "abs_current_mA_g": abs(cur),
            "li_rich_fraction": frac,
            "d_um": d,
            "li_rich_com_x_um": float(com[0]),
            "li_rich_com_y_um": float(com[1]),
        }

    def _li_mol(self, dI: float) -> float:
        depth = self.settings.thickness_um if self.dim == 2 else 1.0
        return self.material.site_concentration * dI * depth * 1e-18

    def _record(self, obs: dict, k: int, dt: float, its: int):
        sv = self.solver
        I = sv.integral_theta()
        c = sv.counters
        rec = StepRecord(
            time_s=self.t,
            protocol_step=k,
            theta_mean=obs["theta_mean"],
            theta_center=obs["theta_center"],
            theta_surface_min=obs["theta_surface_min"],
            theta_surface_max=obs["theta_surface_max"],
            voltage_V=obs["voltage_V"],
            current_mA_g=obs["current_mA_g"],
            li_extracted_mol=self._li_mol(self._I0 - I),
            capacity_mAh_g=(self._I0 - I) / self.area * self.material.theoretical_capacity_mAh_g,
            li_rich_fraction=obs["li_rich_fraction"],
            d_um=obs["d_um"],
            li_rich_com_x_um=obs["li_rich_com_x_um"],
            li_rich_com_y_um=obs["li_rich_com_y_um"],
            mass_balance_error=((self._I0 - I) - self._ledger) / self._I0,
            dt_s=dt,
            newton_iterations=its,
            steps_total=c.steps,
            rejected_total=c.rejected_steps,
            newton_total=c.newton_iterations,
            linear_total=c.linear_iterations,
        )
        self.history.append(rec)
        for o in self.observers:
            o.record(self, rec)
        return rec

    # ------------------------------------------------------------------ main loop
    def run(self, checkpoint=None, resume: bool = False):
        """Integrate the whole protocol. ``checkpoint``: a :class:`Checkpointer` (optional);
        with ``resume`` the run continues from its last saved state.

        Ctrl-C (SIGINT) is honoured at the end of the current time step: the state is
        checkpointed (if a checkpointer is given) and ``KeyboardInterrupt`` is raised."""
        from .problem import _sigint_as_flag

        with _sigint_as_flag(self.solver.problem):
            return self._run(checkpoint, resume)

    def _run(self, checkpoint, resume):
        sv, st = self.solver, self.settings
        self._checkpoint = checkpoint
        if resume:
            state = checkpoint.load(self)
            obs, snaps, dt = state["obs"], state["snaps"], state["dt"]
            k0, t_start0 = state["k"], state["t_step_start"]
            for o in self.observers:
                o.start(self, restore=state["observers"])
        else:
            sv.set_initial(self.protocol.initial_theta)
            self._I0 = sv.integral_theta()
            for o in self.observers:
                o.start(self)
            obs = self.observe()
            self._record(obs, 0, 0.0, 0)
            snaps = list(self.snapshot_times)
            while snaps and snaps[0] <= 1e-12:
                self._snapshot(snaps.pop(0))
            dt, k0, t_start0 = st.dt_initial_s, 0, 0.0
            self._step_capacity0 = self._capacity()
        for k in range(k0, len(self.protocol.steps)):
            step = self.protocol.steps[k]
            if step.group is not None and step.group == self._skip_group:
                continue  # a condition ended this GITT sequence
            t_start = t_start0 if k == k0 else self.t
            if k != k0:
                self._step_capacity0 = self._capacity()
            dt, obs, reason = self._run_step(k, step, dt, obs, snaps, t_start)
            if reason.startswith("reached") and step.group is not None:
                self._skip_group = step.group
            info = {"index": k, "label": step.label, "description": step.describe(), "start_time_s": t_start,
                    "end_time_s": self.t, "reason": reason,
                    "capacity_mAh_g": self._capacity() - self._step_capacity0, **obs}
            self.step_log.append(info)
            for o in self.observers:
                o.step_end(self, info)
            # the flux jumps at a step boundary: restart the history (BDF2 → one BE step)
            self._have_prev = False
            if k + 1 < len(self.protocol.steps):
                self._step_capacity0 = self._capacity()
                self._save(k + 1, self.t, dt, obs, snaps, force=True)
                self._check_interrupt(k + 1, self.t, dt, obs, snaps)
        # snapshots requested beyond the end of the protocol are not reached
        for o in self.observers:
            o.finish(self)
        return self.history

    def _check_interrupt(self, k, t_step_start, dt, obs, snaps):
        """After an accepted step: a Ctrl-C on any rank checkpoints here and stops all ranks."""
        pb = self.solver.problem
        if bool(pb.interrupted if pb.comm.size == 1 else pb.comm.allreduce(pb.interrupted, op=_lor())):
            if self._checkpoint is not None:
                self._checkpoint.save(self, k=k, t_step_start=t_step_start, dt=dt, obs=obs, snaps=snaps)
            raise KeyboardInterrupt

    def _capacity(self) -> float:
        """Specific charge passed so far (mAh/g, + = charge)."""
        return self._ledger / self.area * self.material.theoretical_capacity_mAh_g

    def _save(self, k, t_step_start, dt, obs, snaps, force=False):
        if self._checkpoint is not None and (force or self._checkpoint.due()):
            self._checkpoint.save(self, k=k, t_step_start=t_step_start, dt=dt, obs=obs, snaps=snaps)

    def _snapshot(self, t):
        for o in self.observers:
            o.snapshot(self, t)

    def _run_step(self, k: int, step: Step, dt: float, obs: dict, snaps: list, t_start: float):
        sv, st = self.solver, self.settings
        self._apply_controls(k, step)
        outflow = sv.boundary_outflow()
        t_end = t_start + step.duration_s if step.duration_s is not None else math.inf
        # a condition already met at the start ends the step at once (not one on the current: the
        # current at the start is the previous step's, e.g. zero before a CV hold that follows a rest)
        for cond in step.until:
            if "current" not in cond.quantity and cond.distance(obs[cond.quantity]) <= 0:
                return dt, obs, f"{cond} at start"
        dt = min(dt, st.dt_max_s)
        locating = None  # _EventBracket while a stop condition is being located
        while True:
            while snaps and snaps[0] <= self.t * (1 + 1e-12):
                self._snapshot(snaps.pop(0))
            # ---- choose the step: do not pass the step end or the next snapshot
            target = min(t_end, snaps[0] if snaps else math.inf)
            remaining = target - self.t
            hit_target = False
            if locating is None and (dt >= remaining or remaining - dt < 0.05 * dt):
                dt, hit_target = remaining, True
            order = 2 if (st.time_scheme == "bdf2" and self._have_prev) else 1
            guess = self._predict(dt)
            # the previous step length whenever there is history (BDF2 needs it; a model may also use it
            # to extrapolate its quasi-static unknowns)
            res = sv.solve_step(dt, self._dt_prev if self._have_prev else None, order, guess)
            if res.converged and sv.kinetics:
                outflow = sv.boundary_outflow()  # the current at the new state (CV holds: varies)
            if not res.converged:
                sv.counters.rejected_steps += 1
                dt *= 0.25
                locating = None
                if dt < st.dt_min_s:
                    raise SolverError(
                        f"time step fell below solver.dt_min_s={st.dt_min_s:g} s at t = {self.t:.6g} s "
                        f"(Newton reason {res.reason}); the state may be leaving (0, 1) — check the rate and cut-offs"
                    )
                if sv.problem.interrupted:
                    # Ctrl-C during a failed solve: checkpoint after the rejection, as the run would
                    # continue (reduced dt, counters, and the iterate the next attempt starts from)
                    self._check_interrupt(k, t_start, dt, obs, snaps)
                continue
            # ---- local error control (not while locating an event: steps only shrink then)
            err = self._error_estimate(guess, dt, order)
            if locating is None and err > st.theta_tol and dt > 4 * st.dt_min_s:
                sv.counters.rejected_steps += 1
                dt = max(dt * max(0.2, 0.9 * math.sqrt(st.theta_tol / err)), st.dt_min_s)
                continue
            new_obs = self.observe()
            # ---- stop conditions: locate the crossing in time by re-solving from θ_n
            if step.until:
                g_new = min(c.distance(new_obs[c.quantity]) for c in step.until)
                if g_new <= 0 or locating is not None:
                    tiny = locating is not None and locating.width() < 1e-9 * max(1.0, self.t)
                    if abs(g_new) <= st.event_tol or (tiny and g_new <= 0):
                        hit = [str(c) for c in step.until if c.distance(new_obs[c.quantity]) <= st.event_tol]
                        self._accept(dt, outflow, res.newton_iterations, new_obs, k)
                        return self._next_dt(dt, err, order), new_obs, "reached " + " and ".join(hit)
                    if locating is None:
                        g_old = min(c.distance(obs[c.quantity]) for c in step.until)
                        if g_old <= 0:  # a current condition the step began with met: it ends after one step
                            hit = [str(c) for c in step.until if c.distance(new_obs[c.quantity]) <= 0]
                            self._accept(dt, outflow, res.newton_iterations, new_obs, k)
                            return self._next_dt(dt, err, order), new_obs, "reached " + " and ".join(hit)
                        locating = _EventBracket(0.0, g_old, dt, g_new)
                    else:
                        locating.update(dt, g_new)
                    sv.counters.rejected_steps += 1
                    dt = locating.hi if tiny else locating.next_point()
                    continue
            self._accept(dt, outflow, res.newton_iterations, new_obs, k)
            obs = new_obs
            if hit_target:
                if snaps and abs(self.t - snaps[0]) <= 1e-9 * max(1.0, self.t):
                    self._snapshot(snaps.pop(0))
                if abs(self.t - t_end) <= 1e-9 * max(1.0, self.t):
                    return self._next_dt(dt, err, order), obs, "duration"
            dt = self._next_dt(dt, err, order)
            self._save(k, t_start, dt, obs, snaps)
            self._check_interrupt(k, t_start, dt, obs, snaps)

    def _apply_controls(self, k: int, step: Step):
        """Set the solver's controls for protocol step ``step``: the current (or, for a hold, the
        voltage) with kinetics; the sector fluxes without."""
        sv = self.solver
        if sv.kinetics:
            if step.kind == "hold":
                sv.set_control("voltage", step.voltage_V)
            else:
                sv.set_control("current", self.current_density(step))
        else:
            if step.kind == "hold":
                raise InputError(f"protocol.steps[{k}]", "a constant-voltage hold needs surface.model = 'butler_volmer'")
            sv.set_fluxes(self.sector_fluxes(self.current_density(step)))

    def _predict(self, dt: float):
        """Linear extrapolation of every transient field (a list of arrays), or None."""
        if not self._have_prev or self._dt_prev is None:
            return None
        out = []
        for _, u_n, u_nm1 in self._transient():
            slope = (u_n.x.array - u_nm1.x.array) / self._dt_prev
            out.append(np.clip(u_n.x.array + dt * slope, 1e-6, 1 - 1e-6))
        return out

    def _error_estimate(self, guess, dt: float, order: int) -> float:
        """Max-norm estimate of the local truncation error in θ of the step just solved."""
        sv = self.solver
        fields = self._transient()
        if guess is None:
            # first step of a segment: compare with the explicit Euler-free bound |Δθ|/2
            diff = max(np.abs(u.x.array - u_n.x.array).max(initial=0.0) for u, u_n, _ in fields) * 0.5
            return float(diff if sv.comm.size == 1 else sv.comm.allreduce(diff, op=max_op()))
        # BE: θ_BE − θ_pred ≈ dt (dt + h/2) θ'' and LTE_BE = dt² θ''/2. For BDF2 the same
        # quantity over-estimates the (third-order) local error: a conservative control.
        h = self._dt_prev
        diff = max(np.abs(u.x.array - g).max(initial=0.0) for (u, _, _), g in zip(fields, guess))
        diff = diff * dt / (2 * dt + h)
        return float(diff if sv.comm.size == 1 else sv.comm.allreduce(diff, op=max_op()))

    def _next_dt(self, dt: float, err: float, order: int) -> float:  # noqa: ARG002
        st = self.settings
        if err <= 0:
            grow = st.growth_max
        else:
            grow = min(st.growth_max, max(0.5, 0.9 * math.sqrt(st.theta_tol / err)))
        return min(max(dt * grow, st.dt_min_s), st.dt_max_s)

    def _accept(self, dt: float, outflow: float, its: int, obs: dict, k: int):
        sv = self.solver
        sv.accept()
        sv.counters.steps += 1
        self.t += dt
        # the discrete Li balance of the scheme: a0 L_{n+1} + a1 L_n + a2 L_{n-1} = dt Q_{n+1}
        a0, a1, a2 = (float(c.value) for c in sv.bdf)
        new = (dt * outflow - a1 * self._ledger - a2 * self._ledger_prev) / a0
        self._ledger_prev, self._ledger = self._ledger, new
        self._dt_prev = dt
        self._have_prev = True
        self._record(obs, k, dt, its)


class _EventBracket:
    """Illinois regula falsi on the step length for g(dt) = distance to a stop threshold."""

    def __init__(self, lo: float, g_lo: float, hi: float, g_hi: float):
        self.lo, self.g_lo, self.hi, self.g_hi = lo, g_lo, hi, g_hi
        self._side = 0

    def width(self) -> float:
        return self.hi - self.lo

    def update(self, x: float, g: float):
        if g <= 0:
            self.hi, self.g_hi = x, g
            if self._side == -1:
                self.g_lo *= 0.5
            self._side = -1
        else:
            self.lo, self.g_lo = x, g
            if self._side == 1:
                self.g_hi *= 0.5
            self._side = 1

    def next_point(self) -> float:
        frac = self.g_lo / (self.g_lo - self.g_hi) if self.g_lo != self.g_hi else 0.5
        frac = min(max(frac, 0.01), 0.99)
        return self.lo + frac * (self.hi - self.lo)


def max_op():
    from mpi4py import MPI

    return MPI.MAX


def _lor():
    from mpi4py import MPI

    return MPI.LOR
