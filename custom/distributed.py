"""Small helpers for runs under ``torch.distributed`` (``torchrun`` with ``configs/multi_gpu.json``).

Conventions (docs: README "Multi-GPU"):

* Rank 0 is the main process: it alone logs, writes TensorBoard events, checkpoints, CSV/PNG reports and the
  exported bundle. Handlers that only write are disabled on the other ranks (``"_disabled_":
  "$not custom.distributed.is_main_process()"`` in ``configs/base/common.json``); handlers that also compute keep
  running everywhere and guard their writes with :func:`is_main_process`. :func:`quiet_non_main_process` silences
  INFO lines of ranks > 0 (warnings and errors still show).
* Validation is sharded: :func:`shard` gives each rank its share of the validation cases without padding
  duplicates; MONAI's metric handlers (``MeanDice``) all-gather the per-case values of uneven shards
  (``evenly_divisible_all_gather``), so every rank gets the mean over all cases exactly once.
* Every rank validates rank 0's network: :func:`sync_buffers_at_start` broadcasts the evaluator network's buffers
  (batch-norm running statistics, which each rank updates from its own batches) from rank 0 when validation starts.

Without an initialised process group every helper is the single-process identity: rank 0 of 1.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from monai.data import partition_dataset

__all__ = [
    "is_distributed",
    "get_rank",
    "get_world_size",
    "is_main_process",
    "quiet_non_main_process",
    "shard",
    "barrier",
    "mean_over_ranks",
    "broadcast_buffers",
    "sync_buffers_at_start",
]

T = TypeVar("T")


def is_distributed() -> bool:
    """True when a ``torch.distributed`` process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """True on rank 0 and in a single process: the process that logs and writes files."""
    return get_rank() == 0


def quiet_non_main_process() -> None:
    """On ranks > 0 drop INFO and DEBUG records of every logger (``logging.disable``); a no-op on rank 0."""
    if not is_main_process():
        logging.disable(logging.INFO)


def shard(items: Sequence[T]) -> list[T]:
    """This rank's share of ``items``: ``items[rank::world_size]``, uneven shards, no padding duplicates.

    Args:
        items: e.g. the validation datalist items, in the same order on every rank.

    Returns:
        A list; all of ``items`` in a single process, ``[]`` when ``items`` is empty.

    Raises:
        ValueError: fewer (non-zero) items than ranks: a rank would have nothing to validate.
    """
    items = list(items)
    world_size = get_world_size()
    if world_size == 1 or not items:
        return items
    if len(items) < world_size:
        raise ValueError(
            f"{len(items)} validation case(s) cannot be sharded over {world_size} ranks: every rank needs at least "
            "one (use fewer processes or more validation cases)."
        )
    return partition_dataset(items, num_partitions=world_size, shuffle=False, even_divisible=False)[get_rank()]


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if is_distributed():
        dist.barrier()


def _collective_device(tensor: torch.Tensor) -> torch.device:
    # NCCL reduces CUDA tensors only; gloo reduces CPU tensors (and CUDA ones through a host copy)
    if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return tensor.device


def mean_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise mean of ``tensor`` over all ranks (``tensor`` itself in a single process).

    Returns:
        A new tensor on ``tensor``'s device and of its dtype; ``tensor`` is not modified.
    """
    if not is_distributed():
        return tensor
    reduced = tensor.detach().to(_collective_device(tensor), copy=True)
    dist.all_reduce(reduced)
    reduced /= dist.get_world_size()
    return reduced.to(tensor.device)


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Overwrite ``module``'s buffers (e.g. batch-norm running statistics) with those of rank ``src``, in place.

    Raises:
        ValueError: ``module`` is not a ``torch.nn.Module``.
    """
    if not isinstance(module, torch.nn.Module):
        raise ValueError(f"module must be a torch.nn.Module, got {type(module).__name__}.")
    if not is_distributed():
        return
    with torch.no_grad():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=src)


def sync_buffers_at_start(evaluator: Engine, src: int = 0) -> Engine:
    """Make ``evaluator`` broadcast its network's buffers from rank ``src`` whenever it starts a run.

    The trainers average gradients but not buffers; without this each rank would validate its shard with its
    own batch-norm statistics instead of those of the network rank 0 saves.

    Args:
        evaluator: an engine with a ``network`` attribute (a MONAI ``SupervisedEvaluator``).
        src: the rank whose buffers everyone uses.

    Returns:
        ``evaluator``.

    Raises:
        ValueError: ``evaluator`` has no ``network`` module.
    """
    network: Any = getattr(evaluator, "network", None)
    if not isinstance(network, torch.nn.Module):
        raise ValueError("evaluator must have a `network` attribute that is a torch.nn.Module.")
    evaluator.add_event_handler(Events.STARTED, lambda engine: broadcast_buffers(network, src=src))
    return evaluator
