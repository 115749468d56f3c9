"""The ``nmcfx`` command. Thin: parses arguments and calls the rooms.

    nmcfx run CONFIG.toml [-o DIR]       run a simulation described by a TOML file
    nmcfx run --example NAME [-o DIR]    run a built-in example (see `nmcfx examples`)
    nmcfx run … -o DIR --resume          continue an interrupted run from its checkpoint
    nmcfx mesh CONFIG.toml               build only the mesh and report it
    nmcfx materials show NAME [--csv F]  table of θ, D_Li, D_eff, V_oc, dV_oc/dθ, D_chem
    nmcfx examples                       list the built-in examples
    nmcfx --version

Works the same under ``mpiexec -n N``: every rank runs, rank 0 prints and writes.
User errors print one line (``nmcfx: error: ...``) and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    from nmcfx import __version__

    p = argparse.ArgumentParser(prog="nmcfx", description="Li transport in NMC cathode particles (DOLFINx).")
    p.add_argument("--version", action="version", version=f"nmcfx {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    r = sub.add_parser("run", help="run a simulation from a TOML config or a built-in example")
    r.add_argument("config", nargs="?", help="TOML configuration file")
    r.add_argument("--example", metavar="NAME", help="run a built-in example instead of a file")
    r.add_argument("-o", "--output", metavar="DIR", help="run directory (default: runs/<name>)")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    r.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from DIR/checkpoint (same config, same number of ranks)")

    m = sub.add_parser("mesh", help="build the mesh of a config and print its summary")
    m.add_argument("config", nargs="?")
    m.add_argument("--example", metavar="NAME")

    mat = sub.add_parser("materials", help="material property tables")
    matsub = mat.add_subparsers(dest="materials_command", metavar="ACTION")
    show = matsub.add_parser("show", help="print θ, D_Li, D_eff, V_oc, dV_oc/dθ, D_chem on a θ grid")
    show.add_argument("name", nargs="?", default="NMC-Ni87")
    show.add_argument("--csv", metavar="FILE", help="also write the table as CSV")
    show.add_argument("--plot", metavar="FILE", help="also write a PNG of the properties")
    show.add_argument("--points", type=int, default=20, help="number of θ values (default 20)")

    sub.add_parser("examples", help="list the built-in examples")
    return p


def main(argv: list[str] | None = None) -> int:
    from mpi4py import MPI

    from nmcfx.errors import NmcfxError

    comm = MPI.COMM_WORLD
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return _cmd_run(args, comm)
        if args.command == "mesh":
            return _cmd_mesh(args, comm)
        if args.command == "materials":
            return _cmd_materials(args, comm, parser)
        if args.command == "examples":
            return _cmd_examples(comm)
        parser.print_help()
        return 1
    except NmcfxError as exc:
        if comm.rank == 0:
            print(f"nmcfx: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if comm.rank == 0:
            print("nmcfx: interrupted", file=sys.stderr)
        return 130


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
    from nmcfx.solver.run import execute, format_summary, prepare

    cfg, base, name = _config_source(args)
    prepared = prepare(cfg, base_dir=base, comm=comm)
    outdir = Path(args.output) if args.output else Path("runs") / name
    _say(comm, f"nmcfx: {prepared.title or name}")
    _say(comm, prepared.particle.summary())
    for i, s in enumerate(prepared.protocol.steps):
        _say(comm, f"  step {i}: {s.describe()}")
    if args.resume:
        _say(comm, f"  resuming from {outdir / 'checkpoint'}")
    summary = execute(prepared, outdir, comm=comm, progress=False if args.quiet else None, resume=args.resume)
    _say(comm, "summary:")
    _say(comm, format_summary(summary))
    _say(comm, f"results in {outdir}/ (timeseries.csv, figures *.png, fields theta.bp, metadata.json)")
    return 0


def _cmd_mesh(args, comm) -> int:
    from nmcfx.config import check_top_level
    from nmcfx.geometries import geometry_from_config

    cfg, base, _ = _config_source(args)
    check_top_level(cfg)
    particle = geometry_from_config(cfg.get("geometry", {}), comm=comm, base_dir=base)
    _say(comm, particle.summary())
    return 0


def _cmd_materials(args, comm, parser) -> int:
    from nmcfx.materials import format_property_table, get_material, property_table, write_property_csv

    if args.materials_command != "show":
        parser.parse_args(["materials", "--help"])
        return 1
    import numpy as np

    from nmcfx.errors import InputError

    if not 2 <= args.points <= 10000:
        raise InputError("--points", f"must be in [2, 10000], got {args.points}")
    material = get_material(args.name)
    thetas = np.linspace(0.05, 0.99, args.points)
    table = property_table(material, thetas)
    _say(comm, format_property_table(material, table))
    if comm.rank == 0:
        if args.csv:
            write_property_csv(args.csv, material, table)
            print(f"written {args.csv}")
        if args.plot:
            from nmcfx.materials import plot_properties

            plot_properties(material, args.plot)
            print(f"written {args.plot}")
    return 0


def _cmd_examples(comm) -> int:
    from nmcfx.config import example_names, example_path, load_config

    for name in example_names():
        title = load_config(example_path(name)).get("title", "")
        _say(comm, f"  {name:<22s} {title}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
