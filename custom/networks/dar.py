"""Differentiated affinity reasoning (DAR) of JCAS (methods.md §3.1; Guo & Yuan, MICCAI 2022).

DAR rectifies segmentation logits with pair-wise affinities between feature vectors: tokens that look alike
pull each other's logits together (intra-class affinity ``A+``), tokens that look different push them apart
(inter-class affinity ``A-``)::

    A_ij  = clamp(cos(ReLU f_i, ReLU f_j), 1e-10, 1)
    A+    = row_normalise(A),   A- = row_normalise(1 - A)
    P_tok = Q_tok + 0.5 * (A+ Q_tok - A- Q_tok)

The affinity is an ``N x N`` matrix per image, so it is built on a coarse grid of ``N`` tokens (adaptive average
pooling of the features and logits; about ``16^3 = 4096`` tokens in 3D, the 2D reference code used ``64 x 64``),
never at voxel resolution: memory is ``O(B N^2)``.

Back to voxel resolution *(decision)*: only the correction ``P_tok - Q_tok`` is up-sampled (trilinear,
``align_corners=False``, which matches the cell-centred geometry of adaptive pooling) and added to the
full-resolution logits ``Q``. The reference code instead up-samples the whole token-resolution ``P_tok``, which
throws away every detail finer than a token; adding only the correction keeps ``Q``'s resolution and makes
``P == Q`` whenever the affinity is uninformative.

Evaluation *(decision)*: the network does not multiply the ``N x N`` matrices. ``A = U U^T`` for the unit ReLU'd
token features ``U`` (``N x d``), so ``A Q = U (U^T Q)``, ``rowsum(A) = U (U^T 1)``, ``(1 - A) Q = 1 1^T Q - A Q``:
:func:`rectify_token_logits_factored` gives the same ``P`` in ``O(N d C)`` instead of ``O(N^2)`` time and memory
(equal up to the ``1e-10`` floor and float rounding; :func:`rectify_token_logits` is the literal reference). The
``N x N`` affinity is still built once per level, for the affinity loss.

The functions here are pure and TorchScript-compatible; :class:`DifferentiatedAffinityRectifier` is a thin
module wrapper holding the token grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "effective_token_grid",
    "pool_to_tokens",
    "token_affinity",
    "row_normalise",
    "rectify_token_logits",
    "unit_token_features",
    "rectify_token_logits_factored",
    "differentiated_affinity_rectify",
    "token_class_labels",
    "DifferentiatedAffinityRectifier",
]


def _validate_token_grid(token_grid: list[int]) -> None:
    if len(token_grid) != 3:
        raise ValueError(f"token_grid must have 3 entries (one per spatial dim), got {token_grid}.")
    for size in token_grid:
        if size < 1:
            raise ValueError(f"token_grid entries must be positive, got {token_grid}.")


def effective_token_grid(spatial_shape: list[int], token_grid: list[int]) -> list[int]:
    """The token grid actually used for a map of ``spatial_shape``: ``min(token_grid, spatial_shape)`` per axis.

    Pooling to more tokens than voxels would only duplicate voxels (and grow the ``N x N`` affinity for nothing),
    so an axis shorter than the requested grid keeps one token per voxel.

    Args:
        spatial_shape: ``(H, W, D)`` of the feature / logit map.
        token_grid: requested ``(h, w, d)`` token grid.

    Returns:
        the ``(h', w', d')`` grid; ``N = h' * w' * d'``.

    Raises:
        ValueError: if either argument does not have 3 positive entries.
    """
    _validate_token_grid(token_grid)
    if len(spatial_shape) != 3:
        raise ValueError(f"spatial_shape must have 3 entries, got {spatial_shape}.")
    return [min(int(g), int(s)) for g, s in zip(token_grid, spatial_shape)]


def pool_to_tokens(x: torch.Tensor, token_grid: list[int]) -> torch.Tensor:
    """Adaptive-average-pool a 3D map onto the token grid and flatten it to token vectors.

    Args:
        x: ``(B, K, H, W, D)`` features, logits or one-hot labels.
        token_grid: ``(h, w, d)`` grid (use :func:`effective_token_grid` first).

    Returns:
        ``(B, N, K)`` with ``N = h * w * d`` tokens in row-major ``(h, w, d)`` order.

    Raises:
        ValueError: if ``x`` is not 5D.
    """
    if x.dim() != 5:
        raise ValueError(f"expected a (B, K, H, W, D) tensor, got shape {list(x.shape)}.")
    pooled = F.adaptive_avg_pool3d(x, token_grid)
    return pooled.flatten(2).transpose(1, 2)


def token_affinity(token_features: torch.Tensor, floor: float = 1e-10) -> torch.Tensor:
    """Cosine affinity of the ReLU'd token features, clamped to ``[floor, 1]`` (methods.md §3.1).

    Args:
        token_features: ``(B, N, d)`` token features (before ReLU).
        floor: lower clamp (``1e-10`` as in the paper's code); keeps the warm-up affinity BCE away from
            ``log(0)``.

    Returns:
        ``A``: ``(B, N, N)``, symmetric, ``A_ii = 1`` unless token ``i``'s ReLU'd feature is all zero (then its
        row and column are ``floor``).

    Raises:
        ValueError: if ``token_features`` is not 3D.
    """
    # all-zero vectors (dead ReLU) normalise to zero and so get the floor affinity with everyone
    return _unit_affinity(unit_token_features(token_features), floor)


def _unit_affinity(unit_features: torch.Tensor, floor: float = 1e-10) -> torch.Tensor:
    return torch.bmm(unit_features, unit_features.transpose(1, 2)).clamp(floor, 1.0)


def row_normalise(matrix: torch.Tensor) -> torch.Tensor:
    """Divide each row of a non-negative ``(..., N, M)`` matrix by its sum; all-zero rows stay zero."""
    row_sum = matrix.sum(dim=-1, keepdim=True)
    # where-guard instead of an eps so that it works in any dtype (an fp16 eps of 1e-12 rounds to 0)
    return matrix / torch.where(row_sum > 0, row_sum, torch.ones_like(row_sum))


def rectify_token_logits(token_logits: torch.Tensor, affinity: torch.Tensor) -> torch.Tensor:
    """DAR on tokens: ``P = Q + 0.5 (A+ Q - A- Q)`` with ``A+ = row_norm(A)``, ``A- = row_norm(1 - A)``.

    Args:
        token_logits: ``Q_tok``, ``(B, N, C)`` logits (not probabilities: the rectification is linear in logit
            space, as in the reference code).
        affinity: ``A``, ``(B, N, N)`` with entries in ``[0, 1]``.

    Returns:
        ``P_tok``: ``(B, N, C)`` rectified logits.

    Raises:
        ValueError: if the shapes do not match.
    """
    if token_logits.dim() != 3 or affinity.dim() != 3:
        raise ValueError(
            f"expected (B, N, C) logits and (B, N, N) affinity, got {list(token_logits.shape)} and "
            f"{list(affinity.shape)}."
        )
    num_tokens = token_logits.shape[1]
    if affinity.shape[0] != token_logits.shape[0] or affinity.shape[1] != num_tokens or affinity.shape[2] != num_tokens:
        raise ValueError(
            f"affinity {list(affinity.shape)} does not match token logits {list(token_logits.shape)}."
        )
    intra = row_normalise(affinity)
    inter = row_normalise(1.0 - affinity)
    # (A+ - A-) Q in one bmm: same result, one (B, N, C) product instead of two
    return token_logits + 0.5 * torch.bmm(intra - inter, token_logits)


def unit_token_features(token_features: torch.Tensor) -> torch.Tensor:
    """``U``: the ReLU'd token features scaled to unit length; all-zero (dead) vectors stay zero.

    Args:
        token_features: ``(B, N, d)`` token features (before ReLU).

    Returns:
        ``(B, N, d)``; ``U U^T`` is the cosine affinity of :func:`token_affinity` before its clamp.

    Raises:
        ValueError: if ``token_features`` is not 3D.
    """
    if token_features.dim() != 3:
        raise ValueError(f"expected (B, N, d) token features, got shape {list(token_features.shape)}.")
    return F.normalize(F.relu(token_features), p=2.0, dim=2)


def rectify_token_logits_factored(token_logits: torch.Tensor, unit_features: torch.Tensor) -> torch.Tensor:
    """:func:`rectify_token_logits` with ``A = U U^T``, computed without any ``N x N`` matrix (``O(N d C)``).

    For a token ``i`` with a live feature: ``A+ Q = U_i (U^T Q) / U_i (U^T 1)`` and
    ``A- Q = (sum_j Q_j - U_i (U^T Q)) / (N - U_i (U^T 1))``. A dead token (all-zero ReLU'd feature) has the
    uniform floor row in :func:`token_affinity`, for which ``A+ Q = A- Q = mean_j Q_j``: it is left unchanged
    (``P_i = Q_i``). When a row of ``1 - A`` sums to (rounding) zero, all tokens are parallel and ``A- Q = 0``, as
    :func:`row_normalise` does for an all-zero row. Computed in float32 at least (sums over ``N`` tokens; stays
    exact under autocast, which leaves element-wise products alone).

    Args:
        token_logits: ``Q_tok``, ``(B, N, C)`` logits.
        unit_features: ``U``, ``(B, N, d)`` from :func:`unit_token_features`.

    Returns:
        ``P_tok``: ``(B, N, C)`` rectified logits in the dtype of ``token_logits``; equal to
        ``rectify_token_logits(token_logits, token_affinity(f))`` up to the ``1e-10`` floor and rounding.

    Raises:
        ValueError: if the shapes do not match.
    """
    if token_logits.dim() != 3 or unit_features.dim() != 3:
        raise ValueError(
            f"expected (B, N, C) logits and (B, N, d) unit features, got {list(token_logits.shape)} and "
            f"{list(unit_features.shape)}."
        )
    if unit_features.shape[0] != token_logits.shape[0] or unit_features.shape[1] != token_logits.shape[1]:
        raise ValueError(
            f"unit features {list(unit_features.shape)} do not match token logits {list(token_logits.shape)}."
        )
    # float64 stays float64; anything else (half under autocast) works in float32. (No torch.finfo: TorchScript.)
    work_dtype = torch.float64 if token_logits.dtype == torch.float64 else torch.float32
    eps = 2.220446049250313e-16 if work_dtype == torch.float64 else 1.1920928955078125e-07
    q = token_logits.to(work_dtype)
    u = unit_features.to(work_dtype)
    num_tokens = q.shape[1]
    # broadcast products + sums rather than bmm: (B, N, d, C) is small, and autocast would run bmm in half precision
    u_t_q = (u.unsqueeze(3) * q.unsqueeze(2)).sum(dim=1)  # U^T Q: (B, d, C)
    affinity_q = (u.unsqueeze(3) * u_t_q.unsqueeze(1)).sum(dim=2)  # A Q: (B, N, C)
    affinity_sum = (u * u.sum(dim=1, keepdim=True)).sum(dim=2, keepdim=True)  # rowsum(A): (B, N, 1)
    complement_sum = num_tokens - affinity_sum  # rowsum(1 - A)
    q_sum = q.sum(dim=1, keepdim=True)  # (B, 1, C)
    alive = (u != 0).any(dim=2, keepdim=True)
    # below a few ulps of N the complement sum is rounding noise: treat the row as all-parallel (A- Q = 0)
    has_complement = complement_sum > num_tokens * 8.0 * eps
    ones = torch.ones_like(affinity_sum)
    # where-guarded denominators: no inf/nan even in the branch that is not selected (keeps gradients finite)
    intra = affinity_q / torch.where(alive, affinity_sum, ones)
    inter = (q_sum - affinity_q) / torch.where(has_complement, complement_sum, ones)
    inter = torch.where(has_complement, inter, torch.zeros_like(inter))
    correction = torch.where(alive, 0.5 * (intra - inter), torch.zeros_like(intra))
    return (q + correction).to(token_logits.dtype)


def differentiated_affinity_rectify(
    features: torch.Tensor, logits: torch.Tensor, token_grid: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiated affinity reasoning (methods.md §3.1) on a 3D level of the network.

    ``f`` and ``Q`` are pooled to the token grid, the token affinity ``A`` rectifies the token logits, and the
    correction ``P_tok - Q_tok`` is up-sampled trilinearly and added to ``Q`` (see the module docstring for why
    the correction and not ``P_tok`` itself).

    Args:
        features: ``f``, ``(B, d, H, W, D)`` feature-head output (ReLU is applied here, not by the caller).
        logits: ``Q``, ``(B, C, H, W, D)`` classifier logits at the same resolution as ``features``.
        token_grid: requested ``(h, w, d)`` token grid; clipped per axis to ``(H, W, D)``
            (:func:`effective_token_grid`).

    Returns:
        ``(P, A)``: rectified logits ``(B, C, H, W, D)`` and the token affinity ``(B, N, N)``,
        ``N = prod(effective_token_grid)``. Memory is ``O(B N^2)``, independent of ``H W D``.

    Raises:
        ValueError: if the inputs are not 5D or their batch / spatial sizes differ.
    """
    if features.dim() != 5 or logits.dim() != 5:
        raise ValueError(
            f"expected 5D (B, K, H, W, D) features and logits, got {list(features.shape)} and {list(logits.shape)}."
        )
    if features.shape[0] != logits.shape[0] or features.shape[2:] != logits.shape[2:]:
        raise ValueError(
            f"features {list(features.shape)} and logits {list(logits.shape)} must share batch and spatial sizes."
        )
    spatial_shape = [int(s) for s in logits.shape[2:]]
    grid = effective_token_grid(spatial_shape, token_grid)
    unit = unit_token_features(pool_to_tokens(features, grid))
    affinity = _unit_affinity(unit)  # = token_affinity(), sharing the unit vectors with the rectification
    token_logits = pool_to_tokens(logits, grid)
    # the factored form never multiplies N x N matrices (module docstring)
    correction = rectify_token_logits_factored(token_logits, unit) - token_logits  # (B, N, C)
    batch, num_classes = logits.shape[0], logits.shape[1]
    correction = correction.transpose(1, 2).reshape(batch, num_classes, grid[0], grid[1], grid[2])
    correction = F.interpolate(correction, size=spatial_shape, mode="trilinear", align_corners=False)
    return logits + correction, affinity


def token_class_labels(labels: torch.Tensor, num_classes: int, token_grid: list[int]) -> torch.Tensor:
    """One (noisy) class label per token: the majority class of the token's voxels.

    Computed as ``argmax`` of the adaptive-average-pooled one-hot labels, i.e. the same pooling as the features
    in :func:`differentiated_affinity_rectify`, so token ``i`` of the labels covers the same region as token
    ``i`` of the affinity even when the labels are at a finer resolution than the features. Ties go to the
    lowest class index. (The 2D reference code nearest-samples the label map instead, which lets one voxel
    speak for a whole token.)

    Args:
        labels: ``(B, 1, H, W, D)`` or ``(B, H, W, D)`` integer class indices in ``[0, num_classes)``
            (float tensors holding integers are accepted).
        num_classes: ``C``.
        token_grid: the grid of the affinity, e.g. the ``token_grid`` reported by the network for that level.

    Returns:
        ``(B, N)`` int64 token labels.

    Raises:
        ValueError: on a bad shape or ``num_classes < 2``.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}.")
    if labels.dim() == 5:
        if labels.shape[1] != 1:
            raise ValueError(f"labels must have one channel, got shape {list(labels.shape)}.")
        labels = labels[:, 0]
    if labels.dim() != 4:
        raise ValueError(f"expected (B, 1, H, W, D) or (B, H, W, D) labels, got shape {list(labels.shape)}.")
    _validate_token_grid(token_grid)
    one_hot = F.one_hot(labels.long(), num_classes).permute(0, 4, 1, 2, 3).float()
    return pool_to_tokens(one_hot, token_grid).argmax(dim=2)


class DifferentiatedAffinityRectifier(nn.Module):
    """Module wrapper of :func:`differentiated_affinity_rectify` with a fixed requested token grid.

    Args:
        token_grid: requested ``(h, w, d)`` token grid (default ``16^3 = 4096`` tokens).

    Raises:
        ValueError: if ``token_grid`` does not have 3 positive entries.
    """

    def __init__(self, token_grid: tuple[int, int, int] = (16, 16, 16)):
        super().__init__()
        grid = [int(g) for g in token_grid]
        _validate_token_grid(grid)
        self.token_grid = grid

    def forward(self, features: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features (B, d, H, W, D), logits (B, C, H, W, D)) -> (P (B, C, H, W, D), A (B, N, N))``."""
        return differentiated_affinity_rectify(features, logits, self.token_grid)
