"""Tests for custom/handlers/superpixel_stage.py: the refinement stage (NIfTI written in the source geometry, labels
swapped into the dataset, rounds and stopping, the gates)."""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.data import CacheDataset
from monai.inferers import SlidingWindowInferer
from monai.transforms import (
    Compose,
    CopyItemsd,
    DeleteItemsd,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    Orientationd,
    Spacingd,
)
from scipy import ndimage
from torch import nn

from custom.handlers import LossGapHandler, SuperpixelRefinementStage
from custom.refinement.volume_refinement import averaged_probabilities, refine_case
from tests.handlers.test_coteaching_schedule import _gap_engine

SIDE = 16
SPACING = 1.25


class SignNet(nn.Module):
    """Logits ``(-k x, k x)``: predicts class 1 wherever the image is positive (a perfect, known "network")."""

    def __init__(self, k: float = 4.0) -> None:
        super().__init__()
        self.k = nn.Parameter(torch.tensor(float(k)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([-self.k * x, self.k * x], dim=1)


def _sphere(center=(5, 8, 8), radius=4.0) -> np.ndarray:
    grid = np.indices((SIDE, SIDE, SIDE)).astype(float)
    distance = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, center)))
    return (distance <= radius).astype(np.uint8)


def _grid_supervoxels(cell: int = 4) -> np.ndarray:
    axis = np.arange(SIDE) // cell
    per_axis = SIDE // cell
    return (axis[:, None, None] * per_axis**2 + axis[None, :, None] * per_axis + axis[None, None, :]).astype(np.int32)


def _save(array, path, affine):
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return str(path)


def _dataset_items(tmp_path, affine=None, cases=("a", "b"), hq=("h",)):
    """Cases with a bright off-centre sphere (clean label) and a noisy label = the sphere dilated by 2 voxels."""
    affine = np.diag([SPACING, SPACING, SPACING, 1.0]) if affine is None else affine
    folder = tmp_path / "data"
    folder.mkdir(exist_ok=True)
    clean = _sphere()
    noisy = ndimage.binary_dilation(clean, iterations=2).astype(np.uint8)
    image = np.where(clean > 0, 1.0, -1.0).astype(np.float32)
    items = []
    for case_id in (*cases, *hq):
        is_hq = case_id in hq
        items.append({
            "case_id": case_id,
            "image": _save(image, folder / f"{case_id}_img.nii.gz", affine),
            "label": _save(clean if is_hq else noisy, folder / f"{case_id}_lab.nii.gz", affine),
            "label_clean": _save(clean, folder / f"{case_id}_clean.nii.gz", affine),
            "superpixel": _save(_grid_supervoxels(), folder / f"{case_id}_sv.nii.gz", affine),
            "quality": "hq" if is_hq else "lq",
        })
    return items, clean, noisy


def _load_transform():
    keys = ["image", "label", "superpixel"]
    return Compose([
        # as configs/base/common.json: MONAI 1.6.1 Spacingd("label") would treat "label_clean" as its metadata
        CopyItemsd("label_clean", names="clean_label", allow_missing_keys=True),
        DeleteItemsd("label_clean"),
        LoadImaged(keys, image_only=True, allow_missing_keys=True),
        EnsureChannelFirstd(keys, allow_missing_keys=True),
        Orientationd(keys, axcodes="RAS", allow_missing_keys=True),
        Spacingd("image", pixdim=[SPACING] * 3, mode="bilinear"),
        Spacingd(["label", "superpixel"], pixdim=[SPACING] * 3, mode="nearest", allow_missing_keys=True),
        EnsureTyped(keys, allow_missing_keys=True, track_meta=True),
    ])


def _dice(a, b) -> float:
    return 2.0 * np.sum((a > 0) & (b > 0)) / (np.sum(a > 0) + np.sum(b > 0))


