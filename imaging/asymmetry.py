"""Asymmetry of the shrinking core: distance d between centres of mass.

Lun et al. (seed 000, Fig. 5d): d is the distance between the centre of mass of the
whole particle (O_COM) and that of its 'unreacted', Li-rich region, defined as the part
of the particle with differential intensity < 0.05. Fresh particles keep the Li-rich core
near O_COM ('symmetric'); aged particles with an uneven rocksalt layer shift it
('asymmetric'); the paper classifies particles by eye (Fig. 5e).

The classification rule here (our choice, configurable, recorded in the outputs):

    core frames   = frames whose Li-rich area is between ``core_min`` and ``core_max``
                    of the particle area (a core exists and is not the whole particle);
    asymmetric    ⇔ d > ``d_fraction`` · R_eq in at least ``frame_fraction`` of the core
                    frames, with R_eq = sqrt(particle area / π);
    undetermined  ⇔ fewer than ``min_core_frames`` core frames.

Defaults: d_fraction = 0.15, frame_fraction = 0.5, core_min = 0.02, core_max = 0.8,
min_core_frames = 3. For a 2.4 µm particle 0.15 R_eq is 180 nm, about 5 pixels of
34.7 nm and two thirds of the 265 nm optical resolution, so pixel noise on a symmetric
core does not reach it, while the offsets of 000 Fig. 5d (several hundred nm) do.
For lithiation (``reaction="discharge"``) the contrast is negative where Li entered, so
'unreacted' means contrast > −threshold.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from nmcfx.errors import InputError

#: Differential-intensity threshold of the Li-rich ('unreacted') region (000, Fig. 5d).
LI_RICH_THRESHOLD = 0.05


@dataclass(frozen=True)
class AsymmetryRule:
    d_fraction: float = 0.15
    frame_fraction: float = 0.5
    core_min: float = 0.02
    core_max: float = 0.8
    min_core_frames: int = 3

    def __post_init__(self):
        for name, lo, hi in (("d_fraction", 0.0, 2.0), ("frame_fraction", 0.0, 1.0), ("core_min", 0.0, 1.0),
                             ("core_max", 0.0, 1.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo < v <= hi:
                raise InputError(f"asymmetry.{name}", f"must be in ({lo:g}, {hi:g}], got {v!r}")
        if self.core_min >= self.core_max:
            raise InputError("asymmetry.core_min", f"must be < core_max ({self.core_max:g}), got {self.core_min:g}")
        if isinstance(self.min_core_frames, bool) or not isinstance(self.min_core_frames, int) \
                or self.min_core_frames < 1:
            raise InputError("asymmetry.min_core_frames", f"must be an integer >= 1, got {self.min_core_frames!r}")

    def describe(self) -> str:
        return (f"asymmetric if d > {self.d_fraction:g}·R_eq in at least {self.frame_fraction:.0%} of the frames "
                f"whose Li-rich area is {self.core_min:.0%}–{self.core_max:.0%} of the particle "
                f"(undetermined with fewer than {self.min_core_frames} such frames)")


@dataclass
class AsymmetryTrace:
    times_s: np.ndarray
    d_um: np.ndarray  # NaN where there is no Li-rich pixel
    offset_xy_um: np.ndarray  # (n, 2): Li-rich COM − particle COM, x = columns, y = rows
    rich_fraction: np.ndarray  # Li-rich area / particle area
    particle_com_rc: tuple[float, float]
    equivalent_radius_um: float
    threshold: float


def li_rich_mask(contrast: np.ndarray, mask: np.ndarray, threshold: float = LI_RICH_THRESHOLD,
                 reaction: str = "charge") -> np.ndarray:
    """(n, rows, cols) Li-rich pixels: inside the mask and contrast below the threshold
    (above −threshold for lithiation)."""
    c = np.nan_to_num(np.asarray(contrast, dtype=float), nan=0.0)
    if reaction == "charge":
        rich = c < threshold
    elif reaction == "discharge":
        rich = c > -threshold
    else:
        raise InputError("reaction", f"must be 'charge' or 'discharge', got {reaction!r}")
    return rich & np.asarray(mask, bool)[None]


def com_offset(contrast: np.ndarray, mask: np.ndarray, times_s, *, pixel_size_um: float,
               threshold: float = LI_RICH_THRESHOLD, reaction: str = "charge") -> AsymmetryTrace:
    """d(t) between the centre of mass of the mask and of its Li-rich part (uniform weights)."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < 10:
        raise InputError("li_rich_threshold", f"must be a contrast in (0, 10), got {threshold!r}")
    mask = np.asarray(mask, bool)
    rr, cc = np.nonzero(mask)
    com = np.array([rr.mean(), cc.mean()])
    rich = li_rich_mask(contrast, mask, threshold, reaction)
    n = rich.shape[0]
    counts = rich.reshape(n, -1).sum(axis=1).astype(float)
    R, C = np.mgrid[: mask.shape[0], : mask.shape[1]]
    with np.errstate(invalid="ignore", divide="ignore"):
        r_rich = (rich * R[None]).reshape(n, -1).sum(axis=1) / counts
        c_rich = (rich * C[None]).reshape(n, -1).sum(axis=1) / counts
    dx = (c_rich - com[1]) * pixel_size_um
    dy = (r_rich - com[0]) * pixel_size_um
    area_um2 = mask.sum() * pixel_size_um**2
    return AsymmetryTrace(np.asarray(times_s, dtype=float), np.hypot(dx, dy), np.column_stack([dx, dy]),
                          counts / mask.sum(), (float(com[0]), float(com[1])), math.sqrt(area_um2 / math.pi),
                          float(threshold))


def classify(trace: AsymmetryTrace, rule: AsymmetryRule = AsymmetryRule()) -> dict:
    """Apply the rule (module docstring) to a d(t) trace; returns label and the numbers behind it."""
    core = (trace.rich_fraction >= rule.core_min) & (trace.rich_fraction <= rule.core_max) & np.isfinite(trace.d_um)
    limit = rule.d_fraction * trace.equivalent_radius_um
    n_core = int(core.sum())
    n_off = int((trace.d_um[core] > limit).sum())
    frac = n_off / n_core if n_core else float("nan")
    if n_core < rule.min_core_frames:
        label = "undetermined"
    else:
        label = "asymmetric" if frac >= rule.frame_fraction else "symmetric"
    d_core = trace.d_um[core]
    return {
        "label": label,
        "rule": rule.describe(),
        "parameters": asdict(rule),
        "equivalent_radius_um": trace.equivalent_radius_um,
        "d_limit_um": limit,
        "core_frames": n_core,
        "off_centre_frames": n_off,
        "off_centre_fraction": frac,
        "d_max_um": float(np.max(d_core)) if n_core else None,
        "d_median_um": float(np.median(d_core)) if n_core else None,
        "li_rich_threshold": trace.threshold,
    }
