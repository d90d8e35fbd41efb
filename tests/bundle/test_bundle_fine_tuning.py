"""The exported bundle's ``configs/train.json`` fine-tunes from the bundle folder as its README shows it:
``python -m monai.bundle run training --config_file configs/train.json --datalist <datalist.json>`` in a fresh
process, on tiny real NIfTI cases (training and validation splits), replacing ``models/model.pt``.

Whether it starts from the bundle's weights is checked with a learning rate of 0: the convolution weights then stay
those of ``models/model.pt`` (BatchNorm's running statistics still move in training mode) unless ``--pretrained
False`` starts from random ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

NETWORK_KWARGS = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "base_filters": 4, "dropout": 0.0}
PATCH = [16, 16, 16]  # PaperVNet needs sides divisible by 16
SHAPE = (20, 18, 16)


def _bundle(root: Path) -> Path:
    from custom.bundle import write_bundle
    from custom.networks.vnet import PaperVNet

    torch.manual_seed(0)
    net = PaperVNet(**NETWORK_KWARGS)
    return write_bundle(root, network=net, network_class="PaperVNet", network_kwargs=NETWORK_KWARGS,
                        class_names=["background", "left_atrium"], spacing=[1.0, 1.0, 1.0], patch_size=PATCH,
                        bundle_name="finetune_test")


def _datalist(root: Path) -> Path:
    """Three cases (a bright box and its label) in images/ and labels/, a datalist with 2 training + 1 validation
    case and paths relative to its folder, and a stray ``label_clean`` key as noisyseg's datalists have."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    cases = []
    for i in range(3):
        image = rng.normal(0.0, 0.3, SHAPE).astype(np.float32)
        label = np.zeros(SHAPE, np.uint8)
        label[4 + i : 12 + i, 5:13, 4:11] = 1
        image[label > 0] += 2.0
        nib.save(nib.Nifti1Image(image, np.eye(4)), str(root / "images" / f"case{i}.nii.gz"))
        nib.save(nib.Nifti1Image(label, np.eye(4)), str(root / "labels" / f"case{i}.nii.gz"))
        cases.append({"case_id": f"case{i}", "image": f"images/case{i}.nii.gz", "label": f"labels/case{i}.nii.gz",
                      "label_clean": f"labels/case{i}.nii.gz"})
    path = root / "datalist.json"
    path.write_text(json.dumps({"training": cases[:2], "validation": cases[2:]}))
    return path


def _run_training(bundle: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-m", "monai.bundle", "run", "training", "--config_file",
                           "configs/train.json", *args], cwd=bundle, env=env, capture_output=True, text=True,
                          timeout=300)


def _conv_weights(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v for k, v in state.items() if k.endswith(".weight") and v.dim() == 5}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return _datalist(tmp_path_factory.mktemp("finetune_data"))


def test_bundle_ships_a_training_config(tmp_path):
    bundle = _bundle(tmp_path / "bundle")
    config = json.loads((bundle / "configs" / "train.json").read_text())
    # the ids MONAI Label's BundleTrainTask overrides or reads must exist
    for key in ("bundle_root", "device", "network_def", "network", "run"):
        assert key in config, key
    assert {"max_epochs", "train_data_loader"} <= set(config["train"]["trainer"])
    assert {"data"} <= set(config["train"]["dataset"]) and isinstance(config["train"]["handlers"], list)
    assert "data" in config["validate"]["dataset"]
    assert config["network_def"] == json.loads((bundle / "configs" / "inference.json").read_text())["network_def"]


def test_fine_tuning_from_the_bundle_folder_replaces_the_model(tmp_path, data):
    bundle = _bundle(tmp_path / "bundle")
    before = torch.load(bundle / "models" / "model.pt", weights_only=True)
    proc = _run_training(bundle, "--datalist", str(data), "--max_epochs", "2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    after = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert set(after) == set(before)  # a plain state_dict of network_def, as the inference config loads it
    assert any(not torch.equal(before[k], after[k]) for k in before)
    log = proc.stdout + proc.stderr
    assert "val_mean_dice" in log  # the datalist's validation case was evaluated
    assert "Epoch[2]" in log


@pytest.mark.parametrize("pretrained", [True, False])
def test_fine_tuning_starts_from_the_bundle_weights(tmp_path, data, pretrained):
    bundle = _bundle(tmp_path / "bundle")
    before = _conv_weights(bundle / "models" / "model.pt")
    proc = _run_training(bundle, "--datalist", str(data), "--max_epochs", "1", "--learning_rate", "0.0",
                         "--pretrained", str(pretrained))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    after = _conv_weights(bundle / "models" / "model.pt")
    same = all(torch.equal(before[k], after[k]) for k in before)
    assert same is pretrained


def test_fine_tuning_without_cases_stops_with_one_line(tmp_path):
    bundle = _bundle(tmp_path / "bundle")
    before = (bundle / "models" / "model.pt").read_bytes()
    proc = _run_training(bundle)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "no training cases" in last and "--datalist" in last, proc.stderr[-2000:]
    assert (bundle / "models" / "model.pt").read_bytes() == before
