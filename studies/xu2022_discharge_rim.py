"""End-of-discharge Li-rich rim and its recovery by a CV hold (Xu et al. 2022, Figs. 1E, 4, S18).

Xu 2022 particle with Butler–Volmer surface kinetics (the particle potential is the
unknown that carries the applied current; ``[surface] model = "butler_volmer"``), and the
two cycles of the paper, each from the state its protocol leaves: after three pre-cycles
ending with 2 h holds at 3 V, "the initial lithium content is estimated to be ~97 % based on
the open circuit voltage (~3.5 V)" (Fig. 4A caption), so every cycle starts at θ where the
default V_oc is 3.5 V (θ = 0.97):

* ``fig1e_C3`` — Fig. 1E: CC charge at C/3 to 4.3 V, CC discharge at C/3 to 3.0 V, 2 h CV
  hold at 3.0 V. Paper: 229.0 mAh/g charge, 192.4 mAh/g CC discharge (CE 84.0 %), the hold
  +16.4 mAh/g (CE 91.2 %).
* ``fig4a_1C`` — Fig. 4A: CC charge at 1C to 4.3 V, CC discharge at 1C to 3.0 V (split
  after 30 min: map "a"), 2 h CV hold (split at +36 and +76 min: maps "c", "d"; "e" at its
  end), then open circuit (74 min: map "f" at 298 min vs "e" at 224 min). Paper: the CC
  discharge ends at 104 min with the particle 8 % brighter than at the start (Li
  deficient), a narrow Li-rich periphery (contrast ≈ 0) around a Li-deficient core that is
  "the vast majority of the particle"; the hold adds ~24 mAh/g (CE 82.3 % → 94.3 %), the
  contrast keeps decreasing through c, d, e and the mean intensity returns to its initial
  value; the current at the end of the hold is −7.59 µA (~C/200).

    python studies/xu2022_discharge_rim.py [-o DIR] [--quick] [--force]
    mpiexec -n 2 python studies/xu2022_discharge_rim.py

Outputs (DIR, default runs/studies/xu2022_discharge_rim): discharge_rim.png (Fig. 4A
cycle) and discharge_rim_fig1e_C3.png, discharge_rim_timeseries.csv (voltage, current,
θ centre/mean/surface range vs time), discharge_rim_steps.csv (per protocol step:
capacity, end reason, state at its end), discharge_rim_profiles.csv (θ along the long
axis at the ends of the steps, cf. Fig. S18), study.json (key numbers per case),
cases/<case>/. --quick: coarse mesh. If the solver fails, the error (time, message) is
printed, stored in cases/<case>/error.json and in study.json, and the figure shows what
was computed.
"""

from __future__ import annotations

import math
import sys

from mpi4py import MPI  # noqa: F401  (before dolfinx)

import numpy as np

from nmcfx.studies._common import (QUIET_OUTPUT, Study, parse_args, plt, read_csv_columns, theta_panel, write_csv,
                                   xu_geometry)

NAME = "xu2022_discharge_rim"
#: The OCV from which both cycles start (002 Fig. 4A caption: ~97 % Li at ~3.5 V)
START_OCV_V = 3.5
#: key, rate (1/h) of charge and discharge, label, hold split ends (min from the start of the hold), rest (min)
CASES = (
    ("fig4a_1C", 1.0, "Fig. 4A: 1C charge / 1C discharge", (2.0, 10.0, 36.0, 76.0, 120.0), 74.0),
    ("fig1e_C3", 1.0 / 3.0, "Fig. 1E: C/3 charge / C/3 discharge", (2.0, 10.0, 36.0, 76.0, 120.0), 0.0),
)
DISCHARGE_SPLIT_MIN = 30.0
#: contrast model of Xu 2022 Eq. 17 (differential contrast A(θ₀ − θ), A = 1/0.95)
CONTRAST_A = 1.0 / 0.95
C_OVER_200_MA_G = 210.0 / 200.0


def start_theta(voltage_V: float = START_OCV_V) -> float:
    """θ at which the default material's V_oc equals ``voltage_V`` (rounded to 1e-5)."""
    from scipy.optimize import brentq

    from nmcfx.materials import get_material

    m = get_material()
    return round(float(brentq(lambda t: float(m.ocv(t)) - voltage_V, 0.5, 0.9999, xtol=1e-12)), 5)


