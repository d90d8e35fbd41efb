from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from custom.networks.deep_supervision import (
    DeepSupervisionNet,
    JcasInference,
    JcasOutput,
    jcas_inference_probabilities,
)


class TinyBackbone(nn.Module):
    """Two decoder maps: half resolution (2w channels) and full resolution (w channels); scriptable."""

    def __init__(self, in_channels: int = 1, width: int = 4, num_classes: int = 2):
        super().__init__()
        self.down = nn.Conv3d(in_channels, 2 * width, kernel_size=2, stride=2)
        self.up = nn.ConvTranspose3d(2 * width, width, kernel_size=2, stride=2)
        self.skip = nn.Conv3d(in_channels, width, kernel_size=3, padding=1)
        self.out_conv = nn.Conv3d(width, num_classes, kernel_size=1)
        self.decoder_channels = (2 * width, width)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        coarse = torch.relu(self.down(x))
        fine = torch.relu(self.up(coarse) + self.skip(x))
        return [coarse, fine]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_conv(self.forward_features(x)[-1])


def _net(num_classes: int = 2, **kwargs) -> DeepSupervisionNet:
    torch.manual_seed(0)
    return DeepSupervisionNet(TinyBackbone(num_classes=num_classes), num_classes, feature_dim=5, **kwargs)


@pytest.mark.parametrize("num_classes", [2, 3])
def test_training_output_shapes(num_classes):
    net = _net(num_classes, token_grid=(2, 4, 4)).train()
    out = net(torch.randn(2, 1, 8, 8, 12))
    assert isinstance(out, JcasOutput)
    assert out.coarse.logits.shape == (2, num_classes, 4, 4, 6)
    assert out.coarse.rectified_logits.shape == (2, num_classes, 4, 4, 6)
    assert out.coarse.features.shape == (2, 5, 4, 4, 6)
    assert out.fine.logits.shape == (2, num_classes, 8, 8, 12)
    assert out.fine.rectified_logits.shape == (2, num_classes, 8, 8, 12)
    assert out.fine.features.shape == (2, 5, 8, 8, 12)
    # the affinity is on tokens: 2 * 4 * 4 = 32 tokens, not 4 * 4 * 6 = 96 or 768 voxels
    assert out.coarse.token_grid == (2, 4, 4) and out.fine.token_grid == (2, 4, 4)
    assert out.coarse.affinity.shape == (2, 32, 32)
    assert out.fine.affinity.shape == (2, 32, 32)


def test_token_grid_clipped_per_level():
    out = _net(token_grid=(16, 16, 16)).train()(torch.randn(1, 1, 8, 8, 8))
    assert out.coarse.token_grid == (4, 4, 4) and out.coarse.affinity.shape == (1, 64, 64)
    assert out.fine.token_grid == (8, 8, 8) and out.fine.affinity.shape == (1, 512, 512)


def test_rectification_changes_logits_and_can_be_disabled():
    x = torch.randn(1, 1, 8, 8, 8)
    out = _net(token_grid=(2, 2, 2)).train()(x)
    assert not torch.allclose(out.fine.rectified_logits, out.fine.logits)
    plain = _net(token_grid=(2, 2, 2), use_dar=False).train()(x)
    assert plain.fine.rectified_logits is plain.fine.logits
    assert plain.coarse.rectified_logits is plain.coarse.logits
    # the affinity is still computed for the affinity loss, and equals the DAR one (same seed, same heads)
    assert_close(plain.fine.affinity, out.fine.affinity)


@pytest.mark.parametrize("num_classes", [2, 3])
def test_eval_returns_sum_of_softmaxes_of_level_two(num_classes):
    net = _net(num_classes, token_grid=(2, 2, 2)).eval()
    x = torch.randn(2, 1, 8, 8, 8)
    with torch.no_grad():
        prediction = net(x)
        levels = net.training_output(x)
    assert prediction.shape == (2, num_classes, 8, 8, 8)
    expected = torch.softmax(levels.fine.rectified_logits, 1) + torch.softmax(levels.fine.logits, 1)
    assert_close(prediction, expected)
    assert_close(prediction.sum(dim=1), torch.full((2, 8, 8, 8), 2.0))


