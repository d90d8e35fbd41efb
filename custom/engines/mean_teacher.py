"""Mean-teacher training on HQ + LQ batches, with ALC's adaptive label refinement and sample selection.

``MeanTeacherTrainer`` implements methods.md §1 (seed 003, ALC). Its two switches give the ablations:

==========================  ===============  ===============
variant                     refine_labels    select_samples
==========================  ===============  ===============
ALC                         True             True
ALC w/o label selection     True             False
ALC w/o label refinement    False            True
Mean Teacher                False            False
==========================  ===============  ===============

LQ targets: selected samples are trained against the refined label (the noisy label when refinement is off) with
weight ``lambda_sel``; unselected samples against their noisy label with weight ``lambda_noisy``. Without selection
every LQ sample counts as selected when refinement is on; plain Mean Teacher trains all LQ samples on their noisy
labels with ``lambda_noisy`` *(decision, documented in docs/methods/alc.md)*.

A step is ``L = L_hq + w(t) * (L_con + L_lq)``. Variants override the smallest piece: :meth:`teacher_targets` (what
the teacher provides for the LQ patches), :meth:`lq_supervision_loss` (how ``L_lq`` uses it) or
:meth:`ramp_weight`; ``MTCLTrainer`` (``custom/engines/mtcl.py``) replaces the first two.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys

from custom.engines.base import NoisyLabelTrainer
from custom.losses.ramps import sigmoid_rampup
from custom.losses.segmentation_losses import ce_dice_loss, consistency_mse
from custom.networks.ema import ema_update
from custom.refinement import teacher_fusion as tf

__all__ = ["CONSISTENCY_TARGETS", "LQ_LOSS_REDUCTIONS", "MeanTeacherTrainer"]

CONSISTENCY_TARGETS = ("all_samples", "first_sample")
LQ_LOSS_REDUCTIONS = ("batch", "group")


class MeanTeacherTrainer(NoisyLabelTrainer):
    """Student/EMA-teacher trainer for two-stream batches (first ``batch_hq`` samples HQ, the rest LQ).

    Args:
        teacher: a network of the student's architecture (its weights are overwritten by the EMA).
        num_classes: ``C``.
        batch_hq: number of HQ samples at the start of each batch (the two-stream loader guarantees it).
        ema_decay: EMA decay (0.99); warm-up ``alpha = min(1 - 1/(t+1), decay)``.
        consistency_weight: ``w_max`` of the sigmoid ramp (0.1).
        rampup_iterations: ramp length in iterations (MTCL: 75% of training); ``None`` uses 75% of
            ``max_epochs * epoch_length``.
        refine_labels / select_samples: see the module docstring.
        num_samples: ``T``, teacher perturbations (8).
        noise_std / noise_clip: input perturbation ``clamp(noise_std * N(0,1), -clip, clip)``.
        mc_chunk: teacher samples per forward chunk (bounds memory; ``None`` = all ``T`` at once).
        tau: temperature of the softmax fusion weights. fusion_mode: ``"softmax"`` or ``"inverse"``.
        uncertainty_mode: ``"weighted_kl"``, ``"mean_kl"`` or ``"entropy"``.
        keep_noisy_if_uncertain / uncertainty_threshold: keep the noisy label where the normalised entropy of the
            fused prediction exceeds the threshold *(decision)*.
        selection_ratio: ``rho``; ``k = ceil(rho * batch_lq)`` samples are kept.
        lambda_sel / lambda_noisy: LQ loss weights.
        lq_loss_reduction: how the selected and unselected parts are averaged. ``"batch"``: each part is the sum
            of its per-sample losses over the whole LQ batch size, so a lambda is a per-sample weight and means the
            same with and without selection (Mean Teacher's ``lambda_noisy`` = ALC's ``lambda_sel`` =
            ``lambda_noisy`` trains every LQ patch at the same weight). ``"group"``: each part is the mean over its
            own samples (with 2 LQ patches and ``rho = 0.5`` the selected patch then weighs ``lambda_sel`` and the
            other ``lambda_noisy``, while Mean Teacher's patches weigh ``lambda / 2`` each) *(decision: chosen on the
            validation split, docs/methods/alc.md)*.
        teacher_batch_norm: BatchNorm of the teacher while it predicts: ``"batch"`` (batch statistics, as the
            UA-MT/MTCL reference whose EMA model stays in train mode) or ``"running"`` *(decision)*; see
            :func:`custom.refinement.teacher_fusion.teacher_sampling_mode`.
        refine_min_agreement: if set, a sample keeps its noisy label when its refined label agrees with it at a
            foreground Dice below this value (:func:`custom.refinement.teacher_fusion.gate_refined_labels`;
            *decision*, None = the paper). The share of accepted refinements is logged as ``refinement_accepted``.
        consistency_target: ``"all_samples"`` (default, Eq. 10 of the ALC paper: the consistency loss is the mean
            over the ``T`` perturbed teacher predictions of ``mean((p_student - p_t)^2)``) or ``"first_sample"``
            (only ``p_1``, the UA-MT/MTCL form). ``mean_t (p - p_t)^2 = (p - mean_t p_t)^2 + var_t(p_t)``, so the
            Eq. 10 loss is computed as the MSE to the mean prediction plus the (constant, detached) variance: the
            same value and gradient as T separate MSEs at the cost of one. Without sampling (``refine_labels`` and
            ``select_samples`` both False, plain Mean Teacher) there is one prediction and the two forms agree.
        kwargs: ``SupervisedTrainer`` arguments (device, max_epochs, train_data_loader, network, optimizer, ...).
    """

    #: entries of :meth:`teacher_targets` copied into ``engine.state.output`` when present
    logged_target_keys: tuple[str, ...] = ("refined_label", "selected", "uncertainty", "refinement_accepted")

    def __init__(
        self,
        *,
        teacher: torch.nn.Module,
        num_classes: int,
        batch_hq: int,
        ema_decay: float = 0.99,
        consistency_weight: float = 0.1,
        rampup_iterations: int | None = None,
        refine_labels: bool = True,
        select_samples: bool = True,
        num_samples: int = 8,
        noise_std: float = 0.1,
        noise_clip: float = 0.2,
        mc_chunk: int | None = None,
        tau: float = 1.0,
        fusion_mode: str = "softmax",
        uncertainty_mode: str = "weighted_kl",
        keep_noisy_if_uncertain: bool = False,
        uncertainty_threshold: float = 0.5,
        selection_ratio: float = 0.5,
        lambda_sel: float = 5.0,
        lambda_noisy: float = 5.0,
        teacher_batch_norm: str = "batch",
        refine_min_agreement: float | None = None,
        consistency_target: str = "all_samples",
        lq_loss_reduction: str = "batch",
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if batch_hq < 0:
            raise ValueError(f"batch_hq must be >= 0, got {batch_hq}.")
        if num_samples < 1:
            raise ValueError(f"num_samples (T) must be >= 1, got {num_samples}.")
        if teacher_batch_norm not in tf.BATCH_NORM_MODES:
            raise ValueError(f"teacher_batch_norm must be one of {tf.BATCH_NORM_MODES}, got {teacher_batch_norm!r}.")
        if refine_min_agreement is not None and not 0.0 <= refine_min_agreement <= 1.0:
            raise ValueError(f"refine_min_agreement must be None or in [0, 1], got {refine_min_agreement}.")
        if not 0.0 < selection_ratio <= 1.0:
            raise ValueError(f"selection_ratio must be in (0, 1], got {selection_ratio}.")
        if lq_loss_reduction not in LQ_LOSS_REDUCTIONS:
            raise ValueError(f"lq_loss_reduction must be one of {LQ_LOSS_REDUCTIONS}, got {lq_loss_reduction!r}.")
        if consistency_target not in CONSISTENCY_TARGETS:
            raise ValueError(f"consistency_target must be one of {CONSISTENCY_TARGETS}, got {consistency_target!r}.")
        self.teacher = teacher.to(self.state.device)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.teacher.load_state_dict(self.network.state_dict())
        self.num_classes = num_classes
        self.batch_hq = batch_hq
        self.ema_decay = ema_decay
        self.consistency_weight = consistency_weight
        total = (self.state.max_epochs or 1) * (self.state.epoch_length or 1)
        self.rampup_iterations = int(0.75 * total) if rampup_iterations is None else int(rampup_iterations)
        self.refine_labels = refine_labels
        self.select_samples = select_samples
        self.num_samples = num_samples
        self.noise_std = noise_std
        self.noise_clip = noise_clip
        self.mc_chunk = mc_chunk
        self.tau = tau
        self.fusion_mode = fusion_mode
        self.uncertainty_mode = uncertainty_mode
        self.keep_noisy_if_uncertain = keep_noisy_if_uncertain
        self.uncertainty_threshold = uncertainty_threshold
        self.selection_ratio = selection_ratio
        self.lambda_sel = lambda_sel
        self.lambda_noisy = lambda_noisy
        self.teacher_batch_norm = teacher_batch_norm
        self.refine_min_agreement = refine_min_agreement
        self.consistency_target = consistency_target
        self.lq_loss_reduction = lq_loss_reduction

    # ------------------------------------------------------------------ teacher side (no gradient)
    def teacher_targets(self, x_lq: torch.Tensor, noisy: torch.Tensor) -> dict[str, torch.Tensor]:
        """Teacher predictions for the LQ patches: consistency target, refined labels, selection mask.

        Returns a dict with ``teacher_probs`` (B_lq, C, *S: the consistency target, the mean of the T predictions
        or the first, see ``consistency_target``), ``consistency_offset`` (scalar: the mean variance of the T
        predictions, 0 for the first-sample form), ``refined_label`` (B_lq, 1, *S) long, ``selected`` (B_lq,) bool
        and ``uncertainty`` (B_lq,) float.
        """
        b_lq = x_lq.shape[0]
        needs_samples = self.refine_labels or self.select_samples
        with torch.no_grad():
            # the perturbed samples double as the consistency targets (Eq. 10; or the first alone, exactly
            # f'(x + xi) with dropout active, as in UA-MT/MTCL): no extra forward pass
            probs = tf.perturbed_teacher_predictions(
                self.teacher, x_lq, num_samples=self.num_samples if needs_samples else 1,
                noise_std=self.noise_std, noise_clip=self.noise_clip, mc_chunk=self.mc_chunk,
                batch_norm=self.teacher_batch_norm,
            )
            if self.consistency_target == "all_samples" and probs.shape[0] > 1:
                mean_probs = probs.mean(dim=0)
                out: dict[str, torch.Tensor] = {
                    "teacher_probs": mean_probs,
                    "consistency_offset": ((probs - mean_probs) ** 2).mean(),
                }
            else:
                out = {"teacher_probs": probs[0], "consistency_offset": probs.new_zeros(())}
            if needs_samples:
                divergence = tf.kl_to_mean(probs)
                weights = tf.fusion_weights(divergence, tau=self.tau, mode=self.fusion_mode)
                fused = tf.fuse_predictions(probs, weights)
                uncertainty = tf.sample_uncertainty(divergence, weights, probs=probs, mode=self.uncertainty_mode)
                out["uncertainty"] = uncertainty
                if self.refine_labels:
                    refined = tf.refined_labels(
                        fused, noisy_labels=noisy, keep_noisy_if_uncertain=self.keep_noisy_if_uncertain,
                        uncertainty_threshold=self.uncertainty_threshold if self.keep_noisy_if_uncertain else None,
                    )
                    if self.refine_min_agreement is not None:
                        refined, accepted = tf.gate_refined_labels(
                            refined, noisy, self.num_classes, self.refine_min_agreement
                        )
                        out["refinement_accepted"] = accepted.float().mean()
                    out["refined_label"] = refined
                else:
                    out["refined_label"] = noisy
                out["selected"] = (
                    tf.select_lowest_uncertainty(uncertainty, self.selection_ratio)
                    if self.select_samples
                    else torch.ones(b_lq, dtype=torch.bool, device=x_lq.device)
                )
            else:
                out["refined_label"] = noisy
                out["selected"] = torch.zeros(b_lq, dtype=torch.bool, device=x_lq.device)
        return out

    def ramp_weight(self, iteration: int) -> float:
        """``w(t) = w_max * exp(-5 (1 - min(t, t_ramp) / t_ramp)^2)`` at ignite's 1-based ``iteration`` (step 7).

        The MTCL reference evaluates the ramp at its 0-based step counter in stairs of 150 iterations; the
        difference is at most one ramp step and is not reproduced.
        """
        return self.consistency_weight * sigmoid_rampup(iteration, self.rampup_iterations)

    # ------------------------------------------------------------------ one step
    def lq_supervision_loss(
        self, logits_lq: torch.Tensor, noisy: torch.Tensor, targets: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted LQ supervision term (inside the ramp) and its named parts (step 5 of methods.md section 1).

        Selected samples are trained against ``refined_label`` with ``lambda_sel``, the others against their noisy
        labels with ``lambda_noisy``; each part is averaged as ``lq_loss_reduction`` says (0 for an empty set).

        Args:
            logits_lq: student logits of the LQ samples ``(B_lq, C, *S)``.
            noisy: their given labels ``(B_lq, 1, *S)`` long.
            targets: the output of :meth:`teacher_targets`.

        Returns:
            ``(lambda_sel * loss_sel + lambda_noisy * loss_noisy, {"loss_sel": ..., "loss_noisy": ...})``; the parts
            are detached.
        """
        selected = targets["selected"].to(logits_lq.dtype)
        per_sample_sel = ce_dice_loss(logits_lq, targets["refined_label"], reduction="none")
        if not self.refine_labels:
            per_sample_noisy = per_sample_sel  # the "refined" label is the noisy label
        elif self.select_samples:
            per_sample_noisy = ce_dice_loss(logits_lq, noisy, reduction="none")
        else:
            per_sample_noisy = torch.zeros_like(per_sample_sel)  # every sample is selected: no noisy term
        # means without a host sync (empty sets contribute 0): over the whole LQ batch ("batch") or over each
        # part's own samples ("group")
        if self.lq_loss_reduction == "batch":
            n_sel = n_uns = selected.new_tensor(float(selected.numel()))
        else:
            n_sel = selected.sum()
            n_uns = selected.numel() - n_sel
        loss_sel = (per_sample_sel * selected).sum() / n_sel.clamp_min(1)
        loss_noisy = (per_sample_noisy * (1 - selected)).sum() / n_uns.clamp_min(1)
        weighted = self.lambda_sel * loss_sel + self.lambda_noisy * loss_noisy
        return weighted, {"loss_sel": loss_sel.detach(), "loss_noisy": loss_noisy.detach()}

    def compute_loss(self, engine: MeanTeacherTrainer, batch: dict[str, Any]) -> torch.Tensor:
        """``L = L_hq + w(t) * (L_con + L_lq)`` (step 7 of methods.md section 1); ``L_lq`` from
        :meth:`lq_supervision_loss` on the targets of :meth:`teacher_targets`."""
        image, label = batch["image"], batch["label"].long()
        b_hq = self.batch_hq
        x_lq, noisy = image[b_hq:], label[b_hq:]
        logits = engine.inferer(image, engine.network)
        engine.state.output[Keys.PRED] = logits
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)

        loss_hq = ce_dice_loss(logits[:b_hq], label[:b_hq]) if b_hq > 0 else logits.sum() * 0.0
        if x_lq.shape[0] == 0:
            return loss_hq
        targets = self.teacher_targets(x_lq, noisy)
        logits_lq = logits[b_hq:]
        loss_con = consistency_mse(logits_lq, targets["teacher_probs"])
        if "consistency_offset" in targets:  # Eq. 10's mean over the T samples (a constant: value, not gradient)
            loss_con = loss_con + targets["consistency_offset"].to(loss_con.dtype)
        loss_lq, lq_parts = self.lq_supervision_loss(logits_lq, noisy, targets)
        w = self.ramp_weight(engine.state.iteration)
        loss = loss_hq + w * (loss_con + loss_lq)
        engine.state.output.update(
            {"loss_hq": loss_hq.detach(), "loss_con": loss_con.detach(), **lq_parts, "ramp_weight": w,
             "noisy_label": noisy}
        )
        for key in self.logged_target_keys:
            if key in targets:
                engine.state.output[key] = targets[key]
        if isinstance(batch.get("clean_label"), torch.Tensor):
            engine.state.output["clean_label"] = batch["clean_label"][b_hq:]
        return loss

    def after_step(self, engine: MeanTeacherTrainer) -> None:
        # ignite counts iterations from 1; the EMA warm-up counts optimiser steps from 0 (first update = copy)
        ema_update(self.teacher, engine.network, engine.state.iteration - 1, self.ema_decay)
