"""Two-way chemo-mechanics (``[mechanics] coupling = "two_way"``): the stress-driven flux
θ D_eff ∇χ, χ = Ω:σ/(N_L R T), added to the θ equation (staggered).

What physics cannot fake: no lattice change (Ω = 0) is the one-way run to round-off; Li is
conserved to round-off with the coupling on (also in a rest, where only the stress moves Li);
on a charge of this material (Ω_a > 0: Li expands a; Ω_c < 0 above θ ≈ 0.45) Ω:σ is highest at
the surface (basal tension, c compression), so the stress pulls Li towards the surface and the
centre–surface difference shrinks; serial ≡ 2 ranks; bad input is one line.
"""

from __future__ import annotations

import csv
import gc
import textwrap

from mpi4py import MPI

import numpy as np
import pytest

from conftest import run_cli, tiny_run
from nmcfx.cli import main
from nmcfx.solver.run import execute, prepare

COMM = MPI.COMM_WORLD


@pytest.fixture(autouse=True)
def _free_mpi_objects():
    yield
    gc.collect()


class Probe:
    """A Simulation observer keeping ∫θ, the centre–surface difference, χ at the centre and the
    surface, the stress-driven load and the final θ."""

    def __init__(self):
        self.integral, self.step, self.dtheta, self.chi_surface, self.chi_center, self.load_sum = [], [], [], [], [], []

    def start(self, sim, restore=None):
        self.mech = next((o for o in sim.observers if hasattr(o, "two_way")), None)
        sim.solver.add_probe("centre", sim.solver.particle_center_of_mass[None, :])

    def record(self, sim, rec):
        sv = sim.solver
        self.integral.append(sv.integral_theta())
        self.step.append(rec.protocol_step)
        self.dtheta.append(rec.theta_center - rec.theta_surface_min)
        m = self.mech
        if m is not None and m.two_way:
            chi = m.potential.chi
            self.chi_center.append(float(sv.probe("centre", chi)[0]))
            dofs = sv._surface.dofs
            n_owned = sv.field.n_owned
            own = dofs[dofs < n_owned]
            lo = COMM.allreduce(float(chi.x.array[own].min()) if len(own) else np.inf, op=MPI.MIN)
            self.chi_surface.append(lo)
            b = m.flux_term.load  # unscattered: each rank's cells' contributions, ghost entries included
            self.load_sum.append((COMM.allreduce(float(b.sum()), op=MPI.SUM),
                                  COMM.allreduce(float(np.abs(b).sum()), op=MPI.SUM)))

    def snapshot(self, sim, t):
        pass

    def step_end(self, sim, info):
        pass

    def finish(self, sim):
        self.theta = sim.solver.theta.x.array[: sim.solver.field.n_owned].copy()
        self.summary_steps = sim.solver.counters.steps


def _cfg(coupling, steps, lattice_csv=None, initial_theta=0.95, solver=None) -> dict:
    mech = {"coupling": coupling, "assumption_2d": "generalized_plane_strain"}
    if lattice_csv is not None:
        mech["lattice_csv"] = str(lattice_csv)
    cfg = {
        "title": "two-way test",
        "geometry": {"shape": "disk", "diameter_um": 2.4, "mesh_size_um": 0.2, "surface_mesh_size_um": 0.06},
        "protocol": {"initial_theta": initial_theta, "steps": steps},
        "mechanics": mech,
        "output": {"fields": "none", "figures": False, "progress": False},
    }
    if solver:
        cfg["solver"] = solver
    return cfg


def _run(tmp_path, cfg, name):
    out = COMM.bcast(str(tmp_path / name), root=0)
    probe = Probe()
    summary = execute(prepare(cfg, comm=COMM), out, comm=COMM, observers=[probe])
    return summary, probe


CHARGE = [{"type": "charge", "current_mA_g": 200, "duration_min": 6}]


@pytest.mark.mpi
def test_no_lattice_change_is_the_one_way_run(tmp_path):
    """Ω = 0 (constant a, c): two-way gives exactly the one-way θ (the term is present, with χ = 0)."""
    flat = COMM.bcast(str(tmp_path / "flat.csv"), root=0)
    if COMM.rank == 0:
        (tmp_path / "flat.csv").write_text("theta,a_A,c_A\n0.0,2.87551,14.1944\n1.0,2.87551,14.1944\n")
    COMM.barrier()
    s1, p1 = _run(tmp_path, _cfg("one_way", CHARGE, flat), "one")
    s2, p2 = _run(tmp_path, _cfg("two_way", CHARGE, flat), "two")
    assert p2.mech.flux_term is not None and not p2.mech.flux_term.active
    assert s1["steps"] == s2["steps"]
    assert np.max(np.abs(p1.theta - p2.theta)) <= 1e-14
    assert np.max(np.abs(np.array(p1.integral) - np.array(p2.integral))) <= 1e-13 * p1.integral[0]


