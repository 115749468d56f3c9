"""Tests of nmcfx.geometries: measures against analytic values, sectors, 3D shapes, config.

Tests marked ``mpi`` are collective and cheap; they also run under
``mpiexec -n 2 python -m pytest -m mpi`` and then check that every rank sees the same
global numbers.
"""

from __future__ import annotations

import math

from mpi4py import MPI

import numpy as np
import pytest
from scipy.integrate import quad

import nmcfx.geometries as geo
from nmcfx.errors import InputError, MeshError
from nmcfx.geometries import Contour, Ellipse, ReferenceXu2022, Sector

COMM = MPI.COMM_WORLD


def same_on_all_ranks(*values) -> bool:
    gathered = COMM.allgather(values)
    return all(g == gathered[0] for g in gathered)


def ellipse_arc(a: float, b: float, psi0: float, psi1: float) -> float:
    """Arc length of (a cos psi, b sin psi) between eccentric anomalies (quadrature)."""
    return quad(lambda t: math.hypot(a * math.sin(t), b * math.cos(t)), psi0, psi1, epsabs=1e-13)[0]


def ellipse_perimeter(a: float, b: float) -> float:
    return ellipse_arc(a, b, 0.0, 2 * math.pi)


def min_distance_to_vertex(pm, point) -> float:
    x = pm.mesh.geometry.x[:, : pm.dim]
    local = float(np.min(np.linalg.norm(x - np.asarray(point), axis=1))) if len(x) else np.inf
    return COMM.allreduce(local, op=MPI.MIN)


# ----------------------------------------------------------------------------- 2D shapes


@pytest.mark.mpi
def test_disk_area_and_perimeter_converge_with_h():
    d = 4.0
    errors = []
    for h in (0.4, 0.2, 0.1):
        pm = geo.disk(d, mesh_size_um=h)
        assert pm.dim == 2 and pm.sectors == {"surface": 1}
        assert same_on_all_ranks(pm.measure, pm.boundary_measure, pm.centroid, pm.info["num_cells"])
        errors.append((abs(pm.measure / (math.pi * d * d / 4) - 1), abs(pm.boundary_measure / (math.pi * d) - 1)))
        assert np.allclose(pm.centroid, 0.0, atol=1e-3 * h)
    # Inscribed polygons: errors are one-signed and O(h^2).
    for coarse, fine in zip(errors, errors[1:]):
        assert fine[0] < coarse[0] / 2.5 and fine[1] < coarse[1] / 2.5
    assert errors[-1][0] < 1e-3 and errors[-1][1] < 3e-4


@pytest.mark.mpi
def test_ellipse_matches_analytic_values():
    a, b = 2.0, 1.0
    pm = geo.ellipse((b, a), angle_deg=30.0, mesh_size_um=0.08)  # given (minor, major): rotated frame
    assert pm.measure == pytest.approx(math.pi * a * b, rel=1e-3)
    assert pm.boundary_measure == pytest.approx(ellipse_perimeter(a, b), rel=5e-4)
    assert pm.info["reference"]["perimeter"] == pytest.approx(ellipse_perimeter(a, b), rel=1e-12)
    # semi-axis b = 2 lies along 30° + 90°: the boundary reaches there at distance 2.
    direction = np.array([math.cos(math.radians(120)), math.sin(math.radians(120))])
    x = pm.mesh.geometry.x[:, :2]
    reach = COMM.allreduce(float(np.max(x @ direction)) if len(x) else -np.inf, op=MPI.MAX)
    assert reach == pytest.approx(2.0, rel=2e-3)


@pytest.mark.mpi
def test_reference_particle_xu2022_area_and_perimeter():
    a, b = geo.xu2022_semi_axes_um()
    # Independent check of the semi-axes with Ramanujan's perimeter approximation.
    ramanujan = math.pi * (3 * (a + b) - math.sqrt((3 * a + b) * (a + 3 * b)))
    assert math.pi * a * b == pytest.approx(4.87, rel=1e-10)
    assert ramanujan == pytest.approx(8.06, rel=1e-4)
    for kwargs in ({}, {"mesh_size_um": 0.15}):
        pm = geo.reference_particle_xu2022(**kwargs)
        assert pm.measure == pytest.approx(4.87, rel=5e-3)
        assert pm.boundary_measure == pytest.approx(8.06, rel=5e-3)
    text = pm.summary()
    assert f"{pm.info['num_cells']} cells" in text
    assert "4.87" in text and "8.06" in text and "quality" in text and "µm²" in text


