"""Tests for custom/selection/superpixel.py (Eqs. 1-2 of SP-guided, pieces, the per-step selection)."""

from __future__ import annotations

import math

import pytest
import torch

from custom.selection.superpixel import (
    piece_ids,
    piece_joint_scores,
    pieces_to_voxels,
    pooled_piece_probabilities,
    superpixel_joint_score,
    superpixel_mean,
    superpixel_selection_mask,
    superpixel_sizes,
    superpixel_soft_labels,
    voxel_pieces,
)

# shape: (1, 1, 2, 2, 2); superpixel 0 = first 4 voxels, superpixel 1 = last 4 (raster order)
SP = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]).view(1, 1, 2, 2, 2)
LABELS = torch.tensor([0, 0, 0, 1, 1, 1, 1, 0]).view(1, 1, 2, 2, 2)
FG = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.2, 0.2, 0.6, 1.0])
PROBS = torch.stack([1 - FG, FG]).view(1, 2, 2, 2, 2)  # (B, C, H, W, D)


def test_superpixel_mean_by_hand():
    # foreground: (0.1+0.3+0.5+0.7)/4 = 0.4, (0.2+0.2+0.6+1.0)/4 = 0.5
    expected = torch.tensor([[[0.6, 0.5], [0.4, 0.5]]])
    torch.testing.assert_close(superpixel_mean(PROBS, SP), expected)
    torch.testing.assert_close(superpixel_mean(PROBS, SP, num_superpixels=2), expected)


def test_superpixel_mean_batch_offsets_and_empty_superpixels():
    # second element: supervoxel ids 0 and 2 only (1 and 3 empty) over a 1D strip of 4 voxels
    values = torch.tensor([[[1.0, 2.0, 3.0, 4.0]], [[10.0, 20.0, 30.0, 40.0]]])  # (B=2, C=1, 4)
    ids = torch.tensor([[[0, 0, 1, 1]], [[2, 0, 2, 2]]])  # (B, 1, 4)
    expected = torch.tensor([[[1.5, 3.5, 0.0, 0.0]], [[20.0, 0.0, 80.0 / 3, 0.0]]])
    torch.testing.assert_close(superpixel_mean(values, ids, num_superpixels=4), expected)
    torch.testing.assert_close(superpixel_sizes(ids, 4), torch.tensor([[2, 2, 0, 0], [1, 0, 3, 0]]))


def test_superpixel_mean_accepts_per_batch_counts_and_float_ids():
    values = torch.arange(4.0).view(1, 1, 4)
    ids = torch.tensor([[[0.0, 0.0, 1.0, 1.0]]])
    out = superpixel_mean(values, ids, num_superpixels=torch.tensor([2]))
    torch.testing.assert_close(out, torch.tensor([[[0.5, 2.5]]]))


def test_superpixel_mean_keeps_half_precision_dtype():
    out = superpixel_mean(PROBS.half(), SP)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), torch.tensor([[[0.6, 0.5], [0.4, 0.5]]]), atol=1e-3, rtol=0)


def test_superpixel_soft_labels_by_hand_c2():
    # superpixel 0: labels 0,0,0,1 -> (0.75, 0.25); superpixel 1: 1,1,1,0 -> (0.25, 0.75)
    expected = torch.tensor([[[0.75, 0.25], [0.25, 0.75]]])
    torch.testing.assert_close(superpixel_soft_labels(LABELS, SP, num_classes=2), expected)


def test_superpixel_soft_labels_by_hand_c3():
    # shape: (1, 1, 6); superpixel 0 = labels (2, 2, 0), superpixel 1 = labels (1, 0, 0)
    labels = torch.tensor([[[2, 2, 0, 1, 0, 0]]])
    ids = torch.tensor([[[0, 0, 0, 1, 1, 1]]])
    expected = torch.tensor([[[1 / 3, 2 / 3], [0.0, 1 / 3], [2 / 3, 0.0]]])
    torch.testing.assert_close(superpixel_soft_labels(labels, ids, 3), expected)


