"""Fault injection (issue 13): each case gives one clear line, writes nothing new, never
destroys an earlier run, and never hangs a job under MPI.

Sections: output paths · non-UTF-8 files · run directory protection (--overwrite,
refused resumes, bad PETSc options) · late validation · mesh size and quality · studies
with damaged case data · MPI: rank-0-only failures under ``mpiexec -n 2`` (subprocesses
with a timeout, so a hang fails the test instead of blocking CI) · the collective-error
helpers. Interruption (SIGINT), kill + resume at several points and corrupted
checkpoints are kept in the section at the end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI

from conftest import mpiexec_cmd, nmcfx_cmd

from nmcfx.cli import main
from nmcfx.errors import InputError, NmcfxError
from nmcfx.solver.checkpoint import Checkpointer

GOOD = """
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
#: two steps, so the finished run leaves a checkpoint (saved at the end of step 0)
TWO_STEPS = GOOD.replace("duration_min = 1\n",
                         'duration_min = 1\n[[protocol.steps]]\ntype = "rest"\nduration_min = 1\n')


def _config(tmp_path: Path, text: str = GOOD, name: str = "case.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def _one_error_line(capsys, *fields) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("nmcfx: error: ") and "Traceback" not in err[0], err
    for f in fields:
        assert f in err[0], err
    return err[0]


def _snapshot(directory: Path) -> dict:
    """Every file under ``directory`` with its size and modification time."""
    return {str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(directory.rglob("*")) if p.is_file()}


def _read_only_dir() -> Path | None:
    """A directory nobody can write into, even root (sysfs), or None if there is none."""
    for cand in (Path("/sys"), Path("/proc")):
        try:
            with open(cand / ".nmcfx-probe", "w"):
                pass
        except OSError:
            return cand
        (cand / ".nmcfx-probe").unlink(missing_ok=True)
    return None


# ------------------------------------------------------------------------- output paths
def test_run_output_is_a_file_or_under_a_file(tmp_path, capsys):
    cfg = _config(tmp_path)
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    assert main(["run", str(cfg), "-o", str(afile), "-q"]) == 2
    _one_error_line(capsys, "--output", "is not a directory")
    assert main(["run", str(cfg), "-o", str(afile / "sub"), "-q"]) == 2
    _one_error_line(capsys, "--output", "is a file")
    assert afile.read_text() == "not a directory"


def test_run_output_read_only(tmp_path, capsys):
    ro = _read_only_dir()
    if ro is None:
        pytest.skip("no read-only directory on this machine")
    assert main(["run", str(_config(tmp_path)), "-o", str(ro / "nmcfx-run"), "-q"]) == 2
    _one_error_line(capsys, "--output", "not writable")


@pytest.mark.parametrize("option, target, message", [
    ("--csv", "afile/table.csv", "is a file"),
    ("--csv", ".", "is a directory"),
    ("--plot", "props.xyz", "unsupported file type"),
    ("--plot", "afile/props.png", "is a file"),
])
def test_materials_show_bad_output_paths(tmp_path, capsys, option, target, message):
    (tmp_path / "afile").write_text("x")
    path = tmp_path / target
    assert main(["materials", "show", "--points", "3", option, str(path)]) == 2
    _one_error_line(capsys, option, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_materials_show_read_only_and_good_plot(tmp_path, capsys):
    ro = _read_only_dir()
    if ro is not None:
        assert main(["materials", "show", "--points", "3", "--csv", str(ro / "t.csv")]) == 2
        _one_error_line(capsys, "--csv", "not writable")
    assert main(["materials", "show", "--points", "3", "--plot", str(tmp_path / "new" / "p.pdf")]) == 0
    assert (tmp_path / "new" / "p.pdf").stat().st_size > 0


def test_closing_line_names_only_files_written(tmp_path, capsys):
    cfg = _config(tmp_path)  # fields = "none", figures = false
    assert main(["run", str(cfg), "-o", str(tmp_path / "out"), "-q"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("results in") and "theta.bp" not in last and "png" not in last
    assert not list((tmp_path / "out").glob("theta*"))


# ------------------------------------------------------------------------- non-UTF-8 files
LATIN1 = "# caf\xe9 au lait\n".encode("latin-1")


def test_non_utf8_contour_csv(tmp_path, capsys):
    (tmp_path / "outline.csv").write_bytes(LATIN1 + b"x_um,y_um\n0,0\n1,0\n0,1\n")
    cfg = _config(tmp_path, GOOD.replace('shape = "disk"\ndiameter_um = 1.0',
                                         'shape = "contour"\ncontour_csv = "outline.csv"'))
    assert main(["run", str(cfg), "-o", str(tmp_path / "out"), "-q"]) == 2
    _one_error_line(capsys, "geometry.contour_csv", "not a UTF-8 text file")
    assert not (tmp_path / "out").exists()


def test_non_utf8_material_table_and_config(tmp_path, capsys):
    (tmp_path / "dli.csv").write_bytes(LATIN1 + b"theta,D_Li_cm2_s\n0.1,1e-10\n0.9,1e-11\n")
    cfg = _config(tmp_path, GOOD.replace("[output]", '[material]\ndli_csv = "dli.csv"\n[output]'))
    assert main(["run", str(cfg), "-o", str(tmp_path / "out"), "-q"]) == 2
    _one_error_line(capsys, "material.dli_csv", "not a UTF-8 text file")
    bad_toml = tmp_path / "latin.toml"
    bad_toml.write_bytes(GOOD.replace('"ok"', '"caf\xe9"').encode("latin-1"))
    assert main(["run", str(bad_toml), "-o", str(tmp_path / "out"), "-q"]) == 2
    _one_error_line(capsys, "config", "UTF-8")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------- run directory
def test_an_earlier_run_is_never_destroyed(tmp_path, capsys):
    cfg = _config(tmp_path, TWO_STEPS)
    out = tmp_path / "run"
    assert main(["run", str(cfg), "-o", str(out), "-q"]) == 0
    assert (out / "checkpoint" / "state.json").is_file() and (out / "summary.json").is_file()
    before = _snapshot(out)
    capsys.readouterr()

    # a second run into the same directory is refused before meshing
    assert main(["run", str(cfg), "-o", str(out), "-q"]) == 2
    _one_error_line(capsys, "--output", "earlier run", "--overwrite", "--resume")
    # bad PETSc options are refused at load time, before the directory is touched (issue: they deleted it)
    bad = _config(tmp_path, TWO_STEPS.replace("[output]", '[solver]\npetsc_options = { ksp_type = "foo" }\n[output]'),
                  "bad.toml")
    assert main(["run", str(bad), "-o", str(out), "-q", "--overwrite"]) == 2
    _one_error_line(capsys, "solver.petsc_options.ksp_type", "foo")
    # a refused resume (other config) writes nothing, not even metadata-resumed.json
    other = _config(tmp_path, TWO_STEPS.replace("c_rate = 1.0", "c_rate = 2.0"), "other.toml")
    assert main(["run", str(other), "-o", str(out), "-q", "--resume"]) == 2
    _one_error_line(capsys, "--resume", "config differs")
    assert _snapshot(out) == before

    # --overwrite replaces the run: the same files again, newly written
    assert main(["run", str(cfg), "-o", str(out), "-q", "--overwrite"]) == 0
    after = _snapshot(out)
    assert after.keys() == before.keys()
    assert all(after[k][1] > before[k][1] for k in ("summary.json", "timeseries.csv", "metadata.json"))


def test_refused_resume_without_checkpoint_creates_nothing(tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["run", str(_config(tmp_path)), "-o", str(out), "-q", "--resume"]) == 2
    _one_error_line(capsys, "--resume", "no checkpoint")
    assert not out.exists()


def test_unrelated_files_are_not_an_earlier_run(tmp_path):
    from nmcfx.solver.rundir import earlier_results

    (tmp_path / "notes.txt").write_text("mine")
    assert earlier_results(tmp_path) == []
    assert main(["run", str(_config(tmp_path)), "-o", str(tmp_path), "-q"]) == 0
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert "timeseries.csv" in earlier_results(tmp_path)


# ------------------------------------------------------------------------- late validation
@pytest.mark.parametrize("old, new, field, words", [
    ("c_rate = 1.0", "current_mA_g = 1e9", "protocol.steps[0].current_mA_g", "(0, 1e+06] mA/g"),
    ("c_rate = 1.0", "c_rate = 5000", "protocol.steps[0].c_rate", "(0, 1000]"),
    ("[output]", "[solver]\ntheta_tol = 0.5\n[output]", "solver.theta_tol", "(0, 0.05]"),
    ("[output]", "[solver]\nevent_tol = 0.1\n[output]", "solver.event_tol", "(0, 0.01]"),
    ("[output]", "[output]\nsnapshot_times_min = [0.5, 3]", "output.snapshot_times_min", "after the end"),
    ("[output]", "[output]\nline_profile_um = [[5, 5], [6, 6]]", "output.line_profile_um", "does not cross"),
    ("mesh_size_um = 0.2", 'mesh_size_um = 0.2\nsectors = [{name = "b", start_deg = 0, end_deg = 0.5}]',
     "geometry.sectors[0]", "cannot resolve"),
    # stop conditions that can never be met, or are met at the start
    ('type = "charge"\nc_rate = 1.0\nduration_min = 1', 'type = "rest"\nuntil = ["theta_mean <= 0.5"]',
     "protocol.steps[0].until[0]", "does not change at rest"),
    ('type = "charge"\nc_rate = 1.0\nduration_min = 1', 'type = "rest"\nuntil = ["theta_center <= 0.5"]',
     "protocol.steps[0]", "needs duration_min"),
    ("duration_min = 1", 'until = ["theta_mean >= 0.97"]', "protocol.steps[0].until[0]", "only falls"),
    ("duration_min = 1", 'until = ["abs_current_mA_g <= 1"]', "protocol.steps[0].until[0]", "fixed by the step"),
    ("duration_min = 1", 'until = ["theta_surface_min <= 0.96"]', "protocol.steps[0].until[0]",
     "already true at the start"),
    ("duration_min = 1", 'until = ["voltage_V >= 3.0"]', "protocol.steps[0].until[0]", "already true at the start"),
    ("duration_min = 1", 'until = ["voltage_V >= 4.9"]', "protocol.steps[0].until[0]", "surface-averaged V_oc"),
    ("[output]", '[solver]\npetsc_options = { snes_rtoll = 1e-8 }\n[output]', "solver.petsc_options.snes_rtoll",
     "not read"),
    ("[output]", '[solver]\npetsc_options = { snes_max_it = 2.5 }\n[output]', "solver.petsc_options.snes_max_it",
     "no integer value"),
    ("[output]", '[solver]\npetsc_options = { pc_factor_mat_solver_type = "nonexistent" }\n[output]',
     "solver.petsc_options.pc_factor_mat_solver_type", "nonexistent"),
])
def test_late_validation_is_early(tmp_path, capsys, old, new, field, words):
    assert old in GOOD
    cfg = _config(tmp_path, GOOD.replace(old, new, 1))
    out = tmp_path / "out"
    assert main(["run", str(cfg), "-o", str(out), "-q"]) == 2
    _one_error_line(capsys, field + ":", words)
    assert not out.exists()


def test_good_petsc_options_pass_unchanged():
    from nmcfx.solver.petsc_options import check_petsc_options

    opts = {"snes_rtol": 1e-9, "snes_linesearch_type": "basic", "ksp_type": "preonly", "pc_type": "lu"}
    assert check_petsc_options(opts) == opts
    with pytest.raises(InputError, match="leading '-'"):
        check_petsc_options({"-snes_rtol": 1e-9})
    with pytest.raises(InputError, match="mat_mumps_icntl_14"):  # read only at factorisation: would be ignored
        check_petsc_options({"mat_mumps_icntl_14": 50})


# ------------------------------------------------------------------------- mesh size and quality
def test_degenerate_mesh_is_refused(capsys, tmp_path):
    """The issue's case: a 2 µm disk at mesh_size_um = 0.004 meshes to 7 k mostly flat cells."""
    cfg = _config(tmp_path, GOOD.replace("diameter_um = 1.0\nmesh_size_um = 0.2",
                                         "diameter_um = 2.0\nmesh_size_um = 0.004"))
    assert main(["mesh", str(cfg)]) == 2
    _one_error_line(capsys, "geometry.min_quality:", "degenerate", "gmsh minSICN")


def test_cell_limit_and_its_override(capsys, tmp_path):
    from nmcfx.geometries import disk
    from nmcfx.geometries.limits import default_max_cells

    big = GOOD.replace("mesh_size_um = 0.2", "mesh_size_um = 0.004\nmax_cells = 20000")
    assert main(["mesh", str(_config(tmp_path, big))]) == 2
    _one_error_line(capsys, "geometry.mesh_size_um:", "geometry.max_cells = 2e+04")
    # the default fits this machine's memory; a mesh of the right size passes, one cell more does not
    assert 100_000 < default_max_cells(2) <= 20_000_000
    assert default_max_cells(2, memory_bytes=8e9) == 1_000_000 and default_max_cells(3, memory_bytes=8e9) == 400_000
    n = disk(1.0, mesh_size_um=0.2).info["num_cells"]
    assert disk(1.0, mesh_size_um=0.2, max_cells=n).info["num_cells"] == n
    with pytest.raises(InputError, match="geometry.max_cells"):
        disk(1.0, mesh_size_um=0.2, max_cells=n - 1)
    with pytest.raises(InputError, match="geometry.min_quality"):
        disk(1.0, mesh_size_um=0.2, min_quality=1.0)


# ------------------------------------------------------------------------- studies: damaged case data
def test_study_case_with_missing_or_truncated_data_is_detected(tmp_path):
    from nmcfx.studies._common import case_data_problem

    case = tmp_path / "case"
    case.mkdir()
    assert main(["run", str(_config(tmp_path, TWO_STEPS)), "-o", str(case), "-q"]) == 0
    assert case_data_problem(case) is None
    ts = case / "timeseries.csv"
    full = ts.read_text()
    lines = full.splitlines(keepends=True)
    ts.write_text("".join(lines[:-1]))  # a whole row lost
    assert "rows" in case_data_problem(case)
    ts.write_text(full[: len(full) - len(lines[-1]) // 2])  # cut mid-row
    assert "truncated" in case_data_problem(case)
    ts.write_text(full)
    assert case_data_problem(case, maps=True) == "fields.npz is missing"
    (case / "fields.npz").write_bytes(b"PK\x03\x04 cut")
    assert case_data_problem(case, maps=True) == "fields.npz is truncated or corrupt"
    (case / "summary.json").write_text((case / "summary.json").read_text()[:30])
    assert case_data_problem(case) == "summary.json is truncated or corrupt"
    (case / "summary.json").unlink()
    assert case_data_problem(case) == "summary.json is missing"


# ------------------------------------------------------------------------- MPI: a failure on one rank ends all
def _mpirun(args: list[str], cwd: Path, timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    try:
        proc = subprocess.run(mpiexec_cmd(2) + args, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"mpiexec -n 2 {' '.join(args)} hung for {timeout} s")
    return proc, time.monotonic() - t0


def test_mpi_output_directory_is_a_file(tmp_path):
    cfg = _config(tmp_path)
    (tmp_path / "afile").write_text("x")
    proc, wall = _mpirun(nmcfx_cmd() + ["run", str(cfg), "-o", "afile", "-q"], tmp_path)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("nmcfx:")]
    assert lines == ["nmcfx: error: --output: afile exists and is not a directory"], proc.stderr


def test_mpi_non_utf8_contour_csv(tmp_path):
    (tmp_path / "outline.csv").write_bytes(LATIN1 + b"x_um,y_um\n0,0\n1,0\n0,1\n")
    cfg = _config(tmp_path, GOOD.replace('shape = "disk"\ndiameter_um = 1.0',
                                         'shape = "contour"\ncontour_csv = "outline.csv"'))
    proc, wall = _mpirun(nmcfx_cmd() + ["run", str(cfg), "-o", "out", "-q"], tmp_path)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("nmcfx:")]
    assert len(lines) == 1 and "geometry.contour_csv" in lines[0] and "UTF-8" in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()


INJECT_WRITE_FAILURES = """
import sys
from mpi4py import MPI
from nmcfx.cli import main
from nmcfx.solver import checkpoint, outputs, run

comm = MPI.COMM_WORLD
FULL = OSError(28, "No space left on device")


def on_rank_0(original, when):
    # the disk fills up where rank 0 writes: after the collective work of the same call
    def failing(*args, **kwargs):
        out = original(*args, **kwargs)
        if comm.rank == 0 and when(*args):
            FULL.filename = "injected"
            raise FULL
        return out
    return failing


targets = {
    "metadata": (run, "write_json", lambda path, data: path.name == "metadata.json"),
    "summary": (run, "write_json", lambda path, data: path.name == "summary.json"),
    "timeseries": (outputs.RunOutputs, "record", lambda self, sim, rec: len(sim.history) == 4),
    "checkpoint": (checkpoint, "_write_npz", lambda path, *a: path.name.startswith("observers")),
}
for kind, (owner, name, when) in targets.items():
    original = getattr(owner, name)
    setattr(owner, name, on_rank_0(original, when))
    code = main(["run", sys.argv[1], "-o", f"out-{kind}", "-q"])
    setattr(owner, name, original)
    codes = comm.gather(code, root=0)
    if comm.rank == 0:
        print(f"{kind}: exit {codes}", flush=True)
"""


def test_mpi_write_failures_on_rank_0_end_every_rank_with_one_line(tmp_path):
    """A full disk on rank 0 while it writes metadata.json, a timeseries.csv row, the checkpoint or
    summary.json: every rank stops with the same --output line (exit 2), at once (no rank waits
    for the 5 s of the last resort)."""
    (tmp_path / "inject.py").write_text(INJECT_WRITE_FAILURES)
    cfg = _config(tmp_path, TWO_STEPS)
    proc, wall = _mpirun([sys.executable, "inject.py", str(cfg)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    kinds = ("metadata", "summary", "timeseries", "checkpoint")
    assert [ln for ln in proc.stdout.splitlines() if ": exit" in ln] == [f"{k}: exit [2, 2]" for k in kinds]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("nmcfx:")]
    assert lines == ["nmcfx: error: --output: injected: No space left on device"] * len(kinds), proc.stderr
    assert "aborting" not in proc.stderr and "Traceback" not in proc.stderr
    assert wall < 60


INJECT_UNGUARDED_FAILURE = """
import sys
from mpi4py import MPI
from nmcfx.solver import simulation
original = simulation.Simulation._record
def record(self, obs, k, dt, its):
    if MPI.COMM_WORLD.rank == 0 and len(self.history) == 4:
        raise OSError(28, "No space left on device", "somewhere.csv")
    return original(self, obs, k, dt, its)
simulation.Simulation._record = record
from nmcfx.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_mpi_failure_on_rank_0_only_mid_run_ends_the_job(tmp_path):
    """Rank 0 fails inside the time loop, outside any agreed check point, while rank 1 waits in
    the next collective: the CLI's last resort prints the line and aborts the job within seconds."""
    (tmp_path / "inject.py").write_text(INJECT_UNGUARDED_FAILURE)
    cfg = _config(tmp_path)
    proc, wall = _mpirun([sys.executable, "inject.py", "run", str(cfg), "-o", "out", "-q"], tmp_path)
    assert proc.returncode != 0
    assert "nmcfx: error: somewhere.csv: No space left on device (rank 0 of 2" in proc.stderr, proc.stderr[-2000:]
    assert wall < 60


# ------------------------------------------------------------------------- the collective-error helpers
@pytest.mark.mpi
def test_collective_errors_raise_the_same_error_on_every_rank():
    from nmcfx.parallel import collective_errors, run_on_root

    comm = MPI.COMM_WORLD
    last = comm.size - 1
    with pytest.raises(InputError) as exc:
        with collective_errors(comm, "--csv"):
            if comm.rank == last:
                open("/nonexistent-dir/x.csv", "w")
    assert str(exc.value) == "--csv: /nonexistent-dir/x.csv: No such file or directory"
    with pytest.raises(InputError, match="^geometry.x: bad$"):
        run_on_root(comm, _raise_input_error)
    assert run_on_root(comm, lambda: comm.rank) == 0
    with pytest.raises(NmcfxError, match="UnicodeDecodeError|UTF-8"):
        run_on_root(comm, lambda: b"\xe9".decode("utf-8"), field="f")
    comm.Barrier()  # nobody is left behind in a collective


def _raise_input_error():
    raise InputError("geometry.x", "bad")


# ------------------------------------------------------------------------- interruption and resume
# Kill + resume at many moments (in-process: the "kill" is an exception raised at a chosen Newton
# solve, step end or checkpoint commit, leaving on disk exactly what a killed process leaves),
# Ctrl-C (in-process, and `nmcfx run` under `mpiexec -n 2` with real signals), corrupted
# checkpoints, and the cost of a checkpoint as the run grows. The Butler–Volmer particle (CC,
# GITT, CV hold) and the electrode are in tests/test_resume_exact.py.

#: The flux model through every kind of step it has: a charge, a rest, a GITT sequence whose stop
#: condition ends it in pulse 2 of 5 (pulses 3-5 are skipped), a charge ended by a located
#: `until`, a rest. A 1 µm disk: ~70 steps in ~1 s, a checkpoint after every step; snes_max_it = 3
#: makes Newton fail now and then, so a resume also follows rejected steps.
RESUME = {
    "title": "flux: charge, rest, GITT ended by its condition, charge until, rest",
    "geometry": {"shape": "disk", "diameter_um": 1.0, "mesh_size_um": 0.2},
    "protocol": {"steps": [
        {"type": "charge", "c_rate": 2.0, "duration_min": 1},
        {"type": "rest", "duration_min": 1},
        {"type": "gitt", "direction": "charge", "c_rate": 2.0, "pulse_min": 0.5, "rest_min": 0.5, "pulses": 5,
         "until": ["theta_surface_min <= 0.87"]},
        {"type": "charge", "c_rate": 4.0, "until": ["theta_surface_min <= 0.75"]},
        {"type": "rest", "duration_min": 0.5}]},
    "solver": {"checkpoint_wall_s": 1e-9, "petsc_options": {"snes_max_it": 3}},
    "output": {"figures": False, "fields": "none", "progress": False, "snapshot_times_min": [0.5, 2.25, 3.1]},
}
#: protocol steps as expanded: 0 charge, 1 rest, 2-11 GITT pulse/rest 1-5, 12 charge until, 13 rest
RUN_STEPS = [0, 1, 2, 3, 4, 12, 13]  # what runs: the condition ends the GITT sequence in pulse 2 (step 4)
COMPARED = ("timeseries.csv", "steps.csv", "line_profiles.csv")


class _Kill(Exception):
    """Stands for the process being killed at this moment."""


class _Fields:
    """Observer: θ at every snapshot and every field at the end, for bitwise comparison; logs
    the Newton solves (time, records, finished steps, converged) and can kill at a step end."""

    def __init__(self, kill_at_step_end: int | None = None):
        self.snapshots, self.final, self.sim = {}, None, None
        self.kill_at_step_end = kill_at_step_end

    def start(self, sim, restore=None):  # noqa: ARG002
        self.sim = sim

    def record(self, sim, rec):
        pass

    def snapshot(self, sim, t):
        self.snapshots[t] = sim.solver.theta.x.array.copy()

    def step_end(self, sim, info):  # noqa: ARG002
        if info["index"] == self.kill_at_step_end:
            raise _Kill()  # after steps.csv has its row, before the step-end checkpoint

    def finish(self, sim):
        self.final = {f.name: f.u.x.array.copy() for f in sim.solver.problem.fields}


@contextmanager
def _solves(fields: _Fields, *, kill_at=None, sigint_at=None, log=None):
    """Count Newton solves: raise _Kill before solve ``kill_at``; Ctrl-C (on rank 0 only) during
    solve ``sigint_at``; log every solve as (t, records, finished steps, converged)."""
    from nmcfx.solver.problem import Problem

    original, count = Problem.solve, [0]

    def solve(problem):
        count[0] += 1
        if count[0] == kill_at:
            raise _Kill()
        if count[0] == sigint_at and problem.comm.rank == 0:
            os.kill(os.getpid(), signal.SIGINT)
        sim = fields.sim
        before = (sim.t, len(sim.history), len(sim.step_log))
        res = original(problem)
        if log is not None:
            log.append((*before, res.converged))
        return res

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Problem, "solve", solve)
        yield


@dataclass
class _Reference:
    base: str
    prepared: object
    summary: dict
    fields: _Fields
    solves: list  # (t, records, finished steps, converged) of every Newton solve

    def step(self, k) -> dict:
        return next(s for s in self.summary["protocol_steps"] if s["index"] == k)

    def solves_in(self, k) -> list[int]:
        """Solve numbers (from 1) made while protocol step ``k`` runs."""
        return [i + 1 for i, (_, _, done, _) in enumerate(self.solves) if done < len(RUN_STEPS)
                and RUN_STEPS[done] == k]

    def mid_step(self, k, fraction) -> int:
        s = self.step(k)
        t = s["start_time_s"] + fraction * (s["end_time_s"] - s["start_time_s"])
        return next(n for n in self.solves_in(k) if self.solves[n - 1][0] >= t)

    def locating(self, k) -> int:
        """A solve in the middle of locating step ``k``'s stop event: after the last accepted
        step before the event, neither the one that overshot nor the one that hit."""
        assert self.step(k)["reason"].startswith("reached")
        calls = self.solves_in(k)
        last = self.solves[calls[-1] - 1][:2]
        group = [n for n in calls if self.solves[n - 1][:2] == last]
        assert len(group) >= 3, group  # the overshoot, regula-falsi trial(s), the hit
        return group[len(group) // 2]


def _strip_wall(summary: dict) -> str:
    return json.dumps({k: v for k, v in summary.items() if k not in ("wall_time_s", "assembly_time_s")})


@pytest.fixture(scope="module")
def resume_reference(tmp_path_factory):
    from nmcfx.solver.run import execute, prepare

    comm = MPI.COMM_WORLD
    base = comm.bcast(str(tmp_path_factory.mktemp("resume")), root=0)
    prepared = prepare(RESUME, comm=comm)
    fields, solves = _Fields(), []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Checkpointer, "fsync", False)  # a process kill needs no fsync; ~70 saves stay fast
        with _solves(fields, log=solves):
            summary = execute(prepared, f"{base}/full", comm=comm, observers=[fields])
    ref = _Reference(base, prepared, summary, fields, solves)
    assert [s["index"] for s in summary["protocol_steps"]] == RUN_STEPS
    assert ref.step(4)["reason"] == "reached theta_surface_min <= 0.87"  # GITT pulse 2 ends the sequence
    assert not all(c for *_, c in solves)  # some Newton solves fail (and are retried)
    return ref


def _first_failed_solve(ref):
    return next(i + 1 for i, (*_, ok) in enumerate(ref.solves) if not ok)


#: where the run dies: (how, selector of the solve/step/save, mid-step kill → the step whose
#: capacity steps.csv must still count from its start)
KILL_POINTS = {
    "charge, mid-step": ("kill", lambda r: r.mid_step(0, 0.4), 0),
    "rest, mid-step": ("kill", lambda r: r.mid_step(1, 0.5), None),
    "GITT pulse 1, mid-pulse": ("kill", lambda r: r.mid_step(2, 0.5), 2),
    "GITT rest 1": ("kill", lambda r: r.mid_step(3, 0.5), None),
    "GITT pulse 2, locating its stop condition": ("kill", lambda r: r.locating(4), 4),
    "after the GITT condition, before the next charge": ("kill", lambda r: r.solves_in(12)[0], None),
    "charge until, mid-step": ("kill", lambda r: r.mid_step(12, 0.5), 12),
    "charge until, locating the event": ("kill", lambda r: r.locating(12), 12),
    "first solve of the last rest (step boundary)": ("kill", lambda r: r.solves_in(13)[0], None),
    "end of the first charge, before its checkpoint": ("step_end", lambda r: 0, 0),
    "inside a checkpoint save, torn files left": ("commit", lambda r: 30, None),
    "Ctrl-C during a failed Newton solve": ("sigint", _first_failed_solve, None),
    "Ctrl-C while an event is located": ("sigint", lambda r: r.locating(12), None),
}
#: these also run under mpiexec -n 2 (./dev test); a Ctrl-C then reaches rank 0 only
UNDER_MPI = ("GITT rest 1", "charge until, locating the event", "inside a checkpoint save, torn files left",
             "Ctrl-C while an event is located")


@pytest.mark.parametrize("where", [pytest.param(w, marks=pytest.mark.mpi) if w in UNDER_MPI else w
                                   for w in KILL_POINTS])
def test_resume_is_exact_wherever_the_run_stops(resume_reference, where):
    """Killed (or Ctrl-C'd) at ``where``, then resumed: timeseries.csv, steps.csv,
    line_profiles.csv, summary.json (but wall times), θ at every snapshot and every field at the
    end are bit-identical to the uninterrupted run."""
    from nmcfx.solver import checkpoint as ckpt
    from nmcfx.solver.run import execute

    ref, comm = resume_reference, MPI.COMM_WORLD
    how, select, mid_step = KILL_POINTS[where]
    out = Path(f"{ref.base}/{where.replace(' ', '_').replace(',', '')}")
    fields_cut, fields_resumed = _Fields(kill_at_step_end=select(ref) if how == "step_end" else None), _Fields()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Checkpointer, "fsync", False)
        if how == "commit":  # every file of the save written but state.json: then the process dies
            commits, original = [0], ckpt._write_atomic

            def dying(path, text, durable=True):
                commits[0] += 1
                if commits[0] == select(ref):
                    raise _Kill()
                return original(path, text, durable)

            mp.setattr(ckpt, "_write_atomic", dying)
        kill = {"kill_at": select(ref)} if how == "kill" else {"sigint_at": select(ref)} if how == "sigint" else {}
        with _solves(fields_cut, **kill), pytest.raises(KeyboardInterrupt if how == "sigint" else (_Kill, NmcfxError)):
            execute(ref.prepared, out, comm=comm, observers=[fields_cut])
        comm.Barrier()
        state = json.loads((out / "checkpoint" / "state.json").read_text())
        if how == "commit" and comm.rank == 0:  # what the dying save appended beyond the commit, torn
            for name in ("history.jsonl", "steps.jsonl", "series.0.profiles.f64"):
                with open(out / "checkpoint" / name, "ab") as fh:
                    fh.write(b'{"time_s": 1e9, "theta_me')
        if where.startswith("after the GITT"):
            assert state["k"] == 5 and state["skip_group"] == 2  # the boundary into the skipped pulse 3
        if mid_step is not None and how == "kill":
            assert state["k"] == mid_step and state["t_step_start"] < state["t"]  # resumes inside the step
        comm.Barrier()
        resumed = execute(ref.prepared, out, comm=comm, resume=True, observers=[fields_resumed])

    full = Path(f"{ref.base}/full")
    for name in COMPARED:
        assert (out / name).read_text() == (full / name).read_text(), name
    assert _strip_wall(resumed) == _strip_wall(ref.summary)
    assert (out / "summary.json").is_file() and (out / "metadata-resumed.json").is_file()
    # fields: θ at the snapshots taken before the checkpoint (killed run) and after (resumed run)
    snaps = {t: a for t, a in fields_cut.snapshots.items() if t <= state["t"]} | fields_resumed.snapshots
    assert sorted(snaps) == sorted(ref.fields.snapshots)
    assert all(np.array_equal(snaps[t], ref.fields.snapshots[t]) for t in snaps)
    assert all(np.array_equal(fields_resumed.final[k], v) for k, v in ref.fields.final.items())
    if mid_step is not None:  # the step's capacity counts from its start, not from the resume
        cap = next(float(r["capacity_mAh_g"]) for r in _csv_rows(out / "steps.csv") if int(r["index"]) == mid_step)
        assert cap == ref.step(mid_step)["capacity_mAh_g"]
        nominal = {0: 2.0 * 210 / 60, 2: 2.0 * 210 / 120}.get(mid_step)  # C-rate × 210 mAh/g × duration
        if nominal is not None:
            assert cap == pytest.approx(nominal, rel=1e-12)


def _csv_rows(path):
    import csv

    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))
