"""Preprocessing of batch inference and the input checks that run inside it: the MONAI transforms that load,
check, resample and normalise an image before the network sees it.

Shipped with trained bundles (``scripts/input_checks.py``, beside ``scripts/folder_inference.py``): it imports only
torch, numpy, monai and the standard library.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import (
    Activationsd,
    AsDiscreted,
    Compose,
    EnsureChannelFirstd,
    Invertd,
    LoadImaged,
    NormalizeIntensityd,
    Orientationd,
    Spacingd,
    Transform,
)

__all__ = ["DEFAULT_MAX_VOXELS", "CheckImaged", "InputError", "SetAsideStrayKeysd", "default_inference_transforms"]


class SetAsideStrayKeysd(Transform):
    """Move non-dict entries whose key starts with ``f"{key}_"`` into one dict under ``stash_key``.

    MONAI 1.6.1 ``Spacingd`` calls ``.update()`` on every entry whose key starts with
    ``f"{key}_"`` (meant for ``image_meta_dict``); a string such as MONAI Label's ``image_path``
    then crashes it. This transform, placed first, keeps such values (``d[stash_key]["image_path"]``)
    while hiding them from later transforms. Dict-like entries (real meta dicts) are left in place.

    Args:
        keys: the image keys later transforms process, e.g. ``"image"``.
        stash_key: where the set-aside values go; must not itself start with ``f"{key}_"``.

    Raises:
        ValueError: when ``keys`` is empty or ``stash_key`` would be caught by the same rule.
    """

    def __init__(self, keys: str | Sequence[str], stash_key: str = "set_aside") -> None:
        self.keys = (keys,) if isinstance(keys, str) else tuple(keys)
        if not self.keys or not all(isinstance(k, str) and k for k in self.keys):
            raise ValueError(f"keys must be one or more non-empty strings, got {keys!r}.")
        if any(stash_key.startswith(f"{k}_") for k in self.keys):
            raise ValueError(f"stash_key {stash_key!r} must not start with any of {[f'{k}_' for k in self.keys]}.")
        self.stash_key = stash_key

    def __call__(self, data: Mapping[Any, Any]) -> dict[Any, Any]:
        d = dict(data)
        stray = [
            k
            for k in d
            if isinstance(k, str)
            and any(k.startswith(f"{key}_") for key in self.keys)
            and not isinstance(d[k], Mapping)
        ]
        if stray:
            stash = dict(d.get(self.stash_key) or {})
            for k in stray:
                stash[k] = d.pop(k)
            d[self.stash_key] = stash
        return d


DEFAULT_MAX_VOXELS = 2**28  # 256 Mi voxels: 1 GiB as float32, about 9x a 576 x 576 x 88 LA volume


class InputError(ValueError):
    """A bad input image (non-finite voxels, a grid too large once resampled). The message starts with the file."""

    user_error = True  # custom.errors prints only its message, no traceback


def _source_name(image: Any) -> str:
    meta = getattr(image, "meta", None)
    source = meta.get("filename_or_obj") if isinstance(meta, Mapping) else None
    if isinstance(source, (list, tuple)) and len(source) == 1:
        source = source[0]
    return str(source) if source else "<image>"


def _native_spacing(image: Any) -> np.ndarray:
    affine = getattr(image, "affine", None)
    if affine is None:
        return np.ones(3)
    affine = np.asarray(affine.detach().cpu() if isinstance(affine, torch.Tensor) else affine, dtype=np.float64)
    return np.linalg.norm(affine[:3, :3], axis=0)


class CheckImaged(Transform):
    """Refuse an image that would give silently wrong output or exhaust memory, naming its file.

    A MONAI ``Transform`` (deterministic), so that a ``CacheDataset`` checks each file once, when it caches it, and
    keeps caching the transforms after it (a plain callable would end the cached part there and make every
    training iteration resample and normalise the whole volume again).

    Placed after ``LoadImaged`` / ``EnsureChannelFirstd`` (and ``Orientationd``) and before ``Spacingd``. For each
    key present:

    * every voxel must be finite: one NaN or Inf voxel makes ``NormalizeIntensityd`` turn the whole volume into NaN,
      and the network's argmax of NaN logits is all background;
    * the grid resampled to ``pixdim`` (``ceil(size * native spacing / pixdim)`` per axis) must hold at most
      ``max_voxels`` voxels (a 50 mm spacing resampled to 0.625 mm would need hundreds of GB).

    Args:
        keys: the image keys (missing ones are skipped when ``allow_missing_keys``).
        pixdim: the target voxel size of the following ``Spacingd`` (None: no resampling, only the size limit on
            the native grid).
        max_voxels: the largest resampled grid accepted (default :data:`DEFAULT_MAX_VOXELS`); None: no limit.
        check_finite: check that all voxels are finite.
        allow_missing_keys: skip keys not in the data.

    Raises:
        ValueError: for bad arguments.
        InputError: at call time, naming the file, for non-finite voxels or a grid over ``max_voxels``.
    """

    def __init__(
        self,
        keys: str | Sequence[str],
        pixdim: Sequence[float] | float | None = None,
        max_voxels: int | None = DEFAULT_MAX_VOXELS,
        check_finite: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        self.keys = (keys,) if isinstance(keys, str) else tuple(keys)
        if not self.keys:
            raise ValueError("keys must name at least one image key.")
        if pixdim is not None:
            values = np.broadcast_to(np.atleast_1d(np.asarray(pixdim, dtype=np.float64)), (3,))
            if np.any(~np.isfinite(values)) or np.any(values <= 0):
                raise ValueError(f"pixdim must be positive numbers, got {pixdim!r}.")
            pixdim = tuple(float(v) for v in values)
        if max_voxels is not None and (isinstance(max_voxels, bool) or int(max_voxels) < 1):
            raise ValueError(f"max_voxels must be a positive integer or None, got {max_voxels!r}.")
        self.pixdim = pixdim
        self.max_voxels = None if max_voxels is None else int(max_voxels)
        self.check_finite = bool(check_finite)
        self.allow_missing_keys = bool(allow_missing_keys)

    def __call__(self, data: Mapping[Any, Any]) -> dict[Any, Any]:
        d = dict(data)
        for key in self.keys:
            if key not in d:
                if self.allow_missing_keys:
                    continue
                raise KeyError(f"key {key!r} not in the data (keys: {sorted(map(str, d))})")
            self._check(d[key])
        return d

    def _check(self, image: Any) -> None:
        name = _source_name(image)
        spatial = tuple(int(s) for s in np.shape(image)[-3:])
        if self.max_voxels is not None:
            native = _native_spacing(image)
            target = np.asarray(self.pixdim if self.pixdim is not None else native)
            needed = [int(np.ceil(n * s / t - 1e-6)) for n, s, t in zip(spatial, native, target)]  # noqa: B905
            total = int(np.prod(needed, dtype=np.float64))
            if total > self.max_voxels:
                target_mm = [round(float(t), 4) for t in target]
                raise InputError(
                    f"{name}: spacing {np.round(native, 4).tolist()} mm and size {list(spatial)} would need a "
                    f"{needed} grid ({total:,} voxels) at {target_mm} mm, over the limit of {self.max_voxels:,} "
                    "voxels (max_voxels); check the file's spacing in its header"
                )
        if self.check_finite:
            values = image if isinstance(image, torch.Tensor) else torch.as_tensor(np.asarray(image))
            if values.is_floating_point():
                bad = int((~torch.isfinite(values)).sum())
                if bad:
                    raise InputError(
                        f"{name}: {bad} non-finite voxel(s) (NaN or Inf); they would make the whole segmentation "
                        "background. Replace them (e.g. with 0) before segmenting"
                    )


def default_inference_transforms(
    pixdim: Sequence[float] | None,
    image_key: str = "image",
    pred_key: str = "pred",
    axcodes: str = "RAS",
    normalize: bool = True,
    nonzero: bool = False,
    max_voxels: int | None = DEFAULT_MAX_VOXELS,
) -> tuple[Compose, Compose]:
    """The standard pre- and postprocessing around a segmentation network.

    Preprocessing of ``{image_key: path}``: set aside stray ``f"{image_key}_*"`` strings
    (:class:`SetAsideStrayKeysd`), load with nibabel, channel first, reorient to ``axcodes``,
    resample to ``pixdim`` (bilinear; skipped when ``pixdim`` is None) and z-score the intensities
    (``NormalizeIntensityd``; skipped when ``normalize`` is False); before resampling, :class:`CheckImaged` refuses
    non-finite voxels and grids over ``max_voxels``. Postprocessing of
    ``data[pred_key]`` (logits ``(C, H, W, D)``): softmax, ``Invertd`` back to the input grid
    (linear interpolation of the probabilities) and argmax to a ``(1, H, W, D)`` label map.

    Args:
        pixdim: the training voxel size in mm, e.g. ``(0.625, 0.625, 0.625)``; None keeps the native grid.
        image_key: key of the image path / tensor.
        pred_key: key of the network output.
        axcodes: orientation used in training.
        normalize: z-score the image; False when the training pipeline scaled intensities otherwise
            (then build the preprocessing yourself) or not at all.
        nonzero: z-score over non-zero voxels only (must match the training pipeline).
        max_voxels: refuse an image whose resampled grid would exceed this many voxels (:class:`CheckImaged`, which
            also refuses non-finite voxels); None: no limit.

    Returns:
        ``(preprocessing, postprocessing)`` as MONAI ``Compose``.

    Raises:
        ValueError: for a ``pixdim`` that is not positive numbers.
    """
    if pixdim is not None:
        values = np.atleast_1d(np.asarray(pixdim, dtype=np.float64))
        if values.ndim != 1 or values.size not in (1, 3) or np.any(values <= 0) or not np.all(np.isfinite(values)):
            raise ValueError(f"pixdim must be one or three positive numbers, got {pixdim!r}.")
        pixdim = tuple(float(v) for v in np.broadcast_to(values, (3,)))
    steps: list[Callable] = [
        SetAsideStrayKeysd(image_key),
        LoadImaged(keys=image_key, reader="NibabelReader", image_only=True),
        EnsureChannelFirstd(keys=image_key),
        Orientationd(keys=image_key, axcodes=axcodes, labels=None),  # None: axis labels from the MetaTensor space
    ]
    steps.append(CheckImaged(keys=image_key, pixdim=pixdim, max_voxels=max_voxels))
    if pixdim is not None:
        steps.append(Spacingd(keys=image_key, pixdim=pixdim, mode="bilinear"))
    if normalize:
        steps.append(NormalizeIntensityd(keys=image_key, nonzero=nonzero, channel_wise=True))
    preprocessing = Compose(steps)
    postprocessing = Compose(
        [
            Activationsd(keys=pred_key, softmax=True),
            Invertd(keys=pred_key, transform=preprocessing, orig_keys=image_key, nearest_interp=False, to_tensor=True),
            AsDiscreted(keys=pred_key, argmax=True),
        ]
    )
    return preprocessing, postprocessing
