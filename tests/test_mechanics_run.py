"""Mechanics through the run path (config → prepare → execute): outputs, signs physics cannot fake,
uniform θ, serial ≡ 2 ranks, resume, and bad input (one line, nothing written)."""

from __future__ import annotations

import gc

import csv
import json
import textwrap

from mpi4py import MPI

import numpy as np
import pytest

from conftest import assert_run_refused, run_on_one_and_two_ranks, tiny_run
from nmcfx.cli import main
from nmcfx.solver.run import execute, prepare

COMM = MPI.COMM_WORLD


@pytest.fixture(autouse=True)
def _free_mpi_objects():
    """Collect reference cycles after each test: meshes, vectors and solvers hold MPI communicators,
    of which a process has a limited number (context IDs)."""
    yield
    gc.collect()


def _csv(path) -> dict:
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    return {k: np.array([float(r[k]) for r in rows]) for k in rows[0]}


def _cfg(steps, initial_theta=0.95, mechanics=None, output=None, geometry=None) -> dict:
    return {
        "title": "mechanics test",
        "geometry": geometry or {"shape": "disk", "diameter_um": 2.4, "mesh_size_um": 0.2,
                                 "surface_mesh_size_um": 0.06},
        "protocol": {"initial_theta": initial_theta, "steps": steps},
        "mechanics": mechanics if mechanics is not None else {},
        "output": {"fields": "none", "figures": False, "progress": False} | (output or {}),
    }


def _run(tmp_path, cfg, name="run"):
    out = COMM.bcast(str(tmp_path / name), root=0)
    execute(prepare(cfg, comm=COMM), out, comm=COMM)
    data = _csv(f"{out}/mechanics.csv") if COMM.rank == 0 else None
    return COMM.bcast(data, root=0), out


@pytest.mark.mpi
@pytest.mark.parametrize("assumption", ["plane_stress", "generalized_plane_strain"])
def test_charge_puts_the_surface_in_hoop_tension(tmp_path, assumption):
    """Delithiation: the Li-poor periphery contracts (a shrinks with θ) → tensile hoop stress all
    around the surface, a compressed core (plane stress: the core's in-plane stress)."""
    s, _ = _run(tmp_path, _cfg([{"type": "charge", "current_mA_g": 200, "duration_min": 6}],
                               mechanics={"assumption_2d": assumption}))
    assert s["hoop_surface_min_MPa"][1:].min() > 0
    assert s["hoop_surface_max_MPa"][-1] > 50
    if assumption == "plane_stress":
        assert s["hydrostatic_center_MPa"][-1] < -10  # in-plane: core compressed
        assert s["sigma1_max_r_over_R"][-1] > 0.9  # the peak tension is at the surface
    assert s["sigma1_max_MPa"][0] == pytest.approx(0.0, abs=1e-6)  # uniform at t = 0


@pytest.mark.mpi
def test_li_rich_rim_after_discharge_puts_the_centre_in_tension(tmp_path):
    """Lithiation at 1C from θ = 0.7 until the surface reaches θ = 0.99 (the end-of-discharge rim: D
    is small near θ → 1): the expanded Li-rich rim is held back by the Li-poor core — rim hoop stress
    compressive all around, core in tension."""
    steps = [{"type": "discharge", "c_rate": 1.0, "duration_min": 30, "until": ["theta_surface_max >= 0.99"]}]
    s, _ = _run(tmp_path, _cfg(steps, initial_theta=0.7, mechanics={"assumption_2d": "plane_stress"}))
    assert s["hydrostatic_center_MPa"][-1] > 10
    assert s["sigma1_center_MPa"][-1] > 10
    assert s["hoop_surface_max_MPa"][1:].max() < 0  # compressive all around


