"""Tests of nmcfx.materials (pure numpy/scipy; fast)."""

import math
import sys

import numpy as np
import pytest

from nmcfx.errors import InputError
from nmcfx.materials import (
    CONFIG_KEYS,
    DATA_DIR,
    DEFAULT_THETAS,
    ChenExtendedOCV,
    MappedChenOCV,
    Table,
    available_materials,
    format_property_table,
    get_material,
    load_table,
    material_from_config,
    pitt_bounded_i0_ref,
    plot_properties,
    property_table,
    write_property_csv,
)
from nmcfx.materials.constants import FARADAY, GAS_CONSTANT

CM2 = 1e-4  # cm²/s → m²/s
OCV_TEMPLATE = "nmc_ocv_default_template.csv"


@pytest.fixture(scope="module")
def nmc():
    return get_material()


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


# ---------------------------------------------------------------- constants, scalars


def test_no_dolfinx_import():
    import subprocess

    code = "import sys, nmcfx.materials; sys.exit(int(any(m.split('.')[0] == 'dolfinx' for m in sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_constants_codata():
    assert FARADAY == pytest.approx(96485.33212, rel=1e-12)
    assert GAS_CONSTANT == pytest.approx(8.314462618, rel=1e-12)


def test_molar_mass_site_concentration_capacity(nmc):
    assert nmc.molar_mass_g_mol == pytest.approx(97.46, abs=0.01)
    assert nmc.site_concentration == pytest.approx(4.90e4, rel=2e-3)
    assert nmc.site_concentration == pytest.approx(4.78e6 / nmc.molar_mass_g_mol, rel=1e-12)
    assert nmc.theoretical_capacity_mAh_g == pytest.approx(275.0, abs=0.1)
    assert nmc.density_g_cm3 == 4.78 and nmc.capacity_mAh_g == 210 and nmc.theta0 == 0.95
    assert nmc.scaling_S == 3.5 and nmc.temperature_K == 298.15


def test_current_density_worked_numbers(nmc):
    r = 1.2  # 2.4 µm disk
    j = nmc.current_density_for_specific_current(100.0, math.pi * r**2, 2 * math.pi * r)
    assert j == pytest.approx(0.2868, rel=1e-4)  # = 0.1 A/g * 4.78e6 g/m³ * 0.6e-6 m
    j3 = nmc.current_density_for_c_rate(1 / 3, 4.87, 8.06)
    assert j3 == pytest.approx(0.202, abs=5e-4)
    assert j3 == pytest.approx(210e-3 / 3 * 4.78e6 * 4.87 / 8.06 * 1e-6, rel=1e-12)
    # C-rate and specific current agree; j is linear in the rate
    assert nmc.current_density_for_c_rate(1.0, 4.87, 8.06) == pytest.approx(
        nmc.current_density_for_specific_current(210.0, 4.87, 8.06), rel=1e-12
    )
    assert nmc.current_density_for_c_rate(0.0, 4.87, 8.06) == 0.0


@pytest.mark.parametrize(
    "args, field",
    [
        ((-1.0, 4.87, 8.06), "protocol.c_rate"),
        ((float("nan"), 4.87, 8.06), "protocol.c_rate"),
        ((1.0, 0.0, 8.06), "geometry.area_um2"),
        ((1.0, 4.87, -1.0), "geometry.perimeter_um"),
    ],
)
def test_current_density_bad_input(nmc, args, field):
    with pytest.raises(InputError) as e:
        nmc.current_density_for_c_rate(*args)
    assert e.value.field == field


# ---------------------------------------------------------------- D_Li table


def test_default_dli_ends_constant(nmc):
    hi = np.linspace(0.93, 1.0, 50)  # 1-θ <= 0.07
    lo = np.linspace(0.0, 0.10, 50)  # 1-θ >= 0.9
    np.testing.assert_allclose(nmc.D_Li(hi), 0.016e-11 * CM2, rtol=1e-12)
    np.testing.assert_allclose(nmc.D_Li(lo), 0.059e-11 * CM2, rtol=1e-12)
    np.testing.assert_allclose(nmc.dD_Li(np.r_[hi[1:-1], lo[1:-1]]), 0.0, atol=1e-30)
    # constant extrapolation beyond the nodes
    assert nmc.D_Li(1.2) == pytest.approx(0.016e-11 * CM2)
    assert nmc.D_Li(-0.1) == pytest.approx(0.059e-11 * CM2)
    assert nmc.dD_Li(1.2) == 0.0


