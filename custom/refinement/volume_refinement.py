"""One whole training volume through SP-guided's refinement (Eqs. 6-8), for :mod:`custom.handlers.superpixel_stage`.

:func:`score_case` runs both networks over the volume (sliding window, eval mode) and scores its pieces;
:func:`finish_case` applies Eq. 8 with a chosen mask and maps the labels back to the source file's geometry;
:func:`refine_case` does both with the case's own budget.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from custom.io import DataError, load_nifti
from custom.refinement.label_audit import to_source_geometry
from custom.refinement.superpixel_refinement import (
    PieceScores,
    apply_refinement,
    piece_scores,
    refinement_piece_mask,
)

__all__ = [
    "averaged_probabilities",
    "RefinedCase",
    "ScoredCase",
    "score_case",
    "case_refinement_mask",
    "finish_case",
    "refine_case",
]


def averaged_probabilities(
    networks: Sequence[nn.Module], image: torch.Tensor, inferer: Callable[..., torch.Tensor] | None = None
) -> torch.Tensor:
    """``(1/n) sum_i softmax(f_i(image))`` with every network in eval mode and no gradient (Eq. 7 input).

    Args:
        networks: f1, f2 (, ...); their train/eval modes are restored afterwards.
        image: ``(B, C_in, *S)``.
        inferer: e.g. a ``SlidingWindowInferer`` called as ``inferer(image, predictor)``; ``None`` = one forward.
            Averaging softmaxes inside the window predictor is exact: the window fusion is linear.

    Returns:
        float32 probabilities ``(B, C, *S)``.
    """
    if not networks:
        raise ValueError("at least one network is needed.")
    modes = [net.training for net in networks]

    def predictor(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.softmax(net(x).float(), dim=1) for net in networks]).mean(dim=0)

    try:
        for net in networks:
            net.eval()
        with torch.no_grad():
            probs = predictor(image) if inferer is None else inferer(image, predictor)
    finally:
        for net, mode in zip(networks, modes):
            net.train(mode)
    return probs.as_tensor() if hasattr(probs, "as_tensor") else probs


class RefinedCase(NamedTuple):
    """One refined training case, in the geometry of its source label file.

    Attributes:
        label: refined labels ``(H, W, D)`` int64.
        affine: the source label's affine.
        header: the source label's NIfTI header.
        changed_fraction: fraction of voxels whose label changed.
    """

    label: np.ndarray
    affine: np.ndarray
    header: Any
    changed_fraction: float


class ScoredCase(NamedTuple):
    """A training case loaded and scored for refinement, before any piece is chosen (:func:`score_case`).

    Attributes:
        item: its datalist item.
        label_data: the label as loaded by the evaluation transform (its metadata maps the result back).
        scores: per-piece loss, class, size and prediction (:func:`piece_scores`).
    """

    item: Mapping[str, Any]
    label_data: Any
    scores: PieceScores


def score_case(
    networks: Sequence[nn.Module],
    item: Mapping[str, Any],
    load_transform: Callable[[dict], dict],
    inferer: Callable[..., torch.Tensor] | None = None,
    device: torch.device | str | None = None,
    use_superpixels: bool = True,
    pool: str = "superpixel",
    superpixel_key: str = "superpixel",
) -> ScoredCase:
    """Steps 1-2 of SP-guided's refinement on one whole training volume: the two networks' mean probabilities,
    pooled per piece, and each piece's loss against its noisy class.

    Args: see :func:`refine_case`.

    Raises:
        custom.io.DataError: a missing supervoxel map.
    """
    from custom.transforms.supervoxel import relabel_contiguous

    keys = ["image", "label"] + ([superpixel_key] if use_superpixels else [])
    if use_superpixels and not item.get(superpixel_key):
        raise DataError(item.get("image"), f"no {superpixel_key!r} map for this case: run ensure_supervoxels first")
    data = load_transform({key: item[key] for key in keys})
    if device is None:
        device = next(iter(networks[0].parameters())).device
    image = torch.as_tensor(data["image"]).unsqueeze(0).to(device)
    probs = averaged_probabilities(networks, image, inferer)
    labels = torch.as_tensor(data["label"]).as_subclass(torch.Tensor).round().long().unsqueeze(0).to(probs.device)
    superpixels, count = None, None
    if use_superpixels:
        ids, count = relabel_contiguous(torch.as_tensor(data[superpixel_key]).as_subclass(torch.Tensor))
        superpixels = ids.unsqueeze(0).to(probs.device)
    scores = piece_scores(probs, labels, superpixels, num_superpixels=count, pool=pool)
    return ScoredCase(item, data["label"], scores)


def case_refinement_mask(scores: PieceScores, keep_ratio: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Eq. 6 with the budget ``(1 - R_c) N_c`` of each case alone: bool ``(B, P)``, True = unreliable piece."""
    return refinement_piece_mask(scores.loss, scores.piece_class, scores.piece_size, keep_ratio, per_sample=True)


