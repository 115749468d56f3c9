"""Sharma et al., Nano Lett. 2022 (seed 004): asynchronous-to-synchronous Li reactions in a
composite electrode.

The preset electrode (``[geometry] preset = "sharma2022"``, Fig. 4a-like: a top row of five
particles T0…T4 touching their neighbours, T0 wired to the collector by carbon binder, T4
reached only through four NMC particles; a bottom row B0…B3 coated and wired) with NMC532-like
properties is cycled at C/20 between 4.3 and 2.5 V with a CV step after each half-cycle, three
charges in all. What the paper reports (Figs. 1–5, S7) and this study measures:

1. the first charge is asynchronous: the best-connected top particle reacts first and the worst
   last, onsets hours apart;
2. about 10 % of the capacity is not recovered on the first discharge (the low diffusivity near
   x ≈ 1);
3. the second and third charges are synchronous (they start at x ≈ 0.9, where σ_NMC is orders
   of magnitude higher);
4. the counter-test — the electrode fully re-lithiated after the first cycle (here by a long
   potentiostatic hold at 2.5 V) — charges asynchronously again;
5. the rate constant k (i0) changes little at C/20 (Fig. S7): i0 × 0.1 and × 10;
6. stress (case ``stress``, the first charge with ``[mechanics]``, free particles, one-way): each
   particle's stress peak against its onset — 004 Fig. S4 sees NMC811 particles crack at the
   moment each starts to react; case ``stress_bonded``: the same charge with the particles and
   the carbon-binder network as one elastic body (``electrode_bonding = "bonded"``: bonded NMC|NMC
   and NMC|CBD contacts, collector clamped, default CBD E = 1 GPa, plane strain).

    python studies/sharma2022_asynchrony.py [-o DIR] [--quick] [--force] [--variant KEY]
    mpiexec -n 2 python studies/sharma2022_asynchrony.py

``--variant KEY`` runs only the three-charge baseline with the inputs of a variant of
``sharma2022_sensitivity.py`` (e.g. ``irreversible_combo_sigma_i0``: the σ_NMC and i0 tables of
``combo_sigma_i0`` with ``nmc_conductivity_history = "irreversible"``), into
``runs/studies/sharma2022_asynchrony/variant_KEY/`` unless ``-o`` is given — a post hoc test, not
the study's default.

Outputs (default ``runs/studies/sharma2022_asynchrony/``): ``asynchrony.csv`` (per case, charge
and particle: onset time, capacity, slope peak), ``asynchrony_summary.csv`` (per case and charge:
onset spread, order of the top row, first-cycle loss), figures ``fig4d_surface_li.png`` (surface
Li of the top particles vs time, first charge), ``fig1c_slopes.png`` (slope of the optical proxy
against capacity, charges 1–3), ``fig5_maps.png`` (θ maps at capacities i–iv of charges 1–3),
``voltage.png``, ``stress_onset.csv`` and ``stress_onset.png`` (per particle: onset, current peak,
the rise and reaction-phase peak of its surface hoop stress and of σ1, the largest σ1 of the charge),
``stress_onset_bonded.csv`` (the same for the bonded body) and ``stress_bonded_vs_free.png``
(each top-row particle's peak hoop stress and mean stress, free vs bonded; the CBD's peak σ1)
and ``study.json``; every case's run directory under ``cases/`` (the stress cases' with
``particles_stress.png`` and ``stress_maps.png``).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Study, parse_args, plt, read_csv_rows, write_csv  # noqa: E402

NAME = "sharma2022_asynchrony"
TOP_ROW = ("T0", "T1", "T2", "T3", "T4")
#: capacities (fraction of the charge's nominal C/20 capacity) at which maps are taken: i–iv
MAP_FRACTIONS = (0.0, 0.05, 0.15, 0.5)

#: NMC532-like material (LiNi0.5Mn0.3Co0.2O2): molar mass from the composition; X-ray density from
#: the layered cell (a ≈ 2.87 Å, c ≈ 14.25 Å, Z = 3); 1C = 170 mAh/g (the practical capacity that
#: makes C/20 a ~20 h first charge, 004: "first charge ~20 h");
#: V_oc and i0 are the project defaults for layered NMC (materials/data/README.md); D_Li follows
#: 004's own words for its NMC532 — low over x = 1.0–0.8, rising as the charge proceeds
#: (materials/data/nmc532_dli_sharma2022_like.csv); σ_NMC(θ) is the default table (Amin & Chiang 2016
#: end values, transition in x = 1.0–0.9).
MATERIAL = {"molar_mass_g_mol": 96.55, "density_g_cm3": 4.73, "capacity_mAh_g": 170.0,
            "dli_csv": str(Path(__file__).resolve().parents[1] / "materials" / "data" / "nmc532_dli_sharma2022_like.csv")}
#: start pristine (004: "start pristine (x ≈ 1)")
INITIAL_THETA = 0.99


def cycle_protocol(charges: int, *, relithiate_after_first: bool = False, quick: bool = False) -> dict:
    """C/20 charge to 4.3 V + CV until C/50, C/20 discharge to 2.5 V + CV until C/50, repeated."""
    cap_h = 30.0 if not quick else 0.1
    cv_min = 120.0 if not quick else 2.0
    rate = 0.05 if not quick else 1.0  # quick: a smoke test (6 min steps at 1C)
    steps = []
    for n in range(charges):
        steps.append({"type": "charge", "c_rate": rate, "duration_min": 60 * cap_h, "until": ["voltage_V >= 4.3"],
                      "label": f"charge {n + 1}"})
        if not quick:  # (quick: the charge ends on time, below 4.3 V — no CV step to jump to)
            steps.append({"type": "hold", "voltage_V": 4.3, "duration_min": cv_min,
                          "until": ["abs_current_mA_g <= 3.4"], "label": f"CV 4.3 V {n + 1}"})
        if n + 1 == charges:
            break
        # the discharge ends at 2.5 V — or when a particle's surface is full: the default V_oc(θ) is
        # bounded as θ → 1, so the cell voltage then collapses towards the cut-off through ever more
        # resistive (re-lithiated, insulating) paths, a regime this model resolves only with tiny steps
        steps += [
            {"type": "discharge", "c_rate": rate, "duration_min": 60 * cap_h,
             "until": ["voltage_V <= 2.5", "theta_surface_max >= 0.9999"], "label": f"discharge {n + 1}"},
        ]
        if n == 0 and relithiate_after_first:
            # full re-lithiation: rests let the Li piled up at the surfaces move inwards, each followed
            # by a C/20 discharge until a surface is full again (a slow, GITT-like top-up)
            for k in range(6 if not quick else 1):
                steps += [{"type": "rest", "duration_min": 60 * 20.0, "label": f"re-lithiation rest {k + 1}"},
                          {"type": "discharge", "c_rate": rate, "duration_min": 60 * cap_h,
                           "until": ["voltage_V <= 2.5", "theta_surface_max >= 0.9999"],
                           "label": f"re-lithiation {k + 1}"}]
    return {"initial_theta": INITIAL_THETA, "steps": steps}


def base_config(quick: bool) -> dict:
    return {
        "title": "Sharma 2022 preset electrode, NMC532-like, C/20 4.3-2.5 V",
        "geometry": {"shape": "electrode", "preset": "sharma2022",
                     "mesh_size_um": 2.0 if not quick else 4.0, "surface_mesh_size_um": 0.8 if not quick else 2.0},
        "material": dict(MATERIAL),
        "electrode": {},
        "protocol": cycle_protocol(3 if not quick else 1, quick=quick),
        "solver": {"dt_max_s": 900.0},
        "output": {"fields": "none", "figures": False, "progress": False, "snapshot_times_min": []},
    }


def pristine_scaled_conductivity(factor: float, path: Path) -> Path:
    """The default σ_NMC(θ) table with its pristine side scaled: log10 σ is stretched about the
    charged value so that σ(θ = 1) is ``factor`` × the default and σ(θ ≤ 0.9) is unchanged."""
    from nmcfx.materials.conductivity import DEFAULT_CONDUCTIVITY_CSV, load_conductivity_table

    t = load_conductivity_table(DEFAULT_CONDUCTIVITY_CSV)
    lg = np.log10(t.sigma)
    ref = float(np.log10(t(0.9)))
    w = np.clip((t.theta - 0.9) / 0.1, 0.0, 1.0)  # 0 at θ ≤ 0.9, 1 at θ = 1
    lg = lg + w * np.log10(factor)
    from mpi4py import MPI

    if MPI.COMM_WORLD.rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as fh:
            fh.write(f"# default sigma_NMC(theta) with sigma(1) x {factor:g} (pristine side only; log10 sigma "
                     f"{ref:.3f} at 0.9 kept)\n")
            fh.write("theta,sigma_S_m\n")
            for th, v in zip(t.theta, lg):
                fh.write(f"{th:.4f},{10.0 ** v:.6g}\n")
    MPI.COMM_WORLD.Barrier()
    return path


def cases(quick: bool, outdir: Path | None = None) -> list[tuple[str, dict, str]]:
    base = base_config(quick)
    out = [("baseline", base, "three charges, CV after each half-cycle")]
    relith = copy.deepcopy(base)
    relith["protocol"] = cycle_protocol(2 if not quick else 1, relithiate_after_first=not quick, quick=quick)
    out.append(("relithiated", relith, "counter-test: fully re-lithiated after the first cycle"))
    first = cycle_protocol(1, quick=quick)
    first["steps"] = first["steps"][:1]
    from nmcfx.materials import get_material

    i0 = get_material(**MATERIAL).i0_ref_A_m2  # the material default (A m⁻² at θ = 0.5)
    for name, f in (("k_low", 0.1), ("k_high", 10.0)):
        cfg = copy.deepcopy(base)
        cfg["material"]["i0_ref_A_m2"] = i0 * f
        cfg["protocol"] = copy.deepcopy(first)
        out.append((name, cfg, f"first charge with i0 × {f:g} (Fig. S7)"))
    if outdir is not None and not quick:
        cfg = copy.deepcopy(base)
        cfg["protocol"] = copy.deepcopy(first)
        cfg["electrode"]["nmc_conductivity_csv"] = str(pristine_scaled_conductivity(0.01, outdir / "sigma_pristine_x0.01.csv"))
        out.append(("sigma_low", cfg, "first charge with the pristine σ_NMC 100× lower (sensitivity)"))
    if quick:
        out = out[:1]
    out.append(("stress", stress_config(base, first, quick), "first charge with [mechanics]: each particle's "
                                                              "stress peak against its onset"))
    out.append(("stress_bonded", stress_config(base, first, quick, bonding="bonded"),
                "first charge with [mechanics], particles and CBD one elastic body (collector clamped)"))
    return out


#: snapshot times (min) of the stress maps: the conduction wave (1 h), the onsets (~1.7 h), the hoop-stress
#: peaks (~5 h) and the centre-tension peaks (~9 h)
STRESS_SNAPSHOTS_MIN = (60.0, 100.0, 310.0, 540.0)


def stress_config(base: dict, first_charge: dict, quick: bool, bonding: str = "free") -> dict:
    """The first charge with one-way mechanics: free particles (each traction-free), the default
    mechanical data (constructed a(θ), c(θ) of Ni-rich NMC, E = 170 GPa, ν = 0.275), generalised
    plane strain, stress-free at the pristine θ₀. One-way coupling: θ is that of the baseline's
    first charge. ``bonding = "bonded"``: particles and CBD one body (default CBD E = 1 GPa, ν = 0.3),
    the collector clamped, plane strain (the bonded default: the coating is held by the foil)."""
    cfg = copy.deepcopy(base)
    cfg["protocol"] = copy.deepcopy(first_charge)
    cfg["mechanics"] = ({"electrode_bonding": "free", "assumption_2d": "generalized_plane_strain"}
                        if bonding == "free" else {"electrode_bonding": "bonded"})
    cfg["output"] = dict(cfg["output"], figures=True,
                         snapshot_times_min=[] if quick else list(STRESS_SNAPSHOTS_MIN))
    return cfg


class CapacityMaps:
    """Observer: θ on a pixel grid when the capacity passed in a charge step crosses the fractions
    MAP_FRACTIONS of the step's nominal capacity (maps i–iv of Fig. 5)."""

    def __init__(self, pixels: int = 160):
        self.pixels = pixels
        self.images, self.labels = [], []

    def state(self):
        return {}

    def start(self, sim, restore=None):  # noqa: ARG002
        from nmcfx.solver.exports import PointProbe

        m = sim.solver
        el = m.electrode
        W, H = el.info["width_um"], el.info["height_um"]
        nx = self.pixels
        ny = max(8, int(nx * H / W))
        X, Y = np.meshgrid(np.linspace(0, W, nx), np.linspace(0, H, ny))
        pts = np.column_stack([X.ravel(), Y.ravel(), np.zeros(X.size)])
        self.shape, self.extent = X.shape, (0.0, W, 0.0, H)
        self.probes = [PointProbe(th.mesh, pts, allow_outside=True) for th in m.thetas]
        self.outlines = [np.vstack([p.outline(), p.outline()[:1]]) for p in el.layout.particles]
        self.comm = m.comm
        self._step, self._next = None, 0
        self._nominal = sim.material.capacity_mAh_g  # 1C capacity: a full charge
        self.charge_index = {}

    def _grab(self, sim, label):
        img = np.full(self.shape[0] * self.shape[1], np.nan)
        for th, probe in zip(sim.solver.thetas, self.probes):
            v = probe.evaluate(th.u)
            img[probe.inside] = v[probe.inside]
        self.images.append(img.reshape(self.shape))
        self.labels.append(label)

    def record(self, sim, rec):
        k = rec["protocol_step"]
        step = sim.protocol.steps[k]
        if step.kind != "charge":
            return
        if k != self._step:
            self._step, self._next = k, 0
            self._cap0 = sim.history[-2]["capacity_mAh_g"] if len(sim.history) > 1 else 0.0
            self.charge_index[k] = len(self.charge_index) + 1
        q = rec["capacity_mAh_g"] - self._cap0
        while self._next < len(MAP_FRACTIONS) and q >= MAP_FRACTIONS[self._next] * self._nominal:
            roman = "i ii iii iv v vi".split()[self._next]
            self._grab(sim, f"charge {self.charge_index[k]} ({roman}) {q:.0f} mAh/g")
            self._next += 1

    def snapshot(self, sim, t):
        pass

    def step_end(self, sim, info):
        pass

    def finish(self, sim):
        pass

    def save(self, path: Path):
        if self.comm.rank != 0:
            return
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez_compressed(tmp, theta=np.array(self.images), labels=np.array(self.labels),
                            extent=np.array(self.extent), **{f"outline{i}": o for i, o in enumerate(self.outlines)})
        tmp.replace(path)


