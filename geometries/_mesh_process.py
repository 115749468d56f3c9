"""Meshing in a forked helper process: gmsh's library never enters the simulation process.

libgmsh is the largest library a run would map (20-60 MB resident after meshing, depending on
how the page cache holds it), and a run needs it only for the first tenth of a second. On the
meshing rank, :func:`mesh_in_child` forks; the child opens a private gmsh model, runs the
geometry's ``mesh_on_root(model)``, reads from the model exactly what DOLFINx's
``model_to_mesh`` reads (nodes; elements, element properties and names of the physical
groups), sends that and ``mesh_on_root``'s result back through a pipe and leaves with
``os._exit`` (no MPI, no atexit handlers). The parent hands the recording to ``model_to_mesh``
as a :class:`RecordedModel`, so the mesh is the one the in-process path builds, bit for bit
(``tests/test_mesh_process.py``).

A crash inside gmsh becomes one :class:`~nmcfx.errors.MeshError` naming the signal instead of
killing the run (under MPI: every rank). Ctrl-C reaches both processes: the parent, waiting on
the pipe, stops at once, kills the child (which inside gmsh would not notice before gmsh
returns) and re-raises ``KeyboardInterrupt``. ``NMCFX_MESH_PROCESS=0`` meshes in the process
itself, as nmcfx does by default off Linux (:func:`enabled`) and whenever no child can be started
(a refused fork: ENOMEM under strict overcommit on a large rank 0, no file descriptors left).
"""

from __future__ import annotations

import copy
import os
import pickle
import signal
import sys
import warnings
from collections.abc import Callable

from nmcfx.errors import MeshError

#: Exit status of a child that caught Ctrl-C.
_INTERRUPTED = 130


def enabled() -> bool:
    """Whether meshing runs in a forked process: ``NMCFX_MESH_PROCESS`` = 1 or 0; by default on Linux
    (on macOS a fork after system frameworks are loaded is unsafe, and Python no longer forks there)."""
    default = "1" if sys.platform.startswith("linux") else "0"
    return hasattr(os, "fork") and os.environ.get("NMCFX_MESH_PROCESS", default) != "0"


def _call_key(prefix: str, name: str, args: tuple, kwargs: dict) -> tuple:
    """How a recorded call is looked up: method path, positional and keyword arguments."""
    return prefix + name, args, tuple(sorted(kwargs.items()))


class _Recorder:
    """Forwards calls to a gmsh model (``gmsh.model`` or ``gmsh.model.mesh``) and keeps their results."""

    def __init__(self, target, calls: dict, prefix: str = ""):
        self._target, self._calls, self._prefix = target, calls, prefix

    def __getattr__(self, name: str):
        fn = getattr(self._target, name)

        def call(*args, **kwargs):
            result = fn(*args, **kwargs)
            # a copy: model_to_mesh modifies some results in place (node indices)
            self._calls[_call_key(self._prefix, name, args, kwargs)] = copy.deepcopy(result)
            return result

        return call


class RecordedModel:
    """What a :class:`_Recorder` saw, answering the same calls the same way (a fresh copy each time);
    a call that was not recorded is a :class:`MeshError`."""

    def __init__(self, calls: dict, prefix: str = ""):
        self._calls, self._prefix = calls, prefix
        if not prefix:
            self.mesh = RecordedModel(calls, "mesh.")

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)

        def call(*args, **kwargs):
            key = _call_key(self._prefix, name, args, kwargs)
            if key not in self._calls:
                raise MeshError(f"the meshing process did not record gmsh.model.{key[0]}{args}: "
                                "set NMCFX_MESH_PROCESS=0 to mesh in this process")
            return copy.deepcopy(self._calls[key])

        return call


