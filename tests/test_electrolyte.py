"""The resolved electrolyte (``[electrode] electrolyte = "resolved"``): properties, analytic steady
states, conservation, the uniform limit, serial ≡ 2 ranks, bad inputs."""

from __future__ import annotations

import csv
import math
import subprocess

import numpy as np
import pytest
from mpi4py import MPI

from nmcfx.errors import InputError
from nmcfx.materials.constants import FARADAY, GAS_CONSTANT
from nmcfx.materials.electrolyte import (
    DEFAULT_ELECTROLYTE_CSV,
    ConstantOverrides,
    Valoen2005,
    electrolyte_properties,
    load_electrolyte_table,
)
from nmcfx.solver.run import execute, prepare

QUIET = {"fields": "none", "figures": False, "progress": False}
#: constant properties for the analytic checks
CONSTANT = {"electrolyte_conductivity_S_m": 1.0, "electrolyte_diffusivity_m2_s": 1e-10,
            "electrolyte_transference_number": 0.4, "electrolyte_thermodynamic_factor": 1.5}


def _series(out, col):
    with open(f"{out}/timeseries.csv") as fh:
        return np.array([float(r[col]) for r in csv.DictReader(fh)])


# ---------------------------------------------------------------------------- properties
def test_valoen_properties_at_one_molar():
    """Valøen & Reimers 2005 at 25 °C and 1 mol/L: κ ≈ 1.19 S/m (their maximum, ~1.2 S/m, lies near
    1 mol/L), D ≈ 3.2e-10 m²/s, (1 − t₊)TF ≈ 1.32; κ peaks between 0.5 and 1.5 mol/L."""
    el = Valoen2005(298.15)
    assert el.conductivity(1000.0) == pytest.approx(1.194, rel=2e-3)
    assert el.diffusivity(1000.0) == pytest.approx(3.22e-10, rel=3e-3)
    assert el.diffusion_potential_factor(1000.0) == pytest.approx(1.322, rel=2e-3)
    c = np.linspace(100.0, 3000.0, 300)
    assert 500.0 < c[np.argmax(el.conductivity(c))] < 1500.0
    assert np.all(np.diff(el.diffusivity(c)) < 0)  # D falls with c (viscosity)
    # warmer electrolyte conducts better
    assert Valoen2005(318.15).conductivity(1000.0) > el.conductivity(1000.0)


@pytest.mark.parametrize("props", [Valoen2005(298.15), Valoen2005(263.15),
                                   load_electrolyte_table(DEFAULT_ELECTROLYTE_CSV)])
def test_property_derivatives_are_exact(props):
    c = np.array([151.0, 703.0, 1007.0, 1809.0, 2911.0])  # off the table nodes (PCHIP is C¹ there)
    h = 1e-3
    for name in ("conductivity", "diffusivity", "thermodynamic_factor", "diffusion_potential_factor"):
        f, df = getattr(props, name), getattr(props, "d" + name)
        fd = (f(c + h) - f(c - h)) / (2 * h)
        assert np.allclose(df(c), fd, rtol=1e-6, atol=1e-12 * np.abs(f(c)).max()), name


def test_default_table_matches_the_fits():
    """The shipped CSV is the Valøen fit tabulated at 25 °C: at its nodes it is the fit, in between
    (PCHIP) within 0.5 %."""
    table = load_electrolyte_table(DEFAULT_ELECTROLYTE_CSV)
    fit = Valoen2005(298.15)
    nodes = table.nodes["c_mol_m3"]
    mid = 0.5 * (nodes[1:] + nodes[:-1])
    for name in ("conductivity", "diffusivity", "thermodynamic_factor"):
        assert np.allclose(getattr(table, name)(nodes), getattr(fit, name)(nodes), rtol=1e-5), name
        assert np.allclose(getattr(table, name)(mid), getattr(fit, name)(mid), rtol=5e-3), name
    assert "Valøen" in table.provenance or "Valoen" in table.provenance


def test_constant_overrides():
    el = electrolyte_properties(conductivity=2.0, transference_number=0.3)
    assert isinstance(el, ConstantOverrides)
    assert el.conductivity(500.0) == 2.0 and el.dconductivity(500.0) == 0.0
    assert el.diffusion_potential_factor(1000.0) == pytest.approx(0.7 * Valoen2005().thermodynamic_factor(1000.0))


