"""Voxel-level multi-network selection baselines compared against SP-guided (methods.md §2, "Baselines").

All three select per noisy class with the same rule as Eq. 3 of SP-guided, each voxel being one piece
(:func:`custom.selection.small_loss.small_loss_mask`: keep the lowest-criterion voxels of class c until ``R_c`` of
them, ties at the threshold dropped). Inputs are per-voxel losses ``(B, *S)`` computed from logits
(e.g. ``F.cross_entropy(logits, y, reduction="none")``); pass them detached.

- Co-teaching (Han et al. 2018): each network trains on the voxels its *peer* selects as small-loss by the peer's
  own cross-entropy.
- JoCoR (Wei et al. 2020): one mask shared by both networks, selected on the joint loss (Eq. 4 of SP-guided).
- Tri-network (Zhang et al. 2020, "Robust medical image segmentation from non-expert annotations with
  tri-network"): three networks; each trains on the voxels the other two pick. Two rules:

  * ``"agreement"`` (default; the SP-guided authors' re-implementation, and methods.md's "where the other two agree
    most"): network i keeps the voxels with the smallest ``|CE_j - CE_k|`` of its two peers j, k.
  * ``"consensus"`` (the tri-network paper's description: samples both peers consider clean): network i keeps the
    voxels that *both* peers select as small-loss by their own cross-entropy. This keeps fewer than ``R_c``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from custom.selection.small_loss import small_loss_mask

__all__ = ["TRINET_RULES", "voxel_small_loss_mask", "coteaching_masks", "jocor_mask", "trinet_masks"]

TRINET_RULES = ("agreement", "consensus")


def _flat_labels(labels: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
    if labels.dim() == loss.dim() + 1 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.shape != loss.shape:
        raise ValueError(f"labels {tuple(labels.shape)} do not match the loss {tuple(loss.shape)}.")
    return labels.long()


def voxel_small_loss_mask(
    loss: torch.Tensor,
    labels: torch.Tensor,
    keep_ratio: float | Sequence[float] | torch.Tensor,
    per_sample: bool = False,
) -> torch.Tensor:
    """Per-class small-loss selection with every voxel a piece.

    Args:
        loss: selection criterion per voxel ``(B, *S)`` (lower = more trusted).
        labels: noisy labels ``(B, 1, *S)`` or ``(B, *S)``.
        keep_ratio: ``R_c`` per class ``(C,)``.
        per_sample: budget per batch element (default: over the whole batch, as the reference code).

    Returns:
        bool ``(B, *S)``.
    """
    target = _flat_labels(labels, loss)
    batch = loss.shape[0]
    mask = small_loss_mask(loss.reshape(batch, -1), target.reshape(batch, -1), None, keep_ratio, per_sample)
    return mask.reshape(loss.shape)


def coteaching_masks(
    ce1: torch.Tensor,
    ce2: torch.Tensor,
    labels: torch.Tensor,
    keep_ratio: float | Sequence[float] | torch.Tensor,
    per_sample: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Co-teaching: each network trains on its peer's small-loss voxels.

    Args:
        ce1: per-voxel cross-entropy of network 1 ``(B, *S)``.
        ce2: per-voxel cross-entropy of network 2, same shape.
        labels: noisy labels ``(B, 1, *S)`` or ``(B, *S)``.
        keep_ratio: ``R_c`` per class ``(C,)``.
        per_sample: budget per batch element.

    Returns:
        ``(mask_for_net1, mask_for_net2)`` bool ``(B, *S)``: net 1 trains on the voxels selected by net 2's CE,
        net 2 on those selected by net 1's CE.
    """
    if ce1.shape != ce2.shape:
        raise ValueError(f"loss shapes differ: {tuple(ce1.shape)} vs {tuple(ce2.shape)}.")
    selected_by_net1 = voxel_small_loss_mask(ce1, labels, keep_ratio, per_sample)
    selected_by_net2 = voxel_small_loss_mask(ce2, labels, keep_ratio, per_sample)
    return selected_by_net2, selected_by_net1


def jocor_mask(
    joint_loss: torch.Tensor,
    labels: torch.Tensor,
    keep_ratio: float | Sequence[float] | torch.Tensor,
    per_sample: bool = False,
) -> torch.Tensor:
    """JoCoR: one mask for both networks, the small-loss voxels of the joint loss (Eq. 4 of SP-guided).

    Args:
        joint_loss: per-voxel joint loss ``(B, *S)`` (``custom.losses.joint_loss.joint_loss_per_voxel``).
        labels: noisy labels ``(B, 1, *S)`` or ``(B, *S)``.
        keep_ratio: ``R_c`` per class ``(C,)``.
        per_sample: budget per batch element.

    Returns:
        bool ``(B, *S)``.
    """
    return voxel_small_loss_mask(joint_loss, labels, keep_ratio, per_sample)


def trinet_masks(
    ce1: torch.Tensor,
    ce2: torch.Tensor,
    ce3: torch.Tensor,
    labels: torch.Tensor,
    keep_ratio: float | Sequence[float] | torch.Tensor,
    rule: str = "agreement",
    per_sample: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tri-network: each network trains on the voxels chosen by the other two (rule in the module docstring).

    Args:
        ce1: per-voxel cross-entropy of network 1 ``(B, *S)``.
        ce2: same for network 2.
        ce3: same for network 3.
        labels: noisy labels ``(B, 1, *S)`` or ``(B, *S)``.
        keep_ratio: ``R_c`` per class ``(C,)``.
        rule: ``"agreement"`` (smallest ``|CE_j - CE_k|``) or ``"consensus"`` (small-loss for both peers).
        per_sample: budget per batch element.

    Returns:
        ``(mask_for_net1, mask_for_net2, mask_for_net3)``, bool ``(B, *S)`` each.
    """
    if rule not in TRINET_RULES:
        raise ValueError(f"rule must be one of {TRINET_RULES}, got {rule!r}.")
    if not ce1.shape == ce2.shape == ce3.shape:
        raise ValueError(f"loss shapes differ: {tuple(ce1.shape)}, {tuple(ce2.shape)}, {tuple(ce3.shape)}.")
    if rule == "agreement":
        return (
            voxel_small_loss_mask((ce2 - ce3).abs(), labels, keep_ratio, per_sample),
            voxel_small_loss_mask((ce1 - ce3).abs(), labels, keep_ratio, per_sample),
            voxel_small_loss_mask((ce1 - ce2).abs(), labels, keep_ratio, per_sample),
        )
    small1 = voxel_small_loss_mask(ce1, labels, keep_ratio, per_sample)
    small2 = voxel_small_loss_mask(ce2, labels, keep_ratio, per_sample)
    small3 = voxel_small_loss_mask(ce3, labels, keep_ratio, per_sample)
    return small2 & small3, small1 & small3, small1 & small2
