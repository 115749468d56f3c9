"""Occupancy-dependent property tables: CSV loading, validation, interpolation.

A table is a function of the Li occupancy θ given at nodes θ_0 < θ_1 < … < θ_n in
[0, 1] and interpolated with a shape-preserving piecewise cubic (PCHIP,
Fritsch–Carlson/Butland derivatives, the same as :class:`scipy.interpolate.PchipInterpolator`
computes, in NumPy: :mod:`._pchip`): between two nodes the interpolant stays
between the two node values, so no spurious overshoot or sign change can appear.

CSV format (UTF-8, comma separated)::

    # any number of comment lines; they are kept as the table's provenance
    theta,D_Li_cm2_s
    0.00,5.9e-13
    ...

* the header names two columns: ``theta`` and a value column whose name states the
  units — diffusivities ``<name>_cm2_s`` or ``<name>_m2_s``; voltages ``<name>_V``
  (``V_oc``, ``ocv`` and ``U`` are also read as volts);
* θ strictly increasing, within [0, 1]; at least two rows; finite numbers only;
* diffusivity tables: every value > 0; open-circuit voltage tables: strictly
  decreasing in θ (otherwise the thermodynamic factor of Eq. 12 changes sign).

Kinds and their interpolation:

``"diffusivity"``
    PCHIP through ln D (positive everywhere, monotone between nodes in D as well),
    constant extrapolation beyond the first/last node (derivative 0 there).
``"exchange_current"``
    like diffusivities (positive, PCHIP through ln i0); units A m⁻² (``i0_A_m2``) or
    mA cm⁻² (``i0_mA_cm2``).
``"ocv"``
    PCHIP through V with the end-node slopes set to the end-interval secants (so
    dV/dθ is strictly negative up to and including the end nodes), linear
    extrapolation with those slopes beyond the ends.

Values are converted to SI on loading (m² s⁻¹, V).
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np

from nmcfx.errors import InputError

from ._pchip import hermite, pchip, pchip_slopes
from .constants import CM2_S_TO_M2_S

KINDS = ("diffusivity", "ocv", "exchange_current")

_SI_UNITS = {"diffusivity": "m^2/s", "ocv": "V", "exchange_current": "A/m^2"}
_DEFAULT_QUANTITY = {"diffusivity": "D_Li", "ocv": "V_oc", "exchange_current": "i0"}
_POSITIVE_KINDS = ("diffusivity", "exchange_current")


def _column_units(column: str, si_units: str) -> str:
    """Units a value column's name states (for messages in the file's own units)."""
    low = column.lower()
    for suffix, units in (("_cm2_s", "cm^2/s"), ("_m2_s", "m^2/s"), ("_ma_cm2", "mA/cm^2"), ("_a_m2", "A/m^2")):
        if low.endswith(suffix):
            return units
    if "[" in column and column.endswith("]"):
        return column[column.rindex("[") + 1:-1]
    return si_units


def _column_factor(kind: str, column: str, field: str, where: str) -> float:
    """SI factor implied by the value column's name (its unit suffix)."""
    name = column.strip()
    low = name.lower()
    if kind == "exchange_current":
        if low.endswith("_a_m2") or low.endswith("[a/m2]") or low.endswith("[a/m^2]"):
            return 1.0
        if low.endswith("_ma_cm2") or low.endswith("[ma/cm2]") or low.endswith("[ma/cm^2]"):
            return 10.0
        raise InputError(field, f"{where}: value column {name!r} must state its units; "
                                "name it e.g. 'i0_A_m2' (A/m²) or 'i0_mA_cm2' (mA/cm²)")
    if kind == "diffusivity":
        if low.endswith("_cm2_s") or low.endswith("[cm2/s]") or low.endswith("[cm^2/s]"):
            return CM2_S_TO_M2_S
        if low.endswith("_m2_s") or low.endswith("[m2/s]") or low.endswith("[m^2/s]"):
            return 1.0
        raise InputError(
            field,
            f"{where}: value column {name!r} must state its units; "
            "name it e.g. 'D_Li_cm2_s' (cm²/s) or 'D_Li_m2_s' (m²/s)",
        )
    if low.endswith("_v") or low.endswith("[v]") or low in ("v", "v_oc", "voc", "ocv", "u", "ocp"):
        return 1.0
    raise InputError(
        field,
        f"{where}: value column {name!r} must be in volts; name it e.g. 'V_oc_V'",
    )


