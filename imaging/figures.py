"""Figures of the image analysis and the calibration (matplotlib, Agg).

Contrast maps use a diverging scale centred at zero (white), red for positive total
contrast (intensity up: Li removed) and blue for negative, as in Xu et al. (Joule 2022,
Fig. 2) and Lun et al. (seed 000, Fig. 2). Every function writes one PNG through a
temporary name.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

CMAP = "RdBu_r"


def _figure(width_in: float, height_in: float):
    """An empty figure on its own Agg canvas: no pyplot, no global figure registry to close."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in))
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path, dpi=130):
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    fig.savefig(tmp, dpi=dpi)
    os.replace(tmp, path)
    return path


def _sym_limit(values, mask=None, pct=99.5) -> float:
    v = np.asarray(values)
    if mask is not None:
        v = v[..., np.asarray(mask, bool)]
    v = v[np.isfinite(v)]
    lim = float(np.percentile(np.abs(v), pct)) if v.size else 1.0
    return lim if lim > 1e-6 else 1e-3


def _scale_bar(ax, shape, pixel_size_um, length_um=1.0, color="k"):
    rows, cols = shape
    npx = length_um / pixel_size_um
    if npx > 0.8 * cols:
        return
    x1 = cols - 0.06 * cols
    y = rows - 0.07 * rows
    ax.plot([x1 - npx, x1], [y, y], color=color, lw=3, solid_capstyle="butt")
    ax.text(x1 - npx / 2, y - 0.03 * rows, f"{length_um:g} µm", ha="center", va="bottom", fontsize=7, color=color)


def robust_limit(values, mask=None, pct=99.0, smooth_px=1.0) -> float:
    """Colour limit of contrast maps: a high percentile of |contrast| after a light smoothing
    (one pixel), so single noisy pixels do not set the scale."""
    from scipy import ndimage

    v = np.nan_to_num(np.asarray(values, dtype=float))
    v = v[None] if v.ndim == 2 else v
    sm = np.array([ndimage.gaussian_filter(f, smooth_px) for f in v]) if smooth_px > 0 else v
    return _sym_limit(sm, mask, pct)


