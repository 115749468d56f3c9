"""Resolved rocksalt film (geometries.disk_with_shell + studies/lun2025_rocksalt_shell.py).

Coarse meshes: every run here takes a few seconds. Tests marked ``mpi`` are collective.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI

from nmcfx.errors import InputError
from nmcfx.geometries import disk_with_shell
from nmcfx.studies import lun2025_rocksalt_shell as study

R = 1.2
COARSE = {"mesh_size_um": 0.2, "surface_mesh_size_um": 0.05}


@pytest.mark.mpi
def test_shell_geometry_measures():
    delta = 2.0
    p = disk_with_shell(2 * R, delta, shell_arc_deg=(-45, 45), shell_layers=3, **COARSE)
    t = delta * 1e-3
    dphi = 0.5 * math.pi
    # the NMC core is the unshelled disk (polygonal boundary: O(h²/R²) short)
    assert p.core_measure == pytest.approx(math.pi * R * R, rel=5e-4)
    # the film: covered arc × δ (its exact area is Δφ (R + δ/2) δ)
    assert p.shell_measure == pytest.approx(R * dphi * t, rel=5e-3)
    assert p.shell_measure == pytest.approx(dphi * (R + t / 2) * t, rel=5e-4)
    assert p.measure == pytest.approx(p.core_measure + p.shell_measure, rel=1e-12)
    assert set(p.sectors) == {"blocked", "surface", "shell_edge"}
    assert p.reactive_sectors == ("blocked", "surface")
    assert p.sector_measure["blocked"] == pytest.approx((R + t) * dphi, rel=5e-4)
    assert p.sector_measure["surface"] == pytest.approx(R * (2 * math.pi - dphi), rel=5e-4)
    assert p.sector_measure["shell_edge"] == pytest.approx(2 * t, rel=1e-9)
    assert p.regions == {"core": 1, "shell": 2}
    info = p.info
    assert info["num_cells"] == info["num_cells_core"] + info["num_cells_shell"] < 20_000
    assert info["quality_min_core"] > 0.3 and info["quality_min"] > 0.0
    # structured film: shell_layers rows of 2 triangles per arc segment
    n_seg = info["num_cells_shell"] // (2 * 3)
    assert info["num_cells_shell"] == 6 * n_seg and n_seg >= dphi * R / 0.05
    # DG0 diffusivity factor and region indicator integrate to the region areas
    import ufl
    from dolfinx import fem

    dx = ufl.dx(domain=p.mesh)
    one = lambda f: p.comm.allreduce(fem.assemble_scalar(fem.form(f * dx)), op=MPI.SUM)  # noqa: E731
    assert one(p.region_indicator("shell")) == pytest.approx(p.shell_measure, rel=1e-12)
    scale = p.diffusivity_scale(1000.0)
    assert one(scale) == pytest.approx(p.core_measure + p.shell_measure / 1000.0, rel=1e-12)
    # NMC surface nodes: the whole circle r = R (free outline and interface)
    V = fem.functionspace(p.mesh, ("Lagrange", 1))
    n = V.dofmap.index_map.size_local
    count = p.comm.allreduce(int(p.on_nmc_surface(V.tabulate_dof_coordinates()[:n]).sum()), op=MPI.SUM)
    assert count == pytest.approx(2 * math.pi * R / 0.05, rel=0.1)


@pytest.mark.mpi
def test_no_film_and_full_film_variants():
    bare = disk_with_shell(2 * R, 0.0, **COARSE)
    film = disk_with_shell(2 * R, 1.0, **COARSE)
    # same core mesh and sector split without the film (the η-model reference)
    assert bare.info["num_cells"] == film.info["num_cells_core"]
    assert bare.shell_measure == 0.0 and set(bare.sectors) == {"blocked", "surface"}
    assert bare.sector_measure["blocked"] == pytest.approx(0.5 * math.pi * R, rel=5e-4)
    full = disk_with_shell(2 * R, 1.0, shell_arc_deg=None, **COARSE)
    assert set(full.sectors) == {"blocked"} and full.reactive_sectors == ("blocked",)
    assert full.shell_measure == pytest.approx(2 * math.pi * (R + 5e-4) * 1e-3, rel=5e-4)
    assert full.covered_angle_rad == pytest.approx(2 * math.pi)


@pytest.mark.parametrize("kwargs, field", [
    ({"shell_thickness_nm": -1.0}, "geometry.shell_thickness_nm"),
    ({"shell_thickness_nm": 1.0, "shell_arc_deg": (10, 10.5)}, "geometry.shell_arc_deg"),
    ({"shell_thickness_nm": 1.0, "shell_layers": 0}, "geometry.shell_layers"),
    ({"shell_thickness_nm": 0.0, "shell_arc_deg": None}, "geometry.shell_thickness_nm"),
    ({"shell_thickness_nm": 1.0, "surface_mesh_size_um": 0.5}, "geometry.surface_mesh_size_um"),
])
def test_bad_shell_input(kwargs, field):
    kw = dict(COARSE) | kwargs
    delta = kw.pop("shell_thickness_nm")
    with pytest.raises(InputError) as exc:
        disk_with_shell(2 * R, delta, **kw)
    assert exc.value.field == field


def _case(model, delta, ratio=3000.0, **over):
    cfg = study.QUICK | {"ratio": ratio}
    return study.make_case(cfg, model, delta, 100.0, **over)


@pytest.mark.mpi
def test_film_with_the_core_diffusivity_does_not_block():
    """ratio = 1: the 'film' is 4 nm more NMC; the current splits evenly (η_eff ≈ 1)."""
    res, rows, _ = study.run_case(_case("resolved", 4.0, ratio=1.0, max_duration_min=12.0))
    assert res["end_time_min"] == pytest.approx(12.0)
    assert res["eta_eff_cumulative_end"] == pytest.approx(1.0, abs=0.03)
    at10 = res["at_10min"]
    assert at10["eta_eff"] == pytest.approx(1.0, abs=0.03)
    assert at10["d_um"] < 0.03  # no asymmetry
    assert res["max_abs_mass_balance_error"] <= 1e-10


@pytest.mark.mpi
def test_thick_rocksalt_film_blocks_and_conserves_li():
    res, rows, _ = study.run_case(_case("resolved", 4.0))
    free, _, _ = study.run_case(_case("free_bv", 0.0))
    assert res["max_abs_mass_balance_error"] <= 1e-10
    # a 4 nm film with D/3000 passes far less current per length than the free surface
    assert res["eta_eff_cumulative_end"] < 0.15
    assert res["at_10min"]["eta_eff"] < 0.15
    # the Li-rich core moves away from the film (Lun 2025 Fig. 4), not so without it
    assert res["at_10min"]["d_um"] > 0.2 > 0.03 > free["at_10min"]["d_um"]
    # same applied current per g NMC: the charge follows the time (the film holds ~0.1 % of the Li)
    assert res["capacity_mAh_g_nmc"] == pytest.approx(100.0 * res["end_time_min"] / 60.0, rel=2e-3)
    # the stop is on the NMC surface; the film's outer face (rocksalt) is depleted earlier
    assert rows[-1]["theta_nmc_surface_min"] == pytest.approx(0.2, abs=1e-5)
    assert res["outer_reaches_cutoff_min"] is None or res["outer_reaches_cutoff_min"] <= res["end_time_min"]


@pytest.mark.mpi
def test_quick_study_writes_its_outputs_and_resumes(tmp_path):
    comm = MPI.COMM_WORLD
    out = Path(comm.bcast(str(tmp_path / "rs"), root=0))
    assert study.main(["--quick", "-o", str(out)]) == 0
    if comm.rank == 0:
        for name in ("table.csv", "cases.csv", "study.json", "summary.md", "theta_maps_100.png", "traces_100.png",
                     "eta_eff.png"):
            assert (out / name).is_file(), name
        with open(out / "table.csv") as fh:
            table = list(csv.DictReader(fh))
        assert len(table) == 1 and float(table[0]["delta_nm"]) == 1.0
        res, model = float(table[0]["eta_eff_resolved"]), float(table[0]["eta_model"])
        assert 0.0 < res < 1.0 and model == pytest.approx(1 / (1 + 1.0 / 0.4), rel=2e-3)
        assert float(table[0]["eta_eff_eta_flux"]) == pytest.approx(model, rel=1e-6)  # prescribed ratio
        meta = json.loads((out / "study.json").read_text())
        assert meta["config"]["quick"] and "dolfinx" in meta["versions"]["packages"]
        assert all(r["max_abs_mass_balance_error"] <= 1e-10 for r in meta["results"].values())
        assert (out / "cases" / "resolved_r100_d1nm" / "timeseries.csv").is_file()
    # a second invocation finds every case finished
    log = []
    study.run_study(out, study.QUICK | {"quick": True}, comm=comm, log=log.append)
    if comm.rank == 0:
        runs = [m for m in log if m.startswith("[")]
        assert runs and all("skipped" in m for m in runs)
        cfg = study.QUICK
        np.testing.assert_equal(len(runs), len(study.study_cases(cfg)) + len(cfg["rates_mA_g"]) * len(cfg["deltas_nm"]))
