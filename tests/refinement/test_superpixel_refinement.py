"""Tests for custom/refinement/superpixel_refinement.py (Eqs. 6-8 of SP-guided and the R update)."""

from __future__ import annotations

import pytest
import torch

from custom.refinement.superpixel_refinement import (
    refine_labels_by_superpixel,
    refinement_piece_mask,
    update_keep_ratio,
)
from custom.selection.superpixel import piece_ids, pooled_piece_probabilities

T, F = True, False

# shape: (1, 1, 8) strip; superpixel 0 = voxels 0-3, superpixel 1 = voxels 4-7
SP = torch.tensor([[[0, 0, 0, 0, 1, 1, 1, 1]]])
# voxel 3 is labelled 0 inside a superpixel the networks call foreground
LABELS = torch.tensor([[[1, 1, 1, 0, 0, 0, 0, 0]]])
FG = torch.tensor([0.9, 0.9, 0.9, 0.9, 0.1, 0.1, 0.1, 0.1])
PROBS = torch.stack([1 - FG, FG]).unsqueeze(0)  # (1, 2, 8)


def test_refinement_flips_the_unreliable_piece_by_hand():
    # pieces: (sp0, c0) 1 voxel, loss -ln 0.1 = 2.30; (sp0, c1) 3 voxels, -ln 0.9; (sp1, c0) 4 voxels, -ln 0.9
    # class 0 has 5 voxels, R0 = 0.8 -> budget 1 voxel: only (sp0, c0) fits; its argmax is 1 -> relabelled
    # class 1 has 3 voxels, R1 = 0.8 -> budget 0.6 voxel: nothing fits
    new_labels, changed = refine_labels_by_superpixel(PROBS, LABELS, SP, keep_ratio=[0.8, 0.8])
    assert new_labels.tolist() == [[[1, 1, 1, 1, 0, 0, 0, 0]]]
    assert changed.tolist() == [[[F, F, F, T, F, F, F, F]]]
    assert new_labels.dtype == torch.long and changed.dtype == torch.bool


def test_refinement_respects_the_budget():
    # R0 = 0.9 -> budget 0.5 voxel: the 1-voxel piece does not fit, nothing changes
    new_labels, changed = refine_labels_by_superpixel(PROBS, LABELS, SP, keep_ratio=[0.9, 0.9])
    assert torch.equal(new_labels, LABELS) and not changed.any()
    # R = 0 -> every piece of the class may be relabelled, but only pieces whose prediction differs change:
    # (sp1, c0) predicts 0 = its own class; (sp0, c1) predicts 1
    new_labels, changed = refine_labels_by_superpixel(PROBS, LABELS, SP, keep_ratio=[0.0, 0.0])
    assert new_labels.tolist() == [[[1, 1, 1, 1, 0, 0, 0, 0]]]


def test_refinement_keeps_piece_whose_prediction_is_its_own_class_c3():
    # one superpixel of 4 voxels, noisy labels 0,0,0,2; pooled p = (0.4, 0.3, 0.3): argmax 0
    probs = torch.tensor([0.4, 0.3, 0.3]).view(1, 3, 1).expand(1, 3, 4)
    labels = torch.tensor([[[0, 0, 0, 2]]])
    sp = torch.zeros(1, 1, 4, dtype=torch.long)
    new_labels, changed = refine_labels_by_superpixel(probs, labels, sp, keep_ratio=[0.0, 0.0, 0.0])
    # both pieces are taken (R = 0): the class-2 piece flips to 0, the class-0 piece stays 0
    assert new_labels.tolist() == [[[0, 0, 0, 0]]]
    assert changed.tolist() == [[[F, F, F, T]]]


