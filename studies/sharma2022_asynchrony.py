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
5. the rate constant k (i0) changes little at C/20 (Fig. S7): i0 × 0.1 and × 10.

    python studies/sharma2022_asynchrony.py [-o DIR] [--quick] [--force]
    mpiexec -n 2 python studies/sharma2022_asynchrony.py

Outputs (default ``runs/studies/sharma2022_asynchrony/``): ``asynchrony.csv`` (per case, charge
and particle: onset time, capacity, slope peak), ``asynchrony_summary.csv`` (per case and charge:
onset spread, order of the top row, first-cycle loss), figures ``fig4d_surface_li.png`` (surface
Li of the top particles vs time, first charge), ``fig1c_slopes.png`` (slope of the optical proxy
against capacity, charges 1–3), ``fig5_maps.png`` (θ maps at capacities i–iv of charges 1–3),
``voltage.png``, and ``study.json``; every case's run directory under ``cases/``.
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
#: makes C/20 a ~20 h first charge, 004: "first charge ~20 h"); transport, V_oc and i0 tables are
#: the project defaults for Ni-rich layered NMC (materials/data/README.md), which carry the feature
#: 004 relies on — a diffusivity that is low near x = 1 (004 Fig. 4c); σ_NMC(θ) is the default
#: table (Amin & Chiang 2016 end values, transition in x = 1.0–0.9).
MATERIAL = {"molar_mass_g_mol": 96.55, "density_g_cm3": 4.73, "capacity_mAh_g": 170.0}
#: start pristine (004: "start pristine (x ≈ 1)")
INITIAL_THETA = 0.99


def cycle_protocol(charges: int, *, relithiate_after_first: bool = False, quick: bool = False) -> dict:
    """C/20 charge to 4.3 V + CV until C/50, C/20 discharge to 2.5 V + CV until C/50, repeated."""
    cap_h = 30.0 if not quick else 3.0
    cv_min = 120.0 if not quick else 10.0
    rate = 0.05 if not quick else 1.0  # quick: a smoke test that reaches the cut-offs in minutes
    steps = []
    for n in range(charges):
        steps += [
            {"type": "charge", "c_rate": rate, "duration_min": 60 * cap_h, "until": ["voltage_V >= 4.3"],
             "label": f"charge {n + 1}"},
            {"type": "hold", "voltage_V": 4.3, "duration_min": cv_min, "until": ["abs_current_mA_g <= 3.4"],
             "label": f"CV 4.3 V {n + 1}"},
        ]
        if n + 1 == charges:
            break
        steps += [
            {"type": "discharge", "c_rate": rate, "duration_min": 60 * cap_h, "until": ["voltage_V <= 2.5"],
             "label": f"discharge {n + 1}"},
            {"type": "hold", "voltage_V": 2.5, "duration_min": cv_min, "until": ["abs_current_mA_g <= 3.4"],
             "label": f"CV 2.5 V {n + 1}"},
        ]
        if n == 0 and relithiate_after_first:
            steps.append({"type": "hold", "voltage_V": 2.5, "duration_min": 60 * (400.0 if not quick else 4.0),
                          "until": ["theta_mean >= 0.985"], "label": "full re-lithiation (CV 2.5 V)"})
    return {"initial_theta": INITIAL_THETA, "steps": steps}


def base_config(quick: bool) -> dict:
    return {
        "title": "Sharma 2022 preset electrode, NMC532-like, C/20 4.3-2.5 V",
        "geometry": {"shape": "electrode", "preset": "sharma2022",
                     "mesh_size_um": 1.5 if not quick else 3.0, "surface_mesh_size_um": 0.6 if not quick else 1.5},
        "material": dict(MATERIAL),
        "electrode": {},
        "protocol": cycle_protocol(3 if not quick else 1, quick=quick),
        "solver": {"dt_max_s": 900.0},
        "output": {"fields": "none", "figures": False, "progress": False, "snapshot_times_min": []},
    }


