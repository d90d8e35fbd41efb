"""Shared fixtures: the repository root, the synthetic demo set (generated once per session), LA data location."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# tiny test volumes: one intra-op thread is faster than two fighting over 2 cores (and is inherited by the
# subprocesses the tests start)
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
LA_H5_DIR = REPO_ROOT.parent / "shared" / "data" / "la2018_h5"
META_SCHEMA = REPO_ROOT.parent / "shared" / "data" / "monai" / "meta_schema_20240725.json"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def demo_dataset(tmp_path_factory) -> Path:
    """A small binary synthetic dataset (datalist path), shared by the smoke tests."""
    from custom.data import make_synthetic_dataset

    out = tmp_path_factory.mktemp("demo") / "data"
    return Path(make_synthetic_dataset(out, num_cases=8, shape=(40, 40, 32), num_classes=2, val_count=1,
                                       test_count=2, seed=0))


@pytest.fixture(scope="session")
def demo_dataset_3class(tmp_path_factory) -> Path:
    from custom.data import make_synthetic_dataset

    out = tmp_path_factory.mktemp("demo3") / "data"
    return Path(make_synthetic_dataset(out, num_cases=8, shape=(40, 40, 32), num_classes=3, val_count=1,
                                       test_count=2, seed=0))


@pytest.fixture(scope="session")
def la_h5_dir() -> Path:
    if not (LA_H5_DIR / "train.list").is_file():
        pytest.skip(f"LA data not found at {LA_H5_DIR} (it lives in ../shared/data/la2018_h5 beside the repo)")
    return LA_H5_DIR
