"""Particles and CBD as one elastic body (``[mechanics] electrode_bonding = "bonded"``) through the run
path: θ = θ₀ everywhere is stress-free (the first record of a charge); a very soft CBD gives back the free particle; a stiff CBD holds
a swelling particle in compression and its ring in tension; θ and the balances are those of the free
run (one-way coupling); serial ≡ ``mpiexec -n 2``; bad input is one line with nothing written.
The closed-form checks of the body itself (Lamé inclusion) are in ``test_bonded_mechanics.py``."""

from __future__ import annotations

import copy
import json
import textwrap

from mpi4py import MPI

import numpy as np
import pytest

from conftest import assert_run_refused, run_on_one_and_two_ranks
from nmcfx.cli import main
from test_electrode_mechanics import GOOD, TWO, _csv, _run

COMM = MPI.COMM_WORLD

#: one 6 µm particle inside a 1 µm CBD ring (two overlapping coatings; a single 0–360° coating closes too)
#: wired to the collector by a strand: it touches no other particle and not the collector, so only
#: the CBD holds it
EMBEDDED = {
    "title": "one particle in a CBD ring",
    "geometry": {"shape": "electrode", "width_um": 12.0, "height_um": 12.0,
                 "particles": [{"shape": "disk", "center_um": [6.0, 7.0], "diameter_um": 6.0, "name": "A"}],
                 "strands": [{"points_um": [[6.0, 0.0], [6.0, 3.2]], "width_um": 1.2}],
                 "coatings": [{"particle": "A", "start_deg": -90, "end_deg": 135, "thickness_um": 1.0},
                              {"particle": "A", "start_deg": 90, "end_deg": 315, "thickness_um": 1.0}],
                 "mesh_size_um": 1.5, "surface_mesh_size_um": 0.6},
    "protocol": {"initial_theta": 0.9, "steps": [{"type": "charge", "c_rate": 1.0, "duration_min": 3}]},
    "solver": {"dt_max_s": 45.0},
    "mechanics": {"electrode_bonding": "bonded", "assumption_2d": "plane_strain"},
    "output": {"fields": "none", "figures": False, "progress": False},
}
STRESS_COLS = ("sigma1_max_MPa_A", "hoop_surface_max_MPa_A")


def _rest(cfg, minutes=1.0):
    cfg["protocol"]["steps"] = [{"type": "rest", "duration_min": minutes}]
    return cfg


@pytest.mark.mpi
def test_soft_cbd_gives_back_the_free_particle_and_transport_is_unchanged(tmp_path):
    """1C charge for 3 min: the Li-poor rim contracts, hoop tension at the surface. With E_CBD = 1 MPa
    (1.7e5 × softer than NMC) the bonded particle's stress columns equal the free particle's to 0.2 %
    of their peak at every step, and its mean stress is zero (to 0.2 %), as a traction-free body's must
    be; a CBD as stiff as NMC holds the shrinking particle out — mean tension, more hoop tension
    (≥ 5 % above the free peak) — so the soft limit is not met by construction. θ, the voltage and the balances are the free run's to
    round-off (one-way coupling)."""
    free = copy.deepcopy(EMBEDDED)
    free["mechanics"] = {"electrode_bonding": "free", "assumption_2d": "plane_strain"}
    soft = copy.deepcopy(EMBEDDED)
    soft["mechanics"]["cbd_youngs_modulus_GPa"] = 1e-3
    stiff = copy.deepcopy(EMBEDDED)
    stiff["mechanics"]["cbd_youngs_modulus_GPa"] = 170.0
    _, tf, _ = _run(tmp_path, free, name="free")
    s_soft, ts, _ = _run(tmp_path, soft, name="soft")
    _, td, out = _run(tmp_path, stiff, name="stiff")
    assert len(ts["time_s"]) == len(tf["time_s"]) == len(td["time_s"])
    peak = float(np.max(tf["hoop_surface_max_MPa_A"]))
    assert peak > 50.0
    for col in STRESS_COLS:
        assert np.max(np.abs(ts[col] - tf[col])) <= 2e-3 * peak, (col, np.max(np.abs(ts[col] - tf[col])))
    # a traction-free body's mean stress vanishes (∫σ dV = ∮ x ⊗ σn dS): the nearly free particle's, while
    # its rim is in tension and its core in compression; the stiff ring holds the shrinking particle out
    assert np.max(np.abs(ts["sigma_mean_MPa_A"])) <= 2e-3 * peak, np.max(np.abs(ts["sigma_mean_MPa_A"]))
    assert td["sigma_mean_MPa_A"][-1] > 0.05 * peak, td["sigma_mean_MPa_A"][-1]
    assert np.max(td["hoop_surface_max_MPa_A"]) > 1.05 * peak, (np.max(td["hoop_surface_max_MPa_A"]), peak)
    # the first record is the uniform initial state θ = θ₀ (the stress-free reference): zero stress in the
    # particle and in the (stiff, clamped) CBD
    for col in STRESS_COLS + ("sigma_mean_MPa_A", "cbd_sigma1_max_MPa", "cbd_von_mises_max_MPa"):
        assert abs(td[col][0]) <= 1e-9 * peak, (col, td[col][0])
    for col in ("voltage_V", "theta_mean_A", "theta_surface_A", "mass_balance_error"):
        assert np.max(np.abs(ts[col] - tf[col])) <= 1e-13 * max(1.0, np.max(np.abs(tf[col]))), col
    assert s_soft["max_abs_mass_balance_error"] <= 1e-10
    assert s_soft["max_abs_charge_balance_error"] <= 1e-10
    if COMM.rank == 0:
        meta = json.loads(open(f"{out}/mechanics.json").read())
        assert meta["setup"]["electrode_bonding"] == "bonded" and meta["setup"]["cbd_stiffness"]["E_GPa"] == 170.0
        assert "collector clamped" in meta["setup"]["boundary_conditions"]
        assert meta["resolved"]["assumption"] == "plane_strain" and meta["resolved"]["dofs"]["body"] > 0


