"""The resolved electrolyte (``[electrode] electrolyte = "resolved"``): properties, analytic steady
states, conservation, the uniform limit, serial ≡ 2 ranks, bad inputs."""

from __future__ import annotations

import csv

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


# ---------------------------------------------------------------------------- a small electrode
def small_electrode(electrolyte="resolved", *, steps=None, mesh=1.2, **electrode):
    """Two touching particles, one wired to the collector by a CBD strand, in a 20 × 14 µm box."""
    steps = steps or [{"type": "charge", "c_rate": 1.0, "duration_min": 1.0}]
    return {
        "geometry": {"shape": "electrode", "width_um": 20, "height_um": 14,
                     "particles": [{"shape": "disk", "center_um": [6, 6], "diameter_um": 7},
                                   {"shape": "disk", "center_um": [12.9, 6.5], "diameter_um": 7}],
                     "strands": [{"points_um": [[6, 0], [6, 3]], "width_um": 1.2}],
                     "coatings": [{"particle": 0, "start_deg": 200, "end_deg": 340, "thickness_um": 0.6}],
                     "mesh_size_um": mesh},
        "electrode": {"electrolyte": electrolyte, **electrode},
        "protocol": {"initial_theta": 0.9, "steps": steps},
        "output": QUIET,
    }


@pytest.mark.mpi
def test_salt_and_charge_are_conserved_through_charge_hold_rest_discharge(tmp_path):
    """Every step of CC charge, CV hold, rest and CC discharge: salt conserved to round-off (the
    anion balance has no boundary term), the ionic current through the separator equals the reaction
    current into the pores, the electron and Li balances hold; during the rest the salt gradients
    relax."""
    comm = MPI.COMM_WORLD
    out = comm.bcast(str(tmp_path / "cons"), root=0)
    steps = [{"type": "charge", "c_rate": 2.0, "duration_min": 1.0},
             {"type": "hold", "voltage_V": 3.8, "duration_min": 0.5},
             {"type": "rest", "duration_min": 0.5},
             {"type": "discharge", "c_rate": 2.0, "duration_min": 0.5}]
    cfg = small_electrode(steps=steps)
    cfg["surface"] = {"model": "butler_volmer"}
    summary = execute(prepare(cfg, comm=comm), out, comm=comm)
    assert summary["max_abs_mass_balance_error"] <= 1e-10
    if comm.rank == 0:
        step = _series(out, "protocol_step")
        # (the electrode's charge_balance_error is relative to the current itself: meaningless at rest)
        assert np.max(np.abs(_series(out, "charge_balance_error")[step != 2])) <= 1e-10
        salt = _series(out, "salt_balance_error")
        assert np.max(np.abs(salt)) <= 1e-12
        assert np.max(np.abs(_series(out, "c_l_mean_mol_m3") - 1000.0)) <= 1e-9
        q = _series(out, "electrolyte_charge_balance_error")[1:]
        assert np.max(np.abs(q)) <= 1e-9
        spread = _series(out, "c_l_max_mol_m3") - _series(out, "c_l_min_mol_m3")
        assert spread[step == 0].max() > 0.5  # a real salt gradient under current (mol/m³)
        rest = np.flatnonzero(step == 2)
        assert spread[rest[-1]] < 0.05 * spread[rest[0] - 1]  # relaxed within half a minute of rest
        drop = _series(out, "electrolyte_potential_drop_V")
        assert drop[step == 0].max() > 1e-5


def test_uniform_is_the_limit_of_fast_electrolyte_transport(tmp_path):
    """With κ and D × 10ⁿ the resolved electrolyte's potential drop falls as 10⁻ⁿ and the cell voltage
    and particle currents converge to those of the uniform model."""
    runs = {}
    for name, extra in (("uniform", {}), ("x10", {"electrolyte_conductivity_S_m": 12.0,
                                                   "electrolyte_diffusivity_m2_s": 3.2e-9}),
                        ("x1000", {"electrolyte_conductivity_S_m": 1200.0, "electrolyte_diffusivity_m2_s": 3.2e-7})):
        cfg = small_electrode("uniform" if name == "uniform" else "resolved", **extra)
        out = tmp_path / name
        execute(prepare(cfg), out)
        runs[name] = {c: _series(out, c) for c in ("time_s", "voltage_V", "current_mA_g_P0", "current_mA_g_P1")}
        if name != "uniform":
            runs[name]["drop"] = _series(out, "electrolyte_potential_drop_V")
    ref = runs["uniform"]
    gap = {}
    for name in ("x10", "x1000"):
        r = runs[name]
        v = np.interp(ref["time_s"], r["time_s"], r["voltage_V"])
        i0 = np.interp(ref["time_s"], r["time_s"], r["current_mA_g_P0"])
        gap[name] = (np.max(np.abs(v - ref["voltage_V"])), np.max(np.abs(i0 - ref["current_mA_g_P0"])),
                     r["drop"].max())
    assert gap["x1000"][2] == pytest.approx(0.01 * gap["x10"][2], rel=0.05)  # drop ∝ 1/κ (κ × 100)
    assert gap["x1000"][2] < 1e-6  # V
    assert gap["x1000"][0] < 0.02 * gap["x10"][0]  # the cell voltage converges as 1/κ too ...
    assert gap["x1000"][0] < 1e-6  # ... to within 1 µV of the uniform model
    assert gap["x1000"][1] < 1e-4 * np.abs(ref["current_mA_g_P0"]).max()


