"""Charge–rest (Xu et al. 2022 Fig. 2C–D; Lun et al. 2025 Fig. 2e–f): relaxation at rest.

The Xu 2022 particle (ellipse with A = 4.87 µm², Γ = 8.06 µm) is delithiated from
θ₀ = 0.95 at C/3 (= 70 mA g⁻¹, also the current of Lun 2025's charge–rest) for 20 min and
then rests for 40 min. Both papers report that the heterogeneity built up during the
charge relaxes to a near-uniform state within ~10 min of rest. Reported here: θ at the
centre, mean θ and the surface range against time, and the time after the current stops
for the surface–centre difference max(θ_s,max − θ_c, θ_c − θ_s,min) to fall (for good)
below 0.01. A second case does the same on Lun's aged particle (2.4 µm disk, ¼ of the
surface blocked with η = 0.3), whose Li-rich core is off-centre.

    python studies/xu2022_charge_rest.py [-o DIR] [--quick] [--force]
    mpiexec -n 2 python studies/xu2022_charge_rest.py

Outputs (DIR, default runs/studies/xu2022_charge_rest): charge_rest.png,
charge_rest_traces.csv (per case and time step: θ centre/mean/surface min/max and the
surface–centre difference), charge_rest_summary.csv (relaxation times), study.json,
cases/<case>/. --quick: the Xu particle only, coarse mesh.
"""

from __future__ import annotations

import sys

from mpi4py import MPI  # noqa: F401  (before dolfinx)

import numpy as np

from nmcfx.studies._common import QUIET_OUTPUT, Study, disk_geometry, parse_args, plt, settle_time, theta_panel, \
    write_csv, xu_geometry

NAME = "xu2022_charge_rest"
CHARGE_MIN = 20.0
REST_MIN = 40.0
LEVELS = (0.02, 0.01, 0.005)  # surface–centre difference thresholds
MAP_TIMES_MIN = (10.0, 20.0, 25.0, 30.0, 40.0)


def case_config(key: str, quick: bool) -> dict:
    if key == "xu2022":
        title = "Xu 2022 particle: 20 min at C/3 from θ₀ = 0.95, then 40 min rest"
        geometry = xu_geometry(quick)
        surface = None
    else:
        title = "Lun 2025 aged particle: 2.4 µm disk, ¼ blocked (η = 0.3), 20 min at 70 mA/g, then 40 min rest"
        geometry = disk_geometry(quick, 0.25)
        surface = {"model": "flux", "blocking": {"blocked": 0.3}}
    cfg = {
        "title": title,
        "geometry": geometry,
        "protocol": {"initial_theta": 0.95,
                     "steps": [{"type": "charge", "c_rate": 1.0 / 3.0, "duration_min": CHARGE_MIN},
                               {"type": "rest", "duration_min": REST_MIN}]},
        # fine time resolution of the relaxation (the adaptive step would grow to minutes)
        "solver": {"theta_tol": 2e-3 if quick else 5e-4, "dt_max_s": 20.0 if quick else 10.0},
        "output": dict(QUIET_OUTPUT, snapshot_times_min=list(MAP_TIMES_MIN)),
    }
    if surface:
        cfg["surface"] = surface
    return cfg


def surface_centre_difference(s: dict) -> np.ndarray:
    return np.maximum(s["theta_surface_max"] - s["theta_center"], s["theta_center"] - s["theta_surface_min"])


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(NAME, "Charge-rest: relaxation of the Li heterogeneity after a 20 min C/3 charge", argv)
    study = Study(NAME, args)
    cases = [("xu2022", "Xu 2022 particle, C/3")]
    if not study.quick:
        cases.append(("lun2025_blocked", "Lun 2025 disk, ¼ blocked η = 0.3, 70 mA/g"))
    study.plan(len(cases))
    for key, label in cases:
        study.case(key, case_config(key, study.quick), maps=(key == "xu2022"), describe=label)

    summary, trace_rows, sum_rows = {}, [], []
    for key, label in cases:
        s = study.results[key].series
        t = s["time_s"] / 60.0
        diff = surface_centre_difference(s)
        i_stop = int(np.argmin(np.abs(t - CHARGE_MIN)))
        out = {"diff_at_stop": float(diff[i_stop]), "theta_center_at_stop": float(s["theta_center"][i_stop]),
               "theta_surface_min_at_stop": float(s["theta_surface_min"][i_stop]),
               "theta_mean_at_stop": float(s["theta_mean"][i_stop]), "diff_final": float(diff[-1]),
               "d_um_at_stop": float(s["d_um"][i_stop])}
        for lev in LEVELS:
            out[f"relax_below_{lev:g}_min"] = settle_time(t, diff, lev, start=i_stop) - CHARGE_MIN
        summary[key] = out
        for i in range(len(t)):
            trace_rows.append([key, t[i], s["theta_center"][i], s["theta_mean"][i], s["theta_surface_min"][i],
                               s["theta_surface_max"][i], diff[i], s["d_um"][i], int(s["protocol_step"][i])])
        sum_rows.append([key] + [out[k] for k in sorted(out)])
    files = ["charge_rest.png", "charge_rest_traces.csv", "charge_rest_summary.csv"]
    if study.comm.rank == 0:
        write_csv(study.outdir / "charge_rest_traces.csv",
                  ["case", "time_min", "theta_center", "theta_mean", "theta_surface_min", "theta_surface_max",
                   "surface_centre_difference", "d_um", "protocol_step"], trace_rows)
        write_csv(study.outdir / "charge_rest_summary.csv", ["case"] + sorted(next(iter(summary.values()))),
                  sum_rows)
        plot(study, cases, summary, study.outdir / "charge_rest.png")
        for key, label in cases:
            o = summary[key]
            study.say(f"{label}: at the end of the charge θ_c = {o['theta_center_at_stop']:.3f}, "
                      f"θ_s,min = {o['theta_surface_min_at_stop']:.3f} (difference {o['diff_at_stop']:.3f}); "
                      f"below 0.02 / 0.01 / 0.005 after {o['relax_below_0.02_min']:.1f} / "
                      f"{o['relax_below_0.01_min']:.1f} / {o['relax_below_0.005_min']:.1f} min of rest")
    study.finish("Charge-rest: 20 min C/3 then 40 min rest; relaxation of the surface-centre difference",
                 extra=summary, outputs=files)
    return summary


