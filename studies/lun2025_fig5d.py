"""Lun et al. 2025, Fig. 5d: offset d of the Li-rich core against delivered capacity (and time).

2.4 µm disk charged from θ₀ = 0.95 at 50, 100, 200 and 400 mA g⁻¹ to the θ = 0.2 surface
cut-off, ¼ of the perimeter (the sector "blocked", −45° to 45°) impeded in two ways:

* **η model** (the paper's own simulation, prescribed flux): the blocked arc carries
  η = 0.3 times the flux of the free surface at every rate (and uniform flux as reference);
* **film model** (issue 11): Butler–Volmer kinetics everywhere, with a rocksalt film of
  thickness δ on the blocked arc as a series resistance (``solver/kinetics.py``; its Li
  diffusivity 3000× lower than the layered phase's, Lun 2025: "a 150–200 meV lower Li
  hopping barrier in a layered phase than in a rocksalt phase, corresponding to an ~3000
  times larger diffusivity"). The flux ratio is then an outcome of δ and the current.

  δ comes from the paper's words, not from a fit (seed 000, ``000_80fb533691845cbd.txt``,
  HAADF-STEM of the aged particle, Fig. 3b): "Rather thick rocksalt layers (up to ~4 nm
  thick) can be identified in region 1, whilst very thin (<1 nm) or no rocksalt phases are
  observed in regions 2 and 3." The blocked arc is region 1: δ = 4 nm, the upper end of
  the stated range 0–4 nm (its lower end, 0 nm, is the uniform case); the free arc is
  regions 2–3, run at both ends of "<1 nm or none": bare (``film4nm``) and 1 nm
  (``film4nm_free1nm``; not in --quick). δ was not varied to make d grow.

d is the distance between the centre of mass of the particle and that of the 'unreacted'
Li-rich region θ > θ₀ − 0.05·0.95 (the solver's ``d_um`` column; the paper's region is
differential optical contrast < 0.05 with contrast ≈ (θ₀ − θ)/0.95, Xu 2022 Eq. 17).
It is also measured **as a microscope would** (``d_image_um``): the θ maps recorded at
frames every ``FRAME_CAPACITY_STEP`` mAh g⁻¹ are sampled on a 34.7 nm pixel grid,
rendered by the forward model (:func:`nmcfx.imaging.forward.render_stack`: contrast
A = 1/0.95, Gaussian PSF of 265 nm FWHM, no noise, no drift), masked by Otsu on the
reference frame, turned into total contrast and measured with the imaging package's
:func:`nmcfx.imaging.asymmetry.com_offset` (contrast < 0.05).
Observed (Lun 2025 Fig. 5c–d): d is larger at higher current, and the Li-rich region
persists to higher capacity (~15 mAh/g at the lowest, ~30 mAh/g at the highest current).

What the default material gives (full run; README "What nmcfx reproduces"): with the film,
d at a given capacity or at a given stage of the core falls with current, as with η = 0.3
(d at a Li-rich area of 25 % on the images: 0.56, 0.52, 0.49, 0.47 µm at 50–400 mA/g),
and the largest d is the last remnant of the core against the covered arc, ≈ R at every
rate (1.17–1.18 µm on the images). At 4 nm and D_eff/3000 the film's i·R near θ₀ is volts
(≫ RT/F), so the covered arc carries ~3 % of the mean flux at every rate (the bound
``covered_arc_flux_share_bound`` per frame; η = 0.3 gives 36 %): the split the film makes
falls with current only where it is not already closed. d on the rendered images follows
the solver's d within 0.03–0.05 µm RMS (about one pixel): 0 in the first frames (the thin
depleted rim, blurred by the PSF, stays below the 0.05 threshold and the whole particle
reads Li-rich), then on average 0.01–0.04 µm larger.

    python studies/lun2025_fig5d.py [-o DIR] [--quick] [--force]
    mpiexec -n 2 python studies/lun2025_fig5d.py

Outputs (DIR, default runs/studies/lun2025_fig5d): fig5d_offset.png (d against time and
against capacity, η and film model, solver and image d), fig5d_offset.csv (per case, one
row per time step: time, capacity, d, Li-rich fraction, …), fig5d_image.csv (per case and
frame: d_um of the solver interpolated at the frame and d_image_um from the rendered
image), fig5d_summary.csv (per case: d at 5/10/15/20 mAh/g, largest d, capacity at which
the Li-rich region vanishes, largest image d), study.json, cases/<case>/ (with the θ
maps of the film cases in fields.npz). --quick: 50 and 400 mA/g, coarse mesh.
"""

