"""Evaluation: per-case segmentation metrics and their summary over cases."""

from __future__ import annotations

from .metrics import METRIC_NAMES, class_labels, segmentation_metrics, summarise

__all__ = ["METRIC_NAMES", "class_labels", "segmentation_metrics", "summarise"]
