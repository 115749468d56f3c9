"""Small helpers shared by the stress studies (``*_stress_*.py``); the study engine is ``_common``.

Every stress study adds a ``[mechanics]`` table to its case configs, so each case directory
also holds ``mechanics.csv``, ``surface_hoop.csv``, ``lattice_distribution.csv`` and
``mechanics.json`` (see :mod:`nmcfx.solver.mechanics_outputs`).
"""

from __future__ import annotations

import json
import math

import numpy as np

from nmcfx.geometries import XU2022_AREA_UM2, xu2022_semi_axes_um
from nmcfx.studies._common import read_csv_columns

#: The mechanics table of the studies: long free prism (generalised plane strain), default data.
MECHANICS = {"assumption_2d": "generalized_plane_strain"}
#: Equivalent diameter √(4A/π) of the Xu 2022 particle (A = 4.87 µm²): the "2.5 µm" particle.
XU_EQUIVALENT_DIAMETER_UM = math.sqrt(4.0 * XU2022_AREA_UM2 / math.pi)


def read_case_files(study, res) -> dict:
    """mechanics.csv, surface_hoop.csv, lattice_distribution.csv (columns) and mechanics.json of a
    finished case, identical on all ranks (empty dicts for missing files)."""
    data = None
    if study.comm.rank == 0:
        d = res.directory
        data = {"mechanics": read_csv_columns(d / "mechanics.csv"),
                "hoop": read_csv_columns(d / "surface_hoop.csv"),
                "lattice": read_csv_columns(d / "lattice_distribution.csv"),
                "summary": json.loads((d / "mechanics.json").read_text()) if (d / "mechanics.json").is_file() else {}}
    return study.comm.bcast(data, root=0)


def scaled_xu_geometry(size_um: float, quick: bool) -> dict:
    """The Xu 2022 ellipse scaled to the equivalent diameter ``size_um``; mesh sizes scale with it,
    so every size has the same number of elements."""
    s = size_um / XU_EQUIVALENT_DIAMETER_UM
    a, b = xu2022_semi_axes_um()
    h, hs = (0.3, 0.1) if quick else (0.06, 0.02)
    return {"shape": "ellipse", "semi_axes_um": [a * s, b * s], "mesh_size_um": h * s, "surface_mesh_size_um": hs * s}


def at_time(series: dict, key: str, t_s: float) -> float:
    """Value of a time-series column at the record closest to ``t_s``."""
    i = int(np.argmin(np.abs(series["time_s"] - t_s)))
    return float(series[key][i])
