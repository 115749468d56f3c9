"""The ``nmcfx`` command. Thin: parses arguments and calls the rooms.

    nmcfx run CONFIG.toml [-o DIR]       run a simulation described by a TOML file
    nmcfx run --example NAME [-o DIR]    run a built-in example (see `nmcfx examples`)
    nmcfx run … -o DIR --resume          continue an interrupted run from its checkpoint
    nmcfx run … -o DIR --overwrite       replace an earlier run in DIR (refused otherwise)
    nmcfx mesh CONFIG.toml [--export F]  build only the mesh and report it (and write it with its tags)
    nmcfx materials show NAME [--csv F]  table of θ, D_Li, D_eff, V_oc, dV_oc/dθ, D_chem; lattice a, c; stiffness
    nmcfx examples                       list the built-in examples
    nmcfx analyze STACK [options]        analyse an operando image stack (see nmcfx.imaging)
    nmcfx calibrate CONFIG.toml          calibrate S and A against analysed images
    nmcfx sweep SWEEP.toml [-o DIR] [--backend local|mpi|slurm|dask]   a parameter sweep
    nmcfx sweep status|collect|plot DIR  progress, the gathered table, a figure
    nmcfx --version

Works the same under ``mpiexec -n N``: every rank runs, rank 0 prints and writes.
User errors print one line (``nmcfx: error: ...``) and exit with status 2; an error on
some ranks only ends the whole job (``nmcfx.parallel.ErrorGuard``) instead of hanging it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


class _VersionAction(argparse.Action):
    """``--version``, with the version looked up only when asked for (it costs start-up time)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):  # noqa: A002
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0,
                         help=help or "show the version and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        from nmcfx import __version__

        print(f"nmcfx {__version__}")  # to stdout, as argparse's own version action does
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nmcfx", description="Li transport in NMC cathode particles (DOLFINx).")
    p.add_argument("--version", action=_VersionAction)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    r = sub.add_parser("run", help="run a simulation from a TOML config or a built-in example")
    r.add_argument("config", nargs="?", help="TOML configuration file")
    r.add_argument("--example", metavar="NAME", help="run a built-in example instead of a file")
    r.add_argument("-o", "--output", metavar="DIR", help="run directory (default: runs/<name>)")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    again = r.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue an interrupted run from DIR/checkpoint (same config, same number of ranks)")
    again.add_argument("--overwrite", action="store_true",
                       help="replace the results and checkpoint of an earlier run in DIR (refused otherwise)")

    m = sub.add_parser("mesh", help="build the mesh of a config and print its summary")
    m.add_argument("config", nargs="?")
    m.add_argument("--example", metavar="NAME")
    m.add_argument("--export", metavar="FILE",
                   help="also write the mesh with its region and boundary tags (format from the extension: "
                        ".msh, .vtu, .xdmf, … anything meshio writes)")

    mat = sub.add_parser("materials", help="material property tables")
    matsub = mat.add_subparsers(dest="materials_command", metavar="ACTION")
    show = matsub.add_parser("show", help="print θ, D_Li, D_eff, V_oc, dV_oc/dθ, D_chem on a θ grid")
    show.add_argument("name", nargs="?", default="NMC-Ni87")
    show.add_argument("--csv", metavar="FILE", help="also write the table as CSV")
    show.add_argument("--plot", metavar="FILE", help="also write a PNG of the properties")
    show.add_argument("--points", type=int, default=20, help="number of θ values (default 20)")

    sub.add_parser("examples", help="list the built-in examples")
    _analyze_parser(sub)
    cal = sub.add_parser("calibrate", help="calibrate S and A (Xu 2022 Eq. 18) against an analysed stack")
    cal.add_argument("config", help="TOML: the run tables plus a [calibration] table (see README)")
    cal.add_argument("-o", "--output", metavar="DIR", help="output directory (default: runs/<config name>-calibration)")
    _sweep_parser(sub)
    return p


