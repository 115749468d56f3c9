"""Figures of a run (matplotlib, Agg): θ maps, centre trace, line-cut kymograph.

Pure plotting on NumPy arrays gathered by :mod:`nmcfx.solver.outputs`; rank 0 only.
Figures are drawn on an Agg canvas without pyplot (no global figure registry, nothing to close)
and matplotlib is imported at the first figure, so a run without figures never loads it. The
images are resampled to the screen before colour-mapping (``interpolation_stage="data"``): with
nearest-neighbour sampling the pixels are the same, at half the peak memory (benchmarks/README.md,
issue 10 target 6).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def release_memory():
    """Free what the last figure left now: its artists are reference cycles (collected here, not at a
    later peak), and glibc keeps freed heap pages resident unless asked to return them (``malloc_trim``).
    Cheap while :func:`gc.freeze` holds the objects that were there before the figures."""
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _wrap(title: str, width: int = 70) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(title, width)) if title else ""


def _figure(width_in: float, height_in: float):
    """An empty matplotlib figure on its own Agg canvas (``fig.savefig`` writes PNG, PDF, SVG).

    >>> fig = _figure(6.0, 3.8)
    >>> ax = fig.subplots()
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in))
    FigureCanvasAgg(fig)
    return fig


def theta_maps(images, extent, path: Path, *, title: str = "", vmin=None, vmax=None, outlines=None):
    """One panel per snapshot: θ on the pixel grid (NaN outside the particle).

    ``outlines``: optional list of (x, y) polylines (µm) drawn on every panel, e.g. blocked arcs.
    """
    n = len(images)
    ncol = min(n, 4)
    nrow = int(np.ceil(n / ncol))
    finite = np.concatenate([im[np.isfinite(im)] for _, im in images]) if n else np.array([0.0, 1.0])
    vmin = float(finite.min()) if vmin is None else vmin
    vmax = float(finite.max()) if vmax is None else vmax
    if vmax - vmin < 1e-3:
        vmin, vmax = vmin - 5e-4, vmax + 5e-4
    fig = _figure(2.6 * ncol + 0.8, 2.5 * nrow + 0.4)
    axes = fig.subplots(nrow, ncol, squeeze=False)
    fig.subplots_adjust(left=0.08, right=0.86, bottom=0.1, top=0.86, wspace=0.35, hspace=0.45)
    im_handle = None
    for ax, (t, img) in zip(axes.flat, images):
        im_handle = ax.imshow(img, origin="lower", extent=extent, cmap="viridis", vmin=vmin, vmax=vmax,
                              interpolation="nearest", interpolation_stage="data")
        for line in outlines or ():
            ax.plot(line[0], line[1], color="crimson", lw=2.5)
        ax.set_title(f"t = {t / 60:.1f} min", fontsize=10)
        ax.set_xlabel("x (µm)")
        ax.set_aspect("equal")
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("y (µm)")
    if im_handle is not None:
        cax = fig.add_axes((0.89, 0.15, 0.02, 0.65))
        fig.colorbar(im_handle, cax=cax, label="Li occupancy θ")
    if title:
        fig.suptitle(_wrap(title, 110), fontsize=10)
    fig.savefig(path, dpi=130)


def center_trace(hist: dict, path: Path, *, title: str = "", step_ends=()):
    """θ at the centre, mean θ and the surface range against time (002 Fig. 3C-like)."""
    t = hist["time_s"] / 60.0
    fig = _figure(6.0, 3.8)
    ax = fig.subplots()
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.13, top=0.88)
    ax.fill_between(t, hist["theta_surface_min"], hist["theta_surface_max"], color="tab:orange", alpha=0.25,
                    label="surface (min–max)")
    ax.plot(t, hist["theta_mean"], color="k", lw=1.5, label="mean")
    ax.plot(t, hist["theta_center"], color="tab:blue", lw=2.0, label="centre")
    for te in step_ends:
        ax.axvline(te / 60.0, color="0.6", lw=0.8, ls="--")
    ax.set_xlabel("time (min)")
    ax.set_ylabel("Li occupancy θ")
    ax.legend(frameon=False, fontsize=9)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(_wrap(title), fontsize=9)
    fig.savefig(path, dpi=130)


def kymograph(s_um, times_s, profiles, path: Path, *, title: str = ""):
    """θ along the line cut (vertical) against time (horizontal), as in 002 Fig. 3D."""
    times_s = np.asarray(times_s)
    profiles = np.asarray(profiles)
    fig = _figure(6.0, 3.6)
    ax = fig.subplots()
    fig.subplots_adjust(left=0.12, right=0.95, bottom=0.14, top=0.86)
    if len(times_s) >= 2:
        # resample on a uniform time grid (steps are adaptive) and draw as an image
        tg = np.linspace(times_s[0], times_s[-1], 400)
        idx = np.clip(np.searchsorted(times_s, tg, side="right") - 1, 0, len(times_s) - 2)
        w = ((tg - times_s[idx]) / (times_s[idx + 1] - times_s[idx]))[:, None]
        grid = ((1 - w) * profiles[idx] + w * profiles[idx + 1]).T
        m = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis", interpolation="nearest",
                      interpolation_stage="data", extent=(tg[0] / 60.0, tg[-1] / 60.0, s_um[0], s_um[-1]))
        fig.colorbar(m, ax=ax, label="Li occupancy θ")
    ax.set_xlabel("time (min)")
    ax.set_ylabel("position along line (µm)")
    if title:
        ax.set_title(_wrap(title), fontsize=9)
    fig.savefig(path, dpi=130)
