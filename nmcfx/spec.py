"""A run specification: one validated config, its base directory and its digest.

:class:`RunSpec` is what ``nmcfx.load`` returns and what ``nmcfx.run`` and the sweep
engine consume. It is built from a TOML file or a dict and validated once, by
:func:`nmcfx.solver.run.prepare` itself (every room's validator, in its order) with the
geometry room's mesh builder short-circuited, so nothing is meshed::

    import nmcfx
    spec = nmcfx.load("run.toml")                                  # validated
    fast = spec.with_overrides({"material.scaling_S": 4.0,          # dotted keys,
                                "protocol.steps[0].current_mA_g": 200})  # validated again
    fast.digest        # '3f1c…': the config AND the bytes of every file it points to
    fast.files()       # {'material.ocv_csv': PosixPath('/…/ocv.csv')}

Dotted keys address tables with ``.`` and list items with ``[i]`` (or ``.i``). An
override may add a key the base config leaves at its default; a key no room knows is one
:class:`~nmcfx.errors.InputError` naming the dotted key.

The digest covers the canonical JSON of the config and the SHA-256 of the contents of
every file the config points to (CSV tables, contour files, label images): any string
value that names an existing file relative to the base directory, plus every key ending
in one of :data:`PATH_SUFFIXES` (a folder there is hashed file by file; a missing path
hashes as "missing", so it re-runs when the file appears).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nmcfx.errors import InputError

#: Config keys whose values are file paths even when the file does not exist (yet).
PATH_SUFFIXES = ("_csv", "_file", "_path", "_image", "_tif", "_tiff", "_npy", "_npz", "_dir")
#: String values never taken as paths.
_NOT_PATHS = {"title"}
_TOKEN = re.compile(r"([^.\[\]]+)|\[(-?\d+)\]")


# ----------------------------------------------------------------------------- dotted keys
def split_key(dotted: str) -> list[str | int]:
    """``"protocol.steps[0].current_mA_g"`` → ``["protocol", "steps", 0, "current_mA_g"]``
    (``steps.0`` works too)."""
    if not isinstance(dotted, str) or not dotted.strip():
        raise InputError("override", f"a dotted key must be a non-empty string, got {dotted!r}")
    parts: list[str | int] = []
    pos = 0
    text = dotted.strip()
    while pos < len(text):
        if text[pos] == ".":
            pos += 1
            continue
        m = _TOKEN.match(text, pos)
        if m is None:
            raise InputError(dotted, "is not a dotted key (tables joined by '.', list items as [i])")
        name, index = m.groups()
        if index is not None:
            parts.append(int(index))
        elif name.lstrip("-").isdigit() and parts:
            parts.append(int(name))
        else:
            parts.append(name)
        pos = m.end()
    if not parts or not isinstance(parts[0], str):
        raise InputError(dotted, "is not a dotted key (tables joined by '.', list items as [i])")
    return parts


def join_key(parts) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


def get_key(cfg: Mapping, dotted: str, default: Any = KeyError) -> Any:
    """The value at a dotted key (``default`` if absent; raises KeyError without one)."""
    node: Any = cfg
    for p in split_key(dotted):
        try:
            node = node[p]
        except (KeyError, IndexError, TypeError):
            if default is KeyError:
                raise KeyError(dotted) from None
            return default
    return node


def set_key(cfg: dict, dotted: str, value: Any, *, run_config: bool = True) -> bool:
    """Set a dotted key in place, creating missing tables. Returns True if the leaf is new.

    Raises :class:`InputError` naming ``dotted`` for an unknown top-level table (of a run
    config, with ``run_config``), an index out of range or a path through a value that is
    not a table/list.
    """
    from nmcfx.config import TOP_LEVEL_KEYS

    parts = split_key(dotted)
    if run_config and parts[0] not in TOP_LEVEL_KEYS:
        raise InputError(dotted, f"unknown key: {parts[0]!r} is not a config table; allowed: {list(TOP_LEVEL_KEYS)}")
    node: Any = cfg
    for i, p in enumerate(parts):
        last = i == len(parts) - 1
        where = join_key(parts[:i]) or "the config"
        if isinstance(p, int):
            if not isinstance(node, list):
                raise InputError(dotted, f"{where} is not a list (cannot index [{p}])")
            if not -len(node) <= p < len(node):
                raise InputError(dotted, f"index [{p}] out of range: {where} has {len(node)} item(s)")
            if last:
                node[p] = value
                return False
            node = node[p]
            continue
        if not isinstance(node, dict):
            raise InputError(dotted, f"{where} is a {type(node).__name__}, not a table (cannot set {p!r})")
        if last:
            new = p not in node
            node[p] = value
            return new
        if p not in node:
            if isinstance(parts[i + 1], int):
                raise InputError(dotted, f"{join_key(parts[:i + 1])} does not exist (cannot index it)")
            node[p] = {}
        node = node[p]
    return False  # pragma: no cover


def plain(value: Any) -> Any:
    """NumPy scalars/arrays and tuples → plain Python (TOML/JSON-able) values."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return value.tolist()
    if isinstance(value, tuple):
        return [plain(v) for v in value]
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


