from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from custom.networks.dar import (
    DifferentiatedAffinityRectifier,
    differentiated_affinity_rectify,
    effective_token_grid,
    pool_to_tokens,
    rectify_token_logits,
    row_normalise,
    token_affinity,
    token_class_labels,
)

FLOOR = 1e-10


def _line(values: list[list[float]]) -> torch.Tensor:
    """Per-voxel vectors along the last axis -> (1, K, 1, 1, len(values))."""
    return torch.tensor(values, dtype=torch.float64).T.reshape(1, len(values[0]), 1, 1, len(values))


# Three tokens, d = 2, C = 2, one voxel per token.
# f1 = (1, 0), f2 = (0, 1), f3 = (1, 0)  ->  A = [[1, 0, 1], [0, 1, 0], [1, 0, 1]] (0 clamped to 1e-10)
# A+ = [[.5, 0, .5], [0, 1, 0], [.5, 0, .5]],  A- = row_norm(1 - A) = [[0, 1, 0], [.5, 0, .5], [0, 1, 0]]
# Q = [(1, 0), (0, 2), (3, 0)]
# A+ Q = [(2, 0), (0, 2), (2, 0)],  A- Q = [(0, 2), (2, 0), (0, 2)]
# P = Q + 0.5 (A+ Q - A- Q) = [(2, -1), (-1, 3), (4, -1)]
THREE_FEATURES = [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]
THREE_LOGITS = [[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]]
THREE_AFFINITY = [[1.0, FLOOR, 1.0], [FLOOR, 1.0, FLOOR], [1.0, FLOOR, 1.0]]
THREE_RECTIFIED = [[2.0, -1.0], [-1.0, 3.0], [4.0, -1.0]]


def test_three_token_hand_case():
    rectified, affinity = differentiated_affinity_rectify(_line(THREE_FEATURES), _line(THREE_LOGITS), [1, 1, 3])
    assert_close(affinity, torch.tensor([THREE_AFFINITY], dtype=torch.float64))
    assert_close(rectified, _line(THREE_RECTIFIED), atol=1e-8, rtol=0)


def test_token_functions_hand_case():
    token_features = torch.tensor([THREE_FEATURES])
    affinity = token_affinity(token_features)
    assert_close(affinity, torch.tensor([THREE_AFFINITY]))
    assert_close(rectify_token_logits(torch.tensor([THREE_LOGITS]), affinity), torch.tensor([THREE_RECTIFIED]))


