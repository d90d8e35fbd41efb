"""Per-case segmentation metrics (Dice, Jaccard, HD95, ASD) and their summary over cases.

Section 4 of the methods (evaluation protocol): overlap scores and surface distances per
foreground class, the distances both in millimetres (using the voxel spacing) and in voxels
(spacing 1, to compare with papers that pass no spacing).

Empty masks (per foreground class, per case):

================================  ================  ==============
prediction / target               Dice, Jaccard     HD95, ASD
================================  ================  ==============
both non-empty                    usual value       usual value
both empty                        1.0               NaN
exactly one of them empty         0.0               NaN
================================  ================  ==============

A surface distance needs two surfaces, so it is NaN when either mask is empty; NaN values are
left out of every mean (the class mean of a case and :func:`summarise` over cases), and
:func:`summarise` reports how many values were used (``count``) so that missing distances stay
visible. A class that is absent from both masks scores a perfect Dice/Jaccard of 1.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_average_surface_distance, compute_dice, compute_hausdorff_distance, compute_iou

__all__ = [
    "METRIC_NAMES",
    "segmentation_metrics",
    "summarise",
    "class_labels",
    "foreground_dice_per_sample",
    "distance_undefined_reason",
    "undefined_distances_note",
]

#: metric names in output order; each gives the keys ``f"{name}_{class}"`` and ``f"{name}_mean"``.
METRIC_NAMES: tuple[str, ...] = ("dice", "jaccard", "hd95_mm", "asd_mm", "hd95_vox", "asd_vox")


def foreground_dice_per_sample(labels_a: torch.Tensor, labels_b: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-sample Dice of two integer label maps, averaged over the foreground classes ``1..C-1``, on the device.

    The empty-mask convention of this module: a class absent from both maps of a sample scores 1 (so a sample with
    no foreground in either map scores 1). One implementation for the training-time label comparisons: the
    label-quality handler (noisy / refined labels against clean ones) and ALC's agreement gate.

    Args:
        labels_a / labels_b: integer labels ``(B, 1, *S)``.
        num_classes: ``C >= 2``.

    Returns:
        ``(B,)`` float in ``[0, 1]``, on the labels' device (no host sync).
    """
    if labels_a.shape != labels_b.shape or labels_a.ndim < 3 or labels_a.shape[1] != 1:
        raise ValueError(
            f"label maps must both be (B, 1, *S), got {tuple(labels_a.shape)} and {tuple(labels_b.shape)}."
        )
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}.")
    batch = labels_a.shape[0]
    classes = torch.arange(1, num_classes, device=labels_a.device).view(1, -1, 1)
    a = labels_a.reshape(batch, 1, -1) == classes  # (B, C-1, V)
    b = labels_b.reshape(batch, 1, -1) == classes
    overlap = (a & b).sum(-1).float()
    total = (a.sum(-1) + b.sum(-1)).float()
    dice = torch.where(total > 0, 2 * overlap / total.clamp_min(1), torch.ones_like(total))
    return dice.mean(-1)


def class_labels(num_classes: int, class_names: Sequence[str] | None = None) -> list[str]:
    """Names of the foreground classes ``1..num_classes-1`` used in metric keys.

    Args:
        num_classes: number of classes including the background (>= 2).
        class_names: either ``num_classes - 1`` foreground names, or ``num_classes`` names whose
            first (background) entry is ignored. ``None`` uses the class indices ``"1"``, ``"2"``...

    Raises:
        ValueError: when ``num_classes < 2``, the number of names fits neither form, or a name is
            empty, repeated or ``"mean"`` (which would collide with the class-mean key).
    """
    if not isinstance(num_classes, numbers.Integral) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2 (background included), got {num_classes!r}.")
    if class_names is None:
        return [str(c) for c in range(1, num_classes)]
    names = [str(n) for n in class_names]
    if len(names) == num_classes:
        names = names[1:]
    if len(names) != num_classes - 1:
        raise ValueError(
            f"class_names must hold {num_classes - 1} foreground names or {num_classes} names "
            f"(background first), got {len(names)}."
        )
    if any(not n for n in names) or len(set(names)) != len(names) or "mean" in names:
        raise ValueError(f"class_names must be non-empty, unique and not 'mean', got {names}.")
    return names


def _spacing_tuple(spacing: float | Sequence[float] | np.ndarray | torch.Tensor | None, spatial_dims: int) -> tuple:
    if spacing is None:
        return (1.0,) * spatial_dims
    if isinstance(spacing, torch.Tensor):
        spacing = spacing.detach().cpu().numpy()
    values = np.atleast_1d(np.asarray(spacing, dtype=np.float64)).ravel()
    if values.size == 1:
        values = np.repeat(values, spatial_dims)
    if values.size != spatial_dims or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(
            f"spacing must be a positive number or {spatial_dims} positive numbers, got {np.asarray(spacing).tolist()}."
        )
    return tuple(float(v) for v in values)