# ----------------------------------------------------------------------------- sectors


def test_elliptic_integrals_match_scipy():
    """The SciPy-free E(m) and E(φ|m) of the ellipse outlines agree with scipy.special to round-off,
    across the quasi-period (any real φ) and up to very flat ellipses."""
    from scipy import special

    from nmcfx.geometries._elliptic import carlson_rd, carlson_rf, ellipe, ellipeinc

    rng = np.random.default_rng(7)
    for m in np.concatenate([[0.0, 1e-12, 0.5, 0.99, 1.0], rng.uniform(0.0, 1.0, 200)]):
        assert ellipe(m) == pytest.approx(special.ellipe(m), rel=2e-15, abs=0)
    for phi, m in zip(rng.uniform(-20.0, 20.0, 400), rng.uniform(0.0, 0.999, 400)):
        assert ellipeinc(phi, m) == pytest.approx(special.ellipeinc(phi, m), rel=1e-14, abs=1e-15)
    for x, y, z in rng.uniform(0.0, 3.0, (200, 3)):
        assert carlson_rf(x, y, z) == pytest.approx(special.elliprf(x, y, z), rel=2e-15)
        assert carlson_rd(0.0, y, z) == pytest.approx(special.elliprd(0.0, y, z), rel=2e-15)


def test_ellipse_outline_needs_no_scipy():
    """Ellipses (and the Xu 2022 particle) are laid out without importing SciPy (~40 MB of a run's
    peak memory; benchmarks/README.md): checked in a fresh interpreter."""
    import subprocess
    import sys

    code = ("import sys, mpi4py.MPI; from nmcfx.geometries import _outline, shapes2d; "
            "e = _outline.EllipseOutline(*shapes2d.xu2022_semi_axes_um(), 30.0); e.s_at_angle(45.0, 'f'); "
            "e._psi_of_s(0.3); sys.exit(int('scipy' in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.mpi
def test_quarter_sector_of_disk_and_surface_remainder():
    d = 5.0
    pm = geo.disk(d, mesh_size_um=0.15, sectors=[{"name": "north", "start_deg": 45, "end_deg": 135}])
    assert pm.sectors == {"north": 1, "surface": 2}
    assert pm.reactive_sectors == ("north", "surface")
    assert pm.sector_measure["north"] == pytest.approx(math.pi * d / 4, rel=1e-3)
    assert pm.sector_measure["surface"] == pytest.approx(3 * math.pi * d / 4, rel=1e-3)
    assert sum(pm.sector_measure.values()) == pytest.approx(pm.boundary_measure, rel=1e-12)
    # Sector end points are mesh vertices (exactly on the circle).
    r = d / 2
    for deg in (45, 135):
        p = (r * math.cos(math.radians(deg)), r * math.sin(math.radians(deg)))
        assert min_distance_to_vertex(pm, p) < 1e-9
    # Every boundary facet is tagged with one of the sector values.
    tags = pm.facet_tags
    assert set(np.unique(tags.values)) <= {1, 2}


@pytest.mark.mpi
def test_wrapping_angle_sector_on_rotated_ellipse():
    a, b, rot = 2.0, 1.0, 20.0
    pm = geo.ellipse((a, b), rot, mesh_size_um=0.06, sectors=[Sector("east", 315, 45)])

    def psi(theta_deg):  # eccentric anomaly of the boundary point at a polar angle
        phi = math.radians(theta_deg - rot)
        return math.atan2(a * math.sin(phi), b * math.cos(phi))

    expected = ellipse_arc(a, b, psi(-45), psi(45))
    assert pm.sector_measure["east"] == pytest.approx(expected, rel=1e-3)
    # the cut points lie on the rays at ±45°
    for deg in (-45, 45):
        p = psi(deg)
        c, s = math.cos(math.radians(rot)), math.sin(math.radians(rot))
        x, y = a * math.cos(p), b * math.sin(p)
        assert min_distance_to_vertex(pm, (c * x - s * y, s * x + c * y)) < 1e-9


@pytest.mark.mpi
def test_fraction_sectors_and_full_cover():
    a, b = 1.5, 1.0
    P = ellipse_perimeter(a, b)
    pm = geo.ellipse(
        (a, b),
        mesh_size_um=0.06,
        sectors=[{"name": "wrap", "start_fraction": 0.9, "end_fraction": 0.2}, Sector("mid", 0.25, 0.5, "fraction")],
    )
    assert pm.sector_measure["wrap"] == pytest.approx(0.3 * P, rel=1e-3)
    assert pm.sector_measure["mid"] == pytest.approx(0.25 * P, rel=1e-3)
    assert pm.sector_measure["surface"] == pytest.approx(0.45 * P, rel=1e-3)
    # position 0 is the boundary point at angle 0: (a, 0) is a vertex (start of 'mid' is not)
    assert min_distance_to_vertex(pm, (a, 0.0)) > 1e-3  # 0 is not a cut point here
    full = geo.disk(2.0, mesh_size_um=0.2, sectors=[Sector("left", 90, 270), Sector("right", 270, 90)])
    assert full.sectors == {"left": 1, "right": 2}  # nothing left over: no "surface"
    whole = geo.disk(2.0, mesh_size_um=0.2, sectors=[Sector("all", 0, 360)])
    assert whole.sectors == {"all": 1}
    assert whole.sector_measure["all"] == pytest.approx(whole.boundary_measure)


@pytest.mark.mpi
@pytest.mark.parametrize(
    "sectors, field",
    [
        ([Sector("a", 0, 90), Sector("b", 80, 120)], "geometry.sectors[1]"),
        ([Sector("a", 300, 30), Sector("b", 0, 10)], "geometry.sectors[1]"),
        ([Sector("a", 0, 90), Sector("a", 90, 120)], "geometry.sectors[1].name"),
        ([Sector("a", 30, 30)], "geometry.sectors[0]"),
        ([Sector("a", 0.2, 0.2, "fraction")], "geometry.sectors[0]"),
        ([Sector("surface", 0, 30)], "geometry.sectors[0].name"),
        ([Sector("basal_top", 0, 30)], "geometry.sectors[0].name"),
        ([Sector("", 0, 30)], "geometry.sectors[0].name"),
        ([Sector("a", 0, 400)], "geometry.sectors[0].end"),
        ([Sector("a", 0, 1.5, "fraction")], "geometry.sectors[0].end"),
        ([Sector("a", 0, 30, "rad")], "geometry.sectors[0].unit"),
        ([{"name": "a", "start_deg": 0}], "geometry.sectors[0].end_deg"),
        ([{"name": "a", "start_deg": 0, "end_fraction": 0.5}], "geometry.sectors[0]"),
        ([{"name": "a", "start_deg": 0, "end_deg": 10, "colour": "red"}], "geometry.sectors[0]"),
        ([{"start_deg": 0, "end_deg": 10}], "geometry.sectors[0].name"),
        ([{"name": "a", "start_deg": float("nan"), "end_deg": 10}], "geometry.sectors[0].start"),
        ("north", "geometry.sectors"),
        ([Sector("a", 0.3, 0.3 + 1e-8, "fraction")], "geometry.sectors[0]"),
        # mixed units: 0.1-0.3 of the perimeter overlaps 45°-90° on a disk
        ([Sector("a", 45, 90), Sector("b", 0.1, 0.3, "fraction")], "geometry.sectors[1]"),
    ],
)
def test_invalid_sectors_raise_input_error(sectors, field):
    with pytest.raises(InputError) as err:
        geo.disk(2.0, mesh_size_um=0.3, sectors=sectors)
    assert err.value.field == field


# ----------------------------------------------------------------------------- contours


@pytest.mark.mpi
def test_contour_from_ellipse_points():
    a, b, rot, centre = 2.0, 1.2, math.radians(25), np.array([1.0, -0.5])
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)[::-1]  # clockwise on purpose
    xy = np.column_stack([a * np.cos(t), b * np.sin(t)])
    R = np.array([[math.cos(rot), -math.sin(rot)], [math.sin(rot), math.cos(rot)]])
    pts = xy @ R.T + centre
    pts = np.vstack([pts, pts[:1]])  # repeated closing point is ignored
    pm = geo.contour(pts, mesh_size_um=0.06, sectors=[{"name": "q", "start_fraction": 0.0, "end_fraction": 0.25}])
    assert pm.measure == pytest.approx(math.pi * a * b, rel=1e-2)
    assert pm.boundary_measure == pytest.approx(ellipse_perimeter(a, b), rel=1e-2)
    assert np.allclose(pm.centroid, centre, atol=1e-2)
    assert pm.sector_measure["q"] == pytest.approx(0.25 * pm.boundary_measure, rel=2e-3)
    # contour points are interpolated: they are (close to) the mesh boundary
    assert pm.measure == pytest.approx(pm.info["reference"]["area"], rel=2e-3)


