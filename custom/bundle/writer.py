"""Write a self-contained MONAI bundle from trained networks (the model-zoo layout).

``output_dir/``: ``configs/metadata.json`` (:mod:`custom.bundle.metadata`), ``configs/inference.json``
(:mod:`custom.bundle.inference_config`), ``configs/train.json`` (fine-tuning from the bundle folder and MONAI
Label's ``/train``: :mod:`custom.bundle.training_config`), ``configs/logging.conf``, ``docs/README.md`` and ``LICENSE``
(:mod:`custom.bundle.readme`), ``models/model.pt`` (a plain ``state_dict`` of exactly ``network_def``; extra
training-time networks such as a teacher or a peer in ``models/extra/<name>.pt``, out of the ``models/*.pt`` that
MONAI Label offers as model files) and ``scripts/`` (the network code and the folder-inference code, copied so that
the bundle runs without this repository on the Python path: :mod:`custom.bundle.layout`).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from custom.bundle.inference_config import inference_config
from custom.bundle.layout import EXTRA_MODELS_DIR, PACKAGE_ROOT, shipped_files
from custom.bundle.metadata import bundle_metadata
from custom.bundle.readme import bundle_readme, license_text
from custom.bundle.training_config import training_config
from custom.io import atomic_output, write_json

__all__ = ["LOGGING_CONF", "plain_state_dict", "write_bundle"]

LOGGING_CONF = """[loggers]
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


def plain_state_dict(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    """CPU ``state_dict`` of ``network`` without DDP/compile wrappers (``module.``/``_orig_mod.`` prefixes)."""
    while hasattr(network, "module") and isinstance(network.module, torch.nn.Module):
        network = network.module
    network = getattr(network, "_orig_mod", network)
    return {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}


def _save_torch(obj: Any, path: Path) -> None:
    with atomic_output(path) as tmp:
        torch.save(obj, tmp)


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
    for src, dst in shipped_files(network_class).items():
        with atomic_output(scripts / dst) as tmp:
            shutil.copyfile(PACKAGE_ROOT / src, tmp)
    write_json(inference_config(network_class, kwargs, spacing, patch_size), root / "configs" / "inference.json")
    write_json(training_config(network_class, kwargs, spacing, patch_size), root / "configs" / "train.json")
    extra = dict(extra_metadata or {})
    if validation:
        extra["validation"] = dict(validation)
    write_json(
        bundle_metadata(bundle_name, method, network_class, kwargs, class_names, patch_size, spacing, extra),
        root / "configs" / "metadata.json",
    )
    with atomic_output(root / "configs" / "logging.conf") as tmp:
        tmp.write_text(LOGGING_CONF)
    with atomic_output(root / "LICENSE") as tmp:
        tmp.write_text(license_text())
    readme = bundle_readme(
        bundle_name, method, network_class, kwargs, class_names, spacing, patch_size, datalist, validation, training,
        command,
    )
    with atomic_output(root / "docs" / "README.md") as tmp:
        tmp.write_text(readme)
    return root
