"""MeanTeacherTrainer (ALC and its ablations, methods.md section 1) on a tiny PaperVNet and in-memory batches."""

from __future__ import annotations

import math

import pytest
import torch
from ignite.engine import Events
from monai.engines.utils import IterationEvents
from torch.testing import assert_close

from custom.data.two_stream import TwoStreamLoader
from custom.engines import MeanTeacherTrainer
from custom.losses.segmentation_losses import ce_dice_loss
from custom.networks import PaperVNet

SIDE = 16  # PaperVNet needs sides divisible by 16


def _network(num_classes: int, dropout: float = 0.5) -> PaperVNet:
    return PaperVNet(spatial_dims=3, in_channels=1, out_channels=num_classes, base_filters=2, dropout=dropout)


def _batches(num_batches: int, batch_hq: int, batch_lq: int, num_classes: int, seed: int = 1) -> list[dict]:
    """Two-stream dict batches ``[HQ..., LQ...]``; labels are intensity bands, LQ labels are shifted bands."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(num_batches):
        # shape: (batch_hq + batch_lq, 1, 16, 16, 16)
        image = torch.randn(batch_hq + batch_lq, 1, SIDE, SIDE, SIDE, generator=generator)
        edges = torch.linspace(-0.6, 0.6, num_classes - 1)
        clean = torch.bucketize(image, edges)
        noisy = clean.clone()
        noisy[batch_hq:] = torch.bucketize(image[batch_hq:], edges + 0.3)  # LQ: systematically wrong boundaries
        batches.append({"image": image, "label": noisy, "clean_label": clean})
    return batches


def _trainer(num_classes: int, batches, batch_hq: int, max_epochs: int = 1, dropout: float = 0.5,
             **kwargs) -> MeanTeacherTrainer:
    torch.manual_seed(0)
    student = _network(num_classes, dropout)
    teacher = _network(num_classes, dropout)
    arguments = dict(
        device=torch.device("cpu"),
        max_epochs=max_epochs,
        epoch_length=len(batches),
        train_data_loader=batches,
        network=student,
        teacher=teacher,
        optimizer=torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9),
        loss_function=None,
        num_classes=num_classes,
        batch_hq=batch_hq,
        num_samples=3,
        rampup_iterations=4,
        decollate=False,
        # the loss-composition checks below are written for per-group means (the configs use "batch")
        lq_loss_reduction="group",
        lambda_noisy=0.5,
    )
    arguments.update(kwargs)
    return MeanTeacherTrainer(**arguments)


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _record_outputs(trainer: MeanTeacherTrainer) -> list[dict]:
    outputs: list[dict] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.append(dict(e.state.output)))
    return outputs


# ---------------------------------------------------------------- student / teacher


@pytest.mark.parametrize("num_classes", [2, 3])
def test_gradients_reach_only_the_student_and_teacher_follows_the_ema(num_classes):
    batches = _batches(2, batch_hq=1, batch_lq=3, num_classes=num_classes)
    trainer = _trainer(num_classes, batches, batch_hq=1)
    teacher, student = trainer.teacher, trainer.network
    assert all(not p.requires_grad for p in teacher.parameters())
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in teacher.parameters()}
    record: dict[str, list] = {"start": [], "grads": [], "after_optimiser": [], "student": [], "end": []}
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: record["start"].append(_snapshot(teacher)))

    def after_backward(engine):
        record["grads"].append(
            ([p.grad for p in teacher.parameters()], [p.grad is not None for p in student.parameters()])
        )

    def after_optimiser(engine):  # the optimiser has stepped, the EMA has not run yet
        record["after_optimiser"].append(_snapshot(teacher))
        record["student"].append(_snapshot(student))

    trainer.add_event_handler(IterationEvents.BACKWARD_COMPLETED, after_backward)
    trainer.add_event_handler(IterationEvents.MODEL_COMPLETED, after_optimiser)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: record["end"].append(_snapshot(teacher)))
    trainer.run()

    for teacher_grads, student_has_grad in record["grads"]:
        assert all(g is None for g in teacher_grads)
        assert all(student_has_grad)
    for step in range(2):
        start, after_optimiser, student_now, end = (
            record[k][step] for k in ("start", "after_optimiser", "student", "end")
        )
        for name in start:  # the optimiser does not touch the teacher
            assert torch.equal(after_optimiser[name], start[name]), name
        alpha = min(1.0 - 1.0 / (step + 1.0), 0.99)  # step 0: alpha 0 (copy); step 1: alpha 0.5
        for name, value in end.items():
            if value.is_floating_point():
                assert_close(value, alpha * start[name] + (1.0 - alpha) * student_now[name], msg=name)
    # first update = exact copy of the student
    for name, value in record["end"][0].items():
        assert torch.equal(value, record["student"][0][name]), name


def test_teacher_starts_as_a_copy_of_the_student():
    trainer = _trainer(2, _batches(1, 1, 1, 2), batch_hq=1)
    for (name, t), s in zip(trainer.teacher.state_dict().items(), trainer.network.state_dict().values()):
        assert torch.equal(t, s), name


# ---------------------------------------------------------------- ramp


@pytest.mark.parametrize(
    "iteration, expected",
    [(0, 0.1 * math.exp(-5.0)), (2, 0.1 * math.exp(-5.0 * 0.25)), (4, 0.1), (9, 0.1)],
)
def test_ramp_weight_at_iterations(iteration, expected):
    trainer = _trainer(2, _batches(1, 1, 1, 2), batch_hq=1, rampup_iterations=4, consistency_weight=0.1)
    assert trainer.ramp_weight(iteration) == pytest.approx(expected, rel=1e-12)


def test_default_ramp_covers_three_quarters_of_training():
    batches = _batches(4, 1, 1, 2)
    trainer = _trainer(2, batches, batch_hq=1, max_epochs=5, rampup_iterations=None)
    assert trainer.rampup_iterations == 15  # 0.75 * 5 epochs * 4 iterations


def test_ramp_weight_reported_per_iteration():
    batches = _batches(3, 1, 2, 2)
    trainer = _trainer(2, batches, batch_hq=1, rampup_iterations=3, consistency_weight=0.2)
    outputs = _record_outputs(trainer)
    trainer.run()
    # ignite's iteration is 1-based inside a step
    expected = [0.2 * math.exp(-5.0 * (1 - t / 3) ** 2) for t in (1, 2, 3)]
    assert [o["ramp_weight"] for o in outputs] == pytest.approx(expected, rel=1e-12)


# ---------------------------------------------------------------- selection and ablation targets


@pytest.mark.parametrize("batch_lq, ratio, k", [(5, 0.5, 3), (5, 0.3, 2), (4, 0.5, 2), (3, 1.0, 3), (2, 0.1, 1)])
def test_selection_keeps_exactly_k_lowest_uncertainty_samples(batch_lq, ratio, k):
    trainer = _trainer(2, _batches(1, 1, batch_lq, 2), batch_hq=1, selection_ratio=ratio)
    outputs = _record_outputs(trainer)
    trainer.run()
    selected, uncertainty = outputs[0]["selected"], outputs[0]["uncertainty"]
    assert selected.shape == (batch_lq,) and selected.dtype == torch.bool
    assert int(selected.sum()) == k
    if k < batch_lq:
        assert uncertainty[selected].max() <= uncertainty[~selected].min()


def _check_loss_composition(trainer: MeanTeacherTrainer, output: dict) -> None:
    w = output["ramp_weight"]
    expected = output["loss_hq"] + w * (
        output["loss_con"] + trainer.lambda_sel * output["loss_sel"] + trainer.lambda_noisy * output["loss_noisy"]
    )
    assert_close(output["loss"].detach(), expected)


def _lq_per_sample(output: dict, batch_hq: int, target: torch.Tensor) -> torch.Tensor:
    return ce_dice_loss(output["pred"][batch_hq:].detach(), target, reduction="none")


@pytest.mark.parametrize("num_classes", [2, 3])
def test_mean_teacher_ablation_trains_all_lq_on_noisy_labels(num_classes):
    batches = _batches(1, 1, 3, num_classes)
    trainer = _trainer(num_classes, batches, batch_hq=1, refine_labels=False, select_samples=False)
    outputs = _record_outputs(trainer)
    trainer.run()
    out = outputs[0]
    noisy = batches[0]["label"][1:]
    assert torch.equal(out["refined_label"], noisy)
    assert not out["selected"].any()
    assert float(out["loss_sel"]) == 0.0
    assert_close(out["loss_noisy"], _lq_per_sample(out, 1, noisy).mean())
    _check_loss_composition(trainer, out)


@pytest.mark.parametrize("num_classes", [2, 3])
def test_alc_without_selection_trains_all_lq_on_refined_labels(num_classes):
    batches = _batches(1, 1, 3, num_classes)
    trainer = _trainer(num_classes, batches, batch_hq=1, refine_labels=True, select_samples=False)
    outputs = _record_outputs(trainer)
    trainer.run()
    out = outputs[0]
    assert out["selected"].all()
    assert float(out["loss_noisy"]) == 0.0
    assert_close(out["loss_sel"], _lq_per_sample(out, 1, out["refined_label"]).mean())
    _check_loss_composition(trainer, out)


@pytest.mark.parametrize("num_classes", [2, 3])
def test_alc_without_refinement_keeps_noisy_labels_for_selected_samples(num_classes):
    batches = _batches(1, 1, 4, num_classes)
    trainer = _trainer(num_classes, batches, batch_hq=1, refine_labels=False, select_samples=True)
    outputs = _record_outputs(trainer)
    trainer.run()
    out = outputs[0]
    noisy = batches[0]["label"][1:]
    assert torch.equal(out["refined_label"], noisy)
    selected = out["selected"]
    assert int(selected.sum()) == 2
    per_sample = _lq_per_sample(out, 1, noisy)
    assert_close(out["loss_sel"], per_sample[selected].mean())
    assert_close(out["loss_noisy"], per_sample[~selected].mean())
    _check_loss_composition(trainer, out)


def _record_teacher_argmax(trainer, batch_hq: int = 1) -> list[torch.Tensor]:
    """Record, at every iteration start, the eval-mode teacher's argmax on the LQ part of the batch."""
    argmax: list[torch.Tensor] = []

    def teacher_argmax(engine):
        with torch.no_grad():
            engine.teacher.eval()
            argmax.append(engine.teacher(engine.state.batch["image"][batch_hq:]).argmax(1, keepdim=True))

    trainer.add_event_handler(Events.ITERATION_STARTED, teacher_argmax)
    return argmax