@pytest.mark.mpi
def test_contour_angle_sector_and_smoothing():
    rng = np.random.default_rng(1)
    t = np.linspace(0, 2 * np.pi, 120, endpoint=False)
    r = 1.5 + rng.normal(0.0, 0.02, t.size)
    pts = np.column_stack([r * np.cos(t), r * np.sin(t)])
    pm = geo.contour(pts, smoothing_um=0.03, mesh_size_um=0.08, sectors=[Sector("ne", 0, 90)])
    assert pm.measure == pytest.approx(math.pi * 1.5**2, rel=2e-2)
    assert pm.sector_measure["ne"] == pytest.approx(0.25 * pm.boundary_measure, rel=3e-2)
    # smoothing removes the zig-zag: the perimeter stays close to the circle's
    assert pm.boundary_measure == pytest.approx(2 * math.pi * 1.5, rel=1e-2)


@pytest.mark.mpi
def test_contour_with_many_noisy_points_is_fast_and_close():
    import time

    rng = np.random.default_rng(7)
    t = np.linspace(0, 2 * np.pi, 1500, endpoint=False)
    r = 2.0 + 0.2 * np.cos(3 * t)
    pts = np.column_stack([r * np.cos(t), r * np.sin(t)]) + rng.normal(0.0, 0.005, (t.size, 2))
    start = time.perf_counter()
    pm = geo.contour(pts, smoothing_um=0.005, mesh_size_um=0.1, sectors=[Sector("lobe", -30, 30)])
    assert time.perf_counter() - start < 5.0
    exact_area = math.pi * (2.0**2 + 0.2**2 / 2)  # area of r = 2 + 0.2 cos 3t
    assert pm.measure == pytest.approx(exact_area, rel=2e-3)
    assert pm.info["contour_max_deviation_um"] < 0.03
    assert "contour point" in pm.summary()


