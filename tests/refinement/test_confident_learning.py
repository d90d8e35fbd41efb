from __future__ import annotations

import numpy as np
import pytest
import torch

from custom.refinement.confident_learning import (
    calibrate_confident_joint,
    confident_joint,
    correct_labels,
    find_label_issues,
    per_class_thresholds,
    prune_count_matrix,
    round_preserving_row_totals,
)


def _as_volume(probs_nc: list[list[float]], labels_n: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C) / (N,) lists -> probs (1, C, N) and labels (1, 1, N), i.e. a batch of one 1-D "image"."""
    probs = torch.tensor(probs_nc, dtype=torch.float32).t().unsqueeze(0)
    labels = torch.tensor(labels_n).view(1, 1, -1)
    return probs, labels


# C = 2, N = 9. Given label 0: six voxels, given label 1: three voxels.
#   t0 = mean p0 over label 0 = (0.95 + 0.9 + 0.55 + 0.3 + 0.05 + 0.5) / 6 = 3.25 / 6
#   t1 = mean p1 over label 1 = (0.9 + 0.65 + 0.25) / 3 = 0.6
# confident: v0, v1, v2 -> 0; v3, v4 -> 1; v5 (0.5, 0.5) -> none; v6, v7 -> 1; v8 -> 0
#   raw joint [[3, 2], [1, 2]]; calibrated row 0: [3, 2] / 5 * 6 = [3.6, 2.4] -> [4, 2]; row 1 unchanged
#   prune by class: class 0 flags 6 - 4 = 2 lowest p0 (v4, v3); class 1 flags 3 - 2 = 1 lowest p1 (v8)
#   prune by noise rate: M[1][0] = 2 largest p1 - p0 in class 0 (v4, v3); M[0][1] = 1 in class 1 (v8)
BINARY_P1 = [0.05, 0.10, 0.45, 0.70, 0.95, 0.50, 0.90, 0.65, 0.25]
BINARY_LABELS = [0, 0, 0, 0, 0, 0, 1, 1, 1]
BINARY_ISSUES = [3, 4, 8]


def _binary_case():
    return _as_volume([[1 - p, p] for p in BINARY_P1], BINARY_LABELS)


# C = 3, N = 12 (see the module docstring of confident_learning for the rules).
#   label 0: three confident voxels, a = (0.30, 0.35, 0.35), b = (0.33, 0.62, 0.05), c = (0.36, 0.01, 0.63)
#   t = (3.69 / 6, 0.6, 0.6); a is counted nowhere, b -> 1, c -> 2
#   raw joint [[3, 1, 1], [0, 1, 0], [0, 0, 1]] -> calibrated [[4, 1, 1], [0, 3, 0], [0, 0, 3]]
#   prune by class (class 0, 6 - 4 = 2 lowest p0): {a, b}
#   prune by noise rate (class 0: largest p1 - p0 -> b; largest p2 - p0 -> c): {b, c}
#   both: {b}
TERNARY_PROBS = [
    [0.90, 0.05, 0.05],
    [0.90, 0.05, 0.05],
    [0.90, 0.05, 0.05],
    [0.30, 0.35, 0.35],  # a (v3)
    [0.33, 0.62, 0.05],  # b (v4)
    [0.36, 0.01, 0.63],  # c (v5)
    [0.05, 0.90, 0.05],
    [0.30, 0.50, 0.20],
    [0.30, 0.40, 0.30],
    [0.05, 0.05, 0.90],
    [0.20, 0.30, 0.50],
    [0.30, 0.30, 0.40],
]
TERNARY_LABELS = [0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2]


def _ternary_case():
    return _as_volume(TERNARY_PROBS, TERNARY_LABELS)


def _flagged(mask: torch.Tensor) -> list[int]:
    return torch.nonzero(mask.reshape(-1)).flatten().tolist()


# ---------------------------------------------------------------- thresholds and confident joint


def test_thresholds_hand_values():
    probs, labels = _binary_case()
    torch.testing.assert_close(per_class_thresholds(probs, labels), torch.tensor([3.25 / 6, 0.6], dtype=torch.float64))
    probs, labels = _ternary_case()
    torch.testing.assert_close(
        per_class_thresholds(probs, labels), torch.tensor([3.69 / 6, 0.6, 0.6], dtype=torch.float64)
    )


def test_threshold_of_missing_class_is_unreachable():
    probs, labels = _as_volume([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]], [0, 1])
    thresholds = per_class_thresholds(probs, labels)
    assert thresholds[2].item() == 2.0
    assert confident_joint(probs, labels, calibrate=False)[:, 2].tolist() == [0, 0, 1]  # only the forced diagonal


def test_confident_joint_binary():
    probs, labels = _binary_case()
    assert confident_joint(probs, labels, calibrate=False).tolist() == [[3, 2], [1, 2]]
    assert confident_joint(probs, labels).tolist() == [[4, 2], [1, 2]]


def test_confident_joint_ternary():
    probs, labels = _ternary_case()
    assert confident_joint(probs, labels, calibrate=False).tolist() == [[3, 1, 1], [0, 1, 0], [0, 0, 1]]
    assert confident_joint(probs, labels).tolist() == [[4, 1, 1], [0, 3, 0], [0, 0, 3]]


def test_confident_joint_uses_argmax_when_several_classes_pass():
    # t0 = (0.6 + 0.1) / 2 = 0.35, t1 = 0.45 (the only voxel labelled 1)
    # v0 passes t0 only -> (0, 0); v1 passes t1 only -> (0, 1); v2 passes both -> argmax -> (1, 0)
    probs, labels = _as_volume([[0.6, 0.4], [0.1, 0.9], [0.55, 0.45]], [0, 0, 1])
    # raw counts [[1, 1], [1, 0]], then the diagonal is raised to 1
    assert confident_joint(probs, labels, calibrate=False).tolist() == [[1, 1], [1, 1]]


def test_flattened_and_volume_inputs_agree():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(2, 3, 4, 4, 4, generator=g), 1)
    labels = torch.randint(0, 3, (2, 1, 4, 4, 4), generator=g)
    flat_probs = probs.movedim(1, -1).reshape(-1, 3)
    flat_labels = labels.reshape(-1)
    torch.testing.assert_close(confident_joint(probs, labels), confident_joint(flat_probs, flat_labels))
    mask = find_label_issues(probs, labels)
    assert mask.shape == labels.shape and mask.dtype == torch.bool
    assert torch.equal(mask.reshape(-1), find_label_issues(flat_probs, flat_labels))


# ---------------------------------------------------------------- calibration helpers


@pytest.mark.parametrize(
    "matrix, expected",
    [
        ([[2.7, 1.2, 0.1]], [[3, 1, 0]]),  # plain rounding already preserves the total
        ([[1.4, 1.4, 1.2]], [[1, 2, 1]]),  # total 4 from 3: tie of residuals 0.4 -> later column
        ([[1.6, 1.6, 0.8]], [[1, 2, 1]]),  # total 4 from 5: tie of residuals -0.4 -> earlier column
        ([[0.5, 1.3, 2.2]], [[1, 1, 2]]),  # half-to-even gives [0, 1, 2]: total 4 -> largest residual 0.5 (col 0)
    ],
)
def test_round_preserving_row_totals(matrix, expected):
    result = round_preserving_row_totals(torch.tensor(matrix, dtype=torch.float64))
    assert result.dtype == torch.long
    assert result.sum(1).tolist() == [round(sum(row)) for row in matrix]
    assert result.tolist() == expected


def test_calibrate_confident_joint_hand_value():
    joint = torch.tensor([[3, 2], [1, 1]])
    counts = torch.tensor([6, 4])
    # rows -> [3.6, 2.4] and [2, 2]; total 10 already
    assert calibrate_confident_joint(joint, counts).tolist() == [[4, 2], [2, 2]]


def test_prune_count_matrix_keeps_min_examples():
    # joint rows = given label; M = joint^T = [[1, 2], [3, 4]]; column 0 diagonal 1 -> 2, paid by the one other
    # non-zero entry of that column: 3 - 1 = 2
    joint = torch.tensor([[1, 3], [2, 4]])
    assert prune_count_matrix(joint, min_examples_per_class=2).tolist() == [[2, 2], [2, 4]]
    assert prune_count_matrix(joint, min_examples_per_class=1).tolist() == [[1, 2], [3, 4]]


def test_prune_count_matrix_frac_noise():
    # M = [[4, 1], [2, 3]]; halve the off-diagonals (1 -> 0.5 -> 0, 2 -> 1) and move the cut to the diagonal
    # (4 + 1 = 5, 3 + 0.5 = 3.5 -> 3)
    joint = torch.tensor([[4, 2], [1, 3]])
    assert prune_count_matrix(joint, frac_noise=0.5).tolist() == [[5, 0], [1, 3]]


def test_prune_count_matrix_errors():
    with pytest.raises(ValueError):
        prune_count_matrix(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError):
        prune_count_matrix(torch.zeros(2, 2, dtype=torch.long), frac_noise=0.0)


# ---------------------------------------------------------------- label issues


@pytest.mark.parametrize("filter_by", ["both", "prune_by_class", "prune_by_noise_rate"])
def test_binary_issues_hand_computed(filter_by):
    probs, labels = _binary_case()
    assert _flagged(find_label_issues(probs, labels, filter_by=filter_by)) == BINARY_ISSUES


@pytest.mark.parametrize(
    "filter_by, expected", [("prune_by_class", [3, 4]), ("prune_by_noise_rate", [4, 5]), ("both", [4])]
)
def test_ternary_issues_hand_computed(filter_by, expected):
    probs, labels = _ternary_case()
    assert _flagged(find_label_issues(probs, labels, filter_by=filter_by)) == expected


def test_min_examples_per_class_protects_small_classes():
    probs, labels = _binary_case()
    # class 1 has 3 voxels: with min_examples_per_class = 3 it is never flagged
    flagged = _flagged(find_label_issues(probs, labels, min_examples_per_class=3))
    assert 8 not in flagged and all(BINARY_LABELS[i] == 0 for i in flagged)


def test_given_label_argmax_is_never_flagged():
    # label 0: three voxels p0 = 1 (confident 0), six p0 = 0.55 (below t0 = 6.85 / 11: not counted), one
    # p = (0.05, 0.95) (confident 1) and v10 = (0.5 - 4e-7, 0.5 + 4e-7); label 1: two voxels p1 = 0.9 (t1 = 0.9).
    # raw joint [[3, 1], [0, 2]] -> calibrated [[8.25 -> 8, 2.75 -> 3], [0, 2]]: class 0 prunes 11 - 8 = 3 voxels,
    # the lowest p0: v9, v10 and v3 (first of the tied 0.55). v3's argmax is its label -> always dropped; v10 is
    # within 1e-6 of its label -> dropped unless the tolerance is 0.
    eps = 4e-7
    probs_nc = [[1.0, 0.0]] * 3 + [[0.55, 0.45]] * 6 + [[0.05, 0.95], [0.5 - eps, 0.5 + eps]] + [[0.1, 0.9]] * 2
    _, labels = _as_volume(probs_nc, [0] * 11 + [1] * 2)
    probs = torch.tensor(probs_nc, dtype=torch.float64).t().unsqueeze(0)  # float64: keep the 4e-7 offsets exact
    assert confident_joint(probs, labels).tolist() == [[8, 3], [0, 2]]
    assert _flagged(find_label_issues(probs, labels, filter_by="prune_by_class")) == [9]
    assert _flagged(find_label_issues(probs, labels, filter_by="prune_by_class", given_label_tolerance=0.0)) == [9, 10]


def test_clean_confident_labels_have_no_issues():
    g = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 3, (2, 1, 4, 4, 4), generator=g)
    probs = 0.05 + 0.85 * torch.zeros(2, 3, 4, 4, 4).scatter_(1, labels, 1.0)
    assert not find_label_issues(probs, labels).any()


def test_find_label_issues_errors():
    probs, labels = _binary_case()
    with pytest.raises(ValueError):
        find_label_issues(probs, labels, filter_by="confident_learning")
    with pytest.raises(ValueError):
        find_label_issues(probs, labels.view(1, -1))
    with pytest.raises(ValueError):
        find_label_issues(probs[:, :1], labels)


def _sorted_reference_issues(probs_nc: np.ndarray, labels_n: np.ndarray, filter_by: str) -> np.ndarray:
    """Label issues by full stable sorts (the rule of the module docstring, ties broken by the lower index)."""
    num_classes = probs_nc.shape[1]
    joint = confident_joint(torch.from_numpy(probs_nc), torch.from_numpy(labels_n))
    prune = prune_count_matrix(joint).numpy()  # [true j, given k]
    issues = np.zeros(len(labels_n), dtype=bool)
    for k in range(num_classes):
        members = np.flatnonzero(labels_n == k)
        if len(members) <= 1:
            continue
        probs_k = probs_nc[members]
        by_class = np.zeros(len(members), dtype=bool)
        by_class[np.argsort(probs_k[:, k], kind="stable")[:max(len(members) - prune[k, k], 0)]] = True
        by_noise = np.zeros(len(members), dtype=bool)
        for j in range(num_classes):
            if j != k and prune[j, k] > 0:
                by_noise[np.argsort(probs_k[:, k] - probs_k[:, j], kind="stable")[:prune[j, k]]] = True
        flagged = {"both": by_class & by_noise, "prune_by_class": by_class, "prune_by_noise_rate": by_noise}[filter_by]
        bumped = probs_k.copy()
        bumped[:, k] += np.float32(1e-6)
        issues[members] = flagged & (bumped.argmax(1) != k)
    return issues


@pytest.mark.parametrize("filter_by", ["both", "prune_by_class", "prune_by_noise_rate"])
@pytest.mark.parametrize("seed, num_classes", [(0, 2), (1, 2), (2, 3), (3, 4)])
def test_partial_selection_matches_full_sorts_with_ties(seed, num_classes, filter_by):
    # probabilities on a grid of 1/8 (exact in float32): many equal scores and margins, so the tie-breaking
    # by voxel index of the partial selections is exercised; a (B, C, *S) volume checks the voxel order
    rng = np.random.default_rng(seed)
    shape = (2, num_classes, 6, 7, 8)
    grid = rng.multinomial(8, [1 / num_classes] * num_classes, size=(shape[0], *shape[2:]))  # (B, *S, C)
    probs = np.moveaxis(grid, -1, 1).astype(np.float32) / 8
    labels = np.where(rng.random(shape[:1] + (1,) + shape[2:]) < 0.7, probs.argmax(1)[:, None],
                      rng.integers(0, num_classes, shape[:1] + (1,) + shape[2:]))
    probs_t, labels_t = torch.from_numpy(probs), torch.from_numpy(labels)
    ours = find_label_issues(probs_t, labels_t, filter_by=filter_by)
    flat_probs = np.ascontiguousarray(np.moveaxis(probs, 1, -1).reshape(-1, num_classes))
    expected = _sorted_reference_issues(flat_probs, labels.reshape(-1), filter_by)
    assert expected.any()  # the case is not trivial
    np.testing.assert_array_equal(ours.reshape(-1).numpy(), expected)


def test_argmax_helper_matches_torch_argmax():
    from custom.refinement.confident_learning import _argmax

    g = torch.Generator().manual_seed(0)
    for num_classes in (2, 3, 5):
        values = torch.randint(0, 3, (400, num_classes), generator=g).float()  # many tied maxima
        values[torch.rand(400, generator=g) < 0.1, num_classes - 1] = float("nan")
        values[::13, 0] = float("nan")
        assert torch.equal(_argmax(values, dim=1), values.argmax(dim=1))
        assert torch.equal(_argmax(values.t(), dim=0), values.argmax(dim=1))
        flags = (values > 1).to(torch.uint8)
        assert torch.equal(_argmax(flags, dim=1), flags.argmax(dim=1))


# ---------------------------------------------------------------- corrections


def test_hard_correction_flips_exactly_the_flagged_voxels():
    probs, labels = _ternary_case()
    issues = find_label_issues(probs, labels)
    corrected = correct_labels(labels, probs, issues, mode="hard")
    assert corrected.dtype == torch.long and corrected.shape == labels.shape
    changed = _flagged(corrected != labels)
    assert changed == _flagged(issues) == [4]
    assert corrected.reshape(-1)[4].item() == 1  # argmax of b = (0.33, 0.62, 0.05)


def test_binary_smooth_matches_the_reference_formula():
    probs, labels = _binary_case()
    issues = find_label_issues(probs, labels)
    soft = correct_labels(labels, probs, issues, mode="smooth", smooth=0.8)
    assert soft.shape == probs.shape
    torch.testing.assert_close(soft.sum(1), torch.ones(1, 9))
    # MTCL: y + flag * (-1)^y * 0.8 is the foreground probability
    y = labels[:, 0].float()
    expected_fg = y + issues[:, 0].float() * (-1.0) ** y * 0.8
    torch.testing.assert_close(soft[:, 1], expected_fg)
    hard = correct_labels(labels, probs, issues, mode="hard")
    torch.testing.assert_close(hard[:, 0].float(), y + issues[:, 0].float() * (-1.0) ** y)  # the flip 1 - y


def test_uncertainty_smooth_correction():
    probs, labels = _ternary_case()
    issues = torch.zeros_like(labels, dtype=torch.bool)
    issues[0, 0, 4] = True
    uncertainty = torch.full(labels.shape, 0.25)
    soft = correct_labels(labels, probs, issues, mode="uncertainty_smooth", uncertainty=uncertainty)
    torch.testing.assert_close(soft[0, :, 4], torch.tensor([0.25, 0.75, 0.0]))
    unflagged = torch.zeros(3, 12).scatter_(0, labels[0], 1.0)
    unflagged[:, 4] = soft[0, :, 4]
    torch.testing.assert_close(soft[0], unflagged)


def test_correct_labels_errors():
    probs, labels = _ternary_case()
    issues = torch.zeros_like(labels, dtype=torch.bool)
    with pytest.raises(ValueError):
        correct_labels(labels, probs, issues, mode="flip")
    with pytest.raises(ValueError):
        correct_labels(labels, probs, issues, mode="smooth", smooth=1.5)
    with pytest.raises(ValueError):
        correct_labels(labels, probs, issues, mode="uncertainty_smooth")
    with pytest.raises(ValueError):
        correct_labels(labels.view(1, -1), probs, issues)


# ---------------------------------------------------------------- agreement with cleanlab (when installed)


@pytest.mark.parametrize("seed, num_classes", [(0, 2), (1, 2), (2, 3), (3, 3), (4, 4)])
def test_matches_cleanlab(seed, num_classes):
    cleanlab_filter = pytest.importorskip("cleanlab.filter")
    rng = np.random.default_rng(seed)
    n = 3000
    probs = rng.dirichlet([0.7] * num_classes, size=n).astype(np.float32)
    labels = np.where(rng.random(n) < 0.7, probs.argmax(1), rng.integers(0, num_classes, n))
    expected = cleanlab_filter.find_label_issues(labels, probs, filter_by="both", n_jobs=1)
    ours = find_label_issues(torch.from_numpy(probs), torch.from_numpy(labels), filter_by="both").numpy()
    np.testing.assert_array_equal(ours, expected)
