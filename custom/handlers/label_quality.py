"""Label-quality monitoring: how close the labels a method trains on are to the clean labels, over training.

Trainers put integer maps into ``engine.state.output``: ``noisy_label`` (what the dataset says), ``refined_label``
(what the method trains on after correction) and ``clean_label`` (known only in simulated-noise studies). The
handler accumulates the foreground Dice of both against clean on the device (one host sync per epoch) and writes
``label_quality.csv``, TensorBoard scalars and, at the end, ``label_quality.png``. Used by ALC, MTCL and SP-guided.
A resumed run (its first epoch is not epoch 1) keeps the file's rows of the epochs before it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents

from custom.distributed import is_main_process
from custom.evaluation.metrics import foreground_dice_per_sample
from custom.io import atomic_output, write_csv

__all__ = ["LabelQualityHandler", "foreground_dice_per_sample"]


class LabelQualityHandler:
    """Log the Dice of noisy and refined training labels against clean labels per epoch.

    Args:
        output_dir: folder of ``label_quality.csv`` / ``label_quality.png`` (and TensorBoard events if enabled).
        num_classes: ``C``.
        tensorboard: also write TensorBoard scalars ``label_quality/noisy_dice`` and ``label_quality/refined_dice``.
    """

    def __init__(self, output_dir: str, num_classes: int, tensorboard: bool = True):
        self.output_dir = Path(output_dir)
        self.num_classes = int(num_classes)
        self.tensorboard = tensorboard
        self.rows: list[dict] = []
        self._writer = None
        self._reset()

    def _reset(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self._count: torch.Tensor | None = None

    def attach(self, engine: Engine) -> None:
        # MONAI engines decollate the output into per-sample dicts on MODEL_COMPLETED; LOSS_COMPLETED fires
        # earlier in the iteration, while the output is still the batched dict the trainer filled
        event = IterationEvents.LOSS_COMPLETED if IterationEvents.LOSS_COMPLETED in engine._allowed_events else None
        engine.add_event_handler(event or Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def iteration_completed(self, engine: Engine) -> None:
        out = engine.state.output
        clean = out.get("clean_label") if isinstance(out, dict) else None
        if not isinstance(clean, torch.Tensor):
            return
        for name in ("noisy_label", "refined_label"):
            labels = out.get(name)
            if isinstance(labels, torch.Tensor) and labels.shape == clean.shape:
                dice = foreground_dice_per_sample(labels, clean, self.num_classes).sum()
                self._sums[name] = self._sums.get(name, 0) + dice
        n = torch.tensor(clean.shape[0], device=clean.device)
        self._count = n if self._count is None else self._count + n

    def epoch_completed(self, engine: Engine) -> None:
        if self._count is None:
            return
        count = float(self._count)  # one host sync per epoch
        if not self.rows and engine.state.epoch > 1:  # the first epoch of a resumed run: keep the earlier history
            self.rows = _read_rows(self.output_dir / "label_quality.csv", before_epoch=engine.state.epoch)
        row = {"epoch": engine.state.epoch, "iteration": engine.state.iteration}
        for name in ("noisy_label", "refined_label"):
            if name in self._sums:
                row[name.replace("_label", "_dice")] = round(float(self._sums[name]) / count, 5)
        self.rows.append(row)
        self._reset()
        if is_main_process():
            write_csv(self.rows, self.output_dir / "label_quality.csv")
            if self.tensorboard:
                self._log_tensorboard(row)
        engine.logger.info(f"label quality (vs clean): {row}")

    def _log_tensorboard(self, row: dict) -> None:
        try:
            if self._writer is None:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(log_dir=str(self.output_dir / "logs"))
        except ImportError:
            self.tensorboard = False
            return
        for key in ("noisy_dice", "refined_dice"):
            if key in row:
                self._writer.add_scalar(f"label_quality/{key}", row[key], row["iteration"])
        self._writer.flush()

    def completed(self, engine: Engine) -> None:
        if not self.rows or not is_main_process():
            return
        plot_label_quality(self.rows, self.output_dir / "label_quality.png")


def plot_label_quality(rows: list[dict], path: Path) -> Path | None:
    """PNG of noisy/refined label Dice versus iteration; ``None`` when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.2))
    its = [r["iteration"] for r in rows]
    for key, style in (("noisy_dice", "--"), ("refined_dice", "-")):
        values = [r.get(key) for r in rows]
        if any(v is not None for v in values):
            ax.plot(its, values, style, marker="o", label=key.replace("_", " "))
    ax.set_xlabel("iteration")
    ax.set_ylabel("Dice vs clean labels")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def _read_rows(path: Path, before_epoch: int) -> list[dict]:
    """The rows of an earlier ``label_quality.csv`` for epochs before ``before_epoch`` (numbers parsed); [] when
    the file is missing or unreadable (a resumed run then starts a new history)."""
    import csv

    try:
        with open(path, newline="") as f:
            raw = list(csv.DictReader(f))
    except (OSError, csv.Error):
        return []
    rows = []
    for item in raw:
        try:
            row = {"epoch": int(item["epoch"]), "iteration": int(item["iteration"])}
            row.update({k: float(v) for k, v in item.items() if k not in row and v not in (None, "")})
        except (KeyError, TypeError, ValueError):
            return []
        if row["epoch"] < before_epoch:
            rows.append(row)
    return rows
