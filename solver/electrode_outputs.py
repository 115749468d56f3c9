"""What an electrode run leaves in its directory.

    timeseries.csv    one row per accepted step: cell voltage and current, capacity, Li and charge
                      balances, and per particle <name>: theta_mean_<name>, theta_surface_<name>
                      (mean over its boundary), theta_near_<name> (mean within
                      electrode.near_surface_depth_um of its boundary: the optical proxy),
                      current_mA_g_<name> (its reaction current per g of that particle)
    steps.csv         one row per protocol step (end time, reason, capacity, state at its end)
    particles.csv     per particle and charge/discharge step: onset time, capacity, peak of the
                      optical proxy's slope against cell capacity
    fields.bp/        θ (all particles) and φ_s at the snapshot times (ADIOS2 VTX, DG1 on the whole
                      mesh, NaN outside the region of a field); with electrode.electrolyte = "resolved"
                      also c_l (mol m⁻³) and φ_l (V) on the electrolyte and the CBD
    electrode_maps.png, potential_maps.png, particles.png, voltage.png
    electrolyte_maps.png  c_l and φ_l − φ_l(separator) at the first and last snapshot (resolved electrolyte)
    metadata.json, summary.json

With the resolved electrolyte timeseries.csv also has c_l_min/max/mean_mol_m3,
electrolyte_potential_drop_V (max |φ_l − φ_l(separator)|), salt_balance_error and
electrolyte_charge_balance_error (see nmcfx.solver.electrolyte).

Only rank 0 writes files; fields are written collectively.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import ufl
from mpi4py import MPI

from dolfinx import fem

from .exports import PointProbe, reduce_array
from .outputs import _fmt
from .rundir import resumed_part


class ElectrodeOutputs:
    """Simulation observer writing an electrode run directory (see the module docstring)."""

    def __init__(self, outdir: Path, settings, comm, *, title: str = ""):
        self.outdir = Path(outdir)
        self.settings = settings
        self.comm = comm
        self.root = comm.rank == 0
        self.title = title
        self.columns: list[str] | None = None
        self._csv = self._csv_file = self._steps_csv = self._steps_file = None
        self._vtx = None
        self._bar = None
        self.images: list[tuple[float, dict]] = []
        self._electrolyte_images = False  # c_l and φ_l maps (resolved electrolyte)
        #: after finish (rank 0): draws the figures; it holds their data only, not the solver
        self.figure_job: Callable[[], None] | None = None

    # ------------------------------------------------------------------ observer API
    def state(self) -> dict:
        if not self.root:
            return {}
        out = {"image_times": np.array([t for t, _ in self.images])}
        for key in ("theta", "phi_s", "current") + (("c_l", "phi_l") if self._electrolyte_images else ()):
            out[key] = np.array([img[key] for _, img in self.images]) if self.images else np.zeros((0,))
        return out

    def start(self, sim, restore: list | None = None):
        m = sim.solver
        el = m.electrode
        self.names = list(m.names)
        if el.dim == 2:
            W, H = el.info["width_um"], el.info["height_um"]
            n = self.settings.image_pixels
            nx, ny = (n, max(8, int(n * H / W))) if W >= H else (max(8, int(n * W / H)), n)
            gx, gy = np.linspace(0, W, nx), np.linspace(0, H, ny)
            X, Y = np.meshgrid(gx, gy)
            pts = np.column_stack([X.ravel(), Y.ravel(), np.zeros(X.size)])
            self.extent = (0.0, W, 0.0, H)
            self.grid_shape = X.shape
            self._theta_probes = [PointProbe(th.mesh, pts, allow_outside=True) for th in m.thetas] \
                if self.settings.figures else []
            self._phi_probe = PointProbe(m.phi_s.mesh, pts, allow_outside=True) if self.settings.figures else None
        else:
            self._theta_probes, self._phi_probe = [], None
        # resolved electrolyte: c_l and φ_l maps on the pore network
        el = m.electrolyte
        self._pore_probes = None
        if el is not None and self._phi_probe is not None:
            self._pore_probes = (PointProbe(el.c_l.mesh, pts, allow_outside=True),
                                 PointProbe(el.dphi.mesh, pts, allow_outside=True))
        self._electrolyte_images = self._pore_probes is not None
        self._setup_current_density(m)
        mine = next((r for r, o in zip(restore or [], sim.observers) if o is self), None)
        if mine and len(mine.get("image_times", [])):
            self.images = [(float(t), {"theta": a, "phi_s": b, "current": c}) for t, a, b, c in
                           zip(mine["image_times"], mine["theta"], mine["phi_s"], mine["current"])]
            if self._electrolyte_images and "c_l" in mine:
                for (_, img), c_l, phi_l in zip(self.images, mine["c_l"], mine["phi_l"]):
                    img.update(c_l=c_l, phi_l=phi_l)
        self._setup_fields(m, restore is not None)
        if self.root:
            self._csv_file = open(self.outdir / "timeseries.csv", "w", newline="")
            self._csv = csv.writer(self._csv_file)
            self._steps_file = open(self.outdir / "steps.csv", "w", newline="")
            self._steps_csv = csv.writer(self._steps_file)
            self._steps_csv.writerow(self._step_columns())
            if restore is not None:
                for rec in sim.history:
                    self._write_row(rec)
                for info in sim.step_log:
                    self._write_step(info)
            if self.settings.progress:
                from tqdm import tqdm

                total = sim.protocol.nominal_duration_s
                self._bar = tqdm(total=round(total / 3600, 2) if total else None, unit="h", desc="simulated",
                                 bar_format="{l_bar}{bar}| {n:.2f}/{total_fmt} h [{elapsed}<{remaining}{postfix}]"
                                 if total else None, leave=True, dynamic_ncols=True)

    def _step_columns(self):
        return (["index", "label", "description", "start_time_s", "end_time_s", "reason", "capacity_mAh_g",
                 "voltage_V", "current_mA_g", "theta_mean"] + [f"theta_mean_{n}" for n in self.names])

    def _setup_fields(self, m, resumed: bool):
        self._W = self._theta_dg = self._phi_dg = None
        if self.settings.fields == "none":
            return
        import dolfinx.io

        mesh = m.mesh
        self._W = W = fem.functionspace(mesh, ("DG", 1))
        self._theta_dg = fem.Function(W, name="theta")
        self._phi_dg = fem.Function(W, name="phi_s")
        self._maps = []
        for f in list(m.thetas) + [m.phi_s]:
            cells = np.sort(np.concatenate([m.electrode.cell_tags.find(t) for t in f.tags])).astype(np.int32)
            self._maps.append((f, cells, f.entity_map.sub_topology_to_topology(cells, inverse=True)))
        stem = "fields" + resumed_part(self.outdir, "fields", resumed)
        self._pore_dg = []  # resolved electrolyte: (DG1 target, field, its cells, parent cells, name)
        if m.electrolyte is not None:
            el = m.electrolyte
            cells = np.sort(np.concatenate([m.electrode.cell_tags.find(t) for t in el.c_l.tags])).astype(np.int32)
            for name, f in (("c_l", el.c_l), ("phi_l", el.dphi)):
                self._pore_dg.append((fem.Function(W, name=name), f, f.entity_map.sub_topology_to_topology(
                    cells, inverse=True), cells, name))
        written = [self._theta_dg, self._phi_dg] + [g for g, *_ in self._pore_dg]
        if self.settings.fields == "vtx":
            self._vtx = dolfinx.io.VTXWriter(m.comm, str(self.outdir / f"{stem}.bp"), written, engine="BP4")
        else:  # XDMF takes P1 or cell data: cell values (DG0) of the same fields
            self._vtx = dolfinx.io.XDMFFile(m.comm, str(self.outdir / f"{stem}.xdmf"), "w")
            self._vtx.write_mesh(mesh)
            Q0 = fem.functionspace(mesh, ("DG", 0))
            self._cell_copies = [(g, fem.Function(Q0, name=g.name)) for g in written]

    def _setup_current_density(self, m):
        """|σ∇φ_s| (A m⁻²) as a DG0 field on the solid: σ per cell from the cell-mean θ of its particle."""
        solid = m.phi_s
        Q = fem.functionspace(solid.mesh, ("DG", 0))
        self._grad_abs = fem.Function(Q)
        self._current = fem.Function(Q, name="current_density")
        g = ufl.grad(solid.u)
        self._grad_expr = fem.Expression(ufl.sqrt(ufl.inner(g, g)), Q.element.interpolation_points)
        tdim = solid.mesh.topology.dim
        n_cells = solid.mesh.topology.index_map(tdim).size_local + solid.mesh.topology.index_map(tdim).num_ghosts
        self._sigma = np.full(n_cells, m.settings.cbd_conductivity_S_m)
        self._particle_cells = []
        for th, tag in zip(m.thetas, m.electrode.particle_tags):
            parent = m.electrode.cell_tags.find(tag)
            self._particle_cells.append((th, solid.entity_map.sub_topology_to_topology(parent, inverse=True),
                                         th.entity_map.sub_topology_to_topology(parent, inverse=True)))
        self._model = m

    def _update_current_density(self):
        m = self._model
        for i, (th, solid_cells, th_cells) in enumerate(self._particle_cells):
            dofs = th.V.dofmap.list[th_cells]
            self._sigma[solid_cells] = m.sigma(m.conductivity_theta(i)[dofs].mean(axis=1))
        self._grad_abs.interpolate(self._grad_expr)
        self._current.x.array[:] = self._sigma * self._grad_abs.x.array * 1e6  # V/µm → V/m

    def record(self, sim, rec):
        if self.root:
            self._write_row(rec)
            self._csv_file.flush()
            if self._bar is not None:
                self._bar.n = round(rec["time_s"] / 3600, 2)
                self._bar.set_postfix_str(f"V={rec['voltage_V']:.3f} θ̄={rec['theta_mean']:.3f}", refresh=False)
                self._bar.refresh()

    def _write_row(self, rec):
        if self.columns is None:
            self.columns = list(rec.keys())
            self._csv.writerow(self.columns)
        self._csv.writerow([_fmt(rec.get(c, float("nan"))) for c in self.columns])

    def snapshot(self, sim, t: float):
        m = sim.solver
        self._update_current_density()
        if self._theta_probes:
            theta = np.full(len(self._phi_probe.points), np.nan)
            for th, probe in zip(m.thetas, self._theta_probes):
                vals = probe.evaluate(th.u)
                theta[probe.inside] = vals[probe.inside]
            phi = self._phi_probe.evaluate(m.phi_s.u)
            phi[~self._phi_probe.inside] = np.nan
            cur = self._phi_probe.evaluate(self._current)
            cur[~self._phi_probe.inside] = np.nan
            maps = [("theta", theta), ("phi_s", phi), ("current", cur)]
            if self._pore_probes is not None:  # c_l (mol m⁻³) and φ_l − φ_l(separator) (V)
                el = m.electrolyte
                pc, pp = self._pore_probes
                c_l = el.c0 + pc.evaluate(el.c_l.u)
                c_l[~pc.inside] = np.nan
                phi_l = pp.evaluate(el.dphi.u)
                phi_l[~pp.inside] = np.nan
                maps += [("c_l", c_l), ("phi_l", phi_l)]
            self.images.append((t, {k: v.reshape(self.grid_shape) for k, v in maps}))
        if self._vtx is not None:
            self._theta_dg.x.array[:] = np.nan
            self._phi_dg.x.array[:] = np.nan
            for f, cells, sub_cells in self._maps:
                target = self._phi_dg if f is m.phi_s else self._theta_dg
                target.interpolate(f.u, cells0=sub_cells, cells1=cells)
            for target, f, sub_cells, cells, name in self._pore_dg:  # c_l = c_ref + Δc_l, φ_l = φ_ref + δφ_l
                target.x.array[:] = np.nan
                target.interpolate(f.u, cells0=sub_cells, cells1=cells)
                target.x.array[:] += m.electrolyte.c0 if name == "c_l" else m.electrolyte.phi_l_offset()
            if self.settings.fields == "vtx":
                self._vtx.write(t)
            else:
                for g, cell in self._cell_copies:
                    cell.interpolate(g)
                    self._vtx.write_function(cell, t)

    def _write_step(self, info: dict):
        self._steps_csv.writerow([info["index"], info["label"], info["description"]]
                                 + [_fmt(info.get(k, float("nan"))) for k in self._step_columns()[3:]])

    def step_end(self, sim, info: dict):
        if self.root:
            self._write_step(info)
            self._steps_file.flush()

    def finish(self, sim):
        if self._vtx is not None:
            self._vtx.close()
            self._vtx = None
        if not self.root:
            return
        if self._bar is not None:
            self._bar.close()
        self._csv_file.close()
        self._steps_file.close()
        rows = particle_table(sim)
        with open(self.outdir / "particles.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["particle"])
            w.writeheader()
            for r in rows:
                w.writerow({k: _fmt(v) for k, v in r.items()})
        if self.settings.figures:  # drawn once the run has freed its solvers (run.execute)
            hist = {c: np.array([r.get(c, np.nan) for r in sim.history], dtype=float)
                    for c in sim.history[0] if c != "protocol_step"}
            hist["protocol_step"] = np.array([r["protocol_step"] for r in sim.history])
            el = sim.solver.electrode
            outlines = [_outline(p) for p in (el.layout.particles if el.layout is not None else [])]
            self.figure_job = partial(_draw_figures, self.outdir, self.title, hist, list(sim.step_log), self.names,
                                      self.images, getattr(self, "extent", None), outlines)

    def close(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._vtx is not None:
            try:
                self._vtx.close()
            except Exception:  # noqa: BLE001 - best effort on an error path
                pass
            self._vtx = None
        for fh in (self._csv_file, self._steps_file):
            if fh is not None and not fh.closed:
                fh.close()


def _draw_figures(outdir, title, hist, step_log, names, images, extent, outlines):
    """voltage.png, particles.png and the electrode, potential and electrolyte maps."""
    from . import electrode_figures as figs
    from .figures import release_memory

    figs.voltage(hist, step_log, outdir / "voltage.png", title=title)
    release_memory()
    figs.particles(hist, names, step_log, outdir / "particles.png", title=title)
    if images:
        release_memory()
        figs.maps(images, extent, outlines, outdir / "electrode_maps.png", title=title)
        release_memory()
        figs.potential_maps(images, extent, outlines, outdir / "potential_maps.png", title=title)
        if "c_l" in images[0][1]:
            release_memory()
            figs.electrolyte_maps(images, extent, outlines, outdir / "electrolyte_maps.png", title=title)


def _outline(p) -> np.ndarray:
    o = p.outline()
    return np.vstack([o, o[:1]])


def current_steps(sim):
    """``(step info, history rows)`` of every charge/discharge step with at least one record; the
    rows include the state at the step's start (the last record of the step before)."""
    hist = sim.history
    if len(hist) < 2:
        return
    step = np.array([r["protocol_step"] for r in hist])
    for info in sim.step_log:
        if not info["description"].startswith(("charge", "discharge")):
            continue
        sel = np.flatnonzero(step == info["index"])
        if len(sel) >= 2:
            yield info, (np.concatenate([[sel[0] - 1], sel]) if sel[0] > 0 else sel)


