"""mm -> voxel conversion of the simulator sizes (custom.noise.units) and the box morphology it feeds."""

from __future__ import annotations

import numpy as np
import pytest

from custom.noise import cube_morphology, mm_to_voxels, round_half_up, voxels_to_mm


@pytest.mark.parametrize(
    "length_mm, spacing, expected",
    [
        (1.875, (0.625, 0.625, 0.625), (3, 3, 3)),  # the LA's MTCL range: 3..15 voxels
        (9.375, (0.625, 0.625, 0.625), (15, 15, 15)),
        (1.875, (2.0, 2.0, 2.0), (1, 1, 1)),  # 0.9375 voxel rounds up to 1
        (9.375, (2.0, 2.0, 2.0), (5, 5, 5)),  # 4.6875 -> 5
        (5.0, (2.0, 2.0, 2.0), (3, 3, 3)),  # exactly 2.5 voxels: half up, not half to even
        (4.9, (2.0, 2.0, 2.0), (2, 2, 2)),
        (9.375, (0.8, 0.8, 2.0), (12, 12, 5)),  # anisotropic: each axis on its own
        (0.3, (0.8, 0.8, 2.0), (0, 0, 0)),
        (0.0, (1.0, 1.0, 1.0), (0, 0, 0)),
    ],
)
def test_mm_to_voxels_rounds_half_up_per_axis(length_mm, spacing, expected):
    assert mm_to_voxels(length_mm, spacing) == expected


def test_minimum_and_floating_point_tolerance():
    assert mm_to_voxels(0.3, (0.8, 0.8, 2.0), minimum=1) == (1, 1, 1)
    # 0.3 / 0.1 = 2.9999999999999996 in floating point: still 3 voxels
    assert mm_to_voxels(0.3, (0.1, 0.1, 0.1)) == (3, 3, 3)
    # 0.25 / 0.1 = 2.4999999999999996, meant as exactly 2.5: rounds up like 2.5
    assert mm_to_voxels(0.25, (0.1, 0.1, 0.1)) == (3, 3, 3)
    assert round_half_up(np.array([0.5, 1.5, 2.5, 2.49])).tolist() == [1, 2, 3, 2]


def test_voxels_to_mm():
    assert voxels_to_mm([12, 12, 5], (0.8, 0.8, 2.0)) == [9.6, 9.6, 10.0]


@pytest.mark.parametrize(
    "length_mm, spacing", [(-1.0, (1, 1, 1)), (float("nan"), (1, 1, 1)), (1.0, (1, 1)), (1.0, (1, 0, 1))]
)
def test_bad_input(length_mm, spacing):
    with pytest.raises(ValueError):
        mm_to_voxels(length_mm, spacing)


def test_box_morphology_per_axis():
    label = np.zeros((15, 15, 9), np.uint8)
    label[4:11, 4:11, 3:6] = 1  # 7 x 7 x 3
    dilated = cube_morphology(label, (3, 3, 1), "dilate")
    assert dilated.sum() == 9 * 9 * 3  # grown by one voxel in-plane only
    eroded = cube_morphology(label, (5, 5, 1), "erode")
    assert eroded.sum() == 3 * 3 * 3
    # one int is the cube of the MTCL reference
    np.testing.assert_array_equal(cube_morphology(label, 3, "dilate"), cube_morphology(label, (3, 3, 3), "dilate"))
    np.testing.assert_array_equal(cube_morphology(label, (1, 1, 1), "erode"), label)
    for bad in ((3, 3), (3, 0, 3), (3, 2.5, 3), True):
        with pytest.raises(ValueError, match="size"):
            cube_morphology(label, bad, "erode")