@pytest.mark.mpi
@pytest.mark.parametrize("assumption", ["plane_stress", "plane_strain", "generalized_plane_strain"])
def test_uniform_theta_gives_zero_stress(tmp_path, assumption):
    """A rest at uniform θ = 0.95 with the stress-free state at θ_ref = 0.6: the free particle expands
    without stress (plane stress, generalised plane strain); plane strain holds ε_zz = 0, so only σ_zz
    may be non-zero and the in-plane stresses (hoop, σ_rr) vanish."""
    cfg = _cfg([{"type": "rest", "duration_min": 1}], mechanics={"assumption_2d": assumption,
                                                                  "reference_theta": 0.6})
    s, _ = _run(tmp_path, cfg)
    assert np.abs(s["hoop_surface_max_MPa"]).max() < 1e-6 and np.abs(s["hoop_surface_min_MPa"]).max() < 1e-6
    if assumption != "plane_strain":
        assert np.abs(s["von_mises_max_MPa"]).max() < 1e-6
        assert np.abs(s["sigma1_max_MPa"]).max() < 1e-6
    else:
        # clamped along c: the in-plane strain adjusts (ν ε_c) and σ_zz = −E ε_c remains (isotropic)
        from nmcfx.materials.mechanics import DEFAULT_E_GPA, default_mechanics

        eps_c = default_mechanics().eigenstrain(0.95, 0.6)[1]
        assert eps_c < -0.01  # c is shorter at θ = 0.95 than at 0.6: σ_zz is tensile
        assert s["sigma1_max_MPa"] == pytest.approx(-DEFAULT_E_GPA * 1e3 * eps_c, rel=1e-6)
        assert np.abs(s["sigma3_min_MPa"]).max() < 1e-8 * s["sigma1_max_MPa"].max()  # in-plane: round-off


@pytest.mark.mpi
def test_stiffness_variants_through_the_config(tmp_path):
    """Transversely isotropic constants equal to the isotropic ones give the same stresses; a θ-dependent
    modulus table with a constant factor 2 (matrix re-assembled every step) doubles every stress."""
    from nmcfx.materials.mechanics import DEFAULT_E_GPA, DEFAULT_NU, Stiffness

    steps = [{"type": "charge", "current_mA_g": 200, "duration_min": 3}]
    iso, _ = _run(tmp_path, _cfg(steps), "iso")
    C = Stiffness.isotropic(DEFAULT_E_GPA, DEFAULT_NU).voigt()
    ti = {"stiffness": "transversely_isotropic", "C11_GPa": C[0, 0], "C12_GPa": C[0, 1], "C13_GPa": C[0, 2],
          "C33_GPa": C[2, 2], "C44_GPa": C[3, 3]}
    same, _ = _run(tmp_path, _cfg(steps, mechanics=ti), "ti")
    base = COMM.bcast(str(tmp_path), root=0)
    if COMM.rank == 0:
        with open(f"{base}/factor2.csv", "w") as fh:
            fh.write("theta,factor\n0.0,2.0\n1.0,2.0\n")
    COMM.Barrier()
    cfg = _cfg(steps, mechanics={"modulus_csv": "factor2.csv"})
    out = f"{base}/mod"
    execute(prepare(cfg, base_dir=base, comm=COMM), out, comm=COMM)
    double = COMM.bcast(_csv(f"{out}/mechanics.csv") if COMM.rank == 0 else None, root=0)
    scale = np.abs(iso["sigma1_max_MPa"]).max()
    assert scale > 10
    for col in ("sigma1_max_MPa", "hoop_surface_max_MPa", "hydrostatic_center_MPa", "von_mises_max_MPa"):
        assert np.allclose(same[col], iso[col], atol=1e-8 * scale), col
        assert np.allclose(double[col], 2 * iso[col], atol=1e-8 * scale), col
    assert np.allclose(double["ezz_0"], iso["ezz_0"], atol=1e-12)  # strains do not change


@pytest.mark.mpi
def test_3d_cylinder_run_with_cg_gamg(tmp_path):
    """A 3D prism (c ∥ z, inert basal faces) through the run path: CG + GAMG converges in few iterations
    per step (warm start) and delithiation puts the lateral surface in hoop tension."""
    geom = {"shape": "cylinder", "diameter_um": 2.0, "height_um": 1.0, "mesh_size_um": 0.3,
            "surface_mesh_size_um": 0.15}
    s, out = _run(tmp_path, _cfg([{"type": "charge", "current_mA_g": 200, "duration_min": 4}], geometry=geom))
    assert s["hoop_surface_min_MPa"][1:].min() > 0
    assert s["hoop_surface_max_MPa"][-1] > 20
    assert np.all(s["linear_iterations"][1:] < 40) and s["linear_iterations"].sum() > 0
    if COMM.rank == 0:
        m = json.loads(open(f"{out}/mechanics.json").read())
        assert m["resolved"]["assumption"] == "3d" and m["resolved"]["solver"] == "iterative"
        assert m["resolved"]["petsc_options"]["pc_type"] == "gamg"


