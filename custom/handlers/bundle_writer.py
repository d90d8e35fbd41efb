"""Write a self-contained MONAI bundle from a training run (the model-zoo layout).

``output_dir/``: ``configs/metadata.json`` (schema-valid, with ``channel_def`` label names), ``configs/inference.json``
(folder batch inference; MONAI's inference properties ``bundle_root``, ``device``, ``dataset_dir``, ``dataset``,
``evaluator``, ``network_def``, ``inferer``, ``preprocessing``, ``postprocessing``, ``handlers``, which are also the
ids MONAI Label reads), ``configs/logging.conf``, ``docs/README.md`` (the model-zoo sections, with the run's measured
validation figures), ``LICENSE``, ``models/model.pt`` (a plain ``state_dict`` of exactly ``network_def``; extra
training-time networks such as a teacher or a peer in ``models/extra/<name>.pt``, out of the ``models/*.pt`` that
MONAI Label offers as model files) and ``scripts/`` (the network code and the folder-inference code, copied so that
the bundle runs without this repository on the Python path).

``bundle_root`` is not written as a path: the config finds its bundle (see :data:`BUNDLE_ROOT_EXPRESSION`), so a
copied or moved bundle loads its own ``models/model.pt``.
"""

from __future__ import annotations

import datetime
import logging
import shutil
import sys
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from custom.inference.folder_inference import DEFAULT_MAX_VOXELS
from custom.io import DataError, atomic_output, write_json

__all__ = [
    "BUNDLE_ROOT_EXPRESSION",
    "BundleWriter",
    "EXTRA_MODELS_DIR",
    "best_metric_state",
    "latest_checkpoint",
    "plain_state_dict",
    "validation_summary",
    "write_bundle",
]

logger = logging.getLogger(__name__)

_PACKAGE_ROOT = Path(__file__).resolve().parents[1]
# training-time networks besides models/model.pt: a subfolder, because MONAI Label offers every models/*.pt as a
# selectable model file (and e.g. JCAS's transition matrices are no network at all)
EXTRA_MODELS_DIR = "models/extra"
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
_LOGGING_CONF = """[loggers]
keys=root

[handlers]
keys=consoleHandler

[formatters]
keys=fullFormatter

[logger_root]
level=INFO
handlers=consoleHandler

[handler_consoleHandler]
class=StreamHandler
level=INFO
formatter=fullFormatter
args=(sys.stdout,)

[formatter_fullFormatter]
format=%(asctime)s - %(name)s - %(levelname)s - %(message)s
"""
# bundle-name prefix -> (method page in the noisyseg docs, publications)
_REFERENCES: dict[str, tuple[str, tuple[str, ...]]] = {
    "alc": ("docs/methods/alc.md", ()),
    "mtcl": (
        "docs/methods/mtcl.md",
        (
            "Xu et al., Anti-interference from noisy labels: Mean-Teacher-assisted Confident Learning for medical "
            "image segmentation, IEEE TMI 2022",
        ),
    ),
    "spguided": ("docs/methods/spguided.md", ()),
    "coteaching": ("docs/methods/spguided.md", ("Han et al., Co-teaching, NeurIPS 2018",)),
    "jocor": ("docs/methods/spguided.md", ("Wei et al., JoCoR, CVPR 2020",)),
    "trinet": ("docs/methods/spguided.md", ("Zhang et al., tri-network, MICCAI 2020",)),
    "jcas": ("docs/methods/jcas.md", ("Guo & Yuan, joint class-affinity segmentation, MICCAI 2022",)),
    "supervised": ("docs/methods/supervised.md", ()),
}
_COMMON_REFERENCES = (
    "Milletari et al., V-Net, 3DV 2016 (the V-Net backbone family)",
    "Cardoso et al., MONAI: An open-source framework for deep learning in healthcare, arXiv:2211.02701, 2022",
)
# network class -> (module files under custom/ shipped in the bundle's scripts/, dotted target inside the bundle).
# Shipped modules import each other relatively (``from .vnet import PaperVNet``) so they work in both places.
_SHIPPED_NETWORKS: dict[str, tuple[tuple[str, ...], str]] = {
    "PaperVNet": (("networks/vnet.py",), "scripts.vnet.PaperVNet"),
    "NnUNetDynUNet": (("networks/dynunet.py",), "scripts.dynunet.NnUNetDynUNet"),
    "JcasVNet": (
        ("networks/vnet.py", "networks/dar.py", "networks/deep_supervision.py"),
        "scripts.deep_supervision.JcasVNet",
    ),
}
_SCHEMA_URL = (
    "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
)
_SHIPPED_ALWAYS = {"inference/folder_inference.py": "folder_inference.py", "errors.py": "errors.py"}
_NETWORK_DESCRIPTIONS = {
    "PaperVNet": "the papers' V-Net (UA-MT/MTCL/ALC): 3x3x3 convolutions, BatchNorm, additive skips, two Dropout3d"
    " layers (bottleneck and before the output convolution); about 9.4 M parameters at base_filters=16. Not"
    " MONAI's VNet (5x5x5 kernels, about 46 M parameters).",
    "JcasVNet": "the papers' V-Net with JCAS's two deep-supervision levels (classifier and feature heads) and"
    " differentiated affinity reasoning on a coarse token grid; in eval mode it outputs softmax(P2) + softmax(Q2)"
    " and needs no transition matrices.",
    "NnUNetDynUNet": "MONAI's DynUNet configured nnU-Net style (kernels and strides from the patch size and spacing).",
}


