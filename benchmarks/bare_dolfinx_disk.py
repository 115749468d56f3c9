"""The disk benchmark written directly against DOLFINx, gmsh and petsc4py (no nmcfx framework).

2.4 µm disk, θ₀ = 0.95, delithiation at 100 mA g⁻¹ for 20 min:

    ∂θ/∂t = ∇·(D_chem(θ) ∇θ),   −D_chem ∇θ·n = q_s on boundary arc s,

either uniform (``--eta 1``) or Lun 2025 Fig. 4c (default): the arc −45°…45° blocked with
η = 0.3 (q_blocked = η q_free, the total current unchanged: q_free (Γ_free + η Γ_blocked) = q̄ Γ).

P1 Lagrange, backward Euler with a *fixed* step, Newton (SNES newtonls, backtracking
line search) with a direct LU solve. D_chem(θ) and dD_chem/dθ come from
``nmcfx.materials.get_material()`` (pure NumPy/SciPy) and are evaluated at the nodes at
every Newton iterate, as in the framework. The discrete problem is deliberately the same
as the framework's (nodal coefficient, lumped vertex-rule mass, quadrature degree 2, the
same SNES tolerances and LU package (``--lu``/``--ordering``, by default what the framework picks:
PETSc's LU with METIS ordering on one rank, MUMPS on several), the same gmsh size field) so
the two do the same arithmetic and a timing ratio at equal steps measures framework
overhead, not a different discretisation. What the bare script does *not* do: adaptive
steps, error estimates, per-step observables, mass ledger, CSV/VTX/figures, validation.

Run:  python benchmarks/bare_dolfinx_disk.py [--dt 30] [--mesh-size 0.15] [--eta 0.3] [--json out.json]
      mpiexec -n 2 python benchmarks/bare_dolfinx_disk.py
The problem is solved ``--repeat`` + 1 times in one process; the first (cold: JIT, imports)
run is discarded and the figures of the others are reported (warm).
"""

from __future__ import annotations

from mpi4py import MPI  # noqa: I001  (must precede dolfinx / petsc4py)

import argparse
import json
import math
import resource
import statistics
import time

import gmsh
import numpy as np
import ufl
from petsc4py import PETSc

import dolfinx
import dolfinx.fem.petsc
import dolfinx.geometry
from dolfinx import fem
from dolfinx.io import gmsh as gmshio

from nmcfx.materials import FARADAY, get_material


def disk_mesh(comm, diameter_um: float, h: float, hs: float, grading_um: float, blocked: bool = False):
    """gmsh disk centred at 0 (µm), size hs on the circle growing to h over grading_um; with
    ``blocked`` the circle is two arcs, −45°…45° (tag 2) and the rest (tag 1)."""
    r = 0.5 * diameter_um
    if comm.rank == 0:
        gmsh.initialize(readConfigFiles=False)
        gmsh.option.setNumber("General.Terminal", 0)
        gmsh.model.add("bare_disk")
        occ = gmsh.model.occ
        a = math.pi / 4  # (the same OCC construction as nmcfx's disk with one sector, so the meshes agree)
        pieces = [(a, 2 * math.pi - a), (2 * math.pi - a, 2 * math.pi + a)] if blocked else [(0.0, 2 * math.pi)]
        loop = [occ.addCircle(0.0, 0.0, 0.0, r, angle1=a0, angle2=a1) for a0, a1 in pieces] if blocked \
            else [occ.addCircle(0.0, 0.0, 0.0, r)]
        surf = occ.addPlaneSurface([occ.addCurveLoop(loop)])
        occ.synchronize()
        arcs = [c for _, c in gmsh.model.getBoundary([(2, surf)], oriented=False)]
        blocked_arcs = []
        for c in arcs:  # an arc is blocked if its midpoint lies within ±45°
            lo, hi = gmsh.model.getParametrizationBounds(1, c)
            x, y, _ = gmsh.model.getValue(1, c, [0.5 * (lo[0] + hi[0])])
            if blocked and abs(math.atan2(y, x)) < a:
                blocked_arcs.append(c)
        gmsh.model.addPhysicalGroup(2, [surf], tag=1)
        gmsh.model.addPhysicalGroup(1, [c for c in arcs if c not in blocked_arcs], tag=1)
        if blocked:
            gmsh.model.addPhysicalGroup(1, blocked_arcs, tag=2)
        for opt, val in (("Mesh.MeshSizeExtendFromBoundary", 0), ("Mesh.MeshSizeFromPoints", 0),
                         ("Mesh.MeshSizeFromCurvature", 0), ("Mesh.MeshSizeMin", 0.0), ("Mesh.MeshSizeMax", 1e22),
                         ("Mesh.Algorithm", 6), ("Mesh.Optimize", 1)):
            gmsh.option.setNumber(opt, val)
        f = gmsh.model.mesh.field
        dist = f.add("Distance")
        f.setNumbers(dist, "CurvesList", arcs)
        longest = max(occ.getMass(1, c) for c in arcs)
        f.setNumber(dist, "Sampling", int(np.clip(math.ceil(3.0 * longest / hs), 20, 20000)))
        thr = f.add("Threshold")
        f.setNumber(thr, "InField", dist)
        for key, val in (("SizeMin", hs), ("SizeMax", h), ("DistMin", 0.0), ("DistMax", grading_um)):
            f.setNumber(thr, key, val)
        f.setAsBackgroundMesh(thr)
        gmsh.model.mesh.generate(2)
    data = gmshio.model_to_mesh(gmsh.model if comm.rank == 0 else None, comm, 0, gdim=2)
    if comm.rank == 0:
        gmsh.finalize()
    return data.mesh, data.facet_tags