def test_soft_labels_are_the_mean_of_one_hot_labels():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (2, 1, 5, 4, 3), generator=generator)
    ids = torch.randint(0, 7, (2, 1, 5, 4, 3), generator=generator)
    one_hot = torch.nn.functional.one_hot(labels[:, 0], 3).movedim(-1, 1).float()
    torch.testing.assert_close(superpixel_soft_labels(labels, ids, 3, 7), superpixel_mean(one_hot, ids, 7))


def test_piece_ids_layout_by_hand():
    pieces = piece_ids(SP, LABELS, num_classes=2)
    # piece p = k * C + c: (0,0) 3 voxels, (0,1) 1, (1,0) 1, (1,1) 3
    torch.testing.assert_close(pieces.piece_class, torch.tensor([[0, 1, 0, 1]]))
    torch.testing.assert_close(pieces.piece_size, torch.tensor([[3, 1, 1, 3]]))
    torch.testing.assert_close(pieces.ids.flatten(), torch.tensor([0, 0, 0, 1, 3, 3, 3, 2]))
    assert pieces.ids.shape == SP.shape


def test_voxel_pieces():
    labels = torch.tensor([[[1, 0, 2]], [[0, 0, 1]]])  # (B=2, 1, 3)
    pieces = voxel_pieces(labels)
    torch.testing.assert_close(pieces.ids, torch.tensor([[[0, 1, 2]], [[0, 1, 2]]]))
    torch.testing.assert_close(pieces.piece_class, torch.tensor([[1, 0, 2], [0, 0, 1]]))
    torch.testing.assert_close(pieces.piece_size, torch.ones(2, 3, dtype=torch.long))


def test_pieces_to_voxels_paints_back():
    pieces = piece_ids(SP, LABELS, 2)
    values = torch.tensor([[10.0, 11.0, 12.0, 13.0]])
    torch.testing.assert_close(
        pieces_to_voxels(values, pieces.ids).flatten(), torch.tensor([10.0, 10, 10, 11, 13, 13, 13, 12])
    )
    per_class = torch.stack([values, -values], dim=1)  # (B, C, P)
    assert pieces_to_voxels(per_class, pieces.ids).shape == (1, 2, 2, 2, 2)


def test_pooled_piece_probabilities_superpixel_vs_piece():
    pieces = piece_ids(SP, LABELS, 2)
    by_superpixel = pooled_piece_probabilities(PROBS, pieces, SP)
    # every piece of superpixel k gets its superpixel mean: fg 0.4, 0.4, 0.5, 0.5
    torch.testing.assert_close(by_superpixel[0, 1], torch.tensor([0.4, 0.4, 0.5, 0.5]))
    by_piece = pooled_piece_probabilities(PROBS, pieces)
    # piece means: (0.1+0.3+0.5)/3, 0.7, 1.0, (0.2+0.2+0.6)/3
    torch.testing.assert_close(by_piece[0, 1], torch.tensor([0.3, 0.7, 1.0, 1 / 3]))


# Eq. 2 by hand: P1 = (0.8, 0.2), P2 = (0.6, 0.4), lam = 0.65
def _eq2(y0: float, y1: float) -> float:
    ce1 = -(y0 * math.log(0.8) + y1 * math.log(0.2))
    ce2 = -(y0 * math.log(0.6) + y1 * math.log(0.4))
    sym_kl = (0.8 - 0.6) * (math.log(0.8) - math.log(0.6)) + (0.2 - 0.4) * (math.log(0.2) - math.log(0.4))
    return 0.35 * (ce1 + ce2) + 0.65 * sym_kl


@pytest.mark.parametrize("target, expected", [((1.0, 0.0), 0.3843970), ((0.75, 0.25), 0.5411760)])
def test_superpixel_joint_score_by_hand(target, expected):
    p1 = torch.tensor([0.8, 0.2], dtype=torch.float64).view(1, 2, 1)
    p2 = torch.tensor([0.6, 0.4], dtype=torch.float64).view(1, 2, 1)
    y = torch.tensor(target, dtype=torch.float64).view(1, 2, 1)
    score = superpixel_joint_score(p1, p2, y, lam=0.65)
    assert score.shape == (1, 1)
    assert score.item() == pytest.approx(_eq2(*target), abs=1e-12)
    assert score.item() == pytest.approx(expected, abs=1e-6)