# ----------------------------------------------------------------------------- validation
class _Meshless(Exception):
    """Raised in place of meshing while a geometry table is validated."""


@contextlib.contextmanager
def _no_meshing():
    """Short-circuit the geometry room's mesh builders (``_build.mesh_and_distribute`` and
    ``build_particle``, wherever a geometry module bound them): everything up to meshing is
    checked, then :class:`_Meshless` is raised in place of gmsh."""
    import importlib
    import pkgutil
    import sys

    import nmcfx.geometries as geometries
    from nmcfx.geometries import _build

    for info in pkgutil.iter_modules(geometries.__path__):  # bind every module before patching
        try:
            importlib.import_module(f"nmcfx.geometries.{info.name}")
        except ImportError:  # pragma: no cover - an optional module
            continue
    targets = [getattr(_build, n) for n in ("mesh_and_distribute", "build_particle") if hasattr(_build, n)]

    def stop(*args, **kwargs):  # noqa: ARG001
        raise _Meshless

    saved = []
    for name, mod in list(sys.modules.items()):
        if mod is None or not name.startswith("nmcfx.geometries"):
            continue
        for attr in ("mesh_and_distribute", "build_particle"):
            f = getattr(mod, attr, None)
            if f is not None and any(f is t for t in targets):
                saved.append((mod, attr, f))
                setattr(mod, attr, stop)
    try:
        yield
    finally:
        for mod, attr, f in saved:
            setattr(mod, attr, f)


class _SectorNames:
    """What ``SurfaceSettings.check_sectors`` needs of a particle, read from [geometry]."""

    def __init__(self, gcfg: Mapping):
        from nmcfx.geometries import BASAL_BOTTOM, BASAL_TOP, SURFACE
        from nmcfx.geometries.config import SHAPES_2D

        sectors = gcfg.get("sectors") or (gcfg.get("cross_section") or {}).get("sectors") or []
        names = [str(s.get("name")) for s in sectors if isinstance(s, Mapping)]
        self.reactive_sectors = tuple(names) + (SURFACE,)
        self.sectors = {n: i for i, n in enumerate(self.reactive_sectors)}
        if gcfg.get("shape", "xu2022") not in SHAPES_2D:
            self.sectors.update({BASAL_BOTTOM: -1, BASAL_TOP: -2})


def validate_config(cfg: dict, base_dir: Path) -> None:
    """Check a run config with :func:`nmcfx.solver.run.prepare` itself, meshing short-circuited.

    prepare validates every table before it meshes; the few checks it makes on the mesh
    (sector names, per-particle stop quantities and materials) are made here on what the
    config says (:func:`_checks_after_meshing`).
    """
    from mpi4py import MPI

    from nmcfx.solver import run as run_module

    try:
        with _no_meshing():
            run_module.prepare(cfg, base_dir=base_dir, comm=MPI.COMM_SELF)
    except _Meshless:
        _checks_after_meshing(cfg, base_dir)


