"""Physical (mm) sizes of the noise simulators and their conversion to voxels, per axis.

Rule used everywhere in ``custom.noise``: a length ``L`` (mm) along an axis of voxel size ``s`` (mm) is
``round_half_up(L / s)`` voxels, computed per axis, so an anisotropic spacing gives a different voxel count on each
axis. "Half up" means 2.5 voxels become 3 (Python's ``round`` would give 2); a tolerance of ``1e-9`` voxel absorbs
floating-point error, so ``1.875 mm / 0.625 mm`` is exactly 3 voxels. A size that must cover at least one voxel (a
cube side) is clamped to ``>= 1``.

Examples (MTCL cube side 9.375 mm): at 0.625 mm (LA) 15 voxels; at 2 mm 5 voxels (4.6875 rounds up); at spacing
``(0.8, 0.8, 2.0)`` mm ``(12, 12, 5)`` voxels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from custom.noise.labelmap import as_spacing

__all__ = ["ROUNDING_TOLERANCE", "round_half_up", "mm_to_voxels", "voxels_to_mm"]

ROUNDING_TOLERANCE = 1e-9  # voxels


def round_half_up(value: float | np.ndarray) -> np.ndarray:
    """``floor(value + 0.5)`` with a ``1e-9`` tolerance (2.5 -> 3, 2.4999999999 -> 3, 2.49 -> 2); int64 array."""
    return np.floor(np.asarray(value, dtype=np.float64) + 0.5 + ROUNDING_TOLERANCE).astype(np.int64)


def mm_to_voxels(length_mm: float, spacing: Sequence[float], minimum: int = 0) -> tuple[int, int, int]:
    """Per-axis voxel count of a physical length: ``max(minimum, round_half_up(length_mm / spacing[i]))``.

    Args:
        length_mm: length in mm, finite and >= 0.
        spacing: voxel size per axis in mm, 3 positive numbers.
        minimum: smallest count returned on any axis (1 for a structuring-element side).

    Returns:
        3 ints, one per array axis.

    Raises:
        ValueError: a negative or non-finite length, or a bad spacing.
    """
    length = float(length_mm)
    if not np.isfinite(length) or length < 0:
        raise ValueError(f"length_mm must be a finite number >= 0, got {length_mm!r}.")
    voxels = np.maximum(round_half_up(length / as_spacing(spacing)), int(minimum))
    return tuple(int(v) for v in voxels)  # type: ignore[return-value]


def voxels_to_mm(voxels: Sequence[int], spacing: Sequence[float]) -> list[float]:
    """Per-axis length in mm of ``voxels[i]`` voxels of size ``spacing[i]`` mm, rounded to 6 decimals."""
    counts = np.asarray(voxels, dtype=np.float64).reshape(3)
    return [round(float(v), 6) for v in counts * as_spacing(spacing)]
