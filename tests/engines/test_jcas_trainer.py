from __future__ import annotations

import json
import logging

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Events
from torch.testing import assert_close

from custom.engines import JcasTrainer
from custom.engines.jcas import (
    TRANSITION_MATRIX_FILE,
    build_transitions,
    estimate_training_transition,
    jcas_stage,
    noisy_label_frequencies,
    warmup_epochs_from_fraction,
)
from custom.errors import OptionError
from custom.losses.jcas_loss import JcasLoss, JcasTransitions
from custom.losses.transition import prior_class_transition
from custom.networks.deep_supervision import JcasVNet

NUM_CLASSES = 3
NET_KWARGS = dict(
    spatial_dims=3, in_channels=1, out_channels=NUM_CLASSES, base_filters=4, dropout=0.0, feature_dim=4,
    token_grid=[4, 4, 4], use_dar=True,
)


def _batches(num_batches: int = 2) -> list[dict[str, torch.Tensor]]:
    # shape: (2, 1, 16, 16, 16); labels follow the image (three intensity bands) so the task is learnable
    generator = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(num_batches):
        image = torch.randn(2, 1, 16, 16, 16, generator=generator)
        label = (image > -0.5).long() + (image > 0.5).long()
        batches.append({"image": image, "label": label})
    return batches


def _trainer(warmup_epochs: int, max_epochs: int, output_dir=None, **kwargs) -> JcasTrainer:
    torch.manual_seed(0)
    network = JcasVNet(**NET_KWARGS)
    batches = _batches()
    arguments = dict(
        device=torch.device("cpu"),
        max_epochs=max_epochs,
        epoch_length=len(batches),
        train_data_loader=batches,
        network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.9),
        loss_function=JcasLoss(NUM_CLASSES),
        transitions=JcasTransitions(NUM_CLASSES, [0.5, 0.3, 0.2]),
        warmup_epochs=warmup_epochs,
        output_dir=output_dir,
        decollate=False,
    )
    arguments.update(kwargs)
    return JcasTrainer(**arguments)


def _transition_weights(trainer: JcasTrainer) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        trainer.transitions.class_transition.weights.detach().clone(),
        trainer.transitions.affinity_transition.weights.detach().clone(),
    )


@pytest.mark.parametrize(
    "epoch, warmup_epochs, expected",
    [(1, 0, "correction"), (1, 1, "warmup"), (2, 1, "correction"), (5, 5, "warmup"), (6, 5, "correction")],
)
def test_jcas_stage(epoch, warmup_epochs, expected):
    assert jcas_stage(epoch, warmup_epochs) == expected


@pytest.mark.parametrize("epoch, warmup_epochs", [(1, -1), (0, 2)])
def test_jcas_stage_bad_arguments(epoch, warmup_epochs):
    with pytest.raises(ValueError):
        jcas_stage(epoch, warmup_epochs)


def test_warmup_updates_network_but_not_transitions():
    trainer = _trainer(warmup_epochs=2, max_epochs=2)
    t_c0, t_a0 = _transition_weights(trainer)
    head0 = trainer.network.fine_classifier.weight.detach().clone()
    trainer.run()
    t_c, t_a = _transition_weights(trainer)
    assert torch.equal(t_c, t_c0) and torch.equal(t_a, t_a0)
    assert trainer.transitions.class_transition.weights.grad is None
    assert trainer.transitions.affinity_transition.weights.grad is None
    assert len(trainer.transition_optimizer.state) == 0  # no momentum was ever built
    assert not torch.equal(trainer.network.fine_classifier.weight, head0)
    output = trainer.state.output
    assert output["stage"] == "warmup"
    assert {"loss_class_fine", "loss_class_coarse", "loss_affinity_coarse", "loss_affinity_fine"} <= set(output)
    assert "loss_volume" not in output and "loss_consistency" not in output
    assert not output["loss_class_fine"].requires_grad


