"""A bundle written by ``write_bundle``: TorchScript export (``monai.bundle ckpt_export``) matches the eager network,
``configs/metadata.json`` passes MONAI's metadata schema, and ``monai.bundle verify_net_in_out`` passes.

The CLI commands run in fresh interpreters outside the repository without PYTHONPATH (as docs/deploy.md shows them):
the bundle's ``scripts`` package must not clash with this repository's ``scripts/`` folder in the test process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
META_SCHEMA = REPO_ROOT.parent / "shared" / "data" / "monai" / "meta_schema_20240725.json"
NETWORK_KWARGS = {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "base_filters": 4, "dropout": 0.5}
CLASS_NAMES = ["background", "left_atrium", "scar"]
PATCH = [16, 16, 16]  # PaperVNet needs sides divisible by 16


def _bundle_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    from custom.handlers import write_bundle
    from custom.networks.vnet import PaperVNet

    torch.manual_seed(0)
    net = PaperVNet(**NETWORK_KWARGS)
    with torch.no_grad():  # non-default BatchNorm statistics, so that a checkpoint that failed to load shows
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return write_bundle(tmp_path_factory.mktemp("export") / "bundle", network=net, network_class="PaperVNet",
                        network_kwargs=NETWORK_KWARGS, class_names=CLASS_NAMES, spacing=[1.25, 1.25, 1.25],
                        patch_size=PATCH, bundle_name="export_test")


def test_ckpt_export_torchscript_matches_eager(bundle, tmp_path):
    from monai.data import load_net_with_metadata

    from custom.networks.vnet import PaperVNet

    ts_file = bundle / "models" / "model.ts"
    _bundle_cli("ckpt_export", "network_def", "--filepath", str(ts_file), "--meta_file",
                str(bundle / "configs" / "metadata.json"), "--config_file", str(bundle / "configs" / "inference.json"),
                "--ckpt_file", str(bundle / "models" / "model.pt"), "--bundle_root", str(bundle), cwd=tmp_path)
    assert ts_file.is_file()

    scripted, meta, extra = load_net_with_metadata(str(ts_file), map_location="cpu",
                                                   more_extra_files=("inference.json",))
    assert meta["name"] == "export_test"
    channel_def = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
    assert channel_def == {"0": "background", "1": "left_atrium", "2": "scar"}
    assert json.loads(extra["inference.json"])["network_def"]["out_channels"] == 3

    eager = PaperVNet(**NETWORK_KWARGS)
    eager.load_state_dict(torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True))
    eager.eval()
    scripted.eval()
    x = torch.randn(2, 1, 16, 32, 16, generator=torch.Generator().manual_seed(3))  # not the metadata's patch shape
    with torch.no_grad():
        expected = eager(x)
        got = scripted(x)
    assert got.shape == (2, 3, 16, 32, 16)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    # a freshly initialised network differs: the exported weights are the checkpoint's, not random ones
    fresh = PaperVNet(**NETWORK_KWARGS).eval()
    with torch.no_grad():
        assert not torch.allclose(fresh(x), expected, atol=1e-3)


def test_metadata_passes_monai_schema(bundle, tmp_path):
    if not META_SCHEMA.is_file():
        pytest.skip(f"metadata schema not found at {META_SCHEMA} (it lives in ../shared/data/monai beside the repo)")
    pytest.importorskip("jsonschema", reason="monai.bundle.verify_metadata needs jsonschema (pip install jsonschema)")
    from monai.bundle import verify_metadata

    meta_file = bundle / "configs" / "metadata.json"
    verify_metadata(meta_file=str(meta_file), filepath=str(META_SCHEMA))  # raises ValueError when invalid

    # the same check rejects a metadata file without a required field
    broken = json.loads(meta_file.read_text())
    del broken["network_data_format"]
    broken_file = tmp_path / "metadata.json"
    broken_file.write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="network_data_format"):
        verify_metadata(meta_file=str(broken_file), filepath=str(META_SCHEMA))


def test_metadata_describes_the_network(bundle):
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    inputs = meta["network_data_format"]["inputs"]["image"]
    outputs = meta["network_data_format"]["outputs"]["pred"]
    assert inputs["num_channels"] == 1 and inputs["spatial_shape"] == PATCH
    assert outputs["num_channels"] == 3 and outputs["spatial_shape"] == PATCH
    assert meta["required_packages_version"]  # the schema's name (not the deprecated optional_packages_version)
    assert "optional_packages_version" not in meta
    assert meta["monai_version"] and meta["pytorch_version"] and np.all([v for v in meta["changelog"].values()])


def test_verify_net_in_out_passes(bundle, tmp_path):
    proc = _bundle_cli("verify_net_in_out", "network_def", "--meta_file", str(bundle / "configs" / "metadata.json"),
                       "--config_file", str(bundle / "configs" / "inference.json"), "--bundle_root", str(bundle),
                       "--device", "cpu", cwd=tmp_path)
    assert "verified with no error" in proc.stdout + proc.stderr
