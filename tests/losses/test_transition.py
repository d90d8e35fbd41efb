from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from custom.losses.transition import (
    DISSIMILAR,
    SIMILAR,
    TransitionMatrix,
    affinity_loss,
    apply_transition,
    class_transition_from_confusion,
    consistency_loss,
    corrected_nll,
    derived_affinity_transition,
    label_confusion,
    noisy_class_frequencies,
    pairwise_same_class,
    prior_class_transition,
    transition_from_weights,
    volume_penalty,
    weights_from_transition,
)

SIG_M2 = 1.0 / (1.0 + math.exp(2.0))  # sigmoid(-2)


def _random_transition(num_classes: int, generator: torch.Generator) -> torch.Tensor:
    return transition_from_weights(torch.randn(num_classes, num_classes, generator=generator, dtype=torch.float64))


def _enumerated_affinity_transition(transition: np.ndarray, pi: np.ndarray) -> np.ndarray:
    """Brute force: every clean pair (i, m) ~ pi_i pi_m, every noisy pair (j, n) ~ T[i, j] T[m, n]."""
    joint = np.zeros((2, 2))  # [clean state, noisy state], 0 = dissimilar, 1 = similar
    num_classes = len(pi)
    for i in range(num_classes):
        for m in range(num_classes):
            for j in range(num_classes):
                for n in range(num_classes):
                    joint[int(i == m), int(j == n)] += pi[i] * pi[m] * transition[i, j] * transition[m, n]
    return joint / joint.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("num_classes", [2, 3, 5])
def test_init_is_row_stochastic_and_diagonally_dominant(num_classes):
    transition = TransitionMatrix(num_classes)().detach()
    assert transition.shape == (num_classes, num_classes)
    assert_close(transition.sum(dim=1), torch.ones(num_classes))
    diagonal = 1.0 / (1.0 + (num_classes - 1) * SIG_M2)
    assert_close(torch.diagonal(transition), torch.full((num_classes,), diagonal))
    off_diagonal = transition[~torch.eye(num_classes, dtype=torch.bool)]
    assert_close(off_diagonal, torch.full_like(off_diagonal, SIG_M2 * diagonal))
    assert float(torch.diagonal(transition).min()) > float(off_diagonal.max())


def test_transition_any_weights_stays_row_stochastic():
    weights = torch.tensor([[5.0, 30.0, -30.0], [0.0, -7.0, 2.0], [1.0, 1.0, 1.0]])
    transition = transition_from_weights(weights)
    assert_close(transition.sum(dim=1), torch.ones(3))
    assert bool((transition > 0).all())
    # the diagonal weight is ignored: row 2 is [sig(1), sig(1), 1] / (1 + 2 sig(1))
    sig1 = 1.0 / (1.0 + math.exp(-1.0))
    assert_close(transition[2], torch.tensor([sig1, sig1, 1.0]) / (1.0 + 2.0 * sig1))


def test_transition_matrix_bad_arguments():
    with pytest.raises(ValueError):
        TransitionMatrix(1)
    with pytest.raises(ValueError):
        TransitionMatrix(3, init=float("nan"))
    with pytest.raises(ValueError):
        transition_from_weights(torch.zeros(2, 3))


def test_apply_transition_and_corrected_nll_hand_case():
    transition = torch.tensor([[0.8, 0.2], [0.3, 0.7]])
    probs = torch.tensor([0.5, 0.5]).reshape(1, 2, 1, 1, 1)
    # p T = [0.4 + 0.15, 0.1 + 0.35] = [0.55, 0.45]
    assert_close(apply_transition(probs, transition).flatten(), torch.tensor([0.55, 0.45]))
    labels = torch.ones(1, 1, 1, 1, 1)
    assert_close(corrected_nll(probs, transition, labels), torch.tensor(-math.log(0.45)))
    # channel-less labels are accepted
    assert_close(corrected_nll(probs, transition, labels[:, 0].long()), torch.tensor(-math.log(0.45)))


def test_corrected_nll_with_identity_is_plain_nll():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, 4)
    labels = torch.randint(0, 3, (2, 1, 4, 4, 4))
    expected = F.cross_entropy(logits, labels[:, 0])
    assert_close(corrected_nll(torch.softmax(logits, 1), torch.eye(3), labels), expected)