def _to_label_map(data: Any, num_classes: int, spatial_dims: int, name: str) -> torch.Tensor:
    """Return an integer label map of shape ``(*S)`` from ``(*S)``, ``(1, *S)`` or ``(C, *S)`` input."""
    if isinstance(data, np.ndarray):
        data = torch.from_numpy(np.ascontiguousarray(data))
    if not isinstance(data, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor or numpy array, got {type(data).__name__}.")
    data = data.detach()
    if hasattr(data, "as_tensor"):  # MetaTensor: plain tensor ops are enough here
        data = data.as_tensor()
    if data.ndim == spatial_dims + 1:
        if data.shape[0] == 1:
            data = data[0]
        elif data.shape[0] == num_classes:
            # channel-first scores, probabilities or one-hot: the class is the largest channel
            return data.argmax(dim=0)
        else:
            raise ValueError(
                f"{name} has {data.shape[0]} channels; expected 1 (label map) or num_classes={num_classes} "
                f"(shape {tuple(data.shape)})."
            )
    elif data.ndim != spatial_dims:
        raise ValueError(
            f"{name} must have shape (*S), (1, *S) or (C, *S) with {spatial_dims} spatial dims, "
            f"got {tuple(data.shape)}."
        )
    if data.is_floating_point():
        if not bool(torch.all(data == torch.round(data))):
            raise ValueError(f"{name} is a single-channel map with non-integer values; expected class labels.")
    labels = data.long()
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"{name} holds labels in [{int(labels.min())}, {int(labels.max())}], outside [0, {num_classes - 1}]."
        )
    return labels


def segmentation_metrics(
    pred: torch.Tensor | np.ndarray,
    target: torch.Tensor | np.ndarray,
    num_classes: int,
    spacing: float | Sequence[float] | np.ndarray | torch.Tensor | None = None,
    class_names: Sequence[str] | None = None,
    spatial_dims: int = 3,
) -> dict[str, float]:
    """Dice, Jaccard, HD95 and ASD of one case, per foreground class and averaged over classes.

    Computed with MONAI's functional metrics on one-hot tensors: ``compute_dice``,
    ``compute_iou``, ``compute_hausdorff_distance(percentile=95)`` and the symmetric
    ``compute_average_surface_distance``, the distances once with ``spacing`` (mm) and once with
    unit spacing (voxels). Empty masks are handled as in the module docstring.

    Args:
        pred: the prediction of one case (no batch dimension), either an integer label map of
            shape ``(H, W, D)`` or ``(1, H, W, D)``, or channel-first scores of shape
            ``(C, H, W, D)`` with ``C == num_classes`` (logits, probabilities or one-hot: the
            argmax over channels is taken).
        target: the reference, same accepted forms as ``pred``; its spatial shape must match.
        num_classes: number of classes including the background (class 0, never scored).
        spacing: voxel size in mm along each spatial axis, in array axis order (``(H, W, D)``);
            one number for isotropic voxels; ``None`` means 1 mm (then mm equals voxels).
        class_names: names used in the keys, see :func:`class_labels`.
        spatial_dims: number of spatial dimensions (3 for volumes, 2 for images).

    Returns:
        ``{f"{metric}_{class}": value}`` for every metric in :data:`METRIC_NAMES` and every
        foreground class, plus ``f"{metric}_mean"``, the NaN-ignoring mean over classes (NaN when
        all classes are NaN). Values are Python floats.

    Raises:
        ValueError: for a bad ``num_classes``, ``spacing`` or ``class_names``, for inputs whose
            shapes are not accepted or differ, and for labels outside ``[0, num_classes)``.
    """
    names = class_labels(num_classes, class_names)
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
    spacing_mm = _spacing_tuple(spacing, spatial_dims)
    pred_labels = _to_label_map(pred, num_classes, spatial_dims, "pred")
    target_labels = _to_label_map(target, num_classes, spatial_dims, "target").to(pred_labels.device)
    if pred_labels.shape != target_labels.shape:
        raise ValueError(
            f"pred and target spatial shapes differ: {tuple(pred_labels.shape)} vs {tuple(target_labels.shape)}."
        )

    # one-hot (1, C, *S) without the Python loop over classes
    classes = torch.arange(num_classes, device=pred_labels.device).view(num_classes, *([1] * spatial_dims))
    pred_onehot = (pred_labels.unsqueeze(0) == classes).unsqueeze(0).double()
    target_onehot = (target_labels.unsqueeze(0) == classes).unsqueeze(0).double()

    spatial_axes = tuple(range(2, 2 + spatial_dims))
    both_present = ((pred_onehot.sum(spatial_axes) > 0) & (target_onehot.sum(spatial_axes) > 0))[0, 1:]

    values: dict[str, torch.Tensor] = {
        "dice": compute_dice(pred_onehot, target_onehot, include_background=False, ignore_empty=False)[0],
        "jaccard": compute_iou(pred_onehot, target_onehot, include_background=False, ignore_empty=False)[0],
    }
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=pred_onehot.device)
    with warnings.catch_warnings():
        # empty masks are expected (absent classes) and are turned into NaN below; MONAI 1.6 also
        # warns about its own internal use of a deprecated argument
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", FutureWarning)
        for unit, unit_spacing in (("mm", spacing_mm), ("vox", None)):
            hd95 = compute_hausdorff_distance(
                pred_onehot, target_onehot, include_background=False, percentile=95, spacing=unit_spacing
            )[0]
            asd = compute_average_surface_distance(
                pred_onehot, target_onehot, include_background=False, symmetric=True, spacing=unit_spacing
            )[0]
            values[f"hd95_{unit}"] = torch.where(both_present, hd95.to(nan), nan)
            values[f"asd_{unit}"] = torch.where(both_present, asd.to(nan), nan)

    result: dict[str, float] = {}
    for metric in METRIC_NAMES:
        per_class = values[metric].double().cpu().numpy()
        for name, value in zip(names, per_class):
            result[f"{metric}_{name}"] = float(value)
        finite = per_class[~np.isnan(per_class)]
        result[f"{metric}_mean"] = float(finite.mean()) if finite.size else math.nan
    return result


