"""Electrode runs do without SciPy (~35 MB of a run's peak memory; benchmarks/README.md, target 6):
σ_NMC(θ) and tabulated electrolyte properties use the project's NumPy PCHIP, the near-surface band
a brute-force nearest distance. Each replacement against SciPy, and a whole run that never loads it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from scipy.interpolate import PchipInterpolator
from scipy.spatial import cKDTree

from nmcfx.materials.conductivity import load_conductivity_table
from nmcfx.materials.electrolyte import DEFAULT_ELECTROLYTE_CSV, load_electrolyte_table


def test_conductivity_matches_scipy_pchip_in_log_sigma():
    table = load_conductivity_table()
    ref = PchipInterpolator(table.theta, np.log10(table.sigma))
    lo, hi = table.theta[0], table.theta[-1]
    t = np.concatenate([np.random.default_rng(1).uniform(lo, hi, 500), table.theta])
    assert np.allclose(table(t), 10.0 ** ref(t), rtol=1e-13, atol=0.0)
    inside = t[(t > lo) & (t < hi)]
    expect = np.log(10.0) * 10.0 ** ref(inside) * ref.derivative()(inside)
    assert np.allclose(table.derivative(inside), expect, rtol=1e-12, atol=1e-12 * np.abs(expect).max())
    # held constant beyond the table
    assert table(np.array([lo - 0.1, hi + 0.1])) == pytest.approx(table.sigma[[0, -1]], rel=1e-13)
    assert np.all(table.derivative(np.array([lo - 0.1, hi + 0.1])) == 0.0)


def test_electrolyte_table_matches_scipy_pchip():
    table = load_electrolyte_table(DEFAULT_ELECTROLYTE_CSV)
    c_nodes = table.nodes["c_mol_m3"]
    c = np.random.default_rng(2).uniform(c_nodes[0], c_nodes[-1], 400)
    for col, name in (("kappa_S_m", "conductivity"), ("D_m2_s", "diffusivity"),
                      ("thermodynamic_factor", "thermodynamic_factor")):
        ref = PchipInterpolator(c_nodes, table.nodes[col])
        v = table.nodes[col]
        assert np.allclose(getattr(table, name)(c), ref(c), rtol=1e-13, atol=1e-13 * np.abs(v).max()), name
        d = ref.derivative()(c)
        assert np.allclose(getattr(table, "d" + name)(c), d, rtol=1e-11, atol=1e-11 * np.abs(d).max()), name


@pytest.mark.parametrize("chunk", [7, 1 << 20])
def test_nearest_distance_matches_a_kd_tree(chunk):
    from nmcfx.solver.electrode import _nearest_distance

    rng = np.random.default_rng(3)
    points, cloud = rng.uniform(-5, 5, (1000, 3)), rng.uniform(-5, 5, (137, 3))
    expect, _ = cKDTree(cloud).query(points)
    assert np.allclose(_nearest_distance(points, cloud, chunk_entries=chunk), expect, rtol=1e-14, atol=1e-14)
    assert np.all(np.isinf(_nearest_distance(points, np.zeros((0, 3)))))


def test_an_electrode_run_does_not_load_scipy(tmp_path):
    """A whole electrode run (resolved electrolyte, default outputs: fields and figures) in a fresh
    interpreter, through the path of `nmcfx run`: SciPy is never imported."""
    from test_electrolyte import small_electrode

    cfg = small_electrode("resolved", mesh=2.0)
    cfg["output"] = {"progress": False}
    code = ("import json, sys, mpi4py.MPI, nmcfx\n"
            "nmcfx.run(json.loads(sys.argv[1]), sys.argv[2], keep_for_next_run=False)\n"
            "sys.exit(3 if 'scipy' in sys.modules else 0)\n")
    r = subprocess.run([sys.executable, "-c", code, json.dumps(cfg), str(tmp_path / "run")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] > 0
    assert (tmp_path / "run" / "electrode_maps.png").is_file()