from __future__ import annotations

import math
import sys

from mpi4py import MPI  # noqa: F401  (before dolfinx)

import numpy as np

from nmcfx.studies._common import Study, lun_cutoff_config, parse_args, plt, write_csv

NAME = "lun2025_fig5d"
RATES = (50.0, 100.0, 200.0, 400.0)
QUICK_RATES = (50.0, 400.0)
ETA = 0.3
FRACTION = 0.25
#: rocksalt film on the blocked arc (nm): Lun 2025 (seed 000) "up to ~4 nm thick" in region 1
FILM_NM = 4.0
#: the free arc: "very thin (<1 nm) or no rocksalt" (regions 2-3): both ends of that range, 0 and 1 nm
FREE_FILM_NM = (0.0, 1.0)
CAPACITY_MARKS = (5.0, 10.0, 15.0, 20.0)  # mAh/g at which d is tabulated
#: Li-rich area fractions at which d is tabulated: the shrinking core at a common stage, which
#: (unlike the largest d, set by the last record before the core vanishes) does not depend on
#: how close to its end the core was last sampled
FRACTION_MARKS = (0.5, 0.25, 0.1)
#: resolution of the curves: at most this much capacity (mAh/g) per time step
CAPACITY_PER_STEP = 0.5
#: rendered frames: one every this much capacity (mAh/g), up to FRAME_CAPACITY_MAX
FRAME_CAPACITY_STEP = 1.0
QUICK_FRAME_CAPACITY_STEP = 4.0
FRAME_CAPACITY_MAX = 60.0
#: field of view around the particle centre (pixels of 34.7 nm; the 2.4 µm disk is ~69 px)
FIELD_PX = 101
LI_RICH_CONTRAST = 0.05


def film_key(free_nm: float) -> str:
    """Case suffix of a film case: ``film4nm`` (bare free arc) or ``film4nm_free1nm``."""
    return f"film{FILM_NM:g}nm" + (f"_free{free_nm:g}nm" if free_nm > 0 else "")


def film_config(rate_mA_g: float, thickness_nm: float, quick: bool, dt_max_s: float, frame_step: float,
                free_nm: float = 0.0) -> dict:
    """The Fig. 5d case with Butler–Volmer kinetics and a rocksalt film of ``thickness_nm`` on
    the blocked quarter (a series resistance) and ``free_nm`` on the rest of the surface (the
    sector "surface"), θ maps recorded every ``frame_step`` mAh/g."""
    cfg = lun_cutoff_config(rate_mA_g, FRACTION, 1.0, quick, dt_max_s=dt_max_s)
    free = f", {free_nm:g} nm on the rest" if free_nm > 0 else ""
    cfg["title"] = (f"Lun 2025: 2.4 µm disk, {rate_mA_g:g} mA/g to the θ = 0.2 surface cut-off, Butler–Volmer "
                    f"with a {thickness_nm:g} nm rocksalt film on ¼ of the surface{free}")
    films = {"blocked": float(thickness_nm)}
    if free_nm > 0:
        films["surface"] = float(free_nm)
    cfg["surface"] = {"model": "butler_volmer", "rocksalt_thickness_nm": films}
    minutes_per_mAh_g = 60.0 / rate_mA_g
    n = int(round(FRAME_CAPACITY_MAX / frame_step))
    cfg["output"]["snapshot_times_min"] = [round(k * frame_step * minutes_per_mAh_g, 9) for k in range(n + 1)]
    return cfg


