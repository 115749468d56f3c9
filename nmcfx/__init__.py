"""nmcfx: electro-chemo-mechanical finite-element models of Li transport in NMC particles.

The Python API (imported lazily, so ``import nmcfx`` stays light)::

    import nmcfx
    spec = nmcfx.load("run.toml")                    # a validated RunSpec
    result = nmcfx.run(spec, "runs/mine")            # time series + summary
    sweep = nmcfx.load_sweep("sweep.toml")           # a parameter sweep
    table = nmcfx.run_sweep(sweep, "runs/sweep", backend="local", workers=2)
"""

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


def installed_versions() -> dict[str, str]:
    """Versions of the installed distributions, from the names of their ``*.dist-info``
    directories on ``sys.path`` (one directory listing each; ``importlib.metadata`` parses every
    distribution's metadata, ~0.05 s at start-up). Names are normalised (lower case, ``-``)."""
    import os
    import re
    import sys

    found: dict[str, str] = {}
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for n in names:
            if n.endswith(".dist-info"):
                name, _, ver = n[: -len(".dist-info")].partition("-")
                found.setdefault(re.sub(r"[-_.]+", "-", name).lower(), ver)
    return found


def _package_version() -> str:
    ver = installed_versions().get("nmcfx")
    if ver:
        return ver
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nmcfx")
    except PackageNotFoundError:  # running from a source tree without installation
        return "0.0.0+unknown"


def __getattr__(name):
    if name == "__version__":  # looked up on first use: importlib.metadata costs ~0.1 s at start-up
        globals()["__version__"] = v = _package_version()
        return v
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'nmcfx' has no attribute {name!r}")
