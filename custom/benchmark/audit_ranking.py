"""How well a label audit ranks the noisy (LQ) training cases: ROC AUC, top-k precision, Spearman correlation, and
cleanlab's segmentation label-quality score as the reference score on the same probabilities.

Every score here is a *suspicion* score: higher = re-check first (the convention of ``label_audit.csv``).

* :func:`roc_auc`: the probability that a corrupted case scores above an untouched one (ties count one half), the
  Mann-Whitney statistic with mid-ranks. Defined only when both groups are present (SP noise with ``alpha < 1``).
* :func:`top_k_precision`: the fraction of corrupted cases among the ``k`` highest scores, ``k`` = the number of
  corrupted cases by default. A tie across the cut-off counts fractionally: the expected precision when the tied
  cases are ordered at random, so that the result does not depend on the order of the input.
* :func:`spearman`: the rank correlation (Pearson correlation of mid-ranks). :func:`ranking_metrics` reports it
  between the score and ``1 - noisy Dice`` (the noisy label's foreground Dice against the clean one): a good audit
  score is high where the Dice is low, so a good audit has a **positive** correlation. Under MTCL noise every LQ
  case is corrupted and this is the only figure.
* :func:`cleanlab_suspicion`: ``1 - q``, with ``q`` cleanlab's softmin label-quality score
  (``cleanlab.segmentation.rank.get_label_quality_scores``, high = good label) of one 3D case. cleanlab takes 2D
  images ``(N, K, H, W)``; the volume ``(K, H, W, D)`` is passed as one image ``(1, K, H, W * D)``. The softmin
  score is a function of the set of per-voxel scores ``p[label]`` only (not of their arrangement), so this is the
  softmin over every voxel of the volume, one score per case as for a 2D image. Scoring the axial slices as ``D``
  images instead would need a second, arbitrary aggregation of the slice scores, and slices without foreground
  would dominate it.

Which LQ cases are corrupted is known from the dataset preparation (``custom.data.prepare``): a corrupted case's
``label`` is ``labelsTr_noisy/<case_id>.nii.gz``, an untouched one keeps its clean label; :func:`is_corrupted`
compares the label arrays, so a draw that changed nothing counts as untouched.

cleanlab is imported lazily: it is in the ``test`` extra of ``setup.cfg`` (``pip install -e .[test]``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "AUDIT_RANKING_FILE",
    "CLEANLAB_TEMPERATURE",
    "midranks",
    "roc_auc",
    "top_k_precision",
    "spearman",
    "is_corrupted",
    "cleanlab_label_quality",
    "cleanlab_suspicion",
    "ranking_metrics",
    "audit_ranking",
]

#: the file the harness writes in a run folder (and :mod:`custom.benchmark.results` reads)
AUDIT_RANKING_FILE = "audit_ranking.json"
#: cleanlab's default softmin temperature
CLEANLAB_TEMPERATURE = 0.1


def _vector(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite numbers, got {array.tolist()}.")
    return array


def _labels(positives: Sequence[bool] | np.ndarray, n: int) -> np.ndarray:
    flags = np.asarray(positives).reshape(-1)
    if flags.size != n:
        raise ValueError(f"got {n} scores but {flags.size} corrupted flags.")
    return flags.astype(bool)


def midranks(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``values`` in ascending order, tied values sharing the mean of their ranks.

    Example: ``midranks([0.5, 0.1, 0.5])`` is ``[2.5, 1.0, 2.5]``.
    """
    array = _vector(values, "values")
    order = np.argsort(array, kind="stable")
    sorted_values = array[order]
    ranks = np.empty(array.size, dtype=np.float64)
    start = 0
    while start < array.size:
        stop = start + 1
        while stop < array.size and sorted_values[stop] == sorted_values[start]:
            stop += 1
        ranks[order[start:stop]] = (start + 1 + stop) / 2.0  # mean of the ranks start+1 .. stop
        start = stop
    return ranks


