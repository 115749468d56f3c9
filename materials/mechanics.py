"""Mechanical data of the cathode material: lattice parameters a(θ), c(θ) and stiffness.

Pure NumPy/SciPy (no DOLFINx). The solver (:mod:`nmcfx.solver.mechanics`) takes a
:class:`MechanicalMaterial` and builds σ = C : (ε(u) − ε_ch(θ)) from it.

* **Chemical eigenstrain** in the crystal frame (c ∥ z, as Xu 2022 Eq. 10):
  ε_ch = diag(ε_a, ε_a, ε_c) with ε_a = a(θ)/a(θ_ref) − 1, ε_c = c(θ)/c(θ_ref) − 1,
  stress-free at the reference occupancy θ_ref (the run's initial θ).
* **Stiffness** in Voigt notation (11, 22, 33, 23, 13, 12; engineering shear strains), GPa:
  isotropic (E, ν) or transversely isotropic about c (C11, C12, C13, C33, C44;
  C66 = (C11 − C12)/2). Optionally scaled by a θ-dependent factor (a ``modulus_csv`` table).

Defaults (``data/nmc_lattice_ni_rich_default.csv`` and :data:`DEFAULT_E_GPA`,
:data:`DEFAULT_NU`) are *constructed* from what the sources state; see
``data/README-mechanics.md``. Usage::

    >>> from nmcfx.materials.mechanics import default_mechanics
    >>> mech = default_mechanics()
    >>> ea, ec = mech.lattice.strains([0.5, 0.95], theta_ref=0.95)
    >>> round(float(ea[0]), 4), round(float(ec[0]), 4)
    (-0.0113, 0.017)
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nmcfx.errors import InputError

from ._pchip import pchip

DATA_DIR = Path(__file__).resolve().parent / "data"
DEFAULT_LATTICE_CSV = DATA_DIR / "nmc_lattice_ni_rich_default.csv"

#: Isotropic defaults: the middles of the ranges E ≈ 140–200 GPa, ν ≈ 0.25–0.3 quoted for
#: Ni-rich NMC by seed 004's refs. 8 (de Vasconcelos, Xu & Zhao, J. Mech. Phys. Solids 144,
#: 104102 (2020)) and 11 (Xu et al., J. Mech. Phys. Solids 129, 160 (2019)).
DEFAULT_E_GPA = 170.0
DEFAULT_NU = 0.275
STIFFNESS_SOURCE = ("midpoints of E = 140-200 GPa, nu = 0.25-0.3 (de Vasconcelos et al., JMPS 144, 104102 "
                    "(2020); Xu et al., JMPS 129, 160 (2019); refs. 8, 11 of Sharma et al., Nano Lett. 2022)")
#: The carbon-binder network (CBD: carbon black + PVDF, electrolyte-filled) of a composite electrode,
#: used when particles and CBD are one elastic body (``[mechanics] electrode_bonding = "bonded"``).
#: An order-of-magnitude default between the swollen, porous phase and the dense dry binder; the
#: range, the sources and why 1 GPa are in data/README-mechanics.md (Sharma 2022's own values are
#: not in the seed).
DEFAULT_CBD_E_GPA = 1.0
DEFAULT_CBD_NU = 0.3
CBD_SOURCE = ("order-of-magnitude default for an electrolyte-swollen, porous carbon-black/PVDF phase "
              "(dense PVDF ~1-3 GPa; see materials/data/README-mechanics.md)")


def default_cbd_stiffness() -> "Stiffness":
    """Isotropic stiffness of the carbon-binder network (defaults above).

    >>> default_cbd_stiffness().summary()
    'isotropic, E = 1 GPa, nu = 0.3'
    """
    return Stiffness.isotropic(DEFAULT_CBD_E_GPA, DEFAULT_CBD_NU, source=CBD_SOURCE)


STIFFNESS_KINDS = ("isotropic", "transversely_isotropic")
TI_KEYS = ("C11_GPa", "C12_GPa", "C13_GPa", "C33_GPa", "C44_GPa")


# ----------------------------------------------------------------------------- CSV
def _read_columns(path: Path, field_name: str, required: tuple[str, ...]) -> tuple[dict, list[str]]:
    """Read a small CSV with ``#`` comment lines (kept as provenance) into float columns."""
    if not path.is_file():
        raise InputError(field_name, f"file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(field_name, f"{path}: cannot read as UTF-8 text ({exc})") from None
    comments, rows = [], []
    for ln, line in enumerate(text.splitlines(), start=1):
        s = line.strip()
        if not s:
            continue
        if s.startswith("#"):
            comments.append(s.lstrip("#").strip())
        else:
            rows.append((ln, s))
    if not rows:
        raise InputError(field_name, f"{path}: no header line")
    header = [h.strip() for h in next(csv.reader([rows[0][1]]))]
    missing = [c for c in required if c not in header]
    if missing:
        raise InputError(field_name, f"{path}: header {header} lacks column(s) {missing}")
    cols = {c: [] for c in header}
    for ln, s in rows[1:]:
        cells = [x.strip() for x in next(csv.reader([s]))]
        if len(cells) != len(header):
            raise InputError(field_name, f"{path}, line {ln}: {len(cells)} values for {len(header)} columns")
        for c, x in zip(header, cells):
            try:
                v = float(x)
            except ValueError:
                raise InputError(field_name, f"{path}, line {ln}: {x!r} is not a number") from None
            if not math.isfinite(v):
                raise InputError(field_name, f"{path}, line {ln}: {x!r} is not finite")
            cols[c].append(v)
    out = {c: np.asarray(v, dtype=float) for c, v in cols.items()}
    if len(out[required[0]]) < 2:
        raise InputError(field_name, f"{path}: needs at least two data rows")
    th = out["theta"]
    if np.any(th < 0) or np.any(th > 1) or np.any(np.diff(th) <= 0):
        raise InputError(field_name, f"{path}: theta must be strictly increasing within [0, 1]")
    return out, comments


# ----------------------------------------------------------------------------- lattice
@dataclass(frozen=True, eq=False)
class LatticeTable:
    """a(θ), c(θ) in Å at nodes θ_i, PCHIP-interpolated, constant beyond the end nodes.

    >>> t = LatticeTable(np.array([0.0, 1.0]), np.array([2.8, 2.9]), np.array([14.4, 14.2]))
    >>> round(float(t.a(0.5)), 6), t.covers(0.95)
    (2.85, True)
    """

    theta: np.ndarray
    a_A: np.ndarray
    c_A: np.ndarray
    source: str = ""
    provenance: tuple[str, ...] = ()
    _a: object = field(default=None, repr=False, compare=False)
    _c: object = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        th = np.asarray(self.theta, dtype=float)
        if th.ndim != 1 or th.size < 2 or np.any(np.diff(th) <= 0) or th[0] < 0 or th[-1] > 1:
            raise InputError("mechanics.lattice_csv", "theta must be strictly increasing within [0, 1], 2+ rows")
        for name in ("a_A", "c_A"):
            v = np.asarray(getattr(self, name), dtype=float)
            if v.shape != th.shape or np.any(v <= 0) or not np.all(np.isfinite(v)):
                raise InputError("mechanics.lattice_csv", f"column {name} must hold positive lattice parameters (Å)")
        # (NumPy's PCHIP, the same interpolant as SciPy's: importing SciPy costs a run 44 MB and 0.6 s)
        object.__setattr__(self, "_a", pchip(th, np.asarray(self.a_A, float)))
        object.__setattr__(self, "_c", pchip(th, np.asarray(self.c_A, float)))
        object.__setattr__(self, "_refs", {})  # θ_ref → (a, c) there

    @property
    def theta_min(self) -> float:
        return float(self.theta[0])

    @property
    def theta_max(self) -> float:
        return float(self.theta[-1])

    def covers(self, theta: float) -> bool:
        return self.theta_min - 1e-12 <= float(theta) <= self.theta_max + 1e-12

    def _eval(self, spline, theta):
        th = np.clip(np.asarray(theta, dtype=float), self.theta_min, self.theta_max)
        return np.asarray(spline(th), dtype=float)

    def a(self, theta):
        """a(θ) in Å."""
        return self._eval(self._a, theta)

    def c(self, theta):
        """c(θ) in Å."""
        return self._eval(self._c, theta)

    def strains(self, theta, theta_ref: float):
        """(ε_a, ε_c) = (a(θ)/a(θ_ref) − 1, c(θ)/c(θ_ref) − 1). (The mechanics evaluates this at every
        node after every step: one interval search for both tables, the references kept.)"""
        ref = self._refs.get(theta_ref)
        if ref is None:
            if len(self._refs) > 8:
                self._refs.clear()
            ref = self._refs[theta_ref] = (float(self.a(theta_ref)), float(self.c(theta_ref)))
        th = np.clip(np.asarray(theta, dtype=float), self.theta_min, self.theta_max)
        k = self._a._interval(th)  # a and c share the nodes
        s = th - self._a.x[k]
        return self._a.on_interval(k, s) / ref[0] - 1.0, self._c.on_interval(k, s) / ref[1] - 1.0

    def describe(self) -> dict:
        return {"source": self.source, "theta": self.theta.tolist(), "a_A": np.asarray(self.a_A).tolist(),
                "c_A": np.asarray(self.c_A).tolist(), "provenance": list(self.provenance)}


def load_lattice_table(path, field_name: str = "mechanics.lattice_csv") -> LatticeTable:
    """Read a lattice table: CSV with columns ``theta,a_A,c_A`` (Å); ``#`` lines = provenance."""
    p = Path(os.fspath(path))
    cols, comments = _read_columns(p, field_name, ("theta", "a_A", "c_A"))
    for name in ("a_A", "c_A"):
        if np.any(cols[name] <= 0):
            raise InputError(field_name, f"{p}: {name} must be > 0 Å")
    return LatticeTable(cols["theta"], cols["a_A"], cols["c_A"], source=str(p), provenance=tuple(comments))


# ----------------------------------------------------------------------------- stiffness
def _positive(field_name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InputError(field_name, f"must be a number > 0 GPa, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v <= 0:
        raise InputError(field_name, f"must be > 0 GPa, got {value!r}")
    return v


@dataclass(frozen=True)
class Stiffness:
    """Elastic stiffness in the crystal frame (c ∥ z), GPa.

    >>> round(float(Stiffness.isotropic(170.0, 0.275).voigt()[0, 0]), 2)
    214.81
    """

    kind: str
    E_GPa: float | None = None
    nu: float | None = None
    C11_GPa: float | None = None
    C12_GPa: float | None = None
    C13_GPa: float | None = None
    C33_GPa: float | None = None
    C44_GPa: float | None = None
    source: str = ""

    @classmethod
    def isotropic(cls, E_GPa, nu, source: str = "", prefix: str = "mechanics") -> "Stiffness":
        E = _positive(f"{prefix}.E_GPa", E_GPa)
        if isinstance(nu, bool) or not isinstance(nu, (int, float, np.integer, np.floating)) \
                or not math.isfinite(float(nu)) or not -1.0 < float(nu) < 0.5:
            raise InputError(f"{prefix}.nu", f"Poisson's ratio must be in (-1, 0.5), got {nu!r}")
        return cls("isotropic", E_GPa=E, nu=float(nu), source=source)

    @classmethod
    def transversely_isotropic(cls, C11_GPa, C12_GPa, C13_GPa, C33_GPa, C44_GPa, source: str = "",
                               prefix: str = "mechanics") -> "Stiffness":
        vals = {}
        for key, v in zip(TI_KEYS, (C11_GPa, C12_GPa, C13_GPa, C33_GPa, C44_GPa)):
            if key == "C13_GPa" or key == "C12_GPa":  # off-diagonal: any sign, positive definiteness below
                if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) \
                        or not math.isfinite(float(v)):
                    raise InputError(f"{prefix}.{key}", f"must be a number (GPa), got {v!r}")
                vals[key] = float(v)
            else:
                vals[key] = _positive(f"{prefix}.{key}", v)
        s = cls("transversely_isotropic", **vals, source=source)
        C11, C12, C13, C33 = (vals[k] for k in ("C11_GPa", "C12_GPa", "C13_GPa", "C33_GPa"))
        if not C11 > abs(C12):
            raise InputError(f"{prefix}.C12_GPa", f"need |C12| < C11 (C66 = (C11 - C12)/2 > 0), got C11={C11:g}, "
                                                  f"C12={C12:g}")
        if not (C11 + C12) * C33 > 2 * C13**2:
            raise InputError(f"{prefix}.C13_GPa", f"need 2 C13² < (C11 + C12) C33 for a positive-definite "
                                                  f"stiffness, got C13={C13:g}")
        return s

    def voigt(self) -> np.ndarray:
        """6×6 stiffness (GPa), order 11, 22, 33, 23, 13, 12; engineering shear strains."""
        C = np.zeros((6, 6))
        if self.kind == "isotropic":
            E, nu = self.E_GPa, self.nu
            lam = E * nu / ((1 + nu) * (1 - 2 * nu))
            mu = E / (2 * (1 + nu))
            C[:3, :3] = lam
            C[np.arange(3), np.arange(3)] = lam + 2 * mu
            C[3, 3] = C[4, 4] = C[5, 5] = mu
        else:
            C11, C12, C13, C33, C44 = (getattr(self, k) for k in TI_KEYS)
            C[0, 0] = C[1, 1] = C11
            C[0, 1] = C[1, 0] = C12
            C[0, 2] = C[2, 0] = C[1, 2] = C[2, 1] = C13
            C[2, 2] = C33
            C[3, 3] = C[4, 4] = C44
            C[5, 5] = 0.5 * (C11 - C12)
        return C

    def basal_modulus(self) -> tuple[float, float]:
        """Young's modulus (GPa) and Poisson's ratio in the basal (a–b) plane, from the compliance."""
        S = np.linalg.inv(self.voigt())
        return float(1.0 / S[0, 0]), float(-S[0, 1] / S[0, 0])

    def describe(self) -> dict:
        d = {"kind": self.kind, "source": self.source, "voigt_GPa": self.voigt().tolist()}
        if self.kind == "isotropic":
            d.update(E_GPa=self.E_GPa, nu=self.nu)
        else:
            d.update({k: getattr(self, k) for k in TI_KEYS})
        return d

    def summary(self) -> str:
        if self.kind == "isotropic":
            return f"isotropic, E = {self.E_GPa:g} GPa, nu = {self.nu:g}"
        return "transversely isotropic (c ∥ z), " + ", ".join(f"{k[:-4]} = {getattr(self, k):g}" for k in TI_KEYS) \
            + " GPa"


@dataclass(frozen=True, eq=False)
class ModulusTable:
    """Optional θ-dependence of the stiffness: C(θ) = f(θ) C, f from a CSV (PCHIP, constant beyond the ends).

    Columns ``theta,factor`` (dimensionless) or, for isotropic stiffness, ``theta,E_GPa``
    (then f = E(θ)/E).
    """

    theta: np.ndarray
    factor: np.ndarray
    source: str = ""
    provenance: tuple[str, ...] = ()

    def __call__(self, theta):
        th = np.clip(np.asarray(theta, dtype=float), self.theta[0], self.theta[-1])
        return np.asarray(pchip(np.asarray(self.theta, float), np.asarray(self.factor, float))(th), dtype=float)


def load_modulus_table(path, stiffness: Stiffness, field_name: str = "mechanics.modulus_csv") -> ModulusTable:
    p = Path(os.fspath(path))
    cols, comments = _read_columns(p, field_name, ("theta",))
    if "factor" in cols:
        f = cols["factor"]
    elif "E_GPa" in cols:
        if stiffness.kind != "isotropic":
            raise InputError(field_name, f"{p}: an E_GPa column needs isotropic stiffness; give a 'factor' column")
        f = cols["E_GPa"] / stiffness.E_GPa
    else:
        raise InputError(field_name, f"{p}: needs a column 'factor' (dimensionless) or 'E_GPa'")
    if np.any(f <= 0):
        raise InputError(field_name, f"{p}: moduli must be > 0")
    return ModulusTable(cols["theta"], f, source=str(p), provenance=tuple(comments))


# ----------------------------------------------------------------------------- material
@dataclass(frozen=True, eq=False)
class MechanicalMaterial:
    """Lattice table + stiffness (+ optional θ-dependent modulus) of one cathode material."""

    name: str
    lattice: LatticeTable
    stiffness: Stiffness
    modulus: ModulusTable | None = None

    def eigenstrain(self, theta, theta_ref: float):
        """(ε_a, ε_c) of the chemical eigenstrain diag(ε_a, ε_a, ε_c), stress-free at θ_ref."""
        return self.lattice.strains(theta, theta_ref)

    def modulus_factor(self, theta):
        th = np.asarray(theta, dtype=float)
        return np.ones_like(th) if self.modulus is None else self.modulus(th)

    def describe(self) -> dict:
        return {"name": self.name, "lattice": self.lattice.describe(), "stiffness": self.stiffness.describe(),
                "modulus": None if self.modulus is None else
                {"source": self.modulus.source, "theta": self.modulus.theta.tolist(),
                 "factor": self.modulus.factor.tolist(), "provenance": list(self.modulus.provenance)}}

    def summary(self) -> str:
        lat = self.lattice
        default = Path(lat.source).resolve() == DEFAULT_LATTICE_CSV.resolve() if lat.source else False
        lines = [
            f"Mechanical data of {self.name}",
            f"  stiffness          {self.stiffness.summary()}",
            f"                     source: {self.stiffness.source or 'user input'}",
            f"  lattice a(θ), c(θ) {'constructed default (see materials/data/README-mechanics.md)' if default else lat.source}",
            f"                     θ in [{lat.theta_min:g}, {lat.theta_max:g}], PCHIP, constant beyond the ends",
            f"  θ-dependent modulus {'none' if self.modulus is None else self.modulus.source}",
        ]
        return "\n".join(lines)


def default_mechanics(name: str = "NMC-Ni87") -> MechanicalMaterial:
    """The default mechanical data (constructed lattice table, isotropic E, ν) of a registered material."""
    from . import _resolve

    canon = _resolve(name)
    return MechanicalMaterial(canon, load_lattice_table(DEFAULT_LATTICE_CSV),
                              Stiffness.isotropic(DEFAULT_E_GPA, DEFAULT_NU, source=STIFFNESS_SOURCE))


def mechanics_table(mech: MechanicalMaterial, thetas, theta_ref: float = 1.0) -> dict[str, np.ndarray]:
    """a, c, ε_a, ε_c (relative to θ_ref) and the volumetric eigenstrain on a θ grid."""
    th = np.asarray(thetas, dtype=float)
    ea, ec = mech.eigenstrain(th, theta_ref)
    return {"theta": th, "a_A": mech.lattice.a(th), "c_A": mech.lattice.c(th), "eps_a": ea, "eps_c": ec,
            "eps_vol": (1 + ea) ** 2 * (1 + ec) - 1, "modulus_factor": mech.modulus_factor(th)}


def format_mechanics_table(mech: MechanicalMaterial, thetas, theta_ref: float = 1.0) -> str:
    """Text block for ``nmcfx materials show``: the summary, then θ, a, c and the strains."""
    tab = mechanics_table(mech, thetas, theta_ref)
    heads = {"theta": "theta", "a_A": "a [A]", "c_A": "c [A]", "eps_a": f"eps_a(rel. {theta_ref:g})",
             "eps_c": f"eps_c(rel. {theta_ref:g})", "eps_vol": "eps_vol"}
    fmt = {"theta": "{:.3f}", "a_A": "{:.5f}", "c_A": "{:.4f}", "eps_a": "{:+.4%}", "eps_c": "{:+.4%}",
           "eps_vol": "{:+.4%}"}
    cols = []
    for key, head in heads.items():
        cells = [fmt[key].format(v) for v in tab[key]]
        w = max(len(head), *(len(c) for c in cells))
        cols.append([head.rjust(w)] + [c.rjust(w) for c in cells])
    lines = [mech.summary(), ""] + ["  ".join(r) for r in zip(*cols)]
    C = mech.stiffness.voigt()
    lines += ["", "  stiffness (Voigt, GPa; 11 22 33 23 13 12):"]
    lines += ["    " + " ".join(f"{v:8.2f}" for v in row) for row in C]
    cbd = default_cbd_stiffness()
    lines += ["", f"  carbon-binder network (electrode_bonding = 'bonded'): {cbd.summary()}",
              f"                     source: {cbd.source}",
              "                     set with [mechanics] cbd_youngs_modulus_GPa, cbd_poisson_ratio"]
    return "\n".join(lines)