@pytest.mark.mpi
def test_outputs_of_a_run_with_mechanics(tmp_path):
    """All outputs: CSVs, figures, VTX fields, mechanics.json; metadata keeps the [mechanics] table."""
    cfg = _cfg([{"type": "charge", "current_mA_g": 200, "duration_min": 4}],
               mechanics={"assumption_2d": "plane_strain", "toughness_MPa_sqrt_m": 0.5, "flaw_size_um": 0.2},
               output={"fields": "vtx", "figures": True, "snapshot_times_min": [2, 4]})
    s, out = _run(tmp_path, cfg)
    if COMM.rank == 0:
        from pathlib import Path

        o = Path(out)
        for f in ("mechanics.csv", "surface_hoop.csv", "lattice_distribution.csv", "xrd_profiles.csv",
                  "stress_maps.png", "stress_summary.png", "mechanics.json"):
            assert (o / f).is_file() and (o / f).stat().st_size > 0, f
        assert (o / "stress.bp").is_dir() and (o / "displacement.bp").is_dir()
        meta = json.loads((o / "metadata.json").read_text())
        assert meta["config"]["mechanics"]["assumption_2d"] == "plane_strain"
        m = json.loads((o / "mechanics.json").read_text())
        assert m["resolved"]["assumption"] == "plane_strain" and m["resolved"]["dofs"] > 0
        assert m["peak"]["sigma1_max_MPa"] == pytest.approx(s["sigma1_max_MPa"].max())
        # fracture indicator: K_I = 1.12 σ √(π a), index = (K_I / K_Ic)²
        k = 1.12 * s["hoop_surface_max_MPa"][-1] * np.sqrt(np.pi * 0.2e-6)
        assert s["K_I_surface_MPa_sqrt_m"][-1] == pytest.approx(k, rel=1e-9)
        assert s["fracture_index_surface"][-1] == pytest.approx((k / 0.5) ** 2, rel=1e-9)
        lat = _csv(o / "lattice_distribution.csv")
        assert len(lat["time_s"]) == 2
        # equilibrium: ∫σ_xx = ∫σ_yy = 0, so the mean in-plane strain is the mean eigenstrain plus the
        # Poisson share of the clamped c axis (plane strain, isotropic): ⟨ε⟩ = ⟨ε_a⟩ + ν ⟨ε_c⟩
        from nmcfx.materials.mechanics import DEFAULT_NU, default_mechanics

        lat_tab = default_mechanics().lattice
        a_ref, c_ref = float(lat_tab.a(0.95)), float(lat_tab.c(0.95))
        mean_ec = lat["c_free_mean_A"][-1] / c_ref - 1
        expect = lat["a_free_mean_A"][-1] + a_ref * DEFAULT_NU * mean_ec
        assert lat["a_strained_mean_A"][-1] == pytest.approx(expect, rel=1e-9)
        assert abs(lat["a_strained_mean_A"][-1] - lat["a_free_mean_A"][-1]) > 1e-4  # the check is not empty
        assert np.all(lat["theta_spread_p95_p05"] > 0)
        hoop = _csv(o / "surface_hoop.csv")
        assert set(hoop["time_s"]) == {120.0, 240.0}
        assert np.all(np.diff(hoop["angle_deg"][hoop["time_s"] == 240.0]) >= 0)


