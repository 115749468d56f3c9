"""Electrode geometries, the mesh export and bad electrode input (issue 7).

* the Sharma 2022 preset: electronic paths (T4 through four NMC particles, T0 wired directly),
  coverage and interface lengths against the layout's exact geometry;
* generated layouts: reproducible for a seed, different for another;
* a label image (a synthetic segmented array) → regions and paths;
* the 3D particle with a CBD patch: a collector facet group, coverage = cap fraction;
* ``nmcfx mesh --export``: a round trip through meshio (.msh, .vtu) and DOLFINx (.xdmf);
* bad input: one clear line naming the field, exit 2, nothing written.
"""

from __future__ import annotations

import json
import math
import textwrap

import numpy as np
import pytest
from mpi4py import MPI

from nmcfx.cli import main
from nmcfx.errors import InputError
from nmcfx.geometries.electrode import (
    CBD_TAG,
    COLLECTOR,
    ELECTROLYTE_TAG,
    PARTICLE_TAG0,
    SEPARATOR,
    electrode_from_config,
    generated_layout,
    read_label_image,
    sharma2022_layout,
)
from nmcfx.geometries.export import INTERFACE_TAGS, export_mesh

PRESET = {"shape": "electrode", "preset": "sharma2022", "mesh_size_um": 2.5, "surface_mesh_size_um": 1.0}


@pytest.fixture(scope="module")
def preset():
    return electrode_from_config(PRESET, MPI.COMM_WORLD)


def _global_count(comm, tags, value, n_owned):
    found = tags.find(value)
    return comm.allreduce(int(np.sum(found < n_owned)), op=MPI.SUM)


def _lens_area(r, d):
    """Area of the overlap of two disks of radius r whose centres are d apart."""
    return 2 * r * r * math.acos(d / (2 * r)) - 0.5 * d * math.sqrt(4 * r * r - d * d)


# ============================================================================ geometry
@pytest.mark.mpi
def test_preset_paths_coverage_and_interfaces(preset):
    by_name = {p["name"]: p for p in preset.particles}
    assert list(by_name) == ["T0", "T1", "T2", "T3", "T4", "B0", "B1", "B2", "B3"]
    # T0 is wired straight to the collector; T4 is reached only through four NMC particles
    assert by_name["T0"]["path"] == ["T0", "CBD", "collector"] and by_name["T0"]["nmc_in_path"] == 0
    assert by_name["T4"]["path"] == ["T4", "T3", "T2", "T1", "T0", "CBD", "collector"]
    assert by_name["T4"]["nmc_in_path"] == 4
    assert [by_name[f"T{i}"]["nmc_in_path"] for i in range(5)] == [0, 1, 2, 3, 4]
    assert all(by_name[f"B{i}"]["path"] == [f"B{i}", "CBD", "collector"] for i in range(4))
    # coverage = the coated arc: 110° of T0, 90° of each bottom particle, nothing on T1–T4
    assert by_name["T0"]["coverage"] == pytest.approx(110 / 360, abs=2e-3)
    assert all(by_name[f"B{i}"]["coverage"] == pytest.approx(90 / 360, abs=2e-3) for i in range(4))
    assert all(by_name[f"T{i}"]["coverage"] == 0.0 for i in range(1, 5))
    # the CAD measures against the layout's exact geometry
    layout = sharma2022_layout()
    r, d = 4.0, layout.particles[1].center[0] - layout.particles[0].center[0]
    chord_half = math.sqrt(r * r - (d / 2) ** 2)
    info = preset.info
    assert info["interface_measure"]["nmc|nmc"] == pytest.approx(4 * 2 * r * math.asin(chord_half / r), rel=1e-6)
    assert info["interface_measure"]["cbd|collector"] == pytest.approx(1.6 + 4 * 1.2, rel=1e-9)
    nmc_area = 5 * math.pi * r * r - 4 * _lens_area(r, d) + 4 * math.pi * 3.5**2
    assert info["region_measure"]["nmc"] == pytest.approx(nmc_area, rel=1e-6)
    assert sum(info["region_measure"].values()) == pytest.approx(layout.width * layout.height, rel=1e-9)
    # regions and boundaries are on the distributed mesh
    mesh, comm = preset.mesh, preset.comm
    n_cells = mesh.topology.index_map(2).size_local
    n_facets = mesh.topology.index_map(1).size_local
    for tag in (ELECTROLYTE_TAG, CBD_TAG, *range(PARTICLE_TAG0, PARTICLE_TAG0 + 9)):
        assert _global_count(comm, preset.cell_tags, tag, n_cells) > 0, tag
    for tag in (COLLECTOR, SEPARATOR):
        assert _global_count(comm, preset.facet_tags, tag, n_facets) > 0, tag
    text = preset.summary()
    assert "T4 → T3 → T2 → T1 → T0 → CBD → collector" in text and "coverage 31 %" in text


