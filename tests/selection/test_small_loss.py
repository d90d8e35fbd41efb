"""Tests for custom/selection/small_loss.py (Eq. 3 selection, forget-rate ramp, Eq. 5 loss gap and tracker)."""

from __future__ import annotations

import math

import pytest
import torch

from custom.selection.small_loss import (
    LossGapTracker,
    as_class_ratios,
    budgeted_prefix_mask,
    estimate_keep_ratio,
    forget_rate_schedule,
    loss_gap,
    small_loss_mask,
)

T, F = True, False


# ---- Eq. 3 selection, by hand ------------------------------------------------------------------------------

SELECTION_CASES = [
    # (scores, classes, sizes, keep_ratio, expected)
    # unit pieces, budget 0.5 * 4 = 2: the two lowest
    ([0.1, 0.2, 0.3, 0.4], [0, 0, 0, 0], None, [0.5], [T, T, F, F]),
    # input order does not matter
    ([0.4, 0.1, 0.3, 0.2], [0, 0, 0, 0], None, [0.5], [F, T, F, T]),
    # sizes 2,3,1,4 (10 voxels), budget 5: piece 1 (0.1, 3 voxels) then piece 3 (0.2) reaches it -> 7 kept
    ([0.4, 0.1, 0.3, 0.2], [0, 0, 0, 0], [2, 3, 1, 4], [0.5], [F, T, F, T]),
    # budget 3 met exactly by piece 1: piece 3 is not needed
    ([0.4, 0.1, 0.3, 0.2], [0, 0, 0, 0], [2, 3, 1, 4], [0.3], [F, T, F, F]),
    # tie at the threshold: greedy keeps 0.1 and 0.2, but a dropped piece also scores 0.2 -> both 0.2 dropped
    ([0.1, 0.2, 0.2, 0.3], [0, 0, 0, 0], None, [0.5], [T, F, F, F]),
    # per class: class 0 (3 voxels) R 1/3 -> 1 voxel; class 1 (3 voxels) R 2/3 -> 2 voxels
    ([0.9, 0.1, 0.5, 0.4, 0.3, 0.8], [0, 0, 0, 1, 1, 1], None, [1 / 3, 2 / 3], [F, T, F, T, T, F]),
    # R = 1 keeps all, R = 0 none
    ([0.3, 0.1, 0.2], [0, 1, 1], None, [1.0, 0.0], [T, F, F]),
    # three classes, class 2 absent
    ([0.5, 0.2, 0.7, 0.1], [1, 0, 1, 0], None, [0.5, 0.5, 0.5], [T, F, F, T]),
    # empty pieces are never kept and use no budget
    ([0.0, 0.5, 0.6], [0, 0, 0], [0, 2, 2], [0.5], [F, T, F]),
    # NaN is never kept
    ([float("nan"), 0.5, 0.6], [0, 0, 0], None, [1.0], [F, T, T]),
]


@pytest.mark.parametrize("scores, classes, sizes, keep_ratio, expected", SELECTION_CASES)
def test_small_loss_mask_by_hand(scores, classes, sizes, keep_ratio, expected):
    mask = small_loss_mask(
        torch.tensor(scores),
        torch.tensor(classes),
        None if sizes is None else torch.tensor(sizes),
        keep_ratio,
    )
    assert mask.dtype == torch.bool
    assert mask.tolist() == expected


def test_small_loss_mask_batched_shape_and_pooling():
    # (B=2, P=2), one class: batch pooled -> the two lowest over the batch; per sample -> the lowest of each row
    scores = torch.tensor([[0.1, 0.2], [0.3, 0.4]])
    classes = torch.zeros(2, 2, dtype=torch.long)
    pooled = small_loss_mask(scores, classes, None, [0.5])
    assert pooled.tolist() == [[T, T], [F, F]]
    per_sample = small_loss_mask(scores, classes, None, [0.5], per_sample=True)
    assert per_sample.tolist() == [[T, F], [T, F]]