def _checkpoint_problem(path: Path) -> str | None:
    """Why ``path`` is no readable ``torch.save`` zip archive (truncated, corrupt), or None when it is one."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()  # reads every member and checks its CRC
    except (OSError, zipfile.BadZipFile, EOFError, RuntimeError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None if bad is None else f"member {bad} is corrupt"


def latest_checkpoint(checkpoint_dir: str | Path) -> str | None:
    """Path of the newest readable training checkpoint (``checkpoint*.pt``) in ``checkpoint_dir``, or ``None``.

    A newer checkpoint that is cut short or corrupt (not a complete zip archive, e.g. a copy interrupted or a full
    disk) is skipped with a warning that names it, and the previous valid one is used.

    Raises:
        DataError: naming the folder and each file, when checkpoints exist but none of them is readable.
    """
    folder = Path(checkpoint_dir)
    if not folder.is_dir():
        return None
    candidates = sorted(
        (p for p in folder.glob("checkpoint*.pt") if p.is_file()), key=lambda p: p.stat().st_mtime_ns, reverse=True
    )
    if not candidates:
        return None
    problems = []
    for path in candidates:
        problem = _checkpoint_problem(path)
        if problem is None:
            if problems:
                logger.warning(f"resuming from {path}: the newer {'; '.join(problems)}")
            return str(path)
        problems.append(f"{path} is unreadable ({problem})")
    raise DataError(folder, f"no readable checkpoint to resume from: {'; '.join(problems)}")


class _NoState:
    """Stands in for a missing best-metric tracker in ``checkpoint_objects``: nothing to save or restore."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        return None


def best_metric_state(handlers: Sequence[Any]) -> Any:
    """The best-metric tracker of the validation handlers (the ``_key_metric_checkpoint`` of MONAI's key-metric
    ``CheckpointSaver``: which ``model_best_val.pt`` is kept, with its score), for the training checkpoints, so that a
    resumed run does not replace the best model with a worse one; an object with an empty state when there is none.
    """
    for handler in handlers:
        tracker = getattr(handler, "_key_metric_checkpoint", None)
        if tracker is not None and hasattr(tracker, "state_dict"):
            return tracker
    return _NoState()


