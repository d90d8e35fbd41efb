"""Transforms for the supervoxel map that SP-guided training carries beside image and label (methods.md §2).

The precomputed map (``scripts/make_supervoxels.py``, int32 ids 0..K-1) is loaded under the datalist key
``superpixel`` together with the image, and must undergo exactly the same spatial transforms as the image, with
nearest-neighbour interpolation, so that it stays aligned with the label. With MONAI 1.6.1:

- ``LoadImaged(keys=["image", "label", "superpixel"])``, ``EnsureChannelFirstd`` (same keys). The default float32
  load is exact for ids below 2**24.
- No interpolation involved (pass the key with the others): ``Orientationd``, ``CropForegroundd``,
  ``SpatialPadd``, ``RandCropByPosNegLabeld`` / ``RandSpatialCropd`` (list ``superpixel`` in ``keys``; the
  crop centres come from ``label_key="label"``), ``RandFlipd``, ``RandRotate90d``.
- Interpolating transforms need ``mode="nearest"`` for label and superpixel, e.g.
  ``Spacingd(keys, pixdim, mode=("bilinear", "nearest", "nearest"))``,
  ``RandAffined(keys, mode=("bilinear", "nearest", "nearest"), padding_mode="zeros")``,
  ``RandZoomd(keys, mode=("trilinear", "nearest", "nearest"))``, ``Rand3DElasticd`` likewise.
  :func:`interpolation_modes` builds these tuples. Never apply intensity transforms to ``superpixel``.
- Padding (``SpatialPadd``, out-of-field voxels of ``RandAffined`` with ``padding_mode="zeros"``) writes 0, which
  merges the padded voxels into supervoxel 0; the padded label is background too, so such voxels only enlarge
  one piece. Use ``padding_mode="border"`` to avoid it if that matters.
- Last, :class:`RelabelContiguousd` renumbers the ids present in the patch to ``0..K-1`` so that the per-patch
  scatter tensors of :mod:`custom.selection.superpixel` stay small, and can store K for the batch.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_dst_type

__all__ = [
    "SUPERVOXEL_KEY",
    "interpolation_modes",
    "relabel_contiguous",
    "RelabelContiguous",
    "RelabelContiguousd",
]

SUPERVOXEL_KEY = "superpixel"


def interpolation_modes(
    keys: Sequence[str],
    nearest_keys: Sequence[str] = ("label", SUPERVOXEL_KEY),
    default: str = "bilinear",
) -> tuple[str, ...]:
    """``mode`` tuple for an interpolating dict transform: ``"nearest"`` for label-like keys, ``default`` else.

    Example::

        keys = ["image", "label", "superpixel"]
        RandAffined(keys, mode=interpolation_modes(keys), prob=0.2, rotate_range=0.3)
    """
    nearest = set(nearest_keys)
    return tuple("nearest" if key in nearest else default for key in keys)


def relabel_contiguous(ids: torch.Tensor | np.ndarray) -> tuple[torch.Tensor | np.ndarray, int]:
    """Renumber the ids present to ``0..K-1`` keeping their order (``torch.unique(..., return_inverse=True)``).

    Args:
        ids: integer-valued tensor or array of any shape (e.g. ``(1, H, W, D)``).

    Returns:
        ``(relabelled int64 array/tensor of the same type and shape, K)``. Meta of a ``MetaTensor`` is kept.

    Raises:
        ValueError: non-integer values.
    """
    data = torch.as_tensor(ids.as_tensor() if hasattr(ids, "as_tensor") else ids)
    if data.is_floating_point() and not torch.equal(data, data.round()):
        raise ValueError("supervoxel ids must be integer-valued.")
    unique, inverse = torch.unique(data, sorted=True, return_inverse=True)
    relabelled, *_ = convert_to_dst_type(inverse.reshape(data.shape), dst=ids, dtype=torch.int64)
    return relabelled, int(unique.numel())


class RelabelContiguous(Transform):
    """Array transform: renumber supervoxel ids present to ``0..K-1`` (see :func:`relabel_contiguous`)."""

    backend = [torch.Tensor, np.ndarray]

    def __call__(self, img: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        return relabel_contiguous(img)[0]


class RelabelContiguousd(MapTransform):
    """Dictionary wrapper of :class:`RelabelContiguous` for the supervoxel map of a patch.

    Args:
        keys: keys to relabel (default ``"superpixel"``).
        count_key_postfix: when not ``None``, store K (an int) under ``f"{key}_{count_key_postfix}"`` so that a
            collated batch carries the per-sample counts (pass them as ``num_superpixels``; their max is read on
            the CPU, no device sync).
        allow_missing_keys: do not raise when a key is missing.
    """

    backend = RelabelContiguous.backend

    def __init__(
        self,
        keys: KeysCollection = SUPERVOXEL_KEY,
        count_key_postfix: str | None = "count",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.count_key_postfix = count_key_postfix

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key], count = relabel_contiguous(d[key])
            if self.count_key_postfix is not None:
                d[f"{key}_{self.count_key_postfix}"] = count
        return d
