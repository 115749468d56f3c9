"""Stress in the particles of a composite electrode (free particles, one-way θ → σ) through the run
path: uniform θ is stress-free, a charge puts the reacting particles' surfaces in hoop tension, each
particle's solver is the single-particle ElasticitySolver on that particle's mesh and θ, serial ≡
``mpiexec -n 2``, the Li and charge balances are untouched, bad input is one line with nothing written."""

from __future__ import annotations

import copy
import csv
import gc
import json

from mpi4py import MPI

import numpy as np
import pytest

from conftest import assert_run_refused, run_on_one_and_two_ranks
from nmcfx.errors import InputError
from nmcfx.solver.run import execute, prepare

COMM = MPI.COMM_WORLD

#: two touching 6 µm disks, A wired to the collector by a CBD strand and coating, B only through A
SMALL = {
    "title": "two touching particles, one wired",
    "geometry": {"shape": "electrode", "width_um": 16.0, "height_um": 11.0,
                 "particles": [{"shape": "disk", "center_um": [5.0, 6.0], "diameter_um": 6.0, "name": "A"},
                               {"shape": "disk", "center_um": [10.9, 6.0], "diameter_um": 6.0, "name": "B"}],
                 "strands": [{"points_um": [[5.0, 0.0], [5.0, 3.2]], "width_um": 1.2}],
                 "coatings": [{"particle": "A", "start_deg": 220, "end_deg": 320, "thickness_um": 0.6}],
                 "mesh_size_um": 1.2, "surface_mesh_size_um": 0.6},
    "protocol": {"initial_theta": 0.9, "steps": [{"type": "charge", "c_rate": 1.0, "duration_min": 4}]},
    "solver": {"dt_max_s": 30.0},
    "mechanics": {},
    "output": {"fields": "none", "figures": False, "progress": False},
}


@pytest.fixture(autouse=True)
def _free_mpi_objects():
    yield
    gc.collect()


def _csv(path) -> dict:
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    return {k: np.array([float(r[k]) if k not in ("description", "particle") else 0.0 for r in rows])
            for k in rows[0]}


def _run(tmp_path, cfg, name="run", observers=()):
    out = COMM.bcast(str(tmp_path / name), root=0)
    summary = execute(prepare(cfg, comm=COMM), out, comm=COMM, observers=list(observers))
    ts = _csv(f"{out}/timeseries.csv") if COMM.rank == 0 else None
    return summary, COMM.bcast(ts, root=0), out


@pytest.mark.mpi
def test_uniform_theta_in_every_particle_is_stress_free(tmp_path):
    """A rest at θ = 0.9 with the stress-free state at θ_ref = 0.95: a uniform, non-zero eigenstrain
    (ε_a ≈ +0.1 %), which a free particle takes up as free expansion — zero stress to round-off
    (generalised plane strain lets ε_zz take up ε_c)."""
    cfg = copy.deepcopy(SMALL)
    cfg["protocol"]["steps"] = [{"type": "rest", "duration_min": 2}]
    cfg["mechanics"] = {"reference_theta": 0.95}
    _, ts, _ = _run(tmp_path, cfg)
    from nmcfx.materials.mechanics import default_mechanics

    mat = default_mechanics()
    ea, ec = mat.eigenstrain(np.array([0.9]), 0.95)
    scale = mat.stiffness.E_GPa * 1e3 * max(abs(ea[0]), abs(ec[0]))  # MPa: the stress if it were clamped
    assert scale > 50.0
    for p in ("A", "B"):
        for col in ("sigma1_max_MPa", "hoop_surface_max_MPa"):
            assert np.max(np.abs(ts[f"{col}_{p}"])) <= 1e-9 * scale, (col, p, np.max(np.abs(ts[f"{col}_{p}"])))


