"""Figures of the mechanics outputs (matplotlib Agg canvas, rank 0 only).

``stress_maps.png``: σ1, hydrostatic and von Mises maps at up to four snapshot times.
``stress_summary.png``: peak/surface/centre stress vs time, the fracture indicator, the surface
hoop stress vs polar angle, the θ volume distribution and the simulated (003), (110) peaks.
Two figures with few axes on purpose: matplotlib's per-axes cost dominates small runs.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from .figures import _wrap

MAX_MAP_ROWS = 4


def _figure(w, h):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h))
    FigureCanvasAgg(fig)
    return fig


@functools.cache
def _pixel_image_class():
    """The artist class of :func:`_PixelImage` (defined on first use: matplotlib is imported only when
    figures are drawn)."""
    from matplotlib.artist import Artist

    class PixelImage(Artist):
        def __init__(self, rgba, box):
            super().__init__()
            self.rgba, self.box = rgba, box

        def draw(self, renderer):
            W, H = renderer.get_canvas_width_height()
            x0, y0, w, h = (round(v * s) for v, s in zip(self.box, (W, H, W, H)))
            n, m = self.rgba.shape[:2]
            rows = np.minimum(((np.arange(h) + 0.5) * n / h).astype(int), n - 1)
            cols = np.minimum(((np.arange(w) + 0.5) * m / w).astype(int), m - 1)
            gc = renderer.new_gc()
            renderer.draw_image(gc, x0, y0, np.ascontiguousarray(self.rgba[rows[:, None], cols[None, :]]))
            gc.restore()

    return PixelImage


def _PixelImage(rgba, box):
    """An artist drawing RGBA bytes (first row at the bottom, as the renderer takes them) into a box of
    the figure (left, bottom, width, height in figure fractions), upsampled to the output's pixels by
    nearest neighbour in bytes and handed to the renderer as they are. (``imshow`` resamples in floating
    point: ~30 MB for the stress maps.)"""
    return _pixel_image_class()(rgba, box)


def _pick(items, n):
    if len(items) <= n:
        return list(items)
    idx = np.unique(np.linspace(0, len(items) - 1, n).round().astype(int))
    return [items[i] for i in idx]


def stress_maps(images, extent, path: Path, *, title: str = ""):
    """Rows = snapshots (at most 4, evenly picked), columns = σ1, hydrostatic, von Mises (MPa);
    one colour scale per column (diverging, centred on 0, for σ1 and σ_h). The panels are coloured
    here and drawn as one image in one axes (a dozen axes would cost more than the run's mechanics)."""
    import matplotlib
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    images = _pick(images, MAX_MAP_ROWS)
    nrow = len(images)
    width = 8.4
    aspect = (extent[3] - extent[2]) / max(extent[1] - extent[0], 1e-12)
    panel = (width - 0.8) / 3
    height = nrow * (panel * aspect + 0.28) + 1.0
    fig = _figure(width, height)
    names = [("max. principal σ1 (MPa)", "RdBu_r", True), ("hydrostatic σ_h (MPa)", "RdBu_r", True),
             ("von Mises (MPa)", "magma", False)]
    top = 1 - 0.75 / height
    # each panel as an equal-aspect image of width panel − 0.12 in, centred in a box panel·aspect high
    ny, nx = images[0][1][0].shape
    hinch, vinch = (panel - 0.12) / nx, (panel - 0.12) * aspect / ny  # inches per map pixel
    gx, gy = round(0.12 / hinch), round((0.28 + 0.12 * aspect) / vinch)  # gaps between panels, in map pixels
    canvas = np.zeros((nrow * ny + (nrow - 1) * gy, 3 * nx + 2 * gx, 4), dtype=np.uint8)  # transparent
    scales = []
    for j, (label, cmap, centred) in enumerate(names):
        vals = np.concatenate([img[j][np.isfinite(img[j])] for _, img in images])
        lo, hi = (float(vals.min()), float(vals.max())) if vals.size else (-1.0, 1.0)
        if centred:
            m = max(abs(lo), abs(hi), 1e-9)
            lo, hi = -m, m
        cm, norm = matplotlib.colormaps[cmap], Normalize(lo, hi)
        scales.append((label, cm, norm))
        for i, (t, img) in enumerate(images):  # the first snapshot on top (maps are drawn origin = lower)
            r0 = (nrow - 1 - i) * (ny + gy)
            canvas[r0: r0 + ny, j * (nx + gx): j * (nx + gx) + nx] = cm(norm(np.ma.masked_invalid(img[j])), bytes=True)
    y_top = top - 0.06 * aspect / height
    h = canvas.shape[0] * vinch / height
    fig.add_artist(_PixelImage(canvas, (0.6 / width, y_top - h, canvas.shape[1] * hinch / width, h)))
    for i, (t, _) in enumerate(images):
        yc = y_top - (i * (ny + gy) + 0.5 * ny) * vinch / height
        fig.text((0.6 - 0.04 * (panel - 0.12)) / width, yc, f"{t / 60:.1f} min", rotation=90, ha="right",
                 va="center", fontsize=8)
    for j, (label, cm, norm) in enumerate(scales):
        x0 = (0.6 + j * panel) / width
        with matplotlib.rc_context({"xtick.labelsize": 7}):  # (tick_params afterwards rebuilds the ticks)
            cax = fig.add_axes((x0, top + 0.12 / height, (panel - 0.12) / width, 0.1 / height))
            cb = fig.colorbar(ScalarMappable(norm=norm, cmap=cm), cax=cax, orientation="horizontal")
        cb.ax.xaxis.set_label_position("top")
        cb.set_label(label, fontsize=8)
    span = extent[1] - extent[0]
    fig.text(0.5, 0.25 / height, f"panel width {span:.2f} µm", ha="center", fontsize=7, color="0.4")
    if title:
        fig.suptitle(_wrap(title, 95), fontsize=8, y=1 - 0.08 / height, va="top")
    fig.savefig(path, dpi=100)


def stress_summary(series: dict, hoop_profiles, xrd, hists, bins, path: Path, *, title: str = "",
                   toughness=None, wavelength_A: float = 1.5406):
    """2×3 panels: stresses vs time; fracture indicator vs time; surface hoop stress vs angle;
    θ volume distribution; simulated (003) and (110) peaks (strained lattice) at the snapshots."""
    import matplotlib

    fig = _figure(13.0, 7.2)
    fig.subplots_adjust(left=0.06, right=0.985, bottom=0.08, top=0.9, wspace=0.28, hspace=0.38)
    # grid and tick size as the axes' defaults: set afterwards, each rebuilds every tick (~40 % of the figure)
    with matplotlib.rc_context({"axes.grid": True, "grid.alpha": 0.3, "xtick.labelsize": 7, "ytick.labelsize": 7}):
        axes = fig.subplots(2, 3)
    t = series["time_s"] / 60.0
    a = axes[0, 0]
    a.plot(t, series["sigma1_max_MPa"], label="peak tensile σ1", color="C3", lw=2)
    a.plot(t, series["hoop_surface_max_MPa"], label="surface hoop, max", color="C0")
    a.plot(t, series["hoop_surface_min_MPa"], label="surface hoop, min", color="C0", ls="--")
    a.plot(t, series["sigma1_center_MPa"], label="σ1 at the centre", color="k", ls=":")
    a.axhline(0.0, color="0.6", lw=0.8)
    i = int(np.argmax(series["sigma1_max_MPa"]))
    a.plot(t[i], series["sigma1_max_MPa"][i], "o", color="C3")
    a.annotate(f"{series['sigma1_max_MPa'][i]:.0f} MPa, r/R = {series['sigma1_max_r_over_R'][i]:.2f}",
               (t[i], series["sigma1_max_MPa"][i]), textcoords="offset points", xytext=(0, 6), fontsize=7,
               ha="center")
    a.margins(y=0.15)
    a.set_xlabel("time (min)")
    a.set_ylabel("stress (MPa)")
    a.legend(fontsize=7)
    a = axes[0, 1]
    if toughness is not None:
        a.plot(t, series["fracture_index_surface"], color="C0", label="surface flaw")
        a.plot(t, series["fracture_index_interior"], color="C3", label="interior flaw")
        a.axhline(1.0, color="k", lw=0.8, ls="--")
        a.set_ylabel("fracture index (K_I/K_Ic)²")
    else:
        a.plot(t, series["K_I_surface_MPa_sqrt_m"], color="C0", label="surface flaw")
        a.plot(t, series["K_I_interior_MPa_sqrt_m"], color="C3", label="interior flaw")
        a.set_ylabel("K_I (MPa √m)")
    a.set_xlabel("time (min)")
    a.legend(fontsize=7)
    cmap = matplotlib.colormaps["viridis"]
    a = axes[0, 2]
    for k, (ts, prof) in enumerate(hoop_profiles):
        if len(prof):
            a.plot(prof[:, 0], prof[:, 4], ".", ms=1.5, color=cmap(k / max(1, len(hoop_profiles) - 1)),
                   label=f"{ts / 60:.1f} min")
    a.axhline(0.0, color="0.6", lw=0.8)
    a.set_xlim(0, 360)
    a.set_xticks(range(0, 361, 90))
    a.set_xlabel("polar angle about the centroid (deg)")
    a.set_ylabel("surface hoop stress (MPa)")
    if hoop_profiles:
        a.legend(fontsize=6, markerscale=5, ncol=2)
    n = max(1, len(xrd) - 1)
    centres = 0.5 * (bins[1:] + bins[:-1])
    width = bins[1] - bins[0]
    for k, ((ts, g3, p3, g1, p1), (_, h)) in enumerate(zip(xrd, hists)):
        c = cmap(k / n)
        axes[1, 0].step(centres, h / width, where="mid", color=c, lw=1, label=f"{ts / 60:.1f} min")
        axes[1, 1].plot(g3, p3, color=c, lw=1)
        axes[1, 2].plot(g1, p1, color=c, lw=1)
    if hists:
        occupied = np.concatenate([centres[h > 0] for _, h in hists])
        if occupied.size:
            axes[1, 0].set_xlim(max(0.0, occupied.min() - 0.03), min(1.0, occupied.max() + 0.03))
        axes[1, 0].legend(fontsize=6)
    for ax, gi, pi in ((axes[1, 1], 1, 2), (axes[1, 2], 3, 4)):
        sup = [x[gi][x[pi] > 0.01 * x[pi].max()] for x in xrd if np.any(x[pi] > 0)]
        if sup:
            sup = np.concatenate(sup)
            m = 0.15 * (sup.max() - sup.min()) + 0.02
            ax.set_xlim(sup.min() - m, sup.max() + m)
    axes[1, 0].set_xlabel("Li occupancy θ")
    axes[1, 0].set_ylabel("volume fraction per unit θ")
    axes[1, 1].set_xlabel(f"2θ (deg), λ = {wavelength_A:g} Å")
    axes[1, 1].set_title("simulated (003) peak: c/3", fontsize=8)
    axes[1, 2].set_xlabel(f"2θ (deg), λ = {wavelength_A:g} Å")
    axes[1, 2].set_title("simulated (110) peak: a/2", fontsize=8)
    if title:
        fig.suptitle(_wrap(title, 130), fontsize=9)
    fig.savefig(path, dpi=100)