def test_default_dli_matches_text_statements(nmc):
    """The statements of seed 002 the D_Li table is built from (data/README.md, B1-B4)."""
    d_full = nmc.D_eff(0.97) / CM2
    assert 1e-14 <= d_full < 5e-14  # "~1e-14 near full lithiation" (4.6e-14; < 5e-14 of Fig. S17)
    rise = nmc.D_eff(0.60) / nmc.D_eff(1.0)  # 40 % of the Li removed
    assert 50 <= rise < 100  # "almost two orders of magnitude"
    assert 0.5e-12 <= nmc.D_eff(0.80) / CM2 <= 2e-12  # Fig. S19: "order of 1e-12" at θ = 0.8, within 2x
    th = np.linspace(0.6, 0.93, 200)
    assert np.all(np.diff(nmc.D_eff(th)) <= 0)  # drops towards full lithiation
    th = np.linspace(0.35, 0.6, 50)
    assert np.all(np.diff(nmc.D_eff(th)) >= 0)  # 004: rises as charging proceeds down to x = 0.2-0.5
    # NMR (Fig. S4 caption): no mobile Li at θ = 0.92, i.e. hop rate < 2 kHz, D_Li = ν l²/4 < 4.1e-13 cm²/s
    assert nmc.D_Li(0.915) / CM2 < 2000.0 * (2.8755e-8) ** 2 / 4


def test_default_dli_nodes_come_only_from_statements(nmc):
    """No node beyond the stated values: ends, θ = 0.8 (1e-12 × S), the 70x peak (0.35-0.6)."""
    tab = nmc.dli_table
    assert tab.theta.tolist() == [0.0, 0.1, 0.35, 0.6, 0.8, 0.93, 1.0]
    np.testing.assert_allclose(tab.values / CM2, [5.9e-13, 5.9e-13, 1.12e-11, 1.12e-11, 3.5e-12, 1.6e-13, 1.6e-13])
    assert tab.values[3] / tab.values[-1] == pytest.approx(70.0)


def test_pchip_no_overshoot_between_nodes(nmc):
    tab = nmc.dli_table
    for a, b, va, vb in zip(tab.theta[:-1], tab.theta[1:], tab.values[:-1], tab.values[1:]):
        x = np.linspace(a, b, 201)
        y = tab(x)
        assert y.min() >= min(va, vb) * (1 - 1e-12)
        assert y.max() <= max(va, vb) * (1 + 1e-12)
        d = np.diff(y)
        assert np.all(d >= -1e-30) or np.all(d <= 1e-30)  # monotone on each interval


def test_table_derivative_matches_fd(nmc):
    tab = nmc.dli_table
    x = np.linspace(0.11, 0.92, 37)
    h = 1e-6
    fd = (tab(x + h) - tab(x - h)) / (2 * h)
    np.testing.assert_allclose(tab.derivative(x), fd, rtol=1e-5, atol=1e-12 * np.abs(fd).max())


def test_table_shapes_preserved(nmc):
    assert np.shape(nmc.D_chem(0.5)) == ()
    assert nmc.D_chem(np.ones((3, 4)) * 0.5).shape == (3, 4)
    assert nmc.ocv([0.3, 0.4]).shape == (2,)


# ---------------------------------------------------------------- V_oc


def test_chen_fit_values():
    m = ChenExtendedOCV(drop_amplitude_V=0.0)
    x = 0.5
    u = (
        -0.8090 * x + 4.4875 - 0.0428 * math.tanh(18.5138 * (x - 0.5542))
        - 17.7326 * math.tanh(15.7890 * (x - 0.3117)) + 17.5842 * math.tanh(15.9308 * (x - 0.3120))
    )
    assert m(x) == pytest.approx(u, abs=1e-12)
    assert m(0.5) == pytest.approx(3.9720, abs=1e-4)


