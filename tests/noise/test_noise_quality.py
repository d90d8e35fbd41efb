"""Noisy-vs-clean quality measures on hand-sized maps."""

from __future__ import annotations

import numpy as np
import pytest

from custom.noise.quality import confusion_counts, foreground_dice, mismatch_ratio, relative_volume_change


def row(values) -> np.ndarray:
    # shape: (1, 1, N)
    return np.asarray(values, dtype=np.uint8).reshape(1, 1, -1)


@pytest.mark.parametrize(
    "noisy, clean, expected",
    [
        ([1, 1, 0, 0], [1, 1, 1, 0], 0.8),  # 2 * 2 / (2 + 3)
        ([1, 1, 2, 0], [1, 1, 2, 2], (1.0 + 2 / 3) / 2),  # class 1 perfect, class 2: 2 * 1 / (1 + 2)
        ([0, 0, 0, 0], [0, 0, 0, 0], 1.0),  # both empty
        ([1, 1, 0, 0], [0, 0, 1, 1], 0.0),
        ([0, 0, 0, 0], [0, 1, 0, 0], 0.0),
    ],
)
def test_foreground_dice_hand_computed(noisy, clean, expected):
    assert foreground_dice(row(noisy), row(clean)) == pytest.approx(expected)


def test_foreground_dice_skips_classes_absent_from_both():
    assert foreground_dice(row([1, 1, 2, 0]), row([1, 1, 2, 2]), num_classes=5) == pytest.approx((1 + 2 / 3) / 2)


def test_foreground_dice_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        foreground_dice(row([1, 0]), row([1, 0, 0]))


def test_confusion_counts_rows_are_clean():
    counts = confusion_counts(row([0, 1, 1, 2]), row([0, 0, 1, 2]))
    np.testing.assert_array_equal(counts, [[1, 1, 0], [0, 1, 0], [0, 0, 1]])


@pytest.mark.parametrize(
    "noisy, clean, expected",
    [
        ([0, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0], 0.5),  # one FP, one FN over 4
        ([2, 1, 0, 0], [1, 1, 0, 0], 1.0),  # a class swap counts twice: FN of 1 and FP of 2
        ([0, 0], [0, 0], 0.0),
    ],
)
def test_mismatch_ratio_hand_computed(noisy, clean, expected):
    assert mismatch_ratio(row(noisy), row(clean)) == pytest.approx(expected)


def test_mismatch_ratio_empty_clean_with_noise_is_infinite():
    assert mismatch_ratio(row([1, 0]), row([0, 0])) == float("inf")


def test_relative_volume_change_signed():
    assert relative_volume_change(row([1, 1, 1, 0]), row([1, 1, 0, 0])) == pytest.approx(0.5)
    assert relative_volume_change(row([1, 0, 0, 0]), row([1, 1, 0, 0])) == pytest.approx(-0.5)
