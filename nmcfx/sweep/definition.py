"""What a sweep is: a base run spec and axes over dotted keys, expanded into cases.

A sweep file (TOML)::

    [sweep]
    name = "lun-disk"                     # default: the file name
    base = "disk.toml"                    # a run config (path relative to this file),
                                          # "example:NAME", or an inline [base] table
    metrics = ["max:d_um", "final:theta_center"]   # extra table columns (summary numbers are always in)
    [sweep.labels]                        # short names for keys (case names, table, plots)
    "material.scaling_S" = "S"
    [sweep.plot]                          # the figure written by `collect`
    metric = "capacity_mAh_g"
    x = "rate"
    y = "S"

    [[axes]]                              # grid axis: every value x every other axis
    key = "material.scaling_S"
    values = [2.0, 3.0, 4.0, 5.0]         # or linspace = [start, stop, n] / geomspace = [start, stop, n]

    [[axes]]                              # zipped axis: several keys stepping together
    name = "blocking"
    zip = { "surface.blocking.blocked" = [0.3, 0.7], "output.image_pixels" = [60, 80] }

    [[axes]]                              # sampled axis: seeded random or Latin-hypercube points
    name = "sample"
    sample = "lhs"                        # or "random"
    n = 20
    seed = 1
    ranges = { "material.scaling_S" = [2, 5], "protocol.steps[0].current_mA_g" = [50, 400, "log"] }

The cases are the product of the axes (each axis is one dimension of the results). Each
case is the base spec with the case's dotted overrides, validated before anything runs
(an invalid case is one error line naming the case). Backend tables (``[local]``,
``[mpi]``, ``[slurm]``, ``[dask]``) are read by the backends.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nmcfx.errors import InputError
from nmcfx.spec import RunSpec, canonical_json, load as load_spec, plain, spec_from_payload, split_key

DEFAULT_TASK = "nmcfx.sweep.case:simulate"
#: Output settings every case gets unless the base config sets them (a sweep draws its own
#: table and figure; per-case VTX fields and figures cost time). ``progress`` is always off.
LIGHT_OUTPUT = {"fields": "none", "figures": False}
SWEEP_KEYS = ("name", "base", "metrics", "labels", "plot", "task", "task_options", "light_outputs")
BACKEND_TABLES = ("local", "mpi", "slurm", "dask")
TOP_KEYS = ("sweep", "base", "axes") + BACKEND_TABLES
METRIC_FUNCTIONS = ("max", "min", "final", "initial", "mean")


@dataclass(frozen=True)
class Axis:
    """One dimension of a sweep: ``points`` are dicts of dotted key → value.

    ``kind``: ``grid`` (one key), ``zip`` (several keys in step), ``random``/``lhs``
    (sampled over ranges) or ``cases`` (named, hand-written override sets).
    """

    name: str
    keys: tuple[str, ...]
    points: tuple[dict, ...]
    kind: str = "grid"
    case_names: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.points)

    def to_dict(self) -> dict:
        return {"name": self.name, "keys": list(self.keys), "points": [dict(p) for p in self.points],
                "kind": self.kind, "case_names": list(self.case_names)}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Axis":
        return cls(d["name"], tuple(d["keys"]), tuple(dict(p) for p in d["points"]), d.get("kind", "grid"),
                   tuple(d.get("case_names", ())))


# ----------------------------------------------------------------------------- axis builders
def grid(key: str, values: Sequence, name: str | None = None) -> Axis:
    """A grid axis over one dotted key: ``grid("material.scaling_S", [2, 3, 4])``."""
    values = [plain(v) for v in values]
    if not values:
        raise InputError(f"axis {name or key}", "empty: an axis needs at least one value")
    return Axis(name or key, (key,), tuple({key: v} for v in values), "grid")


def zipped(columns: Mapping[str, Sequence], name: str | None = None) -> Axis:
    """Several keys stepping together: ``zipped({"a.b": [1, 2], "c.d": [3, 4]})``."""
    cols = {k: [plain(v) for v in vs] for k, vs in columns.items()}
    label = name or next(iter(cols), "zip")
    if not cols:
        raise InputError(f"axis {label}", "empty: a zip axis needs at least one key")
    lengths = {k: len(v) for k, v in cols.items()}
    if len(set(lengths.values())) != 1:
        raise InputError(f"axis {label}", f"zipped lists must have equal lengths, got {lengths}")
    n = next(iter(lengths.values()))
    if n == 0:
        raise InputError(f"axis {label}", "empty: an axis needs at least one value")
    return Axis(label, tuple(cols), tuple({k: cols[k][i] for k in cols} for i in range(n)), "zip")


def sample(ranges: Mapping[str, Sequence], n: int, *, seed: int = 0, method: str = "lhs",
           name: str = "sample") -> Axis:
    """``n`` seeded points over ranges ``{key: [lo, hi]}`` (``[lo, hi, "log"]``: uniform in log).

    ``method``: ``"lhs"`` (Latin hypercube, scipy.stats.qmc) or ``"random"`` (uniform).
    """
    import numpy as np

    where = f"axis {name}"
    if method not in ("lhs", "random"):
        raise InputError(f"{where}.sample", f"must be 'lhs' or 'random', got {method!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"{where}.n", f"must be an integer >= 1, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(f"{where}.seed", f"must be an integer, got {seed!r}")
    if not ranges:
        raise InputError(f"{where}.ranges", "empty: give at least one key = [lo, hi]")
    parsed = []
    for key, r in ranges.items():
        f = f"{where}.ranges.{key}"
        r = list(r) if isinstance(r, (list, tuple)) else [r]
        log = len(r) == 3 and r[2] == "log"
        if len(r) not in (2, 3) or (len(r) == 3 and not log) or not all(_is_num(x) for x in r[:2]):
            raise InputError(f, f"must be [lo, hi] or [lo, hi, \"log\"], got {r!r}")
        lo, hi = float(r[0]), float(r[1])
        if not (math.isfinite(lo) and math.isfinite(hi)) or not lo < hi:
            raise InputError(f, f"needs finite lo < hi, got [{lo:g}, {hi:g}]")
        if log and lo <= 0:
            raise InputError(f, f"a log range needs lo > 0, got {lo:g}")
        parsed.append((key, lo, hi, log))
    d = len(parsed)
    if method == "lhs":
        from scipy.stats import qmc

        try:
            engine = qmc.LatinHypercube(d=d, rng=np.random.default_rng(seed))
        except TypeError:  # scipy < 1.15
            engine = qmc.LatinHypercube(d=d, seed=np.random.default_rng(seed))
        u = engine.random(n)
    else:
        u = np.random.default_rng(seed).random((n, d))
    points = []
    for row in u:
        pt = {}
        for (key, lo, hi, log), x in zip(parsed, row):
            pt[key] = float(math.exp(math.log(lo) + x * (math.log(hi) - math.log(lo))) if log else lo + x * (hi - lo))
        points.append(pt)
    return Axis(name, tuple(k for k, *_ in parsed), tuple(points), method)


def cases(named: Mapping[str, Mapping[str, Any]], name: str = "case") -> Axis:
    """Hand-written cases: ``cases({"uniform": {}, "eta0.3": {"surface.blocking.blocked": 0.3}})``."""
    if not named:
        raise InputError(f"axis {name}", "empty: give at least one case")
    keys = []
    for ov in named.values():
        keys += [k for k in ov if k not in keys]
    return Axis(name, tuple(keys), tuple({k: plain(v) for k, v in ov.items()} for ov in named.values()), "cases",
                tuple(_token_text(str(n)) for n in named))


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


# ----------------------------------------------------------------------------- cases
def case_digest(spec_digest: str, task: str = DEFAULT_TASK, task_options: Mapping | None = None) -> str:
    """A case's identity: its spec's digest, and the task and task options when not the default
    (a task's options, e.g. the sampling points of a calibration, shape its results too)."""
    if task == DEFAULT_TASK and not task_options:
        return spec_digest
    blob = canonical_json({"spec": spec_digest, "task": task, "task_options": dict(task_options or {})})
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


@dataclass
class Case:
    """One point of the sweep: the base spec with ``overrides``, validated."""

    index: int
    name: str
    overrides: dict
    coords: dict  # axis name → position along it
    spec: RunSpec
    task: str = DEFAULT_TASK
    task_options: dict = field(default_factory=dict)

    @property
    def digest(self) -> str:
        """The spec's digest (config + files), with the task and its options if not the default."""
        return case_digest(self.spec.digest, self.task, self.task_options)


@dataclass
class Sweep:
    """A base spec, axes and settings. ``cases()`` expands and validates every case."""

    base: RunSpec
    axes: list[Axis]
    name: str = "sweep"
    labels: dict = field(default_factory=dict)
    metrics: list = field(default_factory=list)
    plot: dict = field(default_factory=dict)
    task: str = DEFAULT_TASK
    task_options: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)  # backend tables: local, mpi, slurm, dask
    source: Path | None = None
    _cases: list | None = field(default=None, repr=False)

    def __post_init__(self):
        # an axis named after its dotted key (the default) is named by the key's label
        from dataclasses import replace

        self.axes = list(self.axes)  # a copy: the caller's list is left alone
        taken = {a.name for a in self.axes}
        for i, a in enumerate(self.axes):
            if a.name in a.keys:
                lab = self.label(a.name)
                if lab != a.name and lab not in taken:
                    taken.discard(a.name)
                    taken.add(lab)
                    self.axes[i] = replace(a, name=lab)

    @classmethod
    def from_configs(cls, configs: Mapping[str, Mapping], *, base_dir: str | Path = ".", name: str = "sweep",
                     **kwargs) -> "Sweep":
        """One case per complete run config, named by its key (a study's hand-built cases)::

            Sweep.from_configs({"uniform": cfg_a, "eta0.3": cfg_b}, name="fig4")
        """
        base = RunSpec({}, base_dir=base_dir, name="base", validate=False)
        return cls(base, [cases({n: dict(c) for n, c in configs.items()})], name=name, **kwargs)

    # -- labels and names
    def label(self, key: str) -> str:
        """Short label of a dotted key (``[sweep.labels]``, else its last component)."""
        if key in self.labels:
            return self.labels[key]
        last = [p for p in split_key(key) if isinstance(p, str)][-1]
        clash = [k for a in self.axes for k in a.keys if k != key
                 and [p for p in split_key(k) if isinstance(p, str)][-1] == last and k not in self.labels]
        return key if clash else last

    def coordinate_labels(self) -> dict[str, str]:
        """Table column name of every swept key."""
        return {k: self.label(k) for a in self.axes for k in a.keys}

    def _tokens(self, axis: Axis) -> list[str]:
        if axis.kind == "cases":
            toks = list(axis.case_names)
        elif axis.kind in ("random", "lhs"):
            width = len(str(len(axis) - 1))
            toks = [f"{_token_text(axis.name)}={i:0{width}d}" for i in range(len(axis))]
        else:
            toks = ["_".join(f"{_token_text(self.label(k))}={_fmt_value(p[k])}" for k in axis.keys)
                    for p in axis.points]
        if len(set(toks)) != len(toks):  # values that print alike: fall back to positions
            width = len(str(len(axis) - 1))
            toks = [f"{_token_text(axis.name)}={i:0{width}d}" for i in range(len(axis))]
        return toks

    # -- expansion
    def cases(self) -> list[Case]:
        """Every case, validated (the first invalid one raises, naming the case)."""
        if self._cases is None:
            self._cases = self._expand()
        return self._cases

    def _expand(self) -> list[Case]:
        if not self.axes:
            raise InputError("axes", "a sweep needs at least one axis ([[axes]] with key + values, zip or sample)")
        seen = {}
        for a in self.axes:
            if len(a) == 0:
                raise InputError(f"axis {a.name}", "empty: an axis needs at least one value")
            if a.name in seen:
                raise InputError(f"axis {a.name}", "two axes have this name; give each a distinct name")
            seen[a.name] = a
        keys = [k for a in self.axes for k in a.keys]
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup:
            raise InputError("axes", f"key(s) {dup} appear on more than one axis")
        tokens = [self._tokens(a) for a in self.axes]
        out = []
        total = math.prod(len(a) for a in self.axes)
        for index, combo in enumerate(itertools.product(*[range(len(a)) for a in self.axes])):
            overrides, coords = {}, {}
            for a, i in zip(self.axes, combo):
                overrides.update(a.points[i])
                coords[a.name] = i
            name = "_".join(t[i] for t, i in zip(tokens, combo))
            try:
                spec = self.base.with_overrides(overrides, name=name)
            except InputError as exc:
                raise InputError(f"sweep case {name!r} ({index + 1}/{total})", str(exc)) from None
            out.append(Case(index, name, overrides, coords, spec, self.task, dict(self.task_options)))
        return out

    def payload(self, case: Case, casedir: Path | str | None = None) -> dict:
        """What a worker needs to run ``case`` (JSON-able)."""
        return {"index": case.index, "name": case.name, "spec": case.spec.to_dict(), "digest": case.digest,
                "overrides": case.overrides, "coords": case.coords, "task": self.task,
                "task_options": dict(self.task_options), "metrics": list(self.metrics)}

    # -- serialisation (the manifest of a sweep directory)
    def to_dict(self) -> dict:
        return {"name": self.name, "base": self.base.to_dict(), "axes": [a.to_dict() for a in self.axes],
                "labels": dict(self.labels), "metrics": list(self.metrics), "plot": dict(self.plot),
                "task": self.task, "task_options": dict(self.task_options), "settings": plain(self.settings),
                "source": None if self.source is None else str(self.source)}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Sweep":
        return cls(spec_from_payload(d["base"]), [Axis.from_dict(a) for a in d["axes"]], d.get("name", "sweep"),
                   dict(d.get("labels", {})), list(d.get("metrics", [])), dict(d.get("plot", {})),
                   d.get("task", DEFAULT_TASK), dict(d.get("task_options", {})), dict(d.get("settings", {})),
                   None if d.get("source") is None else Path(d["source"]))

    def definition_digest(self) -> str:
        """Hash of what defines the cases (not of the files they read)."""
        return hashlib.sha256(canonical_json({k: v for k, v in self.to_dict().items()
                                              if k not in ("source", "settings", "plot")}).encode()).hexdigest()[:16]