def test_ocv_strictly_decreasing_and_steep_near_full(nmc):
    th = np.linspace(0.0, 1.0, 20001)
    assert np.all(np.diff(nmc.ocv(th)) < 0) and np.all(nmc.docv(th) < 0)
    # the steep drop lies above θ = 0.97 (002 Fig. 4A: ~3.5 V at ~97 % Li; Fig. S19: rapid drop as θ → 1)
    steep = np.abs(nmc.docv(np.linspace(0.97, 0.98, 101))).max()
    flat = np.abs(nmc.docv(np.linspace(0.8, 0.965, 101))).max()
    assert steep > 50 * flat
    assert nmc.ocv(0.999) < nmc.ocv(0.97) - 0.4


def test_ocv_meets_the_statements_it_is_built_from(nmc):
    """data/README.md B5-B7: 3.5 V at 97 % Li; 4.3 V after 229.0 mAh/g of C/3 charge from there;
    3.0 V (the cut-off) one C/20 GITT pulse (15 min) above 97 %."""
    q = nmc.theoretical_capacity_mAh_g
    assert float(nmc.ocv(0.97)) == pytest.approx(3.5, abs=0.05)  # the brief's tolerance; exact by construction
    assert float(nmc.ocv(0.97)) == pytest.approx(3.5, abs=1e-9)
    assert float(nmc.ocv(0.97 - 229.0 / q)) == pytest.approx(4.3, abs=1e-9)
    assert float(nmc.ocv(0.97 + 210 / 20 * 0.25 / q)) == pytest.approx(3.0, abs=1e-9)
    assert isinstance(nmc.ocv_model, MappedChenOCV)
    assert nmc.ocv_model.theta_at(3.5) == pytest.approx(0.97, abs=1e-9)


def test_ocv_is_the_chen_fit_on_an_affine_stoichiometry_below_the_step(nmc):
    m = nmc.ocv_model
    raw = ChenExtendedOCV(drop_amplitude_V=0.0)
    th = np.linspace(0.0, 0.96, 400)
    np.testing.assert_allclose(m(th), raw(m.x0 + m.slope * th), atol=1e-4)  # step < 0.1 mV below 0.96
    # x is not θ: Chen's c_max (63104 mol/m³) is not this N_L; the map's slope is near N_L/c_max
    assert m.slope == pytest.approx(nmc.site_concentration / 63104.0, rel=0.15)
    assert 0.1 < m.x0 < 0.2 and m.x0 + m.slope < 1.0  # stays inside Chen's [0, 1]
    with pytest.raises(InputError):
        MappedChenOCV(0.1, -0.8, 0.5, 0.975, 0.002)


def test_default_i0_is_the_pitt_bound(nmc):
    """data/README.md B8: the largest i0 for which PITT (002 Fig. S20) still resolves charge transfer."""
    ref = pitt_bounded_i0_ref(float(nmc.D_eff(0.97)), nmc.site_concentration)
    assert nmc.i0_ref_A_m2 == pytest.approx(ref, rel=0.01)
    # Biot number L = R i0 / (F N_L θ D_eff) is 10 at θ = 0.97 on 002's particle (R = 2A/Γ)
    r = 2 * 4.87 / 8.06 * 1e-6
    biot = r * float(nmc.i0(0.97)) / (FARADAY * nmc.site_concentration * 0.97 * float(nmc.D_eff(0.97)))
    assert biot == pytest.approx(10.0, rel=0.01)
    # slow charge transfer near full lithiation: i0(0.97) is a third of i0(0.5)
    assert nmc.i0(0.97) < 0.4 * nmc.i0(0.5)