def test_correction_gradients_reach_features_and_both_transitions():
    trainer = _trainer(warmup_epochs=0, max_epochs=1)
    t_c0, t_a0 = _transition_weights(trainer)
    trainer.run()
    network = trainer.network
    # the gradients of the last step are still in place (they are cleared at the start of a step)
    for head in (network.fine_feature_head, network.coarse_feature_head, network.fine_classifier):
        assert float(head.weight.grad.abs().sum()) > 0
    off_diagonal = ~torch.eye(NUM_CLASSES, dtype=torch.bool)
    assert bool((trainer.transitions.class_transition.weights.grad[off_diagonal] != 0).all())
    assert float(trainer.transitions.affinity_transition.weights.grad.abs().sum()) > 0
    t_c, t_a = _transition_weights(trainer)
    assert not torch.equal(t_c, t_c0) and not torch.equal(t_a, t_a0)
    output = trainer.state.output
    assert output["stage"] == "correction"
    assert {"loss_volume", "loss_consistency"} <= set(output)
    assert output["pred"].shape == (2, NUM_CLASSES, 16, 16, 16)


def test_transitions_use_their_own_optimiser_settings():
    trainer = _trainer(warmup_epochs=0, max_epochs=1, transition_lr=0.5, transition_momentum=0.0)
    group = trainer.transition_optimizer.param_groups[0]
    assert group["lr"] == 0.5 and group["momentum"] == 0.0
    ids = {id(p) for p in trainer.transitions.parameters()}
    assert {id(p) for p in group["params"]} == ids
    assert not any(id(p) in ids for g in trainer.optimizer.param_groups for p in g["params"])
    # one plain SGD step of the transitions: W <- W - lr * grad (momentum 0), recovered from the last step
    before = {}

    @trainer.on(Events.ITERATION_STARTED)
    def _remember(engine):
        before["t_c"] = engine.transitions.class_transition.weights.detach().clone()

    trainer.run()
    weights = trainer.transitions.class_transition.weights
    assert_close(weights.detach(), before["t_c"] - 0.5 * weights.grad)


def test_data_parallel_hooks_cover_the_transitions():
    trainer = _trainer(warmup_epochs=0, max_epochs=1)
    assert trainer.extra_optimizers() == [trainer.transition_optimizer]
    synced = trainer.synced_modules()
    assert any(m is trainer.network for m in synced) and any(m is trainer.transitions for m in synced)


def test_stage_switches_after_warmup_epochs():
    trainer = _trainer(warmup_epochs=2, max_epochs=4)
    init = _transition_weights(trainer)[0]
    record = []

    @trainer.on(Events.EPOCH_COMPLETED)
    def _record(engine):
        record.append((engine.state.epoch, engine.state.output["stage"], _transition_weights(engine)[0]))

    trainer.run()
    assert [(epoch, stage) for epoch, stage, _ in record] == [
        (1, "warmup"), (2, "warmup"), (3, "correction"), (4, "correction")
    ]
    assert torch.equal(record[0][2], init) and torch.equal(record[1][2], init)
    assert not torch.equal(record[2][2], init)
    assert trainer.loss_function.stage == "correction"


def test_exported_network_needs_no_transition_matrices():
    trainer = _trainer(warmup_epochs=0, max_epochs=1)
    trainer.run()
    state = trainer.network.state_dict()
    assert not any("transition" in key for key in state)
    # a fresh network from the same plain kwargs loads the weights strictly: nothing else is needed
    fresh = JcasVNet(**NET_KWARGS)
    fresh.load_state_dict(state, strict=True)
    fresh.eval()
    trainer.network.eval()
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        prediction = fresh(x)
        assert_close(prediction, trainer.network(x))
        assert_close(prediction.sum(dim=1), torch.full((1, 16, 16, 16), 2.0))
        assert_close(torch.jit.script(fresh)(x), prediction)


def test_transitions_logged_each_epoch_and_written_at_completion(tmp_path, caplog):
    trainer = _trainer(warmup_epochs=1, max_epochs=2, output_dir=str(tmp_path))
    with caplog.at_level(logging.INFO, logger=trainer.logger.name):
        trainer.run()
    messages = [r.getMessage() for r in caplog.records if "T_C" in r.getMessage()]
    assert len(messages) == 2 and "epoch 1 (warmup)" in messages[0] and "epoch 2 (correction)" in messages[1]
    summary = json.loads((tmp_path / TRANSITION_MATRIX_FILE).read_text())
    t_c = np.asarray(summary["class_transition"])
    assert t_c.shape == (NUM_CLASSES, NUM_CLASSES)
    np.testing.assert_allclose(t_c.sum(axis=1), 1.0, atol=1e-3)
    assert np.asarray(summary["affinity_transition"]).shape == (2, 2)
    assert summary["final_stage"] == "correction" and summary["epochs"] == 2 and summary["warmup_epochs"] == 1
    np.testing.assert_allclose(summary["class_frequencies"], [0.5, 0.3, 0.2], atol=1e-4)
    with torch.no_grad():
        np.testing.assert_allclose(t_c, trainer.transitions()[0].numpy(), atol=1e-4)
    assert [(h["epoch"], h["stage"]) for h in summary["history"]] == [(1, "warmup"), (2, "correction")]
    np.testing.assert_allclose(summary["history"][-1]["class_transition"], t_c)


