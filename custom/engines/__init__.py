"""Training engines: MONAI ``SupervisedTrainer`` subclasses, one per training procedure."""

from custom.engines.base import NoisyLabelTrainer, batch_to_device
from custom.engines.jcas import JcasTrainer
from custom.engines.mean_teacher import MeanTeacherTrainer

__all__ = ["NoisyLabelTrainer", "MeanTeacherTrainer", "JcasTrainer", "batch_to_device"]
