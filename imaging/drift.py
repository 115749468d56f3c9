"""Stage-drift correction.

Xu et al. (Joule 2022, Experimental Procedures, "Drift correction"): a bright
sub-diffraction spot unrelated to the particle is fitted in every frame with a 2D
Gaussian, and the frames are shifted by the fitted centre. :func:`measure_drift`
does that (``method="gaussian"``), tracking the spot from frame to frame inside a small
box, or registers whole frames by phase correlation (``method="phase"``,
:func:`skimage.registration.phase_cross_correlation` with sub-pixel upsampling).

Conventions: positions are (row, col) in pixels, pixel centres at integers. The drift
of frame k is the displacement of the scene relative to the reference frame,
``drift[k] = position_k − position_ref``; :func:`correct_drift` shifts frame k by
``−drift[k]`` (cubic spline interpolation), so the reference frame is unchanged.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage, optimize

from nmcfx.errors import InputError

#: Signal-to-noise ratio (amplitude / residual RMS) below which a spot fit is rejected.
MIN_SPOT_SNR = 5.0


@dataclass
class SpotFit:
    row: float
    col: float
    amplitude: float
    sigma_px: float
    offset: float
    residual_rms: float

    @property
    def snr(self) -> float:
        return self.amplitude / max(self.residual_rms, 1e-300)


@dataclass
class DriftTrace:
    """Drift of every frame relative to the reference frame (pixels, rows/cols)."""

    method: str
    times_s: np.ndarray
    drift_rc: np.ndarray  # (n, 2): (d_row, d_col)
    reference_index: int
    spot_rc: tuple[float, float] | None = None
    fits: list[SpotFit] = field(default_factory=list)

    @property
    def n_frames(self) -> int:
        return len(self.drift_rc)

    def rows(self, pixel_size_um: float, t0_s: float = 0.0) -> list[dict]:
        out = []
        for k in range(self.n_frames):
            dr, dc = self.drift_rc[k]
            row = {"frame": k, "time_s": float(self.times_s[k]), "time_since_current_s": float(self.times_s[k] - t0_s),
                   "drift_x_px": float(dc), "drift_y_px": float(dr),
                   "drift_x_um": float(dc * pixel_size_um), "drift_y_um": float(dr * pixel_size_um)}
            if self.fits:
                f = self.fits[k]
                row.update(spot_row_px=f.row, spot_col_px=f.col, spot_amplitude=f.amplitude,
                           spot_sigma_px=f.sigma_px, spot_snr=f.snr)
            out.append(row)
        return out

    def write_csv(self, path, pixel_size_um: float, t0_s: float = 0.0):
        rows = self.rows(pixel_size_um, t0_s)
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            for r in rows:
                w.writerow({k: (f"{v:.9g}" if isinstance(v, float) else v) for k, v in r.items()})


# ---------------------------------------------------------------------------- Gaussian spot
def _gauss2d(params, rr, cc):
    a, r0, c0, s, b = params
    return b + a * np.exp(-((rr - r0) ** 2 + (cc - c0) ** 2) / (2.0 * s * s))


def fit_gaussian_spot(frame: np.ndarray, guess_rc, box_px: int = 7, *, field: str = "drift.spot",
                      frame_label: str = "") -> SpotFit:
    """Least-squares fit of ``b + a exp(−r²/2σ²)`` in a (2·box+1)² window around ``guess_rc``.

    Raises :class:`InputError` when the window leaves the frame, or the fit does not give
    a compact bright spot (amplitude > 0, SNR ≥ 5, 0.3 px ≤ σ ≤ box, centre inside the
    window).
    """
    frame = np.asarray(frame, dtype=float)
    ny, nx = frame.shape
    r0, c0 = (float(v) for v in guess_rc)
    where = f" in {frame_label}" if frame_label else ""
    ir, ic = int(round(r0)), int(round(c0))
    if not (box_px <= ir < ny - box_px and box_px <= ic < nx - box_px):
        raise InputError(field, f"the spot window ({2 * box_px + 1} px) around (row {r0:.1f}, col {c0:.1f}){where} "
                                f"leaves the {ny}×{nx} frame; choose a spot at least {box_px} px from the edge")
    win = frame[ir - box_px: ir + box_px + 1, ic - box_px: ic + box_px + 1]
    rr, cc = np.mgrid[ir - box_px: ir + box_px + 1, ic - box_px: ic + box_px + 1].astype(float)
    b0 = float(np.median(np.concatenate([win[0], win[-1], win[:, 0], win[:, -1]])))
    k = int(np.argmax(win))
    a0 = float(win.flat[k] - b0)
    p0 = [max(a0, 1e-12), rr.flat[k], cc.flat[k], 2.0, b0]
    lo = [0.0, ir - box_px - 0.5, ic - box_px - 0.5, 0.3, -np.inf]
    hi = [np.inf, ir + box_px + 0.5, ic + box_px + 0.5, float(box_px), np.inf]
    p0 = [min(max(v, l + 1e-9), h - 1e-9) if np.isfinite(l) and np.isfinite(h) else max(v, l + 1e-12)
          for v, l, h in zip(p0, lo, hi)]
    try:
        res = optimize.least_squares(lambda p: (_gauss2d(p, rr, cc) - win).ravel(), p0, bounds=(lo, hi),
                                     x_scale="jac", max_nfev=400)
    except (ValueError, np.linalg.LinAlgError) as exc:
        raise InputError(field, f"the Gaussian fit of the spot{where} failed ({exc})") from None
    a, rf, cf, s, b = res.x
    rms = float(np.sqrt(np.mean(res.fun**2)))
    fit = SpotFit(float(rf), float(cf), float(a), float(s), float(b), rms)
    bad = []
    if not res.success:
        bad.append("the fit did not converge")
    if fit.amplitude <= 0 or fit.snr < MIN_SPOT_SNR:
        bad.append(f"no bright spot (amplitude/residual = {fit.snr:.1f} < {MIN_SPOT_SNR:g})")
    if not 0.3 < fit.sigma_px < box_px - 1e-6:
        bad.append(f"width σ = {fit.sigma_px:.2f} px is not that of a compact spot (0.3 < σ < {box_px} px)")
    if abs(fit.row - ir) > box_px - 1 or abs(fit.col - ic) > box_px - 1:
        bad.append("the fitted centre is at the window edge (the spot moved too far or is not there)")
    if bad:
        raise InputError(field, f"cannot fit a Gaussian spot near (row {r0:.1f}, col {c0:.1f}){where}: "
                                + "; ".join(bad) + " (another --spot, a larger --spot-box, or --drift phase)")
    return fit


def find_spot(frame: np.ndarray, exclude: np.ndarray | None = None, *, sigma_px: float = 3.2, border_px: int = 8,
              field: str = "drift.spot") -> tuple[float, float]:
    """Brightest compact spot outside ``exclude`` (e.g. the dilated particle mask).

    Band-pass (difference of Gaussians at σ and 3σ) so a bright, PSF-sized spot stands
    out from slow background variations; the candidate is then confirmed by a Gaussian fit.
    """
    frame = np.asarray(frame, dtype=float)
    dog = ndimage.gaussian_filter(frame, sigma_px * 0.7) - ndimage.gaussian_filter(frame, sigma_px * 3.0)
    allowed = np.zeros(frame.shape, bool)
    allowed[border_px:-border_px, border_px:-border_px] = True
    if exclude is not None:
        allowed &= ~exclude
    if not allowed.any():
        raise InputError(field, "no room for a marker spot outside the particle; give its position (--spot ROW,COL) "
                                "or use --drift phase")
    score = np.where(allowed, dog, -np.inf)
    noise = 1.4826 * np.median(np.abs(dog[allowed] - np.median(dog[allowed])))
    k = int(np.argmax(score))
    r, c = divmod(k, frame.shape[1])
    if not np.isfinite(score.flat[k]) or score.flat[k] <= 8.0 * max(noise, 1e-300):
        raise InputError(field, "no bright isolated marker spot found outside the particle; give its position "
                                "(--spot ROW,COL), or register whole frames by phase correlation (--drift phase)")
    return float(r), float(c)


# ---------------------------------------------------------------------------- drift traces
def measure_drift(frames: np.ndarray, times_s, reference_index: int = 0, *, method: str = "gaussian",
                  spot_rc=None, box_px: int = 7, exclude: np.ndarray | None = None, sigma_px: float = 3.2,
                  upsample: int = 100) -> DriftTrace:
    """Drift of every frame relative to ``reference_index``.

    ``method="gaussian"``: fit the spot at ``spot_rc`` (or the one :func:`find_spot`
    finds outside ``exclude``) in the reference frame, then track it frame by frame.
    ``method="phase"``: phase correlation of whole frames against the reference.
    ``method="none"``: zero drift.
    """
    frames = np.asarray(frames, dtype=float)
    n = frames.shape[0]
    times = np.asarray(times_s, dtype=float)
    if method == "none":
        return DriftTrace("none", times, np.zeros((n, 2)), reference_index)
    if method == "phase":
        from skimage.registration import phase_cross_correlation

        ref = frames[reference_index]
        drift = np.zeros((n, 2))
        for k in range(n):
            if k == reference_index:
                continue
            shift, _, _ = phase_cross_correlation(ref, frames[k], upsample_factor=upsample, normalization=None)
            drift[k] = -np.asarray(shift, dtype=float)
        return DriftTrace("phase", times, drift, reference_index)
    if method != "gaussian":
        raise InputError("drift.method", f"must be 'gaussian', 'phase' or 'none', got {method!r}")
    if isinstance(box_px, bool) or not isinstance(box_px, (int, np.integer)) or not 3 <= box_px <= 50:
        raise InputError("drift.box_px", f"must be an integer in [3, 50] px, got {box_px!r}")
    ref = frames[reference_index]
    if spot_rc is None:
        spot_rc = find_spot(ref, exclude, sigma_px=sigma_px, border_px=box_px + 1)
        how = "found automatically"
    else:
        r, c = spot_rc
        if not (0 <= r < ref.shape[0] and 0 <= c < ref.shape[1]):
            raise InputError("drift.spot", f"(row {r:g}, col {c:g}) is outside the {ref.shape[0]}×{ref.shape[1]} frame")
        how = "given"
    fref = fit_gaussian_spot(ref, spot_rc, box_px, frame_label=f"the reference frame {reference_index} (spot {how})")
    fits: list[SpotFit | None] = [None] * n
    fits[reference_index] = fref
    # track forwards and backwards from the reference, each frame starting at its neighbour's fit
    for order in (range(reference_index + 1, n), range(reference_index - 1, -1, -1)):
        prev = fref
        for k in order:
            f = fit_gaussian_spot(frames[k], (prev.row, prev.col), box_px,
                                  frame_label=f"frame {k} (t = {times[k]:g} s)")
            fits[k] = prev = f
    pos = np.array([[f.row, f.col] for f in fits])
    drift = pos - pos[reference_index]
    return DriftTrace("gaussian", times, drift, reference_index, (fref.row, fref.col), fits)


def rereferenced(trace: DriftTrace, reference_index: int) -> DriftTrace:
    """The same drift measured relative to another frame (that frame's drift becomes zero)."""
    d = trace.drift_rc - trace.drift_rc[reference_index]
    spot = None
    if trace.fits:
        f = trace.fits[reference_index]
        spot = (f.row, f.col)
    return DriftTrace(trace.method, trace.times_s, d, reference_index, spot if spot else trace.spot_rc, trace.fits)


def correct_drift(frames: np.ndarray, trace: DriftTrace) -> np.ndarray:
    """Frames shifted by −drift (cubic spline; edges continued with the nearest pixel)."""
    frames = np.asarray(frames, dtype=float)
    out = np.empty_like(frames)
    for k in range(frames.shape[0]):
        d = trace.drift_rc[k]
        if not np.any(d):
            out[k] = frames[k]
        else:
            out[k] = ndimage.shift(frames[k], -d, order=3, mode="nearest", prefilter=True)
    return out


def drift_extent_px(trace: DriftTrace) -> float:
    """Largest drift magnitude (px)."""
    return float(np.max(np.hypot(trace.drift_rc[:, 0], trace.drift_rc[:, 1]))) if trace.n_frames else 0.0


def pixels_lost(trace: DriftTrace) -> int:
    """Border width (px) made of extrapolated pixels after correction."""
    return int(math.ceil(np.max(np.abs(trace.drift_rc)))) if trace.n_frames else 0