# ---------------------------------------------------------------------------- 1D strips
def strip_config(region: str = "electrolyte", *, W=3.0, hp=2.0, L=10.0, h=0.5, c_rate=5.0, duration_s=30.0,
                 porosity=0.5, **electrode):
    """A 1D-like electrode: a rectangular NMC slab [0, W] × [0, hp] on the collector, under a
    rectangle of electrolyte (or porous CBD) of height L up to the separator."""
    H = hp + L
    geometry = {"shape": "electrode", "width_um": W, "height_um": H,
                "particles": [{"shape": "contour", "name": "slab",
                               "contour_points_um": [[0, 0], [W, 0], [W, hp], [0, hp]]}],
                "mesh_size_um": h, "surface_mesh_size_um": h}
    if region == "cbd":
        geometry["strands"] = [{"points_um": [[0.5 * W, hp - 0.2], [0.5 * W, H]], "width_um": W}]
        # this CBD floats on the slab (no wire to the collector): a σ_CBD/σ_NMC near 1e5 would put its
        # φ_s residual's round-off above the 1e-12 charge tolerance of the φ_s block
        electrode.setdefault("cbd_conductivity_S_m", 10.0)
    return {
        "geometry": geometry,
        "material": {"scaling_S": 0.01},  # a fast solid: the slab stays nearly uniform
        "electrode": {"electrolyte": "resolved", "cbd_porosity": porosity, **CONSTANT, **electrode},
        "protocol": {"initial_theta": 0.6, "steps": [{"type": "charge", "c_rate": c_rate,
                                                      "duration_min": duration_s / 60.0}]},
        "solver": {"dt_initial_s": 0.05, "dt_max_s": 5.0},
        "output": QUIET,
    }


class FieldProbe:
    """Observer: at the end of a run, y and the values of c_l and δφ_l at every pore node (gathered
    on all ranks), and the applied current density."""

    def start(self, sim, restore=None):  # noqa: ARG002
        pass

    def record(self, sim, rec):
        pass

    def snapshot(self, sim, t):
        pass

    def step_end(self, sim, info):
        pass

    def finish(self, sim):
        el = sim.solver.electrolyte
        self.c0 = el.c0
        out = {}
        for name, f in (("c", el.c_l), ("phi", el.dphi)):
            n = f.V.dofmap.index_map.size_local
            y = f.V.tabulate_dof_coordinates()[:n, 1]
            vals = f.u.x.array[:n]
            ys, vs = zip(*sim.solver.comm.allgather((y, vals)))
            out[name] = (np.concatenate(ys), np.concatenate(vs))
        self.y_c, dc = out["c"]
        self.c = el.c0 + dc
        self.y_phi, self.phi = out["phi"]
        self.j = float(sim.solver.control.j_set.value)


def _analytic_strip(j, hp, L, c0, *, b=1.0):
    """Steady state of the strip with constant properties (CONSTANT) and Bruggeman factor b:
    c(y) linear around c0, φ_l(y) − φ_l(separator) = j (H − y)/κ_eff + (2RT/F)(1 − t₊)TF ln(c/c_sep)."""
    kappa, D = CONSTANT["electrolyte_conductivity_S_m"] * b, CONSTANT["electrolyte_diffusivity_m2_s"] * b
    tp, tf = CONSTANT["electrolyte_transference_number"], CONSTANT["electrolyte_thermodynamic_factor"]
    slope = (1 - tp) * j / (FARADAY * D) * 1e-6  # mol m⁻³ per µm, c falls toward the separator on charge
    H = hp + L

    def c(y):
        return c0 + slope * (0.5 * L - (y - hp))

    def phi(y):
        return j * (H - y) * 1e-6 / kappa + 2 * GAS_CONSTANT * 298.15 / FARADAY * (1 - tp) * tf * np.log(c(y) / c(H))

    return c, phi


@pytest.mark.mpi
@pytest.mark.parametrize("region", ["electrolyte", "cbd"])
def test_strip_matches_the_analytic_steady_state(tmp_path, region):
    """A slab of NMC under a strip of electrolyte (or CBD with Bruggeman factor ε^1.5): after many
    diffusion times the salt profile is the linear one with slope (1 − t₊) j /(F D_eff), and the
    electrolyte potential at the reacting face is the ohmic drop j L/κ_eff plus the diffusion
    potential (2RT/F)(1 − t₊) TF ln(c_face/c_sep)."""
    comm = MPI.COMM_WORLD
    out = comm.bcast(str(tmp_path / region), root=0)
    eps = 0.4
    hp, L = 2.0, 10.0
    cfg = strip_config(region, hp=hp, L=L, porosity=eps)
    probe = FieldProbe()
    summary = execute(prepare(cfg, comm=comm), out, comm=comm, observers=[probe])
    b = eps**1.5 if region == "cbd" else 1.0
    c_exact, phi_exact = _analytic_strip(probe.j, hp, L, probe.c0, b=b)
    dc = c_exact(hp) - c_exact(hp + L)  # the concentration difference across the strip
    assert dc > 1.0  # a real gradient (mol/m³)
    err_c = np.max(np.abs(probe.c - c_exact(probe.y_c)))
    assert err_c < 1e-4 * dc, (err_c, dc)
    face = np.abs(probe.y_phi - hp) < 1e-9
    drop = phi_exact(hp)
    ohmic = probe.j * L * 1e-6 / (CONSTANT["electrolyte_conductivity_S_m"] * b)
    assert 0.2 < ohmic / drop < 0.8  # both parts matter
    err_phi = np.max(np.abs(probe.phi[face] - drop))
    assert err_phi < 1e-4 * drop, (err_phi, drop)
    assert summary["max_abs_charge_balance_error"] < 1e-10
    if comm.rank == 0:
        assert np.max(np.abs(_series(out, "salt_balance_error"))) < 1e-12
        assert np.max(np.abs(_series(out, "electrolyte_charge_balance_error")[1:])) < 1e-9
