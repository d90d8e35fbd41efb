"""Confident-learning label-issue detection and correction for MTCL (Xu et al., TMI 2022), in torch on the device.

MTCL (reference code lemoshu/MTCL, ``train_MTCL_3D.py``) takes, at every iteration, the teacher's softmax on the
*clean* (noise-free) LQ inputs and the LQ labels, flattens **all voxels of all LQ patches of the batch** into one
``(N, C)`` / ``(N,)`` problem, calls ``cleanlab.filter.find_label_issues(labels, probs, filter_by='both')`` and
corrects the flagged voxels ("hard": flip; "smooth": move 0.8 of the mass; "uncertainty_smooth": move ``1 - U``).
This module computes the same thing without leaving the device (no ``.cpu()``/``.item()``) and for any ``C >= 2``,
following cleanlab 2.x (``count.get_confident_thresholds``, ``count.compute_confident_joint``,
``count.calibrate_confident_joint``, ``filter._keep_at_least_n_per_class``, ``filter._prune_by_class``,
``filter._prune_by_count``, ``count._reduce_issues``):

1. Thresholds (Eq. 2 of Northcutt et al., JAIR 2021): ``t_c`` = mean of ``p_c`` over the voxels whose given label is
   ``c``; a class absent from the labels gets ``t_c = 2`` (nothing can be counted into it); ``t_c >= 2e-6``.
2. Confident joint ``C[i][j]``: voxels with given label ``i`` and ``p_j >= t_j - 1e-6``, assigned to the only such
   ``j`` or, if several, to ``argmax_c p_c``; the diagonal is raised to at least 1; then calibrated so that row ``i``
   sums to ``n_i`` (the count of label ``i``) and the total to ``N``, rounded to integers preserving row totals.
3. Prune counts ``M = C^T`` with ``M[k][k] >= min_examples_per_class`` (the increase is taken uniformly from the
   non-zero entries of column ``k``, negatives clipped, then truncated to integers).
4. "prune_by_class": for each given class ``k`` flag the ``n_k - M[k][k]`` voxels with the lowest ``p_k``.
   "prune_by_noise_rate": for each ``j != k`` flag the ``M[j][k]`` voxels labelled ``k`` with the largest margin
   ``p_j - p_k``. Classes with ``n_k <= max(min_examples_per_class, 1)`` are never flagged. "both" = intersection.
5. A flag is dropped where the given label is (within ``1e-6``) the argmax of ``p`` (cleanlab >= 2.5
   ``_reduce_issues``; older cleanlab used an exact argmax: ``given_label_tolerance=0``).

Known differences from cleanlab: ranks among *equal* scores are broken by the lower voxel index (stable sorts),
whereas cleanlab uses NumPy's default ``argsort``, which is not stable (SIMD-accelerated on AVX-512/AVX2 machines),
so its choice among ties is platform dependent; the same holds for *equal* rounding residuals when the calibrated
joint is rounded (equal counts in a row of the confident joint), where this module follows a stable ascending
argsort walked backwards. On random data (cleanlab 2.9.0, 1800 cases, C = 2..4) the masks agreed in every case
whose calibrated joints agreed, and the joints differed only through such rounding ties (8 cases).
``frac_noise`` is supported, ``num_to_remove_per_class`` is not. Thresholds are
accumulated in float64 (except on MPS), so they can differ from NumPy's float32 mean in the last bits.
"""

from __future__ import annotations

import torch

__all__ = [
    "per_class_thresholds",
    "confident_joint",
    "calibrate_confident_joint",
    "round_preserving_row_totals",
    "prune_count_matrix",
    "find_label_issues",
    "correct_labels",
]

_FILTERS = ("both", "prune_by_class", "prune_by_noise_rate")
_THRESHOLD_FLOOR = 2e-6  # cleanlab CONFIDENT_THRESHOLDS_LOWER_BOUND
_THRESHOLD_MISSING_CLASS = 2.0  # cleanlab BIG_VALUE: above every probability
_COUNT_TOLERANCE = 1e-6  # cleanlab compares p >= t - 1e-6
_TINY = 1e-100  # cleanlab TINY_VALUE


