"""The JCAS training loss: class and affinity branches on two levels, with or without CALC (methods.md §3.2-3.4).

Stage 2 (``stage="correction"``)::

    L = L_C(fine) + 0.1 L_C(coarse) + L_A(coarse) + 0.1 L_A(fine)
        + 0.5 (log|det T_C| + log|det T_A|) + 0.01 L_cacr
    L_C = NLL(log(softmax(P) T_C), y) + NLL(log(softmax(Q) T_C), y)
    L_A = BCE((1 - A) T_A[dis, sim] + A T_A[sim, sim], Y')

Stage 1 (``stage="warmup"``) is the same without transition matrices: ``L_C = CE(P, y) + CE(Q, y)``,
``L_A = BCE(A, Y')``, no volume and no consistency term.

``class_loss="ce_dice"`` *(option, not in the paper)* adds a soft Dice to each class term, on the same
probabilities the NLL sees: ``Dice(softmax(P), y)`` in stage 1, ``Dice(softmax(P) T_C, y)`` in stage 2 (the
forward-corrected noisy-label probabilities, so the correction still applies). ``"ce"`` (default) is the
reference's plain NLL.

``fine`` is level 2 (full resolution), ``coarse`` level 1. Coarse logits are up-sampled (trilinear) to the label
resolution before the softmax, as the reference code does, rather than down-sampling the labels. The affinity
labels ``Y'`` come from the noisy labels pooled onto each level's token grid
(:func:`custom.networks.dar.token_class_labels`: majority class per token).

The transition matrices are parameters of :class:`JcasTransitions`, a module separate from the network, so the
trainer can give them their own optimiser (SGD, momentum 0.9, the main learning rate by default, see
:class:`custom.engines.jcas.JcasTrainer`) and the exported inference network never contains them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn

from custom.losses.transition import (
    TransitionMatrix,
    affinity_loss,
    apply_transition,
    consistency_loss,
    corrected_nll,
    derived_affinity_transition,
    pairwise_same_class,
    volume_penalty,
)
from custom.networks.dar import token_class_labels
from custom.networks.deep_supervision import JcasLevelOutput, JcasOutput

__all__ = ["STAGES", "CLASS_LOSSES", "JcasTransitions", "JcasLoss"]

STAGES = ("warmup", "correction")
CLASS_LOSSES = ("ce", "ce_dice")


class JcasTransitions(nn.Module):
    """The two learnable transition matrices of CALC and the class frequencies of the consistency target.

    Args:
        num_classes: ``C >= 2``.
        class_frequencies: ``pi``, ``(C,)`` noisy-label class frequencies (use
            :func:`custom.losses.transition.noisy_class_frequencies`); stored as a buffer, so it follows
            ``.to(device)`` and is saved in the ``state_dict``.
        init: initial weight of both matrices (``-2`` as in the paper code), used for every matrix not given below.
        class_transition: the initial ``T_C`` itself, ``(C, C)`` row-stochastic (e.g. an estimate of the noise,
            :func:`custom.engines.jcas.build_transitions`), or ``None`` (weights ``init``). When given, ``T_A``
            starts at the affinity transition it implies
            (:func:`custom.losses.transition.derived_affinity_transition` with ``pi``), so the consistency term
            starts at zero, unless ``affinity_transition`` is given too.
        affinity_transition: the initial ``T_A`` (2 x 2, order dissimilar, similar), or ``None``.

    Attributes:
        class_transition: :class:`TransitionMatrix` of size ``C`` (``T_C``).
        affinity_transition: :class:`TransitionMatrix` of size 2 (``T_A``; 0 = dissimilar, 1 = similar).

    Raises:
        ValueError: if ``class_frequencies`` is not ``(C,)``, negative, or has fewer than two non-zero entries, or
            an initial matrix is not a transition matrix of the right size.
    """

    def __init__(
        self,
        num_classes: int,
        class_frequencies: Sequence[float] | torch.Tensor,
        init: float = -2.0,
        class_transition: Sequence[Sequence[float]] | torch.Tensor | None = None,
        affinity_transition: Sequence[Sequence[float]] | torch.Tensor | None = None,
    ):
        super().__init__()
        frequencies = torch.as_tensor(class_frequencies, dtype=torch.float32).detach().cpu()
        if frequencies.shape != (num_classes,):
            raise ValueError(f"class_frequencies must have shape ({num_classes},), got {tuple(frequencies.shape)}.")
        if not bool(torch.isfinite(frequencies).all()) or bool((frequencies < 0).any()):
            raise ValueError(f"class_frequencies must be finite and non-negative, got {frequencies.tolist()}.")
        if int((frequencies > 0).sum()) < 2:
            raise ValueError(f"at least two class frequencies must be positive, got {frequencies.tolist()}.")
        self.num_classes = int(num_classes)
        self.class_transition = TransitionMatrix(
            num_classes, init=init if class_transition is None else class_transition
        )
        if affinity_transition is None and class_transition is not None:
            with torch.no_grad():
                affinity_transition = derived_affinity_transition(
                    self.class_transition().double(), frequencies.double() / frequencies.double().sum()
                )
        self.affinity_transition = TransitionMatrix(
            2, init=init if affinity_transition is None else affinity_transition
        )
        self.register_buffer("class_frequencies", frequencies / frequencies.sum())

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(T_C (C, C), T_A (2, 2))``, rows = clean, columns = noisy."""
        return self.class_transition(), self.affinity_transition()


