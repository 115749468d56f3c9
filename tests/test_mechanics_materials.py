"""Mechanical material data: the constructed default lattice table meets every statement it is built
from (materials/data/README-mechanics.md), stiffness validation, user tables."""

from __future__ import annotations

import numpy as np
import pytest

from nmcfx.errors import InputError
from nmcfx.materials.mechanics import (
    DEFAULT_E_GPA,
    DEFAULT_NU,
    Stiffness,
    default_mechanics,
    load_lattice_table,
    load_modulus_table,
)


@pytest.fixture(scope="module")
def lat():
    return default_mechanics().lattice


def test_pristine_lattice_of_xu2022_at_full_lithiation(lat):
    # 002 Fig. S5: a = 2.87551(7) Å, c = 14.1944(5) Å
    assert float(lat.a(1.0)) == pytest.approx(2.87551, abs=1e-6)
    assert float(lat.c(1.0)) == pytest.approx(14.1944, abs=1e-5)


def test_a_shrinks_about_2_percent_roughly_linearly_down_to_0p2(lat):
    th = np.linspace(0.3, 1.0, 71)
    rel = lat.a(th) / lat.a(1.0) - 1
    assert float(lat.a(0.2) / lat.a(1.0) - 1) == pytest.approx(-0.02, abs=1e-6)
    fit = np.polyfit(th, rel, 1)
    assert np.abs(np.polyval(fit, th) - rel).max() < 1e-6  # linear on [0.3, 1]
    assert np.all(np.diff(lat.a(np.linspace(0.2, 1.0, 81))) > 0)  # monotone


def test_c_grows_about_2_percent_to_0p4_0p5_then_collapses(lat):
    th = np.linspace(0.0, 1.0, 1001)
    rel = lat.c(th) / lat.c(1.0) - 1
    k = int(np.argmax(rel))
    assert 0.4 <= th[k] <= 0.5
    assert rel[k] == pytest.approx(0.02, abs=1e-3)
    assert np.all(np.diff(lat.c(np.linspace(th[k], 1.0, 200))) < 0)  # grows as Li is removed down to the max
    assert float(lat.c(0.2) / lat.c(1.0) - 1) < rel[k] - 0.015  # collapse below θ ≈ 0.4


def test_default_stiffness_is_in_the_quoted_ranges():
    mech = default_mechanics()
    assert 140 <= DEFAULT_E_GPA <= 200 and 0.25 <= DEFAULT_NU <= 0.3
    E, nu = mech.stiffness.basal_modulus()
    assert E == pytest.approx(DEFAULT_E_GPA) and nu == pytest.approx(DEFAULT_NU)
    assert "de Vasconcelos" in mech.stiffness.source


def test_transversely_isotropic_reduces_to_isotropic():
    iso = Stiffness.isotropic(170.0, 0.275).voigt()
    ti = Stiffness.transversely_isotropic(iso[0, 0], iso[0, 1], iso[0, 2], iso[2, 2], iso[3, 3]).voigt()
    assert np.allclose(ti, iso, rtol=1e-12)
    C = Stiffness.transversely_isotropic(230, 90, 60, 160, 45).voigt()
    assert np.all(np.linalg.eigvalsh(C) > 0)
    assert C[5, 5] == pytest.approx(70.0)  # (C11 − C12)/2


@pytest.mark.parametrize("nu", [0.5, -1.0, 0.7, float("nan"), True])
def test_poisson_ratio_outside_range_rejected(nu):
    with pytest.raises(InputError, match=r"mechanics\.nu"):
        Stiffness.isotropic(170.0, nu)