def test_generated_layout_reproducible_for_a_seed():
    kw = dict(volume_fraction=0.35, diameter=(4.0, 6.0), coverage=0.3, wired_fraction=0.5)
    a = generated_layout(30.0, 20.0, seed=7, **kw)
    b = generated_layout(30.0, 20.0, seed=7, **kw)
    c = generated_layout(30.0, 20.0, seed=8, **kw)
    assert a == b
    assert a.particles != c.particles
    for lay in (a, c):
        assert lay.info["volume_fraction_achieved"] >= 0.9 * 0.35
        centres = np.array([p.center for p in lay.particles])
        radii = np.array([p.diameter / 2 for p in lay.particles])
        dist = np.linalg.norm(centres[:, None] - centres[None], axis=-1) + np.diag(np.full(len(radii), np.inf))
        assert np.all(dist >= radii[:, None] + radii[None] + 0.3 - 1e-12)  # the requested gap
        assert np.all(centres - radii[:, None] >= 0) and np.all(centres + radii[:, None] <= [30.0, 20.0])
        assert all(c_.end_deg - c_.start_deg == pytest.approx(0.3 * 360) for c_ in lay.coatings)


def synthetic_labels() -> np.ndarray:
    """40 × 60 pixels: two particles (label 1), a CBD bar (label 2) from the left one down to the last row."""
    ny, nx = 40, 60
    rows, cols = np.mgrid[:ny, :nx]
    labels = np.zeros((ny, nx), dtype=np.int32)
    labels[25:, 13:18] = 2
    labels[(rows - 18) ** 2 + (cols - 15) ** 2 <= 49] = 1
    labels[(rows - 18) ** 2 + (cols - 44) ** 2 <= 49] = 1
    return labels


@pytest.mark.mpi
def test_label_image_electrode_regions_and_paths(tmp_path):
    import tifffile

    comm = MPI.COMM_WORLD
    base = comm.bcast(str(tmp_path), root=0)
    labels = synthetic_labels()
    if comm.rank == 0:
        np.save(f"{base}/labels.npy", labels)
        tifffile.imwrite(f"{base}/labels.tif", labels)
    comm.Barrier()
    assert np.array_equal(read_label_image(f"{base}/labels.tif", "f"), labels)
    px = 0.25
    cfg = {"shape": "electrode", "label_image": {"file": "labels.npy", "pixel_size_um": px, "nmc": [1], "cbd": [2]},
           "mesh_size_um": 0.5, "unconnected": "warn"}
    el = electrode_from_config(cfg, comm, base_dir=base)
    assert el.info["width_um"] == 60 * px and el.info["height_um"] == 40 * px
    p0, p1 = el.particles
    assert p0["path"] == ["P0", "CBD", "collector"]  # the bar touches the left particle and the collector
    assert p1["path"] == [] and "P1" in el.info["warnings"][0]  # the right one floats
    assert p0["coverage"] > 0.05 and p1["coverage"] == 0.0
    for p in (p0, p1):  # a 7-pixel disk: 149 pixels
        assert p["area"] == pytest.approx(np.sum(labels == 1) / 2 * px * px, rel=0.02)
    assert el.info["interface_measure"]["cbd|collector"] == pytest.approx(5 * px, rel=0.15)
    assert "warning: particle(s) P1 have no electronic path" in el.summary()
    with pytest.raises(InputError, match="geometry.unconnected"):
        electrode_from_config({k: v for k, v in cfg.items() if k != "unconnected"}, comm, base_dir=base)