def test_no_json_without_output_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _trainer(warmup_epochs=0, max_epochs=1).run()
    assert not list(tmp_path.iterdir())


def test_checkpoint_state_resumes_transition_optimiser(tmp_path):
    trainer = _trainer(warmup_epochs=0, max_epochs=2)
    trainer.run()
    state = trainer.state_dict()
    assert "transition_optimizer" in state
    # what CheckpointSaver / CheckpointLoader do: torch.save, then a weights-only load
    torch.save({"trainer": state, "transitions": trainer.transitions.state_dict()}, tmp_path / "ckpt.pt")
    loaded = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    resumed = _trainer(warmup_epochs=0, max_epochs=2)
    resumed.load_state_dict(loaded["trainer"])
    resumed.transitions.load_state_dict(loaded["transitions"])
    assert resumed.state.epoch == 2
    assert [h["epoch"] for h in resumed.transition_history] == [1, 2]
    for p_old, p_new in zip(trainer.transitions.parameters(), resumed.transitions.parameters()):
        assert_close(p_new, p_old)
        assert_close(
            resumed.transition_optimizer.state[p_new]["momentum_buffer"],
            trainer.transition_optimizer.state[p_old]["momentum_buffer"],
        )
    # an engine-only checkpoint (no transition optimiser state) still loads
    engine_only = {k: v for k, v in state.items() if not k.startswith("transition_")}
    _trainer(warmup_epochs=0, max_epochs=2).load_state_dict(engine_only)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="JcasLoss"):
        _trainer(0, 1, loss_function=torch.nn.CrossEntropyLoss())
    with pytest.raises(ValueError, match="classes"):
        _trainer(0, 1, transitions=JcasTransitions(2, [0.5, 0.5]))
    with pytest.raises(ValueError, match="warmup_epochs"):
        _trainer(-1, 1)
    with pytest.raises(ValueError, match="transition_lr"):
        _trainer(0, 1, transition_lr=0.0)
    transitions = JcasTransitions(NUM_CLASSES, [0.5, 0.3, 0.2])
    network = JcasVNet(**NET_KWARGS)
    shared = torch.optim.SGD(list(network.parameters()) + list(transitions.parameters()), lr=0.01)
    with pytest.raises(ValueError, match="main optimizer"):
        _trainer(0, 1, network=network, transitions=transitions, optimizer=shared)


def test_non_jcas_network_output_raises():
    network = torch.nn.Conv3d(1, NUM_CLASSES, kernel_size=1)
    trainer = _trainer(0, 1, network=network, optimizer=torch.optim.SGD(network.parameters(), lr=0.01))
    with pytest.raises(ValueError, match="JcasOutput"):
        trainer.run()


def _write_label(path, array):
    nib.save(nib.Nifti1Image(np.asarray(array, dtype=np.uint8), np.eye(4)), str(path))
    return str(path)


def test_noisy_label_frequencies_counts_every_file(tmp_path):
    # shape: (2, 2, 2) each; counts 0: 4, 1: 2 + 8, 2: 2 -> (4, 10, 2) / 16
    first = _write_label(tmp_path / "a.nii.gz", np.array([0, 0, 0, 0, 1, 1, 2, 2]).reshape(2, 2, 2))
    second = _write_label(tmp_path / "b.nii.gz", np.ones((2, 2, 2)))
    items = [{"image": "unused", "label": first}, {"image": "unused", "label": second, "label_clean": first}]
    frequencies = noisy_label_frequencies(items, NUM_CLASSES)
    assert_close(frequencies, torch.tensor([4.0, 10.0, 2.0], dtype=torch.float64) / 16)
    # the clean labels are only used when asked for
    assert_close(noisy_label_frequencies(items[1:], NUM_CLASSES, label_key="label_clean"),
                 torch.tensor([4.0, 2.0, 2.0], dtype=torch.float64) / 8)


