"""Superpixel pooling and the superpixel selection score of SP-guided (Eqs. 1-2), methods.md §2.1-2.3.

Everything is vectorised with ``scatter_add``/``gather`` over the whole batch (no loop over superpixels, voxels,
classes or batch elements) and follows the inputs' device; nothing here calls ``.item()`` except where a count
must be inferred because the caller did not pass it (documented per function).

Pieces *(code)*: the reference implementation scores, for every superpixel k, the voxels of each noisy class c
separately, so the sample unit is the *piece* (k, c) = voxels with superpixel id k AND noisy label c. Here piece
ids follow a fixed layout ``p = k * C + c`` (``P = K * C`` pieces per batch element, many of them empty), which
keeps every shape static and avoids ``torch.unique``. The voxel-level ablation uses :func:`voxel_pieces`: every
voxel is its own piece, and the same selection functions apply unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from custom.selection.small_loss import small_loss_mask

__all__ = [
    "POOLING_MODES",
    "Pieces",
    "PieceSelection",
    "count_superpixels",
    "resolve_num_superpixels",
    "superpixel_sizes",
    "superpixel_mean",
    "superpixel_soft_labels",
    "piece_ids",
    "voxel_pieces",
    "pieces_to_voxels",
    "pooled_piece_probabilities",
    "superpixel_joint_score",
    "piece_joint_scores",
    "superpixel_selection_mask",
]

POOLING_MODES = ("superpixel", "piece")


class Pieces(NamedTuple):
    """A partition of every batch element into pieces.

    Attributes:
        ids: piece id of every voxel, int64 ``(B, 1, *S)`` in ``[0, P)``.
        piece_class: noisy class of each piece, int64 ``(B, P)``.
        piece_size: voxels per piece, int64 ``(B, P)`` (0 for an empty piece).
    """

    ids: torch.Tensor
    piece_class: torch.Tensor
    piece_size: torch.Tensor


class PieceSelection(NamedTuple):
    """Result of :func:`superpixel_selection_mask`.

    Attributes:
        mask: bool ``(B, *S)``, True = voxel selected for training.
        piece_mask: bool ``(B, P)``.
        piece_scores: Eq. 2 score per piece ``(B, P)`` (meaningless for empty pieces).
        pieces: the :class:`Pieces` used.
    """

    mask: torch.Tensor
    piece_mask: torch.Tensor
    piece_scores: torch.Tensor
    pieces: Pieces


def _check_id_map(ids: torch.Tensor, name: str) -> None:
    if ids.dim() < 3 or ids.shape[1] != 1:
        raise ValueError(f"{name} must be (B, 1, *S), got shape {tuple(ids.shape)}.")
    # the value check needs a host sync, so it only runs on CPU tensors (tests, data loading)
    if ids.is_floating_point() and ids.device.type == "cpu" and not torch.equal(ids, ids.round()):
        raise ValueError(f"{name} must hold integer values.")


def count_superpixels(superpixels: torch.Tensor) -> int:
    """``K = max id + 1`` over the batch. Costs one host sync: pass ``num_superpixels`` to the functions instead
    when it is known (e.g. from :class:`custom.transforms.supervoxel.RelabelContiguousd`)."""
    return int(superpixels.max()) + 1 if superpixels.numel() else 0


def resolve_num_superpixels(superpixels: torch.Tensor, num_superpixels: int | torch.Tensor | None) -> int:
    """K as an int: ``num_superpixels`` if given (the max of per-batch counts), else inferred (host sync)."""
    if num_superpixels is None:
        if superpixels.numel() and int(superpixels.min()) < 0:
            raise ValueError("superpixel ids must be non-negative.")
        return count_superpixels(superpixels)
    if isinstance(num_superpixels, torch.Tensor):
        # per-batch counts: the layout needs one K for the batch, the largest
        num_superpixels = int(num_superpixels.max())
    if int(num_superpixels) < 1:
        raise ValueError(f"num_superpixels must be >= 1, got {num_superpixels}.")
    return int(num_superpixels)


def _flat_ids(ids: torch.Tensor) -> torch.Tensor:
    """``(B, 1, *S)`` -> int64 ``(B, V)``."""
    return ids.reshape(ids.shape[0], -1).long()


def _ones_like(index: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A broadcast 1 of ``index``'s shape (no voxel-sized allocation) for ``scatter_add_`` counts."""
    return torch.ones((), dtype=dtype or index.dtype, device=index.device).expand(index.shape)