def _sweep_parser(sub):
    s = sub.add_parser("sweep", help="run a parameter sweep (local processes, mpiexec, SLURM array, dask-jobqueue)",
                       description="nmcfx sweep SWEEP.toml [-o DIR] runs every case of a sweep file (README: "
                                   "'Parameter sweeps'); nmcfx sweep status|collect|plot DIR inspects a sweep "
                                   "directory. Re-running skips the cases that are done with unchanged inputs.")
    s.add_argument("target", nargs="+", metavar="[ACTION] SWEEP",
                   help="SWEEP.toml or a sweep directory; ACTION: run (default), status, collect or plot")
    s.add_argument("-o", "--output", metavar="DIR", help="sweep directory (default: runs/<sweep name>)")
    s.add_argument("--backend", choices=("local", "mpi", "slurm", "dask"), default="local",
                   help="local: N worker processes (default); mpi: under mpiexec, cases on sub-communicators; "
                        "slurm: submit a job array; dask: a dask-jobqueue cluster ([dask] table)")
    s.add_argument("-j", "--workers", type=int, metavar="N", help="local/dask: worker processes (default: [local] "
                                                                   "workers, else the number of cores)")
    s.add_argument("--ranks-per-case", type=int, metavar="K", help="mpi: ranks per case (default 1)")
    s.add_argument("--force", action="store_true", help="run every case again, even finished ones")
    s.add_argument("--check", action="store_true", help="only validate every case and list them")
    s.add_argument("--plan", action="store_true",
                   help="validate every case and write DIR/sweep.json without running; then run case ID with "
                        "`nmcfx sweep DIR --task ID` (e.g. from your own PBS/LSF array job)")
    s.add_argument("--task", type=int, metavar="ID", help="run only case ID (what a SLURM array task does)")
    s.add_argument("--expect", help=argparse.SUPPRESS)
    s.add_argument("--metric", help="plot: the table column to show (default: [sweep.plot] or the first metric)")
    s.add_argument("--x", help="plot: swept key label on the x axis")
    s.add_argument("--y", help="plot: swept key label on the y axis")


