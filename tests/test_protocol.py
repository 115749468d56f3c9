"""Protocol parsing and validation (pure Python, no mesh)."""

from __future__ import annotations

import pytest

from nmcfx.errors import InputError
from nmcfx.solver.protocol import StopCondition, protocol_from_dict


def test_parse_charge_rest():
    p = protocol_from_dict(
        {"steps": [{"type": "charge", "c_rate": 1 / 3, "duration_min": 20}, {"type": "rest", "duration_min": 40}]},
        0.95,
    )
    assert p.initial_theta == 0.95
    assert [s.kind for s in p.steps] == ["charge", "rest"]
    assert p.nominal_duration_s == pytest.approx(3600.0)
    assert p.steps[0].sign == 1 and p.steps[1].sign == 0


def test_lithiation_defaults_to_theta_0_2():
    p = protocol_from_dict({"steps": [{"type": "discharge", "current_mA_g": 50, "until": "theta_mean >= 0.9"}]}, 0.95)
    assert p.initial_theta == 0.2
    assert p.nominal_duration_s is None
    assert p.steps[0].until[0] == StopCondition("theta_mean", ">=", 0.9)


def test_stop_condition_distance_sign():
    c = StopCondition("theta_surface_min", "<=", 0.2)
    assert c.distance(0.5) > 0 and c.distance(0.19) < 0
    c = StopCondition("theta_surface_max", ">=", 0.95)
    assert c.distance(0.5) > 0 and c.distance(0.96) < 0


@pytest.mark.parametrize(
    "step, field",
    [
        ({"type": "charge", "duration_min": 10}, "protocol.steps[0]"),  # no current
        ({"type": "charge", "c_rate": -1, "duration_min": 10}, "protocol.steps[0].c_rate"),
        ({"type": "charge", "c_rate": 1, "current_mA_g": 5, "duration_min": 10}, "protocol.steps[0]"),
        ({"type": "charge", "c_rate": 1}, "protocol.steps[0]"),  # no terminating condition
        ({"type": "rest", "c_rate": 1, "duration_min": 1}, "protocol.steps[0]"),
        ({"type": "pause", "duration_min": 1}, "protocol.steps[0].type"),
        ({"type": "charge", "c_rate": 1, "until": ["theta_mean < 1.5"]}, "protocol.steps[0].until[0]"),
        ({"type": "charge", "c_rate": 1, "until": ["voltage < 4.3"]}, "protocol.steps[0].until[0]"),
        ({"type": "charge", "c_rate": 1, "until": ["theta_mean ~ 0.3"]}, "protocol.steps[0].until[0]"),
        ({"type": "charge", "c_rate": 1, "duration_min": 0}, "protocol.steps[0].duration_min"),
        ({"type": "charge", "c_rate": 1, "duration_min": 5, "colour": "red"}, "protocol.steps[0]"),
    ],
)
def test_bad_steps_name_the_field(step, field):
    with pytest.raises(InputError) as exc:
        protocol_from_dict({"steps": [step]}, 0.95)
    assert exc.value.field == field
    assert str(exc.value).startswith(field)


def test_initial_theta_range():
    with pytest.raises(InputError, match="protocol.initial_theta"):
        protocol_from_dict({"initial_theta": 1.2, "steps": [{"type": "rest", "duration_min": 1}]}, 0.95)
    with pytest.raises(InputError, match="protocol.steps"):
        protocol_from_dict({"steps": []}, 0.95)


def test_gitt_expands_into_pulse_rest_pairs():
    p = protocol_from_dict({"steps": [
        {"type": "gitt", "direction": "charge", "c_rate": 0.05, "pulse_min": 15, "rest_min": 240, "pulses": 3,
         "until": ["voltage_V >= 4.3"]},
        {"type": "rest", "duration_min": 1},
    ]}, 0.95)
    kinds = [s.kind for s in p.steps]
    assert kinds == ["charge", "rest"] * 3 + ["rest"]
    assert {s.group for s in p.steps[:6]} == {0} and p.steps[6].group is None
    assert p.steps[0].duration_s == 900.0 and p.steps[1].duration_s == 14400.0
    assert p.steps[0].until[0] == StopCondition("voltage_V", ">=", 4.3)
    with pytest.raises(InputError, match="protocol.steps\\[0\\].pulses"):
        protocol_from_dict({"steps": [{"type": "gitt", "c_rate": 1, "pulse_min": 1, "rest_min": 1,
                                       "pulses": 0}]}, 0.95)


def test_hold_step_needs_a_voltage():
    with pytest.raises(InputError, match="voltage_V"):
        protocol_from_dict({"steps": [{"type": "hold", "duration_min": 5}]}, 0.95)
    with pytest.raises(InputError, match="protocol.steps\\[0\\].voltage_V"):
        protocol_from_dict({"steps": [{"type": "hold", "voltage_V": 12, "duration_min": 5}]}, 0.95)
