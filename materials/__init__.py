"""nmcfx.materials — cathode material properties (pure NumPy: no SciPy, no DOLFINx).

Public API::

    get_material(name="NMC-Ni87", **overrides) -> Material
    material_from_config(cfg: dict, base_dir=None) -> Material     # the [material] TOML table
    property_table(material, thetas=None) -> dict[str, np.ndarray]
    format_property_table(material, thetas=None) -> str
    write_property_csv(path, material, thetas=None) -> Path
    plot_properties(material, path) -> Path
    load_table(path, kind) -> Table                                 # "diffusivity" | "ocv"

See :mod:`nmcfx.materials.nmc` for the model and ``data/README.md`` for the defaults;
mechanical data (lattice parameters a(θ), c(θ), stiffness) in :mod:`nmcfx.materials.mechanics`
and ``data/README-mechanics.md``.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from nmcfx.errors import InputError

from .constants import FARADAY, GAS_CONSTANT
from .constants import MAH_TO_C
from .nmc import NMC_NI87_COMPOSITION, NMC_NI87_MOLAR_MASS, Material, OCVModel, pitt_bounded_i0_ref
from .ocv import ChenExtendedOCV, MappedChenOCV
from .report import (
    DEFAULT_THETAS,
    format_property_table,
    plot_properties,
    property_table,
    write_property_csv,
)
from .tables import Table, load_table
from .mechanics import MechanicalMaterial, Stiffness, default_mechanics, load_lattice_table  # mechanical data

__all__ = [
    "CONFIG_KEYS",
    "ChenExtendedOCV",
    "DATA_DIR",
    "DEFAULT_THETAS",
    "FARADAY",
    "GAS_CONSTANT",
    "MappedChenOCV",
    "Material",
    "MechanicalMaterial",
    "Stiffness",
    "default_mechanics",
    "load_lattice_table",
    "OCVModel",
    "Table",
    "available_materials",
    "format_property_table",
    "get_material",
    "load_table",
    "material_from_config",
    "pitt_bounded_i0_ref",
    "plot_properties",
    "property_table",
    "write_property_csv",
]

DATA_DIR = Path(__file__).resolve().parent / "data"
DEFAULT_DLI_CSV = DATA_DIR / "nmc_dli_xu2022_default.csv"

#: Keys accepted in the ``[material]`` config table.
CONFIG_KEYS = (
    "name",
    "density_g_cm3",
    "molar_mass_g_mol",
    "capacity_mAh_g",
    "theta0",
    "scaling_S",
    "temperature_K",
    "dli_csv",
    "ocv_csv",
    "i0_ref_A_m2",
    "alpha_a",
    "alpha_c",
    "i0_csv",
)


@functools.lru_cache(maxsize=None)
def _default_dli_table() -> Table:
    return load_table(DEFAULT_DLI_CSV, "diffusivity", field="material.dli_csv", quantity="D_Li")


@functools.lru_cache(maxsize=None)
def _default_ocv() -> MappedChenOCV:
    """The Chen 2020 fit placed on NMC-Ni87's θ axis by the statements of seed 002 (ocv.py)."""
    return MappedChenOCV.from_statements(theoretical_capacity_mAh_g=FARADAY / NMC_NI87_MOLAR_MASS / MAH_TO_C)


def _nmc_ni87(**kw) -> Material:
    dli = kw.setdefault("dli_table", _default_dli_table())
    ocv = kw.setdefault("ocv_model", _default_ocv())
    if "description" not in kw:
        d = "constructed default (Xu et al. 2022 text)" if dli is _default_dli_table() else (
            f"from {dli.source}" if getattr(dli, "source", "") else "user table")
        v = repr(ocv) if isinstance(ocv, (MappedChenOCV, ChenExtendedOCV)) else (
            f"from {ocv.source}" if getattr(ocv, "source", "") else "user model")
        kw["description"] = (
            f"single-crystal LiNi0.87Mn0.05Co0.08O2 (Xu et al., Joule 2022); D_Li {d}; V_oc {v}"
        )
    return Material(name="NMC-Ni87", **kw)


