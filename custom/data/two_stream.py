"""Two-stream batches: every batch holds ``batch_hq`` HQ patches followed by ``batch_lq`` LQ patches (ALC, MTCL)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

__all__ = ["TwoStreamLoader", "concat_batches"]


def concat_batches(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """Concatenate two collated batches key by key (tensors along dim 0, lists by extension).

    Keys present in only one batch are dropped, so optional keys never misalign with the batch dimension.
    """
    out: dict[str, Any] = {}
    for key in first.keys() & second.keys():
        a, b = first[key], second[key]
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
            out[key] = torch.cat([a, b], dim=0)
        elif isinstance(a, list) and isinstance(b, list):
            out[key] = a + b
    return out


class TwoStreamLoader:
    """Zip an HQ and an LQ loader into batches ``[HQ..., LQ...]``, cycling each independently.

    ``len()`` is ``epoch_length``, so MONAI/ignite engines run exactly that many iterations per epoch. Each batch
    also carries ``is_hq`` (B,) bool. Either loader may be ``None`` (H-Sup style runs have no LQ stream).

    Args:
        hq_loader: loader yielding collated dict batches of HQ patches (batch size ``batch_hq``).
        lq_loader: loader of LQ patches (batch size ``batch_lq``).
        epoch_length: iterations per epoch.
    """

    def __init__(self, hq_loader: Iterable | None, lq_loader: Iterable | None, epoch_length: int):
        if hq_loader is None and lq_loader is None:
            raise ValueError("TwoStreamLoader needs at least one of hq_loader and lq_loader.")
        if epoch_length < 1:
            raise ValueError(f"epoch_length must be >= 1, got {epoch_length}.")
        self.hq_loader, self.lq_loader, self.epoch_length = hq_loader, lq_loader, int(epoch_length)
        self._hq_iter: Iterator | None = None
        self._lq_iter: Iterator | None = None

    def __len__(self) -> int:
        return self.epoch_length

    @staticmethod
    def _next(loader: Iterable, it: Iterator | None) -> tuple[Any, Iterator]:
        if it is not None:
            try:
                return next(it), it
            except StopIteration:
                pass
        it = iter(loader)
        try:
            return next(it), it
        except StopIteration as exc:
            raise ValueError("a TwoStreamLoader stream is empty: check the HQ/LQ split of the datalist.") from exc

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for _ in range(self.epoch_length):
            parts = []
            if self.hq_loader is not None:
                hq, self._hq_iter = self._next(self.hq_loader, self._hq_iter)
                hq["is_hq"] = torch.ones(len(hq["image"]), dtype=torch.bool)
                parts.append(hq)
            if self.lq_loader is not None:
                lq, self._lq_iter = self._next(self.lq_loader, self._lq_iter)
                lq["is_hq"] = torch.zeros(len(lq["image"]), dtype=torch.bool)
                parts.append(lq)
            yield parts[0] if len(parts) == 1 else concat_batches(parts[0], parts[1])
