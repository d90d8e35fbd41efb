"""Superpixel label refinement of SP-guided (Eqs. 6-8), methods.md §2.6.

With both networks in eval mode and ``p = (p1 + p2) / 2``:

1. pool ``p`` per piece (Eq. 7 pools over the superpixel; the (superpixel, noisy class) pieces follow the
   reference code, see :mod:`custom.selection.superpixel`);
2. per-piece loss against the piece's noisy class c: ``-log p_pooled(c)`` (for binary labels this orders pieces
   exactly like the reference code's probability threshold);
3. Eq. 6, per noisy class c: take the largest-loss pieces while their voxels stay within ``(1 - R_c) * N_c``
   (the largest prefix with ``N <= budget``; pieces tied with the first piece left out are dropped too, as in
   :func:`custom.selection.small_loss.budgeted_prefix_mask`). The budget is either per case (``N_c`` of that case)
   or **pooled** over all refined cases (``N_c`` summed over them; :func:`pooled_refinement_masks`), as the
   authors' ``label_update`` does: one budget over the training set, spent on the globally least reliable pieces,
   so that an uncorrupted case whose pieces the networks fit well keeps its labels;
4. Eq. 8: relabel the taken pieces to the pooled argmax (Eq. 7) where it differs from c; all other voxels keep
   their label. Optionally *(decision, not in the paper)* only where the pooled probability of the argmax reaches
   ``min_confidence``: the budget ``(1 - R_c) N_c`` of the background class is a few percent of a whole volume,
   often more than the foreground itself, so without a gate it relabels every background piece the networks merely
   lean towards foreground, in clean cases as much as in corrupted ones. The gate may differ per noisy class (a
   piece labelled ``c`` needs ``min_confidence[c]``): the networks' rejection of a class they were trained on less
   of (small ``R_c``) is the less reliable one.

After refinement ``R <- max(R, min(gamma * R, R_max))`` (:func:`update_keep_ratio`, gamma = 1.1).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from custom.selection.small_loss import as_class_ratios, budgeted_prefix_mask, class_groups
from custom.selection.superpixel import (
    POOLING_MODES,
    Pieces,
    piece_ids,
    pieces_to_voxels,
    pooled_piece_probabilities,
    resolve_num_superpixels,
    voxel_pieces,
)

__all__ = [
    "PieceScores",
    "piece_scores",
    "refinement_piece_mask",
    "pooled_refinement_masks",
    "check_min_confidence",
    "confidence_gate",
    "apply_refinement",
    "refine_labels_by_superpixel",
    "update_keep_ratio",
]


class PieceScores(NamedTuple):
    """What Eqs. 6-8 need of one case (or batch): its pieces and, per piece, loss, noisy class, size, prediction.

    Attributes:
        pieces: the piece ids of every voxel (:class:`custom.selection.superpixel.Pieces`).
        loss: ``(B, P)`` ``-log`` of the pooled probability of the piece's noisy class.
        piece_class: ``(B, P)`` int64 noisy class.
        piece_size: ``(B, P)`` voxels.
        predicted: ``(B, P)`` int64 pooled argmax (Eq. 7).
        confidence: ``(B, P)`` pooled probability of ``predicted``.
    """

    pieces: Pieces
    loss: torch.Tensor
    piece_class: torch.Tensor
    piece_size: torch.Tensor
    predicted: torch.Tensor
    confidence: torch.Tensor


def refinement_piece_mask(
    piece_loss: torch.Tensor,
    piece_class: torch.Tensor,
    piece_size: torch.Tensor,
    keep_ratio: float | Sequence[float] | torch.Tensor,
    per_sample: bool = True,
) -> torch.Tensor:
    """Eq. 6 of SP-guided: per noisy class, the largest-loss pieces holding at most ``(1 - R_c)`` of its voxels.

    Args:
        piece_loss: ``(B, P)`` loss per piece (larger = less reliable).
        piece_class: ``(B, P)`` noisy class per piece in ``[0, C)``.
        piece_size: ``(B, P)`` voxels per piece.
        keep_ratio: ``R_c`` per class ``(C,)`` (or a scalar).
        per_sample: budget per batch element (default; one case per element) or over the whole batch.

    Returns:
        bool ``(B, P)``: True = unreliable piece (candidate for relabelling).
    """
    if not (piece_loss.shape == piece_class.shape == piece_size.shape) or piece_loss.dim() != 2:
        raise ValueError(
            f"piece_loss, piece_class and piece_size must be (B, P) of one shape, got {tuple(piece_loss.shape)}, "
            f"{tuple(piece_class.shape)}, {tuple(piece_size.shape)}."
        )
    groups, num_groups, group_ratio, group_total = class_groups(piece_class, piece_size, keep_ratio, per_sample)
    flat_size = piece_size.reshape(-1)
    budget = (1.0 - group_ratio) * group_total
    taken = budgeted_prefix_mask(-piece_loss.reshape(-1), groups, flat_size, budget, num_groups, at_least=False)
    return taken.reshape(piece_loss.shape)


def piece_scores(
    probs: torch.Tensor,
    labels: torch.Tensor,
    superpixels: torch.Tensor | None,
    num_superpixels: int | torch.Tensor | None = None,
    pool: str = "superpixel",
    eps: float = 1e-8,
) -> PieceScores:
    """Steps 1-2 of the module docstring: pieces, pooled probabilities, per-piece loss and prediction.

    Args:
        probs: mean of the two networks' softmax probabilities (eval mode), ``(B, C, *S)``.
        labels: current noisy labels ``(B, 1, *S)`` in ``[0, C)``.
        superpixels: ids ``(B, 1, *S)``; ``None`` = voxel-level ablation (each voxel a piece).
        num_superpixels: K, to avoid a host sync.
        pool: ``"superpixel"`` (Eq. 7: pool over the whole superpixel) or ``"piece"``.
        eps: clamp inside the log.

    Raises:
        ValueError: shape mismatch or unknown ``pool``.
    """
    if pool not in POOLING_MODES:
        raise ValueError(f"pool must be one of {POOLING_MODES}, got {pool!r}.")
    if probs.dim() < 3 or labels.shape != probs.shape[:1] + (1,) + probs.shape[2:]:
        raise ValueError(f"labels {tuple(labels.shape)} must be (B, 1, *S) for probs {tuple(probs.shape)}.")
    num_classes = probs.shape[1]
    with torch.no_grad():
        probs = probs.detach()
        if superpixels is None:
            pieces: Pieces = voxel_pieces(labels)
            pooled = probs.reshape(probs.shape[:2] + (-1,))
        else:
            if superpixels.shape != labels.shape:
                raise ValueError(f"superpixels {tuple(superpixels.shape)} must match labels {tuple(labels.shape)}.")
            num = resolve_num_superpixels(superpixels, num_superpixels)
            pieces = piece_ids(superpixels, labels, num_classes, num)
            pooled = pooled_piece_probabilities(probs, pieces, superpixels if pool == "superpixel" else None, num)
        piece_class = pieces.piece_class.long()
        own_class_prob = pooled.gather(1, piece_class.unsqueeze(1)).squeeze(1)
        loss = -own_class_prob.clamp_min(eps).log()
        confidence, predicted = pooled.max(dim=1)  # Eq. 7
    return PieceScores(pieces, loss, piece_class, pieces.piece_size, predicted, confidence)


def pooled_refinement_masks(
    scores: Sequence[PieceScores], keep_ratio: float | Sequence[float] | torch.Tensor
) -> list[torch.Tensor]:
    """Eq. 6 with one budget over several cases: per noisy class, the largest-loss pieces of *all* of them holding
    at most ``(1 - R_c) * sum_cases N_c`` voxels.

    Args:
        scores: :func:`piece_scores` of each case (batch size 1 each; any number of pieces).
        keep_ratio: ``R_c`` per class ``(C,)`` (or a scalar).

    Returns:
        One bool ``(1, P_i)`` mask per case (True = unreliable piece), in the order given.
    """
    if not scores:
        return []
    if any(s.loss.shape[0] != 1 for s in scores):
        raise ValueError("pooled refinement expects one case per PieceScores (batch size 1).")
    device = scores[0].loss.device
    loss = torch.cat([s.loss.reshape(1, -1).to(device) for s in scores], dim=1)
    piece_class = torch.cat([s.piece_class.reshape(1, -1).to(device) for s in scores], dim=1)
    piece_size = torch.cat([s.piece_size.reshape(1, -1).to(device) for s in scores], dim=1)
    taken = refinement_piece_mask(loss, piece_class, piece_size, keep_ratio, per_sample=False)
    return list(torch.split(taken, [s.loss.shape[1] for s in scores], dim=1))


def check_min_confidence(min_confidence: float | Sequence[float], name: str = "min_confidence") -> torch.Tensor:
    """The refinement gate as a float64 CPU tensor: 0-dim for one gate, ``(C,)`` for one per noisy class.

    Raises:
        ValueError: (naming ``name``) a gate outside ``[0, 1]`` or more than one dimension.
    """
    return as_class_ratios(min_confidence, name)


def confidence_gate(
    min_confidence: float | Sequence[float] | torch.Tensor, piece_class: torch.Tensor
) -> torch.Tensor:
    """The gate each piece must reach: ``min_confidence`` itself, or ``min_confidence[c]`` for a piece of noisy
    class ``c`` (float32, the shape of ``piece_class``, on its device). A per-class gate needs an entry for every
    class (the refinement stage checks its length against the number of classes when it is built).
    """
    gate = check_min_confidence(min_confidence)
    if gate.dim() == 0:
        return torch.full_like(piece_class, float(gate), dtype=torch.float32)
    return gate.to(device=piece_class.device, dtype=torch.float32)[piece_class]


def apply_refinement(
    scores: PieceScores, unreliable: torch.Tensor, min_confidence: float | Sequence[float] = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 8: the unreliable pieces whose pooled prediction differs from their noisy class take the prediction.

    Args:
        scores: :func:`piece_scores` of the case(s).
        unreliable: ``(B, P)`` bool, the pieces Eq. 6 took.
        min_confidence: a piece flips only where the pooled probability of its prediction is at least this
            (0 = the paper: every disagreeing unreliable piece flips); a sequence gives one gate per noisy class
            ``(C,)``: a piece *labelled* ``c`` needs ``min_confidence[c]`` to take another class.

    Returns:
        ``(new_labels, changed)``: int64 ``(B, 1, *S)`` and bool ``(B, 1, *S)``.

    Raises:
        ValueError: a gate outside [0, 1].
    """
    gate = check_min_confidence(min_confidence)
    flip = unreliable & (scores.predicted != scores.piece_class)
    if bool((gate > 0.0).any()):
        flip = flip & (scores.confidence >= confidence_gate(gate, scores.piece_class))
    new_piece_class = torch.where(flip, scores.predicted, scores.piece_class)
    new_labels = pieces_to_voxels(new_piece_class, scores.pieces.ids).unsqueeze(1)
    changed = pieces_to_voxels(flip, scores.pieces.ids).unsqueeze(1)
    return new_labels, changed


