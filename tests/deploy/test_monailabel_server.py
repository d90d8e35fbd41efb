"""A trained-bundle stand-in served by a real MONAI Label 0.8.5 server (its own virtualenv, nothing from this repository
on its Python path), checked voxel for voxel against the bundle's own batch inference in the project environment.

Needs the environment built by ``scripts/setup_monailabel_env.sh`` (path from ``NOISYSEG_MONAILABEL_VENV``, default
``<repo>/.venv-monailabel``); skipped with a message otherwise. Run with ``pytest -m deploy tests/deploy``.
The server listens on 127.0.0.1 only, every wait is bounded, and the server is stopped in the fixture teardown.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.deploy.monailabel_helpers import clean_env as _clean_env
from tests.deploy.monailabel_helpers import log_tail as _log_tail
from tests.deploy.monailabel_helpers import multipart as _multipart
from tests.deploy.monailabel_helpers import request as _request
from tests.deploy.monailabel_helpers import running_server

pytestmark = pytest.mark.deploy

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_NAME = "noisyseg_deploy"
CASE_ID = "case_pli"
TRAIN_TIMEOUT_S = 300.0
CLASS_NAMES = ["background", "left_atrium"]
NETWORK_KWARGS = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "base_filters": 4, "dropout": 0.5}
# array axes (posterior, left, inferior), permuted and flipped, anisotropic (0.9 x 1.1 x 2.0 mm): far from RAS
STUDY_AFFINE = np.array(
    [[0.0, -1.1, 0.0, 10.0], [-0.9, 0.0, 0.0, 20.0], [0.0, 0.0, -2.0, 30.0], [0.0, 0.0, 0.0, 1.0]]
)
STUDY_SHAPE = (28, 30, 14)


def _study_image() -> np.ndarray:
    # an off-centre bright box on noise, so that a flipped or permuted label would not match
    rng = np.random.default_rng(7)
    image = rng.normal(0.0, 0.3, STUDY_SHAPE).astype(np.float32)
    image[5:16, 8:24, 3:9] += 2.0
    return image


def _random_bundle(root: Path) -> Path:
    """A bundle from the real writer around a seeded random PaperVNet whose BatchNorm statistics were set on data, so
    that the label map it predicts is not constant (a trained network is not needed to compare two servings)."""
    from custom.handlers import write_bundle
    from custom.networks.vnet import PaperVNet

    torch.manual_seed(0)
    net = PaperVNet(**NETWORK_KWARGS)
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    net.train()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(2):
            net(torch.randn(2, 1, 32, 32, 32, generator=generator))
    for m in norms:
        m.momentum = 0.1
    net.eval()
    return write_bundle(
        root, network=net, network_class="PaperVNet", network_kwargs=NETWORK_KWARGS, class_names=CLASS_NAMES,
        spacing=[1.25, 1.25, 1.25], patch_size=[32, 32, 32], bundle_name=MODEL_NAME,
        method="deployment test bundle (random weights)",
    )


def finetune_train_config(inference_config: dict[str, Any]) -> dict[str, Any]:
    """A ``configs/train.json`` that MONAI Label's ``BundleTrainTask`` can run: plain supervised fine-tuning
    (Dice + CE) of ``network_def`` on the datastore's labelled images, saving ``models/model.pt`` (a plain
    ``state_dict``) at the end. Uses only MONAI and the bundle's ``scripts/``; ids MONAI Label overrides:
    ``bundle_root``, ``device``, ``train#trainer#max_epochs``, ``train#dataset#data``, ``train#handlers``."""
    keys = ["image", "label"]
    return {
        # the inference config's imports: its bundle_root expression (overridden by MONAI Label) needs them
        "imports": list(inference_config["imports"]),
        "bundle_root": inference_config["bundle_root"],
        "bundle_scripts": inference_config["bundle_scripts"],
        "device": inference_config["device"],
        "pixdim": inference_config["pixdim"],
        "patch_size": inference_config["patch_size"],
        "network_def": copy.deepcopy(inference_config["network_def"]),
        "network": "$@network_def.to(@device)",
        "loss": {"_target_": "DiceCELoss", "to_onehot_y": True, "softmax": True},
        "optimizer": {"_target_": "torch.optim.SGD", "params": "$@network.parameters()", "lr": 0.01,
                      "momentum": 0.9, "weight_decay": 0.0001},
        "train": {
            "preprocessing": {
                "_target_": "Compose",
                "transforms": [
                    {"_target_": "LoadImaged", "keys": keys, "image_only": True},
                    {"_target_": "EnsureChannelFirstd", "keys": keys},
                    {"_target_": "Orientationd", "keys": keys, "axcodes": "RAS"},
                    {"_target_": "Spacingd", "keys": keys, "pixdim": "@pixdim", "mode": ["bilinear", "nearest"]},
                    {"_target_": "NormalizeIntensityd", "keys": "image"},
                    {"_target_": "SpatialPadd", "keys": keys, "spatial_size": "@patch_size"},
                    {"_target_": "RandSpatialCropd", "keys": keys, "roi_size": "@patch_size", "random_size": False},
                    {"_target_": "EnsureTyped", "keys": keys},
                ],
            },
            "dataset": {"_target_": "Dataset", "data": [], "transform": "@train#preprocessing"},
            "dataloader": {"_target_": "DataLoader", "dataset": "@train#dataset", "batch_size": 2, "shuffle": True,
                           "num_workers": 0},
            "inferer": {"_target_": "SimpleInferer"},
            "handlers": [
                {"_target_": "StatsHandler", "tag_name": "train_loss",
                 "output_transform": "$monai.handlers.from_engine(['loss'], first=True)"},
            ],
            "final_saver": {"_target_": "CheckpointSaver", "save_dir": "$@bundle_root + '/models'",
                            "save_dict": {"model": "@network"}, "save_final": True, "final_filename": "model.pt"},
            "trainer": {"_target_": "SupervisedTrainer", "max_epochs": 1, "device": "@device",
                        "train_data_loader": "@train#dataloader", "network": "@network", "loss_function": "@loss",
                        "optimizer": "@optimizer", "inferer": "@train#inferer",
                        "train_handlers": "$@train#handlers + [@train#final_saver]"},
        },
        "run": ["$@bundle_scripts", "$@train#trainer.run()"],
    }


