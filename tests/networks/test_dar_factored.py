"""The factored DAR rectification (O(N d C)) against the literal N x N reference of custom.networks.dar."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from custom.networks.dar import (
    rectify_token_logits,
    rectify_token_logits_factored,
    token_affinity,
    unit_token_features,
)


def _reference(token_logits: torch.Tensor, token_features: torch.Tensor) -> torch.Tensor:
    return rectify_token_logits(token_logits, token_affinity(token_features))


def test_hand_computed_three_tokens():
    # shape: (1, 3, 2) features, unit vectors (1, 0), (0, 1), (1, 0) -> cos = [[1,0,1],[0,1,0],[1,0,1]]
    # token 0: A+ Q = (Q0 + Q2) / 2 = (2, 0), A- Q = Q1 = (0, 2) -> P0 = (1, 0) + 0.5 (2, -2) = (2, -1)
    # token 1: A+ Q = Q1 = (0, 2), A- Q = (Q0 + Q2) / 2 = (2, 0) -> P1 = (-1, 3); token 2 as 0 -> (4, -1)
    features = torch.tensor([[[2.0, 0.0], [0.0, 3.0], [1.0, -1.0]]], dtype=torch.float64)
    logits = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]]], dtype=torch.float64)
    expected = torch.tensor([[[2.0, -1.0], [-1.0, 3.0], [4.0, -1.0]]], dtype=torch.float64)
    assert_close(rectify_token_logits_factored(logits, unit_token_features(features)), expected)
    assert_close(_reference(logits, features), expected, atol=1e-9, rtol=0)


@pytest.mark.parametrize("num_classes", [2, 4])
def test_matches_reference_with_dead_tokens(num_classes):
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 40, 6, dtype=torch.float64, generator=generator)
    features[0, :5] = -1.0  # dead tokens: all-zero after ReLU
    features[1, 7] = -0.5
    logits = torch.randn(2, 40, num_classes, dtype=torch.float64, generator=generator)
    factored = rectify_token_logits_factored(logits, unit_token_features(features))
    # the reference floors the dead rows/columns at 1e-10 instead of 0: equal to ~1e-9
    assert_close(factored, _reference(logits, features), atol=1e-8, rtol=0)
    assert_close(factored[0, :5], logits[0, :5])  # a dead token is left unchanged


def test_gradients_match_reference():
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(1, 30, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    logits = torch.randn(1, 30, 3, dtype=torch.float64, generator=generator, requires_grad=True)
    weight = torch.randn(1, 30, 3, dtype=torch.float64, generator=generator)
    grads = []
    factored = rectify_token_logits_factored(logits, unit_token_features(features))
    for rectified in (factored, _reference(logits, features)):
        grads.append(torch.autograd.grad((rectified * weight).sum(), [features, logits]))
    assert_close(grads[0][0], grads[1][0], atol=1e-8, rtol=1e-6)
    assert_close(grads[0][1], grads[1][1], atol=1e-8, rtol=1e-6)


def test_all_parallel_tokens_have_no_inter_class_term():
    # A = 1 everywhere: A+ = 1/N, A- = 0 (zero row) -> P = Q + 0.5 mean_j Q_j, as the reference
    logits = torch.tensor([[[1.0, 0.0], [3.0, 2.0]]])
    unit = unit_token_features(torch.tensor([[[1.0, 2.0], [2.0, 4.0]]]))
    expected = logits + 0.5 * torch.tensor([[[2.0, 1.0]]])
    assert_close(rectify_token_logits_factored(logits, unit), expected)
    assert_close(rectify_token_logits(logits, torch.ones(1, 2, 2)), expected)


def test_half_precision_input_is_computed_in_float32():
    generator = torch.Generator().manual_seed(2)
    features = torch.randn(1, 64, 8, generator=generator)
    logits = torch.randn(1, 64, 2, generator=generator)
    out = rectify_token_logits_factored(logits.half(), unit_token_features(features).half())
    assert out.dtype == torch.float16
    assert_close(out.float(), _reference(logits, features), atol=2e-2, rtol=0)


def test_bad_shapes_raise():
    with pytest.raises(ValueError):
        rectify_token_logits_factored(torch.zeros(1, 3, 2), torch.zeros(1, 4, 5))
    with pytest.raises(ValueError):
        rectify_token_logits_factored(torch.zeros(3, 2), torch.zeros(1, 3, 5))
    with pytest.raises(ValueError):
        unit_token_features(torch.zeros(3, 2))
