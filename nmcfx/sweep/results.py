"""Gathering a sweep: one table (CSV), one xarray Dataset (NetCDF) with the axes as
dimensions, and a figure of a metric over two axes.

``results.csv`` has one row per case: ``index``, ``name``, ``status``, the swept values
(one column per key, named by its label), every number of the case's summary
(``capacity_mAh_g``, ``front_at_center_min``, ``theta_center_final``, …), the sweep's
metrics (``max_d_um``, …), ``wall_s``, ``rundir`` (the case directory, relative to the
sweep directory) and ``reason`` for failed cases. ``results.nc`` holds the same numbers
as arrays over the axes (NaN where a case is not done); open it with
``xarray.open_dataset``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nmcfx.errors import InputError

from .store import CASES, SweepDir, atomic_write_text

TABLE = "results.csv"
DATASET = "results.nc"
FIXED = ("index", "name", "status")
TRAILING = ("wall_s", "rundir", "reason")


@dataclass
class SweepResults:
    """The gathered table of a sweep directory (``rows``: one dict per case, in case order)."""

    root: Path
    manifest: dict
    rows: list[dict]
    columns: list[str]
    numeric: list[str]

    @property
    def counts(self) -> dict:
        out = {"done": 0, "failed": 0, "stale": 0, "pending": 0}
        for r in self.rows:
            out[r["status"]] = out.get(r["status"], 0) + 1
        return out

    def column(self, name: str) -> np.ndarray:
        return np.array([r.get(name, math.nan) for r in self.rows])

    def dataframe(self):
        import pandas as pd

        return pd.DataFrame(self.rows, columns=self.columns)

    def dataset(self):
        """An ``xarray.Dataset`` with one dimension per axis (see module docstring)."""
        import xarray as xr

        sweep = self.manifest["sweep"]
        labels = self.manifest.get("labels", {})
        dims = [a["name"] for a in sweep["axes"]]
        shape = [len(a["points"]) for a in sweep["axes"]]
        coords = {}
        for a in sweep["axes"]:
            coords[a["name"]] = np.arange(len(a["points"]))
            if a.get("kind") == "cases":
                coords[f"{a['name']}_name"] = (a["name"], np.array(a["case_names"], dtype=object))
            for k in a["keys"]:
                vals = [p.get(k) for p in a["points"]]
                lab = labels.get(k, k)
                if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
                    arr = np.array(vals, dtype=float)
                else:
                    arr = np.array([json.dumps(v) if not isinstance(v, str) else v for v in vals], dtype=object)
                if lab == a["name"] and len(a["keys"]) == 1 and arr.dtype != object and len(set(vals)) == len(vals):
                    coords[a["name"]] = arr
                else:
                    coords[lab if lab not in dims else f"{lab}_value"] = (a["name"], arr)
        data = {}
        for col in self.numeric + ["status", "name", "rundir", "reason"]:
            is_num = col in self.numeric
            arr = np.full(shape, np.nan) if is_num else np.full(shape, "", dtype=object)
            for r in self.rows:
                pos = tuple(r["_coords"][d] for d in dims)
                v = r.get(col)
                if is_num:
                    arr[pos] = v if isinstance(v, (int, float)) and r["status"] == "done" else np.nan
                else:
                    arr[pos] = "" if v is None else str(v)
            data[col] = (dims, arr)
        ds = xr.Dataset(data, coords=coords)
        ds.attrs.update({"sweep": self.manifest.get("name", ""), "nmcfx_version": self.manifest.get("nmcfx_version", ""),
                         "git_revision": self.manifest.get("git_revision", ""),
                         "base_config": json.dumps(sweep["base"]["config"]),
                         "description": "nmcfx sweep results; NaN where a case is not done"})
        return ds

    def write(self) -> list[Path]:
        """``results.csv`` and ``results.nc`` in the sweep directory (atomically)."""
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(self.columns)
        for r in self.rows:
            w.writerow([_fmt(r.get(c)) for c in self.columns])
        atomic_write_text(self.root / TABLE, buf.getvalue())
        out = [self.root / TABLE]
        ds = self.dataset()
        tmp = self.root / f".{DATASET}.tmp"
        ds.to_netcdf(tmp, engine="scipy")
        tmp.replace(self.root / DATASET)
        out.append(self.root / DATASET)
        return out


def _fmt(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else repr(v)
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return v


def gather(root: str | Path) -> SweepResults:
    """Read every case's marker (or error) in a sweep directory into one table."""
    from nmcfx.spec import spec_from_payload

    from .definition import DEFAULT_TASK, case_digest

    sd = SweepDir(root)
    manifest = sd.read_manifest()
    sweep = manifest["sweep"]
    base = spec_from_payload(sweep["base"], validate=False)
    labels = manifest.get("labels", {})
    keys = [k for a in sweep["axes"] for k in a["keys"]]
    rows, numeric = [], []
    for c in manifest["cases"]:
        digest = case_digest(base.with_overrides(c["overrides"], validate=False).digest,
                             sweep.get("task", DEFAULT_TASK), sweep.get("task_options"))
        st = sd.state(c["name"], digest, c["index"])
        row = {"index": c["index"], "name": c["name"], "status": st.state}
        for k in keys:
            row[labels.get(k, k)] = c["overrides"].get(k)
        rec = st.record if st.state in ("done", "failed") else None
        if rec:
            for k, v in (rec.get("numbers") or {}).items():
                if k not in numeric:
                    numeric.append(k)
                row[k] = v if isinstance(v, (int, float)) else math.nan
        row["wall_s"] = rec.get("wall_s") if rec else None
        row["rundir"] = str(Path(CASES) / c["name"])
        row["reason"] = rec.get("reason") if (rec and st.state == "failed") else None
        row["_coords"] = c["coords"]
        rows.append(row)
    coord_cols = [labels.get(k, k) for k in keys]
    numeric = [n for n in numeric if n not in coord_cols and n not in FIXED + TRAILING]
    columns = list(FIXED) + coord_cols + numeric + list(TRAILING)
    return SweepResults(Path(root), manifest, rows, columns, numeric + ["wall_s"])