def _analyze_parser(sub):
    a = sub.add_parser("analyze", help="analyse an operando image stack: drift, contrast, kymograph, asymmetry, outline")
    a.add_argument("stack", help="multi-page TIFF (8/16-bit or float), .npy or .npz")
    a.add_argument("-o", "--output", metavar="DIR", help="analysis directory (default: analysis/<stack name>)")
    g = a.add_argument_group("stack")
    g.add_argument("--pixel-size-um", type=float, help="pixel size (default: file metadata, else 0.0347)")
    g.add_argument("--frame-rate-hz", type=float, help="frame rate (default: file metadata, else 10 Hz)")
    g.add_argument("--bin", type=int, default=1, metavar="N", help="average N consecutive frames (papers: 20-100)")
    g.add_argument("--reference-frame", type=int, metavar="K", help="frame before the current flows (default 0)")
    g.add_argument("--reference-time-s", metavar="T",
                   help="current start time in s (the reference is the last frame at or before it), or 'auto': "
                        "detected where the particle's intensity starts to change")
    g.add_argument("--reference-average", default="all", metavar="N",
                   help="I0 = mean of N frames ending at the reference frame, or 'all' frames before the current "
                        "(default all)")
    g.add_argument("--dark-offset", type=float, default=0.0, metavar="ADU",
                   help="camera offset subtracted from every pixel (file units; sCMOS cameras: ~100)")
    g.add_argument("--dark-frame", metavar="FILE", help="a dark image or stack (its mean is subtracted pixel by pixel)")
    g = a.add_argument_group("drift")
    g.add_argument("--drift", choices=("gaussian", "phase", "none"), default="gaussian")
    g.add_argument("--spot", metavar="ROW,COL",
                   help="marker spot in the reference frame (with --reference-time-s auto: in the first frame; "
                        "default: found)")
    g.add_argument("--spot-box", type=int, default=7, metavar="PX", help="half width of the spot fit window")
    g = a.add_argument_group("particle")
    g.add_argument("--threshold", default="otsu", help="mask threshold: otsu or an intensity (default otsu)")
    g.add_argument("--particle", metavar="ROW,COL", help="a pixel on the particle (default: largest region)")
    g.add_argument("--invert", action="store_true",
                   help="the particle is darker than its surroundings: mask the pixels below the threshold")
    g.add_argument("--mask", metavar="FILE", help="particle mask image (.npy/.npz/.tif/.png, non-zero = particle) "
                                                  "instead of a threshold")
    g.add_argument("--center-radius-px", type=float, default=3.0, help="radius of the centre region (px)")
    g.add_argument("--outline-level", default="half", help="outline iso-level: half, threshold or an intensity")
    g.add_argument("--smoothing-um", type=float, help="outline smoothing (default one pixel)")
    g.add_argument("--resolution-um", type=float, default=0.265, help="optical resolution (PSF FWHM), µm")
    g.add_argument("--mesh", action="store_true", help="also mesh the outline and report its area and perimeter")
    g.add_argument("--mesh-size-um", type=float, help="mesh size for --mesh (default: diameter/20)")
    g = a.add_argument_group("line cut and asymmetry")
    g.add_argument("--line", metavar="R0,C0,R1,C1", help="line cut end points (default: horizontal through the centre)")
    g.add_argument("--line-width", type=int, default=1, metavar="PX")
    g.add_argument("--li-rich-threshold", type=float, default=0.05, help="contrast below which a pixel is Li-rich")
    g.add_argument("--reaction", choices=("charge", "discharge"), default="charge")
    g.add_argument("--asym-d-fraction", type=float, default=0.15, help="d limit as a fraction of R_eq")
    g.add_argument("--asym-frame-fraction", type=float, default=0.5, help="fraction of core frames above the limit")
    g.add_argument("--asym-core", metavar="MIN,MAX", default="0.02,0.8",
                   help="Li-rich area fractions that make a core frame")
    g = a.add_argument_group("output")
    cur = g.add_mutually_exclusive_group()
    cur.add_argument("--current-mA-g", type=float, help="specific current, for a capacity axis")
    cur.add_argument("--c-rate", type=float, help="C-rate (1C = 210 mA/g), for a capacity axis")
    g.add_argument("--map-frames", type=int, default=8, help="frames shown in contrast_maps.png")
    g.add_argument("--no-figures", action="store_true")


def main(argv: list[str] | None = None) -> int:
    from mpi4py import MPI

    from nmcfx.errors import NmcfxError
    from nmcfx.log import setup as setup_logging
    from nmcfx.parallel import ErrorGuard, describe_os_error

    comm = MPI.COMM_WORLD
    parser = _parser()
    args = parser.parse_args(argv)
    setup_logging()
    guard = ErrorGuard(comm)  # errors on some ranks only must not hang the others
    try:
        if args.command == "run":
            return _cmd_run(args, comm)
        if args.command == "mesh":
            return _cmd_mesh(args, comm)
        if args.command == "materials":
            return _cmd_materials(args, comm, parser)
        if args.command == "examples":
            return _cmd_examples(comm)
        if args.command == "analyze":
            return _cmd_analyze(args, comm)
        if args.command == "calibrate":
            return _cmd_calibrate(args, comm)
        if args.command == "sweep":
            return _cmd_sweep(args, comm)
        parser.print_help()
        return 1
    except NmcfxError as exc:
        return guard.fail(f"nmcfx: error: {exc}", 2)
    except (OSError, UnicodeDecodeError) as exc:  # a file problem that no earlier check caught
        return guard.fail(f"nmcfx: error: {describe_os_error(exc)}", 2)
    except KeyboardInterrupt as exc:  # (``nmcfx run`` says how to continue)
        return guard.fail(f"nmcfx: interrupted{'; ' + str(exc) if str(exc) else ''}", 130)
    except Exception:  # a bug: keep its traceback, but never leave the other ranks waiting
        import traceback

        traceback.print_exc()
        return guard.fail(None, 1)


def _config_source(args) -> tuple[dict, Path, str]:
    from nmcfx.config import example_path, load_config
    from nmcfx.errors import InputError

    if bool(args.config) == bool(args.example):
        raise InputError("run", "give either a CONFIG.toml file or --example NAME (see `nmcfx examples`)")
    path = example_path(args.example) if args.example else Path(args.config)
    cfg = load_config(path)
    return cfg, path.resolve().parent, path.stem


