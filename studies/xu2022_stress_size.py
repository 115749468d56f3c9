"""Stress from Li heterogeneity vs particle size and rate (Xu et al. 2022, Figs. S13–S15; physics.md §6).

Xu 2022 write that at 1C and 2C "the SoC difference between the periphery and the core can be
as large as 20-30 %" (Fig. S13), which "will lead to internal stress/strain within individual
particles which may further result in mechanical degradation such as particle fracturing,
especially for larger particle sizes", and that smaller particles (1.2 µm, 600 nm; Figs.
S14–S15) are more uniform. This study puts numbers on that with the one-way chemo-mechanical
model: the Xu particle (ellipse with A = 4.87 µm², Γ = 8.06 µm, equivalent diameter 2.49 µm)
and the same shape scaled to 1.2 and 0.6 µm, delithiated from θ₀ = 0.95 at 1C and 2C until the
surface reaches θ = 0.2 (or θ̄ ≈ 0.26), default material and mechanical data (E = 170 GPa,
ν = 0.275, the constructed a(θ), c(θ) table), generalised plane strain (a long free prism).

Reported per case: the peak tensile (max principal) stress over the particle and the run, where
(r/R) and when; the peak surface hoop stress; the largest surface–centre occupancy difference;
the flaw-based indicator K_I of a 100 nm surface flaw; the θ spread (p95 − p5) and the split of
a two-mode θ distribution at θ̄ = 0.9 and 0.74 (to set against the Δθ = 0.09–0.18 of the two
phases Grenier et al. fitted to operando XRD of NCA, quoted in 002).

    python studies/xu2022_stress_size.py [-o DIR] [--quick] [--force]
    mpiexec -n 2 python studies/xu2022_stress_size.py

Outputs (DIR, default runs/studies/xu2022_stress_size): stress_size.png (traces and peak vs
size), stress_size.csv (the table), stress_size_traces.csv, study.json, cases/<case>/ (run
directories with mechanics.csv, surface_hoop.csv, lattice_distribution.csv; with the full
meshes also stress_maps.png and stress_summary.png). --quick: coarse meshes, 2.5 and 0.6 µm at 2C.
"""

from __future__ import annotations

import math
import sys

from mpi4py import MPI  # noqa: F401  (before dolfinx)

import numpy as np

from nmcfx.studies._common import QUIET_OUTPUT, Study, parse_args, plt, write_csv
from nmcfx.studies._stress import MECHANICS, XU_EQUIVALENT_DIAMETER_UM, read_case_files, scaled_xu_geometry

NAME = "xu2022_stress_size"
SIZES_UM = (2.5, 1.2, 0.6)
RATES = (1.0, 2.0)
THETA0 = 0.95
THETA_SNAPSHOTS = (0.9, 0.85, 0.8, 0.74)  # mean occupancy at the snapshots (0.96 → 0.74: Grenier's range)
FLAW_UM = 0.1
#: "early" charge: θ̄ ≥ 0.6, before c collapses (the heterogeneity of 002 at the beginning of charge)
EARLY_THETA = 0.6
#: θ̄ falls by n·Q/(F/M) per hour at nC: Q = 210 mAh/g, F/M = 275 mAh/g for NMC-Ni87
THETA_PER_HOUR_AT_1C = 210.0 / 275.0


def case_key(size, rate) -> str:
    return f"d{size:g}um_{rate:g}C"


def case_config(size_um: float, rate: float, quick: bool) -> dict:
    hours_to = lambda th: (THETA0 - th) / (rate * THETA_PER_HOUR_AT_1C)  # noqa: E731
    out = dict(QUIET_OUTPUT, snapshot_times_min=[round(60 * hours_to(th), 6) for th in THETA_SNAPSHOTS])
    if not quick:
        out["figures"] = True  # per-case stress maps, traces, XRD peaks
    return {
        "title": f"Xu 2022 particle scaled to {size_um:g} µm, {rate:g}C delithiation from θ₀ = {THETA0}",
        "geometry": scaled_xu_geometry(size_um, quick),
        "protocol": {"initial_theta": THETA0,
                     "steps": [{"type": "charge", "c_rate": rate, "duration_min": 60 * hours_to(0.26),
                                "until": ["theta_surface_min <= 0.2"]}]},
        "solver": {"theta_tol": 2e-3 if quick else 5e-4},
        "mechanics": dict(MECHANICS, flaw_size_um=FLAW_UM),
        "output": out,
    }