def _scatter_sums(values: torch.Tensor, flat_ids: torch.Tensor, num: int) -> torch.Tensor:
    """Per-id sums ``(B, C, num)`` of ``values`` ``(B, C, *S)`` over int64 ids ``(B, V)``, in at least float32."""
    batch, channels = values.shape[:2]
    acc_dtype = torch.promote_types(values.dtype, torch.float32)
    sums = torch.zeros(batch, channels, num, dtype=acc_dtype, device=values.device)
    flat_values = values.reshape(batch, channels, -1).to(acc_dtype)  # no copy for float32 / float64
    sums.scatter_add_(2, flat_ids.unsqueeze(1).expand(-1, channels, -1), flat_values)
    return sums


def _divide_by_counts(sums: torch.Tensor, counts: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``sums (B, C, K) / counts (B, K)`` with empty ids giving 0, cast to ``dtype``."""
    return (sums / counts.to(sums.dtype).clamp_min(1.0).unsqueeze(1)).to(dtype)


def superpixel_sizes(superpixels: torch.Tensor, num_superpixels: int | None = None) -> torch.Tensor:
    """Voxels per superpixel, int64 ``(B, K)`` from ids ``(B, 1, *S)`` in ``[0, K)``."""
    _check_id_map(superpixels, "superpixels")
    num = resolve_num_superpixels(superpixels, num_superpixels)
    flat = _flat_ids(superpixels)
    return torch.zeros(flat.shape[0], num, dtype=torch.long, device=flat.device).scatter_add_(1, flat, _ones_like(flat))


def superpixel_mean(
    values: torch.Tensor, superpixels: torch.Tensor, num_superpixels: int | torch.Tensor | None = None
) -> torch.Tensor:
    """Eq. 1 of SP-guided (left): mean of ``values`` over the voxels of each superpixel.

    Args:
        values: ``(B, C, *S)``, typically softmax probabilities (any real tensor works).
        superpixels: ids ``(B, 1, *S)`` in ``[0, K)`` (int, or float holding integers).
        num_superpixels: K; an int, or per-batch counts ``(B,)`` (their max is used, one sync); ``None`` infers
            ``max id + 1`` (one sync). Ids must be below K.

    Returns:
        ``(B, C, K)`` in ``values``' dtype (accumulated in at least float32); 0 for an empty superpixel.

    Raises:
        ValueError: shape mismatch or negative/fractional ids.
    """
    _check_id_map(superpixels, "superpixels")
    if values.dim() != superpixels.dim() or values.shape[0] != superpixels.shape[0] or (
        values.shape[2:] != superpixels.shape[2:]
    ):
        raise ValueError(f"values {tuple(values.shape)} and superpixels {tuple(superpixels.shape)} do not match.")
    num = resolve_num_superpixels(superpixels, num_superpixels)
    flat = _flat_ids(superpixels)
    sums = _scatter_sums(values, flat, num)
    counts = torch.zeros(flat.shape[0], num, dtype=sums.dtype, device=values.device)
    counts.scatter_add_(1, flat, _ones_like(flat, sums.dtype))
    return _divide_by_counts(sums, counts, values.dtype)


def _check_labels_and_superpixels(labels: torch.Tensor, superpixels: torch.Tensor, num_classes: int) -> None:
    """Shared argument checks of the (label, superpixel) functions; raises ``ValueError``."""
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
    _check_id_map(labels, "labels")
    _check_id_map(superpixels, "superpixels")
    if labels.shape != superpixels.shape:
        raise ValueError(f"labels {tuple(labels.shape)} and superpixels {tuple(superpixels.shape)} must match.")


def superpixel_soft_labels(
    labels: torch.Tensor,
    superpixels: torch.Tensor,
    num_classes: int,
    num_superpixels: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """Eq. 1 of SP-guided (right): ``Y_s(c, k)`` = fraction of the voxels of superpixel k labelled c.

    Args:
        labels: ``(B, 1, *S)`` integer labels in ``[0, C)``.
        superpixels: ids ``(B, 1, *S)``.
        num_classes: C.
        num_superpixels: K (see :func:`superpixel_mean`).

    Returns:
        float32 ``(B, C, K)``; columns sum to 1 (0 for an empty superpixel).
    """
    _check_labels_and_superpixels(labels, superpixels, num_classes)
    num = resolve_num_superpixels(superpixels, num_superpixels)
    classes = int(num_classes)
    joint = _flat_ids(superpixels) * classes + _flat_ids(labels)
    counts = torch.zeros(joint.shape[0], num * classes, dtype=torch.float32, device=labels.device)
    counts.scatter_add_(1, joint, _ones_like(joint, torch.float32))
    counts = counts.view(-1, num, classes)
    return (counts / counts.sum(dim=2, keepdim=True).clamp_min(1.0)).transpose(1, 2)


def piece_ids(
    superpixels: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    num_superpixels: int | torch.Tensor | None = None,
) -> Pieces:
    """The (superpixel, noisy class) pieces *(code)*: piece ``p = k * C + c``, ``P = K * C``.

    Args:
        superpixels: ids ``(B, 1, *S)`` in ``[0, K)``.
        labels: noisy labels ``(B, 1, *S)`` in ``[0, C)``.
        num_classes: C.
        num_superpixels: K (see :func:`superpixel_mean`).

    Returns:
        :class:`Pieces` with ``ids (B, 1, *S)``, ``piece_class (B, P)`` (= ``p % C``), ``piece_size (B, P)``.
    """
    _check_labels_and_superpixels(labels, superpixels, num_classes)
    num = resolve_num_superpixels(superpixels, num_superpixels)
    classes = int(num_classes)
    # one new int64 map, built in place (no copy of long inputs is modified)
    ids = superpixels * classes if superpixels.dtype == torch.long else superpixels.long().mul_(classes)
    ids.add_(labels.long())
    flat = _flat_ids(ids)
    num_pieces = num * classes
    sizes = torch.zeros(flat.shape[0], num_pieces, dtype=torch.long, device=flat.device)
    sizes.scatter_add_(1, flat, _ones_like(flat))
    piece_class = (torch.arange(num_pieces, device=flat.device) % classes).expand(flat.shape[0], -1)
    return Pieces(ids.as_subclass(torch.Tensor), piece_class, sizes)


def voxel_pieces(labels: torch.Tensor) -> Pieces:
    """Every voxel its own piece (the "without superpixels" ablation and the voxel-level baselines).

    Args:
        labels: noisy labels ``(B, 1, *S)``.

    Returns:
        :class:`Pieces` with ``P = V`` (voxels per batch element), ids ``0..V-1`` in raster order,
        ``piece_class`` = the flattened labels and ``piece_size`` = 1.
    """
    _check_id_map(labels, "labels")
    batch = labels.shape[0]
    flat = _flat_ids(labels)
    voxels = flat.shape[1]
    ids = torch.arange(voxels, device=labels.device).expand(batch, -1).reshape(labels.shape)
    return Pieces(ids, flat, torch.ones_like(flat))


def pieces_to_voxels(piece_values: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Paint per-piece (or per-superpixel) values back onto the voxels.

    Args:
        piece_values: ``(B, P)`` or ``(B, C, P)``.
        ids: ``(B, 1, *S)`` in ``[0, P)``.

    Returns:
        ``(B, *S)`` or ``(B, C, *S)`` respectively.
    """
    _check_id_map(ids, "ids")
    flat = _flat_ids(ids)
    spatial = ids.shape[2:]
    if piece_values.dim() == 2:
        return piece_values.gather(1, flat).reshape(ids.shape[:1] + spatial)
    if piece_values.dim() == 3:
        channels = piece_values.shape[1]
        out = piece_values.gather(2, flat.unsqueeze(1).expand(-1, channels, -1))
        return out.reshape(ids.shape[:1] + (channels,) + spatial)
    raise ValueError(f"piece_values must be (B, P) or (B, C, P), got shape {tuple(piece_values.shape)}.")


def pooled_piece_probabilities(
    probs: torch.Tensor,
    pieces: Pieces,
    superpixels: torch.Tensor | None = None,
    num_superpixels: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """Probabilities pooled per piece: over the piece itself, or over its whole superpixel.

    With ``superpixels`` given (pieces from :func:`piece_ids`), every piece gets the mean over its superpixel k
    (all noisy classes together): the reference code's ``super_pixel_smoothing``, then scored against the piece's
    own noisy class *(code)*. Without, the mean is over the piece's voxels only.

    Args:
        probs: probabilities ``(B, C, *S)``.
        pieces: from :func:`piece_ids` or :func:`voxel_pieces`.
        superpixels: ids ``(B, 1, *S)`` to pool over whole superpixels (the map ``pieces`` were built from: the
            voxel counts are taken from ``pieces.piece_size``), or ``None``.
        num_superpixels: K used to build ``pieces`` (inferred as ``P // C`` when ``None``).

    Returns:
        ``(B, C, P)``.
    """
    num_pieces = pieces.piece_class.shape[1]
    batch, channels = probs.shape[:2]
    if probs.dim() != pieces.ids.dim() or probs.shape[0] != pieces.ids.shape[0] or (
        probs.shape[2:] != pieces.ids.shape[2:]
    ):
        raise ValueError(f"probs {tuple(probs.shape)} and pieces {tuple(pieces.ids.shape)} do not match.")
    # the voxel counts are the piece sizes (summed over a superpixel's pieces): one scatter per call, not two
    if superpixels is None:
        sums = _scatter_sums(probs, _flat_ids(pieces.ids), num_pieces)
        return _divide_by_counts(sums, pieces.piece_size, probs.dtype)
    if num_pieces % channels:
        raise ValueError(f"{num_pieces} pieces is not K * C with C = {channels}: use pieces from piece_ids.")
    _check_id_map(superpixels, "superpixels")
    num = num_pieces // channels if num_superpixels is None else resolve_num_superpixels(superpixels, num_superpixels)
    if num * channels != num_pieces:
        raise ValueError(f"num_superpixels={num} does not match {num_pieces} pieces of {channels} classes.")
    sums = _scatter_sums(probs, _flat_ids(superpixels), num)
    counts = pieces.piece_size.view(batch, num, channels).sum(dim=2)
    return _divide_by_counts(sums, counts, probs.dtype).repeat_interleave(channels, dim=2)


def superpixel_joint_score(
    probs1: torch.Tensor, probs2: torch.Tensor, targets: torch.Tensor, lam: float = 0.65, eps: float = 1e-8
) -> torch.Tensor:
    """Eq. 2 of SP-guided: ``(1 - lam)(CE(P1, Y) + CE(P2, Y)) + lam * (KL(P1||P2) + KL(P2||P1))``.

    ``CE(P, Y) = -sum_c Y_c log P_c`` with soft or one-hot targets; probabilities are clamped at ``eps`` inside
    the logs.

    Args:
        probs1: pooled probabilities of network 1, ``(B, C, P)`` (also works for any ``(B, C, ...)``).
        probs2: pooled probabilities of network 2, same shape.
        targets: soft labels ``Y_s`` (Eq. 1) or one-hot noisy classes, same shape.
        lam: agreement weight (0.65).
        eps: clamp for the logarithms.

    Returns:
        ``(B, P)`` score per piece/superpixel.

    Raises:
        ValueError: shapes differ or ``lam`` outside [0, 1].
    """
    if not (probs1.shape == probs2.shape == targets.shape):
        raise ValueError(
            f"shapes differ: {tuple(probs1.shape)}, {tuple(probs2.shape)}, {tuple(targets.shape)}."
        )
    if not 0.0 <= float(lam) <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}.")
    log1 = probs1.clamp_min(eps).log()
    log2 = probs2.clamp_min(eps).log()
    ce = -(targets * log1).sum(dim=1) - (targets * log2).sum(dim=1)
    sym_kl = ((probs1 - probs2) * (log1 - log2)).sum(dim=1)
    return (1.0 - lam) * ce + lam * sym_kl


def piece_joint_scores(
    pooled1: torch.Tensor, pooled2: torch.Tensor, piece_class: torch.Tensor, lam: float = 0.65, eps: float = 1e-8
) -> torch.Tensor:
    """Eq. 2 per piece with the piece's noisy class as a one-hot target (no one-hot tensor is built).

    Args:
        pooled1: pooled probabilities of network 1 ``(B, C, P)``.
        pooled2: same for network 2.
        piece_class: ``(B, P)`` noisy class per piece.
        lam: agreement weight.
        eps: clamp for the logarithms.

    Returns:
        ``(B, P)``; equals ``superpixel_joint_score(pooled1, pooled2, one_hot(piece_class), lam)``.
    """
    if pooled1.shape != pooled2.shape or pooled1.shape[::2] != piece_class.shape:
        raise ValueError(
            f"shapes differ: {tuple(pooled1.shape)}, {tuple(pooled2.shape)}, piece_class {tuple(piece_class.shape)}."
        )
    if not 0.0 <= float(lam) <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}.")
    log1 = pooled1.clamp_min(eps).log()
    log2 = pooled2.clamp_min(eps).log()
    index = piece_class.long().unsqueeze(1)
    ce = -log1.gather(1, index).squeeze(1) - log2.gather(1, index).squeeze(1)
    sym_kl = ((pooled1 - pooled2) * (log1 - log2)).sum(dim=1)
    return (1.0 - lam) * ce + lam * sym_kl


