"""Stress of the end-of-discharge Li-rich rim and its relaxation in the CV hold (Xu 2022 Fig. 4/S18).

The Fig. 4A cycle of ``xu2022_discharge_rim.py`` (Xu particle, Butler–Volmer kinetics, from V_oc =
3.5 V: CC charge at 1C to 4.3 V, CC discharge at 1C to 3.0 V, 2 h CV hold at 3.0 V, 74 min rest) with the
one-way chemo-mechanical model (default data, generalised plane strain). At the end of the 1C
discharge a narrow Li-rich (expanded) rim surrounds a Li-poor core: the rim is in hoop
compression and holds the core in tension (physics.md §6: "with a Li-rich rim at the end of
discharge the centre is in tension"); the hold refills the core and the stress relaxes.

Reported: the centre stress (max principal and hydrostatic) and the most compressive surface hoop
stress at the end of the CC discharge; their peaks over the discharge and hold; the time into the
hold at which the centre tension falls below 50 % and 10 % of its end-of-discharge value; the stress
left at the end of the hold.

    python studies/xu2022_stress_rim.py [-o DIR] [--quick] [--force]
    mpiexec -n 2 python studies/xu2022_stress_rim.py

Outputs (DIR, default runs/studies/xu2022_stress_rim): stress_rim.png, stress_rim.csv (key
numbers), stress_rim_timeseries.csv, study.json, cases/<case>/. --quick: coarse mesh.
"""

from __future__ import annotations

import math
import sys

from mpi4py import MPI  # noqa: F401  (before dolfinx)

import numpy as np

from nmcfx.studies import xu2022_discharge_rim as rim
from nmcfx.studies._common import Study, parse_args, plt, settle_time, write_csv
from nmcfx.studies._stress import MECHANICS, read_case_files

NAME = "xu2022_stress_rim"
KEY = "bv_cccv_1C_stress"


def case_config(quick: bool) -> dict:
    _, rate, _, hold_ends, rest = rim.CASES[0]  # Fig. 4A: 1C charge / 1C discharge, 2 h hold, rest
    cfg = rim.case_config(quick, rate, hold_ends, rest)
    cfg["title"] = cfg["title"] + " - with stress"
    cfg["mechanics"] = dict(MECHANICS)
    if not quick:
        cfg["output"] = dict(cfg["output"], figures=True, snapshot_times_min=[])
    return cfg


