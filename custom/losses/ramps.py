"""Ramp-up schedules for the unsupervised loss weight of mean-teacher training (methods.md section 1, step 7).

All functions take and return plain Python numbers so that they can be evaluated once per iteration on the host
without touching the device.
"""

from __future__ import annotations

import math

__all__ = ["sigmoid_rampup", "linear_rampup", "consistency_weight"]


def _check_length(rampup_length: float) -> None:
    if rampup_length < 0:
        raise ValueError(f"rampup_length must be >= 0, got {rampup_length}.")


def sigmoid_rampup(step: float, rampup_length: float) -> float:
    """Gaussian-shaped ramp ``exp(-5 (1 - clip(step / rampup_length, 0, 1))^2)`` (Laine & Aila, 2017).

    Args:
        step: current step (iteration or epoch, in the same unit as ``rampup_length``).
        rampup_length: number of steps until the ramp reaches 1; 0 means "no ramp" (always 1).

    Returns:
        A float in ``[exp(-5), 1]``: ``exp(-5) ~ 0.0067`` at ``step <= 0`` and 1.0 from ``step >= rampup_length`` on.

    Raises:
        ValueError: if ``rampup_length`` is negative.
    """
    _check_length(rampup_length)
    if rampup_length == 0:
        return 1.0
    phase = 1.0 - min(max(float(step) / float(rampup_length), 0.0), 1.0)
    return float(math.exp(-5.0 * phase * phase))


def linear_rampup(step: float, rampup_length: float) -> float:
    """Linear ramp ``clip(step / rampup_length, 0, 1)``; 1.0 when ``rampup_length`` is 0.

    Raises:
        ValueError: if ``rampup_length`` is negative.
    """
    _check_length(rampup_length)
    if rampup_length == 0:
        return 1.0
    return float(min(max(float(step) / float(rampup_length), 0.0), 1.0))


def consistency_weight(step: float, w_max: float = 0.1, *, rampup_length: float, kind: str = "sigmoid") -> float:
    """Unsupervised loss weight ``w(t) = w_max * ramp(t)`` (methods.md section 1, step 7; MTCL: ``w_max = 0.1``).

    The MTCL reference evaluates the ramp on ``iteration // 150`` with a length of 40, i.e. over the first 75% of
    its 8000 iterations; pass ``step`` and ``rampup_length`` in whatever unit the trainer chooses.

    Args:
        step: current step.
        w_max: weight reached at the end of the ramp.
        rampup_length: ramp length in the unit of ``step`` (keyword-only; 0 = constant ``w_max``).
        kind: ``"sigmoid"`` (the Gaussian-shaped ramp of the reference) or ``"linear"``.

    Raises:
        ValueError: for a negative ``w_max`` or ``rampup_length``, or an unknown ``kind``.
    """
    if w_max < 0:
        raise ValueError(f"w_max must be >= 0, got {w_max}.")
    if kind == "sigmoid":
        return float(w_max) * sigmoid_rampup(step, rampup_length)
    if kind == "linear":
        return float(w_max) * linear_rampup(step, rampup_length)
    raise ValueError(f"kind must be 'sigmoid' or 'linear', got {kind!r}.")