def test_inference_without_dar_is_twice_softmax_q():
    net = _net(token_grid=(2, 2, 2), use_dar=False).eval()
    x = torch.randn(1, 1, 8, 8, 8)
    with torch.no_grad():
        assert_close(net(x), 2 * torch.softmax(net.training_output(x).fine.logits, 1))


def test_inference_probabilities_function():
    p = torch.tensor([0.0, 0.0]).reshape(1, 2, 1, 1, 1)
    q = torch.tensor([0.0, math.log(3.0)]).reshape(1, 2, 1, 1, 1)
    # softmax(p) = (.5, .5), softmax(q) = (.25, .75)
    assert_close(jcas_inference_probabilities(p, q).flatten(), torch.tensor([0.75, 1.25]))


def test_gradients_reach_backbone_and_all_heads():
    net = _net(token_grid=(2, 2, 2)).train()
    out = net(torch.randn(1, 1, 8, 8, 8))
    loss = sum(level.rectified_logits.square().mean() + level.affinity.mean() for level in out)
    loss.backward()
    for name in ["coarse_classifier", "coarse_feature_head", "fine_classifier", "fine_feature_head"]:
        assert float(getattr(net, name).weight.grad.abs().sum()) > 0, name
    assert float(net.backbone.down.weight.grad.abs().sum()) > 0


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_torchscript_and_trace_export_match_eager():
    net = _net(3, token_grid=(2, 2, 2)).eval()
    x = torch.randn(1, 1, 8, 8, 8)
    inference = net.inference_network().eval()
    assert isinstance(inference, JcasInference)
    assert inference.classifier is net.fine_classifier and inference.backbone is net.backbone
    scripted = torch.jit.script(inference)
    traced = torch.jit.trace(net, x)
    with torch.no_grad():
        expected = net(x)
        assert_close(scripted(x), expected)
        assert_close(traced(x), expected)
        # the scripted export handles other sizes too
        other = torch.randn(2, 1, 8, 4, 12)
        assert_close(scripted(other), net(other))
    # no transition matrix in the exported network: only backbone and level-2 heads
    names = {name.split(".")[0] for name, _ in inference.named_parameters()}
    assert names == {"backbone", "classifier", "feature_head"}


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_with_paper_vnet():
    vnet = pytest.importorskip("custom.networks.vnet")
    torch.manual_seed(0)
    backbone = vnet.PaperVNet(in_channels=1, out_channels=2, base_filters=2, dropout=0.0)
    net = DeepSupervisionNet(backbone, 2, feature_dim=4, token_grid=(4, 4, 4)).train()
    x = torch.randn(2, 1, 16, 16, 16)  # batch 2: BatchNorm needs > 1 value at the 1^3 bottleneck
    out = net(x)
    assert out.coarse.logits.shape == (2, 2, 8, 8, 8) and out.fine.logits.shape == (2, 2, 16, 16, 16)
    assert out.coarse.affinity.shape == (2, 64, 64) and out.fine.affinity.shape == (2, 64, 64)
    net.eval()
    with torch.no_grad():
        expected = net(x)
        traced = torch.jit.trace(net.inference_network().eval(), x)
        assert_close(traced(x), expected)


class _NoFeatures(nn.Module):
    decoder_channels = (4, 2)


class _OneLevel(TinyBackbone):
    def __init__(self):
        super().__init__()
        self.decoder_channels = (4,)


@pytest.mark.parametrize(
    "backbone, kwargs",
    [
        (_NoFeatures(), {}),
        (_OneLevel(), {}),
        (TinyBackbone(), {"num_classes": 1}),
        (TinyBackbone(), {"feature_dim": 0}),
        (TinyBackbone(), {"token_grid": (4, 4)}),
        (TinyBackbone(), {"token_grid": (4, 0, 4)}),
    ],
)
def test_bad_arguments_raise(backbone, kwargs):
    arguments = {"num_classes": 2, **kwargs}
    with pytest.raises(ValueError):
        DeepSupervisionNet(backbone, **arguments)