def _accumulate_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def _flatten(probs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, C, *S)`` + ``(B, 1, *S)`` (or ``(N, C)`` + ``(N,)``) -> ``(N, C)`` float probs, ``(N,)`` long labels."""
    if probs.ndim < 2 or probs.shape[1] < 2:
        raise ValueError(f"probs must be (B, C, *S) or (N, C) with C >= 2, got shape {tuple(probs.shape)}.")
    num_classes = probs.shape[1]
    if probs.ndim == 2:
        if labels.shape != probs.shape[:1]:
            raise ValueError(f"labels must be {tuple(probs.shape[:1])} for (N, C) probs, got {tuple(labels.shape)}.")
        flat_probs = probs
    else:
        expected = (probs.shape[0], 1, *probs.shape[2:])
        if tuple(labels.shape) != expected:
            raise ValueError(f"labels must be {expected} for probs {tuple(probs.shape)}, got {tuple(labels.shape)}.")
        flat_probs = probs.movedim(1, -1).reshape(-1, num_classes)
    if not flat_probs.is_floating_point():
        raise ValueError(f"probs must be floating point, got {flat_probs.dtype}.")
    if flat_probs.dtype in (torch.float16, torch.bfloat16):
        flat_probs = flat_probs.float()
    return flat_probs, labels.reshape(-1).long()


def _class_counts(flat_labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    # index_add instead of bincount: bincount must read max(labels) back to size its output (a host sync)
    counts = torch.zeros(num_classes, dtype=torch.long, device=flat_labels.device)
    return counts.index_add_(0, flat_labels, torch.ones_like(flat_labels))


def _thresholds_flat(flat_probs: torch.Tensor, flat_labels: torch.Tensor) -> torch.Tensor:
    num_classes = flat_probs.shape[1]
    acc = _accumulate_dtype(flat_probs.device)
    self_confidence = flat_probs.gather(1, flat_labels[:, None])[:, 0].to(acc)
    sums = torch.zeros(num_classes, dtype=acc, device=flat_probs.device).index_add_(0, flat_labels, self_confidence)
    counts = _class_counts(flat_labels, num_classes)
    means = sums / counts.clamp_min(1).to(acc)
    thresholds = torch.where(counts > 0, means, torch.full_like(means, _THRESHOLD_MISSING_CLASS))
    return thresholds.clamp_min(_THRESHOLD_FLOOR)


def per_class_thresholds(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-class confidence thresholds ``t_c = mean{p_c(v) : label(v) = c}`` (Eq. 2 of confident learning).

    Args:
        probs: probabilities ``(B, C, *S)`` (or ``(N, C)``).
        labels: given (noisy) labels ``(B, 1, *S)`` (or ``(N,)``), values in ``[0, C)`` (not checked on the host).

    Returns:
        ``(C,)`` thresholds (float64, float32 on MPS); 2.0 for classes absent from ``labels``; at least ``2e-6``.
    """
    return _thresholds_flat(*_flatten(probs, labels))