def contrast_maps(contrast, mask, times_s, indices, path, *, pixel_size_um, title="", lines=()):
    """Total-contrast maps (masked, zero-centred diverging scale) of the frames ``indices``;
    give arrays cropped around the particle. Times: since the current start."""
    from matplotlib.colors import TwoSlopeNorm

    idx = list(indices)
    n = len(idx)
    ncol = min(n, 4)
    nrow = int(np.ceil(n / ncol))
    lim = robust_limit(np.where(mask[None], contrast[idx], 0.0), mask)
    norm = TwoSlopeNorm(vmin=-lim, vcenter=0.0, vmax=lim)
    fig = _figure(2.5 * ncol + 0.9, 2.5 * nrow + 0.5)
    axes = fig.subplots(nrow, ncol, squeeze=False)
    fig.subplots_adjust(left=0.03, right=0.86, bottom=0.04, top=0.86, wspace=0.08, hspace=0.25)
    handle = None
    for ax, k in zip(axes.flat, idx):
        img = np.where(mask, contrast[k], 0.0)  # masked as in the papers: background set to 0
        handle = ax.imshow(img, cmap=CMAP, norm=norm, interpolation="nearest")
        for (r0, c0), (r1, c1) in lines:
            ax.plot([c0, c1], [r0, r1], color="tab:blue", lw=1.0, ls="--")
        ax.set_title(f"{times_s[k] / 60:.1f} min", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        _scale_bar(ax, img.shape, pixel_size_um)
    for ax in axes.flat[n:]:
        ax.axis("off")
    if handle is not None:
        cax = fig.add_axes((0.89, 0.12, 0.02, 0.66))
        fig.colorbar(handle, cax=cax, label="total contrast (I − I₀)/I₀", extend="both")
    fig.suptitle((title + "\n" if title else "") + "time since the current start", fontsize=9)
    return _save(fig, path)


def kymograph(kymo, path, *, capacity_mAh_g=None, title="", model=None):
    """Contrast along the line cut: position (x) against time or capacity (y), as in 000 Fig. 5c.
    ``model``: optional predicted kymograph (same shape) drawn as contours."""
    from matplotlib.colors import TwoSlopeNorm

    vals = np.where(kymo.inside[None], kymo.values, 0.0)
    lim = robust_limit(vals[None], smooth_px=0.0)
    ycoord = capacity_mAh_g if capacity_mAh_g is not None else kymo.times_s / 60.0
    fig = _figure(5.2, 4.2)
    ax = fig.subplots()
    fig.subplots_adjust(left=0.14, right=0.88, bottom=0.13, top=0.9)
    m = ax.pcolormesh(kymo.positions_um, ycoord, vals, cmap=CMAP, norm=TwoSlopeNorm(vmin=-lim, vcenter=0, vmax=lim),
                      shading="nearest")
    if model is not None:
        cs = ax.contour(kymo.positions_um, ycoord, np.where(kymo.inside[None], model, np.nan), colors="k",
                        linewidths=0.8, linestyles="--", levels=6)
        ax.clabel(cs, fontsize=6)
    fig.colorbar(m, ax=ax, label="total contrast")
    ax.set_xlabel("position along the line (µm)")
    ax.set_ylabel("capacity (mAh/g)" if capacity_mAh_g is not None else "time since the current (min)")
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


def asymmetry(trace, path, *, classification=None, field_d_um=None, title="", after=None):
    """d(t) between the particle's and the Li-rich region's centres of mass (000 Fig. 5d).

    Frames the classification uses (after the current start, ``after``, with a Li-rich core
    of the rule's size) are filled; the others are drawn hollow and grey."""
    fig = _figure(5.6, 3.6)
    ax = fig.subplots()
    fig.subplots_adjust(left=0.13, right=0.86, bottom=0.14, top=0.86)
    t = trace.times_s / 60.0
    used = np.isfinite(trace.d_um) & (np.ones(t.size, bool) if after is None else np.asarray(after, bool))
    if classification:
        p = classification["parameters"]
        used &= (trace.rich_fraction >= p["core_min"]) & (trace.rich_fraction <= p["core_max"])
    ax.plot(t, trace.d_um * 1e3, "-", lw=0.8, color="tab:green", alpha=0.5)
    ax.plot(t[used], trace.d_um[used] * 1e3, "o", ms=3.5, color="tab:green", label="d from the images (used)")
    if (~used).any():
        ax.plot(t[~used], trace.d_um[~used] * 1e3, "o", ms=3.5, mfc="none", color="0.55",
                label="excluded (before the current or no core)")
    if field_d_um is not None:
        ax.plot(t, np.asarray(field_d_um) * 1e3, "k--", lw=1.2, label="d from the simulated field")
    if classification:
        ax.axhline(classification["d_limit_um"] * 1e3, color="0.5", ls=":", lw=1,
                   label=f"{classification['parameters']['d_fraction']:g}·R_eq")
    ax.set_xlabel("time since the current (min)")
    ax.set_ylabel("d (nm)")
    ax2 = ax.twinx()
    ax2.plot(t, trace.rich_fraction, color="tab:blue", lw=0.8, alpha=0.6)
    ax2.set_ylabel("Li-rich area fraction", color="tab:blue")
    ax2.set_ylim(0, 1.05)
    ax.legend(frameon=False, fontsize=8, loc="upper left")
    head = title or ""
    if classification:
        head = (head + "  " if head else "") + f"[{classification['label']}]"
    if head:
        ax.set_title(head, fontsize=9)
    return _save(fig, path)


def intensity(times_s, series: dict, path, *, title="", xlabel="time since the current (min)", x=None):
    """Normalised intensity change and other traces against time."""
    fig = _figure(5.6, 3.6)
    ax = fig.subplots()
    fig.subplots_adjust(left=0.14, right=0.97, bottom=0.14, top=0.88)
    xx = np.asarray(times_s) / 60.0 if x is None else x
    for label, (y, style) in series.items():
        ax.plot(xx, y, style, ms=3, label=label)
    ax.axhline(0, color="0.6", lw=0.6)
    if x is None and np.min(xx) < 0:
        ax.axvspan(np.min(xx), 0.0, color="0.9", zorder=0, label="before the current")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("total contrast")
    ax.legend(frameon=False, fontsize=8)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


def drift(trace, path, *, pixel_size_um, title="", t0_s=0.0):
    """Drift against the time since the current start (``t0_s``: the current start in file time)."""
    fig = _figure(5.6, 3.4)
    ax = fig.subplots()
    fig.subplots_adjust(left=0.14, right=0.97, bottom=0.15, top=0.86)
    t = (trace.times_s - t0_s) / 60.0
    if t.min() < 0:
        ax.axvspan(t.min(), 0.0, color="0.9", zorder=0)
    ax.plot(t, trace.drift_rc[:, 1] * pixel_size_um * 1e3, "-", label="x (columns)")
    ax.plot(t, trace.drift_rc[:, 0] * pixel_size_um * 1e3, "-", label="y (rows)")
    ax.set_xlabel("time since the current (min)")
    ax.set_ylabel("drift (nm)")
    ax.legend(frameon=False, fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title(title or f"stage drift ({trace.method})", fontsize=9)
    return _save(fig, path)


def error_levels(e_min: float, e_max: float, n: int = 14) -> np.ndarray:
    """Contour levels of an error map that resolve its valley: e_min·(1 + q) with q spaced
    logarithmically from 0.1 % up to the largest value."""
    top = max(e_max / max(e_min, 1e-300) - 1.0, 2e-3)
    q = np.geomspace(1e-3, top, n)
    return e_min * (1.0 + np.concatenate([[0.0], q]))


def error_map(S_values, A_grid, E, best, path, *, title="", S_interval=None, A_interval=None):
    """Contour map of e(S, A) (Xu 2022 Fig. S2B) on log-spaced levels above the minimum, with
    the best fit and its 95 % interval (white cross) and the evaluated S (ticks on top)."""
    from matplotlib.colors import BoundaryNorm

    fig = _figure(5.4, 4.3)
    ax = fig.subplots()
    fig.subplots_adjust(left=0.13, right=0.9, bottom=0.13, top=0.86)
    S = np.asarray(S_values, dtype=float)
    order = np.argsort(S)
    S, E = S[order], np.asarray(E)[order]
    lv = error_levels(float(np.nanmin(E)), float(np.nanmax(E)))
    cf = ax.contourf(S, A_grid, E.T, levels=lv, cmap="viridis_r", norm=BoundaryNorm(lv, 256), extend="max")
    ax.contour(S, A_grid, E.T, levels=lv[1::2], colors="w", linewidths=0.4, alpha=0.7)
    cb = fig.colorbar(cf, ax=ax)
    cb.set_label("e(S, A) / e_min − 1")
    ticks = lv[::3]
    cb.set_ticks(ticks)
    cb.set_ticklabels([f"{v / lv[0] - 1:.1%}" if v > lv[0] else "0" for v in ticks])
    xerr = None if S_interval is None else [[best[0] - S_interval[0]], [S_interval[1] - best[0]]]
    yerr = None if A_interval is None else [[best[1] - A_interval[0]], [A_interval[1] - best[1]]]
    ax.errorbar([best[0]], [best[1]], xerr=xerr, yerr=yerr, fmt="+", color="w", ms=12, mew=1.6, capsize=3)
    ax.plot(S, np.full(S.size, A_grid[-1]), "|", color="k", ms=8, clip_on=False)
    ax.set_xscale("log")
    from matplotlib.ticker import FormatStrFormatter, LogLocator

    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0)))
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(FormatStrFormatter(""))
    ax.set_xlabel("S (D_eff = D_Li / S); ticks on top: simulated S")
    ax.set_ylabel("A")
    head = title or "calibration error e(S, A)"
    ax.set_title(f"{head}\nbest S = {best[0]:.4g}, A = {best[1]:.4g} (white: 95 % interval)", fontsize=9)
    return _save(fig, path)


