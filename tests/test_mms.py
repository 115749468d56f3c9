"""Manufactured solution with θ-dependent diffusivity: P1 converges at h² in L2 and h in H1."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import ufl
from mpi4py import MPI

import dolfinx
from dolfinx import fem

from nmcfx.solver.transport import TransportSolver


class QuadraticD:
    """D(θ) = D0 (1 + 3θ²) in m² s⁻¹ — strongly θ-dependent, with its UFL twin for the source."""

    site_concentration = 4.9e4
    D0 = 1e-12  # → 1 µm² s⁻¹ in solver units

    def D_chem(self, th):
        return self.D0 * (1 + 3 * th**2)

    def dD_chem(self, th):
        return self.D0 * 6 * th

    def ufl_um2(self, th):
        return self.D0 * 1e12 * (1 + 3 * th**2)


def unit_square_particle(n: int):
    mesh = dolfinx.mesh.create_unit_square(MPI.COMM_WORLD, n, n, diagonal=dolfinx.mesh.DiagonalType.crossed)
    fdim = mesh.topology.dim - 1
    mesh.topology.create_connectivity(fdim, fdim + 1)
    facets = dolfinx.mesh.exterior_facet_indices(mesh.topology)
    tags = dolfinx.mesh.meshtags(mesh, fdim, facets, np.full(len(facets), 1, dtype=np.int32))
    return SimpleNamespace(mesh=mesh, facet_tags=tags, sectors={"surface": 1}, reactive_sectors=("surface",),
                           dim=2, centroid=(0.5, 0.5))


def theta_exact(x):
    return 0.5 + 0.3 * ufl.sin(2 * x[0]) * ufl.cos(1.5 * x[1])


def solve_mms(n: int, degree: int = 1):
    mat = QuadraticD()
    particle = unit_square_particle(n)

    def extra(sv, th, v):
        x = ufl.SpatialCoordinate(sv.mesh)
        te = theta_exact(x)
        flux = -mat.ufl_um2(te) * ufl.grad(te)  # exact flux, µm s⁻¹
        source = ufl.div(flux)  # steady θ_e: 0 = ∇·(D∇θ_e) + s  →  s = ∇·flux
        n_ = ufl.FacetNormal(sv.mesh)
        dxq = ufl.Measure("dx", domain=sv.mesh, metadata={"quadrature_degree": 6})
        dsq = ufl.Measure("ds", domain=sv.mesh, metadata={"quadrature_degree": 6})
        return -source * v * dxq + ufl.dot(flux, n_) * v * dsq

    sv = TransportSolver(particle, mat, degree=degree, extra_residual=extra)
    x = ufl.SpatialCoordinate(sv.mesh)
    expr = fem.Expression(theta_exact(x), sv.V.element.interpolation_points)
    sv.theta_n.interpolate(expr)
    sv.theta.x.array[:] = sv.theta_n.x.array
    # θ_e is steady; one backward-Euler step from its interpolant (dt = 1 s keeps the
    # pure-Neumann problem well posed) must reproduce it up to the spatial error
    res = sv.solve_step(1.0, None, 1)
    assert res.converged, res
    err = sv.theta - theta_exact(x)
    dxq = ufl.Measure("dx", domain=sv.mesh, metadata={"quadrature_degree": 6})
    l2 = fem.assemble_scalar(fem.form(err**2 * dxq))
    h1 = fem.assemble_scalar(fem.form(ufl.inner(ufl.grad(err), ufl.grad(err)) * dxq))
    comm = sv.comm
    return np.sqrt(comm.allreduce(l2, op=MPI.SUM)), np.sqrt(comm.allreduce(h1, op=MPI.SUM)), res


@pytest.mark.mpi
def test_manufactured_solution_rates():
    ns = [8, 16, 32, 64]
    errs = [solve_mms(n) for n in ns]
    l2 = np.array([e[0] for e in errs])
    h1 = np.array([e[1] for e in errs])
    rl2 = np.log2(l2[:-1] / l2[1:])
    rh1 = np.log2(h1[:-1] / h1[1:])
    if MPI.COMM_WORLD.rank == 0:
        print("L2", l2, "rates", rl2, "H1", h1, "rates", rh1)
    assert np.all(rl2[-2:] > 1.85) and np.all(rl2[-2:] < 2.2), rl2
    assert np.all(rh1[-2:] > 0.9) and np.all(rh1[-2:] < 1.2), rh1
    # Newton on the nonlinear problem converges in a handful of iterations
    assert all(e[2].newton_iterations <= 8 for e in errs)


@pytest.mark.mpi
def test_manufactured_solution_rates_p2():
    ns = [4, 8, 16]
    errs = [solve_mms(n, degree=2) for n in ns]
    l2 = np.array([e[0] for e in errs])
    h1 = np.array([e[1] for e in errs])
    rl2 = np.log2(l2[:-1] / l2[1:])
    rh1 = np.log2(h1[:-1] / h1[1:])
    assert rl2[-1] > 2.8, rl2
    assert rh1[-1] > 1.85, rh1
