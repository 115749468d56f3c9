"""Run configuration: one TOML file with the tables below (all optional but ``protocol``).

    title = "free text"
    [geometry]   -> nmcfx.geometries.geometry_from_config   (shape, sizes in µm, sectors)
    [material]   -> nmcfx.materials.material_from_config    (constants, user CSV tables)
    [surface]    -> nmcfx.solver.surface.SurfaceSettings    (flux or Butler–Volmer, blocked sectors)
    [electrode]  -> nmcfx.solver.electrode.ElectrodeSettings (composite electrode: conductivities, electrolyte)
    [protocol]   -> nmcfx.solver.protocol                   (steps: charge / discharge / rest)
    [solver]     -> nmcfx.solver.simulation.SolverSettings  (element degree, time stepping, PETSc)
    [output]     -> nmcfx.solver.outputs.OutputSettings     (snapshots, fields, figures)

Each room validates its own table; this module only reads the file and checks the
top level. Built-in examples live in ``nmcfx/studies/examples/*.toml``.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path

from nmcfx.errors import InputError

TOP_LEVEL_KEYS = ("title", "geometry", "material", "surface", "electrode", "protocol", "solver", "output")


def read_toml(path: str | Path) -> dict:
    """Parse a TOML file; a missing file or bad syntax becomes one :class:`InputError`."""
    path = Path(path)
    if not path.is_file():
        raise InputError("config", f"file not found: {path}")
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise InputError("config", f"{path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise InputError("config", f"{path} is not a UTF-8 text file") from None


def load_config(path: str | Path) -> dict:
    """Parse a run config; syntax errors and unknown tables become :class:`InputError`."""
    cfg = read_toml(path)
    check_top_level(cfg)
    return cfg


def check_top_level(cfg: dict):
    extra = set(cfg) - set(TOP_LEVEL_KEYS)
    if extra:
        raise InputError("config", f"unknown top-level key(s) {sorted(extra)}; allowed: {list(TOP_LEVEL_KEYS)}")
    for key in TOP_LEVEL_KEYS[1:]:
        if key in cfg and not isinstance(cfg[key], dict):
            raise InputError(key, f"must be a table ([{key}]), got {type(cfg[key]).__name__}")
    if "title" in cfg and not isinstance(cfg["title"], str):
        raise InputError("title", "must be a string")


def example_names() -> list[str]:
    files = resources.files("nmcfx.studies") / "examples"
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".toml"))


def example_path(name: str) -> Path:
    files = resources.files("nmcfx.studies") / "examples"
    candidate = files / f"{name}.toml"
    if not candidate.is_file():
        raise InputError("--example", f"unknown example {name!r}; available: {example_names()}")
    return Path(str(candidate))
