"""validation_curve.csv from a real MONAI evaluator run the way ValidationHandler runs it (global epoch)."""

from __future__ import annotations

import pytest
import torch
from monai.engines import SupervisedEvaluator
from monai.handlers import MeanDice, from_engine
from monai.transforms import AsDiscreted

from custom.handlers.validation_curve import ValidationCurveHandler, plateau_delta, read_validation_curve, tail_mean


class _Logits(torch.nn.Module):
    """Returns the input as the logits: the test decides the prediction through the image."""

    def forward(self, x):
        return x


def _evaluator(tmp_path, handler, overlap: float) -> SupervisedEvaluator:
    label = torch.zeros(1, 1, 4, 4, 4)
    label[..., :2, :, :] = 1  # half the volume is foreground
    pred_fg = torch.zeros(1, 1, 4, 4, 4)
    pred_fg[..., : int(overlap * 4), :, :] = 1
    logits = torch.cat([1 - pred_fg, pred_fg], dim=1)
    data = [{"image": logits[0], "label": label[0]}]
    return SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=torch.utils.data.DataLoader(data, batch_size=1),
        network=_Logits(),
        postprocessing=AsDiscreted(keys=["pred", "label"], argmax=[True, False], to_onehot=[2, 2]),
        key_val_metric={
            "val_mean_dice": MeanDice(include_background=False, output_transform=from_engine(["pred", "label"]))
        },
        val_handlers=[handler],
    )


def test_one_row_per_round_with_the_trainer_iteration(tmp_path):
    handler = ValidationCurveHandler(str(tmp_path), epoch_length=10)
    # prediction covers 1/4 of the volume: Dice = 2 * 16 / (32 + 16) = 2/3; then all of the label: 1.0
    _evaluator(tmp_path, handler, 0.25).run(2)
    _evaluator(tmp_path, handler, 0.5).run(4)
    rows = read_validation_curve(tmp_path / "validation_curve.csv")
    assert [(r["epoch"], r["iteration"]) for r in rows] == [(2, 20), (4, 40)]
    assert rows[0]["val_mean_dice"] == pytest.approx(2 / 3, abs=1e-6) and rows[1]["val_mean_dice"] == pytest.approx(1)


def test_a_resumed_run_keeps_the_earlier_rounds_and_a_new_run_does_not(tmp_path):
    first = ValidationCurveHandler(str(tmp_path), epoch_length=5)
    for epoch in (1, 2, 3):
        _evaluator(tmp_path, first, 0.25).run(epoch)
    resumed = ValidationCurveHandler(str(tmp_path), epoch_length=5, resume=True)
    _evaluator(tmp_path, resumed, 0.5).run(3)  # resumed from the checkpoint of epoch 2: epoch 3 is redone
    rows = read_validation_curve(tmp_path / "validation_curve.csv")
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows[2]["val_mean_dice"] == pytest.approx(1)
    fresh = ValidationCurveHandler(str(tmp_path), epoch_length=5)
    _evaluator(tmp_path, fresh, 0.5).run(1)
    assert [r["epoch"] for r in read_validation_curve(tmp_path / "validation_curve.csv")] == [1]


def test_plateau_delta_is_the_spread_in_the_last_quarter():
    curve = [{"iteration": i, "val_mean_dice": v} for i, v in [(10, 0.2), (80, 0.70), (90, 0.74), (100, 0.72)]]
    assert plateau_delta(curve, 100) == pytest.approx(0.04)  # rounds at 80, 90 and 100
    assert plateau_delta(curve, 100, tail=0.05) is None  # one round only
    with pytest.raises(ValueError):
        plateau_delta(curve, 100, tail=0)
    with pytest.raises(ValueError):
        ValidationCurveHandler("x", epoch_length=0)


def test_tail_mean_averages_the_last_quarter_and_skips_nan_rounds():
    rows = [(10, 0.2), (80, 0.70), (90, float("nan")), (100, 0.74)]
    curve = [{"iteration": i, "val_mean_dice": v} for i, v in rows]
    assert tail_mean(curve, 100) == pytest.approx(0.72)  # rounds at 80 and 100; the NaN round at 90 left out
    assert tail_mean(curve, 100, tail=1.0) == pytest.approx((0.2 + 0.70 + 0.74) / 3)
    assert tail_mean(curve, 1000, tail=0.05) is None  # no round at iteration >= 950
    with pytest.raises(ValueError):
        tail_mean(curve, 0)
