"""Tests for custom/selection/peer_selection.py (Co-teaching, JoCoR, Tri-network masks)."""

from __future__ import annotations

import pytest
import torch

from custom.selection.peer_selection import coteaching_masks, jocor_mask, trinet_masks, voxel_small_loss_mask

T, F = True, False

# shape: (B=1, 1, 6) labels; classes 0 (voxels 0-2) and 1 (voxels 3-5)
LABELS = torch.tensor([[[0, 0, 0, 1, 1, 1]]])
CE1 = torch.tensor([[0.1, 0.9, 0.5, 0.2, 0.8, 0.3]])
CE2 = torch.tensor([[0.7, 0.2, 0.4, 0.6, 0.1, 0.9]])
CE3 = torch.tensor([[0.3, 0.3, 0.6, 0.5, 0.4, 0.2]])
KEEP = [2 / 3, 1 / 3]  # class 0: 2 of 3 voxels, class 1: 1 of 3


def test_voxel_small_loss_mask_by_hand():
    # class 0 lowest two of (0.1, 0.9, 0.5): voxels 0, 2; class 1 lowest of (0.2, 0.8, 0.3): voxel 3
    assert voxel_small_loss_mask(CE1, LABELS, KEEP).tolist() == [[T, F, T, T, F, F]]
    # labels may come without the channel dim
    assert voxel_small_loss_mask(CE1, LABELS[:, 0], KEEP).tolist() == [[T, F, T, T, F, F]]


def test_coteaching_masks_are_swapped():
    for_net1, for_net2 = coteaching_masks(CE1, CE2, LABELS, KEEP)
    # net 2's small-loss voxels: class 0 (0.7, 0.2, 0.4) -> 1, 2; class 1 (0.6, 0.1, 0.9) -> 4
    assert for_net1.tolist() == [[F, T, T, F, T, F]]
    assert for_net2.tolist() == [[T, F, T, T, F, F]]


def test_jocor_mask_is_small_loss_of_joint_loss():
    joint = CE1 + CE2  # any per-voxel joint loss: 0.8, 1.1, 0.9 | 0.8, 0.9, 1.2
    assert jocor_mask(joint, LABELS, KEEP).tolist() == [[T, F, T, T, F, F]]


def test_trinet_agreement_rule_by_hand():
    m1, m2, m3 = trinet_masks(CE1, CE2, CE3, LABELS, KEEP, rule="agreement")
    # net 1 uses |CE2 - CE3| = 0.4, 0.1, 0.2 | 0.1, 0.3, 0.7 -> class 0: voxels 1, 2; class 1: voxel 3
    assert m1.tolist() == [[F, T, T, T, F, F]]
    # net 2 uses |CE1 - CE3| = 0.2, 0.6, 0.1 | 0.3, 0.4, 0.1 -> 0, 2 | 5
    assert m2.tolist() == [[T, F, T, F, F, T]]
    # net 3 uses |CE1 - CE2| = 0.6, 0.7, 0.1 | 0.4, 0.7, 0.6 -> 0, 2 | 3
    assert m3.tolist() == [[T, F, T, T, F, F]]


def test_trinet_consensus_rule_by_hand():
    m1, m2, m3 = trinet_masks(CE1, CE2, CE3, LABELS, KEEP, rule="consensus")
    # small-loss sets: net1 {0, 2, 3}; net2 {1, 2, 4}; net3 (0.3, 0.3, 0.6 | 0.5, 0.4, 0.2) {0, 1, 5}
    # (net 3, class 0: the two 0.3 are kept together; the dropped score is 0.6, so no tie at the threshold)
    assert m1.tolist() == [[F, T, F, F, F, F]]  # net2 & net3
    assert m2.tolist() == [[T, F, F, F, F, F]]  # net1 & net3
    assert m3.tolist() == [[F, F, T, F, F, F]]  # net1 & net2


def test_masks_follow_batch_shape_and_per_sample():
    generator = torch.Generator().manual_seed(0)
    ce1, ce2 = torch.rand(2, 4, 4, 3, generator=generator), torch.rand(2, 4, 4, 3, generator=generator)
    labels = torch.randint(0, 3, (2, 1, 4, 4, 3), generator=generator)
    for_net1, for_net2 = coteaching_masks(ce1, ce2, labels, [0.5, 0.5, 0.5], per_sample=True)
    assert for_net1.shape == ce1.shape and for_net2.dtype == torch.bool
    for b in range(2):
        single = voxel_small_loss_mask(ce2[b : b + 1], labels[b : b + 1], [0.5, 0.5, 0.5])
        torch.testing.assert_close(for_net1[b : b + 1], single)


def test_peer_selection_rejects_bad_arguments():
    with pytest.raises(ValueError):
        coteaching_masks(CE1, CE2[:, :5], LABELS, KEEP)
    with pytest.raises(ValueError):
        trinet_masks(CE1, CE2, CE3, LABELS, KEEP, rule="vote")
    with pytest.raises(ValueError):
        voxel_small_loss_mask(CE1, LABELS[..., :5], KEEP)
