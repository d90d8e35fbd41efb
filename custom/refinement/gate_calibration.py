"""Choosing SP-guided's refinement gates on the HQ cases (*decisions*, not in the paper).

Two gates, both learnt from cases whose labels are known to be clean:

- the *confidence gate* (:func:`calibrate_min_confidence`): which pieces of a refined case may flip;
- the *case gate* (:func:`label_agreement`, :func:`case_gate_threshold`): which LQ cases are refined at all.

Eq. 8 relabels a taken piece to the networks' pooled prediction; :func:`apply_refinement`'s ``min_confidence``
gate keeps that to pieces where the prediction's pooled probability reaches a threshold. A fixed threshold is a
guess: the confidence at which the networks' errors stop being common depends on the run. The HQ cases answer it
without any clean label of an LQ case: their labels are clean, so every relabelling a dry run would make on them is
an error, and an uncorrupted LQ case, trained on the same way, suffers the same ones. The calibrated gate is the
smallest threshold (on a grid) at and above which no HQ case's dry-run labels lose more than ``tolerance``
foreground Dice against its own labels.

The case gate answers the per-case part: an uncorrupted LQ case is trained on as an HQ case is, so the networks'
prediction agrees with its labels about as well as with an HQ case's, while a corrupted case's labels disagree with
it by the corruption. A case is refined only when its agreement (foreground Dice between its labels and the
prediction) lies below the least-agreeing HQ case's by more than a margin; the others keep their labels and so lose
nothing to the networks' errors.

The Dice is computed in piece space (each piece's class and voxel count), so a dry run over the whole grid costs a
few tensor reductions per HQ case, no voxel maps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from custom.refinement.superpixel_refinement import PieceScores, check_min_confidence

__all__ = ["GateCalibration", "piece_label_dice", "calibrate_min_confidence", "label_agreement", "case_gate_threshold"]


class GateCalibration(NamedTuple):
    """Result of :func:`calibrate_min_confidence`.

    Attributes:
        min_confidence: the gate to apply (at least the given floor).
        worst_dice_loss: the largest ``1 - Dice`` over the HQ cases at that gate.
        dice: per HQ case, the Dice of its dry-run labels against its own labels at that gate.
    """

    min_confidence: float
    worst_dice_loss: float
    dice: list[float]


def piece_label_dice(scores: PieceScores, flip: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
    """Foreground Dice between a case's labels and the labels after flipping ``flip`` pieces to their prediction.

    The mean over the foreground classes present in either map (as :func:`custom.noise.quality.foreground_dice`),
    1.0 when neither has foreground.

    Args:
        scores: :func:`custom.refinement.superpixel_refinement.piece_scores` of one case (``B = 1``) or a batch.
        flip: bool ``(B, P)``, the pieces relabelled to ``scores.predicted``.
        num_classes: C, when known (saves reading the largest class from the device on every call).

    Returns:
        float64 ``(B,)``.
    """
    if flip.shape != scores.piece_class.shape:
        raise ValueError(f"flip {tuple(flip.shape)} must match the pieces {tuple(scores.piece_class.shape)}.")
    old = scores.piece_class
    new = torch.where(flip, scores.predicted, old)
    size = scores.piece_size.to(torch.float64)
    if num_classes is None:
        num_classes = _class_count(scores)
    dice_sum = torch.zeros(old.shape[0], dtype=torch.float64, device=old.device)
    present = torch.zeros_like(dice_sum)
    for c in range(1, num_classes):
        in_old, in_new = old == c, new == c
        denominator = (size * in_old).sum(1) + (size * in_new).sum(1)
        overlap = (size * (in_old & in_new)).sum(1)
        has = denominator > 0
        dice_sum += torch.where(has, 2.0 * overlap / denominator.clamp_min(1.0), torch.zeros_like(overlap))
        present += has.to(torch.float64)
    return torch.where(present > 0, dice_sum / present.clamp_min(1.0), torch.ones_like(dice_sum))


def _class_count(scores: PieceScores) -> int:
    """1 + the largest class among the labels and the predictions (one host read)."""
    if not scores.piece_class.numel():
        return 1
    return int(torch.maximum(scores.piece_class.max(), scores.predicted.max())) + 1


def calibrate_min_confidence(
    hq_scores: Sequence[PieceScores],
    hq_unreliable: Sequence[torch.Tensor],
    tolerance: float = 0.02,
    floor: float = 0.0,
    step: float = 0.01,
) -> GateCalibration:
    """The smallest gate on ``floor, floor + step, ..., 1`` at and above which every HQ case keeps its labels'
    foreground Dice within ``tolerance`` (module docstring).

    Args:
        hq_scores: :func:`piece_scores` of the HQ cases (clean labels), one per case (``B = 1``).
        hq_unreliable: per HQ case, the bool ``(1, P)`` pieces Eq. 6 takes when it is scored among the refined cases
            (e.g. the HQ part of :func:`pooled_refinement_masks` over LQ and HQ cases together).
        tolerance: the largest Dice an HQ case may lose in the dry run (``[0, 1]``).
        floor: the lowest gate considered (the configured ``min_confidence``).
        step: grid spacing (``(0, 1]``).

    Returns:
        :class:`GateCalibration`; with no HQ case, the floor and no Dice.

    Raises:
        ValueError: mismatched inputs, or ``tolerance``, ``floor`` or ``step`` out of range.
    """
    check_min_confidence(floor, "floor")
    if not 0.0 <= float(tolerance) <= 1.0:
        raise ValueError(f"tolerance must be in [0, 1], got {tolerance}.")
    if not 0.0 < float(step) <= 1.0:
        raise ValueError(f"step must be in (0, 1], got {step}.")
    if len(hq_scores) != len(hq_unreliable):
        raise ValueError(f"{len(hq_scores)} HQ cases scored but {len(hq_unreliable)} masks given.")
    if not hq_scores:
        return GateCalibration(float(floor), 0.0, [])
    count = int(round((1.0 - float(floor)) / float(step)))
    grid = [min(1.0, float(floor) + k * float(step)) for k in range(count + 1)]
    if grid[-1] < 1.0:
        grid.append(1.0)
    # rows: grid values; columns: HQ cases
    table = []
    for s, taken in zip(hq_scores, hq_unreliable):
        candidates = taken.to(s.predicted.device) & (s.predicted != s.piece_class)
        num_classes = _class_count(s)  # once per case, not per grid value
        column = [piece_label_dice(s, candidates & (s.confidence >= gate), num_classes)[0] for gate in grid]
        table.append(torch.stack(column))
    dice = torch.stack(table, dim=1).cpu()  # (G, cases)
    worst_loss = (1.0 - dice).max(dim=1).values
    # smallest gate whose loss and every larger gate's loss are within tolerance (robust to a non-monotone step)
    within = (worst_loss <= float(tolerance) + 1e-12).tolist()
    chosen = len(grid) - 1
    for k in range(len(grid) - 1, -1, -1):
        if not within[k]:
            break
        chosen = k
    return GateCalibration(grid[chosen], float(worst_loss[chosen]), [round(float(d), 6) for d in dice[chosen]])


def label_agreement(scores: PieceScores) -> torch.Tensor:
    """Foreground Dice between a case's labels and the networks' prediction, in piece space (the case gate's score).

    Args:
        scores: :func:`custom.refinement.superpixel_refinement.piece_scores` of one case or a batch (``B``).

    Returns:
        float64 ``(B,)``; 1 = the prediction equals the labels on every piece.
    """
    return piece_label_dice(scores, scores.predicted != scores.piece_class)


def case_gate_threshold(hq_agreement: Sequence[float], margin: float = 0.02) -> float:
    """The agreement below which an LQ case is refined: the least-agreeing HQ case's minus ``margin``.

    Args:
        hq_agreement: :func:`label_agreement` of each HQ case (at least one).
        margin: how far below every HQ case an LQ case must lie (``[0, 1]``).

    Raises:
        ValueError: no HQ case, or ``margin`` out of range.
    """
    if not 0.0 <= float(margin) <= 1.0:
        raise ValueError(f"margin must be in [0, 1], got {margin}.")
    if len(hq_agreement) == 0:
        raise ValueError("the case gate needs the agreement of at least one HQ case.")
    return min(float(a) for a in hq_agreement) - float(margin)
