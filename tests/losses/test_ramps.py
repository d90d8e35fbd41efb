from __future__ import annotations

import math

import pytest

from custom.losses.ramps import consistency_weight, linear_rampup, sigmoid_rampup


@pytest.mark.parametrize(
    "step, length, expected",
    [
        (0, 10, math.exp(-5.0)),  # start: exp(-5 * 1^2)
        (5, 10, math.exp(-5.0 * 0.25)),  # middle: phase 0.5
        (10, 10, 1.0),  # end
        (25, 10, 1.0),  # clipped after the end
        (-3, 10, math.exp(-5.0)),  # clipped before the start
        (7, 0, 1.0),  # no ramp
    ],
)
def test_sigmoid_rampup_values(step, length, expected):
    assert sigmoid_rampup(step, length) == pytest.approx(expected, rel=1e-12)
    assert isinstance(sigmoid_rampup(step, length), float)


@pytest.mark.parametrize(
    "step, length, expected", [(0, 4, 0.0), (1, 4, 0.25), (2, 4, 0.5), (4, 4, 1.0), (9, 4, 1.0), (3, 0, 1.0)]
)
def test_linear_rampup_values(step, length, expected):
    assert linear_rampup(step, length) == pytest.approx(expected)


def test_consistency_weight_scales_the_ramp():
    # MTCL: w_max 0.1, ramp over 40 units of iteration // 150
    assert consistency_weight(20, 0.1, rampup_length=40) == pytest.approx(0.1 * math.exp(-1.25))
    assert consistency_weight(40, 0.1, rampup_length=40) == pytest.approx(0.1)
    assert consistency_weight(0, 0.1, rampup_length=40) == pytest.approx(0.1 * math.exp(-5.0))
    assert consistency_weight(2, 0.3, rampup_length=4, kind="linear") == pytest.approx(0.15)


def test_ramps_are_monotone():
    values = [sigmoid_rampup(s, 50) for s in range(0, 60)]
    assert all(b >= a for a, b in zip(values, values[1:]))


def test_ramp_errors():
    with pytest.raises(ValueError):
        sigmoid_rampup(1, -1)
    with pytest.raises(ValueError):
        linear_rampup(1, -1)
    with pytest.raises(ValueError):
        consistency_weight(1, -0.1, rampup_length=10)
    with pytest.raises(ValueError):
        consistency_weight(1, 0.1, rampup_length=10, kind="cosine")
    with pytest.raises(TypeError):
        consistency_weight(1, 0.1)  # rampup_length is required
