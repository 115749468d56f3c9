"""Lun et al. 2025, Fig. 5d: offset d of the Li-rich core against delivered capacity.

2.4 µm disk, ¼ of the perimeter blocked with η = 0.3 (and uniform flux as reference),
charged from θ₀ = 0.95 at 50, 100, 200 and 400 mA g⁻¹ to the θ = 0.2 surface cut-off.
d is the distance between the centre of mass of the particle and that of the 'unreacted'
Li-rich region θ > θ₀ − 0.05·0.95 (the solver's ``d_um`` column; the paper's region is
differential optical contrast < 0.05 with contrast ≈ (θ₀ − θ)/0.95, Xu 2022 Eq. 17).
Observed: d is larger at higher current, and the Li-rich region persists to higher
capacity (~15 mAh/g at the lowest, ~30 mAh/g at the highest current, Fig. 5c).

    python studies/lun2025_fig5d.py [-o DIR] [--quick] [--force]
    mpiexec -n 2 python studies/lun2025_fig5d.py

Outputs (DIR, default runs/studies/lun2025_fig5d): fig5d_offset.png, fig5d_offset.csv
(d and Li-rich fraction vs capacity for every case, one row per time step),
fig5d_summary.csv (per case: d at 5/10/15/20 mAh/g, largest d, capacity at which the
Li-rich region vanishes), study.json, cases/<case>/. --quick: 50 and 400 mA/g, coarse mesh.
"""

from __future__ import annotations

import math
import sys

from mpi4py import MPI  # noqa: F401  (before dolfinx)

import numpy as np

from nmcfx.studies._common import Study, lun_cutoff_config, parse_args, plt, write_csv

NAME = "lun2025_fig5d"
RATES = (50.0, 100.0, 200.0, 400.0)
QUICK_RATES = (50.0, 400.0)
ETA = 0.3
FRACTION = 0.25
CAPACITY_MARKS = (5.0, 10.0, 15.0, 20.0)  # mAh/g at which d is tabulated
#: resolution of the curves: at most this much capacity (mAh/g) per time step
CAPACITY_PER_STEP = 0.5


def offset_summary(series: dict) -> dict:
    """d at the capacity marks, largest d, and the capacity at which the Li-rich region vanishes."""
    cap, d, frac = series["capacity_mAh_g"], series["d_um"], series["li_rich_fraction"]
    alive = np.isfinite(d) & (frac > 0)
    out = {}
    for c in CAPACITY_MARKS:
        out[f"d_at_{c:g}_mAh_g_um"] = (float(np.interp(c, cap[alive], d[alive]))
                                       if alive.any() and cap[alive].max() >= c else math.nan)
    out["d_max_um"] = float(d[alive].max()) if alive.any() else math.nan
    out["capacity_at_d_max_mAh_g"] = float(cap[alive][np.argmax(d[alive])]) if alive.any() else math.nan
    # the region vanishes between the last record with a Li-rich area and the next one
    last = np.flatnonzero(alive)
    out["li_rich_gone_at_mAh_g"] = float(cap[min(last[-1] + 1, len(cap) - 1)]) if last.size else math.nan
    return out


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(NAME, "Lun 2025 Fig. 5d: offset d of the Li-rich core vs capacity", argv)
    study = Study(NAME, args)
    rates = QUICK_RATES if study.quick else RATES
    study.plan(2 * len(rates))
    cases = []
    for rate in rates:
        dt_max = 3600.0 * CAPACITY_PER_STEP * (4 if study.quick else 1) / rate
        for key, fraction, eta, label in (("eta0.3", FRACTION, ETA, f"¼ blocked, η = {ETA:g}"),
                                          ("none", 0.0, 1.0, "no blocking")):
            ck = f"{rate:g}mAg_{key}"
            cases.append((ck, rate, key, label))
            study.case(ck, lun_cutoff_config(rate, fraction, eta, study.quick, dt_max_s=dt_max),
                       describe=f"{rate:g} mA/g, {label}")

    summary, curve_rows, sum_rows = {}, [], []
    for ck, rate, key, label in cases:
        s = study.results[ck].series
        summary[ck] = offset_summary(s)
        for i in range(len(s["time_s"])):
            curve_rows.append([ck, rate, key, s["time_s"][i] / 60, s["capacity_mAh_g"][i], s["d_um"][i],
                               s["li_rich_fraction"][i], s["theta_center"][i], s["theta_surface_min"][i]])
        sm = summary[ck]
        sum_rows.append([ck, rate, key] + [sm[k] for k in sorted(sm)])
    files = ["fig5d_offset.png", "fig5d_offset.csv", "fig5d_summary.csv"]
    if study.comm.rank == 0:
        write_csv(study.outdir / "fig5d_offset.csv",
                  ["case", "rate_mA_g", "blocking", "time_min", "capacity_mAh_g", "d_um", "li_rich_fraction",
                   "theta_center", "theta_surface_min"], curve_rows)
        write_csv(study.outdir / "fig5d_summary.csv",
                  ["case", "rate_mA_g", "blocking"] + sorted(next(iter(summary.values()))), sum_rows)
        plot(study, cases, study.outdir / "fig5d_offset.png")
        for ck, rate, key, label in cases:
            sm = summary[ck]
            study.say(f"{rate:>5g} mA/g {label:<18s} d(5, 10, 15 mAh/g) = "
                      + ", ".join(f"{sm[f'd_at_{c:g}_mAh_g_um']:.3f}" for c in CAPACITY_MARKS[:3])
                      + f" µm; max {sm['d_max_um']:.3f} µm at {sm['capacity_at_d_max_mAh_g']:.1f} mAh/g; "
                      f"Li-rich region gone at {sm['li_rich_gone_at_mAh_g']:.1f} mAh/g")
    study.finish("Lun 2025 Fig. 5d: d vs capacity, ¼ blocked η = 0.3 (and uniform flux), 50-400 mA/g",
                 extra=summary, outputs=files)
    return summary


def plot(study, cases, path):
    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(6.4, 4.2))
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.13, top=0.88)
    rates = sorted({c[1] for c in cases})
    cmap = pyplot.get_cmap("plasma")
    xmax = 0.0
    for ck, rate, key, label in cases:
        s = study.results[ck].series
        alive = np.isfinite(s["d_um"]) & (s["li_rich_fraction"] > 0)
        color = cmap(0.1 + 0.75 * rates.index(rate) / max(1, len(rates) - 1))
        if not alive.any():
            continue
        cap, d = s["capacity_mAh_g"][alive], s["d_um"][alive]
        xmax = max(xmax, cap.max())
        if key == "none":
            ax.plot(cap, d, color=color, lw=1.0, ls="--")
        else:
            ax.plot(cap, d, color=color, lw=2.0, label=f"{rate:g} mA g⁻¹")
    ax.plot([], [], color="0.4", lw=1.0, ls="--", label="no blocking (all rates)")
    ax.set_xlim(0, 1.05 * xmax if xmax > 0 else 1)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("capacity (mAh g⁻¹)")
    ax.set_ylabel("d = |O_COM − O_Li-rich| (µm)")
    ax.legend(frameon=False, fontsize=8, title=f"¼ blocked, η = {ETA:g}", title_fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title("Offset of the Li-rich core (θ > 0.9025), 2.4 µm disk (Lun 2025 Fig. 5d)", fontsize=9)
    fig.savefig(path, dpi=150)
    pyplot.close(fig)


if __name__ == "__main__":
    main(sys.argv[1:])
