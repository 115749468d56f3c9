"""The NumPy assembly of the single particle (solver/assembly.py) against DOLFINx's forms.

The nodal path must be the same discrete problem as the UFL forms of solver/terms.py: the
residual to round-off for P1 and P2, the Jacobian to round-off for P1 (where the vertex-rule
form is the exact Jacobian of the nodal coefficient) and, for P2, the exact Jacobian (checked
by finite differences; the UFL P2 form is the product of interpolants, which is not).
"""

from __future__ import annotations

import numpy as np
import pytest

from nmcfx.geometries import cylinder, disk
from nmcfx.materials import get_material
from nmcfx.solver.transport import TransportSolver


def _residual_and_jacobian(sv, theta):
    pb = sv.problem
    sv.set_initial(0.95)
    sv.theta_n.x.array[:] = 0.9
    sv.theta_nm1.x.array[:] = 0.93
    pb.set_time_step(20.0, 10.0, 2)  # BDF2 with a step ratio: every history term is used
    for i, q in enumerate(sv.q.values()):
        q.value = 0.003 * (i + 1)
    # PETSc's system of the nodal path may be in a fill-reducing numbering: entry i is DOF perm[i]
    perm = getattr(pb.assembler, "perm", None)
    perm = np.arange(len(theta)) if perm is None else perm
    x = pb.problem.x.duplicate()
    b = pb.problem.b.duplicate()
    x.array[:] = theta[perm]
    pb.problem.solver.computeFunction(x, b)
    A = pb.problem.A
    pb.problem.solver.computeJacobian(x, A)
    F, J = np.empty(len(theta)), np.empty((len(theta), len(theta)))
    F[perm] = b.array
    J[np.ix_(perm, perm)] = A.convert("dense").getDenseArray()
    return F, J, pb.problem.solver, x, perm


def _pair(particle, degree):
    mat = get_material()
    kw = dict(degree=degree, sector_weights={s: 0.3 for s in particle.sectors if s != "surface"})
    return [TransportSolver(particle, mat, assembly=a, **kw) for a in ("forms", "nodal")]


@pytest.mark.parametrize("degree", [1, 2])
def test_nodal_residual_and_jacobian_equal_the_forms(degree):
    particle = disk(2.4, mesh_size_um=0.3, surface_mesh_size_um=0.1,
                    sectors=[{"name": "blocked", "start_deg": -45, "end_deg": 45}])
    forms, nodal = _pair(particle, degree)
    assert nodal.problem.assembler is not None and forms.problem.assembler is None
    theta = 0.6 + 0.35 * np.random.default_rng(1).random(len(nodal.theta.x.array))
    bf, Af, _, _, _ = _residual_and_jacobian(forms, theta)
    bn, An, snes, x, perm = _residual_and_jacobian(nodal, theta)
    assert np.abs(bf - bn).max() <= 1e-13 * np.abs(bf).max()
    if degree == 1:
        assert np.abs(Af - An).max() <= 1e-13 * np.abs(Af).max()
    # the nodal Jacobian is the exact derivative of the residual (central differences)
    dx = np.random.default_rng(2).standard_normal(len(theta)) * 1e-6
    f = []
    for sign in (1.0, -1.0):
        y = x.duplicate()
        y.array[:] = (theta + sign * dx)[perm]
        b = y.duplicate()
        snes.computeFunction(y, b)
        f.append(np.empty(len(theta)))
        f[-1][perm] = b.array
    Jdx = An @ dx
    assert np.abs(0.5 * (f[0] - f[1]) - Jdx).max() <= 1e-7 * np.abs(Jdx).max()


def test_nodal_3d_prism_with_basal_projection_equals_the_forms():
    particle = cylinder(1.6, 0.8, mesh_size_um=0.4)
    forms, nodal = _pair(particle, 1)
    theta = 0.6 + 0.35 * np.random.default_rng(3).random(len(nodal.theta.x.array))
    bf, Af, _, _, _ = _residual_and_jacobian(forms, theta)
    bn, An, _, _, _ = _residual_and_jacobian(nodal, theta)
    assert np.abs(bf - bn).max() <= 1e-13 * np.abs(bf).max()
    assert np.abs(Af - An).max() <= 1e-13 * np.abs(Af).max()