def test_serial_and_two_ranks_agree(tmp_path):
    """An asymmetric case (a blocked quarter, generalised plane strain with bending): mechanics.csv of
    `nmcfx run` on 1 and 2 ranks agrees to 1e-8 of the stress scale."""
    cfg = textwrap.dedent("""
        title = "blocked quarter with mechanics"
        [geometry]
        shape = "disk"
        diameter_um = 2.4
        mesh_size_um = 0.15
        surface_mesh_size_um = 0.05
        [[geometry.sectors]]
        name = "blocked"
        start_deg = -45
        end_deg = 45
        [surface]
        blocking = { blocked = 0.3 }
        [protocol]
        [[protocol.steps]]
        type = "charge"
        current_mA_g = 200
        duration_min = 8
        [mechanics]
        assumption_2d = "generalized_plane_strain"
        [output]
        fields = "none"
        figures = false
        """)
    a, b = (_csv(out / "mechanics.csv") for out in run_on_one_and_two_ranks(tmp_path, cfg))
    assert len(a["time_s"]) == len(b["time_s"])
    scale = np.abs(a["sigma1_max_MPa"]).max()
    for col in ("sigma1_max_MPa", "sigma3_min_MPa", "von_mises_max_MPa", "hydrostatic_max_MPa",
                "hoop_surface_max_MPa", "hoop_surface_min_MPa", "hydrostatic_center_MPa"):
        assert np.max(np.abs(a[col] - b[col])) <= 1e-8 * scale, col
    for col in ("ezz_0", "ezz_x_per_um", "ezz_y_per_um"):
        assert np.max(np.abs(a[col] - b[col])) <= 1e-10, col
    # the blocked arc (centred on +x) bends the prism: a non-zero ε_zz gradient along x
    assert np.abs(a["ezz_x_per_um"]).max() > 1e-5
    # where the hoop stress peaks (not defined at t = 0: uniform, stress-free)
    assert np.allclose(a["hoop_surface_max_angle_deg"][1:], b["hoop_surface_max_angle_deg"][1:], atol=1e-6)


class Crash(Exception):
    pass


@pytest.mark.mpi
def test_resume_reproduces_mechanics_outputs(tmp_path, monkeypatch):
    """A run that crashes in its second protocol step and is resumed from the checkpoint ends with the
    same mechanics.csv and surface-hoop snapshots as an uninterrupted run, bit for bit."""
    from nmcfx.solver import outputs

    cfg = _cfg([{"type": "charge", "current_mA_g": 200, "duration_min": 3}, {"type": "rest", "duration_min": 3}],
               output={"snapshot_times_min": [2, 5]})
    cfg["solver"] = {"checkpoint_wall_s": 1e-9}
    full, _ = _run(tmp_path, cfg, "full")
    base = COMM.bcast(str(tmp_path), root=0)
    original = outputs.RunOutputs.record

    def crashing(self, sim, rec):
        original(self, sim, rec)
        if rec.time_s > 270.0:  # in the rest, after the first snapshot
            raise Crash()

    monkeypatch.setattr(outputs.RunOutputs, "record", crashing)
    with pytest.raises(Crash):
        execute(prepare(cfg, comm=COMM), f"{base}/cut", comm=COMM)
    monkeypatch.setattr(outputs.RunOutputs, "record", original)
    execute(prepare(cfg, comm=COMM), f"{base}/cut", comm=COMM, resume=True)
    if COMM.rank == 0:
        again = _csv(f"{base}/cut/mechanics.csv")
        h1, h2 = _csv(f"{base}/full/surface_hoop.csv"), _csv(f"{base}/cut/surface_hoop.csv")
        assert np.array_equal(again["time_s"], full["time_s"])
        # bit for bit, also on 2 ranks (all but the cost: a new solver's first solve adds the ε_zz modes')
        cost = ("solve_time_s", "linear_iterations")
        bad = [c for c in full if c not in cost and not np.array_equal(again[c], full[c], equal_nan=True)]
        assert not bad, bad
        assert all(np.array_equal(h1[c], h2[c]) for c in h1)
        assert len(_csv(f"{base}/cut/lattice_distribution.csv")["time_s"]) == 2


# ----------------------------------------------------------------------------- bad input
GOOD = tiny_run('[mechanics]\nassumption_2d = "plane_stress"')

