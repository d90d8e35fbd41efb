from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from custom.losses.jcas_loss import JcasLoss, JcasTransitions
from custom.losses.transition import (
    affinity_loss,
    apply_transition,
    consistency_loss,
    corrected_nll,
    derived_affinity_transition,
    pairwise_same_class,
    volume_penalty,
)
from custom.networks.dar import token_class_labels
from custom.networks.deep_supervision import DeepSupervisionNet, JcasLevelOutput


class TinyBackbone(nn.Module):
    """Two decoder maps: half resolution (8 channels) and full resolution (4 channels)."""

    def __init__(self):
        super().__init__()
        self.down = nn.Conv3d(1, 8, kernel_size=2, stride=2)
        self.up = nn.ConvTranspose3d(8, 4, kernel_size=2, stride=2)
        self.skip = nn.Conv3d(1, 4, kernel_size=3, padding=1)
        self.decoder_channels = (8, 4)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        coarse = torch.relu(self.down(x))
        return [coarse, torch.relu(self.up(coarse) + self.skip(x))]


def _setup(num_classes: int, seed: int = 0):
    torch.manual_seed(seed)
    net = DeepSupervisionNet(TinyBackbone(), num_classes, feature_dim=4, token_grid=(2, 2, 2)).train()
    x = torch.randn(2, 1, 8, 8, 8)
    labels = torch.randint(0, num_classes, (2, 1, 8, 8, 8))
    frequencies = torch.bincount(labels.flatten(), minlength=num_classes).double()
    transitions = JcasTransitions(num_classes, frequencies / frequencies.sum())
    return net, x, labels, transitions


def _up(logits: torch.Tensor) -> torch.Tensor:
    return F.interpolate(logits, size=[8, 8, 8], mode="trilinear", align_corners=False)


def _affinity_part(level: JcasLevelOutput, labels: torch.Tensor, num_classes: int, t_a=None) -> torch.Tensor:
    tokens = token_class_labels(labels, num_classes, list(level.token_grid))
    return affinity_loss(level.affinity, pairwise_same_class(tokens), t_a)


@pytest.mark.parametrize("num_classes", [2, 3])
def test_warmup_total_is_plain_ce_and_bce(num_classes):
    net, x, labels, _ = _setup(num_classes)
    out = net(x)
    total, parts = JcasLoss(num_classes, stage="warmup")(out, labels)
    y = labels[:, 0]
    class_fine = F.cross_entropy(out.fine.rectified_logits, y) + F.cross_entropy(out.fine.logits, y)
    class_coarse = F.cross_entropy(_up(out.coarse.rectified_logits), y) + F.cross_entropy(_up(out.coarse.logits), y)
    affinity_coarse = _affinity_part(out.coarse, labels, num_classes)
    affinity_fine = _affinity_part(out.fine, labels, num_classes)
    assert set(parts) == {"class_fine", "class_coarse", "affinity_coarse", "affinity_fine"}
    assert_close(parts["class_fine"], class_fine.detach())
    assert_close(parts["class_coarse"], class_coarse.detach())
    assert_close(parts["affinity_coarse"], affinity_coarse.detach())
    assert_close(total, class_fine + 0.1 * class_coarse + affinity_coarse + 0.1 * affinity_fine)


@pytest.mark.parametrize("num_classes", [2, 3])
def test_correction_total_matches_the_formula(num_classes):
    net, x, labels, transitions = _setup(num_classes)
    out = net(x)
    total, parts = JcasLoss(num_classes, stage="correction")(out, labels, transitions)
    t_c, t_a = transitions()
    y = labels
    class_fine = corrected_nll(torch.softmax(out.fine.rectified_logits, 1), t_c, y) + corrected_nll(
        torch.softmax(out.fine.logits, 1), t_c, y
    )
    class_coarse = corrected_nll(torch.softmax(_up(out.coarse.rectified_logits), 1), t_c, y) + corrected_nll(
        torch.softmax(_up(out.coarse.logits), 1), t_c, y
    )
    affinity_coarse = _affinity_part(out.coarse, labels, num_classes, t_a)
    affinity_fine = _affinity_part(out.fine, labels, num_classes, t_a)
    volume = volume_penalty(t_c) + volume_penalty(t_a)
    consistency = consistency_loss(t_c, t_a, transitions.class_frequencies)
    expected = (
        class_fine + 0.1 * class_coarse + affinity_coarse + 0.1 * affinity_fine + 0.5 * volume + 0.01 * consistency
    )
    assert_close(total, expected)
    assert set(parts) == {"class_fine", "class_coarse", "affinity_coarse", "affinity_fine", "volume", "consistency"}
    assert_close(parts["volume"], volume.detach())
    assert_close(parts["consistency"], consistency.detach())
    assert all(not value.requires_grad for value in parts.values())


