"""The Python API: RunSpec (validation, dotted overrides, digest over files) and nmcfx.run."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from mpi4py import MPI

import nmcfx
from nmcfx.errors import InputError

TINY = textwrap.dedent("""
    title = "tiny disk"
    [geometry]
    shape = "disk"
    diameter_um = 1.0
    mesh_size_um = 0.25
    [protocol]
    [[protocol.steps]]
    type = "charge"
    c_rate = 1.0
    duration_min = 2
    [output]
    figures = false
    fields = "none"
    progress = false
""")


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


def _csv_columns(path):
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    return {name: np.array([float(r[j]) for r in rows[1:]]) for j, name in enumerate(rows[0])}


def test_run_returns_what_the_run_directory_holds(tiny, tmp_path):
    spec = nmcfx.load(tiny)
    assert spec.name == "tiny" and spec.title == "tiny disk"
    res = nmcfx.run(spec, tmp_path / "out")
    on_disk = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert res.summary["capacity_mAh_g"] == on_disk["capacity_mAh_g"]
    cols = _csv_columns(tmp_path / "out" / "timeseries.csv")
    assert set(cols) == set(res.timeseries)
    for name, values in cols.items():
        np.testing.assert_allclose(res.timeseries[name], values, rtol=1e-9, atol=1e-300, err_msg=name)
    assert len(res.steps) == 1 and res.steps[0]["reason"]
    # the last record is the summary's end state; Li conservation to round-off
    assert res.timeseries["time_s"][-1] / 60 == pytest.approx(res.summary["end_time_min"])
    assert res.summary["max_abs_mass_balance_error"] < 1e-10
    assert res.dataframe().shape[0] == len(res.timeseries["time_s"])


def test_overrides_change_the_run_and_the_digest(tiny, tmp_path):
    base = nmcfx.load(tiny)
    faster = base.with_overrides({"protocol.steps[0].c_rate": 2.0, "material.scaling_S": 2.0})
    assert faster.get("protocol.steps[0].c_rate") == 2.0 and faster.get("material.scaling_S") == 2.0
    assert base.get("protocol.steps[0].c_rate") == 1.0  # the base is untouched
    assert faster.digest != base.digest
    assert base.with_overrides({"protocol.steps.0.c_rate": 1.0}).digest == base.digest  # same config, same digest
    a = nmcfx.run(base, tmp_path / "a")
    b = nmcfx.run(tiny, tmp_path / "b", overrides={"protocol.steps[0].c_rate": 2.0})
    # twice the current for the same time: twice the charge passed (galvanostatic, exact)
    assert b.summary["capacity_mAh_g"] == pytest.approx(2 * a.summary["capacity_mAh_g"], rel=1e-9)


@pytest.mark.parametrize("key, value, message", [
    ("material.scalingS", 4.0, "unknown key"),
    ("geometry.diamter_um", 2.0, "unknown key"),
    ("solver.thetatol", 1e-3, "unknown key"),
    ("surfaces.model", "flux", "is not a config table"),
    ("protocol.steps[3].c_rate", 1.0, "out of range"),
    ("title.x", 1, "not a table"),
    ("material.scaling_S", -1.0, "must be"),
])
def test_bad_override_is_one_line_naming_the_key(tiny, key, value, message):
    base = nmcfx.load(tiny)
    with pytest.raises(InputError) as exc:
        base.with_overrides({key: value})
    assert exc.value.field == key, str(exc.value)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_digest_covers_the_contents_of_referenced_files(tiny, tmp_path):
    from pathlib import Path

    import nmcfx.materials

    dli = tmp_path / "dli.csv"
    shutil.copy(Path(nmcfx.materials.__file__).parent / "data" / "nmc_dli_xu2022_default.csv", dli)
    spec = nmcfx.load(tiny, {"material.dli_csv": "dli.csv"})
    assert spec.files() == {"material.dli_csv": dli}
    d0 = spec.digest
    assert nmcfx.load(tiny, {"material.dli_csv": "dli.csv"}).digest == d0  # reproducible
    # the same file name with different contents: a different digest
    lines = dli.read_text().splitlines()
    i = next(k for k, line in enumerate(lines) if line and line[0].isdigit())
    theta, d = lines[i].split(",")[:2]
    lines[i] = f"{theta},{float(d) * 1.01!r}"
    time.sleep(0.01)
    dli.write_text("\n".join(lines) + "\n")
    assert nmcfx.load(tiny, {"material.dli_csv": "dli.csv"}).digest != d0


def test_digest_covers_the_built_in_model(tiny, monkeypatch):
    """A changed default table or solver (same config) makes cached cases stale."""
    import nmcfx.spec

    d0 = nmcfx.load(tiny).digest
    assert len(nmcfx.spec.model_digest()) == 20
    monkeypatch.setattr(nmcfx.spec, "model_digest", lambda: "0" * 20)
    assert nmcfx.load(tiny).digest != d0


def test_validation_does_not_mesh(tiny, monkeypatch):
    import nmcfx.geometries._build as build

    def boom(*a, **k):
        raise AssertionError("validation must not mesh")

    monkeypatch.setattr(build, "mesh_and_distribute", boom)
    spec = nmcfx.load(tiny, {"geometry.diameter_um": 3.0})
    assert spec.get("geometry.diameter_um") == 3.0
    with pytest.raises(InputError, match="geometry.diameter_um"):
        spec.with_overrides({"geometry.diameter_um": -3.0})
    with pytest.raises(InputError, match="surface.blocking.nowhere"):
        spec.with_overrides({"surface.blocking.nowhere": 0.5})  # no such sector


def test_python_m_nmcfx_is_the_command():
    out = subprocess.run([sys.executable, "-m", "nmcfx", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"nmcfx {nmcfx.__version__}"


@pytest.mark.mpi
def test_run_is_collective_and_agrees_on_every_rank(tmp_path):
    comm = MPI.COMM_WORLD
    out = comm.bcast(str(tmp_path / "out"), root=0)
    cfg = {"geometry": {"shape": "disk", "diameter_um": 1.0, "mesh_size_um": 0.2},
           "protocol": {"steps": [{"type": "charge", "c_rate": 1.0, "duration_min": 2}]},
           "output": {"figures": False, "fields": "none", "progress": False}}
    res = nmcfx.run(cfg, out, comm=comm)
    got = comm.allgather((res.summary["capacity_mAh_g"], res.timeseries["theta_center"].tolist()))
    assert all(g == got[0] for g in got)
    assert res.summary["mpi_size"] == comm.size


def test_digest_finds_files_anywhere_in_the_config(tiny, tmp_path):
    """A contour file in [geometry] and a path-like key (even one not there yet) are covered."""
    import math

    pts = [(math.cos(2 * math.pi * k / 40), 0.7 * math.sin(2 * math.pi * k / 40)) for k in range(40)]
    (tmp_path / "outline.csv").write_text("x_um,y_um\n" + "".join(f"{x!r},{y!r}\n" for x, y in pts))
    spec = nmcfx.load(tiny).with_overrides({"geometry": {"shape": "contour", "contour_csv": "outline.csv",
                                                         "mesh_size_um": 0.25}})
    assert spec.files() == {"geometry.contour_csv": tmp_path / "outline.csv"}
    d0 = spec.digest
    (tmp_path / "outline.csv").write_text("x_um,y_um\n" + "".join(f"{1.01 * x!r},{y!r}\n" for x, y in pts))
    assert nmcfx.load(tiny).with_overrides({"geometry": {"shape": "contour", "contour_csv": "outline.csv",
                                                         "mesh_size_um": 0.25}}).digest != d0
    from nmcfx.spec import Params

    p = Params({"labels_tif": "labels.tif"}, base_dir=tmp_path)
    assert p.files() == {"labels_tif": tmp_path / "labels.tif"}
    missing = p.digest
    (tmp_path / "labels.tif").write_bytes(b"\x00\x01")
    assert Params({"labels_tif": "labels.tif"}, base_dir=tmp_path).digest != missing
