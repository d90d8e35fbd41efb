"""The joint (JoCoR-style) loss of SP-guided training, Eq. 4 of SP-guided (methods.md §2.4).

Per voxel, for two networks with logits ``z1``, ``z2`` and noisy label ``y``::

    l = (1 - lam) * (CE(z1, y) + CE(z2, y)) + lam * (KL(p1 || p2) + KL(p2 || p1)),   p_i = softmax(z_i)

Neither side is detached: the symmetric KL pulls both networks towards each other (JoCoR, Wei et al. 2020), and
one optimiser step updates both. The training loss is the mean of ``l`` over the selected voxels with
class-balanced weights (:func:`class_balanced_mean`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "symmetric_kl_from_logits",
    "joint_loss_per_voxel",
    "class_balanced_mean",
    "JointLoss",
]


def _check_lambda(lam: float) -> None:
    if not 0.0 <= float(lam) <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}.")


def _voxel_labels(labels: torch.Tensor, spatial_ndim_plus_batch: int) -> torch.Tensor:
    """``(B, 1, *S)`` or ``(B, *S)`` labels (any numeric dtype) -> ``(B, *S)`` int64."""
    if labels.dim() == spatial_ndim_plus_batch + 1 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.dim() != spatial_ndim_plus_batch:
        raise ValueError(f"labels must be (B, 1, *S) or (B, *S), got shape {tuple(labels.shape)}.")
    return labels.long()


def symmetric_kl_from_logits(logits1: torch.Tensor, logits2: torch.Tensor) -> torch.Tensor:
    """``KL(p1 || p2) + KL(p2 || p1) = sum_c (p1 - p2) (log p1 - log p2)`` per voxel, from logits.

    Args:
        logits1: logits ``(B, C, *S)``.
        logits2: logits of the same shape.

    Returns:
        ``(B, *S)``, differentiable with respect to both inputs.
    """
    if logits1.shape != logits2.shape:
        raise ValueError(f"logits shapes differ: {tuple(logits1.shape)} vs {tuple(logits2.shape)}.")
    log_p1 = F.log_softmax(logits1, dim=1)
    log_p2 = F.log_softmax(logits2, dim=1)
    return ((log_p1.exp() - log_p2.exp()) * (log_p1 - log_p2)).sum(dim=1)


def joint_loss_per_voxel(
    logits1: torch.Tensor, logits2: torch.Tensor, labels: torch.Tensor, lam: float = 0.65
) -> torch.Tensor:
    """Eq. 4 of SP-guided at voxel level: ``(1-lam)(CE1 + CE2) + lam * symKL(softmax1, softmax2)``.

    Args:
        logits1: logits of network 1, ``(B, C, *S)``.
        logits2: logits of network 2, same shape.
        labels: noisy labels ``(B, 1, *S)`` or ``(B, *S)``, values in ``[0, C)`` (float tensors from MONAI
            loaders are cast to int64).
        lam: weight of the agreement term (0.65 in the paper).

    Returns:
        per-voxel loss ``(B, *S)``; gradients reach both logits (nothing is detached).

    Raises:
        ValueError: mismatched shapes or ``lam`` outside [0, 1].
    """
    _check_lambda(lam)
    if logits1.shape != logits2.shape:
        raise ValueError(f"logits shapes differ: {tuple(logits1.shape)} vs {tuple(logits2.shape)}.")
    if logits1.dim() < 3:
        raise ValueError(f"logits must be (B, C, *S), got shape {tuple(logits1.shape)}.")
    target = _voxel_labels(labels, logits1.dim() - 1)
    if target.shape != logits1.shape[:1] + logits1.shape[2:]:
        raise ValueError(f"labels {tuple(labels.shape)} do not match logits {tuple(logits1.shape)}.")
    log_p1 = F.log_softmax(logits1, dim=1)
    log_p2 = F.log_softmax(logits2, dim=1)
    index = target.unsqueeze(1)
    ce1 = -log_p1.gather(1, index).squeeze(1)
    ce2 = -log_p2.gather(1, index).squeeze(1)
    sym_kl = ((log_p1.exp() - log_p2.exp()) * (log_p1 - log_p2)).sum(dim=1)
    return (1.0 - lam) * (ce1 + ce2) + lam * sym_kl


def class_balanced_mean(
    loss: torch.Tensor, mask: torch.Tensor | None, labels: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """Mean of ``loss`` over the selected voxels, each class's selected voxels getting equal total weight.

    Equivalently the average, over the classes that have at least one selected voxel, of the per-class mean loss:
    ``(1/|C_sel|) sum_{c in C_sel} mean_{v selected, y_v = c} loss_v``. No host sync (no boolean indexing).

    Reference choice *(code)*: the authors' binary ``forward_select`` weights background 1 and foreground
    ``clamp(n_bg / n_fg, 1, 1e6)`` over the selected voxels, i.e. equal total weight whenever the foreground is
    the rarer class (always the case on LA patches) and a plain mean otherwise. This function generalises the
    equal-total-weight rule to C classes without that clamp.

    Args:
        loss: per-voxel loss ``(B, *S)``.
        mask: bool selection ``(B, *S)`` (``(B, 1, *S)`` accepted); ``None`` selects every voxel.
        labels: labels ``(B, 1, *S)`` or ``(B, *S)`` deciding each voxel's class, values in ``[0, num_classes)``.
        num_classes: C.

    Returns:
        scalar tensor; 0 (still attached to the graph) when nothing is selected.

    Raises:
        ValueError: bad ``num_classes`` or shapes.
    """
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
    target = _voxel_labels(labels, loss.dim())
    if target.shape != loss.shape:
        raise ValueError(f"labels {tuple(labels.shape)} do not match loss {tuple(loss.shape)}.")
    if mask is None:
        weight = torch.ones_like(loss)
    else:
        if mask.dim() == loss.dim() + 1 and mask.shape[1] == 1:
            mask = mask[:, 0]
        if mask.shape != loss.shape:
            raise ValueError(f"mask {tuple(mask.shape)} does not match loss {tuple(loss.shape)}.")
        weight = mask.to(loss.dtype)
    flat_target = target.reshape(-1)
    class_sum = loss.new_zeros(int(num_classes)).index_add(0, flat_target, (loss * weight).reshape(-1))
    class_count = loss.new_zeros(int(num_classes)).index_add(0, flat_target, weight.reshape(-1))
    present = class_count > 0
    class_mean = torch.where(present, class_sum / class_count.clamp_min(1.0), torch.zeros_like(class_sum))
    return class_mean.sum() / present.sum().clamp_min(1).to(loss.dtype)


class JointLoss(nn.Module):
    """Eq. 4 of SP-guided as a module: joint loss of two networks, class-balanced mean over selected voxels.

    Args:
        num_classes: C.
        lam: weight of the symmetric-KL agreement term (0.65).

    Example::

        loss = JointLoss(num_classes=2)(logits1, logits2, labels, mask)
    """

    def __init__(self, num_classes: int, lam: float = 0.65) -> None:
        super().__init__()
        if int(num_classes) < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}.")
        _check_lambda(lam)
        self.num_classes = int(num_classes)
        self.lam = float(lam)

    def forward(
        self,
        logits1: torch.Tensor,
        logits2: torch.Tensor,
        labels: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits ``(B, C, *S)`` x2, labels ``(B, 1, *S)``, optional bool mask ``(B, *S)`` -> scalar loss."""
        if logits1.shape[1] != self.num_classes:
            raise ValueError(f"expected {self.num_classes} channels, got {logits1.shape[1]}.")
        per_voxel = joint_loss_per_voxel(logits1, logits2, labels, self.lam)
        return class_balanced_mean(per_voxel, mask, labels, self.num_classes)
