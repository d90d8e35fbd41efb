"""Mixed precision of the training step (``amp``): float16 autocast with gradient scaling on CUDA (MONAI's
``SupervisedTrainer`` behaviour), bfloat16 autocast on the CPU.

On the CPU, PyTorch's autocast runs convolutions in bfloat16 (oneDNN; about 1.5x faster for the width-8 VNet step on
an AVX512-BF16 CPU, ``scripts/benchmark_step.py``) but, unlike CUDA's, leaves softmax, reductions and elementwise
ops in the input's dtype. The networks' outputs are therefore cast back to float32 (:func:`float32_outputs`), so that
losses, sample selection and label refinement see float32 logits exactly as without ``amp``. bfloat16 keeps
float32's exponent range, so no gradient scaling is needed.

bfloat16 pays only where the CPU computes it natively (AVX-512 BF16 or AMX, which oneDNN reports): elsewhere oneDNN
emulates it and a bfloat16 step is several times slower than a float32 one (measured about 10x on an AVX2-only
CPU, ``scripts/benchmark_step.py --compare-layouts``). :func:`amp_runs_on` therefore turns ``amp`` off on such a CPU,
and the trainers say so once in the log.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

__all__ = ["amp_runs_on", "autocast_dtype", "cpu_native_bfloat16", "float32_outputs", "to_float32",
           "training_autocast"]

_LOWER = (torch.float16, torch.bfloat16)


def autocast_dtype(device: torch.device | str, amp_kwargs: Mapping[str, Any] | None = None) -> torch.dtype:
    """The autocast dtype of a device: ``amp_kwargs["dtype"]`` if given, else float16 on CUDA, bfloat16 elsewhere."""
    if amp_kwargs and amp_kwargs.get("dtype") is not None:
        return amp_kwargs["dtype"]
    return torch.float16 if torch.device(device).type == "cuda" else torch.bfloat16


def cpu_native_bfloat16() -> bool:
    """Whether this CPU runs bfloat16 convolutions natively (oneDNN's check: AVX-512 BF16 or AMX)."""
    mkldnn_check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if mkldnn_check is not None:
        return bool(mkldnn_check())
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def amp_runs_on(device: torch.device | str) -> bool:
    """Whether ``amp`` speeds up a training step on ``device``: always on CUDA (float16 autocast), on the CPU only
    where bfloat16 is native (:func:`cpu_native_bfloat16`)."""
    return torch.device(device).type != "cpu" or cpu_native_bfloat16()


def to_float32(value: Any) -> Any:
    """``value`` with every float16/bfloat16 tensor in it cast to float32 (tensors, tuples, named tuples, lists,
    dicts; anything else is returned as it is)."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.dtype in _LOWER else value
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # named tuple (e.g. JcasOutput)
        return type(value)(*(to_float32(v) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(to_float32(v) for v in value)
    if isinstance(value, dict):
        return {k: to_float32(v) for k, v in value.items()}
    return value


@contextlib.contextmanager
def float32_outputs(modules: Sequence[torch.nn.Module]) -> Iterator[None]:
    """While active, the outputs of ``modules`` (top level only) come back in float32 (:func:`to_float32`).

    The hooks are removed on exit, so checkpoints, evaluators and exported bundles see the plain modules.
    """
    handles = [m.register_forward_hook(lambda _module, _args, output: to_float32(output)) for m in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def training_autocast(
    enabled: bool,
    device: torch.device | str,
    modules: Sequence[torch.nn.Module] = (),
    amp_kwargs: Mapping[str, Any] | None = None,
) -> Iterator[None]:
    """The autocast region of one training step.

    Args:
        enabled: the trainer's ``amp``; False is a no-op.
        device: the step's device; CUDA uses ``torch.autocast("cuda", **amp_kwargs)`` as MONAI does, any other
            device bfloat16 autocast with ``modules``' outputs cast to float32 (:func:`float32_outputs`).
        modules: the networks the step runs (student, teacher, peers).
        amp_kwargs: MONAI's ``amp_kwargs`` (CUDA; a ``dtype`` there also sets the CPU dtype).
    """
    if not enabled:
        yield
        return
    device_type = torch.device(device).type
    if device_type == "cuda":
        with torch.autocast("cuda", **dict(amp_kwargs or {})):
            yield
        return
    with torch.autocast(device_type, dtype=autocast_dtype(device, amp_kwargs)), float32_outputs(modules):
        yield