# ----------------------------------------------------------------------------- analysis
def charge_metrics(series: dict, step_index: int, names) -> dict:
    """Synchrony of one charge step from a case's time series:

    * ``q10``/``q50``: for each particle, the cell capacity passed in the step (mAh/g) when the
      particle has done 10 % / 50 % of its own change of mean θ in the step — their spread
      (max − min) is 0 for a synchronous electrode and up to the whole charge when particles
      react one after another;
    * ``asynchrony``: the time average over the step of the standard deviation, over particles,
      of each particle's current relative to the electrode's (1 = its mass share of the current):
      0 when every particle carries its share, ~1 when a few particles carry everything;
    * ``onset_h``: per particle, the time from the step start until its mean θ has dropped by
      0.05 (the electrode's onset definition)."""
    step = series["protocol_step"].astype(int)
    sel = np.flatnonzero(step == step_index)
    if sel.size < 2:
        return {}
    if sel[0] > 0:
        sel = np.concatenate([[sel[0] - 1], sel])
    t = series["time_s"][sel]
    q = series["capacity_mAh_g"][sel] - series["capacity_mAh_g"][sel[0]]
    out = {"q10": {}, "q50": {}, "onset_h": {}}
    for n in names:
        th = series[f"theta_mean_{n}"][sel]
        total = th[0] - th[-1]
        frac = (th[0] - th) / total if abs(total) > 1e-9 else np.zeros_like(th)
        for key, f in (("q10", 0.1), ("q50", 0.5)):
            j = int(np.argmax(frac >= f)) if np.any(frac >= f) else len(frac) - 1
            out[key][n] = float(q[j])
        j = np.flatnonzero(th[0] - th >= 0.05)
        out["onset_h"][n] = float((t[j[0]] - t[0]) / 3600.0) if j.size else float("nan")
    cur = np.array([series[f"current_mA_g_{n}"][sel] for n in names]).T
    tot = series["current_mA_g"][sel]
    ok = np.abs(tot) > 1e-9
    rel = cur[ok] / tot[ok, None]
    w = np.diff(t, prepend=t[0])[ok]
    out["asynchrony"] = float(np.sum(np.std(rel, axis=1) * w) / max(w.sum(), 1e-300)) if w.sum() > 0 else float("nan")
    out["capacity"] = float(q[-1])
    return out