def test_resume_reproduces_the_uninterrupted_run(tmp_path, monkeypatch):
    """The checkpoint holds Δc_l and δφ_l (with their BDF history): a resumed run ends exactly as an
    uninterrupted one, c_l columns and electrolyte maps included."""
    from nmcfx.solver import electrode_outputs

    cfg = small_electrode(steps=[{"type": "charge", "c_rate": 2.0, "duration_min": 1.0}])
    cfg["solver"] = {"checkpoint_wall_s": 1e-9}
    cfg["output"] = {"snapshot_times_min": [0.25, 1.0], "fields": "none", "figures": True, "progress": False}
    execute(prepare(cfg), tmp_path / "full")
    original = electrode_outputs.ElectrodeOutputs.record

    class Crash(Exception):
        pass

    def crashing(self, sim, rec):
        original(self, sim, rec)
        if rec["time_s"] > 30.0:
            raise Crash()

    monkeypatch.setattr(electrode_outputs.ElectrodeOutputs, "record", crashing)
    with pytest.raises(Crash):
        execute(prepare(cfg), tmp_path / "cut")
    monkeypatch.setattr(electrode_outputs.ElectrodeOutputs, "record", original)
    execute(prepare(cfg), tmp_path / "cut", resume=True)
    for col in ("time_s", "voltage_V", "c_l_min_mol_m3", "c_l_max_mol_m3", "electrolyte_potential_drop_V",
                "salt_balance_error"):
        a, b = _series(tmp_path / "full", col), _series(tmp_path / "cut", col)
        assert len(a) == len(b) and np.allclose(a, b, rtol=0, atol=1e-12 * max(1.0, np.abs(a).max())), col
    assert (tmp_path / "cut" / "electrolyte_maps.png").stat().st_size > 10_000


SERIAL_PARALLEL = """
title = "resolved electrolyte, serial vs 2 ranks"
[geometry]
shape = "electrode"
width_um = 20
height_um = 14
mesh_size_um = 1.2
particles = [{ shape = "disk", center_um = [6, 6], diameter_um = 7 },
             { shape = "disk", center_um = [12.9, 6.5], diameter_um = 7 }]
strands = [{ points_um = [[6, 0], [6, 3]], width_um = 1.2 }]
[electrode]
electrolyte = "resolved"
[surface]
model = "butler_volmer"
[protocol]
initial_theta = 0.9
[[protocol.steps]]
type = "charge"
c_rate = 2
duration_min = 1
[[protocol.steps]]
type = "hold"
voltage_V = 3.8
duration_min = 0.5
[output]
snapshot_times_min = [1]
"""


def test_serial_and_two_ranks_agree(tmp_path):
    from conftest import run_cli

    (tmp_path / "el.toml").write_text(SERIAL_PARALLEL)
    runs = {}
    for n in (1, 2):
        out = run_cli([str(tmp_path / "el.toml")], tmp_path / f"np{n}", ranks=n)
        with open(out / "timeseries.csv") as fh:
            rows = list(csv.DictReader(fh))
        runs[n] = {k: np.array([float(r[k]) for r in rows]) for k in rows[0]}
    a, b = runs[1], runs[2]
    assert len(a["time_s"]) == len(b["time_s"])
    for col in ("time_s", "voltage_V", "current_mA_g", "theta_mean", "c_l_min_mol_m3", "c_l_max_mol_m3",
                "electrolyte_potential_drop_V", "current_mA_g_P0", "current_mA_g_P1"):
        scale = max(1.0, np.abs(a[col]).max()) if col.startswith(("c_l", "time", "current")) else np.abs(a[col]).max()
        assert np.max(np.abs(a[col] - b[col])) <= 1e-8 * scale, col
    assert (tmp_path / "np2" / "electrolyte_maps.png").stat().st_size > 10_000
    assert (tmp_path / "np2" / "fields.bp").is_dir()


