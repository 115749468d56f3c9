"""The package installs as one namespace, with its data, the same way ./dev and Docker do it."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile

from conftest import ROOT


def test_wheel_has_one_namespace_and_its_data(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("nmcfx-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"nmcfx"}, top  # no generic `solver`/`materials` packages in site-packages
    for required in ("nmcfx/cli.py", "nmcfx/solver/transport.py", "nmcfx/geometries/__init__.py",
                     "nmcfx/materials/data/nmc_dli_xu2022_default.csv", "nmcfx/studies/examples/flagship.toml"):
        assert required in names, required
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    requires = [line for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    # the DOLFINx wheel is an extra, never a hard dependency (conda/Docker provide DOLFINx)
    hard = [r for r in requires if "extra ==" not in r]
    assert not any("dolfinx" in r for r in hard), hard
    assert any("dolfinx-solver-real" in r and "extra == \"fenics\"" in r for r in requires), requires
    assert not any(re.search(r"\bpetsc4?p?y?\b", r) for r in requires), requires


def test_dockerfile_uses_official_image_and_installs_this_package():
    text = (ROOT / "docker" / "Dockerfile").read_text()
    assert re.search(r"^FROM ghcr\.io/fenics/dolfinx/dolfinx:v0\.11\.\d+\s*$", text, re.M)
    installs = re.findall(r"pip install[^\n]*", text)
    assert installs, "the Dockerfile must pip-install the package"
    # same package (the repository copied in), without the PyPI DOLFINx wheel extra
    assert any("/opt/nmcfx" in line for line in installs)
    assert not any("fenics" in line or "dolfinx-solver" in line or "petsc" in line for line in installs)
    assert re.search(r"COPY \. /opt/nmcfx", text)
    # and runs a study by default
    assert re.search(r'CMD \["nmcfx", "run", "--example", "flagship"', text)


def test_ci_calls_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "./dev test" in readme and "./dev test" in ci
    python_version = (ROOT / ".python-version").read_text().strip()
    assert python_version == "3.12"