def distance_undefined_reason(
    pred: torch.Tensor | np.ndarray,
    target: torch.Tensor | np.ndarray,
    num_classes: int,
    spatial_dims: int = 3,
    class_names: Sequence[str] | None = None,
) -> str:
    """Why the surface distances of a case are NaN, per foreground class: ``""`` when every foreground class is in
    both masks, else e.g. ``"left_atrium: empty prediction"`` (``; ``-joined over classes; the other reasons are
    ``empty label`` and ``both empty``).

    Args:
        pred, target: as in :func:`segmentation_metrics` (label maps or one-hot/probabilities).
        num_classes: number of classes including the background.
        spatial_dims: 2 or 3.
        class_names: as in :func:`segmentation_metrics`.
    """
    names = class_labels(num_classes, class_names)
    pred_labels = _to_label_map(pred, num_classes, spatial_dims, "pred")
    target_labels = _to_label_map(target, num_classes, spatial_dims, "target").to(pred_labels.device)
    pred_counts = torch.bincount(pred_labels.reshape(-1).long(), minlength=num_classes)
    target_counts = torch.bincount(target_labels.reshape(-1).long(), minlength=num_classes)
    reasons = []
    for index, name in enumerate(names, start=1):
        in_pred, in_target = bool(pred_counts[index] > 0), bool(target_counts[index] > 0)
        if not (in_pred and in_target):
            why = "both empty" if not (in_pred or in_target) else ("empty prediction" if in_target else "empty label")
            reasons.append(f"{name}: {why}")
    return "; ".join(reasons)


def undefined_distances_note(rows: Sequence[Mapping[str, Any]], column: str = "hd95_mm_mean",
                             reason_key: str = "distance_undefined") -> str:
    """How many cases have no value in ``column`` and why, for a summary line: ``""`` when every case has one, else
    e.g. ``"19 of 20 undefined: empty prediction"`` or ``"3 of 20 undefined: 2 empty prediction, 1 empty label"``.

    The reasons come from each row's ``reason_key`` (:func:`distance_undefined_reason`), class names left out;
    ``unknown`` when a row has none.
    """
    undefined = [row for row in rows if not _is_number(row.get(column)) or math.isnan(float(row[column]))]
    if not undefined:
        return ""
    counts: dict[str, int] = {}
    for row in undefined:
        text = str(row.get(reason_key) or "")
        reasons = sorted({part.split(": ", 1)[-1] for part in text.split("; ") if part}) or ["unknown"]
        key = " and ".join(reasons)
        counts[key] = counts.get(key, 0) + 1
    if len(counts) == 1:
        why = next(iter(counts))
    else:
        why = ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    return f"{len(undefined)} of {len(rows)} undefined: {why}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (numbers.Real, np.number)) and not isinstance(value, (bool, np.bool_))


def summarise(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float | int]]:
    """Mean, standard deviation and count of every numeric column over cases, ignoring NaN.

    Args:
        rows: one mapping per case, e.g. ``{"case_id": "a", **segmentation_metrics(...)}``.
            Non-numeric values (case ids, paths) and booleans are skipped.

    Returns:
        ``{column: {"mean": m, "std": s, "count": n}}`` in first-seen column order, where ``n`` is
        the number of non-NaN values, ``s`` the population standard deviation (``ddof=0``, as
        ``numpy.std``), and ``m = s = NaN`` when ``n == 0``.
    """
    columns: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            if _is_number(value):
                columns.setdefault(key, []).append(float(value))
    summary: dict[str, dict[str, float | int]] = {}
    for key, column in columns.items():
        array = np.asarray(column, dtype=np.float64)
        array = array[~np.isnan(array)]
        count = int(array.size)
        summary[key] = {
            "mean": float(array.mean()) if count else math.nan,
            "std": float(array.std()) if count else math.nan,
            "count": count,
        }
    return summary
