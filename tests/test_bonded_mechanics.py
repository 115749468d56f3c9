"""The bonded body (NMC ∪ CBD as one elastic body, solver/bonded_mechanics.py) against closed forms.

Circular inclusion (radius a, NMC, uniform eigenstrain diag(ε_a, ε_a, ε_c)) bonded in a concentric
ring (outer radius b, CBD, no eigenstrain), plane strain, isotropic materials (Lamé constants λ, μ).
u_r = A r in the inclusion, u_r = B r + D/r in the ring, so

    σ_rr(inclusion) = 2(λ₁ + μ₁)(A − ε_a) − λ₁ ε_c            (uniform: the interface pressure is −σ_rr)
    σ_rr, σ_φφ(ring) = 2(λ₂ + μ₂) B ∓ 2 μ₂ D / r²

with u and σ_rr continuous at r = a and either u(b) = 0 (clamped outer edge) or σ_rr(b) = 0 (a free
ring, rigid modes removed). The inclusion's stress and the ring's hoop and radial stresses are
compared within 1 %.
"""

from __future__ import annotations

import gc

from mpi4py import MPI

import numpy as np
import pytest

from nmcfx.materials.mechanics import LatticeTable, MechanicalMaterial, Stiffness
from nmcfx.solver.bonded_mechanics import BondedElasticitySolver

COMM = MPI.COMM_WORLD
A_UM, B_UM = 2.0, 5.0
E1, NU1 = 170.0, 0.275  # inclusion (GPa)
E2, NU2 = 20.0, 0.3  # ring: a stiff-ish matrix, so the interface pressure is large
BETA_A, BETA_C = 0.025, -0.03
THETA0 = 0.95


@pytest.fixture(autouse=True)
def _free_mpi_objects():
    yield
    gc.collect()


def linear_material(E=E1, nu=NU1) -> MechanicalMaterial:
    th = np.array([0.0, 1.0])
    a0, c0 = 2.87551, 14.1944
    lat = LatticeTable(th, a0 * (1 + BETA_A * (th - THETA0)), c0 * (1 + BETA_C * (th - THETA0)))
    return MechanicalMaterial("test", lat, Stiffness.isotropic(E, nu))


def concentric_disks(h_in=0.125, h_out=0.3):
    """Disk (tag 1) in a ring (tag 2); outer circle facets tag 3."""
    from nmcfx.geometries._build import mesh_and_distribute

    def on_root(model):
        occ = model.occ
        inner = occ.addDisk(0, 0, 0, A_UM, A_UM)
        outer = occ.addDisk(0, 0, 0, B_UM, B_UM)
        out, _ = occ.fragment([(2, outer)], [(2, inner)])
        occ.synchronize()
        surfs = [t for d, t in model.getEntities(2)]
        inc = [s for s in surfs if abs(occ.getMass(2, s) - np.pi * A_UM**2) < 1e-6]
        ring = [s for s in surfs if s not in inc]
        model.addPhysicalGroup(2, inc, 1)
        model.addPhysicalGroup(2, ring, 2)
        bnd = [t for d, t in model.getBoundary([(2, s) for s in ring], oriented=False)]
        outer_curves = [c for c in bnd if abs(occ.getMass(1, c) - 2 * np.pi * B_UM) < 1e-6]
        model.addPhysicalGroup(1, outer_curves, 3)
        model.mesh.setSize(model.getEntities(0), h_out)
        model.mesh.field.add("Distance", 1)
        model.mesh.field.setNumbers(1, "CurvesList", [c for c in bnd if c not in outer_curves]
                                    + [t for d, t in model.getBoundary([(2, s) for s in inc], oriented=False)])
        model.mesh.field.add("Threshold", 2)
        model.mesh.field.setNumber(2, "InField", 1)
        model.mesh.field.setNumber(2, "SizeMin", h_in)
        model.mesh.field.setNumber(2, "SizeMax", h_out)
        model.mesh.field.setNumber(2, "DistMin", 0.3)
        model.mesh.field.setNumber(2, "DistMax", 2.0)
        model.mesh.field.setAsBackgroundMesh(2)
        model.mesh.generate(2)
        return {}

    _, data = mesh_and_distribute(COMM, on_root, 2, "test inclusion")
    return data.mesh, data.cell_tags, data.facet_tags


def lame_inclusion(ea, ec, clamped: bool):
    """σ_rr in the inclusion (uniform, = −p) and the ring's σ_rr, σ_φφ(r) (plane strain)."""
    def lame(E, nu):
        return E * nu / ((1 + nu) * (1 - 2 * nu)), E / (2 * (1 + nu))

    l1, m1 = lame(E1 * 1e3, NU1)
    l2, m2 = lame(E2 * 1e3, NU2)
    # unknowns A, B, D
    M = np.zeros((3, 3))
    rhs = np.zeros(3)
    M[0] = [A_UM, -A_UM, -1.0 / A_UM]  # u continuous at a
    # σ_rr1(a) = 2(l1+m1) A − (2 l1 + 2 m1) ea − l1 ec ; σ_rr2(a) = 2(l2+m2) B − 2 m2 D/a²
    M[1] = [2 * (l1 + m1), -2 * (l2 + m2), 2 * m2 / A_UM**2]
    rhs[1] = (2 * l1 + 2 * m1) * ea + l1 * ec
    if clamped:
        M[2] = [0.0, B_UM, 1.0 / B_UM]
    else:
        M[2] = [0.0, 2 * (l2 + m2), -2 * m2 / B_UM**2]
    A, B, D = np.linalg.solve(M, rhs)
    s_in = 2 * (l1 + m1) * A - (2 * l1 + 2 * m1) * ea - l1 * ec

    def ring(r):
        return 2 * (l2 + m2) * B - 2 * m2 * D / r**2, 2 * (l2 + m2) * B + 2 * m2 * D / r**2

    return s_in, ring