BAD = [
    ('assumption_2d = "plane_stress"', 'assumption_2d = "plane_stress"\nnu = 0.5', "mechanics.nu"),
    ('assumption_2d = "plane_stress"', 'assumption_2d = "plane_stress"\nnu = -1.0', "mechanics.nu"),
    ('assumption_2d = "plane_stress"', 'assumption_2d = "plane_stress"\nE_GPa = 0', "mechanics.E_GPa"),
    ('assumption_2d = "plane_stress"', 'assumption_2d = "plane_stress"\nE_GPa = -170', "mechanics.E_GPa"),
    ('assumption_2d = "plane_stress"', 'assumption_2d = "plane_stress"\nstiffness = "transversely_isotropic"\n'
     'C11_GPa = -230\nC12_GPa = 90\nC13_GPa = 60\nC33_GPa = 160\nC44_GPa = 45', "mechanics.C11_GPa"),
    ('assumption_2d = "plane_stress"', 'assumption_2d = "plane_stress"\nstiffness = "transversely_isotropic"\n'
     'C11_GPa = 230\nC12_GPa = 90\nC13_GPa = 60\nC33_GPa = 160', "mechanics.C44_GPa"),
    ('assumption_2d = "plane_stress"', 'assumption_2d = "plane_stress"\nstiffness = "transversely_isotropic"\n'
     'C11_GPa = 230\nC12_GPa = 90\nC13_GPa = 200\nC33_GPa = 160\nC44_GPa = 45', "mechanics.C13_GPa"),
    ('assumption_2d = "plane_stress"', 'assumption_2d = "plane_stress"\nlattice_csv = "short.csv"',
     "mechanics.lattice_csv"),
    ('assumption_2d = "plane_stress"', 'assumption_2d = "plane_stress"\nlattice_csv = "missing.csv"',
     "mechanics.lattice_csv"),
    ('assumption_2d = "plane_stress"', 'assumption_2d = "plane_stres"', "mechanics.assumption_2d"),
    ('assumption_2d = "plane_stress"', 'coupling = "three_way"', "mechanics.coupling"),
    ('assumption_2d = "plane_stress"', 'stiffnes = "isotropic"', "mechanics"),
    ('assumption_2d = "plane_stress"', 'degree = 3', "mechanics.degree"),
    ('assumption_2d = "plane_stress"', 'reference_theta = 1.5', "mechanics.reference_theta"),
    ('assumption_2d = "plane_stress"', 'toughness_MPa_sqrt_m = 0', "mechanics.toughness_MPa_sqrt_m"),
]


@pytest.mark.parametrize("old, new, field", BAD)
def test_bad_mechanics_input_one_line_nothing_written(tmp_path, capsys, old, new, field):
    # a lattice table that covers θ in [0.1, 0.6] only: not the initial θ₀ = 0.95
    (tmp_path / "short.csv").write_text("theta,a_A,c_A\n0.1,2.82,14.0\n0.6,2.85,14.4\n")
    assert_run_refused(tmp_path, capsys, GOOD.replace(old, new, 1), field)


def test_materials_show_lists_mechanical_data(capsys):
    assert main(["materials", "show", "NMC-Ni87", "--points", "5"]) == 0
    out = capsys.readouterr().out
    assert "Mechanical data of NMC-Ni87" in out and "a [A]" in out and "c [A]" in out
    assert "E = 170 GPa" in out and "stiffness (Voigt, GPa" in out


def test_stress_map_panels_are_drawn_pixel_for_pixel_the_right_way_up(tmp_path):
    """The maps reach the PNG as coloured, unresampled bytes: a 2 × 3 canvas whose first row is red fills
    the lower half of its box (first row at the bottom, as imshow(origin="lower") drew it)."""
    from PIL import Image

    from nmcfx.solver.mechanics_figures import _figure, _PixelImage

    canvas = np.zeros((2, 3, 4), dtype=np.uint8)
    canvas[0] = (255, 0, 0, 255)
    canvas[1, :, 2:] = 255  # blue
    canvas[1, 2] = (0, 255, 0, 255)  # one green map pixel: the top right
    fig = _figure(3.0, 2.0)
    fig.add_artist(_PixelImage(canvas, (0.0, 0.0, 1.0, 1.0)))
    fig.savefig(tmp_path / "p.png", dpi=100)
    png = np.asarray(Image.open(tmp_path / "p.png").convert("RGBA"))
    assert png.shape[:2] == (200, 300)
    assert np.all(png[100:, :, :3] == (255, 0, 0))  # PNG rows run downwards: the bottom half is red
    assert np.all(png[:100, :200, :3] == (0, 0, 255))
    assert np.all(png[:100, 200:, :3] == (0, 255, 0))
