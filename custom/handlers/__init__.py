"""Ignite/MONAI handlers: bundle writing, label-quality monitoring, evaluation reports."""

from custom.bundle import plain_state_dict, write_bundle
from custom.handlers.bundle_writer import BundleWriter
from custom.handlers.checkpoints import best_metric_state, latest_checkpoint
from custom.handlers.coteaching_schedule import KeepRatioWarmup, LossGapHandler
from custom.handlers.label_quality import LabelQualityHandler, foreground_dice_per_sample
from custom.handlers.run_stats import RunStatsHandler
from custom.handlers.superpixel_stage import SuperpixelRefinementStage
from custom.handlers.tracking import ExecutedConfigArtifact
from custom.handlers.validation_curve import ValidationCurveHandler

__all__ = [
    "BundleWriter",
    "ExecutedConfigArtifact",
    "LabelQualityHandler",
    "RunStatsHandler",
    "SegmentationReportHandler",
    "best_metric_state",
    "foreground_dice_per_sample",
    "latest_checkpoint",
    "plain_state_dict",
    "write_bundle",
    "KeepRatioWarmup",
    "LossGapHandler",
    "SuperpixelRefinementStage",
    "ValidationCurveHandler",
]


def __getattr__(name: str):
    # the evaluation report pulls in MONAI metrics; import it on first use only
    if name == "SegmentationReportHandler":
        from custom.handlers.segmentation_report import SegmentationReportHandler

        return SegmentationReportHandler
    raise AttributeError(name)
