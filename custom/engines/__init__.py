"""Training engines: MONAI ``SupervisedTrainer`` subclasses, one per training procedure."""

from custom.engines.base import NoisyLabelTrainer, batch_to_device
from custom.engines.coteaching import (
    CoTeachingTrainer,
    JoCoRTrainer,
    SPGuidedTrainer,
    SPGuidedVoxelTrainer,
    TriNetworkTrainer,
)
from custom.engines.jcas import JcasTrainer
from custom.engines.mean_teacher import MeanTeacherTrainer
from custom.engines.mtcl import MTCLTrainer

__all__ = ["NoisyLabelTrainer", "MeanTeacherTrainer", "MTCLTrainer", "JcasTrainer", "batch_to_device",
           "CoTeachingTrainer", "JoCoRTrainer", "SPGuidedTrainer", "SPGuidedVoxelTrainer", "TriNetworkTrainer"]
