"""MTCL cube morphology and SP-guided volume-targeted morphology on hand-sized volumes."""

from __future__ import annotations

import numpy as np
import pytest

from custom.noise.morphology import cube_morphology, volume_targeted_morphology
from custom.noise.quality import relative_volume_change


def single_voxel(shape=(11, 11, 11), at=(5, 5, 5), dtype=np.uint8) -> np.ndarray:
    label = np.zeros(shape, dtype=dtype)
    label[at] = 1
    return label


@pytest.mark.parametrize(
    "size, expected",
    [(1, 1), (2, 8), (3, 27), (5, 125)],  # a single voxel dilated by a size^3 cube gives size^3 voxels
)
def test_cube_dilation_of_single_voxel(size, expected):
    noisy = cube_morphology(single_voxel(), size, "dilate")
    assert noisy.sum() == expected


def test_cube_dilation_is_the_centred_block():
    noisy = cube_morphology(single_voxel(), 3, "dilate")
    expected = np.zeros_like(noisy)
    expected[4:7, 4:7, 4:7] = 1
    np.testing.assert_array_equal(noisy, expected)


@pytest.mark.parametrize("size, expected", [(3, 27), (5, 1), (7, 0)])
def test_cube_erosion_of_block(size, expected):
    # shape: (11, 11, 11), a 5^3 block: erosion by a 3-cube leaves 3^3, by a 5-cube the centre, by 7 nothing
    label = np.zeros((11, 11, 11), dtype=np.uint8)
    label[3:8, 3:8, 3:8] = 1
    assert cube_morphology(label, size, "erode").sum() == expected


def test_cube_erosion_does_not_erode_from_array_border():
    # a 5-wide block touching the x = 0 face: only the faces inside the array move
    label = np.zeros((8, 8, 8), dtype=np.uint8)
    label[0:5, 2:7, 2:7] = 1
    noisy = cube_morphology(label, 3, "erode")
    expected = np.zeros_like(label)
    expected[0:4, 3:6, 3:6] = 1
    np.testing.assert_array_equal(noisy, expected)


def test_cube_dilation_multiclass_nearest_class_wins_and_classes_are_kept():
    # class 1 at x=3, class 2 at x=8; a 5-cube reaches 2 voxels: x=5 is nearer class 1, x=6 nearer class 2
    label = np.zeros((11, 11, 11), dtype=np.int16)
    label[3, 5, 5] = 1
    label[8, 5, 5] = 2
    noisy = cube_morphology(label, 5, "dilate")
    assert noisy.dtype == np.int16
    assert noisy[5, 5, 5] == 1 and noisy[6, 5, 5] == 2
    assert (noisy == 1).sum() == 125 and (noisy == 2).sum() == 125
    assert noisy[3, 5, 5] == 1 and noisy[8, 5, 5] == 2


def test_cube_erosion_multiclass_opens_a_gap_between_touching_classes():
    label = np.zeros((10, 7, 7), dtype=np.uint8)
    label[0:5] = 1
    label[5:10] = 2
    noisy = cube_morphology(label, 3, "erode")
    assert (noisy[0:4] == 1).all() and (noisy[4:6] == 0).all() and (noisy[6:10] == 2).all()


def test_cube_morphology_empty_label_is_unchanged():
    label = np.zeros((6, 6, 6), dtype=np.uint8)
    np.testing.assert_array_equal(cube_morphology(label, 5, "dilate"), label)
    np.testing.assert_array_equal(cube_morphology(label, 5, "erode"), label)


@pytest.mark.parametrize(
    "kwargs",
    [dict(size=3, op="open"), dict(size=0, op="dilate"), dict(size=2.5, op="dilate"), dict(size=True, op="erode")],
)
def test_cube_morphology_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        cube_morphology(single_voxel(), **kwargs)


@pytest.mark.parametrize(
    "label",
    [np.zeros((4, 4), np.uint8), -np.ones((3, 3, 3), np.int8), np.full((3, 3, 3), 0.5, np.float32)],
)
def test_invalid_label_maps(label):
    with pytest.raises(ValueError):
        cube_morphology(label, 3, "dilate")


