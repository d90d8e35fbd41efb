"""Shared step mechanics for the noisy-label trainers (all are MONAI ``SupervisedTrainer`` subclasses).

A method trainer implements :meth:`NoisyLabelTrainer.compute_loss` only: given the batch (already on the device)
it runs its forward passes, puts ``Keys.PRED`` into ``engine.state.output``, fires ``FORWARD_COMPLETED``, and
returns the loss. This class does the rest exactly as MONAI's ``SupervisedTrainer._iteration`` does: zero grad,
autocast + grad scaling when ``amp`` is on, ``LOSS_COMPLETED``, backward, ``BACKWARD_COMPLETED``, optimiser
step, ``MODEL_COMPLETED``; then :meth:`after_step` (EMA updates and the like).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.data import MetaTensor
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys

__all__ = ["NoisyLabelTrainer", "batch_to_device"]


def batch_to_device(batchdata: Mapping[str, Any], device: torch.device, keys: Sequence[str], non_blocking: bool = False):
    """Move the tensors under ``keys`` (those present) to ``device`` as plain tensors; other entries are untouched.

    Training steps slice and concatenate HQ/LQ parts of a batch; MetaTensor metadata is not needed there and its
    per-sample bookkeeping breaks such slicing, so it is dropped here.
    """
    out = dict(batchdata)
    for key in keys:
        value = out.get(key)
        if isinstance(value, MetaTensor):
            value = value.as_tensor()
        if isinstance(value, torch.Tensor):
            out[key] = value.to(device, non_blocking=non_blocking)
    return out


class NoisyLabelTrainer(SupervisedTrainer):
    """Base of the method trainers; see the module docstring. Constructor arguments are ``SupervisedTrainer``'s.

    Args:
        device_keys: batch keys moved to the device before :meth:`compute_loss` (missing ones are ignored).
    """

    device_keys: Sequence[str] = ("image", "label", "clean_label", "superpixel", "is_hq")

    def compute_loss(self, engine: NoisyLabelTrainer, batch: dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError

    def after_step(self, engine: NoisyLabelTrainer) -> None:
        """Hook run after the optimiser step (no gradient tracking needed by default)."""

    def extra_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters outside ``network`` that the trainer's optimiser also updates (e.g. a peer network)."""
        return []

    def _iteration(self, engine: NoisyLabelTrainer, batchdata: dict[str, Any]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = batch_to_device(batchdata, engine.state.device, self.device_keys, engine.non_blocking)
        engine.state.output = {Keys.IMAGE: batch["image"], Keys.LABEL: batch["label"]}
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        use_amp = engine.amp and engine.scaler is not None
        if use_amp:
            with torch.autocast("cuda", **engine.amp_kwargs):
                loss = self.compute_loss(engine, batch)
        else:
            loss = self.compute_loss(engine, batch)
        engine.state.output[Keys.LOSS] = loss
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        if use_amp:
            engine.scaler.scale(loss).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            loss.backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        self.after_step(engine)
        return engine.state.output
