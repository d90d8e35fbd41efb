"""ALC adaptive label refinement and sample selection from perturbed teacher predictions (methods.md section 1,
steps 2-5; seed 003).

Pipeline for a batch of LQ patches ``x`` (B, 1, *S):

1. ``perturbed_teacher_predictions``: ``T`` teacher outputs ``p_t = softmax(f'(x + xi_t; d_t))`` with Gaussian input
   noise ``xi_t = clamp(0.1 N(0, 1), -0.2, 0.2)`` and dropout masks ``d_t`` (Eq. 3 of ALC), no gradient.
2. ``kl_to_mean``: per-voxel ``D_t = KL(p_t || p_bar)`` with ``p_bar = mean_t p_t`` (Eqs. 4-5).
3. ``fusion_weights`` and ``fuse_predictions``: ``p_hat = sum_t w_t p_t`` with ``w_t = softmax_t(-D_t / tau)`` or
   ``w_t ~ 1 / (D_t + eps)`` (Eq. 6); ``refined_labels``: ``argmax p_hat``.
4. ``sample_uncertainty``: ``U_i = mean_v sum_t w_t D_t`` (Eq. 7); ``select_lowest_uncertainty`` keeps the
   ``ceil(rho B)`` most certain samples (Eq. 8).

Eq. 6 is not legible in the available text of the paper (it says the outputs are fused "using weights inversely
proportional to their uncertainty") and its code is not public, so the weighting is a *decision* (methods.md):
``mode="softmax"`` with temperature ``tau`` (default :data:`DEFAULT_FUSION_TEMPERATURE` = 1.0, i.e. the ``exp(-KL)``
weighting of uncertainty-rectified pseudo labels, Zheng & Yang, IJCV 2021), or ``mode="inverse"``. At ``tau = 1``
the weights stay close to uniform where the perturbations agree (per-voxel KL values are typically < 0.1) and
mainly down-weight outlying samples; a smaller ``tau`` (e.g. 0.05) sharpens the weighting.

Everything except the teacher forward is a pure function of tensors; nothing synchronises with the host.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import nn

from custom.evaluation.metrics import foreground_dice_per_sample

__all__ = [
    "DEFAULT_FUSION_TEMPERATURE",
    "BATCH_NORM_MODES",
    "teacher_sampling_mode",
    "teacher_probabilities",
    "perturbed_teacher_predictions",
    "kl_to_mean",
    "fusion_weights",
    "fuse_predictions",
    "normalized_entropy",
    "refined_labels",
    "gate_refined_labels",
    "sample_uncertainty",
    "select_lowest_uncertainty",
    "ALCRefinement",
    "alc_refine",
]

#: Default temperature of ``w_t = softmax_t(-D_t / tau)`` (decision, see the module docstring).
DEFAULT_FUSION_TEMPERATURE = 1.0

_DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


#: How the teacher's BatchNorm layers normalise while it samples: ``"batch"`` (statistics of the batch being
#: predicted, as the UA-MT/MTCL reference code, whose EMA teacher is never switched to eval mode) or ``"running"``
#: (the running statistics averaged from the student, :mod:`custom.networks.ema`).
BATCH_NORM_MODES = ("batch", "running")


@contextmanager
def teacher_sampling_mode(model: nn.Module, batch_norm: str = "batch", dropout: bool = True) -> Iterator[nn.Module]:
    """Temporarily set the layer modes of a teacher that samples predictions; everything is restored on exit.

    Every module is put in eval mode, then dropout layers in train mode when ``dropout`` (Monte-Carlo dropout) and,
    with ``batch_norm="batch"``, BatchNorm layers normalise with the statistics of the current batch *without*
    touching their running statistics (``track_running_stats`` is switched off for the duration), so sampling never
    changes the teacher's buffers.

    Why ``"batch"`` is the default: with short schedules and small batches the running statistics of an EMA teacher
    lag its weights; the Mean Teacher of the LA CPU benchmark scored a mean Dice of 0.44 with running statistics and
    0.75 with batch statistics on 6 LQ training volumes, same weights (``scripts/teacher_batch_norm_check.py``,
    docs/methods/alc.md).

    Args:
        model: the teacher.
        batch_norm: ``"batch"`` or ``"running"`` (see :data:`BATCH_NORM_MODES`).
        dropout: keep dropout layers stochastic.

    Raises:
        ValueError: for an unknown ``batch_norm``.
    """
    if batch_norm not in BATCH_NORM_MODES:
        raise ValueError(f"batch_norm must be one of {BATCH_NORM_MODES}, got {batch_norm!r}.")
    previous = [(module, module.training) for module in model.modules()]
    batch_norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    tracking = [m.track_running_stats for m in batch_norms]
    try:
        model.eval()
        for module in model.modules():
            if dropout and isinstance(module, _DROPOUT_TYPES):
                module.train()
        if batch_norm == "batch":
            for module in batch_norms:
                module.train()
                module.track_running_stats = False  # batch statistics, running buffers left alone
        yield model
    finally:
        for module, was_training in previous:
            module.training = was_training
        for module, was_tracking in zip(batch_norms, tracking):
            module.track_running_stats = was_tracking


def teacher_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the class dim of logits ``(B, C, *S)``, in at least float32.

    Half-precision (AMP) probabilities are too coarse for the KL terms and label-issue thresholds downstream.
    """
    if logits.dtype in (torch.float16, torch.bfloat16):
        return torch.softmax(logits, dim=1, dtype=torch.float32)
    return torch.softmax(logits, dim=1)