def first_cycle_loss(steps: list) -> float:
    """1 − (first discharge incl. its CV) / (first charge incl. its CV)."""
    charge = discharge = 0.0
    phase = None
    for st in steps:
        d = str(st["description"])
        if d.startswith("charge"):
            if phase == "discharge":
                break
            phase = "charge"
        elif d.startswith("discharge"):
            if phase == "discharge" and "re-lithiation" in str(st.get("label", "")):
                break
            phase = "discharge"
        if phase == "charge":
            charge += float(st["capacity_mAh_g"])
        elif phase == "discharge" and "re-lithiation" not in str(st.get("label", "")):
            discharge -= float(st["capacity_mAh_g"])
    return 1.0 - discharge / charge if charge > 0 and phase == "discharge" else float("nan")


SUMMARY_HEADER = ["case", "charge", "protocol_step", "capacity_mAh_g", "asynchrony_index", "q10_spread_mAh_g",
                  "q50_spread_mAh_g", "onset_T0_h", "onset_T4_h", "top_row_onsets_in_order", "first_cycle_loss_pct"]


def analyse(study: Study) -> tuple[list, list]:
    rows, summary = [], []
    for key, res in study.results.items():
        s = res.series
        if not s:
            continue
        names = [c[len("theta_mean_"):] for c in s if c.startswith("theta_mean_")]
        charges = [st for st in res.steps if str(st["description"]).startswith("charge")]
        loss = first_cycle_loss(res.steps)
        for n, st in enumerate(charges, start=1):
            m = charge_metrics(s, int(st["index"]), names)
            if not m:
                continue
            for p in names:
                rows.append([key, n, p, m["onset_h"][p], m["q10"][p], m["q50"][p]])
            top = [m["onset_h"].get(p, np.nan) for p in TOP_ROW]
            order = all(np.isfinite(a) and np.isfinite(b) and a <= b for a, b in zip(top, top[1:]))
            summary.append([key, n, int(st["index"]), m["capacity"], m["asynchrony"],
                            max(m["q10"].values()) - min(m["q10"].values()),
                            max(m["q50"].values()) - min(m["q50"].values()), top[0], top[-1], order,
                            100 * loss if n == 1 else np.nan])
    return rows, summary


