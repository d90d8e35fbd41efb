"""Tests for custom/handlers/coteaching_schedule.py: the forget-rate warm-up and the Eq. 5 loss-gap handler."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events

from custom.handlers import KeepRatioWarmup, LossGapHandler
from custom.handlers.coteaching_schedule import warmup_keep_ratio

SIDE = 16


# ---------------------------------------------------------------------- warm-up
@pytest.mark.parametrize(
    "epoch, warmup, expected",
    # target R = (0.5, 0.8): forget rates (0.5, 0.2) ramp linearly over 5 epochs
    [(0, 5, [1.0, 1.0]), (1, 5, [0.9, 0.96]), (4, 5, [0.6, 0.84]), (5, 5, [0.5, 0.8]), (9, 5, [0.5, 0.8]),
     (0, 0, [0.5, 0.8])],
)
def test_warmup_keep_ratio(epoch, warmup, expected):
    assert warmup_keep_ratio(epoch, [0.5, 0.8], warmup).tolist() == pytest.approx(expected)


def test_keep_ratio_warmup_handler_sets_the_trainer_ratio_per_epoch():
    seen = []
    engine = Engine(lambda e, b: seen.append(e.keep_ratio.tolist()))
    engine.target_keep_ratio = torch.tensor([0.6, 0.8], dtype=torch.float64)
    KeepRatioWarmup(warmup_epochs=2).attach(engine)
    engine.run([0], max_epochs=4)
    np.testing.assert_allclose(seen, [[1.0, 1.0], [0.8, 0.9], [0.6, 0.8], [0.6, 0.8]])
    with pytest.raises(ValueError):
        KeepRatioWarmup(warmup_epochs=-1)


# ---------------------------------------------------------------------- loss gap
def _gap_engine(unselected_per_epoch, steps_per_epoch=1):
    def step(engine, _):
        value = unselected_per_epoch[engine.state.epoch - 1]
        return {"loss_selected": torch.tensor(0.0), "loss_unselected": torch.tensor(float(value)),
                "selected_fraction": torch.tensor(0.5)}

    engine = Engine(step)
    engine.keep_ratio = torch.tensor([0.7, 0.7], dtype=torch.float64)
    return engine, [0] * steps_per_epoch


def test_loss_gap_is_the_epoch_mean_difference(tmp_path):
    # two steps: (selected, unselected) = (1, 3) and (2, 2) -> means 1.5 and 2.5 -> G = 1.0
    values = iter([(1.0, 3.0), (2.0, 2.0)])

    def step(engine, _):
        selected, unselected = next(values)
        return {"loss_selected": torch.tensor(selected), "loss_unselected": torch.tensor(unselected),
                "selected_fraction": torch.tensor(0.25)}

    engine = Engine(step)
    handler = LossGapHandler(patience=3, output_dir=str(tmp_path))
    handler.attach(engine)
    engine.run([0, 0], max_epochs=1)
    assert handler.rows[0]["loss_gap"] == pytest.approx(1.0)
    assert handler.rows[0]["selected_fraction"] == pytest.approx(0.25)
    assert engine.state.metrics["loss_gap"] == pytest.approx(1.0)
    with open(tmp_path / "loss_gap.csv") as f:
        rows = list(csv.DictReader(f))
    assert float(rows[0]["loss_gap"]) == pytest.approx(1.0) and rows[0]["epoch"] == "1"


def test_loss_gap_patience():
    engine, data = _gap_engine([1.0, 2.0, 1.5, 1.9, 1.0])
    handler = LossGapHandler(patience=3)
    handler.attach(engine)
    flags = []
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: flags.append(handler.tracker.should_stop))
    engine.run(data, max_epochs=5)
    assert flags == [False, False, False, False, True]  # best at epoch 2, three epochs without improvement


@pytest.mark.parametrize("decollate", [False, True])
def test_loss_gap_reads_a_monai_trainer_before_decollation(decollate):
    from custom.engines import JoCoRTrainer
    from custom.networks import PaperVNet

    torch.manual_seed(0)
    nets = [PaperVNet(base_filters=2, dropout=0.0) for _ in range(2)]
    image = torch.randn(2, 1, SIDE, SIDE, SIDE)
    trainer = JoCoRTrainer(
        device=torch.device("cpu"), max_epochs=1, train_data_loader=[{"image": image, "label": (image > 0).float()}],
        network=nets[0], peers=nets[1], optimizer=torch.optim.SGD([p for n in nets for p in n.parameters()], lr=0.01),
        loss_function=None, num_classes=2, keep_ratio=[0.7, 0.7], decollate=decollate,
    )
    handler = LossGapHandler()
    handler.attach(trainer)
    trainer.run()
    assert len(handler.rows) == 1 and handler.rows[0]["selected_fraction"] == pytest.approx(0.7, abs=1e-3)
    assert handler.rows[0]["loss_gap"] > 0  # the unselected voxels are the large-loss ones


def test_loss_gap_skips_engines_without_selection_output():
    engine = Engine(lambda e, b: {"loss": torch.tensor(1.0)})
    handler = LossGapHandler()
    handler.attach(engine)
    engine.run([0], max_epochs=2)
    assert handler.rows == [] and handler.tracker.num_updates == 0