def _say(comm, *msg):
    if comm.rank == 0:
        print(*msg, flush=True)


def _cmd_run(args, comm) -> int:
    from nmcfx.api import run
    from nmcfx.log import get_logger
    from nmcfx.solver.outputs import OutputSettings
    from nmcfx.solver.run import format_summary
    from nmcfx.spec import RunSpec

    log = get_logger("nmcfx.cli")
    cfg, base, name = _config_source(args)
    # validated by prepare inside run(), after the run directory check (as before)
    spec = RunSpec(cfg, base_dir=base, name=name, validate=False)
    outdir = Path(args.output) if args.output else Path("runs") / name
    try:
        result = run(spec, outdir, comm=comm, progress=False if args.quiet else None, resume=args.resume,
                     overwrite=args.overwrite, keep_for_next_run=False)  # one run in this process
    except KeyboardInterrupt:  # Ctrl-C: the run checkpointed where it stopped; say how to continue
        if not (outdir / "checkpoint" / "state.json").is_file():
            raise
        source = args.config if args.config else f"--example {args.example}"
        mpi = f"mpiexec -n {comm.size} " if comm.size > 1 else ""
        raise KeyboardInterrupt(f"continue with: {mpi}nmcfx run {source} -o {outdir} --resume") from None
    log.info("summary:")
    log.info("%s", format_summary(result.summary))
    files = _run_files(OutputSettings.from_dict(spec.config.get("output")), outdir)
    log.info("results in %s/ (%s)", outdir, ", ".join(files))
    return 0


def _run_files(output, outdir: Path) -> list[str]:
    """The main files a run wrote, as named in the closing line of ``nmcfx run``."""
    names = ["timeseries.csv", "steps.csv"]
    if output.figures:
        names.append("figures *.png")
    if output.fields != "none":
        ext = ".bp" if output.fields == "vtx" else ".xdmf"
        stem = "fields" if (outdir / f"fields{ext}").exists() else "theta"  # electrodes write fields.*
        parts = sorted(p.name for p in outdir.glob(f"{stem}-part*{ext}"))
        names.append("fields " + " + ".join([f"{stem}{ext}", *parts]))
    if (outdir / "particles.csv").exists():
        names.insert(2, "particles.csv")
    return names + ["metadata.json", "summary.json"]


def _cmd_mesh(args, comm) -> int:
    from nmcfx.config import check_top_level
    from nmcfx.geometries import geometry_from_config

    cfg, base, _ = _config_source(args)
    check_top_level(cfg)
    if args.export:
        from nmcfx.geometries.export import check_export_path
        from nmcfx.parallel import run_on_root

        run_on_root(comm, check_export_path, args.export, field="--export")  # before meshing: costs nothing
    degree = 1
    if not str((cfg.get("geometry") or {}).get("shape", "")).startswith("electrode"):
        from nmcfx.solver.run import particle_degree
        from nmcfx.solver.simulation import SolverSettings
        from nmcfx.solver.surface import SurfaceSettings

        # the mesh a run would use (default sizes depend on the element degree)
        degree = particle_degree(cfg, SolverSettings.from_dict(cfg.get("solver")),
                                 SurfaceSettings.from_dict(cfg.get("surface")))
    particle = geometry_from_config(cfg.get("geometry", {}), comm=comm, base_dir=base, degree=degree)
    _say(comm, particle.summary())
    if args.export:
        from nmcfx.geometries.export import describe_export, export_mesh

        _say(comm, describe_export(args.export, export_mesh(args.export, particle), particle))
    return 0


