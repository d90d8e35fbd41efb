"""Inference: batch segmentation of a folder of NIfTI images (the bundles' ``scripts/folder_inference.py``)."""

from __future__ import annotations

from .folder_inference import (
    REPORT_COLUMNS,
    SetAsideStrayKeysd,
    default_inference_transforms,
    infer_folder,
    list_nifti_files,
)

__all__ = ["REPORT_COLUMNS", "SetAsideStrayKeysd", "default_inference_transforms", "infer_folder", "list_nifti_files"]
