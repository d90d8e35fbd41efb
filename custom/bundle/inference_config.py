"""The bundle's ``configs/inference.json``: folder batch inference and MONAI's inference properties.

MONAI's inference properties ``bundle_root``, ``device``, ``dataset_dir``, ``dataset``, ``evaluator``,
``network_def``, ``inferer``, ``preprocessing``, ``postprocessing`` and ``handlers`` are the ids MONAI Label reads;
``inference`` (alias ``run``) is the folder inference with a per-case report. ``bundle_root`` is not written as a
path: the config finds its bundle (see :data:`BUNDLE_ROOT_EXPRESSION`), so a copied or moved bundle loads its own
``models/model.pt``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from custom.bundle.layout import network_def
from custom.inference.folder_inference import DEFAULT_MAX_VOXELS

__all__ = ["BUNDLE_ROOT_EXPRESSION", "inference_config"]

_BUNDLE_ROOT_ERROR = (
    "cannot tell which bundle this inference.json belongs to: it was not run through MONAI's ConfigWorkflow "
    "(python -m monai.bundle run) from its configs/ folder, and the current directory is no bundle. "
    "Pass --bundle_root <bundle folder>"
)
# The bundle folder, in this order: (1) --bundle_root / an override (replaces this expression); (2) the folder above
# configs/ of the config file that MONAI's ConfigWorkflow (``monai.bundle run``, or the Python API) was given, read
# from the workflow on the call stack; (3) model-zoo's "." convention: the current directory when it holds
# configs/inference.json and models/; otherwise a ValueError that asks for --bundle_root. Never a path written at
# training time, so a copied bundle cannot load the original folder's weights. No "@" and no word "import" in it:
# MONAI would read them as a reference and as an import statement.
BUNDLE_ROOT_EXPRESSION = (
    "$(lambda root: root if root else (_ for _ in ()).throw(ValueError(" + repr(_BUNDLE_ROOT_ERROR) + ")))("
    "next((os.path.dirname(os.path.abspath(str(w.config_root_path)))"
    " for w in (f.f_locals.get('self') for f, _ in traceback.walk_stack(None))"
    " if isinstance(w, monai.bundle.ConfigWorkflow)"
    " and os.path.basename(os.path.abspath(str(w.config_root_path))) == 'configs'), None)"
    " or (os.getcwd() if os.path.isfile(os.path.join('configs', 'inference.json')) and os.path.isdir('models')"
    " else None))"
)


def inference_config(
    network_class: str,
    network_kwargs: Mapping[str, Any],
    spacing: Sequence[float],
    patch_size: Sequence[int],
) -> dict[str, Any]:
    """The bundle's ``configs/inference.json`` as a dict (see the module docstring).

    Args:
        network_class: the network's class name (a network shipped in ``scripts/`` or an importable ``_target_``).
        network_kwargs: its constructor arguments.
        spacing: the training voxel size in mm (the preprocessing's ``Spacingd``).
        patch_size: the training patch (the sliding-window ROI).
    """
    spacing = [float(s) for s in spacing]
    return {
        "imports": [
            "$import os",
            "$import sys",
            "$import glob",
            "$import traceback",
            "$import torch",
            "$import monai",
        ],
        "bundle_root": BUNDLE_ROOT_EXPRESSION,
        # make the bundle's own scripts/ importable (first on the path) wherever the bundle was copied to
        "bundle_scripts": "$sys.path.insert(0, @bundle_root) if sys.path[:1] != [@bundle_root] else None",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "ckpt_path": "$@bundle_root + '/models/model.pt'",
        "dataset_dir": "$@bundle_root + '/input'",
        "output_dir": "$@bundle_root + '/predictions'",
        "pixdim": spacing,
        "max_voxels": DEFAULT_MAX_VOXELS,
        "patch_size": [int(p) for p in patch_size],
        "network_def": network_def(network_class, network_kwargs),
        "network": "$@network_def.to(@device)",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                # MONAI Label adds the string key "image_path", which MONAI 1.6.1's Spacingd would call .update() on
                {
                    "_target_": "scripts.folder_inference.SetAsideStrayKeysd",
                    "keys": "image",
                    "_requires_": "@bundle_scripts",
                },
                {"_target_": "LoadImaged", "keys": "image", "image_only": True},
                {"_target_": "EnsureChannelFirstd", "keys": "image"},
                {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
                # non-finite voxels and grids too large once resampled: an error naming the file
                {
                    "_target_": "scripts.folder_inference.CheckImaged",
                    "keys": "image",
                    "pixdim": "@pixdim",
                    "max_voxels": "@max_voxels",
                    "_requires_": "@bundle_scripts",
                },
                {"_target_": "Spacingd", "keys": "image", "pixdim": "@pixdim", "mode": "bilinear"},
                {"_target_": "NormalizeIntensityd", "keys": "image"},
                {"_target_": "EnsureTyped", "keys": "image"},
            ],
        },
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": "@patch_size", "sw_batch_size": 2, "overlap": 0.5},
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "softmax": True},
                {
                    "_target_": "Invertd",
                    "keys": "pred",
                    "transform": "@preprocessing",
                    "orig_keys": "image",
                    "nearest_interp": False,
                    "to_tensor": True,
                },
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
                # give back what SetAsideStrayKeysd hid: MONAI Label's writer takes the file type from "image_path"
                {"_target_": "Lambda", "func": "$lambda d: {**d, **d.get('set_aside', {})}"},
            ],
        },
        # MONAI's inference workflow: dataset -> evaluator (same preprocessing, inferer and postprocessing), the
        # handlers load models/model.pt and write <case>_seg.nii.gz exactly as infer_folder does
        "dataset": {
            "_target_": "Dataset",
            "data": {
                "_target_": "scripts.folder_inference.nifti_datalist",
                "input_dir": "@dataset_dir",
                "output_dir": "@output_dir",
                "_requires_": "@bundle_scripts",
            },
            "transform": "@preprocessing",
        },
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False,
                       "num_workers": 0},
        "handlers": [
            {
                "_target_": "CheckpointLoader",
                "load_path": "@ckpt_path",
                "load_dict": {"model": "@network"},
                "map_location": "@device",
            },
            {
                "_target_": "scripts.folder_inference.SegmentationWriter",
                "output_dir": "@output_dir",
                "_requires_": "@bundle_scripts",
            },
            {"_target_": "StatsHandler", "iteration_log": False, "output_transform": "$lambda x: None"},
        ],
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@dataloader",
            "network": "@network",
            "inferer": "@inferer",
            "postprocessing": "@postprocessing",
            "val_handlers": "@handlers",
            "amp": False,
        },
        # stops with the folder's name when it holds no NIfTI file (an empty dataset is allowed for check_properties)
        "check_inputs": {
            "_target_": "scripts.folder_inference.nifti_datalist",
            "input_dir": "@dataset_dir",
            "output_dir": "@output_dir",
            "missing_ok": False,
            "_requires_": "@bundle_scripts",
        },
        "run_evaluator": ["@install_excepthook", "@check_inputs", "@load_weights", "$@evaluator.run()"],
        # checks what models/model.pt holds before anything loads it (one line naming the file otherwise); the
        # evaluator's CheckpointLoader then loads the checked file (MONAI Label runs these handlers too)
        "load_weights": {
            "_target_": "scripts.folder_inference.load_bundle_weights",
            "network": "@network",
            "path": "@ckpt_path",
            "device": "@device",
            "_requires_": "@bundle_scripts",
        },
        # a component, not a "$__import__(...)" expression: MONAI 1.6.1 parses every expression that contains the
        # word "import" as an import statement before substituting references, and "@network" is no Python
        "infer_folder": {
            "_target_": "scripts.folder_inference.infer_folder",
            "_requires_": ["@bundle_scripts", "@load_weights"],
            "network": "@network",
            "input_dir_or_files": "@dataset_dir",
            "output_dir": "@output_dir",
            "preprocessing": "@preprocessing",
            "inferer": "@inferer",
            "postprocessing": "@postprocessing",
            "device": "@device",
            "raise_on_error": True,
        },
        # an uncaught error ends with one line naming the problem (MONAI's "Failed to instantiate" unwrapped)
        "install_excepthook": {"_target_": "scripts.errors.install_excepthook", "_requires_": "@bundle_scripts"},
        # the folder inference with a per-case report (a bad case is reported and skipped; any failure: exit 1)
        "run": ["@install_excepthook", "@infer_folder"],
        "inference": "@run",
    }
