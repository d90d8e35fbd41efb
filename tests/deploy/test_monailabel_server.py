"""A trained-bundle stand-in served by a real MONAI Label 0.8.5 server (its own virtualenv, nothing from this repository
on its Python path), checked voxel for voxel against the bundle's own batch inference in the project environment.

Needs the environment built by ``scripts/setup_monailabel_env.sh`` (path from ``NOISYSEG_MONAILABEL_VENV``, default
``<repo>/.venv-monailabel``); skipped with a message otherwise. Run with ``pytest -m deploy tests/deploy``.
The server listens on 127.0.0.1 only, every wait is bounded, and the server is stopped in the fixture teardown.
"""

from __future__ import annotations

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
    shutil.copytree(bundle, served)  # with the configs/train.json that every bundle ships

    studies = root / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    image = _study_image()
    nib.save(nib.Nifti1Image(image, STUDY_AFFINE), str(studies / f"{CASE_ID}.nii.gz"))
    label = (image > 1.0).astype(np.uint8)
    nib.save(nib.Nifti1Image(label, STUDY_AFFINE), str(studies / "labels" / "final" / f"{CASE_ID}.nii.gz"))
    # a second labelled study, so that MONAI Label's default validation split has a case to validate on
    nib.save(nib.Nifti1Image(np.flip(image, 0).copy(), STUDY_AFFINE), str(studies / f"{CASE_ID}_b.nii.gz"))
    nib.save(nib.Nifti1Image(np.flip(label, 0).copy(), STUDY_AFFINE),
             str(studies / "labels" / "final" / f"{CASE_ID}_b.nii.gz"))

    with running_server(monailabel_python, app, studies, root, MODEL_NAME) as (base_url, info, log_path):
        yield {"url": base_url, "info": info, "bundle": bundle, "served": served, "studies": studies,
               "root": root, "log": log_path}


def _batch_inference(bundle: Path, root: Path, studies: Path, name: str) -> Path:
    """``bundle``'s own folder batch inference of the study in the project environment (this interpreter), outside
    the repo; returns the label file."""
    inputs, outputs = root / f"{name}_in", root / f"{name}_out"
    inputs.mkdir()
    shutil.copy(studies / f"{CASE_ID}.nii.gz", inputs)
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


@pytest.fixture(scope="module")
def batch_seg(deployment) -> Path:
    """The trained bundle's batch inference (before any fine-tuning)."""
    return _batch_inference(deployment["bundle"], deployment["root"], deployment["studies"], "batch")


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


def test_train_updates_served_weights(deployment, batch_seg):
    # runs after the inference tests (file order): it changes the served copy's models/model.pt
    model_file = deployment["served"] / "models" / "model.pt"
    before = hashlib.sha256(model_file.read_bytes()).hexdigest()
    # MONAI Label's defaults (pretrained weights, a 0.2 validation split) with the bundle's shipped train.json
    params = json.dumps({"max_epochs": 3, "device": "cpu", "multi_gpu": False}).encode()
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
    # voxel for voxel what the fine-tuned weights give in batch inference, and not what the old ones gave
    after = _batch_inference(deployment["served"], deployment["root"], deployment["studies"], "after_training")
    _assert_same_label_image(served_file, after)
    old_labels = np.asanyarray(nib.load(str(batch_seg)).dataobj).astype(np.int64)
    assert not np.array_equal(np.asanyarray(nib.load(str(after)).dataobj).astype(np.int64), old_labels)