# ---------------------------------------------------------------------- one case
def test_averaged_probabilities_restores_modes_and_averages():
    net1, net2 = SignNet(1.0), SignNet(3.0)
    net1.train()
    net2.eval()
    x = torch.tensor([0.5]).view(1, 1, 1, 1, 1)
    probs = averaged_probabilities([net1, net2], x)
    expected = 0.5 * (torch.sigmoid(torch.tensor(1.0)) + torch.sigmoid(torch.tensor(3.0)))  # p1 = sigmoid(2 k x)
    assert float(probs[0, 1]) == pytest.approx(float(expected), abs=1e-6)
    assert net1.training and not net2.training
    with pytest.raises(ValueError):
        averaged_probabilities([], x)


@pytest.mark.parametrize("use_superpixels", [False, True])
@pytest.mark.parametrize("flip", [False, True])
def test_refine_case_corrects_labels_in_the_source_geometry(tmp_path, use_superpixels, flip):
    # a flipped first axis makes Orientationd reorder the volume: the result must be mapped back
    affine = np.diag([-SPACING if flip else SPACING, SPACING, SPACING, 1.0])
    items, clean, noisy = _dataset_items(tmp_path, affine=affine, cases=("a",), hq=())
    case = refine_case(
        [SignNet(), SignNet(2.0)], items[0], _load_transform(), keep_ratio=[0.3, 0.3],
        inferer=SlidingWindowInferer(roi_size=(SIDE,) * 3), use_superpixels=use_superpixels,
    )
    np.testing.assert_allclose(case.affine, affine)
    assert case.label.shape == clean.shape
    assert case.changed_fraction == pytest.approx(float(np.mean(case.label != noisy)))
    if use_superpixels:
        # whole (supervoxel, class) pieces flip: most of the dilation ring is undone
        assert _dice(case.label, clean) > _dice(noisy, clean) + 0.1
    else:
        # voxel pieces, a perfect network and a budget (70% of the noisy foreground) above the number of wrong
        # voxels (the whole ring, all with one loss value: a budget below it would drop them all as ties)
        np.testing.assert_array_equal(case.label, clean)


def test_refine_case_keeps_labels_when_nothing_may_change(tmp_path):
    items, _, noisy = _dataset_items(tmp_path, cases=("a",), hq=())
    case = refine_case([SignNet(), SignNet()], items[0], _load_transform(), keep_ratio=[1.0, 1.0])
    np.testing.assert_array_equal(case.label, noisy)
    assert case.changed_fraction == 0.0


def test_refine_case_needs_the_supervoxel_map(tmp_path):
    items, _, _ = _dataset_items(tmp_path, cases=("a",), hq=())
    del items[0]["superpixel"]
    with pytest.raises(ValueError, match="superpixel"):
        refine_case([SignNet()], items[0], _load_transform(), keep_ratio=[0.5, 0.5])


# ---------------------------------------------------------------------- the stage
def _stage_engine(gaps, keep_ratio=(0.3, 0.3)):
    engine, data = _gap_engine(gaps)
    engine.networks = [SignNet(), SignNet(2.0)]
    engine.target_keep_ratio = torch.tensor(keep_ratio, dtype=torch.float64)
    engine.labels_refined = False
    return engine, data


def _stage(tmp_path, items, **kwargs):
    dataset = CacheDataset(items, transform=_load_transform(), progress=False)
    arguments = dict(
        dataset=dataset, load_transform=_load_transform(), inferer=None, output_dir=str(tmp_path / "run"),
        num_classes=2, loss_gap=LossGapHandler(patience=2), use_superpixels=False,
    )
    arguments.update(kwargs)
    return SuperpixelRefinementStage(**arguments), dataset