def cases(quick: bool) -> list[tuple[str, dict, str]]:
    base = base_config(quick)
    out = [("baseline", base, "three charges, CV after each half-cycle")]
    relith = copy.deepcopy(base)
    relith["protocol"] = cycle_protocol(2 if not quick else 1, relithiate_after_first=not quick, quick=quick)
    out.append(("relithiated", relith, "counter-test: fully re-lithiated after the first cycle"))
    first = cycle_protocol(1, quick=quick)
    first["steps"] = first["steps"][:1]
    i0 = 3.4  # the material default (A m⁻² at θ = 0.5)
    for name, f in (("k_low", 0.1), ("k_high", 10.0)):
        cfg = copy.deepcopy(base)
        cfg["material"]["i0_ref_A_m2"] = i0 * f
        cfg["protocol"] = copy.deepcopy(first)
        out.append((name, cfg, f"first charge with i0 × {f:g} (Fig. S7)"))
    if quick:
        out = out[:1] + out[2:3]
    return out


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
def analyse(study: Study) -> tuple[list, list]:
    """Per case, charge and particle rows (from each case's particles.csv) and per case/charge
    summary rows: onset spread, top-row order, first-cycle loss."""
    rows, summary = [], []
    for key, res in study.results.items():
        parts = read_csv_rows(res.directory / "particles.csv")
        steps = res.steps
        charge_caps = [s["capacity_mAh_g"] for s in steps if str(s["description"]).startswith(("charge", "hold"))
                       and "4.3" in str(s["description"]) or str(s["description"]).startswith("charge")]
        # capacity of each half-cycle incl. its CV step
        halves, cur = [], None
        for s in steps:
            d = str(s["description"])
            kind = "charge" if d.startswith("charge") or "4.3" in d else "discharge"
            if d.startswith(("charge", "discharge")):
                cur = [kind, 0.0]
                halves.append(cur)
            if cur is not None and "re-lithiation" not in str(s.get("label", "")):
                cur[1] += float(s["capacity_mAh_g"])
        loss = (halves[0][1] + halves[1][1]) / halves[0][1] if len(halves) > 1 and halves[0][1] > 0 else np.nan
        by_step: dict = {}
        for r in parts:
            if str(r["description"]).startswith("charge"):
                by_step.setdefault(int(r["step"]), []).append(r)
            rows.append([key, int(r["step"]), r["description"], r["particle"], r["onset_h"],
                         r["particle_capacity_mAh_g"], r["slope_peak_per_mAh_g"]])
        for n, (k, rs) in enumerate(sorted(by_step.items()), start=1):
            on = {r["particle"]: r["onset_h"] for r in rs}
            top = [on[p] for p in TOP_ROW if p in on]
            finite = [o for o in on.values() if np.isfinite(o)]
            order = all(np.isfinite(top[i]) and np.isfinite(top[i + 1]) and top[i] <= top[i + 1]
                        for i in range(len(top) - 1)) if len(top) == len(TOP_ROW) else False
            peaks = [r["slope_peak_per_mAh_g"] for r in rs]
            summary.append([key, n, k, (max(finite) - min(finite)) if len(finite) > 1 else np.nan,
                            (top[-1] - top[0]) if len(top) == len(TOP_ROW) else np.nan, order,
                            float(np.max(peaks)) if peaks else np.nan, float(np.median(peaks)) if peaks else np.nan,
                            loss if n == 1 else np.nan, charge_caps[0] if charge_caps else np.nan])
    return rows, summary


SUMMARY_HEADER = ["case", "charge", "protocol_step", "onset_spread_h", "top_row_T4_minus_T0_h", "top_row_in_order",
                  "slope_peak_max", "slope_peak_median", "first_cycle_loss_fraction", "first_charge_mAh_g"]


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
        sel = np.concatenate([[sel[0] - 1], sel])
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


def main(argv=None):
    args = parse_args(NAME, __doc__.splitlines()[0], argv)
    study = Study(NAME, args)
    todo = cases(study.quick)
    study.plan(len(todo))
    for key, cfg, describe in todo:
        study.case(key, cfg, describe=describe, recorder=CapacityMaps() if key == "baseline" else None)
    rows, summary = analyse(study)
    out = study.outdir
    made = []
    if study.comm.rank == 0:
        write_csv(out / "asynchrony.csv", ["case", "protocol_step", "description", "particle", "onset_h",
                                           "particle_capacity_mAh_g", "slope_peak_per_mAh_g"], rows)
        write_csv(out / "asynchrony_summary.csv", SUMMARY_HEADER, summary)
        made = figures(study, out)
        for r in summary:
            study.say(f"{r[0]:>12s} charge {r[1]}: onset spread {r[3]:.2f} h, T4−T0 {r[4]:.2f} h, top row in order "
                      f"{r[5]}, slope peak max {r[6]:.3g}" + (f", first-cycle loss {100 * r[8]:.1f} %"
                                                              if r[8] == r[8] else ""))
    study.finish(__doc__.splitlines()[0], extra={"summary_header": SUMMARY_HEADER, "summary": summary},
                 outputs=["asynchrony.csv", "asynchrony_summary.csv", *made])


if __name__ == "__main__":
    main()
