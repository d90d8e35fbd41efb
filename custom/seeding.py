"""Reproducible random streams: one generator per (seed, case id), independent of processing order; and the
random states a training checkpoint carries so that a resumed run draws what the unbroken run would have drawn."""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["rng_for_case", "case_seed", "TrainingRandomState", "ResumableLoader"]


def case_seed(seed: int, case_id: str) -> int:
    """A 32-bit seed derived from ``seed`` and a stable hash (CRC32) of ``case_id``."""
    return (int(seed) * 1_000_003 + zlib.crc32(str(case_id).encode("utf-8"))) % (2**32)


def rng_for_case(seed: int, case_id: str) -> np.random.Generator:
    """A NumPy generator that depends only on ``(seed, case_id)``: the same case always gets the same draws."""
    return np.random.default_rng([int(seed) % (2**32), zlib.crc32(str(case_id).encode("utf-8"))])


def _random_states(obj: Any, seen: set[int]) -> Iterator[np.random.RandomState]:
    """Every ``RandomState`` (MONAI ``Randomizable.R``) reachable from a transform tree, in a fixed order."""
    if id(obj) in seen or isinstance(obj, (str, bytes, int, float, torch.Tensor, np.ndarray)):
        return
    seen.add(id(obj))
    if isinstance(obj, np.random.RandomState):
        yield obj
        return
    if isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _random_states(item, seen)
        return
    if isinstance(obj, dict):
        for key in sorted(obj, key=str):
            yield from _random_states(obj[key], seen)
        return
    attributes = getattr(obj, "__dict__", None)
    if isinstance(attributes, dict):
        for key in sorted(attributes):
            if not key.startswith("__"):
                yield from _random_states(attributes[key], seen)


class TrainingRandomState:
    """Checkpointable random state of a training run, so that a run killed and resumed draws what the unbroken run
    would have drawn: torch (CPU and CUDA), NumPy and Python's global generators, the ``RandomState`` of every random
    transform of the training loader's dataset, and the loader's position.

    An entry of the configs' ``checkpoint_objects``: saved with each epoch checkpoint and restored by MONAI's
    ``CheckpointLoader`` when the run resumes. With ``epoch_length`` set, ignite keeps the DataLoader's iterator
    across epochs, so a checkpoint falls in the middle of a pass over the data: the trainer's DataLoader is wrapped
    (:class:`ResumableLoader`) to record the states at the start of the current pass and the batches taken since;
    the resumed run replays them (restoring the states of the pass's start, then skipping as many batches) and then
    restores the checkpoint's states. A ``TwoStreamLoader`` keeps its own iterators, which are not replayed: there
    the resumed run starts new passes (close to, but not exactly, the unbroken run).

    Args:
        trainer: the MONAI trainer (its ``data_loader`` is wrapped when it is a torch ``DataLoader``).
    """

    def __init__(self, trainer: Any):
        self.trainer = trainer
        loader = trainer.data_loader
        if isinstance(loader, torch.utils.data.DataLoader):
            self.resumable: ResumableLoader | None = ResumableLoader(loader, self)
            trainer.data_loader = self.resumable
        else:
            self.resumable = loader if isinstance(loader, ResumableLoader) else None
        self._source = loader

    def _transform_states(self) -> list[np.random.RandomState]:
        loaders = [getattr(self._source, name, None) for name in ("hq_loader", "lq_loader")]
        loaders = [item for item in loaders if item is not None] or [self._source]
        seen: set[int] = set()
        states: list[np.random.RandomState] = []
        for loader in loaders:
            transform = getattr(getattr(loader, "dataset", None), "transform", None)
            states.extend(_random_states(transform, seen))
        return states

    def capture(self) -> dict[str, Any]:
        """The generators' current states (plain values and tensors, loadable with ``weights_only``)."""
        numpy_state = np.random.get_state()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]],
            "python": _python_state_to_list(random.getstate()),
            "transforms": [_random_state_to_list(r.get_state()) for r in self._transform_states()],
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Set the generators to ``state`` (from :meth:`capture`).

        Raises:
            ValueError: when the state's transforms do not match this run's (another augmentation pipeline).
        """
        transforms = self._transform_states()
        if len(state["transforms"]) != len(transforms):
            raise ValueError(
                f"the checkpoint holds {len(state['transforms'])} random transform states, this run has "
                f"{len(transforms)}: resume with the config the checkpoint was written with"
            )
        torch.set_rng_state(torch.as_tensor(state["torch"]).cpu())  # map_location may have moved it
        if state.get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([torch.as_tensor(s).cpu() for s in state["cuda"]])
        kind, keys, *rest = state["numpy"]
        np.random.set_state((kind, _keys(keys), *rest))
        random.setstate(_python_state_from_list(state["python"]))
        for generator, saved in zip(transforms, state["transforms"]):  # noqa: B905 (Python 3.9)
            kind, keys, *rest = saved
            generator.set_state((kind, _keys(keys), *rest))

    def state_dict(self) -> dict[str, Any]:
        """The current states, and the loader's pass start and position (see the class docstring)."""
        out: dict[str, Any] = {"current": self.capture(), "pass_start": None, "consumed": 0}
        if self.resumable is not None and self.resumable.pass_start is not None:
            out["pass_start"], out["consumed"] = self.resumable.pass_start, int(self.resumable.consumed)
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`: the current states now, the loader's position at its next pass."""
        self.restore(state["current"])
        if self.resumable is not None and state.get("pass_start") is not None:
            self.resumable.pending = (state["pass_start"], int(state["consumed"]), state["current"])


class ResumableLoader:
    """A DataLoader that remembers the random states at the start of its current pass and the batches taken since,
    and can replay them after a resume (see :class:`TrainingRandomState`). Other attributes are the loader's.

    Args:
        loader: the wrapped DataLoader.
        random_state: whose :meth:`TrainingRandomState.capture` / ``restore`` it uses.
    """

    def __init__(self, loader: Any, random_state: TrainingRandomState):
        self.loader = loader
        self.random_state = random_state
        self.pass_start: dict[str, Any] | None = None
        self.consumed = 0
        self.pending: tuple[dict[str, Any], int, dict[str, Any]] | None = None

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:
        if name == "loader":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __iter__(self) -> Iterator[Any]:
        if self.pending is not None:
            pass_start, consumed, current = self.pending
            self.pending = None
            self.random_state.restore(pass_start)
            iterator = iter(self.loader)
            for _ in range(consumed):
                next(iterator, None)
            self.random_state.restore(current)
            self.pass_start, self.consumed = pass_start, consumed
        else:
            self.pass_start, self.consumed = self.random_state.capture(), 0
            iterator = iter(self.loader)
        for batch in iterator:
            self.consumed += 1
            yield batch


def _keys(keys: Any) -> np.ndarray:
    keys = keys.detach().cpu().numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
    return keys.astype(np.uint32)


def _random_state_to_list(state: tuple) -> list:
    kind, keys, *rest = state
    return [kind, torch.from_numpy(np.asarray(keys).astype(np.int64)), *rest]


def _python_state_to_list(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _python_state_from_list(state: list) -> tuple:
    version, internal, gauss = state
    return (version, tuple(int(v) for v in internal), gauss)
