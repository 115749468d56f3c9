"""Meshing in a forked process (geometries/_mesh_process.py): the same mesh as meshing in the
process, gmsh never loaded by the run, and every way the child can end reported on every rank.

Tests marked ``mpi`` also run under ``mpiexec -n 2`` (rank 0 forks, rank 1 waits in the
broadcast)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from mpi4py import MPI

import numpy as np
import pytest

import nmcfx.geometries as geo
from nmcfx.errors import InputError, MeshError
from nmcfx.geometries import Sector, _mesh_process
from nmcfx.geometries._build import mesh_and_distribute

COMM = MPI.COMM_WORLD


def _no_children_left():
    """Every child this process forked has been reaped."""
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)


def _mesh_arrays(pm):
    m = pm.mesh
    return (m.geometry.x.copy(), m.geometry.dofmaps[0].copy(), m.geometry.input_global_indices.copy(),
            pm.facet_tags.indices.copy(), pm.facet_tags.values.copy())


@pytest.mark.mpi
@pytest.mark.parametrize("build", [
    lambda: geo.disk(2.4, mesh_size_um=0.3, surface_mesh_size_um=0.1, sectors=[Sector("blocked", -45, 45)]),
    lambda: geo.sphere(2.0, mesh_size_um=0.5),
], ids=["disk with a sector", "sphere"])
def test_the_forked_mesh_is_the_in_process_mesh_bit_for_bit(build, monkeypatch):
    monkeypatch.setenv("NMCFX_MESH_CACHE", "0")
    monkeypatch.setenv("NMCFX_MESH_PROCESS", "0")
    here = build()
    monkeypatch.setenv("NMCFX_MESH_PROCESS", "1")
    assert _mesh_process.enabled()
    forked = build()
    for a, b in zip(_mesh_arrays(here), _mesh_arrays(forked)):
        assert a.shape == b.shape and np.array_equal(a, b)
    assert forked.info == here.info and forked.sectors == here.sectors
    if COMM.rank == 0:
        _no_children_left()


def _two_regions(model):
    occ = model.occ
    inner = occ.addDisk(0, 0, 0, 0.5, 0.5)
    outer = occ.addDisk(0, 0, 0, 1.0, 1.0)
    occ.fragment([(2, outer)], [(2, inner)])
    occ.synchronize()
    surfs = sorted(t for _, t in model.getEntities(2))
    inc = [s for s in surfs if abs(occ.getMass(2, s) - np.pi * 0.25) < 1e-6]
    model.addPhysicalGroup(2, inc, 1)
    model.addPhysicalGroup(2, [s for s in surfs if s not in inc], 2)
    model.addPhysicalGroup(1, [t for _, t in model.getBoundary([(2, s) for s in surfs], combined=True)], 3)
    model.mesh.setSize(model.getEntities(0), 0.2)
    model.mesh.generate(2)
    return {"regions": 2}


@pytest.mark.mpi
def test_cell_tags_come_back_too(monkeypatch):
    monkeypatch.setenv("NMCFX_MESH_PROCESS", "0")
    meta0, here = mesh_and_distribute(COMM, _two_regions, 2, "two regions", ghost_shared_facets=True)
    monkeypatch.setenv("NMCFX_MESH_PROCESS", "1")
    meta1, forked = mesh_and_distribute(COMM, _two_regions, 2, "two regions", ghost_shared_facets=True)
    assert meta0 == meta1 == {"regions": 2}
    for tags in ("cell_tags", "facet_tags"):
        a, b = getattr(here, tags), getattr(forked, tags)
        assert np.array_equal(a.indices, b.indices) and np.array_equal(a.values, b.values)
    assert np.array_equal(here.mesh.geometry.x, forked.mesh.geometry.x)
    assert sorted(np.unique(forked.cell_tags.values)) in ([1, 2], [1], [2])


def test_a_run_process_never_loads_gmsh(tmp_path):
    """The point of the fork: gmsh's library is mapped by the meshing child only."""
    code = ("from mpi4py import MPI\nimport sys\nimport nmcfx.geometries as geo\n"
            "pm = geo.disk(2.0, mesh_size_um=0.3)\n"
            "maps = open('/proc/self/maps').read()\n"
            "print(pm.info['num_cells'] > 0, 'gmsh' in sys.modules, 'libgmsh' in maps)\n")
    env = dict(os.environ, NMCFX_MESH_PROCESS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False", "False"]


# ---------------------------------------------------------------------------- how a child can end
def _raise_input(model):
    raise InputError("geometry.diameter_um", "must be > 0 µm, got -1")


def _raise_plain(model):
    raise RuntimeError("an open curve cannot bound a surface")


def _crash(model):
    os.kill(os.getpid(), signal.SIGSEGV)


def _exit_quietly(model):
    os._exit(3)


@pytest.mark.mpi
def test_bad_input_in_the_child_is_the_same_input_error_on_every_rank(monkeypatch):
    monkeypatch.setenv("NMCFX_MESH_PROCESS", "1")
    with pytest.raises(InputError) as err:
        mesh_and_distribute(COMM, _raise_input, 2, "disk")
    assert err.value.field == "geometry.diameter_um" and "got -1" in str(err.value)
    if COMM.rank == 0:
        _no_children_left()


@pytest.mark.mpi
@pytest.mark.parametrize("on_root, message", [
    (_raise_plain, "gmsh failed on the disk: an open curve cannot bound a surface"),
    (_crash, "gmsh crashed while meshing the disk (the meshing process died of SIGSEGV)"),
    (_exit_quietly, "the meshing process of the disk ended without a result (exit status 3)"),
], ids=["gmsh error", "segfault", "silent exit"])
def test_a_failing_child_is_one_mesh_error_on_every_rank(on_root, message, monkeypatch):
    monkeypatch.setenv("NMCFX_MESH_PROCESS", "1")
    with pytest.raises(MeshError) as err:
        mesh_and_distribute(COMM, on_root, 2, "disk")
    assert str(err.value) == message
    if COMM.rank == 0:
        _no_children_left()


def _interrupted(model):
    raise KeyboardInterrupt


def test_ctrl_c_in_the_child_is_a_keyboard_interrupt_here(monkeypatch):
    monkeypatch.setenv("NMCFX_MESH_PROCESS", "1")
    with pytest.raises(KeyboardInterrupt):
        mesh_and_distribute(MPI.COMM_SELF, _interrupted, 2, "disk")
    _no_children_left()


def _slow_then_mark(marker):
    def on_root(model):
        import time

        time.sleep(60)  # (gmsh meshing a large body: the child does not notice Ctrl-C before it returns)
        marker.write_text("the child finished")
        return {}

    return on_root


def test_ctrl_c_while_the_child_meshes_stops_at_once(monkeypatch, tmp_path):
    """The parent, waiting for the mesh, is interrupted (here by a timer raising KeyboardInterrupt, as
    Ctrl-C does): it kills the child instead of waiting for it and re-raises, leaving no process."""
    monkeypatch.setenv("NMCFX_MESH_PROCESS", "1")
    marker = tmp_path / "finished"

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    try:
        with pytest.raises(KeyboardInterrupt):
            mesh_and_distribute(MPI.COMM_SELF, _slow_then_mark(marker), 2, "disk")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0.0)
        signal.signal(signal.SIGALRM, previous)
    _no_children_left()
    assert not marker.exists()  # the child was killed, not waited for