def test_refinement_ties_at_threshold_are_dropped():
    # two 1-voxel class-0 pieces in different superpixels with identical loss; budget 1 voxel: the prefix takes
    # one, the other (same loss) is left out -> the taken one is dropped too
    probs = torch.tensor([[0.2, 0.8], [0.2, 0.8], [0.9, 0.1]]).T.unsqueeze(0)  # (1, 2, 3)
    labels = torch.tensor([[[0, 0, 0]]])
    sp = torch.tensor([[[0, 1, 2]]])
    new_labels, changed = refine_labels_by_superpixel(probs, labels, sp, keep_ratio=[2 / 3, 1.0])
    assert not changed.any()
    # with budget 2 both fit and flip
    new_labels, changed = refine_labels_by_superpixel(probs, labels, sp, keep_ratio=[1 / 3, 1.0])
    assert new_labels.tolist() == [[[1, 1, 0]]]


def test_refinement_piece_mask_at_most_prefix():
    loss = torch.tensor([[3.0, 2.0, 1.0, 0.5]])
    cls = torch.zeros(1, 4, dtype=torch.long)
    size = torch.tensor([[2, 2, 1, 5]])
    # budget 0.4 * 10 = 4: pieces 0 and 1 (4 voxels) fit, piece 2 would make 5
    assert refinement_piece_mask(loss, cls, size, [0.6]).tolist() == [[T, T, F, F]]
    with pytest.raises(ValueError):
        refinement_piece_mask(loss, cls, size[:, :3], [0.6])


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("num_classes", [2, 3])
def test_refinement_properties(seed, num_classes):
    generator = torch.Generator().manual_seed(seed)
    batch, shape = 2, (6, 6, 4)
    probs = torch.rand(batch, num_classes, *shape, generator=generator).softmax(1)
    labels = torch.randint(0, num_classes, (batch, 1, *shape), generator=generator)
    sp = torch.randint(0, 20, (batch, 1, *shape), generator=generator)
    ratio = torch.tensor([0.7, 0.8, 0.6][:num_classes], dtype=torch.float64)
    new_labels, changed = refine_labels_by_superpixel(probs, labels, sp, ratio, num_superpixels=20)
    assert new_labels.shape == labels.shape
    # unchanged voxels keep their label, changed voxels get a different one
    assert torch.equal(new_labels[~changed], labels[~changed])
    assert (new_labels[changed] != labels[changed]).all()
    # changed voxels take the argmax of their superpixel's mean probability (Eq. 7)
    pieces = piece_ids(sp, labels, num_classes, 20)
    pooled_argmax = pooled_piece_probabilities(probs, pieces, sp, 20).argmax(1)
    painted = pooled_argmax.gather(1, pieces.ids.flatten(1)).view_as(labels)
    assert torch.equal(new_labels[changed], painted[changed])
    # budget per case and noisy class: at most (1 - R_c) N_c voxels change
    for b in range(batch):
        for c in range(num_classes):
            of_class = labels[b] == c
            assert changed[b][of_class].sum() <= (1 - ratio[c]) * of_class.sum() + 1e-9
    # a whole piece changes or none of it: labels stay uniform within each (superpixel, noisy class) piece
    flat_changed = changed.flatten(1).long()
    per_piece = torch.zeros(batch, 20 * num_classes, dtype=torch.long)
    per_piece.scatter_add_(1, pieces.ids.flatten(1), flat_changed)
    assert torch.equal((per_piece > 0) * pieces.piece_size, per_piece)


def test_refinement_voxel_ablation():
    # every voxel its own piece: class 0 voxels 3..7 (5), budget 0.4 * 5 = 2 -> the two highest-loss class-0
    # voxels whose argmax is 1 are relabelled (voxel 3 at p1 = 0.9 and voxel 7 at p1 = 0.6)
    fg = torch.tensor([0.9, 0.9, 0.9, 0.9, 0.1, 0.2, 0.3, 0.6])
    probs = torch.stack([1 - fg, fg]).unsqueeze(0)
    new_labels, changed = refine_labels_by_superpixel(probs, LABELS, None, keep_ratio=[0.6, 1.0])
    assert changed.tolist() == [[[F, F, F, T, F, F, F, T]]]
    assert new_labels.tolist() == [[[1, 1, 1, 1, 0, 0, 0, 1]]]