@pytest.mark.parametrize("num_classes", [2, 3])
def test_alc_refines_to_the_teacher_argmax_and_splits_the_losses(num_classes):
    # without dropout and input noise all T teacher samples agree, so p_hat is the teacher's (eval-mode) prediction
    batches = _batches(1, 1, 4, num_classes)
    trainer = _trainer(num_classes, batches, batch_hq=1, dropout=0.0, noise_std=0.0, teacher_batch_norm="running")
    expected = _record_teacher_argmax(trainer)
    outputs = _record_outputs(trainer)
    trainer.run()
    out = outputs[0]
    assert torch.equal(out["refined_label"], expected[0])
    assert_close(out["uncertainty"], torch.zeros(4), atol=1e-6, rtol=0)
    selected = out["selected"]
    assert int(selected.sum()) == 2
    assert_close(out["loss_sel"], _lq_per_sample(out, 1, expected[0])[selected].mean())
    assert_close(out["loss_noisy"], _lq_per_sample(out, 1, batches[0]["label"][1:])[~selected].mean())
    _check_loss_composition(trainer, out)


@pytest.mark.parametrize("min_agreement", [0.0, 0.3, 1.0])
def test_refine_min_agreement_falls_back_to_the_noisy_label(min_agreement):
    from custom.evaluation.metrics import foreground_dice_per_sample

    # deterministic teacher (no dropout, no input noise, running statistics): refined label = teacher argmax
    batches = _batches(1, 1, 4, 2)
    trainer = _trainer(2, batches, batch_hq=1, dropout=0.0, noise_std=0.0, teacher_batch_norm="running",
                       refine_min_agreement=min_agreement)
    argmax = _record_teacher_argmax(trainer)
    outputs = _record_outputs(trainer)
    trainer.run()
    noisy = batches[0]["label"][1:].long()
    keep = foreground_dice_per_sample(argmax[0], noisy, 2) >= min_agreement
    expected = torch.where(keep.view(-1, 1, 1, 1, 1), argmax[0], noisy)
    assert torch.equal(outputs[0]["refined_label"], expected)
    assert float(outputs[0]["refinement_accepted"]) == pytest.approx(float(keep.float().mean()))


