from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

from custom.evaluation.metrics import (
    METRIC_NAMES,
    class_labels,
    foreground_dice_per_sample,
    segmentation_metrics,
    summarise,
)


def _cube_pair() -> tuple[np.ndarray, np.ndarray]:
    # shape: (10, 10, 10); a 4^3 cube and the same cube shifted by one voxel along axis 0
    pred = np.zeros((10, 10, 10), dtype=np.int64)
    target = np.zeros_like(pred)
    pred[2:6, 2:6, 2:6] = 1
    target[3:7, 2:6, 2:6] = 1
    return pred, target


# Worked by hand for the cube pair. Overlap 3*4*4 = 48 of 64 + 64 voxels:
# Dice = 96/128 = 0.75, Jaccard = 48/80 = 0.6.
# MONAI surfaces: the 56 boundary voxels of each cube (64 minus the 2^3 core). From the
# prediction: the 16 voxels of the trailing x=2 face and the 4 core voxels of the x=5 face
# are off the target surface, the other 36 lie on it (distance 0); the reverse direction
# is symmetric.
#   spacing (1, 1, 1): x=2 face -> 1, x=5 core -> 1; ASD = 2*20/112, HD95 = 1
#   spacing (2, 1, 1): x=2 face -> 2, x=5 core -> 1 (a step along y); ASD = 2*36/112, HD95 = 2
#   spacing (3, 2, 1): x=2 face -> 3, x=5 core -> 1 (a step along z); ASD = 2*52/112, HD95 = 3
#   spacing (1, 2, 3): x=2 face -> 1, x=5 core -> 1; the same as in voxels
CUBE_CASES = [
    [(1.0, 1.0, 1.0), 1.0, 40 / 112],
    [(2.0, 1.0, 1.0), 2.0, 72 / 112],
    [(3.0, 2.0, 1.0), 3.0, 104 / 112],
    [(1.0, 2.0, 3.0), 1.0, 40 / 112],
]


@pytest.mark.parametrize("spacing, hd95_mm, asd_mm", CUBE_CASES)
def test_shifted_cube_by_hand(spacing, hd95_mm, asd_mm):
    pred, target = _cube_pair()
    result = segmentation_metrics(pred, target, num_classes=2, spacing=spacing)
    assert_allclose(result["dice_1"], 0.75)
    assert_allclose(result["jaccard_1"], 0.6)
    assert_allclose(result["hd95_mm_1"], hd95_mm, rtol=1e-6)
    assert_allclose(result["asd_mm_1"], asd_mm, rtol=1e-6)
    # voxel distances ignore the spacing
    assert_allclose(result["hd95_vox_1"], 1.0, rtol=1e-6)
    assert_allclose(result["asd_vox_1"], 40 / 112, rtol=1e-6)
    # one foreground class: the class mean is that class
    for metric in METRIC_NAMES:
        assert result[f"{metric}_mean"] == result[f"{metric}_1"]


def test_keys_and_types():
    pred, target = _cube_pair()
    result = segmentation_metrics(pred, target, num_classes=3, class_names=["bg", "atrium", "scar"])
    expected_keys = [f"{m}_{c}" for m in METRIC_NAMES for c in ("atrium", "scar", "mean")]
    assert sorted(result) == sorted(expected_keys)
    assert all(type(v) is float for v in result.values())


def test_identical_masks_are_perfect():
    pred, _ = _cube_pair()
    result = segmentation_metrics(pred, pred.copy(), num_classes=2, spacing=(0.5, 0.7, 2.0))
    assert result["dice_1"] == 1.0 and result["jaccard_1"] == 1.0
    for metric in ("hd95_mm", "asd_mm", "hd95_vox", "asd_vox"):
        assert result[f"{metric}_1"] == 0.0


def test_input_forms_agree():
    pred, target = _cube_pair()
    reference = segmentation_metrics(pred, target, num_classes=2, spacing=(2.0, 1.0, 1.0))
    # (1, *S) label map, float dtype
    as_channel = segmentation_metrics(
        torch.as_tensor(pred, dtype=torch.float32)[None], torch.as_tensor(target)[None], 2, spacing=(2.0, 1.0, 1.0)
    )
    # (C, *S) logits for the prediction, one-hot for the target
    logits = torch.stack([torch.as_tensor(1 - pred), torch.as_tensor(pred)]).float() * 5.0 - 2.0
    onehot = torch.stack([torch.as_tensor(1 - target), torch.as_tensor(target)])
    as_scores = segmentation_metrics(logits, onehot, 2, spacing=torch.tensor([2.0, 1.0, 1.0]))
    assert as_channel == reference
    assert as_scores == reference


