from __future__ import annotations

import math

import pytest
import torch

from custom.losses.segmentation_losses import CEDiceLoss, ce_dice_loss, consistency_mse


def test_ce_dice_hand_value():
    # shape: (1, 2, 2); uniform logits -> p = 0.5 everywhere; target [0, 1]
    logits = torch.zeros(1, 2, 2)
    target = torch.tensor([[[0, 1]]])
    ce = math.log(2.0)
    # per class: intersection 0.5, sum p^2 = 0.5, sum y^2 = 1 -> 1 - (1 + 1e-5) / (1.5 + 1e-5)
    dice = 1.0 - (1.0 + 1e-5) / (1.5 + 1e-5)
    expected = 0.5 * (ce + dice)
    assert ce_dice_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)
    assert ce_dice_loss(logits, target, reduction="none").shape == (1,)


def test_ce_dice_foreground_only_dice():
    logits = torch.zeros(1, 2, 2)
    target = torch.tensor([[[0, 1]]])
    # foreground channel: intersection 0.5, sum p^2 = 0.5, sum y^2 = 1 -> same value as with background here
    with_bg = ce_dice_loss(logits, target, include_background=True)
    without_bg = ce_dice_loss(logits, target, include_background=False)
    assert without_bg.item() == pytest.approx(with_bg.item(), rel=1e-6)
    target2 = torch.tensor([[[1, 1]]])  # background absent: its Dice term is 1 - 1e-5/(0.5 + 1e-5) ~ 1
    with_bg2 = ce_dice_loss(logits, target2, include_background=True)
    assert with_bg2 > ce_dice_loss(logits, target2, include_background=False)


@pytest.mark.parametrize("num_classes", [2, 3])
def test_per_sample_mean_equals_mean_reduction(num_classes):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, num_classes, 4, 4, 4, generator=g)
    target = torch.randint(0, num_classes, (3, 1, 4, 4, 4), generator=g)
    per_sample = ce_dice_loss(logits, target, reduction="none")
    assert per_sample.shape == (3,)
    torch.testing.assert_close(per_sample.mean(), ce_dice_loss(logits, target, reduction="mean"))
    torch.testing.assert_close(per_sample.sum(), ce_dice_loss(logits, target, reduction="sum"))
    # each entry is the loss of that sample alone
    torch.testing.assert_close(per_sample[1], ce_dice_loss(logits[1:2], target[1:2]))


def test_soft_one_hot_target_equals_index_target():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 4, 4, 4, generator=g)
    target = torch.randint(0, 3, (2, 1, 4, 4, 4), generator=g)
    one_hot = torch.zeros(2, 3, 4, 4, 4).scatter_(1, target, 1.0)
    torch.testing.assert_close(
        ce_dice_loss(logits, one_hot, reduction="none"), ce_dice_loss(logits, target, reduction="none")
    )


def test_batch_dice_matches_reference_formula():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 2, 4, 4, 4, generator=g)
    target = torch.randint(0, 2, (2, 1, 4, 4, 4), generator=g)
    probs = torch.softmax(logits, 1)
    onehot = torch.zeros_like(probs).scatter_(1, target, 1.0)
    # MTCL losses.DiceLoss: per class over the whole batch, squared denominators, mean over classes
    per_class = []
    for c in range(2):
        p, y = probs[:, c], onehot[:, c]
        per_class.append(1 - (2 * (p * y).sum() + 1e-5) / ((p**2).sum() + (y**2).sum() + 1e-5))
    dice = sum(per_class) / 2
    ce = torch.nn.functional.cross_entropy(logits, target[:, 0])
    torch.testing.assert_close(ce_dice_loss(logits, target, batch_dice=True), 0.5 * (ce + dice))


def test_ce_dice_gradients_flow_and_module_wrapper():
    logits = torch.randn(2, 2, 4, 4, 4, requires_grad=True)
    target = torch.randint(0, 2, (2, 1, 4, 4, 4))
    loss = CEDiceLoss()(logits, target)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_ce_dice_errors():
    logits = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError):
        ce_dice_loss(logits, torch.zeros(2, 2, 4, 4))  # neither 1 nor C channels
    with pytest.raises(ValueError):
        ce_dice_loss(logits, torch.zeros(2, 1, 4, 5))  # spatial mismatch
    with pytest.raises(ValueError):
        ce_dice_loss(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4))  # C = 1
    with pytest.raises(ValueError):
        ce_dice_loss(logits, torch.zeros(2, 1, 4, 4), reduction="avg")
    with pytest.raises(ValueError):
        ce_dice_loss(logits, torch.zeros(2, 1, 4, 4), reduction="none", batch_dice=True)
    with pytest.raises(ValueError):
        CEDiceLoss(reduction="none", batch_dice=True)


def test_consistency_mse_values():
    logits = torch.zeros(1, 2, 2)  # softmax 0.5
    assert consistency_mse(logits, torch.full((1, 2, 2), 0.5)).item() == 0.0
    teacher = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    assert consistency_mse(logits, teacher).item() == pytest.approx(0.25)
    g = torch.Generator().manual_seed(3)
    student = torch.randn(2, 3, 4, 4, generator=g)
    assert consistency_mse(student, torch.softmax(student, 1)).item() == pytest.approx(0.0, abs=1e-12)
    per_sample = consistency_mse(student, torch.rand(2, 3, 4, 4, generator=g), reduction="none")
    assert per_sample.shape == (2,)


def test_consistency_mse_no_gradient_to_teacher():
    student = torch.randn(1, 2, 3, 3, requires_grad=True)
    teacher_logits = torch.randn(1, 2, 3, 3, requires_grad=True)
    consistency_mse(student, torch.softmax(teacher_logits, 1)).backward()
    assert student.grad is not None and teacher_logits.grad is None


def test_consistency_mse_errors():
    with pytest.raises(ValueError):
        consistency_mse(torch.zeros(1, 2, 3), torch.zeros(1, 2, 4))
    with pytest.raises(ValueError):
        consistency_mse(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), reduction="max")