def offset_summary(series: dict) -> dict:
    """d at the capacity marks, largest d, and the capacity at which the Li-rich region vanishes."""
    cap, d, frac = series["capacity_mAh_g"], series["d_um"], series["li_rich_fraction"]
    alive = np.isfinite(d) & (frac > 0)
    out = {}
    for c in CAPACITY_MARKS:
        out[f"d_at_{c:g}_mAh_g_um"] = (float(np.interp(c, cap[alive], d[alive]))
                                       if alive.any() and cap[alive].max() >= c else math.nan)
    for f in FRACTION_MARKS:
        out[f"d_at_rich_{f:g}_um"] = d_at_fraction(frac, d, f)
    out["d_max_um"] = float(d[alive].max()) if alive.any() else math.nan
    out["capacity_at_d_max_mAh_g"] = float(cap[alive][np.argmax(d[alive])]) if alive.any() else math.nan
    # the region vanishes between the last record with a Li-rich area and the next one
    last = np.flatnonzero(alive)
    out["li_rich_gone_at_mAh_g"] = float(cap[min(last[-1] + 1, len(cap) - 1)]) if last.size else math.nan
    return out


def d_at_fraction(frac: np.ndarray, d: np.ndarray, level: float) -> float:
    """d when the Li-rich area first falls to ``level`` of the particle (linear between records).

    >>> round(d_at_fraction(np.array([1.0, 0.6, 0.2, 0.0]), np.array([0.0, 0.2, 0.6, np.nan]), 0.4), 6)
    0.4
    """
    below = np.flatnonzero((frac <= level) & np.isfinite(d))
    if below.size == 0 or below[0] == 0:
        return math.nan
    i = int(below[0])
    f0, f1 = frac[i - 1], frac[i]
    w = (f0 - level) / (f0 - f1) if f0 > f1 else 1.0
    return float(d[i - 1] + w * (d[i] - d[i - 1]))


def covered_arc_share(maps: dict, series: dict, cfg: dict, thickness_nm: float = FILM_NM) -> np.ndarray:
    """Upper bound of the covered arc's flux relative to the mean surface flux, per recorded map.

    With the film in series, the arc's current is i = (V − V_oc(θ) − η_ct)/R_film(θ) with a
    charge-transfer overpotential η_ct of the same sign, so i ≤ (V − V_oc(θ))/R_film(θ)
    (θ the occupancy at the arc's surface vertices, V the cell voltage, R_film from
    :func:`nmcfx.solver.kinetics.film_resistance`). The mean current density is F times the
    Li extraction rate (``li_extracted_mol``, per µm of depth) over the perimeter. NaN after
    the run ended.
    """
    from scipy.spatial import cKDTree

    from nmcfx.materials import material_from_config
    from nmcfx.solver.kinetics import film_resistance
    from nmcfx.solver.surface import SurfaceSettings

    faraday = 96485.33212
    mat = material_from_config(cfg.get("material"))
    ratio = SurfaceSettings.from_dict(cfg.get("surface", {})).rocksalt_diffusivity_ratio
    outlines = maps["outlines"]
    perimeter_m = 1e-6 * sum(float(np.sum(np.hypot(*np.diff(line[:, :2], axis=0).T))) for line in outlines.values())
    arc = np.unique(cKDTree(maps["points"]).query(outlines["blocked"][:, :2])[1])
    t, V, n_li = series["time_s"], series["voltage_V"], series["li_extracted_mol"]
    i_mean = faraday * np.gradient(n_li, t) / (perimeter_m * 1e-6)  # A m⁻², 1 µm of depth
    share = np.full(len(maps["times_s"]), np.nan)
    for k, tk in enumerate(maps["times_s"]):
        if tk <= 0 or tk > t[-1]:
            continue
        th = np.clip(maps["theta"][k][arc], 1e-6, 1.0)
        R = film_resistance(thickness_nm, th, mat.D_eff(th), mat.site_concentration, ratio=ratio).resistance
        i_arc = np.clip(np.interp(tk, t, V) - mat.ocv(th), 0.0, None) / R
        share[k] = float(np.mean(i_arc) / np.interp(tk, t, i_mean))
    return share