class _SameSolverCheck:
    """Observer after the mechanics observer: at every accepted step, a stand-alone single-particle
    :class:`ElasticitySolver` on each particle's submesh, reading a copy of that particle's θ, must
    give the stress the electrode observer holds (and reports in timeseries.csv)."""

    def __init__(self):
        self.diffs, self.peaks = [], []

    def state(self):
        return {}

    def start(self, sim, restore=None):  # noqa: ARG002
        from dolfinx import fem

        from nmcfx.solver.electrode_mechanics import ElectrodeMechanicsObserver
        from nmcfx.solver.mechanics import ElasticitySolver

        self.mech = next(o for o in sim.observers if isinstance(o, ElectrodeMechanicsObserver))
        setup = self.mech.setup.particle
        self.refs = []
        for i, th in enumerate(sim.solver.thetas):
            theta = fem.Function(th.u.function_space)
            ref = ElasticitySolver(th.mesh, theta, setup.material, theta_ref=setup.theta_ref,
                                   assumption_2d=setup.settings.assumption_2d, degree=setup.settings.degree,
                                   prefix=f"test_ref_{i}_")
            self.refs.append((th, theta, ref))

    def record(self, sim, rec):  # noqa: ARG002
        for (th, theta, ref), p in zip(self.refs, self.mech.particles):
            theta.x.array[:] = th.u.x.array
            ref.solve()
            a, b = ref.sigma.x.array, p.solver.sigma.x.array
            scale = max(COMM.allreduce(float(np.abs(a).max()) if a.size else 0.0, op=MPI.MAX), 1.0)
            d = COMM.allreduce(float(np.abs(a - b).max()) if a.size else 0.0, op=MPI.MAX)
            self.diffs.append(d / scale)
            s1 = ref.invariants()["sigma1"]
            peak = COMM.allreduce(float(s1.max()) if s1.size else -np.inf, op=MPI.MAX)
            self.peaks.append((p.name, peak, rec[f"sigma1_max_MPa_{p.name}"]))

    def snapshot(self, sim, t):  # noqa: ARG002
        pass

    def step_end(self, sim, info):  # noqa: ARG002
        pass

    def finish(self, sim):  # noqa: ARG002
        for _, _, ref in self.refs:
            ref.destroy()


@pytest.mark.mpi
def test_charge_gives_surface_hoop_tension_and_each_particle_is_the_single_particle_solver(tmp_path):
    """1C charge for 4 min from θ = 0.9: both particles react (A wired, B through A); the Li-poor
    surface contracts in the basal plane → tensile hoop stress on every particle surface. Each
    particle's stress equals a stand-alone ElasticitySolver on its mesh and θ to 1e-10, and so does
    the peak reported in timeseries.csv. The Li and charge balances are those of the run without
    [mechanics] (one-way coupling: θ unchanged, to round-off)."""
    check = _SameSolverCheck()
    summary, ts, out = _run(tmp_path, SMALL, observers=[check])
    moved = {p: ts[f"theta_mean_{p}"][0] - ts[f"theta_mean_{p}"][-1] for p in ("A", "B")}
    assert min(moved.values()) > 0.02, moved  # both react
    for p in ("A", "B"):
        hoop = ts[f"hoop_surface_max_MPa_{p}"]
        assert hoop[0] == pytest.approx(0.0, abs=1e-6)  # stress-free start (θ₀ = θ_ref)
        assert np.all(hoop[1:] > 0.0) and hoop[-1] > 50.0, (p, hoop[-1])
        assert np.all(ts[f"sigma1_max_MPa_{p}"][1:] > 0.0)
    # the electrode's maxima are the largest particle's
    both = np.maximum(ts["sigma1_max_MPa_A"], ts["sigma1_max_MPa_B"])
    assert np.array_equal(both, ts["sigma1_max_MPa"])
    # each particle's solver = the single-particle solver on the same mesh and θ
    assert len(check.diffs) == 2 * len(ts["time_s"])
    assert max(check.diffs) <= 1e-10, max(check.diffs)
    for name, ref_peak, reported in check.peaks:
        assert reported == pytest.approx(ref_peak, rel=1e-10, abs=1e-9), name
    # balances: as tight as without mechanics, and θ the same as in the run without it
    assert summary["max_abs_mass_balance_error"] <= 1e-10
    assert summary["max_abs_charge_balance_error"] <= 1e-10
    plain = copy.deepcopy(SMALL)
    del plain["mechanics"]
    _, ts0, _ = _run(tmp_path, plain, name="plain")
    assert len(ts0["time_s"]) == len(ts["time_s"])
    for col in ("voltage_V", "theta_mean_A", "theta_mean_B", "theta_surface_B", "mass_balance_error"):
        assert np.max(np.abs(ts0[col] - ts[col])) <= 1e-13 * max(1.0, np.max(np.abs(ts0[col]))), col
    # the per-step table and the settings
    if COMM.rank == 0:
        with open(f"{out}/particles_stress.csv") as fh:
            rows = list(csv.DictReader(fh))
        assert [r["particle"] for r in rows] == ["A", "B"]
        for r in rows:
            peak = float(r["hoop_peak_MPa"])
            assert peak == pytest.approx(np.max(ts[f"hoop_surface_max_MPa_{r['particle']}"]), rel=1e-12)
            assert float(r["hoop_peak_minus_onset_h"]) == pytest.approx(
                float(r["hoop_peak_h"]) - float(r["onset_h"]), abs=1e-12)
        meta = json.loads(open(f"{out}/mechanics.json").read())
        assert meta["setup"]["electrode_bonding"] == "free"
        assert meta["resolved"]["assumption"] == "generalized_plane_strain"
        assert set(meta["resolved"]["dofs"]) == {"A", "B"}


