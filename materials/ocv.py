"""Open-circuit voltage models V_oc(θ) for Ni-rich NMC (θ = Li occupancy).

Default: the NMC811 open-circuit potential fit of Chen et al., J. Electrochem. Soc.
167, 080534 (2020) (LG M50 cell; the fit distributed with PyBaMM as
``nmc_LGM50_ocp_Chen2020``), in the stoichiometry x = θ:

    U(x) = −0.8090 x + 4.4875 − 0.0428 tanh(18.5138 (x − 0.5542))
           − 17.7326 tanh(15.7890 (x − 0.3117)) + 17.5842 tanh(15.9308 (x − 0.3120))

plus a near-full-lithiation drop

    V_oc(θ) = U(θ) − A exp((θ − 1)/w),      A = 0.5 V, w = 0.025,

because the GITT curve of Xu et al., Joule 2022 (Fig. S1A, seed 002) falls rapidly
as θ → 1 whereas the Chen fit was made on x ≤ 0.91 and flattens to a slope of
−0.81 V per unit θ there. The added term is below 10 mV for θ ≤ 0.9, brings
V_oc(1) to ≈ 2.99 V and makes dV_oc/dθ ≈ −3.5 V at θ = 0.95 and ≈ −16 V at θ = 0.995.
A and w are a documented choice (the data points of Fig. S1A are not in the text);
replace them, or the whole model by a measured table (``ocv_csv``), when data exist.

Monotonicity: dU/dx of the raw fit is strictly negative on all of [0, 1] (its
maximum, −0.342 V, is at x ≈ 0.327, the flat stretch of the fit near 4.19 V); the
added term has a strictly negative derivative, so V_oc is strictly decreasing on
[0, 1] and no repair of the fit is needed. This is checked when a model is built.

Note the fit's x is normalised by the LG M50 cathode's c_max (63104 mol m⁻³ in Chen
et al.), not by this material's N_L; using x = θ is an approximation accepted for a
default. Only dV_oc/dθ enters the transport model (Eq. 12 of seed 002).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nmcfx.errors import InputError


@dataclass(frozen=True)
class ChenExtendedOCV:
    """Chen 2020 NMC811 fit with an exponential drop as θ → 1 (see module doc)."""

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
