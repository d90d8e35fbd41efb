"""Per-class small-loss selection (Eq. 3 of SP-guided), its forget-rate schedule and the loss-gap stopping
criterion (Eq. 5), methods.md §2.3 and §2.5.

A *piece* is any group of voxels scored as one sample: a (superpixel, noisy class) piece in SP-guided *(code)*, a
single voxel in the voxel-level ablation and in the Co-teaching / JoCoR / Tri-network baselines. Selection is done
separately for every noisy class c, with a budget counted in voxels.

Selection rule of :func:`small_loss_mask` (exact):

1. Within class c (and within each batch element when ``per_sample``), sort the non-empty pieces by score,
   ascending (stable: equal scores keep their input order).
2. Greedy prefix, Eq. 3 (``N(D) >= R_c * N_c``): keep a piece while the voxels already kept are fewer than the
   budget ``R_c * N_c``; the piece that reaches the budget is kept, the rest are candidates to drop.
3. Ties at the threshold are dropped: with ``t_c`` the lowest score among the dropped pieces of class c, every
   kept piece scoring ``>= t_c`` is dropped as well. This is what the reference code's ``loss < threshold`` does.

So, without ties, the kept voxels of class c number at least ``R_c * N_c`` and less than that plus the size of
one piece; ties can only make the selection smaller. ``R_c = 1`` keeps every piece, ``R_c = 0`` none. NaN scores
and empty pieces are never kept.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from custom.losses.joint_loss import class_balanced_mean

__all__ = [
    "as_class_ratios",
    "forget_rate_schedule",
    "budgeted_prefix_mask",
    "class_groups",
    "small_loss_mask",
    "loss_gap",
    "LossGapTracker",
    "estimate_keep_ratio",
]


_BUDGET_TOLERANCE = 1e-6


def as_class_ratios(
    ratio: float | Sequence[float] | torch.Tensor, name: str = "keep_ratio", device: torch.device | None = None
) -> torch.Tensor:
    """A ratio per class as a float64 tensor ``(C,)`` (or 0-dim for a scalar), checked to lie in [0, 1].

    The check runs on the CPU copy: pass Python floats or a CPU tensor to avoid a device sync.

    Raises:
        ValueError: a value outside [0, 1], NaN, or more than one dimension.
    """
    cpu = torch.as_tensor(ratio.detach().cpu() if isinstance(ratio, torch.Tensor) else ratio, dtype=torch.float64)
    if cpu.dim() > 1:
        raise ValueError(f"{name} must be a scalar or a per-class vector, got shape {tuple(cpu.shape)}.")
    if cpu.numel() == 0 or bool(torch.isnan(cpu).any()) or bool(((cpu < 0) | (cpu > 1)).any()):
        raise ValueError(f"{name} values must lie in [0, 1], got {cpu.tolist()}.")
    return cpu if device is None else cpu.to(device)


def forget_rate_schedule(
    epoch: int, final_forget_rate: float | Sequence[float] | torch.Tensor, warmup_epochs: int = 5
) -> float | torch.Tensor:
    """Forget rate ``1 - R`` at ``epoch``: linear ramp from 0 at epoch 0 to ``final_forget_rate`` at
    ``warmup_epochs``, constant afterwards (Co-teaching schedule, methods.md §2.3).

    The reference code ramps with ``linspace(0, final, warmup)`` and so reaches the final rate one epoch earlier
    (at ``warmup - 1``); here the rate at epoch e is exactly ``final * min(e / warmup, 1)``.

    Args:
        epoch: 0-based epoch.
        final_forget_rate: scalar or per-class ``(C,)`` rates in [0, 1].
        warmup_epochs: ramp length; 0 means no ramp.

    Returns:
        a float for a scalar input, else a float64 tensor ``(C,)``. Keep ratio = ``1 - forget rate``.

    Raises:
        ValueError: negative ``epoch``/``warmup_epochs`` or rates outside [0, 1].
    """
    if int(epoch) < 0 or int(warmup_epochs) < 0:
        raise ValueError(f"epoch and warmup_epochs must be >= 0, got {epoch}, {warmup_epochs}.")
    rates = as_class_ratios(final_forget_rate, "final_forget_rate")
    fraction = 1.0 if int(warmup_epochs) == 0 else min(int(epoch) / int(warmup_epochs), 1.0)
    scheduled = rates * fraction
    return float(scheduled) if scheduled.dim() == 0 else scheduled


def budgeted_prefix_mask(
    priority: torch.Tensor,
    group: torch.Tensor,
    size: torch.Tensor,
    budget: torch.Tensor,
    num_groups: int,
    at_least: bool = True,
) -> torch.Tensor:
    """Per group, take the pieces of lowest ``priority`` until a voxel budget is met; drop ties at the threshold.

    The shared core of Eq. 3 (selection, ``at_least=True``: the smallest prefix with ``N >= budget``) and Eq. 6
    (refinement, ``at_least=False``: the largest prefix with ``N <= budget``; pass ``-loss`` as priority). After
    the prefix is taken, every taken piece whose priority is ``>=`` the lowest priority left out of its group is
    dropped. Vectorised: two stable sorts, one cumsum, one ``scatter_reduce``; no host sync.

    Args:
        priority: ``(N,)`` float, lower = taken first. NaN is never taken.
        group: ``(N,)`` int64 in ``[0, num_groups)``.
        size: ``(N,)`` non-negative voxel counts; size-0 pieces are never taken.
        budget: ``(num_groups,)`` voxel budget per group (float); round-off below 1e-6 voxel is ignored.
        num_groups: number of groups G.
        at_least: prefix rule (see above).

    Returns:
        bool ``(N,)``.
    """
    if not (priority.shape == group.shape == size.shape) or priority.dim() != 1:
        raise ValueError(
            f"priority, group and size must be 1D of equal length, got {tuple(priority.shape)}, "
            f"{tuple(group.shape)}, {tuple(size.shape)}."
        )
    device = priority.device
    valid = (size > 0) & ~torch.isnan(priority)
    size64 = torch.where(valid, size.to(torch.float64), torch.zeros((), dtype=torch.float64, device=device))
    key = torch.where(valid, priority.to(torch.float64), torch.full((), math.inf, dtype=torch.float64, device=device))
    # order by (group, priority): stable sort by priority, then stable sort by group
    order = torch.argsort(key, stable=True)
    order = order[torch.argsort(group[order], stable=True)]
    group_sorted = group[order]
    size_sorted = size64[order]
    key_sorted = key[order]
    valid_sorted = valid[order]

    group_total = torch.zeros(num_groups, dtype=torch.float64, device=device).index_add_(0, group, size64)
    group_start = torch.cumsum(group_total, 0) - group_total
    inclusive = torch.cumsum(size_sorted, 0) - group_start[group_sorted]
    budget_sorted = budget.to(device=device, dtype=torch.float64)[group_sorted]
    # voxel counts are integers: a budget within _BUDGET_TOLERANCE of one is that integer (1 - 0.8 = 0.1999...)
    if at_least:
        taken = valid_sorted & (inclusive - size_sorted < budget_sorted - _BUDGET_TOLERANCE)
    else:
        taken = valid_sorted & (inclusive <= budget_sorted + _BUDGET_TOLERANCE)

    left_out = valid_sorted & ~taken
    threshold = torch.full((num_groups,), math.inf, dtype=torch.float64, device=device)
    threshold = threshold.scatter_reduce(
        0, group_sorted, torch.where(left_out, key_sorted, torch.full_like(key_sorted, math.inf)), reduce="amin"
    )
    kept_sorted = taken & (key_sorted < threshold[group_sorted])
    kept = torch.empty_like(kept_sorted)
    kept[order] = kept_sorted
    return kept


def _flatten_pieces(
    scores: torch.Tensor, piece_class: torch.Tensor, piece_size: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if piece_class.shape != scores.shape:
        raise ValueError(f"piece_class {tuple(piece_class.shape)} must match scores {tuple(scores.shape)}.")
    if piece_size is None:
        piece_size = torch.ones_like(piece_class)
    elif piece_size.shape != scores.shape:
        raise ValueError(f"piece_size {tuple(piece_size.shape)} must match scores {tuple(scores.shape)}.")
    return scores.reshape(-1), piece_class.reshape(-1).long(), piece_size.reshape(-1)


def class_groups(
    piece_class: torch.Tensor,
    piece_size: torch.Tensor,
    keep_ratio: float | Sequence[float] | torch.Tensor,
    per_sample: bool = False,
) -> tuple[torch.Tensor, int, torch.Tensor, torch.Tensor]:
    """The selection groups of pieces: one per noisy class, or per (batch element, class) when ``per_sample``.

    Args:
        piece_class: ``(B, P)`` (or flat ``(N,)`` when not ``per_sample``) noisy class per piece in ``[0, C)``.
        piece_size: voxels per piece, same shape.
        keep_ratio: ``R_c`` per class ``(C,)``, or a scalar (then C = max class + 1: one host sync).
        per_sample: group by batch element as well.

    Returns:
        ``(group (N,) int64, num_groups, ratio per group (G,) float64, voxels per group (G,) float64)``.
    """
    ratios = as_class_ratios(keep_ratio, "keep_ratio", device=piece_class.device)
    flat_class = piece_class.reshape(-1).long()
    if ratios.dim() == 0:
        ratios = ratios.expand(int(flat_class.max()) + 1 if flat_class.numel() else 1)
    num_classes = ratios.numel()
    if per_sample:
        if piece_class.dim() != 2:
            raise ValueError(f"per_sample grouping needs (B, P) pieces, got shape {tuple(piece_class.shape)}.")
        batch, num_pieces = piece_class.shape
        sample = torch.arange(batch, device=piece_class.device).repeat_interleave(num_pieces)
        groups, num_groups, group_ratio = sample * num_classes + flat_class, batch * num_classes, ratios.repeat(batch)
    else:
        groups, num_groups, group_ratio = flat_class, num_classes, ratios
    group_total = torch.zeros(num_groups, dtype=torch.float64, device=piece_class.device).index_add_(
        0, groups, piece_size.reshape(-1).to(torch.float64)
    )
    return groups, num_groups, group_ratio, group_total


def small_loss_mask(
    scores: torch.Tensor,
    piece_class: torch.Tensor,
    piece_size: torch.Tensor | None,
    keep_ratio: float | Sequence[float] | torch.Tensor,
    per_sample: bool = False,
) -> torch.Tensor:
    """Eq. 3 of SP-guided, per noisy class: keep the lowest-score pieces until ``R_c`` of class c's voxels.

    See the module docstring for the exact rule (greedy ``N >= R_c N_c`` prefix, ties at the threshold dropped).

    Args:
        scores: per-piece selection scores (e.g. Eq. 2), ``(B, P)`` or flat ``(N,)``.
        piece_class: noisy class of each piece, same shape, int in ``[0, C)``.
        piece_size: voxels per piece, same shape; ``None`` = every piece is one voxel.
        keep_ratio: ``R_c`` per class ``(C,)``, or one scalar for all classes (costs one host sync).
        per_sample: budget per batch element and class instead of per class over the whole batch (the reference
            code pools the whole batch).

    Returns:
        bool mask of ``scores``' shape: True = selected (trusted) piece.

    Raises:
        ValueError: mismatched shapes or ratios outside [0, 1].
    """
    flat_scores, _, flat_size = _flatten_pieces(scores, piece_class, piece_size)
    groups, num_groups, group_ratio, group_total = class_groups(
        piece_class, flat_size.reshape(piece_class.shape), keep_ratio, per_sample
    )
    kept = budgeted_prefix_mask(flat_scores, groups, flat_size, group_ratio * group_total, num_groups, at_least=True)
    return kept.reshape(scores.shape)


def loss_gap(
    loss: torch.Tensor,
    mask: torch.Tensor,
    labels: torch.Tensor | None = None,
    num_classes: int | None = None,
) -> torch.Tensor:
    """Eq. 5 of SP-guided: ``G = mean(loss of unselected) - mean(loss of selected)``.

    Works on voxel losses (the reference code: the Eq. 4 joint loss per voxel, class-balanced means as in its
    ``forward_select``; pass ``labels`` and ``num_classes`` for that) or on per-piece scores (the paper's Eq. 5;
    plain means). An empty side counts as mean 0, so with nothing unselected ``G = -mean(selected)`` as in the
    reference code's NaN fallback. No host sync; pass a detached loss.

    Args:
        loss: ``(B, *S)`` per-voxel losses or ``(B, P)`` per-piece scores.
        mask: bool of the same shape, True = selected.
        labels: optional labels ``(B, 1, *S)``/``(B, *S)`` for class-balanced means.
        num_classes: C, required with ``labels``.

    Returns:
        scalar tensor.
    """
    if mask.shape != loss.shape:
        raise ValueError(f"mask {tuple(mask.shape)} must match loss {tuple(loss.shape)}.")
    mask = mask.bool()
    if labels is not None:
        if num_classes is None:
            raise ValueError("num_classes is required with labels.")
        return class_balanced_mean(loss, ~mask, labels, num_classes) - class_balanced_mean(
            loss, mask, labels, num_classes
        )
    selected = mask.to(loss.dtype)
    unselected = 1.0 - selected
    mean_selected = (loss * selected).sum() / selected.sum().clamp_min(1.0)
    mean_unselected = (loss * unselected).sum() / unselected.sum().clamp_min(1.0)
    return mean_unselected - mean_selected


class LossGapTracker:
    """Stopping criterion of SP-guided (Eq. 5): track the maximum epoch loss gap; signal when it has not improved
    for ``patience`` epochs (then run label refinement, methods.md §2.5).

    The first update always improves (the maximum starts at ``-inf``; the reference code starts at 0 and so needs a
    positive gap first). A NaN gap never improves. ``reset()`` starts a new round (after refinement).

    Args:
        patience: epochs without improvement that trigger refinement (5).
        min_delta: an improvement must exceed the best by more than this.

    Example::

        tracker = LossGapTracker(patience=5)
        if tracker.update(epoch_gap):
            refine(); tracker.reset()
    """

    def __init__(self, patience: int = 5, min_delta: float = 0.0) -> None:
        if int(patience) < 1:
            raise ValueError(f"patience must be >= 1, got {patience}.")
        if not min_delta >= 0:
            raise ValueError(f"min_delta must be >= 0, got {min_delta}.")
        self.patience = int(patience)
        self.min_delta = float(min_delta)
        self.best = -math.inf
        self.best_epoch = -1
        self.epochs_since_best = 0
        self.num_updates = 0
        self.history: list[float] = []

    def update(self, gap: float | torch.Tensor) -> bool:
        """Record one epoch's gap; True when the maximum has not improved for ``patience`` epochs."""
        value = float(gap)
        self.history.append(value)
        if value > self.best + self.min_delta:  # False for NaN
            self.best = value
            self.best_epoch = self.num_updates
            self.epochs_since_best = 0
        else:
            self.epochs_since_best += 1
        self.num_updates += 1
        return self.should_stop

    @property
    def should_stop(self) -> bool:
        return self.epochs_since_best >= self.patience

    def reset(self) -> None:
        """Forget the maximum (new round after refinement); the history is kept."""
        self.best = -math.inf
        self.best_epoch = -1
        self.epochs_since_best = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "patience": self.patience,
            "min_delta": self.min_delta,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "epochs_since_best": self.epochs_since_best,
            "num_updates": self.num_updates,
            "history": list(self.history),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {"best", "best_epoch", "epochs_since_best", "num_updates"} - set(state)
        if missing:
            raise ValueError(f"LossGapTracker state lacks {sorted(missing)}.")
        self.patience = int(state.get("patience", self.patience))
        self.min_delta = float(state.get("min_delta", self.min_delta))
        self.best = float(state["best"])
        self.best_epoch = int(state["best_epoch"])
        self.epochs_since_best = int(state["epochs_since_best"])
        self.num_updates = int(state["num_updates"])
        self.history = [float(v) for v in state.get("history", [])]


