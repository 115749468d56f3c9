"""Shared machinery of the paper-reproduction studies.

A study is a list of *cases* (one simulation config each), run like the cases of a
parameter sweep: each config becomes a :class:`nmcfx.spec.RunSpec` and runs through
``nmcfx.run`` (with the study's observers, e.g. a θ-map recorder) into
``OUT/cases/<key>/`` (``timeseries.csv``, ``steps.csv``, ``metadata.json``,
``summary.json`` as for ``nmcfx run``, plus ``fields.npz`` with θ maps when asked). The
case is marked finished by ``case.json`` (or ``error.json``), written last and atomically
by the sweep store (:class:`nmcfx.sweep.store.SweepDir`) with the spec's digest — the
config *and* the contents of the files it reads — so a re-run skips every case whose
config and tables are unchanged, an interrupted study resumes where it stopped and never
loses a finished case, and a changed CSV table runs its cases again. The study then
writes its figure(s), a CSV of the numbers behind them and ``study.json`` (configs,
package versions, MPI size, git revision, wall times) into ``OUT/``.

Everything is collective: run the scripts serially or under ``mpiexec -n N``; rank 0
prints and writes.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from mpi4py import MPI  # noqa: F401  (before dolfinx)

import numpy as np

from nmcfx.solver.outputs import write_json  # noqa: E402  (after mpi4py)

DEFAULT_ROOT = Path("runs") / "studies"
#: Outputs of the solver runs: no VTX fields, no per-case figures, no progress bar, no
#: snapshots (the studies draw their own figures; numbers go to CSV).
QUIET_OUTPUT = {"fields": "none", "figures": False, "progress": False, "snapshot_times_min": []}


# ----------------------------------------------------------------------------- CLI
def parse_args(name: str, description: str, argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"python studies/{name}.py", description=description)
    p.add_argument("-o", "--output", metavar="DIR", help=f"output directory (default: {DEFAULT_ROOT / name})")
    p.add_argument("--quick", action="store_true", help="coarse meshes and fewer cases (smoke test, seconds)")
    p.add_argument("--force", action="store_true", help="re-run every case even if its results exist")
    args = p.parse_args(argv)
    args.output = Path(args.output) if args.output else DEFAULT_ROOT / name
    guard_script_entry(name)
    return args


def guard_script_entry(name: str) -> None:
    """When ``studies/<name>.py`` runs as a script (serially or under ``mpiexec``), an error that
    reaches the top ends the whole job with one line instead of leaving other ranks waiting.

    A user error prints ``python studies/<name>.py: error: …`` (exit status 2), a bug its
    traceback (status 1), Ctrl-C a note that finished cases are kept (130); if some ranks are
    still busy after :data:`nmcfx.parallel.AGREE_WAIT_S` seconds, ``MPI_Abort`` ends them
    (:class:`nmcfx.parallel.ErrorGuard`). Collective (all ranks parse their arguments first);
    does nothing when a study's ``main`` is called as a function (tests).
    """
    if Path(sys.argv[0]).stem != name or getattr(sys.excepthook, "nmcfx_study", None) == name:
        return
    from nmcfx.errors import NmcfxError
    from nmcfx.parallel import ErrorGuard, describe_os_error

    guard = ErrorGuard(MPI.COMM_WORLD)
    previous = sys.excepthook
    prog = f"python studies/{name}.py"

    def hook(kind, exc, tb):
        if issubclass(kind, NmcfxError):
            line, code = f"{prog}: error: {exc}", 2
        elif issubclass(kind, (OSError, UnicodeDecodeError)):
            line, code = f"{prog}: error: {describe_os_error(exc)}", 2
        elif issubclass(kind, KeyboardInterrupt):
            line, code = f"{prog}: interrupted; finished cases are kept, run it again to continue", 130
        else:  # a bug: its traceback
            previous(kind, exc, tb)
            line, code = None, 1
        raise SystemExit(guard.fail(line, code))

    hook.nmcfx_study = name
    sys.excepthook = hook


def config_digest(cfg: dict) -> str:
    """Hash of a plain dict of settings that is not a run config (the twin calibration's case
    settings); a run config's identity is its :attr:`nmcfx.spec.RunSpec.digest`."""
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]


def case_spec(key: str, cfg: dict):
    """The run specification of a study case (relative paths resolve from the working
    directory, as for ``nmcfx run``); validated when it runs (``prepare``)."""
    from nmcfx.spec import RunSpec

    return RunSpec(cfg, base_dir=".", name=key, validate=False)


