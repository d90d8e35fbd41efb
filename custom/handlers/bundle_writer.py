"""Ignite handler that writes the run's MONAI bundle when training completes (:func:`custom.bundle.write_bundle`),
with what the engines tell about the run: the validator's best and last key metric, the trainer's schedule,
optimiser, batch sizes and AMP, and the launch command."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

from custom.bundle import write_bundle

__all__ = ["BundleWriter", "launch_command", "training_summary", "validation_summary"]


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


def training_summary(engine: Engine) -> dict[str, Any]:
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


def launch_command() -> str | None:
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
            training=training_summary(engine),
            command=launch_command(),
        )
        engine.logger.info(f"bundle written to {Path(self.kwargs['output_dir']).resolve()}")