def case_config(quick: bool, rate: float, hold_ends_min=CASES[0][3], rest_min: float = 0.0) -> dict:
    r = "C/3" if abs(rate - 1.0 / 3.0) < 1e-9 else f"{rate:g}C"
    steps = [
        {"type": "charge", "c_rate": rate, "duration_min": 60.0 / rate * 1.5, "until": ["voltage_V >= 4.3"],
         "label": "CC charge"},
        {"type": "discharge", "c_rate": rate, "duration_min": DISCHARGE_SPLIT_MIN, "until": ["voltage_V <= 3.0"],
         "label": f"CC discharge {r} (first 30 min)"},
        {"type": "discharge", "c_rate": rate, "duration_min": 60.0 / rate * 1.5, "until": ["voltage_V <= 3.0"],
         "label": f"CC discharge {r}"},
    ]
    prev = 0.0
    for end in hold_ends_min:
        steps.append({"type": "hold", "voltage_V": 3.0, "duration_min": end - prev, "label": "CV hold 3.0 V"})
        prev = end
    if rest_min > 0:
        steps.append({"type": "rest", "duration_min": rest_min, "label": "rest"})
    return {
        "title": f"Xu 2022 particle, Butler-Volmer, from V_oc = {START_OCV_V:g} V: CC charge {r} to 4.3 V, "
                 f"CC discharge {r} to 3.0 V, 2 h CV hold at 3.0 V" + (f", {rest_min:g} min rest" if rest_min else ""),
        "geometry": xu_geometry(quick),
        "surface": {"model": "butler_volmer"},
        "protocol": {"initial_theta": start_theta(), "steps": steps},
        "solver": {"theta_tol": 2e-3 if quick else 5e-4, "dt_max_s": 180.0 if quick else 60.0},
        "output": dict(QUIET_OUTPUT, profile_points=161),
    }


def phase_names(steps: list[dict]) -> list[str]:
    """Short names of the protocol steps (for tables and map titles)."""
    out, hold_t = [], 0.0
    for st in steps:
        d = str(st.get("description", ""))
        lab = str(st.get("label", ""))
        if "hold" in d:
            hold_t += (st["end_time_s"] - st["start_time_s"]) / 60.0
            out.append(f"hold +{hold_t:.0f} min")
        elif lab.startswith("CC discharge") and "(first" in lab:
            out.append(f"discharge +{(st['end_time_s'] - st['start_time_s']) / 60:.0f} min")
        elif lab.startswith("CC discharge"):
            out.append("end of CC discharge")
        elif lab.startswith("CC charge"):
            out.append("end of CC charge")
        elif d.startswith("rest") or lab == "rest":
            out.append(f"rest +{(st['end_time_s'] - st['start_time_s']) / 60:.0f} min")
        else:
            out.append(lab or d)
    return out