def estimate_keep_ratio(
    noisy_labels: torch.Tensor, clean_labels: torch.Tensor, num_classes: int, min_ratio: float = 0.0
) -> torch.Tensor:
    """Estimate ``R_c`` from cases with both labels (e.g. the HQ set with simulated noise) *(decision)*.

    ``R_c`` = fraction of voxels with noisy label c whose clean label is also c (the precision of noisy class c);
    the paper instead assumes the noise rate known. Classes absent from ``noisy_labels`` get 1.

    Args:
        noisy_labels: int labels, any shape.
        clean_labels: int labels, same shape.
        num_classes: C.
        min_ratio: lower clamp for the estimate.

    Returns:
        float64 tensor ``(C,)`` on the CPU.
    """
    if noisy_labels.shape != clean_labels.shape:
        raise ValueError(f"label shapes differ: {tuple(noisy_labels.shape)} vs {tuple(clean_labels.shape)}.")
    if int(num_classes) < 1 or not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"need num_classes >= 1 and min_ratio in [0, 1], got {num_classes}, {min_ratio}.")
    noisy = noisy_labels.reshape(-1).long().cpu()
    agree = (noisy == clean_labels.reshape(-1).long().cpu()).to(torch.float64)
    total = torch.bincount(noisy, minlength=int(num_classes)).to(torch.float64)[: int(num_classes)]
    correct = torch.bincount(noisy, weights=agree, minlength=int(num_classes))[: int(num_classes)]
    ratio = torch.where(total > 0, correct / total.clamp_min(1.0), torch.ones_like(total))
    return ratio.clamp(min=float(min_ratio), max=1.0)
