from __future__ import annotations

import pytest
import torch

from custom.networks import NnUNetDynUNet, PaperVNet, nnunet_kernels_and_strides


def test_paper_vnet_size_matches_the_papers():
    # the papers' V-Net has about 9.4 M parameters at 16 base filters (MONAI's 5x5x5 VNet has ~46 M)
    n = sum(p.numel() for p in PaperVNet(out_channels=2).parameters())
    assert 9.3e6 < n < 9.5e6


@pytest.mark.parametrize("classes", [2, 3])
def test_paper_vnet_shapes_and_features(classes):
    net = PaperVNet(out_channels=classes, base_filters=2).eval()
    x = torch.randn(2, 1, 32, 16, 16)
    assert net(x).shape == (2, classes, 32, 16, 16)
    feats = net.forward_features(x)
    assert [f.shape[1] for f in feats] == list(net.decoder_channels) == [16, 8, 4, 2]
    assert feats[-1].shape[2:] == x.shape[2:] and feats[0].shape[2:] == (4, 2, 2)


def test_dropout_is_active_only_in_train_mode():
    net = PaperVNet(base_filters=2, dropout=0.5)
    x = torch.randn(2, 1, 32, 32, 32)
    net.eval()
    assert torch.equal(net(x), net(x))
    net.train()
    torch.manual_seed(0)
    a = net(x)
    b = net(x)
    assert not torch.allclose(a, b)
    assert sum(isinstance(m, torch.nn.Dropout3d) for m in net.modules()) == 2


def test_paper_vnet_scripts_and_matches_eager():
    net = PaperVNet(base_filters=2).eval()
    x = torch.randn(1, 1, 16, 16, 16)
    torch.testing.assert_close(torch.jit.script(net)(x), net(x))


@pytest.mark.parametrize("kwargs", [{"spatial_dims": 2}, {"dropout": 1.0}, {"normalization": "layer"}])
def test_paper_vnet_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        PaperVNet(**kwargs)


def test_nnunet_rule_skips_the_anisotropic_axis():
    # z spacing 3x the in-plane one: z is neither down-sampled nor convolved with 3 until the others catch up
    kernels, strides = nnunet_kernels_and_strides([64, 64, 16], [1.0, 1.0, 3.0])
    assert strides[0] == [1, 1, 1]
    assert strides[1] == [2, 2, 1] and kernels[0] == [3, 3, 1]
    kernels, strides = nnunet_kernels_and_strides([32, 32, 32], [1, 1, 1])
    assert strides == [[1, 1, 1], [2, 2, 2], [2, 2, 2]]


def test_nnunet_dynunet_runs():
    net = NnUNetDynUNet(out_channels=3, patch_size=[32, 32, 16], spacing=[1, 1, 1], base_filters=4).eval()
    assert net(torch.randn(1, 1, 32, 32, 16)).shape == (1, 3, 32, 32, 16)
    with pytest.raises(ValueError):
        nnunet_kernels_and_strides([32, 32], [1, 1, 1])
