"""The co-teaching family's epoch-level schedule as ignite handlers (methods.md §2.3, Eq. 5 of SP-guided).

* :class:`KeepRatioWarmup` (§2.3): at every epoch start, ``R_c = 1 - forget rate``, the forget rate ramping
  linearly from 0 (epoch 1) to ``1 - R_target`` over ``warmup_epochs`` (5); sets ``trainer.keep_ratio`` from
  ``trainer.target_keep_ratio`` (any :class:`custom.engines.coteaching.CoTeachingTrainer`).
* :class:`LossGapHandler` (Eq. 5): averages the per-step ``loss_selected`` / ``loss_unselected`` of the trainer
  over the epoch on the device (one host sync per epoch), ``G = unselected - selected``, feeds
  :class:`custom.selection.small_loss.LossGapTracker` and writes ``loss_gap.csv``; under ``torch.distributed`` the
  gap is averaged over ranks. SP-guided's refinement stage (:mod:`custom.handlers.superpixel_stage`) acts on it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

from custom.distributed import is_main_process, mean_over_ranks
from custom.io import write_csv
from custom.selection.small_loss import LossGapTracker, forget_rate_schedule

__all__ = ["warmup_keep_ratio", "KeepRatioWarmup", "LossGapHandler"]


def warmup_keep_ratio(
    epoch: int, target_keep_ratio: Sequence[float] | torch.Tensor, warmup_epochs: int = 5
) -> torch.Tensor:
    """``R_c`` at a 0-based ``epoch``: ``1 - forget_rate_schedule(epoch, 1 - R_target, warmup_epochs)``.

    Returns:
        float64 CPU tensor ``(C,)``: 1 at epoch 0, ``R_target`` from ``warmup_epochs`` on.
    """
    target = torch.as_tensor(target_keep_ratio, dtype=torch.float64).cpu()
    forget = forget_rate_schedule(epoch, 1.0 - target, warmup_epochs)
    return 1.0 - torch.as_tensor(forget, dtype=torch.float64)


class KeepRatioWarmup:
    """Forget-rate warm-up: at ``EPOCH_STARTED`` set ``trainer.keep_ratio`` (see :func:`warmup_keep_ratio`).

    Args:
        warmup_epochs: ramp length in epochs (5); 0 = ``R_target`` from the first epoch.
    """

    def __init__(self, warmup_epochs: int = 5) -> None:
        if int(warmup_epochs) < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}.")
        self.warmup_epochs = int(warmup_epochs)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        engine.keep_ratio = warmup_keep_ratio(engine.state.epoch - 1, engine.target_keep_ratio, self.warmup_epochs)


class LossGapHandler:
    """Eq. 5 of SP-guided per epoch: ``G = mean loss of unselected - mean loss of selected`` (step averages).

    Reads ``loss_selected``, ``loss_unselected`` and ``selected_fraction`` (detached scalars) from
    ``engine.state.output`` (also when the engine decollated it into per-sample dicts); epochs without them are
    skipped.

    Args:
        patience: epochs without a new maximum of G that signal refinement (5).
        min_delta: an improvement must exceed the maximum by more than this.
        output_dir: folder of ``loss_gap.csv`` (``None``: no file).
    """

    def __init__(self, patience: int = 5, min_delta: float = 0.0, output_dir: str | None = None) -> None:
        self.tracker = LossGapTracker(patience=patience, min_delta=min_delta)
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.rows: list[dict[str, Any]] = []
        self._sums: torch.Tensor | None = None
        self._steps = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def iteration_completed(self, engine: Engine) -> None:
        out = engine.state.output
        if isinstance(out, Sequence) and out and isinstance(out[0], Mapping):
            out = out[0]  # decollated by the engine (``decollate=True``): the scalars are repeated per sample
        if not isinstance(out, Mapping) or "loss_selected" not in out or "loss_unselected" not in out:
            return
        parts = [out["loss_selected"], out["loss_unselected"], out.get("selected_fraction", math.nan)]
        if all(isinstance(p, torch.Tensor) for p in parts):
            values = torch.stack([p.reshape(()) for p in parts]).detach().double()  # stays on the device
        else:
            values = torch.tensor([float(p) for p in parts], dtype=torch.float64)
        self._sums = values if self._sums is None else self._sums + values
        self._steps += 1

    def epoch_completed(self, engine: Engine) -> None:
        if self._sums is None:
            return
        # the mean over ranks: every rank feeds its tracker the same gap and takes the same refinement decisions
        selected, unselected, fraction = mean_over_ranks(self._sums / self._steps).tolist()  # one host sync
        self._sums, self._steps = None, 0
        gap = unselected - selected
        self.tracker.update(gap)
        keep = getattr(engine, "keep_ratio", None)
        row = {
            "epoch": engine.state.epoch,
            "iteration": engine.state.iteration,
            "loss_selected": round(selected, 6),
            "loss_unselected": round(unselected, 6),
            "loss_gap": round(gap, 6),
            "best_gap": round(self.tracker.best, 6),
            "epochs_since_best": self.tracker.epochs_since_best,
            "selected_fraction": round(fraction, 6),
            "keep_ratio": " ".join(f"{r:.4f}" for r in keep.tolist()) if isinstance(keep, torch.Tensor) else "",
        }
        self.rows.append(row)
        engine.state.metrics["loss_gap"] = gap
        if self.output_dir is not None and is_main_process():
            write_csv(self.rows, self.output_dir / "loss_gap.csv")
        engine.logger.info(f"loss gap (Eq. 5): {row}")

    def state_dict(self) -> dict[str, Any]:
        return {"tracker": self.tracker.state_dict(), "rows": list(self.rows)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.tracker.load_state_dict(state["tracker"])
        self.rows = list(state.get("rows", []))