@pytest.mark.mpi
def test_li_is_conserved_with_the_stress_driven_flux(tmp_path):
    """Charge then rest: the ledger closes to 1e-10 and, in the rest (no boundary flux, the stress still
    moving Li inside), ∫θ stays put to round-off; the load of the term sums to zero."""
    steps = CHARGE + [{"type": "rest", "duration_min": 4}]
    s, p = _run(tmp_path, _cfg("two_way", steps), "two")
    assert s["max_abs_mass_balance_error"] <= 1e-10
    sums = np.array(p.load_sum)
    assert np.abs(sums[:, 1]).max() > 0  # the term is active
    assert np.all(np.abs(sums[:, 0]) <= 1e-12 * np.maximum(sums[:, 1], 1e-300))
    I, step = np.array(p.integral), np.array(p.step)
    rest = I[step == 1]
    assert len(rest) >= 2
    end_of_charge = I[step == 0][-1]
    assert np.max(np.abs(rest - end_of_charge)) <= 1e-12 * I[0]


@pytest.mark.mpi
def test_stress_pulls_li_towards_the_tensile_surface_on_charge(tmp_path):
    """Charge: Ω:σ = Ω_a(σ_xx + σ_yy) + Ω_c σ_zz is highest at the Li-poor surface (basal tension,
    Ω_a > 0; c-axis compression, Ω_c < 0) → χ(surface) > χ(centre), the stress drives Li outwards,
    so the centre–surface difference is smaller than one-way and the centre empties sooner."""
    s1, p1 = _run(tmp_path, _cfg("one_way", CHARGE), "one")
    s2, p2 = _run(tmp_path, _cfg("two_way", CHARGE), "two")
    chi_s, chi_c = np.array(p2.chi_surface[1:]), np.array(p2.chi_center[1:])
    assert np.all(chi_s > chi_c)
    d1, d2 = np.array(p1.dtheta), np.array(p2.dtheta)
    assert d1.max() > 0.02  # a real gradient
    assert d2.max() < d1.max()  # homogenised: the difference shrinks …
    assert d1.max() - d2.max() < 0.2 * d1.max()  # … by a small amount (a few % here)
    # the same Li has left (the flux is prescribed) …
    assert p2.integral[-1] == pytest.approx(p1.integral[-1], rel=1e-10)
    # … but less of it from the surface: the stress moves Li from the centre outwards
    c1 = s1["theta_center_final"]
    c2 = s2["theta_center_final"]
    assert c2 < c1


def test_serial_and_two_ranks_agree(tmp_path):
    """`nmcfx run` with two-way coupling on 1 and 2 ranks: the same θ and stress history to 1e-8."""
    cfg = textwrap.dedent("""
        title = "two-way, serial vs 2 ranks"
        [geometry]
        shape = "disk"
        diameter_um = 2.4
        mesh_size_um = 0.2
        surface_mesh_size_um = 0.06
        [protocol]
        [[protocol.steps]]
        type = "charge"
        current_mA_g = 200
        duration_min = 4
        [mechanics]
        coupling = "two_way"
        [output]
        fields = "none"
        figures = false
        """)
    (tmp_path / "c.toml").write_text(cfg)
    runs = {}
    for n in (1, 2):
        out = run_cli([str(tmp_path / "c.toml")], tmp_path / f"np{n}", ranks=n)
        runs[n] = (_csv(out / "timeseries.csv"), _csv(out / "mechanics.csv"))
    (t1, m1), (t2, m2) = runs[1], runs[2]
    assert len(t1["time_s"]) == len(t2["time_s"])
    for col in ("theta_center", "theta_surface_min", "theta_surface_max"):
        assert np.max(np.abs(t1[col] - t2[col])) <= 1e-8, col
    scale = np.abs(m1["sigma1_max_MPa"]).max()
    for col in ("sigma1_max_MPa", "hoop_surface_max_MPa", "hydrostatic_center_MPa"):
        assert np.max(np.abs(m1[col] - m2[col])) <= 1e-8 * scale, col


def _csv(path) -> dict:
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    return {k: np.array([float(r[k]) for r in rows]) for k in rows[0]}


GOOD = tiny_run('[mechanics]\ncoupling = "two_way"')


