"""The fast paths of the one-way mechanics give the stresses of the plain ones: the precomputed load
operator and compact stress components against the UFL load and the full tensor field, the pinned
PETSc Cholesky against MUMPS, the closed-form 2D invariants against the general ones, and a solver
reused by a second run on the same mesh against the first run."""

from __future__ import annotations

import json

from mpi4py import MPI

import numpy as np
import pytest
from dolfinx import fem

from nmcfx.materials.mechanics import default_mechanics
from nmcfx.solver.mechanics import (
    ElasticitySolver,
    component_invariants,
    stress_invariants,
)
from nmcfx.solver.run import execute, prepare

COMM = MPI.COMM_WORLD


def _disk_theta(degree=2):
    import nmcfx.geometries as geo

    pm = geo.disk(2.4, mesh_size_um=0.25, surface_mesh_size_um=0.08, comm=COMM)
    V = fem.functionspace(pm.mesh, ("Lagrange", degree))
    theta = fem.Function(V)
    # an asymmetric Li-poor rim: bending (generalised plane strain) and shear both present
    theta.interpolate(lambda x: 0.95 - 0.3 * ((x[0] - 0.2) ** 2 + 0.5 * x[1] ** 2 + 0.3 * x[0] * x[1]))
    return pm.mesh, theta


@pytest.mark.parametrize("assumption", ["generalized_plane_strain", "plane_stress"])
def test_fast_paths_match_the_form_load_and_mumps(assumption):
    """Load operator + pinned Cholesky (default, serial) vs the UFL load (a zero extra load switches the
    operator off) + MUMPS: the same stress to 1e-10 of its scale; the components and the tensor field
    agree; the invariants equal those of the full tensors."""
    mesh, theta = _disk_theta()
    mat = default_mechanics()
    fast = ElasticitySolver(mesh, theta, mat, theta_ref=0.95, assumption_2d=assumption)
    plain = ElasticitySolver(mesh, theta, mat, theta_ref=0.95, assumption_2d=assumption,
                             extra_rhs=lambda s, v: 0.0 * v[0] * s.dx,
                             petsc_options={"pc_factor_mat_solver_type": "mumps"}, prefix="plain_")
    try:
        assert fast.linear_load and not plain.linear_load
        assert plain.petsc_options["pc_factor_mat_solver_type"] == "mumps"
        for shift in (0.0, 0.05):  # a second step reuses the factorisation and the mode responses
            theta.x.array[:] -= shift
            fast.solve(fields=False)
            plain.solve()
            X, s_plain = plain.stress_nodes()
            scale = np.abs(s_plain).max()
            assert scale > 10.0  # MPa: the check is not empty
            _, s_fast = fast.stress_nodes()  # filled from the components on demand
            assert np.abs(s_fast - s_plain).max() <= 1e-10 * scale
            assert np.allclose(fast.ezz_coefficients, plain.ezz_coefficients, rtol=1e-9, atol=1e-14)
            inv = fast.invariants()
            ref = stress_invariants(s_fast, planar=True)
            for k in ("sigma1", "sigma2", "sigma3", "von_mises", "hydrostatic"):
                assert np.abs(inv[k] - ref[k]).max() <= 1e-12 * scale, k
        # MUMPS got its null-pivot detection (the prefixed options are gone when it factorises) and
        # flagged null pivots of the traction-free body (at most its 3 rigid modes; which ones fall below
        # the pivot threshold is round-off)
        F = plain.ksp.getPC().getFactorMatrix()
        assert F.getMumpsIcntl(24) == 1 and 1 <= F.getMumpsInfog(28) <= 3
    finally:
        fast.destroy()
        plain.destroy()


def test_component_invariants_match_the_eigenvalues():
    rng = np.random.default_rng(3)
    s = rng.normal(size=(200, 3, 3)) * 100.0
    s = 0.5 * (s + s.transpose(0, 2, 1))
    comps = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))
    inv = component_invariants(np.stack([s[:, i, j] for i, j in comps], axis=1), comps)
    ev = np.sort(np.linalg.eigvalsh(s), axis=1)[:, ::-1]
    for k, name in enumerate(("sigma1", "sigma2", "sigma3")):
        assert np.allclose(inv[name], ev[:, k], atol=1e-9)
    s[:, 0, 2] = s[:, 2, 0] = s[:, 1, 2] = s[:, 2, 1] = 0.0  # a 2D section: σ_zz principal
    planar = ((0, 0), (1, 1), (2, 2), (0, 1))
    inv = component_invariants(np.stack([s[:, i, j] for i, j in planar], axis=1), planar)
    ev = np.sort(np.linalg.eigvalsh(s), axis=1)[:, ::-1]
    for k, name in enumerate(("sigma1", "sigma2", "sigma3")):
        assert np.allclose(inv[name], ev[:, k], atol=1e-9)
    assert np.allclose(inv["von_mises"], stress_invariants(s)["von_mises"])


