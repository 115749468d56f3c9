"""Lun et al. 2025, Fig. 4: asymmetric shrinking core from partial surface blocking.

2.4 µm disk (basal-plane cross-section of a cylindrical single crystal), delithiation at
100 mA g⁻¹ (~C/2) from θ₀ = 0.95 for 20 min, four surface conditions:

    (a) no blocking; (b) ¼ of the perimeter blocked, η = j_RSL/j_NMC = 0.7;
    (c) ¼ blocked, η = 0.3; (d) ½ blocked, η = 0.3

(the cell current is fixed: the free surface carries correspondingly more). The blocked
arc is centred on +x (the right-hand side). θ maps at 5, 10, 15 and 20 min in one 4×4
figure (rows = cases, columns = times) on a common colour scale, blocked arcs outlined.
The runs continue to 30 min, so that case (a) also checks Lun's fresh particle at the same
current (Fig. 2a–b): "the core of the particle remains mostly fully lithiated … for the
first ~15 minutes" and "after ~25 min the Li-poor region reaches the center" (reported:
the centre's loss at 15 min and the time it has lost 0.05, the 'unreacted' contrast).

    python studies/lun2025_fig4.py [-o DIR] [--quick] [--force]
    mpiexec -n 2 python studies/lun2025_fig4.py

Outputs (DIR, default runs/studies/lun2025_fig4): fig4_theta_maps.png,
fig4_snapshots.csv (per case and time: θ mean/centre/min/max, surface range, Li-rich
fraction, offset d of the Li-rich core, position of the θ maximum), fig4_fields.csv (θ
at every mesh vertex at the four times), study.json, cases/<case>/ (run directories).
"""

from __future__ import annotations

import sys

from mpi4py import MPI  # noqa: F401  (before dolfinx)

import numpy as np

from nmcfx.studies._common import QUIET_OUTPUT, Study, disk_geometry, parse_args, plt, theta_panel, write_csv

NAME = "lun2025_fig4"
RATE_MA_G = 100.0
TIMES_MIN = (5.0, 10.0, 15.0, 20.0)
RUN_MIN = 30.0  # beyond the maps: the fresh particle's front reaches the centre at ~25 min (Fig. 2a-b)
#: key, label, blocked fraction of the perimeter, η
CASES = (
    ("none", "(a) no blocking", 0.0, 1.0),
    ("quarter_eta0.7", "(b) ¼ blocked, η = 0.7", 0.25, 0.7),
    ("quarter_eta0.3", "(c) ¼ blocked, η = 0.3", 0.25, 0.3),
    ("half_eta0.3", "(d) ½ blocked, η = 0.3", 0.5, 0.3),
)


