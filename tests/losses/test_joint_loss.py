"""Tests for custom/losses/joint_loss.py (Eq. 4 of SP-guided and the class-balanced mean)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from custom.losses.joint_loss import JointLoss, class_balanced_mean, joint_loss_per_voxel, symmetric_kl_from_logits

# one voxel, C = 2: softmax(0, ln 4) = (0.2, 0.8), softmax(0, ln 1.5) = (0.4, 0.6), label 1
LOGITS1 = torch.tensor([0.0, math.log(4.0)], dtype=torch.float64).view(1, 2, 1, 1, 1)
LOGITS2 = torch.tensor([0.0, math.log(1.5)], dtype=torch.float64).view(1, 2, 1, 1, 1)
LABEL = torch.ones(1, 1, 1, 1, 1, dtype=torch.long)
SYM_KL = (0.8 - 0.6) * (math.log(0.8) - math.log(0.6)) + (0.2 - 0.4) * (math.log(0.2) - math.log(0.4))


def test_joint_loss_by_hand_c2():
    expected = 0.35 * (-math.log(0.8) - math.log(0.6)) + 0.65 * SYM_KL  # 0.3843970
    loss = joint_loss_per_voxel(LOGITS1, LOGITS2, LABEL, lam=0.65)
    assert loss.shape == (1, 1, 1, 1)
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert loss.item() == pytest.approx(0.3843970, abs=1e-6)


def test_symmetric_kl_by_hand():
    assert symmetric_kl_from_logits(LOGITS1, LOGITS2).item() == pytest.approx(SYM_KL, abs=1e-12)


def test_joint_loss_matches_torch_reference_c3():
    generator = torch.Generator().manual_seed(0)
    z1 = torch.randn(2, 3, 4, 3, 2, generator=generator, dtype=torch.float64)
    z2 = torch.randn(2, 3, 4, 3, 2, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 3, (2, 1, 4, 3, 2), generator=generator)
    ce = F.cross_entropy(z1, y[:, 0], reduction="none") + F.cross_entropy(z2, y[:, 0], reduction="none")
    kl12 = F.kl_div(F.log_softmax(z2, 1), F.log_softmax(z1, 1), reduction="none", log_target=True).sum(1)
    kl21 = F.kl_div(F.log_softmax(z1, 1), F.log_softmax(z2, 1), reduction="none", log_target=True).sum(1)
    expected = 0.3 * ce + 0.7 * (kl12 + kl21)
    torch.testing.assert_close(joint_loss_per_voxel(z1, z2, y, lam=0.7), expected)
    # float labels without the channel dim (MONAI loaders) give the same result
    torch.testing.assert_close(joint_loss_per_voxel(z1, z2, y[:, 0].double(), lam=0.7), expected)


def test_gradients_flow_through_both_logits():
    generator = torch.Generator().manual_seed(1)
    z1 = torch.randn(1, 2, 3, 3, 3, generator=generator, requires_grad=True)
    z2 = torch.randn(1, 2, 3, 3, 3, generator=generator, requires_grad=True)
    y = torch.randint(0, 2, (1, 1, 3, 3, 3), generator=generator)
    joint_loss_per_voxel(z1, z2, y).mean().backward()
    assert z1.grad.abs().sum() > 0 and z2.grad.abs().sum() > 0


def test_agreement_term_is_not_detached():
    # lam = 1: only the symmetric KL; it pulls the networks together, so the gradients are opposite
    z1 = torch.tensor([0.0, 1.0]).view(1, 2, 1, 1, 1).requires_grad_()
    z2 = torch.tensor([0.0, -1.0]).view(1, 2, 1, 1, 1).requires_grad_()
    joint_loss_per_voxel(z1, z2, torch.zeros(1, 1, 1, 1, 1), lam=1.0).sum().backward()
    torch.testing.assert_close(z1.grad, -z2.grad)
    assert z1.grad[0, 1].item() > 0  # raising z1's class-1 logit would move p1 away from p2


def test_joint_loss_rejects_bad_arguments():
    with pytest.raises(ValueError):
        joint_loss_per_voxel(LOGITS1, LOGITS2, LABEL, lam=-0.1)
    with pytest.raises(ValueError):
        joint_loss_per_voxel(LOGITS1, LOGITS2.repeat(1, 1, 2, 1, 1), LABEL)
    with pytest.raises(ValueError):
        joint_loss_per_voxel(LOGITS1, LOGITS2, torch.ones(1, 2, 1, 1, 1))


# ---- class-balanced mean ---------------------------------------------------------------------------------------

LOSS = torch.tensor([[1.0, 1.0, 1.0, 5.0]])
LABELS = torch.tensor([[[0, 0, 0, 1]]])


def test_class_balanced_mean_by_hand():
    # classes get equal total weight: (mean 1 of class 0 + mean 5 of class 1) / 2 = 3 (plain mean 2)
    assert class_balanced_mean(LOSS, None, LABELS, 2).item() == pytest.approx(3.0)
    # only class 0 selected
    mask = torch.tensor([[True, True, False, False]])
    assert class_balanced_mean(LOSS, mask, LABELS, 2).item() == pytest.approx(1.0)
    # three classes declared, two present: the absent class does not count
    assert class_balanced_mean(LOSS, None, LABELS, 3).item() == pytest.approx(3.0)


def test_class_balanced_mean_weights_are_equal_per_class():
    loss = torch.tensor([[2.0, 3.0, 4.0, 7.0, 1.0]], requires_grad=True)
    labels = torch.tensor([[0, 0, 0, 1, 1]])
    mask = torch.tensor([[True, True, True, True, False]])
    class_balanced_mean(loss, mask, labels, 2).backward()
    # class 0: 3 selected voxels share 1/2 -> 1/6 each; class 1: one voxel gets 1/2; unselected: 0
    torch.testing.assert_close(loss.grad, torch.tensor([[1 / 6, 1 / 6, 1 / 6, 0.5, 0.0]]))


def test_class_balanced_mean_empty_mask_is_zero_and_differentiable():
    loss = torch.tensor([[1.0, 2.0]], requires_grad=True)
    out = class_balanced_mean(loss, torch.zeros(1, 2, dtype=torch.bool), torch.tensor([[0, 1]]), 2)
    assert out.item() == 0.0
    out.backward()
    torch.testing.assert_close(loss.grad, torch.zeros(1, 2))


def test_class_balanced_mean_rejects_bad_arguments():
    with pytest.raises(ValueError):
        class_balanced_mean(LOSS, None, LABELS, 0)
    with pytest.raises(ValueError):
        class_balanced_mean(LOSS, torch.ones(1, 3, dtype=torch.bool), LABELS, 2)
    with pytest.raises(ValueError):
        class_balanced_mean(LOSS, None, LABELS[..., :3], 2)


# ---- module ----------------------------------------------------------------------------------------------------


def test_joint_loss_module():
    generator = torch.Generator().manual_seed(2)
    z1 = torch.randn(2, 3, 4, 4, 2, generator=generator, requires_grad=True)
    z2 = torch.randn(2, 3, 4, 4, 2, generator=generator, requires_grad=True)
    y = torch.randint(0, 3, (2, 1, 4, 4, 2), generator=generator)
    mask = torch.rand(2, 4, 4, 2, generator=generator) > 0.3
    loss = JointLoss(num_classes=3, lam=0.65)(z1, z2, y, mask)
    expected = class_balanced_mean(joint_loss_per_voxel(z1, z2, y, 0.65), mask, y, 3)
    torch.testing.assert_close(loss, expected)
    loss.backward()  # one backward reaches both networks
    assert z1.grad is not None and z2.grad is not None
    with pytest.raises(ValueError):
        JointLoss(num_classes=2)(z1, z2, y)
    with pytest.raises(ValueError):
        JointLoss(num_classes=1)
