"""Stress in Lun's partially blocked disks (Lun et al. 2025, Fig. 4 cases; physics.md §2, §6).

The four cases of Lun 2025 Fig. 4 (``lun2025_fig4.py``): 2.4 µm disk, 100 mA g⁻¹ from θ₀ = 0.95
for 20 min, (a) no blocking, (b) ¼ of the perimeter blocked with η = 0.7, (c) ¼ with η = 0.3,
(d) ½ with η = 0.3 — the blocked arc centred on +x (polar angle 0°). Lun 2025 attribute
cracking to lattice strain and the layered/rocksalt misfit; here the one-way chemo-mechanical
model (default data, generalised plane strain) asks what the asymmetric Li distribution does to
the stress: the blocked arc delithiates less, so it contracts less than the free surface.

Reported per case at 5, 10, 15, 20 min: the surface hoop stress along the perimeter, its maximum
and where (polar angle, and the angular distance from the blocked arc), its minimum, the mean hoop
stress on the blocked arc and on the opposite arc (same length, centred on 180°) and their
difference, the peak tensile stress anywhere and where.

    python studies/lun2025_stress_blocked.py [-o DIR] [--quick] [--force]
    mpiexec -n 2 python studies/lun2025_stress_blocked.py

Outputs (DIR, default runs/studies/lun2025_stress_blocked): stress_blocked.png (hoop stress vs
angle, one panel per case), stress_blocked.csv (the numbers), stress_blocked_hoop.csv (hoop
profiles), study.json, cases/<case>/. --quick: coarse meshes, cases (a) and (c).
"""

from __future__ import annotations

import math
import sys

from mpi4py import MPI  # noqa: F401  (before dolfinx)

import numpy as np

from nmcfx.studies import lun2025_fig4 as fig4
from nmcfx.studies._common import Study, parse_args, plt, write_csv
from nmcfx.studies._stress import MECHANICS, at_time, read_case_files

NAME = "lun2025_stress_blocked"
TIMES_MIN = fig4.TIMES_MIN


def case_config(fraction: float, eta: float, quick: bool) -> dict:
    cfg = fig4.case_config(fraction, eta, quick)
    cfg["title"] = cfg["title"].replace("Lun 2025 Fig. 4", "Lun 2025 Fig. 4 with stress")
    cfg["mechanics"] = dict(MECHANICS)
    return cfg


def angular_distance(a_deg, b_deg):
    return np.abs((np.asarray(a_deg) - b_deg + 180.0) % 360.0 - 180.0)


def arc_mean(prof, centre_deg: float, half_width_deg: float) -> float:
    """Mean hoop stress of the surface nodes within ``half_width_deg`` of ``centre_deg``."""
    sel = angular_distance(prof[:, 0], centre_deg) <= half_width_deg
    return float(prof[sel, 1].mean()) if np.any(sel) else math.nan


def analyse(key, fraction, files) -> list[dict]:
    hoop, mech = files["hoop"], files["mechanics"]
    rows = []
    half = 180.0 * fraction if fraction > 0 else 45.0  # no blocking: compare quarter arcs at 0° and 180°
    for tmin in TIMES_MIN:
        sel = np.isclose(hoop.get("time_s", np.zeros(0)), 60 * tmin)
        if not np.any(sel):
            continue
        prof = np.column_stack([hoop["angle_deg"][sel], hoop["hoop_MPa"][sel]])
        i, j = int(np.argmax(prof[:, 1])), int(np.argmin(prof[:, 1]))
        blocked, opposite = arc_mean(prof, 0.0, half), arc_mean(prof, 180.0, half)
        ang = prof[i, 0]
        rows.append({"case": key, "blocked_fraction": fraction, "time_min": tmin,
                     "hoop_max_MPa": prof[i, 1], "hoop_max_angle_deg": ang,
                     "hoop_max_from_arc_centre_deg": float(angular_distance(ang, 0.0)),
                     "hoop_max_on_blocked_arc": bool(fraction > 0 and angular_distance(ang, 0.0) <= half),
                     "hoop_min_MPa": prof[j, 1], "hoop_min_angle_deg": prof[j, 0],
                     "hoop_mean_blocked_arc_MPa": blocked, "hoop_mean_opposite_arc_MPa": opposite,
                     "hoop_opposite_minus_blocked_MPa": opposite - blocked,
                     "sigma1_max_MPa": at_time(mech, "sigma1_max_MPa", 60 * tmin),
                     "sigma1_max_x_um": at_time(mech, "sigma1_max_x_um", 60 * tmin),
                     "sigma1_max_y_um": at_time(mech, "sigma1_max_y_um", 60 * tmin),
                     "sigma1_max_r_over_R": at_time(mech, "sigma1_max_r_over_R", 60 * tmin)})
    return rows


