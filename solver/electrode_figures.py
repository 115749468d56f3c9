"""Figures of an electrode run (matplotlib, Agg, rank 0): voltage, per-particle reaction history
(Sharma 2022 Figs. 1c, 4d), θ maps (Fig. 5) and electron potential / current-path maps; c_l and φ_l
maps of a resolved electrolyte."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .figures import _figure, _wrap


def _charge_spans(step_log):
    return [(s["start_time_s"] / 3600, s["end_time_s"] / 3600, s["description"]) for s in step_log]


def voltage(hist: dict, step_log, path: Path, *, title: str = ""):
    t = hist["time_s"] / 3600
    fig = _figure(10, 3.8)
    a1, a2 = fig.subplots(1, 2)
    fig.subplots_adjust(left=0.08, right=0.97, bottom=0.14, top=0.84, wspace=0.3)
    a1.plot(t, hist["voltage_V"], color="k", lw=1.5)
    a1.set_xlabel("time (h)")
    a1.set_ylabel("cell voltage (V vs Li/Li⁺)")
    ax = a1.twinx()
    ax.plot(t, hist["current_mA_g"], color="tab:red", lw=0.8, alpha=0.7)
    ax.set_ylabel("current (mA g⁻¹)", color="tab:red")
    for s in step_log[:-1]:
        a1.axvline(s["end_time_s"] / 3600, color="0.7", lw=0.6, ls="--")
    step = hist["protocol_step"]
    for k in np.unique(step):
        sel = step == k
        a2.plot(hist["capacity_mAh_g"][sel], hist["voltage_V"][sel], lw=1.3)
    a2.set_xlabel("capacity (mAh g⁻¹, + = charge)")
    a2.set_ylabel("cell voltage (V)")
    if title:
        fig.suptitle(_wrap(title, 110), fontsize=10)
    fig.savefig(path, dpi=130)


def particles(hist: dict, names, step_log, path: Path, *, title: str = ""):
    """Top: each particle's near-surface θ (the optical proxy) against time; bottom: its slope
    against cell capacity, per charge/discharge step (one sharp peak each = asynchronous)."""
    from matplotlib import colormaps

    t = hist["time_s"] / 3600
    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    fig = _figure(9, 6.4)
    a1, a2 = fig.subplots(2, 1, sharex=False)
    fig.subplots_adjust(left=0.09, right=0.8, bottom=0.08, top=0.9, hspace=0.35)
    for i, n in enumerate(names):
        a1.plot(t, hist[f"theta_near_{n}"], color=cmap(i % cmap.N), lw=1.3, label=n)
    for s in step_log[:-1]:
        a1.axvline(s["end_time_s"] / 3600, color="0.7", lw=0.6, ls="--")
    a1.set_xlabel("time (h)")
    a1.set_ylabel("near-surface θ")
    a1.legend(frameon=False, fontsize=8, bbox_to_anchor=(1.01, 1.0), loc="upper left")
    step = hist["protocol_step"]
    cap = hist["capacity_mAh_g"]
    offset = 0.0
    for s in step_log:
        if not s["description"].startswith(("charge", "discharge")):
            continue
        sel = np.flatnonzero(step == s["index"])
        if len(sel) < 3:
            continue
        q = np.abs(cap[sel] - cap[sel[0]])
        for i, n in enumerate(names):
            y = hist[f"theta_near_{n}"][sel]
            dq = np.diff(q)
            ok = dq > 1e-9
            slope = np.abs(np.diff(y)[ok] / dq[ok])
            a2.plot(offset + q[1:][ok], slope, color=cmap(i % cmap.N), lw=1.0)
        offset += q.max() + 5.0
        a2.axvline(offset - 2.5, color="0.7", lw=0.6, ls="--")
    a2.set_xlabel("capacity within each charge / discharge (mAh g⁻¹, steps side by side)")
    a2.set_ylabel("|dθ_near / dQ| (g mAh⁻¹)")
    if title:
        fig.suptitle(_wrap(title, 110), fontsize=10)
    fig.savefig(path, dpi=130)


def _panels(n):
    ncol = min(n, 3)
    return int(np.ceil(n / ncol)), ncol


def maps(images, extent, outlines, path: Path, *, title: str = ""):
    """θ at the snapshot times, particles outlined (Sharma 2022 Fig. 5)."""
    n = len(images)
    nrow, ncol = _panels(n)
    fig = _figure(4.2 * ncol + 0.8, 2.9 * nrow + 0.5)
    axes = fig.subplots(nrow, ncol, squeeze=False)
    fig.subplots_adjust(left=0.06, right=0.88, bottom=0.08, top=0.88, wspace=0.25, hspace=0.4)
    finite = np.concatenate([img["theta"][np.isfinite(img["theta"])] for _, img in images]) if n else np.zeros(1)
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if vmax - vmin < 1e-3:
        vmin, vmax = vmin - 5e-4, vmax + 5e-4
    h = None
    for ax, (t, img) in zip(axes.flat, images):
        h = ax.imshow(img["theta"], origin="lower", extent=extent, cmap="viridis", vmin=vmin, vmax=vmax,
                      interpolation="nearest")
        for o in outlines:
            ax.plot(o[:, 0], o[:, 1], color="w", lw=0.6)
        ax.set_title(f"t = {t / 3600:.2f} h", fontsize=10)
        ax.set_aspect("equal")
        ax.set_xlabel("x (µm)")
    for ax in axes.flat[n:]:
        ax.axis("off")
    if h is not None:
        fig.colorbar(h, cax=fig.add_axes((0.9, 0.15, 0.015, 0.65)), label="Li occupancy θ")
    if title:
        fig.suptitle(_wrap(title, 110), fontsize=10)
    fig.savefig(path, dpi=130)


def potential_maps(images, extent, outlines, path: Path, *, title: str = ""):
    """φ_s (top row) and the electronic current density |σ∇φ_s| (bottom row, log scale) at the
    first and last snapshot: where the electrons flow."""
    from matplotlib.colors import LogNorm

    pick = [images[0], images[-1]] if len(images) > 1 else images[:1]
    fig = _figure(4.6 * len(pick) + 0.6, 6.0)
    axes = fig.subplots(2, len(pick), squeeze=False)
    fig.subplots_adjust(left=0.06, right=0.9, bottom=0.07, top=0.88, wspace=0.3, hspace=0.35)
    for j, (t, img) in enumerate(pick):
        h1 = axes[0, j].imshow(img["phi_s"] * 1e3, origin="lower", extent=extent, cmap="magma",
                               interpolation="nearest")
        fig.colorbar(h1, ax=axes[0, j], label="φ_s (mV)", shrink=0.8)
        cur = img["current"]
        pos = cur[np.isfinite(cur) & (cur > 0)]
        norm = LogNorm(vmin=max(pos.min(), pos.max() * 1e-6), vmax=pos.max()) if pos.size else None
        h2 = axes[1, j].imshow(np.where(cur > 0, cur, np.nan), origin="lower", extent=extent, cmap="inferno",
                               norm=norm, interpolation="nearest")
        fig.colorbar(h2, ax=axes[1, j], label="|σ∇φ_s| (A m⁻²)", shrink=0.8)
        for ax in axes[:, j]:
            for o in outlines:
                ax.plot(o[:, 0], o[:, 1], color="c", lw=0.5)
            ax.set_aspect("equal")
        axes[0, j].set_title(f"t = {t / 3600:.2f} h", fontsize=10)
    if title:
        fig.suptitle(_wrap(title, 110), fontsize=10)
    fig.savefig(path, dpi=130)


def electrolyte_maps(images, extent, outlines, path: Path, *, title: str = ""):
    """Resolved electrolyte: c_l (top row) and φ_l − φ_l(separator) (bottom row) at the first and last
    snapshot, particles outlined."""
    pick = [images[0], images[-1]] if len(images) > 1 else images[:1]
    fig = _figure(4.6 * len(pick) + 0.6, 6.0)
    axes = fig.subplots(2, len(pick), squeeze=False)
    fig.subplots_adjust(left=0.06, right=0.9, bottom=0.07, top=0.88, wspace=0.3, hspace=0.35)
    for j, (t, img) in enumerate(pick):
        for i, (key, label, scale, cmap) in enumerate((("c_l", "c_l (mol m⁻³)", 1.0, "cividis"),
                                                      ("phi_l", "φ_l − φ_l(separator) (mV)", 1e3, "coolwarm"))):
            data = img[key] * scale
            finite = data[np.isfinite(data)]
            kw = {}
            if key == "phi_l" and finite.size:
                lim = max(float(np.abs(finite).max()), 1e-9)
                kw = {"vmin": -lim, "vmax": lim}
            h = axes[i, j].imshow(data, origin="lower", extent=extent, cmap=cmap, interpolation="nearest", **kw)
            fig.colorbar(h, ax=axes[i, j], label=label, shrink=0.8)
            for o in outlines:
                axes[i, j].plot(o[:, 0], o[:, 1], color="k", lw=0.5)
            axes[i, j].set_aspect("equal")
        axes[0, j].set_title(f"t = {t / 3600:.2f} h", fontsize=10)
    if title:
        fig.suptitle(_wrap(title, 110), fontsize=10)
    fig.savefig(path, dpi=130)
