"""Supervised and consistency losses of the mean-teacher methods (methods.md section 1, steps 1, 5 and 6).

``ce_dice_loss`` is ``0.5 * (CE + Dice)`` (Eq. 2 of ALC; ``supervised_loss`` of MTCL), with a per-sample form
(``reduction="none"`` -> ``(B,)``) so that the ALC trainer can weight the selected and unselected LQ samples.

Dice definition, chosen to match the MTCL reference ``losses.DiceLoss(n_classes)``: softmax probabilities against
one-hot targets, squared denominators ``sum(p^2) + sum(y^2)``, smoothing 1e-5 in numerator and denominator, and the
mean over **all** classes, background included (the reference sums the per-class Dice of channels 0 and 1 and
divides by 2; it is not a foreground-only Dice). It is computed with MONAI's ``DiceLoss`` (``softmax=True``,
``squared_pred=True``, ``include_background=True``; ``to_onehot_y=True`` for index targets). One deliberate
difference: the reference pools the Dice over the whole batch ("batch Dice"), which has no per-sample form; here it
is computed per sample and averaged (``batch_dice=False``, the default), so that the mean of the per-sample losses
equals the mean-reduced loss. ``batch_dice=True`` reproduces the reference exactly (mean/sum reductions only).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn

__all__ = ["ce_dice_loss", "consistency_mse", "CEDiceLoss"]

_REDUCTIONS = ("mean", "sum", "none")


def _check_logits_target(logits: torch.Tensor, target: torch.Tensor) -> bool:
    """Validate shapes; return True when ``target`` holds class indices (B, 1, *S), False for soft targets."""
    if logits.ndim < 3:
        raise ValueError(f"logits must be (B, C, *S) with at least one spatial dim, got shape {tuple(logits.shape)}.")
    num_classes = logits.shape[1]
    if num_classes < 2:
        raise ValueError(f"logits need C >= 2 channels (softmax over classes), got C={num_classes}.")
    if target.ndim != logits.ndim or target.shape[0] != logits.shape[0] or target.shape[2:] != logits.shape[2:]:
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match logits shape {tuple(logits.shape)} "
            "(expected (B, 1, *S) class indices or (B, C, *S) soft targets)."
        )
    if target.shape[1] == 1:
        return True
    if target.shape[1] == num_classes:
        return False
    raise ValueError(f"target must have 1 or C={num_classes} channels, got {target.shape[1]}.")


def ce_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    reduction: str = "mean",
    include_background: bool = True,
    batch_dice: bool = False,
) -> torch.Tensor:
    """``0.5 * (cross-entropy + soft Dice)`` between logits and hard or soft targets (Eq. 2 of ALC).

    Args:
        logits: network output before softmax, shape ``(B, C, *S)``, ``C >= 2``.
        target: class indices ``(B, 1, *S)`` (any integer or integral float dtype) or soft targets / probabilities
            ``(B, C, *S)`` that sum to 1 over ``C`` (e.g. the smoothed corrections of MTCL).
        reduction: ``"mean"`` (scalar), ``"sum"`` (scalar) or ``"none"`` (per-sample losses, shape ``(B,)``).
            CE is the voxel mean within each sample and Dice the class mean within each sample, so
            ``ce_dice_loss(..., "none").mean() == ce_dice_loss(..., "mean")`` when ``batch_dice`` is False.
        include_background: keep channel 0 in the Dice (True, as the MTCL reference; CE always uses all classes).
        batch_dice: pool Dice statistics over the batch, as the MTCL reference (no per-sample form; ``"sum"``
            then returns ``B`` times the mean).

    Returns:
        A scalar, or a ``(B,)`` tensor when ``reduction="none"``; same dtype/device as ``logits``.

    Raises:
        ValueError: for bad shapes, an unknown ``reduction``, or ``batch_dice=True`` with ``reduction="none"``.
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}.")
    if batch_dice and reduction == "none":
        raise ValueError("batch_dice=True pools the batch and has no per-sample form; use reduction 'mean' or 'sum'.")
    is_index = _check_logits_target(logits, target)
    batch = logits.shape[0]

    if is_index:
        index = target[:, 0].long()
        ce_map = F.cross_entropy(logits, index, reduction="none")  # (B, *S)
    else:
        ce_map = F.cross_entropy(logits, target.to(logits.dtype), reduction="none")
    ce_per_sample = ce_map.reshape(batch, -1).mean(dim=1)  # (B,)

    dice = DiceLoss(
        include_background=include_background,
        to_onehot_y=is_index,
        softmax=True,
        squared_pred=True,
        reduction="none",
        batch=batch_dice,
    )
    dice_map = dice(logits, target if is_index else target.to(logits.dtype))  # (B or 1, C', 1, ...)
    if batch_dice:
        dice_value = dice_map.mean()
        ce_value = ce_per_sample.mean()
        total = 0.5 * (ce_value + dice_value)
        return total if reduction == "mean" else total * batch
    dice_per_sample = dice_map.reshape(batch, -1).mean(dim=1)  # (B,)
    per_sample = 0.5 * (ce_per_sample + dice_per_sample)
    if reduction == "none":
        return per_sample
    return per_sample.mean() if reduction == "mean" else per_sample.sum()


def consistency_mse(student_logits: torch.Tensor, teacher_probs: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Mean-teacher consistency ``mean((softmax(student_logits) - teacher_probs)^2)`` (methods.md section 1, step 6).

    Args:
        student_logits: student output before softmax, ``(B, C, *S)``.
        teacher_probs: teacher **probabilities** (already softmaxed), ``(B, C, *S)``; detached here so that no
            gradient reaches the teacher.
        reduction: ``"mean"`` over all elements (the MTCL reference), ``"sum"``, or ``"none"`` -> per-sample means
            ``(B,)``.

    Raises:
        ValueError: for mismatched shapes or an unknown ``reduction``.
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}.")
    if student_logits.shape != teacher_probs.shape or student_logits.ndim < 2:
        raise ValueError(
            f"student_logits {tuple(student_logits.shape)} and teacher_probs {tuple(teacher_probs.shape)} "
            "must have the same (B, C, *S) shape."
        )
    squared = (torch.softmax(student_logits, dim=1) - teacher_probs.detach().to(student_logits.dtype)) ** 2
    if reduction == "mean":
        return squared.mean()
    if reduction == "sum":
        return squared.sum()
    return squared.reshape(squared.shape[0], -1).mean(dim=1)


class CEDiceLoss(nn.Module):
    """Module wrapper of :func:`ce_dice_loss` (``0.5 * (CE + Dice)``), for configs and MONAI engines."""

    def __init__(self, reduction: str = "mean", include_background: bool = True, batch_dice: bool = False) -> None:
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}.")
        if batch_dice and reduction == "none":
            raise ValueError("batch_dice=True has no per-sample form; use reduction 'mean' or 'sum'.")
        self.reduction = reduction
        self.include_background = include_background
        self.batch_dice = batch_dice

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``logits`` (B, C, *S); ``target`` (B, 1, *S) indices or (B, C, *S) soft targets."""
        return ce_dice_loss(logits, target, self.reduction, self.include_background, self.batch_dice)