@pytest.mark.mpi
def test_particle_with_cbd_patch_has_a_collector():
    R, t, alpha = 2.0, 0.4, 45.0
    el = electrode_from_config({"shape": "electrode_3d", "diameter_um": 2 * R, "patch_angle_deg": alpha,
                                "patch_thickness_um": t, "mesh_size_um": 1.0, "surface_mesh_size_um": 0.5},
                               MPI.COMM_WORLD)
    mesh, comm = el.mesh, el.comm
    assert el.dim == 3 and el.facet_tags is not None
    n_facets = mesh.topology.index_map(2).size_local
    assert _global_count(comm, el.facet_tags, COLLECTOR, n_facets) > 10
    n_cells = mesh.topology.index_map(3).size_local
    assert _global_count(comm, el.cell_tags, PARTICLE_TAG0, n_cells) > 0
    assert _global_count(comm, el.cell_tags, CBD_TAG, n_cells) > 0
    (p,) = el.particles
    assert p["area"] == pytest.approx(4 / 3 * math.pi * R**3, rel=1e-6)
    assert p["perimeter"] == pytest.approx(4 * math.pi * R**2, rel=1e-6)
    assert p["coverage"] == pytest.approx((1 - math.cos(math.radians(alpha))) / 2, rel=1e-6)  # the cap
    assert p["path"] == ["P0", "CBD", "collector"]


# ============================================================================ export
def _meshio_blocks(path):
    import meshio

    m = meshio.read(path)
    key_cell = "gmsh:physical" if path.endswith(".msh") else "region"
    key_facet = "gmsh:physical" if path.endswith(".msh") else "boundary"
    out = {}
    for i, block in enumerate(m.cells):
        out[block.type] = (block.data, np.asarray(m.cell_data[key_cell if block.type == "triangle" else key_facet][i]))
    return m.points, out


def _lengths(points, lines):
    return np.linalg.norm(points[lines[:, 1]] - points[lines[:, 0]], axis=1)


@pytest.mark.mpi
@pytest.mark.parametrize("suffix", [".msh", ".vtu"])
def test_export_round_trip_through_meshio(preset, tmp_path, suffix):
    comm = MPI.COMM_WORLD
    path = comm.bcast(str(tmp_path / f"electrode{suffix}"), root=0)
    counts = export_mesh(path, preset)
    n_cells = comm.allreduce(preset.mesh.topology.index_map(2).size_local, op=MPI.SUM)
    assert counts["cells"] == n_cells
    if comm.rank != 0:
        return
    points, blocks = _meshio_blocks(path)
    tri, regions = blocks["triangle"]
    lines, bnd = blocks["line"]
    assert len(tri) == n_cells
    assert set(np.unique(regions)) == {ELECTROLYTE_TAG, CBD_TAG, *range(PARTICLE_TAG0, PARTICLE_TAG0 + 9)}
    # areas and lengths of the tagged pieces are those of the mesh the solver uses
    a = points[tri[:, 1]] - points[tri[:, 0]]
    b = points[tri[:, 2]] - points[tri[:, 0]]
    area = 0.5 * np.abs(a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0])
    info = preset.info
    assert area.sum() == pytest.approx(info["width_um"] * info["height_um"], rel=1e-12)
    assert area[regions >= PARTICLE_TAG0].sum() == pytest.approx(info["region_measure"]["nmc"], rel=2e-2)
    length = _lengths(points, lines)
    assert length[bnd == COLLECTOR].sum() == pytest.approx(info["width_um"], rel=1e-12)
    for name, tag in INTERFACE_TAGS.items():
        assert length[bnd == tag].sum() == pytest.approx(info["interface_measure"][name], rel=3e-2), name
    assert counts["boundaries"] == {int(t): int(n) for t, n in zip(*np.unique(bnd, return_counts=True))}


@pytest.mark.mpi
def test_export_xdmf_reads_back_in_dolfinx(preset, tmp_path):
    import dolfinx.io

    comm = MPI.COMM_WORLD
    path = comm.bcast(str(tmp_path / "electrode.xdmf"), root=0)
    counts = export_mesh(path, preset)
    with dolfinx.io.XDMFFile(comm, path, "r") as xdmf:
        mesh = xdmf.read_mesh(name="mesh")
        regions = xdmf.read_meshtags(mesh, name="region")
        mesh.topology.create_connectivity(1, 2)
        boundary = xdmf.read_meshtags(mesh, name="boundary")
    n_cells = mesh.topology.index_map(2).size_local
    n_facets = mesh.topology.index_map(1).size_local
    assert comm.allreduce(n_cells, op=MPI.SUM) == counts["cells"]
    for tag, n in counts["regions"].items():
        assert _global_count(comm, regions, tag, n_cells) == n
    for tag, n in counts["boundaries"].items():
        assert _global_count(comm, boundary, tag, n_facets) == n
    assert counts["boundaries"][INTERFACE_TAGS["nmc|nmc"]] > 0


