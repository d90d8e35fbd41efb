"""The bundle's ``configs/metadata.json`` (MONAI's metadata schema, ``channel_def`` label names) and references."""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ["NETWORK_DESCRIPTIONS", "SCHEMA_URL", "bundle_metadata", "references"]

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
SCHEMA_URL = (
    "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
)
NETWORK_DESCRIPTIONS = {
    "PaperVNet": "the papers' V-Net (UA-MT/MTCL/ALC): 3x3x3 convolutions, BatchNorm, additive skips, two Dropout3d"
    " layers (bottleneck and before the output convolution); about 9.4 M parameters at base_filters=16. Not"
    " MONAI's VNet (5x5x5 kernels, about 46 M parameters).",
    "JcasVNet": "the papers' V-Net with JCAS's two deep-supervision levels (classifier and feature heads) and"
    " differentiated affinity reasoning on a coarse token grid; in eval mode it outputs softmax(P2) + softmax(Q2)"
    " and needs no transition matrices.",
    "NnUNetDynUNet": "MONAI's DynUNet configured nnU-Net style (kernels and strides from the patch size and spacing).",
}


def bundle_metadata(
    bundle_name: str,
    method: str,
    network_class: str,
    network_kwargs: Mapping[str, Any],
    class_names: Sequence[str],
    patch_size: Sequence[int],
    spacing: Sequence[float],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The bundle's ``configs/metadata.json`` (valid under MONAI's metadata schema :data:`SCHEMA_URL`); ``extra``
    becomes the ``noisyseg`` section beside ``network_class`` and ``spacing``."""
    import monai
    import numpy

    num_classes = int(network_kwargs.get("out_channels", len(class_names)))
    channel_def = {str(i): str(name) for i, name in enumerate(class_names)}
    now = datetime.date.today().isoformat()
    meta = {
        "schema": SCHEMA_URL,
        "version": "0.1.0",
        "changelog": {"0.1.0": f"trained with noisyseg ({bundle_name}) on {now}"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": numpy.__version__,
        "required_packages_version": {"nibabel": _version("nibabel"), "tqdm": _version("tqdm")},
        "name": bundle_name,
        "task": f"3D segmentation trained from noisy labels: {method or bundle_name}",
        "description": f"{method}. Network: {NETWORK_DESCRIPTIONS.get(network_class, network_class)}",
        "authors": "noisyseg contributors",
        "copyright": "Copyright (c) noisyseg contributors",
        "data_type": "nibabel",
        "image_classes": "single channel intensity image, z-score normalised by the preprocessing",
        "label_classes": ", ".join(f"{i}: {n}" for i, n in channel_def.items()),
        "pred_classes": ", ".join(f"{i}: {n}" for i, n in channel_def.items()),
        "intended_use": "research only, not for clinical use",
        "references": list(references(bundle_name)),
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


def references(bundle_name: str) -> tuple[str, ...]:
    """The method page and publications for a bundle name such as ``alc_la``, then MONAI and V-Net."""
    for prefix, (page, papers) in _REFERENCES.items():
        if bundle_name.startswith(prefix):
            return (f"noisyseg {page}", *papers, *_COMMON_REFERENCES)
    return ("noisyseg docs/methods", *_COMMON_REFERENCES)