def particle_table(sim) -> list[dict]:
    """Per particle and per charge/discharge step: onset (the particle's mean θ has moved by
    ``onset_drop`` from its value at the step start), its capacity in the step, and the peak of the
    optical proxy's slope d(θ_near)/d(capacity) (Sharma 2022 Fig. 1c)."""
    hist = sim.history
    if len(hist) < 2:
        return []
    drop = sim.solver.settings.onset_drop
    t = np.array([r["time_s"] for r in hist])
    cap = np.array([r["capacity_mAh_g"] for r in hist])
    rows = []
    for info, sel in current_steps(sim):
        desc, k = info["description"], info["index"]
        sign = 1.0 if desc.startswith("charge") else -1.0
        for name in sim.names:
            th = np.array([hist[i][f"theta_mean_{name}"] for i in sel])
            near = np.array([hist[i][f"theta_near_{name}"] for i in sel])
            moved = sign * (th[0] - th)
            onset = np.nan
            j = np.flatnonzero(moved >= drop)
            if j.size:
                j = j[0]
                f = (drop - moved[j - 1]) / (moved[j] - moved[j - 1]) if j > 0 and moved[j] != moved[j - 1] else 1.0
                onset = t[sel][j - 1] + f * (t[sel][j] - t[sel][j - 1]) if j > 0 else t[sel][j]
            dq = np.diff(cap[sel])
            slope = np.where(np.abs(dq) > 1e-12, -np.diff(near) / np.where(np.abs(dq) > 1e-12, dq, 1.0), 0.0)
            rows.append({"step": k, "description": desc, "particle": name,
                         "onset_h": (onset - t[sel][0]) / 3600.0 if math.isfinite(onset) else float("nan"),
                         "theta_start": th[0], "theta_end": th[-1],
                         "particle_capacity_mAh_g": sign * (th[0] - th[-1]) * sim.material.theoretical_capacity_mAh_g,
                         "slope_peak_per_mAh_g": float(np.max(np.abs(slope))) if slope.size else float("nan"),
                         "slope_peak_at_mAh_g": float(cap[sel][1:][np.argmax(np.abs(slope))] - cap[sel][0])
                         if slope.size else float("nan")})
    return rows


__all__ = ["ElectrodeOutputs", "current_steps", "particle_table", "reduce_array", "MPI"]