@pytest.mark.mpi
def test_stiff_cbd_holds_a_swelling_particle_in_compression(tmp_path):
    """θ = 0.9 everywhere, stress-free at θ_ref = 0.85: the particle has swollen in the basal plane
    (ε_a > 0). Free, it would be stress-free (test_electrode_mechanics.py); held by a stiff CBD ring
    (170 GPa, plane stress) it is in
    compression (mean stress < 0, surface hoop stress < 0 all round) and the ring is in tension —
    signs a wrong eigenstrain sign, an eigenstrain leaking into the CBD or a missing bond would flip."""
    from nmcfx.materials.mechanics import default_mechanics

    cfg = _rest(copy.deepcopy(EMBEDDED))
    cfg["mechanics"] = {"electrode_bonding": "bonded", "assumption_2d": "plane_stress", "reference_theta": 0.85,
                        "cbd_youngs_modulus_GPa": 170.0}
    _, ts, _ = _run(tmp_path, cfg)
    ea, _ = default_mechanics().eigenstrain(np.array([0.9]), 0.85)
    assert ea[0] > 0
    scale = 170e3 * ea[0]  # MPa: the stress of a fully held basal plane
    # mean stress of the particle: −p of the ring's grip (a free particle's mean stress is zero)
    assert np.all(ts["sigma_mean_MPa_A"] < -0.1 * scale), (ts["sigma_mean_MPa_A"], scale)
    assert np.all(ts["hoop_surface_max_MPa_A"] < 0.0), ts["hoop_surface_max_MPa_A"]  # squeezed all round
    assert np.all(ts["cbd_sigma1_max_MPa"] > 0.1 * scale)  # the ring stretched


def test_bonded_serial_and_two_ranks_agree(tmp_path):
    """Two touching particles (B held only through its NMC|NMC contact with A) charged at 1C, bonded:
    the stress columns of `nmcfx run` on 1 and 2 ranks agree to 1e-8 of their scale."""
    cfg = TWO.replace('electrode_bonding = "free"', 'electrode_bonding = "bonded"')
    a, b = (_csv(out / "timeseries.csv") for out in run_on_one_and_two_ranks(tmp_path, cfg))
    assert len(a["time_s"]) == len(b["time_s"])
    cols = [c for c in a if c.startswith(("sigma1_max_MPa", "hoop_surface_max_MPa", "sigma_mean", "cbd_"))]
    assert len(cols) == 10
    assert np.max(a["hoop_surface_max_MPa_B"]) > 50.0
    for c in cols:
        scale = max(1.0, float(np.max(np.abs(a[c]))))
        assert np.max(np.abs(a[c] - b[c])) <= 1e-8 * scale, c


LOOSE = GOOD.replace('shape = "electrode"', 'shape = "electrode"\nunconnected = "warn"', 1).replace(
    "[[geometry.strands]]", """[[geometry.particles]]
shape = "disk"
center_um = [13.0, 8.0]
diameter_um = 3.0
name = "C"
[[geometry.strands]]""")

BAD = [
    ('electrode_bonding = "free"', 'electrode_bonding = "bonded"\ncbd_poisson_ratio = 0.5',
     "mechanics.cbd_poisson_ratio"),
    ('electrode_bonding = "free"', 'electrode_bonding = "bonded"\ncbd_poisson_ratio = -1.0',
     "mechanics.cbd_poisson_ratio"),
    ('electrode_bonding = "free"', 'electrode_bonding = "bonded"\ncbd_youngs_modulus_GPa = 0.0',
     "mechanics.cbd_youngs_modulus_GPa"),
    ('electrode_bonding = "free"', 'electrode_bonding = "bonded"\ncbd_youngs_modulus_GPa = -2.0',
     "mechanics.cbd_youngs_modulus_GPa"),
    ('electrode_bonding = "free"', 'electrode_bonding = "bonded"\ncbd_youngs_modulus_GPa = "soft"',
     "mechanics.cbd_youngs_modulus_GPa"),
    ('electrode_bonding = "free"', 'cbd_youngs_modulus_GPa = 2.0', "mechanics.cbd_youngs_modulus_GPa"),
]


@pytest.mark.parametrize("old, new, field", BAD)
def test_bad_bonded_input_one_line_nothing_written(tmp_path, capsys, old, new, field):
    assert_run_refused(tmp_path, capsys, GOOD.replace(old, new, 1), field)


def test_a_loose_particle_is_refused_by_name_before_anything_is_written(tmp_path, capsys):
    """Particle C touches nothing (allowed for transport with unconnected = 'warn'): a bonded body
    cannot hold it — one line naming C, no run directory."""
    cfg = tmp_path / "case.toml"
    cfg.write_text(textwrap.dedent(LOOSE.replace('electrode_bonding = "free"', 'electrode_bonding = "bonded"')))
    out = tmp_path / "out"
    code = main(["run", str(cfg), "-o", str(out), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("nmcfx: error: mechanics.electrode_bonding:") and "C" in err[0].split(":", 2)[2], err[0]
    assert not out.exists()
