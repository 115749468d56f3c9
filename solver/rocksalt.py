"""From a rocksalt film thickness to the blocking factor η of a surface sector (Lun 2025).

Lun et al. (seed 000) model a partially reconstructed surface by a flux ratio
η = j_RSL / j_NMC and attribute it to a rocksalt layer 0–4 nm thick whose Li diffusivity is
~3000× lower than that of the layered phase. A simple series-resistance estimate maps one
onto the other: Li leaving through a sector crosses the particle (resistance ~ L / D_layer,
L the particle's equivalent radius) and then the film (δ / D_RS), so relative to a bare
surface

    η(δ) = (L / D) / (L / D + δ / D_RS) = 1 / (1 + δ / δ_c),   δ_c = L · D_RS / D = L / ratio.

With L = R (the equivalent radius) a 2.4 µm particle and ratio = 3000 give δ_c = 0.4 nm.
``studies/lun2025_rocksalt_shell.py`` resolves the film (D_chem/3000 in a meshed layer,
Butler–Volmer surface, 0.25–4 nm): the form 1/(1 + δ/δ_c) fits the charge-averaged flux
ratio over the whole range, with δ_c ≈ 0.58 nm (0.50–0.65) for the default material, i.e.
L ≈ 1.45 R — the default ``length_factor`` below (0.65 with the previous default tables,
whose D_chem near θ₀ was 4× larger). The resolved ratio is not constant in time (it starts
lower and rises as the particle-side depletion layer grows), which a single η cannot
follow; see ``studies/lun2025_rocksalt_shell.md``.
"""

from __future__ import annotations

import math


#: L / R fitted to the resolved-film study (median δ_c ≈ 0.58 nm for a 2.4 µm disk at ratio 3000)
LENGTH_FACTOR = 1.45


def critical_thickness_nm(particle, ratio: float, length_factor: float = LENGTH_FACTOR) -> float:
    """δ_c = L / ratio in nm with L = length_factor × R, R the equivalent radius
    (2D: √(A/π); 3D: 2 × volume / reactive area, exact for a cylinder)."""
    if particle.dim == 2:
        radius_um = math.sqrt(particle.measure / math.pi)
    else:
        radius_um = 2.0 * particle.measure / particle.boundary_measure
    return length_factor * radius_um * 1e3 / ratio


def eta_from_thickness(thickness_nm: float, critical_nm: float) -> float:
    return 1.0 / (1.0 + thickness_nm / critical_nm)


def sector_weights(surface, particle, material=None) -> dict[str, float]:
    """η per reactive sector: 1 unless blocked (η given) or, with the prescribed-flux model, covered
    by a rocksalt film (δ given → η(δ)). With Butler–Volmer a film is a series resistance in the
    kinetics instead (:func:`film_thicknesses`), and its sector keeps η = 1."""
    reactive = [s for s in particle.reactive_sectors if s in particle.sectors]
    weights = {s: 1.0 for s in reactive}
    weights.update(surface.blocking)
    if surface.rocksalt_thickness_nm and surface.model != "butler_volmer":
        dc = critical_thickness_nm(particle, surface.rocksalt_diffusivity_ratio)
        for s, delta in surface.rocksalt_thickness_nm.items():
            weights[s] = eta_from_thickness(delta, dc)
    return weights


def film_thicknesses(surface) -> dict[str, float]:
    """Sector → rocksalt thickness (nm) that Butler–Volmer runs treat as a series resistance
    (:func:`nmcfx.solver.kinetics.film_resistance`); empty for the prescribed-flux model."""
    if surface.model != "butler_volmer":
        return {}
    return {s: float(d) for s, d in surface.rocksalt_thickness_nm.items() if d > 0}
