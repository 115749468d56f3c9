"""nmcfx.geometries: meshed particle geometries (2D cross-sections, 3D prisms/spheres).

All lengths are in µm and mesh coordinates are in µm. Builders are collective over
their ``comm``: gmsh meshes on rank 0 and DOLFINx distributes the mesh.
"""

from .config import geometry_from_config
from .particle import ParticleMesh
from .sectors import BASAL_BOTTOM, BASAL_TOP, SURFACE, Sector
from .shapes2d import (
    XU2022_AREA_UM2,
    XU2022_PERIMETER_UM,
    Contour,
    Disk,
    Ellipse,
    ReferenceXu2022,
    contour,
    disk,
    ellipse,
    mesh_2d,
    reference_particle_xu2022,
    xu2022_semi_axes_um,
)
from .shapes3d import cylinder, prism, sphere
from .shell import ShelledParticleMesh, disk_with_shell

__all__ = [
    "BASAL_BOTTOM",
    "BASAL_TOP",
    "SURFACE",
    "XU2022_AREA_UM2",
    "XU2022_PERIMETER_UM",
    "Contour",
    "Disk",
    "Ellipse",
    "ParticleMesh",
    "ReferenceXu2022",
    "Sector",
    "ShelledParticleMesh",
    "contour",
    "cylinder",
    "disk",
    "disk_with_shell",
    "ellipse",
    "geometry_from_config",
    "mesh_2d",
    "prism",
    "reference_particle_xu2022",
    "sphere",
    "xu2022_semi_axes_um",
]
