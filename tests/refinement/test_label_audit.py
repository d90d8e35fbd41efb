"""Tests for custom/refinement/label_audit.py: one writer, the ALC (teacher) and SP-guided (refined files) sources."""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.inferers import SlidingWindowInferer
from monai.transforms import Compose, EnsureChannelFirstd, EnsureTyped, LoadImaged, Orientationd
from torch import nn

from custom.refinement.label_audit import (
    AUDIT_CSV,
    AuditCase,
    SlidingWindowPredictor,
    alc_audit_cases,
    export_alc_audit,
    export_spguided_audit,
    latest_refined_labels,
    to_source_geometry,
    write_label_audit,
)

SIDE = 16


def _save(array, path, affine=None):
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return str(path)


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _labels(tmp_path, name, array):
    return _save(array.astype(np.uint8), tmp_path / f"{name}.nii.gz")


def test_write_label_audit_ranks_by_score_and_reports_changes(tmp_path):
    # shape: (4, 4, 4); case "a" changes 8 voxels (0.125), case "b" 32 (0.5); clean = refined of "b"
    noisy = np.zeros((4, 4, 4), dtype=np.int64)
    refined_a = noisy.copy()
    refined_a[:2, :2, :2] = 1
    refined_b = noisy.copy()
    refined_b[:2] = 1
    noisy_path = _labels(tmp_path, "noisy", noisy)
    clean_path = _labels(tmp_path, "clean", refined_b)
    cases = [
        AuditCase("a", refined_a, np.eye(4), None, 0.1, noisy_path, clean_path),
        AuditCase("b", refined_b, np.eye(4), None, 0.7, noisy_path, None),
    ]
    csv_path = write_label_audit(cases, tmp_path / "audit", "uncertainty", num_classes=2)
    rows = _rows(csv_path)
    assert [r["case_id"] for r in rows] == ["b", "a"] and [r["rank"] for r in rows] == ["1", "2"]
    assert float(rows[0]["changed_fraction"]) == pytest.approx(0.5)
    assert float(rows[1]["changed_fraction"]) == pytest.approx(0.125)
    # Dice of "a" vs clean: 2 * 8 / (8 + 32) = 0.4; the noisy map has no foreground -> 0
    assert float(rows[1]["refined_dice"]) == pytest.approx(0.4) and float(rows[1]["noisy_dice"]) == 0.0
    assert rows[0]["refined_dice"] == ""  # no clean label known for "b"
    np.testing.assert_array_equal(np.asarray(nib.load(rows[0]["refined_label"]).dataobj), refined_b)


def test_write_label_audit_checks_shapes(tmp_path):
    noisy_path = _labels(tmp_path, "noisy", np.zeros((4, 4, 4)))
    case = AuditCase("a", np.zeros((4, 4, 5), dtype=np.int64), np.eye(4), None, 0.0, noisy_path)
    with pytest.raises(ValueError, match="shape"):
        write_label_audit([case], tmp_path / "audit", "score", 2)


def test_spguided_source_takes_the_latest_round(tmp_path):
    noisy = np.zeros((4, 4, 4), dtype=np.uint8)
    items = [
        {"case_id": "a", "image": "unused", "label": _labels(tmp_path, "a", noisy), "quality": "lq"},
        {"case_id": "b", "image": "unused", "label": _labels(tmp_path, "b", noisy), "quality": "lq"},
        {"case_id": "h", "image": "unused", "label": _labels(tmp_path, "h", noisy), "quality": "hq"},
    ]
    run = tmp_path / "run" / "refined_labels"
    for round_index, changed in ((1, 4), (2, 16)):
        (run / f"round_{round_index}").mkdir(parents=True)
        refined = noisy.copy()
        refined.reshape(-1)[:changed] = 1
        _labels(run / f"round_{round_index}", "a", refined)
    (run / "round_x").mkdir()  # not a round folder
    assert latest_refined_labels(tmp_path / "run")["a"].parent.name == "round_2"
    rows = _rows(export_spguided_audit(items, tmp_path / "run", num_classes=2))
    assert [r["case_id"] for r in rows] == ["a", "b"]  # HQ left out; b was never refined
    assert float(rows[0]["score"]) == pytest.approx(16 / 64) and float(rows[1]["score"]) == 0.0
    assert (tmp_path / "run" / "label_audit" / AUDIT_CSV).is_file()


