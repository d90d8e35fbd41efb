"""Data preparation: the datalist contract, the LA / NIfTI preparation pipelines and the synthetic demo set."""

from __future__ import annotations

from custom.data.datalist import QUALITIES, SPLITS, load_datalist, read_datalist_meta, validate_datalist
from custom.data.synthetic import ensure_dataset, make_synthetic_dataset

__all__ = [
    "SPLITS",
    "QUALITIES",
    "load_datalist",
    "read_datalist_meta",
    "validate_datalist",
    "ensure_dataset",
    "make_synthetic_dataset",
]
