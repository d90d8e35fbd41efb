"""NoisyLabeld / RandNoisyLabeld: MONAI dictionary wrappers of simulate_noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from custom.noise import simulate_noise
from custom.noise.transforms import NoisyLabeld, RandNoisyLabeld

UNIT = (1.0, 1.0, 1.0)  # mm


def test_matches_simulate_noise_on_numpy(ball_label):
    out = NoisyLabeld(keys="label", noise="sp", seed=3, beta=0.5)({"label": ball_label[None], "case_id": "p7"})
    expected = simulate_noise("sp", ball_label, seed=3, case_id="p7", beta=0.5).noisy
    assert isinstance(out["label"], np.ndarray) and out["label"].shape == (1, 24, 24, 24)
    np.testing.assert_array_equal(out["label"][0], expected)
    assert out["case_id"] == "p7"


def test_metatensor_keeps_type_dtype_and_meta(ball_label):
    affine = torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0], dtype=torch.float64))
    label = MetaTensor(torch.as_tensor(ball_label[None], dtype=torch.float32), affine=affine, meta={"tag": "x"})
    out = NoisyLabeld(noise="mtcl", seed=0, spacing="meta")({"label": label, "case_id": "c"})["label"]
    assert isinstance(out, MetaTensor) and out.dtype == torch.float32
    assert out.meta["tag"] == "x"
    torch.testing.assert_close(out.affine, affine)
    expected = simulate_noise("mtcl", ball_label, seed=0, case_id="c", spacing=(2.0, 2.0, 3.0)).noisy
    np.testing.assert_array_equal(out[0].numpy(), expected.astype(np.float32))


def test_torch_tensor_stays_tensor(ball_label):
    label = torch.as_tensor(ball_label[None], dtype=torch.int64)
    out = NoisyLabeld(noise="symmetric", num_classes=2, rate=0.1)({"label": label, "case_id": "c"})["label"]
    assert type(out) is torch.Tensor and out.dtype == torch.int64


def test_deterministic_per_case_id(ball_label):
    transform = NoisyLabeld(noise="symmetric", num_classes=2, rate=0.2, seed=1)
    first = transform({"label": ball_label[None], "case_id": "a"})["label"]
    again = transform({"label": ball_label[None], "case_id": "a"})["label"]
    other = transform({"label": ball_label[None], "case_id": "b"})["label"]
    np.testing.assert_array_equal(first, again)
    assert np.any(first != other)


def test_spacing_from_meta_matches_explicit_spacing(ball_label):
    affine = torch.diag(torch.tensor([1.0, 1.0, 3.0, 1.0], dtype=torch.float64))
    label = MetaTensor(torch.as_tensor(ball_label[None]), affine=affine)
    out = NoisyLabeld(noise="sp_dilate", spacing="meta", beta=0.5)({"label": label, "case_id": "c"})["label"]
    expected = simulate_noise("sp_dilate", ball_label, seed=0, case_id="c", spacing=(1, 1, 3), beta=0.5).noisy
    np.testing.assert_array_equal(out[0].numpy(), expected)
    unit = simulate_noise("sp_dilate", ball_label, seed=0, case_id="c", beta=0.5).noisy
    assert not np.array_equal(expected, unit)


def test_params_postfix_stores_params(ball_label):
    out = NoisyLabeld(noise="mtcl", params_postfix="noise", spacing=UNIT)({"label": ball_label[None], "case_id": "c"})
    assert out["label_noise"]["noise"] == "mtcl" and "r" in out["label_noise"] and "r_mm" in out["label_noise"]
    with pytest.raises(ValueError, match="image_"):
        NoisyLabeld(keys="image", noise="mtcl", params_postfix="noise", spacing=UNIT)


def test_mm_sizes_need_a_spacing_at_construction(ball_label):
    for transform in (NoisyLabeld, RandNoisyLabeld):
        with pytest.raises(ValueError, match="sizes in mm"):
            transform(noise="mtcl")
    # the voxel form needs none: the MTCL reference cube sides
    out = NoisyLabeld(noise="mtcl", r_min=3, r_max=3)({"label": ball_label[None], "case_id": "c"})["label"]
    expected = simulate_noise("mtcl", ball_label, seed=0, case_id="c", r_min=3, r_max=3).noisy
    np.testing.assert_array_equal(out[0], expected)


def test_missing_case_id_raises(ball_label):
    with pytest.raises(ValueError, match="case_id"):
        NoisyLabeld(noise="mtcl", spacing=UNIT)({"label": ball_label[None]})


@pytest.mark.parametrize("shape", [(24, 24, 24), (2, 24, 24, 24), (1, 1, 24, 24, 24)])
def test_needs_one_leading_channel(shape):
    with pytest.raises(ValueError, match="channel"):
        NoisyLabeld(noise="mtcl", spacing=UNIT)({"label": np.zeros(shape, np.uint8), "case_id": "c"})


@pytest.mark.parametrize("kwargs", [dict(noise="salt"), dict(noise="mtcl", beta=0.3)])
def test_bad_construction(kwargs):
    with pytest.raises(ValueError):
        NoisyLabeld(**kwargs)


def test_allow_missing_keys(ball_label):
    out = NoisyLabeld(keys=["label", "other"], noise="mtcl", allow_missing_keys=True, spacing=UNIT)(
        {"label": ball_label[None], "case_id": "c"}
    )
    assert "other" not in out


def test_rand_is_reproducible_with_set_random_state(ball_label):
    def run() -> list[np.ndarray]:
        transform = RandNoisyLabeld(noise="symmetric", num_classes=2, rate=0.1).set_random_state(seed=0)
        return [transform({"label": ball_label[None]})["label"] for _ in range(2)]

    first, second = run(), run()
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert np.any(first[0] != first[1])  # a fresh seed per call


def test_rand_prob_zero_is_identity(ball_label):
    transform = RandNoisyLabeld(noise="mtcl", prob=0.0, params_postfix="noise", spacing=UNIT).set_random_state(0)
    out = transform({"label": ball_label[None]})
    np.testing.assert_array_equal(out["label"][0], ball_label)
    assert out["label_noise"]["noise"] == "none"


def test_rand_bad_prob():
    with pytest.raises(ValueError):
        RandNoisyLabeld(noise="mtcl", prob=1.5)