def analyse(res, files) -> dict:
    m, steps = files["mechanics"], res.steps
    out = {"error": res.error}
    if not m or not steps:
        return out
    end_dis = next((st for st in steps if str(st["label"]) == "CC discharge 1C"), None)
    holds = [st for st in steps if "hold" in str(st["description"])]
    if end_dis is None:
        return out
    t_end = end_dis["end_time_s"]
    i = int(np.argmin(np.abs(m["time_s"] - t_end)))
    out.update({"end_of_discharge_min": t_end / 60, "theta_center": end_dis["theta_center"],
                "theta_surface_max": end_dis["theta_surface_max"],
                "sigma1_center_MPa": m["sigma1_center_MPa"][i], "hydrostatic_center_MPa": m["hydrostatic_center_MPa"][i],
                "hoop_surface_min_MPa": m["hoop_surface_min_MPa"][i], "hoop_surface_max_MPa": m["hoop_surface_max_MPa"][i],
                "sigma1_max_MPa": m["sigma1_max_MPa"][i], "sigma1_max_r_over_R": m["sigma1_max_r_over_R"][i]})
    dis_start = next(st for st in steps if str(st["label"]).startswith("CC discharge"))["start_time_s"]
    window = (m["time_s"] >= dis_start) & (m["time_s"] <= (holds[-1]["end_time_s"] if holds else t_end))
    k = int(np.argmax(np.where(window, m["sigma1_center_MPa"], -np.inf)))
    out["sigma1_center_peak_MPa"] = m["sigma1_center_MPa"][k]
    out["sigma1_center_peak_min_after_discharge_start"] = (m["time_s"][k] - dis_start) / 60
    if holds:
        h0, h1 = holds[0]["start_time_s"], holds[-1]["end_time_s"]
        sel = (m["time_s"] >= h0) & (m["time_s"] <= h1)
        th, sc = (m["time_s"][sel] - h0) / 60, m["sigma1_center_MPa"][sel]
        ref = out["sigma1_center_MPa"]
        for frac in (0.5, 0.1):
            out[f"hold_center_tension_below_{int(frac * 100)}pct_min"] = settle_time(th, sc, frac * ref) \
                if ref > 0 else math.nan
        j = int(np.argmin(np.abs(m["time_s"] - h1)))
        out.update({"end_of_hold_sigma1_center_MPa": m["sigma1_center_MPa"][j],
                    "end_of_hold_sigma1_max_MPa": m["sigma1_max_MPa"][j],
                    "end_of_hold_hoop_surface_min_MPa": m["hoop_surface_min_MPa"][j]})
    return out


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(NAME, "Xu 2022: stress of the end-of-discharge Li-rich rim and its relaxation in the CV hold",
                      argv)
    study = Study(NAME, args)
    study.plan(1)
    res = study.case(KEY, case_config(study.quick), describe="Butler-Volmer 1C charge, 1C discharge, 2 h hold, rest (Fig. 4A)")
    files = read_case_files(study, res)
    key = analyse(res, files)
    out = study.outdir
    names = ["stress_rim.png", "stress_rim.csv", "stress_rim_timeseries.csv"]
    if study.comm.rank == 0:
        write_csv(out / "stress_rim.csv", ["quantity", "value"], [[k, v] for k, v in key.items()])
        m = files["mechanics"]
        cols = ["time_s", "protocol_step", "theta_mean", "sigma1_center_MPa", "hydrostatic_center_MPa",
                "sigma1_max_MPa", "sigma1_max_r_over_R", "hoop_surface_max_MPa", "hoop_surface_min_MPa"]
        write_csv(out / "stress_rim_timeseries.csv", cols, [[m[c][i] for c in cols] for i in range(len(m["time_s"]))])
        plot(res, files, key, out / "stress_rim.png")
        if "sigma1_center_MPa" in key:
            study.say(f"end of the 1C discharge ({key['end_of_discharge_min']:.1f} min, θ_centre = "
                      f"{key['theta_center']:.3f}, θ_surface,max = {key['theta_surface_max']:.4f}): centre σ1 = "
                      f"{key['sigma1_center_MPa']:.0f} MPa (hydrostatic {key['hydrostatic_center_MPa']:.0f}), surface "
                      f"hoop {key['hoop_surface_min_MPa']:.0f} … {key['hoop_surface_max_MPa']:.0f} MPa")
            study.say(f"hold: centre tension below 50 % after {key.get('hold_center_tension_below_50pct_min'):.1f} min, "
                      f"below 10 % after {key.get('hold_center_tension_below_10pct_min'):.1f} min; end of hold: centre "
                      f"σ1 = {key.get('end_of_hold_sigma1_center_MPa', math.nan):.1f} MPa")
    study.finish("Xu 2022 end-of-discharge rim (Butler-Volmer, CC-CV) with one-way mechanics: centre tension and "
                 "its relaxation", extra=key, outputs=names)
    return key


def plot(res, files, key, path):
    pyplot = plt()
    m, s = files["mechanics"], res.series
    fig, (a0, a1) = pyplot.subplots(2, 1, figsize=(9, 6.4), sharex=True)
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.09, top=0.92, hspace=0.08)
    t = m["time_s"] / 60
    a0.plot(s["time_s"] / 60, s["theta_center"], color="k", label="θ centre")
    a0.plot(s["time_s"] / 60, s["theta_surface_max"], color="C1", label="θ surface max")
    a0.plot(s["time_s"] / 60, s["theta_mean"], color="0.5", ls="--", label="θ mean")
    a0.set_ylabel("Li occupancy θ")
    a0.legend(fontsize=8, loc="lower left")
    a0.grid(alpha=0.3)
    a1.plot(t, m["sigma1_center_MPa"], color="C3", label="centre, max principal σ1")
    a1.plot(t, m["hydrostatic_center_MPa"], color="C3", ls="--", label="centre, hydrostatic")
    a1.plot(t, m["hoop_surface_min_MPa"], color="C0", label="surface hoop, min (rim)")
    a1.plot(t, m["hoop_surface_max_MPa"], color="C0", ls=":", label="surface hoop, max")
    a1.axhline(0.0, color="0.6", lw=0.8)
    a1.set_ylabel("stress (MPa)")
    a1.set_xlabel("time (min)")
    a1.legend(fontsize=8, loc="upper left")
    a1.grid(alpha=0.3)
    for st in res.steps:
        for ax in (a0, a1):
            ax.axvline(st["end_time_s"] / 60, color="0.8", lw=0.6)
    if "end_of_discharge_min" in key:
        for ax in (a0, a1):
            ax.axvline(key["end_of_discharge_min"], color="k", lw=1.0, ls="-.")
        a1.annotate("end of 1C discharge", (key["end_of_discharge_min"], a1.get_ylim()[1]), fontsize=8,
                    ha="right", va="top", rotation=90)
    fig.suptitle("Xu 2022 particle, Butler-Volmer: 1C charge to 4.3 V, 1C discharge to 3.0 V, 2 h hold, rest - "
                 "stress at the centre and on the surface", fontsize=9)
    fig.savefig(path, dpi=130)
    pyplot.close(fig)


if __name__ == "__main__":
    main(sys.argv[1:])
