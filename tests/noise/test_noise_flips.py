"""Symmetric and class-conditional voxel flips."""

from __future__ import annotations

import numpy as np
import pytest

from custom.noise.flips import check_transition_matrix, class_conditional_flip, symmetric_flip


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_symmetric_rate_zero_is_identity(two_ball_label):
    np.testing.assert_array_equal(symmetric_flip(two_ball_label, 0.0, 3, rng()), two_ball_label)


def test_symmetric_rate_one_never_keeps_the_clean_class(two_ball_label):
    noisy = symmetric_flip(two_ball_label, 1.0, 3, rng())
    assert np.all(noisy != two_ball_label)
    assert noisy.dtype == two_ball_label.dtype and noisy.max() <= 2
    # the other classes are drawn uniformly: background voxels split ~50/50 between classes 1 and 2
    from_background = noisy[two_ball_label == 0]
    assert abs(np.mean(from_background == 1) - 0.5) < 0.03


def test_symmetric_rate_one_binary_swaps(ball_label):
    np.testing.assert_array_equal(symmetric_flip(ball_label, 1.0, 2, rng()), 1 - ball_label)


def test_symmetric_rate_is_the_flip_fraction(ball_label):
    noisy = symmetric_flip(ball_label, 0.3, 2, rng())
    assert abs(np.mean(noisy != ball_label) - 0.3) < 0.02


def test_symmetric_is_reproducible_with_the_generator_seed(ball_label):
    first = symmetric_flip(ball_label, 0.2, 2, rng(5))
    np.testing.assert_array_equal(first, symmetric_flip(ball_label, 0.2, 2, rng(5)))
    assert np.any(first != symmetric_flip(ball_label, 0.2, 2, rng(6)))


@pytest.mark.parametrize(
    "rate, num_classes",
    [(-0.1, 2), (1.1, 2), (0.1, 1), (0.1, 2.5)],
)
def test_symmetric_bad_arguments(ball_label, rate, num_classes):
    with pytest.raises(ValueError):
        symmetric_flip(ball_label, rate, num_classes, rng())


def test_symmetric_label_outside_classes_raises(two_ball_label):
    with pytest.raises(ValueError, match="outside"):
        symmetric_flip(two_ball_label, 0.1, 2, rng())


def test_class_conditional_identity_matrix_is_identity(two_ball_label):
    np.testing.assert_array_equal(class_conditional_flip(two_ball_label, np.eye(3), rng()), two_ball_label)


def test_class_conditional_permutation_matrix_relabels(two_ball_label):
    # rows = clean class: 0 -> 2, 1 -> 0, 2 -> 1
    matrix = [[0, 0, 1], [1, 0, 0], [0, 1, 0]]
    noisy = class_conditional_flip(two_ball_label, matrix, rng())
    np.testing.assert_array_equal(noisy, np.array([2, 0, 1], dtype=np.uint8)[two_ball_label])


def test_class_conditional_row_probabilities(ball_label):
    # background flips to 1 with probability 0.2; foreground never changes
    matrix = [[0.8, 0.2], [0.0, 1.0]]
    noisy = class_conditional_flip(ball_label, matrix, rng())
    assert np.all(noisy[ball_label == 1] == 1)
    assert abs(np.mean(noisy[ball_label == 0] == 1) - 0.2) < 0.02


@pytest.mark.parametrize(
    "matrix",
    [
        [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],  # not square
        [[0.5, 0.4], [0.0, 1.0]],  # row does not sum to 1
        [[1.2, -0.2], [0.0, 1.0]],  # negative entry
        [[1.0]],  # a single class
        [[np.nan, 1.0], [0.0, 1.0]],
    ],
)
def test_bad_transition_matrix(ball_label, matrix):
    with pytest.raises(ValueError):
        class_conditional_flip(ball_label, matrix, rng())


def test_transition_matrix_size_must_match_num_classes():
    with pytest.raises(ValueError, match="num_classes"):
        check_transition_matrix(np.eye(2), num_classes=3)


def test_class_conditional_label_outside_matrix_raises(two_ball_label):
    with pytest.raises(ValueError, match="outside"):
        class_conditional_flip(two_ball_label, np.eye(2), rng())