def test_refine_min_agreement_must_be_a_fraction():
    with pytest.raises(ValueError, match="refine_min_agreement"):
        _trainer(2, _batches(1, 1, 2, 2), batch_hq=1, refine_min_agreement=2.0)


# ---------------------------------------------------------------- outputs, loaders, errors


@pytest.mark.parametrize("num_classes", [2, 3])
def test_outputs_with_two_stream_loader(num_classes):
    hq = [{k: v[:1] for k, v in b.items()} for b in _batches(2, 1, 0, num_classes, seed=3)]
    lq = [{k: v for k, v in b.items()} for b in _batches(1, 0, 2, num_classes, seed=4)]
    loader = TwoStreamLoader(hq, lq, epoch_length=2)
    trainer = _trainer(num_classes, loader, batch_hq=1)
    outputs = _record_outputs(trainer)
    trainer.run()
    assert len(outputs) == 2
    for out in outputs:
        for key in ("loss", "pred", "loss_hq", "loss_con", "loss_sel", "loss_noisy", "ramp_weight", "noisy_label",
                    "refined_label", "selected", "uncertainty", "clean_label"):
            assert key in out, key
        assert out["pred"].shape == (3, num_classes, SIDE, SIDE, SIDE)
        assert out["refined_label"].shape == out["noisy_label"].shape == out["clean_label"].shape
        assert out["refined_label"].shape == (2, 1, SIDE, SIDE, SIDE)
        assert int(out["refined_label"].max()) < num_classes
        assert torch.isfinite(out["loss"])
        _check_loss_composition(trainer, out)