def test_ocv_derivatives_match_fd(nmc):
    m = nmc.ocv_model
    x = np.r_[np.linspace(0.02, 0.995, 101), np.linspace(0.968, 0.984, 33)]
    h = 1e-7
    np.testing.assert_allclose(m.derivative(x), (m(x + h) - m(x - h)) / (2 * h), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(
        m.second_derivative(x), (m.derivative(x + h) - m.derivative(x - h)) / (2 * h), rtol=1e-5, atol=1e-3
    )


def test_ocv_template_csv_matches_model(nmc):
    t = load_table(DATA_DIR / OCV_TEMPLATE, "ocv")
    x = np.linspace(0.02, 0.995, 2000)
    np.testing.assert_allclose(t(x), nmc.ocv(x), atol=3e-3)
    assert np.all(t.derivative(x) < 0)
    m2 = get_material(ocv_csv=DATA_DIR / OCV_TEMPLATE)
    assert np.all(m2.D_chem(np.linspace(0.01, 0.999, 300)) > 0)


def test_ocv_table_extrapolates_linearly_and_stays_decreasing(tmp_path):
    p = write(tmp_path, "ocv.csv", "theta,V_oc_V\n0.2,4.3\n0.5,3.9\n0.9,3.6\n")
    t = load_table(p, "ocv")
    assert t(0.1) > t(0.2) and t(0.95) < t(0.9)
    assert t.derivative(0.95) == pytest.approx((3.6 - 3.9) / 0.4)
    assert np.all(t.derivative(np.linspace(0.0, 1.0, 401)) < 0)


# ---------------------------------------------------------------- D_chem


def test_dchem_definition_and_positive(nmc):
    th = np.linspace(0.01, 0.999, 999)
    dc = nmc.D_chem(th)
    assert np.all(dc > 0) and np.all(np.isfinite(dc))
    expected = nmc.D_Li(th) / 3.5 * th * FARADAY / (GAS_CONSTANT * 298.15) * -nmc.docv(th)
    np.testing.assert_allclose(dc, expected, rtol=1e-12)
    assert np.all(property_table(nmc)["D_chem_cm2_s"] > 0)


def test_dchem_derivative_matches_central_fd(nmc):
    # avoid exact PCHIP nodes, where the second derivative of the table may jump
    th = np.linspace(0.013, 0.997, 211)
    nodes = nmc.dli_table.theta
    th = th[np.min(np.abs(th[:, None] - nodes[None, :]), axis=1) > 1e-4]
    h = 1e-7
    fd = (nmc.D_chem(th + h) - nmc.D_chem(th - h)) / (2 * h)
    an = nmc.dD_chem(th)
    scale = np.abs(nmc.D_chem(th)) / 0.01  # D_chem per percent of θ
    assert np.all(np.abs(an - fd) <= 1e-5 * np.abs(fd) + 1e-7 * scale)


def test_dchem_derivative_with_table_ocv(tmp_path):
    m = get_material(ocv_csv=DATA_DIR / OCV_TEMPLATE)
    th = np.array([0.15, 0.333, 0.47, 0.61, 0.77, 0.9075, 0.96237])  # off the template nodes
    h = 1e-7
    fd = (m.D_chem(th + h) - m.D_chem(th - h)) / (2 * h)
    np.testing.assert_allclose(m.dD_chem(th), fd, rtol=1e-5)


# ---------------------------------------------------------------- CSV I/O and validation


def test_csv_round_trip(tmp_path, nmc):
    tab = nmc.dli_table
    p = tab.to_csv(tmp_path / "dli.csv")
    back = load_table(p, "diffusivity")
    np.testing.assert_array_equal(back.theta, tab.theta)
    np.testing.assert_allclose(back.values, tab.values, rtol=1e-15)
    assert back.provenance == tab.provenance
    assert "CONSTRUCTED DEFAULT" in back.provenance
    assert back.column == "D_Li_cm2_s"


def test_csv_units_m2_s_and_comments(tmp_path):
    p = write(tmp_path, "d.csv", "# my data\n\ntheta , D_Li_m2_s\n0.1,1e-17\n# mid comment\n0.9,2e-17\n")
    t = load_table(p, "diffusivity")
    assert t(0.1) == pytest.approx(1e-17) and t(0.9) == pytest.approx(2e-17)
    assert "my data" in t.provenance


@pytest.mark.parametrize(
    "text, kind, words",
    [
        ("theta,D_Li_cm2_s\n0.1,1e-12\n0.5,0\n", "diffusivity", ["line 3", "> 0"]),
        ("theta,D_Li_cm2_s\n0.1,1e-12\n0.5,-1e-12\n", "diffusivity", ["line 3", "> 0", "-1e-12 (cm^2/s)"]),
        ("theta,D_Li_m2_s\n0.1,1e-16\n0.5,-1e-16\n", "diffusivity", ["line 3", "-1e-16 (m^2/s)"]),
        ("theta,V_oc_V\n0.1,4.2\n0.5,3.9\n0.7,3.95\n", "ocv", ["line 4", "strictly decreasing"]),
        ("theta,V_oc_V\n0.1,4.2\n0.5,4.2\n", "ocv", ["line 3", "strictly decreasing"]),
        ("theta,D_Li_cm2_s\n-0.1,1e-12\n0.5,1e-12\n", "diffusivity", ["line 2", "[0, 1]"]),
        ("theta,D_Li_cm2_s\n0.1,1e-12\n1.5,1e-12\n", "diffusivity", ["line 3", "[0, 1]"]),
        ("theta,D_Li_cm2_s\n0.1,nan\n0.5,1e-12\n", "diffusivity", ["line 2", "non-finite"]),
        ("theta,D_Li_cm2_s\n0.5,1e-12\n0.3,1e-12\n", "diffusivity", ["line 3", "strictly increasing"]),
        ("theta,D_Li_cm2_s\n0.5,1e-12\n0.5,2e-12\n", "diffusivity", ["line 3", "strictly increasing"]),
        ("theta,D_Li_cm2_s\n0.1,abc\n0.5,1e-12\n", "diffusivity", ["line 2", "not a number"]),
        ("theta,D_Li_cm2_s\n0.1,1e-12,3\n0.5,1e-12\n", "diffusivity", ["line 2", "expected 2"]),
        ("theta;D_Li_cm2_s\n0.1;1e-12\n", "diffusivity", ["line 1", "header"]),
        ("theta,D\n0.1,1e-12\n0.5,1e-12\n", "diffusivity", ["units", "D_Li_cm2_s"]),
        ("theta,D_Li_cm2_s\n0.1,1e-12\n", "diffusivity", ["at least 2"]),
        ("# only a comment\n", "diffusivity", ["no header"]),
        ("theta,D_Li_cm2_s\n", "diffusivity", ["at least 2"]),
    ],
)
def test_bad_tables_raise_input_error(tmp_path, text, kind, words):
    p = write(tmp_path, "bad.csv", text)
    with pytest.raises(InputError) as e:
        load_table(p, kind, field="material.dli_csv")
    msg = str(e.value)
    assert e.value.field == "material.dli_csv"
    assert str(p) in msg or "no header" in msg or "at least 2" in msg
    for w in words:
        assert w in msg, msg


def test_missing_file(tmp_path):
    with pytest.raises(InputError) as e:
        load_table(tmp_path / "nope.csv", "diffusivity", field="material.dli_csv")
    assert "not found" in str(e.value) and "nope.csv" in str(e.value)


def test_table_from_arrays_validates():
    with pytest.raises(InputError, match="row 2"):
        Table([0.1, 0.2], [1e-16, -1e-16], kind="diffusivity")
    with pytest.raises(InputError, match="entries"):
        Table([0.1, 0.2, 0.3], [1e-16, 1e-16], kind="diffusivity")


# ---------------------------------------------------------------- registry and config


def test_registry_aliases():
    for alias in ("NMC-Ni87", "nmc", "NMC87", "nmc_ni87", " Ni87 "):
        assert get_material(alias).name == "NMC-Ni87"
    assert "NMC-Ni87" in available_materials()
    with pytest.raises(InputError) as e:
        get_material("LFP")
    assert e.value.field == "material.name" and "NMC-Ni87" in str(e.value)


def test_config_overrides(tmp_path):
    p = write(tmp_path, "d.csv", "# user\ntheta,D_Li_cm2_s\n0.0,1e-12\n1.0,1e-12\n")
    m = material_from_config(
        {"name": "nmc", "scaling_S": 1.0, "theta0": 0.9, "temperature_K": 310, "dli_csv": "d.csv"},
        base_dir=tmp_path,
    )
    assert m.scaling_S == 1.0 and m.theta0 == 0.9 and m.temperature_K == 310
    assert m.D_eff(0.5) == pytest.approx(1e-16)
    assert "d.csv" in m.description
    # molar mass override changes N_L and F/M consistently
    m2 = material_from_config({"molar_mass_g_mol": 100.0})
    assert m2.site_concentration == pytest.approx(4.78e4)
    assert m2.theoretical_capacity_mAh_g == pytest.approx(FARADAY / 100 / 3.6)
    assert material_from_config({}).name == "NMC-Ni87"
    assert set(CONFIG_KEYS) >= {"dli_csv", "ocv_csv", "scaling_S"}


def test_config_unknown_key_lists_allowed():
    with pytest.raises(InputError) as e:
        material_from_config({"densty_g_cm3": 4.7})
    msg = str(e.value)
    assert "densty_g_cm3" in msg and "density_g_cm3" in msg and "ocv_csv" in msg


@pytest.mark.parametrize(
    "cfg, field, hint",
    [
        ({"theta0": 1.0}, "material.theta0", "(0, 1)"),
        ({"theta0": 0.0}, "material.theta0", "(0, 1)"),
        ({"density_g_cm3": -4.78}, "material.density_g_cm3", "(0, 20]"),
        ({"scaling_S": 0}, "material.scaling_S", "(0,"),
        ({"temperature_K": "hot"}, "material.temperature_K", "number"),
        ({"capacity_mAh_g": True}, "material.capacity_mAh_g", "number"),
        ({"capacity_mAh_g": 300.0}, "material.capacity_mAh_g", "theoretical"),
        ({"molar_mass_g_mol": float("inf")}, "material.molar_mass_g_mol", "(0, 1000]"),
        ({"dli_csv": 3}, "material.dli_csv", "path"),
        ({"ocv_csv": "missing.csv"}, "material.ocv_csv", "not found"),
        ({"name": 5}, "material.name", "string"),
    ],
)
def test_config_bad_values(tmp_path, cfg, field, hint):
    with pytest.raises(InputError) as e:
        material_from_config(cfg, base_dir=tmp_path)
    assert e.value.field == field
    assert hint in str(e.value)


def test_config_not_a_dict():
    with pytest.raises(InputError):
        material_from_config(["nmc"])


# ---------------------------------------------------------------- property table, plot


def test_property_table_and_outputs(tmp_path, nmc):
    tab = property_table(nmc)
    assert list(tab) == ["theta", "D_Li_cm2_s", "D_eff_cm2_s", "V_oc_V", "dV_oc_dtheta_V", "D_chem_cm2_s"]
    np.testing.assert_allclose(tab["theta"], DEFAULT_THETAS)
    assert tab["theta"][0] == pytest.approx(0.05) and tab["theta"][-1] == pytest.approx(0.99)
    np.testing.assert_allclose(tab["D_eff_cm2_s"] * 3.5, tab["D_Li_cm2_s"], rtol=1e-12)
    txt = format_property_table(nmc)
    assert "D_chem [cm^2/s]" in txt and "NMC-Ni87" in txt and len(txt.splitlines()) > len(DEFAULT_THETAS)
    # a precomputed table is accepted as well as a θ grid
    assert format_property_table(nmc, tab) == txt
    p = write_property_csv(tmp_path / "props.csv", nmc, [0.2, 0.5, 0.8])
    rows = [ln for ln in p.read_text().splitlines() if not ln.startswith("#")]
    assert rows[0] == "theta,D_Li_cm2_s,D_eff_cm2_s,V_oc_V,dV_oc_dtheta_V,D_chem_cm2_s"
    data = np.array([[float(c) for c in r.split(",")] for r in rows[1:]])
    np.testing.assert_allclose(data[:, 5], nmc.D_chem(np.array([0.2, 0.5, 0.8])) / CM2, rtol=1e-9)
    with pytest.raises(InputError):
        property_table(nmc, [0.5, 1.0])


def test_plot_properties(tmp_path, nmc):
    p = plot_properties(nmc, tmp_path / "sub" / "props.png")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000


def test_describe_is_json(nmc):
    import json

    d = json.loads(json.dumps(nmc.describe()))
    assert d["site_concentration_mol_m3"] == pytest.approx(nmc.site_concentration)
    assert d["scaling_S"] == 3.5 and len(d["dli_table"]["theta"]) == nmc.dli_table.theta.size


def test_material_is_frozen(nmc):
    with pytest.raises(Exception):
        nmc.scaling_S = 2.0
    assert nmc.with_(scaling_S=7.0).D_eff(0.5) == pytest.approx(nmc.D_eff(0.5) / 2)