def test_a_call_the_child_did_not_record_is_a_mesh_error():
    model = _mesh_process.RecordedModel({("getNodes", (), ()): (np.arange(2), np.zeros(6), None)})
    first = model.getNodes()
    first[0][:] = 7  # the caller modifies what it got (model_to_mesh does): the recording keeps its copy
    assert np.array_equal(model.getNodes()[0], [0, 1])
    with pytest.raises(MeshError, match=r"did not record gmsh.model.mesh.getElements\(2,\).*NMCFX_MESH_PROCESS=0"):
        model.mesh.getElements(2, tag=-1)


def test_nmcfx_mesh_process_0_meshes_here(monkeypatch):
    monkeypatch.setenv("NMCFX_MESH_PROCESS", "0")
    assert not _mesh_process.enabled()
    seen = []

    def on_root(model):
        seen.append(os.getpid())
        return _two_regions(model)

    mesh_and_distribute(MPI.COMM_SELF, on_root, 2, "two regions")
    assert seen == [os.getpid()]  # (in the forked child, the append would be lost)


def test_forked_meshing_is_the_default_on_linux_only(monkeypatch):
    monkeypatch.delenv("NMCFX_MESH_PROCESS", raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    assert _mesh_process.enabled()
    monkeypatch.setattr(sys, "platform", "darwin")
    assert not _mesh_process.enabled()
    monkeypatch.setenv("NMCFX_MESH_PROCESS", "1")
    assert _mesh_process.enabled()


def test_when_no_child_can_be_started_the_mesh_is_made_here(monkeypatch):
    """A fork refused (ENOMEM under strict overcommit on a large rank 0) is no error: the mesh is
    made in this process, the same mesh."""
    import errno

    monkeypatch.setenv("NMCFX_MESH_CACHE", "0")
    monkeypatch.setenv("NMCFX_MESH_PROCESS", "1")
    forked = geo.disk(2.0, mesh_size_um=0.3)

    def refuse():
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    monkeypatch.setattr(os, "fork", refuse)
    seen = []

    def on_root(model):
        seen.append(os.getpid())
        return _two_regions(model)

    mesh_and_distribute(MPI.COMM_SELF, on_root, 2, "two regions")
    assert seen == [os.getpid()]
    here = geo.disk(2.0, mesh_size_um=0.3)
    for a, b in zip(_mesh_arrays(here), _mesh_arrays(forked)):
        assert np.array_equal(a, b)
    _no_children_left()
