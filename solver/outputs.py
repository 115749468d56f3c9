"""What a run leaves in its directory.

    timeseries.csv     one row per accepted step (columns: StepRecord fields)
    steps.csv          one row per protocol step: end time, reason, state at its end
    line_profiles.csv  θ along the line cut at every accepted step (kymograph data)
    theta.bp/          θ fields at the snapshot times (ADIOS2 VTX, open in ParaView)
    theta_maps.png, center_trace.png, kymograph.png
    metadata.json      resolved config, versions, MPI size, git revision (written first)
    summary.json       headline numbers (written last)

Only rank 0 writes files; fields are written collectively. The figures are not drawn by ``finish``:
it leaves ``figure_job`` (rank 0), a call holding their data only, which :func:`.run.execute` makes
once the run's solvers are freed (matplotlib's memory then does not come on top of theirs).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path

import numpy as np

from nmcfx.errors import InputError

from .simulation import StepRecord
from .rundir import resumed_part
from .transport import PointProbe, reduce_array


@dataclass(frozen=True)
class OutputSettings:
    snapshot_times_min: tuple[float, ...] | None = None  # None: 6 evenly spaced over the protocol
    fields: str = "vtx"  # "vtx" | "xdmf" | "none"
    figures: bool = True
    line_profile_um: tuple[tuple[float, ...], tuple[float, ...]] | None = None  # None: through centre along x
    profile_points: int = 121
    image_pixels: int = 120
    progress: bool = True

    @classmethod
    def from_dict(cls, d: dict | None) -> "OutputSettings":
        d = dict(d or {})
        names = set(cls.__dataclass_fields__)
        extra = set(d) - names
        if extra:
            raise InputError("output", f"unknown key(s) {sorted(extra)}; allowed: {sorted(names)}")
        out = {}
        if "snapshot_times_min" in d:
            v = d["snapshot_times_min"]
            if not isinstance(v, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
                raise InputError("output.snapshot_times_min", "must be a list of times in minutes")
            if any((not math.isfinite(x)) or x < 0 for x in v):
                raise InputError("output.snapshot_times_min", f"times must be >= 0 min, got {v}")
            out["snapshot_times_min"] = tuple(sorted(float(x) for x in v))
        if "fields" in d:
            if d["fields"] not in ("vtx", "xdmf", "none"):
                raise InputError("output.fields", f"must be 'vtx', 'xdmf' or 'none', got {d['fields']!r}")
            out["fields"] = d["fields"]
        for key in ("figures", "progress"):
            if key in d:
                if not isinstance(d[key], bool):
                    raise InputError(f"output.{key}", f"must be true or false, got {d[key]!r}")
                out[key] = d[key]
        for key, lo, hi in (("profile_points", 2, 10000), ("image_pixels", 16, 4000)):
            if key in d:
                v = d[key]
                if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                    raise InputError(f"output.{key}", f"must be an integer in [{lo}, {hi}], got {v!r}")
                out[key] = v
        if "line_profile_um" in d:
            v = d["line_profile_um"]
            ok = (isinstance(v, list) and len(v) == 2
                  and all(isinstance(p, list) and len(p) in (2, 3) for p in v)
                  and all(isinstance(x, (int, float)) and math.isfinite(x) for p in v for x in p))
            if not ok:
                raise InputError("output.line_profile_um", "must be [[x0, y0], [x1, y1]] in µm")
            out["line_profile_um"] = (tuple(map(float, v[0])), tuple(map(float, v[1])))
        return cls(**out)

    def to_dict(self) -> dict:
        return asdict(self)


class RunOutputs:
    """Simulation observer that writes the run directory (see module docstring)."""

    COLUMNS = [f.name for f in fields(StepRecord)]

    def __init__(self, outdir: Path, settings: OutputSettings, comm, *, title: str = ""):
        self.outdir = Path(outdir)
        self.settings = settings
        self.comm = comm
        self.root = comm.rank == 0
        self.title = title
        self._csv = None
        self._steps_csv = None
        self._vtx = None
        self._bar = None
        self.images: list[tuple[float, np.ndarray]] = []
        #: after finish (rank 0): draws the figures; it holds their data only, not the solver
        self.figure_job: Callable[[], None] | None = None
        self.profile_times: list[float] = []
        self.profiles: list[np.ndarray] = []

    # -------------------------------------------------------------- observer API
    def appended_state(self) -> dict:
        """What a checkpoint needs to rebuild the figures after a resume (rank 0 data): lists that
        only grow, so each save appends the new rows (the line profile of every step)."""
        if not self.root:
            return {}
        return {"image_times": [t for t, _ in self.images], "images": [img for _, img in self.images],
                "profile_times": self.profile_times, "profiles": self.profiles}

    def start(self, sim, restore: list | None = None):
        sv = sim.solver
        mesh = sv.mesh
        p = sim.solver.particle
        # geometry of the probes: a pixel grid in the (x, y) plane through the centroid
        # and a line cut (default: along x through the centroid, spanning the particle)
        x = mesh.geometry.x
        lo = reduce_array(sv.comm, x.min(axis=0), _min_op())
        hi = reduce_array(sv.comm, x.max(axis=0), _max_op())
        c = np.array(p.centroid, dtype=float)
        n = self.settings.image_pixels
        span = hi[:2] - lo[:2]
        pad = 0.04 * span.max()
        nx = n if span[0] >= span[1] else max(8, int(n * span[0] / span[1]))
        ny = n if span[1] >= span[0] else max(8, int(n * span[1] / span[0]))
        gx = np.linspace(lo[0] - pad, hi[0] + pad, nx)
        gy = np.linspace(lo[1] - pad, hi[1] + pad, ny)
        X, Y = np.meshgrid(gx, gy)
        pts = np.column_stack([X.ravel(), Y.ravel(), np.full(X.size, c[2] if len(c) > 2 else 0.0)])
        self.extent = (gx[0], gx[-1], gy[0], gy[-1])
        self.grid_shape = X.shape
        # the pixel grid only serves the θ-map figure
        self._image_probe = PointProbe(mesh, pts, allow_outside=True) if self.settings.figures else None
        if self.settings.line_profile_um is not None:
            a, b = (np.array(q + (0.0,) * (3 - len(q))) for q in self.settings.line_profile_um)
        else:
            a = np.array([lo[0], c[1], c[2] if len(c) > 2 else 0.0])
            b = np.array([hi[0], c[1], c[2] if len(c) > 2 else 0.0])
        s = np.linspace(0.0, 1.0, self.settings.profile_points)
        line = a[None, :] + s[:, None] * (b - a)[None, :]
        self._line_probe = PointProbe(mesh, line, allow_outside=True)
        inside = self._line_probe.inside
        if inside.sum() < 2:
            raise InputError("output.line_profile_um", "the line cut does not cross the particle")
        self.line_s = s[inside] * np.linalg.norm(b - a)
        self.line_s -= self.line_s[0]
        self._line_inside = inside
        # blocked sectors (η < 1) are outlined on the θ maps (collective: all ranks call)
        self.outlines = []
        if self.settings.figures and hasattr(p, "sector_outline"):
            for name, eta in sim.sector_weights.items():
                if eta < 1.0:
                    xy = p.sector_outline(name)
                    self.outlines.append((xy[:, 0], xy[:, 1]))
        mine = next((r for r, o in zip(restore or [], sim.observers) if o is self), None)
        if mine:
            self.images = [(float(t), img) for t, img in zip(mine["image_times"], mine["images"])]
            self.profile_times = [float(t) for t in mine["profile_times"]]
            self.profiles = list(mine["profiles"])
        # field files cannot be appended to: a resumed run writes its snapshots to a new file
        stem = "theta" + resumed_part(self.outdir, "theta", restore is not None)
        if self.settings.fields == "vtx":
            import dolfinx.io

            self._vtx = dolfinx.io.VTXWriter(sv.comm, str(self.outdir / f"{stem}.bp"), [sv.theta], engine="BP4")
        elif self.settings.fields == "xdmf":
            import dolfinx.io

            self._vtx = dolfinx.io.XDMFFile(sv.comm, str(self.outdir / f"{stem}.xdmf"), "w")
            self._vtx.write_mesh(mesh)
        if self.root:
            self._csv_file = open(self.outdir / "timeseries.csv", "w", newline="")
            self._csv = csv.writer(self._csv_file)
            self._csv.writerow(self.COLUMNS)
            self._steps_file = open(self.outdir / "steps.csv", "w", newline="")
            self._steps_csv = csv.writer(self._steps_file)
            self._steps_csv.writerow(["index", "label", "description"] + list(self.STEP_COLUMNS))
            if restore is not None:  # rewrite what the checkpoint already holds
                for rec in sim.history:
                    self._csv.writerow([_fmt(getattr(rec, c)) for c in self.COLUMNS])
                for info in sim.step_log:
                    self._write_step(info)
            total = sim.protocol.nominal_duration_s
            if self.settings.progress:
                from tqdm import tqdm

                self._bar = tqdm(total=round(total / 60, 2) if total else None, unit="min", desc="simulated",
                                 bar_format="{l_bar}{bar}| {n:.1f}/{total_fmt} min [{elapsed}<{remaining}{postfix}]"
                                 if total else None, leave=True, dynamic_ncols=True)

    def record(self, sim, rec: StepRecord):
        prof = self._line_probe.evaluate(sim.solver.theta)[self._line_inside]
        self.profile_times.append(rec.time_s)
        self.profiles.append(prof)
        if self.root:
            self._csv.writerow([_fmt(getattr(rec, c)) for c in self.COLUMNS])
            self._csv_file.flush()
            if self._bar is not None:
                self._bar.n = round(rec.time_s / 60, 2)
                self._bar.set_postfix_str(f"θ̄={rec.theta_mean:.3f} θc={rec.theta_center:.3f}", refresh=False)
                self._bar.refresh()

    def snapshot(self, sim, t: float):
        sv = sim.solver
        if self._image_probe is not None:
            img = self._image_probe.evaluate(sv.theta)
            img[~self._image_probe.inside] = np.nan
            self.images.append((t, img.reshape(self.grid_shape)))
        if self._vtx is not None:
            if self.settings.fields == "vtx":
                self._vtx.write(t)
            else:
                self._vtx.write_function(sv.theta, t)

    STEP_COLUMNS = ("start_time_s", "end_time_s", "reason", "capacity_mAh_g", "theta_mean", "theta_center",
                    "theta_surface_min", "theta_surface_max", "voltage_V", "current_mA_g", "d_um")

    def _write_step(self, info: dict):
        self._steps_csv.writerow([info["index"], info["label"], info["description"]]
                                 + [_fmt(info[k]) for k in self.STEP_COLUMNS])

    def step_end(self, sim, info: dict):
        if self.root:
            self._write_step(info)
            self._steps_file.flush()

    def finish(self, sim):
        if self._vtx is not None:
            self._vtx.close()
            self._vtx = None
        self._image_probe = self._line_probe = None  # (they hold the mesh)
        if not self.root:
            return
        if self._bar is not None:
            self._bar.close()
        self._csv_file.close()
        self._steps_file.close()
        times = np.array(self.profile_times)
        prof = np.array(self.profiles)
        with open(self.outdir / "line_profiles.csv", "w", newline="") as fh:
            fh.write(",".join(["time_s"] + [f"s={s:.4f}um" for s in self.line_s]) + "\r\n")
            # repr of Python floats: round-trip exact, as _fmt (non-finite values as "nan")
            table = np.column_stack([times, prof]) if len(times) else np.zeros((0, 1 + len(self.line_s)))
            table[~np.isfinite(table)] = np.nan
            fh.writelines(",".join(map(repr, row)) + "\r\n" for row in table.tolist())
        if self.settings.figures:  # drawn once the run has freed its solvers (run.execute)
            hist = {c: np.array([getattr(r, c) for r in sim.history]) for c in self.COLUMNS}
            self.figure_job = partial(_draw_figures, self.outdir, self.title, self.line_s, times, prof, hist,
                                      [s["end_time_s"] for s in sim.step_log[:-1]], self.images, self.extent,
                                      self.outlines)

    def close(self):
        """Release files after an error (keeps what was written so far)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._vtx is not None:
            try:
                self._vtx.close()
            except Exception:  # noqa: BLE001 - best effort on an error path
                pass
            self._vtx = None
        for name in ("_csv_file", "_steps_file"):
            fh = getattr(self, name, None)
            if fh is not None and not fh.closed:
                fh.close()


def _draw_figures(outdir, title, line_s, times, prof, hist, step_ends, images, extent, outlines):
    """kymograph.png, center_trace.png, theta_maps.png."""
    from . import figures

    # the largest canvas last: its drawing then starts from the smaller figures' leftovers, not
    # they from its own (9 MB less peak RSS with six θ maps; benchmarks/README.md, target 6)
    figures.kymograph(line_s, times, prof, outdir / "kymograph.png", title=title)
    figures.release_memory()
    figures.center_trace(hist, outdir / "center_trace.png", title=title, step_ends=step_ends)
    figures.release_memory()
    if images:
        figures.theta_maps(images, extent, outdir / "theta_maps.png", title=title, outlines=outlines)


def write_json(path: Path, data: dict):
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=2, default=_json_default)
        fh.write("\n")
    tmp.replace(path)


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def _fmt(v):
    if isinstance(v, (float, np.floating)):
        return repr(float(v)) if math.isfinite(v) else "nan"
    if isinstance(v, np.integer):
        return int(v)
    return v


def _min_op():
    from mpi4py import MPI

    return MPI.MIN


def _max_op():
    from mpi4py import MPI

    return MPI.MAX