def perturbed_teacher_predictions(
    teacher: nn.Module,
    x: torch.Tensor,
    num_samples: int = 8,
    noise_std: float = 0.1,
    noise_clip: float = 0.2,
    mc_chunk: int | None = None,
    generator: torch.Generator | None = None,
    batch_norm: str = "batch",
) -> torch.Tensor:
    """``T`` stochastic teacher predictions per sample: input noise plus active dropout (Eq. 3).

    The batch is repeated ``T`` times (row ``t * B + b`` is sample ``b`` under perturbation ``t``) and evaluated in
    chunks of ``mc_chunk`` perturbations (``mc_chunk * B`` rows per forward) to bound memory. All input noise is
    drawn up front from ``generator``, so the noise does not depend on ``mc_chunk``. Dropout masks come from
    PyTorch's global RNG (dropout layers accept no generator): seed it (``torch.manual_seed``) for reproducible
    masks; identical results across different ``mc_chunk`` values are only guaranteed for a dropout-free teacher
    (and, with ``batch_norm="batch"``, one without BatchNorm: each chunk is normalised with its own statistics).

    Args:
        teacher: network mapping ``(N, C_in, *S)`` to logits ``(N, C, *S)``; its module modes are restored.
        x: input batch ``(B, C_in, *S)``.
        num_samples: ``T >= 1``.
        noise_std: standard deviation of the Gaussian input noise (0 disables it).
        noise_clip: the noise is clamped to ``[-noise_clip, noise_clip]``.
        mc_chunk: perturbations per forward pass (None = all ``T`` at once).
        generator: optional ``torch.Generator`` on ``x.device`` for the input noise.
        batch_norm: ``"batch"`` (BatchNorm on the statistics of each forward chunk, the reference behaviour) or
            ``"running"`` (running statistics); see :func:`teacher_sampling_mode`.

    Returns:
        Probabilities ``(T, B, C, *S)`` on ``x.device`` (float32 when the teacher returns half precision), with no
        autograd history.

    Raises:
        ValueError: for a bad argument; TypeError if the teacher does not return a tensor.
    """
    if x.ndim < 3:
        raise ValueError(f"x must be (B, C_in, *S) with at least one spatial dim, got shape {tuple(x.shape)}.")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
    if noise_std < 0 or noise_clip < 0:
        raise ValueError(f"noise_std and noise_clip must be >= 0, got {noise_std} and {noise_clip}.")
    if mc_chunk is not None and mc_chunk < 1:
        raise ValueError(f"mc_chunk must be None or >= 1, got {mc_chunk}.")
    batch = x.shape[0]
    chunk = num_samples if mc_chunk is None else min(int(mc_chunk), num_samples)

    with torch.no_grad(), teacher_sampling_mode(teacher, batch_norm=batch_norm, dropout=True):
        repeated = x.repeat(num_samples, *([1] * (x.ndim - 1)))  # (T * B, C_in, *S), t-major
        if noise_std > 0:
            noise = torch.randn(repeated.shape, generator=generator, device=x.device, dtype=x.dtype)
            repeated = repeated + (noise * noise_std).clamp_(-noise_clip, noise_clip)
        probs: torch.Tensor | None = None
        for start in range(0, num_samples, chunk):
            rows = slice(start * batch, min(start + chunk, num_samples) * batch)
            logits = teacher(repeated[rows])
            if not isinstance(logits, torch.Tensor):
                raise TypeError(f"the teacher must return a logits tensor, got {type(logits).__name__}.")
            if logits.ndim != x.ndim or logits.shape[0] != rows.stop - rows.start:
                raise ValueError(
                    f"teacher output shape {tuple(logits.shape)} is not (N, C, *S) for input {tuple(x.shape)}."
                )
            chunk_probs = teacher_probabilities(logits)
            if probs is None:  # preallocate once the number of classes is known
                probs = chunk_probs.new_empty((num_samples * batch, *chunk_probs.shape[1:]))
            probs[rows] = chunk_probs
    assert probs is not None
    return probs.reshape(num_samples, batch, *probs.shape[1:])


