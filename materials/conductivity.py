"""Electronic conductivity of the cathode material as a function of the local Li occupancy.

σ_NMC(θ) spans five decades between the pristine (θ = 1) and the charged state (Amin & Chiang
2016; Sharma 2022 Fig. 4b), so it is interpolated in log10 σ with a monotone PCHIP and held
constant beyond the end nodes. The default table and its provenance:
``data/nmc_conductivity_default.csv``. A user table has the columns ``theta`` and ``sigma_S_m``
(S m⁻¹), θ strictly increasing in [0, 1], σ > 0.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from nmcfx.errors import InputError

from ._pchip import pchip

DEFAULT_CONDUCTIVITY_CSV = Path(__file__).resolve().parent / "data" / "nmc_conductivity_default.csv"


class ConductivityTable:
    """σ(θ) in S m⁻¹ and dσ/dθ, from nodes (θ_i, σ_i)."""

    def __init__(self, theta, sigma, *, source: str = "", provenance: str = "", field: str = "electrode.nmc_conductivity_csv"):
        th = np.asarray(theta, dtype=float)
        sg = np.asarray(sigma, dtype=float)
        if th.ndim != 1 or th.size < 2 or th.shape != sg.shape:
            raise InputError(field, "needs at least two rows of (theta, sigma_S_m)")
        if not (np.all(np.isfinite(th)) and np.all(np.isfinite(sg))):
            raise InputError(field, "contains non-finite values")
        if np.any(np.diff(th) <= 0) or th[0] < 0 or th[-1] > 1:
            raise InputError(field, "theta must be strictly increasing within [0, 1]")
        if np.any(sg <= 0):
            bad = float(sg[sg <= 0][0])
            raise InputError(field, f"conductivities must be > 0 S/m (it is interpolated in log σ), got {bad:g}")
        self.theta, self.sigma = th, sg
        self.source, self.provenance = source, provenance
        self._log = pchip(th, np.log10(sg))  # (NumPy: SciPy's PCHIP, without loading SciPy)
        self._dlog = self._log.derivative()

    def __call__(self, theta) -> np.ndarray:
        t = np.clip(np.asarray(theta, dtype=float), self.theta[0], self.theta[-1])
        return 10.0 ** self._log(t)

    def derivative(self, theta) -> np.ndarray:
        t = np.asarray(theta, dtype=float)
        inside = (t > self.theta[0]) & (t < self.theta[-1])
        tc = np.clip(t, self.theta[0], self.theta[-1])
        return np.where(inside, math.log(10.0) * 10.0 ** self._log(tc) * self._dlog(tc), 0.0)

    def describe(self) -> dict:
        return {"source": self.source, "theta": self.theta.tolist(), "sigma_S_m": self.sigma.tolist()}


def load_conductivity_table(path=None, field: str = "electrode.nmc_conductivity_csv", base_dir=None) -> ConductivityTable:
    """Read a σ(θ) CSV (comment lines starting with # are kept as provenance)."""
    p = Path(path) if path is not None else DEFAULT_CONDUCTIVITY_CSV
    if base_dir is not None and not p.is_absolute():
        p = Path(base_dir) / p
    if not p.is_file():
        raise InputError(field, f"file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(field, f"{p} is not a UTF-8 text file") from None
    comments = [ln[1:].strip() for ln in text.splitlines() if ln.startswith("#")]
    rows = [r for r in csv.reader(ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#"))]
    if not rows or [c.strip() for c in rows[0]] != ["theta", "sigma_S_m"]:
        raise InputError(field, f"{p.name}: the header must be 'theta,sigma_S_m'")
    try:
        data = np.array([[float(v) for v in r] for r in rows[1:]], dtype=float)
    except ValueError as exc:
        raise InputError(field, f"{p.name}: {exc}") from None
    if data.ndim != 2 or data.shape[1] != 2:
        raise InputError(field, f"{p.name}: every row needs two numbers")
    return ConductivityTable(data[:, 0], data[:, 1], source=str(p), provenance="\n".join(comments), field=field)