def finished_case(store, key: str, digest: str, maps: bool, say) -> bool:
    """Whether case ``key`` finished with this digest and its files are whole (rank 0)."""
    if store.state(key, digest).state != "done":
        return False
    problem = case_data_problem(store.case_dir(key), maps)
    if problem:
        say(f"results incomplete ({problem}); running it again")
    return not problem


# ----------------------------------------------------------------------------- results
@dataclass
class CaseResult:
    """What a finished (or failed) case left on disk; identical on all ranks."""

    key: str
    config: dict
    directory: Path
    summary: dict = field(default_factory=dict)
    series: dict = field(default_factory=dict)  # timeseries.csv columns → arrays
    steps: list = field(default_factory=list)  # steps.csv rows (dicts, numbers parsed)
    maps: dict = field(default_factory=dict)  # fields.npz content (2D θ maps), if recorded
    wall_s: float = math.nan
    skipped: bool = False
    error: str | None = None


def read_csv_columns(path: Path) -> dict:
    if not path.is_file():
        return {}
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return {}
    head, body = rows[0], rows[1:]
    out = {}
    for j, name in enumerate(head):
        col = [r[j] for r in body if j < len(r)]
        try:
            out[name] = np.array([float(v) for v in col])
        except ValueError:
            out[name] = np.array(col, dtype=object)
    return out


def read_csv_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        for k, v in r.items():
            try:
                r[k] = float(v)
            except (TypeError, ValueError):
                pass
    return rows


def write_csv(path: Path, header: list[str], rows) -> None:
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for r in rows:
            w.writerow([_fmt(v) for v in r])
    tmp.replace(path)


def _fmt(v):
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.10g}" if math.isfinite(v) else "nan"
    if isinstance(v, np.integer):
        return int(v)
    return v




def case_data_problem(casedir: Path, maps: bool = False) -> str | None:
    """What is missing or broken in a finished case's files (None if they are complete).

    ``case.json`` marks a case finished, but its data files can still be lost or cut short
    afterwards (copied partly, disk full, edited); such a case is run again rather than
    read half. Checks ``summary.json`` and ``metadata.json`` (valid JSON objects),
    ``timeseries.csv`` and ``steps.csv`` (a header, at least one row, every row complete and
    numeric where the header says so), and ``fields.npz`` when θ maps are needed.
    """
    casedir = Path(casedir)
    docs = {}
    for name in ("summary.json", "metadata.json"):
        try:
            docs[name] = json.loads((casedir / name).read_text(encoding="utf-8"))
            if not isinstance(docs[name], dict):
                return f"{name} is not a JSON object"
        except FileNotFoundError:
            return f"{name} is missing"
        except (OSError, ValueError):
            return f"{name} is truncated or corrupt"
    text_columns = {"timeseries.csv": (), "steps.csv": ("label", "description", "reason")}
    for name, text in text_columns.items():
        path = casedir / name
        if not path.is_file():
            return f"{name} is missing"
        try:
            with open(path, newline="", encoding="utf-8") as fh:
                rows = list(csv.reader(fh))
        except (OSError, UnicodeDecodeError, csv.Error):
            return f"{name} is unreadable"
        if len(rows) < 2:
            return f"{name} has no data rows"
        head = rows[0]
        numeric = [j for j, col in enumerate(head) if col not in text]
        for lineno, row in enumerate(rows[1:], start=2):
            if len(row) != len(head):
                return f"{name} line {lineno} has {len(row)} of {len(head)} columns (truncated?)"
            try:
                [float(row[j]) for j in numeric]
            except ValueError:
                return f"{name} line {lineno} is not numeric (truncated?)"
        # the summary knows how many rows there must be: one per accepted step (+ t = 0), one per protocol step
        summary = docs["summary.json"]
        expected = (summary.get("steps", -2) + 1 if name == "timeseries.csv"
                    else len(summary.get("protocol_steps", [None] * (len(rows) - 1))))
        if len(rows) - 1 != expected:
            return f"{name} has {len(rows) - 1} rows, summary.json says {expected} (truncated?)"
    if maps:
        try:
            with np.load(casedir / "fields.npz", allow_pickle=False) as z:
                for key in ("points", "triangles", "theta"):
                    z[key]
        except FileNotFoundError:
            return "fields.npz is missing"
        except Exception:  # noqa: BLE001 - zip/npz errors come in many types
            return "fields.npz is truncated or corrupt"
    return None