def analyse(res, files) -> dict:
    m, s, lat = files["mechanics"], res.series, files["lattice"]
    if not m:
        return {"error": res.error or "no mechanics.csv"}
    i = int(np.argmax(m["sigma1_max_MPa"]))
    j = int(np.argmax(m["hoop_surface_max_MPa"]))
    dtheta = s["theta_center"] - s["theta_surface_min"]
    k = int(np.argmax(dtheta))
    early = m["theta_mean"] >= EARLY_THETA
    e = int(np.argmax(np.where(early, m["sigma1_max_MPa"], -np.inf)))
    out = {"sigma1_peak_early_MPa": m["sigma1_max_MPa"][e], "sigma1_peak_early_theta_mean": m["theta_mean"][e],
           "sigma1_peak_early_r_over_R": m["sigma1_max_r_over_R"][e],
           "sigma1_peak_MPa": m["sigma1_max_MPa"][i], "sigma1_peak_time_min": m["time_s"][i] / 60,
           "sigma1_peak_r_over_R": m["sigma1_max_r_over_R"][i], "sigma1_peak_theta_mean": m["theta_mean"][i],
           "hoop_peak_early_MPa": float(np.max(np.where(early, m["hoop_surface_max_MPa"], -np.inf))),
           "hoop_peak_MPa": m["hoop_surface_max_MPa"][j], "hoop_peak_time_min": m["time_s"][j] / 60,
           "hoop_peak_theta_mean": m["theta_mean"][j],
           "K_I_surface_peak_MPa_sqrt_m": m["K_I_surface_MPa_sqrt_m"][j],
           "max_center_minus_surface_theta": dtheta[k], "at_theta_mean": s["theta_mean"][k],
           "end_reason": res.steps[0]["reason"] if res.steps else "", "error": res.error}
    for th in (0.9, 0.74):
        if lat and len(lat.get("theta_mean", [])):
            n = int(np.argmin(np.abs(lat["theta_mean"] - th)))
            out[f"theta_spread_at_{th:g}"] = lat["theta_spread_p95_p05"][n]
            out[f"theta_mode_split_at_{th:g}"] = lat["theta_mode_split"][n]
    return out


COLUMNS = ("size_um", "c_rate", "sigma1_peak_early_MPa", "sigma1_peak_early_theta_mean",
           "sigma1_peak_early_r_over_R", "sigma1_peak_MPa", "sigma1_peak_time_min", "sigma1_peak_r_over_R",
           "sigma1_peak_theta_mean", "hoop_peak_early_MPa", "hoop_peak_MPa", "hoop_peak_time_min",
           "hoop_peak_theta_mean", "K_I_surface_peak_MPa_sqrt_m",
           "max_center_minus_surface_theta", "at_theta_mean", "theta_spread_at_0.9", "theta_mode_split_at_0.9",
           "theta_spread_at_0.74", "theta_mode_split_at_0.74", "end_reason")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(NAME, "Xu 2022: stress from Li heterogeneity vs particle size (2.5, 1.2, 0.6 µm) at 1C/2C",
                      argv)
    study = Study(NAME, args)
    cases = [(2.5, 2.0), (0.6, 2.0)] if study.quick else [(d, r) for r in RATES for d in SIZES_UM]
    study.plan(len(cases))
    results, files = {}, {}
    for size, rate in cases:
        key = case_key(size, rate)
        res = study.case(key, case_config(size, rate, study.quick), describe=f"{size:g} µm at {rate:g}C")
        files[key] = read_case_files(study, res)
        results[key] = {"size_um": size, "c_rate": rate} | analyse(res, files[key])
    out = study.outdir
    names = ["stress_size.png", "stress_size.csv", "stress_size_traces.csv"]
    if study.comm.rank == 0:
        write_csv(out / "stress_size.csv", list(COLUMNS),
                  [[results[k].get(c, math.nan) for c in COLUMNS] for k in results])
        trace_rows = []
        for key, f in files.items():
            m = f["mechanics"]
            for r in range(len(m.get("time_s", []))):
                trace_rows.append([key, m["time_s"][r], m["theta_mean"][r], m["sigma1_max_MPa"][r],
                                   m["sigma1_max_r_over_R"][r], m["hoop_surface_max_MPa"][r],
                                   m["hydrostatic_center_MPa"][r]])
        write_csv(out / "stress_size_traces.csv", ["case", "time_s", "theta_mean", "sigma1_max_MPa",
                                                   "sigma1_max_r_over_R", "hoop_surface_max_MPa",
                                                   "hydrostatic_center_MPa"], trace_rows)
        plot(results, files, out / "stress_size.png")
        study.say(f"{'case':<14s} {'σ1 θ̄≥0.6':>10s} {'peak σ1':>9s} {'at r/R':>7s} {'θ̄':>6s} {'hoop max':>9s} "
                  f"{'max Δθ':>7s} {'K_I(100 nm)':>12s} {'θ spread@0.9/0.74':>18s}")
        for key, r in results.items():
            if "sigma1_peak_MPa" not in r:
                study.say(f"{key:<14s} failed: {r.get('error')}")
                continue
            study.say(f"{key:<14s} {r['sigma1_peak_early_MPa']:6.0f} MPa {r['sigma1_peak_MPa']:5.0f} MPa {r['sigma1_peak_r_over_R']:7.2f} "
                      f"{r['sigma1_peak_theta_mean']:6.3f} {r['hoop_peak_MPa']:5.0f} MPa "
                      f"{r['max_center_minus_surface_theta']:7.3f} {r['K_I_surface_peak_MPa_sqrt_m']:8.3f} MPa√m "
                      f"{r.get('theta_spread_at_0.9', math.nan):8.3f}/{r.get('theta_spread_at_0.74', math.nan):.3f}")
    study.finish("Xu 2022 particle at 2.5/1.2/0.6 µm, 1C and 2C: peak stresses vs size (one-way mechanics, "
                 "generalised plane strain)", extra=results, outputs=names)
    return results


