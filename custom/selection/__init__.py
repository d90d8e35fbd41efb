"""Sample selection for learning from noisy labels: SP-guided superpixel selection (Eqs. 1-3, 5) and the
voxel-level Co-teaching / JoCoR / Tri-network baselines."""

from __future__ import annotations

from custom.selection.peer_selection import (
    TRINET_RULES,
    coteaching_masks,
    jocor_mask,
    trinet_masks,
    voxel_small_loss_mask,
)
from custom.selection.small_loss import (
    LossGapTracker,
    as_class_ratios,
    budgeted_prefix_mask,
    class_groups,
    estimate_keep_ratio,
    forget_rate_schedule,
    loss_gap,
    small_loss_mask,
)
from custom.selection.superpixel import (
    POOLING_MODES,
    Pieces,
    PieceSelection,
    count_superpixels,
    piece_ids,
    piece_joint_scores,
    pieces_to_voxels,
    pooled_piece_probabilities,
    resolve_num_superpixels,
    superpixel_joint_score,
    superpixel_mean,
    superpixel_selection_mask,
    superpixel_sizes,
    superpixel_soft_labels,
    voxel_pieces,
)

__all__ = [
    "TRINET_RULES",
    "coteaching_masks",
    "jocor_mask",
    "trinet_masks",
    "voxel_small_loss_mask",
    "LossGapTracker",
    "as_class_ratios",
    "budgeted_prefix_mask",
    "class_groups",
    "estimate_keep_ratio",
    "forget_rate_schedule",
    "loss_gap",
    "small_loss_mask",
    "POOLING_MODES",
    "Pieces",
    "PieceSelection",
    "count_superpixels",
    "piece_ids",
    "piece_joint_scores",
    "pieces_to_voxels",
    "pooled_piece_probabilities",
    "resolve_num_superpixels",
    "superpixel_joint_score",
    "superpixel_mean",
    "superpixel_selection_mask",
    "superpixel_sizes",
    "superpixel_soft_labels",
    "voxel_pieces",
]
