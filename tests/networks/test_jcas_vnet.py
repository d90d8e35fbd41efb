from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from custom.networks.deep_supervision import JcasOutput, JcasVNet

NETWORKS_DIR = Path(__file__).resolve().parents[2] / "custom" / "networks"
# what a config / bundle passes: plain JSON values (the token grid arrives as a list)
KWARGS = json.loads(
    '{"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "base_filters": 4, "dropout": 0.0,'
    ' "normalization": "batch", "feature_dim": 4, "token_grid": [4, 4, 4], "use_dar": true}'
)


def _net(**overrides) -> JcasVNet:
    torch.manual_seed(0)
    return JcasVNet(**{**KWARGS, **overrides})


def test_training_output_has_two_levels():
    out = _net().train()(torch.randn(2, 1, 16, 16, 32))
    assert isinstance(out, JcasOutput)
    assert out.fine.logits.shape == (2, 3, 16, 16, 32) and out.coarse.logits.shape == (2, 3, 8, 8, 16)
    assert out.fine.token_grid == (4, 4, 4) and out.fine.affinity.shape == (2, 64, 64)


def test_eval_output_is_sum_of_level_two_softmaxes():
    net = _net().eval()
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        prediction = net(x)
        levels = net.training_output(x)
    assert_close(prediction, torch.softmax(levels.fine.rectified_logits, 1) + torch.softmax(levels.fine.logits, 1))
    assert_close(prediction.sum(dim=1), torch.full((1, 16, 16, 16), 2.0))


def test_backbone_classifier_dropped():
    net = _net()
    assert not any(key.startswith("backbone.out_conv") for key in net.state_dict())
    assert isinstance(net.backbone.out_conv, torch.nn.Identity)
    # every parameter is used by the training forward (no find_unused_parameters needed under DDP)
    out = net.train()(torch.randn(2, 1, 16, 16, 16))
    sum(level.rectified_logits.mean() + level.affinity.mean() for level in out).backward()
    unused = [name for name, p in net.named_parameters() if p.grad is None]
    assert unused == []


@pytest.mark.parametrize("use_dar", [True, False])
def test_torchscript_export_matches_eager(use_dar):
    net = _net(use_dar=use_dar).eval()
    scripted = torch.jit.script(net)
    for shape in [(1, 1, 16, 16, 16), (2, 1, 32, 16, 16)]:  # scripting is not specialised to one input size
        x = torch.randn(*shape)
        with torch.no_grad():
            assert_close(scripted(x), net(x))
    # the scripted graph holds the inference path only: train mode still gives the probabilities
    scripted.train()
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        assert scripted(x).shape == (2, 3, 16, 16, 16)


@pytest.mark.parametrize(
    "overrides", [{"out_channels": 1}, {"spatial_dims": 2}, {"token_grid": [4, 4]}, {"feature_dim": 0}]
)
def test_bad_arguments_raise(overrides):
    with pytest.raises(ValueError):
        _net(**overrides)


def test_shipped_files_run_without_the_repository(tmp_path):
    # the bundle writer copies these three files into <bundle>/scripts/; they must import each other relatively
    package = tmp_path / "scripts"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name in ("vnet.py", "dar.py", "deep_supervision.py"):
        shutil.copyfile(NETWORKS_DIR / name, package / name)
    script = (
        "import json, sys, torch\n"
        "from scripts.deep_supervision import JcasVNet\n"
        "net = JcasVNet(**json.loads(sys.argv[1])).eval()\n"
        "assert net(torch.randn(1, 1, 16, 16, 16)).shape == (1, 3, 16, 16, 16)\n"
        "assert not any(m == 'custom' or m.startswith('custom.') for m in sys.modules), 'imported the repository'\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", script, json.dumps(KWARGS)], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize("detach", [False, True])
def test_detached_feature_heads_keep_the_affinity_gradient_out_of_the_backbone(detach):
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():  # inference does not depend on the option (same weights, eval mode)
        assert_close(_net(detach_feature_heads=detach).eval()(x), _net().eval()(x))
    net = _net(detach_feature_heads=detach).train()
    out = net(torch.randn(2, 1, 16, 16, 16))
    (out.fine.affinity.sum() + out.coarse.affinity.sum()).backward()  # what the affinity loss differentiates
    backbone_grad = sum(float(p.grad.abs().sum()) for p in net.backbone.parameters() if p.grad is not None)
    head_grad = float(net.fine_feature_head.weight.grad.abs().sum())
    assert head_grad > 0.0
    assert (backbone_grad == 0.0) == detach
    # the class loss still trains the backbone
    net.zero_grad()
    net(torch.randn(2, 1, 16, 16, 16)).fine.logits.sum().backward()
    assert sum(float(p.grad.abs().sum()) for p in net.backbone.parameters() if p.grad is not None) > 0.0
