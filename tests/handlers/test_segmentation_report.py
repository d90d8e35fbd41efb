from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator
from monai.inferers import SimpleInferer
from monai.transforms import AsDiscreted, Compose, EnsureChannelFirstd, LoadImaged
from numpy.testing import assert_allclose

import custom.handlers.segmentation_report as report_module
from custom.handlers.segmentation_report import SegmentationReportHandler, samples_from_state
from custom.io import save_nifti

SPACING = (2.0, 1.0, 1.0)


def _threshold_net() -> torch.nn.Module:
    # logits (0, x - 0.5): class 1 exactly where the image is above 0.5
    net = torch.nn.Conv3d(1, 2, kernel_size=1)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([0.0, 1.0]).view(2, 1, 1, 1, 1))
        net.bias.copy_(torch.tensor([0.0, -0.5]))
    return net


@pytest.fixture
def two_cases(tmp_path):
    """Case "a": image == label (perfect); case "b": image cube shifted by one voxel along axis 0."""
    affine = np.diag([*SPACING, 1.0])
    label = np.zeros((10, 10, 10), dtype=np.uint8)
    label[3:7, 2:6, 2:6] = 1
    shifted = np.zeros_like(label)
    shifted[2:6, 2:6, 2:6] = 1
    items = []
    for case_id, image in (("a", label), ("b", shifted)):
        save_nifti(image.astype(np.float32), affine, tmp_path / f"{case_id}_img.nii.gz")
        save_nifti(label, affine, tmp_path / f"{case_id}_lbl.nii.gz")
        items.append(
            {"image": str(tmp_path / f"{case_id}_img.nii.gz"), "label": str(tmp_path / f"{case_id}_lbl.nii.gz")}
        )
        items[-1]["case_id"] = f"case_{case_id}"
    return items


def _evaluator(items, handler, decollate: bool, postprocess: bool, network=None) -> SupervisedEvaluator:
    keys = ["image", "label"]
    loader = DataLoader(
        Dataset(items, transform=Compose([LoadImaged(keys), EnsureChannelFirstd(keys)])), batch_size=2, num_workers=0
    )
    return SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=loader,
        network=network if network is not None else _threshold_net(),
        inferer=SimpleInferer(),
        postprocessing=Compose([AsDiscreted(keys="pred", argmax=True)]) if postprocess else None,
        decollate=decollate,
        val_handlers=[handler],
    )


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize(
    "decollate, postprocess",
    [[True, True], [True, False], [False, False]],  # label map per sample, logits per sample, batched logits
)
def test_report_on_supervised_evaluator(tmp_path, two_cases, decollate, postprocess):
    handler = SegmentationReportHandler(tmp_path / "report", num_classes=2, class_names=["bg", "atrium"])
    evaluator = _evaluator(two_cases, handler, decollate, postprocess)
    evaluator.run()

    rows = _read_csv(tmp_path / "report" / "metrics_per_case.csv")
    assert [r["case_id"] for r in rows] == ["case_a", "case_b"]
    assert list(rows[0])[:3] == ["case_id", "dice_atrium", "dice_mean"]
    a, b = ({k: float(v) for k, v in r.items() if k not in ("case_id", "distance_undefined")} for r in rows)
    assert [r["distance_undefined"] for r in rows] == ["", ""]  # every distance defined
    assert a["dice_atrium"] == 1.0 and a["hd95_mm_atrium"] == 0.0
    # shifted 4^3 cube, spacing (2, 1, 1) from the label affine: see tests/evaluation/test_metrics.py
    assert_allclose(b["dice_atrium"], 0.75)
    assert_allclose(b["jaccard_mean"], 0.6)
    assert_allclose(b["hd95_mm_atrium"], 2.0, rtol=1e-6)
    assert_allclose(b["asd_mm_atrium"], 72 / 112, rtol=1e-6)
    assert_allclose(b["hd95_vox_atrium"], 1.0, rtol=1e-6)
    assert_allclose(b["asd_vox_mean"], 40 / 112, rtol=1e-6)

    summary = json.loads((tmp_path / "report" / "metrics_summary.json").read_text())
    assert summary["dice_mean"]["count"] == 2
    assert_allclose(summary["dice_mean"]["mean"], 0.875)
    assert_allclose(summary["dice_mean"]["std"], 0.125)
    assert_allclose(summary["hd95_mm_mean"]["mean"], 1.0, rtol=1e-6)
    assert_allclose(evaluator.state.metrics["mean_dice_report"], 0.875)
    assert not list((tmp_path / "report").glob(".*tmp*"))  # atomic writes leave no temp files


def test_rerun_replaces_rows_and_nan_is_null(tmp_path, two_cases):
    # a 3-class report: class 2 is absent from every case, so its distances are NaN -> null in JSON
    handler = SegmentationReportHandler(tmp_path, num_classes=3, prefix="test_", spacing_from_meta=False)
    net = torch.nn.Conv3d(1, 3, kernel_size=1)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([0.0, 1.0, -1.0]).view(3, 1, 1, 1, 1))
        net.bias.copy_(torch.tensor([0.0, -0.5, -5.0]))
    evaluator = _evaluator(two_cases, handler, decollate=True, postprocess=False, network=net)
    evaluator.run()
    evaluator.run()

    rows = _read_csv(tmp_path / "test_metrics_per_case.csv")
    assert len(rows) == 2 and len(handler.rows) == 2
    assert rows[1]["dice_2"] == "1.0" and rows[1]["hd95_mm_2"] == "nan"
    # spacing_from_meta=False: mm distances are voxel distances
    assert rows[1]["hd95_mm_1"] == rows[1]["hd95_vox_1"]
    summary = json.loads((tmp_path / "test_metrics_summary.json").read_text())
    assert summary["hd95_mm_2"] == {"mean": None, "std": None, "count": 0}
    assert "test_mean_dice_report" in evaluator.state.metrics