def default_lu(comm) -> tuple[str, str | None]:
    """The LU package and ordering nmcfx picks for this size of problem (solver/problem.py)."""
    return ("petsc", "metisnd") if comm.size == 1 else ("mumps", None)


def solve(comm, *, diameter_um=2.4, h=0.15, hs=0.05, dt=30.0, minutes=20.0, mA_g=100.0, theta0=0.95,
          lu=None, ordering=None, eta=0.3, report_min=(5.0, 10.0, 15.0, 20.0)) -> dict:
    wall0 = time.perf_counter()
    c0 = time.process_time()
    if lu is None:
        lu, ordering = default_lu(comm)
    material = get_material()
    blocked = eta != 1.0
    mesh, facet_tags = disk_mesh(comm, diameter_um, h, hs, 0.1 * diameter_um, blocked)
    t_mesh = time.perf_counter() - wall0

    # ---------------------------------------------------------------- forms
    V = fem.functionspace(mesh, ("Lagrange", 1))
    theta, theta_n = fem.Function(V), fem.Function(V)
    D, dD = fem.Function(V), fem.Function(V)
    k = fem.Constant(mesh, PETSc.ScalarType(dt))
    q = fem.Constant(mesh, PETSc.ScalarType(0.0))  # flux density of the free surface (tag 1)
    q_blk = fem.Constant(mesh, PETSc.ScalarType(0.0))  # of the blocked arc (tag 2)
    v, w = ufl.TestFunction(V), ufl.TrialFunction(V)
    dx = ufl.Measure("dx", domain=mesh, metadata={"quadrature_degree": 2})
    dxm = ufl.Measure("dx", domain=mesh, metadata={"quadrature_rule": "vertex", "quadrature_degree": 1})
    ds = ufl.Measure("ds", domain=mesh, subdomain_data=facet_tags, metadata={"quadrature_degree": 1})
    # residual × dt (it then measures Li), as in the framework
    F = (theta - theta_n) * v * dxm + k * D * ufl.inner(ufl.grad(theta), ufl.grad(v)) * dx + k * q * v * ds(1)
    if blocked:
        F += k * q_blk * v * ds(2)
    # exact Jacobian of the nodal coefficient: ∂(Σ D(θ_i) φ_i)/∂θ_j = D'(θ_j) φ_j, which the vertex
    # rule integrates exactly against the (cell-wise constant) ∇θ·∇v of P1
    J = w * v * dxm + k * D * ufl.inner(ufl.grad(w), ufl.grad(v)) * dx \
        + k * dD * w * ufl.inner(ufl.grad(theta), ufl.grad(v)) * dxm
    F_form, J_form = fem.form(F), fem.form(J)
    one = fem.Constant(mesh, PETSc.ScalarType(1.0))
    area = comm.allreduce(fem.assemble_scalar(fem.form(one * dx)), op=MPI.SUM)
    gamma_free = comm.allreduce(fem.assemble_scalar(fem.form(one * ds(1))), op=MPI.SUM)
    gamma_blk = comm.allreduce(fem.assemble_scalar(fem.form(one * ds(2))), op=MPI.SUM) if blocked else 0.0
    perimeter = gamma_free + gamma_blk
    j = material.current_density_for_specific_current(mA_g, area, perimeter)  # A m⁻²
    qbar = j / (FARADAY * material.site_concentration) * 1e6  # mean θ flux, µm s⁻¹ (Li leaves)
    q.value = qbar * perimeter / (gamma_free + eta * gamma_blk)
    q_blk.value = eta * float(q.value)
    mass_form = fem.form(theta * dx)

    def update_coefficients():
        th = np.clip(theta.x.array, 1e-6, 1.0 - 1e-6)
        D.x.array[:] = material.D_chem(th) * 1e12  # m² s⁻¹ → µm² s⁻¹
        dD.x.array[:] = material.dD_chem(th) * 1e12

    # ---------------------------------------------------------------- SNES + LU
    A = dolfinx.fem.petsc.create_matrix(J_form)
    b = dolfinx.fem.petsc.create_vector(V)
    x = dolfinx.fem.petsc.create_vector(V)
    t_asm = [0.0]

    def residual(snes, x_, b_):
        t0 = time.perf_counter()
        x_.ghostUpdate(addv=PETSc.InsertMode.INSERT, mode=PETSc.ScatterMode.FORWARD)
        with x_.localForm() as xl:
            theta.x.array[:] = xl.array_r
        update_coefficients()
        with b_.localForm() as bl:
            bl.set(0.0)
        dolfinx.fem.petsc.assemble_vector(b_, F_form)
        b_.ghostUpdate(addv=PETSc.InsertMode.ADD, mode=PETSc.ScatterMode.REVERSE)
        t_asm[0] += time.perf_counter() - t0

    def jacobian(snes, x_, A_, P_):
        t0 = time.perf_counter()
        A_.zeroEntries()
        dolfinx.fem.petsc.assemble_matrix(A_, J_form)
        A_.assemble()
        t_asm[0] += time.perf_counter() - t0

    snes = PETSc.SNES().create(comm)
    snes.setFunction(residual, b)
    snes.setJacobian(jacobian, A)
    snes.setType("newtonls")
    snes.getLineSearch().setType("bt")
    snes.setTolerances(rtol=1e-10, atol=1e-13 * area, stol=0.0, max_it=12)  # as TransportSolver: 1e-13 × measure
    ksp = snes.getKSP()
    ksp.setType("preonly")
    ksp.getPC().setType("lu")
    ksp.getPC().setFactorSolverType(lu)
    if ordering:
        ksp.getPC().setFactorOrdering(ordering)

    # ---------------------------------------------------------------- probes for the report
    n_owned = V.dofmap.index_map.size_local
    surf_dofs = fem.locate_dofs_topological(V, 1, facet_tags.indices)
    surf_dofs = surf_dofs[surf_dofs < n_owned]
    origin = np.zeros((1, 3))
    tree = dolfinx.geometry.bb_tree(mesh, 2, entities=np.arange(mesh.topology.index_map(2).size_local, dtype=np.int32))
    cells = dolfinx.geometry.compute_colliding_cells(mesh, dolfinx.geometry.compute_collisions_points(tree, origin),
                                                     origin).links(0)
    has_center = comm.allreduce(comm.rank if len(cells) else comm.size, op=MPI.MIN) == comm.rank

    def observe(t):
        c = float(theta.eval(origin, cells[:1])[0]) if has_center else 0.0
        lo = theta.x.array[surf_dofs].min(initial=np.inf)
        return {"time_s": t, "theta_center": comm.allreduce(c, op=MPI.SUM),
                "theta_mean": comm.allreduce(fem.assemble_scalar(mass_form), op=MPI.SUM) / area,
                "theta_surface_min": comm.allreduce(lo, op=MPI.MIN)}

    t_setup = time.perf_counter() - wall0 - t_mesh

    # ---------------------------------------------------------------- time loop
    theta_n.x.array[:] = theta0
    theta.x.array[:] = theta0
    nsteps = int(round(minutes * 60.0 / dt))
    report_at = {int(round(m * 60.0 / dt)) for m in report_min}
    newton = linear = 0
    obs = []
    t_loop0 = time.perf_counter()
    for n in range(1, nsteps + 1):
        theta_n.x.petsc_vec.copy(x)  # initial guess: previous state
        snes.solve(None, x)
        if snes.getConvergedReason() <= 0:
            raise RuntimeError(f"Newton failed at step {n}: reason {snes.getConvergedReason()}")
        newton += snes.getIterationNumber()
        linear += snes.getLinearSolveIterations()
        x.copy(theta.x.petsc_vec)
        theta.x.scatter_forward()
        theta_n.x.array[:] = theta.x.array
        if n in report_at:
            obs.append(observe(n * dt))
    t_loop = time.perf_counter() - t_loop0
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - c0
    for o in (snes, A, b, x):
        o.destroy()

    def tmax(v):
        return comm.allreduce(v, op=MPI.MAX)

    return {
        "dofs": V.dofmap.index_map.size_global, "steps": nsteps, "dt_s": dt, "newton_iterations": newton,
        "linear_iterations": linear, "mesh_s": tmax(t_mesh), "setup_s": tmax(t_setup), "loop_s": tmax(t_loop),
        "assembly_s": tmax(t_asm[0]), "solve_s": tmax(t_loop - t_asm[0]), "wall_s": tmax(wall),
        "cpu_s": tmax(cpu), "observables": obs, "lu": lu, "ordering": ordering, "eta": eta,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mesh-size", type=float, default=0.15, help="interior element size, µm")
    p.add_argument("--surface-mesh-size", type=float, default=0.05, help="surface element size, µm")
    p.add_argument("--dt", type=float, default=30.0, help="fixed time step, s")
    p.add_argument("--minutes", type=float, default=20.0)
    p.add_argument("--lu", default=None, help="LU package: petsc (serial) | mumps | superlu_dist; default: nmcfx's choice")
    p.add_argument("--ordering", default=None, help="LU ordering (petsc LU), e.g. metisnd, nd, qmd")
    p.add_argument("--eta", type=float, default=0.3, help="flux ratio of the blocked arc −45°…45° (1: uniform disk)")
    p.add_argument("--repeat", type=int, default=3, help="warm runs after one discarded cold run")
    p.add_argument("--json", help="write the results here (rank 0)")
    args = p.parse_args(argv)
    comm = MPI.COMM_WORLD
    hs = args.surface_mesh_size
    PETSc.Log.begin()
    runs = []
    for _ in range(args.repeat + 1):
        ev = {e: PETSc.Log.Event(e).getPerfInfo()["time"] for e in ("PCSetUp", "KSPSolve")}
        r = solve(comm, h=args.mesh_size, hs=hs, dt=args.dt, minutes=args.minutes, lu=args.lu,
                  ordering=args.ordering, eta=args.eta)
        r["linear_solve_s"] = comm.allreduce(
            sum(PETSc.Log.Event(e).getPerfInfo()["time"] - ev[e] for e in ev), op=MPI.MAX)
        runs.append(r)
    cold, warm = runs[0], runs[1:] or runs[:1]
    out = dict(warm[-1])
    for key in ("mesh_s", "setup_s", "loop_s", "assembly_s", "solve_s", "linear_solve_s", "wall_s", "cpu_s"):
        out[key] = statistics.median(r[key] for r in warm)
        out[key + "_all"] = [r[key] for r in warm]
    out["cold_wall_s"] = cold["wall_s"]
    out["ranks"] = comm.size
    out["peak_rss_mb"] = comm.allreduce(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, op=MPI.MAX)
    if comm.rank == 0:
        print(f"bare DOLFINx disk (η = {args.eta:g}): {out['dofs']} DOFs, {out['steps']} steps of {args.dt:g} s, "
              f"LU {out['lu']}{'/' + out['ordering'] if out['ordering'] else ''}, "
              f"{out['newton_iterations']} Newton / {out['linear_iterations']} linear iterations, {comm.size} rank(s)")
        print(f"  warm wall {out['wall_s']:.3f} s = mesh {out['mesh_s']:.3f} + setup {out['setup_s']:.3f} "
              f"+ time loop {out['loop_s']:.3f} (assembly {out['assembly_s']:.3f}, LU {out['linear_solve_s']:.3f})"
              f"; cold {out['cold_wall_s']:.2f} s; peak RSS {out['peak_rss_mb']:.0f} MB")
        for o in out["observables"]:
            print(f"  t = {o['time_s'] / 60:4.1f} min  θ_center {o['theta_center']:.5f}  θ_mean {o['theta_mean']:.5f}"
                  f"  θ_surface_min {o['theta_surface_min']:.5f}")
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(out, fh, indent=1)
    return out


if __name__ == "__main__":
    main()