def test_patience_triggers_refinement_which_writes_and_swaps_labels(tmp_path):
    items, clean, noisy = _dataset_items(tmp_path)
    stage, dataset = _stage(tmp_path, items)
    engine, data = _stage_engine([1.0, 0.9, 0.8, 0.7, 0.6])
    stage.attach(engine)
    epochs_refined = []
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: epochs_refined.append(stage.round))
    engine.run(data, max_epochs=5)
    assert epochs_refined == [0, 0, 1, 1, 1]  # best at epoch 1, two epochs without improvement -> epoch 3
    assert stage.done and "max_rounds" in stage.stop_reason
    round_dir = tmp_path / "run" / "refined_labels" / "round_1"
    assert sorted(p.name for p in round_dir.iterdir()) == ["a.nii.gz", "b.nii.gz"]  # the HQ case is not refined
    written = nib.load(str(round_dir / "a.nii.gz"))
    np.testing.assert_array_equal(np.asarray(written.dataobj), clean)
    np.testing.assert_allclose(written.affine, nib.load(items[0]["label"]).affine)
    # the dataset now serves the refined labels (re-cached); the HQ item keeps its own
    expected = [str(round_dir / "a.nii.gz"), str(round_dir / "b.nii.gz"), items[2]["label"]]
    assert [item["label"] for item in dataset.data] == expected
    np.testing.assert_array_equal(np.asarray(dataset[0]["label"][0]), clean)
    # R grows by gamma, the trainer is told that it trains on refined labels
    assert engine.target_keep_ratio.tolist() == pytest.approx([0.33, 0.33])
    assert engine.labels_refined
    with open(tmp_path / "run" / "refined_labels" / "refinement_log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["case_id"] for r in rows] == ["a", "b"] and {r["round"] for r in rows} == {"1"}
    assert float(rows[0]["dice_after"]) == pytest.approx(1.0)
    assert float(rows[0]["dice_before"]) == pytest.approx(_dice(noisy, clean), abs=1e-5)


def test_rounds_continue_while_the_gap_rises_and_stop_when_it_does_not(tmp_path):
    items, _, _ = _dataset_items(tmp_path, cases=("a",), hq=())
    stage, _ = _stage(tmp_path, items, max_rounds=5)
    # round 1 at epoch 3 (best 1.0); the gap then peaks at 2.0 > 1.0 -> round 2 at epoch 6;
    # then it peaks at 0.5 < 2.0: refinement did not help, no round 3
    engine, data = _stage_engine([1.0, 0.9, 0.8, 2.0, 1.9, 1.8, 0.5, 0.4, 0.3, 0.2])
    stage.attach(engine)
    engine.run(data, max_epochs=10)
    assert stage.round == 2 and stage.done and "did not rise" in stage.stop_reason
    assert engine.target_keep_ratio.tolist() == pytest.approx([0.363, 0.363])
    assert (tmp_path / "run" / "refined_labels" / "round_2" / "a.nii.gz").is_file()
    assert not (tmp_path / "run" / "refined_labels" / "round_3").exists()


def test_rounds_stop_at_max_rounds_and_can_end_training(tmp_path):
    items, _, _ = _dataset_items(tmp_path, cases=("a",), hq=())
    stage, _ = _stage(tmp_path, items, max_rounds=2, terminate_when_done=True)
    engine, data = _stage_engine([1.0, 0.9, 0.8, 2.0, 1.9, 1.8, 3.0, 2.9, 2.8, 2.7])
    stage.attach(engine)
    engine.run(data, max_epochs=10)
    assert stage.round == 2 and "max_rounds=2" in stage.stop_reason
    assert engine.state.epoch == 6  # terminated right after the last round


@pytest.mark.parametrize("refine_by_epoch, gaps, expected_epoch, trigger", [
    (3, [1.0, 2.0, 3.0, 4.0, 5.0], 3, "deadline"),  # the gap keeps rising: the deadline starts round 1
    (4, [1.0, 0.9, 0.8, 0.7, 0.6], 3, "loss_gap"),  # the gap stalls first: the deadline is not needed
    (None, [1.0, 2.0, 3.0, 4.0, 5.0], None, ""),  # the paper: no round while the gap rises
])
def test_refine_by_epoch_deadline(tmp_path, refine_by_epoch, gaps, expected_epoch, trigger):
    items, _, _ = _dataset_items(tmp_path, cases=("a",), hq=())
    stage, _ = _stage(tmp_path, items, max_rounds=3, refine_by_epoch=refine_by_epoch)
    engine, data = _stage_engine(gaps)
    stage.attach(engine)
    rounds_per_epoch = []
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: rounds_per_epoch.append(stage.round))
    engine.run(data, max_epochs=len(gaps))
    first = next((i + 1 for i, r in enumerate(rounds_per_epoch) if r > 0), None)
    assert first == expected_epoch
    assert stage.round == (0 if expected_epoch is None else 1)  # the deadline starts only the first round
    assert stage.trigger == trigger
    if expected_epoch is not None:
        with open(tmp_path / "run" / "refined_labels" / "refinement_log.csv") as f:
            assert {r["trigger"] for r in csv.DictReader(f)} == {trigger}