@pytest.mark.parametrize(
    "points",
    [
        [[0, 0], [1, 1], [1, 0], [0, 1]],  # bow tie
        [[0, 0], [1, 0], [0, 0]],  # < 3 distinct
        [[0, 0], [1, 0], [2, 0], [3, 0]],  # collinear
        [[0, 0], [1, 0], [np.nan, 1]],
        [[0, 0, 0], [1, 0, 0], [0, 1, 0]],  # wrong shape
        "abc",
    ],
)
def test_invalid_contours_raise_input_error(points):
    with pytest.raises(InputError) as err:
        geo.contour(points)
    assert err.value.field.startswith("geometry.points_um")


def test_contour_angle_sector_needs_star_shape():
    # A "C": the ray from the centroid towards the opening meets the outline 3 times.
    outer = [(math.cos(t), math.sin(t)) for t in np.linspace(0.5, 2 * np.pi - 0.5, 40)]
    inner = [(0.6 * math.cos(t), 0.6 * math.sin(t)) for t in np.linspace(2 * np.pi - 0.5, 0.5, 30)]
    pts = np.array(outer + inner)
    with pytest.raises(InputError) as err:
        geo.contour(pts, mesh_size_um=0.05, sectors=[Sector("a", 170, 190)])
    assert err.value.field == "geometry.sectors[0]" and "fraction" in str(err.value)
    # fractions work for any outline
    pm = geo.contour(pts, mesh_size_um=0.05, sectors=[Sector("a", 0.4, 0.6, "fraction")])
    assert pm.sector_measure["a"] == pytest.approx(0.2 * pm.boundary_measure, rel=2e-3)
    assert pm.measure == pytest.approx(pm.info["reference"]["area"], rel=2e-3)


# ----------------------------------------------------------------------------- 3D shapes


