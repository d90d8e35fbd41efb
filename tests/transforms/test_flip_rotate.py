"""Tests for custom/transforms/flip_rotate.py: the same geometry as MONAI's Flip / Rotate90, metadata dropped."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Flip, Rotate90

from custom.transforms.flip_rotate import FlipRotate90d, RandFlipRotate90d, flip_rotate90


def _volume(shape=(1, 4, 4, 3)):
    return torch.arange(int(np.prod(shape)), dtype=torch.float32).reshape(shape)


@pytest.mark.parametrize("flip_axes", [(), (0,), (1,), (0, 1), (2,)])
@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_matches_monai_flip_then_rotate90(flip_axes, k):
    x = _volume()
    expected = x
    for axis in flip_axes:
        expected = Flip(spatial_axis=axis)(expected)
    if k:
        expected = Rotate90(k=k, spatial_axes=(0, 1))(expected)
    out = flip_rotate90(x, flip_axes, k, (0, 1))
    assert torch.equal(out, torch.as_tensor(expected))


def test_hand_computed_quarter_turn():
    x = torch.tensor([[[[1.0], [2.0]], [[3.0], [4.0]]]])  # (1, 2, 2, 1): rows (1, 2), (3, 4)
    out = flip_rotate90(x, (), 1, (0, 1))
    assert out[0, :, :, 0].tolist() == [[2.0, 4.0], [1.0, 3.0]]
    flipped = flip_rotate90(x, (0,), 0)
    assert flipped[0, :, :, 0].tolist() == [[3.0, 4.0], [1.0, 2.0]]


def test_metatensor_in_plain_tensor_out():
    x = MetaTensor(_volume(), affine=torch.eye(4))
    out = FlipRotate90d(["image"], flip_axes=(1,), k=2)({"image": x})["image"]
    assert type(out) is torch.Tensor


def test_bad_axes_raise():
    with pytest.raises(ValueError, match="flip_axes"):
        flip_rotate90(_volume(), (3,), 0)
    with pytest.raises(ValueError, match="rot_axes"):
        flip_rotate90(_volume(), (), 1, (0, 0))
    with pytest.raises(ValueError, match="channel-first"):
        flip_rotate90(torch.zeros(3), (), 0)
    with pytest.raises(ValueError, match="rot_prob"):
        RandFlipRotate90d(["image"], rot_prob=1.5)


def test_random_variant_moves_every_key_alike_and_is_seeded():
    x = _volume((1, 5, 5, 2))
    sample = {"image": x, "label": x.clone(), "case_id": "a"}
    t = RandFlipRotate90d(["image", "label", "superpixel"], allow_missing_keys=True)
    t.set_random_state(3)
    outs = [t(sample) for _ in range(20)]
    assert all(torch.equal(o["image"], o["label"]) and o["case_id"] == "a" for o in outs)
    distinct = {tuple(o["image"].flatten().tolist()) for o in outs}
    assert len(distinct) > 4  # flips and turns vary between draws
    t2 = RandFlipRotate90d(["image", "label", "superpixel"], allow_missing_keys=True)
    t2.set_random_state(3)
    assert all(torch.equal(o["image"], t2(sample)["image"]) for o in outs)


def test_zero_probabilities_are_identity():
    x = _volume()
    t = RandFlipRotate90d(["image"], flip_prob=0.0, rot_prob=0.0)
    t.set_random_state(0)
    assert all(torch.equal(t({"image": x})["image"], x) for _ in range(5))


def test_draw_frequencies_follow_probabilities():
    t = RandFlipRotate90d(["image"], flip_axes=(0,), flip_prob=0.5, rot_prob=0.25)
    t.set_random_state(0)
    flips, turns = 0, []
    for _ in range(2000):
        t.randomize()
        flips += bool(t.geometry.flip_axes)
        turns.append(t.geometry.k)
    assert abs(flips / 2000 - 0.5) < 0.05
    assert abs(np.mean(np.array(turns) > 0) - 0.25) < 0.04
    assert set(turns) == {0, 1, 2, 3}
