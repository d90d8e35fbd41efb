from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from custom.refinement.teacher_fusion import (
    DEFAULT_FUSION_TEMPERATURE,
    alc_refine,
    fuse_predictions,
    fusion_weights,
    gate_refined_labels,
    kl_to_mean,
    normalized_entropy,
    perturbed_teacher_predictions,
    refined_labels,
    sample_uncertainty,
    select_lowest_uncertainty,
    teacher_sampling_mode,
)


def _teacher(num_classes: int, dropout: bool = True) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv3d(1, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU()]
    if dropout:
        layers.append(nn.Dropout3d(0.5))
    layers.append(nn.Conv3d(4, num_classes, 1))
    return nn.Sequential(*layers)


# ---------------------------------------------------------------- perturbed predictions


@pytest.mark.parametrize("num_classes", [2, 3])
def test_perturbed_predictions_shape_and_simplex(num_classes):
    teacher = _teacher(num_classes)
    x = torch.randn(2, 1, 8, 8, 8)
    probs = perturbed_teacher_predictions(teacher, x, num_samples=3)
    assert probs.shape == (3, 2, num_classes, 8, 8, 8)
    torch.testing.assert_close(probs.sum(2), torch.ones(3, 2, 8, 8, 8))
    assert not probs.requires_grad


def test_chunked_equals_unchunked_with_same_generator():
    # dropout masks come from the global RNG and batch statistics depend on the chunk: compare a dropout-free
    # teacher whose BatchNorm uses running statistics
    teacher = _teacher(2, dropout=False)
    x = torch.randn(2, 1, 8, 8, 8)
    kwargs = {"num_samples": 5, "batch_norm": "running"}
    full = perturbed_teacher_predictions(teacher, x, generator=torch.Generator().manual_seed(7), **kwargs)
    for chunk in (1, 2, 5, 9):
        chunked = perturbed_teacher_predictions(
            teacher, x, mc_chunk=chunk, generator=torch.Generator().manual_seed(7), **kwargs
        )
        torch.testing.assert_close(chunked, full)
    other = perturbed_teacher_predictions(teacher, x, generator=torch.Generator().manual_seed(8), **kwargs)
    assert not torch.allclose(other, full)


def _stale_running_stats_teacher() -> nn.Module:
    teacher = _teacher(2, dropout=False)
    with torch.no_grad():  # running statistics far from any batch's statistics
        teacher[1].running_mean.fill_(5.0)
        teacher[1].running_var.fill_(0.01)
    return teacher


def test_batch_norm_batch_mode_uses_batch_statistics_and_leaves_buffers_alone():
    teacher = _stale_running_stats_teacher()
    buffers = {k: v.clone() for k, v in teacher.state_dict().items()}
    x = torch.randn(3, 1, 8, 8, 8)
    batch = perturbed_teacher_predictions(teacher, x, num_samples=1, noise_std=0.0, batch_norm="batch")[0]
    running = perturbed_teacher_predictions(teacher, x, num_samples=1, noise_std=0.0, batch_norm="running")[0]
    teacher.train()
    with torch.no_grad():
        expected = torch.softmax(teacher(x), dim=1)  # train mode: batch statistics (and a buffer update)
    torch.testing.assert_close(batch, expected)
    assert not torch.allclose(batch, running, atol=1e-3)
    teacher_after = _stale_running_stats_teacher()  # the same teacher before the train-mode call above
    perturbed_teacher_predictions(teacher_after, x, num_samples=2, batch_norm="batch")
    for key, value in teacher_after.state_dict().items():
        torch.testing.assert_close(value, buffers[key], msg=key)


