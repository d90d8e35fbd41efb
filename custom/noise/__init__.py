"""Label-noise simulators (methods.md section 0): MTCL, SP-guided and JCAS-style noise on 3D label maps.

Entry point: :func:`simulate_noise` (deterministic per ``(seed, case_id)``); quality: :func:`foreground_dice`;
dataset-level choice of corrupted cases: :func:`select_corrupted_cases`; MONAI wrappers: :class:`NoisyLabeld`,
:class:`RandNoisyLabeld`. The functional cores live in ``morphology``, ``affine``, ``flips`` and ``ellipsoid``.
"""

from __future__ import annotations

from custom.noise.affine import affine_to_mismatch, rigid_resample, rotation_matrix
from custom.noise.cases import select_corrupted_cases
from custom.noise.ellipsoid import ellipsoid_relabel
from custom.noise.flips import class_conditional_flip, symmetric_flip
from custom.noise.morphology import cube_morphology, volume_targeted_morphology
from custom.noise.quality import confusion_counts, foreground_dice, mismatch_ratio, relative_volume_change
from custom.noise.registry import NOISE_NAMES, NoiseResult, noise_parameters, simulate_noise

__all__ = [
    "NOISE_NAMES",
    "NoiseResult",
    "simulate_noise",
    "noise_parameters",
    "foreground_dice",
    "mismatch_ratio",
    "relative_volume_change",
    "confusion_counts",
    "select_corrupted_cases",
    "cube_morphology",
    "volume_targeted_morphology",
    "affine_to_mismatch",
    "rigid_resample",
    "rotation_matrix",
    "symmetric_flip",
    "class_conditional_flip",
    "ellipsoid_relabel",
    "NoisyLabeld",
    "RandNoisyLabeld",
    "noisy_channel_first",
]

# the MONAI transforms import torch and monai (seconds); load them on first use so that the simulators and the
# CLI stay light
_LAZY_TRANSFORMS = ("NoisyLabeld", "RandNoisyLabeld", "noisy_channel_first")


def __getattr__(name: str):
    if name in _LAZY_TRANSFORMS:
        from custom.noise import transforms

        return getattr(transforms, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