def _to_label_resolution(logits: torch.Tensor, label_shape: Sequence[int]) -> torch.Tensor:
    if tuple(logits.shape[2:]) == tuple(label_shape):
        return logits
    return F.interpolate(logits, size=list(label_shape), mode="trilinear", align_corners=False)


def _label_spatial_shape(noisy_labels: torch.Tensor) -> tuple[int, ...]:
    if noisy_labels.dim() == 5:
        return tuple(noisy_labels.shape[2:])
    if noisy_labels.dim() == 4:
        return tuple(noisy_labels.shape[1:])
    raise ValueError(f"noisy_labels must be (B, 1, H, W, D) or (B, H, W, D), got shape {tuple(noisy_labels.shape)}.")


class JcasLoss(nn.Module):
    """JCAS loss for one training step (module docstring has the formulas).

    Args:
        num_classes: ``C >= 2``.
        stage: ``"warmup"`` (stage 1, no transition matrices) or ``"correction"`` (stage 2, CALC).
        fine_class_weight: weight of ``L_C`` on level 2 (1.0).
        coarse_class_weight: weight of ``L_C`` on level 1 (0.1).
        coarse_affinity_weight: weight of ``L_A`` on level 1 (1.0).
        fine_affinity_weight: weight of ``L_A`` on level 2 (0.1).
        volume_weight: weight of ``log|det T_C| + log|det T_A|`` (0.5; stage 2 only).
        consistency_weight: weight of ``L_cacr`` (0.01; stage 2 only).
        volume_min_det: floor of each ``|det T|`` in the volume penalty (1e-4; :func:`volume_penalty`): keeps a
            collapsing ``T_A`` from going singular and NaN.
        eps: lower clamp of ``softmax(.) T_C`` before the log.
        class_loss: ``"ce"`` (the reference: NLL only) or ``"ce_dice"`` (NLL + soft Dice on the same
            probabilities, module docstring).

    Raises:
        ValueError: on an unknown stage or class loss, ``num_classes < 2`` or a negative weight.
    """

    def __init__(
        self,
        num_classes: int,
        stage: str = "correction",
        fine_class_weight: float = 1.0,
        coarse_class_weight: float = 0.1,
        coarse_affinity_weight: float = 1.0,
        fine_affinity_weight: float = 0.1,
        volume_weight: float = 0.5,
        consistency_weight: float = 0.01,
        volume_min_det: float = 1e-4,
        eps: float = 1e-7,
        class_loss: str = "ce",
    ):
        super().__init__()
        if class_loss not in CLASS_LOSSES:
            raise ValueError(f"class_loss must be one of {CLASS_LOSSES}, got {class_loss!r}.")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}.")
        weights = {
            "fine_class_weight": fine_class_weight,
            "coarse_class_weight": coarse_class_weight,
            "coarse_affinity_weight": coarse_affinity_weight,
            "fine_affinity_weight": fine_affinity_weight,
            "volume_weight": volume_weight,
            "consistency_weight": consistency_weight,
        }
        for name, value in weights.items():
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value}.")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}.")
        if not 0.0 <= volume_min_det < 1.0:
            raise ValueError(f"volume_min_det must be in [0, 1), got {volume_min_det}.")
        self.num_classes = int(num_classes)
        self.stage = stage
        self.fine_class_weight = float(fine_class_weight)
        self.coarse_class_weight = float(coarse_class_weight)
        self.coarse_affinity_weight = float(coarse_affinity_weight)
        self.fine_affinity_weight = float(fine_affinity_weight)
        self.volume_weight = float(volume_weight)
        self.consistency_weight = float(consistency_weight)
        self.volume_min_det = float(volume_min_det)
        self.eps = float(eps)
        self.class_loss_name = class_loss
        # the project's Dice (custom.losses.segmentation_losses): squared denominators, background included,
        # per sample; on probabilities given here (softmax or softmax x T_C), hence softmax=False
        self.dice = DiceLoss(include_background=True, to_onehot_y=True, softmax=False, squared_pred=True)

    @property
    def stage(self) -> str:
        """``"warmup"`` or ``"correction"``; may be reassigned between the two training stages."""
        return self._stage

    @stage.setter
    def stage(self, value: str) -> None:
        if value not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {value!r}.")
        self._stage = value

    def class_loss(
        self, level: JcasLevelOutput, noisy_labels: torch.Tensor, class_transition: torch.Tensor | None
    ) -> torch.Tensor:
        """``L_C`` of one level: loss on ``softmax(P)`` plus loss on ``softmax(Q)``, at the label resolution.

        Per term: plain cross-entropy (``class_transition`` None, warm-up) or the corrected NLL
        ``NLL(log(softmax(.) T_C), y)``; with ``class_loss="ce_dice"`` plus the soft Dice of the same
        probabilities (``softmax(.)``, resp. ``softmax(.) T_C``) against ``y``.

        Args:
            level: the level's network outputs (``P``, ``Q`` are logits, ``(B, C, *S_level)``).
            noisy_labels: ``(B, 1, H, W, D)`` or ``(B, H, W, D)`` noisy class indices.
            class_transition: ``T_C``, ``(C, C)`` (corrected NLL) or ``None`` (plain cross-entropy, warm-up).

        Returns:
            scalar.
        """
        label_shape = _label_spatial_shape(noisy_labels)
        labels = noisy_labels[:, 0] if noisy_labels.dim() == 5 else noisy_labels
        labels = labels.long()
        total = torch.zeros((), dtype=level.logits.dtype, device=level.logits.device)
        for logits in (level.rectified_logits, level.logits):
            logits = _to_label_resolution(logits, label_shape)
            if class_transition is None:
                total = total + F.cross_entropy(logits, labels)
                probs = torch.softmax(logits, dim=1) if self.class_loss_name == "ce_dice" else None
            else:
                clean_probs = torch.softmax(logits, dim=1)
                total = total + corrected_nll(clean_probs, class_transition, labels, self.eps)
                probs = apply_transition(clean_probs, class_transition) if self.class_loss_name == "ce_dice" else None
            if probs is not None:
                total = total + self.dice(probs, labels[:, None])
        return total

    def affinity_level_loss(
        self, level: JcasLevelOutput, noisy_labels: torch.Tensor, affinity_transition: torch.Tensor | None
    ) -> torch.Tensor:
        """``L_A`` of one level: BCE of the (transition-corrected) token affinity against same-noisy-class."""
        tokens = token_class_labels(noisy_labels, self.num_classes, list(level.token_grid))
        if tokens.shape[1] != level.affinity.shape[1]:
            raise ValueError(
                f"token grid {level.token_grid} gives {tokens.shape[1]} tokens but the affinity has "
                f"{level.affinity.shape[1]}."
            )
        return affinity_loss(level.affinity, pairwise_same_class(tokens), affinity_transition)

    def forward(
        self, output: JcasOutput, noisy_labels: torch.Tensor, transitions: JcasTransitions | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Compute the JCAS loss.

        Args:
            output: :class:`JcasOutput` of :class:`custom.networks.deep_supervision.DeepSupervisionNet` in
                training mode.
            noisy_labels: ``(B, 1, H, W, D)`` or ``(B, H, W, D)`` noisy class indices in ``[0, C)`` at the
                resolution of the fine level.
            transitions: required in the ``"correction"`` stage, ignored in ``"warmup"``.

        Returns:
            ``(total, parts)``: the scalar loss to back-propagate and a dict of detached scalar parts for logging
            (``class_fine``, ``class_coarse``, ``affinity_coarse``, ``affinity_fine`` and, in stage 2,
            ``volume`` and ``consistency``), unweighted. No host synchronisation happens here.

        Raises:
            ValueError: if ``output`` is not a :class:`JcasOutput`, ``transitions`` is missing in stage 2, or
                shapes do not match.
        """
        if not isinstance(output, JcasOutput):
            raise ValueError(
                f"output must be the JcasOutput of DeepSupervisionNet in train() mode, got {type(output).__name__}."
            )
        if output.fine.logits.shape[1] != self.num_classes:
            raise ValueError(f"expected {self.num_classes} classes, the network gives {output.fine.logits.shape[1]}.")
        _label_spatial_shape(noisy_labels)
        class_transition: torch.Tensor | None = None
        affinity_transition: torch.Tensor | None = None
        if self.stage == "correction":
            if transitions is None:
                raise ValueError("the 'correction' stage needs the JcasTransitions module.")
            if transitions.num_classes != self.num_classes:
                raise ValueError(
                    f"transitions are for {transitions.num_classes} classes, the loss for {self.num_classes}."
                )
            class_transition, affinity_transition = transitions()

        parts: dict[str, torch.Tensor] = {
            "class_fine": self.class_loss(output.fine, noisy_labels, class_transition),
            "class_coarse": self.class_loss(output.coarse, noisy_labels, class_transition),
            "affinity_coarse": self.affinity_level_loss(output.coarse, noisy_labels, affinity_transition),
            "affinity_fine": self.affinity_level_loss(output.fine, noisy_labels, affinity_transition),
        }
        total = (
            self.fine_class_weight * parts["class_fine"]
            + self.coarse_class_weight * parts["class_coarse"]
            + self.coarse_affinity_weight * parts["affinity_coarse"]
            + self.fine_affinity_weight * parts["affinity_fine"]
        )
        if class_transition is not None and affinity_transition is not None and transitions is not None:
            parts["volume"] = volume_penalty(class_transition, self.volume_min_det) + volume_penalty(
                affinity_transition, self.volume_min_det
            )
            parts["consistency"] = consistency_loss(
                class_transition, affinity_transition, transitions.class_frequencies
            )
            total = total + self.volume_weight * parts["volume"] + self.consistency_weight * parts["consistency"]
        return total, {name: value.detach() for name, value in parts.items()}

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, stage={self.stage!r}, class_loss={self.class_loss_name!r}"