# ---------------------------------------------------------------------------- bad input
BAD = [
    ({"electrolyte": "porous"}, None, "electrode.electrolyte"),
    ({"electrolyte": "resolved", "cbd_porosity": 0.0}, None, "electrode.cbd_porosity"),
    ({"electrolyte": "resolved", "cbd_porosity": 1.5}, None, "electrode.cbd_porosity"),
    ({"electrolyte": "resolved", "electrolyte_concentration_mol_m3": -1}, None,
     "electrode.electrolyte_concentration_mol_m3"),
    ({"electrolyte": "resolved", "electrolyte_concentration_mol_m3": "1M"}, None,
     "electrode.electrolyte_concentration_mol_m3"),
    ({"electrolyte": "resolved", "electrolyte_transference_number": 1.0}, None,
     "electrode.electrolyte_transference_number"),
    ({"electrolyte": "resolved", "electrolyte_conductivity_S_m": 0}, None, "electrode.electrolyte_conductivity_S_m"),
    ({"electrolyte": "resolved", "bruggeman_exponent": -1}, None, "electrode.bruggeman_exponent"),
    ({"electrolyte": "resolved", "electrolyte_csv": "missing.csv"}, None, "electrode.electrolyte_csv"),
    ({"electrolyte": "resolved", "electrolyte_csv": "bad.csv"}, "c,kappa\n1,2\n", "electrode.electrolyte_csv"),
    ({"electrolyte": "resolved", "electrolyte_csv": "neg.csv"},
     "c_mol_m3,kappa_S_m,D_m2_s,t_plus,thermodynamic_factor\n0,1,1e-10,0.4,1\n2000,-1,1e-10,0.4,1\n",
     "electrode.electrolyte_csv"),
]


@pytest.mark.parametrize("electrode, csv_text, field", BAD)
def test_bad_electrolyte_input_is_one_line_and_writes_nothing(tmp_path, capsys, electrode, csv_text, field):
    from nmcfx.cli import main

    if csv_text is not None:
        (tmp_path / electrode["electrolyte_csv"]).write_text(csv_text)
    cfg = small_electrode(**{k: v for k, v in electrode.items() if k != "electrolyte"},
                          electrolyte=electrode["electrolyte"])
    path = tmp_path / "case.toml"
    path.write_text(_to_toml(cfg))
    out = tmp_path / "out"
    code = main(["run", str(path), "-o", str(out), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("nmcfx: error: ") and field in err[0], err
    assert not out.exists()


def test_resolved_needs_an_electrolyte_region_and_no_surface_ratio():
    cfg3d = {"geometry": {"shape": "electrode_3d", "diameter_um": 4.0, "mesh_size_um": 1.0},
             "electrode": {"electrolyte": "resolved"},
             "protocol": {"steps": [{"type": "charge", "c_rate": 1.0, "duration_min": 1}]}, "output": QUIET}
    with pytest.raises(InputError, match="electrode.electrolyte"):
        prepare(cfg3d)
    cfg = small_electrode()
    cfg["surface"] = {"model": "butler_volmer", "electrolyte_concentration_ratio": 0.5}
    with pytest.raises(InputError, match="surface.electrolyte_concentration_ratio"):
        prepare(cfg)


def _to_toml(d: dict, prefix: str = "") -> str:
    """Minimal TOML writer for the test configs (tables, arrays of tables, scalars, lists)."""
    import json

    def val(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {val(x)}" for k, x in v.items()) + " }"
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(val(x) for x in v) + "]"
        return repr(v)

    lines, tables = [], []
    for k, v in d.items():
        if isinstance(v, dict):
            tables.append((k, v))
        else:
            lines.append(f"{k} = {val(v)}")
    for k, v in tables:
        name = f"{prefix}{k}"
        lines.append(f"[{name}]")
        sub = {kk: vv for kk, vv in v.items() if not (isinstance(vv, list) and vv and isinstance(vv[0], dict))
               or kk not in ("steps",)}
        lines += [f"{kk} = {val(vv)}" for kk, vv in sub.items()]
        for kk, vv in v.items():
            if kk == "steps":
                for st in vv:
                    lines.append(f"[[{name}.{kk}]]")
                    lines += [f"{a} = {val(b)}" for a, b in st.items()]
    return "\n".join(lines) + "\n"