#: canonical name → (factory, aliases)
_REGISTRY = {
    "NMC-Ni87": (_nmc_ni87, ("nmc", "nmc87", "ni87", "nmcni87", "nmc-ni87", "lini087mn005co008o2")),
}


def _norm(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch not in " -_.")


def available_materials() -> dict[str, tuple[str, ...]]:
    """Registered materials: canonical name → aliases (matched case-insensitively)."""
    return {k: v[1] for k, v in _REGISTRY.items()}


def _resolve(name) -> str:
    if not isinstance(name, str):
        raise InputError("material.name", f"must be a string, got {name!r}")
    key = _norm(name)
    for canon, (_, aliases) in _REGISTRY.items():
        if key == _norm(canon) or key in {_norm(a) for a in aliases}:
            return canon
    known = "; ".join(f"{c} (aliases: {', '.join(a)})" for c, (_, a) in _REGISTRY.items())
    raise InputError("material.name", f"unknown material {name!r}; available: {known}")


def get_material(name: str = "NMC-Ni87", **overrides) -> Material:
    """Registered material with optional overrides.

    ``overrides`` are the :data:`CONFIG_KEYS` other than ``name`` (numbers in the units
    their names state; ``dli_csv``/``ocv_csv`` are paths) and, for programmatic use,
    ``dli_table``/``ocv_model`` objects.
    """
    canon = _resolve(name)
    factory = _REGISTRY[canon][0]
    kw = dict(overrides)
    allowed = set(CONFIG_KEYS) - {"name"} | {"dli_table", "ocv_model", "i0_table", "description"}
    unknown = sorted(set(kw) - allowed)
    if unknown:
        raise InputError(
            "material",
            f"unknown key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(sorted(allowed))}",
        )
    dli_csv = kw.pop("dli_csv", None)
    ocv_csv = kw.pop("ocv_csv", None)
    i0_csv = kw.pop("i0_csv", None)
    if i0_csv is not None:
        kw["i0_table"] = load_table(_as_path("material.i0_csv", i0_csv), "exchange_current",
                                    field="material.i0_csv", quantity="i0")
    if dli_csv is not None:
        kw["dli_table"] = load_table(_as_path("material.dli_csv", dli_csv), "diffusivity",
                                     field="material.dli_csv", quantity="D_Li")
    if ocv_csv is not None:
        kw["ocv_model"] = load_table(_as_path("material.ocv_csv", ocv_csv), "ocv",
                                     field="material.ocv_csv", quantity="V_oc")
    return factory(**kw)


def _as_path(field: str, value, base_dir=None) -> Path:
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise InputError(field, f"must be a file path (string), got {value!r}")
    p = Path(os.fspath(value)).expanduser()
    if not p.is_absolute() and base_dir is not None:
        p = Path(base_dir) / p
    return p


def material_from_config(cfg: dict | None, base_dir=None) -> Material:
    """Build the material from the ``[material]`` table of a study config.

    Relative ``dli_csv``/``ocv_csv`` paths are resolved against ``base_dir`` (the config
    file's folder). Unknown keys and out-of-range values raise InputError.
    """
    if cfg is None:
        cfg = {}
    if not isinstance(cfg, dict):
        raise InputError("material", f"must be a table of keys, got {type(cfg).__name__}")
    unknown = sorted(set(cfg) - set(CONFIG_KEYS))
    if unknown:
        raise InputError(
            "material",
            f"unknown key(s) {', '.join(map(repr, unknown))}; allowed keys: {', '.join(CONFIG_KEYS)}",
        )
    kw = dict(cfg)
    name = kw.pop("name", "NMC-Ni87")
    for key in ("dli_csv", "ocv_csv", "i0_csv"):
        if key in kw:
            kw[key] = _as_path(f"material.{key}", kw[key], base_dir)
    return get_material(name, **kw)
