"""nmcfx.solver.kinetics: the implicit Butler–Volmer current with a series resistance and the
rocksalt film's area-specific resistance (pure NumPy; fast)."""

import doctest

import numpy as np
import pytest

import nmcfx.solver.kinetics as kinetics
from nmcfx.materials.constants import FARADAY, GAS_CONSTANT
from nmcfx.solver.kinetics import butler_volmer_series, diffusivity_ratio, film_resistance

F_RT = FARADAY / (GAS_CONSTANT * 298.15)


def plain_bv(eta, i0, aa=0.5, ac=0.5):
    return i0 * (np.exp(aa * F_RT * eta) - np.exp(-ac * F_RT * eta))


def test_docstring_examples():
    assert doctest.testmod(kinetics).failed == 0


@pytest.mark.parametrize("aa, ac", [(0.5, 0.5), (0.3, 0.7), (0.8, 0.4)])
def test_zero_resistance_is_plain_butler_volmer(aa, ac):
    eta = np.linspace(-0.4, 0.4, 81)
    i0 = np.geomspace(1e-3, 10, 81)
    s = butler_volmer_series(eta, i0, 0.0, alpha_a=aa, alpha_c=ac)
    np.testing.assert_allclose(s.current, plain_bv(eta, i0, aa, ac), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(s.d_eta, i0 * F_RT * (aa * np.exp(aa * F_RT * eta) + ac * np.exp(-ac * F_RT * eta)),
                               rtol=1e-12)
    np.testing.assert_allclose(s.kinetic_overpotential, eta, rtol=1e-12, atol=1e-15)


def test_solution_satisfies_the_implicit_equation_over_a_wide_range():
    eta = np.array([-6.0, -1.0, -0.2, -1e-6, 0.0, 1e-6, 0.05, 0.5, 3.0, 6.0])[:, None]
    R = np.array([0.0, 1e-4, 1e-2, 1.0, 1e2, 1e5, 1e9])[None, :]
    for i0 in (1e-5, 0.5, 1e3):
        s = butler_volmer_series(eta, i0, R, alpha_a=0.4, alpha_c=0.6)
        assert np.all(np.isfinite(s.current)) and s.iterations < 60
        u = F_RT * (eta - R * s.current)
        rhs = i0 * (np.exp(0.4 * u) - np.exp(-0.6 * u))
        np.testing.assert_allclose(s.current, rhs, rtol=1e-9, atol=1e-14 * np.abs(eta / np.maximum(R, 1e-300)).max())
        assert np.all(np.sign(s.current) == np.sign(eta))  # same sign as the overpotential
        assert np.all(np.abs(R * s.current) <= np.abs(eta) * (1 + 1e-12))  # the film takes at most all of η


def test_large_resistance_limit_is_ohmic():
    eta = np.array([-2.0, -0.3, 0.3, 2.0])
    for R in (1e3, 1e6):
        s = butler_volmer_series(eta, 1.0, R)
        np.testing.assert_allclose(s.current, eta / R, rtol=2e-3)
        np.testing.assert_allclose(s.d_eta, 1.0 / R, rtol=2e-3)
    # the kinetic share of the overpotential shrinks as R grows
    small = [abs(float(butler_volmer_series(0.5, 1.0, R).kinetic_overpotential)) for R in (1e-2, 1.0, 1e2, 1e4)]
    assert all(a > b for a, b in zip(small, small[1:]))


def test_derivatives_match_finite_differences():
    rng = np.random.default_rng(3)
    eta = rng.uniform(-0.5, 0.5, 40)
    i0 = np.exp(rng.uniform(np.log(1e-3), np.log(5.0), 40))
    R = np.exp(rng.uniform(np.log(1e-4), np.log(1e2), 40))
    s = butler_volmer_series(eta, i0, R, alpha_a=0.45, alpha_c=0.55)

    def cur(e, i, r):
        return butler_volmer_series(e, i, r, alpha_a=0.45, alpha_c=0.55).current

    for arr, deriv, name in ((eta, s.d_eta, "eta"), (i0, s.d_i0, "i0"), (R, s.d_R, "R")):
        h = 1e-6 * np.maximum(np.abs(arr), 1e-3)
        args_p = [eta, i0, R]
        args_m = [eta, i0, R]
        k = ("eta", "i0", "R").index(name)
        args_p = [a + h if j == k else a for j, a in enumerate(args_p)]
        args_m = [a - h if j == k else a for j, a in enumerate(args_m)]
        fd = (cur(*args_p) - cur(*args_m)) / (2 * h)
        np.testing.assert_allclose(deriv, fd, rtol=1e-5, atol=1e-9 * np.abs(fd).max(), err_msg=name)


def test_broadcasting_and_bad_input():
    s = butler_volmer_series(np.zeros((3, 1)) + 0.1, np.ones((1, 4)), 0.5)
    assert s.current.shape == (3, 4)
    for bad in (dict(i0=0.0), dict(i0=1.0, R=-1.0), dict(i0=1.0, eta=np.nan)):
        kw = {"eta": 0.1, "R": 0.0} | bad
        with pytest.raises(ValueError):
            butler_volmer_series(**kw)


def test_film_resistance_from_thickness_barrier_and_diffusivity():
    # seed 000: 150-200 meV higher barrier; "~3000x" is exp(200 meV / 25 meV)
    assert diffusivity_ratio(150.0) == pytest.approx(343, rel=0.01)
    assert diffusivity_ratio(200.0) == pytest.approx(2403, rel=0.01)
    assert diffusivity_ratio(200.0, temperature_K=0.025 / 8.617333262e-5) == pytest.approx(np.exp(8.0), rel=1e-9)
    th, d, nl = 0.9, 2e-17, 49044.0
    r = film_resistance(2.0, th, d, nl, ratio=3000.0)
    expected = GAS_CONSTANT * 298.15 * 2e-9 * 3000.0 / (FARADAY**2 * nl * th * d)
    assert float(r.resistance) == pytest.approx(expected, rel=1e-12)
    # linear in thickness and ratio; zero film → zero resistance
    assert float(film_resistance(4.0, th, d, nl).resistance) == pytest.approx(2 * expected, rel=1e-12)
    assert float(film_resistance(0.0, th, d, nl).resistance) == 0.0
    # θ-derivative (with dD_eff/dθ) against finite differences of R(θ, D_eff(θ))
    dfun = lambda t: 1e-16 * np.exp(-20 * (t - 0.8))  # noqa: E731
    ddfun = lambda t: -20 * dfun(t)  # noqa: E731
    t = np.array([0.5, 0.8, 0.95])
    got = film_resistance(1.0, t, dfun(t), nl, dD_eff_dtheta=ddfun(t)).d_resistance_dtheta
    h = 1e-7
    fd = (film_resistance(1.0, t + h, dfun(t + h), nl).resistance
          - film_resistance(1.0, t - h, dfun(t - h), nl).resistance) / (2 * h)
    np.testing.assert_allclose(got, fd, rtol=1e-6)
    with pytest.raises(ValueError):
        film_resistance(-1.0, th, d, nl)


def test_film_in_series_blocks_more_at_higher_current():
    """The flux ratio of a covered surface is an outcome: it falls as the driving current grows."""
    nl, th, d = 49044.0, 0.9, 8e-17
    R = float(film_resistance(1.0, th, d, nl).resistance)
    eta = np.array([0.01, 0.05, 0.2])
    ratio = butler_volmer_series(eta, 0.5, R).current / butler_volmer_series(eta, 0.5, 0.0).current
    assert np.all((ratio > 0) & (ratio < 1)) and np.all(np.diff(ratio) < 0)