@pytest.mark.parametrize("value", ['"three_way"', '"Two_Way"', "2"])
def test_bad_coupling_one_line_nothing_written(tmp_path, capsys, value):
    cfg = tmp_path / "case.toml"
    cfg.write_text(textwrap.dedent(GOOD.replace('"two_way"', value)))
    out = tmp_path / "out"
    assert main(["run", str(cfg), "-o", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("nmcfx: error: mechanics.coupling:") and "one_way" in err[0] and "two_way" in err[0]
    assert not out.exists()


@pytest.mark.mpi
def test_forms_and_nodal_assembly_agree(tmp_path):
    """The UFL residual of the term (DOLFINx assembly) and its load vectors (NumPy assembly) are the
    same discrete problem: θ agrees to the Newton tolerance after a charge and a rest. (Newton to
    PETSc's 1e-10 of the first residual: the time loop's default stops at 1 % of theta_tol, where
    the two paths' different P2 Jacobians leave different iterates of the same solution.)"""
    steps = [{"type": "charge", "current_mA_g": 200, "duration_min": 4}, {"type": "rest", "duration_min": 2}]
    tight = {"petsc_options": {"snes_rtol": 1e-10}}
    s1, p1 = _run(tmp_path, _cfg("two_way", steps, solver={"assembly": "auto", **tight}), "auto")
    s2, p2 = _run(tmp_path, _cfg("two_way", steps, solver={"assembly": "forms", **tight}), "forms")
    assert s1["steps"] == s2["steps"]
    assert np.max(np.abs(p1.theta - p2.theta)) <= 1e-9
    assert p1.mech.flux_term.active


@pytest.mark.mpi
def test_stable_where_the_lattice_changes_fast(tmp_path):
    """Lithiation from θ = 0.22, in the c-axis collapse (Ω_c ≈ +0.1, the stress flux comparable to
    D_chem): the stabilised staggering takes about the one-way steps (the explicit stress flux alone
    needs ~10× more, most rejected) and the stress speeds the equilibration, as on charge."""
    steps = [{"type": "discharge", "current_mA_g": 100, "duration_min": 6}]
    s1, p1 = _run(tmp_path, _cfg("one_way", steps, initial_theta=0.22), "one")
    s2, p2 = _run(tmp_path, _cfg("two_way", steps, initial_theta=0.22), "two")
    assert s2["rejected_steps"] <= s1["rejected_steps"] + 2
    assert s2["steps"] <= 1.5 * s1["steps"]
    assert s2["max_abs_mass_balance_error"] <= 1e-10
    assert max(np.abs(p2.dtheta)) < max(np.abs(p1.dtheta))  # the rim–centre difference shrinks


class Crash(Exception):
    pass


@pytest.mark.mpi
def test_resume_reproduces_a_two_way_run(tmp_path, monkeypatch):
    """A two-way run that crashes in its second protocol step and is resumed from the checkpoint
    (which rebuilds the stress-driven loads of θⁿ⁻¹ and θⁿ) ends with the uninterrupted run's θ."""
    from nmcfx.solver import outputs

    steps = [{"type": "charge", "current_mA_g": 200, "duration_min": 3}, {"type": "rest", "duration_min": 3}]
    cfg = _cfg("two_way", steps, solver={"checkpoint_wall_s": 1e-9})
    full, p_full = _run(tmp_path, cfg, "full")
    base = COMM.bcast(str(tmp_path), root=0)
    original = outputs.RunOutputs.record

    def crashing(self, sim, rec):
        original(self, sim, rec)
        if rec.time_s > 270.0:  # in the rest
            raise Crash()

    monkeypatch.setattr(outputs.RunOutputs, "record", crashing)
    with pytest.raises(Crash):
        execute(prepare(cfg, comm=COMM), f"{base}/cut", comm=COMM)
    monkeypatch.setattr(outputs.RunOutputs, "record", original)
    p_cut = Probe()
    execute(prepare(cfg, comm=COMM), f"{base}/cut", comm=COMM, resume=True, observers=[p_cut])
    assert np.max(np.abs(p_cut.theta - p_full.theta)) <= 1e-10  # (2 ranks: the CG projection of Ω:σ, 1e-12)
    if COMM.rank == 0:
        a, b = _csv(f"{base}/full/mechanics.csv"), _csv(f"{base}/cut/mechanics.csv")
        assert np.allclose(a["time_s"], b["time_s"], atol=1e-9)
        assert np.allclose(a["sigma1_max_MPa"], b["sigma1_max_MPa"], rtol=1e-9, atol=1e-9)