def test_hq_only_batch_gives_the_hq_loss():
    batches = _batches(1, 2, 0, 2)
    trainer = _trainer(2, batches, batch_hq=2)
    outputs = _record_outputs(trainer)
    trainer.run()
    assert_close(outputs[0]["loss"].detach(), ce_dice_loss(outputs[0]["pred"].detach(), batches[0]["label"]))


@pytest.mark.parametrize(
    "kwargs", [{"batch_hq": -1}, {"num_samples": 0}, {"selection_ratio": 0.0}, {"selection_ratio": 1.5}]
)
def test_bad_arguments(kwargs):
    arguments = {"batch_hq": 1, **kwargs}
    with pytest.raises(ValueError):
        _trainer(2, _batches(1, 1, 1, 2), **arguments)


# ---------------------------------------------------------------- ablation overlays


@pytest.mark.parametrize(
    "overlay, refine, select, bundle_name",
    [
        (None, True, True, "alc_la"),
        ("mean_teacher.json", False, False, "mean_teacher_la"),
        ("alc_no_selection.json", True, False, "alc_no_selection_la"),
        ("alc_no_refinement.json", False, True, "alc_no_refinement_la"),
    ],
)
def test_ablation_overlays_set_the_switches(repo_root, overlay, refine, select, bundle_name):
    from monai.bundle import ConfigParser

    files = [str(repo_root / "configs" / "alc_la.json")]
    if overlay is not None:
        files.append(str(repo_root / "configs" / "ablations" / overlay))
    parser = ConfigParser()
    parser.read_config(files)
    assert (parser["refine_labels"], parser["select_samples"], parser["bundle_name"]) == (refine, select, bundle_name)
    trainer = parser["train"]["trainer"]  # the trainer reads the switches from the overlaid top-level ids
    assert (trainer["refine_labels"], trainer["select_samples"]) == ("@refine_labels", "@select_samples")


