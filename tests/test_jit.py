"""nmcfx's JIT cache (solver/jit.py): its own directory, and compiled forms loaded by path."""

from __future__ import annotations

import importlib.machinery

from mpi4py import MPI

import numpy as np


def _mass_form(scale: float):
    import ufl

    import dolfinx

    mesh = dolfinx.mesh.create_unit_square(MPI.COMM_SELF, 3, 2)
    V = dolfinx.fem.functionspace(mesh, ("Lagrange", 1))
    c = dolfinx.fem.Constant(mesh, scale)
    return dolfinx.fem.form(c * ufl.TrialFunction(V) * ufl.TestFunction(V) * ufl.dx)


def test_cached_forms_load_from_nmcfx_cache_without_scanning_it(monkeypatch):
    import dolfinx.fem.petsc
    import ffcx.codegeneration.jit as ffcx_jit

    from nmcfx.solver import jit

    path = jit.configure()
    assert dolfinx.jit.DOLFINX_DEFAULT_JIT_OPTIONS["cache_dir"][0] == path
    A0 = dolfinx.fem.assemble_matrix(_mass_form(2.0)).to_dense()  # compiled now, or loaded
    assert ffcx_jit.get_cached_module._nmcfx

    def no_scan(*args, **kwargs):
        raise AssertionError("the JIT cache directory was scanned to load a compiled form")

    monkeypatch.setattr(importlib.machinery.FileFinder, "find_spec", no_scan)
    A1 = dolfinx.fem.assemble_matrix(_mass_form(2.0)).to_dense()  # the same form: from the cache, by path
    assert np.array_equal(A0, A1)
    assert np.isclose(A1.sum(), 2.0)  # ∫ 2 dx over the unit square
