"""From a config dict to a finished run directory.

``prepare`` validates every table and builds the mesh, material and protocol without
touching the disk, so a bad config fails before anything is written. ``execute``
then creates the run directory, writes ``metadata.json`` first, runs, and writes
``summary.json`` last.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import replace
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mpi4py import MPI

from nmcfx.errors import InputError
from nmcfx.parallel import collective_errors

from .checkpoint import Checkpointer
from .consistency import check_snapshots_within_protocol, check_tables_together, check_voltage_not_met_at_start
from .electrode_mechanics import (
    check_bonded_layout,
    check_particle_table,
    electrode_mechanics_from_config,
    electrode_mechanics_observers,
)
from .mechanics import mechanics_from_config
from .mechanics_outputs import coupling_terms, mechanics_observers
from .outputs import OutputSettings, RunOutputs, write_json
from .protocol import Protocol, protocol_from_dict
from .rocksalt import film_thicknesses, sector_weights
from .rundir import prepare_run_directory
from .simulation import Simulation, SolverSettings
from .surface import SurfaceSettings
from .transport import TransportSolver

#: Front arrival at the centre: the centre has lost this much occupancy.
FRONT_DROP = 0.05


@dataclass
class PreparedRun:
    config: dict
    particle: object  # a ParticleMesh, or an ElectrodeMesh for a composite electrode
    material: object
    protocol: Protocol
    surface: SurfaceSettings
    solver: SolverSettings
    output: OutputSettings
    title: str
    base_dir: Path
    electrode: object = None  # ElectrodeSettings of a composite electrode, else None
    materials: list | None = None  # one material per particle (electrode)

    @property
    def is_electrode(self) -> bool:
        return self.electrode is not None


def prepare(cfg: dict, *, base_dir: Path | str = ".", comm=MPI.COMM_WORLD) -> PreparedRun:
    from nmcfx.config import check_top_level
    from nmcfx.geometries import geometry_from_config
    from nmcfx.materials import material_from_config

    check_top_level(cfg)
    base_dir = Path(base_dir)
    if "protocol" not in cfg:
        raise InputError("protocol", "missing: a config needs a [protocol] table with at least one step")
    material = material_from_config(cfg.get("material", {}), base_dir)
    protocol = protocol_from_dict(cfg["protocol"], material.theta0)
    # [mechanics]: validated here, built by execute() (electrodes: free particles, solver/electrode_mechanics.py)
    if is_electrode_config(cfg):
        electrode_mechanics_from_config(cfg, base_dir=base_dir, theta0=protocol.initial_theta)
    else:
        check_particle_table(cfg)
        mechanics_from_config(cfg, base_dir=base_dir, theta0=protocol.initial_theta)
    surface = SurfaceSettings.from_dict(cfg.get("surface"))
    if surface.model == "flux" and not is_electrode_config(cfg):  # electrodes always use Butler–Volmer
        for i, st in enumerate(protocol.steps):
            if st.kind == "hold":
                raise InputError(f"protocol.steps[{i}]",
                                 "a constant-voltage hold needs [surface] model = 'butler_volmer'")
    solver = SolverSettings.from_dict(cfg.get("solver"))
    output = OutputSettings.from_dict(cfg.get("output"))
    title = cfg.get("title", "")
    if is_electrode_config(cfg):
        return _prepare_electrode(cfg, material, protocol, surface, solver, output, title, base_dir, comm)
    if "electrode" in cfg:
        raise InputError("electrode", "the [electrode] table needs [geometry] shape = 'electrode' or 'electrode_3d'")
    solver = replace(solver, degree=particle_degree(cfg, solver, surface))
    particle = geometry_from_config(cfg.get("geometry", {}), comm=comm, base_dir=base_dir, degree=solver.degree)
    surface.check_sectors(particle)
    check_stop_quantities(protocol, ())
    check_tables_together(protocol, material, surface, output, particle)  # voltage at start, snapshots, line cut
    return PreparedRun(cfg, particle, material, protocol, surface, solver, output, title, base_dir)


def particle_degree(cfg: dict, solver: SolverSettings, surface: SurfaceSettings) -> int:
    """The element degree of a single particle: ``[solver] degree`` if given, else 2 for 2D
    particles with a prescribed flux (NumPy assembly with the exact Jacobian of the nodal
    coefficient, solver/assembly.py: more accurate per unknown and per second than P1 on the
    matching default mesh, benchmarks/README.md) and 1 otherwise (Butler–Volmer on vertex-rule
    facets, 3D meshes)."""
    if solver.degree is not None:
        return solver.degree
    from nmcfx.geometries.config import DEFAULT_SHAPE, SHAPES_2D

    geo = cfg.get("geometry") or {}
    shape = geo.get("shape", DEFAULT_SHAPE) if isinstance(geo, dict) else DEFAULT_SHAPE
    return default_degree(2 if shape in SHAPES_2D else 3, surface.model)


def particle_solver(particle, material, settings, surface=None, extra_terms=()) -> TransportSolver:
    """The single-particle solver a run builds from its resolved parts (``settings``: a
    :class:`SolverSettings`; ``surface``: :class:`SurfaceSettings`, default the prescribed flux;
    ``extra_terms``: see :class:`TransportSolver`, e.g. two-way mechanics); the forward model of
    the imaging package builds its solver here too."""
    surface = surface if surface is not None else SurfaceSettings.from_dict(None)
    degree = settings.degree if settings.degree is not None else default_degree(particle.mesh.topology.dim,
                                                                                 surface.model)
    return TransportSolver(particle, material, degree=degree, time_scheme=settings.time_scheme,
                           mass_lumping=settings.mass_lumping, petsc_options=settings.petsc_options or None,
                           surface=surface, sector_weights=sector_weights(surface, particle, material),
                           films=film_thicknesses(surface),
                           film_diffusivity_ratio=surface.rocksalt_diffusivity_ratio, assembly=settings.assembly,
                           extra_terms=extra_terms)


def default_degree(tdim: int, surface_model: str = "flux") -> int:
    """The rule of :func:`particle_degree` for a built mesh (the forward model uses it too)."""
    return 2 if (tdim == 2 and surface_model == "flux") else 1


def is_electrode_config(cfg: dict) -> bool:
    geo = cfg.get("geometry") or {}
    return isinstance(geo, dict) and geo.get("shape") in ("electrode", "electrode_3d")


def check_stop_quantities(protocol: Protocol, particle_names) -> None:
    """Per-particle stop quantities (``theta_mean_<name>``) need an electrode with that particle."""
    from .electrode import particle_quantities
    from .protocol import STOP_QUANTITIES

    allowed = set(STOP_QUANTITIES) | set(particle_quantities(particle_names))
    if particle_names:  # an electrode has no single centre
        allowed.discard("theta_center")
    for i, st in enumerate(protocol.steps):
        for c in st.until:
            if c.quantity not in allowed:
                where = (f"particles are {list(particle_names)}" if particle_names
                         else "per-particle quantities need an electrode geometry")
                raise InputError(f"protocol.steps[{i}].until", f"unknown quantity {c.quantity!r} ({where})")


def _prepare_electrode(cfg, material, protocol, surface, solver, output, title, base_dir, comm) -> PreparedRun:
    from nmcfx.geometries.electrode import electrode_from_config
    from nmcfx.materials import get_material

    from .electrode import ElectrodeSettings, particle_materials

    if "surface" in cfg and surface.model != "butler_volmer":
        raise InputError("surface.model", "an electrode always uses Butler–Volmer kinetics; remove the [surface] "
                                          "model key or set it to 'butler_volmer'")
    if surface.blocking or surface.rocksalt_thickness_nm:
        raise InputError("surface", "blocked sectors are defined on single particles, not on an electrode")
    surface = SurfaceSettings(model="butler_volmer",
                              electrolyte_concentration_ratio=surface.electrolyte_concentration_ratio)
    if solver.degree is None:
        solver = replace(solver, degree=1)
    settings = ElectrodeSettings.from_dict(cfg.get("electrode"))
    from nmcfx.materials.conductivity import load_conductivity_table

    load_conductivity_table(settings.nmc_conductivity_csv, base_dir=base_dir)  # validated before meshing
    check_snapshots_within_protocol(output, protocol)
    electrode = electrode_from_config(cfg.get("geometry", {}), comm=comm, base_dir=base_dir)
    check_bonded_layout(cfg, electrode)  # [mechanics] electrode_bonding = "bonded": every particle held
    if settings.electrolyte == "resolved":  # properties, geometry and [surface] checks (solver/electrolyte.py)
        from .electrolyte import check_run

        settings = check_run(settings, electrode, surface, material, base_dir)
    check_stop_quantities(protocol, [p["name"] for p in electrode.particles])

    def other(name, p):
        try:
            return get_material(name)
        except InputError as exc:
            raise InputError(f"geometry.particles[{p['name']}].material", str(exc).split(": ", 1)[-1]) from None

    materials = particle_materials(electrode, material, other)
    # a voltage condition already met at the start, as for a particle: the uniform initial state
    # sits at V_oc(θ₀) when the particles share one V_oc (the line cut of a particle does not apply)
    if len({float(m.ocv(np.array([protocol.initial_theta]))[0]) for m in materials}) == 1:
        check_voltage_not_met_at_start(protocol, materials[0])
    return PreparedRun(cfg, electrode, material, protocol, surface, solver, output, title, base_dir,
                       electrode=settings, materials=materials)


def default_snapshots_s(protocol: Protocol) -> list[float]:
    total = protocol.nominal_duration_s
    if total is None:
        return []
    return [float(x) for x in np.linspace(0.0, total, 7)[1:]]


def execute(run: PreparedRun, outdir: Path | str, *, comm=MPI.COMM_WORLD, progress: bool | None = None,
            resume: bool = False, overwrite: bool = False, observers=(), keep_for_next_run: bool = True) -> dict:
    """Run into ``outdir``. With ``resume`` continue from ``outdir/checkpoint`` (same config, same ranks).
    A directory holding an earlier run is refused unless ``overwrite`` (see :mod:`.rundir`).

    ``observers``: extra :class:`Simulation` observers (studies record what they need this way).
    ``keep_for_next_run``: keep the mesh and the elasticity solver for a later run in this process on
    the same mesh (sweeps, calibration); ``nmcfx run`` frees them before drawing the figures.
    """
    outdir = Path(outdir)
    wall0 = time.perf_counter()
    summary, figure_jobs = _simulate(run, outdir, comm, progress, resume, overwrite, observers)
    # the figures come last, drawn from their data alone: the solvers' memory is returned first
    # (matplotlib then does not add its ~35 MB on top of it; benchmarks/README.md, target 6)
    if run.output.figures:  # (the same on every rank)
        free_memory(clear_caches=not keep_for_next_run)
    with collective_errors(comm, "--output"):
        if comm.rank == 0:
            _draw(figure_jobs)
    summary["wall_time_s"] = comm.allreduce(time.perf_counter() - wall0, op=MPI.MAX)
    with collective_errors(comm, "--output"):
        if comm.rank == 0:
            write_json(outdir / "summary.json", summary)
    return summary


def _simulate(run: PreparedRun, outdir: Path, comm, progress, resume, overwrite, observers) -> tuple[dict, list]:
    """:func:`execute` up to the figures: the summary (its wall time still to fill in) and the outputs'
    figure jobs. Nothing of the solvers outlives this call but what the caches keep."""
    # refuse (on every rank, writing nothing) or create the directory; earlier results are kept unless overwrite
    prepare_run_directory(outdir, config=run.config, resume=resume, overwrite=overwrite, comm=comm)
    checkpoint = Checkpointer(outdir / "checkpoint", comm, run.config, every_wall_s=run.solver.checkpoint_wall_s)
    st = run.solver
    snaps = ([60.0 * t for t in run.output.snapshot_times_min] if run.output.snapshot_times_min is not None
             else default_snapshots_s(run.protocol))
    out_settings = run.output
    if progress is not None:
        from dataclasses import replace

        out_settings = replace(out_settings, progress=progress)
    mech_observers = []
    if run.is_electrode:
        from .electrode import ElectrodeModel, ElectrodeSimulation
        from .electrode_outputs import ElectrodeOutputs

        sv = ElectrodeModel(run.particle, run.materials, run.electrode, degree=st.degree,
                            mass_lumping=st.mass_lumping, petsc_options=st.petsc_options or None,
                            concentration_ratio=run.surface.electrolyte_concentration_ratio)
    else:
        mech_observers = mechanics_observers(run, outdir, comm)  # [mechanics]: θ → σ each step (and back: two-way)
        sv = particle_solver(run.particle, run.material, st, run.surface, extra_terms=coupling_terms(mech_observers))
    # PETSc objects (MUMPS' clean-up is collective) must not be left to the garbage collector, which
    # frees them at a different moment on each rank: a finished run frees them on every rank together;
    # a failed one keeps them (another rank may still be inside the time loop — nothing collective here)
    finished = False
    try:
        if run.is_electrode:
            outputs = ElectrodeOutputs(outdir, out_settings, comm, title=run.title)
            # [mechanics]: one elasticity solver per particle (solver/electrode_mechanics.py), before the
            # outputs: it adds its columns to the records they write
            mech_observers = electrode_mechanics_observers(run, outdir, comm)
            for o in mech_observers:
                _agreed_writes(o, comm)
            sim = ElectrodeSimulation(sv, run.material, run.protocol, st, snapshot_times_s=snaps,
                                      observers=[*mech_observers, outputs, *observers])
        else:
            outputs = RunOutputs(outdir, out_settings, comm, title=run.title)
            observers = [outputs, *mech_observers, *observers]  # [mechanics]: θ → σ (and back: two-way)
            sim = Simulation(sv, run.material, run.protocol, st, snapshot_times_s=snaps, observers=observers)
        if resume:
            checkpoint.read(sv)  # every rank's fields against this mesh: a refused resume has written nothing
        meta = metadata(run, sv, comm)
        with collective_errors(comm, "--output"):  # rank-0 writes: a full disk ends every rank with one line
            if comm.rank == 0:
                if resume:
                    (outdir / "summary.json").unlink(missing_ok=True)  # written again when the run ends
                write_json(outdir / ("metadata-resumed.json" if resume else "metadata.json"), meta)
        _agreed_writes(outputs, comm)
        try:
            sim.run(checkpoint=checkpoint, resume=resume)
        finally:
            outputs.close()
        finished = True
    finally:
        if finished:
            sv.close()
            for obs in mech_observers:
                obs.release()
        else:
            _KEPT_AFTER_FAILURE.append((sv, mech_observers))
    summary = (summarize_electrode if run.is_electrode else summarize)(sim, float("nan"), title=run.title)
    return summary, [o.figure_job for o in (outputs, *mech_observers) if getattr(o, "figure_job", None)]


def _draw(figure_jobs):
    """Draw the figures, each from the memory the one before left (a Ctrl-C meanwhile is ignored, as in
    the time loop's last hooks: no PNG is left half-written, and the run is complete)."""
    import gc
    from types import SimpleNamespace

    from .figures import release_memory
    from .problem import _sigint_as_flag

    gc.freeze()  # the collections between figures then only look at the figures' objects
    try:
        with _sigint_as_flag(SimpleNamespace(interrupted=False)):
            for job in figure_jobs:
                job()
                release_memory()
    finally:
        gc.unfreeze()


def free_memory(*, clear_caches: bool = False):
    """Collect garbage and hand freed heap pages back to the system; with ``clear_caches`` also drop
    the meshes and elasticity solvers kept for a next run in this process."""
    from .figures import release_memory

    if clear_caches:
        from nmcfx.geometries._build import clear_mesh_cache

        from .mechanics import clear_solver_pool

        clear_solver_pool()
        clear_mesh_cache()
    release_memory()


#: solvers of runs that failed in this process, kept alive (see execute)
_KEPT_AFTER_FAILURE: list = []


def _agreed_writes(observer, comm):
    """Make every hook of an outputs observer an agreed check point (:func:`collective_errors`):
    a file error on rank 0 — a full disk, lost permissions — is raised on every rank as the same
    ``--output`` error instead of leaving the other ranks waiting in the next collective call.
    (The outputs observers make their collective calls — probes, field files — before rank 0
    writes, as a check point requires.)"""
    for name in ("start", "record", "snapshot", "step_end", "finish"):
        hook = getattr(observer, name)

        def agreed(*args, _hook=hook, **kwargs):
            with collective_errors(comm, "--output"):
                return _hook(*args, **kwargs)

        setattr(observer, name, agreed)


def summarize(sim: Simulation, wall_s: float, title: str = "") -> dict:
    h = sim.history
    th0 = sim.protocol.initial_theta
    t = np.array([r.time_s for r in h])
    tc = np.array([r.theta_center for r in h])
    arrival = None
    below = np.flatnonzero(np.abs(tc - th0) >= FRONT_DROP)
    if below.size:
        i = below[0]
        if i > 0:  # linear interpolation between the two records around the crossing
            target = th0 - FRONT_DROP if tc[i] < th0 else th0 + FRONT_DROP
            f = (target - tc[i - 1]) / (tc[i] - tc[i - 1])
            arrival = float(t[i - 1] + f * (t[i] - t[i - 1]))
        else:
            arrival = float(t[i])
    c = sim.solver.counters
    last = h[-1]
    return {
        "title": title,
        "geometry": sim.solver.particle.info.get("shape", ""),
        "end_time_min": last.time_s / 60.0,
        "front_at_center_min": None if arrival is None else arrival / 60.0,
        "front_definition": f"first time |theta_center - theta_initial| >= {FRONT_DROP}",
        "theta_mean_final": last.theta_mean,
        "theta_center_final": last.theta_center,
        "li_extracted_mol": last.li_extracted_mol,
        "li_extracted_basis": (f"per {sim.settings.thickness_um:g} µm of depth (2D cross-section)"
                               if sim.dim == 2 else "whole particle"),
        "capacity_mAh_g": last.capacity_mAh_g,
        "max_abs_mass_balance_error": float(max(abs(r.mass_balance_error) for r in h)),
        "particle_center_of_mass_um": [float(c) for c in sim.solver.particle_center_of_mass],
        "dofs": sim.solver.num_dofs,
        "steps": c.steps,
        "rejected_steps": c.rejected_steps,
        "newton_iterations": c.newton_iterations,
        "linear_iterations": c.linear_iterations,
        "assembly_time_s": sim.solver.comm.allreduce(c.assembly_time, op=MPI.MAX),
        "wall_time_s": wall_s,
        "mpi_size": sim.solver.comm.size,
        "protocol_steps": sim.step_log,
    }


def summarize_electrode(sim, wall_s: float, title: str = "") -> dict:
    """Headline numbers of an electrode run: cell-level and per-particle (onsets, capacities)."""
    from .electrode_outputs import particle_table

    h = sim.history
    last = h[-1]
    c = sim.solver.counters
    rows = particle_table(sim)
    charges = {}
    for r in rows:
        charges.setdefault(r["step"], []).append(r)
    steps = []
    for k, rs in charges.items():
        onsets = [r["onset_h"] for r in rs]
        finite = [o for o in onsets if o == o]
        steps.append({"step": k, "description": rs[0]["description"],
                      "onset_h": {r["particle"]: r["onset_h"] for r in rs},
                      "onset_spread_h": (max(finite) - min(finite)) if len(finite) > 1 else None,
                      "capacity_mAh_g": next(s["capacity_mAh_g"] for s in sim.step_log if s["index"] == k)})
    return {
        "title": title,
        "geometry": "electrode",
        "particles": [p["name"] for p in sim.solver.electrode.particles],
        "end_time_min": last["time_s"] / 60.0,
        "end_time_h": last["time_s"] / 3600.0,
        "voltage_final_V": last["voltage_V"],
        "theta_mean_final": last["theta_mean"],
        "capacity_mAh_g": last["capacity_mAh_g"],
        "li_extracted_mol": last["li_extracted_mol"],
        "li_extracted_basis": (f"per {sim.settings.thickness_um:g} µm of depth (2D cross-section)"
                               if sim.dim == 2 else "whole electrode"),
        "max_abs_mass_balance_error": float(max(abs(r["mass_balance_error"]) for r in h)),
        "max_abs_charge_balance_error": float(max(abs(r["charge_balance_error"]) for r in h)),
        "charge_steps": steps,
        "dofs": sim.solver.num_dofs,
        "steps": c.steps,
        "rejected_steps": c.rejected_steps,
        "newton_iterations": c.newton_iterations,
        "linear_iterations": c.linear_iterations,
        "assembly_time_s": sim.solver.comm.allreduce(c.assembly_time, op=MPI.MAX),
        "wall_time_s": wall_s,
        "mpi_size": sim.solver.comm.size,
        "protocol_steps": sim.step_log,
    }


def format_summary(s: dict) -> str:
    if s.get("geometry") == "electrode":
        return format_electrode_summary(s)
    arrival = "not reached" if s["front_at_center_min"] is None else f"{s['front_at_center_min']:.1f} min"
    lines = [
        f"  simulated time        {s['end_time_min']:.1f} min",
        f"  front at the centre   {arrival}   ({s['front_definition']})",
        f"  mean θ at the end     {s['theta_mean_final']:.4f}   (centre {s['theta_center_final']:.4f})",
        f"  Li extracted          {s['li_extracted_mol']:.4e} mol {s['li_extracted_basis']}   "
        f"({s['capacity_mAh_g']:.1f} mAh/g)",
        f"  mass-balance error    {s['max_abs_mass_balance_error']:.1e}   (relative to the initial Li content)",
        f"  cost                  {s['dofs']} DOFs, {s['steps']} steps ({s['rejected_steps']} retried), "
        f"{s['newton_iterations']} Newton iterations, {s['mpi_size']} rank(s)",
        f"  wall time             {s['wall_time_s']:.2f} s",
    ]
    return "\n".join(lines)


def format_electrode_summary(s: dict) -> str:
    lines = [
        f"  simulated time        {s['end_time_h']:.2f} h",
        f"  cell voltage at end   {s['voltage_final_V']:.4f} V   (mean θ {s['theta_mean_final']:.4f})",
        f"  capacity              {s['capacity_mAh_g']:.1f} mAh/g (+ = charge, net)",
    ]
    for st in s["charge_steps"]:
        on = ", ".join(f"{k} {v:.2f}" if v == v else f"{k} –" for k, v in st["onset_h"].items())
        spread = "–" if st["onset_spread_h"] is None else f"{st['onset_spread_h']:.2f} h"
        lines.append(f"  step {st['step']} {st['description'][:28]:<28s} {st['capacity_mAh_g']:7.1f} mAh/g, onset "
                     f"spread {spread}")
        lines.append(f"      onsets (h): {on}")
    lines += [
        f"  balances              Li {s['max_abs_mass_balance_error']:.1e}, charge "
        f"{s['max_abs_charge_balance_error']:.1e} (relative, worst step)",
        f"  cost                  {s['dofs']} DOFs, {s['steps']} steps ({s['rejected_steps']} retried), "
        f"{s['newton_iterations']} Newton iterations, {s['mpi_size']} rank(s)",
        f"  wall time             {s['wall_time_s']:.2f} s",
    ]
    return "\n".join(lines)


def metadata(run: PreparedRun, sv, comm) -> dict:
    from nmcfx import __version__

    return {
        "nmcfx_version": __version__,
        "git_revision": git_revision(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": sys.argv,
        "mpi_size": comm.size,
        "host": platform.node(),
        "python": sys.version.split()[0],
        "versions": package_versions(),
        "config": run.config,
        "resolved": {
            "title": run.title,
            "geometry": _geometry_metadata(run),
            "material": run.material.describe() if hasattr(run.material, "describe") else repr(run.material),
            "surface": run.surface.to_dict() | {"sector_weights": sv_weights(sv)},
            **({"electrode": run.electrode.to_dict() | {"nmc_conductivity": sv.sigma.describe(),
                                                        "particle_materials": [m.describe() for m in run.materials]}}
               if run.is_electrode else {}),
            "protocol": {"initial_theta": run.protocol.initial_theta,
                         "steps": [s.describe() for s in run.protocol.steps]},
            "solver": run.solver.to_dict() | {"petsc_options": sv.petsc_options, "dofs": sv.num_dofs,
                                              "linear_solver": getattr(sv.problem, "linear_solver", None)},
            "output": run.output.to_dict(),
        },
    }


def _geometry_metadata(run: PreparedRun) -> dict:
    p = run.particle
    if run.is_electrode:
        return {"dim": p.dim, "particles": p.particles, "info": p.info}
    return {"dim": p.dim, "measure": p.measure, "boundary_measure": p.boundary_measure, "sectors": p.sectors,
            "sector_measure": p.sector_measure, "reactive_sectors": list(p.reactive_sectors),
            "centroid": list(p.centroid), "info": p.info}


def sv_weights(sv) -> dict:
    return {s: float(c.value) for s, c in getattr(sv, "eta", {}).items()}


def package_versions() -> dict:
    """Versions of the packages that shape the results (looked up once per process)."""
    return dict(_package_versions())


@functools.lru_cache(maxsize=1)
def _package_versions() -> dict:
    from nmcfx import installed_versions

    found = installed_versions()
    out = {}
    for name in ("nmcfx", "fenics-dolfinx", "dolfinx-solver-real", "fenics-basix", "fenics-ffcx", "fenics-ufl",
                 "petsc4py", "mpi4py", "gmsh", "numpy", "scipy", "matplotlib"):
        if name in found:
            out[name] = found[name]
    try:
        import dolfinx

        out["dolfinx"] = dolfinx.__version__
        from petsc4py import PETSc

        out["petsc"] = ".".join(map(str, PETSc.Sys.getVersion()))
    except Exception:  # noqa: BLE001 - versions are informative only
        pass
    return out


@functools.lru_cache(maxsize=1)
def git_revision() -> str:
    """The source tree's commit (+ "-dirty" with uncommitted changes), once per process."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if rev.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            return rev.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"
