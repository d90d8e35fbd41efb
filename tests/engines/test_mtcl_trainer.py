"""MTCLTrainer: confident-learning corrections of the LQ labels inside a mean-teacher step (C = 2 and C = 3)."""

from __future__ import annotations

import math

import pytest
import torch
from ignite.engine import Events
from torch.testing import assert_close

from custom.engines import MTCLTrainer
from custom.losses.segmentation_losses import ce_dice_loss
from custom.networks import PaperVNet
from custom.refinement import confident_learning as cl
from custom.refinement import teacher_fusion

SIDE = 16  # PaperVNet needs sides divisible by 16
BATCH_HQ, BATCH_LQ = 1, 2


def _network(num_classes: int, dropout: float) -> PaperVNet:
    return PaperVNet(spatial_dims=3, in_channels=1, out_channels=num_classes, base_filters=2, dropout=dropout)


def _batch(num_classes: int, seed: int = 1) -> dict[str, torch.Tensor]:
    # shape: (3, 1, 16, 16, 16): one HQ then two LQ patches; the labels are intensity bands
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(BATCH_HQ + BATCH_LQ, 1, SIDE, SIDE, SIDE, generator=generator)
    label = torch.bucketize(image, torch.linspace(-0.6, 0.6, num_classes - 1))
    return {"image": image, "label": label, "clean_label": label.clone()}


def _trainer(num_classes: int, batches: list[dict], dropout: float = 0.5, **kwargs) -> MTCLTrainer:
    torch.manual_seed(0)
    student, teacher = _network(num_classes, dropout), _network(num_classes, dropout)
    arguments = dict(
        device=torch.device("cpu"), max_epochs=1, epoch_length=len(batches), train_data_loader=batches,
        network=student, teacher=teacher, optimizer=torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9),
        loss_function=None, num_classes=num_classes, batch_hq=BATCH_HQ, rampup_iterations=4, decollate=False,
    )
    arguments.update(kwargs)
    return MTCLTrainer(**arguments)


