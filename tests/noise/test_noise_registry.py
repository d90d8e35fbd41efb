"""simulate_noise: every simulator, determinism per (seed, case_id), parameter checks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from custom.noise import NOISE_NAMES, NoiseResult, cube_morphology, foreground_dice, noise_parameters, simulate_noise
from custom.noise.quality import mismatch_ratio, relative_volume_change

RANDOM_NOISES = ("mtcl", "sp", "sp_affine", "symmetric", "class_conditional")
UNIT = (1.0, 1.0, 1.0)  # mm: mtcl's sizes in mm need a spacing
LA_SPACING = (0.625, 0.625, 0.625)


def params_for(name: str, num_classes: int) -> dict:
    if name == "symmetric":
        return {"rate": 0.1}
    if name == "class_conditional":
        matrix = np.full((num_classes, num_classes), 0.1 / (num_classes - 1))
        np.fill_diagonal(matrix, 0.9)
        return {"matrix": matrix.tolist()}
    return {}


def test_noise_names():
    assert NOISE_NAMES == (
        "none", "mtcl", "sp", "sp_dilate", "sp_erode", "sp_affine", "symmetric", "class_conditional", "ellipsoid",
    )


@pytest.mark.parametrize("name", NOISE_NAMES)
@pytest.mark.parametrize("fixture, num_classes", [("ball_label", 2), ("two_ball_label", 3)])
def test_every_simulator_on_binary_and_three_class_maps(name, fixture, num_classes, request):
    clean = request.getfixturevalue(fixture)
    result = simulate_noise(
        name, clean, seed=0, case_id="c1", num_classes=num_classes, spacing=UNIT, **params_for(name, num_classes)
    )
    assert isinstance(result, NoiseResult)
    assert result.noisy.shape == clean.shape and result.noisy.dtype == clean.dtype
    assert set(np.unique(result.noisy)) <= set(range(num_classes))
    assert result.params["noise"] == name
    json.dumps(result.params)  # must be JSON-serialisable
    assert result.noisy is not clean
    if name in ("none", "ellipsoid"):  # balls are their own best-fit ellipsoids
        np.testing.assert_array_equal(result.noisy, clean)
    else:
        assert foreground_dice(result.noisy, clean) < 1.0 or result.params.get("r") == 1


@pytest.mark.parametrize("name", NOISE_NAMES)
def test_same_seed_and_case_is_identical(name, two_ball_label):
    kwargs = dict(num_classes=3, spacing=UNIT, **params_for(name, 3))
    first = simulate_noise(name, two_ball_label, seed=4, case_id="a", **kwargs)
    second = simulate_noise(name, two_ball_label, seed=4, case_id="a", **kwargs)
    np.testing.assert_array_equal(first.noisy, second.noisy)
    assert first.params == second.params


@pytest.mark.parametrize("name", RANDOM_NOISES)
def test_other_seed_or_case_differs(name, ball_label):
    kwargs = dict(num_classes=2, spacing=UNIT, **params_for(name, 2))
    # a discrete draw (mtcl: 26 outcomes, sp: 3 ops) may repeat by chance, so look at several seeds
    by_seed = [simulate_noise(name, ball_label, seed=s, case_id="a", **kwargs).noisy for s in range(4)]
    by_case = [simulate_noise(name, ball_label, seed=0, case_id=c, **kwargs).noisy for c in "bcde"]
    assert any(not np.array_equal(by_seed[0], other) for other in by_seed[1:])
    assert any(not np.array_equal(by_case[0], other) for other in by_case[1:])


def test_unknown_name_lists_the_names(ball_label):
    with pytest.raises(ValueError) as error:
        simulate_noise("gaussian", ball_label, seed=0, case_id="a")
    assert "gaussian" in str(error.value)
    assert all(name in str(error.value) for name in NOISE_NAMES)


@pytest.mark.parametrize(
    "name, params",
    [
        ("mtcl", {"beta": 0.5}),  # parameter of another simulator
        ("mtcl", {"r_min": 5, "r_max": 3}),
        ("mtcl", {"r_min": 0}),
        ("mtcl", {"r_max": 4.5}),
        ("mtcl", {"r_min_mm": 0.0}),
        ("mtcl", {"r_min_mm": 5.0, "r_max_mm": 2.0}),
        ("mtcl", {"r_max_mm": "wide"}),
        ("mtcl", {"r_min": 3, "r_max_mm": 9.0}),  # voxel and mm forms mixed
        ("sp", {"beta": 0.0}),
        ("sp", {"beta": "high"}),
        ("sp", {"theta": 200}),
        ("sp_dilate", {"step": "diamond"}),
        ("sp_affine", {"beta": -1}),
        ("symmetric", {}),  # rate is required
        ("symmetric", {"rate": 1.5}),
        ("class_conditional", {}),  # matrix is required
        ("class_conditional", {"matrix": [[0.5, 0.5], [0.5, 0.4]]}),
        ("ellipsoid", {"connectivity": 0}),
        ("none", {"rate": 0.1}),
    ],
)
def test_bad_parameters(ball_label, name, params):
    with pytest.raises(ValueError):
        simulate_noise(name, ball_label, seed=0, case_id="a", num_classes=2, spacing=UNIT, **params)


def test_mtcl_mm_sizes_need_a_spacing(ball_label):
    with pytest.raises(ValueError, match="give the voxel spacing"):
        simulate_noise("mtcl", ball_label, seed=0, case_id="a")
    # the voxel form needs none
    assert simulate_noise("mtcl", ball_label, seed=0, case_id="a", r_min=3, r_max=5).params["units"] == "voxel"


def test_symmetric_needs_num_classes(ball_label):
    with pytest.raises(ValueError, match="num_classes"):
        simulate_noise("symmetric", ball_label, seed=0, case_id="a", rate=0.1)


@pytest.mark.parametrize("num_classes", [1, 2])
def test_num_classes_too_small(two_ball_label, num_classes):
    with pytest.raises(ValueError):
        simulate_noise("none", two_ball_label, seed=0, case_id="a", num_classes=num_classes)


def test_label_dtype_must_hold_num_classes():
    with pytest.raises(ValueError, match="dtype"):
        simulate_noise("symmetric", np.zeros((4, 4, 4), np.uint8), seed=0, case_id="a", num_classes=300, rate=0.5)


def test_bad_spacing(ball_label):
    with pytest.raises(ValueError, match="spacing"):
        simulate_noise("sp_dilate", ball_label, seed=0, case_id="a", spacing=(1.0, 1.0))


def test_float_labels_keep_float_dtype(ball_label):
    result = simulate_noise("mtcl", ball_label.astype(np.float32), seed=0, case_id="a", spacing=UNIT)
    assert result.noisy.dtype == np.float32
    with pytest.raises(ValueError, match="integer"):
        simulate_noise("mtcl", ball_label + np.float32(0.5), seed=0, case_id="a", spacing=UNIT)


def test_mtcl_hand_checkable_block():
    # r_min = r_max = 3 on a 5^3 block: dilation gives 7^3, erosion 3^3
    label = np.zeros((11, 11, 11), dtype=np.uint8)
    label[3:8, 3:8, 3:8] = 1
    for case in "abcdef":
        result = simulate_noise("mtcl", label, seed=0, case_id=case, r_min=3, r_max=3)
        assert result.params["r"] == 3
        assert result.noisy.sum() == (343 if result.params["op"] == "dilate" else 27)


def test_mtcl_draws_cover_the_range():
    label = np.zeros((8, 8, 8), dtype=np.uint8)
    label[3:5, 3:5, 3:5] = 1
    # the mm defaults at the LA's 0.625 mm are the MTCL reference's 3..15 voxels
    drawn = [simulate_noise("mtcl", label, seed=1, case_id=str(i), spacing=LA_SPACING).params for i in range(120)]
    sizes = {p["r"] for p in drawn}
    assert min(sizes) == 3 and max(sizes) == 15 and len(sizes) == 13
    assert abs(np.mean([p["op"] == "dilate" for p in drawn]) - 0.5) < 0.15
    assert all(p["r_voxels"] == [p["r"]] * 3 and p["r_mm"] == [p["r"] * 0.625] * 3 for p in drawn)
    assert drawn[0]["r_range_mm"] == [1.875, 9.375] and drawn[0]["r_range_voxels"] == [3, 15]
    # at 2 mm the same mm range is 1..5 voxels (0.9375 and 4.6875 round half up)
    at_2mm = {simulate_noise("mtcl", label, seed=1, case_id=str(i), spacing=(2, 2, 2)).params["r"] for i in range(60)}
    assert at_2mm == {1, 2, 3, 4, 5}


def test_mtcl_mm_and_voxel_forms_agree_on_la_spacing(ball_label):
    # same generator calls, same cubes: the mm defaults reproduce the voxel form r_min=3, r_max=15 bit for bit
    for case in "abcdefgh":
        mm = simulate_noise("mtcl", ball_label, seed=5, case_id=case, spacing=LA_SPACING)
        voxel = simulate_noise("mtcl", ball_label, seed=5, case_id=case, r_min=3, r_max=15)
        np.testing.assert_array_equal(mm.noisy, voxel.noisy)
        assert (mm.params["op"], mm.params["r"]) == (voxel.params["op"], voxel.params["r"])
        assert mm.params["units"] == "mm" and voxel.params["units"] == "voxel" and voxel.params["r_mm"] is None


def test_mtcl_anisotropic_spacing_converts_per_axis():
    label = np.zeros((30, 30, 12), dtype=np.uint8)
    label[8:22, 8:22, 3:9] = 1
    for case in "abcdef":
        result = simulate_noise("mtcl", label, seed=0, case_id=case, spacing=(0.8, 0.8, 2.0))
        k = result.params["r"]
        # sides drawn on the 0.8 mm grid (1.875 / 0.8 -> 2, 9.375 / 0.8 -> 12), the 2 mm axis rounded half up
        assert 2 <= k <= 12 and result.params["r_range_voxels"] == [2, 12]
        expected_z = max(1, int(np.floor(k * 0.8 / 2.0 + 0.5 + 1e-9)))
        assert result.params["r_voxels"] == [k, k, expected_z]
        assert result.params["r_mm"] == pytest.approx([k * 0.8, k * 0.8, expected_z * 2.0])
        np.testing.assert_array_equal(
            result.noisy, cube_morphology(label, result.params["r_voxels"], result.params["op"])
        )


def test_redraw_attempts_have_their_own_streams(ball_label):
    draws = [simulate_noise("mtcl", ball_label, seed=3, case_id="a", spacing=UNIT, attempt=k) for k in range(6)]
    again = simulate_noise("mtcl", ball_label, seed=3, case_id="a", spacing=UNIT, attempt=2)
    np.testing.assert_array_equal(draws[2].noisy, again.noisy)
    assert "attempt" not in draws[0].params and draws[2].params["attempt"] == 2
    assert len({(d.params["op"], d.params["r"]) for d in draws}) > 1
    with pytest.raises(ValueError, match="attempt"):
        simulate_noise("mtcl", ball_label, seed=3, case_id="a", spacing=UNIT, attempt=-1)


def test_sp_draws_all_three_ops(ball_label):
    ops = {simulate_noise("sp", ball_label, seed=2, case_id=str(i)).params["op"] for i in range(20)}
    assert ops == {"dilate", "erode", "affine"}


@pytest.mark.parametrize("beta", [0.5, 0.7])
def test_sp_beta_targets(big_ball_label, beta):
    dilated = simulate_noise("sp_dilate", big_ball_label, seed=0, case_id="a", beta=beta).noisy
    eroded = simulate_noise("sp_erode", big_ball_label, seed=0, case_id="a", beta=beta).noisy
    moved = simulate_noise("sp_affine", big_ball_label, seed=0, case_id="a", beta=beta)
    assert abs(relative_volume_change(dilated, big_ball_label) - beta) <= 0.05
    assert abs(relative_volume_change(eroded, big_ball_label) + beta) <= 0.05
    assert abs(mismatch_ratio(moved.noisy, big_ball_label) - beta) <= 0.05
    assert -15.0 <= moved.params["drawn_angle_deg"] <= 15.0
    assert np.linalg.norm(moved.params["direction"]) == pytest.approx(1.0, abs=1e-5)


def test_noise_parameters_defaults():
    assert noise_parameters("mtcl") == {"r_min_mm": 1.875, "r_max_mm": 9.375, "r_min": None, "r_max": None}
    assert noise_parameters("sp") == {"beta": 0.7, "theta": 15.0, "step": "euclidean"}
    assert noise_parameters("symmetric") == {"rate": None}
