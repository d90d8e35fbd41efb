"""Affine label noise (SP-guided): a rigid rotation, then a translation tuned to a target mismatch ratio.

The rotation turns the whole label map about the foreground centroid, by ``angle_deg`` about a unit ``axis``
(in physical space when a spacing is given). The translation moves it along a unit ``direction`` of 3D space
(any direction, both signs: the reference code only shifts along +x/+y, a bug not copied here) by the length
``s`` found by bisection so that ``(|FP| + |FN|) / |clean| ~ beta``. All classes move together, so a multi-class
map keeps its internal layout and no overlaps arise. Nearest-neighbour resampling keeps the labels integral.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from custom.noise.labelmap import as_label_array, as_spacing
from custom.noise.quality import mismatch_ratio

__all__ = ["rotation_matrix", "rigid_resample", "affine_to_mismatch"]


def _unit_vector(vector: Sequence[float], name: str) -> np.ndarray:
    values = np.asarray(vector, dtype=np.float64).ravel()
    norm = float(np.linalg.norm(values)) if values.shape == (3,) else 0.0
    if values.shape != (3,) or not np.isfinite(norm) or norm == 0.0:
        raise ValueError(f"{name} must be a non-zero finite 3-vector, got {vector!r}.")
    return values / norm


def rotation_matrix(axis: Sequence[float], angle_deg: float) -> np.ndarray:
    """3x3 rotation by ``angle_deg`` degrees about ``axis`` (right-hand rule; Rodrigues' formula).

    Raises:
        ValueError: ``axis`` is not a non-zero 3-vector.
    """
    unit = _unit_vector(axis, "axis")
    angle = np.deg2rad(float(angle_deg))
    cross = np.array([[0.0, -unit[2], unit[1]], [unit[2], 0.0, -unit[0]], [-unit[1], unit[0], 0.0]])
    return np.eye(3) + np.sin(angle) * cross + (1.0 - np.cos(angle)) * (cross @ cross)


def rigid_resample(
    label: np.ndarray,
    rotation: np.ndarray,
    translation: Sequence[float],
    center: Sequence[float],
    spacing: Sequence[float] | None = None,
) -> np.ndarray:
    """Move a label map by ``x -> rotation (x - center) + center + translation`` (physical coordinates).

    Physical coordinates are voxel indices times ``spacing``. Voxels mapped from outside the array become 0.

    Args:
        label: class-index map, shape ``(H, W, D)``.
        rotation: 3x3 rotation matrix.
        translation: shift in physical units (mm when ``spacing`` is in mm), length 3.
        center: rotation centre in physical units, length 3.
        spacing: voxel size per axis (default 1).

    Returns:
        the moved map, same shape and dtype as ``label`` (nearest-neighbour resampling).
    """
    voxel_size = as_spacing(spacing)
    rotation = np.asarray(rotation, dtype=np.float64)
    if rotation.shape != (3, 3):
        raise ValueError(f"rotation must be a 3x3 matrix, got shape {rotation.shape}.")
    shift = np.asarray(translation, dtype=np.float64).reshape(3)
    centre = np.asarray(center, dtype=np.float64).reshape(3)
    # affine_transform pulls: input_index = matrix @ output_index + offset, i.e. the inverse map in index space
    inverse = rotation.T
    matrix = inverse * voxel_size[None, :] / voxel_size[:, None]
    offset = (centre - inverse @ (centre + shift)) / voxel_size
    array = np.asarray(label)
    return ndimage.affine_transform(array, matrix, offset=offset, order=0, mode="constant", cval=0, output=array.dtype)


def affine_to_mismatch(
    label: np.ndarray,
    beta: float,
    angle_deg: float,
    axis: Sequence[float],
    direction: Sequence[float],
    spacing: Sequence[float] | None = None,
    tolerance: float = 0.005,
    max_iterations: int = 30,
    max_halvings: int = 16,
) -> tuple[np.ndarray, dict]:
    """Rotate, then translate along ``direction`` by the shift whose mismatch ratio is closest to ``beta``.

    When the rotation alone already exceeds ``beta + tolerance`` the angle is halved until it does not (the
    number of halvings is reported), so that beta is always reachable; the reference code would instead return
    the rotation's larger error. The shift is found by bisection on ``[0, diameter]`` (at the foreground's
    bounding-box diagonal the moved and clean maps no longer overlap, mismatch >= 1); the closest shift seen is
    kept. A beta above the mismatch at the diameter is not reachable: the diameter shift is returned.

    Args:
        label: class-index map, shape ``(H, W, D)``.
        beta: target ``(|FP| + |FN|) / |clean|``, > 0 (see :func:`custom.noise.quality.mismatch_ratio`).
        angle_deg: rotation angle in degrees.
        axis: rotation axis, non-zero 3-vector.
        direction: translation direction, non-zero 3-vector.
        spacing: voxel size per axis in mm (rotation and shift are done in physical space; ``None``: unit voxels).
        tolerance: stop the search once ``|mismatch - beta| <= tolerance``.
        max_iterations: bisection steps.
        max_halvings: angle halvings before the rotation is dropped.

    Returns:
        ``(noisy, info)`` with ``info`` = ``angle_deg`` (used), ``angle_halvings``, ``axis``, ``direction``
        (unit vectors), ``shift`` (length; mm with a ``spacing``, voxels without, as ``shift_unit`` says),
        ``shift_vector`` (the translation per array axis, same unit), ``shift_voxels`` (the translation per
        axis in voxels of that axis) and the achieved ``mismatch``; all JSON-serialisable.

    Raises:
        ValueError: bad ``beta``, vectors, ``spacing`` or an invalid label map.
    """
    labels = as_label_array(label)
    if not np.isfinite(beta) or beta <= 0:
        raise ValueError(f"beta must be a finite number > 0, got {beta!r}.")
    if tolerance < 0 or max_iterations < 1 or max_halvings < 0:
        raise ValueError("tolerance must be >= 0, max_iterations >= 1 and max_halvings >= 0.")
    unit_axis = _unit_vector(axis, "axis")
    unit_direction = _unit_vector(direction, "direction")
    voxel_size = as_spacing(spacing)
    info: dict = {
        "angle_deg": 0.0,
        "angle_halvings": 0,
        "axis": [round(float(v), 6) for v in unit_axis],
        "direction": [round(float(v), 6) for v in unit_direction],
        "shift": 0.0,
        "shift_unit": "mm" if spacing is not None else "voxel",
        "shift_vector": [0.0, 0.0, 0.0],
        "shift_voxels": [0.0, 0.0, 0.0],
        "mismatch": 0.0,
    }
    foreground_index = np.argwhere(labels > 0)
    if len(foreground_index) == 0:
        return np.array(label, copy=True), info
    center = foreground_index.mean(axis=0) * voxel_size

    angle = float(angle_deg)
    for halvings in range(max_halvings + 1):
        rotation = rotation_matrix(unit_axis, angle)
        rotated = rigid_resample(labels, rotation, np.zeros(3), center, voxel_size)
        mismatch = mismatch_ratio(rotated, labels)
        if mismatch <= beta + tolerance:
            break
        angle = angle / 2.0 if halvings < max_halvings else 0.0
    else:  # even the smallest rotation overshoots: no rotation
        rotation, rotated, mismatch = np.eye(3), labels.copy(), 0.0
    info["angle_deg"] = round(angle, 6)
    info["angle_halvings"] = halvings

    best = (abs(mismatch - beta), 0.0, mismatch, rotated)
    if best[0] > tolerance:
        extent = (foreground_index.max(axis=0) - foreground_index.min(axis=0) + 1) * voxel_size
        low, high = 0.0, float(np.linalg.norm(extent)) + float(voxel_size.max())
        moved = rigid_resample(labels, rotation, high * unit_direction, center, voxel_size)
        mismatch = mismatch_ratio(moved, labels)
        if mismatch <= beta:  # beta beyond reach: no overlap left, the largest shift is the closest
            best = (abs(mismatch - beta), high, mismatch, moved)
        for _ in range(max_iterations if mismatch > beta else 0):
            middle = 0.5 * (low + high)
            moved = rigid_resample(labels, rotation, middle * unit_direction, center, voxel_size)
            mismatch = mismatch_ratio(moved, labels)
            if abs(mismatch - beta) < best[0]:
                best = (abs(mismatch - beta), middle, mismatch, moved)
            if best[0] <= tolerance:
                break
            if mismatch < beta:
                low = middle
            else:
                high = middle
    _, shift, mismatch, noisy = best
    info["shift"] = round(float(shift), 6)
    # the translation per array axis: physical units, and voxels of that axis
    info["shift_vector"] = [round(float(v), 6) for v in shift * unit_direction]
    info["shift_voxels"] = [round(float(v), 6) for v in shift * unit_direction / voxel_size]
    info["mismatch"] = float(mismatch)
    return noisy.astype(np.asarray(label).dtype, copy=False), info