def plot(results, files, path):
    pyplot = plt()
    fig, (a1, a2) = pyplot.subplots(1, 2, figsize=(11, 4.2))
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.87, wspace=0.25)
    colors = {2.5: "C3", 1.2: "C1", 0.6: "C0"}
    for key, f in files.items():
        m, r = f["mechanics"], results[key]
        if not m:
            continue
        ls = "-" if r["c_rate"] == 2.0 else "--"
        a1.plot(THETA0 - m["theta_mean"], m["sigma1_max_MPa"], ls, color=colors.get(r["size_um"], "k"),
                label=f"{r['size_um']:g} µm, {r['c_rate']:g}C")
    a1.axvline(THETA0 - EARLY_THETA, color="0.6", lw=0.8, ls=":")
    a1.set_xlabel("Li removed, θ₀ − θ̄")
    a1.set_ylabel("peak tensile stress σ1,max (MPa)")
    a1.legend(fontsize=8)
    a1.grid(alpha=0.3)
    for rate, mk in ((1.0, "s--"), (2.0, "o-")):
        pts = sorted((r["size_um"], r.get("sigma1_peak_early_MPa", math.nan), r.get("sigma1_peak_MPa", math.nan),
                      r.get("hoop_peak_MPa", math.nan)) for r in results.values() if r["c_rate"] == rate)
        if pts:
            d, s1e, s1, hp = zip(*pts)
            a2.plot(d, s1e, mk, color="C3", label=f"peak σ1 while θ̄ ≥ {EARLY_THETA:g}, {rate:g}C")
            a2.plot(d, s1, mk, color="C5", mfc="none", label=f"peak σ1, whole charge, {rate:g}C")
            a2.plot(d, hp, mk, color="C0", mfc="none", label=f"peak surface hoop, {rate:g}C")
    a2.set_xscale("log")
    from matplotlib.ticker import NullFormatter

    a2.xaxis.set_minor_formatter(NullFormatter())
    a2.set_xticks(SIZES_UM, [f"{d:g}" for d in SIZES_UM])
    a2.set_xlabel("particle size (equivalent diameter, µm)")
    a2.set_ylabel("stress (MPa)")
    a2.legend(fontsize=8)
    a2.grid(alpha=0.3, which="both")
    fig.suptitle(f"Xu 2022 particle (d = {XU_EQUIVALENT_DIAMETER_UM:.2f} µm) and scaled copies, delithiation from "
                 "θ₀ = 0.95: stress falls with size (one-way mechanics, generalised plane strain)", fontsize=9)
    fig.savefig(path, dpi=130)
    pyplot.close(fig)


if __name__ == "__main__":
    main(sys.argv[1:])
