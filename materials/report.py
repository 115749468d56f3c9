"""Property tables (text/CSV) and plots of a :class:`~nmcfx.materials.nmc.Material`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from nmcfx.errors import InputError

from .constants import CM2_S_TO_M2_S
from .nmc import Material

#: Default θ grid of ``nmcfx materials show``: 0.05, 0.10, …, 0.95, 0.97, 0.99.
DEFAULT_THETAS = np.round(np.concatenate([np.arange(1, 20) * 0.05, [0.97, 0.99]]), 4)

#: Column key → (header shown to users, unit)
COLUMNS = {
    "theta": ("theta", "-"),
    "D_Li_cm2_s": ("D_Li", "cm^2/s"),
    "D_eff_cm2_s": ("D_eff", "cm^2/s"),
    "V_oc_V": ("V_oc", "V"),
    "dV_oc_dtheta_V": ("dV_oc/dtheta", "V"),
    "D_chem_cm2_s": ("D_chem", "cm^2/s"),
}


def _thetas(thetas) -> np.ndarray:
    th = DEFAULT_THETAS if thetas is None else np.asarray(thetas, dtype=float).ravel()
    if th.size == 0 or not np.all(np.isfinite(th)) or np.any((th <= 0) | (th >= 1)):
        raise InputError("thetas", "occupancies must be finite numbers in (0, 1)")
    return th


def _checked_table(tab: Mapping) -> dict[str, np.ndarray]:
    missing = [k for k in COLUMNS if k not in tab]
    if missing:
        raise ValueError(f"property table lacks columns {missing}")
    return {k: np.asarray(tab[k], dtype=float) for k in COLUMNS}


def property_table(material: Material, thetas=None) -> dict[str, np.ndarray]:
    """Material properties on a θ grid; keys are :data:`COLUMNS` (units in the key names).

    ``thetas`` defaults to :data:`DEFAULT_THETAS`; a table already returned by this
    function is accepted too (returned as is).
    """
    if isinstance(thetas, Mapping):
        return _checked_table(thetas)
    th = _thetas(thetas)
    to_cm2 = 1.0 / CM2_S_TO_M2_S
    return {
        "theta": th.copy(),
        "D_Li_cm2_s": material.D_Li(th) * to_cm2,
        "D_eff_cm2_s": material.D_eff(th) * to_cm2,
        "V_oc_V": material.ocv(th),
        "dV_oc_dtheta_V": material.docv(th),
        "D_chem_cm2_s": material.D_chem(th) * to_cm2,
    }


def format_property_table(material: Material, thetas=None, *, header: bool = True) -> str:
    """Human-readable table (material summary, then aligned columns).

    ``thetas``: θ grid, or a table from :func:`property_table`.
    """
    tab = property_table(material, thetas)
    names = [f"{COLUMNS[k][0]} [{COLUMNS[k][1]}]" if COLUMNS[k][1] != "-" else COLUMNS[k][0] for k in tab]
    fmt = {
        "theta": "{:.3f}",
        "V_oc_V": "{:.4f}",
        "dV_oc_dtheta_V": "{:.4f}",
    }
    cols = []
    for key, name in zip(tab, names):
        f = fmt.get(key, "{:.3e}")
        cells = [f.format(v) for v in tab[key]]
        w = max(len(name), *(len(c) for c in cells))
        cols.append([name.rjust(w)] + [c.rjust(w) for c in cells])
    rows = ["  ".join(r) for r in zip(*cols)]
    out = []
    if header:
        out.append(material.summary())
        out.append("")
    out.extend(rows)
    return "\n".join(out)


def write_property_csv(path, material: Material, thetas=None) -> Path:
    """Write :func:`property_table` as CSV (``#`` provenance lines, then header and rows).

    ``thetas``: θ grid, or a table from :func:`property_table`.
    """
    tab = property_table(material, thetas)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"# {ln}" for ln in material.summary().splitlines()]
    lines.append(",".join(tab))
    for i in range(tab["theta"].size):
        lines.append(",".join(f"{tab[k][i]:.10g}" for k in tab))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def plot_properties(material: Material, path, thetas=None) -> Path:
    """PNG with D_Li, D_eff, D_chem (log scale) and V_oc vs θ. Uses the Agg canvas only."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    th = np.linspace(0.02, 0.995, 400) if thetas is None else _thetas(thetas)
    to_cm2 = 1.0 / CM2_S_TO_M2_S
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.semilogy(th, material.D_Li(th) * to_cm2, label=r"$D_\mathrm{Li}$ (NMR)")
    ax1.semilogy(th, material.D_eff(th) * to_cm2, label=rf"$D_\mathrm{{eff}} = D_\mathrm{{Li}}/{material.scaling_S:g}$")
    ax1.semilogy(th, material.D_chem(th) * to_cm2, label=r"$D_\mathrm{chem}$ (with thermodynamic factor)")
    tab = material.dli_table
    ax1.semilogy(tab.theta, tab.values * to_cm2, "o", ms=4, color="C0", label="table nodes")
    ax1.set_xlabel(r"Li occupancy $\theta$")
    ax1.set_ylabel(r"diffusivity (cm$^2$ s$^{-1}$)")
    ax1.set_xlim(0, 1)
    ax1.grid(True, which="both", alpha=0.3)
    ax1.legend(fontsize=8)
    ax2.plot(th, material.ocv(th), color="k")
    ax2.set_xlabel(r"Li occupancy $\theta$")
    ax2.set_ylabel(r"$V_\mathrm{oc}$ (V vs Li/Li$^+$)")
    ax2.set_xlim(0, 1)
    ax2.grid(True, alpha=0.3)
    fig.suptitle(f"{material.name}: transport and thermodynamic properties")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