# ----------------------------------------------------------------------------- θ maps
class FieldRecorder:
    """Simulation observer: θ on the mesh vertices (gathered on rank 0) at the snapshot
    times and, optionally, at the end of every protocol step. 2D meshes only.

    Also keeps the outline of every boundary sector (``ParticleMesh.sector_outline``).
    """

    def __init__(self, at_step_ends: bool = False):
        self.at_step_ends = at_step_ends
        self.labels: list[str] = []
        self.times: list[float] = []
        self.values: list[np.ndarray] = []

    def state(self) -> dict:  # checkpoint hook: nothing to restore (a case restarts from scratch)
        return {}

    def start(self, sim, restore=None):  # noqa: ARG002
        from dolfinx import fem

        sv = sim.solver
        p = sv.particle
        if p.dim != 2:
            raise NotImplementedError("θ maps are drawn for 2D cross-sections only")
        self.comm = comm = sv.comm
        self.V1 = fem.functionspace(sv.mesh, ("Lagrange", 1))
        self.f1 = fem.Function(self.V1) if sv.degree != 1 else None
        im = self.V1.dofmap.index_map
        n_owned = im.size_local
        self._n_owned = n_owned
        self._gidx = im.local_to_global(np.arange(n_owned, dtype=np.int32))
        xy = self.V1.tabulate_dof_coordinates()[:n_owned, :2]
        n_cells = sv.mesh.topology.index_map(2).size_local
        local_cells = self.V1.dofmap.list[:n_cells]
        all_idx = im.local_to_global(np.arange(n_owned + im.num_ghosts, dtype=np.int32))
        tris = all_idx[local_cells]
        got = comm.gather((self._gidx, xy, tris), root=0)
        self.outlines = {name: p.sector_outline(name) for name in p.sectors}
        self.sector_names = list(p.sectors)
        if comm.rank == 0:
            n = im.size_global
            self.points = np.zeros((n, 2))
            for g, x, _ in got:
                self.points[g] = x
            self.triangles = np.concatenate([t for _, _, t in got]).astype(np.int64)

    def _grab(self, sim, label: str):
        sv = sim.solver
        if self.f1 is not None:
            self.f1.interpolate(sv.theta)
            arr = self.f1.x.array
        else:
            arr = sv.theta.x.array
        got = self.comm.gather((self._gidx, arr[: self._n_owned].copy()), root=0)
        if self.comm.rank == 0:
            vals = np.zeros(len(self.points))
            for g, v in got:
                vals[g] = v
            self.labels.append(label)
            self.times.append(sim.t)
            self.values.append(vals)

    def record(self, sim, rec):
        pass

    def snapshot(self, sim, t):
        self._grab(sim, f"t={t / 60:g} min")

    def step_end(self, sim, info):
        if self.at_step_ends:
            self._grab(sim, f"end of step {info['index']}")

    def finish(self, sim):
        pass

    def save(self, path: Path):
        """Write ``fields.npz`` (rank 0)."""
        if self.comm.rank != 0:
            return
        data = {"points": self.points, "triangles": self.triangles, "times_s": np.array(self.times),
                "labels": np.array(self.labels), "theta": np.array(self.values),
                "sector_names": np.array(self.sector_names)}
        for name, line in self.outlines.items():
            data[f"outline:{name}"] = line
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez_compressed(tmp, **data)
        tmp.replace(path)


def load_maps(path: Path) -> dict:
    if not path.is_file():
        return {}
    with np.load(path, allow_pickle=False) as z:
        out = {k: z[k] for k in z.files if not k.startswith("outline:")}
        out["outlines"] = {k.split(":", 1)[1]: z[k] for k in z.files if k.startswith("outline:")}
    return out


