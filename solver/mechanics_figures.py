"""Figures of the mechanics outputs (matplotlib, Agg; rank 0 only): stress maps, stress
traces, surface hoop stress vs angle, simulated XRD peaks and the θ distribution."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .figures import _plt, _wrap

MAX_MAP_ROWS = 6


def _pick(items, n=MAX_MAP_ROWS):
    if len(items) <= n:
        return list(items)
    idx = np.unique(np.linspace(0, len(items) - 1, n).round().astype(int))
    return [items[i] for i in idx]


def stress_maps(images, extent, path: Path, *, title: str = ""):
    """Rows = snapshots (at most 6), columns = σ1, hydrostatic, von Mises (MPa), common scales per column."""
    plt = _plt()
    images = _pick(images)
    names = [("max. principal σ1 (MPa)", "RdBu_r", True), ("hydrostatic σ_h (MPa)", "RdBu_r", True),
             ("von Mises (MPa)", "magma", False)]
    nrow = len(images)
    height = 2.3 * nrow + 1.3
    fig, axes = plt.subplots(nrow, 3, figsize=(9.6, height), squeeze=False)
    fig.subplots_adjust(left=0.1, right=0.97, bottom=0.5 / height, top=1 - 1.05 / height, wspace=0.35,
                        hspace=0.3)
    for j, (label, cmap, centred) in enumerate(names):
        vals = np.concatenate([img[j][np.isfinite(img[j])] for _, img in images])
        lo, hi = (float(vals.min()), float(vals.max())) if vals.size else (-1.0, 1.0)
        if centred:
            m = max(abs(lo), abs(hi), 1e-9)
            lo, hi = -m, m
        handle = None
        for i, (t, img) in enumerate(images):
            ax = axes[i, j]
            handle = ax.imshow(img[j], origin="lower", extent=extent, cmap=cmap, vmin=lo, vmax=hi,
                               interpolation="nearest")
            ax.set_aspect("equal")
            ax.tick_params(labelsize=7)
            if j == 0:
                ax.set_ylabel(f"t = {t / 60:.1f} min\ny (µm)", fontsize=8)
            if i == nrow - 1:
                ax.set_xlabel("x (µm)", fontsize=8)
        pos = axes[0, j].get_position()
        cax = fig.add_axes((pos.x0, pos.y1 + 0.2 / height, pos.width, 0.1 / height))
        cb = fig.colorbar(handle, cax=cax, orientation="horizontal")
        cb.ax.xaxis.set_label_position("top")
        cb.set_label(label, fontsize=8)
        cb.ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(_wrap(title, 90), fontsize=9, y=0.995)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def stress_trace(series: dict, path: Path, *, title: str = "", toughness=None):
    """Peak tensile stress, surface hoop stress range and centre stress vs time; fracture indicator."""
    plt = _plt()
    t = series["time_s"] / 60.0
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.14, top=0.84, wspace=0.28)
    a1.plot(t, series["sigma1_max_MPa"], label="peak tensile σ1 (anywhere)", color="C3", lw=2)
    a1.plot(t, series["hoop_surface_max_MPa"], label="surface hoop, max", color="C0")
    a1.plot(t, series["hoop_surface_min_MPa"], label="surface hoop, min", color="C0", ls="--")
    a1.plot(t, series["hydrostatic_center_MPa"], label="hydrostatic at the centre", color="k", ls=":")
    a1.axhline(0.0, color="0.6", lw=0.8)
    i = int(np.argmax(series["sigma1_max_MPa"]))
    a1.plot(t[i], series["sigma1_max_MPa"][i], "o", color="C3")
    a1.annotate(f"{series['sigma1_max_MPa'][i]:.0f} MPa at r/R = {series['sigma1_max_r_over_R'][i]:.2f}",
                (t[i], series["sigma1_max_MPa"][i]), textcoords="offset points", xytext=(0, 6), fontsize=8,
                ha="center")
    a1.set_xlabel("time (min)")
    a1.set_ylabel("stress (MPa)")
    a1.margins(y=0.15)
    a1.legend(fontsize=7, loc="best")
    a1.grid(alpha=0.3)
    if toughness is not None:
        a2.plot(t, series["fracture_index_surface"], label="surface flaw: (K_I/K_Ic)²", color="C0")
        a2.plot(t, series["fracture_index_interior"], label="interior flaw: (K_I/K_Ic)²", color="C3")
        a2.axhline(1.0, color="k", lw=0.8, ls="--")
        a2.set_ylabel("fracture index G/G_c")
    else:
        a2.plot(t, series["K_I_surface_MPa_sqrt_m"], label="surface flaw", color="C0")
        a2.plot(t, series["K_I_interior_MPa_sqrt_m"], label="interior flaw", color="C3")
        a2.set_ylabel("K_I (MPa m$^{1/2}$)")
    a2.set_xlabel("time (min)")
    a2.legend(fontsize=7)
    a2.grid(alpha=0.3)
    if title:
        fig.suptitle(_wrap(title, 110), fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def surface_hoop(profiles, path: Path, *, title: str = ""):
    """Hoop stress t·σ·t along the surface vs polar angle, one curve per snapshot."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.14, top=0.86)
    cmap = plt.get_cmap("viridis")
    for k, (t, prof) in enumerate(profiles):
        if not len(prof):
            continue
        ax.plot(prof[:, 0], prof[:, 4], ".", ms=2, color=cmap(k / max(1, len(profiles) - 1)),
                label=f"{t / 60:.1f} min")
    ax.axhline(0.0, color="0.6", lw=0.8)
    ax.set_xlim(0, 360)
    ax.set_xticks(range(0, 361, 45))
    ax.set_xlabel("polar angle about the centroid (deg)")
    ax.set_ylabel("surface hoop stress (MPa)")
    ax.legend(fontsize=7, ncol=2, markerscale=4)
    ax.grid(alpha=0.3)
    if title:
        fig.suptitle(_wrap(title, 80), fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def xrd_peaks(xrd, hists, bins, path: Path, *, title: str = "", wavelength_A: float = 1.5406):
    """θ volume distribution and simulated (003), (110) peaks at the snapshot times."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.15, top=0.84, wspace=0.3)
    cmap = plt.get_cmap("viridis")
    n = max(1, len(xrd) - 1)
    centres = 0.5 * (bins[1:] + bins[:-1])
    width = bins[1] - bins[0]
    for k, ((t, g3, p3, g1, p1), (_, h)) in enumerate(zip(xrd, hists)):
        c = cmap(k / n)
        axes[0].step(centres, h / width, where="mid", color=c, label=f"{t / 60:.1f} min")
        axes[1].plot(g3, p3, color=c)
        axes[2].plot(g1, p1, color=c)
    lo = min((centres[h > 0].min() for _, h in hists if np.any(h > 0)), default=0.0)
    hi = max((centres[h > 0].max() for _, h in hists if np.any(h > 0)), default=1.0)
    axes[0].set_xlim(max(0.0, lo - 0.05), min(1.0, hi + 0.05))
    axes[0].set_xlabel("Li occupancy θ")
    axes[0].set_ylabel("volume fraction per unit θ")
    axes[0].legend(fontsize=7)
    for ax, gi, pi in ((axes[1], 1, 2), (axes[2], 3, 4)):
        sup = np.concatenate([x[gi][x[pi] > 0.01 * x[pi].max()] for x in xrd if np.any(x[pi] > 0)])
        if sup.size:
            m = 0.15 * (sup.max() - sup.min()) + 0.02
            ax.set_xlim(sup.min() - m, sup.max() + m)
    axes[1].set_xlabel(f"2θ (deg), λ = {wavelength_A:g} Å")
    axes[1].set_title("(003): c/3", fontsize=9)
    axes[2].set_xlabel(f"2θ (deg), λ = {wavelength_A:g} Å")
    axes[2].set_title("(110): a/2", fontsize=9)
    for ax in axes:
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(_wrap("simulated XRD (strained lattice) — " + title, 120), fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)