def plot(study, cases, summary, path):
    import matplotlib.tri as mtri

    pyplot = plt()
    fig = pyplot.figure(figsize=(11.0, 7.0))
    gs = fig.add_gridspec(2, len(MAP_TIMES_MIN), height_ratios=(1.5, 1.0), left=0.07, right=0.9, bottom=0.04,
                          top=0.9, hspace=0.32, wspace=0.45)
    ax = fig.add_subplot(gs[0, :3])
    ax2 = fig.add_subplot(gs[0, 3:])
    s = study.results["xu2022"].series
    t = s["time_s"] / 60.0
    ax.fill_between(t, s["theta_surface_min"], s["theta_surface_max"], color="tab:orange", alpha=0.3,
                    label="surface (min–max)")
    ax.plot(t, s["theta_mean"], color="k", lw=1.5, label="mean")
    ax.plot(t, s["theta_center"], color="tab:blue", lw=2.0, label="centre")
    ax.axvspan(CHARGE_MIN, t[-1], color="0.92", zorder=0)
    ax.text(CHARGE_MIN + 1, 0.945, "rest", fontsize=9, va="top")
    ax.set_xlabel("time (min)")
    ax.set_ylabel("Li occupancy θ")
    ax.set_title("Xu 2022 particle: 20 min C/3, then rest", fontsize=10)
    ax.legend(frameon=False, fontsize=8, loc="upper right")
    ax.grid(alpha=0.3)
    colors = {"xu2022": "tab:blue", "lun2025_blocked": "tab:red"}
    for key, label in cases:
        r = study.results[key].series
        tt = r["time_s"] / 60.0
        diff = surface_centre_difference(r)
        ax2.semilogy(tt, np.maximum(diff, 1e-5), color=colors[key], lw=1.8, label=label)
        tr = summary[key]["relax_below_0.01_min"]
        if np.isfinite(tr):
            ax2.plot([CHARGE_MIN + tr], [0.01], "o", color=colors[key])
            ax2.annotate(f"{tr:.1f} min", (CHARGE_MIN + tr, 0.01), textcoords="offset points", xytext=(6, 6),
                         fontsize=8, color=colors[key])
    ax2.axhline(0.01, color="0.4", lw=0.8, ls="--")
    ax2.axvline(CHARGE_MIN, color="0.4", lw=0.8)
    ax2.set_xlabel("time (min)")
    ax2.set_ylabel("max |θ_surface − θ_centre|")
    ax2.set_ylim(1e-4, 0.5)
    ax2.legend(frameon=False, fontsize=8)
    ax2.grid(alpha=0.3, which="both")
    ax2.set_title("relaxation after the current stops", fontsize=10)
    m = study.results["xu2022"].maps
    tri = mtri.Triangulation(m["points"][:, 0], m["points"][:, 1], m["triangles"])
    vmin, vmax = float(m["theta"].min()), float(m["theta"].max())
    h = None
    for j, tmin in enumerate(MAP_TIMES_MIN):
        axm = fig.add_subplot(gs[1, j])
        h = theta_panel(axm, tri, m["theta"][j], m["outlines"], vmin, vmax)
        axm.axis("off")
        phase = "charge" if tmin <= CHARGE_MIN else f"rest +{tmin - CHARGE_MIN:g} min"
        axm.set_title(f"{tmin:g} min ({phase})", fontsize=9)
    cax = fig.add_axes((0.92, 0.06, 0.012, 0.26))
    fig.colorbar(h, cax=cax, label="θ")
    fig.suptitle("Charge–rest: heterogeneity relaxes at rest (Xu 2022 Fig. 2C–D, Lun 2025 Fig. 2e–f)", fontsize=11)
    fig.savefig(path, dpi=150)
    pyplot.close(fig)


if __name__ == "__main__":
    main(sys.argv[1:])
