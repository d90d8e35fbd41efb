"""Replaying SP-guided's label refinement offline, to compare refinement rules on the same networks.

A refinement round is one decision made with the networks of one epoch; its outcome (which cases are refined,
which pieces flip) depends on the rules (confidence gate, case gate, budget) and on those networks alone. With a
checkpoint of the networks at the refinement epoch, every training case can be scored once
(:func:`load_replay_case`: the same :func:`custom.refinement.volume_refinement.score_case` the training stage uses)
and any number of rules replayed on the scores in piece space (:func:`replay_refinement`), each a few tensor
reductions. Where the datalist has the clean labels (simulated noise), each LQ case's foreground Dice against them
before and after is reported: the diagnosis of which rule damages which case, without training a run per rule.

This is a diagnostic: a rule chosen here is chosen on training-label truth that a real dataset does not have, so a
default still has to be decided on the validation split.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from custom.noise.quality import foreground_dice
from custom.refinement.gate_calibration import case_gate_threshold, label_agreement
from custom.refinement.superpixel_refinement import (
    PieceScores,
    apply_refinement,
    check_min_confidence,
    pooled_refinement_masks,
    refinement_piece_mask,
)
from custom.refinement.volume_refinement import score_case
from custom.selection.superpixel import pieces_to_voxels

__all__ = ["ReplayCase", "CASE_GATES", "BUDGETS", "load_replay_case", "replay_refinement", "summarize_replay"]

CASE_GATES = ("none", "hq_agreement")
BUDGETS = ("pooled", "per_case")


class ReplayCase(NamedTuple):
    """One training case scored for a replay.

    Attributes:
        case_id: the datalist's ``case_id``.
        quality: ``"hq"`` or ``"lq"``.
        scores: :func:`custom.refinement.superpixel_refinement.piece_scores` of the case (batch size 1).
        clean: its clean labels ``(1, 1, *S)`` int64 in the scored geometry, or ``None`` (no ``label_clean``).
    """

    case_id: str
    quality: str
    scores: PieceScores
    clean: torch.Tensor | None


def load_replay_case(
    networks: Sequence[nn.Module],
    item: Mapping[str, Any],
    load_transform: Callable[[dict], dict],
    use_superpixels: bool = True,
    superpixel_key: str = "superpixel",
    **score_options: Any,
) -> ReplayCase:
    """Score one training case with the networks (their mean softmax, as the refinement stage does) and load its
    clean labels through the same transform.

    Args:
        networks, item, load_transform, use_superpixels, superpixel_key: as for
            :func:`custom.refinement.volume_refinement.score_case`; ``item`` may hold ``label_clean``.
        score_options: ``inferer``, ``device`` or ``pool`` of ``score_case``.
    """
    scored = score_case(networks, item, load_transform, use_superpixels=use_superpixels,
                        superpixel_key=superpixel_key, **score_options)
    clean = None
    if item.get("label_clean"):
        keys = ["image", "label"] + ([superpixel_key] if use_superpixels else [])
        data = load_transform({**{k: item[k] for k in keys}, "label": item["label_clean"]})
        clean = torch.as_tensor(data["label"]).as_subclass(torch.Tensor).round().long().unsqueeze(0)
    case_id = str(item.get("case_id") or item["label"])
    return ReplayCase(case_id, str(item.get("quality", "lq")), scored.scores, clean)


def replay_refinement(
    cases: Sequence[ReplayCase],
    keep_ratio: float | Sequence[float] | torch.Tensor,
    min_confidence: float | Sequence[float] = 0.8,
    case_gate: str = "hq_agreement",
    case_gate_margin: float = 0.02,
    budget: str = "pooled",
) -> list[dict[str, Any]]:
    """One refinement round on scored cases under one rule set; the LQ cases' outcome, one row each.

    The rules are the refinement stage's (``custom.handlers.superpixel_stage``): the case gate picks the LQ cases
    to refine, Eq. 6 takes the largest-loss pieces within ``(1 - R_c) N_c`` (pooled over the refined cases or per
    case), and Eq. 8 flips the taken pieces whose pooled prediction differs from their class and reaches
    ``min_confidence``.

    Args:
        cases: :func:`load_replay_case` of the training cases, HQ ones included (the case gate reads them).
        keep_ratio: ``R_c`` per class ``(C,)`` at the round (the trainer's target keep ratio).
        min_confidence: the confidence gate in ``[0, 1]``, or one per noisy class ``(C,)``.
        case_gate: ``"none"`` or ``"hq_agreement"``.
        case_gate_margin: the case gate's margin.
        budget: ``"pooled"`` or ``"per_case"``.

    Returns:
        Per LQ case: ``case_id``, ``agreement``, ``refined``, ``changed_fraction`` (in the scored geometry) and,
        with clean labels, ``dice_before`` / ``dice_after`` (foreground Dice against them) and ``uncorrupted``.

    Raises:
        ValueError: an unknown ``case_gate`` or ``budget``, a gate outside [0, 1], or ``"hq_agreement"`` without
            an HQ case.
    """
    if case_gate not in CASE_GATES:
        raise ValueError(f"case_gate must be one of {CASE_GATES}, got {case_gate!r}.")
    if budget not in BUDGETS:
        raise ValueError(f"budget must be one of {BUDGETS}, got {budget!r}.")
    check_min_confidence(min_confidence)
    lq = [c for c in cases if c.quality != "hq"]
    agreement = {c.case_id: float(label_agreement(c.scores)[0]) for c in cases}
    if case_gate == "hq_agreement":
        hq = [agreement[c.case_id] for c in cases if c.quality == "hq"]
        if not hq:
            raise ValueError("case_gate='hq_agreement' needs at least one HQ case among the cases.")
        threshold = case_gate_threshold(hq, case_gate_margin)
        active = [c for c in lq if agreement[c.case_id] < threshold]
    else:
        active = list(lq)
    if budget == "pooled":
        masks = dict(zip([c.case_id for c in active], pooled_refinement_masks([c.scores for c in active], keep_ratio)))
    else:
        masks = {c.case_id: refinement_piece_mask(c.scores.loss, c.scores.piece_class, c.scores.piece_size,
                                                  keep_ratio, per_sample=True) for c in active}
    rows = []
    for case in lq:
        mask = masks.get(case.case_id)
        kept = torch.zeros_like(case.scores.loss, dtype=torch.bool)  # a case the case gate keeps: no piece taken
        labels, changed = apply_refinement(case.scores, kept if mask is None else mask.to(kept.device), min_confidence)
        row: dict[str, Any] = {
            "case_id": case.case_id, "agreement": round(agreement[case.case_id], 6), "refined": mask is not None,
            "changed_fraction": round(float(changed.float().mean()), 6),
        }
        if case.clean is not None:
            original = pieces_to_voxels(case.scores.piece_class, case.scores.pieces.ids).reshape(-1).cpu().numpy()
            clean = case.clean.reshape(-1).cpu().numpy()
            row.update({
                "dice_before": round(foreground_dice(original, clean), 6),
                "dice_after": round(foreground_dice(labels.reshape(-1).cpu().numpy(), clean), 6),
                "uncorrupted": bool(np.array_equal(original, clean)),
            })
        rows.append(row)
    return rows


def summarize_replay(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The LQ cases' mean Dice before and after, the worst loss of an uncorrupted case, and how many were refined
    (Dice entries ``None`` without clean labels)."""
    with_clean = [r for r in rows if "dice_before" in r]
    uncorrupted = [r["dice_before"] - r["dice_after"] for r in with_clean if r["uncorrupted"]]
    mean = (lambda key: round(float(np.mean([r[key] for r in with_clean])), 6) if with_clean else None)
    return {
        "cases": len(rows), "refined": sum(bool(r["refined"]) for r in rows),
        "mean_dice_before": mean("dice_before"), "mean_dice_after": mean("dice_after"),
        "uncorrupted": len(uncorrupted),
        "worst_uncorrupted_loss": round(max([0.0, *uncorrupted]), 6) if with_clean else None,
    }
