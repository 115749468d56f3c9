"""The NMC cathode material: transport and thermodynamic properties vs Li occupancy θ.

Model (seed 002 = Xu et al., Joule 2022, Supplementary Section 1):

* N_L = ρ/M, Li-site concentration (mol m⁻³);
* D_eff(θ) = D_Li(θ)/S, D_Li from NMR hop rates (Eq. 11), S calibrated (= 3.5);
* flux (Eq. 12) J = (N_L F/RT) θ D_eff ∂V_oc/∂θ ∇θ = −N_L D_chem(θ) ∇θ with the chemical
  diffusivity D_chem = D_eff · θ · (−F/RT) · dV_oc/dθ (> 0 since dV_oc/dθ < 0);
* galvanostatic boundary flux (Eq. 15) j = n Q ρ A/Γ for a rate of nC, or j = I ρ A/Γ
  for a specific current I.

Everything returned is SI (m² s⁻¹, V, mol m⁻³, A m⁻²); functions of θ accept scalars or
numpy arrays and return numpy arrays of the same shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Protocol, runtime_checkable

import numpy as np

from nmcfx.errors import InputError

from .constants import (
    FARADAY,
    G_CM3_TO_G_M3,
    GAS_CONSTANT,
    MAH_TO_C,
    UM_TO_M,
    molar_mass,
)
from .tables import Table

#: LiNi0.87Mn0.05Co0.08O2, the single-crystal material of seed 002.
NMC_NI87_COMPOSITION = {"Li": 1.0, "Ni": 0.87, "Mn": 0.05, "Co": 0.08, "O": 2.0}
NMC_NI87_MOLAR_MASS = molar_mass(NMC_NI87_COMPOSITION)  # ≈ 97.46 g/mol


@runtime_checkable
class OCVModel(Protocol):
    """What :class:`Material` needs from an open-circuit voltage model (θ → V)."""

    provenance: str

    def __call__(self, theta): ...
    def derivative(self, theta): ...
    def second_derivative(self, theta): ...


#: Equivalent radius 2A/Γ (µm) of the particle of seed 002 (A_ab = 4.87 µm², Γ_ab = 8.06 µm).
XU2022_RADIUS_UM = 2.0 * 4.87 / 8.06


def pitt_bounded_i0_ref(D_eff_m2_s: float, site_concentration: float, *, theta: float = 0.97,
                        radius_um: float = XU2022_RADIUS_UM, biot: float = 10.0,
                        alpha_a: float = 0.5, alpha_c: float = 0.5) -> float:
    """i0_ref (A m⁻², at θ = 0.5) for which the PITT Biot number at ``theta`` equals ``biot``.

    Seed 002 measured the exchange current by PITT (Fig. S20: 10 mV steps, ln I vs t fitted
    as in Li et al., J. Phys. Chem. C 116, 1472 (2012)) and calls the charge transfer near
    full lithiation slow. Linearising Butler–Volmer for a small potential step gives a
    surface rate constant k = i0 f |dV_oc/dθ| / (F N_L); with Fick's law in the chemical
    diffusivity D_chem = D_eff θ f |dV_oc/dθ| the ratio of diffusion to charge-transfer
    resistance is L = R k / D_chem = R i0 / (F N_L θ D_eff) (independent of the OCV slope).
    The long-time PITT current then depends on i0 only while L is at most ~10 (beyond, the
    decay is that of pure diffusion and i0 cannot be extracted). Taking L = ``biot`` at
    θ = 0.97 (the fully lithiated state of 002's cycles) on 002's particle (R = 2A/Γ) gives
    the largest i0 consistent with the measurement; the standard form's θ-dependence then
    sets i0_ref. Example (the default material: D_eff(0.97) = 1.6e-17/3.5 m² s⁻¹)::

        >>> round(pitt_bounded_i0_ref(1.6e-17 / 3.5, 4.78e6 / 97.4628), 3)
        0.509
    """
    from .constants import FARADAY as F

    i0_at_theta = biot * F * site_concentration * theta * D_eff_m2_s / (radius_um * UM_TO_M)
    shape = (1.0 - theta) ** alpha_a * theta**alpha_c / 0.5 ** (alpha_a + alpha_c)
    return i0_at_theta / shape


def _check_number(fieldname: str, value, lo: float, hi: float, lo_open=True, hi_open=False) -> float:
    """Validate a real number in an interval; raise InputError naming the field and range."""
    lb = "(" if lo_open else "["
    rb = ")" if hi_open else "]"
    rng = f"{lb}{lo:g}, {hi:g}{rb}" if math.isfinite(hi) else f"{lb}{lo:g}, inf)"
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InputError(fieldname, f"must be a number in {rng}, got {value!r}")
    v = float(value)
    ok = math.isfinite(v) and (v > lo if lo_open else v >= lo)
    if ok and math.isfinite(hi):
        ok = v < hi if hi_open else v <= hi
    if not ok:
        raise InputError(fieldname, f"must be in {rng}, got {value!r}")
    return v


@dataclass(frozen=True, eq=False)
class Material:
    """A layered-oxide cathode material. Construct with :func:`nmcfx.materials.get_material`.

    Attributes are in the units their names state; methods return SI.
    """

    name: str
    dli_table: Table  #: D_Li(θ) table (SI, m² s⁻¹), before scaling by S
    ocv_model: OCVModel  #: V_oc(θ) model (V)
    density_g_cm3: float = 4.78
    molar_mass_g_mol: float = NMC_NI87_MOLAR_MASS
    capacity_mAh_g: float = 210.0  #: practical capacity defining 1C
    theta0: float = 0.95  #: initial occupancy for delithiation
    scaling_S: float = 3.5  #: D_eff = D_Li / S
    temperature_K: float = 298.15
    #: Butler–Volmer kinetics (seed 004 Eqs. 1–3, standard form): exchange current density
    #: at θ = 0.5 and c_l = c_l,ref. Default: the fastest charge transfer consistent with
    #: seed 002 having measured i0 by PITT (Fig. S20) near full lithiation — see
    #: :func:`pitt_bounded_i0_ref` (≈ 0.51 A m⁻²; the previous default, 3.4 A m⁻², was an
    #: LG M50 graphite-cell value of Chen et al. 2020).
    i0_ref_A_m2: float = 0.51
    alpha_a: float = 0.5
    alpha_c: float = 0.5
    i0_table: Table | None = None  #: optional measured i0(θ) (e.g. PITT, 002 Fig. S20), A m⁻²
    description: str = field(default="", compare=False)

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.strip():
            raise InputError("material.name", f"must be a non-empty string, got {self.name!r}")
        checks = {
            "density_g_cm3": (0.0, 20.0),
            "molar_mass_g_mol": (0.0, 1000.0),
            "capacity_mAh_g": (0.0, 2000.0),
            "scaling_S": (0.0, 1.0e6),
            "temperature_K": (150.0, 600.0),
            "i0_ref_A_m2": (0.0, 1.0e6),
            "alpha_a": (0.0, 1.0),
            "alpha_c": (0.0, 1.0),
        }
        for key, (lo, hi) in checks.items():
            object.__setattr__(self, key, _check_number(f"material.{key}", getattr(self, key), lo, hi))
        object.__setattr__(
            self, "theta0", _check_number("material.theta0", self.theta0, 0.0, 1.0, hi_open=True)
        )
        if self.capacity_mAh_g > self.theoretical_capacity_mAh_g * (1 + 1e-12):
            raise InputError(
                "material.capacity_mAh_g",
                f"{self.capacity_mAh_g:g} mAh/g exceeds the theoretical capacity F/M = "
                f"{self.theoretical_capacity_mAh_g:.1f} mAh/g of molar_mass_g_mol="
                f"{self.molar_mass_g_mol:g}; must be in (0, {self.theoretical_capacity_mAh_g:.1f}]",
            )
        if not isinstance(self.dli_table, Table) or self.dli_table.kind != "diffusivity":
            raise InputError("material.dli_csv", "D_Li must be a diffusivity Table")
        if not isinstance(self.ocv_model, OCVModel):
            raise InputError("material.ocv_csv", "V_oc model must provide value and derivatives")
        if self.i0_table is not None and (not isinstance(self.i0_table, Table)
                                          or self.i0_table.kind != "exchange_current"):
            raise InputError("material.i0_csv", "i0 must be an exchange-current Table")

    def with_(self, **changes) -> "Material":
        """Copy with some fields changed (validated again)."""
        return replace(self, **changes)

    # ------------------------------------------------------------------ scalars
    @property
    def thermal_voltage(self) -> float:
        """RT/F in V."""
        return GAS_CONSTANT * self.temperature_K / FARADAY

    @property
    def site_concentration(self) -> float:
        """N_L = ρ/M, molar concentration of Li sites in mol m⁻³ (≈ 4.90e4 for NMC-Ni87)."""
        return self.density_g_cm3 * G_CM3_TO_G_M3 / self.molar_mass_g_mol

    @property
    def theoretical_capacity_mAh_g(self) -> float:
        """F/M in mAh g⁻¹ (all Li sites emptied; ≈ 275 for NMC-Ni87)."""
        return FARADAY / self.molar_mass_g_mol / MAH_TO_C

    @property
    def volumetric_capacity_C_m3(self) -> float:
        """F·N_L in C m⁻³: charge stored per unit volume between θ = 1 and θ = 0."""
        return FARADAY * self.site_concentration

    # ------------------------------------------------------------------ θ-dependent
    def D_Li(self, theta):
        """NMR-derived self-diffusivity D_Li(θ) in m² s⁻¹ (constant beyond the table ends)."""
        return self.dli_table(theta)

    def dD_Li(self, theta):
        """dD_Li/dθ in m² s⁻¹."""
        return self.dli_table.derivative(theta)

    def D_eff(self, theta):
        """Effective diffusivity D_Li(θ)/S in m² s⁻¹."""
        return self.dli_table(theta) / self.scaling_S

    def dD_eff(self, theta):
        """dD_eff/dθ in m² s⁻¹."""
        return self.dli_table.derivative(theta) / self.scaling_S

    def ocv(self, theta):
        """Open-circuit voltage V_oc(θ) vs Li/Li⁺ in V."""
        return np.asarray(self.ocv_model(theta), dtype=float)

    def docv(self, theta):
        """dV_oc/dθ in V (strictly negative on the model's range)."""
        return np.asarray(self.ocv_model.derivative(theta), dtype=float)

    def d2ocv(self, theta):
        """d²V_oc/dθ² in V."""
        return np.asarray(self.ocv_model.second_derivative(theta), dtype=float)

    def thermodynamic_factor(self, theta):
        """θ · (−F/RT) · dV_oc/dθ (dimensionless); 1/(1−θ) for an ideal lattice gas."""
        th = np.asarray(theta, dtype=float)
        return -th * self.docv(th) / self.thermal_voltage

    def D_chem(self, theta):
        """Chemical diffusivity D_eff · θ · (−F/RT) · dV_oc/dθ in m² s⁻¹ (flux J = −N_L D_chem ∇θ)."""
        th = np.asarray(theta, dtype=float)
        return self.D_eff(th) * self.thermodynamic_factor(th)

    def dD_chem(self, theta):
        """dD_chem/dθ in m² s⁻¹ (analytic: product rule over D_eff, θ and dV_oc/dθ)."""
        th = np.asarray(theta, dtype=float)
        d1 = self.docv(th)
        return -(
            self.dD_eff(th) * th * d1 + self.D_eff(th) * (d1 + th * self.d2ocv(th))
        ) / self.thermal_voltage

    def D_chem_lookup(self, scale: float = 1.0, lo: float = 1e-6, hi: float = 1.0 - 1e-6):
        """D_chem and dD_chem/dθ (× ``scale``) as a dense cubic Hermite table on [lo, hi], built
        once per material and scale (:class:`~nmcfx.materials.lookup.HermiteTable`; relative
        difference from :meth:`D_chem` < 1e-7). What the solver evaluates at every Newton iterate::

            D, dD = material.D_chem_lookup(scale=1e12)(theta)   # µm² s⁻¹
        """
        from .lookup import HermiteTable

        cache = self.__dict__.setdefault("_lookups", {})
        key = ("D_chem", float(scale), float(lo), float(hi))
        if key not in cache:
            # materials built again from the same data (every run of a sweep or a calibration loads its
            # config anew) share one table: building it costs ~5 ms, a warm Fig. 4c run ~0.1 s
            fingerprint = _dchem_fingerprint(self)
            shared = None if fingerprint is None else _SHARED_LOOKUPS.get((fingerprint, key))
            if shared is None:
                shared = HermiteTable(self.D_chem, self.dD_chem, lo, hi, scale=scale)
                if fingerprint is not None:
                    if len(_SHARED_LOOKUPS) >= _SHARED_LOOKUPS_MAX:
                        _SHARED_LOOKUPS.pop(next(iter(_SHARED_LOOKUPS)))
                    _SHARED_LOOKUPS[(fingerprint, key)] = shared
            cache[key] = shared
        return cache[key]

    # ------------------------------------------------------------------ kinetics
    def i0(self, theta, electrolyte_ratio: float = 1.0):
        """Exchange current density i0(θ) in A m⁻² (seed 004 Eq. 3, standard form).

        i0 = i0_ref (1−θ)^α_a θ^α_c / 0.5^(α_a+α_c) · (c_l/c_l,ref)^α_a, i.e. F k (c_max − c)^α_a
        c^α_c (c_l/c_l,ref)^α_a normalised at θ = 0.5; a user table replaces the θ-dependence
        (it is then taken as measured at c_l,ref).
        """
        th = np.clip(np.asarray(theta, dtype=float), 1e-12, 1.0 - 1e-12)
        scale = electrolyte_ratio**self.alpha_a
        if self.i0_table is not None:
            return self.i0_table(th) * scale
        shape = (1.0 - th) ** self.alpha_a * th**self.alpha_c / 0.5 ** (self.alpha_a + self.alpha_c)
        return self.i0_ref_A_m2 * shape * scale

    def di0(self, theta, electrolyte_ratio: float = 1.0):
        """di0/dθ in A m⁻²."""
        th = np.clip(np.asarray(theta, dtype=float), 1e-12, 1.0 - 1e-12)
        scale = electrolyte_ratio**self.alpha_a
        if self.i0_table is not None:
            return self.i0_table.derivative(th) * scale
        aa, ac = self.alpha_a, self.alpha_c
        shape = (1.0 - th) ** aa * th**ac
        dshape = shape * (ac / th - aa / (1.0 - th))
        return self.i0_ref_A_m2 * dshape / 0.5 ** (aa + ac) * scale

    # ------------------------------------------------------------------ boundary flux
    def _area_over_perimeter_m(self, area_um2, perimeter_um) -> float:
        """A/Γ in m. In 3D pass the volume (µm³) and the reactive surface area (µm²)."""
        a = _check_number("geometry.area_um2", area_um2, 0.0, math.inf)
        p = _check_number("geometry.perimeter_um", perimeter_um, 0.0, math.inf)
        return a / p * UM_TO_M

    def current_density_for_specific_current(self, mA_g, area_um2, perimeter_um) -> float:
        """Boundary current density j = I ρ A/Γ in A m⁻² for a specific current I in mA g⁻¹.

        A magnitude (≥ 0); the caller chooses the sign (delithiation/lithiation). The Li
        flux through the boundary is j/F in mol m⁻² s⁻¹.
        """
        i = _check_number("protocol.specific_current_mA_g", mA_g, 0.0, 1.0e6, lo_open=False)
        return i * 1e-3 * self.density_g_cm3 * G_CM3_TO_G_M3 * self._area_over_perimeter_m(
            area_um2, perimeter_um
        )

    def current_density_for_c_rate(self, c_rate, area_um2, perimeter_um) -> float:
        """Boundary current density j = n Q ρ A/Γ in A m⁻² for a rate of nC (Q = capacity_mAh_g).

        A magnitude (≥ 0); the caller chooses the sign.
        """
        n = _check_number("protocol.c_rate", c_rate, 0.0, 1000.0, lo_open=False)
        return self.current_density_for_specific_current(
            n * self.capacity_mAh_g, area_um2, perimeter_um
        )

    def specific_current_for_c_rate(self, c_rate) -> float:
        """Specific current in mA g⁻¹ for a rate of nC."""
        return _check_number("protocol.c_rate", c_rate, 0.0, 1000.0, lo_open=False) * self.capacity_mAh_g

    # ------------------------------------------------------------------ text
    def summary(self) -> str:
        """Multi-line description with parameters and provenance."""
        lines = [
            f"Material {self.name}" + (f": {self.description}" if self.description else ""),
            f"  density                {self.density_g_cm3:g} g/cm^3",
            f"  molar mass             {self.molar_mass_g_mol:.4f} g/mol",
            f"  Li-site concentration  {self.site_concentration:.5g} mol/m^3",
            f"  theoretical capacity   {self.theoretical_capacity_mAh_g:.2f} mAh/g",
            f"  practical capacity     {self.capacity_mAh_g:g} mAh/g (defines 1C)",
            f"  theta0                 {self.theta0:g}",
            f"  scaling S              {self.scaling_S:g}  (D_eff = D_Li/S)",
            f"  temperature            {self.temperature_K:g} K",
            f"  D_Li table             {self.dli_table!r}",
            f"  V_oc model             {self.ocv_model!r}",
        ]
        return "\n".join(lines)

    def describe(self) -> dict:
        """JSON-serialisable description (parameters, derived constants, provenance)."""
        tab = self.dli_table
        ocv = self.ocv_model
        return {
            "name": self.name,
            "description": self.description,
            **{k: getattr(self, k) for k in self.scalar_fields()},
            "site_concentration_mol_m3": self.site_concentration,
            "theoretical_capacity_mAh_g": self.theoretical_capacity_mAh_g,
            "dli_table": {
                "source": tab.source,
                "theta": tab.theta.tolist(),
                "D_Li_m2_s": tab.values.tolist(),
                "provenance": tab.provenance,
            },
            "ocv_model": {
                "repr": repr(ocv),
                "source": getattr(ocv, "source", ""),
                "provenance": getattr(ocv, "provenance", ""),
            },
        }

    @classmethod
    def scalar_fields(cls) -> tuple[str, ...]:
        """Names of the numeric parameters (overridable in config)."""
        return tuple(
            f.name for f in fields(cls)
            if f.name not in ("name", "dli_table", "ocv_model", "i0_table", "description")
        )


#: D_chem tables shared by materials with equal data (:meth:`Material.D_chem_lookup`), oldest dropped first
_SHARED_LOOKUPS: dict = {}
_SHARED_LOOKUPS_MAX = 32


def _dchem_fingerprint(material) -> tuple | None:
    """Everything D_chem(θ) of a :class:`Material` depends on, as a hashable key (the D_Li table's
    and the OCV model's data, S, T), or None when some part cannot be compared by value (then the
    material keeps its own table)."""
    def part(obj):
        from .tables import Table

        if isinstance(obj, Table):
            return (type(obj), obj.kind, obj.theta.tobytes(), obj.values.tobytes())
        try:
            hash(obj)
        except TypeError:
            return None
        # frozen dataclasses (the OCV models) compare and hash by their fields; other objects by identity
        return obj if is_dataclass(obj) else None

    parts = (part(material.dli_table), part(material.ocv_model))
    if any(p is None for p in parts) or type(material) is not Material:
        return None
    return (*parts, float(material.scaling_S), float(material.temperature_K))