def fit_overlay(times_s, measured, predicted, path, *, label="", title="", model_label="model A(θ₀ − θ)"):
    """Measured vs predicted total contrast (Xu 2022 Fig. S2C)."""
    fig = _figure(5.6, 3.6)
    ax = fig.subplots()
    fig.subplots_adjust(left=0.14, right=0.97, bottom=0.14, top=0.88)
    t = np.asarray(times_s) / 60.0
    ax.plot(t, measured, "o", ms=3.5, mfc="none", color="k", label=f"measured{(' ' + label) if label else ''}")
    ax.plot(t, predicted, "-", color="tab:red", lw=1.8, label=model_label)
    ax.set_xlabel("time since the current (min)")
    ax.set_ylabel("total contrast")
    ax.legend(frameon=False, fontsize=8)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


def error_profile(S_values, e_values, best_S, interval, path, *, title="", dense=None, interval95=None,
                  resampled_S=None):
    """Profile min over A (and B) of e against S: evaluated S (dots), the interpolated profile
    (``dense`` = (S, e)), the 68 % (and 95 %) interval, and the S of the noise resamples."""
    fig = _figure(5.4, 3.6)
    ax = fig.subplots()
    fig.subplots_adjust(left=0.16, right=0.97, bottom=0.15, top=0.86)
    order = np.argsort(S_values)
    if dense is not None:
        ax.plot(dense[0], dense[1], "-", color="tab:blue", lw=1.2, label="interpolated profile")
    ax.plot(np.asarray(S_values)[order], np.asarray(e_values)[order], "o", ms=3.5, color="tab:blue",
            label="simulated S")
    ax.axvline(best_S, color="tab:red", lw=1)
    if interval95 is not None and all(v is not None for v in interval95):
        ax.axvspan(interval95[0], interval95[1], color="tab:red", alpha=0.08, label="95 % interval")
    if interval is not None and all(v is not None for v in interval):
        ax.axvspan(interval[0], interval[1], color="tab:red", alpha=0.18, label="68 % interval")
    if resampled_S is not None and len(resampled_S):
        ax2 = ax.twinx()
        ax2.hist(resampled_S, bins=30, color="0.5", alpha=0.35)
        ax2.set_yticks([])
    lo = interval95[0] if interval95 is not None and interval95[0] is not None else min(S_values)
    hi = interval95[1] if interval95 is not None and interval95[1] is not None else max(S_values)
    span = max(hi - lo, 0.05 * best_S)
    ax.set_xlim(max(min(S_values), lo - 1.5 * span), min(max(S_values), hi + 1.5 * span))
    if dense is not None:
        sel = (dense[0] >= ax.get_xlim()[0]) & (dense[0] <= ax.get_xlim()[1])
        if sel.any():
            y = np.asarray(dense[1])[sel]
            ax.set_ylim(y.min() - 0.05 * np.ptp(y) - 1e-12, y.max() + 0.05 * np.ptp(y) + 1e-12)
    ax.set_xlabel("S")
    ax.set_ylabel("min over A of e(S, A)")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=7, loc="upper center")
    ax.set_title(title or "profile of the error (grey: S of the noise resamples)", fontsize=9)
    return _save(fig, path)