_UNSAFE = re.compile(r"[^A-Za-z0-9_.+\-=]+")


def _token_text(text: str) -> str:
    t = _UNSAFE.sub("-", text).strip("-") or "x"
    if len(t) > 48:
        t = t[:39] + "-" + hashlib.sha256(text.encode()).hexdigest()[:8]
    return t


def _fmt_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return f"{v:.6g}"
    if isinstance(v, str):
        return _token_text(v)
    return hashlib.sha256(canonical_json(v).encode()).hexdigest()[:8]


# ----------------------------------------------------------------------------- sweep files
def load_sweep(source: str | Path | Mapping, *, base_dir: str | Path | None = None) -> Sweep:
    """A :class:`Sweep` from a TOML file or a dict of the same shape (module docstring).

    The axes are parsed and checked here; the cases are validated by ``Sweep.cases()``.
    """
    from nmcfx.config import read_toml

    if isinstance(source, Mapping):
        data, src = dict(source), None
        here = Path(base_dir or ".").resolve()
        default_name = "sweep"
    else:
        src = Path(source)
        data = read_toml(src)
        here = src.resolve().parent
        default_name = src.stem
    extra = set(data) - set(TOP_KEYS)
    if extra:
        raise InputError("sweep file", f"unknown table(s) {sorted(extra)}; allowed: {list(TOP_KEYS)}")
    head = data.get("sweep", {})
    if not isinstance(head, Mapping):
        raise InputError("sweep", "must be a table")
    extra = set(head) - set(SWEEP_KEYS)
    if extra:
        raise InputError("sweep", f"unknown key(s) {sorted(extra)}; allowed: {list(SWEEP_KEYS)}")
    base = _base_spec(head, data, here)
    light = head.get("light_outputs", True)
    if not isinstance(light, bool):
        raise InputError("sweep.light_outputs", f"must be true or false, got {light!r}")
    base = with_sweep_outputs(base, light)
    axes_data = data.get("axes")
    if not isinstance(axes_data, list) or not axes_data:
        raise InputError("axes", "a sweep needs at least one [[axes]] table (key + values, zip, or sample)")
    axes = [_axis_from_table(t, i) for i, t in enumerate(axes_data)]
    labels = head.get("labels", {})
    if not isinstance(labels, Mapping) or not all(isinstance(v, str) and v for v in labels.values()):
        raise InputError("sweep.labels", "must be a table of \"dotted.key\" = \"label\"")
    metrics = head.get("metrics", [])
    if not isinstance(metrics, list):
        raise InputError("sweep.metrics", "must be a list such as [\"max:d_um\", \"final:theta_center\"]")
    for m in metrics:
        check_metric(m)
    plot = head.get("plot", {})
    if not isinstance(plot, Mapping) or set(plot) - {"metric", "x", "y"} or (plot and not {"metric", "x"} <= set(plot)):
        raise InputError("sweep.plot", "must be a table with metric, x and (optionally) y")
    task = head.get("task", DEFAULT_TASK)
    if not isinstance(task, str) or ":" not in task:
        raise InputError("sweep.task", f"must be \"module:function\", got {task!r}")
    for k in BACKEND_TABLES:
        if k in data and not isinstance(data[k], Mapping):
            raise InputError(k, "must be a table")
    settings = {k: dict(data[k]) for k in BACKEND_TABLES if k in data}
    for k, allowed in (("local", ("workers",)), ("mpi", ("ranks_per_case",))):
        extra = set(settings.get(k, {})) - set(allowed)
        if extra:
            raise InputError(f"{k}.{sorted(extra)[0]}", f"unknown key; allowed: {list(allowed)}")
        for key in allowed:
            v = settings.get(k, {}).get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise InputError(f"{k}.{key}", f"must be an integer >= 1, got {v!r}")
    if "slurm" in settings:
        from .slurm import slurm_settings

        slurm_settings(settings["slurm"])
    task_options = head.get("task_options", {})
    if not isinstance(task_options, Mapping):
        raise InputError("sweep.task_options", "must be a table of keyword arguments for the task")
    name = head.get("name", default_name)
    if not isinstance(name, str) or not name.strip():
        raise InputError("sweep.name", f"must be a non-empty string, got {name!r}")
    return Sweep(base, axes, name, dict(labels), list(metrics), dict(plot), task,
                 dict(task_options), settings, src)


