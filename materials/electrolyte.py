"""Transport properties of the liquid electrolyte (LiPF6 in carbonate solvents) for the resolved
electrolyte model of a composite electrode (concentrated-solution theory, Newman).

A binary electrolyte needs four functions of the salt concentration c (mol m⁻³), all SI:

* κ(c)   ionic conductivity, S m⁻¹;
* D(c)   salt diffusivity, m² s⁻¹;
* t₊(c)  cation transference number (to the solvent velocity);
* TF(c) = 1 + d ln f± / d ln c, the thermodynamic factor;

and, derived from them, the diffusion-potential factor ν = (1 − t₊) TF that multiplies
(2RT/F) ∇ln c in the current, i = −κ∇φ_l + (2κRT/F) ν ∇ln c (φ_l measured by a Li reference).

Default: :class:`Valoen2005` — LiPF6 in PC/EC/DMC (10:27:63 by volume), Valøen & Reimers,
J. Electrochem. Soc. 152, A882 (2005), their fits of κ(c, T), D(c, T) and of the measured product
(1 − t₊⁰)(1 + d ln f±/d ln c)(c, T) with t₊⁰ = 0.38 (the value with which they separate the two);
provenance and alternatives in ``data/README.md``. Replace it by your own table
(:func:`load_electrolyte_table`, columns ``c_mol_m3,kappa_S_m,D_m2_s,t_plus,thermodynamic_factor``)
or override single properties with constants (:class:`ConstantOverrides`). Usage::

    el = Valoen2005(temperature_K=298.15)
    el.conductivity(1000.0)                 # 1.19 S/m at 1 mol/L, 25 °C
    el.diffusion_potential_factor(1000.0)   # (1 − t₊) TF = 1.32
    el = ConstantOverrides(el, conductivity=2.0)   # κ = 2 S/m, the rest as before

Every function takes and returns NumPy arrays (nodal evaluation in the solver) and has an exact
derivative with respect to c (``d<name>``), so that Newton stays quadratic.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nmcfx.errors import InputError

from ._pchip import pchip

DATA_DIR = Path(__file__).resolve().parent / "data"
DEFAULT_ELECTROLYTE_CSV = DATA_DIR / "electrolyte_lipf6_valoen2005.csv"
TABLE_COLUMNS = ("c_mol_m3", "kappa_S_m", "D_m2_s", "t_plus", "thermodynamic_factor")
PROPERTY_NAMES = ("conductivity", "diffusivity", "transference_number", "thermodynamic_factor")


class ElectrolyteProperties:
    """Interface (and the derived quantities) of an electrolyte property set; c in mol m⁻³."""

    name = "electrolyte"
    provenance = ""
    #: concentrations (mol m⁻³) beyond which properties are held at their end values
    c_range = (1.0, 4000.0)

    def _clip(self, c):
        lo, hi = self.c_range
        c = np.asarray(c, dtype=float)
        return np.clip(c, lo, hi), (c > lo) & (c < hi)

    def conductivity(self, c):
        raise NotImplementedError

    def dconductivity(self, c):
        raise NotImplementedError

    def diffusivity(self, c):
        raise NotImplementedError

    def ddiffusivity(self, c):
        raise NotImplementedError

    def transference_number(self, c):
        raise NotImplementedError

    def dtransference_number(self, c):
        raise NotImplementedError

    def thermodynamic_factor(self, c):
        raise NotImplementedError

    def dthermodynamic_factor(self, c):
        raise NotImplementedError

    def diffusion_potential_factor(self, c):
        """ν = (1 − t₊) TF (dimensionless)."""
        return (1.0 - self.transference_number(c)) * self.thermodynamic_factor(c)

    def ddiffusion_potential_factor(self, c):
        return (-self.dtransference_number(c) * self.thermodynamic_factor(c)
                + (1.0 - self.transference_number(c)) * self.dthermodynamic_factor(c))

    def table(self, c=None) -> dict[str, np.ndarray]:
        """Every property on a concentration grid (mol m⁻³), as columns of :data:`TABLE_COLUMNS`."""
        c = np.asarray(np.linspace(100.0, 3000.0, 30) if c is None else c, dtype=float)
        return {"c_mol_m3": c, "kappa_S_m": self.conductivity(c), "D_m2_s": self.diffusivity(c),
                "t_plus": self.transference_number(c), "thermodynamic_factor": self.thermodynamic_factor(c)}

    def describe(self) -> dict:
        at = np.array([500.0, 1000.0, 1500.0])
        return {"name": self.name, "provenance": self.provenance,
                "at_c_mol_m3": at.tolist(), **{k: v.tolist() for k, v in self.table(at).items() if k != "c_mol_m3"}}


@dataclass(frozen=True)
class Valoen2005(ElectrolyteProperties):
    """LiPF6 in PC/EC/DMC 10:27:63 (v/v): Valøen & Reimers, J. Electrochem. Soc. 152, A882 (2005).

    With c_M in mol L⁻¹ and T in K:

    * κ = c_M (k00 + k01 T + k02 T² + c_M (k10 + k11 T + k12 T²) + c_M² (k20 + k21 T))²  mS cm⁻¹
    * log10 D = −4.43 − 54 / (T − 229 − 5 c_M) − 0.22 c_M     (D in cm² s⁻¹)
    * (1 − t₊⁰) TF = 0.601 − 0.24 c_M^½ + 0.982 (1 − 0.0052 (T − 294)) c_M^³ᐟ², t₊⁰ = 0.38
    """

    temperature_K: float = 298.15
    name = "LiPF6 in PC/EC/DMC, Valoen & Reimers 2005"
    provenance = ("Valoen & Reimers, J. Electrochem. Soc. 152, A882 (2005): fits of kappa(c,T), D(c,T) and "
                  "(1 - t+)(1 + dlnf/dlnc)(c,T); t+ = 0.38 as used there to separate the product")
    t_plus = 0.38
    k = ((-10.5, 0.0740, -6.96e-5), (0.668, -0.0178, 2.80e-5), (0.494, -8.86e-4))

    def _kappa_poly(self, cm):
        T = self.temperature_K
        (a0, a1, a2), (b0, b1, b2), (g0, g1) = self.k
        A, B, G = a0 + a1 * T + a2 * T * T, b0 + b1 * T + b2 * T * T, g0 + g1 * T
        return A + B * cm + G * cm * cm, B + 2.0 * G * cm

    def conductivity(self, c):
        cc, _ = self._clip(c)
        cm = cc / 1000.0
        p, _ = self._kappa_poly(cm)
        return 0.1 * cm * p * p  # mS/cm → S/m

    def dconductivity(self, c):
        cc, inside = self._clip(c)
        cm = cc / 1000.0
        p, dp = self._kappa_poly(cm)
        return np.where(inside, 0.1 * (p * p + 2.0 * cm * p * dp) / 1000.0, 0.0)

    def _log10_D(self, cm):
        return -4.43 - 54.0 / (self.temperature_K - 229.0 - 5.0 * cm) - 0.22 * cm

    def diffusivity(self, c):
        cc, _ = self._clip(c)
        return 1e-4 * 10.0 ** self._log10_D(cc / 1000.0)

    def ddiffusivity(self, c):
        cc, inside = self._clip(c)
        cm = cc / 1000.0
        dlog = -270.0 / (self.temperature_K - 229.0 - 5.0 * cm) ** 2 - 0.22
        return np.where(inside, self.diffusivity(cc) * math.log(10.0) * dlog / 1000.0, 0.0)

    def transference_number(self, c):
        return np.full_like(np.asarray(c, dtype=float), self.t_plus)

    def dtransference_number(self, c):
        return np.zeros_like(np.asarray(c, dtype=float))

    def _nu(self, cm):
        w = 0.982 * (1.0 - 0.0052 * (self.temperature_K - 294.0))
        return 0.601 - 0.24 * np.sqrt(cm) + w * cm**1.5, -0.12 / np.sqrt(cm) + 1.5 * w * np.sqrt(cm)

    def thermodynamic_factor(self, c):
        cc, _ = self._clip(c)
        return self._nu(cc / 1000.0)[0] / (1.0 - self.t_plus)

    def dthermodynamic_factor(self, c):
        cc, inside = self._clip(c)
        return np.where(inside, self._nu(cc / 1000.0)[1] / (1.0 - self.t_plus) / 1000.0, 0.0)


class TabulatedElectrolyte(ElectrolyteProperties):
    """Properties interpolated from nodes (monotone PCHIP per column, end values held beyond the
    table): what :func:`load_electrolyte_table` returns."""

    def __init__(self, columns: dict[str, np.ndarray], *, name: str = "table", provenance: str = "",
                 field: str = "electrode.electrolyte_csv"):
        c = np.asarray(columns["c_mol_m3"], dtype=float)
        if c.size < 2 or np.any(np.diff(c) <= 0) or c[0] < 0:
            raise InputError(field, "c_mol_m3 must be >= 0 and strictly increasing, with at least two rows")
        checks = {"kappa_S_m": (0.0, math.inf), "D_m2_s": (0.0, math.inf), "t_plus": (-math.inf, 1.0),
                  "thermodynamic_factor": (0.0, math.inf)}
        self._interp = {}
        for col, (lo, hi) in checks.items():
            v = np.asarray(columns[col], dtype=float)
            if not np.all(np.isfinite(v)) or np.any(v <= lo) or np.any(v >= hi):
                bad = v[~(np.isfinite(v) & (v > lo) & (v < hi))][0]
                rng = f"< {hi:g}" if lo == -math.inf else f"> {lo:g}"
                raise InputError(field, f"column {col} must be finite and {rng}, got {bad:g}")
            f = pchip(c, v)  # evaluated within the table (_clip)
            self._interp[col] = (f, f.derivative())
        self.c_range = (float(c[0]), float(c[-1]))
        self.name, self.provenance = name, provenance
        self.nodes = {k: np.asarray(v, dtype=float) for k, v in columns.items()}

    def _eval(self, col, c, derivative=False):
        cc, inside = self._clip(c)
        f, df = self._interp[col]
        if derivative:
            return np.where(inside, df(cc), 0.0)
        return f(cc)

    def conductivity(self, c):
        return self._eval("kappa_S_m", c)

    def dconductivity(self, c):
        return self._eval("kappa_S_m", c, True)

    def diffusivity(self, c):
        return self._eval("D_m2_s", c)

    def ddiffusivity(self, c):
        return self._eval("D_m2_s", c, True)

    def transference_number(self, c):
        return self._eval("t_plus", c)

    def dtransference_number(self, c):
        return self._eval("t_plus", c, True)

    def thermodynamic_factor(self, c):
        return self._eval("thermodynamic_factor", c)

    def dthermodynamic_factor(self, c):
        return self._eval("thermodynamic_factor", c, True)


class ConstantOverrides(ElectrolyteProperties):
    """``base`` with some properties replaced by constants (``conductivity`` S m⁻¹, ``diffusivity``
    m² s⁻¹, ``transference_number``, ``thermodynamic_factor``); None keeps the base function."""

    def __init__(self, base: ElectrolyteProperties, **constants):
        unknown = set(constants) - set(PROPERTY_NAMES)
        if unknown:
            raise ValueError(f"unknown electrolyte properties {sorted(unknown)}")
        self.base = base
        self.constants = {k: float(v) for k, v in constants.items() if v is not None}
        self.c_range = base.c_range
        given = ", ".join(f"{k} = {v:g}" for k, v in self.constants.items())
        self.name = base.name + (f" ({given})" if given else "")
        self.provenance = base.provenance + ("; constant overrides: " + given if given else "")

    def _get(self, prop, c, derivative=False):
        if prop in self.constants:
            shape = np.shape(np.asarray(c, dtype=float))
            return np.full(shape, 0.0 if derivative else self.constants[prop])
        return getattr(self.base, ("d" if derivative else "") + prop)(c)

    def conductivity(self, c):
        return self._get("conductivity", c)

    def dconductivity(self, c):
        return self._get("conductivity", c, True)

    def diffusivity(self, c):
        return self._get("diffusivity", c)

    def ddiffusivity(self, c):
        return self._get("diffusivity", c, True)

    def transference_number(self, c):
        return self._get("transference_number", c)

    def dtransference_number(self, c):
        return self._get("transference_number", c, True)

    def thermodynamic_factor(self, c):
        return self._get("thermodynamic_factor", c)

    def dthermodynamic_factor(self, c):
        return self._get("thermodynamic_factor", c, True)


def load_electrolyte_table(path, field: str = "electrode.electrolyte_csv", base_dir=None) -> TabulatedElectrolyte:
    """Read a property table (comment lines starting with # are kept as provenance); header
    ``c_mol_m3,kappa_S_m,D_m2_s,t_plus,thermodynamic_factor``."""
    p = Path(path)
    if base_dir is not None and not p.is_absolute():
        p = Path(base_dir) / p
    if not p.is_file():
        raise InputError(field, f"file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(field, f"{p} is not a UTF-8 text file") from None
    comments = [ln[1:].strip() for ln in text.splitlines() if ln.startswith("#")]
    rows = list(csv.reader(ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")))
    if not rows or tuple(c.strip() for c in rows[0]) != TABLE_COLUMNS:
        raise InputError(field, f"{p.name}: the header must be '{','.join(TABLE_COLUMNS)}'")
    try:
        data = np.array([[float(v) for v in r] for r in rows[1:]], dtype=float)
    except ValueError as exc:
        raise InputError(field, f"{p.name}: {exc}") from None
    if data.ndim != 2 or data.shape[0] < 2 or data.shape[1] != len(TABLE_COLUMNS):
        raise InputError(field, f"{p.name}: needs at least two rows of {len(TABLE_COLUMNS)} numbers")
    return TabulatedElectrolyte(dict(zip(TABLE_COLUMNS, data.T)), name=p.name, provenance="\n".join(comments),
                                field=field)


def write_electrolyte_table(path, props: ElectrolyteProperties, c=None, header: str = "") -> Path:
    """Tabulate ``props`` in the CSV format :func:`load_electrolyte_table` reads."""
    cols = props.table(c)
    p = Path(path)
    with open(p, "w", newline="", encoding="utf-8") as fh:
        for line in header.strip().splitlines():
            fh.write(f"# {line}\n")
        w = csv.writer(fh)
        w.writerow(TABLE_COLUMNS)
        for row in zip(*(cols[k] for k in TABLE_COLUMNS)):
            w.writerow([f"{v:.6g}" for v in row])
    return p


def electrolyte_properties(*, temperature_K: float = 298.15, csv_path=None, base_dir=None,
                           **constants) -> ElectrolyteProperties:
    """The default (Valøen & Reimers 2005 at ``temperature_K``) or a user table, with optional
    constant overrides (see :class:`ConstantOverrides`)."""
    base = (Valoen2005(temperature_K) if csv_path is None
            else load_electrolyte_table(csv_path, base_dir=base_dir))
    given = {k: v for k, v in constants.items() if v is not None}
    return ConstantOverrides(base, **given) if given else base