class Table:
    """θ-dependent property given at nodes, with a PCHIP interpolant.

    Parameters
    ----------
    theta, values
        Node occupancies (strictly increasing, in [0, 1]) and values **in SI units**.
    kind
        ``"diffusivity"`` or ``"ocv"`` (sets validation and interpolation, see module doc).
    quantity
        Short name used in messages and plots, e.g. ``"D_Li"``.
    provenance
        Free text: where the numbers come from.
    source
        File the table was read from (``""`` for tables built in code).
    field
        Config field reported in :class:`~nmcfx.errors.InputError` (e.g. ``material.dli_csv``).
    column, column_factor
        Name of the value column and SI factor of its unit, used by :meth:`to_csv`.
    """

    def __init__(
        self,
        theta,
        values,
        *,
        kind: str,
        quantity: str | None = None,
        provenance: str = "",
        source: str = "",
        field: str = "",
        column: str | None = None,
        column_factor: float = 1.0,
        rows: list[int] | None = None,
    ):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.kind = kind
        self.quantity = quantity or _DEFAULT_QUANTITY[kind]
        self.units = _SI_UNITS[kind]
        self.provenance = provenance
        self.source = str(source)
        self.field = field or (self.source or self.quantity)
        self.column = column or f"{self.quantity}_" + {"diffusivity": "m2_s", "ocv": "V",
                                                         "exchange_current": "A_m2"}[kind]
        self.column_factor = float(column_factor)

        th = np.asarray(theta, dtype=float).ravel()
        va = np.asarray(values, dtype=float).ravel()
        self._validate(th, va, rows)
        th.setflags(write=False)
        va.setflags(write=False)
        self.theta = th
        self.values = va
        self._build()

    # ------------------------------------------------------------------ validation
    def _where(self, i: int, rows: list[int] | None) -> str:
        loc = f"line {rows[i]}" if rows is not None else f"row {i + 1}"
        return f"{self.source} {loc}" if self.source else loc

    def _validate(self, th: np.ndarray, va: np.ndarray, rows: list[int] | None) -> None:
        f = self.field
        src = self.source or "table"
        if th.shape != va.shape:
            raise InputError(f, f"{src}: theta has {th.size} entries but values {va.size}")
        if th.size < 2:
            raise InputError(f, f"{src}: need at least 2 data rows, got {th.size}")
        for i in range(th.size):
            if not (math.isfinite(th[i]) and math.isfinite(va[i])):
                raise InputError(
                    f, f"{self._where(i, rows)}: non-finite number (theta={th[i]}, value={va[i]})"
                )
            if not (0.0 <= th[i] <= 1.0):
                raise InputError(
                    f, f"{self._where(i, rows)}: theta={th[i]:g} outside the allowed range [0, 1]"
                )
            if i > 0 and not th[i] > th[i - 1]:
                raise InputError(
                    f,
                    f"{self._where(i, rows)}: theta must be strictly increasing "
                    f"(theta={th[i]:g} after {th[i - 1]:g})",
                )
            if self.kind in _POSITIVE_KINDS and not va[i] > 0.0:
                raise InputError(
                    f,
                    f"{self._where(i, rows)}: {self.column}={va[i] / self.column_factor:g} "
                    f"({_column_units(self.column, self.units)}); values must be > 0",
                )
            if self.kind == "ocv" and i > 0 and not va[i] < va[i - 1]:
                raise InputError(
                    f,
                    f"{self._where(i, rows)}: {self.quantity} must be strictly decreasing in theta "
                    f"({va[i]:g} V at theta={th[i]:g} after {va[i - 1]:g} V at theta={th[i - 1]:g})",
                )

    # ------------------------------------------------------------------ interpolant
    def _build(self) -> None:
        th, va = self.theta, self.values
        if self.kind in _POSITIVE_KINDS:
            self._log = True
            self._spline = pchip(th, np.log(va))
        else:
            self._log = False
            d = pchip_slopes(th, va)
            d[0] = (va[1] - va[0]) / (th[1] - th[0])
            d[-1] = (va[-1] - va[-2]) / (th[-1] - th[-2])
            self._spline = hermite(th, va, d)
            self._end_slopes = (float(d[0]), float(d[-1]))
            # Guard: dV/dθ must be strictly negative everywhere on the table.
            fine = np.concatenate(
                [np.linspace(a, b, 41)[:-1] for a, b in zip(th[:-1], th[1:])] + [th[-1:]]
            )
            dv = self._spline.derivative()(fine)
            if not np.all(dv < 0.0):
                k = int(np.argmax(dv >= 0.0))
                raise InputError(
                    self.field,
                    f"{self.source or 'table'}: interpolated dV_oc/dtheta is not strictly negative "
                    f"near theta={fine[k]:.4g}; add nodes or smooth the data",
                )
        self._d1 = self._spline.derivative(1)
        self._d2 = self._spline.derivative(2)

    @property
    def theta_min(self) -> float:
        return float(self.theta[0])

    @property
    def theta_max(self) -> float:
        return float(self.theta[-1])

    def _split(self, theta):
        t = np.asarray(theta, dtype=float)
        lo, hi = self.theta_min, self.theta_max
        tc = np.clip(t, lo, hi)
        return t, tc, t < lo, t > hi

    def __call__(self, theta):
        """Interpolated value (SI units); same shape as ``theta``."""
        t, tc, below, above = self._split(theta)
        p = self._spline(tc)
        if self._log:
            return np.exp(p)
        s0, s1 = self._end_slopes
        return np.where(
            below,
            self.values[0] + s0 * (t - self.theta_min),
            np.where(above, self.values[-1] + s1 * (t - self.theta_max), p),
        )

    def derivative(self, theta):
        """d(value)/dθ (SI units); 0 beyond the ends for diffusivities."""
        t, tc, below, above = self._split(theta)
        d = self._d1(tc)
        if self._log:
            d = np.exp(self._spline(tc)) * d
            return np.where(below | above, 0.0, d)
        s0, s1 = self._end_slopes
        return np.where(below, s0, np.where(above, s1, d))

    def second_derivative(self, theta):
        """d²(value)/dθ² (piecewise continuous; jumps at nodes are allowed by PCHIP)."""
        t, tc, below, above = self._split(theta)
        d1, d2 = self._d1(tc), self._d2(tc)
        if self._log:
            d2 = np.exp(self._spline(tc)) * (d2 + d1 * d1)
        return np.where(below | above, 0.0, d2)

    def pieces(self):
        """Piecewise-cubic description for re-implementation in another backend (e.g. UFL).

        Returns ``(breaks, coeffs, log)``: on ``breaks[k] <= θ <= breaks[k+1]`` the
        interpolated quantity is ``p(θ) = sum_m coeffs[m, k] (θ - breaks[k])**(3 - m)``
        (value in SI units), or ``exp(p(θ))`` when ``log`` is true. Beyond the ends see
        the module docstring.
        """
        return self._spline.x.copy(), self._spline.c.copy(), self._log

    # ------------------------------------------------------------------ I/O
    def to_csv(self, path, column: str | None = None, column_factor: float | None = None) -> Path:
        """Write the nodes in the loader's format (provenance as ``#`` lines)."""
        column = column or self.column
        factor = self.column_factor if column_factor is None else float(column_factor)
        path = Path(path)
        lines = [f"# {ln}" if ln else "#" for ln in self.provenance.splitlines()]
        lines.append(f"theta,{column}")
        lines += [f"{t!r},{v / factor!r}" for t, v in zip(self.theta.tolist(), self.values.tolist())]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    def __repr__(self) -> str:
        src = self.source or "<in-memory>"
        return (
            f"Table({self.quantity} [{self.units}], {self.theta.size} nodes on "
            f"theta=[{self.theta_min:g}, {self.theta_max:g}], source={src})"
        )