def test_custom_weights_are_used():
    net, x, labels, transitions = _setup(2)
    out = net(x)
    loss = JcasLoss(2, fine_class_weight=0.0, coarse_class_weight=0.0, coarse_affinity_weight=0.0,
                    fine_affinity_weight=0.0, volume_weight=1.0, consistency_weight=0.0)
    total, parts = loss(out, labels, transitions)
    assert_close(total.detach(), parts["volume"])


def test_identity_transitions_reduce_correction_to_warmup():
    net, x, labels, transitions = _setup(3)
    with torch.no_grad():  # sigmoid(-60) ~ 1e-26: T_C = I, T_A = I
        transitions.class_transition.weights.fill_(-60.0)
        transitions.affinity_transition.weights.fill_(-60.0)
    out = net(x)
    _, warm = JcasLoss(3, stage="warmup")(out, labels)
    _, corrected = JcasLoss(3, stage="correction")(out, labels, transitions)
    for name in warm:
        assert_close(corrected[name], warm[name], rtol=1e-4, atol=1e-5)
    assert_close(corrected["volume"], torch.tensor(0.0), atol=1e-6, rtol=0)


def test_gradients_reach_network_and_both_transitions():
    net, x, labels, transitions = _setup(3)
    total, _ = JcasLoss(3)(net(x), labels, transitions)
    total.backward()
    for name in ["coarse_classifier", "coarse_feature_head", "fine_classifier", "fine_feature_head"]:
        assert float(getattr(net, name).weight.grad.abs().sum()) > 0, name
    assert float(net.backbone.down.weight.grad.abs().sum()) > 0
    assert float(transitions.class_transition.weights.grad.abs().sum()) > 0
    assert float(transitions.affinity_transition.weights.grad.abs().sum()) > 0


def test_transitions_have_their_own_optimiser():
    net, x, labels, transitions = _setup(2)
    # only the two weight matrices are parameters; pi is a buffer
    assert [name for name, _ in transitions.named_parameters()] == [
        "class_transition.weights",
        "affinity_transition.weights",
    ]
    assert "class_frequencies" in dict(transitions.named_buffers())
    optimiser = torch.optim.SGD(transitions.parameters(), lr=1e-3, momentum=0.9)
    before = [t.detach().clone() for t in transitions()]
    total, _ = JcasLoss(2)(net(x), labels, transitions)
    total.backward()
    optimiser.step()
    after = transitions()
    assert any(not torch.equal(b, a.detach()) for b, a in zip(before, after))
    for matrix in after:
        assert_close(matrix.detach().sum(dim=1), torch.ones(matrix.shape[0]))


def test_label_formats_give_the_same_loss():
    net, x, labels, transitions = _setup(2)
    out = net(x)
    loss = JcasLoss(2)
    reference, _ = loss(out, labels, transitions)
    as_float, _ = loss(out, labels.float(), transitions)
    channel_less, _ = loss(out, labels[:, 0], transitions)
    assert_close(as_float, reference)
    assert_close(channel_less, reference)


def test_stage_can_switch_and_is_validated():
    loss = JcasLoss(2, stage="warmup")
    loss.stage = "correction"
    assert loss.stage == "correction"
    with pytest.raises(ValueError):
        loss.stage = "stage2"
    with pytest.raises(ValueError):
        JcasLoss(2, stage="both")


@pytest.mark.parametrize("kwargs", [{"num_classes": 1}, {"volume_weight": -1.0}, {"eps": 0.0}])
def test_bad_loss_arguments(kwargs):
    with pytest.raises(ValueError):
        JcasLoss(**{"num_classes": 2, **kwargs})


def test_bad_forward_inputs():
    net, x, labels, transitions = _setup(2)
    out = net(x)
    with pytest.raises(ValueError):  # stage 2 without transitions
        JcasLoss(2)(out, labels)
    with pytest.raises(ValueError):  # not a JcasOutput (e.g. the network in eval mode)
        JcasLoss(2)(out.fine.logits, labels, transitions)
    with pytest.raises(ValueError):  # class count mismatch
        JcasLoss(3)(out, labels, JcasTransitions(3, [0.5, 0.25, 0.25]))
    with pytest.raises(ValueError):  # transitions for another class count
        JcasLoss(2)(out, labels, JcasTransitions(3, [0.5, 0.25, 0.25]))
    with pytest.raises(ValueError):
        JcasLoss(2)(out, labels[0, 0], transitions)


