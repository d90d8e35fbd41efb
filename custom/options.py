"""Start-up checks of the bundle options (config values and command-line overrides), before anything is written.

The configs' run lists call :func:`check_options` right after :func:`custom.errors.install_excepthook`, so that
``--patch_size abc``, ``--epoch_length 0`` or a patch the network cannot take stops with one line naming the
option (an :class:`~custom.errors.OptionError`) and leaves no ``checkpoints/`` or ``logs/`` folder behind.

Example::

    check_options({"patch_size": [48, 48, 32], "max_epochs": 20, "epoch_length": 10}, network_class="PaperVNet")
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from custom.errors import OptionError

__all__ = ["check_options", "check_patch_size", "positive_int", "rotation_prob", "size_divisor"]

logger = logging.getLogger(__name__)

# options that must be integers >= 1 (``None`` allowed where MONAI takes it as "the loader's length")
_POSITIVE_INTS = ("max_epochs", "epoch_length", "val_interval", "batch_size", "batch_hq", "batch_lq", "num_samples")
_NON_NEGATIVE_INTS = ("num_workers", "seed")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def positive_int(option: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int, if it is an integer >= ``minimum``.

    Raises:
        OptionError: naming ``option``, for anything else (a string, a float with a fraction, a bool, too small).
    """
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not _is_int(value):
        raise OptionError(option, f"must be an integer >= {minimum}, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise OptionError(option, f"must be an integer >= {minimum}, got {value}")
    return int(value)


def size_divisor(network_class: str | None) -> int:
    """The factor every patch side must be divisible by for ``network_class`` (``custom.networks``' class name):
    its ``size_divisor`` attribute (16 for the V-Nets' four 2x down-samplings); 1 when unknown."""
    if not network_class:
        return 1
    import custom.networks

    return int(getattr(getattr(custom.networks, str(network_class), None), "size_divisor", 1) or 1)


def check_patch_size(patch_size: Any, divisor: int = 1, option: str = "patch_size") -> list[int]:
    """``patch_size`` as three positive ints, each divisible by ``divisor``.

    Raises:
        OptionError: naming the option, for a wrong type or length, a side < 1, or a side not divisible by
            ``divisor`` (then the message lists the nearest valid sizes).
    """
    if isinstance(patch_size, (str, bytes)) or not isinstance(patch_size, Sequence):
        raise OptionError(option, f"must be a list of 3 positive integers like [48,48,32], got {patch_size!r}")
    if len(patch_size) != 3:
        raise OptionError(option, f"must have 3 sizes (x, y, z), got {len(patch_size)}: {list(patch_size)!r}")
    sizes = []
    for value in patch_size:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not _is_int(value) or value < 1:
            raise OptionError(option, f"must be 3 positive integers, got {list(patch_size)!r}")
        sizes.append(int(value))
    if divisor > 1 and any(s % divisor for s in sizes):
        down = [max(divisor, s // divisor * divisor) for s in sizes]
        up = [-(-s // divisor) * divisor for s in sizes]
        nearest = sorted({str(down), str(up)})
        raise OptionError(
            option,
            f"{sizes} does not fit the network: every size must be divisible by {divisor} (its down-sampling "
            f"factor); nearest valid sizes: {' or '.join(nearest)}",
        )
    return sizes


def rotation_prob(patch_size: Any, prob: float, axes: Sequence[int] = (0, 1)) -> float:
    """Probability for ``RandRotate90d`` in the plane ``axes``: ``prob`` when the patch is square there, else 0.

    A 90-degree rotation of a non-square patch swaps its sizes, and patches of different shapes cannot be batched;
    the rotation is then switched off (a logged note says so).
    """
    try:
        a, b = (int(patch_size[i]) for i in axes)
    except (TypeError, ValueError, IndexError, KeyError):
        return float(prob)  # a malformed patch_size is reported by check_patch_size
    if a != b and prob > 0:
        logger.warning(
            f"patch_size {list(patch_size)}: sizes {a} and {b} differ in the rotation plane {list(axes)}, "
            "so the random 90-degree rotation is off (a rotated patch would not batch with an unrotated one)"
        )
        return 0.0
    return float(prob)


def _check_number(option: str, value: Any, low: float, high: float, low_open: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise OptionError(option, f"must be a number, got {value!r}")
    if (value <= low if low_open else value < low) or value > high:
        bound = f"{'(' if low_open else '['}{low}, {high}]"
        raise OptionError(option, f"must be in {bound}, got {value}")


def check_options(options: Mapping[str, Any], network_class: str | None = None) -> dict[str, Any]:
    """Check the bundle options present in ``options``; return them unchanged.

    Checked: ``patch_size`` (3 positive ints divisible by the network's :func:`size_divisor`), ``max_epochs``,
    ``epoch_length``, ``val_interval``, ``batch_size``, ``batch_hq``, ``batch_lq``, ``num_samples`` (ints >= 1;
    ``epoch_length`` may be None), ``num_workers``, ``seed`` (ints >= 0), ``cache_rate`` (in [0, 1]),
    ``learning_rate`` (> 0).

    Raises:
        OptionError: naming the first bad option.
    """
    for option in _POSITIVE_INTS:
        if option in options and not (option == "epoch_length" and options[option] is None):
            positive_int(option, options[option])
    for option in _NON_NEGATIVE_INTS:
        if option in options:
            positive_int(option, options[option], minimum=0)
    if "cache_rate" in options:
        _check_number("cache_rate", options["cache_rate"], 0.0, 1.0, low_open=False)
    if "learning_rate" in options:
        _check_number("learning_rate", options["learning_rate"], 0.0, math.inf, low_open=True)
    if "patch_size" in options:
        check_patch_size(options["patch_size"], size_divisor(network_class))
    return dict(options)
