"""Write a self-contained MONAI bundle from a training run (the model-zoo layout).

``output_dir/``: ``configs/metadata.json`` (schema-valid, with ``channel_def`` label names), ``configs/inference.json``
(folder batch inference; the ids MONAI Label reads: ``network_def``, ``preprocessing``, ``inferer``,
``postprocessing``), ``docs/README.md``, ``models/model.pt`` (a plain ``state_dict`` of exactly ``network_def``;
extra networks such as a teacher or a peer in ``models/<name>.pt``) and ``scripts/`` (the network code and the
folder-inference code, copied so that the bundle runs without this repository on the Python path).
"""

from __future__ import annotations

import datetime
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from custom.io import atomic_output, write_json

__all__ = ["BundleWriter", "write_bundle", "latest_checkpoint", "plain_state_dict"]

_PACKAGE_ROOT = Path(__file__).resolve().parents[1]
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
_SHIPPED_ALWAYS = {"inference/folder_inference.py": "folder_inference.py"}
_NETWORK_DESCRIPTIONS = {
    "PaperVNet": "the papers' V-Net (UA-MT/MTCL/ALC): 3x3x3 convolutions, BatchNorm, additive skips, two Dropout3d"
    " layers (bottleneck and before the output convolution); about 9.4 M parameters at base_filters=16. Not"
    " MONAI's VNet (5x5x5 kernels, about 46 M parameters).",
    "JcasVNet": "the papers' V-Net with JCAS's two deep-supervision levels (classifier and feature heads) and"
    " differentiated affinity reasoning on a coarse token grid; in eval mode it outputs softmax(P2) + softmax(Q2)"
    " and needs no transition matrices.",
    "NnUNetDynUNet": "MONAI's DynUNet configured nnU-Net style (kernels and strides from the patch size and spacing).",
}


def latest_checkpoint(checkpoint_dir: str | Path) -> str | None:
    """Path of the newest ``*.pt`` training checkpoint (``checkpoint*.pt``) in ``checkpoint_dir``, or ``None``."""
    folder = Path(checkpoint_dir)
    if not folder.is_dir():
        return None
    candidates = [p for p in folder.glob("checkpoint*.pt") if p.is_file()]
    if not candidates:
        return None
    return str(max(candidates, key=lambda p: p.stat().st_mtime_ns))


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
    bundle_root: str,
) -> dict[str, Any]:
    if network_class in _SHIPPED_NETWORKS:
        target = _SHIPPED_NETWORKS[network_class][1]
        network_def: dict[str, Any] = {"_target_": target, "_requires_": "@bundle_scripts", **network_kwargs}
    else:
        network_def = {"_target_": network_class, **network_kwargs}
    spacing = [float(s) for s in spacing]
    return {
        "imports": ["$import os", "$import sys", "$import glob", "$import torch", "$import monai"],
        "bundle_root": bundle_root,
        # make the bundle's own scripts/ importable wherever the bundle was copied to
        "bundle_scripts": "$sys.path.insert(0, @bundle_root) if @bundle_root not in sys.path else None",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "ckpt_path": "$@bundle_root + '/models/model.pt'",
        "dataset_dir": "$@bundle_root + '/input'",
        "output_dir": "$@bundle_root + '/predictions'",
        "pixdim": spacing,
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
        },
        "run": ["@infer_folder"],
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
        "references": ["noisyseg docs/methods"],
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


def _readme(
    bundle_name: str,
    method: str,
    network_class: str,
    network_kwargs: Mapping[str, Any],
    class_names: Sequence[str],
    spacing: Sequence[float],
    patch_size: Sequence[int],
    datalist: str | None,
) -> str:
    return f"""# {bundle_name}

{method}

Trained with noisyseg. This folder is a self-contained MONAI bundle: the network code it needs is in `scripts/`.

## Network
`{network_class}({', '.join(f'{k}={v!r}' for k, v in network_kwargs.items())})`:
{_NETWORK_DESCRIPTIONS.get(network_class, '')}

## Data
Trained from `{datalist}`. Classes: {', '.join(f'{i} = {n}' for i, n in enumerate(class_names))}.
Input: one-channel 3D image; the preprocessing reorients to RAS, resamples to {list(spacing)} mm and z-scores the
intensities. Sliding-window inference with ROI {list(patch_size)}; the label is returned in the input's geometry.
Research use only; the training data's licence applies to these weights.

## Use
Batch inference over a folder of NIfTI files (writes `<case>_seg.nii.gz` and `inference_report.csv`):

    python -m monai.bundle run inference --config_file <this folder>/configs/inference.json \\
        --bundle_root <this folder> --dataset_dir <input folder> --output_dir <output folder>

MONAI Label: copy this folder into the `model/` folder of a `monaibundle` app (see the project's docs/deploy.md).

Files: `models/model.pt` is the `state_dict` of `network_def`; other `models/*.pt` are training-time networks
(e.g. the EMA teacher) kept for reference.
"""


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
) -> Path:
    """Write (or refresh) the bundle under ``output_dir``; see the module docstring. Returns ``output_dir``."""
    root = Path(output_dir).resolve()
    kwargs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in dict(network_kwargs).items()}
    _save_torch(plain_state_dict(network), root / "models" / "model.pt")
    for name, extra in (extra_networks or {}).items():
        if isinstance(extra, torch.nn.Module):
            _save_torch(plain_state_dict(extra), root / "models" / f"{name}.pt")
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
    write_json(
        _inference_config(network_class, kwargs, spacing, patch_size, str(root)), root / "configs" / "inference.json"
    )
    write_json(
        _metadata(bundle_name, method, network_class, kwargs, class_names, patch_size, spacing, extra_metadata),
        root / "configs" / "metadata.json",
    )
    with atomic_output(root / "docs" / "README.md") as tmp:
        tmp.write_text(_readme(bundle_name, method, network_class, kwargs, class_names, spacing, patch_size, datalist))
    return root


class BundleWriter:
    """Ignite handler: write the bundle (see :func:`write_bundle`) when training completes.

    Only rank 0 writes under DDP. Arguments are those of :func:`write_bundle`.
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
    ):
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
        write_bundle(**self.kwargs, extra_metadata=extra)
        engine.logger.info(f"bundle written to {Path(self.kwargs['output_dir']).resolve()}")
