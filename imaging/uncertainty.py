"""Uncertainty of the calibrated S and A: a dense profile and noise resampling.

**Profile between the simulated S.** The model contrast per unit A, X(S), is known at the
simulated S only. Between them it is interpolated in u = log S by local quadratic
regression (LOESS: for every u a weighted quadratic fit to the simulated X within a window
of at least ±10 % in S or the five nearest simulations, tricube weights). That is linear in
the simulated X, so every quantity the error needs follows from a few inner products:

    e²(S) = mean(M²) − mean(M X(S))² / mean(X(S)²)        (A profiled out; Eq. 18)

(centred moments with ``fit_offset``). The regression also smooths the small jitter the
adaptive time stepping puts into X from one S to the next, which a spline through closely
spaced Brent points would turn into wiggles.

**Resampling the noise.** The measured contrast is perturbed with noise drawn from the
noise model measured before the current (:mod:`nmcfx.imaging.noise`: the reference noise,
shared by every frame, and each frame's own noise, spatially correlated like the data) and
re-fitted on the dense profile — no new simulation. The spread of the re-fitted S around
the fit of the unperturbed data is the error distribution; the intervals are the basic
(reverse-percentile) bootstrap intervals, 68 % (16–84 %) and 95 % (2.5–97.5 %). The same
is done with the reference noise alone and the frame noise alone, which tells where the
uncertainty comes from (more reference frames, or more photons per frame).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: LOESS window: at least this half-width in log S, and at least this many simulations.
MIN_HALF_WIDTH = 0.1
MIN_NODES = 5
#: Points of the dense profile.
DENSE_POINTS = 1201


def local_quadratic_weights(u_nodes: np.ndarray, u_eval: np.ndarray, *, q: int = MIN_NODES,
                            h_min: float = MIN_HALF_WIDTH) -> np.ndarray:
    """Linear weights W (n_eval, n_nodes) of local quadratic regression: f(u) ≈ W @ f(u_nodes)."""
    u_nodes = np.asarray(u_nodes, dtype=float)
    u_eval = np.asarray(u_eval, dtype=float)
    k = u_nodes.size
    deg = min(2, k - 1)
    du = u_nodes[None, :] - u_eval[:, None]  # (n_eval, k)
    d = np.abs(du)
    h = np.maximum(np.sort(d, axis=1)[:, min(q, k) - 1] * 1.05, h_min)
    sw = np.sqrt(np.clip(1.0 - (d / h[:, None]) ** 3, 0.0, None) ** 3)
    V = du[..., None] ** np.arange(deg + 1)  # (n_eval, k, deg+1)
    coef = np.linalg.pinv(V * sw[..., None]) * sw[:, None, :]  # (n_eval, deg+1, k): coefficients from node values
    return coef[:, 0, :]


@dataclass
class Profile:
    """Dense profile e(S) from the simulated S (module docstring)."""

    S_nodes: np.ndarray
    u_dense: np.ndarray
    W: np.ndarray  # (dense, nodes)
    Xm: np.ndarray  # (nodes, N) the model data of every node, flattened
    xx: np.ndarray  # (dense,) mean(X²) along the dense profile
    x: np.ndarray  # (dense,) mean(X)
    offset: bool

    @classmethod
    def build(cls, S_nodes, X_nodes, offset: bool, n_dense: int = DENSE_POINTS) -> "Profile":
        S_nodes = np.asarray(S_nodes, dtype=float)
        order = np.argsort(S_nodes)
        S_nodes = S_nodes[order]
        Xm = np.stack([np.asarray(X_nodes[i], dtype=float).ravel() for i in order])
        u = np.log(S_nodes)
        u_dense = np.linspace(u[0], u[-1], n_dense)
        W = local_quadratic_weights(u, u_dense)
        N = Xm.shape[1]
        G = Xm @ Xm.T / N
        xx = np.einsum("dk,kl,dl->d", W, G, W)
        x = W @ Xm.mean(axis=1)
        return cls(S_nodes, u_dense, W, Xm, xx, x, offset)

    @property
    def S_dense(self) -> np.ndarray:
        return np.exp(self.u_dense)

    def _moments(self, M):
        """mean(M²), mean(M), mean(M X_node) for data M (N,) or a batch (R, N)."""
        M = np.atleast_2d(M)
        N = M.shape[1]
        return (M * M).mean(axis=1), M.mean(axis=1), M @ self.Xm.T / N

    def _fit(self, mm, m, mxv):
        """e², A, B along the dense profile for each row of the batch."""
        mx = mxv @ self.W.T  # (R, dense)
        if self.offset:
            mxc = mx - m[:, None] * self.x[None]
            xxc = np.maximum(self.xx - self.x**2, 1e-300)[None]
            e2 = (mm - m * m)[:, None] - mxc**2 / xxc
            A = mxc / xxc
            B = m[:, None] - A * self.x[None]
        else:
            xx = np.maximum(self.xx, 1e-300)[None]
            e2 = mm[:, None] - mx**2 / xx
            A = mx / xx
            B = np.zeros_like(A)
        return e2, A, B

    def minimise(self, M):
        """(S, A, B, at_edge) at the minimum of the dense profile, for one data set or a batch."""
        e2, A, B = self._fit(*self._moments(M))
        j = np.argmin(e2, axis=1)
        n = self.u_dense.size
        at_edge = (j == 0) | (j == n - 1)
        jj = np.clip(j, 1, n - 2)
        rows = np.arange(e2.shape[0])
        y0, y1, y2 = e2[rows, jj - 1], e2[rows, jj], e2[rows, jj + 1]
        den = y0 - 2 * y1 + y2
        shift = np.where(den > 0, 0.5 * (y0 - y2) / np.where(den > 0, den, 1.0), 0.0)
        shift = np.where(at_edge, 0.0, np.clip(shift, -1.0, 1.0))
        du = self.u_dense[1] - self.u_dense[0]
        u = self.u_dense[j] + shift * du
        return np.exp(u), A[rows, j], B[rows, j], at_edge

    def curve(self, M) -> tuple[np.ndarray, np.ndarray]:
        """(S, e) of the dense profile for one data set."""
        e2, _, _ = self._fit(*self._moments(M))
        return self.S_dense, np.sqrt(np.maximum(e2[0], 0.0))


def resample(profile: Profile, M: np.ndarray, sampler, n: int, seed: int, *, batch: int = 25) -> dict:
    """Re-fit ``n`` noisy copies of ``M`` (frames, series) on the dense profile.

    ``sampler(rng, k)`` returns k perturbations shaped like M. Returns the re-fitted S, A, B,
    how many hit the edge of the simulated S range, and the fit of M itself on the profile.
    """
    rng = np.random.default_rng(seed)
    S0, A0, B0, edge0 = profile.minimise(M.ravel())
    out_S, out_A, out_B, edges = [], [], [], 0
    done = 0
    while done < n:
        k = min(batch, n - done)
        pert = sampler(rng, k)
        Ms = (M[None] + pert).reshape(k, -1)
        S, A, B, edge = profile.minimise(Ms)
        out_S.append(S)
        out_A.append(A)
        out_B.append(B)
        edges += int(edge.sum())
        done += k
    return {"S": np.concatenate(out_S), "A": np.concatenate(out_A), "B": np.concatenate(out_B), "edges": edges,
            "S0": float(S0[0]), "A0": float(A0[0]), "B0": float(B0[0]), "edge0": bool(edge0[0])}


def basic_interval(estimate: float, centre: float, samples: np.ndarray, level: float, *, log: bool = True,
                   open_low: bool = False, open_high: bool = False) -> tuple:
    """Reverse-percentile bootstrap interval at ``level`` (0.68, 0.95): estimate − (q − centre).
    ``log``: in log space (positive quantities such as S). None on a side known to be open."""
    lo_q, hi_q = 50 * (1 - level), 50 * (1 + level)
    if log:
        d = np.log(samples) - math.log(centre)
        q_lo, q_hi = np.percentile(d, [lo_q, hi_q])
        lo, hi = estimate * math.exp(-q_hi), estimate * math.exp(-q_lo)
    else:
        d = samples - centre
        q_lo, q_hi = np.percentile(d, [lo_q, hi_q])
        lo, hi = estimate - q_hi, estimate - q_lo
    return (None if open_low else float(lo)), (None if open_high else float(hi))


def spread(samples: np.ndarray, centre: float, *, log: bool = True) -> float:
    """Half the 16–84 % width of the deviations (relative for ``log``)."""
    d = np.log(samples) - math.log(centre) if log else samples - centre
    q16, q84 = np.percentile(d, [16, 84])
    return float(0.5 * (q84 - q16))