def superpixel_selection_mask(
    probs1: torch.Tensor,
    probs2: torch.Tensor,
    labels: torch.Tensor,
    superpixels: torch.Tensor | None,
    keep_ratio: float | Sequence[float] | torch.Tensor,
    lam: float = 0.65,
    num_superpixels: int | torch.Tensor | None = None,
    pool: str = "superpixel",
    per_sample: bool = False,
) -> PieceSelection:
    """SP-guided selection for one training step (Eqs. 1-3): which voxels the joint loss (Eq. 4) is averaged over.

    Pools both networks' probabilities per piece, scores each piece with Eq. 2 against its noisy class and keeps,
    per noisy class, the lowest-score pieces until ``R_c`` of the class's voxels (Eq. 3, see
    :func:`custom.selection.small_loss.small_loss_mask`). Runs without gradient.

    Args:
        probs1: softmax probabilities of network 1, ``(B, C, *S)``.
        probs2: softmax probabilities of network 2, same shape.
        labels: (current) noisy labels ``(B, 1, *S)``.
        superpixels: ids ``(B, 1, *S)``; ``None`` = voxel-level ablation (every voxel a piece).
        keep_ratio: ``R_c`` per class ``(C,)`` (e.g. ``1 - forget_rate_schedule(...)``).
        lam: Eq. 2 agreement weight.
        num_superpixels: K, to avoid a host sync (see :func:`superpixel_mean`).
        pool: ``"superpixel"`` (reference code: pool over the whole superpixel) or ``"piece"``.
        per_sample: budget per batch element (default: over the whole batch, as the reference code).

    Returns:
        :class:`PieceSelection` (voxel mask ``(B, *S)``, piece mask, piece scores, pieces).
    """
    if pool not in POOLING_MODES:
        raise ValueError(f"pool must be one of {POOLING_MODES}, got {pool!r}.")
    if probs1.shape != probs2.shape:
        raise ValueError(f"probability shapes differ: {tuple(probs1.shape)} vs {tuple(probs2.shape)}.")
    num_classes = probs1.shape[1]
    with torch.no_grad():
        probs1, probs2 = probs1.detach(), probs2.detach()
        if superpixels is None:
            pieces = voxel_pieces(labels)
            pooled1, pooled2 = probs1.reshape(probs1.shape[:2] + (-1,)), probs2.reshape(probs2.shape[:2] + (-1,))
        else:
            # checked once, then int64 throughout (float ids would be converted by every function)
            _check_labels_and_superpixels(labels, superpixels, num_classes)
            superpixels = superpixels.long()
            num = resolve_num_superpixels(superpixels, num_superpixels)
            pieces = piece_ids(superpixels, labels, num_classes, num)
            pool_over = superpixels if pool == "superpixel" else None
            pooled1 = pooled_piece_probabilities(probs1, pieces, pool_over, num)
            pooled2 = pooled_piece_probabilities(probs2, pieces, pool_over, num)
        scores = piece_joint_scores(pooled1, pooled2, pieces.piece_class, lam)
        piece_mask = small_loss_mask(scores, pieces.piece_class, pieces.piece_size, keep_ratio, per_sample)
        voxel_mask = pieces_to_voxels(piece_mask, pieces.ids)
    return PieceSelection(voxel_mask, piece_mask, scores, pieces)