def test_small_loss_mask_scalar_ratio_equals_vector():
    generator = torch.Generator().manual_seed(0)
    scores = torch.rand(3, 40, generator=generator)
    classes = torch.randint(0, 3, (3, 40), generator=generator)
    sizes = torch.randint(1, 9, (3, 40), generator=generator)
    torch.testing.assert_close(
        small_loss_mask(scores, classes, sizes, 0.6), small_loss_mask(scores, classes, sizes, [0.6, 0.6, 0.6])
    )


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("per_sample", [False, True])
def test_small_loss_mask_properties(seed, per_sample):
    """Random continuous scores (no ties): per group the kept pieces are the lowest-score prefix and hold between
    R_c N_c and R_c N_c + (one piece) voxels."""
    generator = torch.Generator().manual_seed(seed)
    batch, pieces, classes = 2, 60, 3
    scores = torch.rand(batch, pieces, generator=generator, dtype=torch.float64)
    piece_class = torch.randint(0, classes, (batch, pieces), generator=generator)
    sizes = torch.randint(0, 7, (batch, pieces), generator=generator)
    ratio = torch.tensor([0.3, 0.55, 0.9], dtype=torch.float64)
    mask = small_loss_mask(scores, piece_class, sizes, ratio, per_sample=per_sample)
    rows = [slice(b, b + 1) for b in range(batch)] if per_sample else [slice(0, batch)]
    for row in rows:
        for c in range(classes):
            in_group = (piece_class[row] == c) & (sizes[row] > 0)
            total = sizes[row][in_group].sum().item()
            kept = mask[row] & in_group
            kept_voxels = sizes[row][kept].sum().item()
            budget = ratio[c].item() * total
            assert kept_voxels >= budget - 1e-9
            if kept.any():
                # without the highest-scoring kept piece the budget would not be met: overshoot < one piece
                last = scores[row].masked_fill(~kept, -1.0).argmax()
                assert kept_voxels - sizes[row].reshape(-1)[last].item() < budget
                dropped = in_group & ~kept
                if dropped.any():
                    assert scores[row][kept].max() < scores[row][dropped].min()
    assert not mask[sizes == 0].any()


def test_small_loss_mask_within_one_piece_exact():
    # 10 pieces of 3 voxels, distinct scores, R = 0.5 of 30 voxels = 15 -> exactly 5 pieces
    scores = torch.linspace(0, 1, 10)
    mask = small_loss_mask(scores, torch.zeros(10, dtype=torch.long), torch.full((10,), 3), [0.5])
    assert mask.tolist() == [T] * 5 + [F] * 5
    # R = 0.45 -> 13.5 voxels -> 5 pieces (15 voxels): the 5th piece crosses the budget and is kept
    mask = small_loss_mask(scores, torch.zeros(10, dtype=torch.long), torch.full((10,), 3), [0.45])
    assert mask.sum().item() == 5


def test_small_loss_mask_budget_ignores_round_off():
    # 0.7 * 10 = 7.000000000000001 in float64: still exactly 7 unit pieces
    mask = small_loss_mask(torch.linspace(0, 1, 10), torch.zeros(10, dtype=torch.long), None, [0.7])
    assert mask.sum().item() == 7


def test_small_loss_mask_rejects_bad_arguments():
    scores = torch.rand(4)
    with pytest.raises(ValueError):
        small_loss_mask(scores, torch.zeros(5, dtype=torch.long), None, [0.5])
    with pytest.raises(ValueError):
        small_loss_mask(scores, torch.zeros(4, dtype=torch.long), torch.ones(3), [0.5])
    with pytest.raises(ValueError):
        small_loss_mask(scores, torch.zeros(4, dtype=torch.long), None, [1.5])
    with pytest.raises(ValueError):
        small_loss_mask(scores, torch.zeros(4, dtype=torch.long), None, [[0.5]])
    with pytest.raises(ValueError):
        small_loss_mask(scores, torch.zeros(4, dtype=torch.long), None, [0.5], per_sample=True)


def test_budgeted_prefix_at_most():
    # largest prefix within budget 4 of sizes (sorted by priority) 3, 2, 1: only the first fits (5 > 4 stops)
    priority = torch.tensor([0.1, 0.2, 0.3])
    group, size, budget = torch.zeros(3, dtype=torch.long), torch.tensor([3, 2, 1]), torch.tensor([4.0])
    mask = budgeted_prefix_mask(priority, group, size, budget, 1, at_least=False)
    assert mask.tolist() == [T, F, F]


def test_as_class_ratios():
    assert as_class_ratios([0.2, 1.0]).tolist() == [0.2, 1.0]
    assert as_class_ratios(0.5).dim() == 0
    with pytest.raises(ValueError):
        as_class_ratios([float("nan")])
    with pytest.raises(ValueError):
        as_class_ratios([-0.1])


# ---- forget-rate schedule ----------------------------------------------------------------------------------


@pytest.mark.parametrize("epoch, expected", [(0, 0.0), (1, 0.04), (2, 0.08), (5, 0.2), (50, 0.2)])
def test_forget_rate_schedule_linear_ramp(epoch, expected):
    assert forget_rate_schedule(epoch, 0.2, warmup_epochs=5) == pytest.approx(expected)


def test_forget_rate_schedule_per_class_and_no_warmup():
    rates = forget_rate_schedule(1, [0.1, 0.4], warmup_epochs=2)
    torch.testing.assert_close(rates, torch.tensor([0.05, 0.2], dtype=torch.float64))
    assert forget_rate_schedule(0, 0.3, warmup_epochs=0) == pytest.approx(0.3)