def image_offsets(maps: dict, theta0: float, field_px: int = FIELD_PX) -> dict:
    """d measured on rendered images of recorded θ maps, as a microscope would (module docstring).

    ``maps``: the ``fields.npz`` content of a case (vertex θ, triangles, times; the first map
    at t = 0 is the reference frame). Returns times, d_image_um and the Li-rich area fraction
    of the image per frame (d NaN where no pixel is Li-rich).

    >>> import numpy as np
    >>> pts = np.array([[x, y] for y in np.linspace(-1, 1, 21) for x in np.linspace(-1, 1, 21)])
    >>> tri = __import__("matplotlib.tri", fromlist=["Triangulation"]).Triangulation(*pts.T).triangles
    >>> th = np.vstack([np.full(len(pts), 0.95), np.where(pts[:, 0] < 0, 0.95, 0.5)])
    >>> r = image_offsets({"points": pts, "triangles": tri, "times_s": np.array([0.0, 60.0]), "theta": th}, 0.95)
    >>> bool(0.4 < r["d_image_um"][1] < 0.6)   # the left half is Li-rich: its COM is ~0.5 µm off
    True
    """
    from matplotlib.tri import LinearTriInterpolator, Triangulation

    from nmcfx.imaging.asymmetry import com_offset
    from nmcfx.imaging.contrast import particle_mask, total_contrast
    from nmcfx.imaging.forward import CameraGrid, Microscope, render_stack

    scope = Microscope(theta0=theta0)  # 34.7 nm pixels, 265 nm FWHM PSF, A = 1/0.95, no noise
    pts = np.asarray(maps["points"], float)
    tri = Triangulation(pts[:, 0], pts[:, 1], np.asarray(maps["triangles"]))
    centre = 0.5 * (pts.min(axis=0) + pts.max(axis=0))
    grid = CameraGrid.centered(centre, (field_px, field_px), scope.pixel_size_um)
    xy = grid.points_um()
    theta = np.empty((len(maps["times_s"]), field_px, field_px))
    for k, values in enumerate(np.asarray(maps["theta"], float)):
        sampled = LinearTriInterpolator(tri, values)(xy[:, 0], xy[:, 1])
        theta[k] = np.ma.filled(sampled.astype(float), np.nan).reshape(field_px, field_px)
    stack = render_stack(theta, maps["times_s"], scope)
    mask, _ = particle_mask(stack.frames[0])
    contrast = total_contrast(stack.frames, 0, mask)
    trace = com_offset(contrast, mask, stack.times_s, pixel_size_um=scope.pixel_size_um,
                       threshold=LI_RICH_CONTRAST)
    return {"times_s": trace.times_s, "d_image_um": trace.d_um, "rich_fraction": trace.rich_fraction}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(NAME, "Lun 2025 Fig. 5d: offset d of the Li-rich core vs capacity", argv)
    study = Study(NAME, args)
    rates = QUICK_RATES if study.quick else RATES
    frame_step = QUICK_FRAME_CAPACITY_STEP if study.quick else FRAME_CAPACITY_STEP
    frees = FREE_FILM_NM[:1] if study.quick else FREE_FILM_NM
    study.plan((2 + len(frees)) * len(rates))
    cases = []
    for rate in rates:
        dt_max = 3600.0 * CAPACITY_PER_STEP * (4 if study.quick else 1) / rate
        for key, fraction, eta, label in (("eta0.3", FRACTION, ETA, f"¼ blocked, η = {ETA:g}"),
                                          ("none", 0.0, 1.0, "no blocking")):
            ck = f"{rate:g}mAg_{key}"
            cases.append((ck, rate, key, label))
            study.case(ck, lun_cutoff_config(rate, fraction, eta, study.quick, dt_max_s=dt_max),
                       describe=f"{rate:g} mA/g, {label}")
        for free_nm in frees:
            key = film_key(free_nm)
            ck = f"{rate:g}mAg_{key}"
            label = f"¼ film {FILM_NM:g} nm" + (f", rest {free_nm:g} nm" if free_nm > 0 else ", BV")
            cases.append((ck, rate, key, label))
            study.case(ck, film_config(rate, FILM_NM, study.quick, dt_max, frame_step, free_nm), maps=True,
                       describe=f"{rate:g} mA/g, Butler–Volmer, {FILM_NM:g} nm rocksalt film on the blocked quarter"
                                + (f", {free_nm:g} nm on the rest" if free_nm > 0 else ""))

    summary, curve_rows, sum_rows, image_rows, images = {}, [], [], [], {}
    for ck, rate, key, label in cases:
        res = study.results[ck]
        s = res.series
        summary[ck] = offset_summary(s)
        summary[ck]["mass_balance_error_max"] = float(res.summary.get("max_abs_mass_balance_error", math.nan))
        for i in range(len(s["time_s"])):
            curve_rows.append([ck, rate, key, s["time_s"][i] / 60, s["capacity_mAh_g"][i], s["d_um"][i],
                               s["li_rich_fraction"][i], s["theta_center"][i], s["theta_surface_min"][i]])
        if res.maps:
            img = images[ck] = image_offsets(res.maps, res.config["protocol"]["initial_theta"])
            # the solver's d at the frame times (frames land on time steps exactly)
            img["d_um"] = np.interp(img["times_s"], s["time_s"], s["d_um"], left=math.nan, right=math.nan)
            img["capacity_mAh_g"] = np.interp(img["times_s"], s["time_s"], s["capacity_mAh_g"])
            img["arc_share"] = covered_arc_share(res.maps, s, res.config)
            alive = (img["rich_fraction"] > 0) & np.isfinite(img["d_image_um"])
            both = alive & np.isfinite(img["d_um"]) & (img["times_s"] > 0)
            summary[ck]["d_image_max_um"] = float(img["d_image_um"][alive].max()) if alive.any() else math.nan
            for f in FRACTION_MARKS:
                summary[ck][f"d_image_at_rich_{f:g}_um"] = d_at_fraction(img["rich_fraction"], img["d_image_um"], f)
            summary[ck]["image_frames"] = int(len(img["times_s"]))
            core = both & np.isfinite(img["arc_share"])
            for name, fn in (("median", np.median), ("max", np.max)):
                summary[ck][f"arc_flux_share_bound_{name}"] = float(fn(img["arc_share"][core])) if core.any() \
                    else math.nan
            summary[ck]["d_image_minus_solver_rms_um"] = (
                float(np.sqrt(np.mean((img["d_image_um"][both] - img["d_um"][both]) ** 2))) if both.any() else math.nan)
            for k in range(len(img["times_s"])):
                image_rows.append([ck, rate, key, img["times_s"][k] / 60, img["capacity_mAh_g"][k], img["d_um"][k],
                                   img["d_image_um"][k], img["rich_fraction"][k], img["arc_share"][k]])
    keys = sorted({k for sm in summary.values() for k in sm})
    for ck, rate, key, label in cases:
        sm = summary[ck]
        sum_rows.append([ck, rate, key] + [sm.get(k, math.nan) for k in keys])
    files = ["fig5d_offset.png", "fig5d_offset.csv", "fig5d_image.csv", "fig5d_summary.csv"]
    if study.comm.rank == 0:
        write_csv(study.outdir / "fig5d_offset.csv",
                  ["case", "rate_mA_g", "blocking", "time_min", "capacity_mAh_g", "d_um", "li_rich_fraction",
                   "theta_center", "theta_surface_min"], curve_rows)
        write_csv(study.outdir / "fig5d_image.csv",
                  ["case", "rate_mA_g", "blocking", "time_min", "capacity_mAh_g", "d_um", "d_image_um",
                   "image_li_rich_fraction", "covered_arc_flux_share_bound"], image_rows)
        write_csv(study.outdir / "fig5d_summary.csv", ["case", "rate_mA_g", "blocking"] + keys, sum_rows)
        plot(study, cases, images, study.outdir / "fig5d_offset.png")
        for ck, rate, key, label in cases:
            sm = summary[ck]
            img = f"; image d_max {sm['d_image_max_um']:.3f} µm" if "d_image_max_um" in sm else ""
            study.say(f"{rate:>5g} mA/g {label:<20s} d(5, 10, 15 mAh/g) = "
                      + ", ".join(f"{sm[f'd_at_{c:g}_mAh_g_um']:.3f}" for c in CAPACITY_MARKS[:3])
                      + " µm; d(Li-rich area " + "/".join(f"{f:g}" for f in FRACTION_MARKS) + ") = "
                      + ", ".join(f"{sm[f'd_at_rich_{f:g}_um']:.3f}" for f in FRACTION_MARKS)
                      + f" µm; max {sm['d_max_um']:.3f} µm at {sm['capacity_at_d_max_mAh_g']:.1f} mAh/g; "
                      f"Li-rich region gone at {sm['li_rich_gone_at_mAh_g']:.1f} mAh/g{img}")
    study.finish(f"Lun 2025 Fig. 5d: d vs time and capacity, ¼ blocked η = {ETA:g} (and uniform flux) and "
                 f"Butler–Volmer with a {FILM_NM:g} nm rocksalt film on ¼ of the surface, 50-400 mA/g; d also "
                 "measured on rendered images", extra=summary, outputs=files)
    return summary


