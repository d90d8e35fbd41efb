"""MTCL: mean teacher + confident learning (Xu et al., TMI 2022), the baseline ALC is compared with.

``MTCLTrainer`` is :class:`~custom.engines.mean_teacher.MeanTeacherTrainer` (two-stream batches, EMA teacher,
sigmoid ramp, consistency) with another LQ target. At every step, for the LQ part of the batch:

1. the teacher's probabilities on the *clean* LQ input (no input noise), without gradient;
2. :func:`~custom.refinement.confident_learning.find_label_issues` over all voxels of all LQ patches pooled
   (``filter_by="both"`` by default), as the reference does with one ``cleanlab`` call per batch;
3. :func:`~custom.refinement.confident_learning.correct_labels`: ``"hard"`` (flip the flagged voxels to the
   teacher's class, the default), ``"smooth"`` (move 0.8 of the mass) or ``"uncertainty_smooth"`` (move ``1 - U``,
   ``U`` = normalised entropy of the mean of ``T = 6`` perturbed teacher predictions);
4. ``L = L_hq + w(t) * (L_con + lambda_weak * L_weak)``, ``L_hq`` and ``L_weak`` = ``0.5 * (CE + Dice)`` against the
   HQ labels and the corrected LQ labels, ``L_con`` the MSE between the student's and the perturbed teacher's
   probabilities on the LQ patches, ``w(t) = 0.1 * exp(-5 (1 - t / t_ramp)^2)``.

Facts from the reference code (lemoshu/MTCL ``LA_set_3D/code/train_MTCL_3D.py``, read for understanding):

* The ramp multiplies the consistency *and* the weak (corrected-label) term; the HQ loss is never ramped. The ramp
  reaches 1 at 75% of training (``consistency_rampup = 40`` in units of 150 of its 8000 iterations).
* The reference calls ``ema_model.train()`` once and never switches the teacher to eval mode, so its clean pass
  runs with dropout active and BatchNorm on batch statistics. Here both are options: ``teacher_batch_norm``
  (``"batch"``, the reference, default; ``"running"`` uses the running statistics averaged from the student, see
  :mod:`custom.networks.ema`) and ``clean_pass_dropout`` (True, the reference; False gives a deterministic pass)
  *(decision)*.
* For ``"uncertainty_smooth"`` the reference draws ``T = 6`` extra perturbed teacher passes; here the first of them
  doubles as the consistency target (the reference draws one more pass for it), which has the same distribution.

Not reproduced (bugs of the reference): the smoothed targets are cast with ``.long()`` there, which truncates 0.8 and
0.2 to 0 (here they stay soft targets of ``ce_dice_loss``); when ``cleanlab`` raises, the reference reuses the
previous iteration's weak loss (here label-issue detection cannot fail). Not implemented: the reference's optional
entropy-minimisation term (``use_entropymin``, off by default there).
"""

from __future__ import annotations

from typing import Any

import torch

from custom.engines.mean_teacher import MeanTeacherTrainer
from custom.losses.segmentation_losses import ce_dice_loss
from custom.refinement import confident_learning as cl
from custom.refinement import teacher_fusion as tf

__all__ = ["MTCLTrainer", "CORRECTION_MODES", "LABEL_ISSUE_FILTERS", "LABEL_ISSUE_SOURCES"]

CORRECTION_MODES = ("hard", "smooth", "uncertainty_smooth")
LABEL_ISSUE_FILTERS = ("both", "prune_by_class", "prune_by_noise_rate")
LABEL_ISSUE_SOURCES = ("clean", "consistency")

# MeanTeacherTrainer arguments that only ALC uses: rejected rather than silently ignored
_ALC_ONLY_ARGUMENTS = (
    "refine_labels", "select_samples", "num_samples", "tau", "fusion_mode", "uncertainty_mode",
    "keep_noisy_if_uncertain", "uncertainty_threshold", "selection_ratio", "lambda_sel", "lambda_noisy",
    "refine_min_agreement",
)


