"""Resume with a cut-short newest checkpoint (issue 19): it is named and the previous valid one is used."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from custom.errors import PREFIX
from custom.handlers import latest_checkpoint
from custom.io import DataError

REPO_ROOT = Path(__file__).resolve().parents[2]


def _save(path: Path, value: float) -> None:
    torch.save({"w": torch.full((64,), value)}, path)


def _truncate(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def test_truncated_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    older, newer = tmp_path / "checkpoint_epoch=1.pt", tmp_path / "checkpoint_epoch=2.pt"
    _save(older, 1.0)
    time.sleep(0.01)
    _save(newer, 2.0)
    assert latest_checkpoint(tmp_path) == str(newer)
    _truncate(newer)
    with caplog.at_level(logging.WARNING, logger="custom.handlers.checkpoints"):
        assert latest_checkpoint(tmp_path) == str(older)
    assert f"resuming from {older}: the newer {newer} is unreadable" in caplog.text
    _truncate(older)
    with pytest.raises(DataError, match="no readable checkpoint to resume from") as info:
        latest_checkpoint(tmp_path)
    assert str(info.value).startswith(str(tmp_path)) and str(older) in str(info.value) and str(newer) in str(info.value)
    assert latest_checkpoint(tmp_path / "none") is None


def _train(demo_dataset, out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file",
               "['configs/supervised_la.json','configs/quick.json']", "--device", "cpu", "--val_interval", "100",
               "--dataset_dir", str(demo_dataset.parent), "--datalist", str(demo_dataset), "--output_dir", str(out),
               *extra]
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # subprocess trainings: ~20-35 s; CI runs them with -m slow
def test_resume_names_a_cut_short_checkpoint_and_uses_the_previous(demo_dataset, tmp_path):
    out = tmp_path / "run"
    first = _train(demo_dataset, out, "--max_epochs", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    checkpoints = sorted((out / "checkpoints").glob("checkpoint*.pt"), key=lambda p: p.stat().st_mtime_ns)
    assert len(checkpoints) == 2, checkpoints  # checkpoint_epoch=1.pt, then checkpoint_final.pt
    _truncate(checkpoints[-1])
    second = _train(demo_dataset, out, "--max_epochs", "2", "--resume", "true")
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"the newer {checkpoints[-1]} is unreadable" in second.stdout + second.stderr
    for path in (out / "checkpoints").glob("checkpoint*.pt"):  # those the resumed run left
        _truncate(path)
    third = _train(demo_dataset, out, "--max_epochs", "3", "--resume", "true")
    assert third.returncode == 1
    last = [line for line in third.stderr.splitlines() if line.strip()][-1]
    assert last.startswith(PREFIX) and "no readable checkpoint to resume from" in last, last


def test_best_metric_tracker_goes_into_the_checkpoint(tmp_path):
    """Issue 19: a resumed run remembers the best validation score (model_best_val.pt is not replaced by a worse)."""
    from monai.handlers import CheckpointSaver, StatsHandler

    from custom.handlers import best_metric_state

    net = torch.nn.Linear(1, 1)
    saver = CheckpointSaver(save_dir=str(tmp_path), save_dict={"network": net}, save_key_metric=True,
                            key_metric_filename="model_best_val.pt")
    tracker = best_metric_state([StatsHandler(), saver])
    assert tracker is saver._key_metric_checkpoint
    tracker.load_state_dict({"_saved": [(0.8, "model_best_val.pt")]})
    assert [(item.priority, item.filename) for item in tracker._saved] == [(0.8, "model_best_val.pt")]
    assert dict(tracker.state_dict())["_saved"] == [(0.8, "model_best_val.pt")]
    empty = best_metric_state([StatsHandler()])
    assert empty.state_dict() == {} and empty.load_state_dict({}) is None