@pytest.mark.parametrize("frequencies", [[1.0, 0.0], [0.5, 0.5, 0.0], [0.5, -0.1]])
def test_bad_transition_frequencies(frequencies):
    with pytest.raises(ValueError):
        JcasTransitions(2, frequencies)


def _dice(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    # hand-written reference: squared denominators, smoothing 1e-5, mean over samples and all classes
    onehot = F.one_hot(labels[:, 0].long(), probs.shape[1]).movedim(-1, 1).to(probs.dtype)
    dims = tuple(range(2, probs.dim()))
    intersection = (probs * onehot).sum(dims)
    denominator = (probs**2).sum(dims) + (onehot**2).sum(dims)
    return (1.0 - (2.0 * intersection + 1e-5) / (denominator + 1e-5)).mean()


@pytest.mark.parametrize("stage", ["warmup", "correction"])
def test_ce_dice_class_loss_adds_dice_on_the_supervised_probabilities(stage):
    net, x, labels, transitions = _setup(3)
    out = net(x)
    t_c = transitions()[0]
    plain = JcasLoss(3, stage=stage)
    with_dice = JcasLoss(3, stage=stage, class_loss="ce_dice")
    assert with_dice.class_loss_name == "ce_dice" and plain.class_loss_name == "ce"
    expected_dice = torch.zeros(())
    for logits in (out.fine.rectified_logits, out.fine.logits):
        probs = torch.softmax(logits, 1)
        expected_dice = expected_dice + _dice(probs if stage == "warmup" else apply_transition(probs, t_c), labels)
    c_plain = plain.class_loss(out.fine, labels, None if stage == "warmup" else t_c)
    c_dice = with_dice.class_loss(out.fine, labels, None if stage == "warmup" else t_c)
    assert_close(c_dice, c_plain + expected_dice)
    # the total changes only through the class terms
    _, parts_plain = plain(out, labels, transitions)
    _, parts_dice = with_dice(out, labels, transitions)
    assert_close(parts_dice["affinity_fine"], parts_plain["affinity_fine"])
    assert bool(parts_dice["class_coarse"] > parts_plain["class_coarse"])


def test_ce_dice_gradients_and_bad_class_loss():
    net, x, labels, transitions = _setup(2)
    total, _ = JcasLoss(2, stage="correction", class_loss="ce_dice")(net(x), labels, transitions)
    total.backward()
    assert transitions.class_transition.weights.grad is not None
    with pytest.raises(ValueError, match="class_loss"):
        JcasLoss(2, class_loss="dice")


def test_transitions_from_an_initial_matrix_derive_t_a():
    target = torch.tensor([[0.95, 0.05], [0.25, 0.75]], dtype=torch.float64)
    pi = torch.tensor([0.8, 0.2], dtype=torch.float64)
    transitions = JcasTransitions(2, pi, class_transition=target)
    t_c, t_a = transitions()
    assert_close(t_c.double(), target, atol=1e-6, rtol=0)
    assert_close(t_a.double(), derived_affinity_transition(target, pi), atol=1e-5, rtol=0)
    assert float(consistency_loss(t_c, t_a, transitions.class_frequencies).detach()) < 1e-10
    given_t_a = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    assert_close(JcasTransitions(2, pi, class_transition=target, affinity_transition=given_t_a)()[1], given_t_a)
    with pytest.raises(ValueError, match="matrix"):
        JcasTransitions(3, [0.5, 0.3, 0.2], class_transition=target)


def _collapse_affinity_transition(min_det: float, steps: int = 500) -> JcasTransitions:
    transitions = JcasTransitions(num_classes=2, class_frequencies=torch.tensor([0.9, 0.1]))
    optimiser = torch.optim.SGD(transitions.parameters(), lr=1.0)
    for _ in range(steps):
        optimiser.zero_grad()
        _, t_a = transitions()
        volume_penalty(t_a, min_det=min_det).backward()
        optimiser.step()
    return transitions


def test_the_volume_floor_keeps_a_collapsing_affinity_transition_finite():
    # the volume term alone drives T_A towards [[0.5, 0.5], [0.5, 0.5]] (its weights to +inf): unfloored, det
    # rounds to 0 and slogdet's gradient turns the weights NaN; floored, the push stops at the floor
    unfloored = _collapse_affinity_transition(0.0)
    assert not all(torch.isfinite(p).all() for p in unfloored.parameters())
    floored = _collapse_affinity_transition(1e-4)
    assert all(torch.isfinite(p).all() for p in floored.parameters())
    _, t_a = floored()
    assert 1e-5 < float(torch.linalg.det(t_a.detach())) < 1e-3
