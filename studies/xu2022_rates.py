"""Shrinking core in the Xu 2022 particle at C/30 … 2C (Xu et al. 2022, Figs. 2B, 3C–F, S12, S13).

The particle of 002 (ellipse with A = 4.87 µm², Γ = 8.06 µm) is delithiated from θ₀ = 0.95
(002's model) with the prescribed flux of Eq. 15 at C/30, C/3, 1C and 2C until its centre
has lost 0.2 (or 0.7 of a full charge). What 002 states:

* Fig. 2B (C/3): after 5 min the periphery shows contrast while "the core remains fully
  lithiated"; the core "lagged noticeably behind (15 and 25 min)"; "after 35 min, the total
  contrast had become reasonably uniform across the whole particle";
* Fig. 3F: "the delithiation of the particle centre lags noticeably behind the surface at the
  start of the CC charge at all charging rates";
* Fig. S12I: the SoC range with heterogeneity "widens as the rate increases from C/30 to 1C,
  but narrows slightly on further increase to 2C" (one particle);
* Fig. S13 / Discussion: at 1C and 2C "the SoC difference between the periphery and the core
  can be as large as 20–30 %".

Reported per rate: the lag of the centre, (θ₀ − θ_centre)/(θ₀ − θ_mean), at 5/15/25/35 min
(C/3) and the surface–centre difference; when the front reaches the centre (the centre has
lost 0.05: the 'unreacted' contrast of Lun 2025) in time and capacity; the largest
θ_centre − θ_surface,min and when.

    python studies/xu2022_rates.py [-o DIR] [--quick] [--force]
    mpiexec -n 2 python studies/xu2022_rates.py

Outputs (DIR, default runs/studies/xu2022_rates): rates.png (θ at the centre and mean vs
capacity; periphery–core difference vs time), rates_traces.csv, rates_summary.csv,
study.json, cases/<case>/. --quick: C/3 and 2C, coarse mesh.
"""

from __future__ import annotations

import math
import sys

from mpi4py import MPI  # noqa: F401  (before dolfinx)

import numpy as np

from nmcfx.studies._common import QUIET_OUTPUT, Study, parse_args, plt, write_csv, xu_geometry

NAME = "xu2022_rates"
THETA0 = 0.95
#: key, C-rate (1/h), label
RATES = (("C30", 1.0 / 30.0, "C/30"), ("C3", 1.0 / 3.0, "C/3"), ("1C", 1.0, "1C"), ("2C", 2.0, "2C"))
QUICK = ("C3", "2C")
LAG_TIMES_MIN = (5.0, 15.0, 25.0, 35.0)  # Fig. 2B
FRONT_DROP = 0.05


def case_config(rate: float, quick: bool) -> dict:
    label = next(lab for _, r, lab in RATES if r == rate)
    return {
        "title": f"Xu 2022 particle, {label} delithiation from θ₀ = {THETA0:g} until the centre has lost 0.2",
        "geometry": xu_geometry(quick),
        "protocol": {"initial_theta": THETA0,
                     "steps": [{"type": "charge", "c_rate": rate, "duration_min": 0.7 * 60.0 / rate,
                                "until": [f"theta_center <= {THETA0 - 0.2:g}"]}]},
        # resolve the centre trace: at most ~1 % of a full charge per step
        "solver": {"theta_tol": 2e-3 if quick else 5e-4, "dt_max_s": min(120.0, 36.0 / rate)},
        "output": dict(QUIET_OUTPUT),
    }


