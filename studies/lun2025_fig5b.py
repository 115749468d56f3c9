"""Lun et al. 2025, Fig. 5b: Li extracted at a surface cut-off vs rate, with and without blocking.

2.4 µm disk charged from θ₀ = 0.95 at 50, 100, 200 and 400 mA g⁻¹ until the occupancy
anywhere on the surface reaches θ = 0.2 (the stand-in for a fixed upper cut-off voltage),
for uniform flux and for ¼ of the perimeter blocked with η = j_RSL/j_NMC = 0.7 and 0.3.
Published trend: more Li is extracted with uniform flux, and the gap grows with rate.

    python studies/lun2025_fig5b.py [-o DIR] [--quick] [--force]
    mpiexec -n 2 python studies/lun2025_fig5b.py

Outputs (DIR, default runs/studies/lun2025_fig5b): fig5b_li_extracted.png,
fig5b_li_extracted.csv (per rate and case: capacity in mAh/g, Li extracted per formula unit
x = θ₀ − θ̄, time to the cut-off, gap to uniform flux), study.json, cases/<case>/.
--quick: rates 50 and 400 mA/g only, coarse mesh.
"""

from __future__ import annotations

import sys

from mpi4py import MPI  # noqa: F401  (before dolfinx)


from nmcfx.studies._common import Study, lun_cutoff_config, parse_args, plt, write_csv

NAME = "lun2025_fig5b"
RATES = (50.0, 100.0, 200.0, 400.0)
QUICK_RATES = (50.0, 400.0)
#: key, label, blocked fraction, η
BLOCKING = (
    ("none", "uniform flux (no blocking)", 0.0, 1.0),
    ("eta0.7", "¼ blocked, η = 0.7", 0.25, 0.7),
    ("eta0.3", "¼ blocked, η = 0.3", 0.25, 0.3),
)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(NAME, "Lun 2025 Fig. 5b: Li extracted at the θ = 0.2 surface cut-off vs rate", argv)
    study = Study(NAME, args)
    rates = QUICK_RATES if study.quick else RATES
    study.plan(len(rates) * len(BLOCKING))
    for rate in rates:
        for key, label, fraction, eta in BLOCKING:
            study.case(f"{rate:g}mAg_{key}", lun_cutoff_config(rate, fraction, eta, study.quick),
                       describe=f"{rate:g} mA/g, {label}")

    table, rows = {}, []
    for rate in rates:
        ref = study.results[f"{rate:g}mAg_none"].summary["capacity_mAh_g"]
        for key, label, fraction, eta in BLOCKING:
            r = study.results[f"{rate:g}mAg_{key}"]
            s = r.summary
            th0 = r.config["protocol"]["initial_theta"]
            x = th0 - s["theta_mean_final"]
            reason = s["protocol_steps"][-1]["reason"]
            rows.append([rate, key, fraction, eta, s["capacity_mAh_g"], x, s["li_extracted_mol"],
                         s["end_time_min"], s["theta_center_final"], s["theta_mean_final"],
                         ref - s["capacity_mAh_g"], reason])
            table.setdefault(key, {})[f"{rate:g}"] = {"capacity_mAh_g": s["capacity_mAh_g"], "x_li": x,
                                                      "gap_mAh_g": ref - s["capacity_mAh_g"],
                                                      "time_min": s["end_time_min"]}
    files = ["fig5b_li_extracted.png", "fig5b_li_extracted.csv"]
    if study.comm.rank == 0:
        write_csv(study.outdir / "fig5b_li_extracted.csv",
                  ["rate_mA_g", "case", "blocked_fraction", "eta", "capacity_mAh_g", "li_extracted_x",
                   "li_extracted_mol_per_um_depth", "time_to_cutoff_min", "theta_center_final",
                   "theta_mean_final", "gap_to_uniform_mAh_g", "end_reason"], rows)
        plot(study, rates, table, study.outdir / "fig5b_li_extracted.png")
        study.say("rate (mA/g): " + "  ".join(f"{r:>7g}" for r in rates))
        for key, label, *_ in BLOCKING:
            study.say(f"{label:<28s}" + "  ".join(f"{table[key][f'{r:g}']['capacity_mAh_g']:7.2f}" for r in rates)
                      + "  mAh/g")
        for key, label, *_ in BLOCKING[1:]:
            study.say(f"gap, {label:<22s}" + "  ".join(f"{table[key][f'{r:g}']['gap_mAh_g']:7.2f}" for r in rates)
                      + "  mAh/g")
    study.finish("Lun 2025 Fig. 5b: Li extracted at the θ = 0.2 surface cut-off vs rate, ¼ blocked η = 0.7/0.3",
                 extra=table, outputs=files)
    return table


def plot(study, rates, table, path):
    pyplot = plt()
    theo = 274.99  # mAh/g per unit of θ (F/M of LiNi0.87Mn0.05Co0.08O2)
    fig, (ax, ax2) = pyplot.subplots(1, 2, figsize=(10.0, 4.0))
    fig.subplots_adjust(left=0.08, right=0.9, bottom=0.14, top=0.86, wspace=0.42)
    styles = {"none": ("k", "o"), "eta0.7": ("tab:blue", "s"), "eta0.3": ("tab:red", "^")}
    for key, label, *_ in BLOCKING:
        c, mk = styles[key]
        cap = [table[key][f"{r:g}"]["capacity_mAh_g"] for r in rates]
        ax.plot(rates, cap, marker=mk, color=c, label=label)
        if key != "none":
            ax2.plot(rates, [table[key][f"{r:g}"]["gap_mAh_g"] for r in rates], marker=mk, color=c, label=label)
    ax.set_xscale("log")
    ax.set_xticks(rates)
    ax.set_xticklabels([f"{r:g}" for r in rates])
    ax.minorticks_off()
    ax.set_xlabel("specific current (mA g⁻¹)")
    ax.set_ylabel("Li extracted at θ_surface = 0.2 (mAh g⁻¹)")
    sec = ax.secondary_yaxis("right", functions=(lambda c: c / theo, lambda x: x * theo))
    sec.set_ylabel("x in Li$_{0.95-x}$TMO$_2$")
    ax.legend(frameon=False, fontsize=8)
    ax.grid(alpha=0.3)
    ax2.set_xscale("log")
    ax2.set_xticks(rates)
    ax2.set_xticklabels([f"{r:g}" for r in rates])
    ax2.minorticks_off()
    ax2.set_xlabel("specific current (mA g⁻¹)")
    ax2.set_ylabel("uniform − blocked (mAh g⁻¹)")
    ax2.axhline(0.0, color="0.6", lw=0.8)
    ax2.legend(frameon=False, fontsize=8)
    ax2.grid(alpha=0.3)
    fig.suptitle("2.4 µm disk from θ₀ = 0.95, charge until any surface point reaches θ = 0.2 (Lun 2025 Fig. 5b)",
                 fontsize=10)
    fig.savefig(path, dpi=150)
    pyplot.close(fig)


if __name__ == "__main__":
    main(sys.argv[1:])