def _cmd_materials(args, comm, parser) -> int:
    from nmcfx.materials import format_property_table, get_material, property_table, write_property_csv

    if args.materials_command != "show":
        parser.parse_args(["materials", "--help"])
        return 1
    import numpy as np

    from nmcfx.errors import InputError
    from nmcfx.parallel import collective_errors, run_on_root
    from nmcfx.paths import check_output_file, figure_suffixes

    if not 2 <= args.points <= 10000:
        raise InputError("--points", f"must be in [2, 10000], got {args.points}")
    if args.csv:
        run_on_root(comm, check_output_file, args.csv, "--csv")
    if args.plot:
        run_on_root(comm, check_output_file, args.plot, "--plot", suffixes=figure_suffixes())
    material = get_material(args.name)
    thetas = np.linspace(0.05, 0.99, args.points)
    table = property_table(material, thetas)
    _say(comm, format_property_table(material, table))
    _say(comm, "\n" + _mechanics_text(args.name, thetas))
    for option, path in (("--csv", args.csv), ("--plot", args.plot)):
        if not path:
            continue
        with collective_errors(comm, option):
            if comm.rank == 0:
                if option == "--csv":
                    write_property_csv(path, material, table)
                else:
                    from nmcfx.materials import plot_properties

                    plot_properties(material, path)
        _say(comm, f"written {path}")
    return 0


def _mechanics_text(name: str, thetas) -> str:
    """The mechanical data block of ``nmcfx materials show`` (strains relative to θ = 1)."""
    from nmcfx.materials.mechanics import default_mechanics, format_mechanics_table

    return format_mechanics_table(default_mechanics(name), thetas, theta_ref=1.0)


def _cmd_examples(comm) -> int:
    from nmcfx.config import example_names, example_path, load_config

    for name in example_names():
        title = load_config(example_path(name)).get("title", "")
        _say(comm, f"  {name:<22s} {title}")
    return 0


def _cmd_analyze(args, comm) -> int:
    from nmcfx.errors import InputError
    from nmcfx.imaging import AnalysisOptions, AsymmetryRule, parse_rc, run_analysis

    thr = args.threshold if args.threshold.strip().lower() == "otsu" else parse_rc(args.threshold, "--threshold", 1)[0]
    level = args.outline_level
    if level not in ("half", "threshold"):
        level = parse_rc(level, "--outline-level", 1)[0]
    core = parse_rc(args.asym_core, "--asym-core", 2)
    line = None
    if args.line:
        r0, c0, r1, c1 = parse_rc(args.line, "--line", 4)
        line = ((r0, c0), (r1, c1))
    ref_time = args.reference_time_s
    if ref_time is not None and ref_time.strip().lower() != "auto":
        ref_time = parse_rc(ref_time, "--reference-time-s", 1)[0]
    elif ref_time is not None:
        ref_time = "auto"
    ref_avg = args.reference_average.strip().lower()
    if ref_avg != "all":
        try:
            ref_avg = int(ref_avg)
        except ValueError:
            raise InputError("--reference-average", f"must be a number of frames or 'all', got {ref_avg!r}") from None
    opts = AnalysisOptions(
        reference_frame=args.reference_frame, reference_time_s=ref_time,
        reference_average=ref_avg, drift=args.drift, dark_offset=args.dark_offset, dark_frame=args.dark_frame,
        invert=args.invert, mask_file=args.mask,
        spot_rc=parse_rc(args.spot, "--spot") if args.spot else None, spot_box_px=args.spot_box, threshold=thr,
        particle_rc=parse_rc(args.particle, "--particle") if args.particle else None, line=line,
        line_width_px=args.line_width, li_rich_threshold=args.li_rich_threshold, reaction=args.reaction,
        center_radius_px=args.center_radius_px,
        asymmetry=AsymmetryRule(args.asym_d_fraction, args.asym_frame_fraction, core[0], core[1]),
        outline_level=level, smoothing_um=args.smoothing_um, resolution_um=args.resolution_um,
        current_mA_g=args.current_mA_g, c_rate=args.c_rate, map_frames=args.map_frames, figures=not args.no_figures)
    outdir = Path(args.output) if args.output else Path("analysis") / Path(args.stack).stem
    res = run_analysis(args.stack, outdir, opts, frame_rate_hz=args.frame_rate_hz, pixel_size_um=args.pixel_size_um,
                       bin_frames=args.bin, mesh=args.mesh, mesh_size_um=args.mesh_size_um, comm=comm, command=sys.argv)
    for line_ in res.report_lines():
        _say(comm, line_)
    _say(comm, f"results in {outdir}/ (intensity.csv, kymograph.csv, drift.csv, outline.csv, contrast.npz, figures)")
    return 0