def test_electrode_mechanics_figures(tmp_path):
    cfg = copy.deepcopy(SMALL)
    cfg["output"] = dict(cfg["output"], figures=True, snapshot_times_min=[2.0, 4.0])
    cfg["protocol"]["steps"][0]["duration_min"] = 4
    _, _, out = _run(tmp_path, cfg)
    if COMM.rank == 0:
        from pathlib import Path

        for name in ("particles_stress.png", "stress_maps.png", "electrode_maps.png"):
            assert (Path(out) / name).stat().st_size > 10_000, name


GOOD = """
title = "bad electrode mechanics"
[geometry]
shape = "electrode"
width_um = 16.0
height_um = 11.0
mesh_size_um = 1.5
surface_mesh_size_um = 0.8
[[geometry.particles]]
shape = "disk"
center_um = [5.0, 6.0]
diameter_um = 6.0
name = "A"
[[geometry.strands]]
points_um = [[5.0, 0.0], [5.0, 3.2]]
width_um = 1.2
[protocol]
initial_theta = 0.9
[[protocol.steps]]
type = "charge"
c_rate = 1.0
duration_min = 1
[mechanics]
electrode_bonding = "free"
[output]
figures = false
fields = "none"
progress = false
"""

BAD = [
    ('electrode_bonding = "free"', 'electrode_bonding = "glued"', "mechanics.electrode_bonding"),
    ('electrode_bonding = "free"', 'cbd_poisson_ratio = 0.3', "mechanics.cbd_poisson_ratio"),
    ('electrode_bonding = "free"', 'electrode_bonding = 1', "mechanics.electrode_bonding"),
    ('electrode_bonding = "free"', 'nu = 0.5', "mechanics.nu"),
    ('electrode_bonding = "free"', 'assumption_2d = "plane"', "mechanics.assumption_2d"),
    ('electrode_bonding = "free"', 'bonding = "free"', "mechanics"),
    ('electrode_bonding = "free"', 'coupling = "two_way"', "mechanics.coupling"),
]


@pytest.mark.parametrize("old, new, field", BAD)
def test_bad_electrode_mechanics_input_one_line_nothing_written(tmp_path, capsys, old, new, field):
    assert_run_refused(tmp_path, capsys, GOOD.replace(old, new, 1), field)


def test_electrode_key_on_a_single_particle_is_refused():
    cfg = {"geometry": {"shape": "disk", "diameter_um": 2.0}, "mechanics": {"electrode_bonding": "free"},
           "protocol": {"initial_theta": 0.95, "steps": [{"type": "charge", "c_rate": 1.0, "duration_min": 1}]}}
    with pytest.raises(InputError) as exc:
        prepare(cfg, comm=COMM)
    assert exc.value.field == "mechanics.electrode_bonding" and "composite electrodes only" in str(exc.value)


TWO = GOOD.replace("[[geometry.strands]]", """[[geometry.particles]]
shape = "disk"
center_um = [10.9, 6.0]
diameter_um = 6.0
name = "B"
[[geometry.strands]]""").replace("duration_min = 1", "duration_min = 3")


def test_serial_and_two_ranks_agree(tmp_path):
    """Two touching particles charged at 1C: the per-particle stress columns of `nmcfx run` on 1 and 2
    ranks agree to 1e-8 of the stress scale (each particle's submesh split over the ranks)."""
    a, b = (_csv(out / "timeseries.csv") for out in run_on_one_and_two_ranks(tmp_path, TWO))
    assert len(a["time_s"]) == len(b["time_s"])
    cols = [c for c in a if c.startswith(("sigma1_max_MPa", "hoop_surface_max_MPa"))]
    assert len(cols) == 6
    assert np.max(a["hoop_surface_max_MPa_B"]) > 50.0
    for c in cols:
        scale = max(1.0, float(np.max(np.abs(a[c]))))
        assert np.max(np.abs(a[c] - b[c])) <= 1e-8 * scale, c