def kl_to_mean(probs: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Per-voxel divergence of each perturbation from the mean, ``D_t = KL(p_t || p_bar)`` (Eqs. 4-5 of ALC).

    Args:
        probs: probabilities ``(T, B, C, *S)``.
        eps: floor applied inside the logarithms (``0 log 0 = 0`` is kept exact).

    Returns:
        ``D`` of shape ``(T, B, *S)``, non-negative.
    """
    if probs.ndim < 4:
        raise ValueError(f"probs must be (T, B, C, *S), got shape {tuple(probs.shape)}.")
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}.")
    mean_probs = probs.mean(dim=0, keepdim=True)
    log_ratio = probs.clamp_min(eps).log() - mean_probs.clamp_min(eps).log()
    return (probs * log_ratio).sum(dim=2).clamp_min(0.0)


def fusion_weights(
    divergence: torch.Tensor, tau: float = DEFAULT_FUSION_TEMPERATURE, mode: str = "softmax", eps: float = 1e-8
) -> torch.Tensor:
    """Per-voxel fusion weights over the ``T`` perturbations (Eq. 6 of ALC; decision, see module docstring).

    Args:
        divergence: ``D`` of shape ``(T, B, *S)`` (from :func:`kl_to_mean`).
        tau: temperature of ``softmax_t(-D_t / tau)`` (``mode="softmax"`` only).
        mode: ``"softmax"`` or ``"inverse"`` (``w_t = (1 / (D_t + eps)) / sum_s 1 / (D_s + eps)``).
        eps: regulariser of the inverse weights.

    Returns:
        Weights ``(T, B, *S)``, non-negative and summing to 1 over ``T``.
    """
    if divergence.ndim < 2:
        raise ValueError(f"divergence must be (T, B, *S), got shape {tuple(divergence.shape)}.")
    if mode == "softmax":
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}.")
        return torch.softmax(-divergence / tau, dim=0)
    if mode == "inverse":
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}.")
        inverse = 1.0 / (divergence + eps)
        return inverse / inverse.sum(dim=0, keepdim=True)
    raise ValueError(f"mode must be 'softmax' or 'inverse', got {mode!r}.")


def fuse_predictions(probs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Fused prediction ``p_hat = sum_t w_t p_t`` (Eq. 6 of ALC).

    Args:
        probs: probabilities ``(T, B, C, *S)``.
        weights: ``(T, B, *S)`` summing to 1 over ``T``.

    Returns:
        ``p_hat`` of shape ``(B, C, *S)`` (a probability map when the weights are normalised).
    """
    if probs.ndim < 4 or weights.shape != probs.shape[:2] + probs.shape[3:]:
        raise ValueError(
            f"weights {tuple(weights.shape)} must be probs {tuple(probs.shape)} without the class dim (T, B, *S)."
        )
    return (probs * weights.unsqueeze(2)).sum(dim=0)


def normalized_entropy(probs: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Shannon entropy over the class dim divided by ``log C``.

    Args:
        probs: probabilities ``(B, C, *S)``, ``C >= 2``.
        eps: floor inside the logarithm.

    Returns:
        ``(B, 1, *S)`` in ``[0, 1]`` (1 = uniform prediction).
    """
    if probs.ndim < 2 or probs.shape[1] < 2:
        raise ValueError(f"probs must be (B, C, *S) with C >= 2, got shape {tuple(probs.shape)}.")
    entropy = -(probs * probs.clamp_min(eps).log()).sum(dim=1, keepdim=True)
    return (entropy / math.log(probs.shape[1])).clamp_(0.0, 1.0)


def refined_labels(
    fused_probs: torch.Tensor,
    noisy_labels: torch.Tensor | None = None,
    keep_noisy_if_uncertain: bool = False,
    uncertainty_threshold: float | None = None,
    voxel_uncertainty: torch.Tensor | None = None,
) -> torch.Tensor:
    """Refined hard labels ``argmax_c p_hat`` (methods.md section 1, step 4), optionally keeping the noisy label
    where the teacher is uncertain (*decision*).

    Args:
        fused_probs: ``p_hat`` ``(B, C, *S)``.
        noisy_labels: given labels ``(B, 1, *S)``; required when ``keep_noisy_if_uncertain``.
        keep_noisy_if_uncertain: keep ``noisy_labels`` at voxels whose uncertainty exceeds
            ``uncertainty_threshold``.
        uncertainty_threshold: threshold on the voxel uncertainty (same scale as ``voxel_uncertainty``).
        voxel_uncertainty: ``(B, 1, *S)`` uncertainty map; default: :func:`normalized_entropy` of ``p_hat`` (in
            [0, 1]). Another choice is the weighted divergence ``(w * D).sum(0).unsqueeze(1)``.

    Returns:
        Labels ``(B, 1, *S)``, dtype long.
    """
    if fused_probs.ndim < 3:
        raise ValueError(f"fused_probs must be (B, C, *S), got shape {tuple(fused_probs.shape)}.")
    labels = fused_probs.argmax(dim=1, keepdim=True)
    if not keep_noisy_if_uncertain:
        return labels
    if noisy_labels is None or uncertainty_threshold is None:
        raise ValueError("keep_noisy_if_uncertain needs noisy_labels and uncertainty_threshold.")
    if noisy_labels.shape != labels.shape:
        raise ValueError(f"noisy_labels must have shape {tuple(labels.shape)}, got {tuple(noisy_labels.shape)}.")
    if voxel_uncertainty is None:
        voxel_uncertainty = normalized_entropy(fused_probs)
    elif voxel_uncertainty.shape != labels.shape:
        raise ValueError(
            f"voxel_uncertainty must have shape {tuple(labels.shape)}, got {tuple(voxel_uncertainty.shape)}."
        )
    return torch.where(voxel_uncertainty > uncertainty_threshold, noisy_labels.long(), labels)


def gate_refined_labels(
    refined: torch.Tensor, noisy: torch.Tensor, num_classes: int, min_agreement: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep a sample's refined label only if it agrees with its noisy label at Dice ``>= min_agreement``.

    A refinement that rewrites most of a given annotation comes from a teacher that is not yet better than the
    annotation (early in training, or in a short schedule); such samples keep their noisy label *(decision,
    ``refine_min_agreement``; the paper has no gate)*.

    Args:
        refined / noisy: integer labels ``(B, 1, *S)``.
        num_classes: ``C``.
        min_agreement: threshold in ``[0, 1]`` (0 accepts every refinement).

    Returns:
        ``(labels (B, 1, *S), accepted (B,) bool)``.
    """
    if not 0.0 <= min_agreement <= 1.0:
        raise ValueError(f"min_agreement must be in [0, 1], got {min_agreement}.")
    accepted = foreground_dice_per_sample(refined, noisy, num_classes) >= min_agreement
    view = (-1,) + (1,) * (refined.ndim - 1)
    return torch.where(accepted.view(view), refined, noisy), accepted


def sample_uncertainty(
    divergence: torch.Tensor,
    weights: torch.Tensor | None,
    probs: torch.Tensor | None = None,
    mode: str = "weighted_kl",
) -> torch.Tensor:
    """Per-sample uncertainty ``U_i`` (Eq. 7 of ALC; the options are *decisions*).

    Args:
        divergence: ``D`` ``(T, B, *S)``.
        weights: fusion weights ``(T, B, *S)`` (needed for ``"weighted_kl"``).
        probs: probabilities ``(T, B, C, *S)`` (needed for ``"entropy"``).
        mode: ``"weighted_kl"``: ``mean_v sum_t w_t D_t``; ``"mean_kl"``: ``mean_v mean_t D_t``; ``"entropy"``:
            ``mean_v`` of the normalised entropy of ``p_bar = mean_t p_t``.

    Returns:
        ``(B,)`` tensor (lower = more certain).
    """
    if divergence.ndim < 2:
        raise ValueError(f"divergence must be (T, B, *S), got shape {tuple(divergence.shape)}.")
    batch = divergence.shape[1]
    if mode == "weighted_kl":
        if weights is None or weights.shape != divergence.shape:
            raise ValueError("mode 'weighted_kl' needs weights with the shape of divergence (T, B, *S).")
        voxel_map = (weights * divergence).sum(dim=0)
    elif mode == "mean_kl":
        voxel_map = divergence.mean(dim=0)
    elif mode == "entropy":
        if probs is None or probs.ndim != divergence.ndim + 1 or probs.shape[:2] != divergence.shape[:2]:
            raise ValueError("mode 'entropy' needs probs of shape (T, B, C, *S).")
        voxel_map = normalized_entropy(probs.mean(dim=0))
    else:
        raise ValueError(f"mode must be 'weighted_kl', 'mean_kl' or 'entropy', got {mode!r}.")
    return voxel_map.reshape(batch, -1).mean(dim=1)


def select_lowest_uncertainty(uncertainty: torch.Tensor, ratio: float = 0.5, k: int | None = None) -> torch.Tensor:
    """Boolean mask of the ``k`` samples with the lowest uncertainty (Eq. 8 of ALC).

    ``k = ceil(ratio * B)`` unless ``k`` is given. Exactly ``k`` samples are kept: ties are broken by the lower batch
    index (stable sort), and NaN uncertainties sort last (never preferred over a number).

    Args:
        uncertainty: ``(B,)``.
        ratio: fraction ``rho`` in ``[0, 1]`` (ignored when ``k`` is given).
        k: number of samples to keep, ``0 <= k <= B``.

    Returns:
        Bool mask ``(B,)`` on the device of ``uncertainty``.
    """
    if uncertainty.ndim != 1:
        raise ValueError(f"uncertainty must be (B,), got shape {tuple(uncertainty.shape)}.")
    batch = uncertainty.shape[0]
    if k is None:
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"ratio must be in [0, 1], got {ratio}.")
        k = math.ceil(round(ratio * batch, 9))  # round first: 0.3 * 10 must give 3, not 4
    elif not 0 <= k <= batch:
        raise ValueError(f"k must be in [0, {batch}], got {k}.")
    order = torch.sort(uncertainty, stable=True).indices
    mask = torch.zeros(batch, dtype=torch.bool, device=uncertainty.device)
    mask[order[:k]] = True
    return mask


class ALCRefinement(NamedTuple):
    """Outputs of :func:`alc_refine` (all without autograd history)."""

    refined_labels: torch.Tensor  # (B, 1, *S) long
    selected_mask: torch.Tensor  # (B,) bool
    uncertainty: torch.Tensor  # (B,)
    fused_probs: torch.Tensor  # (B, C, *S), p_hat
    mean_probs: torch.Tensor  # (B, C, *S), p_bar


def alc_refine(
    teacher: nn.Module,
    x: torch.Tensor,
    noisy_labels: torch.Tensor | None = None,
    *,
    num_samples: int = 8,
    noise_std: float = 0.1,
    noise_clip: float = 0.2,
    mc_chunk: int | None = None,
    tau: float = DEFAULT_FUSION_TEMPERATURE,
    weight_mode: str = "softmax",
    uncertainty_mode: str = "weighted_kl",
    selection_ratio: float = 0.5,
    keep_noisy_if_uncertain: bool = False,
    uncertainty_threshold: float | None = None,
    generator: torch.Generator | None = None,
    eps: float = 1e-8,
    batch_norm: str = "batch",
) -> ALCRefinement:
    """Steps 2-5 of ALC in one call: perturb, fuse, refine and select (see the module docstring).

    ``mean_probs`` (``p_bar``) is returned for a consistency term averaged over the perturbations (Eq. 10 of ALC):
    ``mean_t (s - p_t)^2`` and ``(s - p_bar)^2`` differ by a constant, so they give the same gradient.

    Args:
        teacher: the EMA teacher.
        x: LQ inputs ``(B, C_in, *S)``.
        noisy_labels: given LQ labels ``(B, 1, *S)`` (only needed with ``keep_noisy_if_uncertain``).
        Others: see :func:`perturbed_teacher_predictions`, :func:`fusion_weights`, :func:`sample_uncertainty`,
            :func:`select_lowest_uncertainty` and :func:`refined_labels`.

    Returns:
        :class:`ALCRefinement` ``(refined_labels, selected_mask, uncertainty, fused_probs, mean_probs)``.
    """
    probs = perturbed_teacher_predictions(
        teacher, x, num_samples, noise_std, noise_clip, mc_chunk, generator, batch_norm=batch_norm
    )
    divergence = kl_to_mean(probs, eps)
    weights = fusion_weights(divergence, tau, weight_mode, eps)
    fused = fuse_predictions(probs, weights)
    labels = refined_labels(fused, noisy_labels, keep_noisy_if_uncertain, uncertainty_threshold)
    uncertainty = sample_uncertainty(divergence, weights, probs, uncertainty_mode)
    selected = select_lowest_uncertainty(uncertainty, selection_ratio)
    return ALCRefinement(labels, selected, uncertainty, fused, probs.mean(dim=0))
