"""Simulated noisy labels of the HQ training cases, made where the LQ noise was made (native resolution).

Used to estimate noise rates from the clean cases: the co-teaching keep ratio R
(:func:`custom.engines.coteaching.estimate_training_keep_ratio`) and JCAS's class transition T_C
(:func:`custom.engines.jcas.estimate_training_transition`). Both take the same draws, so they describe the same noise.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from custom.transforms.resampling import downsample_label

__all__ = ["hq_noise_draws"]


def _load_label(path: str) -> np.ndarray:
    from custom.io import load_nifti

    return np.rint(load_nifti(path)[0]).astype(np.int64)


def hq_noise_draws(
    items: Sequence[Mapping[str, Any]],
    datalist_meta: Mapping[str, Any],
    num_classes: int,
    draws_per_case: int,
    estimate_of: str = "the noise rate",
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(clean, simulated noisy)`` label pairs ``(H, W, D)`` int64 of ``items``, ``draws_per_case`` per item.

    The datalist's simulator (``meta["noise"]``: name and params; ``meta["seed"]``) is applied to each item's clean
    label upsampled ``meta["downsample"]`` = K times per axis (nearest) at the native spacing (stored spacing / K),
    and the result pooled back with the preparation's majority vote
    (:func:`custom.transforms.resampling.downsample_label`): ``scripts/prepare_la.py`` / ``prepare_nifti.py``
    simulate at native resolution and downsample afterwards, so a voxel-sized simulator parameter (MTCL's radii)
    means here what it meant when the LQ labels were made. Draw ``k`` of a case uses the case id
    ``"<case_id>#hq_estimate<k>"``.

    Args:
        items: datalist items with absolute paths (``label_clean`` or ``label``, ``case_id``).
        datalist_meta: ``custom.data.read_datalist_meta(...)``.
        num_classes: ``C``.
        draws_per_case: noise draws per item.
        estimate_of: what the caller estimates, for the error message.

    Raises:
        ValueError: no noise simulator recorded in the datalist, or a downsample factor below 1.
    """
    from custom.noise import simulate_noise

    noise = datalist_meta.get("noise") or {}
    name = noise.get("name") if isinstance(noise, Mapping) else None
    if not name:
        raise ValueError(
            f"the datalist records no noise simulator ('noise': {{'name': ...}}) to estimate {estimate_of}."
        )
    factor = int(datalist_meta.get("downsample", 1) or 1)
    if factor < 1:
        raise ValueError(f"the datalist's downsample factor must be >= 1, got {factor}.")
    params = dict(noise.get("params") or {})
    seed = int(datalist_meta.get("seed", 0))
    spacing = datalist_meta.get("spacing")
    native_spacing = None if spacing is None else [float(v) / factor for v in spacing]
    for item in items:
        clean = _load_label(item.get("label_clean", item["label"]))
        native = clean
        if factor > 1:  # where the preparation simulated: K times finer (the stored label is its majority vote)
            native = np.repeat(np.repeat(np.repeat(clean, factor, 0), factor, 1), factor, 2)
        for draw in range(int(draws_per_case)):
            noisy = simulate_noise(
                name, native, seed=seed, case_id=f"{item.get('case_id')}#hq_estimate{draw}",
                num_classes=int(num_classes), spacing=native_spacing, **params,
            ).noisy.astype(np.int64)
            if factor > 1:
                noisy = downsample_label(noisy, factor, int(num_classes))
            yield clean, noisy