def test_superpixel_joint_score_lambda_extremes_and_symmetry():
    generator = torch.Generator().manual_seed(1)
    p1 = torch.rand(2, 3, 5, generator=generator).softmax(1)
    p2 = torch.rand(2, 3, 5, generator=generator).softmax(1)
    y = torch.rand(2, 3, 5, generator=generator).softmax(1)
    # lam = 1: only the symmetric KL, symmetric in the networks and 0 for identical predictions
    torch.testing.assert_close(superpixel_joint_score(p1, p2, y, 1.0), superpixel_joint_score(p2, p1, y, 1.0))
    torch.testing.assert_close(superpixel_joint_score(p1, p1, y, 1.0), torch.zeros(2, 5))
    # lam = 0: the two cross-entropies only
    ce = -(y * p1.log()).sum(1) - (y * p2.log()).sum(1)
    torch.testing.assert_close(superpixel_joint_score(p1, p2, y, 0.0), ce)


def test_piece_joint_scores_equals_one_hot_score_c3():
    generator = torch.Generator().manual_seed(2)
    p1 = torch.rand(2, 3, 6, generator=generator).softmax(1)
    p2 = torch.rand(2, 3, 6, generator=generator).softmax(1)
    cls = torch.randint(0, 3, (2, 6), generator=generator)
    one_hot = torch.nn.functional.one_hot(cls, 3).movedim(-1, 1).float()
    torch.testing.assert_close(piece_joint_scores(p1, p2, cls), superpixel_joint_score(p1, p2, one_hot))


def test_joint_score_rejects_bad_arguments():
    p = torch.full((1, 2, 3), 0.5)
    with pytest.raises(ValueError):
        superpixel_joint_score(p, p, torch.full((1, 2, 4), 0.5))
    with pytest.raises(ValueError):
        superpixel_joint_score(p, p, p, lam=1.5)


def test_functions_reject_bad_shapes():
    with pytest.raises(ValueError):
        superpixel_mean(PROBS, SP[:, :, :1])
    with pytest.raises(ValueError):
        superpixel_mean(PROBS, SP.squeeze(1))
    with pytest.raises(ValueError):
        superpixel_mean(PROBS, SP - 1)  # negative ids
    with pytest.raises(ValueError):
        piece_ids(SP, LABELS[..., :1], 2)
    with pytest.raises(ValueError):
        superpixel_soft_labels(LABELS, SP, 0)


def test_selection_mask_by_hand():
    # both networks agree (symmetric KL = 0), so a piece scores 0.35 * 2 * CE(its superpixel mean, its class);
    # superpixel means: (0.6, 0.4) and (0.5, 0.5)
    selection = superpixel_selection_mask(PROBS, PROBS, LABELS, SP, keep_ratio=[0.5, 0.5])
    expected_scores = torch.tensor(
        [[-0.7 * math.log(0.6), -0.7 * math.log(0.4), -0.7 * math.log(0.5), -0.7 * math.log(0.5)]]
    )
    torch.testing.assert_close(selection.piece_scores, expected_scores)
    # class 0: pieces 0 (3 voxels, 0.358) and 2 (1 voxel, 0.485); budget 0.5 * 4 = 2 -> piece 0 reaches it
    # class 1: pieces 1 (1 voxel, 0.641) and 3 (3 voxels, 0.485); budget 2 -> piece 3
    torch.testing.assert_close(selection.piece_mask, torch.tensor([[True, False, False, True]]))
    torch.testing.assert_close(
        selection.mask.flatten(), torch.tensor([True, True, True, False, True, True, True, False])
    )
    assert selection.mask.shape == (1, 2, 2, 2)


def test_selection_mask_voxel_ablation_and_pool_modes():
    generator = torch.Generator().manual_seed(3)
    p1 = torch.rand(2, 3, 4, 4, 2, generator=generator).softmax(1)
    p2 = torch.rand(2, 3, 4, 4, 2, generator=generator).softmax(1)
    labels = torch.randint(0, 3, (2, 1, 4, 4, 2), generator=generator)
    # voxel-level ablation equals superpixels of one voxel each, with either pooling
    singletons = torch.arange(32).view(1, 1, 4, 4, 2).expand(2, -1, -1, -1, -1)
    ablation = superpixel_selection_mask(p1, p2, labels, None, [0.6, 0.7, 0.8])
    for pool in ("superpixel", "piece"):
        same = superpixel_selection_mask(p1, p2, labels, singletons, [0.6, 0.7, 0.8], pool=pool)
        torch.testing.assert_close(same.mask, ablation.mask)
    with pytest.raises(ValueError, match="pool"):
        superpixel_selection_mask(p1, p2, labels, singletons, [0.6, 0.7, 0.8], pool="mode")