# ----------------------------------------------------------------------------- the figure
def plot_metric(results: SweepResults, metric: str, x: str, y: str | None = None,
                path: str | Path | None = None) -> Path:
    """A figure of ``metric`` over the swept keys labelled ``x`` and ``y``.

    Two grid axes: a heat map (one cell per case, value written in it), one panel per
    value of any remaining axis (at most 12). Keys on one sampled/zipped axis: a scatter
    plot coloured by the metric. No ``y``: the metric against ``x``, one line per
    combination of the other axes (at most 12).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    ds = results.dataset()
    if metric not in ds:
        raise InputError("--metric", f"unknown metric {metric!r}; available: {sorted(results.numeric)}")
    dim_of = {}
    for name in (x,) if y is None else (x, y):
        if name in ds.dims:
            dim_of[name] = name
        elif name in ds.coords and len(ds[name].dims) == 1:
            dim_of[name] = ds[name].dims[0]
        else:
            swept = sorted(set(results.manifest.get("labels", {}).values()))
            raise InputError("--x/--y", f"{name!r} is not a swept key; swept: {swept}")
    path = Path(path) if path else results.root / (f"{metric}_{y}_vs_{x}.png" if y else f"{metric}_vs_{x}.png")
    da = ds[metric]
    if y is None:  # the metric against one swept key
        fig, ax = plt.subplots(figsize=(5.5, 4.2))
        rest = [d for d in da.dims if d != dim_of[x]]
        combos = [dict()]
        for d in rest:
            combos = [dict(c, **{d: i}) for c in combos for i in range(ds.sizes[d])]
        xv = ds[x].values
        order = np.argsort(xv) if xv.dtype != object else np.arange(len(xv))
        for combo in combos[:12]:
            vals = da.isel(combo).values
            ax.plot(xv[order], vals[order], "o-", ms=4,
                    label=", ".join(f"{d} = {_coord_text(ds, d, i)}" for d, i in combo.items()) or None)
        if rest:
            ax.legend(fontsize=7)
        ax.set_xlabel(x)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    elif dim_of[x] == dim_of[y]:  # scattered points along one dimension
        fig, ax = plt.subplots(figsize=(5.5, 4.5))
        other = [d for d in da.dims if d != dim_of[x]]
        flat = da.mean(dim=other) if other else da
        sc = ax.scatter(ds[x].values, ds[y].values, c=flat.values, cmap="viridis", s=40, edgecolors="k", lw=0.3)
        fig.colorbar(sc, ax=ax, label=metric)
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        if other:
            ax.set_title(f"mean over {', '.join(other)}", fontsize=9)
    else:
        rest = [d for d in da.dims if d not in (dim_of[x], dim_of[y])]
        combos = [dict()]
        for d in rest:
            combos = [dict(c, **{d: i}) for c in combos for i in range(ds.sizes[d])]
        combos = combos[:12]
        ncol = min(len(combos), 4)
        nrow = math.ceil(len(combos) / ncol)
        fig, axs = plt.subplots(nrow, ncol, figsize=(3.6 * ncol + 1.2, 3.2 * nrow), squeeze=False)
        vmin, vmax = float(np.nanmin(da.values)) if np.isfinite(da.values).any() else 0, \
            float(np.nanmax(da.values)) if np.isfinite(da.values).any() else 1
        xv = ds[x].values if x in ds.coords else np.arange(ds.sizes[dim_of[x]])
        yv = ds[y].values if y in ds.coords else np.arange(ds.sizes[dim_of[y]])
        im = None
        for ax, combo in zip(axs.flat, combos):
            sub = da.isel(combo).transpose(dim_of[y], dim_of[x]).values
            im = ax.imshow(sub, origin="lower", aspect="auto", cmap="viridis", vmin=vmin, vmax=vmax)
            ax.set_xticks(range(len(xv)), [f"{v:g}" if isinstance(v, (float, np.floating)) else str(v) for v in xv],
                          rotation=45 if len(xv) > 6 else 0, fontsize=8)
            ax.set_yticks(range(len(yv)), [f"{v:g}" if isinstance(v, (float, np.floating)) else str(v) for v in yv],
                          fontsize=8)
            ax.set_xlabel(x)
            ax.set_ylabel(y)
            if sub.size <= 64:
                for (j, i), v in np.ndenumerate(sub):
                    if np.isfinite(v):
                        ax.text(i, j, f"{v:.3g}", ha="center", va="center", fontsize=7,
                                color="w" if v < (vmin + vmax) / 2 else "k")
            if combo:
                ax.set_title(", ".join(f"{d} = {_coord_text(ds, d, i)}" for d, i in combo.items()), fontsize=9)
        for ax in list(axs.flat)[len(combos):]:
            ax.axis("off")
        fig.colorbar(im, ax=axs.ravel().tolist(), label=metric, shrink=0.9)
    fig.suptitle(f"{results.manifest.get('name', 'sweep')}: {metric}", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path


def _coord_text(ds, dim, i) -> str:
    for name, c in ds.coords.items():
        if c.dims == (dim,) and name != dim:
            v = c.values[i]
            return f"{v:g}" if isinstance(v, (float, np.floating)) else str(v)
    v = ds[dim].values[i]
    return f"{v:g}" if isinstance(v, (float, np.floating)) else str(v)