class MTCLTrainer(MeanTeacherTrainer):
    """Mean teacher whose LQ labels are corrected by confident learning on the teacher's clean prediction.

    Args:
        lambda_weak: weight of the corrected-label loss inside the ramp (5, ``weak_weight`` of the reference).
        cl_filter: ``find_label_issues`` method: ``"both"`` (reference default), ``"prune_by_class"`` or
            ``"prune_by_noise_rate"``.
        correction_mode: ``"hard"`` (default), ``"smooth"`` or ``"uncertainty_smooth"`` (see the module docstring).
        correction_smooth: mass moved to the teacher's class in ``"smooth"`` mode (0.8).
        uncertainty_samples: perturbed teacher passes for the ``"uncertainty_smooth"`` map (6).
        clean_pass_dropout: keep the teacher's dropout active in the clean pass, as the reference (True); False runs
            it fully in eval mode (BatchNorm as ``teacher_batch_norm``).
        label_issue_source: which teacher probabilities confident learning reads: ``"clean"`` (a separate pass on
            the unperturbed LQ input, the reference, default) or ``"consistency"`` (the perturbed pass that already
            gives the consistency target: no extra forward, about 10 points less overhead on the LA CPU patch,
            docs/methods/mtcl.md) *(decision)*.
        min_examples_per_class: classes with at most this many voxels in the LQ batch are never flagged (1).
        kwargs: :class:`MeanTeacherTrainer` arguments shared with Mean Teacher (``teacher``, ``num_classes``,
            ``batch_hq``, ``ema_decay``, ``consistency_weight``, ``rampup_iterations``, ``noise_std``,
            ``noise_clip``, ``mc_chunk``) and ``SupervisedTrainer`` arguments. ALC-only arguments
            (``refine_labels``, ``selection_ratio``, ``lambda_sel``, ...) raise ``ValueError``.

    ``engine.state.output`` gains ``loss_hq``, ``loss_con``, ``loss_weak``, ``ramp_weight``, ``noisy_label``,
    ``refined_label`` (the corrected hard labels, ``(B_lq, 1, *S)``; in the smooth modes the argmax of the soft
    target), ``label_issues`` (bool ``(B_lq, 1, *S)``) and, when the batch has it, ``clean_label``.
    """

    logged_target_keys: tuple[str, ...] = ("refined_label", "label_issues")

    def __init__(
        self,
        *,
        lambda_weak: float = 5.0,
        cl_filter: str = "both",
        correction_mode: str = "hard",
        correction_smooth: float = 0.8,
        uncertainty_samples: int = 6,
        clean_pass_dropout: bool = True,
        min_examples_per_class: int = 1,
        label_issue_source: str = "clean",
        **kwargs: Any,
    ):
        if label_issue_source not in LABEL_ISSUE_SOURCES:
            raise ValueError(f"label_issue_source must be one of {LABEL_ISSUE_SOURCES}, got {label_issue_source!r}.")
        unexpected = sorted(set(kwargs) & set(_ALC_ONLY_ARGUMENTS))
        if unexpected:
            raise ValueError(f"MTCLTrainer does not take the ALC-only arguments {unexpected}.")
        if cl_filter not in LABEL_ISSUE_FILTERS:
            raise ValueError(f"cl_filter must be one of {LABEL_ISSUE_FILTERS}, got {cl_filter!r}.")
        if correction_mode not in CORRECTION_MODES:
            raise ValueError(f"correction_mode must be one of {CORRECTION_MODES}, got {correction_mode!r}.")
        if not 0.0 <= correction_smooth <= 1.0:
            raise ValueError(f"correction_smooth must be in [0, 1], got {correction_smooth}.")
        if uncertainty_samples < 1:
            raise ValueError(f"uncertainty_samples must be >= 1, got {uncertainty_samples}.")
        if lambda_weak < 0:
            raise ValueError(f"lambda_weak must be >= 0, got {lambda_weak}.")
        if min_examples_per_class < 0:
            raise ValueError(f"min_examples_per_class must be >= 0, got {min_examples_per_class}.")
        # every LQ sample is trained on its corrected label: ALC's "refinement without selection" bookkeeping
        super().__init__(
            refine_labels=True, select_samples=False, num_samples=uncertainty_samples, lambda_sel=lambda_weak,
            lambda_noisy=0.0, **kwargs,
        )
        self.lambda_weak = float(lambda_weak)
        self.cl_filter = cl_filter
        self.correction_mode = correction_mode
        self.correction_smooth = float(correction_smooth)
        self.uncertainty_samples = int(uncertainty_samples)
        self.clean_pass_dropout = bool(clean_pass_dropout)
        self.min_examples_per_class = int(min_examples_per_class)
        self.label_issue_source = label_issue_source

    def clean_teacher_probs(self, x_lq: torch.Tensor) -> torch.Tensor:
        """Teacher probabilities on the unperturbed LQ input, without gradient.

        A forward of its own, as in the reference: batching it with the perturbed pass (one forward of
        ``[x_lq + xi, x_lq]``) was measured about 22% slower on the CPU than the two forwards, and with
        ``teacher_batch_norm="batch"`` it would make the two inputs share BatchNorm statistics (docs/methods/mtcl.md).

        Args:
            x_lq: LQ images ``(B_lq, C_in, *S)``.

        Returns:
            Probabilities ``(B_lq, C, *S)`` (at least float32).
        """
        with torch.no_grad(), tf.teacher_sampling_mode(
            self.teacher, batch_norm=self.teacher_batch_norm, dropout=self.clean_pass_dropout
        ):
            logits = self.teacher(x_lq)
        return tf.teacher_probabilities(logits)

    def teacher_targets(self, x_lq: torch.Tensor, noisy: torch.Tensor) -> dict[str, torch.Tensor]:
        """Consistency target and confident-learning corrected labels of the LQ patches (steps 1-3 above).

        Args:
            x_lq: LQ images ``(B_lq, C_in, *S)``.
            noisy: their given labels ``(B_lq, 1, *S)`` long.

        Returns:
            ``teacher_probs`` ``(B_lq, C, *S)`` (perturbed teacher, the consistency target), ``lq_target`` (long
            ``(B_lq, 1, *S)`` in ``"hard"`` mode, soft ``(B_lq, C, *S)`` otherwise), ``refined_label`` (long
            ``(B_lq, 1, *S)``) and ``label_issues`` (bool ``(B_lq, 1, *S)``), all without autograd history.
        """
        needs_uncertainty = self.correction_mode == "uncertainty_smooth"
        with torch.no_grad():
            perturbed = tf.perturbed_teacher_predictions(
                self.teacher, x_lq, num_samples=self.uncertainty_samples if needs_uncertainty else 1,
                noise_std=self.noise_std, noise_clip=self.noise_clip, mc_chunk=self.mc_chunk,
                batch_norm=self.teacher_batch_norm,
            )  # (T, B_lq, C, *S)
            clean_probs = self.clean_teacher_probs(x_lq) if self.label_issue_source == "clean" else perturbed[0]
            issues = cl.find_label_issues(
                clean_probs, noisy, filter_by=self.cl_filter, min_examples_per_class=self.min_examples_per_class
            )
            uncertainty = tf.normalized_entropy(perturbed.mean(dim=0)) if needs_uncertainty else None
            target = cl.correct_labels(
                noisy, clean_probs, issues, mode=self.correction_mode, smooth=self.correction_smooth,
                uncertainty=uncertainty,
            )
            hard = target if self.correction_mode == "hard" else target.argmax(dim=1, keepdim=True)
        return {"teacher_probs": perturbed[0], "lq_target": target, "refined_label": hard, "label_issues": issues}

    def lq_supervision_loss(
        self, logits_lq: torch.Tensor, noisy: torch.Tensor, targets: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``lambda_weak * 0.5 * (CE + Dice)`` against the corrected LQ target (hard or soft), all LQ samples.

        Returns:
            ``(lambda_weak * loss_weak, {"loss_weak": loss_weak})`` (the part detached).
        """
        loss_weak = ce_dice_loss(logits_lq, targets["lq_target"])
        return self.lambda_weak * loss_weak, {"loss_weak": loss_weak.detach()}