def _checks_after_meshing(cfg: dict, base_dir: Path) -> None:
    from nmcfx.materials import get_material, material_from_config
    from nmcfx.solver import run as run_module
    from nmcfx.solver.protocol import protocol_from_dict
    from nmcfx.solver.surface import SurfaceSettings

    material = material_from_config(cfg.get("material", {}), base_dir)
    protocol = protocol_from_dict(cfg["protocol"], material.theta0)
    check_stop = getattr(run_module, "check_stop_quantities", None)
    gcfg = cfg.get("geometry") or {}
    is_electrode = getattr(run_module, "is_electrode_config", lambda c: False)(cfg)
    if not is_electrode:
        SurfaceSettings.from_dict(cfg.get("surface")).check_sectors(_SectorNames(gcfg))
        if check_stop:
            check_stop(protocol, ())
        return
    if gcfg.get("shape") == "electrode_3d":
        particles = [("P0", None)]
    else:
        from nmcfx.geometries.electrode import layout_from_config

        layout = layout_from_config(gcfg, base_dir=base_dir)[0]
        particles = [(p.name or f"P{i}", p.material) for i, p in enumerate(layout.particles)]
    if check_stop:
        check_stop(protocol, [n for n, _ in particles])
    for name, mat in particles:  # as prepare's particle_materials
        if mat not in (None, material.name):
            try:
                get_material(mat)
            except InputError as exc:
                raise InputError(f"geometry.particles[{name}].material", str(exc).split(": ", 1)[-1]) from None


# ----------------------------------------------------------------------------- files and digest
def _is_pathish(key: str) -> bool:
    return key.endswith(PATH_SUFFIXES)


def referenced_files(cfg: Mapping, base_dir: Path) -> dict[str, Path]:
    """Dotted key → path of every file or directory the config points to (see module doc)."""
    out: dict[str, Path] = {}

    def walk(node, parts):
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(v, parts + [str(k)])
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, parts + [i])
        elif isinstance(node, str) and parts and parts[-1] not in _NOT_PATHS and node.strip():
            key = parts[-1] if isinstance(parts[-1], str) else ""
            if len(node) > 4096 or "\n" in node:
                return
            p = Path(node).expanduser()
            p = p if p.is_absolute() else Path(base_dir) / p
            try:
                is_file = p.is_file()
            except OSError:
                is_file = False
            if is_file or _is_pathish(key):  # folders only under path-like keys (e.g. analysis_dir)
                out[join_key(parts)] = p

    walk(cfg, [])
    return out


