"""Checks of the frames before the current: baseline, reference and current onset.

Before the current flows the particle does not change, so the contrast of every frame
before the current must be zero within the noise. :func:`baseline_check` tests that on
the particle mean (mask eroded by two pixels):

* **reference offset** — the frames before the current that are not part of I₀ have a
  non-zero mean contrast: I₀ is brighter or darker than the particle at θ₀ (a flicker in
  the reference frame, a shutter transient). Every contrast frame inherits the offset,
  and Eq. 18 (Ī = A(θ₀ − θ), no offset) turns it into an error of S.
* **drifting baseline** — the pre-current contrast trends in time (bleaching, focus or
  illumination drift): the reference does not stand for θ₀ at the current start.
* **flicker** — the particle mean scatters from frame to frame more than the pixel noise
  explains (a common-mode brightness noise; it is propagated into the calibration).

:func:`detect_onset` finds where the stack's particle-mean intensity starts to move: at
constant current the particle-mean contrast grows in proportion to the charge passed,
so a straight line through the first changed frames, extended back to the baseline, gives
the current start to a fraction of a frame.

Thresholds: a signal counts when it is both ≥ 5σ of its noise and ≥ 0.1 % of the intensity.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from .noise import NoiseModel

#: A baseline signal counts when it is at least this many standard deviations ...
SIGNIFICANCE = 5.0
#: ... and at least this large (relative intensity).
MIN_EFFECT = 1e-3


def _core(mask: np.ndarray) -> np.ndarray:
    core = ndimage.binary_erosion(mask, iterations=2)
    return core if core.sum() >= 20 else np.asarray(mask, bool)


def baseline_check(contrast: np.ndarray, times_rel_s: np.ndarray, mask: np.ndarray, i0: np.ndarray,
                   pre: np.ndarray, reference_frames, noise: NoiseModel) -> dict:
    """Test the pre-current frames (module docstring). Returns the numbers and ``warnings``
    (sentences naming what to change)."""
    pre_idx = np.flatnonzero(np.asarray(pre, bool))
    ref = set(int(k) for k in reference_frames)
    core = _core(mask)
    out: dict = {"pre_current_frames": int(pre_idx.size), "reference_frames": sorted(ref), "warnings": []}
    if pre_idx.size < 2:
        out["warnings"].append(
            "only one frame before the current: the reference noise and a baseline offset cannot be measured; "
            "record more frames before the current and average them (--reference-average)")
        return out
    m = np.array([float(np.mean(contrast[k][core])) for k in pre_idx])
    t = np.asarray(times_rel_s, dtype=float)[pre_idx]
    s2 = float(np.mean(noise.sigma_rel(i0[core]) ** 2))
    sig_pix = math.sqrt(s2 / core.sum() * noise.correlation_factor())  # the particle mean's pixel noise
    sig_m = math.sqrt(sig_pix**2 + noise.flicker**2)
    out["pre_current_mean_contrast"] = m.tolist()
    out["pixel_noise_rel"] = math.sqrt(s2)
    out["mean_noise_rel"] = sig_m
    others = [i for i, k in enumerate(pre_idx) if int(k) not in ref]
    if others:
        off = float(np.mean(m[others]))
        # against the pixel noise: a reference that differs by more is an offset every frame inherits,
        # whether a flicker caused it or not
        sig = sig_pix * math.sqrt(1.0 / len(others) + 1.0 / max(len(ref), 1))
        z = off / sig if sig > 0 else math.inf
        out["reference_offset"] = -off
        out["reference_offset_sigma"] = z
        if abs(z) >= SIGNIFICANCE and abs(off) >= MIN_EFFECT:
            word = "brighter" if off < 0 else "darker"
            out["warnings"].append(
                f"the reference I0 is {abs(off) * 100:.2g} % {word} than the other {len(others)} frame(s) before the "
                f"current ({abs(z):.0f} sigma): every contrast frame inherits this offset, which biases S unless the "
                "calibration fits it (fit_offset = true, the default); check the reference (--reference-frame, "
                "--reference-average)")
    if pre_idx.size >= 3 and np.ptp(t) > 0:
        tc = t - t.mean()
        slope = float(np.sum(tc * (m - m.mean())) / np.sum(tc * tc))
        sig_slope = sig_m / math.sqrt(float(np.sum(tc * tc)))
        change = slope * float(np.ptp(t))
        z = slope / sig_slope if sig_slope > 0 else math.inf
        out["baseline_slope_per_min"] = slope * 60.0
        out["baseline_slope_sigma"] = z
        if abs(z) >= SIGNIFICANCE and abs(change) >= MIN_EFFECT:
            out["warnings"].append(
                f"the baseline drifts by {change * 100:+.2g} % over the {pre_idx.size} frames before the current "
                f"({abs(z):.0f} sigma; bleaching, focus or illumination drift?): I0 does not stand for theta0 at the "
                "current start; use a reference right before the current (fewer --reference-average frames); "
                "fit_offset = true (the default) absorbs a constant offset, not a drift that goes on")
    if noise.flicker > 0:
        out["flicker_rel"] = noise.flicker
        if noise.flicker >= MIN_EFFECT:
            out["warnings"].append(
                f"the particle's brightness fluctuates by {noise.flicker * 100:.2g} % from frame to frame before the "
                "current, more than the pixel noise explains (illumination flicker?): it is part of the calibration's "
                "uncertainty; averaging more reference frames and fit_offset = true (the default) reduce its effect")
    return out


def particle_mean_trace(frames: np.ndarray, mask: np.ndarray, drift_rc=None) -> np.ndarray:
    """Particle-mean intensity of every frame relative to the first, mean(I_k)/mean(I_0) − 1, over
    the mask eroded by 2 px; with ``drift_rc`` (n, 2) each frame is first shifted back by its drift
    (cubic spline, on a crop around the particle only)."""
    core = _core(mask)
    if drift_rc is None or not np.any(drift_rc):
        means = np.array([float(np.mean(f[core])) for f in frames])
    else:
        pad = int(math.ceil(np.max(np.abs(drift_rc)))) + 4
        rr, cc = np.nonzero(core)
        rs = slice(max(rr.min() - pad, 0), rr.max() + pad + 1)
        cs = slice(max(cc.min() - pad, 0), cc.max() + pad + 1)
        sub = core[rs, cs]
        means = np.array([float(np.mean(ndimage.shift(np.asarray(f[rs, cs], dtype=float), -d, order=3,
                                                      mode="nearest")[sub])) for f, d in zip(frames, drift_rc)])
    return means / means[0] - 1.0


def detect_onset(times_s: np.ndarray, trace: np.ndarray) -> dict | None:
    """Where a particle-mean trace starts to move (module docstring), or None if it moves from
    the first frames on or never clearly does. Returns ``time_s`` (the current start),
    ``first_changed`` (index of the first frame after it) and ``sigma`` (noise of the trace)."""
    t = np.asarray(times_s, dtype=float)
    y = np.asarray(trace, dtype=float)
    n = y.size
    if n < 6:
        return None
    d2 = y[2:] - 2 * y[1:-1] + y[:-2]
    sigma = 1.4826 * float(np.median(np.abs(d2 - np.median(d2)))) / math.sqrt(6.0)
    sigma = max(sigma, 1e-12)
    sign = 1.0 if (y[-1] - y[0]) >= 0 else -1.0
    for k in range(2, n - 2):
        base = float(np.mean(y[:k]))
        tol = max(SIGNIFICANCE * sigma * math.sqrt(1.0 + 1.0 / k), MIN_EFFECT)
        flat = np.all(np.abs(y[:k] - base) < tol)
        if not flat:
            return None  # the trace already moves in the first frames: no visible onset
        after = sign * (y[k:] - base)
        if after[0] >= tol and after[1] >= tol and np.mean(after[: min(5, after.size)] >= tol) >= 0.8:
            # straight line through the first changed frames, back to the baseline
            j = min(n, k + 4)
            tt, yy = t[k:j], sign * (y[k:j] - base)
            if tt.size >= 2 and np.ptp(tt) > 0:
                slope, icpt = np.polyfit(tt, yy, 1)
                t_on = -icpt / slope if slope > 0 else t[k - 1]
            else:
                t_on = t[k - 1]
            t_on = float(np.clip(t_on, t[k - 1], t[k]))
            return {"time_s": t_on, "first_changed": int(k), "sigma": sigma, "baseline": base}
    return None