def refine_labels_by_superpixel(
    probs: torch.Tensor,
    labels: torch.Tensor,
    superpixels: torch.Tensor | None,
    keep_ratio: float | Sequence[float] | torch.Tensor,
    num_superpixels: int | torch.Tensor | None = None,
    pool: str = "superpixel",
    per_sample: bool = True,
    eps: float = 1e-8,
    min_confidence: float | Sequence[float] = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eqs. 6-8 of SP-guided: relabel the least reliable pieces of each noisy class to the pooled prediction.

    Args:
        probs: mean of the two networks' softmax probabilities (eval mode), ``(B, C, *S)``.
        labels: current noisy labels ``(B, 1, *S)`` in ``[0, C)``.
        superpixels: ids ``(B, 1, *S)``; ``None`` = voxel-level ablation (each voxel a piece).
        keep_ratio: current ``R_c`` per class ``(C,)``; at most ``(1 - R_c) N_c`` voxels of class c are relabelled.
        num_superpixels: K, to avoid a host sync.
        pool: ``"superpixel"`` (Eq. 7: pool over the whole superpixel) or ``"piece"``.
        per_sample: budget per batch element (one case per element) or pooled over the batch (the authors' form
            when the batch holds the whole training set; :func:`pooled_refinement_masks` for cases refined one at
            a time).
        eps: clamp inside the log.
        min_confidence: see :func:`apply_refinement` (one gate, or one per noisy class).

    Returns:
        ``(new_labels, changed)``: int64 ``(B, 1, *S)`` and bool ``(B, 1, *S)`` (True where the label changed).

    Raises:
        ValueError: shape mismatch, unknown ``pool`` or ratios outside [0, 1].
    """
    with torch.no_grad():
        scores = piece_scores(probs, labels, superpixels, num_superpixels, pool, eps)
        unreliable = refinement_piece_mask(scores.loss, scores.piece_class, scores.piece_size, keep_ratio, per_sample)
        return apply_refinement(scores, unreliable, min_confidence)


def update_keep_ratio(
    keep_ratio: float | Sequence[float] | torch.Tensor,
    gamma: float = 1.1,
    max_keep_ratio: float | Sequence[float] | torch.Tensor = 0.95,
) -> torch.Tensor:
    """After a refinement: ``R <- max(R, min(gamma * R, R_max))`` per class (SP-guided Sec. 2.2, gamma = 1.1).

    The outer ``max`` (reference code) keeps R from decreasing when it already exceeds ``R_max``. The reference
    configs use ``R_max`` = 0.9 for the foreground and 0.95 for the background.

    Returns:
        float64 tensor of ``keep_ratio``'s shape, on the CPU.

    Raises:
        ValueError: ratios outside [0, 1] or ``gamma < 1``.
    """
    if not gamma >= 1.0:
        raise ValueError(f"gamma must be >= 1, got {gamma}.")
    ratios = as_class_ratios(keep_ratio, "keep_ratio")
    ceiling = as_class_ratios(max_keep_ratio, "max_keep_ratio")
    return torch.maximum(ratios, torch.minimum(ratios * gamma, ceiling))