# ----------------------------------------------------------------------------- running
class Study:
    """Runs the cases of one study into ``outdir`` (resumable) and keeps their results."""

    def __init__(self, name: str, args: argparse.Namespace, comm=None):
        self.name = name
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.outdir = Path(self.comm.bcast(str(args.output), root=0))
        self.quick = bool(args.quick)
        self.force = bool(getattr(args, "force", False))
        self.results: dict[str, CaseResult] = {}
        self.t0 = time.perf_counter()
        self._n_cases = None
        from nmcfx.parallel import run_on_root
        from nmcfx.paths import check_output_dir

        def make_dirs():  # a bad -o is one line on every rank
            check_output_dir(self.outdir, "--output")
            (self.outdir / "cases").mkdir(parents=True, exist_ok=True)

        run_on_root(self.comm, make_dirs, field="--output")

    # -- printing (rank 0)
    def say(self, *msg):
        if self.comm.rank == 0:
            print(f"[{self.name}]", *msg, flush=True)

    def plan(self, n_cases: int):
        self._n_cases = n_cases
        self.say(f"{n_cases} case(s){' (quick)' if self.quick else ''} -> {self.outdir}/ on {self.comm.size} rank(s)")

    # -- one case
    def case(self, key: str, cfg: dict, *, maps: bool = False, maps_at_step_ends: bool = False,
             describe: str = "", recorder=None) -> CaseResult:
        """Run (or reload) one case. ``recorder``: an observer with ``save(path)`` that records the
        maps itself (instead of the θ-map :class:`FieldRecorder`); saved as ``fields.npz``."""
        from nmcfx.sweep.store import SweepDir

        comm = self.comm
        store = SweepDir(self.outdir)
        casedir = store.case_dir(key)
        spec = case_spec(key, cfg)
        i = len(self.results) + 1
        tag = f"case {i}/{self._n_cases or '?'} {key}"
        done = digest = None
        if comm.rank == 0:
            digest = spec.digest  # the config and the bytes of the files it reads (rank 0 reads them)
            done = not self.force and finished_case(store, key, digest, maps or maps_at_step_ends,
                                                    lambda m: self.say(f"{tag}: {m}"))
        done = comm.bcast(done, root=0)
        if done:
            res = self._load(key, cfg, casedir, skipped=True)
            self.say(f"{tag}: already done, skipped ({describe or 'results in ' + str(casedir)})")
        else:
            res = self._run(key, cfg, spec, store, digest, maps, maps_at_step_ends, tag, describe, recorder)
        self.results[key] = res
        return res

    def _run(self, key, cfg, spec, store, digest, maps, maps_at_step_ends, tag, describe, recorder=None) -> CaseResult:
        """``nmcfx.run`` into the case directory with the θ recorder; the marker is written last."""
        from nmcfx import __version__
        from nmcfx.api import run
        from nmcfx.errors import InputError, NmcfxError

        comm = self.comm
        casedir = store.case_dir(key)
        self.say(f"{tag}: running{' - ' + describe if describe else ''}")
        if comm.rank == 0:
            store.clear(key)
        comm.Barrier()
        t0 = time.perf_counter()
        rec = recorder if recorder is not None else (
            FieldRecorder(at_step_ends=maps_at_step_ends) if (maps or maps_at_step_ends) else None)
        error = None
        try:
            run(spec, casedir, comm=comm, progress=False, overwrite=True, observers=[rec] if rec else [])
        except InputError:  # a bad config stops the study with its one line
            raise
        except NmcfxError as exc:  # e.g. SolverError: keep what was written, report precisely
            error = f"{type(exc).__name__}: {exc}"
        wall = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)
        if rec is not None and getattr(rec, "comm", None) is not None:
            rec.save(casedir / "fields.npz")
        if comm.rank == 0:
            store.mark(key, {"status": "done" if error is None else "failed", "name": key, "key": key,
                             "digest": digest, "config": spec.config, "wall_s": wall, "mpi_size": comm.size,
                             "reason": error, "error": error, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                             "nmcfx_version": __version__})
        comm.Barrier()
        res = self._load(key, cfg, casedir, skipped=False)
        res.wall_s = wall
        res.error = error
        if error:
            last = res.series.get("time_s")
            when = f" at t = {last[-1] / 60:.3f} min" if last is not None and len(last) else ""
            self.say(f"{tag}: FAILED after {wall:.1f} s{when}: {error}")
        else:
            self.say(f"{tag}: done in {wall:.1f} s")
        return res

    def _load(self, key, cfg, casedir, skipped) -> CaseResult:
        data = None
        if self.comm.rank == 0:
            summary = {}
            if (casedir / "summary.json").is_file():
                summary = json.loads((casedir / "summary.json").read_text())
            wall = math.nan
            if (casedir / "case.json").is_file():
                wall = json.loads((casedir / "case.json").read_text()).get("wall_s", math.nan)
            data = (summary, read_csv_columns(casedir / "timeseries.csv"), read_csv_rows(casedir / "steps.csv"),
                    load_maps(casedir / "fields.npz"), wall)
        summary, series, steps, maps, wall = self.comm.bcast(data, root=0)
        return CaseResult(key, cfg, casedir, summary, series, steps, maps, wall, skipped)

    # -- study-level outputs
    def finish(self, description: str, extra: dict | None = None, outputs: list[str] = ()):
        """Write study.json (configs, versions, wall times) and print where things are."""
        from nmcfx import __version__
        from nmcfx.solver.run import git_revision, package_versions

        wall = time.perf_counter() - self.t0
        if self.comm.rank == 0:
            info = {
                "study": self.name,
                "description": description,
                "quick": self.quick,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "command": sys.argv,
                "mpi_size": self.comm.size,
                "nmcfx_version": __version__,
                "git_revision": git_revision(),
                "versions": package_versions(),
                "wall_time_s": wall,
                "cases": {k: {"config": r.config, "directory": str(r.directory.relative_to(self.outdir)),
                              "wall_s": r.wall_s, "skipped": r.skipped, "error": r.error}
                          for k, r in self.results.items()},
                "outputs": list(outputs),
            }
            if extra:
                info["results"] = extra
            write_json(self.outdir / "study.json", info)
        self.say(f"finished in {wall:.1f} s; outputs in {self.outdir}/: " + ", ".join([*outputs, "study.json"]))


