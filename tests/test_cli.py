"""The command line: version, materials table, examples, mesh report."""

from __future__ import annotations

import csv

import pytest

from nmcfx import __version__
from nmcfx.cli import main


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"nmcfx {__version__}"


def test_materials_show_prints_and_writes_csv(tmp_path, capsys):
    path = tmp_path / "nmc.csv"
    assert main(["materials", "show", "nmc", "--csv", str(path), "--points", "5"]) == 0
    out = capsys.readouterr().out
    assert "D_chem" in out and "V_oc" in out
    rows = list(csv.reader(line for line in path.open() if not line.startswith("#")))
    header = [h.lower() for h in rows[0]]
    assert any(h.startswith("theta") for h in header) and any("d_chem" in h for h in header)
    assert len(rows) >= 6


def test_materials_show_unknown_name(capsys):
    assert main(["materials", "show", "LFP"]) == 2
    assert "material.name" in capsys.readouterr().err


def test_examples_and_mesh(capsys):
    assert main(["examples"]) == 0
    out = capsys.readouterr().out
    for name in ("flagship", "disk_100mAg", "charge_rest", "lithiation"):
        assert name in out
    assert main(["mesh", "--example", "flagship"]) == 0
    out = capsys.readouterr().out
    assert "4.87" in out and "8.06" in out


def test_readme_config_example_runs(tmp_path, capsys):
    """The annotated config in README.md is valid and runs as written."""
    import re

    from conftest import ROOT

    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Writing a config.*?```toml\n(.*?)```", text, re.S).group(1)
    (tmp_path / "readme.toml").write_text(block + '\n[output]\nfields = "none"\nfigures = false\n'
                                          if "[output]" not in block else block)
    assert main(["run", str(tmp_path / "readme.toml"), "-o", str(tmp_path / "out"), "-q"]) == 0
    assert (tmp_path / "out" / "steps.csv").read_text().count("\n") == 3  # header + 2 steps
