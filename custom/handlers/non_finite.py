"""Stop a training run whose loss turns NaN or Inf, naming the iteration and the likely cause.

A diverged run otherwise goes on to its last epoch and writes a bundle whose weights are NaN (or a network that
outputs background everywhere), with exit status 0. :class:`StopOnNonFiniteLoss` checks the loss after every
iteration and raises :class:`TrainingDiverged` (a user error: one line, no traceback); the exception ends the run
before ``Events.COMPLETED``, so no bundle is written, and the last epoch checkpoint stays for inspection.

Example (``configs/base/common.json``'s ``train_handlers_base``)::

    {"_target_": "custom.handlers.non_finite.StopOnNonFiniteLoss", "output_dir": "@output_dir"}
"""

from __future__ import annotations

import math
from typing import Any

import torch
from ignite.engine import Engine, Events

__all__ = ["StopOnNonFiniteLoss", "TrainingDiverged", "loss_value"]

# learning rates above this are named as the likely cause (the configs use 0.01 and 0.03)
_HIGH_LEARNING_RATE = 0.1


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or Inf. The message names the run's folder, the iteration and a likely cause."""

    user_error = True  # custom.errors: one line, no traceback


def loss_value(output: Any) -> float | None:
    """The loss of one iteration's ``engine.state.output`` (a dict with ``"loss"``, or a list of such dicts, as
    MONAI's trainers give it) as a float; None when it holds no loss."""
    if isinstance(output, (list, tuple)) and output:
        output = output[0]
    loss = output.get("loss") if isinstance(output, dict) else output
    if isinstance(loss, torch.Tensor):
        return float(loss.detach().float().mean()) if loss.numel() else None
    if isinstance(loss, (int, float)):
        return float(loss)
    return None


def _learning_rate(engine: Engine) -> float | None:
    optimizer = getattr(engine, "optimizer", None)
    groups = getattr(optimizer, "param_groups", None)
    return float(groups[0]["lr"]) if groups else None


def _non_finite_parameters(engine: Engine) -> int:
    network = getattr(engine, "network", None)
    if not isinstance(network, torch.nn.Module):
        return 0
    return sum(int(not torch.isfinite(p).all()) for p in network.parameters() if p.is_floating_point())


class StopOnNonFiniteLoss:
    """Ignite handler: raise :class:`TrainingDiverged` at the first iteration whose loss is NaN or Inf.

    Args:
        output_dir: the run's folder, named in the message.
    """

    def __init__(self, output_dir: str = ""):
        self.output_dir = str(output_dir)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        loss = loss_value(engine.state.output)
        if loss is None or math.isfinite(loss):
            return
        lr = _learning_rate(engine)
        if lr is not None and lr > _HIGH_LEARNING_RATE:
            cause = f"the learning rate {lr:g} is too high (--learning_rate; the configs use 0.01)"
        else:
            cause = (
                "non-finite or extreme values in an input image or label, or non-finite starting weights "
                "(--init_from)"
            )
        bad = _non_finite_parameters(engine)
        weights = f"; {bad} parameter tensor(s) of the network are no longer finite" if bad else ""
        where = f"{self.output_dir}: " if self.output_dir else ""
        raise TrainingDiverged(
            f"{where}training stopped at iteration {engine.state.iteration} (epoch {engine.state.epoch}): the loss "
            f"is {loss}{weights}; likely cause: {cause}. No bundle was written"
        )
