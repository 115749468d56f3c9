"""Physical constants and unit conversions used by :mod:`nmcfx.materials`.

The one place where F, R and atomic masses are defined. Everything else imports them.

* F, R: CODATA 2018 (exact since the 2019 SI redefinition: F = N_A e, R = N_A k_B).
* Atomic masses: IUPAC standard atomic weights (conventional/abridged values,
  CIAAW 2021) in g mol⁻¹.
"""

from __future__ import annotations

#: Faraday constant, C mol⁻¹ (CODATA 2018, exact).
FARADAY = 96485.33212
#: Molar gas constant, J mol⁻¹ K⁻¹ (CODATA 2018, exact).
GAS_CONSTANT = 8.314462618

#: Standard atomic weights, g mol⁻¹ (IUPAC/CIAAW).
ATOMIC_MASS_G_MOL = {
    "Li": 6.94,
    "Ni": 58.6934,
    "Mn": 54.938043,
    "Co": 58.933194,
    "O": 15.999,
}

# Unit conversions (multiply a value in the left unit to get SI).
CM2_S_TO_M2_S = 1.0e-4  #: cm² s⁻¹ → m² s⁻¹
G_CM3_TO_G_M3 = 1.0e6  #: g cm⁻³ → g m⁻³
MAH_TO_C = 3.6  #: mAh → C
UM_TO_M = 1.0e-6  #: µm → m


def molar_mass(composition: dict[str, float]) -> float:
    """Molar mass in g mol⁻¹ of a formula unit given as ``{element: count}``."""
    return float(sum(ATOMIC_MASS_G_MOL[el] * n for el, n in composition.items()))