def with_sweep_outputs(base: RunSpec, light: bool = True) -> RunSpec:
    """The base spec with progress off and, with ``light``, no fields/figures unless it sets them."""
    out = dict(base.get("output", {}) or {})
    over = {"output.progress": False}
    if light:
        over.update({f"output.{k}": v for k, v in LIGHT_OUTPUT.items() if k not in out})
    return base.with_overrides(over)


def _base_spec(head: Mapping, data: Mapping, here: Path) -> RunSpec:
    inline = data.get("base")
    ref = head.get("base")
    if (inline is None) == (ref is None):
        raise InputError("sweep.base", "give exactly one base config: sweep.base = \"run.toml\" or a [base] table")
    try:
        if inline is not None:
            if not isinstance(inline, Mapping):
                raise InputError("base", "must be a table of run config tables")
            return load_spec(dict(inline), base_dir=here, name="base")
        if not isinstance(ref, str):
            raise InputError("sweep.base", f"must be a path or \"example:NAME\", got {ref!r}")
        if ref.startswith("example:"):
            return load_spec(ref)
        path = Path(ref) if Path(ref).is_absolute() else here / ref
        return load_spec(path)
    except InputError as exc:
        raise InputError("base config", str(exc)) from None


def _axis_from_table(t: Any, i: int) -> Axis:
    where = f"axes[{i}]"
    if not isinstance(t, Mapping):
        raise InputError(where, "must be a table")
    kinds = [k for k in ("key", "zip", "sample") if k in t]
    if len(kinds) != 1:
        raise InputError(where, "give exactly one of key (+ values/linspace/geomspace), zip = {...} or sample = ...")
    kind = kinds[0]
    allowed = {"key": {"key", "values", "linspace", "geomspace", "name"}, "zip": {"zip", "name"},
               "sample": {"sample", "n", "seed", "ranges", "name"}}[kind]
    extra = set(t) - allowed
    if extra:
        raise InputError(f"{where}.{sorted(extra)[0]}", f"unknown key; allowed for this axis: {sorted(allowed)}")
    name = t.get("name")
    if name is not None and (not isinstance(name, str) or not name):
        raise InputError(f"{where}.name", f"must be a non-empty string, got {name!r}")
    try:
        if kind == "key":
            key = t["key"]
            if not isinstance(key, str):
                raise InputError(f"{where}.key", f"must be a dotted key string, got {key!r}")
            split_key(key)
            given = [k for k in ("values", "linspace", "geomspace") if k in t]
            if len(given) != 1:
                raise InputError(where, "give exactly one of values = [...], linspace = [start, stop, n], "
                                        "geomspace = [start, stop, n]")
            how = given[0]
            spec = t[how]
            if how == "values":
                if not isinstance(spec, list):
                    raise InputError(f"{where}.values", f"must be a list, got {spec!r}")
                if not spec:
                    raise InputError(f"{where}.values", "empty: an axis needs at least one value")
                values = spec
            else:
                values = _spaced(spec, how, f"{where}.{how}")
            return grid(key, values, name or None)
        if kind == "zip":
            z = t["zip"]
            if not isinstance(z, Mapping) or not all(isinstance(v, list) for v in z.values()):
                raise InputError(f"{where}.zip", "must be a table of \"dotted.key\" = [values...]")
            for k in z:
                split_key(k)
            return zipped(z, name or None)
        ranges = t.get("ranges")
        if not isinstance(ranges, Mapping):
            raise InputError(f"{where}.ranges", "must be a table of \"dotted.key\" = [lo, hi]")
        for k in ranges:
            split_key(k)
        return sample(ranges, t.get("n", 0), seed=t.get("seed", 0), method=t["sample"], name=name or "sample")
    except InputError as exc:
        msg = str(exc)[len(exc.field) + 2:] if str(exc).startswith(exc.field + ": ") else str(exc)
        field = exc.field
        if field.startswith("axis "):  # "axis NAME[.sub]" from the builders → "axes[i][.sub]"
            aname = name or (t.get("key") if kind == "key" else next(iter(t.get(kind) or {}), "")
                             if kind == "zip" else "sample")
            rest = field[len("axis "):]
            rest = rest[len(aname):] if aname and rest.startswith(aname) else ""
            field = where + rest
        elif not field.startswith(where):
            field = f"{where}.{field}" if kind != "key" else f"{where} ({field})"
        raise InputError(field, msg) from None