#: the reaction phase of a particle: its mean θ ≥ 0.6, before the c-axis collapse of the default lattice
#: table (c grows down to θ ≈ 0.45 and collapses below), the window of xu2022_stress_size.py
REACTION_THETA = 0.6
STRESS_HEADER = ["particle", "onset_h", "current_peak_h", "hoop_fastest_rise_h", "hoop_half_h", "hoop_at_onset_MPa",
                 "hoop_peak_MPa", "hoop_peak_h", "hoop_peak_minus_onset_h", "theta_mean_at_hoop_peak",
                 "sigma1_peak_MPa", "sigma1_peak_h", "sigma1_peak_r_over_R", "charge_sigma1_max_MPa",
                 "charge_sigma1_max_h", "theta_mean_at_charge_sigma1_max"]


def _crossing(t, y, level) -> float:
    """First time y reaches ``level`` (linear interpolation), NaN if never."""
    j = np.flatnonzero(y >= level)
    if not j.size:
        return float("nan")
    j = j[0]
    if j == 0 or y[j] == y[j - 1]:
        return float(t[j])
    return float(t[j - 1] + (level - y[j - 1]) / (y[j] - y[j - 1]) * (t[j] - t[j - 1]))


def stress_vs_onset(series: dict, names) -> list[list]:
    """Per particle, first charge of the stress case (times in h from the start of the charge):

    * ``onset_h``: the particle's mean θ has dropped by 0.05 (the study's onset);
    * ``current_peak_h``: its reaction current (per g of the particle) is largest — the conduction
      wave reaching it, the moment it "starts to react" in the sense of Sharma 2022 Fig. 4d;
    * ``hoop_fastest_rise_h``, ``hoop_half_h``: its peak surface hoop stress rises fastest / first
      reaches half its reaction-phase peak; the hoop stress at the onset;
    * the reaction-phase peaks (mean θ ≥ :data:`REACTION_THETA`) of the surface hoop stress and of
      σ1 (and σ1's place r/R), when they occur; the largest σ1 of the whole charge (it comes at
      the end, where c collapses) and when."""
    step = series["protocol_step"].astype(int)
    sel = np.flatnonzero(step == 0)
    t = series["time_s"][sel] / 3600.0
    rows = []
    for n in names:
        th = series[f"theta_mean_{n}"][sel]
        hoop = series[f"hoop_surface_max_MPa_{n}"][sel]
        s1 = series[f"sigma1_max_MPa_{n}"][sel]
        onset = _crossing(t, th[0] - th, 0.05)
        react = np.flatnonzero(th >= REACTION_THETA)
        react = react[: np.argmax(np.diff(react) > 1) + 1] if np.any(np.diff(react) > 1) else react
        i = react[int(np.argmax(hoop[react]))]
        j = react[int(np.argmax(s1[react]))]
        k = int(np.argmax(s1))
        rate = np.diff(hoop[: i + 1]) / np.maximum(np.diff(t[: i + 1]), 1e-12)
        fast = float(0.5 * (t[int(np.argmax(rate))] + t[int(np.argmax(rate)) + 1])) if rate.size else float("nan")
        rows.append([n, onset, float(t[np.argmax(series[f"current_mA_g_{n}"][sel])]), fast,
                     _crossing(t, hoop, 0.5 * hoop[i]),
                     float(np.interp(onset, t, hoop)) if np.isfinite(onset) else float("nan"),
                     float(hoop[i]), float(t[i]), float(t[i]) - onset, float(th[i]),
                     float(s1[j]), float(t[j]), float(series[f"sigma1_max_r_over_R_{n}"][sel][j]),
                     float(s1[k]), float(t[k]), float(th[k])])
    return rows


