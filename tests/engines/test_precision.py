"""Tests for custom/engines/precision.py and the ``amp`` path of NoisyLabelTrainer on the CPU (bfloat16 autocast)."""

from __future__ import annotations

from typing import NamedTuple

import pytest
import torch
from monai.losses import DiceCELoss

import custom.engines.base
from custom.engines import CoTeachingTrainer, NoisyLabelTrainer
from custom.engines.precision import (
    amp_runs_on,
    autocast_dtype,
    cpu_native_bfloat16,
    float32_outputs,
    to_float32,
    training_autocast,
)
from custom.networks import PaperVNet


class _Pair(NamedTuple):
    logits: torch.Tensor
    extra: list


def test_to_float32_casts_lower_precision_tensors_in_nested_outputs():
    half, bf, idx = torch.ones(2, dtype=torch.float16), torch.ones(2, dtype=torch.bfloat16), torch.arange(3)
    out = to_float32({"a": (half, [bf, idx]), "b": _Pair(bf, [half]), "c": "text"})
    assert out["a"][0].dtype == torch.float32 and out["a"][1][0].dtype == torch.float32
    assert out["a"][1][1].dtype == torch.int64  # integers untouched
    assert isinstance(out["b"], _Pair) and out["b"].logits.dtype == torch.float32
    assert out["b"].extra[0].dtype == torch.float32 and out["c"] == "text"
    double = torch.ones(1, dtype=torch.float64)
    assert to_float32(double) is double


def test_autocast_dtype_per_device():
    assert autocast_dtype("cpu") == torch.bfloat16
    assert autocast_dtype("cuda") == torch.float16
    assert autocast_dtype("cpu", {"dtype": torch.float16}) == torch.float16


def _inner_dtypes(net: torch.nn.Module) -> list[torch.dtype]:
    seen: list[torch.dtype] = []
    for module in net.modules():
        if isinstance(module, torch.nn.Conv3d):
            module.register_forward_hook(lambda _m, _a, out: seen.append(out.dtype))
    return seen


@pytest.mark.parametrize("enabled, inner", [(True, torch.bfloat16), (False, torch.float32)])
def test_cpu_autocast_runs_convolutions_in_bfloat16_and_returns_float32(enabled, inner):
    net = PaperVNet(base_filters=2, dropout=0.0).eval()
    seen = _inner_dtypes(net)
    with training_autocast(enabled, "cpu", [net]):
        out = net(torch.randn(1, 1, 16, 16, 16))
        probabilities = torch.softmax(out, 1)  # what the losses see: float32, not bfloat16
    assert seen and set(seen) == {inner}
    assert out.dtype == torch.float32 and probabilities.dtype == torch.float32


def test_float32_outputs_removes_its_hooks():
    net = torch.nn.Conv3d(1, 1, 1)
    with float32_outputs([net]):
        assert len(net._forward_hooks) == 1
    assert len(net._forward_hooks) == 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert net(torch.randn(1, 1, 2, 2, 2)).dtype == torch.bfloat16  # outside the context: autocast's dtype


def _batches(n=2):
    generator = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        image = torch.randn(2, 1, 16, 16, 16, generator=generator)
        out.append({"image": image, "label": (image > 0).float()})
    return out


@pytest.fixture
def native_bfloat16(monkeypatch):
    """Run the trainers as on a CPU with native bfloat16 (AVX-512 BF16 / AMX), whatever this machine has: autocast
    itself works on every CPU (emulated where not native, only slower)."""
    monkeypatch.setattr(custom.engines.base, "amp_runs_on", lambda device: True)


def test_amp_runs_on_cuda_always_and_on_the_cpu_only_with_native_bfloat16():
    assert amp_runs_on("cuda") and amp_runs_on(torch.device("cuda:1"))
    assert amp_runs_on("cpu") == cpu_native_bfloat16()


def test_amp_on_a_cpu_without_native_bfloat16_trains_in_float32_and_says_so(monkeypatch, caplog):
    monkeypatch.setattr(custom.engines.base, "amp_runs_on", lambda device: False)
    torch.manual_seed(0)
    net = PaperVNet(base_filters=2, dropout=0.0)
    seen = _inner_dtypes(net)
    with caplog.at_level("INFO"):
        trainer = NoisyLabelTrainer(
            device=torch.device("cpu"), max_epochs=1, epoch_length=1, train_data_loader=_batches(1), network=net,
            optimizer=torch.optim.SGD(net.parameters(), lr=0.01),
            loss_function=DiceCELoss(to_onehot_y=True, softmax=True), amp=True, decollate=False,
        )
    assert trainer.amp is False and trainer.scaler is None
    assert any("no native bfloat16" in record.getMessage() for record in caplog.records)
    trainer.run()
    assert seen and set(seen) == {torch.float32}


def test_supervised_trainer_with_amp_on_cpu_trains_in_bfloat16_without_a_scaler(native_bfloat16):
    torch.manual_seed(0)
    net = PaperVNet(base_filters=2, dropout=0.0)
    seen = _inner_dtypes(net)
    before = [p.detach().clone() for p in net.parameters()]
    trainer = NoisyLabelTrainer(
        device=torch.device("cpu"), max_epochs=1, epoch_length=2, train_data_loader=_batches(), network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.01), loss_function=DiceCELoss(to_onehot_y=True, softmax=True),
        amp=True, decollate=False,
    )
    assert trainer.scaler is None
    trainer.run()
    assert torch.bfloat16 in seen
    assert trainer.state.output["pred"].dtype == torch.float32 and torch.isfinite(trainer.state.output["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))
    assert not net._forward_hooks  # the hooks live for one step only
    assert net.eval()(torch.randn(1, 1, 16, 16, 16)).dtype == torch.float32  # evaluation afterwards: float32


def test_coteaching_with_amp_on_cpu_selects_on_float32_losses(native_bfloat16):
    torch.manual_seed(0)
    nets = [PaperVNet(base_filters=2, dropout=0.0) for _ in range(2)]
    trainer = CoTeachingTrainer(
        device=torch.device("cpu"), max_epochs=1, epoch_length=2, train_data_loader=_batches(), network=nets[0],
        peers=nets[1], optimizer=torch.optim.SGD([p for n in nets for p in n.parameters()], lr=0.01),
        loss_function=None, num_classes=2, decollate=False, keep_ratio=[0.8, 0.8], amp=True,
    )
    trainer.run()
    assert trainer.state.output["pred"].dtype == torch.float32
    assert torch.isfinite(trainer.state.output["loss"])
