"""Acceptance on real left-atrium labels (LA 2018, h5): SP-guided beta targets and MTCL noisy Dice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from custom.noise import cube_morphology, foreground_dice, simulate_noise
from custom.noise.quality import mismatch_ratio, relative_volume_change

LA_DIR = Path(__file__).resolve().parents[2].parent / "shared/data/la2018_h5"
NUM_CASES = 3


@pytest.fixture(scope="module")
def la_labels() -> dict[str, np.ndarray]:
    h5py = pytest.importorskip("h5py")
    files = sorted(LA_DIR.glob("*.h5"))[:NUM_CASES] if LA_DIR.is_dir() else []
    if len(files) < NUM_CASES:
        pytest.skip(f"LA h5 data not found: need {NUM_CASES} files in {LA_DIR}")
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
        result = simulate_noise("mtcl", clean, seed=0, case_id=case_id)
        expected = cube_morphology(clean, result.params["r"], result.params["op"])
        np.testing.assert_array_equal(result.noisy, expected)