# ---------------------------------------------------------------- consistency over the T samples (Eq. 10)


@pytest.mark.parametrize("mode", ["all_samples", "first_sample"])
def test_consistency_is_the_mean_over_the_t_teacher_samples(mode):
    from custom.losses.segmentation_losses import consistency_mse
    from custom.refinement import teacher_fusion as tf

    batches = _batches(1, 1, 3, 2)
    trainer = _trainer(2, batches, batch_hq=1, num_samples=4, consistency_target=mode)
    x_lq, noisy = batches[0]["image"][1:], batches[0]["label"][1:]
    torch.manual_seed(7)
    probs = tf.perturbed_teacher_predictions(trainer.teacher, x_lq, num_samples=4, noise_std=0.1, noise_clip=0.2,
                                             batch_norm="batch")
    torch.manual_seed(7)
    targets = trainer.teacher_targets(x_lq, noisy)
    assert_close(targets["teacher_probs"], probs.mean(0) if mode == "all_samples" else probs[0])
    logits = torch.randn(3, 2, SIDE, SIDE, SIDE, requires_grad=True)
    got = consistency_mse(logits, targets["teacher_probs"]) + targets["consistency_offset"]
    used = range(4) if mode == "all_samples" else range(1)
    expected = torch.stack([consistency_mse(logits, probs[t]) for t in used]).mean()
    assert_close(got, expected, atol=1e-6, rtol=1e-5)
    (grad_got,) = torch.autograd.grad(got, logits)
    (grad_expected,) = torch.autograd.grad(expected, logits)
    assert_close(grad_got, grad_expected, atol=1e-8, rtol=1e-4)


def test_consistency_target_must_be_known():
    with pytest.raises(ValueError, match="consistency_target"):
        _trainer(2, _batches(1, 1, 1, 2), batch_hq=1, consistency_target="median")


@pytest.mark.parametrize("reduction", ["batch", "group"])
def test_lq_loss_reduction_batch_makes_lambda_a_per_sample_weight(reduction):
    # 4 LQ patches, 2 selected: "batch" divides each part by 4, "group" by its own 2
    batches = _batches(1, 1, 4, 2)
    trainer = _trainer(2, batches, batch_hq=1, refine_labels=False, select_samples=True, lq_loss_reduction=reduction)
    outputs = _record_outputs(trainer)
    trainer.run()
    out = outputs[0]
    selected = out["selected"]
    per_sample = _lq_per_sample(out, 1, batches[0]["label"][1:])
    divisor = 4.0 if reduction == "batch" else 2.0
    assert_close(out["loss_sel"], per_sample[selected].sum() / divisor)
    assert_close(out["loss_noisy"], per_sample[~selected].sum() / divisor)
    _check_loss_composition(trainer, out)


def test_equal_lambdas_with_batch_reduction_weigh_every_lq_patch_as_mean_teacher():
    # ALC w/o refinement at lambda_sel = lambda_noisy = 5 ("batch") is Mean Teacher's LQ term: 5 * mean over all
    batches = _batches(1, 1, 4, 2)
    trainer = _trainer(2, batches, batch_hq=1, refine_labels=False, select_samples=True, lambda_sel=5.0,
                       lambda_noisy=5.0, lq_loss_reduction="batch")
    outputs = _record_outputs(trainer)
    trainer.run()
    out = outputs[0]
    per_sample = _lq_per_sample(out, 1, batches[0]["label"][1:])
    assert_close(5.0 * out["loss_sel"] + 5.0 * out["loss_noisy"], 5.0 * per_sample.mean())


def test_lq_loss_reduction_must_be_known():
    with pytest.raises(ValueError, match="lq_loss_reduction"):
        _trainer(2, _batches(1, 1, 1, 2), batch_hq=1, lq_loss_reduction="sum")
