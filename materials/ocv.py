"""Open-circuit voltage models V_oc(θ) for Ni-rich NMC (θ = Li occupancy).

Default: :class:`MappedChenOCV` — the NMC811 open-circuit potential fit of Chen et al.,
J. Electrochem. Soc. 167, 080534 (2020) (LG M50 cell; distributed with PyBaMM as
``nmc_LGM50_ocp_Chen2020``),

    U(x) = −0.8090 x + 4.4875 − 0.0428 tanh(18.5138 (x − 0.5542))
           − 17.7326 tanh(15.7890 (x − 0.3117)) + 17.5842 tanh(15.9308 (x − 0.3120)),

placed on this material's θ axis by an affine map x = x₀ + s θ, minus a steep step just
above θ = 0.97:

    V_oc(θ) = U(x₀ + s θ) − (A/2) [1 + tanh((θ − θ_step)/w)].

Chen's x is the LG M50 cathode's stoichiometry normalised by its own c_max (63 104 mol m⁻³),
not by this NMC's Li-site concentration N_L (49 044 mol m⁻³), so x is not θ. The four
numbers (x₀, s, A, θ_step, with w) are fixed by statements of Xu et al., Joule 2022 (seed 002)
— see :meth:`MappedChenOCV.from_statements` and ``data/README.md``:

* V_oc = 3.5 V at θ = 0.97 ("initial lithium content … ~97 % based on the OCV, ~3.5 V",
  Fig. 4A caption);
* V_oc = 4.3 V at θ = 0.97 − 229.0/274.99 = 0.137 (the C/3 CC charge from that state to
  4.3 V passed 229.0 mAh g⁻¹, Fig. 1E; 274.99 mAh g⁻¹ = F/M per unit θ);
* the rapid drop of V_oc as θ → 1 (Fig. S19 text, GITT of Fig. S1A) lies above 0.97 and
  reaches the 3.0 V cut-off within one GITT pulse (C/20 for 15 min = Δθ 0.0095,
  Experimental Procedures): a tanh step centred half a pulse above 0.97, width a quarter
  pulse, with V_oc(0.97 + Δθ) = 3.0 V.

The map's slope comes out as s = 0.85, close to N_L/c_max = 0.78 (what a change of
normalisation alone would give). Monotonicity: dU/dx < 0 on all of [0, 1] and the step
has a negative derivative, so V_oc is strictly decreasing; checked when built.

:class:`ChenExtendedOCV` is the previous default (x = θ directly, with an exponential drop);
it is kept for comparison and for the raw fit (``drop_amplitude_V=0``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from nmcfx.errors import InputError


@dataclass(frozen=True)
class ChenExtendedOCV:
    """Chen 2020 NMC811 fit used with x = θ, minus A·exp((θ − 1)/w) (the previous default).

    ``ChenExtendedOCV(drop_amplitude_V=0)`` is the raw fit U(x), which
    :class:`MappedChenOCV` evaluates on its mapped stoichiometry.
    """

    drop_amplitude_V: float = 0.5
    drop_width: float = 0.025
    #: fit coefficients (linear slope, offset, then (amplitude, steepness, centre) × 3)
    slope: float = -0.8090
    offset: float = 4.4875
    tanh_terms: tuple = (
        (-0.0428, 18.5138, 0.5542),
        (-17.7326, 15.7890, 0.3117),
        (17.5842, 15.9308, 0.3120),
    )
    quantity = "V_oc"
    provenance = (
        "Chen et al., J. Electrochem. Soc. 167, 080534 (2020), NMC811 OCP fit "
        "(PyBaMM nmc_LGM50_ocp_Chen2020), x = theta; "
        "minus A*exp((theta-1)/w) for the steep drop as theta -> 1 noted in Xu et al., "
        "Joule 2022 (Fig. S1A)"
    )

    def __post_init__(self):
        if not (np.isfinite(self.drop_amplitude_V) and self.drop_amplitude_V >= 0):
            raise InputError("material.ocv.drop_amplitude_V", "must be >= 0 V")
        if not (np.isfinite(self.drop_width) and 0 < self.drop_width <= 0.5):
            raise InputError("material.ocv.drop_width", "must be in (0, 0.5]")
        x = np.linspace(0.0, 1.0, 20001)
        if not np.all(self.derivative(x) < 0):
            raise InputError("material.ocv", "V_oc model is not strictly decreasing on [0, 1]")

    # A backend-neutral expression: pass numpy's or UFL's tanh/exp.
    def expression(self, theta, tanh=np.tanh, exp=np.exp):
        """V_oc(θ) built from the given ``tanh``/``exp`` (numpy by default, or e.g. ufl)."""
        v = self.slope * theta + self.offset
        for a, k, c in self.tanh_terms:
            v = v + a * tanh(k * (theta - c))
        return v - self.drop_amplitude_V * exp((theta - 1.0) / self.drop_width)

    def derivative_expression(self, theta, tanh=np.tanh, exp=np.exp):
        """dV_oc/dθ built from the given ``tanh``/``exp``."""
        d = self.slope + 0.0 * theta
        for a, k, c in self.tanh_terms:
            t = tanh(k * (theta - c))
            d = d + a * k * (1.0 - t * t)
        return d - (self.drop_amplitude_V / self.drop_width) * exp((theta - 1.0) / self.drop_width)

    def __call__(self, theta):
        return self.expression(np.asarray(theta, dtype=float))

    def derivative(self, theta):
        return self.derivative_expression(np.asarray(theta, dtype=float))

    def second_derivative(self, theta):
        th = np.asarray(theta, dtype=float)
        d2 = np.zeros_like(th)
        for a, k, c in self.tanh_terms:
            t = np.tanh(k * (th - c))
            d2 = d2 - 2.0 * a * k * k * t * (1.0 - t * t)
        return d2 - (self.drop_amplitude_V / self.drop_width**2) * np.exp(
            (th - 1.0) / self.drop_width
        )

    def sample(self, thetas):
        """Tabulate the model (for export as a user-editable CSV template)."""
        from .tables import Table

        th = np.asarray(thetas, dtype=float)
        return Table(
            th,
            self(th),
            kind="ocv",
            quantity="V_oc",
            provenance=self.provenance,
            column="V_oc_V",
        )

    def __repr__(self) -> str:
        return (
            f"ChenExtendedOCV(A={self.drop_amplitude_V:g} V, w={self.drop_width:g}; "
            "Chen et al. JES 167, 080534 (2020) NMC811 fit)"
        )


#: GITT pulse of seed 002 (Experimental Procedures: "15 min constant current pulse …
#: equivalent to C/20") in mAh g⁻¹: 210/20 mA g⁻¹ for 0.25 h.
GITT_PULSE_MAH_G = 210.0 / 20.0 * 0.25


@dataclass(frozen=True)
class MappedChenOCV:
    """The Chen 2020 fit on this material's θ axis with a steep step above θ = 0.97.

    V_oc(θ) = U(x₀ + s θ) − (A/2)[1 + tanh((θ − θ_step)/w)], U the raw Chen fit. Build it
    from the papers' statements with :meth:`from_statements` (the default material does)::

        >>> ocv = MappedChenOCV.from_statements(theoretical_capacity_mAh_g=274.99)
        >>> round(float(ocv(0.97)), 3), round(float(ocv(0.97 - 229.0 / 274.99)), 3)
        (3.5, 4.3)
    """

    x0: float  #: Chen stoichiometry at θ = 0
    slope: float  #: dx/dθ
    step_V: float  #: amplitude A of the near-full-lithiation step (V)
    step_theta: float  #: centre θ_step of the step
    step_width: float  #: width w of the step (in θ)
    anchors: tuple = field(default=(), compare=False)  #: (θ, V) points it was built through
    fit: ChenExtendedOCV = field(default_factory=lambda: ChenExtendedOCV(drop_amplitude_V=0.0), repr=False)
    quantity = "V_oc"

    def __post_init__(self):
        for name in ("x0", "slope", "step_V", "step_theta", "step_width"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v)):
                raise InputError(f"material.ocv.{name}", f"must be a finite number, got {v!r}")
        if self.slope <= 0 or self.step_V < 0 or self.step_width <= 0:
            raise InputError("material.ocv", "need slope > 0, step_V >= 0 and step_width > 0")
        th = np.linspace(0.0, 1.0, 20001)
        if not np.all(self.derivative(th) < 0):
            raise InputError("material.ocv", "V_oc model is not strictly decreasing on [0, 1]")

    @classmethod
    def from_statements(cls, *, theoretical_capacity_mAh_g: float, theta_full: float = 0.97,
                        v_full: float = 3.5, charge_mAh_g: float = 229.0, v_upper: float = 4.3,
                        v_lower: float = 3.0, pulse_mAh_g: float = GITT_PULSE_MAH_G) -> "MappedChenOCV":
        """Solve for (x₀, s, A) so that V_oc(θ_full) = v_full, V_oc(θ_full − charge/Q) = v_upper
        and V_oc(θ_full + pulse/Q) = v_lower, with the step centred half a pulse above
        θ_full and a quarter pulse wide (Q = theoretical capacity per unit θ; defaults:
        the statements of seed 002 listed in the module docstring)."""
        from ._roots import brentq

        fit = ChenExtendedOCV(drop_amplitude_V=0.0)
        dth = pulse_mAh_g / theoretical_capacity_mAh_g
        theta_upper = theta_full - charge_mAh_g / theoretical_capacity_mAh_g
        centre, width = theta_full + 0.5 * dth, 0.25 * dth
        x_upper = brentq(lambda x: float(fit(x)) - v_upper, 0.0, 1.0, xtol=1e-14)

        def build(amplitude):
            step_at_full = 0.5 * amplitude * (1.0 + math.tanh((theta_full - centre) / width))
            x_full = brentq(lambda x: float(fit(x)) - step_at_full - v_full, 0.0, 2.0, xtol=1e-14)
            s = (x_full - x_upper) / (theta_full - theta_upper)
            return cls(x_upper - s * theta_upper, s, amplitude, centre, width,
                       anchors=((theta_upper, v_upper), (theta_full, v_full), (theta_full + dth, v_lower)))

        amplitude = brentq(lambda a: float(build(a)(theta_full + dth)) - v_lower, 0.0, 2.0, xtol=1e-13)
        return build(amplitude)

    @property
    def provenance(self) -> str:
        pts = ", ".join(f"{v:g} V at theta={t:.4f}" for t, v in self.anchors) or "given parameters"
        return ("Chen et al., J. Electrochem. Soc. 167, 080534 (2020), NMC811 OCP fit (PyBaMM "
                f"nmc_LGM50_ocp_Chen2020) on x = {self.x0:.5f} + {self.slope:.5f} theta, minus a tanh step "
                f"of {self.step_V:.4f} V at theta={self.step_theta:.5f} (width {self.step_width:.5f}); "
                f"through {pts} (Xu et al., Joule 2022: Fig. 4A OCV, Fig. 1E C/3 charge, GITT pulse)")

    def stoichiometry(self, theta):
        """Chen's x for an occupancy θ."""
        return self.x0 + self.slope * np.asarray(theta, dtype=float)

    def expression(self, theta, tanh=np.tanh, exp=np.exp):
        """V_oc(θ) built from the given ``tanh``/``exp`` (numpy by default, or e.g. ufl)."""
        u = self.fit.expression(self.x0 + self.slope * theta, tanh=tanh, exp=exp)
        return u - 0.5 * self.step_V * (1.0 + tanh((theta - self.step_theta) / self.step_width))

    def derivative_expression(self, theta, tanh=np.tanh, exp=np.exp):
        """dV_oc/dθ built from the given ``tanh``/``exp``."""
        du = self.fit.derivative_expression(self.x0 + self.slope * theta, tanh=tanh, exp=exp)
        t = tanh((theta - self.step_theta) / self.step_width)
        return du * self.slope - 0.5 * self.step_V / self.step_width * (1.0 - t * t)

    def __call__(self, theta):
        return self.expression(np.asarray(theta, dtype=float))

    def derivative(self, theta):
        return self.derivative_expression(np.asarray(theta, dtype=float))

    def second_derivative(self, theta):
        th = np.asarray(theta, dtype=float)
        t = np.tanh((th - self.step_theta) / self.step_width)
        return (self.fit.second_derivative(self.stoichiometry(th)) * self.slope**2
                + self.step_V / self.step_width**2 * t * (1.0 - t * t))

    def theta_at(self, voltage_V: float) -> float:
        """The occupancy at which V_oc equals ``voltage_V`` (must lie within V_oc(1)…V_oc(0))."""
        from ._roots import brentq

        v0, v1 = float(self(0.0)), float(self(1.0))
        if not v1 < voltage_V < v0:
            raise InputError("voltage_V", f"must be between V_oc(1) = {v1:.4f} V and V_oc(0) = {v0:.4f} V, "
                                          f"got {voltage_V!r}")
        return float(brentq(lambda t: float(self(t)) - voltage_V, 0.0, 1.0, xtol=1e-13))

    def sample(self, thetas):
        """Tabulate the model (for export as a user-editable CSV template)."""
        from .tables import Table

        th = np.asarray(thetas, dtype=float)
        return Table(th, self(th), kind="ocv", quantity="V_oc", provenance=self.provenance, column="V_oc_V")

    def __repr__(self) -> str:
        return (f"MappedChenOCV(x = {self.x0:.4f} + {self.slope:.4f} theta; step {self.step_V:.3f} V at "
                f"theta = {self.step_theta:.4f}; Chen et al. JES 167, 080534 (2020) NMC811 fit)")