@pytest.mark.parametrize("gaps, expected_epoch", [
    ([1.0, 0.9, 0.8, 0.7, 0.6, 0.5], 5),  # the gap stalls at epoch 3: the round waits for epoch 5
    ([1.0, 0.9, 0.8, 2.0, 1.9, 1.8, 1.7], 6),  # it rose again at epoch 4: the criterion starts over
])
def test_refine_from_epoch_postpones_an_early_round(tmp_path, gaps, expected_epoch):
    items, _, _ = _dataset_items(tmp_path, cases=("a",), hq=())
    stage, _ = _stage(tmp_path, items, max_rounds=1, refine_from_epoch=5)
    engine, data = _stage_engine(gaps)
    stage.attach(engine)
    rounds_per_epoch = []
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: rounds_per_epoch.append(stage.round))
    engine.run(data, max_epochs=len(gaps))
    assert rounds_per_epoch.index(1) + 1 == expected_epoch and stage.trigger == "loss_gap"


def test_max_rounds_zero_never_refines(tmp_path):
    items, _, _ = _dataset_items(tmp_path, cases=("a",), hq=())
    stage, dataset = _stage(tmp_path, items, max_rounds=0)
    engine, data = _stage_engine([1.0, 0.5, 0.4, 0.3])
    stage.attach(engine)
    engine.run(data, max_epochs=4)
    assert stage.round == 0 and dataset.data[0]["label"] == items[0]["label"]


def test_state_dict_round_trip_restores_labels_and_ratio(tmp_path):
    items, clean, _ = _dataset_items(tmp_path, cases=("a",), hq=())
    stage, _ = _stage(tmp_path, items)
    engine, data = _stage_engine([1.0, 0.9, 0.8])
    stage.attach(engine)
    engine.run(data, max_epochs=3)
    state = stage.state_dict()

    resumed, dataset = _stage(tmp_path, items)
    engine2, _ = _stage_engine([1.0])
    resumed.attach(engine2)
    resumed.load_state_dict(state)
    assert resumed.round == 1 and resumed.done
    assert dataset.data[0]["label"].endswith("round_1/a.nii.gz")
    np.testing.assert_array_equal(np.asarray(dataset[0]["label"][0]), clean)
    assert engine2.target_keep_ratio.tolist() == pytest.approx([0.33, 0.33]) and engine2.labels_refined
    assert resumed.loss_gap.tracker.history == stage.loss_gap.tracker.history