def test_case_id_falls_back_to_label_file_name(tmp_path, two_cases):
    items = [{k: v for k, v in item.items() if k != "case_id"} for item in two_cases]
    handler = SegmentationReportHandler(tmp_path, num_classes=2)
    _evaluator(items, handler, decollate=True, postprocess=True).run()
    assert [r["case_id"] for r in handler.rows] == ["a_lbl", "b_lbl"]


def test_only_rank_zero_writes_and_duplicates_are_dropped(tmp_path, monkeypatch):
    handler = SegmentationReportHandler(tmp_path, num_classes=2)
    handler.rows = [{"case_id": "x", "dice_1": 0.5, "dice_mean": 0.5}]
    other_rank_rows = [
        {"case_id": "y", "dice_1": 1.0, "dice_mean": 1.0},
        {"case_id": "x", "dice_1": 0.0, "dice_mean": 0.0},
    ]

    def fake_all_gather_object(out, obj):
        out[0], out[1] = other_rank_rows, obj

    monkeypatch.setattr(report_module, "_distributed_rank_and_size", lambda: (1, 2))
    monkeypatch.setattr(torch.distributed, "all_gather_object", fake_all_gather_object)

    class _Engine:
        class state:
            metrics: dict = {}

    handler.epoch_completed(_Engine)
    assert _Engine.state.metrics["mean_dice_report"] == 0.5  # y = 1.0 and the first x = 0.0
    assert [r["case_id"] for r in handler.rows] == ["y", "x"]
    assert not list(tmp_path.iterdir())


def test_samples_from_state_forms():
    pred = torch.zeros(2, 1, 4, 4, 4)
    batched = samples_from_state({"case_id": ["p", "q"]}, {"pred": pred, "label": pred})
    assert [b["case_id"] for b, _ in batched] == ["p", "q"]
    assert batched[0][1]["pred"].shape == (1, 4, 4, 4)
    listed = samples_from_state(None, [{"pred": pred[0]}])
    assert listed == [({}, listed[0][1])]
    with pytest.raises(ValueError, match="per-sample dicts"):
        samples_from_state(None, pred)


def test_missing_keys_and_bad_arguments(tmp_path):
    handler = SegmentationReportHandler(tmp_path, num_classes=2)
    with pytest.raises(ValueError, match="'pred'"):
        handler.score_sample({}, {"label": torch.zeros(1, 2, 2, 2)})
    with pytest.raises(ValueError, match="'label'"):
        handler.score_sample({}, {"pred": torch.zeros(1, 2, 2, 2)})
    with pytest.raises(ValueError, match="num_classes"):
        SegmentationReportHandler(tmp_path, num_classes=1)
    with pytest.raises(ValueError, match="pred_key"):
        SegmentationReportHandler(tmp_path, num_classes=2, pred_key="")
    with pytest.raises(ValueError, match="case c9: pred and target spatial shapes differ"):
        handler.score_sample({"case_id": "c9"}, {"pred": torch.zeros(1, 2, 2, 2), "label": torch.zeros(1, 3, 2, 2)})
    ones = torch.ones(1, 2, 2, 2)
    row = handler.score_sample({"case_id": torch.tensor([7])}, {"pred": ones, "label": ones})
    assert row["case_id"] == "7" and row["dice_mean"] == 1.0


def test_summary_line_says_how_many_distances_are_undefined_and_why(tmp_path, two_cases, caplog):
    # a network that predicts no foreground anywhere: both cases have a Dice of 0 and no surface distance
    silent = torch.nn.Conv3d(1, 2, kernel_size=1)
    with torch.no_grad():
        silent.weight.zero_()
        silent.bias.copy_(torch.tensor([1.0, 0.0]))
    handler = SegmentationReportHandler(tmp_path / "report", num_classes=2, class_names=["bg", "atrium"])
    evaluator = _evaluator(two_cases, handler, decollate=True, postprocess=True, network=silent)
    with caplog.at_level("INFO"):
        evaluator.run()
    lines = [r.getMessage() for r in caplog.records if "segmentation report:" in r.getMessage()]
    assert len(lines) == 1
    assert "2 cases, Dice 0.0000 +- 0.0000, HD95 nan mm, ASD nan mm (2 of 2 undefined: empty prediction)" in lines[0]
    rows = _read_csv(tmp_path / "report" / "metrics_per_case.csv")
    assert [r["distance_undefined"] for r in rows] == ["atrium: empty prediction"] * 2


def test_summary_line_has_no_note_when_every_distance_is_defined(tmp_path, two_cases, caplog):
    handler = SegmentationReportHandler(tmp_path / "report", num_classes=2, class_names=["bg", "atrium"])
    with caplog.at_level("INFO"):
        _evaluator(two_cases, handler, decollate=True, postprocess=True).run()
    line = next(r.getMessage() for r in caplog.records if "segmentation report:" in r.getMessage())
    assert "undefined" not in line