def analyse(res, profiles) -> dict:
    """Key numbers of one case: capacities, coulombic efficiencies, the rim and its recovery.

    Contrasts use Xu 2022 Eq. 17 with θ₀ the cycle's start: A (θ₀ − θ), A = 1/0.95
    (positive = Li deficient, "red")."""
    s, steps = res.series, res.steps
    names = phase_names(steps)
    th0 = res.config["protocol"]["initial_theta"]
    key = {"error": res.error, "theta_start": th0}
    charge = next((st["capacity_mAh_g"] for st in steps if str(st["label"]).startswith("CC charge")), math.nan)
    cc_dis = -sum(st["capacity_mAh_g"] for st in steps if str(st["label"]).startswith("CC discharge"))
    hold = -sum(st["capacity_mAh_g"] for st in steps if "hold" in str(st["description"]))
    key.update({"charge_mAh_g": charge, "cc_discharge_mAh_g": cc_dis, "hold_mAh_g": hold,
                "ce_cc_percent": 100 * cc_dis / charge if charge else math.nan,
                "ce_with_hold_percent": 100 * (cc_dis + hold) / charge if charge else math.nan,
                "step_capacities_mAh_g": {n: st["capacity_mAh_g"] for n, st in zip(names, steps)}})
    end_dis = next((st for st, n in zip(steps, names) if n == "end of CC discharge"), None)
    if end_dis is not None:
        key["end_of_cc_discharge"] = {k: end_dis[k] for k in ("end_time_s", "theta_mean", "theta_center",
                                                              "theta_surface_min", "theta_surface_max",
                                                              "voltage_V", "reason")}
        key["end_of_cc_discharge_min"] = end_dis["end_time_s"] / 60.0
        key["mean_contrast_end_of_cc"] = CONTRAST_A * (th0 - end_dis["theta_mean"])
        key["rim_contrast_end_of_cc"] = CONTRAST_A * (th0 - end_dis["theta_surface_max"])
        key["centre_contrast_end_of_cc"] = CONTRAST_A * (th0 - end_dis["theta_center"])
        k = names.index("end of CC discharge")
        if res.maps and k < len(res.maps["theta"]):
            key["area_fraction_below_theta0_end_of_cc"] = area_fraction_below(res.maps, k, th0)
        for n, _, xs, vs in profiles:
            if n == "end of CC discharge":
                key["rim_width_um"] = rim_width(xs, vs, th0 - 0.01)
    holds = [st for st in steps if "hold" in str(st["description"])]
    if holds:
        last = holds[-1]
        key["end_of_hold"] = {k: last[k] for k in ("end_time_s", "theta_mean", "theta_center", "theta_surface_min",
                                                   "theta_surface_max", "current_mA_g")}
        key["spread_end_of_hold"] = last["theta_surface_max"] - last["theta_center"]
        key["mean_contrast_end_of_hold"] = CONTRAST_A * (th0 - last["theta_mean"])
        in_hold = np.isin(s["protocol_step"], [st["index"] for st in holds])
        t_hold = (s["time_s"][in_hold] - holds[0]["start_time_s"]) / 60.0
        cur = s["current_mA_g"][in_hold]
        if cur.size:
            key["hold_current_first_step_mA_g"] = float(cur[0])
            key["hold_current_end_mA_g"] = float(cur[-1])
            # when the lithiation current of the hold has fallen below C/20 and C/200 (PITT limit of Xu 2022)
            for lim in (10.5, C_OVER_200_MA_G):
                above = np.flatnonzero(np.abs(cur) > lim)
                key[f"hold_current_below_{lim:g}_mA_g_after_min"] = (
                    float(t_hold[above[-1] + 1]) if above.size and above[-1] + 1 < len(cur) else
                    (0.0 if not above.size else math.nan))
        # the core's recovery: when the centre's contrast has fallen below 0.01 ("~0 total contrast, white")
        tc = s["theta_center"][in_hold]
        ok = np.flatnonzero(CONTRAST_A * (th0 - tc) < 0.01)
        key["hold_core_recovered_after_min"] = float(t_hold[ok[0]]) if ok.size else math.nan
        key["hold_half_capacity_after_min"] = _half_time(t_hold, -s["capacity_mAh_g"][in_hold])
    rest = [st for st, n in zip(steps, names) if n.startswith("rest")]
    if rest:
        key["ocv_after_rest_V"] = rest[-1]["voltage_V"]
        key["theta_mean_after_rest"] = rest[-1]["theta_mean"]
    return key


def _half_time(t, q):
    """Time at which half of the capacity passed during the hold had passed."""
    if len(q) < 2:
        return math.nan
    q = np.maximum.accumulate(q - q[0])  # lithiation only (round-off aside) during a hold at 3.0 V
    return float(t[np.searchsorted(q, 0.5 * q[-1])]) if q[-1] > 0 else math.nan


