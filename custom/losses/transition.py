"""Noise transition matrices and the CALC losses of JCAS (methods.md §3.2-3.3; Guo & Yuan, MICCAI 2022).

A transition matrix ``T`` maps a clean label distribution to a noisy one: ``T[i, j] = P(noisy = j | clean = i)``
(rows = clean, columns = noisy; every row sums to 1). JCAS learns two of them:

* the class transition ``T_C`` (``C x C``) for the per-voxel class labels, and
* the affinity transition ``T_A`` (``2 x 2``) for the pair-wise labels "do tokens i and j share a class?".

**Affinity state order** (fixed everywhere in this project): index 0 = ``"dissimilar"`` (different classes),
index 1 = ``"similar"`` (same class). :func:`affinity_loss` reads ``T_A`` in this order and
:func:`derived_affinity_transition` writes it in this order. (The reference code builds its class-derived ``T_A``
with "similar" first and compares it with a ``T_A`` that it reads with "dissimilar" first: a bug not copied.)

Everything is a pure function of tensors except :class:`TransitionMatrix`, the learnable parametrisation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DISSIMILAR",
    "SIMILAR",
    "transition_from_weights",
    "weights_from_transition",
    "TransitionMatrix",
    "apply_transition",
    "corrected_nll",
    "pairwise_same_class",
    "affinity_loss",
    "volume_penalty",
    "derived_affinity_transition",
    "consistency_loss",
    "noisy_class_frequencies",
    "prior_class_transition",
    "label_confusion",
    "class_transition_from_confusion",
]

DISSIMILAR = 0
SIMILAR = 1


def _check_square(matrix: torch.Tensor, name: str) -> None:
    if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"{name} must be a square 2D matrix, got shape {tuple(matrix.shape)}.")


def transition_from_weights(weights: torch.Tensor) -> torch.Tensor:
    """``T = row_normalise(I + sigmoid(W) * (1 - I))`` (methods.md §3.2).

    The diagonal before normalisation is fixed at 1 and every off-diagonal entry lies in ``(0, 1)``, so ``T`` is
    always row-stochastic, strictly positive and diagonally dominant: a clean class is always the most likely
    noisy class, which keeps the loss correction identifiable.

    Args:
        weights: ``W``, ``(K, K)`` unconstrained weights (the diagonal is ignored).

    Returns:
        ``T``: ``(K, K)``, rows = clean states, columns = noisy states, rows sum to 1.

    Raises:
        ValueError: if ``weights`` is not square.
    """
    _check_square(weights, "weights")
    identity = torch.eye(weights.shape[0], dtype=weights.dtype, device=weights.device)
    unnormalised = identity + torch.sigmoid(weights) * (1.0 - identity)
    return unnormalised / unnormalised.sum(dim=1, keepdim=True)


def weights_from_transition(transition: Any, floor: float = 1e-3) -> torch.Tensor:
    """Weights ``W`` for which :func:`transition_from_weights` gives ``transition`` (or the nearest it can give).

    ``T = row_normalise(I + sigmoid(W) (1 - I))`` fixes ``T[i, j] / T[i, i] = sigmoid(W[i, j])``, so
    ``W[i, j] = logit(T[i, j] / T[i, i])``. That ratio must lie in ``(0, 1)``: the parametrisation keeps every
    entry positive and the clean class the most likely noisy class of its row. Ratios are clipped to
    ``[floor, 1 - floor]``; a matrix with a zero entry or a row whose diagonal is not its largest entry is therefore
    replaced by the nearest representable one (``transition_from_weights(W)`` shows which).

    Args:
        transition: ``(K, K)`` row-stochastic matrix (tensor or nested list), rows = clean, columns = noisy.
        floor: clip margin of the ratios, in ``(0, 0.5)``.

    Returns:
        ``W``, ``(K, K)`` float32 (the diagonal is 0 and unused).

    Raises:
        ValueError: if ``transition`` is not square, has negative or non-finite entries, a row that does not sum
            to 1 (tolerance 1e-4), or a zero diagonal; or ``floor`` is outside ``(0, 0.5)``.
    """
    if not 0 < floor < 0.5:
        raise ValueError(f"floor must be in (0, 0.5), got {floor}.")
    matrix = torch.as_tensor(transition, dtype=torch.float64).detach().cpu()
    _check_square(matrix, "transition")
    if not bool(torch.isfinite(matrix).all()) or bool((matrix < 0).any()):
        raise ValueError(f"transition must have finite, non-negative entries, got {matrix.tolist()}.")
    if not torch.allclose(matrix.sum(dim=1), torch.ones(matrix.shape[0], dtype=torch.float64), atol=1e-4):
        raise ValueError(f"transition rows must sum to 1, got row sums {matrix.sum(dim=1).tolist()}.")
    diagonal = torch.diagonal(matrix)
    if bool((diagonal <= 0).any()):
        raise ValueError(f"transition needs a positive diagonal, got {diagonal.tolist()}.")
    ratio = (matrix / diagonal[:, None]).clamp(float(floor), 1.0 - float(floor))
    weights = torch.logit(ratio)
    weights.fill_diagonal_(0.0)
    return weights.float()


class TransitionMatrix(nn.Module):
    """Learnable row-stochastic ``K x K`` transition matrix (thin wrapper of :func:`transition_from_weights`).

    Args:
        num_states: ``K`` (``C`` for the class transition, 2 for the affinity transition).
        init: initial value of every weight (a float); ``-2`` (paper code) gives off-diagonal
            ``sigmoid(-2) ~ 0.12`` before normalisation, i.e. a diagonal of ``1 / (1 + 0.12 (K - 1))``. Or the
            initial ``T`` itself, ``(K, K)`` row-stochastic (tensor or nested list), converted by
            :func:`weights_from_transition`.

    Raises:
        ValueError: if ``num_states < 2``, a float ``init`` is not finite, or a matrix ``init`` is not a
            ``(K, K)`` transition matrix.
    """

    def __init__(self, num_states: int, init: float | Any = -2.0):
        super().__init__()
        if int(num_states) != num_states or num_states < 2:
            raise ValueError(f"num_states must be an integer >= 2, got {num_states}.")
        self.num_states = int(num_states)
        if isinstance(init, (int, float)) and not isinstance(init, bool):
            if not np.isfinite(init):
                raise ValueError(f"init must be finite, got {init}.")
            weights = torch.full((self.num_states, self.num_states), float(init))
        else:
            weights = weights_from_transition(init)
            if weights.shape != (self.num_states, self.num_states):
                raise ValueError(
                    f"init must be a ({self.num_states}, {self.num_states}) matrix, got {tuple(weights.shape)}."
                )
        self.weights = nn.Parameter(weights)

    def forward(self) -> torch.Tensor:
        """Return ``T``, ``(K, K)`` (rows = clean, columns = noisy)."""
        return transition_from_weights(self.weights)


def apply_transition(probs: torch.Tensor, transition: torch.Tensor) -> torch.Tensor:
    """Noisy-label probabilities ``p_noisy[j] = sum_i p_clean[i] T[i, j]`` per voxel.

    Args:
        probs: ``(B, C, *S)`` clean-class probabilities (e.g. ``softmax(P)``), not logits.
        transition: ``T``, ``(C, C)`` rows = clean, columns = noisy.

    Returns:
        ``(B, C, *S)`` noisy-class probabilities.

    Raises:
        ValueError: if ``T`` is not ``C x C``.
    """
    _check_square(transition, "transition")
    if probs.dim() < 2 or probs.shape[1] != transition.shape[0]:
        raise ValueError(
            f"probs {tuple(probs.shape)} must be (B, C, ...) with C = {transition.shape[0]} (the size of T)."
        )
    return torch.matmul(probs.movedim(1, -1), transition.to(probs.dtype)).movedim(-1, 1)


def _squeeze_label_channel(labels: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    # accept (B, 1, *S) as MONAI delivers labels, and (B, *S)
    if labels.dim() == reference.dim():
        if labels.shape[1] != 1:
            raise ValueError(f"labels must have one channel, got shape {tuple(labels.shape)}.")
        labels = labels[:, 0]
    if labels.dim() != reference.dim() - 1 or labels.shape[0] != reference.shape[0] or (
        labels.shape[1:] != reference.shape[2:]
    ):
        raise ValueError(
            f"labels {tuple(labels.shape)} do not match predictions {tuple(reference.shape)}: expected (B, 1, *S) "
            "or (B, *S)."
        )
    return labels.long()


def corrected_nll(
    probs_clean: torch.Tensor, transition: torch.Tensor, noisy_labels: torch.Tensor, eps: float = 1e-7
) -> torch.Tensor:
    """Forward loss correction: ``NLL(log(p T), y_noisy)``, averaged over voxels (methods.md §3.2).

    The network predicts clean classes; passing its probabilities through ``T`` gives the distribution of the
    noisy labels, which is what the noisy annotation can supervise.

    Args:
        probs_clean: ``(B, C, *S)`` clean-class **probabilities** (apply softmax to the logits first).
        transition: ``T_C``, ``(C, C)``, rows = clean, columns = noisy.
        noisy_labels: ``(B, 1, *S)`` or ``(B, *S)`` integer noisy labels in ``[0, C)`` (float holding integers
            accepted).
        eps: lower clamp of ``p T`` before the log (guards float underflow).

    Returns:
        scalar loss.

    Raises:
        ValueError: on mismatched shapes.
    """
    labels = _squeeze_label_channel(noisy_labels, probs_clean)
    noisy_probs = apply_transition(probs_clean, transition)
    return F.nll_loss(torch.log(noisy_probs.clamp_min(eps)), labels)


def pairwise_same_class(token_labels: torch.Tensor) -> torch.Tensor:
    """Affinity labels ``Y'_ij = 1`` if tokens ``i`` and ``j`` share a class, else 0.

    Args:
        token_labels: ``(B, N)`` integer token labels (e.g. from :func:`custom.networks.dar.token_class_labels`).

    Returns:
        ``(B, N, N)`` float32 0/1 matrix (1 = :data:`SIMILAR`).

    Raises:
        ValueError: if ``token_labels`` is not 2D.
    """
    if token_labels.dim() != 2:
        raise ValueError(f"token_labels must be (B, N), got shape {tuple(token_labels.shape)}.")
    return (token_labels[:, :, None] == token_labels[:, None, :]).float()


def affinity_loss(
    affinity: torch.Tensor, same_class: torch.Tensor, affinity_transition: torch.Tensor | None = None
) -> torch.Tensor:
    """Affinity BCE, with or without the affinity transition (methods.md §3.2).

    With ``T_A`` the predicted clean affinity ``A_ij = P(clean similar)`` is turned into the probability that the
    *noisy* labels are similar: ``s_hat_ij = (1 - A_ij) T_A[dis, sim] + A_ij T_A[sim, sim]``; without it
    (warm-up) ``s_hat = A``.

    Args:
        affinity: ``A``, ``(B, N, N)`` in ``[0, 1]`` (a probability, e.g. the clamped cosine affinity).
        same_class: ``Y'``, ``(B, N, N)`` 0/1 noisy affinity labels (:func:`pairwise_same_class`).
        affinity_transition: ``T_A``, ``(2, 2)`` in the order (0 = dissimilar, 1 = similar), or ``None``.

    Returns:
        scalar mean BCE.

    Raises:
        ValueError: on mismatched shapes or a ``T_A`` that is not ``2 x 2``.
    """
    if affinity.dim() != 3 or affinity.shape != same_class.shape:
        raise ValueError(
            f"affinity {tuple(affinity.shape)} and same_class {tuple(same_class.shape)} must both be (B, N, N)."
        )
    if affinity_transition is None:
        noisy_similar = affinity
    else:
        if affinity_transition.shape != (2, 2):
            raise ValueError(f"affinity_transition must be 2 x 2, got shape {tuple(affinity_transition.shape)}.")
        t = affinity_transition.to(affinity.dtype)
        noisy_similar = (1.0 - affinity) * t[DISSIMILAR, SIMILAR] + affinity * t[SIMILAR, SIMILAR]
    return F.binary_cross_entropy(noisy_similar, same_class.to(noisy_similar.dtype))


def volume_penalty(transition: torch.Tensor, min_det: float = 0.0) -> torch.Tensor:
    """``log |det T|`` (``slogdet``): minimising it shrinks the simplex spanned by ``T`` (methods.md §3.2).

    The penalty is unbounded below: with nothing to resist it ``T`` goes singular (seen on LA for ``T_A``, whose
    rows reached ``[0.5, 0.5]``: ``det`` rounds to 0 and ``slogdet``'s gradient, ``T^-T``, turns the weights NaN).
    ``min_det`` floors it: below that determinant the penalty is constant and pushes no further.

    Args:
        transition: ``(K, K)`` transition matrix.
        min_det: the floor of ``|det T|`` (0: none).

    Returns:
        scalar, ``max(log |det T|, log min_det)``.

    Raises:
        ValueError: if ``transition`` is not square or ``min_det`` is negative or not below 1.
    """
    _check_square(transition, "transition")
    if not 0.0 <= min_det < 1.0:
        raise ValueError(f"min_det must be in [0, 1), got {min_det}.")
    logdet = torch.linalg.slogdet(transition).logabsdet
    return logdet.clamp_min(math.log(min_det)) if min_det > 0 else logdet


def derived_affinity_transition(class_transition: torch.Tensor, class_frequencies: torch.Tensor) -> torch.Tensor:
    """The affinity transition implied by the class transition (consistency, methods.md §3.3).

    Two tokens with independent clean classes drawn from ``pi`` and labels flipped independently through ``T_C``
    have ``P(noisy same | clean classes i, m) = sum_j T_C[i, j] T_C[m, j] = M[i, m]`` with ``M = T_C T_C^T``, so::

        a = P(noisy same | clean same)      = sum_i pi_i^2 M_ii / sum_i pi_i^2
        b = P(noisy same | clean different) = sum_{i != m} pi_i pi_m M_im / sum_{i != m} pi_i pi_m

    Args:
        class_transition: ``T_C``, ``(C, C)`` row-stochastic, rows = clean, columns = noisy.
        class_frequencies: ``pi``, ``(C,)`` class frequencies summing to 1 with at least two non-zero entries
            (:func:`noisy_class_frequencies`; the noisy frequencies stand in for the unknown clean ones).

    Returns:
        ``(2, 2)`` in the affinity state order (0 = dissimilar, 1 = similar), rows = clean, columns = noisy:
        ``[[1 - b, b], [1 - a, a]]``. Differentiable w.r.t. ``T_C``.

    Raises:
        ValueError: on mismatched shapes.
    """
    _check_square(class_transition, "class_transition")
    if class_frequencies.dim() != 1 or class_frequencies.shape[0] != class_transition.shape[0]:
        raise ValueError(
            f"class_frequencies must be ({class_transition.shape[0]},), got shape {tuple(class_frequencies.shape)}."
        )
    pi = class_frequencies.to(device=class_transition.device, dtype=class_transition.dtype)
    same_noisy = class_transition @ class_transition.T  # M[i, m]
    pair_weight = pi[:, None] * pi[None, :]
    same_weight = torch.diagonal(pair_weight)
    a = (same_weight * torch.diagonal(same_noisy)).sum() / same_weight.sum()
    different_weight_total = pair_weight.sum() - same_weight.sum()
    b = ((pair_weight * same_noisy).sum() - (same_weight * torch.diagonal(same_noisy)).sum()) / different_weight_total
    row_dissimilar = torch.stack([1.0 - b, b])
    row_similar = torch.stack([1.0 - a, a])
    return torch.stack([row_dissimilar, row_similar])


def consistency_loss(
    class_transition: torch.Tensor, affinity_transition: torch.Tensor, class_frequencies: torch.Tensor
) -> torch.Tensor:
    """CACR: ``MSE(derived_affinity_transition(T_C, pi), T_A)`` (methods.md §3.3); gradients reach both.

    Args:
        class_transition: ``T_C``, ``(C, C)``.
        affinity_transition: ``T_A``, ``(2, 2)`` (0 = dissimilar, 1 = similar).
        class_frequencies: ``pi``, ``(C,)``.

    Returns:
        scalar.

    Raises:
        ValueError: on mismatched shapes.
    """
    if affinity_transition.shape != (2, 2):
        raise ValueError(f"affinity_transition must be 2 x 2, got shape {tuple(affinity_transition.shape)}.")
    derived = derived_affinity_transition(class_transition, class_frequencies)
    return F.mse_loss(derived, affinity_transition.to(derived.dtype))


def _class_counts_of(labels: Any, num_classes: int) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    array = np.asarray(labels)
    if array.size == 0:
        return np.zeros(num_classes, dtype=np.int64)
    if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
        raise ValueError("label arrays must hold integer class indices.")
    array = array.astype(np.int64).ravel()
    if array.min() < 0 or array.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got range [{array.min()}, {array.max()}].")
    return np.bincount(array, minlength=num_classes)


def noisy_class_frequencies(
    num_classes: int, label_arrays: Iterable[Any] | None = None, counts: Any | None = None
) -> torch.Tensor:
    """Class frequencies ``pi`` of the noisy training labels, for :func:`derived_affinity_transition`.

    Give exactly one of ``label_arrays`` (an iterable of label volumes, numpy or torch, any shape; a generator
    that loads one case at a time keeps memory flat) or ``counts`` (voxel counts per class, length ``C``).
    Run it once before training, not in the training step (it moves data to the host).

    Args:
        num_classes: ``C >= 2``.
        label_arrays: noisy label volumes with integer values in ``[0, C)``.
        counts: ``(C,)`` non-negative voxel counts.

    Returns:
        ``(C,)`` float64 CPU tensor summing to 1.

    Raises:
        ValueError: if both or neither source is given, labels fall outside ``[0, C)``, counts are negative or of
            the wrong length, or fewer than two classes occur (the "clean different" pair probability of the
            consistency target would be undefined).
    """
    if int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes}.")
    if (label_arrays is None) == (counts is None):
        raise ValueError("give exactly one of label_arrays and counts.")
    if counts is not None:
        if isinstance(counts, torch.Tensor):
            counts = counts.detach().cpu().numpy()
        totals = np.asarray(counts, dtype=np.float64)
        if totals.shape != (num_classes,):
            raise ValueError(f"counts must have shape ({num_classes},), got {totals.shape}.")
        if not np.all(np.isfinite(totals)) or np.any(totals < 0):
            raise ValueError(f"counts must be finite and non-negative, got {totals}.")
    else:
        totals = np.zeros(num_classes, dtype=np.float64)
        for labels in label_arrays:
            totals += _class_counts_of(labels, num_classes)
    if np.count_nonzero(totals) < 2:
        raise ValueError(f"at least two classes must occur in the noisy labels, got counts {totals}.")
    return torch.as_tensor(totals / totals.sum(), dtype=torch.float64)


def prior_class_transition(class_frequencies: Any, rate: float = 0.2) -> torch.Tensor:
    """A prior ``T_C`` that never puts more mass on a class than its share: ``T = (1 - rho) I + rho 1 pi^T``.

    The noise model: with probability ``rho`` a voxel's label is redrawn from the class frequencies ``pi`` (which
    may give back the clean class). Hence ``T[i, j] = rho pi_j <= pi_j`` for ``j != i``: the share of clean
    background labelled foreground never exceeds the foreground share (a constant ``W = -2`` gives 0.106 for two
    classes whatever the foreground share), while a minority class loses ``rho (1 - pi_i)`` of its voxels, the
    direction that boundary noise and missed structures take. For binary LA (``pi_fg ~ 0.07``) and ``rho = 0.2``:
    ``P(noisy fg | clean bg) = 0.014``, ``P(noisy bg | clean fg) = 0.186``.

    Args:
        class_frequencies: ``pi``, ``(C,)`` non-negative, summing to 1 (e.g. :func:`noisy_class_frequencies`).
        rate: ``rho`` in ``(0, 0.5)``; below 0.5 every row keeps its clean class the most likely noisy class, as
            :func:`transition_from_weights` requires.

    Returns:
        ``(C, C)`` float64 row-stochastic matrix, rows = clean, columns = noisy.

    Raises:
        ValueError: if ``rate`` is outside ``(0, 0.5)`` or ``class_frequencies`` is not a probability vector.
    """
    if not 0 < rate < 0.5:
        raise ValueError(f"rate must be in (0, 0.5), got {rate}.")
    pi = torch.as_tensor(class_frequencies, dtype=torch.float64).detach().cpu()
    if pi.dim() != 1 or pi.shape[0] < 2:
        raise ValueError(f"class_frequencies must be (C,) with C >= 2, got shape {tuple(pi.shape)}.")
    if not bool(torch.isfinite(pi).all()) or bool((pi < 0).any()) or abs(float(pi.sum()) - 1.0) > 1e-6:
        raise ValueError(f"class_frequencies must be non-negative and sum to 1, got {pi.tolist()}.")
    identity = torch.eye(pi.shape[0], dtype=torch.float64)
    return (1.0 - float(rate)) * identity + float(rate) * pi[None, :].expand_as(identity)


def label_confusion(clean: Any, noisy: Any, num_classes: int) -> np.ndarray:
    """Voxel counts ``N[i, j]`` of clean class ``i`` labelled ``j`` in a pair of label volumes of one shape.

    Args:
        clean: clean class indices, any shape (numpy or torch).
        noisy: noisy class indices, same shape.
        num_classes: ``C >= 2``.

    Returns:
        ``(C, C)`` int64 counts, rows = clean, columns = noisy.

    Raises:
        ValueError: on different shapes, or labels that are not integers in ``[0, C)``.
    """
    if int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes}.")
    arrays = []
    for labels in (clean, noisy):
        if isinstance(labels, torch.Tensor):
            labels = labels.detach().cpu().numpy()
        arrays.append(np.asarray(labels))
    if arrays[0].shape != arrays[1].shape:
        raise ValueError(f"clean {arrays[0].shape} and noisy {arrays[1].shape} labels must have the same shape.")
    flat = []
    for array in arrays:
        _class_counts_of(array, num_classes)  # validates integer values in [0, C)
        flat.append(array.astype(np.int64).ravel())
    classes = int(num_classes)
    return np.bincount(flat[0] * classes + flat[1], minlength=classes * classes).reshape(classes, classes)


def class_transition_from_confusion(confusion: Any, clean_share: float = 0.0) -> torch.Tensor:
    """Row-normalised confusion counts, optionally mixed with clean cases: ``w I + (1 - w) row_normalise(N)``.

    ``row_normalise(N)[i, j] = P(noisy = j | clean = i)`` over the counted voxels (e.g. the noise simulator applied
    to clean labels). When only a fraction ``1 - w`` of the training cases carries that noise and the rest is
    clean, a single transition for every training voxel is the mixture with the identity (exact when the cases have
    the same class composition on average). A class that never occurs clean gets the identity row.

    Args:
        confusion: ``(C, C)`` non-negative counts (:func:`label_confusion`, summed over volumes), rows = clean.
        clean_share: ``w`` in ``[0, 1]``, the share of training cases whose labels are clean.

    Returns:
        ``(C, C)`` float64 row-stochastic matrix, rows = clean, columns = noisy.

    Raises:
        ValueError: if ``confusion`` is not square with non-negative finite counts, or ``clean_share`` is outside
            ``[0, 1]``.
    """
    if not 0.0 <= clean_share <= 1.0:
        raise ValueError(f"clean_share must be in [0, 1], got {clean_share}.")
    counts = torch.as_tensor(np.asarray(confusion, dtype=np.float64))
    _check_square(counts, "confusion")
    if not bool(torch.isfinite(counts).all()) or bool((counts < 0).any()):
        raise ValueError(f"confusion counts must be finite and non-negative, got {counts.tolist()}.")
    identity = torch.eye(counts.shape[0], dtype=torch.float64)
    totals = counts.sum(dim=1, keepdim=True)
    observed = torch.where(totals > 0, counts / totals.clamp_min(1e-12), identity)
    return float(clean_share) * identity + (1.0 - float(clean_share)) * observed
