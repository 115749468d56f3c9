"""Shared test helpers. Import mpi4py before dolfinx (libmpi from the wheel)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from mpi4py import MPI  # noqa: F401  (must precede dolfinx)

import numpy as np
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


class ConstantDiffusivity:
    """A material with constant chemical diffusivity D (m² s⁻¹), for analytic checks."""

    def __init__(self, D: float, site_concentration: float = 4.9e4):
        self.D = D
        self.site_concentration = site_concentration
        self.theta0 = 0.95
        self.theoretical_capacity_mAh_g = 275.0

    def D_chem(self, theta):
        return np.full_like(np.asarray(theta, dtype=float), self.D)

    def dD_chem(self, theta):
        return np.zeros_like(np.asarray(theta, dtype=float))

    def current_density_for_c_rate(self, c_rate, area_um2, perimeter_um):
        return c_rate * 210.0 * 3.6 * 4.78e6 * area_um2 / perimeter_um * 1e-6  # j = n Q ρ A/Γ

    def current_density_for_specific_current(self, mA_g, area_um2, perimeter_um):
        return mA_g * 1e-3 * 4.78e6 * area_um2 / perimeter_um * 1e-6


@pytest.fixture
def comm():
    return MPI.COMM_WORLD


def nmcfx_cmd() -> list[str]:
    return [str(BIN / "nmcfx")]


def mpiexec_cmd(n: int) -> list[str]:
    return [str(BIN / "mpiexec"), "-n", str(n)]
