"""Tiny label volumes shared by the noise tests."""

from __future__ import annotations

import numpy as np
import pytest


def ball(shape: tuple[int, int, int], center: tuple[float, float, float], radius: float) -> np.ndarray:
    """Boolean ball of voxel centres within ``radius`` of ``center``."""
    grid = np.indices(shape, dtype=np.float64)
    offset = grid - np.asarray(center, dtype=np.float64).reshape(3, 1, 1, 1)
    return (offset**2).sum(axis=0) <= radius**2


@pytest.fixture
def ball_label() -> np.ndarray:
    """Binary 24^3 uint8 map: a ball of radius 7 at the centre (1472 voxels)."""
    return ball((24, 24, 24), (11.5, 11.5, 11.5), 7.0).astype(np.uint8)


@pytest.fixture
def big_ball_label() -> np.ndarray:
    """Binary 32^3 uint8 map: a ball of radius 9 at the centre, room to dilate by beta = 0.7."""
    return ball((32, 32, 32), (15.5, 15.5, 15.5), 9.0).astype(np.uint8)


@pytest.fixture
def two_ball_label() -> np.ndarray:
    """3-class 24^3 uint8 map: class 1 ball (r=5) and class 2 ball (r=4), 4 voxels apart."""
    label = np.zeros((24, 24, 24), dtype=np.uint8)
    label[ball(label.shape, (7.0, 11.5, 11.5), 5.0)] = 1
    label[ball(label.shape, (17.0, 11.5, 11.5), 4.0)] = 2
    return label