def report(study, label, key):
    study.say(f"{label} (from θ = {key['theta_start']:.4f}):")
    study.say(f"  CC charge {key['charge_mAh_g']:.1f} mAh/g, CC discharge {key['cc_discharge_mAh_g']:.1f} mAh/g "
              f"(CE {key['ce_cc_percent']:.1f} %), 2 h hold +{key['hold_mAh_g']:.1f} mAh/g "
              f"(CE {key['ce_with_hold_percent']:.1f} %)")
    e = key.get("end_of_cc_discharge")
    if e:
        w = key.get("rim_width_um", [math.nan, math.nan])
        study.say(f"  end of the CC discharge (t = {e['end_time_s'] / 60:.1f} min): θ_centre = {e['theta_center']:.3f}, "
                  f"θ_surface,max = {e['theta_surface_max']:.4f}, θ_mean = {e['theta_mean']:.3f} (mean contrast "
                  f"{key['mean_contrast_end_of_cc']:+.3f}, rim {key['rim_contrast_end_of_cc']:+.3f}); "
                  f"{100 * key.get('area_fraction_below_theta0_end_of_cc', math.nan):.0f} % of the area below the start, "
                  f"rim within 0.01 of it {w[0]:.2f} / {w[1]:.2f} µm wide along the long axis")
    h = key.get("end_of_hold")
    if h:
        study.say(f"  hold: half its capacity after {key['hold_half_capacity_after_min']:.1f} min, centre contrast < 0.01 "
                  f"after {key['hold_core_recovered_after_min']:.1f} min, |I| < C/200 after "
                  f"{key[f'hold_current_below_{C_OVER_200_MA_G:g}_mA_g_after_min']:.1f} min; at the end θ_mean = "
                  f"{h['theta_mean']:.4f} (contrast {key['mean_contrast_end_of_hold']:+.3f}), "
                  f"θ_surface,max − θ_centre = {key['spread_end_of_hold']:.4f}, I = {h['current_mA_g']:.2g} mA/g")
    if "ocv_after_rest_V" in key:
        study.say(f"  after the rest: V = {key['ocv_after_rest_V']:.3f} V at θ_mean = {key['theta_mean_after_rest']:.4f}")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(NAME, "Xu 2022: end-of-discharge Li-rich rim and its recovery by a 2 h CV hold", argv)
    study = Study(NAME, args)
    cases = CASES
    study.plan(len(cases))
    for key, rate, label, hold_ends, rest in cases:
        study.case(key, case_config(study.quick, rate, hold_ends, rest), maps_at_step_ends=True,
                   describe=f"Butler-Volmer, {label}, 2 h hold at 3.0 V" + (f", {rest:g} min rest" if rest else ""))
    comm = study.comm
    out = study.outdir
    results, ts_rows, step_rows, prof_rows = {}, [], [], []
    files = []
    for ck, rate, label, *_ in cases:
        res = study.results[ck]
        names = phase_names(res.steps)
        prof = comm.bcast(profiles_at_step_ends(res, names) if comm.rank == 0 else None, root=0)
        results[ck] = analyse(res, prof)
        s = res.series
        if res.error and comm.rank == 0:
            t_last = s["time_s"][-1] / 60 if len(s.get("time_s", [])) else math.nan
            step_last = int(s["protocol_step"][-1]) if len(s.get("protocol_step", [])) else -1
            study.say(f"{ck}: solver failure in protocol step {step_last} at t = {t_last:.3f} min: {res.error}")
        cols = ["time_s", "protocol_step", "voltage_V", "current_mA_g", "capacity_mAh_g", "theta_mean",
                "theta_center", "theta_surface_min", "theta_surface_max", "d_um"]
        for i in range(len(s.get("time_s", []))):
            k = int(s["protocol_step"][i])
            ts_rows.append([ck] + [s[c][i] for c in cols] + [names[k] if k < len(names) else "(unfinished)"])
        scols = ["index", "label", "description", "start_time_s", "end_time_s", "reason", "capacity_mAh_g",
                 "theta_mean", "theta_center", "theta_surface_min", "theta_surface_max", "voltage_V", "current_mA_g"]
        step_rows += [[ck] + [st[c] for c in scols] + [n] for st, n in zip(res.steps, names)]
        prof_rows += [[ck, n, t, x, v] for n, t, xs, vs in prof for x, v in zip(xs, vs)]
        fig_name = "discharge_rim.png" if ck == CASES[0][0] else f"discharge_rim_{ck}.png"
        files.append(fig_name)
        if comm.rank == 0:
            plot(res, names, prof, out / fig_name, label)
            report(study, f"{ck} ({label})", results[ck])
    files += ["discharge_rim_timeseries.csv", "discharge_rim_steps.csv", "discharge_rim_profiles.csv"]
    if comm.rank == 0:
        write_csv(out / "discharge_rim_timeseries.csv", ["case"] + cols + ["phase"], ts_rows)
        write_csv(out / "discharge_rim_steps.csv", ["case"] + scols + ["phase"], step_rows)
        write_csv(out / "discharge_rim_profiles.csv", ["case", "phase", "time_s", "s_um", "theta"], prof_rows)
    study.finish("Xu 2022 Figs. 1E/4/S18: C/3 and 1C cycles from V_oc = 3.5 V; the Li-rich rim at the end of the CC "
                 "discharge and its recovery by a 2 h CV hold", extra=results, outputs=files)
    return results


