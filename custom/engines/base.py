"""Shared step mechanics for the noisy-label trainers (all are MONAI ``SupervisedTrainer`` subclasses).

A method trainer implements :meth:`NoisyLabelTrainer.compute_loss` only: given the batch (already on the device)
it runs its forward passes, puts ``Keys.PRED`` into ``engine.state.output``, fires ``FORWARD_COMPLETED``, and
returns the loss. This class does the rest exactly as MONAI's ``SupervisedTrainer._iteration`` does: zero grad,
autocast when ``amp`` is on (float16 with grad scaling on CUDA, bfloat16 on a CPU that computes it natively:
:mod:`custom.engines.precision`),
``LOSS_COMPLETED``, backward, ``BACKWARD_COMPLETED``, optimiser
step, ``MODEL_COMPLETED``; then :meth:`after_step` (EMA updates and the like). Without an override,
:meth:`NoisyLabelTrainer.compute_loss` is the plain supervised step.

Data-parallel training (``torchrun``, ``configs/multi_gpu.json``): when a process group is initialised, the
weights of :meth:`synced_modules` are broadcast from rank 0 at start and, after each backward pass, the gradients
of every optimiser's parameters (:meth:`extra_optimizers` included) are averaged over ranks with one all-reduce.
This keeps a teacher, peers and transition matrices in step without wrapping each in DistributedDataParallel.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Events
from monai.data import MetaTensor
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys

from custom.engines.precision import amp_runs_on, training_autocast

__all__ = ["NoisyLabelTrainer", "batch_to_device"]


def batch_to_device(
    batchdata: Mapping[str, Any], device: torch.device, keys: Sequence[str], non_blocking: bool = False
):
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

    def __init__(self, *args: Any, **kwargs: Any):
        with warnings.catch_warnings():  # MONAI builds a CUDA grad scaler for amp; on the CPU it is dropped below
            warnings.filterwarnings("ignore", message=".*GradScaler is enabled, but CUDA is not available")
            super().__init__(*args, **kwargs)
        if self.amp and torch.device(self.state.device).type != "cuda":
            self.scaler = None  # bfloat16 autocast on the CPU: float32's exponent range, nothing to scale
        if self.amp and not amp_runs_on(self.state.device):
            self.amp = False
            self.logger.info("amp: this CPU has no native bfloat16 (AVX-512 BF16 or AMX), where bfloat16 autocast "
                             "is several times slower than float32; training in float32")
        self.add_event_handler(Events.STARTED, self._start_in_step)

    def _start_in_step(self, engine: NoisyLabelTrainer) -> None:
        if dist.is_available() and dist.is_initialized():
            self._broadcast_from_rank0()

    def compute_loss(self, engine: NoisyLabelTrainer, batch: dict[str, Any]) -> torch.Tensor:
        """Plain supervised step (the default): ``loss_function(inferer(image, network), label)``."""
        logits = engine.inferer(batch["image"], engine.network)
        engine.state.output[Keys.PRED] = logits
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        return engine.loss_function(logits, batch["label"]).mean()

    def after_step(self, engine: NoisyLabelTrainer) -> None:
        """Hook run after the optimiser step (no gradient tracking needed by default)."""

    # ------------------------------------------------------------------ data-parallel training (torchrun)
    def extra_optimizers(self) -> list[torch.optim.Optimizer]:
        """Optimisers besides ``self.optimizer`` (e.g. JCAS's transition matrices); their gradients are synced too."""
        return []

    def synced_modules(self) -> list[torch.nn.Module]:
        """Modules whose weights must start identical on every rank (the network, peers, teacher, ...)."""
        return [m for m in (self.network, getattr(self, "teacher", None)) if isinstance(m, torch.nn.Module)]

    def _trainable_parameters(self) -> list[torch.nn.Parameter]:
        params = []
        for opt in [self.optimizer, *self.extra_optimizers()]:
            for group in opt.param_groups:
                params.extend(p for p in group["params"] if p.requires_grad)
        return params

    def _broadcast_from_rank0(self) -> None:
        with torch.no_grad():
            for module in self.synced_modules():
                for tensor in [*module.parameters(), *module.buffers()]:
                    if tensor.is_contiguous():
                        dist.broadcast(tensor, src=0)
                    else:  # channels-last weights (memory_format): collectives need a row-major buffer
                        buffer = tensor.contiguous()
                        dist.broadcast(buffer, src=0)
                        tensor.copy_(buffer)

    def _average_gradients(self) -> None:
        # every trainable tensor of every optimiser (peers, T matrices included), so that each procedure's
        # extra networks stay in step without wrapping each of them in DistributedDataParallel
        grads = [p.grad for p in self._trainable_parameters() if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= dist.get_world_size()
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def _iteration(self, engine: NoisyLabelTrainer, batchdata: dict[str, Any]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = batch_to_device(batchdata, engine.state.device, self.device_keys, engine.non_blocking)
        engine.state.output = {Keys.IMAGE: batch["image"], Keys.LABEL: batch["label"]}
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        with training_autocast(engine.amp, engine.state.device, self.synced_modules(), engine.amp_kwargs):
            loss = self.compute_loss(engine, batch)
        engine.state.output[Keys.LOSS] = loss
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        distributed = dist.is_available() and dist.is_initialized()
        if engine.amp and engine.scaler is not None:
            engine.scaler.scale(loss).backward()
            if distributed:
                self._average_gradients()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            loss.backward()
            if distributed:
                self._average_gradients()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        self.after_step(engine)
        return engine.state.output