@pytest.mark.parametrize("batch_norm", ["batch", "running"])
@pytest.mark.parametrize("dropout", [True, False])
def test_teacher_sampling_mode_sets_and_restores_modes(batch_norm, dropout):
    teacher = _teacher(2)
    teacher.eval()
    with teacher_sampling_mode(teacher, batch_norm=batch_norm, dropout=dropout):
        assert teacher[1].training == (batch_norm == "batch")
        assert teacher[1].track_running_stats == (batch_norm == "running")
        assert teacher[3].training == dropout
        assert not teacher[0].training
    assert not any(m.training for m in teacher.modules())
    assert teacher[1].track_running_stats


def test_teacher_sampling_mode_rejects_unknown_batch_norm():
    with pytest.raises(ValueError, match="batch_norm"):
        with teacher_sampling_mode(_teacher(2), batch_norm="frozen"):
            pass


def test_rows_are_t_major():
    """Row t * B + b of the repeated batch is sample b under perturbation t."""
    teacher = nn.Identity()  # "logits" = the perturbed input itself
    x = torch.stack([torch.zeros(1, 2, 2, 2), torch.full((1, 2, 2, 2), 10.0)])  # (2, 1, 2, 2, 2)
    x2 = torch.cat([x, -x], dim=1)  # 2 "classes"
    probs = perturbed_teacher_predictions(teacher, x2, num_samples=3, noise_std=0.0)
    # without noise every perturbation of sample b is softmax(x2[b])
    for t in range(3):
        torch.testing.assert_close(probs[t], torch.softmax(x2, 1))


def test_noise_is_clipped():
    teacher = nn.Identity()
    x = torch.zeros(1, 2, 64, 64, 1)
    # logits = noise in both channels: p0 = sigmoid(n0 - n1) with |n| <= clip
    probs = perturbed_teacher_predictions(teacher, x, num_samples=2, noise_std=10.0, noise_clip=0.2)
    bound = torch.sigmoid(torch.tensor(0.4))
    assert probs.max() <= bound + 1e-6 and probs.min() >= 1 - bound - 1e-6
    assert probs.max() > 0.59  # the clip is reached


def test_dropout_active_batchnorm_eval_and_modes_restored():
    teacher = _teacher(2)
    teacher.train()
    teacher[1].momentum = 1.0  # any train-mode BN forward would overwrite the running stats
    modes_before = [m.training for m in teacher.modules()]
    stats_before = teacher[1].running_mean.clone()
    x = torch.randn(1, 1, 8, 8, 8)
    probs = perturbed_teacher_predictions(teacher, x, num_samples=6, noise_std=0.0)
    # without input noise the samples differ only through dropout (4 channels: masks repeat with prob. 1/16)
    assert probs.std(dim=0).max() > 1e-3
    torch.testing.assert_close(teacher[1].running_mean, stats_before)  # sampling never updates BN buffers
    assert [m.training for m in teacher.modules()] == modes_before

    teacher.eval()
    probs = perturbed_teacher_predictions(teacher, x, num_samples=6, noise_std=0.0)
    assert probs.std(dim=0).max() > 1e-3  # dropout active even for an eval-mode teacher
    assert not any(m.training for m in teacher.modules())


def test_modes_restored_on_error():
    teacher = _teacher(2)
    teacher.train()
    with pytest.raises(RuntimeError):
        with teacher_sampling_mode(teacher, batch_norm="running"):
            assert not teacher[1].training and teacher[3].training
            raise RuntimeError("boom")
    assert all(m.training for m in teacher.modules())


def test_no_gradient_reaches_the_teacher():
    teacher = _teacher(2)
    x = torch.randn(1, 1, 8, 8, 8, requires_grad=True)
    probs = perturbed_teacher_predictions(teacher, x, num_samples=2)
    assert probs.grad_fn is None
    assert all(p.grad is None for p in teacher.parameters())


