"""MONAI dictionary transforms that corrupt label maps on the fly with :func:`custom.noise.simulate_noise`.

* :class:`NoisyLabeld` is deterministic: the noise depends only on ``(seed, data[case_id_key])``, so it
  reproduces exactly what ``scripts/make_noisy_labels.py`` writes for the same seed, case id and spacing.
* :class:`RandNoisyLabeld` draws a fresh seed from its own random state at each call (a new noisy label per
  epoch); ``set_random_state`` makes the sequence reproducible.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import convert_to_dst_type

from custom.noise.registry import NOISE_NAMES, needs_spacing, noise_parameters, simulate_noise

__all__ = ["noisy_channel_first", "NoisyLabeld", "RandNoisyLabeld"]


def _spacing_of(image: Any, spacing: Sequence[float] | str | None) -> Sequence[float] | None:
    if isinstance(spacing, str):
        if spacing != "meta":
            raise ValueError(f"spacing must be a sequence of 3 numbers, None or 'meta', got {spacing!r}.")
        if not isinstance(image, MetaTensor):
            raise ValueError("spacing='meta' needs a MetaTensor label (its affine gives the spacing).")
        return [float(v) for v in image.pixdim[:3]]
    return spacing


def noisy_channel_first(
    image: np.ndarray | torch.Tensor,
    noise: str,
    *,
    seed: int,
    case_id: str,
    num_classes: int | None = None,
    spacing: Sequence[float] | str | None = None,
    **params: Any,
) -> tuple[np.ndarray | torch.Tensor, dict]:
    """Apply ``simulate_noise`` to a channel-first label ``(1, H, W, D)`` and return it in the input's type.

    Args:
        image: label map with one leading channel, numpy array, torch tensor or MetaTensor (meta kept).
        noise: a name in :data:`custom.noise.NOISE_NAMES`.
        seed, case_id, num_classes, params: as in :func:`custom.noise.simulate_noise`.
        spacing: voxel size in mm, ``None`` (unit voxels; mtcl in mm then raises) or ``"meta"`` (from the MetaTensor).

    Returns:
        ``(noisy, params)``: the noisy label with the type, device, dtype and meta of ``image``.

    Raises:
        ValueError: shape is not ``(1, H, W, D)`` or the noise arguments are invalid.
    """
    if tuple(image.shape[:1]) != (1,) or len(image.shape) != 4:
        raise ValueError(f"expected a channel-first label of shape (1, H, W, D), got {tuple(image.shape)}.")
    voxel_size = _spacing_of(image, spacing)
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    result = simulate_noise(
        noise, array[0], seed=seed, case_id=case_id, num_classes=num_classes, spacing=voxel_size, **params
    )
    noisy, *_ = convert_to_dst_type(result.noisy[None], dst=image)
    return noisy, result.params


def _check_arguments(noise: str, params: Mapping[str, Any], spacing: Any) -> None:
    if noise not in NOISE_NAMES:
        raise ValueError(f"unknown noise {noise!r}; choose one of {', '.join(NOISE_NAMES)}.")
    unknown = sorted(set(params) - set(noise_parameters(noise)))
    if unknown:
        raise ValueError(f"noise {noise!r} does not take parameter(s) {unknown}.")
    if spacing is None and needs_spacing(noise, params):
        raise ValueError(
            f"noise {noise!r} has sizes in mm: give spacing (3 numbers in mm, or 'meta' to read it from the "
            "MetaTensor), or sizes in voxels (mtcl: r_min / r_max)."
        )


def _params_key(key: Hashable, postfix: str | None) -> str | None:
    if postfix is None:
        return None
    name = f"{key}_{postfix}"
    if name.startswith("image_"):  # MONAI's Spacingd would take it for metadata of "image"
        raise ValueError(f"params key {name!r} must not start with 'image_'.")
    return name


class NoisyLabeld(MapTransform):
    """Deterministic label noise: the same ``(seed, case id)`` always gives the same noisy label.

    Args:
        keys: label keys to corrupt; each value is ``(1, H, W, D)`` (numpy, tensor or MetaTensor).
        noise: a name in :data:`custom.noise.NOISE_NAMES`.
        seed: experiment seed.
        case_id_key: key of the case identifier in the data dict.
        num_classes: C, required by ``symmetric`` noise.
        spacing: voxel size in mm, ``None`` or ``"meta"`` (from the MetaTensor; matches the CLI, which uses the
            header). Required by simulators with sizes in mm (``mtcl`` unless ``r_min`` / ``r_max`` are given).
        params_postfix: when set, the drawn parameters are stored under ``f"{key}_{params_postfix}"``.
        allow_missing_keys: skip keys absent from the data.
        params: simulator parameters (e.g. ``beta=0.7``).

    Raises:
        ValueError: unknown noise or parameter, or mm sizes without a spacing (at construction), missing case id
            (at call).
    """

    def __init__(
        self,
        keys: KeysCollection = "label",
        noise: str = "mtcl",
        seed: int = 0,
        case_id_key: str = "case_id",
        num_classes: int | None = None,
        spacing: Sequence[float] | str | None = None,
        params_postfix: str | None = None,
        allow_missing_keys: bool = False,
        **params: Any,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        _check_arguments(noise, params, spacing)
        for key in self.keys:
            _params_key(key, params_postfix)
        self.noise = noise
        self.seed = int(seed)
        self.case_id_key = case_id_key
        self.num_classes = num_classes
        self.spacing = spacing
        self.params_postfix = params_postfix
        self.params = dict(params)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.case_id_key not in d:
            raise ValueError(f"NoisyLabeld needs the case id under key {self.case_id_key!r}; keys are {list(d)}.")
        case_id = str(d[self.case_id_key])
        for key in self.key_iterator(d):
            d[key], params = noisy_channel_first(
                d[key],
                self.noise,
                seed=self.seed,
                case_id=case_id,
                num_classes=self.num_classes,
                spacing=self.spacing,
                **self.params,
            )
            params_key = _params_key(key, self.params_postfix)
            if params_key is not None:
                d[params_key] = params
        return d


class RandNoisyLabeld(RandomizableTransform, MapTransform):
    """Random label noise: with probability ``prob`` the labels get noise drawn with a fresh seed.

    The seed comes from the transform's own random state (``set_random_state`` fixes the sequence); all keys
    of one call share it.

    Args:
        keys: label keys to corrupt; each value is ``(1, H, W, D)``.
        noise: a name in :data:`custom.noise.NOISE_NAMES`.
        prob: probability of corrupting a sample.
        num_classes, spacing, params_postfix, allow_missing_keys, params: as in :class:`NoisyLabeld`.
    """

    def __init__(
        self,
        keys: KeysCollection = "label",
        noise: str = "mtcl",
        prob: float = 1.0,
        num_classes: int | None = None,
        spacing: Sequence[float] | str | None = None,
        params_postfix: str | None = None,
        allow_missing_keys: bool = False,
        **params: Any,
    ) -> None:
        if not 0.0 <= float(prob) <= 1.0:
            raise ValueError(f"prob must be in [0, 1], got {prob!r}.")
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        _check_arguments(noise, params, spacing)
        for key in self.keys:
            _params_key(key, params_postfix)
        self.noise = noise
        self.num_classes = num_classes
        self.spacing = spacing
        self.params_postfix = params_postfix
        self.params = dict(params)
        self._seed = 0

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        # always draw the seed, so the random stream does not depend on whether this call applied noise
        self._seed = int(self.R.randint(0, 2**31 - 1))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            for key in self.key_iterator(d):
                params_key = _params_key(key, self.params_postfix)
                if params_key is not None:  # keep the dict layout constant so batches still collate
                    d[params_key] = {"noise": "none", "seed": self._seed}
            return d
        for key in self.key_iterator(d):
            d[key], params = noisy_channel_first(
                d[key],
                self.noise,
                seed=self._seed,
                case_id="random",
                num_classes=self.num_classes,
                spacing=self.spacing,
                **self.params,
            )
            params_key = _params_key(key, self.params_postfix)
            if params_key is not None:
                d[params_key] = {**params, "seed": self._seed}
        return d