def test_empty_masks_policy():
    # shape: (8, 8, 8); classes: 1 matched, 2 absent from both, 3 only in the target, 4 only in the prediction
    pred = np.zeros((8, 8, 8), dtype=np.int64)
    target = np.zeros_like(pred)
    pred[1:4, 1:4, 1:4] = 1
    target[1:4, 1:4, 1:4] = 1
    target[5:7, 5:7, 5:7] = 3
    pred[5:7, 1:3, 5:7] = 4
    result = segmentation_metrics(pred, target, num_classes=5)
    assert result["dice_1"] == 1.0 and result["hd95_mm_1"] == 0.0
    assert result["dice_2"] == 1.0 and result["jaccard_2"] == 1.0  # both empty: perfect agreement
    assert result["dice_3"] == 0.0 and result["jaccard_3"] == 0.0  # missed class
    assert result["dice_4"] == 0.0 and result["jaccard_4"] == 0.0  # false-positive class
    for metric in ("hd95_mm", "asd_mm", "hd95_vox", "asd_vox"):
        assert result[f"{metric}_1"] == 0.0
        for cls in (2, 3, 4):
            assert math.isnan(result[f"{metric}_{cls}"])
        # NaN is left out of the class mean
        assert result[f"{metric}_mean"] == 0.0
    assert_allclose(result["dice_mean"], (1 + 1 + 0 + 0) / 4)


def test_all_distances_missing_gives_nan_mean():
    pred = np.zeros((6, 6, 6), dtype=np.int64)
    target = np.zeros_like(pred)
    target[1:3, 1:3, 1:3] = 1
    result = segmentation_metrics(pred, target, num_classes=2)
    assert result["dice_mean"] == 0.0
    assert math.isnan(result["hd95_mm_mean"]) and math.isnan(result["asd_vox_mean"])


def test_two_dimensional_inputs():
    # shape: (6, 6); 2x2 square vs the same square shifted by one column: Dice = 2*2/8
    pred = np.zeros((6, 6), dtype=np.int64)
    target = np.zeros_like(pred)
    pred[1:3, 1:3] = 1
    target[1:3, 2:4] = 1
    result = segmentation_metrics(pred, target, num_classes=2, spacing=(1.0, 4.0), spatial_dims=2)
    assert_allclose(result["dice_1"], 0.5)
    assert_allclose(result["jaccard_1"], 2 / 6)
    # every boundary pixel of a 2x2 square is on the boundary: the shifted column is 4 mm away
    assert_allclose(result["hd95_mm_1"], 4.0, rtol=1e-6)
    assert_allclose(result["hd95_vox_1"], 1.0, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        [{"num_classes": 1}, "num_classes"],
        [{"num_classes": 2, "spacing": (1.0, 1.0)}, "spacing"],
        [{"num_classes": 2, "spacing": (1.0, -1.0, 1.0)}, "spacing"],
        [{"num_classes": 2, "class_names": ["a", "b", "c"]}, "class_names"],
        [{"num_classes": 3, "class_names": ["a", "a"]}, "class_names"],
        [{"num_classes": 2, "spatial_dims": 4}, "spatial_dims"],
    ],
)
def test_bad_arguments(kwargs, match):
    pred, target = _cube_pair()
    with pytest.raises(ValueError, match=match):
        segmentation_metrics(pred, target, **kwargs)


def test_bad_inputs():
    pred, target = _cube_pair()
    with pytest.raises(ValueError, match="shapes differ"):
        segmentation_metrics(pred, target[:-1], num_classes=2)
    with pytest.raises(ValueError, match="outside"):
        segmentation_metrics(pred * 2, target, num_classes=2)
    with pytest.raises(ValueError, match="channels"):
        segmentation_metrics(np.stack([pred] * 3), target, num_classes=2)
    with pytest.raises(ValueError, match="non-integer"):
        segmentation_metrics(pred * 0.5, target, num_classes=2)
    with pytest.raises(ValueError, match="spatial dims"):
        segmentation_metrics(pred[0, 0], target[0, 0], num_classes=2)
    with pytest.raises(ValueError, match="torch.Tensor or numpy"):
        segmentation_metrics(pred.tolist(), target, num_classes=2)


def test_class_labels():
    assert class_labels(3) == ["1", "2"]
    assert class_labels(3, ["liver", "tumour"]) == ["liver", "tumour"]
    assert class_labels(3, ["background", "liver", "tumour"]) == ["liver", "tumour"]
    with pytest.raises(ValueError, match="mean"):
        class_labels(2, ["mean"])