def test_seeded_runs_are_reproducible():
    teacher = _teacher(3)
    x = torch.randn(2, 1, 8, 8, 8)
    torch.manual_seed(123)
    a = perturbed_teacher_predictions(teacher, x, num_samples=3, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(123)
    b = perturbed_teacher_predictions(teacher, x, num_samples=3, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)


def test_perturbed_predictions_errors():
    teacher = _teacher(2)
    x = torch.randn(1, 1, 8, 8, 8)
    with pytest.raises(ValueError):
        perturbed_teacher_predictions(teacher, x, num_samples=0)
    with pytest.raises(ValueError):
        perturbed_teacher_predictions(teacher, x, noise_std=-1.0)
    with pytest.raises(ValueError):
        perturbed_teacher_predictions(teacher, x, mc_chunk=0)
    with pytest.raises(ValueError):
        perturbed_teacher_predictions(teacher, torch.randn(4, 8))

    class TupleNet(nn.Module):
        def forward(self, x):
            return (x, x)

    with pytest.raises(TypeError):
        perturbed_teacher_predictions(TupleNet(), x, num_samples=1)


# ---------------------------------------------------------------- divergence, weights, fusion


def _two_sample_probs() -> torch.Tensor:
    # shape: (T=2, B=1, C=2, 1); p_1 = (0.8, 0.2), p_2 = (0.4, 0.6), p_bar = (0.6, 0.4)
    return torch.tensor([[[[0.8], [0.2]]], [[[0.4], [0.6]]]], dtype=torch.float64)


def test_kl_to_mean_hand_value():
    d = kl_to_mean(_two_sample_probs())
    assert d.shape == (2, 1, 1)
    d1 = 0.8 * math.log(0.8 / 0.6) + 0.2 * math.log(0.2 / 0.4)
    d2 = 0.4 * math.log(0.4 / 0.6) + 0.6 * math.log(0.6 / 0.4)
    torch.testing.assert_close(d[:, 0, 0], torch.tensor([d1, d2], dtype=torch.float64))


def test_kl_handles_zero_probabilities():
    probs = torch.tensor([[[[1.0], [0.0]]], [[[0.0], [1.0]]]])
    d = kl_to_mean(probs)
    torch.testing.assert_close(d[:, 0, 0], torch.full((2,), math.log(2.0)))


def test_equal_outputs_fuse_to_the_plain_mean():
    probs = torch.softmax(torch.randn(1, 2, 3, 4, 4, 4), 2).expand(5, 2, 3, 4, 4, 4)
    d = kl_to_mean(probs)
    torch.testing.assert_close(d, torch.zeros(5, 2, 4, 4, 4))
    for mode in ("softmax", "inverse"):
        w = fusion_weights(d, mode=mode)
        torch.testing.assert_close(w, torch.full_like(w, 0.2))
        torch.testing.assert_close(fuse_predictions(probs, w), probs.mean(0))


def test_softmax_weights_favour_low_divergence():
    # D = (0, ln 3): softmax(-D) = (1, 1/3) / (4/3) = (0.75, 0.25)
    d = torch.tensor([[[0.0]], [[math.log(3.0)]]], dtype=torch.float64)
    w = fusion_weights(d, tau=1.0)
    torch.testing.assert_close(w[:, 0, 0], torch.tensor([0.75, 0.25], dtype=torch.float64))
    # a smaller temperature sharpens the weighting
    w_sharp = fusion_weights(d, tau=0.1)
    assert w_sharp[0, 0, 0] > 0.99
    assert DEFAULT_FUSION_TEMPERATURE == 1.0


def test_inverse_weights_hand_value():
    # D = (1, 3): 1/D = (1, 1/3) -> (0.75, 0.25)
    d = torch.tensor([[[1.0]], [[3.0]]], dtype=torch.float64)
    w = fusion_weights(d, mode="inverse", eps=1e-12)
    torch.testing.assert_close(w[:, 0, 0], torch.tensor([0.75, 0.25], dtype=torch.float64))


def test_fuse_predictions_hand_value():
    probs = _two_sample_probs()
    w = torch.tensor([[[0.75]], [[0.25]]], dtype=torch.float64)
    fused = fuse_predictions(probs, w)
    torch.testing.assert_close(fused[0, :, 0], torch.tensor([0.7, 0.3], dtype=torch.float64))


def test_weights_and_fusion_errors():
    d = torch.zeros(2, 1, 3)
    with pytest.raises(ValueError):
        fusion_weights(d, tau=0.0)
    with pytest.raises(ValueError):
        fusion_weights(d, mode="median")
    with pytest.raises(ValueError):
        fuse_predictions(torch.zeros(2, 1, 2, 3), torch.zeros(2, 1, 4))
    with pytest.raises(ValueError):
        kl_to_mean(torch.zeros(2, 2, 3))


# ---------------------------------------------------------------- refined labels


def test_refined_labels_argmax_and_keep_noisy_where_uncertain():
    # shape: (1, 2, 3): voxel 0 confident class 1, voxel 1 confident class 0, voxel 2 uncertain (0.5, 0.5)
    fused = torch.tensor([[[0.1, 0.9, 0.5], [0.9, 0.1, 0.5]]])
    noisy = torch.tensor([[[0, 1, 1]]])
    assert refined_labels(fused).tolist() == [[[1, 0, 0]]]
    kept = refined_labels(fused, noisy, keep_noisy_if_uncertain=True, uncertainty_threshold=0.9)
    assert kept.tolist() == [[[1, 0, 1]]]  # only the voxel with normalised entropy 1 keeps its noisy label
    assert kept.dtype == torch.long
    custom = refined_labels(
        fused, noisy, True, 0.5, voxel_uncertainty=torch.tensor([[[1.0, 0.0, 0.0]]])
    )
    assert custom.tolist() == [[[0, 0, 0]]]
    with pytest.raises(ValueError):
        refined_labels(fused, keep_noisy_if_uncertain=True, uncertainty_threshold=0.5)


def test_normalized_entropy_range():
    probs = torch.tensor([[[1.0, 1 / 3], [0.0, 1 / 3], [0.0, 1 / 3]]])  # (1, 3, 2)
    torch.testing.assert_close(normalized_entropy(probs), torch.tensor([[[0.0, 1.0]]]))


# ---------------------------------------------------------------- sample uncertainty and selection


def test_sample_uncertainty_modes_hand_values():
    # shape: (T=2, B=2, 2 voxels)
    d = torch.tensor([[[0.2, 0.4], [1.0, 0.0]], [[0.6, 0.0], [0.0, 2.0]]])
    w = torch.tensor([[[0.5, 0.25], [1.0, 0.5]], [[0.5, 0.75], [0.0, 0.5]]])
    # weighted: sample 0 -> mean(0.5*0.2 + 0.5*0.6, 0.25*0.4 + 0) = mean(0.4, 0.1) = 0.25
    #           sample 1 -> mean(1.0, 0.5 * 2.0) = 1.0
    torch.testing.assert_close(sample_uncertainty(d, w), torch.tensor([0.25, 1.0]))
    # mean_kl: sample 0 -> mean(0.4, 0.2) = 0.3; sample 1 -> mean(0.5, 1.0) = 0.75
    torch.testing.assert_close(sample_uncertainty(d, None, mode="mean_kl"), torch.tensor([0.3, 0.75]))
    probs = torch.tensor([[[[0.5, 1.0], [0.5, 0.0]], [[1.0, 1.0], [0.0, 0.0]]]]).expand(2, 2, 2, 2)
    torch.testing.assert_close(sample_uncertainty(d, None, probs, mode="entropy"), torch.tensor([0.5, 0.0]))
    with pytest.raises(ValueError):
        sample_uncertainty(d, None, mode="weighted_kl")
    with pytest.raises(ValueError):
        sample_uncertainty(d, w, mode="entropy")
    with pytest.raises(ValueError):
        sample_uncertainty(d, w, mode="variance")


def test_selection_keeps_exactly_k_lowest():
    u = torch.tensor([0.3, 0.1, 0.2, 0.1, 0.5])
    assert select_lowest_uncertainty(u, ratio=0.5).tolist() == [False, True, True, True, False]  # ceil(2.5) = 3
    assert select_lowest_uncertainty(u, ratio=0.2).tolist() == [False, True, False, False, False]  # tie -> index 1
    assert select_lowest_uncertainty(u, k=2).tolist() == [False, True, False, True, False]
    assert select_lowest_uncertainty(u, ratio=0.0).sum() == 0
    assert select_lowest_uncertainty(u, ratio=1.0).all()


def test_selection_ratio_rounding_and_nan():
    u = torch.arange(10, dtype=torch.float32).flip(0)
    assert select_lowest_uncertainty(u, ratio=0.3).sum() == 3  # 0.3 * 10 is 3.0000000000000004 in floating point
    u_nan = torch.tensor([float("nan"), 0.5, 0.7])
    assert select_lowest_uncertainty(u_nan, k=2).tolist() == [False, True, True]


@pytest.mark.parametrize("bad", [dict(ratio=1.5), dict(ratio=-0.1), dict(k=6), dict(k=-1)])
def test_selection_errors(bad):
    with pytest.raises(ValueError):
        select_lowest_uncertainty(torch.zeros(5), **bad)


def test_selection_needs_a_vector():
    with pytest.raises(ValueError):
        select_lowest_uncertainty(torch.zeros(2, 2))


# ---------------------------------------------------------------- convenience wrapper


@pytest.mark.parametrize("num_classes", [2, 3])
def test_alc_refine_outputs(num_classes):
    teacher = _teacher(num_classes)
    x = torch.randn(3, 1, 8, 8, 8)
    noisy = torch.randint(0, num_classes, (3, 1, 8, 8, 8))
    out = alc_refine(teacher, x, noisy, num_samples=4, mc_chunk=2, selection_ratio=0.5)
    labels, selected, uncertainty, fused, mean_probs = out
    assert labels.shape == (3, 1, 8, 8, 8) and labels.dtype == torch.long
    assert selected.dtype == torch.bool and selected.sum() == 2  # ceil(0.5 * 3)
    assert uncertainty.shape == (3,) and (uncertainty >= 0).all()
    assert fused.shape == mean_probs.shape == (3, num_classes, 8, 8, 8)
    torch.testing.assert_close(fused.sum(1), torch.ones(3, 8, 8, 8))
    torch.testing.assert_close(labels, fused.argmax(1, keepdim=True))
    # the selected samples are those with the lowest uncertainty
    assert uncertainty[selected].max() <= uncertainty[~selected].min()


# ---------------------------------------------------------------- refinement agreement gate


def test_gate_keeps_refinements_that_agree_and_falls_back_otherwise():
    noisy = torch.zeros(2, 1, 4, 4, 4, dtype=torch.long)
    noisy[:, :, :2] = 1  # 32 foreground voxels each
    refined = noisy.clone()
    refined[0, :, 1] = 0  # sample 0: keeps 16 of 32 -> Dice 2*16/48 = 0.667
    refined[1, :, :2] = 0  # sample 1: the teacher erased everything -> Dice 0
    labels, accepted = gate_refined_labels(refined, noisy, num_classes=2, min_agreement=0.6)
    assert accepted.tolist() == [True, False]
    assert torch.equal(labels[0], refined[0]) and torch.equal(labels[1], noisy[1])
    labels, accepted = gate_refined_labels(refined, noisy, num_classes=2, min_agreement=0.0)
    assert accepted.all() and torch.equal(labels, refined)
    with pytest.raises(ValueError, match="min_agreement"):
        gate_refined_labels(refined, noisy, num_classes=2, min_agreement=1.5)
    with pytest.raises(ValueError, match="label maps"):
        gate_refined_labels(refined, noisy[:1], num_classes=2, min_agreement=0.5)