def _round_up_to(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Smallest ``dtype`` value ``>= values``: ``p >= t`` in float64 equals ``p >= _round_up_to(t, p.dtype)``."""
    rounded = values.to(dtype)
    too_small = rounded.to(values.dtype) < values
    return torch.where(too_small, torch.nextafter(rounded, torch.full_like(rounded, float("inf"))), rounded)


def round_preserving_row_totals(matrix: torch.Tensor) -> torch.Tensor:
    """Round each row to integers while keeping its rounded total (cleanlab ``round_preserving_row_totals``).

    Entries are rounded half-to-even; if a row's total is then off by ``d``, the ``|d|`` entries with the largest
    (``d > 0``) or smallest (``d < 0``) rounding residual move by one. Equal residuals: the later column first when
    adding, the earlier column first when subtracting (a stable ascending argsort walked as cleanlab walks it).

    Args:
        matrix: ``(K, K)`` floating tensor.

    Returns:
        ``(K, K)`` long tensor.
    """
    if matrix.ndim != 2:
        raise ValueError(f"matrix must be 2-D, got shape {tuple(matrix.shape)}.")
    ints = matrix.round()
    deficit = matrix.sum(dim=1).round() - ints.sum(dim=1)  # (K,), integral values
    residual = matrix - ints
    ascending = torch.sort(residual, dim=1, stable=True).indices
    # cleanlab walks the ascending argsort backwards when it must add: largest residual first, later index first
    order = torch.where(deficit[:, None] > 0, ascending.flip(1), ascending)
    positions = torch.arange(matrix.shape[1], device=matrix.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, positions)
    adjust = (rank < deficit.abs()[:, None]).to(matrix.dtype) * deficit.sign()[:, None]
    return (ints + adjust).round().long()


def calibrate_confident_joint(joint: torch.Tensor, label_counts: torch.Tensor) -> torch.Tensor:
    """Scale the confident joint so that row ``i`` sums to ``n_i`` and the total to ``N``, then round (cleanlab).

    Args:
        joint: ``(C, C)`` counts, rows = given label, columns = estimated true label.
        label_counts: ``(C,)`` number of voxels per given label.

    Returns:
        ``(C, C)`` long tensor.
    """
    acc = _accumulate_dtype(joint.device)
    joint = joint.to(acc)
    counts = label_counts.to(acc)
    calibrated = joint / joint.sum(dim=1, keepdim=True).clamp_min(_TINY) * counts[:, None]
    calibrated = calibrated / calibrated.sum().clamp_min(_TINY) * counts.sum()
    return round_preserving_row_totals(calibrated)


def _confident_joint_flat(
    flat_probs: torch.Tensor, flat_labels: torch.Tensor, thresholds: torch.Tensor | None, calibrate: bool
) -> torch.Tensor:
    num_classes = flat_probs.shape[1]
    if thresholds is None:
        thresholds = _thresholds_flat(flat_probs, flat_labels)
    elif thresholds.shape != (num_classes,):
        raise ValueError(f"thresholds must have shape ({num_classes},), got {tuple(thresholds.shape)}.")
    cutoff = thresholds.to(device=flat_probs.device, dtype=_accumulate_dtype(flat_probs.device)) - _COUNT_TOLERANCE
    confident = flat_probs >= _round_up_to(cutoff, flat_probs.dtype)  # (N, C)
    num_confident = confident.sum(dim=1)
    first_confident = confident.to(torch.uint8).argmax(dim=1)
    true_guess = torch.where(num_confident > 1, flat_probs.argmax(dim=1), first_confident)
    joint = torch.zeros(num_classes * num_classes, dtype=torch.long, device=flat_probs.device)
    joint.index_add_(0, flat_labels * num_classes + true_guess, (num_confident > 0).long())
    joint = joint.view(num_classes, num_classes)
    diagonal = torch.arange(num_classes, device=joint.device)
    joint[diagonal, diagonal] = joint[diagonal, diagonal].clamp_min(1)  # every class keeps one confident example
    if calibrate:
        joint = calibrate_confident_joint(joint, _class_counts(flat_labels, num_classes))
    return joint


def confident_joint(
    probs: torch.Tensor, labels: torch.Tensor, thresholds: torch.Tensor | None = None, calibrate: bool = True
) -> torch.Tensor:
    """Confident joint ``C[i][j]``: voxels labelled ``i`` confidently predicted as ``j`` (cleanlab definition).

    A voxel counts for class ``j`` when ``p_j >= t_j - 1e-6``; with several such classes it goes to ``argmax p``,
    with none it is not counted. The diagonal is raised to at least 1; ``calibrate`` then scales rows to the label
    counts and the total to ``N`` (integer rounding that preserves row totals).

    Args:
        probs: probabilities ``(B, C, *S)`` (or ``(N, C)``).
        labels: given labels ``(B, 1, *S)`` (or ``(N,)``).
        thresholds: optional ``(C,)`` thresholds (default :func:`per_class_thresholds`).
        calibrate: calibrate as cleanlab's ``compute_confident_joint`` does by default.

    Returns:
        ``(C, C)`` long tensor, rows = given label, columns = estimated true label.
    """
    flat_probs, flat_labels = _flatten(probs, labels)
    return _confident_joint_flat(flat_probs, flat_labels, thresholds, calibrate)


def prune_count_matrix(
    joint: torch.Tensor, min_examples_per_class: int = 1, frac_noise: float = 1.0
) -> torch.Tensor:
    """Number of voxels to prune per (true, given) pair: ``M = C^T`` with ``M[k][k] >= min_examples_per_class``.

    Follows cleanlab's ``_keep_at_least_n_per_class`` + ``_reduce_prune_counts``: raising ``M[k][k]`` to ``n`` is
    paid for uniformly by the non-zero entries of column ``k`` (negatives clipped to 0); off-diagonal entries are
    scaled by ``frac_noise`` (the removed amount moves to the diagonal) and truncated to integers.

    Args:
        joint: calibrated confident joint ``(C, C)`` (rows = given label).
        min_examples_per_class: ``n``.
        frac_noise: fraction of the estimated issues to flag, in ``(0, 1]``.

    Returns:
        ``(C, C)`` long tensor ``M`` with ``M[j][k]`` = voxels of given label ``k`` to flag as true class ``j``.
    """
    if joint.ndim != 2 or joint.shape[0] != joint.shape[1]:
        raise ValueError(f"joint must be square (C, C), got shape {tuple(joint.shape)}.")
    if min_examples_per_class < 0:
        raise ValueError(f"min_examples_per_class must be >= 0, got {min_examples_per_class}.")
    if not 0.0 < frac_noise <= 1.0:
        raise ValueError(f"frac_noise must be in (0, 1], got {frac_noise}.")
    acc = _accumulate_dtype(joint.device)
    counts = joint.t().to(acc)
    diagonal_index = torch.arange(counts.shape[0], device=counts.device)
    diagonal = counts.diagonal()
    new_diagonal = diagonal.clamp_min(float(min_examples_per_class))
    raised = new_diagonal - diagonal
    nonzero_off_diagonal = ((counts != 0).sum(dim=0) - 1).clamp_min(1).to(acc)
    adjusted = (counts - raised[None, :] / nonzero_off_diagonal[None, :]).clamp_min(0.0)
    adjusted[diagonal_index, diagonal_index] = new_diagonal
    reduced = adjusted * frac_noise
    reduced[diagonal_index, diagonal_index] = new_diagonal  # the diagonal is not scaled ...
    reduced[diagonal_index, diagonal_index] = new_diagonal + (adjusted - reduced).sum(dim=0)  # ... it absorbs the cut
    return reduced.trunc().long()


def _rank_within_class(
    scores: torch.Tensor, flat_labels: torch.Tensor, class_start: torch.Tensor
) -> torch.Tensor:
    """0-based rank of each voxel among the voxels of its own class by ascending score (ties: lower index first).

    ``scores`` is ``(N,)`` or ``(N, J)`` (one ranking per column). Two stable sorts: by score, then by class.
    """
    by_score = torch.sort(scores, dim=0, stable=True).indices
    by_class = torch.sort(flat_labels[by_score], dim=0, stable=True).indices
    permutation = by_score.gather(0, by_class)  # voxels grouped by class, ascending score within a class
    del by_score, by_class  # (N, J) int64 each: free them before the next allocations
    positions = torch.arange(scores.shape[0], device=scores.device)
    if scores.ndim == 2:
        positions = positions[:, None].expand_as(permutation)
    rank_in_order = positions - class_start[flat_labels[permutation]]
    return torch.empty_like(permutation).scatter_(0, permutation, rank_in_order)


def find_label_issues(
    probs: torch.Tensor,
    labels: torch.Tensor,
    filter_by: str = "both",
    min_examples_per_class: int = 1,
    frac_noise: float = 1.0,
    given_label_tolerance: float = 1e-6,
) -> torch.Tensor:
    """Voxels whose given label is likely wrong, by confident learning (cleanlab ``find_label_issues``).

    All voxels of all samples form one pool, as in the MTCL reference (one call per LQ batch). Cost: a few stable
    sorts of ``N`` and ``N x C`` keys; peak extra memory is about ``4 N C`` int64 values (about 1.3 GB for the
    reference's 20 LQ patches of 112 x 112 x 80 voxels and ``C = 2``).

    Args:
        probs: teacher probabilities ``(B, C, *S)`` (or ``(N, C)``), computed without gradient.
        labels: given noisy labels ``(B, 1, *S)`` (or ``(N,)``), values in ``[0, C)``.
        filter_by: ``"both"`` (MTCL default), ``"prune_by_class"`` or ``"prune_by_noise_rate"``.
        min_examples_per_class: classes with at most this many voxels are never flagged, and each class keeps at
            least this many voxels in the prune counts.
        frac_noise: flag only this fraction of the estimated issues (cleanlab semantics).
        given_label_tolerance: never flag a voxel whose given label is the argmax once ``p_label`` is increased by
            this amount (cleanlab >= 2.5: 1e-6; 0 = exact argmax as older cleanlab).

    Returns:
        Bool mask with the shape of ``labels`` (True = label issue).
    """
    if filter_by not in _FILTERS:
        raise ValueError(f"filter_by must be one of {_FILTERS}, got {filter_by!r}.")
    if given_label_tolerance < 0:
        raise ValueError(f"given_label_tolerance must be >= 0, got {given_label_tolerance}.")
    flat_probs, flat_labels = _flatten(probs, labels)
    num_classes = flat_probs.shape[1]
    counts = _class_counts(flat_labels, num_classes)
    joint = _confident_joint_flat(flat_probs, flat_labels, None, calibrate=True)
    prune_counts = prune_count_matrix(joint, min_examples_per_class, frac_noise)  # [true j, given k]
    class_start = counts.cumsum(0) - counts
    prunable = counts > max(int(min_examples_per_class), 1)  # cleanlab also skips classes with a single example
    self_confidence = flat_probs.gather(1, flat_labels[:, None])  # (N, 1)

    issues = prunable[flat_labels]
    if filter_by in ("both", "prune_by_class"):
        num_issues = counts - prune_counts.diagonal()  # per given class
        rank = _rank_within_class(self_confidence[:, 0], flat_labels, class_start)
        issues = issues & (rank < num_issues[flat_labels])
    if filter_by in ("both", "prune_by_noise_rate"):
        # column j ranks the voxels of each given class k by descending margin p_j - p_k
        rank = _rank_within_class(self_confidence - flat_probs, flat_labels, class_start)  # (N, C)
        to_prune = prune_counts.t()[flat_labels]  # (N, C): row n holds M[j][label_n] for every j
        off_diagonal = torch.arange(num_classes, device=flat_labels.device)[None, :] != flat_labels[:, None]
        issues = issues & ((rank < to_prune) & off_diagonal).any(dim=1)

    bumped = flat_probs.scatter_add(
        1, flat_labels[:, None], torch.full_like(self_confidence, given_label_tolerance)
    )
    issues = issues & (bumped.argmax(dim=1) != flat_labels)
    return issues.reshape(labels.shape)


def correct_labels(
    labels: torch.Tensor,
    probs: torch.Tensor,
    issues: torch.Tensor,
    mode: str = "hard",
    smooth: float = 0.8,
    uncertainty: torch.Tensor | None = None,
) -> torch.Tensor:
    """Correct the flagged voxels (MTCL "hard", "smooth" and "uncertainty_smooth" refinement).

    The corrected class of a flagged voxel is ``argmax_c p_c`` (for ``C = 2`` this is the flip ``1 - y`` of the
    reference, since a flagged voxel's given label is not the argmax).

    * ``"hard"``: flagged voxels take the corrected class -> hard labels ``(B, 1, *S)`` long.
    * ``"smooth"``: soft targets ``(B, C, *S)``: one-hot of the given label, except that flagged voxels move
      ``smooth`` (0.8 in MTCL) of the mass to the corrected class. For ``C = 2`` this is the reference's
      ``y + flag * (-1)^y * 0.8`` foreground probability. (The reference then casts that map with ``.long()``,
      which truncates 0.8 and 0.2 to 0; that cast is a bug and is not reproduced: use the soft targets with
      :func:`custom.losses.segmentation_losses.ce_dice_loss`.)
    * ``"uncertainty_smooth"``: as ``"smooth"`` with a per-voxel amount ``1 - uncertainty``, where ``uncertainty``
      ``(B, 1, *S)`` in ``[0, 1]`` is, in MTCL, the entropy of the mean of ``T = 6`` noisy teacher predictions
      divided by ``log C`` (see :func:`custom.refinement.teacher_fusion.normalized_entropy`); ``smooth`` is unused.

    Args:
        labels: given labels ``(B, 1, *S)``.
        probs: teacher probabilities ``(B, C, *S)``.
        issues: bool mask ``(B, 1, *S)`` from :func:`find_label_issues`.
        mode: ``"hard"``, ``"smooth"`` or ``"uncertainty_smooth"``.
        smooth: mass moved to the corrected class in ``"smooth"`` mode, in ``[0, 1]``.
        uncertainty: ``(B, 1, *S)`` map for ``"uncertainty_smooth"``.

    Returns:
        Long labels ``(B, 1, *S)`` ("hard") or float targets ``(B, C, *S)`` in the dtype of ``probs`` (smooth modes).
    """
    if probs.ndim < 3 or probs.shape[1] < 2:
        raise ValueError(f"probs must be (B, C, *S) with C >= 2, got shape {tuple(probs.shape)}.")
    expected = (probs.shape[0], 1, *probs.shape[2:])
    if tuple(labels.shape) != expected or tuple(issues.shape) != expected:
        raise ValueError(
            f"labels {tuple(labels.shape)} and issues {tuple(issues.shape)} must have shape {expected}."
        )
    labels = labels.long()
    issues = issues.bool()
    corrected_class = probs.argmax(dim=1, keepdim=True)
    if mode == "hard":
        return torch.where(issues, corrected_class, labels)
    if mode == "smooth":
        if not 0.0 <= smooth <= 1.0:
            raise ValueError(f"smooth must be in [0, 1], got {smooth}.")
        amount = issues.to(probs.dtype) * smooth
    elif mode == "uncertainty_smooth":
        if uncertainty is None or tuple(uncertainty.shape) != expected:
            raise ValueError(f"mode 'uncertainty_smooth' needs an uncertainty map of shape {expected}.")
        amount = issues.to(probs.dtype) * (1.0 - uncertainty.to(probs.dtype).clamp(0.0, 1.0))
    else:
        raise ValueError(f"mode must be 'hard', 'smooth' or 'uncertainty_smooth', got {mode!r}.")
    # scatter rather than F.one_hot, which may validate the label range on the host
    given = torch.zeros_like(probs).scatter_(1, labels, 1.0)
    target = torch.zeros_like(probs).scatter_(1, corrected_class, 1.0)
    return given * (1.0 - amount) + target * amount
