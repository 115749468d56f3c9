"""``[solver] petsc_options`` checked at load time, before any run directory exists.

DOLFINx hands these options to the Newton solver (SNES) of the θ problem, lets it read
them once (``SNESSetFromOptions``, which also configures its KSP, PC and line search),
and removes them again. So an option is effective only if that set-up reads it: a
misspelt name, or one PETSc reads later (e.g. ``mat_mumps_icntl_14``, read when the
factorisation is created), would be silently ignored. :func:`check_petsc_options`
repeats that set-up on a throw-away SNES (on ``COMM_SELF``, the same result on every
rank, a few milliseconds) with the nmcfx defaults and the given options, then sets up the
linear solver on a 2×2 matrix, and rejects with one line naming the option:

* a name the set-up did not read (unknown, misspelt, or read too late to take effect);
* a value PETSc refuses (``ksp_type = "foo"``, ``snes_rtol = "abc"``, ``snes_max_it = 2.5``);
* a solver that cannot be set up (``pc_factor_mat_solver_type = "nonexistent"``);
* a value that is not a string, number or boolean, or a name written with a leading ``-``.

    check_petsc_options({"snes_rtol": 1e-8, "ksp_type": "preonly"})   # fine
    check_petsc_options({"snes_rtoll": 1e-8})   # InputError: solver.petsc_options.snes_rtoll: ...
"""

from __future__ import annotations

import itertools

from nmcfx.errors import InputError

FIELD = "solver.petsc_options"
_counter = itertools.count()


def check_petsc_options(options: dict, field: str = FIELD) -> dict:
    """Validate ``options`` (name → value, names without the leading ``-``); returns them unchanged."""
    for name, value in options.items():
        key = f"{field}.{name}"
        if not isinstance(name, str) or not name or name.startswith("-") or any(c.isspace() for c in name):
            raise InputError(key, "write PETSc option names without the leading '-' and without spaces, "
                                  "e.g. snes_rtol = 1e-8")
        if not isinstance(value, (str, int, float, bool)):
            raise InputError(key, f"must be a string, number or boolean, got {type(value).__name__}")
    if not options:
        return options
    from .problem import DEFAULT_PETSC_OPTIONS

    error, unused = _try_setup({**DEFAULT_PETSC_OPTIONS, **options})
    if error is None:
        unused = [n for n in options if n in unused]
        if unused:
            raise InputError(f"{field}.{unused[0]}",
                             "is not read when PETSc sets up the Newton solver (SNES, KSP, PC, line search): "
                             "a misspelt or unknown option, or one PETSc reads only later (such as mat_mumps_*), "
                             "which would be ignored")
        return options
    # name the option that PETSc refuses: try them one at a time on top of the defaults
    for name in options:
        if _try_setup({**DEFAULT_PETSC_OPTIONS, name: options[name]})[0] is not None:
            raise InputError(f"{field}.{name}", f"PETSc refuses {options[name]!r}: {error}")
    raise InputError(field, f"PETSc refuses this combination of options: {error}")


def _try_setup(options: dict) -> tuple[str | None, list[str]]:
    """Set up a throw-away SNES with ``options`` and its linear solver on a 2×2 matrix.

    Returns (PETSc's last error line or None, the option names the SNES set-up did not read).
    """
    from mpi4py import MPI  # noqa: F401  (before petsc4py)
    from petsc4py import PETSc

    prefix = f"nmcfx_check{next(_counter)}_"
    db = PETSc.Options()
    snes = A = None
    try:
        for name, value in options.items():
            db[prefix + name] = value
        snes = PETSc.SNES().create(PETSc.COMM_SELF)
        snes.setOptionsPrefix(prefix)
        A = PETSc.Mat().createAIJ([2, 2], nnz=1, comm=PETSc.COMM_SELF)
        A.setValue(0, 0, 1.0)
        A.setValue(1, 1, 2.0)
        A.assemble()
        snes.setFromOptions()
        unused = [name for name in options if not db.used(prefix + name)]
        ksp = snes.getKSP()
        ksp.setOperators(A)
        ksp.setUp()
        return None, unused
    except PETSc.Error as exc:
        return _last_line(exc), []
    finally:
        for name in options:
            if db.hasName(prefix + name):
                db.delValue(prefix + name)
        for obj in (snes, A):
            if obj is not None:
                obj.destroy()


def _last_line(exc) -> str:
    lines = [ln.split("]", 1)[-1].strip() for ln in str(exc).splitlines() if ln.strip()]
    text = lines[-1] if lines else f"PETSc error {getattr(exc, 'ierr', '?')}"
    return text.rstrip(".")
