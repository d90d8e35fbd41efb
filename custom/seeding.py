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
    goes on with the checkpoint's states. A ``TwoStreamLoader`` keeps an iterator per stream across epochs: its HQ
    and LQ DataLoaders are wrapped and replayed the same way.

    Args:
        trainer: the MONAI trainer (its ``data_loader``, or the two loaders of a ``TwoStreamLoader``, are wrapped).
    """

    def __init__(self, trainer: Any):
        self.trainer = trainer
        loader = trainer.data_loader
        self._source = loader
        self.resumable: dict[str, ResumableLoader] = {}
        if isinstance(loader, torch.utils.data.DataLoader):
            self.resumable["loader"] = trainer.data_loader = ResumableLoader(loader, self)
        else:  # a TwoStreamLoader: its two loaders
            for name in ("hq_loader", "lq_loader"):
                inner = getattr(loader, name, None)
                if isinstance(inner, torch.utils.data.DataLoader):
                    self.resumable[name] = ResumableLoader(inner, self)
                    setattr(loader, name, self.resumable[name])

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
        """The current states, and each loader's pass start and position (see the class docstring)."""
        loaders = {
            name: {"pass_start": r.pass_start, "consumed": int(r.consumed)}
            for name, r in self.resumable.items()
            if r.pass_start is not None
        }
        return {"current": self.capture(), "loaders": loaders}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`: the current states now, each loader's position at its next pass."""
        self.restore(state["current"])
        for name, saved in (state.get("loaders") or {}).items():
            if name in self.resumable:
                self.resumable[name].pending = (saved["pass_start"], int(saved["consumed"]))


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
        self.pending: tuple[dict[str, Any], int] | None = None

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:
        if name == "loader":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __iter__(self) -> Iterator[Any]:
        if self.pending is not None and self.pending[1] >= len(self.loader):
            self.pending = None  # the checkpoint's pass was complete: the unbroken run starts a new one here too
        if self.pending is not None:
            # replay: the pass's start states give the same sampler order; skipping its batches reaches the
            # position; then the live states come back (another loader may have drawn since the checkpoint)
            pass_start, consumed = self.pending
            self.pending = None
            live = self.random_state.capture()
            self.random_state.restore(pass_start)
            iterator = iter(self.loader)
            for _ in range(consumed):
                next(iterator, None)
            self.random_state.restore(live)
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
