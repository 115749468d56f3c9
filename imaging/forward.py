"""Forward model of the microscope: simulated θ field → synthetic image stack.

Contrast model (Xu et al., Joule 2022, Supplementary Eq. 17): the total contrast of a
point of the particle is Ī = I/I₀ − 1 = A (θ₀ − θ); so the scene intensity is

    I_k(x) = I₀(x) · (1 + A (θ₀ − θ_k(x)))   on the particle,   I₀(x) elsewhere,

with I₀ the reference-frame intensity map (particle brightness with an optional smooth
texture, darker background). The camera then sees the scene blurred by the optical PSF,
displaced by the stage drift, plus a bright sub-diffraction marker spot away from the
particle (imaged as the PSF itself), sampled on the pixel grid, with shot and read noise.

PSF: the setup's lateral resolution is 265 nm at 740 nm (Xu 2022, Experimental
Procedures; this is λ/(2 NA) for the NA 1.4 oil objective). We take it as the FWHM of a
Gaussian PSF, σ = FWHM / (2 √(2 ln 2)) = 265 nm / 2.355 = 112.5 nm = 3.24 px of 34.7 nm.
This agrees with the best Gaussian fit to an Airy disc, σ ≈ 0.21 λ/NA = 111 nm
(Zhang, Zerubia & Olivo-Marin, Appl. Opt. 46, 1819 (2007)), whose FWHM 0.51 λ/NA is
≈ λ/(2 NA). Blur and drift are applied together in Fourier space on a padded canvas
(exact sub-pixel shifts of the blurred scene, no wrap-around into the field of view).

Sampling θ at frame times: :func:`simulate_theta_frames` runs a :class:`Simulation`
whose snapshot times are the frame times (steps land on them exactly) with a
:class:`ThetaFrameProbe` observer that evaluates θ on the pixel grid
(:class:`~nmcfx.solver.transport.PointProbe`, parallel-safe). Coordinates: pixel (row r,
col c) has its centre at x = x₀ + c·p, y = y₀ + r·p (µm), the mesh's own coordinates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from nmcfx.errors import InputError

from .stack import DEFAULT_PIXEL_SIZE_UM, ImageStack

#: FWHM = 2 √(2 ln 2) σ for a Gaussian.
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
#: Lateral resolution of the setup (Xu 2022), µm.
DEFAULT_RESOLUTION_UM = 0.265
#: Contrast calibration of Xu 2022 (Fig. S2): A = 1/0.95, θ₀ = 0.95.
DEFAULT_A = 1.0 / 0.95
DEFAULT_THETA0 = 0.95


def psf_sigma_um(resolution_um: float = DEFAULT_RESOLUTION_UM) -> float:
    """Gaussian σ of a PSF whose FWHM is the stated resolution."""
    return resolution_um / FWHM_PER_SIGMA


@dataclass(frozen=True)
class Microscope:
    """Parameters of the imaging forward model (intensities in arbitrary units)."""

    pixel_size_um: float = DEFAULT_PIXEL_SIZE_UM
    resolution_um: float = DEFAULT_RESOLUTION_UM
    contrast_A: float = DEFAULT_A
    theta0: float = DEFAULT_THETA0
    particle_intensity: float = 1.0
    background: float = 0.3
    texture: float = 0.0  # relative RMS of a smooth random variation of I₀ over the particle
    texture_length_um: float = 0.3
    marker_rc: tuple[float, float] | None = None  # marker spot position in the reference (undrifted) frame, px
    marker_amplitude: float = 1.0  # peak height of the (blurred) marker above the background
    photons_per_unit: float | None = None  # shot noise: Poisson counts per unit intensity (None: off)
    read_noise: float = 0.0  # Gaussian noise, intensity units
    seed: int | None = 0

    @property
    def psf_sigma_um(self) -> float:
        return psf_sigma_um(self.resolution_um)

    @property
    def psf_sigma_px(self) -> float:
        return self.psf_sigma_um / self.pixel_size_um


@dataclass(frozen=True)
class CameraGrid:
    """Pixel grid in mesh coordinates: pixel (r, c) centre at (x0 + c p, y0 + r p) µm."""

    shape: tuple[int, int]
    pixel_size_um: float = DEFAULT_PIXEL_SIZE_UM
    origin_um: tuple[float, float] = (0.0, 0.0)

    @classmethod
    def centered(cls, center_um, shape, pixel_size_um: float = DEFAULT_PIXEL_SIZE_UM, offset_px=(0.0, 0.0)):
        """Grid of ``shape`` whose middle is ``center_um`` (+ ``offset_px`` (row, col))."""
        rows, cols = shape
        x0 = center_um[0] - (0.5 * (cols - 1) + offset_px[1]) * pixel_size_um
        y0 = center_um[1] - (0.5 * (rows - 1) + offset_px[0]) * pixel_size_um
        return cls((int(rows), int(cols)), float(pixel_size_um), (float(x0), float(y0)))

    def points_um(self) -> np.ndarray:
        rows, cols = self.shape
        r, c = np.mgrid[:rows, :cols]
        return np.column_stack([self.origin_um[0] + c.ravel() * self.pixel_size_um,
                                self.origin_um[1] + r.ravel() * self.pixel_size_um])

    def to_rc(self, xy_um) -> tuple[float, float]:
        x, y = xy_um[0], xy_um[1]
        return (y - self.origin_um[1]) / self.pixel_size_um, (x - self.origin_um[0]) / self.pixel_size_um

    def to_dict(self) -> dict:
        return {"shape": list(self.shape), "pixel_size_um": self.pixel_size_um, "origin_um": list(self.origin_um)}


# ---------------------------------------------------------------------------- rendering
def _texture(shape, scope: Microscope, rng) -> np.ndarray:
    if scope.texture <= 0:
        return np.zeros(shape)
    from scipy import ndimage

    t = ndimage.gaussian_filter(rng.standard_normal(shape), scope.texture_length_um / scope.pixel_size_um)
    return scope.texture * t / max(float(t.std()), 1e-30)


def render_stack(theta: np.ndarray, times_s, scope: Microscope = Microscope(), *, drift_rc=None,
                 inside: np.ndarray | None = None) -> ImageStack:
    """Synthetic camera frames from θ on the pixel grid.

    ``theta``: (n, rows, cols) occupancy, NaN outside the particle (or give ``inside``).
    ``drift_rc``: (n, 2) scene displacement in pixels (row, col) per frame.
    Returns an :class:`ImageStack` whose ``info["truth"]`` records the model parameters.
    """
    theta = np.asarray(theta, dtype=float)
    if theta.ndim != 3:
        raise InputError("theta", f"must be (frames, rows, cols), got shape {theta.shape}")
    n, rows, cols = theta.shape
    if inside is None:
        inside = np.isfinite(theta[0])
    inside = np.asarray(inside, bool)
    if not inside.any():
        raise InputError("theta", "no pixel of the grid lies on the particle")
    drift = np.zeros((n, 2)) if drift_rc is None else np.asarray(drift_rc, dtype=float).reshape(n, 2)
    rng = np.random.default_rng(scope.seed)
    sig = scope.psf_sigma_px
    i0 = np.full((rows, cols), scope.background, dtype=float)
    i0[inside] = scope.particle_intensity * (1.0 + _texture((rows, cols), scope, rng))[inside]
    pad = int(math.ceil(np.abs(drift).max() + 5.0 * sig)) + 2
    R, C = rows + 2 * pad, cols + 2 * pad
    fr = np.fft.fftfreq(R)[:, None]
    fc = np.fft.fftfreq(C)[None, :]
    gauss = np.exp(-2.0 * math.pi**2 * sig**2 * (fr**2 + fc**2))
    rr, cc = np.mgrid[:rows, :cols].astype(float)
    frames = np.empty((n, rows, cols))
    for k in range(n):
        dth = np.where(inside, scope.theta0 - np.nan_to_num(theta[k], nan=scope.theta0), 0.0)
        scene = i0 * (1.0 + scope.contrast_A * dth)
        canvas = np.pad(scene, pad, mode="edge")
        phase = np.exp(-2j * math.pi * (fr * drift[k, 0] + fc * drift[k, 1]))
        img = np.fft.ifft2(np.fft.fft2(canvas) * gauss * phase).real[pad:pad + rows, pad:pad + cols]
        if scope.marker_rc is not None:
            mr, mc = scope.marker_rc[0] + drift[k, 0], scope.marker_rc[1] + drift[k, 1]
            img = img + scope.marker_amplitude * np.exp(-((rr - mr) ** 2 + (cc - mc) ** 2) / (2.0 * sig * sig))
        frames[k] = img
    if scope.photons_per_unit:
        frames = rng.poisson(np.clip(frames, 0, None) * scope.photons_per_unit) / scope.photons_per_unit
    if scope.read_noise > 0:
        frames = frames + rng.normal(0.0, scope.read_noise, frames.shape)
    truth = {k: (list(v) if isinstance(v, tuple) else v) for k, v in scope.__dict__.items()}
    truth["psf_sigma_px"] = sig
    truth["drift_rc"] = drift.tolist()
    return ImageStack(frames, np.asarray(times_s, dtype=float), scope.pixel_size_um, "synthetic",
                      {"format": "synthetic", "truth": truth})


def blur_contrast(dtheta: np.ndarray, inside: np.ndarray, sigma_px: float) -> np.ndarray:
    """Model contrast map per unit A: normalised convolution G*(1_p Δθ) / G*(1_p) on the
    particle (what the camera reports for a uniformly bright particle on a dark background)."""
    from scipy import ndimage

    inside = np.asarray(inside, bool)
    w = ndimage.gaussian_filter(inside.astype(float), sigma_px, mode="constant")
    out = np.empty_like(dtheta, dtype=float)
    for k in range(dtheta.shape[0]):
        num = ndimage.gaussian_filter(np.where(inside, dtheta[k], 0.0), sigma_px, mode="constant")
        out[k] = np.where(w > 1e-6, num / np.maximum(w, 1e-6), 0.0)
    return out


# ---------------------------------------------------------------------------- sampling θ at frame times
class ThetaFrameProbe:
    """Simulation observer: θ at ``points_um`` at every snapshot time (rank-identical arrays).

    With ``rich_theta`` it also integrates, on the mesh, the centre of mass of the particle
    and of the region θ > ``rich_theta`` (the 'Li-rich' region of 000 Fig. 5d expressed in
    occupancy), for a field-based asymmetry d(t) independent of any pixel grid.
    """

    def __init__(self, points_um: np.ndarray, rich_theta: float | None = None, quadrature_degree: int = 8):
        self.points = np.asarray(points_um, dtype=float)
        self.rich_theta = rich_theta
        self.qdeg = quadrature_degree
        self.times: list[float] = []
        self.values: list[np.ndarray] = []
        self.field_com: list[np.ndarray] = []  # (rich area, rich x, rich y)
        self.inside = None
        self.particle_com = None

    def start(self, sim, restore=None):
        from nmcfx.solver.transport import PointProbe

        sv = sim.solver
        self._probe = PointProbe(sv.mesh, self.points, allow_outside=True)
        self.inside = self._probe.inside.copy()
        if self.rich_theta is not None:
            import ufl
            from mpi4py import MPI
            from petsc4py import PETSc

            from dolfinx import fem

            mesh = sv.mesh
            dx = ufl.Measure("dx", domain=mesh, metadata={"quadrature_degree": self.qdeg})
            x = ufl.SpatialCoordinate(mesh)
            self._thr = fem.Constant(mesh, PETSc.ScalarType(self.rich_theta))
            rich = ufl.conditional(ufl.gt(sv.theta, self._thr), 1.0, 0.0)
            self._forms = [fem.form(rich * dx), fem.form(rich * x[0] * dx), fem.form(rich * x[1] * dx)]
            one = fem.Constant(mesh, PETSc.ScalarType(1.0))
            tot = [fem.form(one * dx), fem.form(x[0] * dx), fem.form(x[1] * dx)]
            v = [sv.comm.allreduce(fem.assemble_scalar(f), op=MPI.SUM) for f in tot]
            self.particle_com = np.array([v[1] / v[0], v[2] / v[0]])
            self.particle_area = v[0]
            self._sum = MPI.SUM

    def record(self, sim, rec):
        pass

    def step_end(self, sim, info):
        pass

    def finish(self, sim):
        pass

    def snapshot(self, sim, t):
        sv = sim.solver
        vals = self._probe.evaluate(sv.theta)
        self.times.append(float(t))
        self.values.append(np.where(self.inside, vals, np.nan))
        if self.rich_theta is not None:
            from dolfinx import fem

            self.field_com.append(np.array([sv.comm.allreduce(fem.assemble_scalar(f), op=self._sum)
                                            for f in self._forms]))


@dataclass
class ThetaFrames:
    """θ on the pixel grid at the frame times: ``theta[k]`` is (rows, cols), NaN off the particle."""

    times_s: np.ndarray
    theta: np.ndarray
    inside: np.ndarray
    grid: CameraGrid
    field_d_um: np.ndarray | None = None  # field-based asymmetry (if requested)
    field_rich_fraction: np.ndarray | None = None
    field_offset_um: np.ndarray | None = None
    summary: dict = field(default_factory=dict)


def sample_theta(particle, material, protocol, times_s, points_um, *, settings=None,
                 sector_weights: dict | None = None, rich_theta: float | None = None) -> tuple:
    """Run the protocol with snapshots at ``times_s``; return ``(theta, inside, probe, sim)`` with
    ``theta`` (n_times, n_points) at ``points_um`` (NaN off the particle and after the end of
    the protocol). Collective over the particle's communicator; results identical on all ranks.

    ``sector_weights``: per-sector flux factors η (e.g. ``{"blocked": 0.3}``; the mean
    current is kept, as in 000's partial blocking).
    """
    from nmcfx.solver.run import particle_solver
    from nmcfx.solver.simulation import Simulation, SolverSettings

    times = np.asarray(times_s, dtype=float)
    if times.ndim != 1 or times.size == 0 or np.any(times < 0) or np.any(np.diff(times) <= 0):
        raise InputError("times_s", "frame times must be >= 0 s and strictly increasing")
    st = settings if settings is not None else SolverSettings()
    sv = particle_solver(particle, material, st)  # as a run of the same particle builds it (prescribed flux)
    probe = ThetaFrameProbe(points_um, rich_theta)
    sim = Simulation(sv, material, protocol, st, snapshot_times_s=times, observers=[probe])
    if sector_weights:
        unknown = set(sector_weights) - set(sim.sector_weights)
        if unknown:
            raise InputError("sector_weights", f"unknown sector(s) {sorted(unknown)}; reactive: "
                                               f"{sorted(sim.sector_weights)}")
        sim.sector_weights.update({k: float(v) for k, v in sector_weights.items()})
    try:
        sim.run()
    finally:
        release_solver(sv)
    theta = np.full((times.size, len(probe.points)), np.nan)
    probe.index = [int(np.argmin(np.abs(times - t))) for t in probe.times]
    for i, v in zip(probe.index, probe.values):
        theta[i] = v
    return theta, probe.inside.copy(), probe, sim


def release_solver(sv):
    """Free the PETSc objects of a finished solver now.

    The nonlinear problem's SNES holds Python callbacks that refer back to it: a reference
    cycle through PETSc that Python's garbage collector cannot see, so the SNES, its
    matrices and vectors — and the ~7 MPI communicators they duplicate — would live until the
    process ends. MPICH allows 2048 per process: a study or calibration that runs a few
    hundred simulations in one process would abort. (A ``close()`` of the solver, if it has
    one, is used instead.)
    """
    close = getattr(sv, "close", None)
    if callable(close):
        close()
        return
    problem, seen = getattr(sv, "problem", None), set()
    while problem is not None and id(problem) not in seen:  # the DOLFINx NonlinearProblem, however wrapped
        seen.add(id(problem))
        for name in ("_snes", "_A", "_b", "_x", "_P_mat"):
            obj = getattr(problem, name, None)
            if obj is not None and hasattr(obj, "destroy"):
                obj.destroy()
        problem = getattr(problem, "problem", None)


def simulate_theta_frames(particle, material, protocol, times_s, grid: CameraGrid, *, settings=None,
                          sector_weights: dict | None = None, rich_theta: float | None = None) -> ThetaFrames:
    """θ on the pixel grid ``grid`` at ``times_s`` (see :func:`sample_theta`); with
    ``rich_theta`` also the field-based asymmetry d(t) of the region θ > rich_theta."""
    times = np.asarray(times_s, dtype=float)
    theta, inside, probe, sim = sample_theta(particle, material, protocol, times, grid.points_um(), settings=settings,
                                             sector_weights=sector_weights, rich_theta=rich_theta)
    rows, cols = grid.shape
    sv = sim.solver
    out = ThetaFrames(times, theta.reshape(times.size, rows, cols), inside.reshape(rows, cols), grid,
                      summary={"end_time_s": sim.t, "steps": sv.counters.steps, "dofs": sv.num_dofs})
    if rich_theta is not None:
        fc = np.full((times.size, 3), np.nan)
        for i, v in zip(probe.index, probe.field_com):
            fc[i] = v
        with np.errstate(invalid="ignore", divide="ignore"):
            com = fc[:, 1:] / fc[:, :1]
        off = com - probe.particle_com[None]
        out.field_offset_um = off
        out.field_d_um = np.hypot(off[:, 0], off[:, 1])
        out.field_rich_fraction = fc[:, 0] / probe.particle_area
    return out


def render_simulation(particle, material, protocol, times_s, grid: CameraGrid, scope: Microscope, *, drift_rc=None,
                      settings=None, sector_weights=None, rich_threshold: float | None = None):
    """Simulate, sample θ on ``grid`` at ``times_s`` and render the camera frames.

    Returns ``(stack, frames)``: the synthetic :class:`ImageStack` and the
    :class:`ThetaFrames` behind it. With ``rich_threshold`` (a contrast, e.g. 0.05) the
    field-based asymmetry of the region Ī < threshold, i.e. θ > θ₀ − threshold/A, is
    recorded too (``frames.field_d_um``).
    """
    rich = None if rich_threshold is None else scope.theta0 - rich_threshold / scope.contrast_A
    tf = simulate_theta_frames(particle, material, protocol, times_s, grid, settings=settings,
                               sector_weights=sector_weights, rich_theta=rich)
    stack = render_stack(tf.theta, times_s, scope, drift_rc=drift_rc, inside=tf.inside)
    stack.info["truth"]["grid"] = grid.to_dict()
    return stack, tf
