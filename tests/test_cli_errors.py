"""Bad input: one clear line naming the field, exit status 2, and nothing written."""

from __future__ import annotations

import textwrap

import pytest
from conftest import TINY_RUN

from nmcfx.cli import main

GOOD = TINY_RUN

CASES = [
    # (what to replace in GOOD, replacement, field expected in the message)
    ('diameter_um = 1.0', 'diameter_um = -1.0', "geometry.diameter_um"),
    ('shape = "disk"', 'shape = "cube"', "geometry.shape"),
    ('c_rate = 1.0', 'c_rate = 0', "protocol.steps[0].c_rate"),
    ('duration_min = 1', 'until = ["theta_mean <= 2"]', "protocol.steps[0].until[0]"),
    ('duration_min = 1', '', "protocol.steps[0]"),  # no terminating condition
    ('[output]', '[output]\nsnapshot_times_min = [-3]', "output.snapshot_times_min"),
    ('[output]', '[solver]\ndegree = 3\n[output]', "solver.degree"),
    ('[output]', '[solver]\ndt_max_s = -1\n[output]', "solver.dt_max_s"),
    ('[output]', '[material]\nscaling_S = -2\n[output]', "material.scaling_S"),
    ('[output]', '[material]\ntheta0 = 1.5\n[output]', "material.theta0"),
    ('[output]', '[material]\ndli_csv = "missing.csv"\n[output]', "material.dli_csv"),
    ('title = "ok"', 'title = "ok"\nbogus = 1', "config"),
    ('title = "ok"', 'title = "ok"\n[[[', "config"),
]


def _write(tmp_path, text):
    p = tmp_path / "case.toml"
    p.write_text(textwrap.dedent(text))
    return p


@pytest.mark.parametrize("old, new, field", CASES)
def test_bad_config_reports_field_and_writes_nothing(tmp_path, capsys, old, new, field):
    assert old in GOOD
    cfg = _write(tmp_path, GOOD.replace(old, new, 1))
    out = tmp_path / "out"
    code = main(["run", str(cfg), "-o", str(out), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1, err
    assert err[0].startswith("nmcfx: error: ") and field in err[0], err
    assert "Traceback" not in err[0]
    assert not out.exists()


def test_non_monotone_ocv_table_rejected(tmp_path, capsys):
    (tmp_path / "ocv.csv").write_text("theta,V_oc\n0.1,4.2\n0.5,3.9\n0.9,4.0\n")
    cfg = _write(tmp_path, GOOD.replace("[output]", '[material]\nocv_csv = "ocv.csv"\n[output]'))
    code = main(["run", str(cfg), "-o", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "material.ocv_csv" in err and "decreasing" in err
    assert not (tmp_path / "out").exists()


def test_good_config_runs(tmp_path, capsys):
    cfg = _write(tmp_path, GOOD)
    out = tmp_path / "out"
    assert main(["run", str(cfg), "-o", str(out), "--quiet"]) == 0
    assert (out / "timeseries.csv").is_file() and (out / "metadata.json").is_file()
    assert "mass-balance error" in capsys.readouterr().out


def test_missing_file_and_unknown_example(capsys):
    assert main(["run", "/nonexistent/file.toml"]) == 2
    assert main(["run", "--example", "no-such-example"]) == 2
    err = capsys.readouterr().err
    assert "file not found" in err and "unknown example" in err
