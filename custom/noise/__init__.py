"""Label-noise simulators (methods.md section 0): MTCL, SP-guided and JCAS-style noise on 3D label maps.

Entry point: :func:`simulate_noise` (deterministic per ``(seed, case_id)``); with the lost-class policy
(``on_empty``): :func:`simulate_checked`; quality: :func:`foreground_dice`, :func:`class_dice`; dataset-level choice
of corrupted cases: :func:`select_corrupted_cases`; MONAI wrappers: :class:`NoisyLabeld`, :class:`RandNoisyLabeld`.
Sizes are in mm, converted per axis with the spacing (:mod:`custom.noise.units`). The functional cores live in
``morphology``, ``affine``, ``flips`` and ``ellipsoid``.
"""

from __future__ import annotations

from custom.noise.affine import affine_to_mismatch, rigid_resample, rotation_matrix
from custom.noise.cases import select_corrupted_cases
from custom.noise.classcheck import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_ON_EMPTY,
    ON_EMPTY_MODES,
    CheckedNoise,
    LostClassError,
    check_on_empty,
    lost_classes,
    simulate_checked,
)
from custom.noise.ellipsoid import ellipsoid_relabel
from custom.noise.flips import class_conditional_flip, symmetric_flip
from custom.noise.morphology import cube_morphology, volume_targeted_morphology
from custom.noise.quality import (
    class_dice,
    confusion_counts,
    foreground_dice,
    mismatch_ratio,
    relative_volume_change,
)
from custom.noise.registry import (
    DRAWLESS_NOISES,
    MTCL_SIZE_MM,
    MTCL_SIZE_VOXELS,
    NOISE_NAMES,
    NoiseResult,
    applied_sizes,
    needs_spacing,
    noise_parameters,
    simulate_noise,
)
from custom.noise.units import mm_to_voxels, round_half_up, voxels_to_mm

__all__ = [
    "NOISE_NAMES",
    "DRAWLESS_NOISES",
    "MTCL_SIZE_MM",
    "MTCL_SIZE_VOXELS",
    "NoiseResult",
    "simulate_noise",
    "noise_parameters",
    "needs_spacing",
    "applied_sizes",
    "ON_EMPTY_MODES",
    "DEFAULT_ON_EMPTY",
    "DEFAULT_MAX_ATTEMPTS",
    "CheckedNoise",
    "LostClassError",
    "check_on_empty",
    "lost_classes",
    "simulate_checked",
    "mm_to_voxels",
    "voxels_to_mm",
    "round_half_up",
    "foreground_dice",
    "class_dice",
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
