"""Exponential-moving-average (mean-teacher) weights (methods.md section 1; Tarvainen & Valpola, 2017).

The teacher ``f'`` follows the student ``f`` by ``theta' <- alpha theta' + (1 - alpha) theta`` with the warm-up
``alpha_t = min(1 - 1 / (t + 1), decay)`` of the MTCL/ALC reference code (decay 0.99): at step 0 the teacher becomes an
exact copy of the student, and the averaging horizon grows until it saturates at ``1 / (1 - decay)`` steps.

Buffers (BatchNorm running mean/var, ...): the reference averages parameters only, and its teacher's running
statistics come from the teacher's own train-mode forward passes. Here the teacher is mostly run with BatchNorm in
eval mode (ALC samples with dropout only), so its statistics would never be refreshed. ``ema_update`` therefore
derives buffers from the student too, by default with the same EMA as the parameters (``buffers="ema"``: running
statistics that match the averaged weights, as in timm's ``ModelEmaV2``); ``"copy"`` takes the student's buffers
as they are and ``"none"`` leaves them alone (reference behaviour). Integer buffers (``num_batches_tracked``)
cannot be averaged and are always copied unless ``buffers="none"``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["ema_alpha", "ema_update", "make_teacher"]


def ema_alpha(step: int, decay: float = 0.99) -> float:
    """EMA coefficient with warm-up: ``min(1 - 1 / (step + 1), decay)``.

    Args:
        step: number of optimiser steps taken so far (0-based).
        decay: the asymptotic decay (0.99 in MTCL/ALC).

    Raises:
        ValueError: for a negative ``step`` or a ``decay`` outside ``[0, 1]``.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}.")
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must be in [0, 1], got {decay}.")
    return float(min(1.0 - 1.0 / (step + 1.0), decay))


def _ema_inplace(targets: list[torch.Tensor], sources: list[torch.Tensor], alpha: float) -> None:
    """``t <- alpha t + (1 - alpha) s`` for every pair (the update of the MTCL reference), as fused multi-tensor
    kernels; ``_foreach`` ops group mixed devices/dtypes themselves."""
    if targets:
        torch._foreach_mul_(targets, alpha)
        torch._foreach_add_(targets, sources, alpha=1.0 - alpha)


@torch.no_grad()
def ema_update(
    teacher: nn.Module, student: nn.Module, step: int, decay: float = 0.99, buffers: str = "ema"
) -> float:
    """Update ``teacher`` in place towards ``student`` (parameters EMA; buffers as chosen by ``buffers``).

    Call it once after each optimiser step with the 0-based index of that step (the reference passes the iteration
    counter before incrementing it). No host-device synchronisation happens: ``alpha`` is a Python float.

    Args:
        teacher: the EMA model (same architecture as ``student``; its parameters are overwritten in place).
        student: the trained model.
        step: 0-based step index used for the warm-up of ``alpha``.
        decay: asymptotic decay.
        buffers: ``"ema"`` (floating buffers averaged like parameters, integer buffers copied), ``"copy"`` (all
            buffers copied from the student) or ``"none"`` (buffers untouched).

    Returns:
        The ``alpha`` that was applied.

    Raises:
        ValueError: for an unknown ``buffers`` mode or models whose parameter/buffer lists do not match.
    """
    if buffers not in ("ema", "copy", "none"):
        raise ValueError(f"buffers must be 'ema', 'copy' or 'none', got {buffers!r}.")
    alpha = ema_alpha(step, decay)
    teacher_params = list(teacher.parameters())
    student_params = list(student.parameters())
    if len(teacher_params) != len(student_params):
        raise ValueError(
            "teacher and student have different numbers of parameters "
            f"({len(teacher_params)} vs {len(student_params)})."
        )
    _ema_inplace([p.data for p in teacher_params], [p.data for p in student_params], alpha)

    if buffers == "none":
        return alpha
    teacher_buffers = list(teacher.buffers())
    student_buffers = list(student.buffers())
    if len(teacher_buffers) != len(student_buffers):
        raise ValueError(
            f"teacher and student have different numbers of buffers ({len(teacher_buffers)} vs {len(student_buffers)})"
        )
    averaged_t, averaged_s, copied_t, copied_s = [], [], [], []
    for t, s in zip(teacher_buffers, student_buffers):
        if buffers == "ema" and t.is_floating_point():
            averaged_t.append(t)
            averaged_s.append(s)
        else:
            copied_t.append(t)
            copied_s.append(s)
    _ema_inplace(averaged_t, averaged_s, alpha)
    if copied_t:
        torch._foreach_copy_(copied_t, copied_s)
    return alpha


def make_teacher(student: nn.Module) -> nn.Module:
    """A deep copy of ``student`` whose parameters do not require gradients (the mean teacher before step 0).

    The copy keeps the student's device, dtype and train/eval modes.
    """
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher
