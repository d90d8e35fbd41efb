"""``--init_from``: start a training run from the weights of a trained bundle or a checkpoint file.

Every method config builds its main network as ``$custom.init_from.init_network(@network_def, @init_from)``
(``configs/base/common.json#network``) and sets ``"init_from": null``. With
``python -m monai.bundle run training --config_file configs/<method>.json --init_from <path>`` the network's weights
are replaced, before training starts, by those found at ``path``:

* a trained bundle folder: its ``models/model.pt`` (a plain ``state_dict``, as :class:`custom.handlers.BundleWriter`
  writes it);
* a ``.pt`` / ``.pth`` file holding either a ``state_dict`` or a checkpoint dict with a ``"network"`` entry (the
  ``checkpoints/checkpoint_*.pt`` of a training run, or any ``{"network": state_dict, ...}``).

The state_dict must match the network exactly (same keys, same shapes); a mismatch stops the run with one line
(an :class:`~custom.errors.OptionError`) that names the file and the first differing keys. A ``"module."`` prefix
on every key (a ``DistributedDataParallel`` save) is stripped. Only the main network (``@network``) is
initialised: peers, teachers, the JCAS transition matrices and the optimiser start as the config builds them, and
the iteration count starts at 0. With ``--resume true`` and a checkpoint in ``checkpoints/``, the resumed
checkpoint wins (it is loaded when the trainer starts, after this initialisation).

Loading first tries ``torch.load(..., weights_only=True)``; a training checkpoint also holds random-generator
states (NumPy arrays) that the restricted unpickler refuses, and is then loaded in full, the same trust as
``--resume`` gives the run's own checkpoints: name only files you made or trust.

Example::

    network = init_network(PaperVNet(**kwargs), "bundles/supervised_la")  # loads bundles/supervised_la/models/model.pt
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from custom.errors import OptionError
from custom.io import DataError, listed, state_dict_problems, weights_file_problem

__all__ = [
    "BUNDLE_WEIGHTS",
    "check_state",
    "checked_checkpoint",
    "init_network",
    "load_network_state",
    "load_weights",
    "resolve_init_path",
    "weights_file_problem",
]

OPTION = "init_from"
BUNDLE_WEIGHTS = os.path.join("models", "model.pt")
# listed in a mismatch message before "... and N more"
_SHOWN_KEYS = 3


def resolve_init_path(init_from: str | os.PathLike) -> Path:
    """The weights file that ``init_from`` names: ``<bundle>/models/model.pt`` for a folder, else the file itself.

    Raises:
        OptionError: the path does not exist, or is a folder without ``models/model.pt``.
    """
    path = Path(os.fspath(init_from)).expanduser()
    if path.is_dir():
        weights = path / BUNDLE_WEIGHTS
        if not weights.is_file():
            raise OptionError(OPTION, f"{path} is a folder without {BUNDLE_WEIGHTS} (not a trained bundle)")
        return weights
    if not path.is_file():
        raise OptionError(OPTION, f"{path}: no such file or bundle folder")
    return path


def _error(option: str | None, path: Path, problem: str) -> ValueError:
    """The user error for a bad weights file: an OptionError naming ``--option`` (``--init_from``) or, for the files
    a bundle or run folder holds, a DataError naming the file."""
    return OptionError(option, f"{path}: {problem}") if option else DataError(path, problem)


def _load(path: Path, option: str | None = OPTION, checkpoint: bool = True) -> Any:
    problem = weights_file_problem(path)
    if problem:
        raise _error(option, path, problem)
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if not checkpoint:
            raise _error(option, path, "holds Python objects besides tensors (a pickled network or a training "
                         "checkpoint?); a bundle's model.pt is a plain state_dict of tensors") from error
    except (RuntimeError, EOFError, OSError) as error:
        raise _error(option, path, f"not a readable PyTorch file ({type(error).__name__}: {error})") from error
    try:  # a training checkpoint (random states): full load, see the module docstring
        return torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as error:  # any unpickling failure: the file is not a checkpoint we can use
        raise _error(option, path, f"not a readable PyTorch file ({type(error).__name__}: {error})") from error


def _holds(content: Any) -> str:
    if isinstance(content, Mapping):
        return f"a dict with keys {_listed(sorted(map(str, content)))}"
    return f"a {type(content).__name__}"


def load_network_state(
    path: str | os.PathLike, option: str | None = OPTION, checkpoint: bool = True
) -> dict[str, torch.Tensor]:
    """The network ``state_dict`` stored in ``path`` (a state_dict, or a checkpoint dict's ``"network"`` entry).

    Args:
        path: a weights file (use :func:`resolve_init_path` for bundle folders).
        option: the option named by errors (``init_from``), or None to name only the file (a bundle's weights).
        checkpoint: whether a training checkpoint (random states: a full, trusted load) may be read.

    Returns:
        ``{parameter or buffer name: tensor}`` on the CPU, without a common ``"module."`` prefix.

    Raises:
        OptionError: naming the file, when it cannot be read or holds neither a state_dict nor a ``"network"``
            entry.
    """
    path = Path(path)
    content = _load(path, option, checkpoint)
    if isinstance(content, Mapping) and "network" in content and isinstance(content["network"], Mapping):
        content = content["network"]
    if not isinstance(content, Mapping) or not content or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in content.items()
    ):
        raise _error(
            option, path, f"holds neither a network state_dict nor a checkpoint with a 'network' entry, but "
            f"{_holds(content)}"
        )
    state = dict(content)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _listed(keys: list[str]) -> str:
    return listed(keys, _SHOWN_KEYS)


def init_network(network: nn.Module, init_from: str | os.PathLike | None) -> nn.Module:
    """Load the weights named by ``init_from`` into ``network`` (in place); ``None`` or ``""`` leaves it as is.

    Args:
        network: the freshly built network (any device; the weights are copied onto its parameters' devices).
        init_from: a trained bundle folder, a ``.pt`` state_dict / checkpoint file, or ``None``.

    Returns:
        ``network`` itself, so that a config can chain ``.to(@device)``.

    Raises:
        OptionError: one line naming the file: missing file, unreadable content, or a state_dict that does not
            match the network (missing keys, unexpected keys, or shapes that differ).
    """
    if init_from is None or (isinstance(init_from, str) and not init_from.strip()):
        return network
    if not isinstance(network, nn.Module):
        raise ValueError(f"network must be a torch.nn.Module, got {type(network).__name__}.")
    path = resolve_init_path(init_from)
    state = load_network_state(path)
    check_state(state, network, path, OPTION)
    network.load_state_dict(state, strict=True)
    return network


def check_state(state: Mapping[str, torch.Tensor], network: nn.Module, path: Path, option: str | None) -> None:
    """Check that ``state`` (read from ``path``) fits ``network`` exactly and is finite.

    Raises:
        OptionError (``option`` given) or DataError naming ``path``: missing or unexpected keys, shapes that differ
            (e.g. a bundle of another ``--network_width``), or NaN/Inf values.
    """
    problems = state_dict_problems(state, network.state_dict())
    if problems:
        if option:
            raise OptionError(
                option, f"{path} does not match the network {type(network).__name__}: {'; '.join(problems)}"
            )
        raise DataError(path, f"does not match the network {type(network).__name__}: {'; '.join(problems)}")
    _check_finite(state, path, option)


def load_weights(network: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a bundle's ``models/model.pt`` (a plain state_dict) into ``network``, checked (see :func:`check_state`).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        DataError: naming ``path`` and what it holds, when it is no state_dict of tensors or does not fit.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file (train the bundle first, or check --output_dir)")
    device = next((p.device for p in network.parameters()), torch.device("cpu"))
    state = load_network_state(path, option=None, checkpoint=False)
    check_state(state, network, path, None)
    network.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=True)
    return network


def checked_checkpoint(
    path: str | os.PathLike | None, network: nn.Module, entries: Any = ()
) -> str | None:
    """``path`` (the training checkpoint ``--resume true`` loads), after checking that it is a complete checkpoint
    of this run's network: its ``network`` entry fits ``network`` exactly and it holds every entry of ``entries``
    (the config's ``checkpoint_objects``); None stays None.

    Raises:
        DataError: naming the checkpoint: not a checkpoint, missing entries, or a network of another shape.
    """
    if path is None:
        return None
    path = Path(path)
    content = _load(path, option=None, checkpoint=True)
    if not isinstance(content, Mapping) or not isinstance(content.get("network"), Mapping):
        raise DataError(path, f"is no training checkpoint (no 'network' entry): it holds {_holds(content)}")
    missing = [str(k) for k in entries if k not in content]
    if missing:
        raise DataError(path, f"lacks the checkpoint entries {_listed(missing)} that this config resumes "
                        "(a checkpoint of another method or an older version?)")
    state = dict(content["network"])
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    check_state(state, network, path, None)
    return str(path)


def _check_finite(state: Mapping[str, torch.Tensor], path: Path, option: str | None) -> None:
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        problem = (
            f"{path}: {len(bad)} of {len(state)} tensors hold NaN or Inf values ({_listed(bad)}): the weights of a "
            "run that diverged; a network started from them learns nothing"
        )
        raise OptionError(option, problem) if option else DataError(None, problem)