def test_summarise_ignores_nan_and_text():
    rows = [
        {"case_id": "a", "dice_1": 0.5, "hd95_mm_1": 2.0, "flag": True},
        {"case_id": "b", "dice_1": 1.0, "hd95_mm_1": float("nan")},
        {"case_id": "c", "dice_1": np.float32(0.0), "hd95_mm_1": 4.0, "asd_mm_1": float("nan")},
    ]
    summary = summarise(rows)
    assert list(summary) == ["dice_1", "hd95_mm_1", "asd_mm_1"]
    assert_allclose(summary["dice_1"]["mean"], 0.5)
    assert_allclose(summary["dice_1"]["std"], np.sqrt(((0.0) ** 2 + 0.5**2 + 0.5**2) / 3))
    assert summary["dice_1"]["count"] == 3
    assert summary["hd95_mm_1"] == {"mean": 3.0, "std": 1.0, "count": 2}
    assert summary["asd_mm_1"]["count"] == 0
    assert math.isnan(summary["asd_mm_1"]["mean"]) and math.isnan(summary["asd_mm_1"]["std"])
    assert summarise([]) == {}


def test_foreground_dice_per_sample_counts_classes_absent_from_both_as_1():
    a = torch.zeros(3, 1, 2, 2, 2, dtype=torch.long)
    b = torch.zeros_like(a)
    a[0, 0, 0] = 1  # 4 voxels of class 1
    b[0, 0, 0, 0] = 1  # 2 of them: Dice 2*2/(4+2)
    a[1, 0, 0, 0, 0] = 2  # class 2 only in a: Dice 0 for class 2, class 1 absent from both: 1
    # sample 2: both empty -> full agreement
    agreement = foreground_dice_per_sample(a, b, num_classes=3)
    torch.testing.assert_close(agreement, torch.tensor([(2 * 2 / 6 + 1.0) / 2, 0.5, 1.0]))


def test_foreground_dice_per_sample_rejects_bad_shapes():
    a = torch.zeros(2, 1, 2, 2, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="label maps"):
        foreground_dice_per_sample(a, a[:1], 2)
    with pytest.raises(ValueError, match="label maps"):
        foreground_dice_per_sample(a[:, 0], a[:, 0], 2)
    with pytest.raises(ValueError, match="num_classes"):
        foreground_dice_per_sample(a, a, 1)


@pytest.mark.parametrize(
    "pred, target, expected",
    [
        # shape (4,): class 1 in both -> defined
        ([0, 1, 1, 0], [0, 1, 0, 0], ""),
        ([0, 0, 0, 0], [0, 1, 0, 0], "fg: empty prediction"),
        ([0, 1, 0, 0], [0, 0, 0, 0], "fg: empty label"),
        ([0, 0, 0, 0], [0, 0, 0, 0], "fg: both empty"),
    ],
)
def test_distance_undefined_reason(pred, target, expected):
    from custom.evaluation.metrics import distance_undefined_reason

    shape = (1, 1, 4)  # a 3D label map of 4 voxels
    pred_map = torch.tensor(pred).view(shape)
    target_map = torch.tensor(target).view(shape)
    assert distance_undefined_reason(pred_map, target_map, num_classes=2, class_names=["bg", "fg"]) == expected


def test_distance_undefined_reason_names_each_class():
    from custom.evaluation.metrics import distance_undefined_reason

    pred = torch.tensor([0, 1, 0, 0]).view(1, 1, 4)
    target = torch.tensor([0, 1, 2, 0]).view(1, 1, 4)
    assert distance_undefined_reason(pred, target, 3, class_names=["bg", "la", "scar"]) == "scar: empty prediction"


def test_undefined_distances_note_counts_cases_and_reasons():
    from custom.evaluation.metrics import undefined_distances_note

    nan = float("nan")
    rows = [{"hd95_mm_mean": 3.0, "distance_undefined": ""}] + [
        {"hd95_mm_mean": nan, "distance_undefined": "la: empty prediction"}
    ] * 2 + [{"hd95_mm_mean": nan, "distance_undefined": "la: empty label"}]
    assert undefined_distances_note(rows) == "3 of 4 undefined: 2 empty prediction, 1 empty label"
    assert undefined_distances_note(rows[:3]) == "2 of 3 undefined: empty prediction"
    assert undefined_distances_note(rows[:1]) == ""
    assert undefined_distances_note([{"hd95_mm_mean": nan}]) == "1 of 1 undefined: unknown"
