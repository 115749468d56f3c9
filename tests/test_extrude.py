"""Prisms meshed in parallel by extrusion (geometries/_extrude.py) and the iterative solver chosen
by size for large 3D problems (solver/problem.py).

The extruded mesh must be the same body as gmsh's prism (volume, lateral and basal areas,
sector areas), conforming (every exterior facet tagged, no interior facet counted as
boundary), distributed (every rank owns cells) and give the same run on one rank and on two.
GMRES + GAMG must give LU's answer and keep the Li balance to round-off.
"""

from __future__ import annotations

import math

from mpi4py import MPI

import numpy as np
import pytest

import nmcfx.geometries as geo
from nmcfx.errors import InputError
from nmcfx.geometries import Ellipse, Sector

COMM = MPI.COMM_WORLD


def _exterior_and_tagged_facets(pm) -> tuple[int, int]:
    """Global counts of exterior facets and of tagged facets (owned facets only)."""
    import dolfinx

    mesh = pm.mesh
    mesh.topology.create_connectivity(2, 3)
    exterior = dolfinx.mesh.exterior_facet_indices(mesh.topology)
    n_owned = mesh.topology.index_map(2).size_local
    tagged = pm.facet_tags.indices
    return (COMM.allreduce(int(np.sum(exterior < n_owned)), op=MPI.SUM),
            COMM.allreduce(int(np.sum(tagged < n_owned)), op=MPI.SUM))


@pytest.mark.mpi
def test_extruded_prism_is_gmsh_prism_body_and_sectors():
    a, b, h = 1.5, 1.0, 1.2
    kw = dict(mesh_size_um=0.2, surface_mesh_size_um=0.1, sectors=[Sector("c", 0.0, 0.25, "fraction")])
    ref = geo.prism(Ellipse((a, b)), h, mesher="gmsh", **kw)
    ext = geo.prism(Ellipse((a, b)), h, mesher="extrude", **kw)
    assert ext.info["mesher"].startswith("extrude")
    assert ext.info["layers"] == round(h / 0.2)
    assert ext.sectors == ref.sectors == {"c": 1, "surface": 2, "basal_bottom": 3, "basal_top": 4}
    assert ext.reactive_sectors == ref.reactive_sectors == ("c", "surface")
    # the same polygonal cross-section approximation of the ellipse: volumes and areas to 1e-3
    assert ext.measure == pytest.approx(ref.measure, rel=1e-3)
    assert ext.measure == pytest.approx(math.pi * a * b * h, rel=5e-3)
    for name in ref.sectors:
        assert ext.sector_measure[name] == pytest.approx(ref.sector_measure[name], rel=1e-3), name
    # the end faces are the cross-section exactly: equal areas, and volume = area × height
    assert ext.sector_measure["basal_top"] == pytest.approx(ext.sector_measure["basal_bottom"], rel=1e-12)
    assert ext.measure == pytest.approx(ext.sector_measure["basal_top"] * h, rel=1e-12)
    assert np.allclose(ext.centroid, 0.0, atol=1e-3)


@pytest.mark.mpi
def test_extruded_prism_is_conforming_and_distributed():
    pm = geo.cylinder(2.0, 1.0, mesh_size_um=0.25, mesher="extrude")
    exterior, tagged = _exterior_and_tagged_facets(pm)
    # a non-conforming diagonal would leave interior faces unmatched: counted as exterior, untagged
    assert exterior == tagged > 0
    assert pm.boundary_measure == pytest.approx(math.pi * 2.0 * 1.0, rel=3e-3)
    owned = pm.mesh.topology.index_map(3).size_local
    assert COMM.allreduce(int(owned > 0), op=MPI.SUM) == COMM.size
    assert COMM.allreduce(owned, op=MPI.SUM) == pm.info["num_cells"]
    # no degenerate tetrahedra: every cell has a positive volume of the expected order
    import dolfinx

    vol = dolfinx.fem.form(dolfinx.fem.Constant(pm.mesh, 1.0) * __import__("ufl").dx)
    assert dolfinx.fem.assemble_scalar(vol) > 0


def test_mesher_auto_by_size_and_bad_mesher(monkeypatch):
    from nmcfx.geometries import _extrude

    small = geo.cylinder(2.0, 0.6, mesh_size_um=0.3, comm=MPI.COMM_SELF)
    assert "layers" not in small.info  # gmsh's 3D mesher below the threshold
    monkeypatch.setattr(_extrude, "EXTRUDE_MIN_CELLS", 10)
    big = geo.cylinder(2.0, 0.6, mesh_size_um=0.3, comm=MPI.COMM_SELF)
    assert big.info["mesher"].startswith("extrude")
    with pytest.raises(InputError) as err:
        geo.geometry_from_config({"shape": "prism", "height_um": 1, "mesher": "tetgen",
                                  "cross_section": {"shape": "disk", "diameter_um": 1}}, comm=MPI.COMM_SELF)
    assert err.value.field == "geometry.mesher"


def _config(mesher: str, petsc_options: dict | None = None) -> dict:
    solver = {"dt_max_s": 60}
    if petsc_options:
        solver["petsc_options"] = petsc_options
    return {"geometry": {"shape": "prism", "height_um": 0.6, "mesher": mesher, "mesh_size_um": 0.3,
                         "surface_mesh_size_um": 0.15, "cross_section": {"shape": "disk", "diameter_um": 2.4}},
            "protocol": {"initial_theta": 0.95, "steps": [{"type": "charge", "current_mA_g": 100, "duration_min": 5}]},
            "solver": solver, "output": {"fields": "none", "figures": False, "progress": False}}


