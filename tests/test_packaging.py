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
    for required in ("nmcfx/cli.py", "nmcfx/api.py", "nmcfx/spec.py", "nmcfx/sweep/engine.py",
                     "nmcfx/sweep/local.py", "nmcfx/solver/transport.py", "nmcfx/geometries/__init__.py",
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


def test_dockerfile_serves_cluster_users_and_its_array_task_check_runs(tmp_path):
    """The image has what a cluster user needs, and the build's array-task check passes here."""
    import os
    import shlex

    text = (ROOT / "docker" / "Dockerfile").read_text()
    assert re.search(r"pip install[^\n]*/opt/nmcfx\[[^\]]*cluster", text)  # dask-jobqueue: PBS, SGE, LSF, ...
    extras = re.search(r"^cluster = \[(.*)\]", (ROOT / "pyproject.toml").read_text(), re.M)
    assert extras and "dask-jobqueue" in extras.group(1)
    run = next(block for block in re.split(r"\n(?=RUN |WORKDIR |CMD |ENV |COPY |FROM )", text) if "--plan" in block)
    steps = [s.strip() for s in run[len("RUN "):].replace("\\\n", " ").split("&&")]
    assert any("--task 0" in s for s in steps) and any(s.startswith("nmcfx sweep status") for s in steps)
    env = dict(os.environ, PATH=f"{sys.executable.rsplit('/', 1)[0]}{os.pathsep}{os.environ['PATH']}")
    for step in steps:
        cmd = step.replace("/opt/nmcfx", str(ROOT)).replace("/tmp/array-check", str(tmp_path / "array-check"))
        proc = subprocess.run(shlex.split(cmd), capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, (cmd, proc.stdout[-1000:], proc.stderr[-1000:])
    assert not (tmp_path / "array-check").exists()  # the check cleans up after itself


def test_readme_tells_cluster_users_how():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## On a cluster", 1)[1].split("\n## ", 1)[0]
    for needle in ("--backend slurm", "#SBATCH --array", "nmcfx sweep /scratch/me/lun --task",
                   "apptainer build nmcfx.sif docker-daemon://", "mpiexec -n $SLURM_NTASKS nmcfx sweep",
                   "--backend dask", "submitit"):
        assert needle in section, needle