def test_corrected_nll_bad_shapes():
    probs = torch.full((1, 2, 2, 2, 2), 0.5)
    with pytest.raises(ValueError):
        corrected_nll(probs, torch.eye(3), torch.zeros(1, 2, 2, 2))
    with pytest.raises(ValueError):
        corrected_nll(probs, torch.eye(2), torch.zeros(1, 2, 2, 2, 2))
    with pytest.raises(ValueError):
        corrected_nll(probs, torch.eye(2), torch.zeros(1, 2, 2, 3))


def test_pairwise_same_class():
    same = pairwise_same_class(torch.tensor([[0, 1, 0]]))
    assert_close(same, torch.tensor([[[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]]]))
    with pytest.raises(ValueError):
        pairwise_same_class(torch.tensor([0, 1]))


def test_affinity_loss_hand_case_with_transition():
    affinity = torch.tensor([[[1.0, 0.2], [0.2, 1.0]]])
    same = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    t_a = torch.zeros(2, 2)
    t_a[DISSIMILAR] = torch.tensor([0.9, 0.1])
    t_a[SIMILAR] = torch.tensor([0.2, 0.8])
    # s_hat = (1 - A) 0.1 + A 0.8: diagonal 0.8, off-diagonal 0.8 * 0.1 + 0.2 * 0.8 = 0.24
    expected = -(2 * math.log(0.8) + 2 * math.log(1 - 0.24)) / 4
    assert_close(affinity_loss(affinity, same, t_a), torch.tensor(expected))


def test_affinity_loss_without_transition_is_bce_on_a():
    affinity = torch.tensor([[[1.0, 0.2], [0.2, 0.9]]])
    same = torch.tensor([[[1.0, 1.0], [1.0, 1.0]]])
    expected = -(2 * math.log(0.2) + math.log(0.9)) / 4
    assert_close(affinity_loss(affinity, same), torch.tensor(expected))
    # the identity affinity transition changes nothing
    assert_close(affinity_loss(affinity, same, torch.eye(2)), torch.tensor(expected))


def test_affinity_loss_bad_shapes():
    with pytest.raises(ValueError):
        affinity_loss(torch.ones(1, 2, 2), torch.ones(1, 3, 3))
    with pytest.raises(ValueError):
        affinity_loss(torch.ones(1, 2, 2), torch.ones(1, 2, 2), torch.eye(3))


def test_volume_penalty_floor_stops_the_push_towards_a_singular_matrix():
    nearly_singular = torch.tensor([[0.5, 0.5], [0.499, 0.501]], requires_grad=True)  # det 0.001
    penalty = volume_penalty(nearly_singular, min_det=0.01)
    assert_close(penalty, torch.tensor(math.log(0.01)))
    penalty.backward()
    assert torch.count_nonzero(nearly_singular.grad) == 0
    regular = torch.tensor([[0.8, 0.2], [0.3, 0.7]])  # det 0.5: above the floor, the penalty is log det
    assert_close(volume_penalty(regular, min_det=0.01), torch.tensor(math.log(0.5)))
    with pytest.raises(ValueError):
        volume_penalty(regular, min_det=1.0)


def test_volume_penalty_hand_case():
    assert_close(volume_penalty(torch.tensor([[0.8, 0.2], [0.3, 0.7]])), torch.tensor(math.log(0.5)))
    assert_close(volume_penalty(torch.eye(4)), torch.tensor(0.0))
    with pytest.raises(ValueError):
        volume_penalty(torch.ones(2, 3))


def test_derived_transition_of_identity_is_identity_in_state_order():
    pi = torch.tensor([0.7, 0.2, 0.1])
    derived = derived_affinity_transition(torch.eye(3), pi)
    # clean labels unchanged: clean similar -> noisy similar, clean dissimilar -> noisy dissimilar
    assert derived[SIMILAR, SIMILAR] == 1.0 and derived[DISSIMILAR, DISSIMILAR] == 1.0
    assert_close(derived, torch.eye(2))
    assert_close(consistency_loss(torch.eye(3), torch.eye(2), pi), torch.tensor(0.0))


