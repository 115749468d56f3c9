"""One table: what the papers state, what nmcfx gives with its default material, and a verdict.

Runs every paper study of this folder (each resumable: finished cases are skipped) and
writes ``reproduction.csv`` and ``reproduction.md``: one row per quantitative (or clearly
checkable) statement of Xu et al., Joule 2022 (seed 002) and Lun et al., Energy Environ.
Sci. 2025 (seed 000) that a study simulates — the figure, the paper's words and value,
nmcfx's value, the criterion used, and a verdict:

* **reproduced** — the criterion holds;
* **partial** — the trend or order of magnitude holds but the number is off (the row says
  by how much and why);
* **not** — the model does not give it; the row says why;
* **not run** — the study case was skipped (``--quick``).

The criteria are stated in each row, so a reader can disagree with a verdict without
re-running anything. The statements used to *build* the default tables (and so met by
construction) are listed in ``materials/data/README.md``; the rows here are outcomes of
simulations.

    python studies/reproduction.py [-o DIR] [--quick] [--force]
    mpiexec -n 2 python studies/reproduction.py

Outputs (DIR, default runs/studies/reproduction): reproduction.csv, reproduction.md,
study.json, and one sub-directory per study (its own figures, CSVs, cases). --quick:
every study in its quick mode (coarse meshes, fewer cases; what the tests run).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
import time
from pathlib import Path

from mpi4py import MPI  # noqa: F401  (before dolfinx)

NAME = "reproduction"
STUDIES = ("xu2022_rates", "xu2022_charge_rest", "xu2022_discharge_rim", "lun2025_fig4", "lun2025_fig5b",
           "lun2025_fig5d")
COLUMNS = ("figure", "statement", "paper", "nmcfx", "criterion", "verdict", "why")
MISSING = "not run"


def parse(argv):
    p = argparse.ArgumentParser(prog="python studies/reproduction.py", description=__doc__.splitlines()[0])
    p.add_argument("-o", "--output", metavar="DIR", help="output directory (default: runs/studies/reproduction)")
    p.add_argument("--quick", action="store_true", help="every study in its quick mode (coarse meshes, fewer cases)")
    p.add_argument("--force", action="store_true", help="re-run every case even if its results exist")
    args = p.parse_args(argv)
    args.output = Path(args.output) if args.output else Path("runs") / "studies" / NAME
    return args


# ----------------------------------------------------------------------------- helpers
def _f(x, fmt="{:.3g}"):
    return "nan" if x is None or (isinstance(x, float) and not math.isfinite(x)) else fmt.format(x)


def _get(d, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _row(figure, statement, paper, criterion, value=None, verdict=MISSING, why=""):
    return {"figure": figure, "statement": statement, "paper": paper, "nmcfx": value if value is not None else "–",
            "criterion": criterion, "verdict": verdict, "why": why}


def _judge(ok: bool, partial: bool = False) -> str:
    return "reproduced" if ok else ("partial" if partial else "not")


# ----------------------------------------------------------------------------- rows
def rows_xu_rates(r: dict) -> list[dict]:
    c3, c30, c1, c2 = (r.get(k) for k in ("C3", "C30", "1C", "2C"))
    out = []
    crit = ("centre loss/mean loss < 0.2 at 5 min and < 2/3 at 15 and 25 min; "
            "|θ_surface − θ_centre| < 0.03 at 35 min")
    row = _row("Xu 2022 Fig. 2B (C/3, Xu particle)",
               "after 5 min 'the core remains fully lithiated'; the core 'lagged noticeably behind (15 and 25 min)'; "
               "'after 35 min … reasonably uniform'", "lag at 5, 15, 25 min; uniform at 35 min", crit)
    if c3:
        lag = [c3.get(f"lag_fraction_{t:g}min", math.nan) for t in (5, 15, 25)]
        d35 = c3.get("surface_centre_difference_35min", math.nan)
        ok = [lag[0] < 0.2, lag[1] < 2 / 3, lag[2] < 2 / 3, d35 < 0.03]
        row.update(nmcfx=f"centre/mean loss {_f(lag[0], '{:.2f}')}, {_f(lag[1], '{:.2f}')}, {_f(lag[2], '{:.2f}')}; "
                         f"difference at 35 min {_f(d35, '{:.3f}')}; front at the centre (−0.05) after "
                         f"{_f(c3['front_at_center_min'], '{:.1f}')} min",
                   verdict=_judge(all(ok), sum(ok) >= 3),
                   why="" if all(ok) else "the criteria that fail are listed in the value")
    out.append(row)
    row = _row("Xu 2022 Fig. 3F", "the centre 'lags noticeably behind the surface at the start of the CC charge at "
               "all charging rates'", "centre lags at C/30 … 2C",
               "centre loss < 1/2 of the mean's when the mean has lost 0.05, at every simulated rate")
    have = {k: v for k, v in (("C/30", c30), ("C/3", c3), ("1C", c1), ("2C", c2)) if v}
    if have:
        lags = {k: v["lag_when_mean_lost_0.05"] for k, v in have.items()}
        ok = [x < 0.5 for x in lags.values()]
        row.update(nmcfx=", ".join(f"{k}: {_f(v, '{:.2f}')}" for k, v in lags.items()),
                   verdict=_judge(all(ok), any(ok)),
                   why="" if all(ok) else "at the slowest rate the core follows the mean (the particle has time "
                                          "to equilibrate)")
    out.append(row)
    row = _row("Xu 2022 Fig. S12I", "the SoC range with heterogeneity 'widens as the rate increases from C/30 to 1C, "
               "but narrows slightly on further increase to 2C' (one particle)", "widens C/30 → 1C",
               "capacity at which the front reaches the centre (centre −0.05) increases C/30 < C/3 < 1C")
    if c30 and c3 and c1:
        caps = [c30["front_at_center_mAh_g"], c3["front_at_center_mAh_g"], c1["front_at_center_mAh_g"]]
        cap2 = c2["front_at_center_mAh_g"] if c2 else math.nan
        ok = caps[0] < caps[1] < caps[2]
        row.update(nmcfx=f"C/30 {_f(caps[0], '{:.1f}')}, C/3 {_f(caps[1], '{:.1f}')}, 1C {_f(caps[2], '{:.1f}')}, "
                         f"2C {_f(cap2, '{:.1f}')} mAh/g",
                   verdict=_judge(ok), why="" if ok else "the heterogeneous range does not widen with rate")
    out.append(row)
    row = _row("Xu 2022 Fig. S13, Discussion", "at 1C and 2C 'the SoC difference between the periphery and the core "
               "can be as large as 20-30 %'", "0.20–0.30", "largest θ_centre − θ_surface,min ≥ 0.20 at 1C or 2C "
               "(partial: ≥ 0.15)")
    if c1 or c2:
        vals = {k: v["max_core_periphery_difference"] for k, v in (("1C", c1), ("2C", c2)) if v}
        best = max(vals.values())
        row.update(nmcfx=", ".join(f"{k}: {_f(v, '{:.3f}')}" for k, v in vals.items()),
                   verdict=_judge(0.2 <= best <= 0.3, best >= 0.15),
                   why="" if best >= 0.2 else
                   "002's own model (NMR data points, GITT OCV) is steeper between θ = 0.8 and 0.93 than the "
                   "statement-built table, which interpolates smoothly between the stated 1e-12 (θ = 0.8) and "
                   "the full-lithiation constant (θ ≥ 0.93)")
    out.append(row)
    return out


def rows_charge_rest(r: dict) -> list[dict]:
    out = []
    for key, fig, words in (
        ("xu2022", "Xu 2022 Fig. 2C–D (C/3, 20 min, rest)",
         "after the current stops the heterogeneity 'gradually disappeared' (uniform by the end of the rest)"),
        ("lun2025_blocked", "Lun 2025 Fig. 2e–f (70 mA/g, 20 min, rest; ¼ blocked disk)",
         "'near-uniform differential intensity across the particle after only ~10 min of relaxation'"),
    ):
        row = _row(fig, words, "near-uniform after ~10 min",
                   "max|θ_surface − θ_centre| < 0.02 (contrast ≈ 0.02) after 5–15 min of rest")
        o = r.get(key)
        if o:
            t2, t1 = o["relax_below_0.02_min"], o["relax_below_0.01_min"]
            ok = 5.0 <= t2 <= 15.0
            row.update(nmcfx=f"difference {_f(o['diff_at_stop'], '{:.3f}')} at the stop; < 0.02 after "
                             f"{_f(t2, '{:.1f}')} min, < 0.01 after {_f(t1, '{:.1f}')} min",
                       verdict=_judge(ok, t2 <= 25.0),
                       why="" if ok else "the blocked arc keeps a Li-rich region that relaxes through the low-D core")
        out.append(row)
    return out


def rows_discharge_rim(r: dict) -> list[dict]:
    c3, c1 = r.get("fig1e_C3"), r.get("fig4a_1C")
    side = ("002 (Fig. S6 text): the optical cell's 'charge capacity obtained is noticeably higher than expected' "
            "(irreversible oxidative side reactions); even with the hold CE is 91.2 %, which this model (no side "
            "reactions) cannot lose")
    out = []
    row = _row("Xu 2022 Fig. 1E (C/3 from V_oc = 3.5 V)", "'The CC charge … capacities were 229.0 mA h g⁻¹'",
               "229.0 mAh/g", "within 5 % (partial: 10 %)")
    if c3:
        q = c3["charge_mAh_g"]
        err = q / 229.0 - 1
        row.update(nmcfx=f"{q:.1f} mAh/g ({100 * err:+.1f} %)", verdict=_judge(abs(err) <= 0.05, abs(err) <= 0.10),
                   why="" if abs(err) <= 0.05 else
                   "the surface reaches 4.3 V while the centre is still ~0.06 richer (D_Li = 5.9e-13 cm²/s stated for "
                   "θ ≤ 0.1); and " + side)
    out.append(row)
    row = _row("Xu 2022 Fig. 1E", "CC discharge to 3 V '192.4 mA h g⁻¹ … coulombic efficiency of 84.0 %'",
               "192.4 mAh/g, CE 84.0 %", "CE within 3 points")
    if c3:
        ce = c3["ce_cc_percent"]
        row.update(nmcfx=f"{c3['cc_discharge_mAh_g']:.1f} mAh/g, CE {ce:.1f} %", verdict=_judge(abs(ce - 84.0) <= 3),
                   why="" if abs(ce - 84.0) <= 3 else
                   "at C/3 the model lithiates almost to the 3.0-V state before the cut-off (CE ≈ 100 %): D_chem ≥ "
                   "1.1e-12 cm²/s above θ = 0.87 (002's D_Li floor × the OCV's thermodynamic factor) keeps up with "
                   "C/3; " + side)
    out.append(row)
    row = _row("Xu 2022 Fig. 1E", "'The two-hour hold at 3 V provided an additional 16.4 mA h g⁻¹'", "+16.4 mAh/g",
               "within 25 % (partial: within a factor 3)")
    if c3:
        h = c3["hold_mAh_g"]
        row.update(nmcfx=f"+{h:.1f} mAh/g (CE {c3['ce_with_hold_percent']:.1f} %)",
                   verdict=_judge(abs(h / 16.4 - 1) <= 0.25, 16.4 / 3 <= h <= 3 * 16.4),
                   why="" if abs(h / 16.4 - 1) <= 0.25 else
                   "nothing is left to recover: the C/3 discharge already ends near the 3.0-V state (previous row)")
    out.append(row)
    row = _row("Xu 2022 Fig. 4A (1C)", "1C CC charge to 4.3 V (derived: the CC discharge ends at 104 min with CE "
               "82.3 % → charge ≈ 57 min)", "≈ 200 mAh/g (derived)", "within 5 % (partial: 10 %)")
    if c1:
        q = c1["charge_mAh_g"]
        err = q / 200.0 - 1
        row.update(nmcfx=f"{q:.1f} mAh/g", verdict=_judge(abs(err) <= 0.05, abs(err) <= 0.10),
                   why="" if abs(err) <= 0.05 else "polarisation at low θ (see the C/3 row)")
    out.append(row)
    row = _row("Xu 2022 Fig. 4B", "'At the end of the CC discharge (104 min, b)'", "104 min", "within 5 %")
    if c1:
        t = c1.get("end_of_cc_discharge_min", math.nan)
        ok = abs(t / 104.0 - 1) <= 0.05
        row.update(nmcfx=f"{_f(t, '{:.1f}')} min", verdict=_judge(ok, abs(t / 104.0 - 1) <= 0.15),
                   why="" if ok else "the CC discharge lasts longer than in the cell (CE below)")
    out.append(row)
    row = _row("Xu 2022 Fig. 4A", "1C cycle: 'coulombic efficiency from 82.3 % to 94.3 %' with the hold",
               "CE 82.3 % → 94.3 %", "CE of the CC discharge within 3 points")
    if c1:
        ce = c1["ce_cc_percent"]
        row.update(nmcfx=f"CE {ce:.1f} % → {c1['ce_with_hold_percent']:.1f} %",
                   verdict=_judge(abs(ce - 82.3) <= 3),
                   why="" if abs(ce - 82.3) <= 3 else
                   "the 1C discharge fills the particle to within ~0.01 of its start before 3.0 V; the paper's "
                   "remaining 5.7 % after the hold are side reactions")
    out.append(row)
    row = _row("Xu 2022 Fig. 4A–B, S18 (end of the 1C CC discharge)",
               "the particle 8 % brighter than initially; 'the vast majority of the particle still exhibited a lower "
               "lithium content'; 'around a narrow periphery … the total contrast was close to zero'",
               "mean contrast +0.08; rim ≈ 0; most of the area Li-deficient",
               "mean contrast 0.04–0.16; |rim contrast| < 0.02; > 50 % of the area below the start (Eq. 17, A = "
               "1/0.95)")
    if c1 and "mean_contrast_end_of_cc" in c1:
        mc, rc = c1["mean_contrast_end_of_cc"], c1["rim_contrast_end_of_cc"]
        af = c1.get("area_fraction_below_theta0_end_of_cc", math.nan)
        ok = [0.04 <= mc <= 0.16, abs(rc) < 0.02, af > 0.5]
        row.update(nmcfx=f"mean {mc:+.3f}, rim {rc:+.3f}, {100 * af:.0f} % of the area below the start",
                   verdict=_judge(all(ok), ok[1] and not all(ok)),
                   why="" if all(ok) else
                   "the Li-rich rim forms at the right occupancy but grows too wide before the cut-off: above "
                   "θ = 0.97 the steep V_oc makes D_chem large (002 Fig. S19 text) and the core is refilled to "
                   "within ~0.01 of the start")
    out.append(row)
    row = _row("Xu 2022 Fig. 4A", "'During a subsequent two-hour CV hold at 3 V, an extra capacity of ~24 mA h g⁻¹ "
               "could be extracted … and the mean intensity reached its initial value'",
               "+24 mAh/g; mean back to the start", "hold within 25 % of 24 (partial: factor 3); mean within 0.02 "
                                                    "of the start")
    if c1:
        h = c1["hold_mAh_g"]
        back = abs(c1.get("mean_contrast_end_of_hold", math.nan)) < 0.02
        row.update(nmcfx=f"+{h:.1f} mAh/g; mean contrast at the end {c1.get('mean_contrast_end_of_hold', math.nan):+.3f}",
                   verdict=_judge(abs(h / 24 - 1) <= 0.25 and back, 8 <= h <= 72 and back),
                   why="" if abs(h / 24 - 1) <= 0.25 else
                   "only the small deficit of the CC discharge (rows above) is left for the hold; a single particle "
                   "with 002's D_Li floor refills in minutes, and 24 mAh/g is the electrode's capacity ('not all of "
                   "the particles in the whole electrode are fully lithiated even after the long hold', 002). (The "
                   "previous default gave +11 mAh/g only because it started at θ = 0.95 and its hold filled the "
                   "particle to θ = 0.999, 0.05 beyond the start: CE 107 %.)")
    out.append(row)
    row = _row("Xu 2022 Fig. 4B c–e", "'continued decrease in total contrast (c, d, e)' at +36, +76 and +120 min of "
               "the hold; 'at the end of the CV step … very small' variation",
               "core recovers over the 2 h hold", "centre contrast still > 0.01 at +36 min; spread < 0.01 at the end")
    if c1 and "hold_core_recovered_after_min" in c1:
        t = c1["hold_core_recovered_after_min"]
        spread = c1.get("spread_end_of_hold", math.nan)
        ok = (not math.isfinite(t) or t > 36.0) and abs(spread) < 0.01
        row.update(nmcfx=f"centre contrast < 0.01 after {_f(t, '{:.1f}')} min, half of the hold capacity after "
                         f"{_f(c1.get('hold_half_capacity_after_min'), '{:.1f}')} min; spread at the end "
                         f"{_f(spread, '{:.4f}')}",
                   verdict=_judge(ok),
                   why="" if ok else
                   "the same D_chem(θ = 0.87–0.95) ≈ 1–4e-12 cm²/s sets the charge–rest relaxation (~10 min, "
                   "reproduced) and the refilling of the core; a 2-h recovery would need it ~10× lower, or charge "
                   "transfer ~10⁴× slower than the PITT bound (materials/data/README.md)")
    out.append(row)
    row = _row("Xu 2022 Fig. 4 caption", "'The current at the end of the CV period was −7.59 μA (equivalent to "
               "~C/200)'", "≈ C/200 = 1.05 mA/g", "|I| at the end of the hold within a factor 3 of C/200")
    if c1 and "hold_current_end_mA_g" in c1:
        i = abs(c1["hold_current_end_mA_g"])
        ok = 1.05 / 3 <= i <= 3 * 1.05
        row.update(nmcfx=f"{_f(i, '{:.2g}')} mA/g (below C/200 after "
                         f"{_f(c1.get('hold_current_below_1.05_mA_g_after_min'), '{:.1f}')} min)",
                   verdict=_judge(ok), why="" if ok else "the particle equilibrates with 3.0 V within minutes "
                                                          "(row above)")
    out.append(row)
    row = _row("Xu 2022 Fig. 4A caption", "after the previous cycle's 2-h hold at 3 V, 'the initial lithium content is "
               "estimated to be ~97 % based on the … OCV, ~3.5 V'", "OCV ≈ 3.5 V at θ ≈ 0.97 after hold + rest",
               "OCV after the hold and 74 min rest within 0.1 V of 3.5 V")
    if c1 and "ocv_after_rest_V" in c1:
        v = c1["ocv_after_rest_V"]
        ok = abs(v - 3.5) <= 0.1
        row.update(nmcfx=f"{v:.3f} V at θ = {c1['theta_mean_after_rest']:.4f}", verdict=_judge(ok, abs(v - 3.5) <= 0.3),
                   why="" if ok else "the model's hold equilibrates the particle with 3.0 V (θ = 0.98): nothing "
                                     "relaxes back to 3.5 V")
    out.append(row)
    return out


def rows_lun_fig4(r: dict) -> list[dict]:
    out = []
    a = r.get("none")
    row = _row("Lun 2025 Fig. 2a–b (fresh, 100 mA/g)", "the core 'remains mostly fully lithiated … for the first "
               "~15 minutes'; 'after ~25 min the Li-poor region reaches the center'",
               "centre ≈ unchanged at 15 min; front at ~25 min", "centre loss < 0.02 at 15 min; front (−0.05) "
                                                                "within 20 % of 25 min (partial: 40 %)")
    if a:
        loss, tf = a["centre_loss_at_15min"], a["front_at_center_min"]
        ok = [loss < 0.02, abs(tf / 25 - 1) <= 0.2]
        row.update(nmcfx=f"centre −{loss:.3f} at 15 min; front after {_f(tf, '{:.1f}')} min",
                   verdict=_judge(all(ok), ok[0] and abs(tf / 25 - 1) <= 0.4),
                   why="" if all(ok) else "on the 2.4 µm disk (A/Γ = 0.6 µm) at 100 mA/g the front arrives earlier "
                                          "than on Xu's particle at C/3; Lun's particle is larger (3.5–4 µm average)")
    out.append(row)
    row = _row("Lun 2025 Fig. 4", "asymmetric shrinking core for the three blocked cases, symmetric without "
               "blocking; the Li-rich core away from the centre of mass", "(a) symmetric; (b)–(d) off-centre",
               "d(10 min) < 0.02 µm for (a); d increases (b) < (c) < (d)")
    if all(k in r for k in ("none", "quarter_eta0.7", "quarter_eta0.3", "half_eta0.3")):
        d = {k: r[k]["10min"]["d_um"] for k in ("none", "quarter_eta0.7", "quarter_eta0.3", "half_eta0.3")}
        ok = d["none"] < 0.02 and d["quarter_eta0.7"] < d["quarter_eta0.3"] < d["half_eta0.3"]
        row.update(nmcfx="d(10 min) = " + ", ".join(f"{v:.3f}" for v in d.values()) + " µm (a–d)",
                   verdict=_judge(ok))
    out.append(row)
    return out


def rows_lun_fig5b(r: dict) -> list[dict]:
    row = _row("Lun 2025 Fig. 5b", "'more Li is extracted from the particle when the Li surface flux is more uniformly "
               "distributed, and … this effect is enlarged at higher rates'", "gap > 0, growing with rate",
               "gap (uniform − ¼ blocked) > 0 at every rate and larger at the highest than at the lowest rate")
    gaps = {k: {rate: v["gap_mAh_g"] for rate, v in r[k].items()} for k in ("eta0.7", "eta0.3") if k in r}
    if gaps:
        ok = all(min(g.values()) > 0 and g[max(g, key=float)] > g[min(g, key=float)] for g in gaps.values())
        row.update(nmcfx="; ".join(f"η = {k[3:]}: " + ", ".join(f"{v:.1f}" for v in g.values()) + " mAh/g at "
                                   + "/".join(g) + " mA/g" for k, g in gaps.items()), verdict=_judge(ok))
    return [row]


def rows_lun_fig5d(r: dict) -> list[dict]:
    out = []
    rates = sorted({float(k.split("mAg")[0]) for k in r}) if r else []
    row = _row("Lun 2025 Fig. 5c (aged, ¼ blocked η = 0.3)", "'the unreacted Li-rich region persisting until the cell "
               "reached a capacity of ~15 mA h g⁻¹ for the lowest applied current, but ~30 mA h g⁻¹ for the highest'",
               "~15 (50 mA/g) → ~30 mAh/g (400 mA/g)", "within 30 % at the lowest and highest rate (partial: the "
                                                        "capacity grows with rate)")
    if rates:
        caps = {rt: r[f"{rt:g}mAg_eta0.3"]["li_rich_gone_at_mAh_g"] for rt in rates}
        lo, hi = caps[rates[0]], caps[rates[-1]]
        ok = abs(lo / 15 - 1) <= 0.3 and abs(hi / 30 - 1) <= 0.3
        row.update(nmcfx=", ".join(f"{v:.1f}" for v in caps.values()) + " mAh/g at " + "/".join(f"{x:g}" for x in rates)
                   + " mA/g", verdict=_judge(ok, hi > lo),
                   why="" if ok else
                   "the same paper's fresh particle keeps its core to ~25 min at 100 mA/g (≈ 42 mAh/g, row Fig. 2a–b): "
                   "one D(θ) cannot give both; the aged particle's start (θ₀ = 0.95 assumed) and the contrast "
                   "threshold of the blue circles (0.05 assumed) are not stated")
    out.append(row)
    row = _row("Lun 2025 Fig. 5d (¼ blocked, prescribed η = 0.3)", "'the distance between O_COM and O_Li-rich "
               "reaches larger values for higher applied currents'", "d grows with current",
               "largest d grows from the lowest to the highest rate (partial: d at 5 mAh/g does)")
    if rates:
        dmax = {rt: r[f"{rt:g}mAg_eta0.3"]["d_max_um"] for rt in rates}
        d5 = {rt: r[f"{rt:g}mAg_eta0.3"]["d_at_5_mAh_g_um"] for rt in rates}
        ok = dmax[rates[-1]] > dmax[rates[0]]
        early = d5[rates[-1]] > d5[rates[0]]
        row.update(nmcfx="d_max " + ", ".join(f"{v:.2f}" for v in dmax.values()) + " µm; d(5 mAh/g) "
                   + ", ".join(f"{v:.3f}" for v in d5.values()) + " µm at " + "/".join(f"{x:g}" for x in rates)
                   + " mA/g", verdict=_judge(ok, early),
                   why="" if ok else
                   "with a prescribed flux ratio the slow rate has more time to push the core toward the blocked arc "
                   "(the rocksalt film as a series resistance: next row)")
    out.append(row)
    out += [_row_lun_fig5d_film(r, rates, free) for free in ("", "_free1nm")]
    return out


#: the smallest difference of d a microscope can tell: one pixel (Xu 2022 setup, 34.7 nm)
PIXEL_UM = 0.0347


def _row_lun_fig5d_film(r: dict, rates: list, free: str) -> dict:
    """Fig. 5d with Butler–Volmer and the rocksalt film of the paper's thickness (4 nm) on the blocked
    quarter (the rest bare, or 1 nm: both ends of 'very thin (<1 nm) or no rocksalt'), d judged as the
    paper measured it: on images rendered with the 265 nm PSF."""
    keys = {rt: f"{rt:g}mAg_film4nm{free}" for rt in rates}
    rest = "1 nm on the rest" if free else "the rest bare"
    row = _row(f"Lun 2025 Fig. 5d (¼ covered by a 4 nm rocksalt film, {rest}; Butler–Volmer)",
               "'the distance between O_COM and O_Li-rich reaches larger values for higher applied currents'; "
               "rocksalt 'up to ~4 nm thick' in one region, 'very thin (<1 nm) or no rocksalt' in the others (Fig. 3b)",
               "d grows with current",
               "on rendered images (PSF 265 nm, 34.7 nm pixels, contrast < 0.05): the largest d grows by more than "
               "a pixel from the lowest to the highest rate, and so does d at a common stage of the core (Li-rich "
               "area 25 %) (partial: one of the two)")
    if not rates or not all(k in r for k in keys.values()):
        return row
    f = {rt: r[k] for rt, k in keys.items()}
    dmax = {rt: v["d_image_max_um"] for rt, v in f.items()}
    d25 = {rt: v["d_image_at_rich_0.25_um"] for rt, v in f.items()}
    lo, hi = rates[0], rates[-1]
    grows, stage = dmax[hi] - dmax[lo] > PIXEL_UM, d25[hi] > d25[lo]
    at = " at " + "/".join(f"{x:g}" for x in rates) + " mA/g"
    row.update(nmcfx="image: d_max " + ", ".join(f"{v:.2f}" for v in dmax.values()) + " µm, d(Li-rich 25 %) "
               + ", ".join(f"{v:.2f}" for v in d25.values()) + " µm; solver: d_max "
               + ", ".join(f"{v['d_max_um']:.2f}" for v in f.values()) + " µm, d(10 mAh/g) "
               + ", ".join(f"{v['d_at_10_mAh_g_um']:.2f}" for v in f.values()) + " µm" + at,
               verdict=_judge(grows and stage, grows or stage))
    if not (grows and stage):
        share = [v.get("arc_flux_share_bound_median", math.nan) for v in f.values()]
        row["why"] = ("a 4 nm film with D_eff/3000 has i·R of volts near θ₀ (≫ RT/F): the covered arc carries at most "
                      + ", ".join(f"{100 * x:.1f}" for x in share) + " % of the mean flux (median over the frames "
                      "of the bound (V − V_oc)/R_film, per rate) where η = 0.3 gives 36 %, so its share cannot fall much further with "
                      "current; the core then drifts toward the covered arc by diffusion, further per mAh/g at the slow "
                      "rate (more time), and at every rate it ends as a remnant against that arc, d ≈ R = 1.2 µm "
                      "(within a pixel on the images)")
    return row


BUILDERS = {"xu2022_rates": rows_xu_rates, "xu2022_charge_rest": rows_charge_rest,
            "xu2022_discharge_rim": rows_discharge_rim, "lun2025_fig4": rows_lun_fig4, "lun2025_fig5b": rows_lun_fig5b,
            "lun2025_fig5d": rows_lun_fig5d}


def build_rows(results: dict) -> list[dict]:
    rows = []
    for name in STUDIES:
        rows += BUILDERS[name](results.get(name) or {})
    return rows


def to_markdown(rows: list[dict]) -> str:
    head = ["figure", "the paper", "value", "nmcfx", "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        verdict = r["verdict"] + (f" — {r['why']}" if r["why"] else "")
        cells = [r["figure"], r["statement"], r["paper"], r["nmcfx"], verdict]
        lines.append("| " + " | ".join(c.replace("|", "/").replace("\n", " ") for c in cells) + " |")
    counts = {v: sum(r["verdict"] == v for r in rows) for v in ("reproduced", "partial", "not", MISSING)}
    lines.append("")
    lines.append("Verdicts: " + ", ".join(f"{n} {v}" for v, n in counts.items() if n) + ". Criteria per row in "
                 "`reproduction.csv` (column `criterion`).")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse(argv)
    comm = MPI.COMM_WORLD
    t0 = time.perf_counter()
    out = Path(comm.bcast(str(args.output), root=0))
    flags = (["--quick"] if args.quick else []) + (["--force"] if args.force else [])
    results = {}
    for name in STUDIES:
        mod = importlib.import_module(f"nmcfx.studies.{name}")
        results[name] = mod.main(["-o", str(out / name), *flags])
    rows = build_rows(results)
    if comm.rank == 0:
        import csv

        out.mkdir(parents=True, exist_ok=True)
        with open(out / "reproduction.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=COLUMNS)
            w.writeheader()
            w.writerows(rows)
        (out / "reproduction.md").write_text(to_markdown(rows), encoding="utf-8")
        from nmcfx.solver.outputs import write_json
        from nmcfx.solver.run import git_revision, package_versions

        write_json(out / "study.json", {"study": NAME, "quick": args.quick, "studies": list(STUDIES),
                                        "wall_time_s": time.perf_counter() - t0, "git_revision": git_revision(),
                                        "versions": package_versions(), "rows": rows})
        print(f"[{NAME}] " + json.dumps({v: sum(r["verdict"] == v for r in rows)
                                         for v in ("reproduced", "partial", "not", MISSING)}), flush=True)
        print(f"[{NAME}] table: {out / 'reproduction.md'}, {out / 'reproduction.csv'}", flush=True)
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