@pytest.mark.parametrize(
    "step, beta, expected_voxels",
    [
        ("cross", 6.0, 7),  # one cross step adds the 6 face neighbours
        ("cube", 26.0, 27),  # one cube step adds the 26 neighbours
        ("cross", 10.0, 7),  # gains 0, 6, 24: 6 is the closer to 10
        ("cross", 16.0, 25),  # 24 is the closer to 16
        ("euclidean", 6.0, 7),  # first distinct distance 1: the 6 face neighbours
        ("euclidean", 18.0, 19),  # distances 1 and sqrt 2: 6 + 12 neighbours
    ],
)
def test_volume_targeted_dilation_steps_hand_counted(step, beta, expected_voxels):
    noisy, info = volume_targeted_morphology(single_voxel(), beta, "dilate", step=step)
    assert noisy.sum() == expected_voxels
    assert info["volume_change"] == pytest.approx(expected_voxels - 1)


def test_volume_targeted_erosion_never_empties():
    # a 3^3 block: surface voxels are 1 step from outside, the centre 2; beta = 1 would remove everything
    label = np.zeros((7, 7, 7), dtype=np.uint8)
    label[2:5, 2:5, 2:5] = 1
    noisy, info = volume_targeted_morphology(label, 1.0, "erode", step="cross")
    assert noisy.sum() == 1 and noisy[3, 3, 3] == 1
    assert info["steps"] == [1]


def test_volume_targeted_euclidean_respects_spacing():
    # voxels 4x longer along z: the 4 in-plane neighbours (1 mm) come before the z neighbours (4 mm)
    noisy, _ = volume_targeted_morphology(single_voxel(), 4.0, "dilate", spacing=(1.0, 1.0, 4.0))
    assert noisy.sum() == 5
    assert noisy[6, 5, 5] == 1 and noisy[5, 4, 5] == 1 and noisy[5, 5, 6] == 0


@pytest.mark.parametrize("op", ["dilate", "erode"])
@pytest.mark.parametrize("beta", [0.5, 0.7])
def test_volume_targeted_hits_beta_on_ball(big_ball_label, op, beta):
    noisy, info = volume_targeted_morphology(big_ball_label, beta, op)
    change = relative_volume_change(noisy, big_ball_label)
    assert abs(abs(change) - beta) <= 0.05
    assert np.sign(change) == (1 if op == "dilate" else -1)
    assert info["volume_change"] == pytest.approx(abs(change))
    # dilation contains the clean map, erosion is contained in it
    if op == "dilate":
        assert np.all(noisy[big_ball_label == 1] == 1)
    else:
        assert np.all(big_ball_label[noisy == 1] == 1)


def test_volume_targeted_multiclass_per_class_and_background_only(two_ball_label):
    noisy, info = volume_targeted_morphology(two_ball_label, 0.5, "dilate")
    assert len(info["steps"]) == 2
    # clean foreground voxels keep their class: dilation only claims background
    foreground = two_ball_label > 0
    np.testing.assert_array_equal(noisy[foreground], two_ball_label[foreground])
    for cls in (1, 2):
        clean, grown = (two_ball_label == cls).sum(), (noisy == cls).sum()
        assert grown > clean
    eroded, _ = volume_targeted_morphology(two_ball_label, 0.5, "erode")
    for cls in (1, 2):
        clean, left = (two_ball_label == cls).sum(), (eroded == cls).sum()
        assert 0 < left < clean and abs((clean - left) / clean - 0.5) <= 0.12  # small balls: coarse steps


def test_volume_targeted_zero_beta_is_identity(ball_label):
    noisy, info = volume_targeted_morphology(ball_label, 0.0, "dilate")
    np.testing.assert_array_equal(noisy, ball_label)
    assert info["steps"] == [0]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(beta=-0.1, op="dilate"),
        dict(beta=float("nan"), op="dilate"),
        dict(beta=0.5, op="shift"),
        dict(beta=0.5, op="dilate", step="ball"),
        dict(beta=0.5, op="dilate", spacing=(1.0, 1.0)),
        dict(beta=0.5, op="dilate", spacing=(1.0, 0.0, 1.0)),
    ],
)
def test_volume_targeted_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        volume_targeted_morphology(single_voxel(), **kwargs)