def test_derived_transition_hand_case_two_classes():
    # T = [[.8, .2], [.3, .7]], pi = (.5, .5): M = T T^T = [[.68, .38], [.38, .58]]
    # a = (.68 + .58) / 2 = .63,  b = M_01 = .38
    derived = derived_affinity_transition(torch.tensor([[0.8, 0.2], [0.3, 0.7]]), torch.tensor([0.5, 0.5]))
    assert_close(derived, torch.tensor([[0.62, 0.38], [0.37, 0.63]]))


@pytest.mark.parametrize("num_classes", [2, 3, 4])
def test_derived_transition_equals_enumeration(num_classes):
    generator = torch.Generator().manual_seed(num_classes)
    transition = _random_transition(num_classes, generator)
    pi = torch.rand(num_classes, generator=generator, dtype=torch.float64) + 0.05
    pi = pi / pi.sum()
    derived = derived_affinity_transition(transition, pi)
    expected = _enumerated_affinity_transition(transition.numpy(), pi.numpy())
    assert_close(derived, torch.from_numpy(expected))
    assert_close(derived.sum(dim=1), torch.ones(2, dtype=torch.float64))


def test_derived_transition_matches_monte_carlo():
    rng = np.random.default_rng(0)
    transition = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.1, 0.6]])
    pi = np.array([0.6, 0.3, 0.1])
    samples = 200_000
    clean = rng.choice(3, size=(samples, 2), p=pi)
    # flip each label through its row of T by inverse-CDF sampling
    cumulative = np.cumsum(transition, axis=1)[clean]
    noisy = (rng.random((samples, 2, 1)) > cumulative).sum(axis=2)
    clean_same, noisy_same = clean[:, 0] == clean[:, 1], noisy[:, 0] == noisy[:, 1]
    a = noisy_same[clean_same].mean()
    b = noisy_same[~clean_same].mean()
    derived = derived_affinity_transition(torch.from_numpy(transition), torch.from_numpy(pi))
    assert abs(float(derived[SIMILAR, SIMILAR]) - a) < 0.01
    assert abs(float(derived[DISSIMILAR, SIMILAR]) - b) < 0.01


def test_consistency_gradients_reach_both_matrices():
    class_transition = TransitionMatrix(3)
    affinity_transition = TransitionMatrix(2)
    loss = consistency_loss(class_transition(), affinity_transition(), torch.tensor([0.5, 0.3, 0.2]))
    loss.backward()
    assert float(class_transition.weights.grad.abs().sum()) > 0
    assert float(affinity_transition.weights.grad.abs().sum()) > 0


def test_derived_transition_bad_shapes():
    with pytest.raises(ValueError):
        derived_affinity_transition(torch.eye(3), torch.ones(2) / 2)
    with pytest.raises(ValueError):
        consistency_loss(torch.eye(2), torch.eye(3), torch.ones(2) / 2)


def test_noisy_class_frequencies_from_arrays_and_counts():
    arrays = [np.array([[0, 0], [1, 2]]), torch.tensor([0.0, 1.0, 1.0, 0.0])]
    # counts: class 0 -> 4, class 1 -> 3, class 2 -> 1
    expected = torch.tensor([4.0, 3.0, 1.0], dtype=torch.float64) / 8.0
    assert_close(noisy_class_frequencies(3, label_arrays=arrays), expected)
    assert_close(noisy_class_frequencies(3, label_arrays=iter(arrays)), expected)
    assert_close(noisy_class_frequencies(3, counts=[4, 3, 1]), expected)
    assert_close(noisy_class_frequencies(3, counts=torch.tensor([4, 3, 1])), expected)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"label_arrays": [np.zeros(3)], "counts": [1, 1]},
        {"label_arrays": [np.array([0, 2])]},
        {"label_arrays": [np.array([0, -1])]},
        {"label_arrays": [np.array([0.5, 1.0])]},
        {"label_arrays": [np.zeros(5)]},
        {"counts": [1, 2, 3]},
        {"counts": [1, -1]},
    ],
)
def test_noisy_class_frequencies_errors(kwargs):
    with pytest.raises(ValueError):
        noisy_class_frequencies(2, **kwargs)


