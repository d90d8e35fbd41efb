"""``scripts/audit_labels.py`` on a prepared data set's layout: every image in one folder, noisy labels for some of
them only (the LQ cases). The cases with a label are audited; the others are skipped and counted on stderr."""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "audit_labels.py"
NETWORK_KWARGS = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "base_filters": 4, "dropout": 0.0}
SHAPE = (20, 18, 16)


def _script_module():
    spec = importlib.util.spec_from_file_location("audit_labels_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> Path:
    """images/ with 4 cases, labels/ with the labels of 2 of them."""
    root = tmp_path_factory.mktemp("partial")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        image = rng.normal(0.0, 1.0, SHAPE).astype(np.float32)
        nib.save(nib.Nifti1Image(image, np.eye(4)), str(root / "images" / f"case{i}.nii.gz"))
        if i in (1, 3):
            label = (image > 1.0).astype(np.uint8)
            nib.save(nib.Nifti1Image(label, np.eye(4)), str(root / "labels" / f"case{i}.nii.gz"))
    return root


def test_folder_items_pairs_the_labelled_images_and_lists_the_others(folders):
    items, skipped = _script_module().folder_items(str(folders / "images"), str(folders / "labels"))
    assert [i["case_id"] for i in items] == ["case1", "case3"]
    assert skipped == ["case0.nii.gz", "case2.nii.gz"]


def test_skipped_message_counts_and_names_the_first_few():
    message = _script_module()._skipped_message(16, [f"c{i}.nii.gz" for i in range(10)], "labelsTr_noisy")
    assert message == ("auditing 16 of 26 images; 10 skipped: no label in labelsTr_noisy "
                       "(c0.nii.gz, c1.nii.gz, c2.nii.gz, ...)")


def test_audit_runs_on_the_labelled_cases_and_says_what_it_skipped(folders, tmp_path):
    from custom.bundle import write_bundle
    from custom.networks.vnet import PaperVNet

    torch.manual_seed(0)
    bundle = write_bundle(tmp_path / "bundle", network=PaperVNet(**NETWORK_KWARGS), network_class="PaperVNet",
                          network_kwargs=NETWORK_KWARGS, class_names=["background", "foreground"],
                          spacing=[1.0, 1.0, 1.0], patch_size=[16, 16, 16], bundle_name="audit_test")
    out = tmp_path / "audit"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--bundle", str(bundle), "--images", str(folders / "images"),
                           "--labels", str(folders / "labels"), "--output_dir", str(out), "--device", "cpu"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"auditing 2 of 4 images; 2 skipped: no label in {folders / 'labels'} (case0.nii.gz, case2.nii.gz)" \
        in proc.stderr
    with open(out / "label_audit.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["case_id"] for r in rows) == ["case1", "case3"]
    assert sorted(p.name for p in (out / "labels").iterdir()) == ["case1.nii.gz", "case3.nii.gz"]


def test_no_label_for_any_image_is_an_option_error(folders, tmp_path, capsys):
    empty_match = tmp_path / "labels"
    empty_match.mkdir()
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.uint8), np.eye(4)), str(empty_match / "other.nii.gz"))
    code = _script_module().main(["--bundle", str(tmp_path), "--images", str(folders / "images"), "--labels",
                                  str(empty_match), "--output_dir", str(tmp_path / "out")])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1 and last.startswith(f"noisyseg: error: --labels: {empty_match}: no label for any image")