@pytest.mark.parametrize(
    "kwargs",
    [{"max_rounds": -1}, {"gamma": 0.9}, {"num_classes": 1}, {"refine_by_epoch": 0}, {"refine_min_confidence": 1.5},
     {"refine_gate": "auto"}, {"refine_gate_tolerance": -0.1}, {"refine_case_gate": "auto"},
     {"refine_case_gate_margin": 1.5}, {"refine_from_epoch": 0}, {"refine_from_epoch": 5, "refine_by_epoch": 4},
     {"refine_min_confidence": [0.8]}, {"refine_min_confidence": [0.8, 1.2]},
     {"refine_min_confidence": [0.8, 0.95], "refine_gate": "hq_calibrated"}],
)
def test_stage_bad_arguments(tmp_path, kwargs):
    items, _, _ = _dataset_items(tmp_path, cases=("a",), hq=())
    with pytest.raises(ValueError):
        _stage(tmp_path, items, **kwargs)


def _with_network_error(items, clean) -> np.ndarray:
    """Rewrite every case's image with a dim blob outside the sphere: SignNet predicts foreground there at
    (sigmoid(1.6) + sigmoid(0.8)) / 2 = 0.761, a network error on every case (the noisy ring is background at 0.991).
    Returns the blob."""
    blob = np.zeros_like(clean)
    blob[12:15, 2:5, 2:5] = 1
    image = np.where(clean > 0, 1.0, np.where(blob > 0, 0.2, -1.0)).astype(np.float32)
    for item in items:
        _save(image, item["image"], np.diag([SPACING, SPACING, SPACING, 1.0]))
    return blob


def _refine_once(folder, items, **kwargs):
    """One refinement round (the gap stops rising after epoch 1); returns the labels the dataset then serves."""
    stage, dataset = _stage(folder, items, **kwargs)
    engine, data = _stage_engine([1.0, 0.9, 0.8])
    stage.attach(engine)
    engine.run(data, max_epochs=3)
    assert stage.round == 1
    return [np.asarray(nib.load(item["label"]).dataobj) for item in dataset.data], dataset


