"""The sweep engine: sweep files, validation before anything runs, the local and mpi
backends, resumption after a kill, failures recorded without stopping, the gathered table."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import textwrap
import time

import numpy as np
import pytest

import nmcfx
from conftest import mpiexec_cmd, nmcfx_cmd
from nmcfx.cli import main
from nmcfx.errors import InputError
from nmcfx.sweep import Sweep, cases, gather, grid, load_sweep, run_sweep, sample, zipped

BASE = """
[base.geometry]
shape = "disk"
diameter_um = 1.0
mesh_size_um = 0.25
[base.protocol]
[[base.protocol.steps]]
type = "charge"
c_rate = 1.0
duration_min = 2
"""

SWEEP = """
[sweep]
name = "tiny"
metrics = ["max:d_um", "final:theta_center"]
[sweep.labels]
"material.scaling_S" = "S"
"protocol.steps[0].c_rate" = "rate"
""" + BASE + """
[[axes]]
key = "material.scaling_S"
values = [2.0, 4.0]

[[axes]]
key = "protocol.steps[0].c_rate"
linspace = [0.5, 1.5, 3]
"""

#: columns that depend on the machine, not on the inputs
TIMING = {"wall_s", "wall_time_s", "assembly_time_s", "rundir"}


def write(tmp_path, text, name="sweep.toml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def numbers(res):
    """Case name → its table numbers, without the timing columns."""
    return {r["name"]: {k: r.get(k) for k in res.numeric if k not in TIMING} for r in res.rows}


def assert_same_numbers(a, b):
    na, nb = numbers(a), numbers(b)
    assert na.keys() == nb.keys()
    for name in na:
        for k, v in na[name].items():
            w = nb[name][k]
            assert (math.isnan(v) and math.isnan(w)) or v == w, (name, k, v, w)


# ----------------------------------------------------------------------------- definition
def test_axes_expand_into_named_validated_cases(tmp_path):
    sw = load_sweep(write(tmp_path, SWEEP))
    cs = sw.cases()
    assert [c.name for c in cs] == ["S=2_rate=0.5", "S=2_rate=1", "S=2_rate=1.5",
                                    "S=4_rate=0.5", "S=4_rate=1", "S=4_rate=1.5"]
    assert cs[4].spec.get("material.scaling_S") == 4.0 and cs[4].spec.get("protocol.steps[0].c_rate") == 1.0
    assert [a.name for a in sw.axes] == ["S", "rate"]
    assert len({c.digest for c in cs}) == 6
    # a case's progress/output settings are those of a sweep (no figures, no fields, no bar)
    assert cs[0].spec.get("output") == {"progress": False, "fields": "none", "figures": False}


def test_zip_and_sampled_axes(tmp_path):
    base = nmcfx.load(write(tmp_path, BASE.replace("[base.", "["), "base.toml"))
    z = zipped({"surface.blocking.blocked": [0.3, 0.7], "geometry.sectors": [
        [{"name": "blocked", "start_deg": -45, "end_deg": 45}], [{"name": "blocked", "start_deg": -90, "end_deg": 90}]]},
        name="blocking")
    lhs = sample({"material.scaling_S": [2, 5], "protocol.steps[0].c_rate": [0.1, 1.0, "log"]}, n=8, seed=3)
    sw = Sweep(base, [z, lhs])
    cs = sw.cases()
    assert len(cs) == 16 and cs[0].name == "blocked=0.3_sectors=" + cs[0].name.split("sectors=")[1]
    assert cs[9].name.endswith("sample=1")
    S = np.array([p["material.scaling_S"] for p in lhs.points])
    rate = np.array([p["protocol.steps[0].c_rate"] for p in lhs.points])
    # Latin hypercube: one point in each of the n equal strata of every range (log for the rate)
    assert sorted(np.floor((S - 2) / 3 * 8).astype(int)) == list(range(8))
    assert sorted(np.floor(np.log(rate / 0.1) / np.log(10) * 8).astype(int)) == list(range(8))
    again = sample({"material.scaling_S": [2, 5], "protocol.steps[0].c_rate": [0.1, 1.0, "log"]}, n=8, seed=3)
    assert again.points == lhs.points  # seeded
    rnd = sample({"material.scaling_S": [2, 5]}, n=5, seed=1, method="random")
    assert all(2 <= p["material.scaling_S"] <= 5 for p in rnd.points)


BAD_SWEEPS = [
    # (replace in SWEEP, by, expected start of the one error line)
    ('key = "material.scaling_S"', 'key = "material.scalingS"', "sweep case 'scalingS=2_rate=0.5' (1/6): "
                                                                "material.scalingS: unknown key"),
    ("values = [2.0, 4.0]", "values = []", "axes[0].values: empty"),
    ("values = [2.0, 4.0]", "values = [2.0, -4.0]", "sweep case 'S=-4_rate=0.5' (4/6): material.scaling_S: must be"),
    ("linspace = [0.5, 1.5, 3]", "linspace = [0.5, 1.5, 0]", "axes[1].linspace: empty"),
    ('key = "protocol.steps[0].c_rate"', 'key = "protocol.steps[2].c_rate"', "sweep case 'S=2_c_rate=0.5' (1/6): "
                                                                            "protocol.steps[2].c_rate: index [2] out"),
    ('key = "material.scaling_S"\nvalues = [2.0, 4.0]', 'zip = { "material.scaling_S" = [2.0, 4.0], '
                                                        '"solver.theta_tol" = [1e-3] }', "axes[0]: "
                                                                                         "zipped lists"),
    ('name = "tiny"', 'name = "tiny"\nbogus = 1', "sweep: unknown key(s) ['bogus']"),
    ('[[axes]]\nkey = "material.scaling_S"', '[local]\nworkerz = 2\n\n[[axes]]\nkey = "material.scaling_S"',
     "local.workerz: unknown key"),
    ('[[axes]]\nkey = "material.scaling_S"', '[slurm]\ntime = 30\n\n[[axes]]\nkey = "material.scaling_S"',
     "slurm.time: must be a plain word"),
]


@pytest.mark.parametrize("old, new, expected", BAD_SWEEPS)
def test_bad_sweep_is_one_line_and_writes_nothing(tmp_path, capsys, old, new, expected):
    assert old in SWEEP
    path = write(tmp_path, SWEEP.replace(old, new, 1))
    out = tmp_path / "out"
    assert main(["sweep", str(path), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nmcfx: error: " + expected), err
    assert not out.exists()


def test_slurm_backend_without_sbatch_submits_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    path = write(tmp_path, SWEEP)
    assert main(["sweep", str(path), "-o", str(tmp_path / "out"), "--backend", "slurm"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sbatch not found" in err[0] and "nothing was submitted" in err[0], err
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- local backend
@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """The 2 x 3 sweep on the local backend with 2 workers (shared by the tests below)."""
    tmp = tmp_path_factory.mktemp("local")
    path = write(tmp, SWEEP)
    t0 = time.perf_counter()
    res = run_sweep(load_sweep(path), tmp / "out", backend="local", workers=2)
    return path, tmp / "out", res, time.perf_counter() - t0


def test_local_sweep_table_matches_single_runs(local_run, tmp_path):
    path, out, res, _ = local_run
    assert res.counts == {"done": 6, "failed": 0, "stale": 0, "pending": 0}
    row = next(r for r in res.rows if r["name"] == "S=4_rate=1.5")
    single = nmcfx.run(load_sweep(path).cases()[5].spec, tmp_path / "single")
    for k in ("capacity_mAh_g", "theta_center_final", "steps", "newton_iterations"):
        assert row[k] == single.summary[k], k
    assert row["max_d_um"] == np.nanmax(single.timeseries["d_um"])
    assert row["final_theta_center"] == single.timeseries["theta_center"][-1]
    # galvanostatic: capacity = rate x time, exactly, whatever S
    for r in res.rows:
        assert r["capacity_mAh_g"] == pytest.approx(r["rate"] * 210 * 2 / 60, rel=1e-9)
    # the table files: CSV with the run directories, NetCDF with the axes as dimensions
    import xarray as xr

    text = (out / "results.csv").read_text().splitlines()
    assert text[0].startswith("index,name,status,S,rate,") and "rundir" in text[0]
    assert len(text) == 7 and "cases/S=2_rate=1," in text[2]
    ds = xr.open_dataset(out / "results.nc", engine="scipy")
    assert dict(ds.sizes) == {"S": 2, "rate": 3}
    assert float(ds["capacity_mAh_g"].sel(S=4.0, rate=1.5)) == row["capacity_mAh_g"]
    assert (out / "max_d_um_rate_vs_S.png").stat().st_size > 5000
    for r in res.rows:
        assert (out / r["rundir"] / "timeseries.csv").is_file()


def test_rerun_skips_finished_cases_and_status(local_run, capsys):
    path, out, res, _ = local_run
    markers = {p: p.stat().st_mtime_ns for p in out.glob("cases/*/case.json")}
    assert len(markers) == 6
    assert main(["sweep", str(path), "-o", str(out)]) == 0
    assert "0 to run, 6 already done" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.glob("cases/*/case.json")} == markers
    assert main(["sweep", "status", str(out)]) == 0
    assert "6 case(s): 6 done, 0 failed, 0 pending" in capsys.readouterr().out


def test_changed_table_file_makes_cases_pending(tmp_path, capsys):
    from pathlib import Path

    import nmcfx.materials

    src = Path(nmcfx.materials.__file__).parent / "data" / "nmc_dli_xu2022_default.csv"
    (tmp_path / "dli.csv").write_text(src.read_text())
    text = SWEEP.replace("[base.protocol]", '[base.material]\ndli_csv = "dli.csv"\n[base.protocol]')
    text = text.replace("linspace = [0.5, 1.5, 3]", "values = [1.0]")
    path = write(tmp_path, text)
    sw = load_sweep(path)
    assert all(c.spec.files() == {"material.dli_csv": tmp_path / "dli.csv"} for c in sw.cases())
    run_sweep(sw, tmp_path / "out", workers=1)
    capsys.readouterr()
    lines = src.read_text().splitlines()  # the same file name, one D_Li value 1 % higher
    i = next(k for k, line in enumerate(lines) if line and line[0].isdigit())
    theta, d = lines[i].split(",")[:2]
    lines[i] = f"{theta},{float(d) * 1.01!r}"
    (tmp_path / "dli.csv").write_text("\n".join(lines) + "\n")
    assert main(["sweep", "status", str(tmp_path / "out")]) == 0
    msg = capsys.readouterr().out
    assert "0 done" in msg and "2 pending (2 with changed inputs)" in msg, msg


TASKS = '''
import os
from nmcfx.sweep.case import simulate

def crash_or_fail(spec, casedir, comm):
    S = spec.get("material.scaling_S")
    if S == 3.0:
        os._exit(9)          # the worker process dies
    return simulate(spec, casedir, comm)
'''


def test_failures_are_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch, capsys):
    (tmp_path / "mytasks.py").write_text(TASKS)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    text = SWEEP.replace('name = "tiny"', 'name = "tiny"\ntask = "mytasks:crash_or_fail"')
    text = text.replace("values = [2.0, 4.0]", "values = [2.0, 3.0, 4.0]")
    text = text.replace('key = "protocol.steps[0].c_rate"\nlinspace = [0.5, 1.5, 3]',
                        'key = "solver.petsc_options.snes_max_it"\nvalues = [50, 0]')
    res = run_sweep(load_sweep(write(tmp_path, text)), tmp_path / "out", workers=2)
    by = {r["name"]: r for r in res.rows}
    assert by["S=2_snes_max_it=50"]["status"] == "done" and by["S=4_snes_max_it=50"]["status"] == "done"
    # a solver failure: its one-line reason; a dead worker: only its case fails
    assert by["S=2_snes_max_it=0"]["status"] == "failed"
    assert by["S=2_snes_max_it=0"]["reason"].startswith("SolverError: time step fell below solver.dt_min_s")
    assert by["S=3_snes_max_it=50"]["status"] == "failed"
    assert by["S=3_snes_max_it=50"]["reason"].startswith("worker process died (exit code 9")
    assert res.counts["done"] == 2 and res.counts["failed"] == 4
    err = json.loads((tmp_path / "out" / "cases" / "S=4_snes_max_it=0" / "error.json").read_text())
    assert err["status"] == "failed" and "\n" not in err["reason"]
    assert not (tmp_path / "out" / "cases" / "S=4_snes_max_it=0" / "case.json").exists()
    capsys.readouterr()
    assert main(["sweep", "status", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "2 done, 4 failed, 0 pending" in out and "failed  S=3_snes_max_it=50: worker process died" in out


def test_kill_at_any_moment_loses_no_finished_case(tmp_path):
    text = SWEEP.replace("values = [2.0, 4.0]", "values = [2.0, 3.0, 4.0, 5.0]")
    path = write(tmp_path, text)
    out = tmp_path / "out"
    proc = subprocess.Popen(nmcfx_cmd() + ["sweep", str(path), "-o", str(out), "-j", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while len(list(out.glob("cases/*/case.json"))) < 3 and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the coordinator and its workers, mid-sweep
    proc.wait()
    finished = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("cases/*/case.json")}
    assert 3 <= len(finished) < 12
    for p in out.glob("cases/*/case.json"):
        assert json.loads(p.read_text())["status"] == "done"  # complete, never half-written
    res = run_sweep(load_sweep(path), out, workers=2)
    assert res.counts["done"] == 12
    for name, mtime in finished.items():  # finished cases were not run again
        assert (out / "cases" / name / "case.json").stat().st_mtime_ns == mtime


# ----------------------------------------------------------------------------- other backends
def test_mpi_backend_matches_local(local_run, tmp_path):
    path, _, local, _ = local_run
    proc = subprocess.run(mpiexec_cmd(2) + nmcfx_cmd() + ["sweep", str(path), "-o", str(tmp_path / "mpi"),
                                                           "--backend", "mpi"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "[group 0]" in proc.stdout and "[group 1]" in proc.stdout  # both ranks ran cases
    res = gather(tmp_path / "mpi")
    assert res.counts["done"] == 6
    assert_same_numbers(res, local)
    assert not (tmp_path / "mpi" / ".claims").exists()
    # one group of two ranks: every case runs distributed, and agrees with the serial run
    proc = subprocess.run(mpiexec_cmd(2) + nmcfx_cmd() + ["sweep", str(path), "-o", str(tmp_path / "mpi2"),
                                                           "--backend", "mpi", "--ranks-per-case", "2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res2 = gather(tmp_path / "mpi2")
    assert res2.counts["done"] == 6 and set(res2.column("mpi_size")) == {2}
    for a, b in zip(res2.rows, local.rows):
        for k in ("capacity_mAh_g", "theta_center_final", "theta_mean_final"):
            assert a[k] == pytest.approx(b[k], rel=1e-8), (a["name"], k)


def test_dask_backend_matches_local(local_run, tmp_path):
    pytest.importorskip("distributed", reason="dask-jobqueue not installed (pip install 'nmcfx[cluster]')")
    path, _, local, _ = local_run
    text = path.read_text() + '\n[dask]\ncluster = "local"\nworkers = 2\n'
    res = run_sweep(load_sweep(write(tmp_path, text)), tmp_path / "dask", backend="dask")
    assert res.counts["done"] == 6
    assert_same_numbers(res, local)


def test_dask_jobqueue_settings_make_a_batch_script():
    pytest.importorskip("dask_jobqueue", reason="dask-jobqueue not installed (pip install 'nmcfx[cluster]')")
    from nmcfx.sweep.jobqueue import make_cluster

    cluster = make_cluster({"cluster": "pbs", "cores": 4, "memory": "8GB", "walltime": "01:00:00",
                            "job_script_prologue": ["module load apptainer"]})
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "#PBS" in script and "walltime=01:00:00" in script and "module load apptainer" in script
    assert "--nworkers 4" in script and "--nthreads 1" in script  # one thread per case process
    with pytest.raises(InputError, match="dask.cluster"):
        make_cluster({"cluster": "torque5"})


def test_python_api_cases_axis_and_plot(local_run, tmp_path):
    path, out, res, _ = local_run
    from nmcfx.sweep import plot_metric

    png = plot_metric(res, "capacity_mAh_g", "rate", "S", tmp_path / "cap.png")
    assert png.stat().st_size > 5000
    with pytest.raises(InputError, match="not a swept key"):
        plot_metric(res, "capacity_mAh_g", "rate", "eta")
    assert main(["sweep", "plot", str(out), "--metric", "theta_center_final", "--x", "S", "--y", "rate"]) == 0
    assert (out / "theta_center_final_rate_vs_S.png").stat().st_size > 5000
    sw = Sweep(load_sweep(path).base, [cases({"slow": {"protocol.steps[0].c_rate": 0.5},
                                              "fast": {"protocol.steps[0].c_rate": 1.5}})])
    assert [c.name for c in sw.cases()] == ["slow", "fast"]
    with pytest.raises(InputError, match="empty"):
        grid("material.scaling_S", [])


PARAM_TASKS = '''
def square(params, casedir, comm, offset=0.0):
    x = params.get("x")
    (casedir / "note.txt").write_text(repr(x))
    return {"y": x * x + offset, "rank_count": comm.size}
'''


def test_params_sweep_with_a_custom_task_in_this_process(tmp_path, monkeypatch):
    """What a study with its own mesh (or the calibration) uses: free parameters + its task."""
    from nmcfx.spec import Params

    (tmp_path / "paramtasks.py").write_text(PARAM_TASKS)
    monkeypatch.syspath_prepend(str(tmp_path))
    sw = Sweep(Params({"x": 0.0, "model": "demo"}), [grid("x", [1.0, 2.0, 3.0])], name="squares",
               task="paramtasks:square", task_options={"offset": 0.5})
    res = run_sweep(sw, tmp_path / "out", backend="mpi")  # no mpiexec: the cases run in this process
    assert list(res.column("y")) == [1.5, 4.5, 9.5]
    assert (tmp_path / "out" / "y_vs_x.png").stat().st_size > 5000  # one axis: the metric against it
    note = tmp_path / "out" / "cases" / "x=2" / "note.txt"
    assert note.read_text() == "2.0"
    mtime = note.stat().st_mtime_ns
    again = run_sweep(sw, tmp_path / "out", backend="mpi")
    assert list(again.column("y")) == [1.5, 4.5, 9.5] and note.stat().st_mtime_ns == mtime  # skipped
    other = Sweep(sw.base, sw.axes, name="squares", task="paramtasks:square", task_options={"offset": 1.0})
    assert list(run_sweep(other, tmp_path / "out", backend="mpi").column("y")) == [2.0, 5.0, 10.0]  # options count
    changed = Sweep(Params({"x": 0.0, "model": "other"}), [grid("x", [2.0])], name="squares",
                    task="paramtasks:square", task_options={"offset": 0.5})
    run_sweep(changed, tmp_path / "out", backend="mpi")
    assert note.stat().st_mtime_ns != mtime  # another base parameter: another digest, run again
    # a sampled axis over two keys: the table, the dataset (one "sample" dimension), a scatter figure
    from nmcfx.sweep import plot_metric

    lhs = Sweep(Params({"x": 0.0, "z": 0.0}), [sample({"x": [0, 1], "z": [0, 1]}, n=6, seed=2)], name="lhs",
                task="paramtasks:square")
    res = run_sweep(lhs, tmp_path / "lhs", backend="mpi")
    ds = res.dataset()
    assert dict(ds.sizes) == {"sample": 6}
    np.testing.assert_array_equal(ds["y"].values, ds["x"].values ** 2)
    assert plot_metric(res, "y", "x", "z").stat().st_size > 5000


def test_sweep_from_complete_configs(tmp_path):
    cfg = {"geometry": {"shape": "disk", "diameter_um": 1.0, "mesh_size_um": 0.25},
           "protocol": {"steps": [{"type": "charge", "c_rate": 1.0, "duration_min": 2}]},
           "output": {"figures": False, "fields": "none", "progress": False}}
    fast = json.loads(json.dumps(cfg))
    fast["protocol"]["steps"][0]["c_rate"] = 2.0
    sw = Sweep.from_configs({"slow": cfg, "fast": fast}, name="two")
    assert [c.name for c in sw.cases()] == ["slow", "fast"] and sw.cases()[1].spec.config == fast
    res = run_sweep(sw, tmp_path / "out", backend="mpi")
    cap = dict(zip([r["name"] for r in res.rows], res.column("capacity_mAh_g")))
    assert cap["fast"] == pytest.approx(2 * cap["slow"], rel=1e-9)
