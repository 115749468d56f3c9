"""gmsh plumbing: a private model that leaves no global state behind, size fields, meshing."""

from __future__ import annotations

import math
import os
import uuid

import numpy as np

from nmcfx.errors import MeshError

# Global gmsh options this package changes; they are restored afterwards.
_OPTIONS = (
    "General.Terminal",
    "General.Verbosity",
    "Mesh.MeshSizeExtendFromBoundary",
    "Mesh.MeshSizeFromPoints",
    "Mesh.MeshSizeFromCurvature",
    "Mesh.MeshSizeMin",
    "Mesh.MeshSizeMax",
    "Mesh.Algorithm",
    "Mesh.Algorithm3D",
    "Mesh.ElementOrder",
    "Mesh.Optimize",
)


class GmshModel:
    """A fresh, uniquely named gmsh model; initialises/finalises gmsh only if needed.

    ``open()`` makes the model current and returns ``gmsh.model``; ``close()`` removes
    the model, restores the caller's current model and the options changed here, and
    finalises gmsh if this object initialised it.
    """

    def __init__(self, verbose: bool = False):
        self.verbose = verbose
        self._we_initialised = False
        self._saved: dict[str, float] = {}
        self._previous: str | None = None
        self.name = f"nmcfx-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._open = False

    def open(self):
        import gmsh

        if not gmsh.isInitialized():
            gmsh.initialize(readConfigFiles=False, interruptible=False)
            self._we_initialised = True
        self._open = True
        for opt in _OPTIONS:
            self._saved[opt] = gmsh.option.getNumber(opt)
        gmsh.option.setNumber("General.Terminal", 1 if self.verbose else 0)
        gmsh.option.setNumber("General.Verbosity", 5 if self.verbose else 2)
        self._previous = gmsh.model.getCurrent()
        gmsh.model.add(self.name)
        gmsh.model.setCurrent(self.name)
        return gmsh.model

    def close(self) -> None:
        import gmsh

        if not self._open:
            return
        self._open = False
        try:
            if self.name in gmsh.model.list():
                gmsh.model.setCurrent(self.name)
                gmsh.model.remove()
            if self._previous is not None and self._previous in gmsh.model.list():
                gmsh.model.setCurrent(self._previous)
        finally:
            if self._we_initialised:
                gmsh.finalize()
            else:
                for opt, value in self._saved.items():
                    gmsh.option.setNumber(opt, value)

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()


def set_mesh_options(tdim: int) -> None:
    import gmsh

    gmsh.option.setNumber("Mesh.MeshSizeExtendFromBoundary", 0)
    gmsh.option.setNumber("Mesh.MeshSizeFromPoints", 0)
    gmsh.option.setNumber("Mesh.MeshSizeFromCurvature", 0)
    gmsh.option.setNumber("Mesh.MeshSizeMin", 0.0)
    gmsh.option.setNumber("Mesh.MeshSizeMax", 1e22)
    gmsh.option.setNumber("Mesh.Algorithm", 6)  # Frontal-Delaunay
    gmsh.option.setNumber("Mesh.Algorithm3D", 1)  # Delaunay
    gmsh.option.setNumber("Mesh.ElementOrder", 1)
    gmsh.option.setNumber("Mesh.Optimize", 1)


def set_size_field(
    model,
    entity_dim: int,
    entities: list[int],
    mesh_size: float,
    surface_size: float | None,
    grading_width: float,
    *,
    center: tuple[float, ...] | None = None,
    center_size: float | None = None,
    center_width: float | None = None,
) -> None:
    """Background size: ``surface_size`` on the given boundary entities, growing linearly
    to ``mesh_size`` over ``grading_width`` (uniform ``mesh_size`` if no surface size);
    with ``center``/``center_size``, also ``center_size`` at that point, growing linearly
    to ``mesh_size`` over ``center_width`` (where a shrinking core ends, the last place the
    front reaches). The smaller of the two sizes wins."""
    fields = model.mesh.field
    if surface_size is None or surface_size >= mesh_size or not entities:
        f = fields.add("MathEval")
        fields.setString(f, "F", repr(float(mesh_size)))
    else:
        dist = fields.add("Distance")
        if entity_dim == 1:
            fields.setNumbers(dist, "CurvesList", entities)
            longest = max(model.occ.getMass(1, c) for c in entities)
            sampling = int(np.clip(math.ceil(3.0 * longest / surface_size), 20, 20000))
        else:
            fields.setNumbers(dist, "SurfacesList", entities)
            extent = 0.0
            for s in entities:
                x0, y0, z0, x1, y1, z1 = model.getBoundingBox(2, s)
                extent = max(extent, x1 - x0, y1 - y0, z1 - z0)
            # Curved faces are longer than their bounding box: allow a factor pi/2.
            sampling = int(np.clip(math.ceil(2.0 * 1.6 * extent / surface_size), 20, 400))
        fields.setNumber(dist, "Sampling", sampling)
        f = fields.add("Threshold")
        fields.setNumber(f, "InField", dist)
        fields.setNumber(f, "SizeMin", surface_size)
        fields.setNumber(f, "SizeMax", mesh_size)
        fields.setNumber(f, "DistMin", 0.0)
        fields.setNumber(f, "DistMax", grading_width)
    if center is not None and center_size is not None and center_size < mesh_size:
        # distance in the coordinates given: (x, y) = to an axis along z (prisms), (x, y, z) = to a point
        width = float(center_width if center_width is not None else grading_width)
        radius = "Sqrt(" + " + ".join(f"(({v}) - ({float(c)!r}))^2" for v, c in zip("xyz", center)) + ")"
        g = fields.add("MathEval")  # grows without bound; the minimum with the other field caps it
        fields.setString(g, "F", f"{float(center_size)!r} + {(mesh_size - center_size) / width!r} * {radius}")
        m = fields.add("Min")
        fields.setNumbers(m, "FieldsList", [f, g])
        f = m
    fields.setAsBackgroundMesh(f)


def generate(model, tdim: int, what: str, limits=None) -> dict:
    """Mesh the model; return element count and quality (gmsh minSICN) statistics.

    ``limits`` (a :class:`~nmcfx.geometries.limits.MeshLimits`) refuses a mesh that is too
    large or whose worst cell is below the minimum quality."""
    try:
        model.mesh.generate(tdim)
    except Exception as exc:
        raise MeshError(f"gmsh could not mesh the {what}: {exc}") from None
    tags = []
    for etags in model.mesh.getElements(tdim)[1]:
        tags.extend(etags)
    if not tags:
        raise MeshError(f"gmsh produced no {('triangles', 'tetrahedra')[tdim - 2]} for the {what}")
    import gmsh

    q = np.asarray(gmsh.model.mesh.getElementQualities(tags, "minSICN"))
    if q.min() <= 0.0:
        raise MeshError(f"gmsh produced {int((q <= 0).sum())} inverted/degenerate cells for the {what}")
    if limits is not None:
        limits.check_mesh(q, what)
    return {"quality_min": float(q.min()), "quality_mean": float(q.mean()), "quality_measure": "gmsh minSICN"}