def test_mesh_command_reports_and_exports_a_particle(tmp_path, capsys):
    import meshio

    cfg = tmp_path / "disk.toml"
    cfg.write_text('[geometry]\nshape = "disk"\ndiameter_um = 2.0\nmesh_size_um = 0.3\n'
                   '[[geometry.sectors]]\nname = "blocked"\nstart_deg = -45\nend_deg = 45\n')
    out = tmp_path / "disk.msh"
    assert main(["mesh", str(cfg), "--export", str(out)]) == 0
    text = capsys.readouterr().out
    assert "sectors: blocked" in text and f"written {out}" in text
    m = meshio.read(out)
    tags = {b.type: np.asarray(d) for b, d in zip(m.cells, m.cell_data["gmsh:physical"])}
    assert set(np.unique(tags["triangle"])) == {1}
    assert set(np.unique(tags["line"])) == {1, 2}  # the two sectors: surface and blocked
    assert m.field_data["blocked"][1] == 1  # named, on facets (dimension 1)
    # a bad format is refused before anything is meshed or written
    assert main(["mesh", str(cfg), "--export", str(tmp_path / "disk.xyz")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--export" in err and "disk.xyz" in err
    assert not (tmp_path / "disk.xyz").exists()


def test_mesh_command_prints_the_electrode_report(tmp_path, capsys):
    cfg = tmp_path / "e.toml"
    cfg.write_text(BASE)
    assert main(["mesh", str(cfg)]) == 0
    out = capsys.readouterr().out
    for piece in ("regions: electrolyte", "interfaces: nmc|electrolyte", "nmc|nmc", "coverage",
                  "path A → CBD → collector", "path B → A → CBD → collector"):
        assert piece in out, piece


# ============================================================================ bad input
BASE = """
title = "small electrode"
[geometry]
shape = "electrode"
width_um = 12.0
height_um = 9.0
mesh_size_um = 1.0
surface_mesh_size_um = 0.6
[[geometry.particles]]
name = "A"
center_um = [4.0, 5.0]
diameter_um = 4.0
[[geometry.particles]]
name = "B"
center_um = [7.9, 5.0]
diameter_um = 4.0
[[geometry.strands]]
points_um = [[4.0, 0.0], [4.0, 3.2]]
width_um = 1.0
[protocol]
initial_theta = 0.9
[[protocol.steps]]
type = "charge"
c_rate = 1.0
duration_min = 0.5
[output]
figures = false
fields = "none"
progress = false
"""

LABELS = """
[geometry]
shape = "electrode"
mesh_size_um = 0.5
[geometry.label_image]
file = "labels.npy"
pixel_size_um = 0.25
nmc = [NMC]
cbd = [CBD]
[protocol]
[[protocol.steps]]
type = "charge"
c_rate = 1.0
duration_min = 0.5
"""

BAD = [
    # (base, old, new, field, words in the message)
    (BASE, "center_um = [7.9, 5.0]", "center_um = [6.5, 5.0]", "geometry.particles[1]", "overlap"),
    (BASE, "center_um = [4.0, 5.0]", "center_um = [1.0, 5.0]", "geometry.particles[0]", "outside"),
    (BASE, "[protocol]", "[[geometry.strands]]\npoints_um = [[10.8, 1.0], [10.8, 2.0]]\nwidth_um = 0.5\n[protocol]",
     "geometry.strands[1]", "touches no particle"),
    (BASE, "center_um = [7.9, 5.0]", "center_um = [9.0, 5.0]", "geometry.unconnected", "no electronic path"),
    (BASE, "[protocol]", '[electrode]\nnmc_conductivity_csv = "sigma.csv"\n[protocol]',
     "electrode.nmc_conductivity_csv", "> 0"),
    (BASE, "[protocol]", "[electrode]\ncbd_conductivity_S_m = 0\n[protocol]", "electrode.cbd_conductivity_S_m",
     "must be a number"),
    (LABELS, "nmc = [NMC]", "nmc = [7]", "geometry.label_image.nmc", "not in the image"),
    (LABELS, "cbd = [CBD]", "cbd = [9]", "geometry.label_image.cbd", "not in the image"),
    (BASE, "duration_min = 0.5", 'duration_min = 0.5\nuntil = ["theta_mean_C <= 0.5"]', "protocol.steps[0].until",
     "theta_mean_C"),
    (BASE, "duration_min = 0.5", 'duration_min = 0.5\nuntil = ["theta_center <= 0.5"]', "protocol.steps[0].until",
     "theta_center"),
    (BASE, "[protocol]", '[surface]\nmodel = "flux"\n[protocol]', "surface.model", "Butler"),
    (BASE, "[protocol]", '[electrode]\nnmc_conductivity_history = "sticky"\n[protocol]',
     "electrode.nmc_conductivity_history", "'irreversible'"),
]


@pytest.mark.parametrize("base, old, new, field, words", BAD,
                         ids=["overlap", "outside-box", "lonely-strand", "no-path", "sigma-table-zero",
                              "sigma-cbd-zero", "label-nmc-missing", "label-cbd-missing", "stop-unknown-particle",
                              "stop-theta-center", "surface-flux", "sigma-history"])
def test_bad_electrode_input_one_line_nothing_written(tmp_path, capsys, base, old, new, field, words):
    assert old in base
    text = base.replace(old, new, 1)
    text = text.replace("nmc = [NMC]", "nmc = [1]").replace("cbd = [CBD]", "cbd = [2]")
    (tmp_path / "case.toml").write_text(textwrap.dedent(text))
    (tmp_path / "sigma.csv").write_text("theta,sigma_S_m\n0.2,1.0\n0.6,0.0\n1.0,1e-5\n")
    np.save(tmp_path / "labels.npy", synthetic_labels())
    out = tmp_path / "out"
    code = main(["run", str(tmp_path / "case.toml"), "-o", str(out), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1, err
    assert err[0].startswith(f"nmcfx: error: {field}: ") and words in err[0], err
    assert not out.exists()


def test_unconnected_warn_runs_and_reports(tmp_path, capsys):
    text = BASE.replace("center_um = [7.9, 5.0]", "center_um = [9.0, 5.0]").replace(
        "surface_mesh_size_um = 0.6", 'surface_mesh_size_um = 0.6\nunconnected = "warn"')
    (tmp_path / "case.toml").write_text(text)
    out = tmp_path / "out"
    assert main(["run", str(tmp_path / "case.toml"), "-o", str(out), "--quiet"]) == 0
    stdout = capsys.readouterr().out
    assert "warning: particle(s) B have no electronic path to the collector" in stdout
    meta = json.loads((out / "metadata.json").read_text())
    assert any("B" in w for w in meta["resolved"]["geometry"]["info"]["warnings"])
    import csv

    rows = list(csv.DictReader(open(out / "timeseries.csv")))[1:]
    # the floating particle passes no net current; the wired one carries the whole electrode's
    assert max(abs(float(r["current_mA_g_B"])) for r in rows) < 1e-8 * 210
    areas = [p["area"] for p in meta["resolved"]["geometry"]["particles"]]
    assert float(rows[-1]["current_mA_g_A"]) == pytest.approx(210 * sum(areas) / areas[0], rel=1e-2)


def test_a_full_coating_is_a_closed_ring():
    """A coating over 0…360° is one closed CBD ring: its outer boundary is the circle of radius
    r + thickness (a single band from start to end would leave a slit at its seam — two extra
    edges of the thickness's length on the CBD|electrolyte interface, a crack to the bonded elastic
    body), and the particle is fully covered."""
    r, t = 3.0, 1.0
    cfg = {"shape": "electrode", "width_um": 12.0, "height_um": 12.0,
           "particles": [{"shape": "disk", "center_um": [6.0, 7.0], "diameter_um": 2 * r, "name": "A"}],
           "strands": [{"points_um": [[6.0, 0.0], [6.0, 3.2]], "width_um": 1.2}],
           "coatings": [{"particle": "A", "start_deg": 0, "end_deg": 360, "thickness_um": t}],
           "mesh_size_um": 1.5, "surface_mesh_size_um": 0.6}
    el = electrode_from_config(cfg, MPI.COMM_WORLD)
    info = el.info
    outer = 2 * math.pi * (r + t) - 2 * (r + t) * math.asin(0.6 / (r + t))  # minus where the strand joins
    strand_sides = 2 * (7.0 - r - t)  # the strand's two sides, from the collector up to the ring
    assert info["interface_measure"]["cbd|electrolyte"] == pytest.approx(outer + strand_sides, abs=0.3)  # no slit
    assert el.particles[0]["coverage"] == pytest.approx(1.0, abs=1e-3)