def _max_abs(comm, a):
    return comm.allreduce(float(np.max(np.abs(a))) if a.size else 0.0, op=MPI.MAX)


@pytest.mark.mpi
@pytest.mark.parametrize("clamped", [True, False])
def test_inclusion_in_a_ring_matches_lame_within_one_percent(clamped):
    """Uniform θ = 0.75 in the inclusion (ε_a = −0.5 %, ε_c = +0.6 %): it shrinks in-plane, the ring
    pulls it → uniform tension in the inclusion, equal to the Lamé value within 1 % (interface
    pressure p = −σ_rr(a)); the ring's hoop stress at the interface too. Both outer conditions: a
    clamped edge (u = 0) and a free ring (rigid modes removed)."""
    from dolfinx import fem

    mesh, ct, ft = concentric_disks()
    tdim = mesh.topology.dim
    n_cells = mesh.topology.index_map(tdim).size_local + mesh.topology.index_map(tdim).num_ghosts
    theta = fem.Function(fem.functionspace(mesh, ("Lagrange", 1)))
    theta.x.array[:] = 0.75
    cells = np.arange(n_cells, dtype=np.int32)
    outer = ft.find(3) if clamped else None
    body = BondedElasticitySolver(mesh, ct.find(1), [(theta, cells, cells)], linear_material(),
                                  Stiffness.isotropic(E2, NU2), theta_ref=THETA0, clamped_facets=outer,
                                  assumption_2d="plane_strain", prefix=f"test_incl_{int(clamped)}_")
    try:
        body.solve()
        ea, ec = BETA_A * (0.75 - THETA0), BETA_C * (0.75 - THETA0)
        s_in, ring = lame_inclusion(ea, ec, clamped)
        assert s_in > 30.0  # tension in the shrinking inclusion (MPa)
        X, s = body.stress_nodes()
        r = np.linalg.norm(X[:, :2], axis=1)
        nmc = body.nmc_stress_dofs
        inside = nmc[r[nmc] < 0.9 * A_UM]
        sxx, syy = s[inside, 0, 0], s[inside, 1, 1]
        err_in = _max_abs(COMM, np.concatenate([sxx - s_in, syy - s_in]))
        assert err_in <= 0.01 * s_in, (err_in, s_in)
        # the ring's hoop stress at r = 1.2 a … 0.9 b against Lamé
        cbd = body.cbd_stress_dofs
        sel = cbd[(r[cbd] > 1.2 * A_UM) & (r[cbd] < 0.9 * B_UM)]
        rs = r[sel]
        c, sn = X[sel, 0] / rs, X[sel, 1] / rs
        st = s[sel]
        hoop = sn**2 * st[:, 0, 0] + c**2 * st[:, 1, 1] - 2 * sn * c * st[:, 0, 1]
        srr_a, spp_a = ring(rs)
        scale = abs(ring(A_UM)[1])
        assert _max_abs(COMM, hoop - spp_a) <= 0.01 * scale
        assert _max_abs(COMM, (c**2 * st[:, 0, 0] + sn**2 * st[:, 1, 1] + 2 * sn * c * st[:, 0, 1]) - srr_a) \
            <= 0.01 * scale
    finally:
        body.destroy()


@pytest.mark.mpi
def test_reference_theta_everywhere_is_stress_free_and_a_loose_part_is_refused():
    """θ = θ₀ in the inclusion: zero stress to round-off (clamped ring, stiff CBD). A part that nothing
    holds (the inclusion alone, expected to have no rigid modes) is refused by the factorisation's
    null-pivot count instead of returning an arbitrary rigid motion."""
    from dolfinx import fem

    from nmcfx.errors import SolverError

    mesh, ct, ft = concentric_disks(0.5, 1.0)
    tdim = mesh.topology.dim
    n_cells = mesh.topology.index_map(tdim).size_local + mesh.topology.index_map(tdim).num_ghosts
    theta = fem.Function(fem.functionspace(mesh, ("Lagrange", 1)))
    theta.x.array[:] = THETA0
    cells = np.arange(n_cells, dtype=np.int32)
    body = BondedElasticitySolver(mesh, ct.find(1), [(theta, cells, cells)], linear_material(),
                                  Stiffness.isotropic(E2, NU2), theta_ref=THETA0, clamped_facets=ft.find(3),
                                  assumption_2d="plane_strain", prefix="test_zero_")
    try:
        body.solve()
        assert _max_abs(COMM, body.sigma.x.array) <= 1e-9
    finally:
        body.destroy()
    # the inclusion alone as a "body" whose clamped facets do not touch it: free to move
    from dolfinx.mesh import create_submesh

    sub, emap, _, _ = create_submesh(mesh, tdim, ct.find(1))
    n_sub = sub.topology.index_map(tdim).size_local + sub.topology.index_map(tdim).num_ghosts
    parent_cells = emap.sub_topology_to_topology(np.arange(n_sub, dtype=np.int32), inverse=False)
    sub_cells = np.arange(n_sub, dtype=np.int32)
    # a free body told it is held (as a clamped body whose clamp does not reach this part would be)
    loose = BondedElasticitySolver(sub, sub_cells, [(theta, parent_cells, sub_cells)], linear_material(),
                                   Stiffness.isotropic(E2, NU2), theta_ref=THETA0, clamped_facets=None,
                                   assumption_2d="plane_strain", prefix="test_loose_")
    try:
        loose.expected_null_pivots = 0  # claim it is held: the factorisation must find 3 rigid modes
        with pytest.raises(SolverError, match="rigid-body mode"):
            loose.solve()
    finally:
        loose.destroy()