def area_fraction_below(maps: dict, k: int, level: float) -> float:
    """Area fraction of the particle where the (P1) θ map k is below ``level`` (sub-sampled triangles)."""
    pts, tri, th = maps["points"], maps["triangles"], maps["theta"][k]
    p = pts[tri]
    area = 0.5 * np.abs((p[:, 1, 0] - p[:, 0, 0]) * (p[:, 2, 1] - p[:, 0, 1])
                        - (p[:, 1, 1] - p[:, 0, 1]) * (p[:, 2, 0] - p[:, 0, 0]))
    # barycentric sample points (order-4 lattice) of each triangle
    n = 4
    lam = np.array([(i / n, j / n, 1 - (i + j) / n) for i in range(n + 1) for j in range(n + 1 - i)])
    vals = th[tri] @ lam.T  # (cells, samples)
    return float((area * (vals < level).mean(axis=1)).sum() / area.sum())


def rim_width(s_um: np.ndarray, theta: np.ndarray, level: float) -> list[float]:
    """Widths (µm) of the Li-rich rim θ ≥ ``level`` at the two ends of a line profile."""
    out = []
    for xs, vs in ((s_um, theta), (s_um[-1] - s_um[::-1], theta[::-1])):
        below = np.flatnonzero(vs < level)
        if below.size == 0 or below[0] == 0:
            out.append(0.0 if below.size else float(xs[-1]))
            continue
        i = below[0]
        f = (vs[i - 1] - level) / (vs[i - 1] - vs[i])
        out.append(float(xs[i - 1] + f * (xs[i] - xs[i - 1])))
    return out


def profiles_at_step_ends(res, names):
    """θ along the line cut (long axis through the centroid) at the end of every step."""
    lp = read_csv_columns(res.directory / "line_profiles.csv")
    if not lp:
        return []
    t = lp["time_s"]
    s_cols = [c for c in lp if c.startswith("s=")]
    s_um = np.array([float(c[2:-2]) for c in s_cols])
    out = []
    for st, n in zip(res.steps, names):
        i = int(np.argmin(np.abs(t - st["end_time_s"])))
        out.append((n, float(t[i]), s_um, np.array([lp[c][i] for c in s_cols])))
    return out


