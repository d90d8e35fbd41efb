"""Shared fixtures: the repository root, the synthetic demo set (generated once per session), LA data location, a
small tmpfs (a full disk)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
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


@pytest.fixture
def small_tmpfs(tmp_path) -> Iterator[Callable[[str], Path]]:
    """``small_tmpfs(size)`` mounts a tmpfs of ``size`` (mount's syntax: ``"4k"``, ``"900k"``) at ``tmp_path /
    "small"`` and returns that folder: a disk that fills up, for what a failed write leaves behind. Once per test;
    unmounted after it. Needs root and mount rights: the test is skipped otherwise."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        folder = tmp_path / "small"
        folder.mkdir()
        if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                                               capture_output=True).returncode != 0:
            pytest.skip("cannot mount a small tmpfs here")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)