def roc_auc(scores: Sequence[float] | np.ndarray, corrupted: Sequence[bool] | np.ndarray) -> float:
    """ROC AUC of ``scores`` for telling corrupted cases (positives) from untouched ones.

    ``P(score of a corrupted case > score of an untouched case)``, a tie counting 1/2 (Mann-Whitney ``U`` with
    mid-ranks divided by ``n_corrupted * n_untouched``). 1 = every corrupted case ranks first, 0.5 = chance.

    Args:
        scores: suspicion score per case (higher = more suspicious).
        corrupted: per case, whether its label was corrupted.

    Raises:
        ValueError: different lengths, non-finite scores, or no corrupted or no untouched case (AUC undefined).
    """
    values = _vector(scores, "scores")
    flags = _labels(corrupted, values.size)
    n_pos, n_neg = int(flags.sum()), int((~flags).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"ROC AUC needs corrupted and untouched cases, got {n_pos} corrupted and {n_neg} untouched.")
    ranks = midranks(values)
    u_statistic = ranks[flags].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u_statistic / (n_pos * n_neg))


def top_k_precision(
    scores: Sequence[float] | np.ndarray, corrupted: Sequence[bool] | np.ndarray, k: int | None = None
) -> float:
    """Fraction of corrupted cases among the ``k`` most suspicious ones (``k`` default: the number corrupted).

    Cases tied with the ``k``-th score are counted by expectation: if ``m`` tied cases compete for ``r`` remaining
    places and ``c`` of them are corrupted, they contribute ``r * c / m`` (the mean over random orders of the tie).

    Raises:
        ValueError: different lengths, non-finite scores, ``k`` outside ``[1, n]``, or (default ``k``) no corrupted
            case.
    """
    values = _vector(scores, "scores")
    flags = _labels(corrupted, values.size)
    if k is None:
        k = int(flags.sum())
        if k == 0:
            raise ValueError("top-k precision with k = number of corrupted cases needs at least one corrupted case.")
    if not 1 <= int(k) <= values.size:
        raise ValueError(f"k must be in [1, {values.size}], got {k}.")
    k = int(k)
    threshold = np.sort(values)[::-1][k - 1]  # the k-th highest score
    above = values > threshold
    tied = values == threshold
    places_left = k - int(above.sum())
    hits = float(flags[above].sum()) + places_left * float(flags[tied].sum()) / float(tied.sum())
    return hits / k


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Spearman rank correlation of ``x`` and ``y`` (Pearson correlation of their mid-ranks).

    Returns NaN when either input is constant (the correlation is undefined).

    Raises:
        ValueError: different lengths, fewer than 2 values, or non-finite values.
    """
    rx, ry = midranks(x), midranks(y)
    if rx.size != ry.size:
        raise ValueError(f"spearman needs inputs of the same length, got {rx.size} and {ry.size}.")
    if rx.size < 2:
        raise ValueError(f"spearman needs at least 2 values, got {rx.size}.")
    dx, dy = rx - rx.mean(), ry - ry.mean()
    denominator = math.sqrt(float((dx * dx).sum() * (dy * dy).sum()))
    return float((dx * dy).sum() / denominator) if denominator > 0 else math.nan


def is_corrupted(noisy_label: np.ndarray, clean_label: np.ndarray) -> bool:
    """Whether the noisy label differs from the clean one anywhere (an untouched LQ case keeps its clean label).

    Raises:
        ValueError: when the two label maps differ in shape.
    """
    noisy, clean = np.asarray(noisy_label), np.asarray(clean_label)
    if noisy.shape != clean.shape:
        raise ValueError(f"noisy label shape {noisy.shape} differs from the clean label's {clean.shape}.")
    return bool(np.any(noisy != clean))


def _import_cleanlab_rank() -> Any:
    try:
        from cleanlab.segmentation import rank
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "cleanlab is needed for its label-quality score; it is in the 'test' extra: pip install -e '.[test]' "
            "(or pip install 'cleanlab>=2.5')"
        ) from exc
    return rank


def cleanlab_label_quality(
    probabilities: np.ndarray, label: np.ndarray, temperature: float = CLEANLAB_TEMPERATURE
) -> float:
    """cleanlab's softmin label-quality score of one 3D case (high = good label), see the module docstring.

    Args:
        probabilities: softmax probabilities ``(K, *S)`` (``S`` of any rank, e.g. ``(H, W, D)``), on the grid of
            ``label``.
        label: integer label map ``S`` with values in ``0 .. K-1``.
        temperature: softmin temperature (cleanlab's default 0.1).

    Raises:
        ValueError: mismatched shapes, fewer than 2 classes, or label values outside ``0 .. K-1``.
        ImportError: cleanlab is not installed (message names the ``test`` extra).
    """
    probs = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(label)
    if labels.ndim < 1 or probs.ndim < 2 or probs.shape[1:] != labels.shape:
        raise ValueError(
            f"probabilities must be (K, *S) with S the label's shape {labels.shape}, got {probs.shape}."
        )
    num_classes = probs.shape[0]
    if num_classes < 2:
        raise ValueError(f"probabilities need at least 2 classes, got {num_classes}.")
    labels = np.rint(labels).astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"label values must be in [0, {num_classes - 1}], got [{labels.min()}, {labels.max()}].")
    rank = _import_cleanlab_rank()
    # one image (1, K, H, W * D): the softmin runs over every voxel of the volume (module docstring)
    height = labels.shape[0]
    image_probs = probs.reshape(1, num_classes, height, -1)
    image_labels = labels.reshape(1, height, -1)
    image_scores, _ = rank.get_label_quality_scores(
        image_labels, image_probs, method="softmin", verbose=False, temperature=float(temperature)
    )
    return float(image_scores[0])


def cleanlab_suspicion(
    probabilities: np.ndarray, label: np.ndarray, temperature: float = CLEANLAB_TEMPERATURE
) -> float:
    """``1 - cleanlab_label_quality(...)``: cleanlab's score as a suspicion score (higher = re-check first)."""
    return 1.0 - cleanlab_label_quality(probabilities, label, temperature)


def _defined(function: Any, *args: Any) -> float | None:
    try:
        value = function(*args)
    except ValueError:
        return None
    return None if math.isnan(value) else float(value)


def ranking_metrics(
    scores: Sequence[float], corrupted: Sequence[bool], noisy_dice: Sequence[float]
) -> dict[str, float | None]:
    """``auc``, ``top_k_precision`` (k = number corrupted) and ``spearman`` (score vs ``1 - noisy_dice``, positive =
    good) of one score over the same cases; a figure that is undefined for these cases (no untouched case for the
    AUC, a constant input for Spearman) is None."""
    one_minus_dice = [1.0 - float(d) for d in noisy_dice]
    return {
        "auc": _defined(roc_auc, scores, corrupted),
        "top_k_precision": _defined(top_k_precision, scores, corrupted),
        "spearman": _defined(spearman, scores, one_minus_dice),
    }


def audit_ranking(cases: Sequence[Mapping[str, Any]], score_name: str) -> dict[str, Any]:
    """The document of ``audit_ranking.json`` from per-case records.

    Args:
        cases: one mapping per LQ case with ``case_id``, ``corrupted`` (bool), ``noisy_dice`` (foreground Dice of
            the noisy label against the clean one) and ``scores``: ``{"audit": ..., "cleanlab": ...}``
            (suspicion scores, higher = re-check first; every case must have the same score names).
        score_name: what the ``audit`` score is (e.g. ``teacher_uncertainty``, ``changed_fraction``,
            ``prediction_disagreement``).

    Returns:
        ``{"score_name", "n_cases", "n_corrupted", "metrics": {name: ranking_metrics}, "cases": [...]}``.

    Raises:
        ValueError: no cases, or cases with different score names.
    """
    if not cases:
        raise ValueError("audit ranking needs at least one case.")
    names = list(cases[0]["scores"])
    for case in cases:
        if list(case["scores"]) != names:
            raise ValueError(f"case {case['case_id']!r} has scores {list(case['scores'])}, expected {names}.")
    corrupted = [bool(c["corrupted"]) for c in cases]
    noisy_dice = [float(c["noisy_dice"]) for c in cases]
    metrics = {
        name: ranking_metrics([float(c["scores"][name]) for c in cases], corrupted, noisy_dice) for name in names
    }
    return {
        "score_name": str(score_name),
        "n_cases": len(cases),
        "n_corrupted": int(sum(corrupted)),
        "metrics": metrics,
        "cases": [
            {"case_id": str(c["case_id"]), "corrupted": bool(c["corrupted"]), "noisy_dice": float(c["noisy_dice"]),
             "scores": {name: float(c["scores"][name]) for name in names}}
            for c in cases
        ],
    }
