"""A training run whose loss turns NaN or Inf stops at that iteration with one line, and writes no bundle."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from torch import nn

from custom.errors import describe
from custom.handlers.non_finite import StopOnNonFiniteLoss, TrainingDiverged, loss_value


def _trainer(images: list[torch.Tensor], lr: float) -> SupervisedTrainer:
    torch.manual_seed(0)
    net = nn.Conv3d(1, 2, 3, padding=1)
    data = [{"image": image, "label": torch.zeros(1, 1, 8, 8, 8, dtype=torch.long)} for image in images]
    return SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=1, train_data_loader=data, network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=lr), loss_function=nn.CrossEntropyLoss(),
        prepare_batch=lambda batch, device, non_blocking, **kw: (batch["image"], batch["label"][:, 0]),
        epoch_length=len(data),
    )


def test_loss_value_reads_monai_outputs():
    assert loss_value({"loss": torch.tensor(2.0)}) == 2.0
    assert loss_value([{"loss": torch.tensor(1.0)}, {"loss": torch.tensor(1.0)}]) == 1.0
    assert loss_value({"pred": torch.zeros(1)}) is None


@pytest.mark.parametrize("lr, cause", [(0.01, "non-finite or extreme values in an input image or label"),
                                       (5.0, "the learning rate 5 is too high (--learning_rate")])
def test_non_finite_loss_stops_the_run_at_its_iteration(lr, cause):
    good = torch.rand(1, 1, 8, 8, 8)
    bad = good.clone()
    bad[0, 0, 1, 2, 3] = float("nan")
    trainer = _trainer([good, good, bad, good], lr)
    StopOnNonFiniteLoss("bundles/x").attach(trainer)
    completed = []
    trainer.add_event_handler(Events.COMPLETED, lambda e: completed.append(True))  # where the bundle is written
    with pytest.raises(TrainingDiverged) as info:
        trainer.run()
    message = describe(info.value)
    assert message.startswith("bundles/x: training stopped at iteration 3 (epoch 1): the loss is nan"), message
    assert f"likely cause: {cause}" in message and message.endswith("No bundle was written")
    assert completed == []


def test_finite_run_is_untouched():
    trainer = _trainer([torch.rand(1, 1, 8, 8, 8)] * 2, 0.01)
    StopOnNonFiniteLoss().attach(trainer)
    trainer.run()
    assert trainer.state.iteration == 2