def test_second_run_on_the_same_mesh_reuses_the_solver(tmp_path):
    """Two runs of one config in a process: the second takes the first one's elasticity solver (no
    factorisation of its own) and writes the same mechanics.csv."""
    cfg = {"title": "reuse", "geometry": {"shape": "disk", "diameter_um": 2.4, "mesh_size_um": 0.25,
                                          "surface_mesh_size_um": 0.08},
           "protocol": {"initial_theta": 0.95, "steps": [{"type": "charge", "c_rate": 1.0, "duration_min": 6}]},
           "mechanics": {}, "output": {"fields": "none", "figures": False, "progress": False}}
    outs = [tmp_path / "a", tmp_path / "b"]
    for o in outs:
        execute(prepare(cfg, comm=COMM), o, comm=COMM)
    costs = [json.loads((o / "mechanics.json").read_text())["cost"] for o in outs]
    assert costs[0]["factorizations"] == 1 and costs[1]["factorizations"] == 0
    a, b = (np.genfromtxt(o / "mechanics.csv", delimiter=",", names=True) for o in outs)
    assert len(a) == len(b) > 3
    for col in a.dtype.names:
        if col not in ("solve_time_s", "linear_iterations"):  # (the first run solves the ε_zz modes)
            assert np.allclose(a[col], b[col], rtol=1e-12, atol=1e-12, equal_nan=True), col
    # a kept solver its user destroys is never handed out again
    from nmcfx.solver import mechanics

    kept = list(mechanics._POOL)
    assert kept
    for ms in kept:
        ms.destroy()
    assert not mechanics._POOL
    execute(prepare(cfg, comm=COMM), tmp_path / "c", comm=COMM)
    assert json.loads((tmp_path / "c" / "mechanics.json").read_text())["cost"]["factorizations"] == 1


@pytest.mark.parametrize("keep", [True, False])
def test_figures_are_drawn_after_the_solvers_are_freed(tmp_path, monkeypatch, keep):
    """The figures come after the run has let go of its solvers: while they are drawn no form, function
    or transport solver of the run is alive; the elasticity solver survives only in the pool, kept for a
    next run (the API's default) — ``nmcfx run`` (``keep_for_next_run=False``) frees it too."""
    import gc

    from dolfinx.fem import Form, Function

    from nmcfx.solver import figures, mechanics
    from nmcfx.solver.transport import TransportSolver

    mechanics.clear_solver_pool()
    kinds = {"forms": Form, "functions": Function, "transport": TransportSolver, "elasticity": ElasticitySolver}
    gc.collect()
    earlier = [o for o in gc.get_objects() if isinstance(o, tuple(kinds.values()))]  # (other tests' objects)
    known = {id(o) for o in earlier}
    seen = {}
    draw = figures.kymograph

    def kymograph(*args, **kwargs):
        gc.unfreeze()  # (objects frozen while the figures are drawn are not listed)
        gc.collect()
        new = [o for o in gc.get_objects() if id(o) not in known]
        gc.freeze()
        seen.update({name: sum(isinstance(o, kind) for o in new) for name, kind in kinds.items()})
        seen["pooled"] = len(mechanics._POOL)
        return draw(*args, **kwargs)

    monkeypatch.setattr(figures, "kymograph", kymograph)
    cfg = {"title": "figures last", "geometry": {"shape": "disk", "diameter_um": 2.4, "mesh_size_um": 0.3,
                                                 "surface_mesh_size_um": 0.1},
           "protocol": {"initial_theta": 0.95, "steps": [{"type": "charge", "c_rate": 1.0, "duration_min": 3}]},
           "mechanics": {}, "output": {"fields": "none", "progress": False, "snapshot_times_min": [3]}}
    summary = execute(prepare(cfg, comm=COMM), tmp_path, comm=COMM, keep_for_next_run=keep)
    try:
        if COMM.rank == 0:
            if keep and COMM.size == 1:  # (the pool is serial only) the kept solver and its forms
                assert seen["transport"] == 0 and seen["elasticity"] == seen["pooled"] == 1
            else:
                assert seen == {"forms": 0, "functions": 0, "transport": 0, "elasticity": 0, "pooled": 0}
            for name in ("kymograph", "center_trace", "theta_maps", "stress_summary", "stress_maps"):
                assert (tmp_path / f"{name}.png").stat().st_size > 1000, name
            assert json.loads((tmp_path / "summary.json").read_text())["wall_time_s"] == summary["wall_time_s"] > 0
    finally:
        mechanics.clear_solver_pool()
