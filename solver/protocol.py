"""Cycling protocols: a sequence of steps, each ending on a duration or a stop condition.

Config form (TOML)::

    [protocol]
    initial_theta = 0.95            # default: material θ₀ (0.2 if the first step lithiates)

    [[protocol.steps]]
    type = "charge"                 # charge (= delithiation) | discharge (= lithiation) | rest
    c_rate = 0.3333                 # or current_mA_g = 100 (specific current, mA per g NMC)
    duration_min = 60
    until = ["theta_surface_min <= 0.2"]   # optional stop conditions, any of them ends the step

    [[protocol.steps]]
    type = "rest"
    duration_min = 20

    [[protocol.steps]]
    type = "hold"                   # constant-voltage hold (needs surface.model = "butler_volmer")
    voltage_V = 3.0
    duration_min = 120
    until = ["abs_current_mA_g <= 1.05"]

    [[protocol.steps]]
    type = "gitt"                   # `pulses` × (pulse at the given current, then rest)
    direction = "charge"            # or "discharge"
    c_rate = 0.05
    pulse_min = 15
    rest_min = 240
    pulses = 10
    until = ["voltage_V >= 4.3"]    # checked during pulses; ends the whole GITT sequence

Stop conditions watch any of STOP_QUANTITIES; occupancies must lie in (0, 1), voltages in
(0, 10) V. Currents are signed (+ = charge); `abs_current_mA_g` is the magnitude.

Every step ends: rest and hold steps need a duration (their `until` may end them
earlier); a charge or discharge without one ends at the latest when the surface is
exhausted. Conditions a step can never meet are rejected at load time (see
:func:`unreachable`: θ_mean at rest, θ_mean rising in a charge, a current condition on a
step whose current is set), and so are θ conditions already met by the uniform initial
state (:func:`check_not_met_at_start`). Limits: c_rate ≤ 1000 /h, current_mA_g ≤ 10⁶
mA g⁻¹, durations ≤ 10⁶ min.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from nmcfx.errors import InputError

#: Quantities a stop condition may watch (all are columns of timeseries.csv).
THETA_QUANTITIES = ("theta_mean", "theta_center", "theta_surface_min", "theta_surface_max")
STOP_QUANTITIES = THETA_QUANTITIES + ("voltage_V", "current_mA_g", "abs_current_mA_g")
_OPS = ("<=", ">=", "<", ">")
_COND_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z_0-9]*)\s*(<=|>=|<|>)\s*([-+0-9.eE]+)\s*$")
#: per-particle quantities of an electrode (``theta_mean_T3``); the particle name is checked in prepare
_PARTICLE_RE = re.compile(r"^(theta_mean|theta_surface|theta_near)_[A-Za-z0-9]+$")


@dataclass(frozen=True)
class StopCondition:
    quantity: str
    op: str
    value: float

    def distance(self, observed: float) -> float:
        """Signed distance to the threshold: > 0 while not yet reached, ≤ 0 once reached."""
        return observed - self.value if self.op in ("<", "<=") else self.value - observed

    def __str__(self) -> str:
        return f"{self.quantity} {self.op} {self.value:g}"

    @classmethod
    def parse(cls, text: str, field_name: str) -> "StopCondition":
        m = _COND_RE.match(str(text))
        if not m:
            raise InputError(
                field_name,
                f"cannot parse {text!r}; expected '<quantity> <op> <number>' with quantity in "
                f"{list(STOP_QUANTITIES)} and op in {list(_OPS)}",
            )
        q, op, val = m.groups()
        if q not in STOP_QUANTITIES and not _PARTICLE_RE.match(q):
            raise InputError(field_name, f"unknown quantity {q!r}; allowed: {list(STOP_QUANTITIES)} "
                                         "(electrodes also theta_mean_<particle>, theta_surface_<particle>, "
                                         "theta_near_<particle>)")
        try:
            v = float(val)
        except ValueError:
            raise InputError(field_name, f"threshold {val!r} is not a number") from None
        if (q in THETA_QUANTITIES or q.startswith("theta_")) and not 0.0 < v < 1.0:
            raise InputError(field_name, f"occupancy threshold must be in (0, 1), got {v:g}")
        if q == "voltage_V" and not 0.0 < v < 10.0:
            raise InputError(field_name, f"voltage threshold must be in (0, 10) V, got {v:g}")
        if q == "abs_current_mA_g" and not v >= 0.0:
            raise InputError(field_name, f"current magnitude threshold must be >= 0 mA/g, got {v:g}")
        return cls(q, op, v)


@dataclass(frozen=True)
class Step:
    kind: str  # "charge" | "discharge" | "rest" | "hold"
    c_rate: float | None = None
    current_mA_g: float | None = None
    duration_s: float | None = None
    until: tuple[StopCondition, ...] = ()
    label: str = ""
    voltage_V: float | None = None  # CV hold
    group: int | None = None  # GITT: a condition met in one pulse ends the whole group

    @property
    def sign(self) -> int:
        """+1: Li leaves the particle (charge/delithiation); -1: Li enters; 0: rest/hold."""
        return {"charge": 1, "discharge": -1, "rest": 0, "hold": 0}[self.kind]

    def describe(self) -> str:
        if self.kind == "rest":
            what = "rest"
        elif self.kind == "hold":
            what = f"hold at {self.voltage_V:g} V"
        elif self.c_rate is not None:
            what = f"{self.kind} at C/{1 / self.c_rate:.3g}" if self.c_rate < 1 else f"{self.kind} at {self.c_rate:g}C"
        else:
            what = f"{self.kind} at {self.current_mA_g:g} mA/g"
        parts = [what]
        if self.duration_s is not None:
            parts.append(f"for {self.duration_s / 60:g} min")
        if self.until:
            parts.append("until " + " or ".join(map(str, self.until)))
        return " ".join(parts)


@dataclass(frozen=True)
class Protocol:
    steps: tuple[Step, ...]
    initial_theta: float

    @property
    def nominal_duration_s(self) -> float | None:
        """Sum of step durations, or None if some step ends only on a condition."""
        if any(s.duration_s is None for s in self.steps):
            return None
        return sum(s.duration_s for s in self.steps)


#: Upper limits of the set rates (the materials room converts nothing larger) and of durations.
MAX_C_RATE = 1000.0  # 1/h
MAX_CURRENT_MA_G = 1.0e6  # mA per g
MAX_DURATION_MIN = 1.0e6  # about two years

_STEP_KEYS = {"type", "c_rate", "current_mA_g", "duration_min", "duration_s", "until", "label", "voltage_V"}
_GITT_KEYS = {"type", "direction", "c_rate", "current_mA_g", "pulse_min", "rest_min", "pulses", "until", "label"}


def _positive(value, field_name: str, unit: str, upper: float | None = None) -> float:
    """A number in (0, upper] (in ``unit``)."""
    rng = f"in (0, {upper:g}] {unit}" if upper is not None else f"> 0 {unit}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(field_name, f"must be a number {rng}, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v <= 0 or (upper is not None and v > upper):
        raise InputError(field_name, f"must be {rng}, got {value!r}")
    return v


def steps_from_dict(d: dict, field_name: str, group: int) -> list[Step]:
    """One config step → protocol steps (a GITT entry expands into pulse/rest pairs)."""
    if isinstance(d, dict) and d.get("type") == "gitt":
        extra = set(d) - _GITT_KEYS
        if extra:
            raise InputError(field_name, f"unknown key(s) {sorted(extra)}; allowed for gitt: {sorted(_GITT_KEYS)}")
        direction = d.get("direction", "charge")
        if direction not in ("charge", "discharge"):
            raise InputError(f"{field_name}.direction", f"must be 'charge' or 'discharge', got {direction!r}")
        n = d.get("pulses")
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 10000:
            raise InputError(f"{field_name}.pulses", f"must be an integer in [1, 10000], got {n!r}")
        pulse = {k: d[k] for k in ("c_rate", "current_mA_g", "until") if k in d}
        pulse.update(type=direction, duration_min=d.get("pulse_min"))
        if "pulse_min" not in d or "rest_min" not in d:
            raise InputError(field_name, "gitt needs pulse_min and rest_min")
        for key in ("pulse_min", "rest_min"):
            _positive(d[key], f"{field_name}.{key}", "min", MAX_DURATION_MIN)
        p = step_from_dict(pulse, field_name)
        r = step_from_dict({"type": "rest", "duration_min": d["rest_min"]}, field_name)
        label = str(d.get("label", "gitt"))
        out = []
        for i in range(n):
            out.append(Step(p.kind, p.c_rate, p.current_mA_g, p.duration_s, p.until, f"{label} pulse {i + 1}",
                            group=group))
            out.append(Step("rest", duration_s=r.duration_s, label=f"{label} rest {i + 1}", group=group))
        return out
    return [step_from_dict(d, field_name)]


def step_from_dict(d: dict, field_name: str) -> Step:
    if not isinstance(d, dict):
        raise InputError(field_name, f"must be a table, got {type(d).__name__}")
    extra = set(d) - _STEP_KEYS
    if extra:
        raise InputError(field_name, f"unknown key(s) {sorted(extra)}; allowed: {sorted(_STEP_KEYS)}")
    kind = d.get("type")
    aliases = {"delithiation": "charge", "lithiation": "discharge"}
    kind = aliases.get(kind, kind)
    if kind not in ("charge", "discharge", "rest", "hold"):
        raise InputError(f"{field_name}.type",
                         f"must be 'charge', 'discharge', 'rest', 'hold' or 'gitt', got {d.get('type')!r}")
    c_rate = current = voltage = None
    if kind == "hold":
        if "voltage_V" not in d:
            raise InputError(field_name, "a hold step needs voltage_V (the constant voltage vs Li/Li+)")
        voltage = _positive(d["voltage_V"], f"{field_name}.voltage_V", "V")
        if voltage >= 10:
            raise InputError(f"{field_name}.voltage_V", f"must be in (0, 10) V, got {voltage:g}")
    elif "voltage_V" in d:
        raise InputError(field_name, "voltage_V belongs to hold steps only")
    if kind in ("rest", "hold"):
        if "c_rate" in d or "current_mA_g" in d:
            raise InputError(field_name, f"a {kind} step carries no set current (remove c_rate/current_mA_g)")
    else:
        has_c, has_i = "c_rate" in d, "current_mA_g" in d
        if has_c == has_i:
            raise InputError(field_name, "give exactly one of c_rate (1/h) or current_mA_g (mA per g)")
        if has_c:
            c_rate = _positive(d["c_rate"], f"{field_name}.c_rate", "1/h", MAX_C_RATE)
        else:
            current = _positive(d["current_mA_g"], f"{field_name}.current_mA_g", "mA/g", MAX_CURRENT_MA_G)
    if "duration_min" in d and "duration_s" in d:
        raise InputError(field_name, "give duration_min or duration_s, not both")
    duration = None
    if "duration_min" in d:
        duration = 60.0 * _positive(d["duration_min"], f"{field_name}.duration_min", "min", MAX_DURATION_MIN)
    elif "duration_s" in d:
        duration = _positive(d["duration_s"], f"{field_name}.duration_s", "s", 60.0 * MAX_DURATION_MIN)
    until_raw = d.get("until", [])
    if isinstance(until_raw, str):
        until_raw = [until_raw]
    if not isinstance(until_raw, list):
        raise InputError(f"{field_name}.until", "must be a list of conditions like 'theta_surface_min <= 0.2'")
    until = tuple(StopCondition.parse(u, f"{field_name}.until[{i}]") for i, u in enumerate(until_raw))
    for i, cond in enumerate(until):
        why = unreachable(kind, cond)
        if why:
            raise InputError(f"{field_name}.until[{i}]", f"'{cond}' can never be met: {why}")
    if duration is None and not until:
        raise InputError(field_name, "has no terminating condition: give duration_min and/or until")
    if duration is None and kind in ("rest", "hold"):
        raise InputError(field_name, f"a {kind} step needs duration_min (or duration_s) as an upper bound: "
                                     "relaxation approaches its limit only asymptotically, so an until condition "
                                     "alone might never be met (it still ends the step earlier)")
    label = d.get("label", "")
    if not isinstance(label, str):
        raise InputError(f"{field_name}.label", f"must be a string, got {label!r}")
    return Step(kind, c_rate, current, duration, until, label, voltage)


def unreachable(kind: str, cond: StopCondition) -> str:
    """Why a step of this kind can never meet ``cond`` from a state where it is not met yet ('' if it can).

    θ_mean changes only with the current: it is constant at rest, falls during a charge
    and rises during a discharge. The current of a charge, discharge or rest is set by
    the step (a condition on it is met at once or never).
    """
    if cond.quantity in ("current_mA_g", "abs_current_mA_g") and kind != "hold":
        return f"the current of a {kind} step is fixed by the step (watch it in a hold step)"
    if cond.quantity == "theta_mean":
        if kind == "rest":
            return "theta_mean does not change at rest (no current: the particle keeps its Li)"
        rising = cond.op in (">", ">=")
        if kind == "charge" and rising:
            return "theta_mean only falls during a charge (delithiation)"
        if kind == "discharge" and not rising:
            return "theta_mean only rises during a discharge (lithiation)"
    return ""


def check_not_met_at_start(steps_by_entry, theta0: float):
    """Reject stop conditions on θ already met by the uniform initial state θ₀.

    Applies to the first steps while the particle is still uniform (leading rests and the
    first step with a current or a hold); ``steps_by_entry`` is [(field, [Step, ...]), ...].
    A later step whose condition is met when it starts ends at once (steps.csv says so).
    """
    for field_name, steps in steps_by_entry:
        step = steps[0]
        for i, cond in enumerate(step.until):
            if cond.quantity in THETA_QUANTITIES and cond.distance(theta0) <= 0:
                raise InputError(f"{field_name}.until[{i}]",
                                 f"'{cond}' is already true at the start (uniform θ = {theta0:g}), so the step "
                                 "would end at once; check the threshold or protocol.initial_theta")
        if step.kind != "rest":
            return


def protocol_from_dict(d: dict | None, theta0_default: float) -> Protocol:
    d = {} if d is None else d
    if not isinstance(d, dict):
        raise InputError("protocol", "must be a table")
    extra = set(d) - {"initial_theta", "steps"}
    if extra:
        raise InputError("protocol", f"unknown key(s) {sorted(extra)}; allowed: ['initial_theta', 'steps']")
    raw_steps = d.get("steps")
    if not raw_steps:
        raise InputError("protocol.steps", "at least one step is required")
    if not isinstance(raw_steps, list):
        raise InputError("protocol.steps", "must be an array of tables ([[protocol.steps]])")
    by_entry = [(f"protocol.steps[{i}]", steps_from_dict(s, f"protocol.steps[{i}]", i))
                for i, s in enumerate(raw_steps)]
    steps = tuple(st for _, entry in by_entry for st in entry)
    if "initial_theta" in d:
        th0 = d["initial_theta"]
        if isinstance(th0, bool) or not isinstance(th0, (int, float)) or not 0.0 < float(th0) < 1.0:
            raise InputError("protocol.initial_theta", f"must be in (0, 1), got {th0!r}")
        th0 = float(th0)
    else:
        first_active = next((s for s in steps if s.kind != "rest"), None)
        th0 = 0.2 if first_active is not None and first_active.kind == "discharge" else theta0_default
    check_not_met_at_start(by_entry, th0)
    return Protocol(steps, th0)
