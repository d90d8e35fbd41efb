from __future__ import annotations

import pytest
import torch
from torch import nn

from custom.networks.ema import ema_alpha, ema_update, make_teacher


@pytest.mark.parametrize(
    "step, decay, expected",
    [(0, 0.99, 0.0), (1, 0.99, 0.5), (3, 0.99, 0.75), (9, 0.99, 0.9), (99, 0.99, 0.99), (5000, 0.99, 0.99),
     (1, 0.3, 0.3)],
)
def test_ema_alpha_warm_up(step, decay, expected):
    assert ema_alpha(step, decay) == pytest.approx(expected)


def test_ema_alpha_errors():
    with pytest.raises(ValueError):
        ema_alpha(-1)
    with pytest.raises(ValueError):
        ema_alpha(0, 1.5)


def _scalar_model(value: float) -> nn.Module:
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(value)
    return model


def test_ema_update_values_over_steps():
    student = _scalar_model(1.0)
    teacher = make_teacher(_scalar_model(0.0))
    # step 0: alpha = 0 -> exact copy of the student
    assert ema_update(teacher, student, step=0) == 0.0
    assert teacher.weight.item() == pytest.approx(1.0)
    # step 1: alpha = 0.5 -> 0.5 * 1 + 0.5 * 3 = 2
    with torch.no_grad():
        student.weight.fill_(3.0)
    assert ema_update(teacher, student, step=1) == pytest.approx(0.5)
    assert teacher.weight.item() == pytest.approx(2.0)
    # step 2: alpha = 2/3 -> 2/3 * 2 + 1/3 * 5 = 3
    with torch.no_grad():
        student.weight.fill_(5.0)
    ema_update(teacher, student, step=2)
    assert teacher.weight.item() == pytest.approx(3.0)
    # saturated: alpha = decay
    ema_update(teacher, student, step=1000, decay=0.9)
    assert teacher.weight.item() == pytest.approx(0.9 * 3.0 + 0.1 * 5.0)
    assert student.weight.item() == 5.0  # the student is never modified


def _bn_model() -> nn.Module:
    return nn.Sequential(nn.Conv3d(1, 2, 1), nn.BatchNorm3d(2))


@pytest.mark.parametrize("mode", ["ema", "copy", "none"])
def test_ema_update_buffers(mode):
    student = _bn_model()
    teacher = make_teacher(student)
    bn_s, bn_t = student[1], teacher[1]
    with torch.no_grad():
        bn_s.running_mean.fill_(4.0)
        bn_t.running_mean.fill_(2.0)
        bn_s.num_batches_tracked.fill_(7)
    ema_update(teacher, student, step=1, buffers=mode)  # alpha 0.5
    expected = {"ema": 3.0, "copy": 4.0, "none": 2.0}[mode]
    torch.testing.assert_close(bn_t.running_mean, torch.full((2,), expected))
    assert bn_t.num_batches_tracked.item() == (0 if mode == "none" else 7)  # integer buffers are copied


def test_make_teacher_is_a_detached_copy():
    student = _bn_model()
    teacher = make_teacher(student)
    for p_s, p_t in zip(student.parameters(), teacher.parameters()):
        torch.testing.assert_close(p_s, p_t)
        assert p_s.requires_grad and not p_t.requires_grad
        assert p_s.data_ptr() != p_t.data_ptr()


def test_ema_update_keeps_teacher_out_of_autograd():
    student = _bn_model()
    teacher = make_teacher(student)
    student(torch.randn(2, 1, 2, 2, 2)).sum().backward()
    ema_update(teacher, student, step=5)
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())


def test_ema_update_errors():
    with pytest.raises(ValueError):
        ema_update(_scalar_model(0.0), nn.Linear(1, 1), step=0)  # 1 vs 2 parameters
    with pytest.raises(ValueError):
        ema_update(_scalar_model(0.0), _scalar_model(1.0), step=0, buffers="average")