@pytest.mark.mpi
def test_prism_volume_lateral_area_and_basal_sectors():
    a, b, h = 1.5, 1.0, 1.2
    pm = geo.prism(
        Ellipse((a, b)), h, mesh_size_um=0.2, surface_mesh_size_um=0.1, sectors=[Sector("c", 0.0, 0.25, "fraction")]
    )
    P = ellipse_perimeter(a, b)
    assert pm.dim == 3
    assert pm.sectors == {"c": 1, "surface": 2, "basal_bottom": 3, "basal_top": 4}
    assert pm.reactive_sectors == ("c", "surface")
    assert pm.measure == pytest.approx(math.pi * a * b * h, rel=5e-3)
    assert pm.boundary_measure == pytest.approx(P * h, rel=2e-3)
    assert pm.boundary_measure == pytest.approx(pm.sector_measure["c"] + pm.sector_measure["surface"], rel=1e-12)
    assert pm.sector_measure["c"] == pytest.approx(0.25 * P * h, rel=2e-3)
    for basal in ("basal_bottom", "basal_top"):
        assert pm.sector_measure[basal] == pytest.approx(pm.measure / h, rel=1e-3)
    assert np.allclose(pm.centroid, 0.0, atol=1e-3)
    assert "reactive area" in pm.summary()


@pytest.mark.mpi
def test_cylinder_and_xu2022_prism():
    d, h = 2.0, 1.0
    pm = geo.cylinder(d, h, mesh_size_um=0.15)
    assert pm.measure == pytest.approx(math.pi * d * d / 4 * h, rel=5e-3)
    assert pm.boundary_measure == pytest.approx(math.pi * d * h, rel=2e-3)
    ref = geo.prism(ReferenceXu2022(), 0.5, mesh_size_um=0.15)
    assert ref.sector_measure["basal_top"] == pytest.approx(4.87, rel=5e-3)
    assert ref.boundary_measure == pytest.approx(8.06 * 0.5, rel=5e-3)


@pytest.mark.mpi
def test_sphere_volume_and_surface():
    d = 2.0
    pm = geo.sphere(d, mesh_size_um=0.15)
    assert pm.sectors == {"surface": 1} and pm.reactive_sectors == ("surface",)
    assert pm.measure == pytest.approx(math.pi * d**3 / 6, rel=1e-2)
    assert pm.boundary_measure == pytest.approx(math.pi * d * d, rel=5e-3)
    assert same_on_all_ranks(pm.measure, pm.boundary_measure, pm.info["num_cells"])
    with pytest.raises(InputError) as err:
        geo.sphere(d, sectors=[Sector("a", 0, 10)])
    assert err.value.field == "geometry.sectors"


# ----------------------------------------------------------------------------- mesh sizes


def _cell_diameters_and_boundary_flag(pm):
    mesh = pm.mesh
    tdim = mesh.topology.dim
    n = mesh.topology.index_map(tdim).size_local
    c = mesh.geometry.x[mesh.geometry.dofmaps[0][:n]]
    diam = np.zeros(n)
    for i in range(c.shape[1]):
        for j in range(i + 1, c.shape[1]):
            diam = np.maximum(diam, np.linalg.norm(c[:, i] - c[:, j], axis=1))
    radius = np.linalg.norm(c.mean(axis=1)[:, :2], axis=1)
    return diam, radius


@pytest.mark.mpi
def test_surface_refinement_makes_boundary_cells_smaller():
    r = 2.0
    graded = geo.disk(2 * r, mesh_size_um=0.4, surface_mesh_size_um=0.08, grading_width_um=0.5)
    uniform = geo.disk(2 * r, mesh_size_um=0.4)
    ratios = []
    for pm in (graded, uniform):
        diam, radius = _cell_diameters_and_boundary_flag(pm)
        outer = diam[radius > r - 0.1]
        inner = diam[radius < r - 1.0]
        sums = COMM.allreduce(np.array([outer.sum(), outer.size, inner.sum(), inner.size]))
        ratios.append((sums[0] / sums[1]) / (sums[2] / sums[3]))
    assert ratios[0] < 0.4  # graded: boundary cells much smaller than interior ones
    assert ratios[1] > 0.7  # uniform: comparable
    assert graded.info["h_surface_mean"] < 0.5 * graded.info["h_interior_mean"]
    assert graded.info["num_cells"] > 2 * uniform.info["num_cells"]


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"mesh_size_um": -1}, "geometry.mesh_size_um"),
        ({"mesh_size_um": 0}, "geometry.mesh_size_um"),
        ({"mesh_size_um": 3.0}, "geometry.mesh_size_um"),  # > half the diameter
        ({"mesh_size_um": 1e-6}, "geometry.mesh_size_um"),  # absurd cell count
        ({"mesh_size_um": 0.2, "surface_mesh_size_um": 0.5}, "geometry.surface_mesh_size_um"),
        ({"surface_mesh_size_um": float("nan")}, "geometry.surface_mesh_size_um"),
        ({"grading_width_um": "wide"}, "geometry.grading_width_um"),
    ],
)
def test_invalid_mesh_sizes(kwargs, field):
    with pytest.raises(InputError) as err:
        geo.disk(2.0, **kwargs)
    assert err.value.field == field
    assert "µm" in str(err.value)