class _DropoutSignNet(nn.Module):
    """Predicts class 1 where the image is positive; dropout makes the teacher's samples differ."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(3.0))
        self.dropout = nn.Dropout3d(p)

    def forward(self, x):
        x = self.dropout(x.repeat(1, 4, 1, 1, 1)).mean(dim=1, keepdim=True)
        return torch.cat([-self.scale * x, self.scale * x], dim=1)


def _alc_items(tmp_path, affine):
    clean = np.zeros((SIDE,) * 3, dtype=np.uint8)
    clean[3:9, 4:12, 4:12] = 1
    image = np.where(clean > 0, 1.0, -1.0).astype(np.float32)
    noisy = np.zeros_like(clean)
    noisy[3:11, 4:12, 4:12] = 1  # two extra slabs
    return [
        {"case_id": "a", "image": _save(image, tmp_path / "img.nii.gz", affine),
         "label": _save(noisy, tmp_path / "noisy.nii.gz", affine),
         "label_clean": _save(clean, tmp_path / "clean.nii.gz", affine), "quality": "lq"},
        {"case_id": "h", "image": _save(image, tmp_path / "img.nii.gz", affine),
         "label": _save(clean, tmp_path / "clean.nii.gz", affine), "quality": "hq"},
    ], clean


def _ras_transform():
    keys = ["image", "label"]
    return Compose([LoadImaged(keys, image_only=True), EnsureChannelFirstd(keys),
                    Orientationd(keys, axcodes="RAS"), EnsureTyped(keys, track_meta=True)])


@pytest.mark.parametrize("flip", [False, True])
def test_alc_source_writes_the_teachers_label_in_the_source_geometry(tmp_path, flip):
    affine = np.diag([-1.0 if flip else 1.0, 1.0, 1.0, 1.0])
    items, clean = _alc_items(tmp_path, affine)
    teacher = _DropoutSignNet(p=0.0)
    rows = _rows(export_alc_audit(
        teacher, items, _ras_transform(), tmp_path / "audit", num_classes=2,
        inferer=SlidingWindowInferer(roi_size=(SIDE,) * 3), num_samples=3,
    ))
    assert [r["case_id"] for r in rows] == ["a"] and rows[0]["score_name"] == "teacher_uncertainty"
    written = nib.load(rows[0]["refined_label"])
    np.testing.assert_array_equal(np.asarray(written.dataobj), clean)
    np.testing.assert_allclose(written.affine, affine)
    assert float(rows[0]["refined_dice"]) == pytest.approx(1.0)
    assert float(rows[0]["changed_fraction"]) == pytest.approx(2 * 8 * 8 / SIDE**3)


def test_alc_uncertainty_grows_with_dropout(tmp_path):
    items, _ = _alc_items(tmp_path, np.eye(4))
    scores = []
    for p in (0.0, 0.5):
        case = next(alc_audit_cases(_DropoutSignNet(p), items, _ras_transform(), num_samples=4, noise_std=0.0))
        scores.append(case.score)
    assert scores[0] == pytest.approx(0.0, abs=1e-7) and scores[1] > 1e-4


def test_export_alc_audit_loads_the_checkpoint(tmp_path):
    items, _ = _alc_items(tmp_path, np.eye(4))
    trained = _DropoutSignNet()
    with torch.no_grad():
        trained.scale.fill_(-3.0)  # an inverted teacher: every voxel flips
    torch.save(trained.state_dict(), tmp_path / "teacher.pt")
    rows = _rows(export_alc_audit(_DropoutSignNet(), items, _ras_transform(), tmp_path / "audit", 2,
                                  checkpoint=tmp_path / "teacher.pt", num_samples=1))
    assert float(rows[0]["refined_dice"]) == pytest.approx(0.0)


def test_sliding_window_predictor_is_one_module():
    net = _DropoutSignNet(0.5)
    predictor = SlidingWindowPredictor(net, SlidingWindowInferer(roi_size=(8, 8, 8)))
    assert any(m is net.dropout for m in predictor.modules())
    out = predictor.eval()(torch.ones(1, 1, SIDE, SIDE, SIDE))
    assert type(out) is torch.Tensor and out.shape == (1, 2, SIDE, SIDE, SIDE)


def test_to_source_geometry_without_trace_is_identity():
    refined = torch.arange(8).reshape(1, 2, 2, 2)
    np.testing.assert_array_equal(to_source_geometry(refined, torch.zeros(1, 2, 2, 2), None), refined[0].numpy())
    traced = MetaTensor(torch.zeros(1, 2, 2, 2))
    np.testing.assert_array_equal(to_source_geometry(refined, traced, _ras_transform()), refined[0].numpy())


def _load_script():
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / "export_label_audit.py"
    spec = importlib.util.spec_from_file_location("export_label_audit", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "config, expected", [("alc_la.json", "alc"), ("spguided_voxel_la.json", "spguided"), ("supervised_la.json", None)]
)
def test_script_detects_the_source(repo_root, config, expected):
    from monai.bundle import ConfigParser

    script = _load_script()
    parser = ConfigParser()
    parser.read_config(str(repo_root / "configs" / config))
    if expected is None:
        with pytest.raises(ValueError, match="--source"):
            script.detect_source(parser)
    else:
        assert script.detect_source(parser) == expected


def test_script_exports_an_spguided_run(demo_dataset, tmp_path, monkeypatch, repo_root):
    import json

    monkeypatch.chdir(tmp_path)  # the script must find the configs' macros from anywhere
    items = [i for i in json.loads(demo_dataset.read_text())["training"] if i["quality"] == "lq"]
    noisy = nib.load(str(demo_dataset.parent / items[0]["label"]))
    refined = np.asarray(noisy.dataobj).copy()
    refined[:2] = 1 - refined[:2]
    run = tmp_path / "run"
    (run / "refined_labels" / "round_1").mkdir(parents=True)
    _save(refined, run / "refined_labels" / "round_1" / f"{items[0]['case_id']}.nii.gz", noisy.affine)
    code = _load_script().main([
        "--config_file", str(repo_root / "configs" / "spguided_la.json"), "--dataset_dir", str(demo_dataset.parent),
        "--datalist", str(demo_dataset), "--output_dir", str(run),
    ])
    assert code == 0
    rows = _rows(run / "label_audit" / AUDIT_CSV)
    assert len(rows) == len(items) and rows[0]["case_id"] == items[0]["case_id"]
    assert float(rows[0]["score"]) == pytest.approx(2 / refined.shape[0])
    assert all(float(r["score"]) == 0.0 for r in rows[1:])