def finish_case(
    case: ScoredCase,
    unreliable: torch.Tensor,
    load_transform: Callable[[dict], dict],
    min_confidence: float | Sequence[float] = 0.0,
) -> RefinedCase:
    """Eq. 8 on a scored case (flips gated by ``min_confidence``, :func:`apply_refinement`) and the result in the
    geometry of its source label file.

    Raises:
        custom.io.DataError: a geometry that cannot be mapped back.
    """
    refined, _ = apply_refinement(case.scores, unreliable, min_confidence)
    item = case.item
    source, affine, header = load_nifti(item["label"])
    refined_source = to_source_geometry(refined[0], case.label_data, load_transform)
    if refined_source.shape != source.shape:
        raise DataError(
            item["label"], f"refined label shape {refined_source.shape} cannot be mapped back to {source.shape}"
        )
    changed_fraction = float(np.mean(refined_source != np.rint(source)))
    return RefinedCase(refined_source, affine, header, changed_fraction)


def refine_case(
    networks: Sequence[nn.Module],
    item: Mapping[str, Any],
    load_transform: Callable[[dict], dict],
    keep_ratio: Sequence[float] | torch.Tensor,
    inferer: Callable[..., torch.Tensor] | None = None,
    device: torch.device | str | None = None,
    use_superpixels: bool = True,
    pool: str = "superpixel",
    superpixel_key: str = "superpixel",
    min_confidence: float | Sequence[float] = 0.0,
) -> RefinedCase:
    """Eqs. 6-8 of SP-guided on one whole training volume, with the budget of that case alone.

    Args:
        networks: the trained networks (f1, f2).
        item: datalist item with absolute ``image``, ``label`` (current labels) and, with superpixels,
            ``superpixel`` paths.
        load_transform: the evaluation load transform (e.g. ``@transforms::eval``: load, channel first, RAS,
            spacing with nearest for label/superpixel, z-score); its spatial steps are inverted for writing.
        keep_ratio: current ``R_c`` ``(C,)``: at most ``(1 - R_c)`` of the class-c voxels are relabelled.
        inferer: sliding-window inferer over the volume (``None``: one forward pass).
        device: where the networks run (default: the first network's parameters' device).
        use_superpixels: False = voxel pieces (ablation).
        pool: ``"superpixel"`` or ``"piece"`` (see ``refine_labels_by_superpixel``).
        superpixel_key: item key of the supervoxel map.
        min_confidence: a piece flips only where the pooled probability of its prediction reaches it.

    Returns:
        :class:`RefinedCase` in the source label's geometry.

    Raises:
        custom.io.DataError: a missing supervoxel map, or a geometry that cannot be mapped back.
    """
    case = score_case(networks, item, load_transform, inferer, device, use_superpixels, pool, superpixel_key)
    return finish_case(case, case_refinement_mask(case.scores, keep_ratio), load_transform, min_confidence)
