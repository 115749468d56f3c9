"""σ_NMC history of the electrode (issue 7): ``[electrode] nmc_conductivity_history``.

* "reversible" (the default) is today's model bit for bit: a run with the key absent and one with
  ``"reversible"`` write identical time series;
* "irreversible" (Nishizawa et al., Chem. Commun. 1998, 1631 on Li1−xCoO2; Sharma 2022's ref. 40):
  σ_NMC of the lowest θ each node has reached. Over a charge then a discharge of two particles, θ_min
  is the running minimum of the accepted θ (never increases, never above θ), the coefficient the
  solver assembles is σ(min(θ, θ_min)), σ after the discharge is ≥ σ before it at every node (and
  the reversible run's is lower somewhere, so the option changes something), Li and charge are
  conserved to 1e-10 as before;
* a resumed irreversible run equals the uninterrupted one (θ_min is checkpointed); serial ≡
  ``mpiexec -n 2``;
* a bad value: one line (tests/test_electrode_inputs.py, ``sigma-history``).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI

from nmcfx.solver import electrode_outputs
from nmcfx.solver.run import execute, prepare

from test_resume_exact import _resume_matches

TWO = {
    "title": "two touching particles: charge, then discharge",
    "geometry": {"shape": "electrode", "width_um": 16.0, "height_um": 11.0,
                 "particles": [{"shape": "disk", "center_um": [5.0, 6.0], "diameter_um": 6.0, "name": "A"},
                               {"shape": "disk", "center_um": [10.9, 6.0], "diameter_um": 6.0, "name": "B"}],
                 "strands": [{"points_um": [[5.0, 0.0], [5.0, 3.2]], "width_um": 1.2}],
                 "mesh_size_um": 1.2, "surface_mesh_size_um": 0.6},
    # from θ = 0.97 (insulating side of the default σ table, which rises over θ = 1.0–0.9)
    "protocol": {"initial_theta": 0.97, "steps": [
        {"type": "charge", "c_rate": 1.0, "duration_min": 4},
        {"type": "discharge", "c_rate": 1.0, "duration_min": 3}]},
    "solver": {"dt_max_s": 30.0},
    "output": {"fields": "none", "figures": False, "progress": False},
}


def _with(history: str | None) -> dict:
    cfg = copy.deepcopy(TWO)
    if history is not None:
        cfg["electrode"] = {"nmc_conductivity_history": history}
    return cfg


class Watch:
    """Observer: after every accepted step, θ, θ_min and the assembled σ coefficient per particle;
    the state at the end of each protocol step."""

    def start(self, sim, restore=None):  # noqa: ARG002
        self.sim, self.rows, self.ends = sim, [], []

    def _state(self):
        m = self.sim.solver
        coeff = [c.value.x.array.copy() for c, _ in next(t for t in m.problem.terms if hasattr(t, "sigma")).sigma]
        low = [f.x.array.copy() for f in m.theta_min] if m.theta_min is not None else None
        return {"theta": [th.u.x.array.copy() for th in m.thetas], "theta_min": low, "sigma": coeff}

    def record(self, sim, rec):  # noqa: ARG002
        self.rows.append(self._state())

    def snapshot(self, sim, t):  # noqa: ARG002
        pass

    def step_end(self, sim, info):  # noqa: ARG002
        self.ends.append(self._state())

    def finish(self, sim):  # noqa: ARG002
        pass


def _run(cfg, outdir, watch=None):
    return execute(prepare(cfg, comm=MPI.COMM_SELF), outdir, comm=MPI.COMM_SELF,
                   observers=[watch] if watch else [])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("history")
    out = {}
    for key in ("absent", "reversible", "irreversible"):
        w = Watch()
        out[key] = (_run(_with(None if key == "absent" else key), base / key, w), w, base / key)
    return out


def test_default_reversible_is_unchanged_bit_for_bit(runs):
    for name in ("timeseries.csv", "steps.csv", "particles.csv"):
        a = (runs["absent"][2] / name).read_text()
        assert a == (runs["reversible"][2] / name).read_text(), name
    assert runs["absent"][1].rows[-1]["theta_min"] is None


def test_irreversible_keeps_the_lowest_theta_and_the_conductivity(runs):
    summary, w, _ = runs["irreversible"]
    sigma = w.sim.solver.sigma
    assert summary["max_abs_mass_balance_error"] <= 1e-10
    assert summary["max_abs_charge_balance_error"] <= 1e-10
    running = [th.copy() for th in w.rows[0]["theta"]]
    for prev, row in zip(w.rows, w.rows[1:]):
        for i, (th, low) in enumerate(zip(row["theta"], row["theta_min"])):
            running[i] = np.minimum(running[i], th)
            assert np.all(low <= prev["theta_min"][i])  # never increases
            assert np.array_equal(low, running[i])  # = the running minimum of the accepted θ
            # the assembled coefficient is σ(min(θ, θ_min)) = σ(θ_min) after the step
            assert np.allclose(row["sigma"][i], sigma(np.clip(low, 1e-6, 1 - 1e-6)), rtol=1e-12, atol=0)
    charged, discharged = w.ends
    rev_charged, rev_discharged = runs["reversible"][1].ends
    lowered = False
    for i in range(2):
        # the discharge re-lithiated the particles ...
        assert np.mean(discharged["theta"][i]) > np.mean(charged["theta"][i]) + 0.02
        # ... but σ stays where the charge brought it (or higher), at every node
        assert np.all(discharged["sigma"][i] >= charged["sigma"][i])
        # the reversible model's σ falls back on re-lithiation somewhere; during the charge both agree
        assert np.allclose(rev_charged["sigma"][i], charged["sigma"][i], rtol=1e-6)
        lowered |= bool(np.any(rev_discharged["sigma"][i] < 0.5 * discharged["sigma"][i]))
    assert lowered


def test_irreversible_resume_equals_the_uninterrupted_run(tmp_path, monkeypatch):
    cfg = _with("irreversible")
    cfg["solver"]["checkpoint_wall_s"] = 1e-9
    base = str(tmp_path)
    full = execute(prepare(cfg, comm=MPI.COMM_SELF), f"{base}/full", comm=MPI.COMM_SELF)
    # killed during the discharge: θ_min then differs from θ where the particles re-lithiate
    resumed = _resume_matches(monkeypatch, cfg, electrode_outputs.ElectrodeOutputs, 330.0, base, f"{base}/full",
                              files=("timeseries.csv", "steps.csv", "particles.csv"))
    assert resumed["steps"] == full["steps"]
    assert Path(f"{base}/cut-330/checkpoint").is_dir()


@pytest.mark.mpi
def test_irreversible_serial_equals_two_ranks(tmp_path):
    """θ_min on ghost nodes follows the owners: ``mpiexec -n 2`` ≡ serial to 1e-8."""
    import csv

    comm = MPI.COMM_WORLD
    base = comm.bcast(str(tmp_path), root=0)
    cfg = _with("irreversible")
    execute(prepare(cfg, comm=comm), f"{base}/par", comm=comm)
    if comm.rank == 0:
        _run(cfg, f"{base}/ser")
        a = list(csv.DictReader(open(f"{base}/par/timeseries.csv")))
        b = list(csv.DictReader(open(f"{base}/ser/timeseries.csv")))
        assert len(a) == len(b)
        cols = [c for c in a[0] if c.startswith(("theta_", "voltage_V", "current_mA_g"))]
        worst = max(abs(float(x[c]) - float(y[c])) / max(1.0, abs(float(y[c]))) for x, y in zip(a, b) for c in cols)
        assert worst <= 1e-8, worst
    comm.Barrier()