def stress_figure(series: dict, rows: list, out: Path) -> str:
    """Left: each top-row particle's peak surface hoop stress over the first charge, its onset
    (θ̄ − 0.05) marked ●, its current peak ▲. Right: stress-peak and stress-rise times against the
    onset time, every particle (the diagonal: coincidence)."""
    P = plt()
    step = series["protocol_step"].astype(int)
    sel = step == 0
    t = series["time_s"][sel] / 3600
    colors = dict(zip(TOP_ROW, ["tab:orange", "tab:blue", "tab:green", "tab:purple", "tab:red"]))
    fig, (a1, a2) = P.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1.6, 1]})
    by = {r[0]: r for r in rows}
    for n in [r[0] for r in rows]:
        c = colors.get(n, "0.65")
        y = series[f"hoop_surface_max_MPa_{n}"][sel]
        a1.plot(t, y, color=c, lw=1.4 if n in colors else 0.9, label=n if n in colors else None)
        r = by[n]
        if np.isfinite(r[1]):
            a1.plot([r[1]], [np.interp(r[1], t, y)], "o", color=c, ms=5)
        a1.plot([r[2]], [np.interp(r[2], t, y)], "^", color=c, ms=5)
    a1.set_xscale("log")
    a1.set_xlim(left=2e-3 * float(t[-1]), right=float(t[-1]))
    a1.set_xlabel("charging time (h, log)")
    a1.set_ylabel("peak surface hoop stress (MPa)")
    a1.set_title("first charge, free particles (grey: bottom row); ● onset (θ̄ − 0.05), ▲ current peak",
                 fontsize=9)
    a1.legend(frameon=False, fontsize=8)
    on = np.array([r[1] for r in rows])
    for k, (col, mk, lab) in enumerate(((7, "o", "hoop stress peak"), (11, "s", "σ1 peak (centre)"),
                                        (4, "^", "hoop stress at ½ peak"), (2, "x", "current peak"))):
        a2.plot(on, [r[col] for r in rows], mk, ms=5, mfc="none" if k == 1 else None, label=lab)
    for r in rows:
        a2.annotate(r[0], (r[1], r[7]), fontsize=7, xytext=(3, 2), textcoords="offset points")
    lim = [0.0, float(np.nanmax([np.nanmax(on), *[r[7] for r in rows], *[r[11] for r in rows]])) * 1.05]
    a2.plot(lim, lim, color="0.6", lw=0.8, ls="--")
    a2.set_xlabel("onset time (h)")
    a2.set_ylabel("time (h)")
    a2.set_title(f"stress peaks (θ̄ ≥ {REACTION_THETA:g}) vs onset; dashed: equal", fontsize=9)
    a2.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "stress_onset.png", dpi=140)
    P.close(fig)
    return "stress_onset.png"