def test_user_lattice_table_and_errors(tmp_path):
    p = tmp_path / "lat.csv"
    p.write_text("# my XRD\ntheta,a_A,c_A\n0.2,2.81,14.1\n0.6,2.84,14.45\n1.0,2.87,14.2\n")
    t = load_lattice_table(p)
    assert t.provenance == ("my XRD",) and t.covers(0.95) and not t.covers(0.1)
    assert float(t.a(0.0)) == pytest.approx(2.81)  # constant beyond the ends
    for text, msg in (("theta,a_A\n0.1,2.8\n0.9,2.9\n", "lacks"), ("theta,a_A,c_A\n0.5,2.8,14\n0.4,2.8,14\n", "increasing"),
                      ("theta,a_A,c_A\n0.1,-2.8,14\n0.9,2.9,14\n", "> 0"), ("theta,a_A,c_A\n0.1,x,14\n0.9,2.9,14\n", "number")):
        p.write_text(text)
        with pytest.raises(InputError, match=msg):
            load_lattice_table(p)


def test_modulus_table(tmp_path):
    p = tmp_path / "E.csv"
    p.write_text("theta,E_GPa\n0.2,150\n1.0,200\n")
    st = Stiffness.isotropic(200.0, 0.3)
    m = load_modulus_table(p, st)
    assert float(m(1.0)) == pytest.approx(1.0) and float(m(0.2)) == pytest.approx(0.75)
    with pytest.raises(InputError, match="factor"):
        load_modulus_table(p, Stiffness.transversely_isotropic(230, 90, 60, 160, 45))


def test_lattice_and_mode_finding_match_scipy_without_importing_it():
    """The lattice table's PCHIP and the θ-mode finder are NumPy versions of SciPy's
    PchipInterpolator and find_peaks(prominence=…): the same values to round-off, the same peaks and
    prominences; a mechanics run's materials and statistics import no SciPy (44 MB, 0.6 s)."""
    import subprocess
    import sys

    from scipy.interpolate import PchipInterpolator
    from scipy.signal import find_peaks

    from nmcfx.materials.mechanics import default_mechanics
    from nmcfx.solver.mechanics_outputs import peak_prominences

    lat = default_mechanics().lattice
    th = np.linspace(lat.theta_min, lat.theta_max, 2001)
    for ours, col in ((lat.a, lat.a_A), (lat.c, lat.c_A)):
        ref = PchipInterpolator(lat.theta, col)(th)
        assert np.max(np.abs(ours(th) - ref)) <= 1e-13 * np.max(np.abs(ref))
    rng = np.random.default_rng(7)
    for trial in range(200):  # plateaus (rounded values), smooth densities, noise
        n = int(rng.integers(5, 300))
        x = np.round(rng.random(n) * rng.integers(1, 6), 1) if trial % 2 else np.convolve(
            rng.random(n), np.ones(7) / 7, mode="same")
        x = np.concatenate([[0.0], x, [0.0]])
        peaks, props = find_peaks(x, prominence=0.0)
        ours, prom = peak_prominences(x)
        assert np.array_equal(ours, peaks) and np.array_equal(prom, props["prominences"]), x
    code = ("import sys, numpy as np\n"
            "from nmcfx.materials.mechanics import default_mechanics\n"
            "from nmcfx.solver.mechanics_outputs import theta_modes\n"
            "m = default_mechanics(); m.eigenstrain(np.linspace(0.2, 1, 50), 0.95)\n"
            "theta_modes(np.r_[np.full(50, 0.3), np.full(50, 0.8)], np.ones(100))\n"
            "print(any(k == 'scipy' or k.startswith('scipy.') for k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_strains_are_the_lattice_ratios_bit_for_bit(lat):
    """``strains`` (one interval search for both tables, references kept) is a(θ)/a(θ_ref) − 1 and
    c(θ)/c(θ_ref) − 1 exactly, inside and beyond the table, for several references in turn."""
    th = np.concatenate([np.random.default_rng(3).uniform(-0.2, 1.2, 2000), lat.theta])
    for ref in (0.95, 0.5, float(lat.theta[2]), 0.95):
        ea, ec = lat.strains(th, ref)
        assert np.array_equal(ea, lat.a(th) / float(lat.a(ref)) - 1.0)
        assert np.array_equal(ec, lat.c(th) / float(lat.c(ref)) - 1.0)
    assert lat.strains(np.array([0.95]), 0.95) == (0.0, 0.0)
