"""Checks that need two tables of a config at once (each room validates its own table alone).

:func:`check_tables_together` runs at the end of :func:`nmcfx.solver.run.prepare`, before
anything is written; each problem is one :class:`~nmcfx.errors.InputError` naming the field:

* a stop condition on the voltage already met at the start: the initial state is uniform,
  at V_oc(θ₀) (both surface models), so the first step (and any rest before it) would end
  at once — ``protocol.steps[i].until[j]``;
* with the flux model, a voltage threshold outside the range of V_oc (the voltage is the
  surface-averaged V_oc there, so it can never be reached) — ``protocol.steps[i].until[j]``;
* a snapshot after the latest possible end of the protocol (the sum of the step
  durations, when every step has one) — ``output.snapshot_times_min``;
* a line cut that misses the particle — ``output.line_profile_um``.

    check_tables_together(protocol, material, surface, output, particle)   # collective (probes the mesh)
"""

from __future__ import annotations

import numpy as np

from nmcfx.errors import InputError


def check_tables_together(protocol, material, surface, output, particle):
    check_voltage_not_met_at_start(protocol, material)
    if surface.model == "flux":
        check_voltage_within_ocv(protocol, material)
    check_snapshots_within_protocol(output, protocol)
    check_line_profile_crosses(output, particle)


def check_voltage_not_met_at_start(protocol, material):
    v0 = float(material.ocv(np.array([protocol.initial_theta]))[0])
    for k, step in enumerate(protocol.steps):
        for j, cond in enumerate(step.until):
            if cond.quantity == "voltage_V" and cond.distance(v0) <= 0:
                raise InputError(
                    f"{_config_field(protocol, k)}.until[{j}]",
                    f"'{cond}' is already true at the start (V_oc(θ₀ = {protocol.initial_theta:g}) = {v0:.4g} V), "
                    "so the step would end at once; check the threshold or protocol.initial_theta")
        if step.kind != "rest":
            return


def check_voltage_within_ocv(protocol, material):
    lo, hi = sorted(float(v) for v in material.ocv(np.array([1.0 - 1e-6, 1e-6])))
    for k, step in enumerate(protocol.steps):
        for j, cond in enumerate(step.until):
            if cond.quantity != "voltage_V":
                continue
            beyond = cond.value > hi if cond.op in (">", ">=") else cond.value < lo
            if beyond:
                raise InputError(
                    f"{_config_field(protocol, k)}.until[{j}]",
                    f"'{cond}' can never be met: with surface.model = 'flux' the voltage is the surface-averaged "
                    f"V_oc, which stays within [{lo:.3f}, {hi:.3f}] V for this material")


def check_snapshots_within_protocol(output, protocol):
    end_s = protocol.nominal_duration_s
    times = output.snapshot_times_min or ()
    if end_s is None or not times:
        return
    late = [t for t in times if 60.0 * t > end_s * (1 + 1e-9)]
    if late:
        raise InputError("output.snapshot_times_min",
                         f"{late[0]:g} min is after the end of the protocol ({end_s / 60:g} min at the latest); "
                         "it would never be taken")


def check_line_profile_crosses(output, particle):
    if output.line_profile_um is None:
        return
    from .transport import PointProbe

    a, b = (np.array(q + (0.0,) * (3 - len(q))) for q in output.line_profile_um)
    s = np.linspace(0.0, 1.0, output.profile_points)
    probe = PointProbe(particle.mesh, a[None, :] + s[:, None] * (b - a)[None, :], allow_outside=True)
    if probe.inside.sum() < 2:
        c = ", ".join(f"{x:.3g}" for x in particle.centroid)
        a_um, b_um = (list(q) for q in output.line_profile_um)
        raise InputError("output.line_profile_um",
                         f"the line cut from {a_um} to {b_um} µm does not cross the particle (centroid at ({c}) µm)")


def _config_field(protocol, k: int) -> str:
    """The config entry of expanded step ``k`` (a GITT entry expands into several steps)."""
    group = protocol.steps[k].group
    if group is not None:
        return f"protocol.steps[{group}]"
    # plain steps: count config entries (one per step, one per GITT group)
    entry, seen = -1, set()
    for i, st in enumerate(protocol.steps[: k + 1]):
        if st.group is None:
            entry += 1
        elif st.group not in seen:
            seen.add(st.group)
            entry += 1
    return f"protocol.steps[{entry}]"
