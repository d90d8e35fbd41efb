"""Start-up checks of the bundle options (config values and command-line overrides), before anything is written.

The configs' run lists call :func:`check_options` right after :func:`custom.errors.install_excepthook`, so that
``--patch_size abc``, ``--epoch_length 0`` or a patch the network cannot take stops with one line naming the
option (an :class:`~custom.errors.OptionError`) and leaves no ``checkpoints/`` or ``logs/`` folder behind.

Example::

    check_options({"patch_size": [48, 48, 32], "max_epochs": 20, "epoch_length": 10}, network_class="PaperVNet")
"""

from __future__ import annotations

import difflib
import logging
import math
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from custom.errors import OptionError

__all__ = [
    "check_device",
    "check_options",
    "check_overrides",
    "check_patch_size",
    "nearest_option",
    "option_value",
    "positive_int",
    "rotation_prob",
    "size_divisor",
]

logger = logging.getLogger(__name__)

# options that must be integers >= 1 (``None`` allowed where MONAI takes it as "the loader's length")
_POSITIVE_INTS = ("max_epochs", "epoch_length", "val_interval", "batch_size", "batch_hq", "batch_lq", "num_samples")
_NON_NEGATIVE_INTS = ("num_workers", "seed")
# the largest learning rate the SGD configs can take without diverging at once (1e6 trained to a loss of 2e8)
MAX_LEARNING_RATE = 1.0
# the widest network the configs are meant for (base_filters; 16 is the papers' width)
MAX_NETWORK_WIDTH = 256
# keyword arguments of MONAI's ``run``/``create_workflow`` that are no config overrides
_WORKFLOW_ARGS = frozenset({"workflow_type", "properties_path", "workflow_name", "workflow"})
_BOOL_WORDS = {"true": True, "false": False}
# boolean options that only the command line sets (the configs do not list them), with their defaults
COMMAND_LINE_OPTIONS = {"overwrite": False}


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


def check_device(device: Any, option: str = "device") -> str:
    """``device`` as a string, if torch can use it here.

    Raises:
        OptionError: for a name torch does not know, ``cuda`` on a machine without CUDA, or a GPU index past the
            last GPU.
    """
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as error:
        raise OptionError(option, f"{device!r} is no device name (use cpu, cuda or cuda:<index>)") from error
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise OptionError(option, f"{device!r} asks for a GPU, but CUDA is not available here; use --device cpu")
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise OptionError(option, f"{device!r}: this machine has {count} GPU(s) (cuda:0 to cuda:{count - 1})")
    return str(parsed)