def _at(series: dict, column: str, t_h: float) -> float:
    """A first-charge column at time t (h from the start), linearly interpolated."""
    sel = series["protocol_step"].astype(int) == 0
    return float(np.interp(t_h, series["time_s"][sel] / 3600.0, series[column][sel]))


def bonded_figure(free: dict, bonded: dict, out: Path) -> str:
    """First charge, top row: peak surface hoop stress (left) and the particle's mean in-plane stress
    (right) in the bonded body (solid) against the free particles (dashed, hoop only: a free
    particle's mean stress is zero); the CBD's peak σ1 (grey, right)."""
    P = plt()
    colors = dict(zip(TOP_ROW, ["tab:orange", "tab:blue", "tab:green", "tab:purple", "tab:red"]))
    fig, (a1, a2) = P.subplots(1, 2, figsize=(11, 4.0))
    for series, ls, lab in ((free, "--", "free"), (bonded, "-", "bonded")):
        sel = series["protocol_step"].astype(int) == 0
        t = series["time_s"][sel] / 3600
        for n, c in colors.items():
            a1.plot(t, series[f"hoop_surface_max_MPa_{n}"][sel], ls=ls, color=c, lw=1.2,
                    label=n if ls == "-" else ("dashed: free" if n == "T0" else None))
            if lab == "bonded":
                a2.plot(t, series[f"sigma_mean_MPa_{n}"][sel], color=c, lw=1.2, label=n)
        if lab == "bonded":
            a2.plot(t, series["cbd_sigma1_max_MPa"][sel], color="0.5", lw=1.0, label="CBD peak σ1")
    for a in (a1, a2):
        a.set_xlabel("charging time (h)")
    a1.set_ylabel("peak surface hoop stress (MPa)")
    a1.set_title("first charge: bonded body (solid) vs free particles (dashed)", fontsize=9)
    a2.set_ylabel("stress (MPa)")
    a2.set_title("bonded: mean in-plane stress per particle; CBD peak σ1", fontsize=9)
    a1.legend(frameon=False, fontsize=7, ncol=2)
    a2.legend(frameon=False, fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "stress_bonded_vs_free.png", dpi=140)
    P.close(fig)
    return "stress_bonded_vs_free.png"