def test_pooled_tokens_and_upsampled_correction():
    # six voxels, two per token; the pooled features / logits are the three-token case above
    features = _line([THREE_FEATURES[k // 2] for k in range(6)])
    logits = _line([[0.5, 0.0], [1.5, 0.0], [0.0, 1.0], [0.0, 3.0], [3.0, 0.0], [3.0, 0.0]])
    rectified, affinity = differentiated_affinity_rectify(features, logits, [1, 1, 3])
    assert affinity.shape == (1, 3, 3)
    # token corrections c = P_tok - Q_tok: (1, -1), (-1, 1), (1, -1); linear 3 -> 6 up-sampling with
    # align_corners=False samples the token axis at j/2 - 0.25 (clamped): c1, .75c1+.25c2, .25c1+.75c2,
    # .75c2+.25c3, .25c2+.75c3, c3
    class0 = torch.tensor([1.0, 0.5, -0.5, -0.5, 0.5, 1.0], dtype=torch.float64)
    expected = logits + torch.stack([class0, -class0]).reshape(1, 2, 1, 1, 6)
    assert_close(rectified, expected, atol=1e-8, rtol=0)


def test_relu_before_cosine_and_dead_tokens():
    # (-1, 2) -> (0, 2) is parallel to (0, 1); (-1, -1) -> (0, 0) has the floor affinity with everyone
    affinity = token_affinity(torch.tensor([[[-1.0, 2.0], [0.0, 1.0], [-1.0, -1.0]]]))
    expected = torch.tensor([[[1.0, 1.0, FLOOR], [1.0, 1.0, FLOOR], [FLOOR, FLOOR, FLOOR]]])
    assert_close(affinity, expected)


def test_uniform_affinity_adds_half_the_mean():
    # all features equal: A = 1, A+ = 1/N, 1 - A = 0 so A- = 0 -> P = Q + 0.5 mean_j Q_j
    logits = torch.tensor([[[1.0, 0.0], [3.0, 2.0]]])
    rectified = rectify_token_logits(logits, torch.ones(1, 2, 2))
    assert_close(rectified, logits + 0.5 * torch.tensor([[[2.0, 1.0]]]))


def test_row_normalise_keeps_zero_rows():
    out = row_normalise(torch.tensor([[1.0, 3.0], [0.0, 0.0]]))
    assert_close(out, torch.tensor([[0.25, 0.75], [0.0, 0.0]]))


def test_affinity_properties_random():
    torch.manual_seed(0)
    affinity = token_affinity(torch.randn(2, 10, 4))
    assert affinity.shape == (2, 10, 10)
    assert_close(affinity, affinity.transpose(1, 2))
    assert float(affinity.min()) >= FLOOR and float(affinity.max()) <= 1.0
    # a token with a live feature has affinity 1 with itself (unless its ReLU'd vector is zero)
    live = (torch.randn(2, 10, 4).abs() + 0.1)
    assert_close(torch.diagonal(token_affinity(live), dim1=1, dim2=2), torch.ones(2, 10))


def test_effective_token_grid_clips_to_the_map():
    assert effective_token_grid([20, 8, 3], [16, 16, 16]) == [16, 8, 3]
    with pytest.raises(ValueError):
        effective_token_grid([8, 8], [4, 4, 4])
    with pytest.raises(ValueError):
        effective_token_grid([8, 8, 8], [4, 0, 4])


def test_memory_is_tokens_squared_not_voxels_squared():
    # 1280 voxels per image: a 4^3 grid gives a 64 x 64 affinity, a 16^3 grid clips to 16 x 8 x 8 tokens
    features = torch.randn(2, 3, 20, 8, 8)
    logits = torch.randn(2, 2, 20, 8, 8)
    rectified, affinity = differentiated_affinity_rectify(features, logits, [4, 4, 4])
    assert affinity.shape == (2, 64, 64)
    assert rectified.shape == logits.shape
    _, affinity_clipped = differentiated_affinity_rectify(features, logits, [16, 16, 16])
    assert affinity_clipped.shape == (2, 16 * 8 * 8, 16 * 8 * 8)


def test_pool_to_tokens_order_and_values():
    x = torch.arange(8.0).reshape(1, 1, 2, 2, 2)
    tokens = pool_to_tokens(x, [2, 1, 1])
    assert_close(tokens, torch.tensor([[[1.5], [5.5]]]))  # row-major: first axis slowest
    with pytest.raises(ValueError):
        pool_to_tokens(torch.zeros(1, 1, 2, 2), [1, 1, 1])


def test_gradients_reach_features_and_logits():
    features = torch.randn(1, 3, 4, 4, 4, requires_grad=True)
    logits = torch.randn(1, 2, 4, 4, 4, requires_grad=True)
    rectified, affinity = differentiated_affinity_rectify(features, logits, [2, 2, 2])
    (rectified.square().sum() + affinity.sum()).backward()
    assert float(features.grad.abs().sum()) > 0
    assert float(logits.grad.abs().sum()) > 0


def test_dtype_follows_inputs():
    rectified, affinity = differentiated_affinity_rectify(
        torch.randn(1, 2, 4, 4, 4, dtype=torch.float64), torch.randn(1, 2, 4, 4, 4, dtype=torch.float64), [2, 2, 2]
    )
    assert rectified.dtype == torch.float64 and affinity.dtype == torch.float64


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        differentiated_affinity_rectify(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4), [2, 2, 2])
    with pytest.raises(ValueError):
        differentiated_affinity_rectify(torch.zeros(1, 2, 4, 4, 4), torch.zeros(1, 2, 4, 4, 2), [2, 2, 2])
    with pytest.raises(ValueError):
        rectify_token_logits(torch.zeros(1, 3, 2), torch.zeros(1, 2, 2))
    with pytest.raises(ValueError):
        token_affinity(torch.zeros(3, 2))
    with pytest.raises(ValueError):
        DifferentiatedAffinityRectifier((4, 4))


def test_token_class_labels_majority_with_ties_to_lowest():
    # tokens of two voxels: (0, 0) -> 0, (1, 1) -> 1, (2, 1) -> tie -> 1
    labels = torch.tensor([0, 0, 1, 1, 2, 1]).reshape(1, 1, 1, 1, 6)
    assert token_class_labels(labels, 3, [1, 1, 3]).tolist() == [[0, 1, 1]]
    # channel-less and float labels give the same tokens
    assert token_class_labels(labels[:, 0].float(), 3, [1, 1, 3]).tolist() == [[0, 1, 1]]
    with pytest.raises(ValueError):
        token_class_labels(torch.zeros(1, 2, 1, 1, 6), 3, [1, 1, 3])
    with pytest.raises(ValueError):
        token_class_labels(labels, 1, [1, 1, 3])


def test_torchscript_matches_eager():
    torch.manual_seed(1)
    features, logits = torch.randn(2, 3, 5, 6, 7), torch.randn(2, 2, 5, 6, 7)
    scripted = torch.jit.script(DifferentiatedAffinityRectifier((2, 3, 4)))
    rectified, affinity = scripted(features, logits)
    expected_rectified, expected_affinity = differentiated_affinity_rectify(features, logits, [2, 3, 4])
    assert_close(rectified, expected_rectified)
    assert_close(affinity, expected_affinity)
