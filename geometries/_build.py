"""Collective driver: mesh on rank 0 with gmsh, distribute with DOLFINx, measure.

Particles are kept in a small in-process cache keyed by everything that defines the mesh
(shape, sectors, sizes, limits; see :func:`build_particle`), so a second run of the same
geometry in one process — a sweep over rates or materials, a calibration — reuses the mesh
instead of calling gmsh again (and the solver reuses what it derived from it). Only meshes
up to :data:`MESH_CACHE_MAX_CELLS` cells on ``COMM_WORLD``/``COMM_SELF`` are kept, at most
:data:`MESH_CACHE_SIZE` of them; ``NMCFX_MESH_CACHE=0`` or :func:`clear_mesh_cache` turns it off.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections import OrderedDict
from collections.abc import Callable

from mpi4py import MPI

from nmcfx.errors import InputError, MeshError, NmcfxError

from ._gmsh import GmshModel
from .particle import ParticleMesh, measure_mesh


def _raw_message(exc: InputError) -> str:
    text = str(exc)
    prefix = f"{exc.field}: "
    return text[len(prefix) :] if exc.field and text.startswith(prefix) else text


def mesh_and_distribute(
    comm: MPI.Comm,
    mesh_on_root: Callable[[object], dict],
    tdim: int,
    what: str,
    verbose: bool = False,
    ghost_shared_facets: bool = False,
):
    """Run ``mesh_on_root(gmsh.model)`` on rank 0 and distribute the mesh with DOLFINx.

    gmsh runs in a forked child process of rank 0 (:mod:`._mesh_process`; ``NMCFX_MESH_PROCESS=0``:
    in this process), so ``mesh_on_root`` must not change state outside the gmsh model that the
    caller needs afterwards: only its returned dict comes back.

    ``ghost_shared_facets``: ghost the cells across partition facets (needed when forms
    integrate over interfaces between regions, e.g. electrodes).

    ``mesh_on_root`` builds the CAD model, physical groups and mesh, and returns a
    picklable dict (``sectors``, ``reactive``, ``info``). Errors raised there (InputError,
    MeshError, gmsh exceptions) are re-raised on every rank. Returns that dict and the
    DOLFINx ``MeshData`` (mesh, cell_tags, facet_tags).
    """
    from . import _mesh_process

    status: tuple | None = None
    session: GmshModel | None = None
    forked = _mesh_process.enabled()
    if comm.rank == 0:
        if forked:  # gmsh runs in a child process; a KeyboardInterrupt there ends this rank like here
            try:
                status = _mesh_process.mesh_in_child(mesh_on_root, what, verbose)
            except MeshError as exc:
                status = ("mesh", str(exc))
            forked = status is not None  # (None: no child could be started)
        if not forked:
            try:
                session = GmshModel(verbose)
                model = session.open()
                status = ("ok", mesh_on_root(model))
            except InputError as exc:
                status = ("input", exc.field, _raw_message(exc))
            except NmcfxError as exc:
                status = ("mesh", str(exc))
            except Exception as exc:  # gmsh raises plain Exception
                status = ("mesh", f"gmsh failed on the {what}: {exc}")
            if status[0] != "ok" and session is not None:
                session.close()
                session = None
    try:
        calls = status[2] if forked and comm.rank == 0 and status[0] == "ok" else None
        status = comm.bcast(status[:2] if calls is not None else status, root=0)
        if status[0] == "input":
            raise InputError(status[1], status[2])
        if status[0] == "mesh":
            raise MeshError(status[1])
        from dolfinx.io.gmsh import model_to_mesh

        if comm.rank != 0:
            model = None
        elif calls is not None:
            model = _mesh_process.RecordedModel(calls)
        else:
            import gmsh

            model = gmsh.model
        try:
            partitioner = None
            if ghost_shared_facets and comm.size > 1:
                from dolfinx.mesh import GhostMode, create_cell_partitioner

                partitioner = create_cell_partitioner(GhostMode.shared_facet, 2)
            data = model_to_mesh(model, comm, 0, gdim=tdim, partitioner=partitioner)
        except Exception as exc:
            raise MeshError(f"could not convert the gmsh mesh of the {what} to DOLFINx: {exc}") from None
    finally:
        if session is not None:
            session.close()
    return status[1], data


#: Largest mesh (cells) kept in the in-process cache, and how many meshes are kept.
MESH_CACHE_MAX_CELLS = 200_000
MESH_CACHE_SIZE = 4
_CACHE: OrderedDict[str, ParticleMesh] = OrderedDict()


def clear_mesh_cache() -> None:
    """Forget the meshes kept for reuse in this process."""
    _CACHE.clear()


def _cache_key(comm: MPI.Comm, key) -> str | None:
    if key is None or os.environ.get("NMCFX_MESH_CACHE", "1") == "0":
        return None
    if comm.Compare(MPI.COMM_WORLD) != MPI.IDENT and comm.Compare(MPI.COMM_SELF) != MPI.IDENT:
        return None  # a sub-communicator may be freed and its handle reused
    try:
        blob = pickle.dumps((comm.size, comm.Compare(MPI.COMM_SELF) == MPI.IDENT, key))
    except Exception:  # noqa: BLE001 - an unpicklable key: no caching
        return None
    return hashlib.sha256(blob).hexdigest()


def build_particle(
    comm: MPI.Comm,
    mesh_on_root: Callable[[object], dict],
    tdim: int,
    what: str,
    verbose: bool = False,
    cache_key=None,
) -> ParticleMesh:
    """:func:`mesh_and_distribute`, then measure the mesh into a :class:`ParticleMesh`.

    ``cache_key``: a picklable value that determines the mesh completely (the validated
    shape, sectors and sizes); a particle built before with the same key on the same
    communicator is returned as is (see the module docstring)."""
    key = None if verbose else _cache_key(comm, cache_key)  # verbose: the user wants to watch gmsh
    if key is not None and key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    meta, data = mesh_and_distribute(comm, mesh_on_root, tdim, what, verbose)
    particle = particle_from(meta, data, tdim, what)
    if key is not None and particle.info["num_cells"] <= MESH_CACHE_MAX_CELLS:
        _CACHE[key] = particle
        while len(_CACHE) > MESH_CACHE_SIZE:
            _CACHE.popitem(last=False)
    return particle


def particle_from(meta: dict, data, tdim: int, what: str, cls=ParticleMesh, **extra) -> ParticleMesh:
    """Measure distributed mesh data (sectors, areas, sizes) into ``cls`` (a ParticleMesh)."""
    if data.facet_tags is None:
        raise MeshError(f"the {what} mesh has no tagged boundary facets")
    data.facet_tags.name = "sectors"
    sectors = dict(meta["sectors"])
    reactive = tuple(meta["reactive"])
    m = measure_mesh(data.mesh, data.facet_tags, sectors, reactive)
    info = dict(meta["info"])
    for key in ("num_cells", "num_vertices", "num_ranks", "h_min", "h_max", "h_surface_mean", "h_interior_mean"):
        info[key] = m[key]
    if info["num_cells"] == 0:
        raise MeshError(f"the {what} mesh has no cells")
    return cls(
        mesh=data.mesh,
        facet_tags=data.facet_tags,
        sectors=sectors,
        dim=tdim,
        centroid=m["centroid"],
        measure=m["measure"],
        boundary_measure=m["boundary_measure"],
        sector_measure=m["sector_measure"],
        reactive_sectors=reactive,
        info=info,
        **extra,
    )
