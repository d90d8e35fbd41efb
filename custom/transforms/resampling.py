"""Block pooling of 3D volumes: the image mean, the label majority vote and the pooled grid's affine.

The dataset preparation simulates label noise at native resolution and then pools image and labels by ``K`` per
axis (:mod:`custom.data.prepare`); the HQ noise draws (:mod:`custom.noise.hq_draws`) pool their draws the same way,
so that a voxel-sized simulator parameter means the same in both places. Pure NumPy functions on ``(H, W, D)``
arrays; trailing voxels that do not fill a whole block are cropped.
"""

from __future__ import annotations

import numpy as np

__all__ = ["downsample_image", "downsample_label", "downsample_affine", "voxel_spacing"]


def _crop_to_blocks(array: np.ndarray, factor: int) -> np.ndarray:
    if array.ndim != 3:
        raise ValueError(f"expected a 3D array (H, W, D), got shape {array.shape}")
    if any(size < factor for size in array.shape):
        raise ValueError(f"shape {array.shape} is smaller than the downsampling factor {factor}")
    h, w, d = (size // factor * factor for size in array.shape)
    return array[:h, :w, :d]


def _blocks(array: np.ndarray, factor: int) -> np.ndarray:
    # (H, W, D) -> (H/K, W/K, D/K, K^3): one row per block
    h, w, d = (size // factor for size in array.shape)
    view = array.reshape(h, factor, w, factor, d, factor).transpose(0, 2, 4, 1, 3, 5)
    return view.reshape(h, w, d, factor**3)


def downsample_image(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean over non-overlapping ``factor``^3 blocks (trailing voxels cropped). ``(H, W, D)`` -> float32
    ``(H//K, W//K, D//K)``. ``factor=1`` returns a float32 copy."""
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    image = _crop_to_blocks(np.asarray(image), factor)
    if factor == 1:
        return image.astype(np.float32, copy=True)
    return _blocks(image.astype(np.float64), factor).mean(axis=-1).astype(np.float32)


def downsample_label(label: np.ndarray, factor: int, num_classes: int) -> np.ndarray:
    """Majority vote over non-overlapping ``factor``^3 blocks of an integer label map ``(H, W, D)`` with values in
    ``[0, num_classes)``; ties go to the higher class (a binary block with half its voxels foreground is
    foreground). Returns the label's dtype, shape ``(H//K, W//K, D//K)``."""
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    label = _crop_to_blocks(np.asarray(label), factor)
    if factor == 1:
        return label.copy()
    blocks = _blocks(label, factor)
    # votes[..., c] = voxels of class c per block; scanning classes from the top makes argmax prefer higher ones
    votes = np.stack([(blocks == c).sum(axis=-1) for c in range(num_classes - 1, -1, -1)], axis=-1)
    return (num_classes - 1 - votes.argmax(axis=-1)).astype(label.dtype)


def downsample_affine(affine: np.ndarray, factor: int) -> np.ndarray:
    """The affine of a volume pooled by ``factor``^3 blocks: voxel axes scaled by K, origin moved to the centre
    of the first block (so world coordinates of structures do not shift)."""
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got {affine.shape}")
    result = affine.copy()
    result[:3, :3] = affine[:3, :3] * factor
    result[:3, 3] = affine[:3, 3] + affine[:3, :3] @ np.full(3, (factor - 1) / 2.0)
    return result


def voxel_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel sizes (mm) along the three array axes: the lengths of the affine's first three columns."""
    sizes = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    return tuple(float(s) for s in sizes)  # type: ignore[return-value]
