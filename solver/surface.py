"""Surface conditions: prescribed flux or Butler–Volmer kinetics, and partial blocking.

Config form (TOML)::

    [surface]
    model = "flux"                    # "flux" (galvanostatic flux, Xu 2022 Eq. 15) | "butler_volmer"
    blocking = { blocked = 0.3 }      # sector name → η = j_RSL / j_NMC in (0, 1]   (Lun 2025)
    # or, instead of η, a rocksalt film thickness per sector (nm), see rocksalt.py:
    # rocksalt_thickness_nm = { blocked = 1.0 }
    electrolyte_potential_V = 0.0     # φ_l (Butler–Volmer only); cell voltage = φ_s − φ_l vs Li/Li⁺
    electrolyte_concentration_ratio = 1.0   # c_l / c_l,ref (Butler–Volmer only)

Blocking keeps the total current fixed (Lun 2025): j_NMC (Γ_free + Σ η_s Γ_s) = j̄ Γ, so a
blocked arc carries η j_NMC and the free surface a correspondingly larger flux. With
Butler–Volmer kinetics the same η scales the exchange current of the sector.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from nmcfx.errors import InputError

MODELS = ("flux", "butler_volmer")


@dataclass(frozen=True)
class SurfaceSettings:
    model: str = "flux"
    blocking: dict = field(default_factory=dict)  # sector → η
    rocksalt_thickness_nm: dict = field(default_factory=dict)  # sector → δ (nm)
    rocksalt_diffusivity_ratio: float = 3000.0  # D_layered / D_rocksalt (Lun 2025: ~3000)
    electrolyte_potential_V: float = 0.0
    electrolyte_concentration_ratio: float = 1.0

    @classmethod
    def from_dict(cls, d: dict | None) -> "SurfaceSettings":
        d = dict(d or {})
        names = set(cls.__dataclass_fields__)
        extra = set(d) - names
        if extra:
            raise InputError("surface", f"unknown key(s) {sorted(extra)}; allowed: {sorted(names)}")
        out = {}
        if "model" in d:
            if d["model"] not in MODELS:
                raise InputError("surface.model", f"must be one of {list(MODELS)}, got {d['model']!r}")
            out["model"] = d["model"]
        if "blocking" in d:
            out["blocking"] = _sector_map(d["blocking"], "surface.blocking", _eta)
        if "rocksalt_thickness_nm" in d:
            out["rocksalt_thickness_nm"] = _sector_map(d["rocksalt_thickness_nm"], "surface.rocksalt_thickness_nm",
                                                       _thickness)
        both = set(out.get("blocking", {})) & set(out.get("rocksalt_thickness_nm", {}))
        if both:
            raise InputError("surface", f"sector(s) {sorted(both)} have both an η (blocking) and a rocksalt "
                                        "thickness; give one of them")
        for key, lo, hi in (("rocksalt_diffusivity_ratio", 1.0, 1e9), ("electrolyte_concentration_ratio", 0.0, 1e3)):
            if key in d:
                out[key] = _number(d[key], f"surface.{key}", lo, hi)
        if "electrolyte_potential_V" in d:
            out["electrolyte_potential_V"] = _number(d["electrolyte_potential_V"], "surface.electrolyte_potential_V",
                                                     -10.0, 10.0, lo_open=False)
        return cls(**out)

    def to_dict(self) -> dict:
        return asdict(self)

    def check_sectors(self, particle):
        """Sectors named here must exist on the mesh and be reactive."""
        for table in ("blocking", "rocksalt_thickness_nm"):
            for name in getattr(self, table):
                if name not in particle.sectors:
                    raise InputError(f"surface.{table}.{name}",
                                     f"no boundary sector {name!r}; the mesh has {sorted(particle.sectors)} "
                                     "(define sectors in [[geometry.sectors]])")
                if name not in particle.reactive_sectors:
                    raise InputError(f"surface.{table}.{name}", f"sector {name!r} is not reactive (basal face)")


def _sector_map(value, field_name, check) -> dict:
    if not isinstance(value, dict):
        raise InputError(field_name, "must be a table of sector name = value, e.g. { blocked = 0.3 }")
    return {str(k): check(v, f"{field_name}.{k}") for k, v in value.items()}


def _number(v, field_name, lo, hi, lo_open=True) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise InputError(field_name, f"must be a number in {'(' if lo_open else '['}{lo:g}, {hi:g}], got {v!r}")
    if (v <= lo if lo_open else v < lo) or v > hi:
        raise InputError(field_name, f"must be in {'(' if lo_open else '['}{lo:g}, {hi:g}], got {v!r}")
    return float(v)


def _eta(v, field_name) -> float:
    return _number(v, field_name, 0.0, 1.0)


def _thickness(v, field_name) -> float:
    return _number(v, field_name, 0.0, 100.0, lo_open=False)