def plain_state_dict(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    """CPU ``state_dict`` of ``network`` without DDP/compile wrappers (``module.``/``_orig_mod.`` prefixes)."""
    while hasattr(network, "module") and isinstance(network.module, torch.nn.Module):
        network = network.module
    network = getattr(network, "_orig_mod", network)
    return {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}


def _save_torch(obj: Any, path: Path) -> None:
    with atomic_output(path) as tmp:
        torch.save(obj, tmp)


def _inference_config(
    network_class: str,
    network_kwargs: Mapping[str, Any],
    spacing: Sequence[float],
    patch_size: Sequence[int],
) -> dict[str, Any]:
    if network_class in _SHIPPED_NETWORKS:
        target = _SHIPPED_NETWORKS[network_class][1]
        network_def: dict[str, Any] = {"_target_": target, "_requires_": "@bundle_scripts", **network_kwargs}
    else:
        network_def = {"_target_": network_class, **network_kwargs}
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
        "network_def": network_def,
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
        "run_evaluator": ["@install_excepthook", "@check_inputs", "$@evaluator.run()"],
        "load_weights": "$@network.load_state_dict(torch.load(@ckpt_path, map_location=@device, weights_only=True))",
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


def _metadata(
    bundle_name: str,
    method: str,
    network_class: str,
    network_kwargs: Mapping[str, Any],
    class_names: Sequence[str],
    patch_size: Sequence[int],
    spacing: Sequence[float],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    import monai
    import numpy

    num_classes = int(network_kwargs.get("out_channels", len(class_names)))
    channel_def = {str(i): str(name) for i, name in enumerate(class_names)}
    now = datetime.date.today().isoformat()
    meta = {
        "schema": _SCHEMA_URL,
        "version": "0.1.0",
        "changelog": {"0.1.0": f"trained with noisyseg ({bundle_name}) on {now}"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": numpy.__version__,
        "required_packages_version": {"nibabel": _version("nibabel"), "tqdm": _version("tqdm")},
        "name": bundle_name,
        "task": f"3D segmentation trained from noisy labels: {method or bundle_name}",
        "description": f"{method}. Network: {_NETWORK_DESCRIPTIONS.get(network_class, network_class)}",
        "authors": "noisyseg contributors",
        "copyright": "Copyright (c) noisyseg contributors",
        "data_type": "nibabel",
        "image_classes": "single channel intensity image, z-score normalised by the preprocessing",
        "label_classes": ", ".join(f"{i}: {n}" for i, n in channel_def.items()),
        "pred_classes": ", ".join(f"{i}: {n}" for i, n in channel_def.items()),
        "intended_use": "research only, not for clinical use",
        "references": list(_references(bundle_name)),
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "modality": "MR",
                    "num_channels": 1,
                    "spatial_shape": [int(p) for p in patch_size],
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": True,
                    "channel_def": {"0": "image"},
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": num_classes,
                    "spatial_shape": [int(p) for p in patch_size],
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": True,
                    "channel_def": channel_def,
                }
            },
        },
        "noisyseg": {"network_class": network_class, "spacing": [float(s) for s in spacing], **(extra or {})},
    }
    return meta


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def _references(bundle_name: str) -> tuple[str, ...]:
    """The method page and publications for a bundle name such as ``alc_la``, then MONAI and V-Net."""
    for prefix, (page, papers) in _REFERENCES.items():
        if bundle_name.startswith(prefix):
            return (f"noisyseg {page}", *papers, *_COMMON_REFERENCES)
    return ("noisyseg docs/methods", *_COMMON_REFERENCES)


def validation_summary(validator: Any) -> dict[str, Any] | None:
    """The measured validation figures of a MONAI evaluator after training, or ``None`` when it never ran.

    Returns:
        ``{"metric", "best", "best_epoch", "last", "last_epoch", "num_cases"}``: the key metric's name (e.g.
        ``val_mean_dice``), its best value and the training epoch it was reached at (MONAI's
        ``state.best_metric`` / ``best_metric_epoch``), the value and epoch of the last validation, and the number
        of validation cases (``None`` when the loader does not tell).
    """
    state = getattr(validator, "state", None)
    name = getattr(state, "key_metric_name", None)
    if state is None or not name or int(getattr(state, "best_metric_epoch", -1)) < 0:
        return None
    last = (getattr(state, "metrics", None) or {}).get(name)
    dataset = getattr(getattr(validator, "data_loader", None), "dataset", None)
    try:
        num_cases = len(dataset) if dataset is not None else None
    except TypeError:
        num_cases = None
    return {
        "metric": str(name),
        "best": float(state.best_metric),
        "best_epoch": int(state.best_metric_epoch),
        "last": None if last is None else float(last),
        "last_epoch": int(state.epoch),
        "num_cases": num_cases,
    }


