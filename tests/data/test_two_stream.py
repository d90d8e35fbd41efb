from __future__ import annotations

import pytest
import torch

from custom.data.training_sets import split_by_quality, supervised_items
from custom.data.two_stream import TwoStreamLoader, concat_batches

ITEMS = [
    {"case_id": "a", "image": "a.nii", "label": "a.nii", "label_clean": "a.nii", "quality": "hq"},
    {"case_id": "b", "image": "b.nii", "label": "bn.nii", "label_clean": "b.nii", "quality": "lq"},
    {"case_id": "c", "image": "c.nii", "label": "cn.nii", "label_clean": "c.nii", "quality": "lq"},
]


def _batches(value, n, size):
    return [{"image": torch.full((size, 1, 2, 2, 2), float(value + i)), "case_id": [f"{value}{i}"] * size}
            for i in range(n)]


def test_every_batch_is_hq_then_lq_and_streams_cycle_independently():
    loader = TwoStreamLoader(_batches(0, 2, 1), _batches(10, 3, 3), epoch_length=5)
    assert len(loader) == 5
    batches = list(loader)
    assert len(batches) == 5
    for b in batches:
        assert b["image"].shape[0] == 4
        assert b["is_hq"].tolist() == [True, False, False, False]
    # HQ stream has 2 batches, LQ 3: they wrap around independently
    assert [b["image"][0, 0, 0, 0, 0].item() for b in batches] == [0, 1, 0, 1, 0]
    assert [b["image"][1, 0, 0, 0, 0].item() for b in batches] == [10, 11, 12, 10, 11]
    assert batches[0]["case_id"] == ["00", "100", "100", "100"]


def test_single_stream_and_errors():
    only_lq = list(TwoStreamLoader(None, _batches(5, 1, 2), epoch_length=2))
    assert only_lq[0]["is_hq"].tolist() == [False, False]
    with pytest.raises(ValueError):
        TwoStreamLoader(None, None, 3)
    with pytest.raises(ValueError):
        TwoStreamLoader(_batches(0, 1, 1), None, 0)
    with pytest.raises(ValueError, match="empty"):
        list(TwoStreamLoader([], _batches(0, 1, 1), 1))


def test_concat_drops_keys_missing_on_one_side():
    out = concat_batches({"image": torch.zeros(1, 1), "x": [1]}, {"image": torch.ones(2, 1)})
    assert set(out) == {"image"} and out["image"].shape == (3, 1)


def test_supervised_label_modes():
    assert [i["case_id"] for i in supervised_items(ITEMS, "hq")] == ["a"]
    assert [i["label"] for i in supervised_items(ITEMS, "hq+lq")] == ["a.nii", "bn.nii", "cn.nii"]
    assert [i["label"] for i in supervised_items(ITEMS, "clean")] == ["a.nii", "b.nii", "c.nii"]
    with pytest.raises(ValueError):
        supervised_items(ITEMS, "noisy")
    with pytest.raises(ValueError, match="no training items"):
        supervised_items(ITEMS[1:], "hq")
    with pytest.raises(ValueError, match="label_clean"):
        supervised_items([{"image": "x", "label": "y"}], "clean")
    hq, lq = split_by_quality(ITEMS)
    assert [i["case_id"] for i in hq] == ["a"] and [i["case_id"] for i in lq] == ["b", "c"]