# ----------------------------------------------------------------------------- config


@pytest.mark.mpi
def test_config_default_is_graded_xu2022():
    pm = geo.geometry_from_config({})
    assert pm.info["surface_mesh_size_um"] == pytest.approx(pm.info["mesh_size_um"] / 3)
    assert pm.info["mesh_size_um"] == pytest.approx(2 * geo.xu2022_semi_axes_um()[1] / 20)
    assert pm.measure == pytest.approx(4.87, rel=5e-3)
    assert pm.boundary_measure == pytest.approx(8.06, rel=5e-3)


@pytest.mark.mpi
def test_config_contour_csv_and_prism(tmp_path):
    t = np.linspace(0, 2 * np.pi, 36, endpoint=False)
    csv = tmp_path / "outline.csv"
    rows = "\n".join(f"{2 * math.cos(s):.12f},{math.sin(s):.12f}" for s in t)
    csv.write_text("x_um,y_um\n" + rows + "\n")
    cfg = {
        "shape": "contour",
        "contour_csv": "outline.csv",
        "mesh_size_um": 0.1,
        "sectors": [{"name": "tip", "start_deg": -20, "end_deg": 20}],
    }
    pm = geo.geometry_from_config(cfg, COMM, base_dir=tmp_path)
    assert pm.measure == pytest.approx(2 * math.pi, rel=1e-2)
    assert set(pm.sectors) == {"tip", "surface"}
    cfg3 = {
        "shape": "prism",
        "height_um": 0.6,
        "mesh_size_um": 0.2,
        "cross_section": {"shape": "disk", "diameter_um": 1.6, "sectors": [{"name": "a", "start_deg": 0, "end_deg": 180}]},
    }
    pm3 = geo.geometry_from_config(cfg3, COMM)
    assert pm3.sector_measure["a"] == pytest.approx(0.5 * math.pi * 1.6 * 0.6, rel=3e-3)
    assert pm3.reactive_sectors == ("a", "surface")


@pytest.mark.mpi
@pytest.mark.parametrize(
    "cfg, field",
    [
        ({"shape": "cube"}, "geometry.shape"),
        ({"shape": "disk"}, "geometry.diameter_um"),
        ({"shape": "disk", "diameter_um": -1}, "geometry.diameter_um"),
        ({"shape": "disk", "diameter_um": True}, "geometry.diameter_um"),
        ({"shape": "disk", "diameter_um": 2, "height_um": 1}, "geometry.height_um"),
        ({"shape": "disk", "diameter_um": 2, "colour": "red"}, "geometry.colour"),
        ({"shape": "ellipse", "semi_axes_um": [1.0]}, "geometry.semi_axes_um"),
        ({"shape": "ellipse", "semi_axes_um": [1.0, float("nan")]}, "geometry.semi_axes_um[1]"),
        ({"shape": "contour"}, "geometry.contour_csv"),
        ({"shape": "contour", "contour_csv": "missing.csv"}, "geometry.contour_csv"),
        ({"shape": "contour", "contour_points_um": [[0, 0], [1, 0]]}, "geometry.contour_points_um"),
        ({"shape": "prism", "cross_section": {"shape": "disk", "diameter_um": 1}}, "geometry.height_um"),
        ({"shape": "prism", "height_um": 1, "cross_section": {"shape": "sphere"}}, "geometry.cross_section.shape"),
        (
            {"shape": "prism", "height_um": 1, "cross_section": {"shape": "ellipse", "semi_axes_um": [1, -2]}},
            "geometry.cross_section.semi_axes_um[1]",
        ),
        (
            {"shape": "prism", "height_um": 1, "cross_section": {"shape": "disk", "diameter_um": 1, "mesh_size_um": 0.1}},
            "geometry.cross_section.mesh_size_um",
        ),
        ({"shape": "cylinder", "diameter_um": 2, "height_um": 0}, "geometry.height_um"),
        ({"shape": "sphere", "diameter_um": 2, "mesh_size_um": "fine"}, "geometry.mesh_size_um"),
        ({"shape": "xu2022", "sectors": [{"name": "a", "start_deg": 0, "end_deg": 0}]}, "geometry.sectors[0]"),
        ({"verbose": "yes"}, "geometry.verbose"),
        ([1, 2], "geometry"),
    ],
)
def test_config_errors_name_the_field(cfg, field, tmp_path):
    with pytest.raises(InputError) as err:
        geo.geometry_from_config(cfg, COMM, base_dir=tmp_path)
    assert err.value.field == field


