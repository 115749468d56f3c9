"""Sharma et al., Nano Lett. 2022 (seed 004): which literature-range input could give the
first charge's hours-long onset spread?

``sharma2022_asynchrony.py`` reproduces the *order* of the particles' onsets on the preset
electrode (T0, wired to the collector, first; T4, behind four NMC particles, last) but not their
*spread*: 0.4 h between T0 and T4 where 004 sees neighbours react hours apart and many particles
unchanged after 13 h of a ~20 h first charge. This study runs the **first charge only** (C/20 to
4.3 V, the asynchrony study's mesh, material and protocol) for a list of variants, each changing
one input to another value with a stated source or physical reading — never a value chosen to
hit the target — and two combinations of them fixed in advance:

* σ_NMC(θ): the default (Amin & Chiang 2016 end values, transition centred at x = 0.95); the
  plain log-linear line between the two end values; the default's construction with the
  transition moved to x = 0.90, 0.85, 0.75; the pristine side one or two decades lower;
* σ_CBD two decades lower; the resolved electrolyte instead of the uniform one;
* D_Li ten times lower over x = 1.0–0.8; an exchange current that rises on delithiation as D_Li
  does (004: "a similar trend holds for the reaction rate constant").
* (post hoc) σ_NMC irreversible after the first delithiation (``nmc_conductivity_history =
  "irreversible"``; Nishizawa et al., Chem. Commun. 1998, 1631, 004's ref. 40), alone and with
  ``combo_sigma_i0``'s inputs — on a first charge it is inert; its test is the three-charge
  protocol, ``python studies/sharma2022_asynchrony.py --variant irreversible_combo_sigma_i0``.

The tables are written into ``OUT/tables/`` with their provenance in the comment lines (the
case digest covers them, so a changed table re-runs its case).

    python studies/sharma2022_sensitivity.py [-o DIR] [--quick] [--force] [--only KEY,KEY]
    mpiexec -n 2 python studies/sharma2022_sensitivity.py

Outputs (default ``runs/studies/sharma2022_sensitivity/``): ``sensitivity.csv`` (per variant:
onsets of every particle, spreads, asynchrony index, order, capacity, wall time),
``sensitivity_onsets.csv`` (long form: variant, particle, onset and half-reaction times),
``sensitivity.png`` (onset time of each particle per variant), ``sensitivity_traces.png`` (surface Li
of the top row vs time for a few variants, cf. 004 Fig. 4d), ``study.json`` (configs,
versions, wall times) and every case's run directory under ``cases/``.
"""

from __future__ import annotations

import copy
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Study, parse_args, plt, write_csv  # noqa: E402
from sharma2022_asynchrony import (  # noqa: E402
    MATERIAL,
    TOP_ROW,
    _crossing,
    base_config,
    charge_metrics,
    cycle_protocol,
)

NAME = "sharma2022_sensitivity"
#: the two measured end values (Amin & Chiang, J. Electrochem. Soc. 163, A1512 (2016): "~1e-7 S/cm
#: to ~1e-2 S/cm over Li concentrations x = 0.00 to 0.75", i.e. θ = 1 and θ = 0.25)
SIGMA_END = {1.0: 1.0e-5, 0.25: 1.0}
#: "many surrounding particles display no sign of intensity change even after 13 h" (004, Fig. 2i)
PAPER_UNCHANGED_H = 13.0


