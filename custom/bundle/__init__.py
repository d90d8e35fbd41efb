"""The exported MONAI bundle: its layout, configs, metadata and README, and :func:`write_bundle`."""

from custom.bundle.inference_config import BUNDLE_ROOT_EXPRESSION, inference_config
from custom.bundle.layout import EXTRA_MODELS_DIR
from custom.bundle.training_config import training_config
from custom.bundle.writer import plain_state_dict, write_bundle

__all__ = ["BUNDLE_ROOT_EXPRESSION", "EXTRA_MODELS_DIR", "inference_config", "plain_state_dict", "training_config",
           "write_bundle"]