def _training_summary(engine: Engine) -> dict[str, Any]:
    """What the trainer itself tells about the run: engine class, schedule, optimiser, batch sizes, AMP."""
    state = engine.state
    summary: dict[str, Any] = {
        "trainer": type(engine).__name__,
        "trained_epochs": int(state.epoch),
        "trained_iterations": int(state.iteration),
        "max_epochs": None if state.max_epochs is None else int(state.max_epochs),
        "epoch_length": None if state.epoch_length is None else int(state.epoch_length),
    }
    optimizer = getattr(engine, "optimizer", None)
    if isinstance(optimizer, torch.optim.Optimizer) and optimizer.param_groups:
        group = optimizer.param_groups[0]
        summary["optimizer"] = type(optimizer).__name__
        summary["learning_rate"] = float(group.get("initial_lr", group.get("lr", float("nan"))))
        for key in ("momentum", "weight_decay"):
            if isinstance(group.get(key), (int, float)):
                summary[key] = float(group[key])
    loader = getattr(engine, "data_loader", None)
    batch_sizes = {
        name: int(sub.batch_size)
        for name, sub in (("batch_size", loader), ("batch_hq", getattr(loader, "hq_loader", None)),
                          ("batch_lq", getattr(loader, "lq_loader", None)))
        if isinstance(getattr(sub, "batch_size", None), int)
    }
    summary.update(batch_sizes)
    if isinstance(getattr(engine, "amp", None), bool):
        summary["amp"] = engine.amp
    return summary


def _launch_command() -> str | None:
    """The ``python -m monai.bundle ...`` command line of this process, when it was started that way."""
    argv = list(sys.argv)
    if not argv or not argv[0].replace("\\", "/").endswith("monai/bundle/__main__.py"):
        return None
    import shlex

    def quote(arg: str) -> str:  # "['a.json','b.json']" reads better than shlex's '['"'"'a.json'"'"...
        if shlex.quote(arg) != arg and not any(c in arg for c in '"$`\\!'):
            return f'"{arg}"'
        return shlex.quote(arg)

    return " ".join(["python", "-m", "monai.bundle", *(quote(a) for a in argv[1:])])


def _fmt(value: Any, spec: str = ".4g") -> str:
    return format(value, spec) if isinstance(value, float) else str(value)


def _readme(
    bundle_name: str,
    method: str,
    network_class: str,
    network_kwargs: Mapping[str, Any],
    class_names: Sequence[str],
    spacing: Sequence[float],
    patch_size: Sequence[int],
    datalist: str | None,
    validation: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    command: str | None = None,
) -> str:
    kwargs_text = ", ".join(f"{k}={v!r}" for k, v in network_kwargs.items())
    classes = ", ".join(f"{i} = {n}" for i, n in enumerate(class_names))
    if validation:
        cases = f" on {validation['num_cases']} validation cases" if validation.get("num_cases") is not None else ""
        performance = (
            f"Measured by this training run{cases} (`{validation['metric']}`: mean Dice over the foreground classes, "
            "background excluded, on the validation split of the training datalist, sliding-window inference as "
            "below):\n\n"
            "| figure | value | epoch |\n|---|---|---|\n"
            f"| best {validation['metric']} | {_fmt(validation['best'], '.4f')} | {validation['best_epoch']} |\n"
            f"| last {validation['metric']} | {_fmt(validation['last'], '.4f')} | {validation['last_epoch']} |\n\n"
            "`models/model.pt` holds the weights at the end of training (the last row), not necessarily those of "
            "the best epoch. The same figures are in `configs/metadata.json` under `noisyseg.validation`."
        )
    else:
        performance = (
            "No validation ran during this training (empty validation split or no validation handler), so there is "
            "no measured figure. Evaluate the bundle on labelled data with the evaluate command below."
        )
    rows = [("network", f"`{network_class}({kwargs_text})`"), ("patch size", str(list(patch_size))),
            ("voxel spacing (mm)", str(list(spacing)))]
    rows += [(k.replace("_", " "), _fmt(v)) for k, v in (training or {}).items() if v is not None]
    training_table = "| setting | value |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)
    train_command = command or (
        f"python -m monai.bundle run training --config_file configs/{bundle_name}.json "
        "--dataset_dir <dataset folder> --output_dir <bundle folder>"
    )
    references = "\n".join(f"- {r}" for r in _references(bundle_name))
    return f"""# {bundle_name}

## Model Overview
{method}

Trained with noisyseg (3D segmentation from noisy labels). This folder is a self-contained MONAI bundle: the network
code it needs is in `scripts/`, so inference needs only `torch`, `monai`, `nibabel` and `tqdm`.

Network: {_NETWORK_DESCRIPTIONS.get(network_class, network_class)}

## Data
Trained from `{datalist}`. Classes: {classes}.
Input: one-channel 3D image (NIfTI); the preprocessing reorients to RAS, resamples to {list(spacing)} mm and z-scores
the intensities. Sliding-window inference with ROI {list(patch_size)}; the label is returned on the input's voxel
grid (shape and affine). Research use only; the training data's licence applies to these weights.

## Training configuration
{training_table}
## Performance
{performance}

## MONAI Bundle Commands
Inference over a folder of NIfTI files (writes `<case>_seg.nii.gz` and `inference_report.csv`; a bad case is
reported and skipped). The config finds its bundle from the config file's path, so a copied or moved bundle uses
its own `models/model.pt`:

    python -m monai.bundle run inference --config_file <this folder>/configs/inference.json \\
        --dataset_dir <input folder> --output_dir <output folder>

The same segmentations through MONAI's engines (`dataset` -> `evaluator`, stops at the first bad case):

    python -m monai.bundle run run_evaluator --config_file <this folder>/configs/inference.json \\
        --dataset_dir <input folder> --output_dir <output folder>

Training (from the noisyseg repository; this bundle has no `train.json`):

    {train_command}

Evaluation on the labelled test split of a datalist (from the noisyseg repository, with the training's config files;
per-case Dice, Jaccard, HD95 and ASD into `<bundle folder>/eval/`):

    python -m monai.bundle run evaluating --config_file configs/{bundle_name}.json \\
        --dataset_dir <dataset folder> --output_dir <this folder>

TorchScript export and checks (these tools read the config without MONAI's workflow, so they need `--bundle_root`):

    python -m monai.bundle ckpt_export network_def --filepath <this folder>/models/model.ts \\
        --meta_file <this folder>/configs/metadata.json --config_file <this folder>/configs/inference.json \\
        --ckpt_file <this folder>/models/model.pt --bundle_root <this folder>
    python -m monai.bundle verify_net_in_out network_def --meta_file <this folder>/configs/metadata.json \\
        --config_file <this folder>/configs/inference.json --bundle_root <this folder> --device cpu

MONAI Label: copy this folder into the `model/` folder of a `monaibundle` app (see noisyseg's docs/deploy.md). It
offers `models/model.pt` only; training-time networks (e.g. the EMA teacher, a peer, JCAS's transition matrices) are
kept in `{EXTRA_MODELS_DIR}/` for reference.

## References
{references}

## License
The code in `scripts/` and this bundle are released under the Apache License 2.0 (`LICENSE`). The weights were
trained on the data named above; that data's licence and terms of use also apply to them.
"""


