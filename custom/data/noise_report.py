"""The noise report of a prepared dataset: ``noise_report.csv`` rows, the datalist's ``noise_check`` and the log.

``noise_report.csv`` has one row per training case: ``case_id, quality, noise, params`` (JSON of the kept draw),
``noisy_dice`` (mean over the foreground classes), ``dice_<c>_<name>`` per foreground class (blank where the class
is in neither map), ``lost_classes`` (JSON list, classes of the clean label missing from the kept noisy label),
``attempts`` (draws made; 0 for a clean label), ``rejected_draws`` (JSON, the draws that lost a class and why),
``size_mm`` / ``size_voxels`` (JSON, per axis: what the simulator applied, e.g. the MTCL box side; see
:func:`custom.noise.applied_sizes`). The summary line states the Dice and the lost count per class.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "REPORT_COLUMNS",
    "CHECK_COLUMNS",
    "NO_CHECK",
    "json_ready",
    "dice_columns",
    "report_row",
    "progress_text",
    "noise_check_summary",
    "summary_lines",
]

REPORT_COLUMNS = ["case_id", "quality", "noise", "params", "noisy_dice"]
CHECK_COLUMNS = ["lost_classes", "attempts", "rejected_draws", "size_mm", "size_voxels"]
# the lost-class check of a case whose label was kept clean
NO_CHECK: Mapping[str, Any] = {"lost": (), "attempts": 0, "rejected": (), "size_mm": None, "size_voxels": None}


def json_ready(value: Any) -> Any:
    # noise parameters may hold numpy scalars/arrays; make them JSON-friendly and stable
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def _describe_params(params: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items() if k != "noise" and not isinstance(v, (list, dict)))


def dice_columns(labels: Mapping[str, str], num_classes: int) -> list[str]:
    # one column per foreground class, named by index and a file-name-safe form of the class name
    columns = []
    for c in range(1, num_classes):
        slug = re.sub(r"[^0-9A-Za-z]+", "_", str(labels.get(str(c), ""))).strip("_")
        columns.append(f"dice_{c}_{slug}" if slug else f"dice_{c}")
    return columns


def _sizes_text(size_mm: Any, size_voxels: Any) -> str:
    # short per-case form for the progress line, e.g. "size=[3.125, 3.125, 3.125] mm = [5, 5, 5] vox"
    if size_voxels is None:
        return ""
    return f"size={size_mm} mm = {size_voxels} vox" if size_mm is not None else f"size={size_voxels} vox"


def _class_summary(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], labels: Mapping[str, str]) -> dict:
    """Per foreground class over the LQ rows: mean Dice (where the class is in either map), lost and redrawn
    counts. Keys are the class indices as strings."""
    lq = [row for row in rows if row["quality"] == "lq"]
    summary = {}
    for c, column in enumerate(columns, start=1):
        values = [float(row[column]) for row in lq if row[column] != ""]
        summary[str(c)] = {
            "name": str(labels.get(str(c), f"class_{c}")),
            "mean_noisy_dice_lq": round(float(np.mean(values)), 6) if values else None,
            "lq_cases_lost": sum(c in row["_lost"] for row in lq),
            "lq_cases_redrawn": sum(any(c in r["lost"] for r in row["_rejected"]) for row in lq),
        }
    return summary


def _per_class_text(noise_check: Mapping[str, Any]) -> str:
    # "per class (LQ noisy-vs-clean Dice, LQ cases that lost the class): heart 0.8123, lost 0; vessel 0.6012, lost 1"
    parts = []
    for info in noise_check["per_class"].values():
        dice = "n/a" if info["mean_noisy_dice_lq"] is None else f"{info['mean_noisy_dice_lq']:.4f}"
        parts.append(f"{info['name']} {dice}, lost {info['lq_cases_lost']}")
    return "per class (LQ noisy-vs-clean Dice, LQ cases that lost the class): " + "; ".join(parts)


def _on_empty_text(noise_check: Mapping[str, Any], lq_cases: int) -> str:
    redrawn, kept = noise_check["redrawn_cases"], noise_check["cases_with_lost_class"]
    text = (
        f"lost-class check (--on-empty {noise_check['on_empty']}): {len(redrawn)} of {lq_cases} LQ cases redrawn "
        f"({noise_check['rejected_draws']} draws rejected), {len(kept)} kept with a lost class"
    )
    per_class = noise_check["per_class"].values()
    details = [f"{i['name']}: {i['lq_cases_redrawn']} redrawn" for i in per_class if i["lq_cases_redrawn"]]
    if details:
        text += " (" + ", ".join(details) + ")"
    if kept:
        text += f"; kept: {', '.join(kept)}"
    return text


def report_row(
    case_id: str,
    quality: str,
    noise: str,
    params: Mapping[str, Any],
    dice: float,
    per_class: Sequence[float | None],
    columns: Sequence[str],
    check: Mapping[str, Any],
) -> dict[str, Any]:
    """One ``noise_report.csv`` row; the keys starting with ``_`` hold the lost classes and rejected draws as
    objects for :func:`noise_check_summary` and are not written."""
    return {
        "case_id": case_id,
        "quality": quality,
        "noise": noise,
        "params": json.dumps(params, sort_keys=True),
        "noisy_dice": f"{dice:.6f}",
        **{col: "" if d is None else f"{d:.6f}" for col, d in zip(columns, per_class)},
        "lost_classes": json.dumps(check["lost"]),
        "attempts": check["attempts"],
        "rejected_draws": json.dumps(check["rejected"], sort_keys=True),
        "size_mm": "" if check["size_mm"] is None else json.dumps(check["size_mm"]),
        "size_voxels": "" if check["size_voxels"] is None else json.dumps(check["size_voxels"]),
        "_lost": check["lost"],
        "_rejected": check["rejected"],
    }


def progress_text(quality: str, noise: str, params: Mapping[str, Any], check: Mapping[str, Any], dice: float) -> str:
    """The progress line's status of a training case, e.g.
    ``lq  mtcl  r_max=7  redrawn: draw 2 kept  noisy_dice=0.812``."""
    redrawn = f"redrawn: draw {check['attempts']} kept" if check["rejected"] else ""
    lost = f"LOST {check['lost']}" if check["lost"] else ""
    parts = (
        quality,
        noise,
        _describe_params(params),
        _sizes_text(check["size_mm"], check["size_voxels"]),
        redrawn,
        lost,
        f"noisy_dice={dice:.3f}",
    )
    return "  ".join(part for part in parts if part)


def noise_check_summary(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    labels: Mapping[str, str],
    on_empty: str,
    max_attempts: int,
) -> dict[str, Any]:
    """The datalist's ``noise_check``: the lost-class policy, per class the LQ mean Dice and the numbers of LQ cases
    that lost the class / were redrawn for it, and the redrawn cases and cases kept with a lost class."""
    return {
        "on_empty": on_empty,
        "max_attempts": int(max_attempts),
        "per_class": _class_summary(rows, columns, labels),
        "redrawn_cases": [row["case_id"] for row in rows if row["_rejected"]],
        "rejected_draws": sum(len(row["_rejected"]) for row in rows),
        "cases_with_lost_class": [row["case_id"] for row in rows if row["_lost"]],
    }


def summary_lines(
    counts: Mapping[str, int], mean_lq: float | None, lq_cases: int, noise_check: Mapping[str, Any]
) -> list[str]:
    """The closing log lines: the split sizes, the LQ noisy Dice overall and per class, the lost-class check."""
    summary = ", ".join(f"{k} {v}" for k, v in counts.items())
    if mean_lq is None:
        return [f"{summary}; no LQ cases"]
    return [
        f"{summary}; mean noisy Dice on the {lq_cases} LQ cases: {mean_lq:.4f}; {_per_class_text(noise_check)}",
        _on_empty_text(noise_check, lq_cases),
    ]
