"""Paper-reproduction studies (studies/*.py) in --quick mode, ParticleMesh.sector_outline,
and the study example configs.

The studies run in-process through their ``main(argv)``; each writes into a tmp dir. The
assertions check that the outputs exist and hold the papers' qualitative findings where
this model reproduces them (see the README "Studies" section for the numbers).
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

from mpi4py import MPI

import numpy as np
import pytest

import nmcfx.geometries as geo

COMM = MPI.COMM_WORLD


def _outdir(tmp_path, name) -> str:
    return COMM.bcast(str(tmp_path / name), root=0)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One directory for the module's study runs: the reproduction test reuses their finished cases."""
    return Path(COMM.bcast(str(tmp_path_factory.mktemp("studies")), root=0))


def _rows(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# ----------------------------------------------------------------------------- sector_outline
@pytest.mark.mpi
def test_sector_outline_2d_ordered_counter_clockwise_and_identical_on_ranks():
    r = 1.2
    pm = geo.disk(2 * r, mesh_size_um=0.2, surface_mesh_size_um=0.08,
                  sectors=[{"name": "east", "start_deg": 315, "end_deg": 45}])  # wraps through 0°
    east = pm.sector_outline("east")
    rest = pm.sector_outline("surface")
    gathered = COMM.allgather((east.tobytes(), rest.tobytes()))
    assert all(g == gathered[0] for g in gathered)
    assert east.shape[1] == 2 and len(east) >= 5
    assert np.allclose(np.linalg.norm(east, axis=1), r, atol=1e-9)  # boundary vertices
    ang = np.degrees(np.arctan2(east[:, 1], east[:, 0]))  # -45 … 45, no jump at 0
    assert ang[0] == pytest.approx(-45, abs=1e-6) and ang[-1] == pytest.approx(45, abs=1e-6)
    assert np.all(np.diff(ang) > 0)
    a2 = np.mod(np.degrees(np.arctan2(rest[:, 1], rest[:, 0])), 360)
    assert a2[0] == pytest.approx(45, abs=1e-6) and a2[-1] == pytest.approx(315, abs=1e-6)
    assert np.all(np.diff(a2) > 0)
    # the polyline's length is the sector's measure
    seg = lambda p: float(np.linalg.norm(np.diff(p, axis=0), axis=1).sum())  # noqa: E731
    assert seg(east) == pytest.approx(pm.sector_measure["east"], rel=1e-12)
    assert seg(rest) == pytest.approx(pm.sector_measure["surface"], rel=1e-12)
    # the whole outline is closed; two separate pieces come back separated by NaN
    whole = geo.disk(2.0, mesh_size_um=0.3).sector_outline("surface")
    assert np.allclose(whole[0], whole[-1])
    aw = np.mod(np.arctan2(whole[:-1, 1], whole[:-1, 0]), 2 * np.pi)
    aw[aw > 2 * np.pi - 1e-9] = 0.0
    assert np.argmin(aw) == 0 and np.all(np.diff(aw) > 0)  # from the smallest polar angle, anticlockwise
    two = geo.disk(2.0, mesh_size_um=0.2, sectors=[geo.Sector("a", 0, 90), geo.Sector("b", 180, 270)])
    rem = two.sector_outline("surface")
    gap = np.flatnonzero(np.isnan(rem[:, 0]))
    assert len(gap) == 1
    assert rem[0] == pytest.approx([0.0, 1.0], abs=1e-9) and rem[-1] == pytest.approx([1.0, 0.0], abs=1e-9)
    with pytest.raises(KeyError):
        two.sector_outline("nowhere")


@pytest.mark.mpi
def test_sector_outline_3d_is_the_mid_plane_trace():
    pm = geo.prism(geo.Ellipse((1.5, 1.0)), 1.2, mesh_size_um=0.25,
                   sectors=[geo.Sector("c", 0.9, 0.25, "fraction")])
    c = pm.sector_outline("c")
    assert c.shape[1] == 3 and np.all(np.isfinite(c))
    z = COMM.allreduce(float(pm.mesh.geometry.x[:, 2].max()), op=MPI.MAX)
    z0 = COMM.allreduce(float(pm.mesh.geometry.x[:, 2].min()), op=MPI.MIN)
    assert np.allclose(c[:, 2], 0.5 * (z + z0))
    ell = (c[:, 0] / 1.5) ** 2 + (c[:, 1] / 1.0) ** 2
    assert np.all(ell <= 1 + 1e-9) and np.all(ell > 0.97)  # on (a facet chord of) the ellipse
    length = float(np.linalg.norm(np.diff(c, axis=0), axis=1).sum())
    height = z - z0
    assert length == pytest.approx(pm.sector_measure["c"] / height, rel=2e-3)  # unstructured lateral facets


# ----------------------------------------------------------------------------- Lun 2025 Fig. 4
@pytest.mark.mpi
def test_lun2025_fig4_quick_and_resume(shared, capsys):
    from nmcfx.studies import lun2025_fig4 as fig4

    out = str(shared / "lun2025_fig4")
    k = fig4.main(["--quick", "-o", out])
    d10 = {case: k[case]["10min"]["d_um"] for case in k}
    assert d10["none"] < 0.02  # symmetric
    assert d10["half_eta0.3"] > d10["quarter_eta0.3"] > d10["quarter_eta0.7"] > 0.03
    # the Li-rich core sits toward the blocked arc (+x)
    assert k["quarter_eta0.3"]["15min"]["x_theta_max_um"] > 0.1
    if COMM.rank == 0:
        o = Path(out)
        for f in ("fig4_theta_maps.png", "fig4_snapshots.csv", "fig4_fields.csv", "study.json"):
            assert (o / f).is_file() and (o / f).stat().st_size > 0
        snaps = _rows(o / "fig4_snapshots.csv")
        assert len(snaps) == 16
        assert all(0.7 < float(r["theta_min"]) <= float(r["theta_max"]) <= 0.95 + 1e-9 for r in snaps)
        info = json.loads((o / "study.json").read_text())
        assert set(info["cases"]) == {"none", "quarter_eta0.7", "quarter_eta0.3", "half_eta0.3"}
        assert "numpy" in info["versions"] and info["quick"] is True
        stamps = {p.parent.name: p.stat().st_mtime_ns for p in o.glob("cases/*/case.json")}
        assert len(stamps) == 4
        os.remove(o / "cases" / "half_eta0.3" / "case.json")  # as if interrupted in the last case
    capsys.readouterr()
    COMM.Barrier()
    k2 = fig4.main(["--quick", "-o", out])
    printed = capsys.readouterr().out
    assert k2["half_eta0.3"]["10min"]["d_um"] == pytest.approx(d10["half_eta0.3"], rel=1e-9)
    if COMM.rank == 0:
        assert printed.count("already done, skipped") == 3
        assert "case 4/4 half_eta0.3: running" in printed
        for name, st in stamps.items():
            if name != "half_eta0.3":
                assert (Path(out) / "cases" / name / "case.json").stat().st_mtime_ns == st


# ----------------------------------------------------------------------------- Lun 2025 Fig. 5b, 5d
def test_lun2025_fig5b_quick(shared):
    from nmcfx.studies import lun2025_fig5b as fig5b

    out = str(shared / "lun2025_fig5b")
    t = fig5b.main(["--quick", "-o", out])
    for rate in ("50", "400"):
        none, e7, e3 = (t[k][rate]["capacity_mAh_g"] for k in ("none", "eta0.7", "eta0.3"))
        assert 150 < e3 < e7 < none < 0.95 * 275  # uniform flux extracts the most
    for k in ("eta0.7", "eta0.3"):
        assert t[k]["400"]["gap_mAh_g"] > 1.5 * t[k]["50"]["gap_mAh_g"] > 0  # the gap grows with rate
    assert t["eta0.3"]["400"]["gap_mAh_g"] > t["eta0.7"]["400"]["gap_mAh_g"]
    if COMM.rank == 0:
        rows = _rows(Path(out) / "fig5b_li_extracted.csv")
        assert len(rows) == 6 and all(r["end_reason"].startswith("reached theta_surface_min") for r in rows)
        assert all(abs(float(r["li_extracted_x"]) * 274.99 - float(r["capacity_mAh_g"])) < 0.05 for r in rows)
        assert (Path(out) / "fig5b_li_extracted.png").is_file()


def test_lun2025_fig5d_quick(shared):
    from nmcfx.studies import lun2025_fig5d as fig5d

    out = str(shared / "lun2025_fig5d")
    s = fig5d.main(["--quick", "-o", out])
    # the blocked quarter moves the core off centre at both rates (whether d grows with rate, Lun 2025
    # Fig. 5d, is reported by the reproduction table: not with the default tables and a fixed flux ratio)
    assert s["400mAg_eta0.3"]["d_at_5_mAh_g_um"] > 0.03 and s["50mAg_eta0.3"]["d_at_5_mAh_g_um"] > 0.03
    assert s["400mAg_eta0.3"]["d_max_um"] > 0.2
    assert s["400mAg_none"]["d_max_um"] < 0.05 and s["50mAg_none"]["d_max_um"] < 0.05
    # the Li-rich region persists to a higher capacity at the higher rate (Fig. 5c)
    assert s["400mAg_eta0.3"]["li_rich_gone_at_mAh_g"] > s["50mAg_eta0.3"]["li_rich_gone_at_mAh_g"] + 10
    # the rocksalt film (4 nm, Butler–Volmer) on the same quarter: Li conserved, and the film (i·R ≫ RT/F)
    # blocks more than η = 0.3, so the core ends further off centre
    film = {rate: s[f"{rate}mAg_film4nm"] for rate in (50, 400)}
    for rate, f in film.items():
        assert f["mass_balance_error_max"] <= 1e-10
        assert f["d_max_um"] > s[f"{rate}mAg_eta0.3"]["d_max_um"] + 0.2
        # d measured on the rendered images (PSF 265 nm, 34.7 nm pixels) follows the solver's field d
        assert math.isfinite(f["d_image_max_um"]) and abs(f["d_image_max_um"] - f["d_max_um"]) < 0.15
        assert f["d_image_minus_solver_rms_um"] < 0.1
    if COMM.rank == 0:
        rows = _rows(Path(out) / "fig5d_offset.csv")
        cases = {"50mAg_eta0.3", "50mAg_none", "50mAg_film4nm", "400mAg_eta0.3", "400mAg_none", "400mAg_film4nm"}
        assert {r["case"] for r in rows} == cases
        assert all(math.isfinite(float(r["time_min"])) and math.isfinite(float(r["capacity_mAh_g"])) for r in rows)
        img = _rows(Path(out) / "fig5d_image.csv")
        assert {r["case"] for r in img} == {"50mAg_film4nm", "400mAg_film4nm"}
        core = [r for r in img if float(r["image_li_rich_fraction"]) > 0.02 and float(r["time_min"]) > 0]
        assert len(core) >= 6 and all(math.isfinite(float(r["d_image_um"])) and math.isfinite(float(r["d_um"]))
                                      for r in core)
        for f in ("fig5d_offset.png", "fig5d_summary.csv", "fig5d_image.csv"):
            assert (Path(out) / f).is_file()


# ----------------------------------------------------------------------------- Xu 2022
def test_xu2022_charge_rest_quick(shared):
    from nmcfx.studies import xu2022_charge_rest as cr

    out = str(shared / "xu2022_charge_rest")
    s = cr.main(["--quick", "-o", out])["xu2022"]
    assert s["diff_at_stop"] > 0.05  # a clear core–shell difference when the current stops
    # near-uniform after ~10 min of rest (Lun 2025 Fig. 2e-f; Xu 2022 Fig. 2C-D): this model reaches a
    # surface–centre difference of 0.02 after ~10 min and 0.01 after ~14 min (README "Studies")
    assert 5.0 < s["relax_below_0.02_min"] < 15.0
    assert 8.0 < s["relax_below_0.01_min"] < 20.0
    assert s["diff_final"] < 0.005
    if COMM.rank == 0:
        for f in ("charge_rest.png", "charge_rest_traces.csv", "charge_rest_summary.csv", "study.json"):
            assert (Path(out) / f).is_file()


def test_xu2022_rates_quick(shared):
    from nmcfx.studies import xu2022_rates as rates

    out = str(shared / "xu2022_rates")
    s = rates.main(["--quick", "-o", out])
    c3, c2 = s["C3"], s["2C"]
    # Xu 2022 Fig. 2B: the core lags at 5-25 min and the particle is near-uniform by 35 min
    assert c3["lag_fraction_5min"] < 0.2 and c3["lag_fraction_15min"] < 0.5 and c3["lag_fraction_25min"] < 2 / 3
    assert c3["surface_centre_difference_35min"] < 0.03
    assert 20.0 < c3["front_at_center_min"] < 35.0  # physics.md: front at the centre after ~25-35 min at C/3
    # the front reaches the centre at a larger capacity and the core-periphery difference is larger at 2C
    assert c2["front_at_center_mAh_g"] > c3["front_at_center_mAh_g"]
    assert c2["max_core_periphery_difference"] > c3["max_core_periphery_difference"] + 0.05
    if COMM.rank == 0:
        for f in ("rates.png", "rates_traces.csv", "rates_summary.csv", "study.json"):
            assert (Path(out) / f).is_file()


def test_xu2022_discharge_rim_quick(shared):
    from nmcfx.studies import xu2022_discharge_rim as rim

    out = str(shared / "xu2022_discharge_rim")
    res = rim.main(["--quick", "-o", out])
    k, c3 = res["fig4a_1C"], res["fig1e_C3"]
    assert k["error"] is None and c3["error"] is None
    # both cycles start where the paper's did: V_oc = 3.5 V (002 Fig. 4A caption: ~97 % Li)
    assert k["theta_start"] == pytest.approx(0.97, abs=1e-4)
    # Fig. 1E: the C/3 charge to 4.3 V passes 229.0 mAh/g in the cell. The model passes more than what
    # the cell got back (192.4 + 16.4 = 208.8) and less than 229.0 (which 002 says includes side reactions)
    assert 208.8 < c3["charge_mAh_g"] < 229.0
    assert abs(k["charge_mAh_g"] / 200.0 - 1) < 0.06  # Fig. 4A: ~57 min at 1C (derived)
    end = k["end_of_cc_discharge"]
    assert end["reason"].startswith("reached voltage_V <= 3")
    # the Li-rich rim: surface back to about the start (contrast ≈ 0), core Li deficient (Xu 2022 Fig. 4B)
    assert abs(k["rim_contrast_end_of_cc"]) < 0.02 and end["theta_center"] < k["theta_start"] - 0.05
    assert 0.1 < k["area_fraction_below_theta0_end_of_cc"] < 0.6
    # the hold brings the mean back to the start ("the mean intensity reached its initial value")
    assert abs(k["mean_contrast_end_of_hold"]) < 0.02 and abs(k["spread_end_of_hold"]) < 1e-3
    assert k["hold_mAh_g"] > 2.0
    assert abs(k["hold_current_end_mA_g"]) < 1e-3 * abs(k["hold_current_first_step_mA_g"])
    if COMM.rank == 0:
        o = Path(out)
        for f in ("discharge_rim.png", "discharge_rim_fig1e_C3.png", "discharge_rim_timeseries.csv",
                  "discharge_rim_steps.csv", "discharge_rim_profiles.csv", "study.json"):
            assert (o / f).is_file()
        steps = _rows(o / "discharge_rim_steps.csv")
        phases = [r["phase"] for r in steps if r["case"] == "fig4a_1C"]
        assert phases[:3] == ["end of CC charge", "discharge +30 min", "end of CC discharge"]
        assert phases[-2:] == ["hold +120 min", "rest +74 min"]
        assert {r["case"] for r in steps} == {"fig4a_1C", "fig1e_C3"}


def test_reproduction_table_quick(shared):
    """The table: every row has a figure, the paper's words, a criterion, a verdict, and a reason when the
    statement is not (fully) reproduced. Runs after the study tests above and reuses their finished cases."""
    from nmcfx.studies import reproduction

    rows = reproduction.main(["--quick", "-o", str(shared)])
    assert len(rows) >= 20 and all(r["verdict"] in {"reproduced", "partial", "not", "not run"} for r in rows)
    assert all(r["figure"] and r["statement"] and r["criterion"] for r in rows)
    assert all(r["why"] for r in rows if r["verdict"] in ("partial", "not"))
    assert next(r for r in rows if r["figure"].startswith("Xu 2022 Fig. 2B"))["verdict"] == "reproduced"
    assert next(r for r in rows if "229.0" in r["statement"])["verdict"] in ("reproduced", "partial")
    assert sum(r["verdict"] == "not run" for r in rows) <= 4  # quick mode skips a few cases only
    if COMM.rank == 0:
        md = (shared / "reproduction.md").read_text()
        assert md.count("\n| ") == len(rows)  # one table line per row after the header
        with open(shared / "reproduction.csv", newline="") as fh:
            assert len(list(csv.DictReader(fh))) == len(rows)


# ----------------------------------------------------------------------------- examples
@pytest.mark.parametrize("name", ["lun2025_charge", "xu2022_cccv"])
def test_study_examples_run(name, tmp_path):
    from nmcfx.cli import main as cli

    out = _outdir(tmp_path, name)
    assert cli(["run", "--example", name, "-o", out, "-q"]) == 0
    if COMM.rank == 0:
        summary = json.loads((Path(out) / "summary.json").read_text())
        assert summary["title"]
        assert summary["max_abs_mass_balance_error"] < 1e-9
        steps = summary["protocol_steps"]
        if name == "lun2025_charge":
            assert steps[0]["reason"].startswith("reached theta_surface_min <= 0.2")
            assert 180 < summary["capacity_mAh_g"] < 210
        else:
            from nmcfx.materials import get_material

            assert [s["reason"].split()[0] for s in steps] == ["reached", "reached", "duration"]
            assert steps[2]["voltage_V"] == pytest.approx(3.0)
            # the 2 h hold brings the particle to the 3.0-V occupancy (θ = 0.98)
            theta_3v = get_material().ocv_model.theta_at(3.0)
            assert math.isfinite(summary["theta_center_final"])
            assert summary["theta_center_final"] == pytest.approx(theta_3v, abs=2e-3)


# ----------------------------------------------------------------------------- Sharma 2022
def test_sharma2022_asynchrony_quick(tmp_path):
    """The composite-electrode study runs end to end (quick: one short 1C charge and discharge on a
    coarse mesh) and writes its tables and figures with the Li balance kept."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "studies" / "sharma2022_asynchrony.py"
    spec = importlib.util.spec_from_file_location("sharma2022_asynchrony", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = _outdir(tmp_path, "sharma")
    mod.main(["--quick", "-o", out])
    if COMM.rank == 0:
        rows = _rows(Path(out) / "asynchrony_summary.csv")
        assert rows and rows[0]["case"] == "baseline"
        assert math.isfinite(float(rows[0]["asynchrony_index"]))
        per = _rows(Path(out) / "asynchrony.csv")
        assert {r["particle"] for r in per} >= {"T0", "T1", "T2", "T3", "T4"}
        summary = json.loads((Path(out) / "cases" / "baseline" / "summary.json").read_text())
        assert summary["max_abs_mass_balance_error"] <= 1e-10
        assert summary["max_abs_charge_balance_error"] <= 1e-10
        for name in ("fig4d_surface_li.png", "fig1c_slopes.png", "voltage.png", "study.json", "stress_onset.png"):
            assert (Path(out) / name).is_file(), name
        # the stress case: the same charge with [mechanics] (one-way: the same onsets to round-off), a
        # tensile surface hoop stress in every particle that reacted
        onsets = {(r["case"], r["particle"]): float(r["onset_h"]) for r in per if r["charge"] == "1"}
        for p in ("T0", "T1", "T2", "T3"):
            assert onsets[("stress", p)] == pytest.approx(onsets[("baseline", p)], rel=1e-9, abs=1e-12), p
        stress = {r["particle"]: r for r in _rows(Path(out) / "stress_onset.csv")}
        assert set(stress) >= {"T0", "T1", "T2", "T3", "T4"}
        for p in ("T0", "T1", "T2", "T3"):
            assert float(stress[p]["hoop_peak_MPa"]) > 10.0, stress[p]


def _load_study(name):
    import importlib.util
    import sys

    folder = Path(__file__).resolve().parents[1] / "studies"
    if str(folder) not in sys.path:  # the study imports its sibling sharma2022_asynchrony
        sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # (dataclasses look their module up)
    spec.loader.exec_module(mod)
    return mod


def test_sharma2022_sensitivity_variants_validate_and_change_one_input(tmp_path):
    """Every variant of the sensitivity study builds a config that validates (its tables load), the
    single-input variants differ from the first-charge baseline in exactly the input they name, and the
    σ_NMC construction the shape variants share reproduces the shipped default table at x = 0.95."""
    from nmcfx.materials.conductivity import load_conductivity_table
    from nmcfx.spec import RunSpec

    mod = _load_study("sharma2022_sensitivity")
    tables = Path(_outdir(tmp_path, "tables"))
    base = mod.variant_config("default", False, tables)

    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    expected = {"sigma": {"electrode.nmc_conductivity_csv"}, "cbd_1e2": {"electrode.cbd_conductivity_S_m"},
                "resolved": {"electrode.electrolyte"}, "dli_low": {"material.dli_csv"},
                "i0_like_dli": {"material.i0_csv"}, "fine_mesh": {"geometry.mesh_size_um", "geometry.surface_mesh_size_um"},
                "irreversible": {"electrode.nmc_conductivity_history"}}
    fb = flat(base)
    assert len(base["protocol"]["steps"]) == 1 and base["protocol"]["steps"][0]["type"] == "charge"
    assert set(mod.RECIPES) == set(mod.VARIANT_KEYS)
    for key in mod.VARIANT_KEYS:
        cfg = mod.variant_config(key, False, tables)
        RunSpec(cfg, base_dir=".", name=key)  # validates every room, loads every table; raises InputError if not
        fc = flat(cfg)
        changed = {k for k in fb.keys() | fc.keys() if fb.get(k) != fc.get(k)}
        kinds = [item.partition(":")[0] for item in mod.RECIPES[key]]
        if "start" in kinds:  # a later charge: the same step from another uniform θ0
            assert cfg["protocol"]["steps"] == base["protocol"]["steps"] and cfg["protocol"]["initial_theta"] < 0.95
            changed -= {"protocol.initial_theta"}
            kinds.remove("start")
        else:
            assert cfg["protocol"] == base["protocol"], key
        if "contact" in kinds:  # an explicit layout replaces the preset: only [geometry] changes
            assert changed and all(k.startswith("geometry.") for k in changed), key
        else:
            assert changed == set().union(set(), *[expected[k] for k in kinds]), key
    # the explicit rebuild of the preset keeps its particles (names, sizes) and its CBD
    from nmcfx.geometries.electrode import layout_from_config, sharma2022_layout

    rebuilt = layout_from_config(dict(mod.preset_as_explicit(0.15), mesh_size_um=2.0))
    rebuilt = rebuilt[0]  # (layout, mesh sizes, unconnected, verbose)
    preset = sharma2022_layout()
    assert [(p.name, p.center, p.diameter) for p in rebuilt.particles] == \
        [(p.name, tuple(p.center), p.diameter) for p in preset.particles]
    assert rebuilt.cbd_shapes() and len(rebuilt.cbd_shapes()) == len(preset.cbd_shapes())
    default = load_conductivity_table()
    th, sigma = mod.transition_sigma(0.95)
    assert np.max(np.abs(np.log10(np.interp(default.theta, th, sigma)) - np.log10(default.sigma))) < 0.01
    th, sigma = mod.transition_sigma(0.75)  # moved: still pristine at x = 0.85, metallic-side by x = 0.7
    assert np.interp(0.85, th, sigma) < 2e-5 and np.interp(0.70, th, sigma) > 5e-2


def test_sharma2022_asynchrony_variant_option(tmp_path):
    """``--variant KEY`` applies a sensitivity variant's inputs to the three-charge baseline (only that
    case); a first-charge-only or unknown key is refused in one line before anything is written."""
    from nmcfx.errors import InputError

    mod = _load_study("sharma2022_asynchrony")
    tables = Path(_outdir(tmp_path, "v"))
    (key, cfg, _), = mod.variant_cases("irreversible_combo_sigma_i0", False, tables)
    base = mod.base_config(False)
    assert key == "baseline" and cfg["protocol"] == base["protocol"]
    assert sum(s["type"] == "charge" for s in cfg["protocol"]["steps"]) == 3
    assert cfg["electrode"]["nmc_conductivity_history"] == "irreversible"
    assert cfg["electrode"]["nmc_conductivity_csv"] and cfg["material"]["i0_csv"]
    variant, rest = mod._variant_arg(["--variant", "combo_sigma_i0"])
    assert variant == "combo_sigma_i0" and rest[-1].endswith("variant_combo_sigma_i0")
    for bad in ("combo_sigma_i0_from_0.90", "nonsense"):
        out = tmp_path / f"never-{bad}"
        with pytest.raises(InputError, match="--variant"):
            mod.main(["--variant", bad, "-o", str(out)])
        assert not out.exists()


# ----------------------------------------------------------------------------- Study.case: the sweep store
def test_study_case_reruns_when_a_table_it_reads_changes(tmp_path, capsys):
    """A study case is keyed by its RunSpec digest (config + the bytes of the files it reads) and
    marked by the sweep store: unchanged → skipped; a changed contour CSV or --force → run again."""
    import argparse

    from nmcfx.studies._common import Study, case_spec
    from nmcfx.sweep.store import SweepDir

    out = Path(_outdir(tmp_path, "study"))
    outline = Path(_outdir(tmp_path, "outline.csv"))

    def write_outline(radius):
        if COMM.rank == 0:
            a = np.linspace(0.0, 2 * np.pi, 12, endpoint=False)
            np.savetxt(outline, np.c_[radius * np.cos(a), radius * np.sin(a)], delimiter=",", header="x_um,y_um")
        COMM.Barrier()

    cfg = {"geometry": {"shape": "contour", "contour_csv": str(outline), "mesh_size_um": 0.3,
                        "surface_mesh_size_um": 0.15},
           "protocol": {"initial_theta": 0.9, "steps": [{"type": "charge", "c_rate": 1.0, "duration_min": 0.5}]},
           "output": {"fields": "none", "figures": False, "progress": False, "snapshot_times_min": []}}

    def study(force=False):
        s = Study("table_case", argparse.Namespace(output=out, quick=True, force=force))
        s.plan(1)
        return s.case("c", cfg)

    write_outline(1.0)
    first = study()
    assert not first.skipped and first.error is None and first.summary["steps"] > 0
    digest = case_spec("c", cfg).digest
    if COMM.rank == 0:
        marker = json.loads((out / "cases" / "c" / "case.json").read_text())
        assert marker["status"] == "done" and marker["digest"] == digest
        assert SweepDir(out).state("c", digest).state == "done"
    assert study().skipped
    write_outline(1.05)  # same config, another table
    assert case_spec("c", cfg).digest != digest
    again = study()
    assert not again.skipped and again.summary["li_extracted_mol"] != first.summary["li_extracted_mol"]
    assert not study(force=True).skipped
    printed = capsys.readouterr().out
    if COMM.rank == 0:
        assert printed.count("already done, skipped") == 1