# ----------------------------------------------------------------------------- tables
def transition_sigma(centre: float, width: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """σ_NMC(θ) nodes by the default table's construction with its transition centred at ``centre``:
    log10 σ = −5 + 4 s(θ) + (centre − 0.05 − θ)_+ / (centre − 0.30), s = 1/(1 + exp((θ − centre)/width)),
    then rescaled linearly to meet both Amin & Chiang end values exactly. ``centre = 0.95``
    reproduces ``materials/data/nmc_conductivity_default.csv`` (tested)."""
    def g(th):
        s = 1.0 / (1.0 + np.exp((th - centre) / width))
        return -5.0 + 4.0 * s + np.clip(centre - 0.05 - th, 0.0, None) / (centre - 0.30)

    th = np.round(np.arange(0.25, 1.0 + 1e-9, 0.005), 4)
    g1, g0 = g(1.0), g(0.25)
    lo, hi = math.log10(SIGMA_END[1.0]), math.log10(SIGMA_END[0.25])
    lg = lo + (g(th) - g1) / (g0 - g1) * (hi - lo)
    return th, 10.0 ** lg


def loglinear_sigma() -> tuple[np.ndarray, np.ndarray]:
    """The plainest reading of the two data points: log10 σ linear in θ between them."""
    return np.array([0.25, 1.0]), np.array([SIGMA_END[0.25], SIGMA_END[1.0]])


def pristine_scaled_sigma(factor: float) -> tuple[np.ndarray, np.ndarray]:
    """The default table with log10 σ stretched on the pristine side: σ(1) × ``factor``, σ(θ ≤ 0.9)
    unchanged (as the asynchrony study's ``sigma_low`` case)."""
    from nmcfx.materials.conductivity import load_conductivity_table

    t = load_conductivity_table()
    w = np.clip((t.theta - 0.9) / 0.1, 0.0, 1.0)
    return t.theta.copy(), 10.0 ** (np.log10(t.sigma) + w * math.log10(factor))


def nmc532_dli() -> tuple[np.ndarray, np.ndarray]:
    """The asynchrony study's D_Li(θ) nodes (cm² s⁻¹)."""
    lines = [ln for ln in Path(MATERIAL["dli_csv"]).read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    rows = np.array([[float(v) for v in ln.split(",")] for ln in lines[1:]])
    return rows[:, 0], rows[:, 1]


def low_dli(factor: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """D_Li × ``factor`` over x = 1.0–0.8 (the low region of 004's words), the study's nodes
    elsewhere (the rise from x = 0.8 to 0.5 starts from the lower value)."""
    th, d = nmc532_dli()
    return th, np.where(th >= 0.8, d * factor, d)


def i0_following_dli() -> tuple[np.ndarray, np.ndarray]:
    """i0(θ) = the default i0(θ) of the NMC532-like material × D_Li(θ)/D_Li(0.5) for θ ≥ 0.5 (the
    relative rise of the study's D_Li table, 1/70 over x = 1.0–0.8), unchanged below x = 0.5."""
    from nmcfx.materials import get_material

    mat = get_material(**MATERIAL)
    th_d, d = nmc532_dli()
    th = np.round(np.concatenate([np.arange(0.01, 0.99, 0.01), [0.99, 0.995, 0.999, 0.9999]]), 4)
    logd = np.interp(th, th_d, np.log10(d))
    ratio = np.where(th >= 0.5, 10.0 ** (logd - np.interp(0.5, th_d, np.log10(d))), 1.0)
    return th, mat.i0(th) * np.minimum(ratio, 1.0)


def write_table(path: Path, header: str, columns: tuple[str, str], th, values, provenance: list[str]) -> str:
    """Rank 0 writes a (θ, value) CSV with its provenance as comment lines; all ranks return the path."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    if comm.rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(f"# {header}\n")
            for line in provenance:
                fh.write(f"# {line}\n")
            fh.write(",".join(columns) + "\n")
            for a, b in zip(th, values):
                fh.write(f"{a:.4f},{b:.6g}\n")
        tmp.replace(path)
    comm.Barrier()
    return str(path)


# ----------------------------------------------------------------------------- variants
@dataclass(frozen=True)
class Variant:
    key: str
    group: str  # the input changed
    reading: str  # its source or physical reading (one line)


VARIANTS = (
    Variant("default", "-", "the asynchrony study's first charge: default σ_NMC (transition at x = 0.95), σ_CBD = 1e4 S/m, "
                            "uniform electrolyte, NMC532-like D_Li and i0"),
    Variant("sigma_loglinear", "σ_NMC shape", "log10 σ linear between Amin & Chiang's two values (1e-5 S/m at x = 1, "
                                              "1 S/m at x = 0.25): the plainest reading of the two data points"),
    Variant("sigma_centre_0.90", "σ_NMC shape", "transition centred at x = 0.90: 004's 'x ≈ 0.9 after the first-cycle "
                                                "loss' read as the middle, not the end, of the rise"),
    Variant("sigma_centre_0.85", "σ_NMC shape", "transition centred at x = 0.85: the middle of LiCoO2's insulator-metal "
                                                "two-phase region x = 0.94-0.75 (Reimers & Dahn 1992; Menetrier et al. "
                                                "1999) - 004 calls NMC's rise 'similar to LiCoO2'"),
    Variant("sigma_centre_0.75", "σ_NMC shape", "transition centred at x = 0.75: LixCoO2 single crystals insulating at "
                                                "x = 0.90 and 0.99, metallic at x <= 0.71 (arXiv:1005.4253) - the "
                                                "latest metallic onset the LiCoO2 analogue allows"),
    Variant("sigma_pristine_x0.1", "σ_NMC pristine", "σ(x = 1) = 1e-6 S/m: Amin & Chiang's '~1e-7 S/cm' read as an "
                                                     "order of magnitude (one decade down); x <= 0.9 unchanged"),
    Variant("sigma_pristine_x0.01", "σ_NMC pristine", "σ(x = 1) = 1e-7 S/m: two decades down - beyond the cited data, a "
                                                      "bound test (the asynchrony study's sigma_low)"),
    Variant("sigma_cbd_1e2", "σ_CBD", "σ_CBD = 1e2 S/m: two decades below 004's ~1e4 S/m, still >= 1e7 × pristine NMC "
                                      "(does the network's own resistance matter?)"),
    Variant("electrolyte_resolved", "electrolyte", "c_l, φ_l resolved (LiPF6, Valøen & Reimers 2005; Bruggeman in the "
                                                   "CBD) instead of uniform: 004 argues uniform suffices at C/20"),
    Variant("dli_low_x0.1", "D_Li near x = 1", "D_Li × 0.1 over x = 1.0-0.8: 004's 'orders of magnitude lower in the "
                                               "fully lithiated state' read as 2.8 rather than 1.8 decades"),
    Variant("i0_like_dli", "i0(θ)", "i0 rises on delithiation as D_Li does (1/70 over x = 1.0-0.8, default above x = 0.5): "
                                    "004 'a similar trend holds for the reaction rate constant' (its ref. 37)"),
    Variant("contact_explicit_0.15", "NMC|NMC contact", "control: the preset rebuilt as an explicit layout "
                                                        "(neighbours overlap 0.15 µm, contact chord 1.5 µm)"),
    Variant("contact_narrow_0.03", "NMC|NMC contact", "neighbours overlap 0.03 µm (chord 0.7 µm): the nearest 2D stand-in "
                                                      "for point-like contacts of secondary particles (the model has no "
                                                      "contact-resistance key); one surface element across the chord"),
    Variant("combo_sigma", "combination", "sigma_centre_0.75 + sigma_pristine_x0.1: both σ_NMC readings that delay "
                                          "conduction, at once (fixed before running)"),
    Variant("combo_all", "combination", "combo_sigma + dli_low_x0.1 + i0_like_dli + sigma_cbd_1e2 (fixed before "
                                        "running: every literature-range reading listed, at its slow end)"),
    # added after the runs above, to attribute combo_all's spread (post hoc, labelled so)
    Variant("combo_sigma_i0", "attribution (post hoc)", "combo_sigma + i0_like_dli"),
    Variant("combo_sigma_dli", "attribution (post hoc)", "combo_sigma + dli_low_x0.1"),
    Variant("combo_dli_i0", "attribution (post hoc)", "dli_low_x0.1 + i0_like_dli with the default σ_NMC"),
    Variant("combo_all_fine", "numerical check", "combo_all on a finer mesh (1.5 µm, surface 0.6 µm; the study's: "
                                                 "2.0 / 0.8 µm)"),
    # a later charge (post hoc): 004's second charge starts at x ≈ 0.9 after the ~10 % first-cycle loss and is
    # synchronous; a charge from a uniform θ0 = 0.90 asks whether a variant keeps that (idealised: no rim/core)
    Variant("default_from_0.90", "later-charge check (post hoc)", "default, charged from a uniform x = 0.90"),
    Variant("sigma_loglinear_from_0.90", "later-charge check (post hoc)", "sigma_loglinear, charged from x = 0.90"),
    Variant("combo_sigma_i0_from_0.90", "later-charge check (post hoc)", "combo_sigma_i0, charged from x = 0.90"),
    # post hoc (issue 7): σ_NMC that does not fall back on re-lithiation — "Irreversible Conductivity Change of
    # Li1−xCoO2 on Electrochemical Lithium Insertion/Extraction" (Nishizawa et al., Chem. Commun. 1998, 1631;
    # 004's ref. 40): [electrode] nmc_conductivity_history = "irreversible", σ of the lowest θ reached so far.
    # A first charge alone cannot tell it from the reversible σ (θ only falls); the three-charge protocol can:
    # python studies/sharma2022_asynchrony.py --variant irreversible_combo_sigma_i0
    Variant("irreversible", "σ_NMC history (post hoc)", "σ_NMC irreversible (Nishizawa et al. 1998, 004 ref. 40) with "
                                                        "the default σ table"),
    Variant("irreversible_combo_sigma_i0", "σ_NMC history (post hoc)", "combo_sigma_i0 with σ_NMC irreversible "
                                                                       "(Nishizawa et al. 1998)"),
)
VARIANT_KEYS = tuple(v.key for v in VARIANTS)


def preset_as_explicit(overlap_um: float) -> dict:
    """The ``sharma2022`` preset as an explicit ``[geometry]`` layout whose top-row neighbours
    overlap by ``overlap_um`` (the preset: 0.15 µm); bottom row, strands and coatings unchanged."""
    from nmcfx.geometries.electrode import sharma2022_layout

    lay = sharma2022_layout()
    top = [p for p in lay.particles if p.name.startswith("T")]
    d, x0 = top[0].diameter, top[0].center[0]
    dx = d - overlap_um
    particles = []
    for p in lay.particles:
        cx = x0 + int(p.name[1:]) * dx if p.name.startswith("T") else p.center[0]
        particles.append({"shape": "disk", "name": p.name, "center_um": [cx, p.center[1]], "diameter_um": p.diameter})
    names = [p.name for p in lay.particles]
    return {"shape": "electrode", "width_um": x0 + 4 * dx + d / 2 + 2.0, "height_um": lay.height,
            "particles": particles,
            "strands": [{"points_um": [list(q) for q in s.points], "width_um": s.width} for s in lay.strands],
            "coatings": [{"particle": names[c.particle], "start_deg": c.start_deg, "end_deg": c.end_deg,
                          "thickness_um": c.thickness} for c in lay.coatings],
            "contact_overlap_um": lay.contact_overlap}


def first_charge_config(quick: bool) -> dict:
    """The asynchrony study's config with its first C/20 charge only (to 4.3 V, no CV)."""
    cfg = base_config(quick)
    proto = cycle_protocol(1, quick=quick)
    proto["steps"] = proto["steps"][:1]
    cfg["protocol"] = proto
    cfg["title"] = "Sharma 2022 preset electrode, first charge (sensitivity)"
    return cfg


def _sigma_table(tables: Path, name: str) -> str:
    if name == "loglinear":
        th, s = loglinear_sigma()
        prov = ["log10 sigma linear in theta between the two values of Amin & Chiang, JES 163, A1512 (2016):",
                "~1e-7 S/cm at x = 1 (theta = 1) and ~1e-2 S/cm at x = 0.25; held constant beyond."]
    elif name.startswith("centre_"):
        c = float(name.split("_")[1])
        th, s = transition_sigma(c)
        prov = [f"the default table's construction (materials/data/nmc_conductivity_default.csv) with the transition "
                f"centred at theta = {c:g} instead of 0.95;",
                "end values of Amin & Chiang 2016 unchanged (see studies/sharma2022_sensitivity.py for the reading)."]
    elif name.startswith("pristine_"):
        f = float(name.split("x")[-1])
        th, s = pristine_scaled_sigma(f)
        prov = [f"the default table with sigma(theta = 1) x {f:g}: log10 sigma stretched linearly over theta = 0.9-1,",
                "unchanged at theta <= 0.9."]
    elif name == "combo":
        th, s = transition_sigma(0.75)
        w = np.clip((th - 0.9) / 0.1, 0.0, 1.0)
        s = 10.0 ** (np.log10(s) + w * math.log10(0.1))
        prov = ["transition centred at theta = 0.75 (as sigma_centre_0.75) and sigma(theta = 1) x 0.1 (log10 sigma",
                "stretched over theta = 0.9-1, as sigma_pristine_x0.1)."]
    else:
        raise ValueError(name)
    return write_table(tables / f"sigma_{name}.csv", f"sigma_NMC(theta) variant '{name}' for {NAME}",
                       ("theta", "sigma_S_m"), th, s, prov)


def _dli_table(tables: Path) -> str:
    th, d = low_dli(0.1)
    return write_table(tables / "dli_low_x0.1.csv", f"D_Li(theta) variant for {NAME}", ("theta", "D_Li_cm2_s"), th, d,
                       ["materials/data/nmc532_dli_sharma2022_like.csv with D_Li x 0.1 at theta >= 0.8 (x = 1.0-0.8);",
                        "Sharma 2022: Li diffusivity 'orders of magnitude lower in the fully lithiated state'."])


def _i0_table(tables: Path) -> str:
    th, i0 = i0_following_dli()
    return write_table(tables / "i0_like_dli.csv", f"i0(theta) variant for {NAME}", ("theta", "i0_A_m2"), th, i0,
                       ["the NMC532-like material's default i0(theta) times D_Li(theta)/D_Li(0.5) of the study's D_Li",
                        "table for theta >= 0.5 (1/70 over x = 1.0-0.8); Sharma 2022: 'A similar trend holds for the",
                        "reaction rate constant of NMC for the surface charge transfer' (its ref. 37)."])


#: what each variant is made of: ingredients applied in order to the first-charge config
RECIPES = {
    "default": (),
    "sigma_loglinear": ("sigma:loglinear",),
    "sigma_centre_0.90": ("sigma:centre_0.90",),
    "sigma_centre_0.85": ("sigma:centre_0.85",),
    "sigma_centre_0.75": ("sigma:centre_0.75",),
    "sigma_pristine_x0.1": ("sigma:pristine_x0.1",),
    "sigma_pristine_x0.01": ("sigma:pristine_x0.01",),
    "sigma_cbd_1e2": ("cbd_1e2",),
    "electrolyte_resolved": ("resolved",),
    "dli_low_x0.1": ("dli_low",),
    "i0_like_dli": ("i0_like_dli",),
    "contact_explicit_0.15": ("contact:0.15",),
    "contact_narrow_0.03": ("contact:0.03",),
    "combo_sigma": ("sigma:combo",),
    "combo_all": ("sigma:combo", "cbd_1e2", "dli_low", "i0_like_dli"),
    "combo_sigma_i0": ("sigma:combo", "i0_like_dli"),
    "combo_sigma_dli": ("sigma:combo", "dli_low"),
    "combo_dli_i0": ("dli_low", "i0_like_dli"),
    "combo_all_fine": ("sigma:combo", "cbd_1e2", "dli_low", "i0_like_dli", "fine_mesh"),
    "default_from_0.90": ("start:0.90",),
    "sigma_loglinear_from_0.90": ("sigma:loglinear", "start:0.90"),
    "combo_sigma_i0_from_0.90": ("sigma:combo", "i0_like_dli", "start:0.90"),
    "irreversible": ("irreversible",),
    "irreversible_combo_sigma_i0": ("sigma:combo", "i0_like_dli", "irreversible"),
}
#: the finer mesh of the numerical check (the benchmark's 1.5 µm, surface 0.6 µm; the study's 2.0 / 0.8)
FINE_MESH = {"mesh_size_um": 1.5, "surface_mesh_size_um": 0.6}


def variant_config(key: str, quick: bool, tables: Path) -> dict:
    """The first-charge config of variant ``key`` (tables it needs are written into ``tables``)."""
    return apply_recipe(first_charge_config(quick), RECIPES[key], quick, tables)


def apply_recipe(cfg: dict, items, quick: bool, tables: Path) -> dict:
    """``cfg`` with the ingredients ``items`` (see :data:`RECIPES`) applied in place; also used by
    ``sharma2022_asynchrony.py --variant KEY`` on its three-charge config."""
    el, mat = cfg["electrode"], cfg["material"]
    for item in items:
        kind, _, arg = item.partition(":")
        if kind == "sigma":
            el["nmc_conductivity_csv"] = _sigma_table(tables, arg)
        elif kind == "cbd_1e2":
            el["cbd_conductivity_S_m"] = 1.0e2
        elif kind == "resolved":
            el["electrolyte"] = "resolved"
        elif kind == "dli_low":
            mat["dli_csv"] = _dli_table(tables)
        elif kind == "i0_like_dli":
            mat["i0_csv"] = _i0_table(tables)
        elif kind == "contact":
            sizes = {k: cfg["geometry"][k] for k in ("mesh_size_um", "surface_mesh_size_um")}
            cfg["geometry"] = dict(preset_as_explicit(float(arg)), **sizes)
        elif kind == "start":
            cfg["protocol"]["initial_theta"] = float(arg)
        elif kind == "fine_mesh":
            if not quick:
                cfg["geometry"].update(FINE_MESH)
        elif kind == "irreversible":
            el["nmc_conductivity_history"] = "irreversible"
        else:
            raise ValueError(item)
    return cfg


# ----------------------------------------------------------------------------- analysis
HEADER = ["variant", "group", "onset_first_h", "onset_last_h", "onset_spread_h", "top_row_spread_h",
          "max_neighbour_gap_h", "t50_spread_h", "asynchrony_index", "q10_spread_mAh_g", "top_row_in_order",
          "particles_unchanged_at_13h", "charge_h", "capacity_mAh_g", "wall_s", "error"]


def particle_times(series: dict, names) -> dict:
    """Per particle, in h from the start of the first charge: ``onset`` (mean θ 0.05 below its start,
    interpolated) and ``t50`` (half of the particle's own change over the charge)."""
    step = series["protocol_step"].astype(int)
    sel = np.flatnonzero(step == 0)
    sel = np.concatenate([[sel[0] - 1], sel]) if sel[0] > 0 else sel
    t = (series["time_s"][sel] - series["time_s"][sel[0]]) / 3600.0
    out = {}
    for n in names:
        th = series[f"theta_mean_{n}"][sel]
        drop = th[0] - th
        total = float(drop[-1])
        out[n] = {"onset": _crossing(t, drop, 0.05),
                  "t50": _crossing(t, drop, 0.5 * total) if total > 1e-9 else float("nan")}
    return out


def analyse(study: Study) -> tuple[list, list]:
    rows, longform = [], []
    groups = {v.key: v.group for v in VARIANTS}
    for key, res in study.results.items():
        s = res.series
        if not s or "protocol_step" not in s:
            rows.append([key, groups.get(key, ""), *([float("nan")] * 10), "", float("nan"), float("nan"),
                         float("nan"), res.wall_s, res.error or "no results"])
            continue
        names = [c[len("theta_mean_"):] for c in s if c.startswith("theta_mean_")]
        times = particle_times(s, names)
        m = charge_metrics(s, 0, names)
        on = np.array([times[n]["onset"] for n in names])
        t50 = np.array([times[n]["t50"] for n in names])
        top = [times[p]["onset"] for p in TOP_ROW]
        order = all(math.isfinite(a) and math.isfinite(b) and a <= b for a, b in zip(top, top[1:]))
        gaps = [abs(b - a) for a, b in zip(top, top[1:]) if math.isfinite(a) and math.isfinite(b)]
        unchanged = int(np.sum(~np.isfinite(on) | (on > PAPER_UNCHANGED_H)))
        fin = on[np.isfinite(on)]
        charge_h = float((s["time_s"][s["protocol_step"].astype(int) == 0][-1]) / 3600.0)
        rows.append([key, groups.get(key, ""), float(fin.min()) if fin.size else float("nan"),
                     float(fin.max()) if fin.size else float("nan"),
                     float(fin.max() - fin.min()) if fin.size else float("nan"),
                     top[-1] - top[0], max(gaps) if gaps else float("nan"),
                     float(np.nanmax(t50) - np.nanmin(t50)), m.get("asynchrony", float("nan")),
                     max(m["q10"].values()) - min(m["q10"].values()), order, unchanged, charge_h,
                     m.get("capacity", float("nan")), res.wall_s, res.error or ""])
        for n in names:
            longform.append([key, n, times[n]["onset"], times[n]["t50"]])
    return rows, longform


def figure(rows: list, longform: list, out: Path) -> str:
    """Onset (●) and half-reaction time (|) of every particle per variant; top row coloured as in
    004 Fig. 4a, bottom row grey; the paper's 13 h mark dashed."""
    P = plt()
    keys = [r[0] for r in rows]
    colors = dict(zip(TOP_ROW, ["tab:orange", "tab:blue", "tab:green", "tab:purple", "tab:red"]))
    fig, ax = P.subplots(figsize=(9.5, 0.42 * len(keys) + 1.6))
    for i, k in enumerate(keys):
        y = len(keys) - 1 - i
        for v, n, onset, t50 in longform:
            if v != k:
                continue
            c = colors.get(n, "0.6")
            off = (TOP_ROW.index(n) - 2) * 0.07 if n in colors else -0.22
            if math.isfinite(onset):
                ax.plot(onset, y + off, "o", color=c, ms=5 if n in colors else 3.5)
            if math.isfinite(t50):
                ax.plot(t50, y + off, "|", color=c, ms=7)
    ax.axvline(PAPER_UNCHANGED_H, color="0.5", ls="--", lw=0.8)
    ax.text(PAPER_UNCHANGED_H, 0.998, " 004: many\n unchanged\n at 13 h", fontsize=7, color="0.4", va="top",
            transform=ax.get_xaxis_transform())
    ax.set_yticks(range(len(keys)))
    ax.set_yticklabels([f"{k}  ({r[4]:.2f} h)" if math.isfinite(r[4]) else k for k, r in zip(keys, rows)][::-1],
                       fontsize=8)
    ax.set_xlabel("time into the first charge (h): ● onset (mean θ − 0.05), | half of the particle's change")
    ax.set_title("first-charge onsets per variant (onset spread, all particles, in brackets); grey: bottom row",
                 fontsize=9)
    for n, c in colors.items():  # legend entries even for a particle that never reaches its onset
        ax.plot([], [], "o", color=c, ms=5, label=n)
    ax.plot([], [], "o", color="0.6", ms=3.5, label="B0-B3")
    ax.legend(frameon=False, fontsize=8, ncol=6, loc="lower right")
    ax.set_xlim(left=0.0)
    fig.tight_layout()
    fig.savefig(out / "sensitivity.png", dpi=140)
    P.close(fig)
    return "sensitivity.png"


#: variants whose top-row traces are drawn (when present)
TRACE_VARIANTS = ("default", "sigma_loglinear", "sigma_centre_0.75", "i0_like_dli", "combo_sigma", "combo_sigma_i0")


def traces_figure(study: Study, out: Path) -> str | None:
    """Surface θ of the top row against time in the first charge (cf. 004 Fig. 4d), one panel per
    variant of :data:`TRACE_VARIANTS`; the bottom row's mean in grey."""
    keys = [k for k in TRACE_VARIANTS if k in study.results and study.results[k].series]
    if not keys:
        return None
    P = plt()
    colors = dict(zip(TOP_ROW, ["tab:orange", "tab:blue", "tab:green", "tab:purple", "tab:red"]))
    ncol = 3
    nrow = int(math.ceil(len(keys) / ncol))
    fig, axes = P.subplots(nrow, ncol, figsize=(4.0 * ncol, 2.9 * nrow), squeeze=False, sharex=True, sharey=True)
    for ax, key in zip(axes.flat, keys):
        s = study.results[key].series
        sel = s["protocol_step"].astype(int) == 0
        t = s["time_s"][sel] / 3600.0
        for n in [c[len("theta_surface_"):] for c in s if c.startswith("theta_surface_B")]:
            ax.plot(t, s[f"theta_surface_{n}"][sel], color="0.75", lw=0.8)
        for n, c in colors.items():
            ax.plot(t, s[f"theta_surface_{n}"][sel], color=c, lw=1.3, label=n)
        ax.axvline(PAPER_UNCHANGED_H, color="0.5", ls="--", lw=0.7)
        ax.set_title(key, fontsize=9)
    for ax in axes.flat[len(keys):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("charging time (h)")
    for ax in axes[:, 0]:
        ax.set_ylabel("surface θ")
    axes[0, 0].legend(frameon=False, fontsize=7)
    fig.suptitle("first charge: surface Li of the top row (grey: bottom row; dashed: 13 h), cf. Sharma 2022 Fig. 4d",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "sensitivity_traces.png", dpi=130)
    P.close(fig)
    return "sensitivity_traces.png"


def main(argv=None):
    import argparse

    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--only", default="", help="comma-separated variant keys (default: all)")
    known, rest = extra.parse_known_args(argv if argv is not None else sys.argv[1:])
    args = parse_args(NAME, __doc__.splitlines()[0], rest)
    keys = [k.strip() for k in known.only.split(",") if k.strip()] or list(VARIANT_KEYS)
    unknown = sorted(set(keys) - set(VARIANT_KEYS))
    if unknown:  # before anything is written
        from nmcfx.errors import InputError

        raise InputError("--only", f"unknown variant(s) {unknown}; allowed: {list(VARIANT_KEYS)}")
    study = Study(NAME, args)
    if study.quick:
        keys = keys[:2] if not known.only else keys
    readings = {v.key: v.reading for v in VARIANTS}
    study.plan(len(keys))
    for key in keys:
        study.case(key, variant_config(key, study.quick, study.outdir / "tables"), describe=readings[key])
    rows, longform = analyse(study)
    made = []
    if study.comm.rank == 0:
        write_csv(study.outdir / "sensitivity.csv", HEADER, rows)
        write_csv(study.outdir / "sensitivity_onsets.csv", ["variant", "particle", "onset_h", "t50_h"], longform)
        made = ["sensitivity.csv", "sensitivity_onsets.csv", figure(rows, longform, study.outdir)]
        made += [f for f in [traces_figure(study, study.outdir)] if f]
        for r in rows:
            study.say(f"{r[0]:>22s}: onsets {r[2]:.2f}-{r[3]:.2f} h (spread {r[4]:.2f} h, T0→T4 {r[5]:.2f} h, largest "
                      f"neighbour gap {r[6]:.2f} h), t50 spread {r[7]:.2f} h, index {r[8]:.3f}, in order {r[10]}, "
                      f"{r[11]} unchanged at 13 h, charge {r[12]:.1f} h, {r[14]:.0f} s" + (f" [{r[15]}]" if r[15] else ""))
    study.finish(__doc__.splitlines()[0], extra={"header": HEADER, "rows": rows,
                                                 "readings": {k: readings[k] for k in keys}},
                 outputs=made)


if __name__ == "__main__":
    main()