def model_vs_measured_maps(measured, model, region, times_s, path, *, title=""):
    """Measured (top) and model (bottom) contrast on the compared pixels, same zero-centred scale."""
    from matplotlib.colors import TwoSlopeNorm

    n = len(times_s)
    idx = np.unique(np.linspace(0, n - 1, min(4, n)).round().astype(int))
    h, w = region.shape
    lim = max(_sym_limit(model), robust_limit(_region_maps(measured, region, idx), region))
    norm = TwoSlopeNorm(vmin=-lim, vcenter=0.0, vmax=lim)
    fig = _figure(2.4 * len(idx) + 0.9, 5.2)
    axes = fig.subplots(2, len(idx), squeeze=False)
    fig.subplots_adjust(left=0.06, right=0.86, bottom=0.04, top=0.86, wspace=0.08, hspace=0.2)
    handle = None
    for j, k in enumerate(idx):
        for i, (vals, name) in enumerate(((measured, "measured"), (model, "model"))):
            img = np.full((h, w), np.nan)
            img[region] = vals[k]
            handle = axes[i, j].imshow(img, cmap=CMAP, norm=norm, interpolation="nearest")
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
            if j == 0:
                axes[i, j].set_ylabel(name)
        axes[0, j].set_title(f"{times_s[k] / 60:.1f} min", fontsize=9)
    cax = fig.add_axes((0.89, 0.12, 0.02, 0.66))
    fig.colorbar(handle, cax=cax, label="total contrast", extend="both")
    fig.suptitle((title + "\n" if title else "") + "time since the current start", fontsize=9)
    return _save(fig, path)


def _region_maps(values, region, idx):
    maps = np.zeros((len(idx),) + region.shape)
    for j, k in enumerate(idx):
        maps[j][region] = values[k]
    return maps
