"""Memory layout of the networks' weights during training (config key ``memory_format``).

``"channels_last_3d"`` (the default) stores every 5D weight as ``(O, D, H, W, I)`` in memory; oneDNN (CPU) and cuDNN
(CUDA) then run the convolutions and BatchNorm in the channels-last layout, which avoids the reorders that the
default layout costs them on every convolution (``scripts/benchmark_step.py --compare-layouts``;
docs/benchmark_notes.md, "Training step speed", gives the measured ratios). ``"contiguous"`` keeps PyTorch's
default layout.

Only the modules are converted, once, before the first iteration: a convolution whose weight is channels-last
computes its output channels-last whatever the input's layout, and the images have one channel, for which both
layouts are the same bytes, so no per-iteration conversion of the batch is needed. Parameters stay the same
``Parameter`` objects (``Module._apply`` replaces their data), so optimisers built before the conversion keep
working; checkpoints and exported weights load into networks of either layout (``load_state_dict`` copies values).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from custom.errors import OptionError

__all__ = ["MEMORY_FORMATS", "DEFAULT_MEMORY_FORMAT", "memory_format_of", "apply_memory_format"]

#: the values of the config key ``memory_format`` and the torch layout each selects
MEMORY_FORMATS = {"channels_last_3d": torch.channels_last_3d, "contiguous": torch.contiguous_format}
DEFAULT_MEMORY_FORMAT = "channels_last_3d"


def memory_format_of(name: str) -> torch.memory_format:
    """The torch layout named ``name`` (one of :data:`MEMORY_FORMATS`); :class:`OptionError` naming the option
    otherwise."""
    if not isinstance(name, str) or name not in MEMORY_FORMATS:
        raise OptionError("memory_format", f"expected one of {sorted(MEMORY_FORMATS)}, got {name!r}")
    return MEMORY_FORMATS[name]


def apply_memory_format(modules: Iterable[torch.nn.Module], name: str) -> None:
    """Convert the 5D weights of ``modules`` to the layout ``name`` in place (a no-op for ``"contiguous"`` modules
    that are already contiguous, and for modules without 5D tensors such as transition matrices)."""
    layout = memory_format_of(name)
    for module in modules:
        module.to(memory_format=layout)
