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
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from mpi4py import MPI

from conftest import mpiexec_cmd, nmcfx_cmd

from nmcfx.cli import main
from nmcfx.errors import InputError, NmcfxError

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


def test_corrupt_checkpoint_header_refuses_resume_in_one_line(tmp_path, capsys):
    cfg = _config(tmp_path, TWO_STEPS)
    out = tmp_path / "run"
    assert main(["run", str(cfg), "-o", str(out), "-q"]) == 0
    state = out / "checkpoint" / "state.json"
    state.write_text(state.read_text()[:40])
    before = _snapshot(out)
    capsys.readouterr()
    assert main(["run", str(cfg), "-o", str(out), "-q", "--resume"]) == 2
    _one_error_line(capsys, "--resume", "corrupt")
    assert _snapshot(out) == before


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


INJECT_RANK0_FAILURE = """
import sys
from mpi4py import MPI
from nmcfx.solver import outputs
original = outputs.RunOutputs.record
def record(self, sim, rec):
    original(self, sim, rec)
    if MPI.COMM_WORLD.rank == 0 and len(sim.history) == 4:
        raise OSError(28, "No space left on device", "timeseries.csv")
outputs.RunOutputs.record = record
from nmcfx.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_mpi_failure_on_rank_0_only_mid_run_ends_the_job(tmp_path):
    """Rank 0 fails inside the time loop while rank 1 waits in the next collective: the
    CLI's last resort prints the line and aborts the job within seconds."""
    (tmp_path / "inject.py").write_text(INJECT_RANK0_FAILURE)
    cfg = _config(tmp_path)
    proc, wall = _mpirun([sys.executable, "inject.py", "run", str(cfg), "-o", "out", "-q"], tmp_path)
    assert proc.returncode != 0
    assert "nmcfx: error: timeseries.csv: No space left on device (rank 0 of 2" in proc.stderr, proc.stderr[-2000:]
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
# Kept by the solver's owner together with the time loop and checkpoint format (issue 13,
# items 1-3); they belong here so that every fault stays covered in one module:
#   * SIGINT during a solve (`nmcfx run … & kill -INT`): exit 130 within seconds, resumable;
#     serially and under `mpiexec -n 2`;
#   * kill + --resume at several points for each step type (inside a step, inside a GITT
#     sequence after its stop condition, during a hold, Butler–Volmer potential):
#     timeseries.csv, steps.csv (step capacity), summary.json and fields equal the
#     uninterrupted run;
#   * each corruption of the checkpoint (truncated/garbage state.json, "t": NaN,
#     missing/truncated rank0.npz or observers.npz) → one line naming it, nothing written.
