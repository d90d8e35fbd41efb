"""Validation helpers shared by the label-noise simulators: integer 3D label maps and voxel spacing."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["as_label_array", "check_num_classes", "infer_num_classes", "as_spacing", "foreground_classes"]


def as_label_array(label: np.ndarray, num_classes: int | None = None, name: str = "label") -> np.ndarray:
    """Check a 3D label map and return it as an ``int64`` array (a copy only when the dtype differs).

    Args:
        label: class-index map, shape ``(H, W, D)``; integer, bool or float dtype holding whole numbers.
        num_classes: when given, every value must lie in ``0..num_classes-1``.
        name: what to call the array in error messages.

    Raises:
        ValueError: not 3D, non-integer values, negative values or values ``>= num_classes``.
    """
    array = np.asarray(label)
    if array.ndim != 3:
        raise ValueError(f"{name} must be a 3D class-index map (H, W, D), got shape {array.shape}.")
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"{name} must hold integer class indices, got dtype {array.dtype}.")
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise ValueError(f"{name} must hold integer class indices, found non-integer values.")
    out = array.astype(np.int64, copy=False)
    if out.size and out.min() < 0:
        raise ValueError(f"{name} has negative values (min {out.min()}); class indices start at 0.")
    if num_classes is not None:
        num_classes = check_num_classes(num_classes)
        if out.size and out.max() >= num_classes:
            raise ValueError(f"{name} has value {out.max()} outside 0..{num_classes - 1} (num_classes={num_classes}).")
    return out


def check_num_classes(num_classes: int) -> int:
    """Return ``num_classes`` as an int, raising ``ValueError`` unless it is an integer >= 2."""
    if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2 (background + at least one class), got {num_classes!r}.")
    return int(num_classes)


def infer_num_classes(label: np.ndarray, num_classes: int | None = None) -> int:
    """``num_classes`` when given, else ``max(label) + 1`` and at least 2."""
    if num_classes is not None:
        return check_num_classes(num_classes)
    return max(int(np.max(label)) + 1 if np.size(label) else 1, 2)


def foreground_classes(label: np.ndarray) -> np.ndarray:
    """The sorted foreground class indices (> 0) present in ``label``."""
    present = np.flatnonzero(np.bincount(np.asarray(label).ravel()))
    return present[present > 0]


def as_spacing(spacing: Sequence[float] | None, ndim: int = 3) -> np.ndarray:
    """Voxel spacing as a float64 array of length ``ndim`` (ones when ``None``).

    Raises:
        ValueError: wrong length, or a non-positive / non-finite value.
    """
    if spacing is None:
        return np.ones(ndim, dtype=np.float64)
    values = np.asarray(spacing, dtype=np.float64).ravel()
    if values.shape != (ndim,) or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"spacing must be {ndim} positive numbers, got {spacing!r}.")
    return values