def _spaced(spec, how: str, field: str) -> list[float]:
    import numpy as np

    ok = (isinstance(spec, list) and len(spec) == 3 and _is_num(spec[0]) and _is_num(spec[1])
          and isinstance(spec[2], int) and not isinstance(spec[2], bool))
    if not ok:
        raise InputError(field, f"must be [start, stop, n] with an integer n, got {spec!r}")
    a, b, n = float(spec[0]), float(spec[1]), spec[2]
    if n < 1:
        raise InputError(field, f"empty: n must be >= 1, got {n}")
    if how == "geomspace" and (a <= 0 or b <= 0):
        raise InputError(field, f"geomspace needs start, stop > 0, got {a:g}, {b:g}")
    vals = np.linspace(a, b, n) if how == "linspace" else np.geomspace(a, b, n)
    return [float(f"{v:.12g}") for v in vals]


def check_metric(m: Any) -> str:
    """A metric is a summary key (``capacity_mAh_g``) or ``fn:column`` over the time series."""
    if not isinstance(m, str) or not m:
        raise InputError("sweep.metrics", f"each metric must be a string, got {m!r}")
    if ":" in m:
        fn, col = m.split(":", 1)
        if fn not in METRIC_FUNCTIONS or not col:
            raise InputError("sweep.metrics", f"{m!r}: use fn:column with fn in {list(METRIC_FUNCTIONS)}")
    return m


def metric_column(m: str) -> str:
    return m.replace(":", "_")