def test_noisy_label_frequencies_bad_input(tmp_path):
    with pytest.raises(ValueError, match="no training items"):
        noisy_label_frequencies([], NUM_CLASSES)
    with pytest.raises(ValueError, match="'label'"):
        noisy_label_frequencies([{"image": "x"}], NUM_CLASSES)
    out_of_range = _write_label(tmp_path / "c.nii.gz", np.full((2, 2, 2), 3))
    with pytest.raises(ValueError):
        noisy_label_frequencies([{"label": out_of_range}], NUM_CLASSES)


# ---------------------------------------------------------------------- issue 17: warm-up, T_C init, T learning rate
def test_transition_lr_main_follows_the_main_rate_every_step():
    trainer = _trainer(warmup_epochs=0, max_epochs=2, transition_momentum=0.0)
    assert trainer.follow_main_lr
    seen = []

    @trainer.on(Events.ITERATION_STARTED)
    def _schedule(engine):  # a stand-in for the poly scheduler: a new main rate every iteration
        for group in engine.optimizer.param_groups:
            group["lr"] = 0.01 / engine.state.iteration
        engine.state.t_c_before = engine.transitions.class_transition.weights.detach().clone()

    @trainer.on(Events.ITERATION_COMPLETED)
    def _check(engine):
        lr = trainer.transition_optimizer.param_groups[0]["lr"]
        seen.append(lr)
        weights = engine.transitions.class_transition.weights
        assert_close(weights.detach(), engine.state.t_c_before - lr * weights.grad)

    trainer.run()
    assert seen == pytest.approx([0.01 / i for i in range(1, 5)])


def test_transition_lr_constant_and_bad_values():
    trainer = _trainer(warmup_epochs=0, max_epochs=1, transition_lr=0.001)
    assert not trainer.follow_main_lr and trainer.transition_optimizer.param_groups[0]["lr"] == 0.001
    for bad in ("poly", True, -1.0):
        with pytest.raises(ValueError, match="transition_lr"):
            _trainer(0, 1, transition_lr=bad)


@pytest.mark.parametrize(
    "max_epochs, fraction, expected", [(20, 0.25, 5), (281, 0.25, 70), (10, 0.3, 3), (7, 1.0, 7), (7, 0.0, 0)]
)
def test_warmup_epochs_from_fraction(max_epochs, fraction, expected):
    assert warmup_epochs_from_fraction(max_epochs, fraction) == expected
    if fraction == 0.25:
        assert expected == max_epochs // 4  # the earlier fixed warm-up


@pytest.mark.parametrize(
    "max_epochs, fraction, option",
    [(10, 1.5, "warmup_fraction"), (10, "a", "warmup_fraction"), (0, 0.25, "max_epochs")],
)
def test_warmup_fraction_errors_name_the_option(max_epochs, fraction, option):
    with pytest.raises(OptionError, match=f"--{option}"):
        warmup_epochs_from_fraction(max_epochs, fraction)


def test_config_warmup_epochs_comes_from_the_fraction():
    from pathlib import Path

    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(Path(__file__).resolve().parents[2] / "configs" / "jcas_la.json"))
    assert parser["warmup_fraction"] == 0.25 and parser["class_loss"] == "ce_dice" and parser["transition_lr"] == "main"
    parser["max_epochs"] = 40
    assert parser.get_parsed_content("warmup_epochs") == 10


def _hq_lq_datalist(tmp_path, n_lq: int = 1):
    # one HQ case: 10^3 with a 200-voxel foreground block; n_lq LQ cases (their label differs from label_clean)
    clean = np.zeros((10, 10, 10), dtype=np.uint8)
    clean[:2] = 1
    items = [{"case_id": "hq0", "quality": "hq", "label": _write_label(tmp_path / "hq0.nii.gz", clean)}]
    items[0]["label_clean"] = items[0]["label"]
    for k in range(n_lq):
        noisy = _write_label(tmp_path / f"lq{k}.nii.gz", np.zeros_like(clean))
        items.append({"case_id": f"lq{k}", "quality": "lq", "label": noisy, "label_clean": items[0]["label"]})
    meta = {"noise": {"name": "fake", "params": {"fraction": 0.25}}, "seed": 0, "spacing": [1.0, 1.0, 1.0]}
    return items, meta