# ---------------------------------------------------------------------------------------------
# HTTP helpers (standard library only; bounded by timeouts)


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def deployment(monailabel_python, tmp_path_factory):
    """Bundle + monaibundle app + studies; a running server on 127.0.0.1 (stopped at teardown)."""
    root = tmp_path_factory.mktemp("deploy")
    bundle = _random_bundle(root / "bundle")

    # the sample app ships inside the monailabel wheel: copy it, then copy the bundle alone into its model/
    apps = root / "apps"
    subprocess.run([str(monailabel_python), "-m", "monailabel.main", "apps", "--download", "--name", "monaibundle",
                    "--output", str(apps)], check=True, cwd=root, env=_clean_env(), capture_output=True, timeout=120)
    app = apps / "monaibundle"
    served = app / "model" / MODEL_NAME
    shutil.copytree(bundle, served)
    # fine-tuning config for the training test (our bundles ship none; see docs/deploy.md)
    inference_config = json.loads((served / "configs" / "inference.json").read_text())
    (served / "configs" / "train.json").write_text(json.dumps(finetune_train_config(inference_config), indent=2))

    studies = root / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    image = _study_image()
    nib.save(nib.Nifti1Image(image, STUDY_AFFINE), str(studies / f"{CASE_ID}.nii.gz"))
    label = (image > 1.0).astype(np.uint8)
    nib.save(nib.Nifti1Image(label, STUDY_AFFINE), str(studies / "labels" / "final" / f"{CASE_ID}.nii.gz"))

    with running_server(monailabel_python, app, studies, root, MODEL_NAME) as (base_url, info, log_path):
        yield {"url": base_url, "info": info, "bundle": bundle, "served": served, "studies": studies,
               "root": root, "log": log_path}


@pytest.fixture(scope="module")
def batch_seg(deployment) -> Path:
    """The bundle's own folder batch inference in the project environment (this interpreter), outside the repo."""
    root = deployment["root"]
    inputs, outputs = root / "batch_in", root / "batch_out"
    inputs.mkdir()
    shutil.copy(deployment["studies"] / f"{CASE_ID}.nii.gz", inputs)
    bundle = deployment["bundle"]
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file",
         str(bundle / "configs" / "inference.json"), "--bundle_root", str(bundle), "--dataset_dir", str(inputs),
         "--output_dir", str(outputs)],
        cwd=root, env=_clean_env(), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = outputs / f"{CASE_ID}_seg.nii.gz"
    assert out.is_file(), proc.stderr[-4000:]
    return out


# ---------------------------------------------------------------------------------------------
# tests