def _license_text() -> str:
    """The project's Apache-2.0 LICENSE: the repository's file, else the installed distribution's copy."""
    candidate = _PACKAGE_ROOT.parent / "LICENSE"
    if candidate.is_file():
        return candidate.read_text()
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution("noisyseg")
        for rel in ("licenses/LICENSE", "LICENSE"):
            text = dist.read_text(rel)
            if text:
                return text
    except PackageNotFoundError:
        pass
    logger.warning("the project's LICENSE file was not found; the bundle gets a short Apache-2.0 notice")
    return (
        "Licensed under the Apache License, Version 2.0 (the \"License\"); you may not use these files except in\n"
        "compliance with the License. You may obtain a copy of the License at\n\n"
        "    http://www.apache.org/licenses/LICENSE-2.0\n"
    )


def write_bundle(
    output_dir: str | Path,
    network: torch.nn.Module,
    network_class: str,
    network_kwargs: Mapping[str, Any],
    class_names: Sequence[str],
    spacing: Sequence[float],
    patch_size: Sequence[int],
    bundle_name: str = "noisyseg",
    method: str = "",
    extra_networks: Mapping[str, torch.nn.Module] | None = None,
    datalist: str | None = None,
    extra_metadata: Mapping[str, Any] | None = None,
    validation: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    command: str | None = None,
) -> Path:
    """Write (or refresh) the bundle under ``output_dir``; see the module docstring. Returns ``output_dir``.

    Args:
        output_dir: the bundle folder.
        network: the network whose ``state_dict`` becomes ``models/model.pt``.
        network_class: its class name (a network shipped in ``scripts/`` or an importable ``_target_``).
        network_kwargs: its constructor arguments (``network_def``).
        class_names: label names by class index (``channel_def``).
        spacing: the training voxel size in mm.
        patch_size: the training patch (the sliding-window ROI).
        bundle_name: the bundle's name, e.g. ``alc_la``.
        method: one-line description of the training method.
        extra_networks: other training-time modules, written to ``models/extra/<name>.pt``.
        datalist: the training datalist's path (documentation only).
        extra_metadata: more entries for ``metadata.json``'s ``noisyseg`` section.
        validation: the measured validation figures (:func:`validation_summary`) for the README's Performance
            section and ``noisyseg.validation``.
        training: the training settings for the README's Training configuration section.
        command: the training command line, when known.

    Raises:
        ValueError: when ``class_names`` is empty.
    """
    if not class_names:
        raise ValueError("class_names must name at least one class.")
    root = Path(output_dir).resolve()
    kwargs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in dict(network_kwargs).items()}
    _save_torch(plain_state_dict(network), root / "models" / "model.pt")
    for name, extra in (extra_networks or {}).items():
        if isinstance(extra, torch.nn.Module):
            _save_torch(plain_state_dict(extra), root / EXTRA_MODELS_DIR / f"{name}.pt")
            stale = root / "models" / f"{name}.pt"  # the layout before models/extra/: MONAI Label would offer it
            if stale.is_file():
                stale.unlink()
    scripts = root / "scripts"
    scripts.mkdir(parents=True, exist_ok=True)
    with atomic_output(scripts / "__init__.py") as tmp:
        tmp.write_text('"""Code shipped with this bundle (copied from noisyseg)."""\n')
    shipped = dict(_SHIPPED_ALWAYS)
    for src in _SHIPPED_NETWORKS.get(network_class, ((), ""))[0]:
        shipped[src] = Path(src).name
    for src, dst in shipped.items():
        with atomic_output(scripts / dst) as tmp:
            shutil.copyfile(_PACKAGE_ROOT / src, tmp)
    write_json(_inference_config(network_class, kwargs, spacing, patch_size), root / "configs" / "inference.json")
    extra = dict(extra_metadata or {})
    if validation:
        extra["validation"] = dict(validation)
    write_json(
        _metadata(bundle_name, method, network_class, kwargs, class_names, patch_size, spacing, extra),
        root / "configs" / "metadata.json",
    )
    with atomic_output(root / "configs" / "logging.conf") as tmp:
        tmp.write_text(_LOGGING_CONF)
    with atomic_output(root / "LICENSE") as tmp:
        tmp.write_text(_license_text())
    readme = _readme(
        bundle_name, method, network_class, kwargs, class_names, spacing, patch_size, datalist, validation, training,
        command,
    )
    with atomic_output(root / "docs" / "README.md") as tmp:
        tmp.write_text(readme)
    return root