_hash_cache: dict[tuple, str] = {}


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (a directory: of its files' relative names and bytes);
    ``"missing"`` if absent. Cached per process by (path, size, mtime)."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        return "missing"
    if path.is_dir():
        h = hashlib.sha256()
        for sub in sorted(q for q in path.rglob("*") if q.is_file()):
            h.update(str(sub.relative_to(path)).encode() + b"\0" + file_digest(sub).encode())
        return h.hexdigest()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _hash_cache:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        _hash_cache[key] = h.hexdigest()
    return _hash_cache[key]


def canonical_json(obj: Any) -> str:
    def default(o):
        o = plain(o)
        if isinstance(o, float) and not math.isfinite(o):
            return repr(o)
        return o if not isinstance(o, (set, frozenset)) else sorted(o)

    return json.dumps(plain(obj), sort_keys=True, separators=(",", ":"), default=default, ensure_ascii=False)


@functools.cache
def model_digest() -> str:
    """Hash of what turns a config into numbers besides the config: the source and built-in data
    (default tables) of ``solver/``, ``materials/`` and ``geometries/``. A changed default table or
    discretisation makes a cached case stale (a study or sweep re-runs it)."""
    import importlib.util

    h = hashlib.sha256()
    for pkg in ("nmcfx.solver", "nmcfx.materials", "nmcfx.geometries"):
        spec = importlib.util.find_spec(pkg)
        root = Path(spec.origin).parent
        for f in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".csv", ".json", ".toml") and p.is_file()):
            h.update(str(f.relative_to(root)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:20]


def config_digest(cfg: Mapping, base_dir: Path) -> str:
    """20 hex digits over the config, the contents of the files it points to, and the model
    (:func:`model_digest`)."""
    files = {k: file_digest(p) for k, p in sorted(referenced_files(cfg, base_dir).items())}
    blob = canonical_json({"config": cfg, "files": files, "model": model_digest()})
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


# ----------------------------------------------------------------------------- the spec
class RunSpec:
    """A validated run configuration (immutable: overrides make a new spec).

    ``config``: the tables of a run TOML (a copy is kept); ``base_dir``: where relative
    paths in it resolve (the TOML file's folder); ``name``: the default run directory name.
    """

    __slots__ = ("_cfg", "base_dir", "name", "source", "_digest")

    def __init__(self, config: Mapping, base_dir: str | os.PathLike = ".", name: str = "run",
                 source: str | os.PathLike | None = None, *, validate: bool = True):
        if not isinstance(config, Mapping):
            raise InputError("config", f"must be a table (dict), got {type(config).__name__}")
        self._cfg = plain(copy.deepcopy(dict(config)))
        self.base_dir = Path(base_dir).resolve()
        self.name = str(name)
        self.source = None if source is None else Path(source)
        self._digest = None
        if validate:
            validate_config(self._cfg, self.base_dir)

    # -- constructors
    @classmethod
    def from_toml(cls, path: str | os.PathLike) -> "RunSpec":
        from nmcfx.config import load_config

        path = Path(path)
        return cls(load_config(path), base_dir=path.resolve().parent, name=path.stem, source=path)

    @classmethod
    def from_dict(cls, cfg: Mapping, base_dir: str | os.PathLike = ".", name: str = "run") -> "RunSpec":
        return cls(cfg, base_dir=base_dir, name=name)

    @classmethod
    def example(cls, name: str) -> "RunSpec":
        from nmcfx.config import example_path

        return cls.from_toml(example_path(name))

    # -- reading
    @property
    def config(self) -> dict:
        """A deep copy of the config tables."""
        return copy.deepcopy(self._cfg)

    @property
    def title(self) -> str:
        return self._cfg.get("title", "")

    def get(self, dotted: str, default: Any = None) -> Any:
        return copy.deepcopy(get_key(self._cfg, dotted, default))

    def files(self) -> dict[str, Path]:
        """Dotted key → path of every file the config points to."""
        return referenced_files(self._cfg, self.base_dir)

    @property
    def digest(self) -> str:
        """Hash of the config and of the contents of every file it points to (20 hex digits)."""
        if self._digest is None:
            self._digest = config_digest(self._cfg, self.base_dir)
        return self._digest

    # -- deriving
    def with_overrides(self, overrides: Mapping[str, Any] | None = None, *, name: str | None = None,
                       validate: bool = True) -> "RunSpec":
        """A new spec with dotted keys set (``{"material.scaling_S": 4.0}``), validated.

        A key that no room knows raises one :class:`InputError` naming that dotted key.
        """
        cfg = copy.deepcopy(self._cfg)
        created = []
        for key, value in (overrides or {}).items():
            if set_key(cfg, key, plain(value)):
                created.append(key)
        out = RunSpec(cfg, self.base_dir, self.name if name is None else name, self.source, validate=False)
        if validate:
            try:
                validate_config(out._cfg, out.base_dir)
            except InputError as exc:
                raise _unknown_key_error(exc, created) from None
        return out

    def prepare(self, comm=None):
        """``nmcfx.solver.run.prepare`` on this spec (meshes; collective over ``comm``)."""
        from mpi4py import MPI

        from nmcfx.solver.run import prepare

        return prepare(self.config, base_dir=self.base_dir, comm=MPI.COMM_WORLD if comm is None else comm)

    def to_dict(self) -> dict:
        """Everything needed to rebuild the spec elsewhere (JSON-able)."""
        return {"kind": "run", "config": self.config, "base_dir": str(self.base_dir), "name": self.name,
                "source": None if self.source is None else str(self.source)}

    @classmethod
    def from_payload(cls, d: Mapping, *, validate: bool = True) -> "RunSpec":
        return cls(d["config"], d["base_dir"], d.get("name", "run"), d.get("source"), validate=validate)

    def __repr__(self) -> str:
        return f"RunSpec(name={self.name!r}, base_dir='{self.base_dir}', digest={self.digest})"

    def __eq__(self, other) -> bool:
        return isinstance(other, RunSpec) and self.digest == other.digest

    def __hash__(self) -> int:
        return hash(self.digest)


class Params(RunSpec):
    """Free-form case parameters for a sweep task that is not one run config (e.g. a study
    that builds its own mesh): the same overrides and digest, validated by the task itself.

        base = Params({"model": "resolved", "delta_nm": 1.0, "rate_mA_g": 100.0})
        base.with_overrides({"delta_nm": 2.0}).digest
    """

    __slots__ = ()

    def __init__(self, config: Mapping, base_dir: str | os.PathLike = ".", name: str = "case",
                 source: str | os.PathLike | None = None, *, validate: bool = True):
        super().__init__(config, base_dir, name, source, validate=False)

    def with_overrides(self, overrides=None, *, name=None, validate=True) -> "Params":  # noqa: ARG002
        cfg = copy.deepcopy(self._cfg)
        for key, value in (overrides or {}).items():
            set_key(cfg, key, plain(value), run_config=False)
        return Params(cfg, self.base_dir, self.name if name is None else name, self.source)

    def prepare(self, comm=None):  # noqa: ARG002
        raise TypeError("Params are not a run config; the sweep task interprets them")

    def to_dict(self) -> dict:
        return super().to_dict() | {"kind": "params"}

    def __repr__(self) -> str:
        return f"Params(name={self.name!r}, digest={self.digest})"


def spec_from_payload(d: Mapping, *, validate: bool = True) -> RunSpec:
    """A :class:`RunSpec` or :class:`Params` from ``to_dict()`` output."""
    cls = Params if d.get("kind") == "params" else RunSpec
    return cls(d["config"], d["base_dir"], d.get("name", "run"), d.get("source"), validate=validate)


def _unknown_key_error(exc: InputError, created: list[str]) -> InputError:
    """A room's "unknown key(s)" error caused by an override becomes one line naming that key."""
    msg = str(exc)
    if "unknown key" not in msg and "is not a key of" not in msg and "is not used by" not in msg:
        return exc
    for key in created:
        parts = split_key(key)
        leaf = str(parts[-1])
        table = join_key(parts[:-1])
        if exc.field == key or (exc.field == table and repr(leaf) in msg) or (exc.field == table and leaf in msg):
            allowed = msg[msg.index("allowed"):] if "allowed" in msg else ""
            return InputError(key, "unknown key" + (f"; {allowed}" if allowed else ""))
    return exc


def load(source: str | os.PathLike | Mapping | RunSpec, overrides: Mapping[str, Any] | None = None, *,
         base_dir: str | os.PathLike = ".", name: str | None = None) -> RunSpec:
    """A :class:`RunSpec` from a TOML path, a config dict, a built-in example name
    (``"example:flagship"``) or another spec, with optional dotted ``overrides``."""
    if isinstance(source, RunSpec):
        spec = source
    elif isinstance(source, Mapping):
        spec = RunSpec.from_dict(source, base_dir=base_dir, name=name or "run")
    elif isinstance(source, str) and source.startswith("example:"):
        spec = RunSpec.example(source.split(":", 1)[1])
    else:
        spec = RunSpec.from_toml(source)
    if overrides:
        spec = spec.with_overrides(overrides)
    if name is not None and spec.name != name:
        spec = RunSpec(spec._cfg, spec.base_dir, name, spec.source, validate=False)
    return spec