def record_for_dolfinx(model) -> dict:
    """Read from a meshed gmsh model what ``dolfinx.io.gmsh.model_to_mesh`` reads on its rank, in the
    same calls (same arguments, same keywords)."""
    from dolfinx.io.gmsh import extract_geometry, extract_topology_and_markers

    calls: dict = {}
    rec = _Recorder(model, calls)
    rec.mesh = _Recorder(model.mesh, calls, "mesh.")
    extract_geometry(rec)
    topologies, _ = extract_topology_and_markers(rec)
    dims = [rec.mesh.getElementProperties(element)[1] for element in topologies]
    if dims:
        rec.mesh.getElements(dim=int(max(dims)), tag=-1)
    return calls


def _child(write_fd: int, mesh_on_root: Callable[[object], dict], verbose: bool, what: str) -> None:
    """The forked child: mesh, record, send, leave. Never returns."""
    code = 0
    try:
        from nmcfx.errors import InputError, NmcfxError

        from ._build import _raw_message
        from ._gmsh import GmshModel

        session = GmshModel(verbose)
        try:
            model = session.open()
            try:
                meta = mesh_on_root(model)
                status = ("ok", meta, record_for_dolfinx(model))
            except InputError as exc:
                status = ("input", exc.field, _raw_message(exc))
            except NmcfxError as exc:
                status = ("mesh", str(exc))
            except Exception as exc:  # noqa: BLE001 - gmsh raises plain Exception
                status = ("mesh", f"gmsh failed on the {what}: {exc}")
        finally:
            session.close()
        with os.fdopen(write_fd, "wb") as fh:
            pickle.dump(status, fh, protocol=pickle.HIGHEST_PROTOCOL)
    except KeyboardInterrupt:
        code = _INTERRUPTED
    except BaseException as exc:  # noqa: BLE001 - nothing may escape a forked child
        try:
            with os.fdopen(write_fd, "wb", closefd=False) as fh:
                pickle.dump(("mesh", f"the meshing process failed on the {what}: {exc!r}"), fh)
        except BaseException:  # noqa: BLE001
            pass
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            import ctypes

            ctypes.CDLL(None).fflush(None)  # gmsh's own (C stdio) output; os._exit would drop it
        finally:
            os._exit(code)


def mesh_in_child(mesh_on_root: Callable[[object], dict], what: str, verbose: bool = False) -> tuple | None:
    """Run ``mesh_on_root`` in a forked child (see the module docstring). Returns the status tuple of
    :func:`~nmcfx.geometries._build.mesh_and_distribute` — ``("ok", meta, calls)`` with the recorded
    model calls, ``("input", field, message)`` or ``("mesh", message)`` — or None if no child could be
    started (the caller meshes in its own process); raises ``KeyboardInterrupt`` if the child was
    interrupted."""
    import importlib

    importlib.import_module("dolfinx.io.gmsh")  # imported before the fork: the child must not import it

    sys.stdout.flush()
    sys.stderr.flush()
    try:
        read_fd, write_fd = os.pipe()
    except OSError:  # no file descriptors left: mesh here
        return None
    try:
        with warnings.catch_warnings():  # (Python warns about fork in a process with threads: the
            warnings.simplefilter("ignore", DeprecationWarning)  # child uses only its own thread)
            pid = os.fork()
    except OSError:  # e.g. ENOMEM under strict overcommit on a large rank 0: mesh here
        os.close(read_fd)
        os.close(write_fd)
        return None
    if pid == 0:
        os.close(read_fd)
        _child(write_fd, mesh_on_root, verbose, what)
    os.close(write_fd)
    reaped = False
    try:
        with os.fdopen(read_fd, "rb") as fh:
            payload = fh.read()
        _, status_code = os.waitpid(pid, 0)
        reaped = True
    finally:
        if not reaped:  # interrupted while waiting: the child goes too
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
    if os.WIFSIGNALED(status_code):
        sig = os.WTERMSIG(status_code)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        raise MeshError(f"gmsh crashed while meshing the {what} (the meshing process died of {name})")
    if os.WEXITSTATUS(status_code) == _INTERRUPTED:
        raise KeyboardInterrupt
    try:
        return pickle.loads(payload)
    except Exception:  # noqa: BLE001 - nothing or a partial message
        raise MeshError(f"the meshing process of the {what} ended without a result "
                        f"(exit status {os.WEXITSTATUS(status_code)})") from None
