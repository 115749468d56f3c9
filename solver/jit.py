"""Where DOLFINx keeps the forms it compiles for nmcfx, and filling that cache ahead of time.

DOLFINx compiles every form to a C extension in a cache directory (default
``~/.cache/fenics``) and, on every later use, scans that directory to load it. A cache shared
by many projects grows to thousands of files and the scan alone costs milliseconds per form.
nmcfx therefore sets DOLFINx's *default* cache directory (its lowest-priority JIT option:
``jit_options=…``, ``dolfinx_jit_options.json`` in the working directory or in
``~/.config/dolfinx/`` still win) to a directory of its own:

1. ``$NMCFX_JIT_CACHE`` if set;
2. ``<environment prefix>/var/cache/nmcfx-jit`` (one per virtual environment, filled by
   ``./dev setup``), if writable;
3. ``$XDG_CACHE_HOME/nmcfx/jit`` (default ``~/.cache/nmcfx/jit``).

``python -m nmcfx.solver.jit`` (run by ``./dev setup``) compiles the forms of every built-in
example on a coarse mesh, so the first ``nmcfx run`` costs no compilation::

    $ python -m nmcfx.solver.jit
    nmcfx JIT cache /…/.venv/var/cache/nmcfx-jit: 31 forms (26 new) in 41.2 s
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def cache_directory() -> Path:
    """The directory nmcfx's compiled forms go to (see the module docstring)."""
    env = os.environ.get("NMCFX_JIT_CACHE")
    if env:
        return Path(env).expanduser()
    prefix = Path(sys.prefix) / "var" / "cache" / "nmcfx-jit"
    try:
        prefix.mkdir(parents=True, exist_ok=True)
        if os.access(prefix, os.W_OK):
            return prefix
    except OSError:
        pass
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "nmcfx" / "jit"


def configure() -> Path:
    """Make :func:`cache_directory` DOLFINx's default JIT cache (idempotent); returns it."""
    if getattr(configure, "_done", None) is not None:
        return configure._done
    import dolfinx.jit

    opts = dolfinx.jit.DOLFINX_DEFAULT_JIT_OPTIONS
    path = cache_directory()
    opts["cache_dir"] = (path, opts["cache_dir"][1])
    _load_compiled_forms_by_path()
    configure._done = path
    return path


def _load_compiled_forms_by_path():
    """FFCx loads a compiled form from the cache through an import finder that lists the whole cache
    directory on every load (2 ms with ~2000 files: 18 ms of a 56 ms elasticity set-up). A form whose
    compilation is finished (its ``.c.cached`` marker exists) is loaded here straight from its file;
    everything else (compiling, waiting for another process's compilation) stays FFCx's."""
    import importlib.machinery
    import importlib.util

    import ffcx.codegeneration.jit as ffcx_jit

    original = ffcx_jit.get_cached_module
    if getattr(original, "_nmcfx", False):
        return

    def get_cached_module(module_name, object_names, cache_dir, timeout):
        cache_dir = Path(cache_dir)
        if (cache_dir / f"{module_name}.c.cached").exists():
            for suffix in importlib.machinery.EXTENSION_SUFFIXES:
                so = cache_dir / f"{module_name}{suffix}"
                if so.exists():
                    spec = importlib.util.spec_from_file_location(module_name, so)
                    module = importlib.util.module_from_spec(spec)
                    spec.loader.exec_module(module)
                    return [getattr(module.lib, name) for name in object_names], module
        return original(module_name, object_names, cache_dir, timeout)

    get_cached_module._nmcfx = True
    ffcx_jit.get_cached_module = get_cached_module


def warm(examples=None, verbose: bool = True) -> int:
    """Compile the forms of the built-in examples (coarse meshes, a few steps each); returns the
    number of files in the cache. Run in a fresh process: ``python -m nmcfx.solver.jit``."""
    import copy
    import tempfile
    import time

    from mpi4py import MPI

    from nmcfx.config import example_names, example_path, load_config

    from .run import execute, prepare

    path = configure()
    before = len(list(path.glob("*.so"))) if path.exists() else 0
    t0 = time.perf_counter()
    for name in examples or example_names():
        cfg = copy.deepcopy(load_config(example_path(name)))
        # the same forms, a short time (form signatures do not depend on sizes or durations)
        for step in cfg["protocol"]["steps"]:
            for key in ("duration_min", "pulse_min", "rest_min"):
                if key in step:
                    step[key] = min(float(step[key]), 0.5)
            if "pulses" in step:
                step["pulses"] = 1
        cfg["output"] = dict(cfg.get("output", {}), progress=False, snapshot_times_min=[0.25])
        with tempfile.TemporaryDirectory() as d:
            execute(prepare(cfg), d, comm=MPI.COMM_WORLD, progress=False)
    _pattern_forms()
    after = len(list(path.glob("*.so")))
    if verbose:
        print(f"nmcfx JIT cache {path}: {after} forms ({after - before} new) in {time.perf_counter() - t0:.1f} s")
    return after


def _pattern_forms():
    """The mass-like forms whose sparsity the nodal assembly uses on several ranks (P1, P2; 2D, 3D)."""
    import ufl
    from mpi4py import MPI

    import dolfinx

    for mesh in (dolfinx.mesh.create_unit_square(MPI.COMM_SELF, 1, 1),
                 dolfinx.mesh.create_unit_cube(MPI.COMM_SELF, 1, 1, 1)):
        for degree in (1, 2):
            V = dolfinx.fem.functionspace(mesh, ("Lagrange", degree))
            dolfinx.fem.form(ufl.TrialFunction(V) * ufl.TestFunction(V) * ufl.dx(domain=mesh))


if __name__ == "__main__":
    from mpi4py import MPI  # noqa: F401  (before dolfinx)

    warm()
