"""Acceptance on real left-atrium labels (LA 2018, h5): SP-guided beta targets, MTCL noisy Dice, and MTCL labels
byte-identical to the code before the sizes became millimetres (issue 21)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from custom.noise import cube_morphology, foreground_dice, simulate_noise
from custom.noise.quality import mismatch_ratio, relative_volume_change

LA_DIR = Path(__file__).resolve().parents[2].parent / "shared/data/la2018_h5"
NUM_CASES = 3
LA_SPACING = (0.625, 0.625, 0.625)  # mm, native
# sha256 of the uint8 noisy label bytes (C order) of simulate_noise("mtcl", clean, seed, case_id) run with the code
# of commit 34e8289 (MTCL sizes in voxels, r = 3..15), before the change to mm sizes; (op, r) it drew
REFERENCE = {
    ("06SR5RBREL16DQ6M8LWS", 0): ("erode", 5, "6a2f55f64dcda00b38c7024098f962e2a406dcec296322c25bd4779b4ceb4903"),
    ("06SR5RBREL16DQ6M8LWS", 7): ("erode", 5, "6a2f55f64dcda00b38c7024098f962e2a406dcec296322c25bd4779b4ceb4903"),
    ("0RZDK210BSMWAA6467LU", 0): ("dilate", 4, "aa5f58f88aea1e48b612144af8e7aa9245aff760bf0a79c49aa2f9216649c0a1"),
    ("0RZDK210BSMWAA6467LU", 7): ("erode", 11, "2347362374cc7786d881e630df39b87d1c5b0e5e1349aa277ad2c3cdad784d42"),
    ("1D7CUD1955YZPGK8XHJX", 0): ("dilate", 10, "cde02949c3ff57f71f298645e5a40fd710fb4714fddc49c39f5724a57d3e1c8c"),
    ("1D7CUD1955YZPGK8XHJX", 7): ("erode", 8, "add3fe5831c4bf56fc171f8edb55688b80609cc183e4a8faf301327a2268a19f"),
}


@pytest.fixture(scope="module")
def la_labels() -> dict[str, np.ndarray]:
    h5py = pytest.importorskip("h5py")
    files = sorted(LA_DIR.glob("*.h5"))[:NUM_CASES] if LA_DIR.is_dir() else []
    if len(files) < NUM_CASES:
        pytest.skip(f"LA h5 data not found: need {NUM_CASES} files in {LA_DIR} (shared/data/la2018_h5)")
    labels = {}
    for path in files:
        with h5py.File(path, "r") as f:
            labels[path.stem] = np.asarray(f["label"][:])
    return labels


@pytest.mark.slow
@pytest.mark.parametrize("beta", [0.5, 0.7])
def test_sp_beta_targets_on_la(la_labels, beta):
    for case_id, clean in la_labels.items():
        dilated = simulate_noise("sp_dilate", clean, seed=0, case_id=case_id, beta=beta).noisy
        eroded = simulate_noise("sp_erode", clean, seed=0, case_id=case_id, beta=beta).noisy
        assert abs(relative_volume_change(dilated, clean) - beta) <= 0.05, case_id
        assert abs(relative_volume_change(eroded, clean) + beta) <= 0.05, case_id
        for seed in (0, 1):
            moved = simulate_noise("sp_affine", clean, seed=seed, case_id=case_id, beta=beta)
            assert abs(mismatch_ratio(moved.noisy, clean) - beta) <= 0.05, (case_id, moved.params)


@pytest.mark.slow
def test_mtcl_noisy_dice_on_la(la_labels):
    # the expectation of MTCL noise over its draws: every cube size 3..15, dilation and erosion equally likely
    dice = [
        foreground_dice(cube_morphology(clean, size, op), clean)
        for clean in la_labels.values()
        for size in range(3, 16)
        for op in ("dilate", "erode")
    ]
    assert 0.6 <= np.mean(dice) <= 0.75  # MTCL reports ~0.67 on LA
    # and the seeded simulator draws inside that family
    for case_id, clean in la_labels.items():
        result = simulate_noise("mtcl", clean, seed=0, case_id=case_id, spacing=LA_SPACING)
        expected = cube_morphology(clean, result.params["r"], result.params["op"])
        np.testing.assert_array_equal(result.noisy, expected)


def _sha256(label: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(label.astype(np.uint8)).tobytes()).hexdigest()


@pytest.mark.slow
def test_mtcl_mm_defaults_are_byte_identical_to_the_voxel_code_on_la(la_labels):
    assert sorted(la_labels) == sorted({case for case, _ in REFERENCE}), "the first 3 LA files changed"
    for (case_id, seed), (op, size, digest) in REFERENCE.items():
        clean = la_labels[case_id]
        # the defaults (1.875..9.375 mm) at the native 0.625 mm, as prepare_la simulates before --downsample
        result = simulate_noise("mtcl", clean, seed=seed, case_id=case_id, num_classes=2, spacing=LA_SPACING)
        assert (result.params["op"], result.params["r"], result.params["r_voxels"]) == (op, size, [size] * 3)
        assert result.noisy.dtype == clean.dtype and _sha256(result.noisy) == digest, (case_id, seed)
        # the explicit voxel form with the old values draws the same
        voxel = simulate_noise("mtcl", clean, seed=seed, case_id=case_id, num_classes=2, r_min=3, r_max=15)
        assert _sha256(voxel.noisy) == digest, (case_id, seed)
