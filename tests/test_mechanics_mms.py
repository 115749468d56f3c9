"""Manufactured solutions for the anisotropic (transversely isotropic) elasticity with eigenstrain.

A smooth displacement u_e, a θ field linear in x (so the chemical eigenstrain of a linear
lattice table is represented exactly) and the stiffness C11, C12, C13, C33, C44 give the body
force f = −∇·σ(u_e) and the surface traction t = σ(u_e)·n; the solver gets them through its
``extra_rhs`` hook and must return u_e up to a rigid motion. Errors: the strain energy-type norm
‖ε(u_h − u_e)‖ (blind to rigid motions) and the L2 norm after removing the best-fitting rigid
motion. Expected rates: k and k + 1 for degree k. 3D uses CG + GAMG with the rigid-body
near-null space, 2D (plane stress: the reduced stiffness with C13, C33) MUMPS.
"""

from __future__ import annotations

import gc

from mpi4py import MPI

import numpy as np
import pytest
import ufl
from dolfinx import fem, mesh

from nmcfx.materials.mechanics import MechanicalMaterial, Stiffness
from nmcfx.solver.mechanics import ElasticitySolver
from test_mechanics_analytic import linear_lattice

COMM = MPI.COMM_WORLD


@pytest.fixture(autouse=True)
def _free_mpi_objects():
    """Collect reference cycles after each test: meshes, vectors and solvers hold MPI communicators,
    of which a process has a limited number (context IDs)."""
    yield
    gc.collect()


TI = Stiffness.transversely_isotropic(230.0, 90.0, 60.0, 160.0, 45.0)  # GPa, c ∥ z (made up, positive definite)


def exact_u(x, dim):
    if dim == 3:
        return 0.01 * ufl.as_vector([ufl.sin(np.pi * x[0]) * ufl.cos(np.pi * x[1]) * (1 + x[2]),
                                     x[0] ** 2 * x[1] + ufl.sin(np.pi * x[2]),
                                     ufl.cos(np.pi * x[1]) * x[0] + x[2] ** 3])
    return 0.01 * ufl.as_vector([ufl.sin(np.pi * x[0]) * ufl.cos(np.pi * x[1]),
                                 x[0] ** 2 * x[1] + ufl.sin(2 * x[1])])


def rigid_modes(x, dim):
    if dim == 3:
        return [ufl.as_vector(v) for v in ([1, 0, 0], [0, 1, 0], [0, 0, 1], [-x[1], x[0], 0],
                                           [0, -x[2], x[1]], [x[2], 0, -x[0]])]
    return [ufl.as_vector(v) for v in ([1, 0], [0, 1], [-x[1], x[0]])]


def solve_mms(n: int, degree: int, dim: int, assumption="plane_stress"):
    if dim == 3:
        m = mesh.create_box(COMM, [[0, 0, 0], [1, 1, 1]], [n, n, n], mesh.CellType.tetrahedron)
    else:
        m = mesh.create_unit_square(COMM, n, n, mesh.CellType.triangle)
    V = fem.functionspace(m, ("Lagrange", 1))
    theta = fem.Function(V)
    theta.interpolate(lambda x: 0.6 + 0.3 * x[0])
    x = ufl.SpatialCoordinate(m)
    ue = exact_u(x, dim)
    dxq = ufl.Measure("dx", domain=m, metadata={"quadrature_degree": 6})
    dsq = ufl.Measure("ds", domain=m, metadata={"quadrature_degree": 6})
    nrm = ufl.FacetNormal(m)

    def extra(solver, v):
        s = solver.stress_of(ue)
        s = s if dim == 3 else ufl.as_matrix([[s[0, 0], s[0, 1]], [s[1, 0], s[1, 1]]])
        return ufl.inner(-ufl.div(s), v) * dxq + ufl.inner(ufl.dot(s, nrm), v) * dsq

    mat = MechanicalMaterial("mms", linear_lattice(), TI)
    ms = ElasticitySolver(m, theta, mat, theta_ref=0.95, degree=degree, assumption_2d=assumption, extra_rhs=extra)
    its = ms.solve()
    e = ms.u - ue
    energy = np.sqrt(COMM.allreduce(fem.assemble_scalar(fem.form(ufl.inner(ufl.sym(ufl.grad(e)),
                                                                            ufl.sym(ufl.grad(e))) * dxq)),
                                    op=MPI.SUM))
    r = rigid_modes(x, dim)
    G = np.array([[COMM.allreduce(fem.assemble_scalar(fem.form(ufl.inner(a, b) * dxq)), op=MPI.SUM) for b in r]
                  for a in r])
    b = np.array([COMM.allreduce(fem.assemble_scalar(fem.form(ufl.inner(e, a) * dxq)), op=MPI.SUM) for a in r])
    c = np.linalg.solve(G, b)
    e_perp = e - sum(float(ci) * ri for ci, ri in zip(c, r))
    l2 = np.sqrt(COMM.allreduce(fem.assemble_scalar(fem.form(ufl.inner(e_perp, e_perp) * dxq)), op=MPI.SUM))
    ms.destroy()
    return l2, energy, its


def rates(errs, ns):
    return [np.log(errs[i] / errs[i + 1]) / np.log(ns[i + 1] / ns[i]) for i in range(len(errs) - 1)]


@pytest.mark.mpi
def test_mms_3d_transversely_isotropic_rates_cg_gamg():
    """3D, P2 (n = 2, 4, 8 cells per side): L2 rate 3, energy rate 2, with CG + GAMG."""
    ns = (2, 4, 8)
    res = [solve_mms(n, 2, 3) for n in ns]
    l2, en = [r[0] for r in res], [r[1] for r in res]
    r_l2, r_en = rates(l2, ns), rates(en, ns)
    if COMM.rank == 0:
        print(f"3D P2: L2 {l2} rates {r_l2}; energy {en} rates {r_en}; CG its {[r[2] for r in res]}")
    assert r_l2[-1] > 2.8 and r_en[-1] > 1.8, (r_l2, r_en)
    assert l2[-1] < 0.002 * 0.01  # far below the size of u (1e-2 µm)


@pytest.mark.mpi
@pytest.mark.parametrize("assumption", ["plane_stress", "plane_strain"])
@pytest.mark.parametrize("degree", [1, 2])
def test_mms_2d_transversely_isotropic_rates(assumption, degree):
    """2D (basal section), n = 8, 16, 32: L2 rate k + 1 and energy rate k for P1 and P2."""
    ns = (8, 16, 32)
    res = [solve_mms(n, degree, 2, assumption) for n in ns]
    l2, en = [r[0] for r in res], [r[1] for r in res]
    r_l2, r_en = rates(l2, ns), rates(en, ns)
    if COMM.rank == 0:
        print(f"2D P{degree} {assumption}: L2 {l2} rates {r_l2}; energy {en} rates {r_en}")
    assert r_l2[-1] > degree + 1 - 0.2 and r_en[-1] > degree - 0.15, (r_l2, r_en)
