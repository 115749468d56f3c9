"""User-facing errors.

Anything a user can cause by bad input (config, tables, geometry parameters, images)
raises :class:`InputError` with a message that names the offending field and the
allowed range. The CLI prints these as one line, without a traceback.
"""


class NmcfxError(Exception):
    """Base class of errors nmcfx reports to users without a traceback."""


class InputError(NmcfxError, ValueError):
    """Invalid user input. ``field`` is the dotted config path (e.g. ``geometry.diameter_um``)."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class MeshError(NmcfxError, RuntimeError):
    """Mesh generation failed or produced an unusable mesh."""


class SolverError(NmcfxError, RuntimeError):
    """The solver could not advance (e.g. the time step fell below its minimum)."""
