"""Camera noise measured from the frames before the current, and noise resampling.

Every contrast frame is c_k = I_k/I₀ − 1. Two kinds of noise enter it:

* the frame's own noise (shot and read noise of I_k), independent from frame to frame;
* the noise of the reference I₀ (the mean of the ``reference_average`` frames before the
  current), which is **shared by every frame**: a reference (1 + ε) too bright turns every
  contrast c into (1 + c)/(1 + ε) − 1 ≈ c − ε(1 + c). Neither a χ² rule over frames nor a
  bootstrap over frames can see it, and at real photon counts it dominates the error of S.

Both are measured from the frames before the current (their contrast must be pure noise):
the per-pixel variance of I_j/I₀ over those frames is σ_I²/I₀², whatever I₀ is. Pooled over
pixels, it is modelled as var(I) = a + b·I (read noise + shot noise), so the noise of a
later frame whose intensity has changed follows too. Neighbouring pixels are correlated
by the drift correction's interpolation: the lag-1 correlations along rows and columns are
measured and reproduced. An excess of the frame-to-frame scatter of the particle mean over
what the pixel noise explains is common-mode noise (illumination flicker, focus), kept as
``flicker`` (relative). With a single frame before the current the noise comes from
second differences in time of the later frames (a slowly varying signal cancels).

:meth:`NoiseModel.sample` draws contrast perturbations with all of this, which the
calibration adds to the measured data and re-fits on the simulations it already has.

    >>> nm = measure_noise(pre_contrast, i0, mask, reference_average=5)   # doctest: +SKIP
    >>> nm.sigma_rel(i0).mean(), nm.reference_sigma(i0).mean()           # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

#: Below this many pre-current frames the noise comes from second differences in time.
MIN_PRE_FRAMES = 2


@dataclass
class NoiseModel:
    """var(I) = a + b·I (intensity units of I₀), lag-1 pixel correlations, common-mode flicker."""

    a: float
    b: float
    rho_row: float = 0.0
    rho_col: float = 0.0
    flicker: float = 0.0  # relative RMS of a whole-frame brightness fluctuation
    reference_average: int = 1
    source: str = "pre-current frames"
    frames_used: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def variance(self, intensity) -> np.ndarray:
        return np.maximum(self.a + self.b * np.asarray(intensity, dtype=float), 0.0)

    def sigma_rel(self, i0, contrast=0.0) -> np.ndarray:
        """Relative noise of one frame at I = I₀(1 + c): sqrt(var(I))/I₀."""
        i0 = np.asarray(i0, dtype=float)
        return np.sqrt(self.variance(i0 * (1.0 + np.asarray(contrast, dtype=float)))) / np.maximum(i0, 1e-300)

    def reference_sigma(self, i0) -> np.ndarray:
        """Relative noise of I₀ (mean of ``reference_average`` frames)."""
        return self.sigma_rel(i0) / math.sqrt(self.reference_average)

    def correlation_factor(self) -> float:
        """Variance of a large-region mean relative to independent pixels."""
        return _kernel_sum2(self.rho_row) * _kernel_sum2(self.rho_col)

    def sample(self, rng, i0, region, contrast, n: int, *, reference=True, frames=True) -> np.ndarray:
        """``n`` perturbations (n, frames, region pixels) of the measured contrast at ``region``.

        ``contrast`` (frames, region pixels): the measured contrast, which sets each frame's
        intensity. Linearised in the noise: δc_k = ε_k − (1 + c_k) ε_ref, with ε_k the frame's
        relative noise and ε_ref that of I₀ (shared by all frames), both spatially correlated
        like the measurement, each with its common-mode flicker.
        """
        region = np.asarray(region, bool)
        rows = np.flatnonzero(region.any(axis=1))
        cols = np.flatnonzero(region.any(axis=0))
        box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        sub = region[box]
        i0r = np.asarray(i0, dtype=float)[box][sub]
        c = np.asarray(contrast, dtype=float)
        nf = c.shape[0]
        out = np.zeros((n, nf, i0r.size))
        if frames:
            sig = self.sigma_rel(i0r[None, :], c)  # (frames, pixels)
            out += sig[None] * self._correlated(rng, (n, nf) + sub.shape)[:, :, sub]
            if self.flicker > 0:
                out += self.flicker * rng.standard_normal((n, nf, 1))
        if reference:
            eps = self.reference_sigma(i0r)[None] * self._correlated(rng, (n,) + sub.shape)[:, sub]  # (n, pixels)
            if self.flicker > 0:
                eps = eps + self.flicker / math.sqrt(self.reference_average) * rng.standard_normal((n, 1))
            out -= (1.0 + c)[None] * eps[:, None, :]
        return out

    def _correlated(self, rng, shape) -> np.ndarray:
        """Unit-variance Gaussian noise with the measured lag-1 correlations (last two axes)."""
        from scipy import ndimage

        w = rng.standard_normal(shape, dtype=np.float32)
        for axis, rho in ((-2, self.rho_row), (-1, self.rho_col)):
            al = _kernel_alpha(rho)
            if al > 0:
                w = ndimage.correlate1d(w, [al, 1.0, al], axis=axis, mode="reflect")
                w *= np.float32(1.0 / math.sqrt(1 + 2 * al * al))
        return w


def _kernel_alpha(rho: float) -> float:
    """α of the kernel [α, 1, α] whose output has lag-1 correlation ρ: 2α/(1 + 2α²) = ρ."""
    rho = float(np.clip(rho, 0.0, 0.7))
    if rho <= 1e-6:
        return 0.0
    return (1.0 - math.sqrt(max(1.0 - 2.0 * rho * rho, 0.0))) / (2.0 * rho)


def _kernel_sum2(rho: float) -> float:
    al = _kernel_alpha(rho)
    return (1 + 2 * al) ** 2 / (1 + 2 * al * al)


def _lag1(res: np.ndarray, inside: np.ndarray, axis: int) -> float:
    """Pooled lag-1 correlation of residual maps (frames, rows, cols) along ``axis`` within ``inside``."""
    a = np.moveaxis(res, axis, -1)
    m = np.moveaxis(inside[None].repeat(res.shape[0], 0), axis, -1)
    both = m[..., 1:] & m[..., :-1]
    x, y = a[..., 1:][both], a[..., :-1][both]
    den = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
    return float((x * y).sum() / den) if den > 0 else 0.0


def _fit_variance(i0: np.ndarray, var_i: np.ndarray) -> tuple[float, float]:
    """var(I) = a + b I by least squares on intensity-binned means (a, b ≥ 0)."""
    i0, var_i = i0.ravel(), var_i.ravel()
    ok = np.isfinite(i0) & np.isfinite(var_i) & (i0 > 0)
    i0, var_i = i0[ok], var_i[ok]
    if i0.size < 4:
        return float(np.mean(var_i)) if var_i.size else 0.0, 0.0
    edges = np.unique(np.quantile(i0, np.linspace(0, 1, 13)))
    if edges.size < 3:
        return float(np.mean(var_i)), 0.0
    idx = np.clip(np.searchsorted(edges, i0, side="right") - 1, 0, edges.size - 2)
    xs, ys, ws = [], [], []
    for k in range(edges.size - 1):
        sel = idx == k
        if sel.sum() >= 3:
            xs.append(i0[sel].mean())
            ys.append(var_i[sel].mean())
            ws.append(sel.sum())
    xs, ys, ws = np.array(xs), np.array(ys), np.array(ws, dtype=float)
    if xs.size < 2 or np.ptp(xs) < 0.05 * xs.mean():
        return 0.0, float(np.average(ys / xs, weights=ws))  # one intensity level: shot-noise-like
    A = np.column_stack([np.ones_like(xs), xs]) * np.sqrt(ws)[:, None]
    a, b = np.linalg.lstsq(A, ys * np.sqrt(ws), rcond=None)[0]
    if b < 0:
        return float(np.average(ys, weights=ws)), 0.0
    if a < 0:
        return 0.0, float(np.sum(ws * xs * ys) / np.sum(ws * xs * xs))
    return float(a), float(b)


def measure_noise(contrast: np.ndarray, i0: np.ndarray, mask: np.ndarray, pre: np.ndarray, *,
                  reference_average: int = 1) -> NoiseModel:
    """Noise model from a contrast stack (frames, rows, cols), its I₀ and the particle mask.

    ``pre``: boolean (frames,) marking the frames before the current (including the
    reference frames). With at least :data:`MIN_PRE_FRAMES` of them, their scatter gives
    the noise; otherwise second differences in time of the later frames do.
    """
    c = np.asarray(contrast, dtype=float)
    i0 = np.asarray(i0, dtype=float)
    mask = np.asarray(mask, bool)
    pre = np.asarray(pre, bool)
    valid = np.all(np.isfinite(c), axis=0) & np.isfinite(i0) & (i0 > 0)
    n_pre = int(pre.sum())
    if n_pre >= MIN_PRE_FRAMES:
        cp = c[pre]
        res = cp - cp.mean(axis=0, keepdims=True)
        var_rel = (res**2).sum(axis=0) / (n_pre - 1)
        source, used = "pre-current frames", n_pre
    else:
        post = c[~pre]
        if post.shape[0] < 3:
            return NoiseModel(0.0, 0.0, reference_average=reference_average, source="none (too few frames)")
        res = post[1:-1] - 0.5 * (post[:-2] + post[2:])
        var_rel = (res**2).mean(axis=0) / 1.5
        res = res / math.sqrt(1.5)
        source, used = "second differences in time (one frame before the current)", int(post.shape[0])
    a, b = _fit_variance(i0[valid], (var_rel * i0**2)[valid])
    inner = mask & valid
    from scipy import ndimage

    core = ndimage.binary_erosion(inner, iterations=2)
    core = core if core.sum() >= 20 else inner
    rho_r, rho_c = _lag1(res, core, 1), _lag1(res, core, 2)
    nm = NoiseModel(a, b, max(rho_r, 0.0), max(rho_c, 0.0), 0.0, int(reference_average), source, used)
    # common-mode flicker: scatter of the particle mean beyond what the pixel noise explains
    if n_pre >= 4:
        # frame-to-frame changes of the particle mean (a steadily drifting baseline is not a flicker)
        d = np.diff(res[:, core].mean(axis=1))
        observed = float(np.var(d, ddof=1)) / 2.0
        predicted = float(np.mean(nm.sigma_rel(i0[core]) ** 2)) / core.sum() * nm.correlation_factor()
        # only a clear excess counts (the scatter of a few differences is itself uncertain)
        excess = observed - predicted * (1.0 + 3.0 * math.sqrt(2.0 / (n_pre - 2)))
        nm.flicker = math.sqrt(excess) if excess > 0 else 0.0
    return nm
