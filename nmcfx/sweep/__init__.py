"""Parameter sweeps: one engine on a laptop, under ``mpiexec`` and on clusters.

    from nmcfx.sweep import load_sweep, run_sweep
    sweep = load_sweep("sweep.toml")                  # base config + axes, every case validated
    results = run_sweep(sweep, "runs/sweep", backend="local", workers=2)
    results.dataframe()                               # one row per case
    results.dataset()                                 # xarray, the axes as dimensions

From Python without a file::

    import nmcfx
    from nmcfx.sweep import Sweep, grid, sample
    sweep = Sweep(nmcfx.load("disk.toml"), [grid("material.scaling_S", [2, 3, 4]),
                                            sample({"protocol.steps[0].current_mA_g": [50, 400]}, n=8)])

The command: ``nmcfx sweep SWEEP.toml [-o DIR] [--backend local|mpi|slurm|dask]``,
``nmcfx sweep status DIR``, ``nmcfx sweep collect DIR``, ``nmcfx sweep plot DIR``.
Layout of a sweep directory: :mod:`nmcfx.sweep.store`.
"""

from .definition import Axis, Case, Sweep, cases, grid, load_sweep, sample, zipped
from .engine import BACKENDS, collect_results, run_sweep, status
from .results import SweepResults, gather, plot_metric

__all__ = ["BACKENDS", "Axis", "Case", "Sweep", "SweepResults", "cases", "collect_results", "gather", "grid",
           "load_sweep", "plot_metric", "run_sweep", "sample", "status", "zipped"]
