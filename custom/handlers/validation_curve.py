"""The learning curve of a training run: its validation metrics per validation round, in ``validation_curve.csv``.

Attached to the validation evaluator (which MONAI's ``ValidationHandler`` runs with the trainer's epoch), it
appends one row per round: ``epoch``, ``iteration`` (``epoch * epoch_length``) and every metric of the evaluator's
``state.metrics`` (``val_mean_dice`` in this project's configs). A resumed run keeps the rows of the epochs before
the one it resumes from, so the file holds the whole curve. The benchmark harness plots it and computes the plateau
check of the protocol from it (:func:`plateau_delta`).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

from custom.distributed import is_main_process
from custom.io import write_csv

__all__ = ["ValidationCurveHandler", "read_validation_curve", "plateau_delta", "tail_mean"]

CURVE_FILE = "validation_curve.csv"


def read_validation_curve(path: str | Path) -> list[dict[str, float]]:
    """Rows of a ``validation_curve.csv`` as numbers (empty when the file does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path) as f:
        rows = []
        for raw in csv.DictReader(f):
            row = {}
            for key, value in raw.items():
                try:
                    row[key] = float(value)
                except (TypeError, ValueError):
                    continue
            rows.append(row)
    return rows


def _tail_values(
    curve: Sequence[Mapping[str, float]], total_iterations: float, metric: str, tail: float
) -> list[float]:
    """The metric of the rounds at iteration >= ``(1 - tail) * total_iterations`` (NaN rounds left out)."""
    if not 0 < tail <= 1:
        raise ValueError(f"tail must be in (0, 1], got {tail}")
    if not total_iterations > 0:
        raise ValueError(f"total_iterations must be > 0, got {total_iterations}")
    start = (1 - tail) * total_iterations
    return [
        r[metric]
        for r in curve
        if r.get("iteration", -1) >= start - 1e-9 and metric in r and not math.isnan(r[metric])
    ]


def plateau_delta(
    curve: Sequence[Mapping[str, float]], total_iterations: float, metric: str = "val_mean_dice", tail: float = 0.25
) -> float | None:
    """How much the validation metric changes over the last ``tail`` fraction of the iterations.

    The change is ``max - min`` of the metric over the rounds at iteration >= ``(1 - tail) * total_iterations``
    (the strictest reading of "changes by": every pair of rounds in the window lies within it).

    Args:
        curve: rows with ``iteration`` and ``metric`` (:func:`read_validation_curve`).
        total_iterations: iterations of the whole run.
        metric: the column.
        tail: fraction of the run at its end (0 < tail <= 1).

    Returns:
        The spread, or None with fewer than two rounds in the window.

    Raises:
        ValueError: for ``tail`` outside (0, 1] or a non-positive ``total_iterations``.
    """
    values = _tail_values(curve, total_iterations, metric, tail)
    if len(values) < 2:
        return None
    return max(values) - min(values)


def tail_mean(
    curve: Sequence[Mapping[str, float]], total_iterations: float, metric: str = "val_mean_dice", tail: float = 0.25
) -> float | None:
    """Mean of the validation metric over the rounds in the last ``tail`` fraction of the iterations.

    The figure the project's hyperparameter choices compare (a run's converged validation score, less noisy than its
    single best round on a 4-case validation split).

    Args:
        curve: rows with ``iteration`` and ``metric`` (:func:`read_validation_curve`).
        total_iterations: iterations of the whole run.
        metric: the column.
        tail: fraction of the run at its end (0 < tail <= 1).

    Returns:
        The mean, or None when no round lies in the window.

    Raises:
        ValueError: for ``tail`` outside (0, 1] or a non-positive ``total_iterations``.
    """
    values = _tail_values(curve, total_iterations, metric, tail)
    return sum(values) / len(values) if values else None


class ValidationCurveHandler:
    """Write ``<output_dir>/validation_curve.csv`` after every validation round (rank 0 only).

    Args:
        output_dir: the run's folder.
        epoch_length: trainer iterations per epoch (for the ``iteration`` column).
        resume: keep the rows already in the file for epochs before the first one validated now (a resumed run);
            False starts a new file.
    """

    def __init__(self, output_dir: str, epoch_length: int, resume: bool = False):
        if int(epoch_length) < 1:
            raise ValueError(f"epoch_length must be >= 1, got {epoch_length}")
        self.path = Path(output_dir) / CURVE_FILE
        self.epoch_length = int(epoch_length)
        self.resume = bool(resume)
        self.rows: list[dict[str, Any]] | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def completed(self, engine: Engine) -> None:
        epoch = int(engine.state.epoch)
        if self.rows is None:  # first round of this process: keep the earlier history of a resumed run
            self.rows = [r for r in read_validation_curve(self.path) if r.get("epoch", math.inf) < epoch] if (
                self.resume
            ) else []
            for r in self.rows:
                r["epoch"], r["iteration"] = int(r["epoch"]), int(r["iteration"])
        row: dict[str, Any] = {"epoch": epoch, "iteration": epoch * self.epoch_length}
        for name, value in engine.state.metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                row[name] = round(float(value), 6)
            elif isinstance(value, torch.Tensor) and value.numel() == 1:
                row[name] = round(float(value), 6)
        self.rows = [r for r in self.rows if r["epoch"] != epoch] + [row]
        if is_main_process():
            fields = list(dict.fromkeys(k for r in self.rows for k in r))
            write_csv(self.rows, self.path, fieldnames=fields)