def test_weights_from_transition_round_trip():
    generator = torch.Generator().manual_seed(3)
    target = _random_transition(4, generator)
    assert_close(transition_from_weights(weights_from_transition(target)).double(), target, atol=1e-6, rtol=0)
    matrix = TransitionMatrix(4, init=target)
    assert_close(matrix().double(), target, atol=1e-6, rtol=0)
    # not representable (a zero entry, an off-diagonal entry above the diagonal): the ratio is clipped
    clipped = transition_from_weights(weights_from_transition([[1.0, 0.0], [0.6, 0.4]]))
    assert float(clipped[0, 1]) == pytest.approx(1e-3 / (1 + 1e-3), rel=1e-4)
    assert float(clipped[1, 0]) < float(clipped[1, 1])


@pytest.mark.parametrize(
    "matrix, match",
    [
        ([[0.5, 0.4], [0.1, 0.9]], "sum to 1"),
        ([[1.2, -0.2], [0.1, 0.9]], "non-negative"),
        ([[0.0, 1.0], [0.5, 0.5]], "diagonal"),
    ],
)
def test_weights_from_transition_errors(matrix, match):
    with pytest.raises(ValueError, match=match):
        weights_from_transition(matrix)
    with pytest.raises(ValueError, match="2, 2"):
        TransitionMatrix(2, init=torch.eye(3))


@pytest.mark.parametrize("pi", [[0.93, 0.07], [0.75, 0.14, 0.11]])
def test_prior_never_exceeds_a_class_share(pi):
    prior = prior_class_transition(pi, rate=0.2)
    pi_t = torch.tensor(pi, dtype=torch.float64)
    assert_close(prior.sum(dim=1), torch.ones(len(pi), dtype=torch.float64))
    off = ~torch.eye(len(pi), dtype=torch.bool)
    assert bool((prior[off] <= pi_t[None, :].expand_as(prior)[off]).all())
    assert bool((torch.diagonal(prior)[:, None] > prior).masked_select(off).all())
    # binary LA-like: P(noisy fg | clean bg) = 0.2 * 0.07, P(noisy bg | clean fg) = 0.2 * 0.93
    if len(pi) == 2:
        assert_close(prior, torch.tensor([[1 - 0.014, 0.014], [0.186, 1 - 0.186]], dtype=torch.float64))
    with pytest.raises(ValueError, match="rate"):
        prior_class_transition(pi, rate=0.5)
    with pytest.raises(ValueError, match="sum to 1"):
        prior_class_transition([0.5, 0.6], rate=0.2)


def test_confusion_of_a_hand_made_flip_gives_the_transition_rows():
    # 10^3 volume, a 200-voxel foreground block; 50 foreground voxels (25%) flipped to background and
    # 40 of the 800 background voxels (5%) flipped to foreground
    clean = np.zeros((10, 10, 10), dtype=np.int64)
    clean[:2] = 1
    noisy = clean.copy()
    noisy.reshape(-1)[:50] = 0
    noisy.reshape(-1)[200:240] = 1
    confusion = label_confusion(clean, noisy, 2)
    np.testing.assert_array_equal(confusion, [[760, 40], [50, 150]])
    expected = torch.tensor([[0.95, 0.05], [0.25, 0.75]], dtype=torch.float64)
    assert_close(class_transition_from_confusion(confusion), expected)
    # half the training cases clean: the mixture with the identity
    mixed = class_transition_from_confusion(confusion, clean_share=0.5)
    assert_close(mixed, 0.5 * torch.eye(2).double() + 0.5 * expected)
    # a class absent from the clean labels gets the identity row
    three = class_transition_from_confusion(np.pad(confusion, ((0, 1), (0, 1))))
    assert_close(three[2], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))


def test_confusion_errors():
    with pytest.raises(ValueError, match="same shape"):
        label_confusion(np.zeros((2, 2)), np.zeros((2, 3)), 2)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        label_confusion(np.zeros(4), np.full(4, 2), 2)
    with pytest.raises(ValueError, match="clean_share"):
        class_transition_from_confusion(np.eye(2), clean_share=1.5)