def _cmd_calibrate(args, comm) -> int:
    from nmcfx.imaging import format_calibration, run_calibration

    outdir = Path(args.output) if args.output else Path("runs") / (Path(args.config).stem + "-calibration")
    _say(comm, f"nmcfx: calibrating S and A with {args.config}")
    result = run_calibration(args.config, outdir, comm=comm, log=lambda *m: _say(comm, *m), command=sys.argv)
    _say(comm, format_calibration(result))
    _say(comm, f"results in {outdir}/ (calibration.json, e_profile.csv, fit.csv, error_map.png, fit_overlay.png, ...)")
    return 0


def _cmd_sweep(args, comm) -> int:
    from nmcfx.errors import InputError
    from nmcfx.log import get_logger
    from nmcfx.sweep import engine, load_sweep
    from nmcfx.sweep.definition import Sweep
    from nmcfx.sweep.store import SweepDir

    log = get_logger("nmcfx.cli")
    actions = ("run", "status", "collect", "plot")
    if len(args.target) > 2 or (len(args.target) == 2 and args.target[0] not in actions):
        raise InputError("sweep", f"usage: nmcfx sweep [{'|'.join(actions)}] SWEEP.toml|DIR, got {args.target}")
    action, target = (args.target if len(args.target) == 2 else ("run", args.target[0]))
    if target in actions:
        raise InputError("sweep", f"give the sweep directory: nmcfx sweep {target} DIR")
    path = Path(target)
    existing = SweepDir(path).exists() if path.is_dir() else False
    if action != "run" or args.task is not None:
        root = Path(args.output) if (args.output and not existing) else path
        if not SweepDir(root).exists():
            raise InputError("sweep", f"{root} is not a sweep directory (no sweep.json): run the sweep first")
        if args.task is not None:
            from nmcfx.sweep.slurm import run_task

            return run_task(root, args.task, args.expect)
        if action == "status":
            if comm.rank == 0:
                log.info("%s", engine.format_status(engine.status(root), root))
            return 0
        if action == "collect":
            if comm.rank == 0:
                engine.collect_results(root)
            return 0
        from nmcfx.sweep.results import gather, plot_metric

        if comm.rank == 0:
            res = gather(root)
            spec = dict(res.manifest["sweep"].get("plot") or engine.default_plot(res))
            spec.update({k: v for k, v in (("metric", args.metric), ("x", args.x), ("y", args.y)) if v})
            if not {"metric", "x"} <= set(spec):
                raise InputError("--metric/--x", "name the metric and one or two swept keys (see results.csv)")
            log.info("written %s", plot_metric(res, spec["metric"], spec["x"], spec.get("y")))
        return 0
    sweep = Sweep.from_dict(SweepDir(path).read_manifest()["sweep"]) if existing else load_sweep(path)
    root = Path(args.output) if args.output else (path if existing else Path("runs") / sweep.name)
    if args.check:
        cases = sweep.cases()
        log.info("sweep %s: %d case(s), all valid", sweep.name, len(cases))
        for c in cases[:20]:
            log.info("  %4d  %s", c.index, c.name)
        if len(cases) > 20:
            log.info("  ... (%d more)", len(cases) - 20)
        return 0
    if args.plan:
        plan = engine.Plan(sweep, root, args.force)
        if comm.rank == 0:
            plan.write_manifest()
        log.info("sweep %s: %d case(s) valid, %d to run; manifest %s (run case ID with `nmcfx sweep %s --task ID`)",
                 sweep.name, len(plan.cases), len(plan.todo), plan.dir.manifest_path, root)
        return 0
    engine.run_sweep(sweep, root, backend=args.backend, workers=args.workers, ranks_per_case=args.ranks_per_case,
                     force=args.force, comm=comm)
    return 0


if __name__ == "__main__":
    sys.exit(main())
