"""The bundle's ``configs/train.json``: plain supervised fine-tuning of the bundle's network from its folder.

Two entry points, one config:

- ``python -m monai.bundle run training --config_file <bundle>/configs/train.json --datalist <datalist.json>``
  starts from ``models/model.pt`` (``--pretrained False``: from random weights), trains on the datalist's
  ``training`` cases (``image`` and ``label``, paths relative to the datalist's folder), validates on its
  ``validation`` cases when it has any, and replaces ``models/model.pt`` at the end;
- MONAI Label's bundle app (``BundleTrainTask``, the ``/train`` request) runs ``run`` with its own overrides:
  ``bundle_root``, ``device``, ``train#trainer#max_epochs``, ``train#dataset#data`` (the datastore's labelled
  images), ``validate#dataset#data`` (its validation split) and ``train#handlers`` (to which it adds the loader of
  ``models/model.pt`` when the request asks for the pretrained weights).

The loss is Dice + cross-entropy on the network's served output (JCAS: its fine level's rectified logits); no
noisy-label method runs here: the labels a fine-tuning sees are the ones an annotator reviewed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from custom.bundle.inference_config import BUNDLE_ROOT_EXPRESSION
from custom.bundle.layout import network_def

__all__ = ["FINE_TUNING_LEARNING_RATE", "training_config"]

# a tenth of the methods' SGD learning rate: fine-tuning starts from trained weights
FINE_TUNING_LEARNING_RATE = 0.001
_NO_DATA_ERROR = (
    "no training cases: pass --datalist <datalist.json> (its 'training' cases with image and label), or set "
    "train#dataset#data"
)
# the networks whose training-mode output is not the logits: how the loss gets them
_TRAINING_LOGITS = {"JcasVNet": "$lambda inputs, network: network(inputs).fine.rectified_logits"}


def _cases(split: str) -> str:
    """A config expression: the ``split`` cases of ``@datalist`` as ``{"image", "label"}`` (other keys dropped:
    MONAI 1.6.1's ``Spacingd`` would treat ``label_clean`` as metadata of ``label``), ``[]`` without a datalist or
    without that split."""
    return (
        f"$[{{'image': d['image'], 'label': d['label']}} for d in monai.data.load_decathlon_datalist("
        f"@datalist, True, '{split}')] if @datalist and monai.bundle.ConfigParser.load_config_file(@datalist)"
        f".get('{split}') else []"
    )


def training_config(
    network_class: str,
    network_kwargs: Mapping[str, Any],
    spacing: Sequence[float],
    patch_size: Sequence[int],
    max_epochs: int = 20,
    learning_rate: float = FINE_TUNING_LEARNING_RATE,
) -> dict[str, Any]:
    """The bundle's ``configs/train.json`` as a dict (see the module docstring).

    Args:
        network_class: the network's class name (a network shipped in ``scripts/`` or an importable ``_target_``).
        network_kwargs: its constructor arguments.
        spacing: the training voxel size in mm (``Spacingd``; images of any geometry are resampled to it).
        patch_size: the training patch (random crops half on the foreground; the validation's sliding window).
        max_epochs: the default number of epochs (MONAI Label's request sets its own).
        learning_rate: SGD's learning rate.

    Raises:
        ValueError: for ``max_epochs < 1`` or a learning rate that is not positive.
    """
    if max_epochs < 1:
        raise ValueError(f"max_epochs must be at least 1, got {max_epochs}.")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be positive, got {learning_rate}.")
    keys = ["image", "label"]
    num_classes = int(network_kwargs.get("out_channels", 2))
    load = [
        {"_target_": "LoadImaged", "keys": keys, "image_only": True},
        {"_target_": "EnsureChannelFirstd", "keys": keys},
        {"_target_": "Orientationd", "keys": keys, "axcodes": "RAS"},
        {"_target_": "Spacingd", "keys": keys, "pixdim": "@pixdim", "mode": ["bilinear", "nearest"]},
        {"_target_": "NormalizeIntensityd", "keys": "image"},
    ]
    train_transforms = load + [
        {"_target_": "SpatialPadd", "keys": keys, "spatial_size": "@patch_size"},
        {"_target_": "RandCropByPosNegLabeld", "keys": keys, "label_key": "label", "spatial_size": "@patch_size",
         "pos": 1, "neg": 1, "num_samples": 1},
        {"_target_": "EnsureTyped", "keys": keys},
    ]
    return {
        "imports": ["$import os", "$import sys", "$import glob", "$import traceback", "$import torch",
                    "$import monai"],
        "bundle_root": BUNDLE_ROOT_EXPRESSION,
        "bundle_scripts": "$sys.path.insert(0, @bundle_root) if sys.path[:1] != [@bundle_root] else None",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "ckpt_path": "$@bundle_root + '/models/model.pt'",
        "datalist": "",
        "pretrained": True,
        "max_epochs": int(max_epochs),
        "learning_rate": float(learning_rate),
        "batch_size": 2,
        "pixdim": [float(s) for s in spacing],
        "patch_size": [int(p) for p in patch_size],
        "network_def": network_def(network_class, network_kwargs),
        "network": "$@network_def.to(@device)",
        "loss": {"_target_": "DiceCELoss", "to_onehot_y": True, "softmax": True},
        "optimizer": {"_target_": "torch.optim.SGD", "params": "$@network.parameters()", "lr": "@learning_rate",
                      "momentum": 0.9, "weight_decay": 0.0001},
        "train": {
            "preprocessing": {"_target_": "Compose", "transforms": train_transforms},
            "dataset": {"_target_": "Dataset", "data": _cases("training"), "transform": "@train#preprocessing"},
            "dataloader": {"_target_": "DataLoader", "dataset": "@train#dataset", "batch_size": "@batch_size",
                           "shuffle": True, "num_workers": 0},
            "inferer": _TRAINING_LOGITS.get(network_class, {"_target_": "SimpleInferer"}),
            # MONAI Label replaces this list (adding its loader of models/model.pt); the savers are kept apart
            "handlers": [
                {"_target_": "StatsHandler", "tag_name": "train_loss",
                 "output_transform": "$monai.handlers.from_engine(['loss'], first=True)"},
            ],
            "final_saver": {"_target_": "CheckpointSaver", "save_dir": "$@bundle_root + '/models'",
                            "save_dict": {"model": "@network"}, "save_final": True, "final_filename": "model.pt"},
            "validation": {"_target_": "ValidationHandler", "validator": "@validate#evaluator", "interval": 1,
                           "epoch_level": True},
            "trainer": {
                "_target_": "SupervisedTrainer",
                "max_epochs": "@max_epochs",
                "device": "@device",
                "train_data_loader": "@train#dataloader",
                "network": "@network",
                "loss_function": "@loss",
                "optimizer": "@optimizer",
                "inferer": "@train#inferer",
                "train_handlers": "$@train#handlers + ([@train#validation] if @validate#dataset#data else [])"
                " + [@train#final_saver]",
            },
        },
        "validate": {
            "preprocessing": {"_target_": "Compose",
                              "transforms": load + [{"_target_": "EnsureTyped", "keys": keys}]},
            "dataset": {"_target_": "Dataset", "data": _cases("validation"), "transform": "@validate#preprocessing"},
            "dataloader": {"_target_": "DataLoader", "dataset": "@validate#dataset", "batch_size": 1,
                           "shuffle": False, "num_workers": 0},
            "inferer": {"_target_": "SlidingWindowInferer", "roi_size": "@patch_size", "sw_batch_size": 2,
                        "overlap": 0.25},
            # argmax of the logits (or of JCAS's summed probabilities in eval mode): no softmax needed
            "postprocessing": {
                "_target_": "Compose",
                "transforms": [
                    {"_target_": "AsDiscreted", "keys": ["pred", "label"], "argmax": [True, False],
                     "to_onehot": [num_classes, num_classes]},
                ],
            },
            "key_metric": {"val_mean_dice": {"_target_": "MeanDice", "include_background": False,
                                             "output_transform": "$monai.handlers.from_engine(['pred', 'label'])"}},
            "handlers": [{"_target_": "StatsHandler", "iteration_log": False}],
            "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device",
                          "val_data_loader": "@validate#dataloader", "network": "@network",
                          "inferer": "@validate#inferer", "postprocessing": "@validate#postprocessing",
                          "key_val_metric": "@validate#key_metric", "val_handlers": "@validate#handlers"},
        },
        # stops with one line when there is nothing to train on
        "check_data": "$None if @train#dataset#data else (_ for _ in ()).throw(ValueError("
                      + repr(_NO_DATA_ERROR) + "))",
        "load_pretrained": "$@network.load_state_dict(torch.load(@ckpt_path, map_location=@device, weights_only=True))"
                           " if @pretrained else None",
        "install_excepthook": {"_target_": "scripts.errors.install_excepthook", "_requires_": "@bundle_scripts"},
        # the command line: fine-tune models/model.pt (or random weights with --pretrained False)
        "training": ["@install_excepthook", "@check_data", "@load_pretrained", "$@train#trainer.run()"],
        # MONAI Label's BundleTrainTask: it loads models/model.pt itself when its request asks for it
        "run": ["@install_excepthook", "@check_data", "$@train#trainer.run()"],
    }