def test_config_unknown_key_lists_allowed_keys():
    with pytest.raises(InputError, match="allowed keys: .*diameter_um"):
        geo.geometry_from_config({"shape": "disk", "diameter_um": 1, "radius_um": 1})


# ----------------------------------------------------------------------------- plumbing


@pytest.mark.mpi
def test_measures_agree_with_dolfinx_assembly():
    import ufl
    from dolfinx import fem

    pm = geo.disk(3.0, mesh_size_um=0.3, sectors=[Sector("a", 10, 100)])
    ds = ufl.Measure("ds", domain=pm.mesh, subdomain_data=pm.facet_tags)
    one = fem.Constant(pm.mesh, 1.0)
    area = COMM.allreduce(fem.assemble_scalar(fem.form(one * ufl.dx(domain=pm.mesh))))
    arc = COMM.allreduce(fem.assemble_scalar(fem.form(one * ds(pm.sectors["a"]))))
    assert area == pytest.approx(pm.measure, rel=1e-12)
    assert arc == pytest.approx(pm.sector_measure["a"], rel=1e-12)


def test_gmsh_state_is_left_alone():
    import gmsh

    assert not gmsh.isInitialized()
    geo.disk(1.0, mesh_size_um=0.2)
    assert not gmsh.isInitialized()  # we initialised it, so we finalised it
    gmsh.initialize(interruptible=False)
    try:
        gmsh.model.add("mine")
        gmsh.option.setNumber("General.Terminal", 0)
        gmsh.option.setNumber("Mesh.MeshSizeFromCurvature", 7)
        geo.disk(1.0, mesh_size_um=0.2)
        assert gmsh.isInitialized()
        assert gmsh.model.getCurrent() == "mine"
        assert sorted(gmsh.model.list()) == sorted(["", "mine"])
        assert gmsh.option.getNumber("Mesh.MeshSizeFromCurvature") == 7
    finally:
        gmsh.finalize()


def test_gmsh_is_silent_unless_verbose(capfd):
    geo.disk(1.0, mesh_size_um=0.3)
    quiet = capfd.readouterr()
    assert "Info" not in quiet.out + quiet.err
    geo.disk(1.0, mesh_size_um=0.3, verbose=True)
    loud = capfd.readouterr()
    assert "Info" in loud.out + loud.err


@pytest.mark.mpi
def test_gmsh_failure_becomes_mesh_error(monkeypatch):
    from nmcfx.geometries import _outline

    def broken(self, occ, layout, z=0.0):  # an open curve cannot bound a surface
        return [occ.addCircle(0.0, 0.0, z, self.r, angle1=0.0, angle2=3.0)]

    monkeypatch.setattr(_outline.CircleOutline, "add_curves", broken)
    with pytest.raises(MeshError, match="disk"):
        geo.disk(1.0, mesh_size_um=0.2)
    import gmsh

    assert not gmsh.isInitialized()


@pytest.mark.mpi
def test_mesh_is_distributed_and_identical_numbers_on_all_ranks():
    pm = geo.reference_particle_xu2022(mesh_size_um=0.1, surface_mesh_size_um=0.04, sectors=[Sector("x", 0, 45)])
    n_local = pm.mesh.topology.index_map(2).size_local
    assert COMM.allreduce(n_local) == pm.info["num_cells"]
    if COMM.size > 1:
        assert n_local > 0  # every rank got a share
    assert same_on_all_ranks(
        pm.measure, pm.boundary_measure, pm.centroid, tuple(pm.sector_measure.items()), pm.sectors, pm.info
    )