def plot(res, names, prof, path, label=""):
    import matplotlib.tri as mtri

    pyplot = plt()
    s, m = res.series, res.maps
    fig = pyplot.figure(figsize=(16.0, 8.2))
    gs = fig.add_gridspec(2, 1, height_ratios=(1.0, 1.2), left=0.05, right=0.97, bottom=0.08, top=0.88, hspace=0.3)
    # maps: the charge/discharge phase and the rim/hold phase on their own colour scales
    groups = ([n for n in names if n in ("end of CC charge",) or n.startswith("discharge +")],
              [n for n in names if n == "end of CC discharge" or n in ("hold +10 min", "hold +36 min", "hold +76 min",
                                                                      "hold +120 min") or n.startswith("rest")])
    nmaps = sum(len(g) for g in groups)
    top = gs[0].subgridspec(1, nmaps + 4, width_ratios=[1] * len(groups[0]) + [0.07, 0.25]
                            + [1] * len(groups[1]) + [0.07, 0.01], wspace=0.1)
    n_have = len(m.get("theta", [])) if m else 0
    if n_have:
        tri = mtri.Triangulation(m["points"][:, 0], m["points"][:, 1], m["triangles"])
        col = 0
        for g in groups:
            idx = [names.index(n) for n in g if names.index(n) < n_have]
            if idx:
                vals = m["theta"][idx]
                vmin, vmax = float(vals.min()), float(vals.max())
                if vmax - vmin < 1e-3:
                    vmin, vmax = vmin - 5e-4, vmax + 5e-4
                h = None
                for j, k in enumerate(idx):
                    ax = fig.add_subplot(top[0, col + j])
                    h = theta_panel(ax, tri, m["theta"][k], m["outlines"], vmin, vmax, lw=0.5)
                    ax.axis("off")
                    ax.set_title(f"{names[k]}\n(t = {m['times_s'][k] / 60:.0f} min)", fontsize=8)
                fig.colorbar(h, cax=fig.add_subplot(top[0, col + len(g)]), label="θ")
            col += len(g) + 2
    bot = gs[1].subgridspec(1, 4, wspace=0.6)
    t = s["time_s"] / 60.0
    ax = fig.add_subplot(bot[0, 0])
    ax.plot(t, s["voltage_V"], color="k", lw=1.5)
    ax.set_xlabel("time (min)")
    ax.set_ylabel("voltage vs Li/Li⁺ (V)")
    axc = ax.twinx()
    axc.plot(t, s["current_mA_g"], color="tab:blue", lw=1.0)
    axc.set_ylabel("current (mA g⁻¹)", color="tab:blue")
    ax.set_title("voltage and current", fontsize=9)
    ax.grid(alpha=0.3)
    holds = [st for st in res.steps if "hold" in str(st["description"])]
    if holds:
        t0 = holds[0]["start_time_s"] / 60.0
        after = t > t0 + 1e-9
        th = t[after] - t0
        ax2 = fig.add_subplot(bot[0, 1])
        ax2.semilogx(th, s["theta_center"][after], color="tab:blue", lw=2, label="θ centre")
        ax2.semilogx(th, s["theta_surface_max"][after], color="tab:orange", lw=2, label="θ surface, max")
        ax2.semilogx(th, s["theta_mean"][after], color="k", lw=1.2, label="θ mean")
        hold_end = holds[-1]["end_time_s"] / 60.0 - t0
        ax2.axvline(hold_end, color="0.5", lw=0.8, ls="--")
        ax2.set_xlabel("time since the start of the hold (min)")
        ax2.set_ylabel("Li occupancy θ")
        ax2.legend(frameon=False, fontsize=8, loc="lower right")
        ax2.grid(alpha=0.3, which="both")
        ax2.set_title("recovery during the hold (then rest)", fontsize=9)
        ax3 = fig.add_subplot(bot[0, 2])
        hold_mask = np.isin(s["protocol_step"], [st["index"] for st in holds])
        cur = -s["current_mA_g"][hold_mask]
        ok = cur > 0
        ax3.loglog((t[hold_mask] - t0)[ok], cur[ok], color="tab:blue", lw=1.5)
        ax3.set_ylim(bottom=max(1e-4, cur[ok].min() if ok.any() else 1e-4))
        ax3.set_xlabel("time since the start of the hold (min)")
        ax3.set_ylabel("lithiation current (mA g⁻¹)")
        ax3.grid(alpha=0.3, which="both")
        ax3.set_title("current during the CV hold at 3.0 V", fontsize=9)
    ax4 = fig.add_subplot(bot[0, 3])
    show = ("end of CC discharge", "hold +10 min", "hold +36 min", "hold +76 min", "hold +120 min")
    cmap = pyplot.get_cmap("plasma")
    for n, tt, xs, vs in prof:
        if n in show:
            ax4.plot(xs, vs, lw=1.6, color=cmap(0.85 * show.index(n) / (len(show) - 1)),
                     label=f"{n} ({tt / 60:.0f} min)")
    ax4.set_xlabel("position along the long axis (µm)")
    ax4.set_ylabel("Li occupancy θ")
    ax4.set_title("line profiles (cf. Xu 2022 Fig. S18)", fontsize=9)
    ax4.legend(frameon=False, fontsize=7, loc="lower left")
    ax4.grid(alpha=0.3)
    title = f"{label}: Li-rich rim at the end of the CC discharge and its recovery by a 2 h CV hold at 3.0 V (Xu 2022)"
    if res.error:
        title += f"\nSOLVER FAILURE: {res.error[:150]}"
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=150)
    pyplot.close(fig)


if __name__ == "__main__":
    main(sys.argv[1:])