def test_refinement_per_sample_budget():
    # case A as above (unreliable 1-voxel piece, loss -ln 0.1); case B the same with superpixel 0 at p1 = 0.7
    # (loss -ln 0.3). R0 = 0.9: per case the budget is 0.5 voxel -> nothing changes; pooled over the batch it is
    # 0.1 * 10 = 1 voxel -> only case A's piece, the larger loss, is relabelled
    fg_b = torch.tensor([0.7, 0.7, 0.7, 0.7, 0.1, 0.1, 0.1, 0.1])
    probs = torch.cat([PROBS, torch.stack([1 - fg_b, fg_b]).unsqueeze(0)])
    labels, sp = LABELS.repeat(2, 1, 1), SP.repeat(2, 1, 1)
    _, per_case = refine_labels_by_superpixel(probs, labels, sp, [0.9, 1.0], per_sample=True)
    assert not per_case.any()
    _, pooled = refine_labels_by_superpixel(probs, labels, sp, [0.9, 1.0], per_sample=False)
    assert pooled[:, 0, 3].tolist() == [T, F] and pooled.sum() == 1


def test_refinement_rejects_bad_arguments():
    with pytest.raises(ValueError, match="pool"):
        refine_labels_by_superpixel(PROBS, LABELS, SP, [0.8, 0.8], pool="mode")
    with pytest.raises(ValueError):
        refine_labels_by_superpixel(PROBS, LABELS[..., :4], SP, [0.8, 0.8])
    with pytest.raises(ValueError):
        refine_labels_by_superpixel(PROBS, LABELS, SP[..., :4], [0.8, 0.8])
    with pytest.raises(ValueError):
        refine_labels_by_superpixel(PROBS, LABELS, SP, [0.8, 1.8])


def test_update_keep_ratio():
    torch.testing.assert_close(
        update_keep_ratio([0.8, 0.9], gamma=1.1, max_keep_ratio=0.95), torch.tensor([0.88, 0.95], dtype=torch.float64)
    )
    # already above the ceiling: never decreases (reference code's outer max)
    torch.testing.assert_close(update_keep_ratio([0.97], 1.1, [0.9]), torch.tensor([0.97], dtype=torch.float64))
    # per-class ceilings (reference: 0.95 background, 0.9 foreground)
    torch.testing.assert_close(
        update_keep_ratio([0.9, 0.85], 1.1, [0.95, 0.9]), torch.tensor([0.95, 0.9], dtype=torch.float64)
    )
    with pytest.raises(ValueError):
        update_keep_ratio([0.8], gamma=0.9)


# ---------------------------------------------------------------- pooled budget over cases (authors' label_update)


def _two_cases():
    """Case A is corrupted (two foreground voxels the networks call background with confidence), case B is clean
    (one foreground voxel the networks doubt, p_fg 0.45). 10 foreground + 6 background voxels each."""
    from custom.refinement.superpixel_refinement import piece_scores

    def case(p_fg_of_labelled_fg):
        labels = torch.tensor([1] * 10 + [0] * 6).reshape(1, 1, 16, 1, 1)
        p_fg = torch.tensor(list(p_fg_of_labelled_fg) + [0.01] * 6).reshape(1, 1, 16, 1, 1)
        probs = torch.cat([1 - p_fg, p_fg], dim=1)
        return labels, piece_scores(probs, labels, None)

    corrupted = case([0.02, 0.05] + [0.95] * 8)
    clean = case([0.45] + [0.95] * 9)
    return corrupted, clean


def test_pooled_budget_changes_only_the_corrupted_case():
    from custom.refinement.superpixel_refinement import apply_refinement, pooled_refinement_masks

    (labels_a, scores_a), (labels_b, scores_b) = _two_cases()
    # R = 0.9: pooled budget (1 - 0.9) * 20 foreground voxels = 2, taken by A's two confident errors
    mask_a, mask_b = pooled_refinement_masks([scores_a, scores_b], [0.9, 0.9])
    new_a, changed_a = apply_refinement(scores_a, mask_a)
    new_b, changed_b = apply_refinement(scores_b, mask_b)
    assert changed_a.flatten().tolist() == [True, True] + [False] * 14
    assert new_a.flatten()[:2].tolist() == [0, 0]
    assert not changed_b.any() and torch.equal(new_b, labels_b)


