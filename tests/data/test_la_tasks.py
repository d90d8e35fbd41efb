"""Tests for custom/data/la_tasks.py: the LA label tasks."""

import numpy as np
import pytest

from custom.data.la_tasks import LA_TASKS, apply_task, boundary_band_label, task_labels, task_params


def test_band_of_a_sphere_is_the_shell_within_band_mm():
    grid = np.stack(np.meshgrid(*[np.arange(21)] * 3, indexing="ij"))
    radius = np.sqrt(((grid - 10) ** 2).sum(axis=0))
    label = (radius <= 8).astype(np.uint8)
    out = boundary_band_label(label, band_mm=2.0, spacing_mm=0.5)  # band 4 voxels deep
    assert set(np.unique(out)) == {0, 1, 2}
    assert np.all(out[radius <= 3.5] == 1)  # > 4 voxels inside the surface
    assert np.all(out[(radius > 5) & (radius <= 8)] == 2)
    assert np.array_equal(out > 0, label > 0)


def test_thin_foreground_is_all_band_and_empty_stays_empty():
    label = np.zeros((6, 6, 6), dtype=np.uint8)
    label[1:5, 1:5, 2:4] = 1  # two voxels thick
    assert set(np.unique(boundary_band_label(label, band_mm=1.0, spacing_mm=1.0)[label > 0])) == {2}
    assert not boundary_band_label(np.zeros((4, 4, 4)), 1.0, 1.0).any()


def test_foreground_touching_the_volume_edge_counts_the_edge_as_background():
    label = np.ones((5, 5, 5), dtype=np.uint8)
    out = boundary_band_label(label, band_mm=1.0, spacing_mm=1.0)
    assert out[2, 2, 2] == 1 and out[0, 2, 2] == 2 and (out == 1).sum() == 27


def test_errors_and_task_lookup():
    with pytest.raises(ValueError, match="3D"):
        boundary_band_label(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="> 0"):
        boundary_band_label(np.zeros((4, 4, 4)), band_mm=0)
    with pytest.raises(ValueError, match="--task: unknown LA task 'wall'"):
        task_labels("wall")
    assert task_labels("atrium") == LA_TASKS["atrium"] == {"0": "background", "1": "left_atrium"}
    label = np.zeros((3, 3, 3), dtype=np.uint8)
    assert apply_task(label, "atrium") is label
    assert task_params("atrium", band_mm=0) == {} and task_params("atrium_band", 2) == {"band_mm": 2.0}
    with pytest.raises(ValueError, match="--band-mm must be > 0, got 0"):
        task_params("atrium_band", 0)