def test_selection_mask_keeps_about_r_per_class_and_no_gradient():
    generator = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 2, 8, 8, 4, generator=generator, requires_grad=True)
    p1 = logits.softmax(1)
    p2 = (logits * 0.5).softmax(1)
    labels = torch.randint(0, 2, (2, 1, 8, 8, 4), generator=generator)
    ids = (torch.arange(256).view(1, 1, 8, 8, 4) // 4).expand(2, -1, -1, -1, -1)  # 64 pieces of 4 voxels
    selection = superpixel_selection_mask(p1, p2, labels, ids, [0.5, 0.75])
    assert not selection.mask.requires_grad and not selection.piece_scores.requires_grad
    for cls, ratio in ((0, 0.5), (1, 0.75)):
        total = int((labels[:, 0] == cls).sum())
        kept = int((selection.mask & (labels[:, 0] == cls)).sum())
        assert ratio * total <= kept < ratio * total + 4  # within one piece (<= 4 voxels); no ties here


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_selection_runs_on_the_inputs_device(device):
    generator = torch.Generator().manual_seed(5)
    p1 = torch.rand(2, 2, 6, 6, 4, generator=generator).softmax(1).to(device)
    p2 = torch.rand(2, 2, 6, 6, 4, generator=generator).softmax(1).to(device)
    labels = torch.randint(0, 2, (2, 1, 6, 6, 4), generator=generator).float().to(device)
    ids = torch.randint(0, 10, (2, 1, 6, 6, 4), generator=generator).float().to(device)
    if device == "cuda":
        # with K given and per-class ratios, a training step must not wait for the GPU
        torch.cuda.set_sync_debug_mode("error")
    try:
        selection = superpixel_selection_mask(p1, p2, labels, ids, [0.7, 0.8], num_superpixels=10)
    finally:
        if device == "cuda":
            torch.cuda.set_sync_debug_mode("default")
    assert selection.mask.device.type == device and selection.piece_scores.device.type == device
    reference = superpixel_selection_mask(p1.cpu(), p2.cpu(), labels.cpu(), ids.cpu(), [0.7, 0.8], num_superpixels=10)
    torch.testing.assert_close(selection.mask.cpu(), reference.mask)


@pytest.mark.parametrize("dtype", [torch.long, torch.float32])
def test_piece_ids_leave_the_inputs_untouched(dtype):
    superpixels, labels = SP.to(dtype), LABELS.to(dtype)
    before = (superpixels.clone(), labels.clone())
    pieces = piece_ids(superpixels, labels, num_classes=2)
    torch.testing.assert_close((superpixels, labels), before)
    torch.testing.assert_close(pieces.ids.flatten(), torch.tensor([0, 0, 0, 1, 3, 3, 3, 2]))


def test_pooled_probabilities_equal_superpixel_means_on_random_maps():
    generator = torch.Generator().manual_seed(0)
    superpixels = torch.randint(0, 7, (3, 1, 4, 5, 6), generator=generator)
    superpixels[1] = superpixels[1].clamp_max(4)  # batch element 1 has empty supervoxels 5 and 6
    labels = torch.randint(0, 3, (3, 1, 4, 5, 6), generator=generator)
    probs = torch.softmax(torch.randn(3, 3, 4, 5, 6, generator=generator), dim=1)
    pieces = piece_ids(superpixels, labels, num_classes=3, num_superpixels=7)
    pooled = pooled_piece_probabilities(probs, pieces, superpixels, 7)
    torch.testing.assert_close(pooled, superpixel_mean(probs, superpixels, 7).repeat_interleave(3, dim=2))
    by_piece = pooled_piece_probabilities(probs, pieces)
    torch.testing.assert_close(by_piece, superpixel_mean(probs, pieces.ids, 21))
