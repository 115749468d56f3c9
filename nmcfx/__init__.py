"""nmcfx: electro-chemo-mechanical finite-element models of Li transport in NMC particles."""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("nmcfx")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"
