"""Best-fit ellipsoid noise: moments and volume-matched ellipsoids."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from custom.noise.ellipsoid import component_moments, ellipsoid_relabel


def test_component_moments_hand_computed():
    # two voxels at x = 0 and x = 2: centroid x = 1, variance 1 along x, plus 1/12 of a unit cube everywhere
    components = np.zeros((3, 2, 2), dtype=np.int32)
    components[0, 0, 0] = components[2, 0, 0] = 1
    sizes, centroids, covariances = component_moments(components, 1)
    assert sizes.tolist() == [2]
    np.testing.assert_allclose(centroids[0], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(covariances[0], np.diag([1.0 + 1 / 12, 1 / 12, 1 / 12]))


def test_ball_stays_the_same_ball(ball_label):
    noisy, info = ellipsoid_relabel(ball_label)
    np.testing.assert_array_equal(noisy, ball_label)
    assert info == {"components": 1}


def test_single_voxel_stays():
    label = np.zeros((5, 5, 5), dtype=np.uint8)
    label[2, 3, 1] = 1
    noisy, _ = ellipsoid_relabel(label)
    np.testing.assert_array_equal(noisy, label)


def test_box_becomes_volume_matched_ellipsoid_with_same_centroid_and_axis_order():
    label = np.zeros((20, 20, 24), dtype=np.int16)
    label[7:11, 6:12, 5:17] = 1  # 4 x 6 x 12 box
    noisy, _ = ellipsoid_relabel(label)
    assert noisy.dtype == np.int16
    # volume-matched up to half a shell of tied voxels (8 symmetric voxels here: the centroid is a voxel corner)
    assert abs(int(noisy.sum()) - int(label.sum())) <= 8
    np.testing.assert_allclose(np.argwhere(noisy).mean(axis=0), np.argwhere(label).mean(axis=0), atol=0.5)
    extent = np.ptp(np.argwhere(noisy), axis=0)
    assert extent[0] < extent[1] < extent[2]
    assert not np.array_equal(noisy, label)  # corners cut off


def test_diagonal_bar_gives_diagonal_ellipsoid():
    label = np.zeros((16, 16, 16), dtype=np.uint8)
    for i in range(2, 14):
        label[i, i, i] = 1
        label[i, i, min(i + 1, 15)] = 1
    noisy, _ = ellipsoid_relabel(label, connectivity=3)
    centred = np.argwhere(noisy) - np.argwhere(noisy).mean(axis=0)
    principal = np.linalg.eigh(centred.T @ centred)[1][:, -1]
    assert abs(principal @ np.ones(3) / np.sqrt(3)) > 0.95


def test_multiclass_components_keep_their_class_and_size(two_ball_label):
    label = two_ball_label.copy()
    label[0:2, 0:3, 0:4] = 1  # a second class-1 component: a 2 x 3 x 4 box in a corner
    noisy, info = ellipsoid_relabel(label)
    assert info == {"components": 3}
    for cls in (1, 2):
        assert abs(int((noisy == cls).sum()) - int((label == cls).sum())) <= 3
    assert ndimage.label(noisy == 1)[1] == 2


def test_connectivity_changes_the_components():
    label = np.zeros((6, 6, 6), dtype=np.uint8)
    label[1, 1, 1] = label[2, 2, 2] = 1  # corner-touching voxels: one 26-connected component, two 6-connected
    assert ellipsoid_relabel(label, connectivity=3)[1]["components"] == 1
    assert ellipsoid_relabel(label, connectivity=1)[1]["components"] == 2


@pytest.mark.parametrize("connectivity", [0, 4, 1.5])
def test_bad_connectivity(ball_label, connectivity):
    with pytest.raises(ValueError):
        ellipsoid_relabel(ball_label, connectivity)
