"""Tests for custom/refinement/gate_calibration.py: piece-space Dice, the HQ dry run's gate and the case gate,
hand-computed."""

from __future__ import annotations

import pytest
import torch

from custom.refinement.gate_calibration import (
    calibrate_min_confidence,
    case_gate_threshold,
    label_agreement,
    piece_label_dice,
)
from custom.refinement.superpixel_refinement import PieceScores
from custom.selection.superpixel import voxel_pieces


def _scores(piece_class, piece_size, predicted, confidence) -> PieceScores:
    piece_class = torch.tensor([piece_class])
    pieces = voxel_pieces(piece_class.reshape(1, 1, -1))  # only a placeholder: the Dice reads classes and sizes
    return PieceScores(pieces, torch.zeros(piece_class.shape), piece_class, torch.tensor([piece_size]),
                       torch.tensor([predicted]), torch.tensor([confidence]))


def test_piece_label_dice_counts_voxels_per_piece():
    # old fg = 4 + 6 = 10; flipping pieces 0 (bg -> fg, 10 voxels) and 2 (fg -> bg, 6): new fg = 10 + 4 = 14,
    # overlap 4 -> Dice 8 / 24
    s = _scores([0, 1, 1, 0], [10, 4, 6, 5], [1, 1, 0, 0], [0.9, 0.9, 0.9, 0.9])
    flip = torch.tensor([[True, False, True, False]])
    assert piece_label_dice(s, flip).tolist() == pytest.approx([1.0 / 3.0])
    assert piece_label_dice(s, torch.zeros_like(flip)).tolist() == [1.0]


def test_piece_label_dice_multi_class_mean_and_no_foreground():
    # class 1: 5 voxels, flipped to class 2 -> Dice 0; class 2: old 5, new 10, overlap 5 -> 2/3; mean 1/3
    s = _scores([1, 2], [5, 5], [2, 2], [0.9, 0.9])
    assert piece_label_dice(s, torch.tensor([[True, False]])).tolist() == pytest.approx([1.0 / 3.0])
    empty = _scores([0, 0], [3, 4], [0, 0], [0.9, 0.9])
    assert piece_label_dice(empty, torch.tensor([[True, True]])).tolist() == [1.0]


# one HQ case: 100 fg voxels (pieces 2, 3) predicted right; piece 0 (10 bg voxels) predicted fg at 0.6 would cost
# 1 - 200 / 210 = 0.048 Dice, piece 1 (1 bg voxel) at 0.9 costs 1 - 200 / 201 = 0.005
HQ = _scores([0, 0, 1, 1], [10, 1, 50, 50], [1, 1, 1, 1], [0.6, 0.9, 0.95, 0.95])
ALL = [torch.ones(1, 4, dtype=torch.bool)]


@pytest.mark.parametrize(
    "tolerance, floor, expected_gate, expected_dice",
    [(0.02, 0.0, 0.61, 200 / 201), (0.0, 0.0, 0.91, 1.0), (0.06, 0.0, 0.0, 200 / 211), (0.02, 0.7, 0.7, 200 / 201)],
)
def test_calibrated_gate_is_the_smallest_within_tolerance(tolerance, floor, expected_gate, expected_dice):
    result = calibrate_min_confidence([HQ], ALL, tolerance=tolerance, floor=floor)
    assert result.min_confidence == pytest.approx(expected_gate)
    assert result.dice == pytest.approx([expected_dice], abs=1e-6)
    assert result.worst_dice_loss == pytest.approx(1.0 - expected_dice, abs=1e-6)


def test_calibrated_gate_only_judges_the_pieces_the_budget_takes_and_the_worst_case():
    not_piece_0 = [torch.tensor([[False, True, True, True]])]
    assert calibrate_min_confidence([HQ], not_piece_0, tolerance=0.02).min_confidence == 0.0
    clean = _scores([0, 1], [10, 10], [0, 1], [0.99, 0.99])  # nothing to flip
    result = calibrate_min_confidence([clean, HQ], [torch.ones(1, 2, dtype=torch.bool)] + ALL, tolerance=0.02)
    assert result.min_confidence == pytest.approx(0.61) and result.dice == pytest.approx([1.0, 200 / 201])


def test_calibration_without_hq_cases_keeps_the_floor_and_rejects_bad_arguments():
    assert calibrate_min_confidence([], [], floor=0.8) == (0.8, 0.0, [])
    with pytest.raises(ValueError, match="tolerance"):
        calibrate_min_confidence([HQ], ALL, tolerance=1.5)
    with pytest.raises(ValueError, match="floor"):
        calibrate_min_confidence([HQ], ALL, floor=-0.1)
    with pytest.raises(ValueError, match="step"):
        calibrate_min_confidence([HQ], ALL, step=0.0)
    with pytest.raises(ValueError, match="masks"):
        calibrate_min_confidence([HQ], [])
    with pytest.raises(ValueError, match="flip"):
        piece_label_dice(HQ, torch.ones(1, 3, dtype=torch.bool))


def test_label_agreement_is_the_dice_of_labels_and_prediction():
    # HQ above: prediction fg = all 111 voxels, labels fg = 100 -> 200 / 211
    assert label_agreement(HQ).tolist() == pytest.approx([200.0 / 211.0])
    # labels fg = pieces 1, 2 (4 + 6), prediction fg = pieces 0, 1 (10 + 4): overlap 4 -> 8 / 24
    s = _scores([0, 1, 1, 0], [10, 4, 6, 5], [1, 1, 0, 0], [0.9, 0.9, 0.9, 0.9])
    assert label_agreement(s).tolist() == pytest.approx([1.0 / 3.0])


def test_case_gate_threshold_is_the_least_agreeing_hq_case_minus_the_margin():
    assert case_gate_threshold([0.91, 0.87, 0.95], margin=0.02) == pytest.approx(0.85)
    assert case_gate_threshold([0.9], margin=0.0) == pytest.approx(0.9)
    with pytest.raises(ValueError, match="at least one HQ case"):
        case_gate_threshold([])
    with pytest.raises(ValueError, match="margin"):
        case_gate_threshold([0.9], margin=-0.1)
