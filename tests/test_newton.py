"""Newton inside the time loop (solver/problem.py): it stops at a fraction of the step's error
tolerance (the update criterion), refactorises every second iteration, and the nodal problem on
one rank runs that same iteration itself, skipping the SNES's residual after the last update.

What could fail: the own loop leaving a different iterate than PETSc's SNES, a step that
conserves less, Newton stopping farther from the solution than the criterion promises, and a
fallback to the SNES that does not reproduce the SNES's own answer.
"""

from __future__ import annotations

import numpy as np
import pytest

import nmcfx
from nmcfx.geometries import disk
from nmcfx.materials import get_material
from nmcfx.solver.simulation import NEWTON_ERROR_FRACTION
from nmcfx.solver.transport import TransportSolver

THETA_TOL = 2e-3


def _config(**solver) -> dict:
    return {
        "geometry": {"shape": "disk", "diameter_um": 2.4, "mesh_size_um": 0.3, "surface_mesh_size_um": 0.1,
                     "sectors": [{"name": "blocked", "start_deg": -45, "end_deg": 45}]},
        "surface": {"model": "flux", "blocking": {"blocked": 0.3}},
        "protocol": {"initial_theta": 0.95, "steps": [{"type": "charge", "current_mA_g": 100, "duration_min": 8}]},
        "solver": {"theta_tol": THETA_TOL, **solver},
        "output": {"snapshot_times_min": [4, 8], "fields": "none", "figures": False, "progress": False},
    }


class _Counters:
    """Keeps the run's solver counters (an observer of the time loop)."""

    def start(self, sim, restore=None):  # noqa: ARG002
        self.counters = sim.solver.counters

    def record(self, sim, rec): ...
    def snapshot(self, sim, t): ...
    def step_end(self, sim, info): ...
    def finish(self, sim): ...


def _run(tmp_path, name, **solver):
    obs = _Counters()
    r = nmcfx.run(_config(**solver), tmp_path / name, observers=[obs], progress=False)
    return r, obs.counters


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("newton")
    return {
        # the defaults: update criterion, chord second iteration, the nodal problem's own loop
        "own": _run(d, "own"),
        # a user SNES option (the default line search, named): the same iteration inside PETSc's SNES
        "snes": _run(d, "snes", petsc_options={"snes_linesearch_type": "bt"}),
    }


def test_own_newton_loop_is_the_snes_iteration_without_the_last_residual(runs):
    (own, c_own), (snes, c_snes) = runs["own"], runs["snes"]
    for q in ("theta_center", "theta_mean", "theta_surface_min"):
        assert np.array_equal(own.timeseries[q], snes.timeseries[q])
    assert c_own.steps == c_snes.steps and c_own.newton_iterations == c_snes.newton_iterations
    assert c_own.jacobian_evaluations == c_snes.jacobian_evaluations
    # one residual fewer for every solve that the update criterion ended (most of them)
    saved = c_snes.residual_evaluations - c_own.residual_evaluations
    assert 0.5 * c_own.steps <= saved <= c_own.steps + c_own.rejected_steps
    assert not c_own.extras.get("newton_fallbacks")
    for r in (own, snes):
        assert r.summary["max_abs_mass_balance_error"] <= 1e-12


def test_newton_stops_within_its_fraction_of_theta_tol(runs):
    """Step by step from the same state, Newton with the update criterion lands within 1 % of
    theta_tol of Newton converged to PETSc's 1e-10 of the first residual, with about one
    factorisation per two iterations."""
    particle = disk(2.4, mesh_size_um=0.3, surface_mesh_size_um=0.1,
                    sectors=[{"name": "blocked", "start_deg": -45, "end_deg": 45}])
    loose, tight = (TransportSolver(particle, get_material(), degree=2) for _ in range(2))
    assert loose.problem.set_update_tolerance(NEWTON_ERROR_FRACTION * THETA_TOL)
    for sv in (loose, tight):
        sv.set_initial(0.95)
        sv.set_fluxes({s: 2e-4 for s in sv.q})
    dt_prev = None
    for dt in (5.0, 10.0, 20.0, 40.0, 60.0):
        order = 1 if dt_prev is None else 2
        r_loose = loose.solve_step(dt, dt_prev, order)
        r_tight = tight.solve_step(dt, dt_prev, order)
        assert r_loose.converged and r_tight.converged
        assert np.abs(loose.theta.x.array - tight.theta.x.array).max() <= NEWTON_ERROR_FRACTION * THETA_TOL
        for sv in (loose, tight):  # both continue from the converged state
            sv.theta.x.array[:] = tight.theta.x.array
            sv.accept()
        dt_prev = dt
    c_loose, c_tight = loose.counters, tight.counters
    assert c_tight.jacobian_evaluations == c_tight.newton_iterations
    assert c_loose.jacobian_evaluations <= 0.6 * c_loose.newton_iterations
    # the defaults' run conserves Li to round-off like the converged one
    assert runs["own"][0].summary["max_abs_mass_balance_error"] <= 1e-12


def test_own_loop_hands_a_non_decreasing_newton_to_the_snes_and_gets_its_answer():
    """From a noisy initial guess the full Newton step does not reduce the residual: the own loop
    gives up and the SNES (with its line search) solves from the same guess — the same answer as
    the SNES alone."""
    particle = disk(2.4, mesh_size_um=0.3, surface_mesh_size_um=0.1,
                    sectors=[{"name": "blocked", "start_deg": -45, "end_deg": 45}])
    out = []
    for own in (True, False):
        sv = TransportSolver(particle, get_material(), degree=2)
        assert sv.problem.set_update_tolerance(NEWTON_ERROR_FRACTION * THETA_TOL)
        sv.problem._own_newton = own
        sv.set_initial(0.95)
        sv.set_fluxes({s: 1e-3 for s in sv.q})
        guess = np.clip(0.95 - 0.3 * np.random.default_rng(0).random(len(sv.theta.x.array)), 1e-3, 1 - 1e-6)
        res = sv.solve_step(300.0, None, 1, guess)
        out.append((res, sv.theta.x.array.copy(), sv.counters.extras.get("newton_fallbacks", 0)))
    (r_own, th_own, fallbacks), (r_snes, th_snes, _) = out
    assert fallbacks == 1 and r_own.converged and r_snes.converged
    assert r_own.newton_iterations == r_snes.newton_iterations
    assert np.array_equal(th_own, th_snes)



def test_a_run_leaves_no_petsc_options_behind(tmp_path):
    """The nodal problem's PETSc options are removed once its solver has read them: a leftover (here
    the natural LU ordering of the once-per-mesh numbering) would reach the next solver of the same
    prefix — a user-chosen LU on the same mesh then factorised without any fill-reducing ordering."""
    from petsc4py import PETSc

    def left() -> list[str]:
        return [k for k in PETSc.Options().getAll() if k.startswith("nmcfx_theta_")]

    _run(tmp_path, "default")
    assert left() == []
    r, counters = _run(tmp_path, "user_lu", petsc_options={"pc_factor_mat_solver_type": "petsc"})
    assert left() == []
    assert r.summary["steps"] > 3