@pytest.mark.parametrize("dim, degree", [(2, 2), (2, 3), (3, 2)])
def test_metric_factorisation_equals_the_cell_stiffness_tensors(dim, degree):
    """K^a_T = Σ_m g_T,m R_m (what the P2 nodal path assembles from) is the per-cell quadrature of
    ∫ φ_a P∇φ_e·∇φ_b to round-off, also with the basal projection P of 3D (and on skewed cells)."""
    from mpi4py import MPI

    from dolfinx import fem, mesh

    from nmcfx.solver.assembly import ElementGeometry
    from nmcfx.solver.terms import NonlinearDiffusion

    if dim == 2:
        msh = mesh.create_unit_square(MPI.COMM_SELF, 3, 2)
    else:
        msh = mesh.create_unit_cube(MPI.COMM_SELF, 2, 1, 2)
    msh.geometry.x[:, 0] += 0.3 * msh.geometry.x[:, 1] ** 2  # cells of different shapes
    V = fem.functionspace(msh, ("Lagrange", degree))
    geo = ElementGeometry(V, projection=NonlinearDiffusion.projection_matrix(msh))
    K = geo.stiffness_tensors()
    g, R = geo.metric_tensors()
    assert g.shape[1] == dim * (dim + 1) // 2
    assert np.abs(np.einsum("cm,mabe->cabe", g, R) - K).max() <= 1e-13 * np.abs(K).max()


def test_material_table_reproduces_d_chem():
    mat = get_material()
    table = mat.D_chem_lookup(scale=1.0)
    th = np.linspace(1e-6, 1 - 1e-6, 7 * 2**14 + 3)  # 7x finer than the table, off its nodes
    D, dD = table(th)
    De, dDe = mat.D_chem(th), mat.dD_chem(th)
    assert np.max(np.abs(D - De) / De) < 1e-7
    assert np.max(np.abs(dD - dDe)) < 1e-5 * np.abs(dDe).max()
    assert mat.D_chem_lookup(scale=1.0) is table  # built once per material
    # and shared by materials with the same data (each run of a sweep loads its config anew), not others
    assert get_material().D_chem_lookup(scale=1.0) is table
    other = get_material(scaling_S=2.0).D_chem_lookup(scale=1.0)
    assert other is not table and np.allclose(other(th[:5])[0] * 2.0, D[:5] * mat.scaling_S, rtol=1e-12)


def test_second_run_reuses_the_mesh_and_its_derived_data():
    from nmcfx.geometries._build import _CACHE

    a = disk(2.4, mesh_size_um=0.3)
    b = disk(2.4, mesh_size_um=0.3)
    assert a is b and len(_CACHE) == 1
    c = disk(2.4, mesh_size_um=0.25)
    assert c is not a


def test_matrix_in_the_fill_reducing_numbering_solves_bit_for_bit_as_the_ordered_lu():
    """One rank: the nodal matrix numbered in METIS' order once per mesh (LU with the natural ordering)
    gives the same Newton iterates, bit for bit, as PETSc's LU ordering the DOLFINx-numbered matrix."""
    particle = disk(2.4, mesh_size_um=0.3, surface_mesh_size_um=0.1,
                    sectors=[{"name": "blocked", "start_deg": -45, "end_deg": 45}])
    mat = get_material()
    kw = dict(degree=2, time_scheme="bdf2", sector_weights={"blocked": 0.3})
    ordering = TransportSolver(particle, mat, **kw).problem.petsc_options["pc_factor_mat_ordering_type"]
    solvers = [TransportSolver(particle, mat, **kw),
               TransportSolver(particle, mat, petsc_options={"pc_factor_mat_ordering_type": ordering}, **kw)]
    assert solvers[0].problem.assembler.perm is not None and solvers[1].problem.assembler.perm is None
    thetas = []
    for sv in solvers:
        sv.set_initial(0.95)
        sv.set_fluxes({"surface": 4e-4, "blocked": 1.2e-4})
        sv.problem.set_update_tolerance(2e-5)  # Newton as in a run (the time loop sets it)
        for k, dt in enumerate((0.5, 1.0, 2.0, 4.0)):
            assert sv.solve_step(dt, None if k == 0 else dt / 2, 1 if k == 0 else 2).converged
            sv.accept()
        assert not sv.counters.extras.get("newton_fallbacks")
        thetas.append(sv.theta.x.array.copy())
    assert np.ptp(thetas[0]) > 0.05  # a front has formed
    assert np.array_equal(thetas[0], thetas[1])