def figures(study: Study, out: Path):
    base = study.results.get("baseline")
    if base is None or not base.series:
        return []
    P = plt()
    s = base.series
    t = s["time_s"] / 3600
    step = s["protocol_step"].astype(int)
    first_charge = step == 0
    fig, ax = P.subplots(figsize=(7, 4))
    colors = ["tab:orange", "tab:blue", "tab:green", "tab:purple", "tab:red"]  # the markings of 004 Fig. 4a
    for p, c in zip(TOP_ROW, colors):
        ax.plot(t[first_charge], s[f"theta_surface_{p}"][first_charge], color=c, lw=1.6, label=p)
    ax.set_xlabel("charging time (h)")
    ax.set_ylabel("surface Li occupancy θ")
    ax.set_title("first charge, top row (cf. Sharma 2022 Fig. 4d)", fontsize=10)
    ax.legend(frameon=False, fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "fig4d_surface_li.png", dpi=140)
    P.close(fig)
    # slopes of the optical proxy against capacity, charges 1-3
    charges = [st for st in base.steps if str(st["description"]).startswith("charge")]
    fig, axes = P.subplots(1, len(charges), figsize=(4.2 * len(charges), 3.6), squeeze=False, sharey=True)
    names = sorted({c[len("theta_near_"):] for c in s if c.startswith("theta_near_")})
    for ax, st in zip(axes[0], charges):
        sel = np.flatnonzero(step == int(st["index"]))
        if len(sel) < 3:
            continue
        sel = np.concatenate([[sel[0] - 1], sel]) if sel[0] > 0 else sel
        q = np.abs(s["capacity_mAh_g"][sel] - s["capacity_mAh_g"][sel[0]])
        for i, n in enumerate(names):
            y = s[f"theta_near_{n}"][sel]
            dq = np.diff(q)
            ok = dq > 1e-9
            ax.plot(q[1:][ok], np.abs(np.diff(y)[ok] / dq[ok]), lw=1.1,
                    color=colors[TOP_ROW.index(n)] if n in TOP_ROW else "0.6", label=n if n in TOP_ROW else None)
        ax.set_title(st["label"] or st["description"], fontsize=10)
        ax.set_xlabel("capacity in this charge (mAh g⁻¹)")
    axes[0, 0].set_ylabel("|d near-surface θ / dQ| (g mAh⁻¹)")
    axes[0, 0].legend(frameon=False, fontsize=8)
    fig.suptitle("optical proxy slope (cf. Sharma 2022 Fig. 1c): one sharp peak each = asynchronous; grey: bottom row",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "fig1c_slopes.png", dpi=140)
    P.close(fig)
    # maps i-iv of charges 1-3
    made = ["fig4d_surface_li.png", "fig1c_slopes.png"]
    mp = base.directory / "fields.npz"
    if mp.is_file():
        with np.load(mp) as z:
            imgs, labels, extent = z["theta"], list(z["labels"]), tuple(z["extent"])
            outlines = [z[k] for k in z.files if k.startswith("outline")]
        if len(imgs):
            ncol = len(MAP_FRACTIONS)
            nrow = int(np.ceil(len(imgs) / ncol))
            fig, axes = P.subplots(nrow, ncol, figsize=(3.6 * ncol + 0.8, 2.5 * nrow + 0.5), squeeze=False)
            vmin, vmax = float(np.nanmin(imgs)), float(np.nanmax(imgs))
            h = None
            for ax, img, lab in zip(axes.flat, imgs, labels):
                h = ax.imshow(img, origin="lower", extent=extent, cmap="viridis", vmin=vmin, vmax=vmax)
                for o in outlines:
                    ax.plot(o[:, 0], o[:, 1], color="k", lw=0.4)
                ax.set_title(str(lab), fontsize=9)
                ax.set_xticks([])
                ax.set_yticks([])
            for ax in axes.flat[len(imgs):]:
                ax.axis("off")
            fig.colorbar(h, ax=axes, shrink=0.7, label="Li occupancy θ")
            fig.suptitle("Li maps at capacities i–iv of each charge (cf. Sharma 2022 Fig. 5)", fontsize=10)
            fig.savefig(out / "fig5_maps.png", dpi=130)
            P.close(fig)
            made.append("fig5_maps.png")
    fig, ax = P.subplots(figsize=(7, 3.6))
    for key, res in study.results.items():
        if res.series:
            ax.plot(res.series["time_s"] / 3600, res.series["voltage_V"], lw=1.0, label=key)
    ax.set_xlabel("time (h)")
    ax.set_ylabel("cell voltage (V)")
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "voltage.png", dpi=130)
    P.close(fig)
    return made + ["voltage.png"]


def variant_cases(key: str, quick: bool, outdir: Path) -> list[tuple[str, dict, str]]:
    """The baseline (three charges) with sensitivity variant ``key``'s inputs (its tables written
    into ``outdir/tables``); ingredients that only make sense for a first charge are refused."""
    from sharma2022_sensitivity import RECIPES, VARIANTS, apply_recipe

    items = RECIPES[key]
    cfg = apply_recipe(base_config(quick), items, quick, outdir / "tables")
    reading = next(v.reading for v in VARIANTS if v.key == key)
    return [("baseline", cfg, f"three charges with sensitivity variant '{key}' (post hoc): {reading}")]


