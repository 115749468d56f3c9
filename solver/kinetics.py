"""Butler–Volmer kinetics with a series resistance (a rocksalt surface film), pure NumPy.

Two pieces, both evaluated node by node (no DOLFINx here):

1. **The film as a series resistance** — :func:`film_resistance`. Lun et al. 2025 (seed 000)
   attribute partial surface blocking to a rocksalt layer 0–4 nm thick whose Li hopping
   barrier is 150–200 meV higher than in the layered phase, "corresponding to an ~3000 times
   larger diffusivity (estimated by exp(200 meV/kT))" in the layered phase. Li⁺ crosses the
   film by the same hopping law as in the particle (seed 002 Eq. 12 with the electrical
   potential kept: J = −(c D/RT) ∇μ̃, μ̃ the electrochemical potential, D the jump/self
   diffusivity — D_eff = D_Li/S in the particle, D_eff/ratio in the film). In a film of
   thickness δ ≪ the particle, at steady state the flux is uniform, so the drop of μ̃ across
   it is linear in the current density i = F J:

       η_film = Δμ̃/F = i · R_film,    R_film = R_g T δ / (F² c D_film)   (Ω m²),

   with c = N_L θ the Li concentration in the film (taken equal to that of the layered
   surface it grows on, θ the surface occupancy) and D_film = D_eff(θ) / ratio,
   ratio = exp(ΔE/k_B T) (:func:`diffusivity_ratio`; 150–200 meV → 340–2400 at 298 K; 000's
   "~3000" is exp(8), i.e. 200 meV with kT = 25 meV). This is the Nernst–Einstein
   conductivity σ = F² c D/(R_g T) of the film, R_film = δ/σ. The film thickness is the
   only geometric input; R_film grows as the surface fills (D_eff falls by ~70× towards
   θ → 1 in the default table), so the flux ratio of a covered sector becomes an outcome
   of thickness, occupancy and current rather than an input.

2. **The implicit nodal current** — :func:`butler_volmer_series`. With the film in series,
   the overpotential η = φ_s − φ_l − V_oc(θ) is shared between the film (R i) and the
   charge transfer:

       i = i₀ [exp(α_a f (η − R i)) − exp(−α_c f (η − R i))],   f = F/(R_g T).

   Solved for i with u = f (η − R i) as the unknown: h(u) = f R i₀ B(u) + u − f η = 0,
   B(u) = e^{α_a u} − e^{−α_c u}, is strictly increasing (h' ≥ 1) with its root between
   0 and f η, so a safeguarded Newton iteration inside that bracket converges for any R ≥ 0
   and any η (no overflow: |u| ≤ |f η|, and the start is at most ln(1 + |η|/(R i₀))/α from zero). The
   derivatives follow from the implicit-function theorem on i − i₀ B(f(η − R i)) = 0:

       ∂i/∂η  = i₀ f B'(u) / D,   ∂i/∂i₀ = B(u) / D,   ∂i/∂R = −i i₀ f B'(u) / D,
       D = 1 + i₀ f R B'(u).

   R = 0 is plain Butler–Volmer; for R i₀ f ≫ 1 the current tends to η/R (the film limits).

Usage::

    >>> import numpy as np
    >>> from nmcfx.solver.kinetics import butler_volmer_series, film_resistance
    >>> film = film_resistance(1.0, theta=0.8, D_eff_m2_s=1e-16, site_concentration=49044.0)
    >>> sol = butler_volmer_series(np.array([0.05, -0.05]), i0=0.5, R=film.resistance)
    >>> bool(np.all(np.abs(sol.current) < 0.05 / film.resistance))
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nmcfx.materials.constants import FARADAY, GAS_CONSTANT

#: Boltzmann constant in eV K⁻¹ (CODATA 2018, exact).
BOLTZMANN_EV_K = 8.617333262e-5


def diffusivity_ratio(barrier_meV, temperature_K: float = 298.15):
    """D_layered / D_rocksalt = exp(ΔE / k_B T) for a barrier ΔE higher by ``barrier_meV``.

    >>> round(float(diffusivity_ratio(200.0)))  # seed 000 quotes ~3000 (kT = 25 meV)
    2403
    """
    return np.exp(np.asarray(barrier_meV, dtype=float) * 1e-3 / (BOLTZMANN_EV_K * temperature_K))


@dataclass(frozen=True)
class FilmResistance:
    """Area-specific resistance of a surface film and its θ-derivative (both Ω m², per unit θ)."""

    resistance: np.ndarray
    d_resistance_dtheta: np.ndarray


def film_resistance(thickness_nm, theta, D_eff_m2_s, site_concentration: float, *, dD_eff_dtheta=None,
                    ratio: float = 3000.0, temperature_K: float = 298.15) -> FilmResistance:
    """R_film = R_g T δ ratio / (F² N_L θ D_eff(θ)) in Ω m² (module docstring, part 1).

    ``thickness_nm`` δ (nm), ``theta`` the surface occupancy, ``D_eff_m2_s`` the layered
    phase's D_eff at that occupancy (m² s⁻¹), ``site_concentration`` N_L (mol m⁻³), ``ratio``
    D_layered/D_film (:func:`diffusivity_ratio` of a barrier). With ``dD_eff_dtheta`` the
    θ-derivative is exact (dR/dθ = −R (1/θ + D_eff'/D_eff)); without it, D_eff is treated as
    constant. Arrays broadcast.

    >>> r = film_resistance(1.0, 0.95, 1.6e-17 / 3.5, 49044.0)   # 1 nm at full lithiation
    >>> round(float(r.resistance), 2)   # Ω m²: 1 V at 0.29 A/m² (100 mA/g, 2.4 µm disk)
    3.75
    """
    delta = np.asarray(thickness_nm, dtype=float) * 1e-9
    th = np.asarray(theta, dtype=float)
    d = np.asarray(D_eff_m2_s, dtype=float)
    if np.any(delta < 0) or np.any(th <= 0) or np.any(d <= 0) or site_concentration <= 0 or ratio <= 0:
        raise ValueError("film_resistance needs thickness >= 0, theta > 0, D_eff > 0, N_L > 0, ratio > 0")
    r = GAS_CONSTANT * temperature_K * delta * ratio / (FARADAY**2 * site_concentration * th * d)
    log_slope = 1.0 / th + (0.0 if dD_eff_dtheta is None else np.asarray(dD_eff_dtheta, dtype=float) / d)
    return FilmResistance(r, -r * log_slope)


@dataclass(frozen=True)
class SeriesBVSolution:
    """Nodal solution of the implicit Butler–Volmer equation (arrays of the broadcast shape).

    ``current`` i (A m⁻², + = anodic = delithiation); ``d_eta`` ∂i/∂η (A m⁻² V⁻¹); ``d_i0``
    ∂i/∂i₀ (–); ``d_R`` ∂i/∂R (A m⁻² / Ω m²); ``kinetic_overpotential`` η − R i (V);
    ``iterations`` Newton iterations used (the maximum over the nodes).
    """

    current: np.ndarray
    d_eta: np.ndarray
    d_i0: np.ndarray
    d_R: np.ndarray
    kinetic_overpotential: np.ndarray
    iterations: int


def _bv(u, alpha_a, alpha_c):
    """B(u) = e^{α_a u} − e^{−α_c u} (accurate near 0) and B'(u)."""
    b = np.expm1(alpha_a * u) - np.expm1(-alpha_c * u)
    db = alpha_a * np.exp(alpha_a * u) + alpha_c * np.exp(-alpha_c * u)
    return b, db


def butler_volmer_series(eta, i0, R=0.0, *, alpha_a: float = 0.5, alpha_c: float = 0.5,
                         temperature_K: float = 298.15, rtol: float = 1e-13,
                         max_iter: int = 200) -> SeriesBVSolution:
    """Solve i = i₀[exp(α_a f(η − R i)) − exp(−α_c f(η − R i))] node by node.

    ``eta`` η = φ_s − φ_l − V_oc (V), ``i0`` (A m⁻², > 0), ``R`` series area-specific
    resistance (Ω m², ≥ 0); arrays broadcast. Converges for every R ≥ 0 and η (module
    docstring, part 2); raises ``RuntimeError`` if some node has not converged after
    ``max_iter`` iterations (it does not happen for finite inputs).

    >>> s = butler_volmer_series(0.1, i0=1.0, R=0.0)
    >>> bool(np.isclose(s.current, np.exp(0.5 * 0.1 * 38.9217) - np.exp(-0.5 * 0.1 * 38.9217), rtol=1e-4))
    True
    >>> round(float(butler_volmer_series(1.0, i0=1.0, R=100.0).current * 100.0), 4)  # → η/R
    0.9997
    """
    if not (0.0 < alpha_a and 0.0 < alpha_c):
        raise ValueError("alpha_a and alpha_c must be > 0")
    f = FARADAY / (GAS_CONSTANT * temperature_K)
    eta, i0, R = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in (eta, i0, R)))
    if np.any(i0 <= 0) or np.any(R < 0) or not np.all(np.isfinite(eta)):
        raise ValueError("butler_volmer_series needs finite eta, i0 > 0 and R >= 0")
    target = f * eta  # h(u) = f R i0 B(u) + u − f η
    k = f * R * i0
    # bracket [lo, hi] of the root; start at the end of the bracket nearer to it:
    # for η > 0, u_a = ln(1 + fη/(f R i0))/α_a has h(u_a) ≥ 0, so the root is ≤ min(fη, u_a)
    with np.errstate(divide="ignore"):
        ua = np.where(k > 0, np.log1p(np.abs(target) / np.where(k > 0, k, 1.0)), np.inf)
    lo = np.where(eta >= 0, 0.0, np.maximum(target, -ua / alpha_c))
    hi = np.where(eta >= 0, np.minimum(target, ua / alpha_a), 0.0)
    u = np.where(eta >= 0, hi, lo)
    scale = np.maximum(np.abs(target), 1.0)
    it = 0
    for it in range(1, max_iter + 1):
        b, db = _bv(u, alpha_a, alpha_c)
        h = k * b + u - target
        lo = np.where(h < 0, u, lo)
        hi = np.where(h > 0, u, hi)
        done = np.abs(h) <= rtol * scale
        if np.all(done):
            break
        step = u - h / (k * db + 1.0)
        outside = (step <= lo) | (step >= hi)
        u = np.where(done, u, np.where(outside, 0.5 * (lo + hi), step))
    else:
        raise RuntimeError(f"butler_volmer_series: no convergence in {max_iter} iterations")
    b, db = _bv(u, alpha_a, alpha_c)
    current = i0 * b
    denom = 1.0 + k * db
    d_eta = i0 * f * db / denom
    return SeriesBVSolution(current=current, d_eta=d_eta, d_i0=b / denom, d_R=-current * d_eta,
                            kinetic_overpotential=u / f, iterations=it)