def test_hq_calibrated_gate_keeps_the_networks_doubtful_errors_out_of_the_labels(tmp_path):
    items, clean, _ = _dataset_items(tmp_path)
    blob = _with_network_error(items, clean)
    refined = {}
    for gate in ("fixed", "hq_calibrated"):
        refined[gate], dataset = _refine_once(tmp_path / gate, items, refine_gate=gate)
        assert dataset.data[2]["label"] == items[2]["label"]  # the HQ case is only a dry run
    # the paper's rule copies the blob into both LQ cases; the gate learnt from the HQ case keeps it out
    np.testing.assert_array_equal(refined["fixed"][0], np.maximum(clean, blob))
    for label in refined["hq_calibrated"][:2]:
        np.testing.assert_array_equal(label, clean)
    with open(tmp_path / "hq_calibrated" / "run" / "refined_labels" / "gate_calibration.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["case_id"] for r in rows] == ["h"] and float(rows[0]["dry_run_dice"]) == pytest.approx(1.0)
    assert 0.761 < float(rows[0]["min_confidence"]) <= 0.78
    with open(tmp_path / "hq_calibrated" / "run" / "refined_labels" / "refinement_log.csv") as f:
        assert {r["min_confidence"] for r in csv.DictReader(f)} == {rows[0]["min_confidence"]}


def test_a_gate_per_noisy_class_asks_each_class_its_own_confidence(tmp_path):
    items, clean, noisy = _dataset_items(tmp_path)
    blob = _with_network_error(items, clean)
    # background pieces need 0.8: the blob (foreground at 0.761) stays out; foreground pieces need nothing: the
    # noisy ring (background at 0.991) goes
    refined, _ = _refine_once(tmp_path / "bg08", items, refine_min_confidence=[0.8, 0.0])
    for label in refined[:2]:
        np.testing.assert_array_equal(label, clean)
    # foreground pieces need 1.0: the ring stays, and with no gate on background the blob comes in
    refined, _ = _refine_once(tmp_path / "fg10", items, refine_min_confidence=[0.0, 1.0])
    for label in refined[:2]:
        np.testing.assert_array_equal(label, np.maximum(noisy, blob))
    with open(tmp_path / "fg10" / "run" / "refined_labels" / "refinement_log.csv") as f:
        assert {r["min_confidence"] for r in csv.DictReader(f)} == {"[0.0, 1.0]"}


def test_case_gate_refines_only_the_case_that_disagrees_with_the_networks_more_than_the_hq_case(tmp_path):
    items, clean, noisy = _dataset_items(tmp_path)
    _save(clean, items[1]["label"], np.diag([SPACING, SPACING, SPACING, 1.0]))  # b: an uncorrupted LQ case
    blob = _with_network_error(items, clean)
    refined = {}
    for case_gate in ("none", "hq_agreement"):
        refined[case_gate], dataset = _refine_once(tmp_path / case_gate, items, refine_case_gate=case_gate)
    # without the gate the network's error is copied into the uncorrupted case b
    np.testing.assert_array_equal(refined["none"][1], np.maximum(clean, blob))
    # with it b keeps its labels (same agreement as the HQ case), the corrupted case a is still refined
    np.testing.assert_array_equal(refined["hq_agreement"][1], clean)
    np.testing.assert_array_equal(refined["hq_agreement"][0], np.maximum(clean, blob))
    run = tmp_path / "hq_agreement" / "run" / "refined_labels"
    assert dataset.data[1]["label"] == items[1]["label"] and not (run / "round_1" / "b.nii.gz").exists()
    with open(run / "case_gate.csv") as f:
        gate_rows = list(csv.DictReader(f))
    hq_agreement = _dice(clean, np.maximum(clean, blob))
    assert [(r["case_id"], r["quality"], r["refined"]) for r in gate_rows] == [
        ("h", "hq", "False"), ("a", "lq", "True"), ("b", "lq", "False")]
    assert float(gate_rows[0]["agreement"]) == pytest.approx(hq_agreement, abs=1e-6)
    assert float(gate_rows[2]["agreement"]) == pytest.approx(hq_agreement, abs=1e-6)
    assert float(gate_rows[0]["threshold"]) == pytest.approx(hq_agreement - 0.02, abs=1e-6)
    assert float(gate_rows[1]["agreement"]) == pytest.approx(_dice(noisy, np.maximum(clean, blob)), abs=1e-6)
    with open(run / "refinement_log.csv") as f:
        log = {r["case_id"]: r for r in csv.DictReader(f)}
    assert float(log["b"]["changed_fraction"]) == 0.0 and log["b"]["refined"] == "False"
    assert float(log["b"]["dice_before"]) == float(log["b"]["dice_after"]) == 1.0
    assert float(log["a"]["dice_after"]) > float(log["a"]["dice_before"])


def test_case_gate_without_hq_cases_refines_every_case(tmp_path):
    items, clean, _ = _dataset_items(tmp_path, cases=("a",), hq=())
    stage, dataset = _stage(tmp_path, items, refine_case_gate="hq_agreement")
    engine, data = _stage_engine([1.0, 0.9, 0.8])
    stage.attach(engine)
    engine.run(data, max_epochs=3)
    np.testing.assert_array_equal(np.asarray(nib.load(dataset.data[0]["label"]).dataobj), clean)
    assert not (tmp_path / "run" / "refined_labels" / "case_gate.csv").exists()


def test_hq_calibrated_gate_without_hq_cases_keeps_the_configured_gate(tmp_path):
    items, clean, _ = _dataset_items(tmp_path, cases=("a",), hq=())
    stage, dataset = _stage(tmp_path, items, refine_gate="hq_calibrated", refine_min_confidence=0.5)
    engine, data = _stage_engine([1.0, 0.9, 0.8])
    stage.attach(engine)
    engine.run(data, max_epochs=3)
    np.testing.assert_array_equal(np.asarray(nib.load(dataset.data[0]["label"]).dataobj), clean)
    assert not (tmp_path / "run" / "refined_labels" / "gate_calibration.csv").exists()
