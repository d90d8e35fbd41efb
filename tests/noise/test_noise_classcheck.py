"""The lost-class policy (on_empty = redraw / keep / error) of custom.noise.simulate_checked."""

from __future__ import annotations

import numpy as np
import pytest

from custom.noise import LostClassError, lost_classes, simulate_checked, simulate_noise

MTCL_R3 = dict(r_min=3, r_max=3)  # every erosion (cube side 3) erases a 2-voxel-thick structure


@pytest.fixture
def thin_label() -> np.ndarray:
    """3 classes on 16^3: class 1 a 8^3 block, class 2 a 2-voxel-thick plate on top of it."""
    label = np.zeros((16, 16, 16), np.uint8)
    label[4:12, 4:12, 3:11] = 1
    label[4:12, 4:12, 11:13] = 2
    return label


def _first_eroding_case(label: np.ndarray) -> str:
    """A case id whose first MTCL draw is an erosion (found by looking; deterministic)."""
    for index in range(100):
        case = f"case{index}"
        if simulate_noise("mtcl", label, seed=0, case_id=case, **MTCL_R3).params["op"] == "erode":
            return case
    raise AssertionError("no eroding draw among 100 cases")


def test_lost_classes():
    clean = np.zeros((4, 4, 4), np.uint8)
    clean[0, 0, 0], clean[1, 1, 1], clean[2, 2, 2] = 1, 2, 3
    noisy = clean.copy()
    noisy[1, 1, 1] = 0
    noisy[3, 3, 3] = 4  # a class added is not a loss
    assert lost_classes(noisy, clean) == [2]
    assert lost_classes(np.zeros_like(clean), clean) == [1, 2, 3]  # an empty noisy label loses every class
    assert lost_classes(clean, np.zeros_like(clean)) == []
    with pytest.raises(ValueError, match="shapes"):
        lost_classes(clean[:2], clean)


def test_keep_returns_the_first_draw_and_names_the_loss(thin_label):
    case = _first_eroding_case(thin_label)
    checked = simulate_checked("mtcl", thin_label, seed=0, case_id=case, on_empty="keep", num_classes=3, **MTCL_R3)
    first = simulate_noise("mtcl", thin_label, seed=0, case_id=case, num_classes=3, **MTCL_R3)
    np.testing.assert_array_equal(checked.result.noisy, first.noisy)
    assert checked.lost == [2] and checked.attempts == 1 and checked.rejected == [] and checked.outcome == "kept_lost"


def test_error_names_case_class_and_draw(thin_label):
    case = _first_eroding_case(thin_label)
    with pytest.raises(LostClassError, match=rf"case '{case}'.*draw 0: op=erode, r=3.*class\(es\) 2 \(plate\)"):
        simulate_checked("mtcl", thin_label, seed=0, case_id=case, on_empty="error", class_names={2: "plate"},
                         **MTCL_R3)


def test_redraw_is_deterministic_and_keeps_every_class(thin_label):
    case = _first_eroding_case(thin_label)
    checked = simulate_checked("mtcl", thin_label, seed=0, case_id=case, num_classes=3, **MTCL_R3)  # default redraw
    assert checked.outcome == "redrawn" and checked.lost == [] and checked.attempts >= 2
    assert [r["attempt"] for r in checked.rejected] == list(range(checked.attempts - 1))
    assert all(r["lost"] == [2] and r["params"]["op"] == "erode" for r in checked.rejected)
    # the kept draw is attempt k of simulate_noise, a function of (seed, case, k) only
    kept = checked.attempts - 1
    assert checked.result.params["attempt"] == kept and checked.result.params["op"] == "dilate"
    again = simulate_noise("mtcl", thin_label, seed=0, case_id=case, num_classes=3, attempt=kept, **MTCL_R3)
    np.testing.assert_array_equal(checked.result.noisy, again.noisy)
    assert set(np.unique(checked.result.noisy).tolist()) == {0, 1, 2}


def test_no_loss_keeps_attempt_zero_whatever_the_policy(thin_label):
    for mode in ("redraw", "keep", "error"):
        checked = simulate_checked("mtcl", thin_label, seed=0, case_id="x", on_empty=mode, r_min=1, r_max=2)
        expected = simulate_noise("mtcl", thin_label, seed=0, case_id="x", r_min=1, r_max=2)
        np.testing.assert_array_equal(checked.result.noisy, expected.noisy)
        assert checked.outcome == "ok" and checked.attempts == 1 and "attempt" not in checked.result.params


def test_redraw_gives_up_after_max_attempts(thin_label):
    # one draw allowed, and it is an erosion that erases the plate: the error says how many draws were tried
    with pytest.raises(LostClassError, match=r"each of 1 draws of noise 'mtcl'"):
        simulate_checked("mtcl", thin_label, seed=0, case_id=_first_eroding_case(thin_label), max_attempts=1,
                         **MTCL_R3)


def test_redraw_of_a_drawless_simulator_fails_at_once():
    # sp_erode never empties a class, but pooling by 2 (the view) can: class 2, a 4^3 block on the 2^3 grid, keeps
    # only its 2^3 core after beta = 0.8, one voxel per pooled block, and loses every majority vote
    from custom.transforms.resampling import downsample_label

    label = np.zeros((16, 16, 16), np.uint8)
    label[0:8, 0:8, 0:8] = 1
    label[8:12, 8:12, 8:12] = 2

    def pool(array):
        return downsample_label(array, 2, 3)

    with pytest.raises(LostClassError, match="draws nothing random"):
        simulate_checked("sp_erode", label, seed=0, case_id="a", view=pool, beta=0.8)
    kept = simulate_checked("sp_erode", label, seed=0, case_id="a", view=pool, on_empty="keep", beta=0.8)
    assert kept.lost == [2] and kept.checked.shape == (8, 8, 8)
    assert set(np.unique(kept.result.noisy).tolist()) == {0, 1, 2}  # at native resolution nothing is lost


def test_the_view_applies_to_both_maps(thin_label):
    # a class that the view removes from the clean map as well is not a loss
    case = _first_eroding_case(thin_label)
    checked = simulate_checked("mtcl", thin_label, seed=0, case_id=case, view=lambda a: np.where(a == 2, 0, a),
                               on_empty="error", **MTCL_R3)
    assert checked.outcome == "ok" and 2 not in np.unique(checked.result.noisy)


@pytest.mark.parametrize("kwargs", [dict(on_empty="ignore"), dict(max_attempts=0), dict(max_attempts=2.5)])
def test_bad_policy(thin_label, kwargs):
    with pytest.raises(ValueError, match="on_empty|max_attempts"):
        simulate_checked("none", thin_label, seed=0, case_id="a", **kwargs)