def case_config(fraction: float, eta: float, quick: bool) -> dict:
    cfg = {
        "title": f"Lun 2025 Fig. 4: 2.4 µm disk, {RATE_MA_G:g} mA/g, "
                 + ("no blocking" if fraction == 0 else f"{fraction:g} of the surface blocked, η = {eta:g}"),
        "geometry": disk_geometry(quick, fraction),
        "protocol": {"initial_theta": 0.95,
                     "steps": [{"type": "charge", "current_mA_g": RATE_MA_G, "duration_min": RUN_MIN}]},
        "solver": {"theta_tol": 2e-3 if quick else 5e-4},
        "output": dict(QUIET_OUTPUT, snapshot_times_min=list(TIMES_MIN)),
    }
    if fraction > 0:
        cfg["surface"] = {"model": "flux", "blocking": {"blocked": eta}}
    return cfg


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(NAME, "Lun 2025 Fig. 4: θ maps of a 2.4 µm disk with partial surface blocking", argv)
    study = Study(NAME, args)
    study.plan(len(CASES))
    for key, label, fraction, eta in CASES:
        study.case(key, case_config(fraction, eta, study.quick), maps=True, describe=label)

    rows, field_rows, key_numbers = [], [], {}
    for key, label, fraction, eta in CASES:
        r = study.results[key]
        s, m = r.series, r.maps
        key_numbers[key] = {}
        for j, tmin in enumerate(TIMES_MIN):
            i = int(np.argmin(np.abs(s["time_s"] - 60 * tmin)))
            th = m["theta"][j]
            imax = int(np.argmax(th))
            row = [key, fraction, eta, tmin, s["theta_mean"][i], s["theta_center"][i], th.min(), th.max(),
                   s["theta_surface_min"][i], s["theta_surface_max"][i], s["li_rich_fraction"][i], s["d_um"][i],
                   m["points"][imax, 0], m["points"][imax, 1]]
            rows.append(row)
            key_numbers[key][f"{tmin:g}min"] = {"d_um": s["d_um"][i], "theta_center": s["theta_center"][i],
                                                "li_rich_fraction": s["li_rich_fraction"][i],
                                                "x_theta_max_um": m["points"][imax, 0]}
            for (x, y), v in zip(m["points"], th):
                field_rows.append([key, tmin, x, y, v])
        drop = s["theta_center"][0] - s["theta_center"]
        t_min = s["time_s"] / 60.0
        key_numbers[key]["centre_loss_at_15min"] = float(np.interp(15.0, t_min, drop))
        k = np.flatnonzero(drop >= 0.05)
        key_numbers[key]["front_at_center_min"] = (
            float(np.interp(0.05, drop[k[0] - 1:k[0] + 1], t_min[k[0] - 1:k[0] + 1])) if k.size and k[0] > 0
            else float("nan"))
    files = ["fig4_theta_maps.png", "fig4_snapshots.csv", "fig4_fields.csv"]
    if study.comm.rank == 0:
        out = study.outdir
        write_csv(out / "fig4_snapshots.csv",
                  ["case", "blocked_fraction", "eta", "time_min", "theta_mean", "theta_center", "theta_min",
                   "theta_max", "theta_surface_min", "theta_surface_max", "li_rich_fraction", "d_um",
                   "x_theta_max_um", "y_theta_max_um"], rows)
        write_csv(out / "fig4_fields.csv", ["case", "time_min", "x_um", "y_um", "theta"], field_rows)
        plot(study, out / "fig4_theta_maps.png")
        for key, label, *_ in CASES:
            k = key_numbers[key]
            study.say(f"{label:<24s} d = " + ", ".join(f"{k[f'{t:g}min']['d_um']:.3f}" for t in TIMES_MIN)
                      + f" µm at {', '.join(f'{t:g}' for t in TIMES_MIN)} min; θ_centre(20 min) = "
                      f"{k['20min']['theta_center']:.3f}; centre −{k['centre_loss_at_15min']:.3f} at 15 min, "
                      f"front at the centre after {k['front_at_center_min']:.1f} min")
    study.finish("Lun 2025 Fig. 4 (and Fig. 2a-b): 2.4 µm disk, 100 mA/g, four blocking cases, θ maps at 5-20 min",
                 extra=key_numbers, outputs=files)
    return key_numbers


def plot(study: Study, path):
    import matplotlib.tri as mtri

    pyplot = plt()
    allv = np.concatenate([study.results[k].maps["theta"].ravel() for k, *_ in CASES])
    vmin, vmax = float(allv.min()), float(allv.max())
    fig, axes = pyplot.subplots(len(CASES), len(TIMES_MIN), figsize=(2.3 * len(TIMES_MIN) + 1.2, 2.3 * len(CASES)),
                                squeeze=False)
    fig.subplots_adjust(left=0.11, right=0.86, bottom=0.03, top=0.92, wspace=0.05, hspace=0.12)
    handle = None
    for r, (key, label, fraction, eta) in enumerate(CASES):
        m = study.results[key].maps
        tri = mtri.Triangulation(m["points"][:, 0], m["points"][:, 1], m["triangles"])
        for c, tmin in enumerate(TIMES_MIN):
            ax = axes[r, c]
            handle = theta_panel(ax, tri, m["theta"][c], m["outlines"], vmin, vmax, highlight="blocked")
            ax.set_xticks([])
            ax.set_yticks([])
            for sp in ax.spines.values():
                sp.set_visible(False)
            if r == 0:
                ax.set_title(f"{tmin:g} min", fontsize=11)
            if c == 0:
                ax.set_ylabel(label, fontsize=9)
    cax = fig.add_axes((0.885, 0.2, 0.02, 0.6))
    fig.colorbar(handle, cax=cax, label="Li occupancy θ")
    fig.suptitle(f"2.4 µm disk, {RATE_MA_G:g} mA g⁻¹ from θ₀ = 0.95 (Lun 2025 Fig. 4); blocked arcs in red",
                 fontsize=10)
    fig.savefig(path, dpi=150)
    pyplot.close(fig)


if __name__ == "__main__":
    main(sys.argv[1:])