class BundleWriter:
    """Ignite handler: write the bundle (see :func:`write_bundle`) when training completes.

    Only rank 0 writes under DDP. Arguments are those of :func:`write_bundle`, plus ``validator``: the training's
    validation evaluator, whose best and last key metric (e.g. ``val_mean_dice``) go into the bundle's README
    (Performance) and metadata; ``None`` or an evaluator that never ran leaves them out. The training settings
    (schedule, optimiser, batch sizes) are read from the trainer itself.
    """

    def __init__(
        self,
        output_dir: str,
        network: torch.nn.Module,
        network_class: str,
        network_kwargs: Mapping[str, Any],
        class_names: Sequence[str],
        spacing: Sequence[float],
        patch_size: Sequence[int],
        bundle_name: str = "noisyseg",
        method: str = "",
        extra_networks: Mapping[str, Any] | None = None,
        datalist: str | None = None,
        validator: Any = None,
    ):
        self.validator = validator
        self.kwargs = dict(
            output_dir=output_dir,
            network=network,
            network_class=network_class,
            network_kwargs=network_kwargs,
            class_names=class_names,
            spacing=spacing,
            patch_size=patch_size,
            bundle_name=bundle_name,
            method=method,
            extra_networks=extra_networks,
            datalist=datalist,
        )

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank() > 0:
            return
        extra = {"trained_iterations": int(engine.state.iteration), "trained_epochs": int(engine.state.epoch)}
        validation = validation_summary(self.validator) if self.validator is not None else None
        write_bundle(
            **self.kwargs,
            extra_metadata=extra,
            validation=validation,
            training=_training_summary(engine),
            command=_launch_command(),
        )
        engine.logger.info(f"bundle written to {Path(self.kwargs['output_dir']).resolve()}")
