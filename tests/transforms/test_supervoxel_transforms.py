"""Tests for custom/transforms/supervoxel.py: relabelling and alignment of supervoxels through augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    RandAffined,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandRotate90d,
)

from custom.data.supervoxels import supervoxel_label_counts
from custom.transforms.supervoxel import (
    RelabelContiguous,
    RelabelContiguousd,
    interpolation_modes,
    relabel_contiguous,
)

KEYS = ["image", "label", "superpixel"]


def test_relabel_contiguous_by_hand():
    out, count = relabel_contiguous(torch.tensor([[5.0, 5.0, 9.0, 2.0]]))
    assert out.tolist() == [[1, 1, 2, 0]] and count == 3
    assert out.dtype == torch.int64


def test_relabel_contiguous_numpy_in_numpy_out():
    out = RelabelContiguous()(np.array([[[3, 3], [8, 0]]], dtype=np.int32))
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, [[[1, 1], [2, 0]]])


def test_relabel_contiguous_rejects_fractional_ids():
    with pytest.raises(ValueError):
        relabel_contiguous(torch.tensor([0.5, 1.0]))


def test_relabel_contiguousd_keeps_meta_and_stores_count():
    affine = torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0]))
    sp = MetaTensor(torch.tensor([[[[4.0, 4.0], [7.0, 12.0]]]]), affine=affine, meta={"filename_or_obj": "sp.nii"})
    out = RelabelContiguousd()({"superpixel": sp, "label": torch.zeros(1, 1, 2, 2)})
    assert isinstance(out["superpixel"], MetaTensor)
    assert out["superpixel"].meta["filename_or_obj"] == "sp.nii"
    torch.testing.assert_close(out["superpixel"].affine, affine.double())
    assert out["superpixel"].as_tensor().tolist() == [[[[0, 0], [1, 2]]]]
    assert out["superpixel_count"] == 3
    assert "superpixel_count" not in RelabelContiguousd(count_key_postfix=None)({"superpixel": sp})


def test_relabel_contiguousd_missing_key():
    with pytest.raises(KeyError):
        RelabelContiguousd()({"label": torch.zeros(1, 2)})
    assert RelabelContiguousd(allow_missing_keys=True)({"label": 1}) == {"label": 1}


def test_interpolation_modes():
    assert interpolation_modes(KEYS) == ("bilinear", "nearest", "nearest")
    assert interpolation_modes(["image", "superpixel"], default="trilinear") == ("trilinear", "nearest")


def _block_case(size: int = 16, block: int = 4):
    """Supervoxels are the cubic blocks of a grid; each block has one label (block 0, the padding id, is 0)."""
    grid = np.indices((size, size, size)) // block
    per_axis = size // block
    supervoxels = grid[0] * per_axis * per_axis + grid[1] * per_axis + grid[2]
    rng = np.random.default_rng(0)
    block_labels = rng.integers(0, 3, per_axis**3)
    block_labels[0] = 0
    label = block_labels[supervoxels]
    image = label * 2.0 + rng.normal(0, 0.1, label.shape)
    return {
        "image": torch.as_tensor(image[None], dtype=torch.float32),
        "label": torch.as_tensor(label[None], dtype=torch.float32),
        "superpixel": torch.as_tensor(supervoxels[None], dtype=torch.float32),
    }


def _augment(spatial_keys, seed: int):
    modes = interpolation_modes(KEYS)
    transform = Compose(
        [
            RandCropByPosNegLabeld(KEYS, label_key="label", spatial_size=(10, 10, 10), pos=1, neg=1, num_samples=2),
            RandFlipd(spatial_keys, prob=1.0, spatial_axis=0),
            RandRotate90d(spatial_keys, prob=1.0, max_k=3),
            RandAffined(
                KEYS,
                prob=1.0,
                rotate_range=(0.6, 0.6, 0.6),
                translate_range=(3, 3, 3),
                scale_range=(0.15, 0.15, 0.15),
                mode=modes,
                padding_mode="zeros",
            ),
            RelabelContiguousd(),
        ]
    )
    transform.set_random_state(seed=seed)
    return transform


def _label_constant_within_supervoxels(sample) -> bool:
    supervoxels = sample["superpixel"].as_tensor().numpy().astype(np.int64)
    label = sample["label"].as_tensor().numpy()
    assert np.all(label == np.round(label))  # nearest interpolation: no blended labels
    counts = supervoxel_label_counts(supervoxels, label.astype(np.int64))
    return bool(np.all((counts > 0).sum(axis=1) == 1))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_supervoxels_stay_aligned_with_label_through_augmentation(seed):
    samples = _augment(KEYS, seed)(_block_case())
    assert len(samples) == 2
    for sample in samples:
        assert sample["superpixel"].shape == sample["label"].shape == (1, 10, 10, 10)
        ids = torch.unique(sample["superpixel"].as_tensor())
        assert torch.equal(ids, torch.arange(ids.numel()))  # contiguous after relabelling
        assert sample["superpixel_count"] == ids.numel() > 1
        assert _label_constant_within_supervoxels(sample)


def test_alignment_check_detects_a_supervoxel_map_left_behind():
    # negative control: flipping/rotating image and label but not the supervoxels breaks the alignment
    samples = _augment(["image", "label"], seed=0)(_block_case())
    assert not all(_label_constant_within_supervoxels(sample) for sample in samples)
