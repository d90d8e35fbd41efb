"""Tests for custom/engines/memory_format.py: the networks' layout during training (config key ``memory_format``)."""

from __future__ import annotations

import copy

import pytest
import torch
from ignite.engine import Events
from monai.losses import DiceCELoss

from custom.engines import NoisyLabelTrainer
from custom.engines.memory_format import MEMORY_FORMATS, apply_memory_format, memory_format_of
from custom.errors import OptionError
from custom.networks import PaperVNet

CHANNELS_LAST = torch.channels_last_3d


def _conv_weights(net: torch.nn.Module) -> list[torch.Tensor]:
    return [p for p in net.parameters() if p.dim() == 5]


def test_apply_converts_every_5d_weight_in_place_and_keeps_the_parameter_objects():
    net = PaperVNet(base_filters=2, dropout=0.0)
    params = list(net.parameters())
    assert not all(w.is_contiguous(memory_format=CHANNELS_LAST) for w in _conv_weights(net))
    apply_memory_format([net], "channels_last_3d")
    assert all(w.is_contiguous(memory_format=CHANNELS_LAST) for w in _conv_weights(net))
    assert all(a is b for a, b in zip(params, net.parameters()))  # an optimiser built before still holds them
    apply_memory_format([net], "contiguous")
    assert all(w.is_contiguous() for w in _conv_weights(net))


@pytest.mark.parametrize("bad", ["channels_last", "", None, 3])
def test_unknown_memory_format_is_an_option_error(bad):
    with pytest.raises(OptionError, match="^--memory_format: expected one of"):
        memory_format_of(bad)
    assert set(MEMORY_FORMATS) == {"channels_last_3d", "contiguous"}


def _train(memory_format: str, steps: int = 3) -> tuple[PaperVNet, list[float]]:
    torch.manual_seed(0)
    net = PaperVNet(base_filters=4, dropout=0.0)
    generator = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(steps):
        image = torch.randn(2, 1, 16, 16, 16, generator=generator)
        batches.append({"image": image, "label": (image > 0.3).float()})
    trainer = NoisyLabelTrainer(
        device=torch.device("cpu"), max_epochs=1, epoch_length=steps, train_data_loader=batches, network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9),
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True), decollate=False,
    )
    apply_memory_format(trainer.synced_modules(), memory_format)  # as the configs' training list does
    losses: list[float] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output["loss"].item()))
    trainer.run()
    return net, losses


def test_channels_last_gradients_are_as_accurate_as_contiguous_ones():
    # one step of the same network in both layouts, against a float64 reference: the layouts differ only in the
    # convolutions' summation order. A weight gradient sums 2 * 32^3 products; oneDNN's one-thread channels-last
    # kernel sums them more serially (about 1% relative error here, 5e-5 on two threads, 0.15% contiguous), far
    # below the minibatch noise of SGD, while a layout bug would give errors of order 1. Only the 5D weights are
    # compared: biases before BatchNorm have a zero gradient in exact arithmetic, pure rounding.
    torch.manual_seed(0)
    reference = PaperVNet(base_filters=4, dropout=0.0)
    image = torch.randn(2, 1, 32, 32, 32, generator=torch.Generator().manual_seed(1))
    label = (image > 0.3).float()
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True)

    def step(layout: str | None) -> tuple[float, list[torch.Tensor]]:
        net = copy.deepcopy(reference)
        x = image
        if layout is None:
            net, x = net.double(), image.double()
        else:
            apply_memory_format([net], layout)
        loss = loss_function(net(x), label)
        loss.backward()
        return loss.item(), [w.grad.double() for w in _conv_weights(net)]

    loss64, exact = step(None)
    for layout in ("contiguous", "channels_last_3d"):
        loss, grads = step(layout)
        assert loss == pytest.approx(loss64, rel=1e-5), layout
        errors = [float(torch.linalg.vector_norm(g - e) / torch.linalg.vector_norm(e)) for g, e in zip(grads, exact)]
        assert max(errors) < 3e-2, (layout, max(errors))


def test_a_trainer_step_in_channels_last_keeps_the_layout_and_learns():
    trained, losses = _train("channels_last_3d", steps=4)
    assert all(w.is_contiguous(memory_format=CHANNELS_LAST) for w in _conv_weights(trained))  # the optimiser kept it
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


def test_channels_last_weights_load_into_a_contiguous_network():
    trained, _ = _train("channels_last_3d", steps=1)
    fresh = PaperVNet(base_filters=4, dropout=0.0)
    fresh.load_state_dict(trained.state_dict())
    assert all(w.is_contiguous() for w in _conv_weights(fresh))
    image = torch.randn(1, 1, 16, 16, 16)
    torch.testing.assert_close(fresh.eval()(image), trained.eval()(image), rtol=1e-4, atol=1e-5)
