"""nmcfx.imaging: operando optical microscopy — analysis, forward model, calibration.

Analysis (NumPy/SciPy/scikit-image, no DOLFINx)::

    load_stack(path, frame_rate_hz=None, pixel_size_um=None, bin_frames=1) -> ImageStack
    analyze(stack, AnalysisOptions(...)) -> AnalysisResult       # in memory, validates everything
    write_analysis(result, outdir)                               # CSVs, figures, contrast.npz, JSON
    run_analysis(path, outdir, options, ...)                     # the three above (`nmcfx analyze`)
    measure_drift / correct_drift / fit_gaussian_spot / find_spot
    particle_mask / total_contrast / line_kymograph / com_offset / classify / mask_outline

Forward model (needs DOLFINx for the simulation part)::

    Microscope(...), CameraGrid(...), psf_sigma_um(resolution_um)
    render_stack(theta_frames, times, microscope, drift_rc=...) -> ImageStack
    simulate_theta_frames(particle, material, protocol, times, grid) -> ThetaFrames
    render_simulation(particle, material, protocol, times, grid, microscope) -> (ImageStack, ThetaFrames)
    save_stack(path, stack)                                      # ImageJ TIFF with times and pixel size

Noise and checks of the frames before the current::

    measure_noise(contrast, i0, mask, pre, reference_average=N) -> NoiseModel
    baseline_check(...), detect_onset(times, particle_mean_trace(frames, mask))

Calibration of S and A (Xu 2022 Eq. 18)::

    run_calibration(config_toml, outdir) -> CalibrationResult    # `nmcfx calibrate`
    calibrate(cfg, base_dir, CalibrationSettings(...))

See ``imaging/README.md``.
"""

from .analyze import AnalysisOptions, AnalysisResult, add_mesh, analyze, run_analysis, write_analysis
from .asymmetry import LI_RICH_THRESHOLD, AsymmetryRule, AsymmetryTrace, classify, com_offset
from .calibrate import (
    CalibrationResult,
    CalibrationSettings,
    calibrate,
    format_calibration,
    load_calibration_config,
    run_calibration,
    settings_from_dict,
)
from .checks import baseline_check, detect_onset, particle_mean_trace
from .contrast import centroid_rc, disk_region, particle_mask, reference_image, total_contrast
from .drift import DriftTrace, SpotFit, correct_drift, find_spot, fit_gaussian_spot, measure_drift
from .forward import (
    CameraGrid,
    Microscope,
    ThetaFrameProbe,
    ThetaFrames,
    psf_sigma_um,
    render_simulation,
    render_stack,
    sample_theta,
    simulate_theta_frames,
)
from .kymograph import Kymograph, line_kymograph
from .noise import NoiseModel, measure_noise
from .outline import Outline, mask_outline, outline_mesh
from .stack import DEFAULT_FRAME_RATE_HZ, DEFAULT_PIXEL_SIZE_UM, ImageStack, bin_stack, load_stack, parse_rc, save_stack

__all__ = [
    "DEFAULT_FRAME_RATE_HZ", "DEFAULT_PIXEL_SIZE_UM", "LI_RICH_THRESHOLD",
    "AnalysisOptions", "AnalysisResult", "AsymmetryRule", "AsymmetryTrace", "CalibrationResult",
    "CalibrationSettings", "CameraGrid", "DriftTrace", "ImageStack", "Kymograph", "Microscope", "Outline",
    "NoiseModel", "SpotFit", "ThetaFrameProbe", "ThetaFrames",
    "add_mesh", "analyze", "baseline_check", "bin_stack", "calibrate", "detect_onset", "measure_noise",
    "particle_mean_trace", "centroid_rc", "classify", "com_offset", "correct_drift",
    "disk_region", "find_spot", "fit_gaussian_spot", "format_calibration", "line_kymograph", "load_calibration_config",
    "load_stack", "mask_outline", "measure_drift", "outline_mesh", "parse_rc", "particle_mask", "psf_sigma_um",
    "reference_image", "render_simulation", "render_stack", "run_analysis", "run_calibration", "sample_theta",
    "save_stack", "settings_from_dict", "simulate_theta_frames", "total_contrast", "write_analysis",
]