def load_table(path, kind: str, *, field: str = "", quantity: str | None = None) -> Table:
    """Read and validate a two-column θ table from CSV; see the module docstring.

    Every problem raises :class:`~nmcfx.errors.InputError` naming ``field`` (or the
    file) and the offending line.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    path = Path(os.fspath(path)).expanduser()
    field = field or str(path)
    if not path.is_file():
        raise InputError(field, f"table file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        from nmcfx.parallel import describe_os_error

        raise InputError(field, f"{path}: {describe_os_error(exc)}") from None
    except OSError as exc:
        raise InputError(field, f"cannot read {path}: {exc}") from exc

    provenance: list[str] = []
    header: list[str] | None = None
    thetas: list[float] = []
    vals: list[float] = []
    rows: list[int] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            note = line[1:]
            provenance.append(note[1:] if note.startswith(" ") else note)
            continue
        cells = [c.strip() for c in next(csv.reader([line]))]
        where = f"{path} line {lineno}"
        if header is None:
            if len(cells) != 2 or cells[0].lower() not in ("theta", "θ"):
                raise InputError(
                    field,
                    f"{where}: header must be 'theta,<value column>' (two columns), got {line!r}",
                )
            header = cells
            continue
        if len(cells) != 2:
            raise InputError(field, f"{where}: expected 2 comma-separated numbers, got {len(cells)}")
        try:
            t, v = float(cells[0]), float(cells[1])
        except ValueError:
            raise InputError(field, f"{where}: not a number in {line!r}") from None
        thetas.append(t)
        vals.append(v)
        rows.append(lineno)

    if header is None:
        raise InputError(field, f"{path}: no header line 'theta,<value column>' found")
    factor = _column_factor(kind, header[1], field, str(path))
    if len(thetas) < 2:
        raise InputError(field, f"{path}: need at least 2 data rows, got {len(thetas)}")
    return Table(
        np.array(thetas),
        np.array(vals) * factor,
        kind=kind,
        quantity=quantity,
        provenance="\n".join(provenance),
        source=str(path),
        field=field,
        column=header[1],
        column_factor=factor,
        rows=rows,
    )
