"""The bundle's ``docs/README.md`` (the model-zoo sections, with the run's measured validation figures) and
``LICENSE``."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from custom.bundle.layout import EXTRA_MODELS_DIR, PACKAGE_ROOT
from custom.bundle.metadata import NETWORK_DESCRIPTIONS
from custom.bundle.metadata import references as bundle_references

__all__ = ["bundle_readme", "license_text"]

logger = logging.getLogger(__name__)


def _fmt(value: Any, spec: str = ".4g") -> str:
    return format(value, spec) if isinstance(value, float) else str(value)


def bundle_readme(
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
    """The bundle's ``docs/README.md`` (model-zoo sections). ``validation`` (``validation_summary`` of the training's
    evaluator) fills the Performance section; ``training`` the Training configuration table; ``command`` is the
    training command line when known."""
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
    references = "\n".join(f"- {r}" for r in bundle_references(bundle_name))
    return f"""# {bundle_name}

## Model Overview
{method}

Trained with noisyseg (3D segmentation from noisy labels). This folder is a self-contained MONAI bundle: the network
code it needs is in `scripts/`, so inference needs only `torch`, `monai`, `nibabel` and `tqdm`.

Network: {NETWORK_DESCRIPTIONS.get(network_class, network_class)}

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

Fine-tuning from this folder (`configs/train.json`: plain Dice + cross-entropy training, no noisy-label method, on
labels you trust, e.g. reviewed ones). It starts from `models/model.pt` (`--pretrained False`: random weights),
validates on the datalist's `validation` cases when it has any, and replaces `models/model.pt` at the end, so copy
the bundle first to keep the original. The datalist's `training` cases give `image` and `label`, paths relative to
the datalist's folder:

    cd <this folder>
    python -m monai.bundle run training --config_file configs/train.json --datalist <datalist.json> \\
        --max_epochs 20

MONAI Label's bundle app runs the same config for its `/train` request (on its datastore's labelled images).

The run that made this bundle (from the noisyseg repository, with its noisy-label method):

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


def license_text() -> str:
    """The project's Apache-2.0 LICENSE: the repository's file, else the installed distribution's copy."""
    candidate = PACKAGE_ROOT.parent / "LICENSE"
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