def analyse(series: dict) -> dict:
    t = series["time_s"] / 60.0
    cap = series["capacity_mAh_g"]
    tc, tm, smin = series["theta_center"], series["theta_mean"], series["theta_surface_min"]
    smax = series["theta_surface_max"]
    out = {}
    drop = THETA0 - tc
    k = np.flatnonzero(drop >= FRONT_DROP)
    if k.size and k[0] > 0:
        i = k[0]
        f = (FRONT_DROP - drop[i - 1]) / (drop[i] - drop[i - 1])
        out["front_at_center_min"] = float(t[i - 1] + f * (t[i] - t[i - 1]))
        out["front_at_center_mAh_g"] = float(cap[i - 1] + f * (cap[i] - cap[i - 1]))
    else:
        out["front_at_center_min"] = out["front_at_center_mAh_g"] = math.nan
    # the centre's loss when the mean has lost 0.05 (early in the charge, Fig. 3F)
    early = np.flatnonzero(THETA0 - tm >= 0.05)
    out["lag_when_mean_lost_0.05"] = float((THETA0 - tc[early[0]]) / (THETA0 - tm[early[0]])) if early.size \
        else math.nan
    diff = tc - smin
    j = int(np.argmax(diff))
    out["max_core_periphery_difference"] = float(diff[j])
    out["max_difference_at_min"] = float(t[j])
    out["max_difference_at_mAh_g"] = float(cap[j])
    for tl in LAG_TIMES_MIN:
        if t[-1] >= tl:
            c, m = np.interp(tl, t, tc), np.interp(tl, t, tm)
            s_lo, s_hi = np.interp(tl, t, smin), np.interp(tl, t, smax)
            out[f"lag_fraction_{tl:g}min"] = float((THETA0 - c) / (THETA0 - m)) if THETA0 > m else math.nan
            out[f"surface_centre_difference_{tl:g}min"] = float(max(s_hi - c, c - s_lo))
    return out


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(NAME, "Xu 2022: shrinking core of the Xu particle at C/30 to 2C (Figs. 2B, 3F, S12, S13)", argv)
    study = Study(NAME, args)
    cases = [c for c in RATES if not study.quick or c[0] in QUICK]
    study.plan(len(cases))
    for key, rate, label in cases:
        study.case(key, case_config(rate, study.quick), describe=f"{label} from θ₀ = {THETA0:g}")
    summary, trace_rows, sum_rows = {}, [], []
    for key, rate, label in cases:
        s = study.results[key].series
        summary[key] = analyse(s) | {"c_rate": rate}
        for i in range(len(s["time_s"])):
            trace_rows.append([key, s["time_s"][i] / 60, s["capacity_mAh_g"][i], s["theta_center"][i],
                               s["theta_mean"][i], s["theta_surface_min"][i], s["theta_surface_max"][i]])
        sum_rows.append([key] + [summary[key].get(k, math.nan) for k in sorted(summary[cases[0][0]])])
    files = ["rates.png", "rates_traces.csv", "rates_summary.csv"]
    if study.comm.rank == 0:
        write_csv(study.outdir / "rates_traces.csv", ["case", "time_min", "capacity_mAh_g", "theta_center",
                                                      "theta_mean", "theta_surface_min", "theta_surface_max"],
                  trace_rows)
        write_csv(study.outdir / "rates_summary.csv", ["case"] + sorted(summary[cases[0][0]]), sum_rows)
        plot(study, cases, study.outdir / "rates.png")
        for key, rate, label in cases:
            o = summary[key]
            lag = ", ".join(f"{o[f'lag_fraction_{t:g}min']:.2f}" for t in LAG_TIMES_MIN
                            if f"lag_fraction_{t:g}min" in o)
            study.say(f"{label:>5s}: front at the centre after {o['front_at_center_min']:.1f} min "
                      f"({o['front_at_center_mAh_g']:.1f} mAh/g); largest centre − surface difference "
                      f"{o['max_core_periphery_difference']:.3f} at {o['max_difference_at_mAh_g']:.1f} mAh/g"
                      + (f"; centre lag at 5/15/25/35 min {lag}" if lag else ""))
    study.finish("Xu 2022: shrinking core of the Xu particle vs rate (Figs. 2B, 3F, S12, S13)",
                 extra=summary, outputs=files)
    return summary


def plot(study, cases, path):
    pyplot = plt()
    fig, (ax, ax2) = pyplot.subplots(1, 2, figsize=(10.5, 4.0))
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.86, wspace=0.28)
    cmap = pyplot.get_cmap("plasma")
    for n, (key, rate, label) in enumerate(cases):
        s = study.results[key].series
        color = cmap(0.1 + 0.75 * n / max(1, len(cases) - 1))
        ax.plot(s["capacity_mAh_g"], s["theta_center"], color=color, lw=2.0, label=f"{label} centre")
        ax.plot(s["capacity_mAh_g"], s["theta_mean"], color=color, lw=1.0, ls="--")
        ax2.plot(s["time_s"] / 60.0 * rate, s["theta_center"] - s["theta_surface_min"], color=color, lw=1.8,
                 label=label)
    ax.plot([], [], color="0.4", ls="--", lw=1.0, label="mean")
    ax.set_xlabel("capacity (mAh g⁻¹)")
    ax.set_ylabel("Li occupancy θ")
    ax.set_title("centre lags the mean, then catches up (cf. Fig. 3F)", fontsize=9)
    ax.legend(frameon=False, fontsize=8)
    ax.grid(alpha=0.3)
    ax2.set_xlabel("time × C-rate (h·C = fraction of 1C charge)")
    ax2.set_ylabel("θ_centre − θ_surface,min")
    ax2.set_title("periphery–core difference (cf. Fig. S13: up to 0.2–0.3 at 1C–2C)", fontsize=9)
    ax2.legend(frameon=False, fontsize=8)
    ax2.grid(alpha=0.3)
    fig.suptitle(f"Xu 2022 particle delithiated from θ₀ = {THETA0:g} at C/30–2C (prescribed flux, Eq. 15)",
                 fontsize=10)
    fig.savefig(path, dpi=150)
    pyplot.close(fig)


if __name__ == "__main__":
    main(sys.argv[1:])