COLUMNS = ("case", "blocked_fraction", "time_min", "hoop_max_MPa", "hoop_max_angle_deg", "hoop_max_from_arc_centre_deg",
           "hoop_max_on_blocked_arc", "hoop_min_MPa", "hoop_min_angle_deg", "hoop_mean_blocked_arc_MPa",
           "hoop_mean_opposite_arc_MPa", "hoop_opposite_minus_blocked_MPa", "sigma1_max_MPa", "sigma1_max_x_um",
           "sigma1_max_y_um", "sigma1_max_r_over_R")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(NAME, "Lun 2025 Fig. 4 cases with stress: asymmetric hoop stress of partially blocked disks",
                      argv)
    study = Study(NAME, args)
    cases = [c for c in fig4.CASES if c[0] in ("none", "quarter_eta0.3")] if study.quick else list(fig4.CASES)
    study.plan(len(cases))
    rows, files = [], {}
    for key, label, fraction, eta in cases:
        res = study.case(key, case_config(fraction, eta, study.quick), describe=label)
        files[key] = read_case_files(study, res)
        rows += analyse(key, fraction, files[key])
    out = study.outdir
    names = ["stress_blocked.png", "stress_blocked.csv", "stress_blocked_hoop.csv"]
    if study.comm.rank == 0:
        write_csv(out / "stress_blocked.csv", list(COLUMNS), [[r[c] for c in COLUMNS] for r in rows])
        hoop_rows = []
        for key, f in files.items():
            h = f["hoop"]
            for k in range(len(h.get("time_s", []))):
                hoop_rows.append([key, h["time_s"][k] / 60, h["angle_deg"][k], h["x_um"][k], h["y_um"][k],
                                  h["hoop_MPa"][k]])
        write_csv(out / "stress_blocked_hoop.csv", ["case", "time_min", "angle_deg", "x_um", "y_um", "hoop_MPa"],
                  hoop_rows)
        plot(cases, files, out / "stress_blocked.png")
        for r in rows:
            if r["time_min"] in (10.0, 20.0):
                study.say(f"{r['case']:<15s} {r['time_min']:4.0f} min: hoop max {r['hoop_max_MPa']:5.0f} MPa at "
                          f"{r['hoop_max_angle_deg']:5.0f}° ({r['hoop_max_from_arc_centre_deg']:3.0f}° from the arc "
                          f"centre), min {r['hoop_min_MPa']:5.0f} MPa; mean on blocked arc "
                          f"{r['hoop_mean_blocked_arc_MPa']:5.0f}, opposite {r['hoop_mean_opposite_arc_MPa']:5.0f} MPa")
    key_numbers = {f"{r['case']}@{r['time_min']:g}min": r for r in rows}
    study.finish("Lun 2025 Fig. 4 cases (2.4 µm disk, 100 mA/g, blocked arcs) with one-way mechanics: surface hoop "
                 "stress vs angle", extra=key_numbers, outputs=names)
    return key_numbers


def plot(cases, files, path):
    pyplot = plt()
    n = len(cases)
    ncol = 2
    nrow = math.ceil(n / ncol)
    fig, axes = pyplot.subplots(nrow, ncol, figsize=(11, 3.4 * nrow), squeeze=False, sharey=True)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.1, top=0.9, wspace=0.08, hspace=0.4)
    cmap = pyplot.get_cmap("viridis")
    for ax, (key, label, fraction, eta) in zip(axes.flat, cases):
        h = files[key]["hoop"]
        if fraction > 0:
            half = 180.0 * fraction
            ax.axvspan(-half, half, color="crimson", alpha=0.12, lw=0)
        for k, tmin in enumerate(TIMES_MIN):
            sel = np.isclose(h.get("time_s", np.zeros(0)), 60 * tmin)
            if not np.any(sel):
                continue
            ang = (h["angle_deg"][sel] + 180.0) % 360.0 - 180.0
            o = np.argsort(ang)
            ax.plot(ang[o], h["hoop_MPa"][sel][o], color=cmap(k / max(1, len(TIMES_MIN) - 1)), lw=1.2,
                    label=f"{tmin:g} min")
        ax.axhline(0.0, color="0.6", lw=0.8)
        ax.set_xlim(-180, 180)
        ax.set_xticks(range(-180, 181, 45))
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("polar angle (deg; blocked arc centred on 0°, shaded)")
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("surface hoop stress (MPa)")
    for ax in axes.flat[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("2.4 µm disk, 100 mA g⁻¹ from θ₀ = 0.95 (Lun 2025 Fig. 4 cases): surface hoop stress "
                 "(one-way mechanics, generalised plane strain)", fontsize=10)
    fig.savefig(path, dpi=130)
    pyplot.close(fig)


if __name__ == "__main__":
    main(sys.argv[1:])