def _teacher_disagreement(labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hand-built teacher probabilities: confident agreement (0.9 on the given label) everywhere except on a set
    ``F`` of label-0 voxels (every 7th voxel), where the teacher puts 0.9 on class ``C - 1``.

    For such probabilities confident learning flags exactly ``F``: t_0 < 0.9 = t_{C-1}, so the voxels of ``F`` are
    the only off-diagonal entries of the confident joint, and they have the lowest ``p_0`` and the largest margin.

    Returns:
        ``(probs (B, C, *S), flagged (B, 1, *S) bool, expected corrected labels (B, 1, *S))``.
    """
    index = torch.arange(labels.numel()).reshape(labels.shape)
    flagged = (labels == 0) & (index % 7 == 0)
    other = (1.0 - 0.9) / (num_classes - 1)
    probs = torch.full((labels.shape[0], num_classes, *labels.shape[2:]), other)
    probs.scatter_(1, labels, 0.9)
    disagree = torch.full_like(probs, other)
    disagree[:, num_classes - 1] = 0.9
    probs = torch.where(flagged, disagree, probs)
    corrected = torch.where(flagged, torch.full_like(labels, num_classes - 1), labels)
    return probs, flagged, corrected


def _run_with_teacher_probs(trainer: MTCLTrainer, probs: torch.Tensor) -> dict:
    trainer.clean_teacher_probs = lambda x_lq: probs  # the hand-built clean-pass teacher output
    outputs: list[dict] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.append(dict(e.state.output)))
    trainer.run()
    return outputs[0]


@pytest.mark.parametrize("num_classes", [2, 3])
def test_hard_correction_flips_exactly_the_flagged_voxels_inside_a_step(num_classes):
    batch = _batch(num_classes)
    noisy = batch["label"][BATCH_HQ:]
    probs, flagged, corrected = _teacher_disagreement(noisy, num_classes)
    assert 0 < int(flagged.sum()) < int((noisy == 0).sum())
    trainer = _trainer(num_classes, [batch])
    out = _run_with_teacher_probs(trainer, probs)

    assert torch.equal(out["label_issues"], flagged)
    assert torch.equal(out["noisy_label"], noisy)
    assert torch.equal(out["refined_label"], corrected)
    changed = out["refined_label"] != out["noisy_label"]
    assert torch.equal(changed, flagged)  # every flagged voxel changes, nothing else does
    if num_classes == 2:
        assert torch.equal(out["refined_label"][flagged], 1 - noisy[flagged])  # the reference's flip
    assert torch.equal(out["clean_label"], batch["clean_label"][BATCH_HQ:])
    # L = L_hq + w (L_con + 5 L_weak), with L_weak against the corrected labels
    logits_lq = out["pred"][BATCH_HQ:].detach()
    assert_close(out["loss_weak"], ce_dice_loss(logits_lq, corrected))
    assert_close(out["loss_hq"], ce_dice_loss(out["pred"][:BATCH_HQ].detach(), batch["label"][:BATCH_HQ]))
    w = out["ramp_weight"]
    assert w == pytest.approx(0.1 * math.exp(-5.0 * (1 - 1 / 4) ** 2))
    assert_close(out["loss"].detach(), out["loss_hq"] + w * (out["loss_con"] + 5.0 * out["loss_weak"]))
    for key in ("loss_sel", "loss_noisy", "selected"):  # no ALC bookkeeping leaks into MTCL's outputs
        assert key not in out


@pytest.mark.parametrize("num_classes", [2, 3])
def test_smooth_correction_moves_the_given_fraction_on_flagged_voxels(num_classes):
    batch = _batch(num_classes)
    x_lq, noisy = batch["image"][BATCH_HQ:], batch["label"][BATCH_HQ:]
    probs, flagged, corrected = _teacher_disagreement(noisy, num_classes)
    trainer = _trainer(num_classes, [batch], correction_mode="smooth", correction_smooth=0.8)
    trainer.clean_teacher_probs = lambda x: probs
    targets = trainer.teacher_targets(x_lq, noisy)
    soft = targets["lq_target"]
    assert soft.shape == probs.shape
    given = torch.zeros_like(probs).scatter_(1, noisy, 1.0)
    moved = torch.zeros_like(probs).scatter_(1, corrected, 1.0)
    assert_close(soft, torch.where(flagged, 0.2 * given + 0.8 * moved, given))
    assert torch.equal(targets["refined_label"], corrected)  # argmax of the soft target
    assert torch.equal(targets["label_issues"], flagged)


@pytest.mark.parametrize("num_classes", [2, 3])
def test_uncertainty_smooth_moves_one_minus_teacher_entropy(num_classes, monkeypatch):
    batch = _batch(num_classes)
    x_lq, noisy = batch["image"][BATCH_HQ:], batch["label"][BATCH_HQ:]
    probs, flagged, _ = _teacher_disagreement(noisy, num_classes)
    # no dropout and no input noise: every perturbed pass equals the eval-mode teacher
    trainer = _trainer(num_classes, [batch], dropout=0.0, noise_std=0.0, correction_mode="uncertainty_smooth",
                       uncertainty_samples=6, teacher_batch_norm="running")
    calls: list[int] = []
    original = teacher_fusion.perturbed_teacher_predictions

    def spy(*args, **kwargs):
        calls.append(kwargs["num_samples"])
        return original(*args, **kwargs)

    monkeypatch.setattr(teacher_fusion, "perturbed_teacher_predictions", spy)
    trainer.clean_teacher_probs = lambda x: probs
    targets = trainer.teacher_targets(x_lq, noisy)
    assert calls == [6]
    with torch.no_grad():
        teacher_probs = torch.softmax(trainer.teacher.eval()(x_lq), dim=1)
    amount = flagged * (1.0 - teacher_fusion.normalized_entropy(teacher_probs))
    given = torch.zeros_like(probs).scatter_(1, noisy, 1.0)
    moved = torch.zeros_like(probs).scatter_(1, probs.argmax(1, keepdim=True), 1.0)
    assert_close(targets["lq_target"], given * (1 - amount) + moved * amount, atol=1e-5, rtol=1e-5)
    assert_close(targets["teacher_probs"], teacher_probs, atol=1e-5, rtol=1e-5)


def test_hard_mode_uses_one_perturbed_pass(monkeypatch):
    calls: list[int] = []
    original = teacher_fusion.perturbed_teacher_predictions
    monkeypatch.setattr(teacher_fusion, "perturbed_teacher_predictions",
                        lambda *a, **k: calls.append(k["num_samples"]) or original(*a, **k))
    batch = _batch(2)
    trainer = _trainer(2, [batch])
    targets = trainer.teacher_targets(batch["image"][BATCH_HQ:], batch["label"][BATCH_HQ:])
    assert calls == [1]
    assert targets["teacher_probs"].shape == (BATCH_LQ, 2, SIDE, SIDE, SIDE)
    assert targets["lq_target"].dtype == torch.long


def test_clean_pass_has_no_input_noise_and_restores_modes():
    batch = _batch(2)
    x_lq = batch["image"][BATCH_HQ:]
    trainer = _trainer(2, [batch], dropout=0.5, clean_pass_dropout=False, teacher_batch_norm="running")
    trainer.teacher.train()
    with torch.no_grad():
        first = trainer.clean_teacher_probs(x_lq)
        second = trainer.clean_teacher_probs(x_lq)
        assert trainer.teacher.training  # modes restored
        expected = torch.softmax(trainer.teacher.eval()(x_lq), dim=1)
    assert torch.equal(first, second)  # eval mode: deterministic
    assert_close(first, expected)
    trainer.teacher.eval()
    trainer.clean_pass_dropout = True  # the reference: dropout stays active in the clean pass
    torch.manual_seed(3)
    third = trainer.clean_teacher_probs(x_lq)
    fourth = trainer.clean_teacher_probs(x_lq)
    assert not torch.allclose(third, fourth)
    assert not trainer.teacher.training


def test_clean_pass_batch_norm_on_batch_statistics_by_default():
    batch = _batch(2)
    x_lq = batch["image"][BATCH_HQ:]
    trainer = _trainer(2, [batch], dropout=0.0)
    assert trainer.teacher_batch_norm == "batch"
    with torch.no_grad():
        for module in trainer.teacher.modules():  # stale running statistics must not matter in batch mode
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.fill_(3.0)
        probs = trainer.clean_teacher_probs(x_lq)
        expected = torch.softmax(trainer.teacher.train()(x_lq), dim=1)
    assert_close(probs, expected)


def test_teacher_is_the_ema_of_the_student():
    batch = _batch(2)
    trainer = _trainer(2, [batch])
    trainer.run()
    for (name, t), s in zip(trainer.teacher.state_dict().items(), trainer.network.state_dict().values()):
        assert torch.equal(t, s), name  # first update = copy


@pytest.mark.parametrize(
    "kwargs",
    [{"selection_ratio": 0.5}, {"lambda_sel": 1.0}, {"refine_labels": False}, {"correction_mode": "soft"},
     {"cl_filter": "confident"}, {"correction_smooth": 1.5}, {"uncertainty_samples": 0}, {"lambda_weak": -1.0},
     {"min_examples_per_class": -1}],
)
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        _trainer(2, [_batch(2)], **kwargs)


def test_label_issue_source_consistency_reuses_the_perturbed_pass(monkeypatch):
    batch = _batch(2)
    x_lq, noisy = batch["image"][BATCH_HQ:], batch["label"][BATCH_HQ:]
    trainer = _trainer(2, [batch], label_issue_source="consistency")
    trainer.clean_teacher_probs = lambda x: pytest.fail("no clean pass with label_issue_source='consistency'")
    seen: list[torch.Tensor] = []
    original = cl.find_label_issues
    monkeypatch.setattr(cl, "find_label_issues", lambda probs, *a, **k: seen.append(probs) or original(probs, *a, **k))
    targets = trainer.teacher_targets(x_lq, noisy)
    assert len(seen) == 1 and torch.equal(seen[0], targets["teacher_probs"])
    with pytest.raises(ValueError, match="label_issue_source"):
        _trainer(2, [batch], label_issue_source="both")
    with pytest.raises(ValueError, match="ALC-only"):
        _trainer(2, [batch], refine_min_agreement=0.5)