def plot(study, cases, images, path):
    """Two panels, d against time (min) and against capacity (mAh/g): film model thick (solid: bare
    free arc, dotted: 1 nm on it), η model thin, uniform flux dashed, d measured on the rendered
    images as markers."""
    pyplot = plt()
    fig, axes = pyplot.subplots(1, 2, figsize=(11.0, 4.6))
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.12, top=0.82, wspace=0.2)
    rates = sorted({c[1] for c in cases})
    cmap = pyplot.get_cmap("plasma")
    main_film, free_film = film_key(0.0), film_key(FREE_FILM_NM[-1])
    styles = {"none": dict(lw=1.0, ls="--"), main_film: dict(lw=2.4), free_film: dict(lw=2.0, ls=":")}
    markers = {main_film: "o", free_film: "s"}
    xmax = [0.0, 0.0]
    for ck, rate, key, label in cases:
        s = study.results[ck].series
        alive = np.isfinite(s["d_um"]) & (s["li_rich_fraction"] > 0)
        color = cmap(0.1 + 0.75 * rates.index(rate) / max(1, len(rates) - 1))
        if not alive.any():
            continue
        xs = (s["time_s"][alive] / 60, s["capacity_mAh_g"][alive])
        for j, ax in enumerate(axes):
            xmax[j] = max(xmax[j], xs[j].max())
            ax.plot(xs[j], s["d_um"][alive], color=color, **styles.get(key, dict(lw=1.0, alpha=0.7)),
                    label=f"{rate:g} mA g⁻¹" if key == main_film and j == 1 else None)
        if ck in images:
            img = images[ck]
            ok = (img["rich_fraction"] > 0) & np.isfinite(img["d_image_um"])
            for j, x in enumerate((img["times_s"][ok] / 60, img["capacity_mAh_g"][ok])):
                axes[j].plot(x, img["d_image_um"][ok], markers.get(key, "o"), ms=3.2, mfc="none", color=color,
                             alpha=0.8)
    for ax, (name, unit), xm in zip(axes, (("time", "min"), ("capacity", "mAh g⁻¹")), xmax):
        ax.set_xlim(0, 1.05 * xm if xm > 0 else 1)
        ax.set_ylim(bottom=0)
        ax.set_xlabel(f"{name} ({unit})")
        ax.set_ylabel("d = |O_COM − O_Li-rich| (µm)")
        ax.grid(alpha=0.3)
    legend = [(styles[main_film], f"BV, {FILM_NM:g} nm film on ¼, rest bare"),
              (styles[free_film], f"BV, {FILM_NM:g} nm on ¼, {FREE_FILM_NM[-1]:g} nm on the rest"),
              (dict(lw=1.0, alpha=0.7), f"prescribed flux, ¼ blocked η = {ETA:g}"),
              (dict(lw=1.0, ls="--"), "no blocking"),
              (dict(ls="none", marker="o", ms=3.5, mfc="none"), "film cases: d on rendered images (○, □)")]
    handles = [axes[0].plot([], [], color="0.35", **style)[0] for style, _ in legend]
    fig.legend(handles, [lab for _, lab in legend], frameon=False, fontsize=8, ncol=3, loc="upper center",
               bbox_to_anchor=(0.5, 0.955))
    axes[1].legend(frameon=False, fontsize=8, title="rate", title_fontsize=8, loc="upper left")
    fig.suptitle("Offset of the Li-rich core (contrast < 0.05, θ > 0.9025), 2.4 µm disk to the θ = 0.2 surface "
                 "cut-off (Lun 2025 Fig. 5d)", fontsize=9.5, y=0.99)
    fig.savefig(path, dpi=150)
    pyplot.close(fig)


if __name__ == "__main__":
    main(sys.argv[1:])
