"""An ignite handler that scores every evaluated case and writes a per-case CSV and a summary JSON.

Attach it to a MONAI ``SupervisedEvaluator`` (``val_handlers=[SegmentationReportHandler(...)]`` or
``handler.attach(evaluator)``). Each evaluation run (one evaluator epoch) produces, in
``output_dir``:

- ``{prefix}metrics_per_case.csv``: ``case_id`` and, for every metric of
  :data:`custom.evaluation.metrics.METRIC_NAMES`, one column per foreground class and the
  class mean (``dice_1``, ..., ``dice_mean``, ``hd95_mm_1``, ...);
- ``{prefix}metrics_summary.json``: ``{column: {"mean", "std", "count"}}`` over cases, NaN
  ignored (written as ``null`` when no value exists).

Both files are replaced atomically at the end of each run, and the mean over cases of
``dice_mean`` goes to ``engine.state.metrics[f"{prefix}mean_dice_report"]``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from monai.data import MetaTensor, decollate_batch

from custom.evaluation.metrics import (
    METRIC_NAMES,
    class_labels,
    distance_undefined_reason,
    segmentation_metrics,
    summarise,
    undefined_distances_note,
)
from custom.io import write_csv, write_json

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["SegmentationReportHandler", "samples_from_state", "spacing_from_meta_tensor"]

logger = logging.getLogger(__name__)


def samples_from_state(batch: Any, output: Any) -> list[tuple[Mapping, Mapping]]:
    """Pair each sample's input dict with its output dict, whatever the evaluator's ``decollate``.

    With ``decollate=True`` (MONAI's default, needed by dictionary post-transforms) ignite's
    ``engine.state.batch`` and ``engine.state.output`` are lists of per-sample dicts; with
    ``decollate=False`` they are dicts of batched tensors, which are decollated here.

    Args:
        batch: ``engine.state.batch`` (list of dicts, dict, or anything else, then ignored).
        output: ``engine.state.output`` (list of dicts or a dict of batched values).

    Returns:
        ``[(sample_batch, sample_output), ...]``, one pair per sample.

    Raises:
        ValueError: when ``output`` is neither a list of dicts nor a dict.
    """
    if isinstance(output, Mapping):
        output = decollate_batch(dict(output), detach=True)
        batch = decollate_batch(dict(batch), detach=True) if isinstance(batch, Mapping) else None
    if not isinstance(output, (list, tuple)) or not all(isinstance(o, Mapping) for o in output):
        raise ValueError(
            f"engine.state.output must be a dict or a list of per-sample dicts, got {type(output).__name__}."
        )
    if not isinstance(batch, (list, tuple)) or len(batch) != len(output):
        batch = [{}] * len(output)
    return [(b if isinstance(b, Mapping) else {}, o) for b, o in zip(batch, output)]


def spacing_from_meta_tensor(data: Any) -> list[float] | None:
    """Voxel size along the spatial axes from a channel-first MetaTensor's affine, else ``None``.

    The spacing is the column norm of the affine (``MetaTensor.pixdim``), so it holds after
    reorientation and resampling, i.e. it is the spacing of the grid the tensor is on.
    """
    if not isinstance(data, MetaTensor) or data.is_batch:
        return None
    pixdim = data.pixdim
    values = pixdim.tolist() if isinstance(pixdim, torch.Tensor) else list(pixdim)
    return [float(v) for v in values]


def _case_id_of(sample_batch: Mapping, sample_output: Mapping, key: str, label: Any, index: int) -> str:
    for source in (sample_batch, sample_output):
        value = source.get(key)
        if value is not None:
            if isinstance(value, torch.Tensor):
                value = value.item() if value.numel() == 1 else value.tolist()
            if isinstance(value, (list, tuple)) and len(value) == 1:
                value = value[0]
            return str(value)
    if isinstance(label, MetaTensor) and label.meta.get("filename_or_obj"):
        name = os.path.basename(str(label.meta["filename_or_obj"]))
        for suffix in (".nii.gz", ".nii"):
            if name.endswith(suffix):
                return name[: -len(suffix)]
        return name
    return f"case_{index:04d}"


def _json_safe(value: Any) -> Any:
    # strict JSON has no NaN: missing statistics are written as null
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Mapping):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


def _distributed_rank_and_size() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class SegmentationReportHandler:
    """Per-case Dice/Jaccard/HD95/ASD of an evaluator run, saved as CSV + JSON (section 4).

    On every ``ITERATION_COMPLETED`` each sample's prediction (``output[pred_key]``: logits or
    probabilities ``(C, H, W, D)``, or a discrete label map ``(1, H, W, D)``, e.g. after
    ``AsDiscreted(argmax=True)``) is scored against its label (``output[label_key]``, falling
    back to ``batch[label_key]``; ``(1, H, W, D)`` label map or ``(C, H, W, D)`` one-hot) with
    :func:`custom.evaluation.metrics.segmentation_metrics`. The spacing for the mm distances is
    read from the label's MetaTensor affine (falling back to the prediction's, then 1 mm with a
    warning). The case id is ``batch[case_id_key]``, else the label's file name, else a counter.

    Under ``torch.distributed`` the rows of all ranks are gathered (duplicates from padded
    samplers are dropped by case id) and only rank 0 writes files; every rank gets the metric.

    Args:
        output_dir: folder for the CSV and JSON files (created when missing).
        num_classes: number of classes including the background.
        class_names: names of the classes for the column names, see
            :func:`custom.evaluation.metrics.class_labels`; default the class indices.
        pred_key: key of the prediction in ``engine.state.output``.
        label_key: key of the reference label.
        case_id_key: key of the case identifier in the batch.
        spacing_from_meta: read the spacing from the MetaTensor affine; ``False`` uses 1 mm, so the
            ``*_mm`` columns equal the ``*_vox`` columns.
        prefix: prepended to the file names and to the metric name, to tell several reports apart
            (e.g. ``"test_"``).

    Raises:
        ValueError: for a bad ``num_classes``, ``class_names`` or empty keys.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        pred_key: str = "pred",
        label_key: str = "label",
        case_id_key: str = "case_id",
        spacing_from_meta: bool = True,
        prefix: str = "",
    ) -> None:
        self.class_names = class_labels(num_classes, class_names)
        for name, key in (("pred_key", pred_key), ("label_key", label_key), ("case_id_key", case_id_key)):
            if not isinstance(key, str) or not key:
                raise ValueError(f"{name} must be a non-empty string, got {key!r}.")
        self.output_dir = Path(output_dir)
        self.num_classes = int(num_classes)
        self.pred_key = pred_key
        self.label_key = label_key
        self.case_id_key = case_id_key
        self.spacing_from_meta = bool(spacing_from_meta)
        self.prefix = str(prefix)
        self.rows: list[dict[str, Any]] = []
        self.summary: dict[str, dict[str, float | int]] = {}
        self._warned_spacing = False

    @property
    def csv_path(self) -> Path:
        return self.output_dir / f"{self.prefix}metrics_per_case.csv"

    @property
    def json_path(self) -> Path:
        return self.output_dir / f"{self.prefix}metrics_summary.json"

    @property
    def metric_name(self) -> str:
        return f"{self.prefix}mean_dice_report"

    @property
    def fieldnames(self) -> list[str]:
        names = [*self.class_names, "mean"]
        return ["case_id"] + [f"{metric}_{name}" for metric in METRIC_NAMES for name in names] + [
            "distance_undefined"
        ]

    def attach(self, engine: Engine) -> None:
        """Register the handler on ``engine`` (EPOCH_STARTED, ITERATION_COMPLETED, EPOCH_COMPLETED)."""
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def reset(self, engine: Engine | None = None) -> None:
        """Forget the rows of the previous run."""
        self.rows = []
        self.summary = {}

    def _spacing(self, label: Any, pred: Any) -> list[float] | None:
        if not self.spacing_from_meta:
            return None
        spacing = spacing_from_meta_tensor(label) or spacing_from_meta_tensor(pred)
        if spacing is None and not self._warned_spacing:
            logger.warning("SegmentationReportHandler: no MetaTensor affine on the label; using 1 mm spacing.")
            self._warned_spacing = True
        return spacing

    def score_sample(self, sample_batch: Mapping, sample_output: Mapping, index: int = 0) -> dict[str, Any]:
        """Metrics row (``case_id`` first) of one sample given its input and output dicts."""
        if self.pred_key not in sample_output:
            raise ValueError(f"no '{self.pred_key}' in engine.state.output (keys: {sorted(map(str, sample_output))}).")
        pred = sample_output[self.pred_key]
        label = sample_output.get(self.label_key, sample_batch.get(self.label_key))
        if label is None:
            raise ValueError(f"no '{self.label_key}' in engine.state.output or engine.state.batch.")
        case_id = _case_id_of(sample_batch, sample_output, self.case_id_key, label, index)
        try:
            metrics = segmentation_metrics(
                pred, label, self.num_classes, spacing=self._spacing(label, pred), class_names=self.class_names
            )
        except ValueError as exc:
            # e.g. a prediction inverted to the original grid scored against a resampled label
            raise ValueError(f"case {case_id}: {exc}") from exc
        # why HD95/ASD are NaN (empty prediction or label), for the summary line
        reason = distance_undefined_reason(pred, label, self.num_classes, class_names=self.class_names)
        return {"case_id": case_id, **metrics, "distance_undefined": reason}

    def iteration_completed(self, engine: Engine) -> None:
        """Score every sample of the current iteration."""
        for sample_batch, sample_output in samples_from_state(engine.state.batch, engine.state.output):
            self.rows.append(self.score_sample(sample_batch, sample_output, index=len(self.rows)))

    def _gathered_rows(self) -> list[dict[str, Any]]:
        _, world_size = _distributed_rank_and_size()
        rows = self.rows
        if world_size > 1:
            gathered: list[Any] = [None] * world_size
            torch.distributed.all_gather_object(gathered, self.rows)
            rows = [row for part in gathered for row in part]
        # distributed samplers pad the last batch with repeated cases: keep the first of each id
        unique: dict[str, dict[str, Any]] = {}
        for row in rows:
            unique.setdefault(row["case_id"], row)
        return list(unique.values())

    def epoch_completed(self, engine: Engine) -> None:
        """Summarise the run, store the mean Dice in ``engine.state.metrics`` and (rank 0) write files."""
        rows = self._gathered_rows()
        self.rows = rows
        self.summary = summarise(rows)
        dice = self.summary.get("dice_mean", {"mean": math.nan, "std": math.nan, "count": 0})
        engine.state.metrics[self.metric_name] = dice["mean"]

        rank, _ = _distributed_rank_and_size()
        if rank != 0:
            return
        write_csv(rows, self.csv_path, fieldnames=self.fieldnames)
        write_json(_json_safe(self.summary), self.json_path)
        hd95 = self.summary.get("hd95_mm_mean", {"mean": math.nan})
        asd = self.summary.get("asd_mm_mean", {"mean": math.nan})
        note = undefined_distances_note(rows)
        engine.logger.info(
            f"{self.prefix}segmentation report: {len(rows)} cases, Dice {dice['mean']:.4f} +- {dice['std']:.4f}, "
            f"HD95 {hd95['mean']:.2f} mm, ASD {asd['mean']:.2f} mm{f' ({note})' if note else ''} -> {self.csv_path}"
        )