def _variant_arg(argv):
    """Split ``--variant KEY`` off the study's arguments; check KEY before anything is written."""
    import argparse

    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--variant", default="", help="a sharma2022_sensitivity variant key (three-charge baseline only)")
    known, rest = extra.parse_known_args(argv if argv is not None else sys.argv[1:])
    if not known.variant:
        return "", rest
    from sharma2022_sensitivity import RECIPES

    allowed = [k for k, items in RECIPES.items() if not any(i.startswith("start:") for i in items)]
    if known.variant not in allowed:
        from nmcfx.errors import InputError

        raise InputError("--variant", f"unknown or first-charge-only variant {known.variant!r}; allowed: {allowed}")
    if not any(a in ("-o", "--output") or a.startswith("--output=") for a in rest):
        from _common import DEFAULT_ROOT

        rest = [*rest, "-o", str(DEFAULT_ROOT / NAME / f"variant_{known.variant}")]
    return known.variant, rest


def main(argv=None):
    variant, argv = _variant_arg(argv)
    args = parse_args(NAME, __doc__.splitlines()[0], argv)
    study = Study(NAME, args)
    todo = variant_cases(variant, study.quick, study.outdir) if variant else cases(study.quick, study.outdir)
    study.plan(len(todo))
    for key, cfg, describe in todo:
        study.case(key, cfg, describe=describe, recorder=CapacityMaps() if key == "baseline" else None)
    rows, summary = analyse(study)
    out = study.outdir
    made = []
    if study.comm.rank == 0:
        write_csv(out / "asynchrony.csv", ["case", "charge", "particle", "onset_h", "q10_mAh_g", "q50_mAh_g"], rows)
        write_csv(out / "asynchrony_summary.csv", SUMMARY_HEADER, summary)
        made = figures(study, out)
        res = study.results.get("stress")
        if res is not None and res.series and "hoop_surface_max_MPa" in res.series:
            names = [c[len("theta_mean_"):] for c in res.series if c.startswith("theta_mean_")]
            stress_rows = stress_vs_onset(res.series, names)
            write_csv(out / "stress_onset.csv", STRESS_HEADER, stress_rows)
            made += ["stress_onset.csv", stress_figure(res.series, stress_rows, out)]
            for r in stress_rows:
                study.say(f"{'stress':>12s} {r[0]}: onset {r[1]:.2f} h, current peak {r[2]:.2f} h; hoop stress "
                          f"{r[5]:.0f} MPa at the onset, fastest rise at {r[3]:.2f} h, peak {r[6]:.0f} MPa at "
                          f"{r[7]:.2f} h (θ̄ {r[9]:.2f}); σ1 {r[10]:.0f} MPa at {r[11]:.2f} h (r/R {r[12]:.2f}); "
                          f"charge max σ1 {r[13]:.0f} MPa at {r[14]:.1f} h (θ̄ {r[15]:.2f})")
        bonded = study.results.get("stress_bonded")
        if bonded is not None and bonded.series and "hoop_surface_max_MPa" in bonded.series:
            names = [c[len("theta_mean_"):] for c in bonded.series if c.startswith("theta_mean_")]
            brows = stress_vs_onset(bonded.series, names)
            write_csv(out / "stress_onset_bonded.csv", STRESS_HEADER, brows)
            made.append("stress_onset_bonded.csv")
            if res is not None and res.series and "hoop_surface_max_MPa" in res.series:
                made.append(bonded_figure(res.series, bonded.series, out))
                free_rows = {r[0]: r for r in stress_vs_onset(res.series, names)}
                for r in brows:
                    f = free_rows[r[0]]
                    study.say(f"{'bonded':>12s} {r[0]}: hoop peak {r[6]:.0f} MPa at {r[7]:.2f} h (free {f[6]:.0f} MPa "
                              f"at {f[7]:.2f} h); σ1 reaction-phase peak {r[10]:.0f} MPa (free {f[10]:.0f}); "
                              f"charge max σ1 {r[13]:.0f} MPa (free {f[13]:.0f}); mean stress at the hoop peak "
                              f"{_at(bonded.series, f'sigma_mean_MPa_{r[0]}', r[7]):.0f} MPa")
            cbd = bonded.series.get("cbd_sigma1_max_MPa")
            if cbd is not None:
                k = int(np.argmax(cbd))
                study.say(f"{'bonded':>12s} CBD: peak σ1 {cbd[k]:.1f} MPa at {bonded.series['time_s'][k] / 3600:.2f} h, "
                          f"peak von Mises {np.max(bonded.series['cbd_von_mises_max_MPa']):.1f} MPa")
        for r in summary:
            study.say(f"{r[0]:>12s} charge {r[1]}: {r[3]:6.1f} mAh/g, asynchrony index {r[4]:.3f}, spread of the "
                      f"10 %/50 % points {r[5]:.1f}/{r[6]:.1f} mAh/g, onsets T0 {r[7]:.2f} h … T4 {r[8]:.2f} h "
                      f"(in order: {r[9]})" + (f", first-cycle loss {r[10]:.1f} %" if r[10] == r[10] else ""))
    study.finish(__doc__.splitlines()[0], extra={"summary_header": SUMMARY_HEADER, "summary": summary},
                 outputs=["asynchrony.csv", "asynchrony_summary.csv", *made])


if __name__ == "__main__":
    main()
