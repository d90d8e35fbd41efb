"""Rigid rotation + translation noise tuned to a mismatch ratio (SP-guided affine noise)."""

from __future__ import annotations

import numpy as np
import pytest

from custom.noise.affine import affine_to_mismatch, rigid_resample, rotation_matrix
from custom.noise.quality import mismatch_ratio


def test_rotation_matrix_quarter_turn_about_z():
    rotation = rotation_matrix([0, 0, 2], 90)
    np.testing.assert_allclose(rotation @ [1, 0, 0], [0, 1, 0], atol=1e-12)
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(rotation) == pytest.approx(1.0)


def test_rotation_matrix_zero_axis_raises():
    with pytest.raises(ValueError):
        rotation_matrix([0, 0, 0], 10)


def test_rigid_resample_integer_translation_is_a_shift():
    label = np.zeros((6, 6, 6), dtype=np.uint8)
    label[1:3, 2, 2] = 1
    moved = rigid_resample(label, np.eye(3), [2, 0, -1], center=[0, 0, 0])
    expected = np.zeros_like(label)
    expected[3:5, 2, 1] = 1
    np.testing.assert_array_equal(moved, expected)
    assert moved.dtype == np.uint8


def test_rigid_resample_quarter_turn_moves_marker():
    # a voxel 2 along x from the centre goes 2 along y after +90 degrees about z
    label = np.zeros((9, 9, 9), dtype=np.int32)
    label[6, 4, 4] = 3
    moved = rigid_resample(label, rotation_matrix([0, 0, 1], 90), [0, 0, 0], center=[4, 4, 4])
    assert moved[4, 6, 4] == 3 and moved.sum() == 3


def test_rigid_resample_translation_is_in_physical_units():
    # 2 mm along x with 2 mm voxels is one voxel
    label = np.zeros((6, 6, 6), dtype=np.uint8)
    label[2, 2, 2] = 1
    moved = rigid_resample(label, np.eye(3), [2.0, 0, 0], center=[0, 0, 0], spacing=(2.0, 1.0, 1.0))
    assert moved[3, 2, 2] == 1 and moved.sum() == 1


@pytest.mark.parametrize("beta", [0.5, 0.7])
@pytest.mark.parametrize("direction", [(1.0, 0.3, 0.1), (-0.2, -1.0, 0.5), (0.1, 0.2, -1.0)])
def test_affine_hits_beta_on_ball(big_ball_label, beta, direction):
    noisy, info = affine_to_mismatch(big_ball_label, beta, angle_deg=10.0, axis=(0, 1, 1), direction=direction)
    assert abs(mismatch_ratio(noisy, big_ball_label) - beta) <= 0.05
    assert info["mismatch"] == pytest.approx(mismatch_ratio(noisy, big_ball_label))
    assert info["shift"] > 0
    # a rigid move keeps the volume up to nearest-neighbour rounding
    assert abs(int(noisy.sum()) - int(big_ball_label.sum())) <= 0.03 * big_ball_label.sum()


@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_affine_translates_both_signs_along_every_axis(big_ball_label, sign, axis):
    direction = np.zeros(3)
    direction[axis] = sign
    noisy, _ = affine_to_mismatch(big_ball_label, 0.5, angle_deg=0.0, axis=(1, 0, 0), direction=direction)
    moved_centroid = np.argwhere(noisy).mean(axis=0)
    clean_centroid = np.argwhere(big_ball_label).mean(axis=0)
    delta = moved_centroid - clean_centroid
    assert np.sign(delta[axis]) == sign and abs(delta[axis]) >= 1.0
    assert np.allclose(np.delete(delta, axis), 0.0, atol=0.5)


def test_affine_halves_an_overshooting_rotation():
    # a long bar turned by 90 degrees barely overlaps itself: mismatch ~2 > beta, so the angle is halved
    label = np.zeros((24, 24, 24), dtype=np.uint8)
    label[4:20, 10:14, 10:14] = 1
    noisy, info = affine_to_mismatch(label, 0.3, angle_deg=90.0, axis=(0, 0, 1), direction=(1, 1, 0))
    assert info["angle_halvings"] >= 1
    assert info["angle_deg"] == pytest.approx(90.0 / 2 ** info["angle_halvings"])
    assert abs(mismatch_ratio(noisy, label) - 0.3) <= 0.05


def test_affine_unreachable_beta_returns_disjoint_map(ball_label):
    noisy, info = affine_to_mismatch(ball_label, 5.0, angle_deg=0.0, axis=(1, 0, 0), direction=(1, 0, 0))
    assert info["mismatch"] < 5.0 and info["mismatch"] >= 1.0
    assert not np.any((noisy > 0) & (ball_label > 0))


def test_affine_multiclass_moves_classes_together(two_ball_label):
    noisy, info = affine_to_mismatch(two_ball_label, 0.6, angle_deg=0.0, axis=(1, 0, 0), direction=(0, 1, 0))
    shift = np.argwhere(noisy == 1).mean(axis=0) - np.argwhere(two_ball_label == 1).mean(axis=0)
    shift_2 = np.argwhere(noisy == 2).mean(axis=0) - np.argwhere(two_ball_label == 2).mean(axis=0)
    np.testing.assert_allclose(shift, shift_2, atol=0.5)
    assert abs(info["mismatch"] - 0.6) <= 0.05


def test_affine_empty_label_is_unchanged():
    label = np.zeros((5, 5, 5), dtype=np.uint8)
    noisy, info = affine_to_mismatch(label, 0.5, 10.0, (1, 0, 0), (0, 1, 0))
    np.testing.assert_array_equal(noisy, label)
    assert info["shift"] == 0.0


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(beta=0.0, angle_deg=5, axis=(1, 0, 0), direction=(0, 1, 0)),
        dict(beta=0.5, angle_deg=5, axis=(0, 0, 0), direction=(0, 1, 0)),
        dict(beta=0.5, angle_deg=5, axis=(1, 0, 0), direction=(0, 1)),
        dict(beta=0.5, angle_deg=5, axis=(1, 0, 0), direction=(0, 1, 0), spacing=(1, -1, 1)),
    ],
)
def test_affine_bad_arguments(ball_label, kwargs):
    with pytest.raises(ValueError):
        affine_to_mismatch(ball_label, **kwargs)