# ----------------------------------------------------------------------------- configs
def disk_geometry(quick: bool, blocked_fraction: float = 0.0, centre_deg: float = 0.0) -> dict:
    """The 2.4 µm disk of Lun 2025; ``blocked_fraction`` of the perimeter is the sector "blocked",
    centred on the polar angle ``centre_deg`` (default: +x, the right-hand side)."""
    geom = {"shape": "disk", "diameter_um": 2.4}
    geom.update({"mesh_size_um": 0.3, "surface_mesh_size_um": 0.1} if quick
                else {"mesh_size_um": 0.06, "surface_mesh_size_um": 0.02})
    if blocked_fraction > 0:
        half = 180.0 * blocked_fraction
        geom["sectors"] = [{"name": "blocked", "start_deg": centre_deg - half, "end_deg": centre_deg + half}]
    return geom


def xu_geometry(quick: bool) -> dict:
    geom = {"shape": "xu2022"}
    geom.update({"mesh_size_um": 0.3, "surface_mesh_size_um": 0.1} if quick
                else {"mesh_size_um": 0.06, "surface_mesh_size_um": 0.02})
    return geom


def plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as pyplot

    return pyplot


def theta_panel(ax, tri, theta, outlines: dict, vmin: float, vmax: float, *, lw: float = 0.6,
                highlight: str | None = None):
    """Draw one θ map (Gouraud-shaded on the mesh) with the sector outlines; returns the image.

    ``highlight`` names a sector drawn as a thick red arc (e.g. the blocked one)."""
    handle = ax.tripcolor(tri, theta, shading="gouraud", cmap="viridis", vmin=vmin, vmax=vmax, rasterized=True)
    for name, line in outlines.items():
        if name == highlight:
            ax.plot(line[:, 0], line[:, 1], color="crimson", lw=3.0, solid_capstyle="butt")
        else:
            ax.plot(line[:, 0], line[:, 1], color="k", lw=lw)
    ax.set_aspect("equal")
    return handle


def settle_time(t: np.ndarray, y: np.ndarray, level: float, start: int = 0) -> float:
    """Time from which ``y`` stays at or below ``level`` (searching from index ``start`` on;
    linear interpolation at the last down-crossing). NaN if it is above at the last point."""
    t, y = np.asarray(t, float), np.asarray(y, float)
    above = np.flatnonzero(y[start:] > level) + start
    if above.size == 0:
        return float(t[start])
    i = int(above[-1])
    if i == len(y) - 1:
        return math.nan
    f = (y[i] - level) / (y[i] - y[i + 1])
    return float(t[i] + f * (t[i + 1] - t[i]))


def lun_cutoff_config(rate_mA_g: float, blocked_fraction: float, eta: float, quick: bool,
                      dt_max_s: float | None = None) -> dict:
    """Lun 2025 Fig. 5b/5d: 2.4 µm disk charged at ``rate_mA_g`` from θ₀ = 0.95 until the
    occupancy anywhere on the surface reaches θ = 0.2; ``blocked_fraction`` of the perimeter
    (centred on +x) carries η times the flux of the free surface (0: uniform flux)."""
    what = "no blocking" if blocked_fraction == 0 else f"{blocked_fraction:g} of the surface blocked, η = {eta:g}"
    solver = {"theta_tol": 2e-3 if quick else 5e-4}
    if dt_max_s is not None:
        solver["dt_max_s"] = float(dt_max_s)
    cfg = {
        "title": f"Lun 2025: 2.4 µm disk, {rate_mA_g:g} mA/g to the θ = 0.2 surface cut-off, {what}",
        "geometry": disk_geometry(quick, blocked_fraction),
        "protocol": {"initial_theta": 0.95,
                     "steps": [{"type": "charge", "current_mA_g": float(rate_mA_g),
                                "duration_min": 60.0 * 275.0 / rate_mA_g,
                                "until": ["theta_surface_min <= 0.2"]}]},
        "solver": solver,
        "output": dict(QUIET_OUTPUT),
    }
    if blocked_fraction > 0:
        cfg["surface"] = {"model": "flux", "blocking": {"blocked": float(eta)}}
    return cfg