@pytest.mark.parametrize("args", [(-1, 0.2, 5), (0, 1.2, 5), (0, 0.2, -1)])
def test_forget_rate_schedule_rejects_bad_arguments(args):
    with pytest.raises(ValueError):
        forget_rate_schedule(*args)


# ---- Eq. 5 loss gap ---------------------------------------------------------------------------------------------


def test_loss_gap_plain_by_hand():
    loss = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    mask = torch.tensor([[T, T, F, F]])
    assert loss_gap(loss, mask).item() == pytest.approx(3.5 - 1.5)


def test_loss_gap_class_balanced_by_hand():
    # selected: class 0 losses 1, 1, 1 and class 1 loss 5 -> (1 + 5) / 2 = 3 (plain mean would be 2)
    # unselected: class 0 loss 2 and class 1 loss 6 -> 4
    loss = torch.tensor([[1.0, 1.0, 1.0, 5.0, 2.0, 6.0]])
    labels = torch.tensor([[[0, 0, 0, 1, 0, 1]]])
    mask = torch.tensor([[T, T, T, T, F, F]])
    assert loss_gap(loss, mask).item() == pytest.approx(4.0 - 2.0)
    assert loss_gap(loss, mask, labels, num_classes=2).item() == pytest.approx(4.0 - 3.0)


def test_loss_gap_empty_sides():
    loss = torch.tensor([1.0, 3.0])
    assert loss_gap(loss, torch.tensor([T, T])).item() == pytest.approx(-2.0)
    assert loss_gap(loss, torch.tensor([F, F])).item() == pytest.approx(2.0)


def test_loss_gap_rejects_bad_arguments():
    with pytest.raises(ValueError):
        loss_gap(torch.zeros(3), torch.ones(2, dtype=torch.bool))
    with pytest.raises(ValueError):
        loss_gap(torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool), labels=torch.zeros(1, 2))


# ---- tracker --------------------------------------------------------------------------------------------------


def test_loss_gap_tracker_patience():
    tracker = LossGapTracker(patience=3)
    signals = [tracker.update(g) for g in [0.1, 0.2, 0.15, 0.2, 0.19]]
    # 0.2 again is not an improvement: three epochs without a new maximum after the second
    assert signals == [F, F, F, F, T]
    assert tracker.best == pytest.approx(0.2) and tracker.best_epoch == 1


def test_loss_gap_tracker_improvement_resets_count_and_nan_does_not_improve():
    tracker = LossGapTracker(patience=2)
    assert not tracker.update(torch.tensor(-0.5))  # first update always improves, even negative
    assert not tracker.update(float("nan"))
    assert not tracker.update(0.1)  # improvement
    assert not tracker.update(0.05)
    assert tracker.update(0.0)


def test_loss_gap_tracker_min_delta_and_reset():
    tracker = LossGapTracker(patience=1, min_delta=0.1)
    tracker.update(1.0)
    assert tracker.update(1.05)  # not more than 0.1 better
    tracker.reset()
    assert tracker.best == -math.inf and not tracker.should_stop
    assert not tracker.update(0.5)
    assert tracker.history == [1.0, 1.05, 0.5]


def test_loss_gap_tracker_state_dict_round_trip():
    tracker = LossGapTracker(patience=4)
    for g in [0.3, 0.5, 0.4]:
        tracker.update(g)
    restored = LossGapTracker()
    restored.load_state_dict(tracker.state_dict())
    assert restored.state_dict() == tracker.state_dict()
    # one epoch without improvement already counted: the fourth is reached on the third update
    assert [restored.update(0.1) for _ in range(3)] == [F, F, T]
    with pytest.raises(ValueError):
        restored.load_state_dict({"best": 0.0})


def test_loss_gap_tracker_rejects_bad_patience():
    with pytest.raises(ValueError):
        LossGapTracker(patience=0)


# ---- R estimate -------------------------------------------------------------------------------------------------


def test_estimate_keep_ratio_by_hand():
    noisy = torch.tensor([0, 0, 0, 0, 1, 1])
    clean = torch.tensor([0, 0, 0, 1, 1, 0])
    # class 0: 3 of 4 noisy-0 voxels are clean 0; class 1: 1 of 2; class 2 absent -> 1
    expected = torch.tensor([0.75, 0.5, 1.0], dtype=torch.float64)
    torch.testing.assert_close(estimate_keep_ratio(noisy, clean, 3), expected)
    with pytest.raises(ValueError):
        estimate_keep_ratio(noisy, clean[:3], 2)