def _assert_same_label_image(served_file: Path, batch_file: Path) -> None:
    served, batch = nib.load(str(served_file)), nib.load(str(batch_file))
    assert served.shape == batch.shape == STUDY_SHAPE
    np.testing.assert_allclose(served.affine, STUDY_AFFINE, atol=1e-5)
    np.testing.assert_allclose(batch.affine, STUDY_AFFINE, atol=1e-5)
    served_labels = np.asanyarray(served.dataobj)
    batch_labels = np.asanyarray(batch.dataobj)
    np.testing.assert_array_equal(served_labels.astype(np.int64), batch_labels.astype(np.int64))


def test_server_environment_cannot_import_this_repository(monailabel_python, deployment):
    # what the server sees (same interpreter, environment and working directory): the bundle must be all it needs
    probe = subprocess.run(
        [str(monailabel_python), "-c", "import importlib.util as u, sys; sys.exit(u.find_spec('custom') is not None)"],
        cwd=deployment["root"], env=_clean_env(), capture_output=True, timeout=60,
    )
    assert probe.returncode == 0, "the MONAI Label environment can import this repository's `custom` package"


def test_server_lists_bundle_as_segmentation_model(deployment):
    models = deployment["info"]["models"]
    assert MODEL_NAME in models
    assert models[MODEL_NAME]["type"] == "segmentation"
    assert models[MODEL_NAME]["labels"] == {"left_atrium": 1}
    assert MODEL_NAME in deployment["info"]["trainers"]


def test_batch_inference_label_is_not_trivial(batch_seg):
    labels = np.asanyarray(nib.load(str(batch_seg)).dataobj)
    fractions = np.bincount(labels.ravel().astype(np.int64), minlength=2) / labels.size
    # both classes well present: a comparison of two constant maps would prove nothing about geometry
    assert fractions.shape == (2,) and fractions.min() > 0.05, fractions


def test_infer_by_image_id_matches_batch_inference(deployment, batch_seg):
    status, body = _request("POST", f"{deployment['url']}/infer/{MODEL_NAME}?image={CASE_ID}&output=image", body=b"")
    assert status == 200, body[:2000]
    served_file = deployment["root"] / "served_by_id.nii.gz"
    served_file.write_bytes(body)
    _assert_same_label_image(served_file, batch_seg)


def test_infer_uploaded_file_matches_batch_inference(deployment, batch_seg):
    payload = (deployment["studies"] / f"{CASE_ID}.nii.gz").read_bytes()
    body, content_type = _multipart("file", "upload.nii.gz", payload)
    status, answer = _request("POST", f"{deployment['url']}/infer/{MODEL_NAME}?output=image", body=body,
                              headers={"Content-Type": content_type})
    assert status == 200, answer[:2000]
    served_file = deployment["root"] / "served_upload.nii.gz"
    served_file.write_bytes(answer)
    _assert_same_label_image(served_file, batch_seg)


def test_unknown_model_is_refused(deployment):
    status, _ = _request("POST", f"{deployment['url']}/infer/no_such_model?image={CASE_ID}&output=image", body=b"")
    assert status >= 400


def test_train_one_epoch_updates_served_weights(deployment, batch_seg):
    # runs after the inference tests (file order): it changes the served copy's models/model.pt
    model_file = deployment["served"] / "models" / "model.pt"
    before = hashlib.sha256(model_file.read_bytes()).hexdigest()
    params = json.dumps({"max_epochs": 1, "val_split": -1, "device": "cpu", "multi_gpu": False}).encode()
    status, body = _request("POST", f"{deployment['url']}/train/{MODEL_NAME}", body=params,
                            headers={"Content-Type": "application/json"})
    assert status == 200, body[:2000]

    deadline = time.monotonic() + TRAIN_TIMEOUT_S
    task: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status, body = _request("GET", f"{deployment['url']}/train/", timeout=10)
        task = json.loads(body) if status == 200 else {}
        if task.get("status") in ("DONE", "ERROR"):
            break
        time.sleep(2.0)
    assert task.get("status") == "DONE", f"{task}\n{_log_tail(deployment['log'])}"

    state = torch.load(model_file, map_location="cpu", weights_only=True)
    assert set(state) == set(torch.load(deployment["bundle"] / "models" / "model.pt", weights_only=True))
    assert hashlib.sha256(model_file.read_bytes()).hexdigest() != before

    # the retrained model is served (MONAI Label reloads model.pt when its time stamp changes)
    status, body = _request("POST", f"{deployment['url']}/infer/{MODEL_NAME}?image={CASE_ID}&output=image", body=b"")
    assert status == 200, body[:2000]
    served_file = deployment["root"] / "served_after_training.nii.gz"
    served_file.write_bytes(body)
    served = nib.load(str(served_file))
    assert served.shape == STUDY_SHAPE
    np.testing.assert_allclose(served.affine, STUDY_AFFINE, atol=1e-5)