def _run(cfg, outdir, comm):
    from nmcfx.solver.run import execute, prepare

    return execute(prepare(cfg, comm=comm), outdir, comm=comm, progress=False)


@pytest.mark.mpi
def test_extruded_prism_run_serial_equals_two_ranks(tmp_path):
    outdir = COMM.bcast(str(tmp_path), root=0)
    here = _run(_config("extrude"), f"{outdir}/world", COMM)
    serial = None
    if COMM.rank == 0:
        serial = _run(_config("extrude"), f"{outdir}/self", MPI.COMM_SELF)
    serial = COMM.bcast(serial, root=0)
    assert here["dofs"] == serial["dofs"]
    assert here["steps"] == serial["steps"]
    assert here["theta_center_final"] == pytest.approx(serial["theta_center_final"], abs=1e-9)
    assert here["theta_mean_final"] == pytest.approx(serial["theta_mean_final"], abs=1e-12)
    assert serial["theta_center_final"] > serial["theta_mean_final"] + 1e-3  # a gradient to get right
    assert max(here["max_abs_mass_balance_error"], serial["max_abs_mass_balance_error"]) <= 1e-10


@pytest.mark.mpi
def test_iterative_solver_by_size_matches_lu_and_conserves(tmp_path, monkeypatch):
    from nmcfx.solver import problem

    outdir = COMM.bcast(str(tmp_path), root=0)
    lu = _run(_config("extrude", {"ksp_type": "preonly", "pc_type": "lu", "pc_factor_mat_solver_type": "mumps"}),
              f"{outdir}/lu", COMM)
    monkeypatch.setattr(problem, "ITERATIVE_MIN_DOFS_3D", 10)  # this small prism counts as large
    seen = []
    chosen = problem.Problem._auto_linear_solver

    def recording(self, f):
        options = chosen(self, f)
        seen.append((options, self.linear_solver))
        return options

    monkeypatch.setattr(problem.Problem, "_auto_linear_solver", recording)
    it = _run(_config("extrude"), f"{outdir}/it", COMM)
    assert seen and seen[0][1] == "gmres + gamg" and seen[0][0]["pc_type"] == "gamg"
    assert it["linear_iterations"] > it["newton_iterations"]  # Krylov iterations, not one LU solve each
    assert it["max_abs_mass_balance_error"] <= 1e-10
    assert lu["max_abs_mass_balance_error"] <= 1e-10
    gradient = lu["theta_center_final"] - lu["theta_mean_final"]
    assert gradient > 1e-3  # a non-uniform field to get right
    assert it["theta_center_final"] == pytest.approx(lu["theta_center_final"], abs=1e-6 * gradient)
    assert it["theta_mean_final"] == pytest.approx(lu["theta_mean_final"], abs=1e-12)


class _Kill(Exception):
    pass


@pytest.mark.mpi
def test_iterative_solver_resume_agrees_to_the_krylov_tolerance(tmp_path, monkeypatch):
    """GMRES + GAMG runs resume to the linear solver's tolerance, not bit for bit: GAMG keeps the
    multigrid interpolation of the first matrix a process solves (pc_gamg_reuse_interpolation), and
    a resumed process's first matrix is the checkpoint's (README, "When things go wrong"). The steps
    taken are the same; their times agree to 1e-10 of the run's length and θ to 1e-10."""
    from nmcfx.solver import problem
    from nmcfx.solver.run import execute, prepare

    monkeypatch.setattr(problem, "ITERATIVE_MIN_DOFS_3D", 10)  # this small prism counts as large
    outdir = COMM.bcast(str(tmp_path), root=0)
    cfg = _config("extrude")
    cfg["solver"]["checkpoint_wall_s"] = 1e-9  # a checkpoint after every step
    full = execute(prepare(cfg, comm=COMM), f"{outdir}/full", comm=COMM, progress=False)
    original, count = problem.Problem.solve, [0]

    def solve(self):
        count[0] += 1
        if count[0] == 2 * full["steps"] // 3:
            raise _Kill()
        return original(self)

    with monkeypatch.context() as mp:
        mp.setattr(problem.Problem, "solve", solve)
        with pytest.raises(_Kill):
            execute(prepare(cfg, comm=COMM), f"{outdir}/cut", comm=COMM, progress=False)
    COMM.Barrier()
    resumed = execute(prepare(cfg, comm=COMM), f"{outdir}/cut", comm=COMM, resume=True, progress=False)
    assert resumed["steps"] == full["steps"] and resumed["rejected_steps"] == full["rejected_steps"]
    import csv

    with open(f"{outdir}/cut/timeseries.csv") as a, open(f"{outdir}/full/timeseries.csv") as b:
        ra, rb = list(csv.DictReader(a)), list(csv.DictReader(b))
    assert len(ra) == len(rb)
    t_end = float(rb[-1]["time_s"])
    for col, tol in (("time_s", 1e-10 * t_end), ("theta_mean", 1e-10), ("theta_center", 1e-10),
                     ("theta_surface_min", 1e-10)):
        assert max(abs(float(x[col]) - float(y[col])) for x, y in zip(ra, rb)) <= tol, col