def check_options(options: Mapping[str, Any], network_class: str | None = None) -> dict[str, Any]:
    """Check the bundle options present in ``options``; return them unchanged.

    Checked: ``patch_size`` (3 positive ints divisible by the network's :func:`size_divisor`), ``max_epochs``,
    ``epoch_length``, ``val_interval``, ``batch_size``, ``batch_hq``, ``batch_lq``, ``num_samples`` (ints >= 1;
    ``epoch_length`` may be None), ``num_workers``, ``seed`` (ints >= 0), ``cache_rate`` (in [0, 1]),
    ``learning_rate`` (> 0 and at most :data:`MAX_LEARNING_RATE`), ``network_width`` (an int in
    [1, :data:`MAX_NETWORK_WIDTH`]), ``dropout`` (in [0, 1)), ``max_voxels`` (an int >= 1), ``device``
    (:func:`check_device`), ``memory_format`` (:data:`custom.engines.memory_format.MEMORY_FORMATS`).

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
        if options["learning_rate"] > MAX_LEARNING_RATE:
            raise OptionError(
                "learning_rate",
                f"{options['learning_rate']} is above the sane range (0, {MAX_LEARNING_RATE}] for SGD: the loss "
                "would diverge; the configs use 0.01",
            )
    if "network_width" in options:
        width = positive_int("network_width", options["network_width"])
        if width > MAX_NETWORK_WIDTH:
            raise OptionError("network_width", f"must be at most {MAX_NETWORK_WIDTH}, got {width}")
    if "dropout" in options:
        _check_number("dropout", options["dropout"], 0.0, 1.0, low_open=False)
        if options["dropout"] >= 1.0:
            raise OptionError("dropout", f"must be below 1 (1 drops every feature), got {options['dropout']}")
    if "max_voxels" in options:
        positive_int("max_voxels", options["max_voxels"])
    if "device" in options:
        check_device(options["device"])
    if "memory_format" in options:
        from custom.engines.memory_format import memory_format_of  # deferred: torch is not needed to parse options

        memory_format_of(options["memory_format"])
    if "patch_size" in options:
        check_patch_size(options["patch_size"], size_divisor(network_class))
    return dict(options)


def nearest_option(option: str, known: Sequence[str]) -> str | None:
    """The entry of ``known`` closest to ``option`` (a typo's likely meaning), or None when nothing is close."""
    matches = difflib.get_close_matches(option, list(known), n=1, cutoff=0.6)
    return matches[0] if matches else None


def _bundle_run_call() -> Mapping[str, Any] | None:
    """The local variables of the ``monai.bundle.scripts.run`` call on the stack (its ``override`` dict is what the
    user typed), or None when the configs were not started through it."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "run" and frame.f_globals.get("__name__") == "monai.bundle.scripts":
            return frame.f_locals
        frame = frame.f_back
    return None


def _workflow_parser() -> Any:
    """The ``ConfigParser`` of the MONAI ``ConfigWorkflow`` running the current expression (None when none runs)."""
    from monai.bundle import ConfigWorkflow

    frame = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self")
        if isinstance(owner, ConfigWorkflow):
            return owner.parser
        frame = frame.f_back
    return None


def _unknown_override(option: str, reference: Any, config_file: Any) -> OptionError:
    parent, _, leaf = option.rpartition("#")
    if parent:
        siblings = reference[parent] if parent in reference else None
        known = [str(k) for k in siblings] if isinstance(siblings, Mapping) else []
        prefix = parent + "#"
    else:
        known = [k for k in reference.get() if not str(k).startswith("_")]
        prefix = ""
    guess = nearest_option(leaf, known)
    files = config_file if isinstance(config_file, str) else ", ".join(map(str, config_file or []))
    hint = f"; did you mean --{prefix}{guess}?" if guess else f" (no such id in {files})"
    return OptionError(option, f"unknown option{hint}")


def check_overrides(overrides: Mapping[str, Any] | None = None, config_file: Any = None) -> dict[str, Any]:
    """Check the command-line overrides of ``python -m monai.bundle run`` against the config files.

    Without arguments, the overrides and config files are those of the ``monai.bundle.scripts.run`` call on the
    stack (the configs' run lists call it right after :func:`custom.errors.install_excepthook`); nothing is checked
    when the configs run otherwise.

    * an id the config files do not define is an error naming the nearest valid one (``--max_epoch 3`` would
      otherwise train the default number of epochs without a word);
    * an option whose config value is ``true`` or ``false`` takes only a boolean: ``--amp True``, ``--amp true``
      (the word, which the command line passes as a string, is turned into the boolean in the running config) or
      ``--amp false``; ``--amp maybe`` is an error (any non-empty string would otherwise count as true).

    Returns:
        ``{option: value}`` of the checked overrides (booleans as booleans).

    Raises:
        OptionError: naming the first unknown or non-boolean option.
    """
    from monai.bundle import ConfigParser
    from monai.bundle.utils import ID_SEP_KEY

    if overrides is None:
        call = _bundle_run_call()
        if call is None:
            return {}
        overrides = dict(call.get("override") or {})
        config_file = call.get("config_file")
    if not overrides or config_file is None:
        return dict(overrides or {})
    reference = ConfigParser()
    reference.read_config(config_file)
    reference.parse(reset=True)  # resolves the "%file#id" macros, so that nested ids can be looked up
    running = _workflow_parser()
    checked = {}
    for key, value in overrides.items():
        option = str(key).replace(ID_SEP_KEY, "#")
        if option in _WORKFLOW_ARGS or option.startswith("_meta_"):
            continue
        if option in COMMAND_LINE_OPTIONS and option not in reference:
            default = COMMAND_LINE_OPTIONS[option]
        elif option not in reference:
            raise _unknown_override(option, reference, config_file)
        else:
            default = reference[option]
        if isinstance(default, bool) and not isinstance(value, bool):
            word = value.strip().lower() if isinstance(value, str) else None
            if word not in _BOOL_WORDS:
                raise OptionError(option, f"must be true or false, got {value!r}")
            value = _BOOL_WORDS[word]
            if running is not None:
                running[option] = value
        checked[option] = value
    return checked


def option_value(option: str) -> Any:
    """The value of a :data:`COMMAND_LINE_OPTIONS` entry (e.g. ``overwrite``) in the running config: what
    ``--<option>`` set (a boolean once :func:`check_overrides` ran), else its default."""
    running = _workflow_parser()
    if running is not None and option in running:
        return running[option]
    return COMMAND_LINE_OPTIONS[option]
