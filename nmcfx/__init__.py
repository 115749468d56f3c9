"""nmcfx: electro-chemo-mechanical finite-element models of Li transport in NMC particles.

The Python API (imported lazily, so ``import nmcfx`` stays light)::

    import nmcfx
    spec = nmcfx.load("run.toml")                    # a validated RunSpec
    result = nmcfx.run(spec, "runs/mine")            # time series + summary
    sweep = nmcfx.load_sweep("sweep.toml")           # a parameter sweep
    table = nmcfx.run_sweep(sweep, "runs/sweep", backend="local", workers=2)
"""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("nmcfx")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

_LAZY = {
    "load": ("nmcfx.spec", "load"),
    "RunSpec": ("nmcfx.spec", "RunSpec"),
    "run": ("nmcfx.api", "run"),
    "RunResult": ("nmcfx.api", "RunResult"),
    "load_sweep": ("nmcfx.sweep", "load_sweep"),
    "run_sweep": ("nmcfx.sweep", "run_sweep"),
    "Sweep": ("nmcfx.sweep", "Sweep"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'nmcfx' has no attribute {name!r}")