def test_per_case_budget_spends_every_case_quota():
    from custom.refinement.superpixel_refinement import apply_refinement, refinement_piece_mask

    (_, scores_a), (labels_b, scores_b) = _two_cases()
    # per case: (1 - 0.9) * 10 = 1 voxel each; A flips its worst voxel, the clean case B loses a correct one
    changed = []
    for scores in (scores_a, scores_b):
        mask = refinement_piece_mask(scores.loss, scores.piece_class, scores.piece_size, [0.9, 0.9], per_sample=True)
        changed.append(apply_refinement(scores, mask)[1].flatten().tolist())
    assert changed[0] == [True] + [False] * 15
    assert changed[1] == [True] + [False] * 15


def test_confidence_gate_keeps_a_clean_case_that_the_budget_reaches():
    from custom.refinement.superpixel_refinement import apply_refinement, pooled_refinement_masks

    (_, scores_a), (labels_b, scores_b) = _two_cases()
    # R = 0.8: pooled budget 4 voxels, enough to reach the clean case's doubted voxel (p_bg 0.55)
    mask_a, mask_b = pooled_refinement_masks([scores_a, scores_b], [0.8, 0.8])
    assert apply_refinement(scores_b, mask_b)[1].flatten().tolist() == [True] + [False] * 15
    torch.testing.assert_close(scores_b.confidence.flatten()[0], torch.tensor(0.55))
    # gate 0.9: the clean case keeps its labels, the corrupted case's confident errors (p_bg 0.98, 0.95) still flip
    new_b, changed_b = apply_refinement(scores_b, mask_b, min_confidence=0.9)
    assert not changed_b.any() and torch.equal(new_b, labels_b)
    assert apply_refinement(scores_a, mask_a, min_confidence=0.9)[1].flatten().tolist() == [True, True] + [False] * 14
    # a gate above the corrupted case's second error leaves only the first
    assert apply_refinement(scores_a, mask_a, min_confidence=0.97)[1].flatten().tolist() == [True] + [False] * 15
    with pytest.raises(ValueError, match="min_confidence"):
        apply_refinement(scores_a, mask_a, min_confidence=1.5)


def test_a_gate_per_noisy_class_reads_each_pieces_own_class():
    from custom.refinement.superpixel_refinement import apply_refinement, confidence_gate, piece_scores

    # voxel pieces: 0 labelled bg, predicted fg at 0.85; 1 labelled fg, predicted bg at 0.9; 2 and 3 agree
    labels = torch.tensor([0, 1, 1, 0]).reshape(1, 1, -1)
    p_fg = torch.tensor([0.85, 0.1, 0.99, 0.01]).reshape(1, 1, -1)
    scores = piece_scores(torch.cat([1 - p_fg, p_fg], dim=1), labels, None)
    taken = torch.ones_like(scores.loss, dtype=torch.bool)
    assert confidence_gate([0.8, 0.95], scores.piece_class)[0].tolist() == pytest.approx([0.8, 0.95, 0.95, 0.8])
    # relabelling background needs 0.8, foreground 0.95: only piece 0 flips
    new, changed = apply_refinement(scores, taken, min_confidence=[0.8, 0.95])
    assert changed.flatten().tolist() == [True, False, False, False] and new.flatten().tolist() == [1, 1, 1, 0]
    # and the other way round only piece 1
    assert apply_refinement(scores, taken, min_confidence=[0.95, 0.8])[1].flatten().tolist() == [
        False, True, False, False]
    # one gate for both classes as a scalar
    assert apply_refinement(scores, taken, min_confidence=0.8)[1].flatten().tolist() == [True, True, False, False]
    with pytest.raises(ValueError, match="min_confidence"):
        apply_refinement(scores, taken, min_confidence=[0.8, 1.5])
