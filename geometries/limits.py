"""Mesh size and quality limits, checked before anything is solved.

Two keys of ``[geometry]``, both optional:

* ``min_quality`` — the cell quality, gmsh's minSICN (signed inverse condition number: 1
  for an equilateral cell, → 0 for a flat one), in (0, 1], that 99 % of the cells must
  reach (:data:`MAX_POOR_FRACTION`); default :data:`DEFAULT_MIN_QUALITY`. gmsh meshes of
  these particles have 99 % of their cells above 0.8 (2D) and a minimum of 0.2–0.3 (3D);
  a noisy contour can leave a couple of slivers where outline pieces meet. When meshing
  fails, many cells are flat: a 2 µm disk at ``mesh_size_um = 0.004`` gives 7 k cells,
  46 % of them below 0.1 (worst 0.002), and θ_centre 0.9425 instead of 0.9495.
* ``max_cells`` — the largest cell count, an integer; default: what fits in
  :data:`MEMORY_FRACTION` of this machine's memory (the smaller of the physical memory
  and a cgroup limit) at :data:`BYTES_PER_CELL` per cell, and at most
  :data:`MAX_CELLS_CAP`. The estimate per cell is measured peak memory of whole runs
  (mesh, forms, solver): 2D P1 1.8 kB, P2 3.9 kB per triangle (LU); 3D P1 tetrahedra with
  LU 1.7 kB at 170 k cells and 2.7 kB at 330 k (fill grows with size), with GMRES + GAMG —
  the default from 100 k unknowns, ~0.55 M tetrahedra — 1.35 kB at 0.86 M cells on one rank
  and 1.19 kB at 5.4 M cells on two (``benchmarks/README.md``, "3D at scale"). A 3D mesh
  therefore counts :data:`BYTES_PER_CELL` ``[3]`` per cell where the iterative solver takes
  over, and :data:`LU_BYTES_PER_CELL_3D` when the memory only fits meshes LU solves.

The cell count is estimated from the sizes before gmsh runs and counted again after.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from numbers import Integral

import numpy as np

from nmcfx.errors import InputError

from ._validate import in_range

DEFAULT_MIN_QUALITY = 0.1
#: A mesh is degenerate if more than this fraction of its cells is below ``min_quality``
#: (a few slivers where outline pieces meet are tolerated; failed meshing is not).
MAX_POOR_FRACTION = 0.01
#: Bytes of peak memory per cell assumed for the default ``max_cells`` (see the module docstring).
BYTES_PER_CELL = {2: 4.0e3, 3: 1.5e3}
#: 3D meshes below :data:`LU_MAX_CELLS_3D` cells are solved by LU, whose fill costs more per cell.
LU_BYTES_PER_CELL_3D = 3.0e3
#: P1 tetrahedra at which the 3D solver switches from LU to GMRES + GAMG (~5.5 cells per vertex
#: times ``ITERATIVE_MIN_DOFS_3D`` = 100 k unknowns in ``solver/problem.py``).
LU_MAX_CELLS_3D = 550_000
MEMORY_FRACTION = 0.5
#: Upper bound of the default ``max_cells`` (gmsh meshes on one rank: beyond this it takes hours).
MAX_CELLS_CAP = 20_000_000


def machine_memory_bytes() -> int:
    """Physical memory of this machine, or the cgroup (container) limit if smaller."""
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as fh:
                text = fh.read().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return int(total)


def default_max_cells(tdim: int, memory_bytes: int | None = None) -> int:
    """The largest mesh that fits in :data:`MEMORY_FRACTION` of ``memory_bytes`` (default: this
    machine's) at the measured bytes per cell (see the module docstring)."""
    mem = machine_memory_bytes() if memory_bytes is None else memory_bytes
    budget = MEMORY_FRACTION * mem
    n = budget / BYTES_PER_CELL[tdim]
    if tdim == 3 and n < LU_MAX_CELLS_3D:  # only meshes LU solves fit: count LU's fill
        n = budget / LU_BYTES_PER_CELL_3D
    return int(min(MAX_CELLS_CAP, n))


@dataclass(frozen=True)
class MeshLimits:
    """``min_quality`` (gmsh minSICN) and ``max_cells``; ``source`` says where max_cells came from."""

    min_quality: float = DEFAULT_MIN_QUALITY
    max_cells: int = MAX_CELLS_CAP
    source: str = ""
    prefix: str = "geometry"

    def check_estimate(self, cells: float, key: str):
        """Refuse before meshing if the size estimate is above ``max_cells``."""
        if cells > self.max_cells:
            raise InputError(
                f"{self.prefix}.{key}",
                f"would give about {cells:.2g} cells, above {self.prefix}.max_cells = {self.max_cells:.3g} "
                f"({self.source}); sizes are in µm — use a larger {key}, or raise {self.prefix}.max_cells",
            )

    def check_mesh(self, qualities, what: str):
        """Refuse a generated mesh that is too large or degenerate (rank 0, before distribution).

        ``qualities``: gmsh minSICN of every cell. Degenerate: more than
        :data:`MAX_POOR_FRACTION` of the cells below ``min_quality``.
        """
        q = np.asarray(qualities, dtype=float)
        if q.size > self.max_cells:
            raise InputError(
                f"{self.prefix}.max_cells",
                f"the {what} mesh has {q.size} cells, above the limit {self.max_cells:.3g} ({self.source}); "
                f"use a larger {self.prefix}.mesh_size_um, or raise {self.prefix}.max_cells",
            )
        poor = int((q < self.min_quality).sum())
        if poor > MAX_POOR_FRACTION * q.size:
            raise InputError(
                f"{self.prefix}.min_quality",
                f"gmsh produced a degenerate mesh of the {what}: {poor} of {q.size} cells ({poor / q.size:.0%}) "
                f"have quality below {self.min_quality:g} (gmsh minSICN, worst {q.min():.2g}); try a slightly "
                f"different {self.prefix}.mesh_size_um / surface_mesh_size_um, or lower {self.prefix}.min_quality",
            )

    def as_info(self) -> dict:
        return {"min_quality_limit": self.min_quality, "max_cells_limit": self.max_cells}


def mesh_limits(tdim: int, min_quality=None, max_cells=None, *, prefix: str = "geometry", comm=None) -> MeshLimits:
    """Validate the two keys and fill in the defaults.

    The default ``max_cells`` is computed on rank 0 of ``comm`` and broadcast, so every
    rank applies the same limit (nodes of a cluster may differ in memory).
    """
    q = DEFAULT_MIN_QUALITY if min_quality is None else in_range(min_quality, f"{prefix}.min_quality", 0.0, 1.0)
    if q <= 0.0:
        raise InputError(f"{prefix}.min_quality", f"must be in (0, 1] (gmsh minSICN), got {q:g}")
    if max_cells is not None:
        if isinstance(max_cells, bool) or not isinstance(max_cells, Integral) or max_cells < 1:
            raise InputError(f"{prefix}.max_cells", f"must be a positive integer, got {max_cells!r}")
        return MeshLimits(q, int(max_cells), "as set in the config", prefix)
    mem = machine_memory_bytes() if comm is None or comm.rank == 0 else None
    if comm is not None and comm.size > 1:
        mem = comm.bcast(mem, root=0)
    n = default_max_cells(tdim, mem)
    per_cell = BYTES_PER_CELL[tdim] if (tdim == 2 or n >= LU_MAX_CELLS_3D) else LU_BYTES_PER_CELL_3D
    source = (f"default: {MEMORY_FRACTION:.0%} of this machine's {mem / 1e9:.3g} GB at "
              f"~{per_cell / 1e3:g} kB per cell")
    return MeshLimits(q, n, source, prefix)
