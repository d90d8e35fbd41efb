from __future__ import annotations

import csv

import pytest
import torch
from ignite.engine import Engine, Events

from custom.evaluation.metrics import foreground_dice_per_sample
from custom.handlers.label_quality import LabelQualityHandler


def test_foreground_dice_by_hand():
    ref = torch.zeros(2, 1, 4, 1, 1, dtype=torch.long)
    ref[0, 0, :2] = 1  # sample 0: 2 foreground voxels
    pred = ref.clone()
    pred[0, 0, 2] = 1  # 3 predicted, 2 overlap -> 2*2/(3+2) = 0.8
    # sample 1: both empty -> 1
    torch.testing.assert_close(foreground_dice_per_sample(pred, ref, 2), torch.tensor([0.8, 1.0]))
    # C=3: class 1 perfect, class 2 only in pred -> mean(1, 0) = 0.5
    a = torch.tensor([[[[[1]], [[2]]]]])
    b = torch.tensor([[[[[1]], [[0]]]]])
    torch.testing.assert_close(foreground_dice_per_sample(a, b, 3), torch.tensor([0.5]))
    with pytest.raises(ValueError):
        foreground_dice_per_sample(a, b[:, :, :1], 3)


def test_handler_writes_epoch_rows(tmp_path):
    clean = torch.zeros(2, 1, 4, 1, 1, dtype=torch.long)
    clean[:, 0, :2] = 1
    noisy = torch.zeros_like(clean)
    noisy[:, 0, :1] = 1  # Dice 2/3
    outputs = iter([{"clean_label": clean, "noisy_label": noisy, "refined_label": clean}] * 4)
    engine = Engine(lambda e, b: next(outputs))
    handler = LabelQualityHandler(str(tmp_path), num_classes=2, tensorboard=False)
    handler.attach(engine)
    engine.run(range(2), max_epochs=2)
    with open(tmp_path / "label_quality.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert float(rows[0]["noisy_dice"]) == pytest.approx(2 / 3, abs=1e-4)
    assert float(rows[0]["refined_dice"]) == pytest.approx(1.0)
    pytest.importorskip("matplotlib")
    assert (tmp_path / "label_quality.png").read_bytes()[:4] == b"\x89PNG"


def test_resumed_run_keeps_the_epochs_before_the_kill(tmp_path):
    """Issue 19: a run resumed at epoch 3 keeps rows 1-2 of label_quality.csv (a stale row 3 is replaced)."""
    clean = torch.zeros(2, 1, 4, 1, 1, dtype=torch.long)
    clean[:, 0, :2] = 1
    path = tmp_path / "label_quality.csv"
    path.write_text("epoch,iteration,noisy_dice,refined_dice\n1,2,0.5,0.6\n2,4,0.55,0.65\n3,6,0.1,0.1\n")
    outputs = iter([{"clean_label": clean, "noisy_label": clean, "refined_label": clean}] * 4)
    engine = Engine(lambda e, b: next(outputs))
    handler = LabelQualityHandler(str(tmp_path), num_classes=2, tensorboard=False)
    handler.attach(engine)

    @engine.on(Events.STARTED)
    def resume(e):  # what CheckpointLoader does
        e.state.epoch, e.state.iteration = 2, 4

    engine.run(range(2), max_epochs=4)
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert [(r["epoch"], r["iteration"]) for r in rows] == [("1", "2"), ("2", "4"), ("3", "6"), ("4", "8")]
    assert float(rows[1]["noisy_dice"]) == pytest.approx(0.55) and float(rows[2]["noisy_dice"]) == pytest.approx(1.0)