def _fake_simulator(name, label, *, seed, case_id, num_classes=None, spacing=None, fraction=0.0):
    # flips the first `fraction` of the foreground voxels (raster order) to background, nothing else
    from types import SimpleNamespace

    flat = np.asarray(label).ravel().copy()  # NIfTI arrays are Fortran-ordered: work on a flat copy
    foreground = np.flatnonzero(flat == 1)
    flat[foreground[: int(round(fraction * foreground.size))]] = 0
    return SimpleNamespace(noisy=flat.reshape(np.shape(label)))


def test_estimate_from_hq_cases_matches_a_hand_made_flip(tmp_path, monkeypatch):
    import custom.noise

    monkeypatch.setattr(custom.noise, "simulate_noise", _fake_simulator)
    items, meta = _hq_lq_datalist(tmp_path, n_lq=3)
    # 3 noisy of 4 training cases: T = 0.25 I + 0.75 [[1, 0], [0.25, 0.75]]
    estimate = estimate_training_transition(items, meta, 2, draws_per_case=2)
    expected = 0.25 * torch.eye(2, dtype=torch.float64) + 0.75 * torch.tensor([[1.0, 0.0], [0.25, 0.75]]).double()
    assert_close(estimate, expected)
    # only the HQ cases (label_mode "hq"): every trained label is clean, T = I
    assert_close(estimate_training_transition(items[:1], meta, 2), torch.eye(2, dtype=torch.float64))
    # through the config's builder: T_C starts at the estimate (the zero entry clipped to ratio 1e-3)
    transitions = build_transitions(2, [0.9, 0.1], "estimate", items=items, datalist_meta=meta, draws_per_case=1)
    t_c = transitions()[0].detach().double()
    assert_close(t_c[1], expected[1], atol=1e-6, rtol=0)
    assert float(t_c[0, 1]) == pytest.approx(1e-3 / (1 + 1e-3), rel=1e-4)


def test_estimate_at_native_resolution_with_the_real_simulator(tmp_path):
    # the registry's symmetric flips (rate 0.3) on the HQ label: a proper, diagonally dominant T; with a downsample
    # factor of 2 the noise is simulated on the 2x upsampled label and pooled back by majority vote
    items, meta = _hq_lq_datalist(tmp_path, n_lq=1)
    meta = {"noise": {"name": "symmetric", "params": {"rate": 0.3}}, "seed": 0, "spacing": [2.0, 2.0, 2.0]}
    estimate = estimate_training_transition(items, meta, 2, draws_per_case=4)
    assert_close(estimate.sum(dim=1), torch.ones(2, dtype=torch.float64))
    assert 0.5 < float(estimate[0, 0]) < 1.0 and 0.5 < float(estimate[1, 1]) < 1.0
    meta["downsample"] = 2
    pooled = estimate_training_transition(items, meta, 2, draws_per_case=2)
    assert float(pooled[0, 0]) > float(estimate[0, 0])  # majority votes of 8 flipped voxels undo most flips


def test_build_transitions_float_prior_and_errors(tmp_path):
    pi = [0.93, 0.07]
    constant = build_transitions(2, pi, -2.0)
    assert_close(constant.class_transition.weights.detach(), torch.full((2, 2), -2.0))
    prior = build_transitions(2, pi, "prior", prior_rate=0.2)
    t_c, t_a = prior()
    assert_close(t_c.detach().double(), prior_class_transition(torch.tensor(pi).double(), 0.2), atol=1e-6, rtol=0)
    assert float(t_c[0, 1].detach()) <= 0.07  # never above the foreground share (the constant gives 0.106)
    assert float(constant()[0][0, 1].detach()) > 0.1
    with pytest.raises(OptionError, match="--transition_init"):
        build_transitions(2, pi, "uniform")
    with pytest.raises(OptionError, match="--transition_prior_rate"):
        build_transitions(2, pi, "prior", prior_rate=0.7)
    with pytest.raises(ValueError, match="HQ cases"):
        build_transitions(2, pi, "estimate", items=[{"quality": "lq", "label": "x"}], datalist_meta={})
    items, _ = _hq_lq_datalist(tmp_path)
    with pytest.raises(ValueError, match="no noise simulator"):
        build_transitions(2, pi, "estimate", items=items, datalist_meta={"seed": 0})
