"""Shared test helpers. Import mpi4py before dolfinx (libmpi from the wheel)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from mpi4py import MPI  # noqa: F401  (must precede dolfinx)

import numpy as np
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
# The Ctrl-C tests play a user at a terminal, where SIGINT raises KeyboardInterrupt. A test run
# started in the background (`cmd &` in a script, nohup) inherits SIGINT *ignored* — and so would
# every run it starts — which nmcfx rightly respects; give the tests a terminal's disposition.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


class ConstantDiffusivity:
    """The NMC material with its chemical diffusivity replaced by a constant D (m² s⁻¹)."""

    def __init__(self, D: float, base=None):
        from nmcfx.materials import get_material

        self._base = base if base is not None else get_material()
        self.D = D

    def __getattr__(self, name):
        return getattr(self._base, name)

    def D_chem(self, theta):
        return np.full_like(np.asarray(theta, dtype=float), self.D)

    def dD_chem(self, theta):
        return np.zeros_like(np.asarray(theta, dtype=float))


#: The smallest useful run (a 1 µm disk charged for a minute, no outputs): what the bad-input and
#: fault tests edit one line of.
TINY_RUN = """
title = "ok"
[geometry]
shape = "disk"
diameter_um = 1.0
mesh_size_um = 0.2
[protocol]
[[protocol.steps]]
type = "charge"
c_rate = 1.0
duration_min = 1
[output]
figures = false
fields = "none"
progress = false
"""


def tiny_run(*tables: str) -> str:
    """:data:`TINY_RUN` with more tables (TOML text, e.g. ``'[mechanics]\ncoupling = "two_way"'``)
    before its ``[output]``."""
    return TINY_RUN.replace("[output]", "".join(t.strip("\n") + "\n" for t in tables) + "[output]", 1)


def assert_run_refused(tmp_path: Path, capsys, config_text: str, field: str):
    """``nmcfx run`` of ``config_text`` exits with status 2 and one line naming ``field``, and writes
    nothing (the bad-input promise)."""
    import textwrap

    from nmcfx.cli import main

    cfg = tmp_path / "case.toml"
    cfg.write_text(textwrap.dedent(config_text))
    out = tmp_path / "out"
    code = main(["run", str(cfg), "-o", str(out), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1, err
    assert err[0].startswith(f"nmcfx: error: {field}:"), err[0]
    assert not out.exists()


@pytest.fixture
def comm():
    return MPI.COMM_WORLD


def nmcfx_cmd() -> list[str]:
    return [str(BIN / "nmcfx")]


def mpiexec_cmd(n: int) -> list[str]:
    return [str(BIN / "mpiexec"), "-n", str(n)]


def run_cli(args: list[str], out: Path, ranks: int = 1) -> Path:
    """``nmcfx run ARGS -o OUT -q`` in a fresh process (under ``mpiexec -n ranks`` when ranks > 1);
    fails the test with the end of stderr unless it exits 0. Returns ``out``."""
    import subprocess

    cmd = (mpiexec_cmd(ranks) if ranks > 1 else []) + nmcfx_cmd() + ["run", *args, "-o", str(out), "-q"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def run_on_one_and_two_ranks(tmp_path: Path, config_text: str) -> tuple[Path, Path]:
    """``nmcfx run`` of ``config_text`` in a fresh process on 1 and on 2 ranks; their output directories."""
    import textwrap

    cfg = tmp_path / "c.toml"
    cfg.write_text(textwrap.dedent(config_text))
    return tuple(run_cli([str(cfg)], tmp_path / f"np{n}", ranks=n) for n in (1, 2))


@pytest.fixture(autouse=True)
def _fresh_mesh_cache():
    """Every test meshes afresh (the in-process mesh cache of geometries/_build.py would otherwise
    hand one test the mesh of another, e.g. past a monkeypatched mesher)."""
    from nmcfx.geometries._build import clear_mesh_cache
    from nmcfx.solver.mechanics import clear_solver_pool

    clear_mesh_cache()
    clear_solver_pool()  # (elasticity solvers kept for reuse on those meshes; serial only)
    yield


@pytest.fixture(autouse=True)
def _collect_garbage_together():
    """After each test, every rank collects its garbage at the same point: solvers a test built
    directly (not through ``execute``, which frees them itself) hold parallel PETSc objects whose
    destruction is collective (MUMPS), so they must not be left to each rank's own collector."""
    import gc

    yield
    gc.collect()

