"""Axis flips and an in-plane 90-degree rotation of training patches, in one transform on plain tensors.

MONAI's ``RandFlipd`` x2 + ``RandRotate90d`` chain does the same geometry, but each of its three transforms copies
``MetaTensor`` metadata and records ``applied_operations`` for every key of every sample. Training patches are never
inverted, so this transform drops the metadata (``MetaTensor`` in, ``torch.Tensor`` out) and applies the flips and
the rotation with ``torch.flip`` / ``torch.rot90``: on the CPU profile the chain cost more than the crop.

``FlipRotate90d`` applies a given geometry (deterministic, for tests and replays); ``RandFlipRotate90d`` draws it.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, RandomizableTransform

__all__ = ["flip_rotate90", "FlipRotate90d", "RandFlipRotate90d"]


def _check_axes(name: str, axes: Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    axes = tuple(int(a) for a in axes)
    for a in axes:
        if not 0 <= a < spatial_dims:
            raise ValueError(f"{name}: spatial axis {a} is outside 0..{spatial_dims - 1}")
    return axes


def flip_rotate90(
    data: torch.Tensor | np.ndarray, flip_axes: Sequence[int] = (), k: int = 0, rot_axes: Sequence[int] = (0, 1)
) -> torch.Tensor:
    """Flip ``data`` along the spatial ``flip_axes``, then rotate it ``k`` quarter turns in the plane ``rot_axes``.

    Args:
        data: channel-first array ``(C, H, W[, D])``; a ``MetaTensor``'s metadata is dropped.
        flip_axes: spatial axes (0 = H) to flip.
        k: number of 90-degree turns from spatial axis ``rot_axes[0]`` towards ``rot_axes[1]``
            (``torch.rot90`` convention).
        rot_axes: the two spatial axes of the rotation plane.

    Returns:
        A ``torch.Tensor`` of the same dtype; the rotation plane's sizes swap when ``k`` is odd.

    Raises:
        ValueError: ``data`` has no spatial axis, or an axis is out of range, or ``rot_axes`` is not two distinct axes.
    """
    tensor = data.as_tensor() if isinstance(data, MetaTensor) else torch.as_tensor(data)
    spatial_dims = tensor.ndim - 1
    if spatial_dims < 1:
        raise ValueError(f"expected a channel-first array (C, spatial...), got shape {tuple(tensor.shape)}")
    flips = _check_axes("flip_axes", flip_axes, spatial_dims)
    if flips:
        tensor = torch.flip(tensor, dims=[a + 1 for a in flips])
    if k % 4:
        plane = _check_axes("rot_axes", rot_axes, spatial_dims)
        if len(plane) != 2 or plane[0] == plane[1]:
            raise ValueError(f"rot_axes must be two distinct spatial axes, got {list(rot_axes)}")
        tensor = torch.rot90(tensor, k % 4, dims=[plane[0] + 1, plane[1] + 1])
    return tensor


class FlipRotate90d(MapTransform):
    """Dictionary wrapper of :func:`flip_rotate90` with a fixed geometry for every key."""

    def __init__(
        self,
        keys: KeysCollection,
        flip_axes: Sequence[int] = (),
        k: int = 0,
        rot_axes: Sequence[int] = (0, 1),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.flip_axes = tuple(int(a) for a in flip_axes)
        self.k = int(k)
        self.rot_axes = tuple(int(a) for a in rot_axes)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = flip_rotate90(d[key], self.flip_axes, self.k, self.rot_axes)
        return d


class RandFlipRotate90d(RandomizableTransform, MapTransform):
    """Random flips (each axis of ``flip_axes`` with probability ``flip_prob``) and, with probability ``rot_prob``,
    1-3 quarter turns in the plane ``rot_axes``: the geometry of ``RandFlipd`` per axis + ``RandRotate90d``
    (``max_k`` 3), drawn once per sample and applied to every key alike.

    Args:
        keys: keys of channel-first arrays (image and label maps).
        flip_axes: spatial axes that may be flipped.
        flip_prob: probability of each flip, in [0, 1].
        rot_prob: probability of the rotation, in [0, 1] (``custom.options.rotation_prob`` gives 0 for a patch that
            is not square in ``rot_axes``).
        rot_axes: the two spatial axes of the rotation plane.
        allow_missing_keys: skip keys that a sample lacks.
    """

    def __init__(
        self,
        keys: KeysCollection,
        flip_axes: Sequence[int] = (0, 1),
        flip_prob: float = 0.5,
        rot_prob: float = 0.5,
        rot_axes: Sequence[int] = (0, 1),
        allow_missing_keys: bool = False,
    ) -> None:
        for name, p in (("flip_prob", flip_prob), ("rot_prob", rot_prob)):
            if not 0.0 <= float(p) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        RandomizableTransform.__init__(self, prob=1.0)
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.flip_axes = tuple(int(a) for a in flip_axes)
        self.flip_prob = float(flip_prob)
        self.rot_prob = float(rot_prob)
        # the drawn geometry lives in the deterministic transform that applies it
        self.geometry = FlipRotate90d(keys, (), 0, rot_axes, allow_missing_keys)

    def randomize(self, data: Any = None) -> None:
        self.geometry.flip_axes = tuple(a for a in self.flip_axes if self.R.random() < self.flip_prob)
        self.geometry.k = int(self.R.randint(1, 4)) if self.R.random() < self.rot_prob else 0

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        self.randomize()
        return self.geometry(data)
