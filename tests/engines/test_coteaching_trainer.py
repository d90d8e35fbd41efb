"""Tests for custom/engines/coteaching.py: the SP-guided trainer, its voxel ablation and the Co-teaching / JoCoR /
Tri-network baselines, on tiny synthetic batches with tiny networks."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Events
from torch.testing import assert_close

from custom.engines import (
    CoTeachingTrainer,
    JoCoRTrainer,
    SPGuidedTrainer,
    SPGuidedVoxelTrainer,
    TriNetworkTrainer,
)
from custom.engines.coteaching import estimate_training_keep_ratio, per_class_keep_ratio, resolve_keep_ratio
from custom.networks import PaperVNet
from custom.selection.peer_selection import coteaching_masks

SIDE = 16
TWO_NETWORK_TRAINERS = [CoTeachingTrainer, JoCoRTrainer, SPGuidedTrainer, SPGuidedVoxelTrainer]
ALL_TRAINERS = TWO_NETWORK_TRAINERS + [TriNetworkTrainer]


def _grid_supervoxels(batch: int, side: int = SIDE, cell: int = 4) -> torch.Tensor:
    # shape: (B, 1, 16, 16, 16); 4^3-voxel cubes numbered 0..63
    axis = torch.arange(side) // cell
    per_axis = side // cell
    ids = axis.view(-1, 1, 1) * per_axis**2 + axis.view(1, -1, 1) * per_axis + axis.view(1, 1, -1)
    return ids.expand(batch, 1, side, side, side).float()


def _batches(num_batches: int = 2, batch: int = 2, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(num_batches):
        image = torch.randn(batch, 1, SIDE, SIDE, SIDE, generator=generator)
        clean = (image > 0).float()
        noisy = clean.clone()
        noisy[:, :, :4] = 1.0 - noisy[:, :, :4]  # a corrupted slab
        out.append({
            "image": image, "label": noisy, "clean_label": clean,
            "superpixel": _grid_supervoxels(batch), "superpixel_count": torch.full((batch,), 64),
        })
    return out


def _networks(count: int, seed: int = 0) -> list[PaperVNet]:
    torch.manual_seed(seed)
    return [PaperVNet(base_filters=2, dropout=0.0) for _ in range(count)]


def _trainer(cls, keep_ratio=(0.8, 0.6), max_epochs: int = 1, batches=None, **kwargs):
    nets = _networks(3 if cls is TriNetworkTrainer else 2)
    batches = _batches() if batches is None else batches
    arguments = dict(
        device=torch.device("cpu"), max_epochs=max_epochs, epoch_length=len(batches), train_data_loader=batches,
        network=nets[0], peers=nets[1:] if cls is TriNetworkTrainer else nets[1],
        optimizer=torch.optim.SGD([p for n in nets for p in n.parameters()], lr=0.01),
        loss_function=None, num_classes=2, decollate=False,
        keep_ratio=list(keep_ratio) if isinstance(keep_ratio, (tuple, list)) else keep_ratio,
    )
    arguments.update(kwargs)
    return cls(**arguments)


@pytest.mark.parametrize(
    "cls, tolerance",
    # voxel pieces: the budget is exact to one voxel per class; 4^3 supervoxel pieces: within about one piece
    [(CoTeachingTrainer, 1e-3), (JoCoRTrainer, 1e-3), (SPGuidedVoxelTrainer, 1e-3), (TriNetworkTrainer, 1e-3),
     (SPGuidedTrainer, 0.03)],
)
def test_steps_update_every_network_and_select_r(cls, tolerance):
    keep_ratio = (0.5, 0.9)
    batches = _batches(num_batches=2)
    trainer = _trainer(cls, keep_ratio=keep_ratio, batches=batches)
    before = [[p.detach().clone() for p in net.parameters()] for net in trainer.networks]
    trainer.run()
    for index, (net, old) in enumerate(zip(trainer.networks, before)):
        # the one optimiser moved every network (conv biases ahead of BatchNorm get ~0 gradient: check weights)
        assert all(p.grad is not None for p in net.parameters()), f"network {index} got no gradient"
        moved = [not torch.equal(p, q) for p, q in zip(net.parameters(), old) if p.dim() > 1]
        assert all(moved), f"network {index}: {moved.count(False)} weight tensors did not move"
    out = trainer.state.output
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
    assert out["pred"].shape == (2, 2, SIDE, SIDE, SIDE)
    for key in ("loss_selected", "loss_unselected", "selected_fraction"):
        assert out[key].dim() == 0 and not out[key].requires_grad
    # the last step's selection keeps R_c of each noisy class
    foreground = float(batches[-1]["label"].mean())
    expected = keep_ratio[0] * (1 - foreground) + keep_ratio[1] * foreground
    fraction = float(out["selected_fraction"])
    # never more than R (+ one piece); ties at the threshold are dropped, and a 2-step-old network with
    # BatchNorm on a tiny batch can output many equal losses, so the lower bound is loose
    assert expected - 0.1 <= fraction <= expected + tolerance


def test_iteration_events_fire_in_order():
    from monai.engines.utils import IterationEvents

    trainer = _trainer(SPGuidedTrainer, batches=_batches(num_batches=1))
    fired = []
    for event in (IterationEvents.FORWARD_COMPLETED, IterationEvents.LOSS_COMPLETED,
                  IterationEvents.BACKWARD_COMPLETED, IterationEvents.MODEL_COMPLETED):
        trainer.add_event_handler(event, lambda engine, e=event: fired.append(e.value))
    trainer.run()
    assert fired == ["forward_completed", "loss_completed", "backward_completed", "model_completed"]


@pytest.mark.parametrize("cls", ALL_TRAINERS)
def test_keep_ratio_one_selects_everything(cls):
    batch = _batches(num_batches=1)[0]
    count = 3 if cls is TriNetworkTrainer else 2
    logits = [torch.randn(2, 2, SIDE, SIDE, SIDE) for _ in range(count)]
    trainer = _trainer(cls, keep_ratio=(1.0, 1.0))
    terms = trainer.selection_terms(logits, batch["label"], batch)
    assert len(terms) == (1 if isinstance(trainer, JoCoRTrainer) else count)
    assert all(bool(mask.all()) for _, mask in terms)
    trainer.keep_ratio = (0.9, 0.9)
    assert not all(bool(mask.all()) for _, mask in trainer.selection_terms(logits, batch["label"], batch))


def test_coteaching_trains_each_network_on_its_peers_selection():
    trainer = _trainer(CoTeachingTrainer)
    batch = _batches(num_batches=1)[0]
    logits = [torch.randn(2, 2, SIDE, SIDE, SIDE) for _ in range(2)]
    terms = trainer.selection_terms(logits, batch["label"], batch)
    target = batch["label"][:, 0].long()
    ce = [torch.nn.functional.cross_entropy(z, target, reduction="none") for z in logits]
    mask1, mask2 = coteaching_masks(ce[0], ce[1], batch["label"], trainer.keep_ratio)
    assert len(terms) == 2
    assert torch.equal(terms[0][1], mask1) and torch.equal(terms[1][1], mask2)
    assert not torch.equal(mask1, mask2)  # different networks, different small-loss sets
    assert_close(terms[0][0], ce[0])


def test_jocor_and_spguided_share_one_mask_over_the_joint_loss():
    batch = _batches(num_batches=1)[0]
    logits = [torch.randn(2, 2, SIDE, SIDE, SIDE) for _ in range(2)]
    for cls in (JoCoRTrainer, SPGuidedTrainer, SPGuidedVoxelTrainer):
        terms = _trainer(cls).selection_terms(logits, batch["label"], batch)
        assert len(terms) == 1 and terms[0][1].dtype == torch.bool


def test_voxel_ablation_equals_jocor_selection():
    # with voxels as pieces, Eq. 2 on (unpooled) probabilities is the per-voxel joint loss: the same voxels
    batch = _batches(num_batches=1)[0]
    logits = [torch.randn(2, 2, SIDE, SIDE, SIDE) for _ in range(2)]
    # (the same lam: SP-guided's default is its config's 0.3, JoCoR's 0.65)
    voxel = _trainer(SPGuidedVoxelTrainer, lam=0.65).selection_terms(logits, batch["label"], batch)[0][1]
    jocor = _trainer(JoCoRTrainer, lam=0.65).selection_terms(logits, batch["label"], batch)[0][1]
    assert (voxel != jocor).float().mean() < 1e-3


def test_spguided_selects_whole_pieces():
    batch = _batches(num_batches=1)[0]
    logits = [torch.randn(2, 2, SIDE, SIDE, SIDE) for _ in range(2)]
    mask = _trainer(SPGuidedTrainer).selection_terms(logits, batch["label"], batch)[0][1]
    # every (supervoxel, noisy class) piece is all in or all out
    piece = (batch["superpixel"][:, 0].long() * 2 + batch["label"][:, 0].long()).reshape(2, -1)
    flat = mask.reshape(2, -1).float()
    for b in range(2):
        sums = torch.zeros(128).index_add_(0, piece[b], flat[b])
        sizes = torch.bincount(piece[b], minlength=128).float()
        assert torch.all((sums == 0) | (sums == sizes))


def test_spguided_without_superpixels_in_batch_raises():
    batches = _batches(num_batches=1)
    del batches[0]["superpixel"]
    trainer = _trainer(SPGuidedTrainer, batches=batches)
    with pytest.raises(ValueError, match="superpixel"):
        trainer.run()


def test_voxel_ablation_needs_no_superpixels():
    batches = _batches(num_batches=1)
    del batches[0]["superpixel"], batches[0]["superpixel_count"]
    trainer = _trainer(SPGuidedVoxelTrainer, batches=batches)
    trainer.run()
    assert float(trainer.state.output["selected_fraction"]) < 1.0


def test_label_keys_for_label_quality():
    batches = _batches(num_batches=1)
    trainer = _trainer(JoCoRTrainer, batches=batches)
    trainer.run()
    out = trainer.state.output
    assert "noisy_label" in out and "refined_label" not in out
    assert torch.equal(out["clean_label"], batches[0]["clean_label"])
    trainer = _trainer(JoCoRTrainer, batches=batches)
    trainer.labels_refined = True
    trainer.run()
    assert "refined_label" in trainer.state.output and "noisy_label" not in trainer.state.output


def test_keep_ratio_can_change_between_epochs():
    trainer = _trainer(JoCoRTrainer, keep_ratio=(0.6, 0.6), max_epochs=2,
                       batches=_batches(num_batches=1))
    fractions = []

    def set_ratio(engine):
        engine.keep_ratio = [1.0, 1.0] if engine.state.epoch == 1 else [0.6, 0.6]

    trainer.add_event_handler(Events.EPOCH_STARTED, set_ratio)
    trainer.add_event_handler(
        Events.EPOCH_COMPLETED, lambda e: fractions.append(float(e.state.output["selected_fraction"]))
    )
    trainer.run()
    assert fractions[0] == 1.0 and abs(fractions[1] - 0.6) < 1e-3
    assert torch.equal(trainer.target_keep_ratio, torch.tensor([0.6, 0.6], dtype=torch.float64))


def test_optimiser_must_hold_every_network():
    nets = _networks(2)
    with pytest.raises(ValueError, match="optimiser"):
        JoCoRTrainer(
            device=torch.device("cpu"), max_epochs=1, train_data_loader=_batches(), network=nets[0], peers=nets[1],
            optimizer=torch.optim.SGD(nets[0].parameters(), lr=0.01), loss_function=None, num_classes=2,
        )


@pytest.mark.parametrize(
    "cls, peers, match",
    [(JoCoRTrainer, "two", "peer"), (TriNetworkTrainer, "one", "peer"), (JoCoRTrainer, "self", "distinct")],
)
def test_bad_peers_raise(cls, peers, match):
    nets = _networks(3)
    peer_arg = {"one": nets[1], "two": nets[1:], "self": nets[0]}[peers]
    with pytest.raises(ValueError, match=match):
        cls(
            device=torch.device("cpu"), max_epochs=1, train_data_loader=_batches(), network=nets[0], peers=peer_arg,
            optimizer=torch.optim.SGD([p for n in nets for p in n.parameters()], lr=0.01), loss_function=None,
            num_classes=2,
        )


@pytest.mark.parametrize("kwargs", [{"lam": 1.5}, {"pool": "mean"}, {"keep_ratio": [0.5, 0.5, 0.5]},
                                    {"keep_ratio": 1.2}, {"num_classes": 1}])
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        _trainer(SPGuidedTrainer, **kwargs)


def test_trinet_rule_is_checked():
    with pytest.raises(ValueError, match="rule"):
        _trainer(TriNetworkTrainer, rule="majority")


# ---------------------------------------------------------------------- R at config time
@pytest.mark.parametrize(
    "value, expected", [(0.8, [0.8, 0.8, 0.8]), ([0.9, 0.7, 0.6], [0.9, 0.7, 0.6]), (torch.tensor(1.0), [1.0] * 3)]
)
def test_per_class_keep_ratio(value, expected):
    assert per_class_keep_ratio(value, 3).tolist() == pytest.approx(expected)


def _label_case(folder, name, label):
    path = folder / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(label.astype(np.uint8), np.eye(4)), str(path))
    return str(path)


def _keep_ratio_items(tmp_path):
    # shape: (8, 8, 8); foreground = a 4^3 cube (64 voxels), background 448 voxels
    clean = np.zeros((8, 8, 8), dtype=np.uint8)
    clean[2:6, 2:6, 2:6] = 1
    hq = _label_case(tmp_path, "hq", clean)
    lq_clean = _label_case(tmp_path, "lq_clean", clean)
    lq_noisy = _label_case(tmp_path, "lq_noisy", np.zeros_like(clean))
    return [
        {"case_id": "a", "label": hq, "label_clean": hq, "quality": "hq"},
        {"case_id": "b", "label": lq_noisy, "label_clean": lq_clean, "quality": "lq"},
    ]


def test_hq_estimate_hand_computed(tmp_path):
    # the simulator turns every foreground voxel into background. One clean case (HQ) and one corrupted (LQ):
    # R_bg = (448 + 448) / (448 + 512) = 0.93333; R_fg = (64 + 0) / (64 + 0) = 1
    meta = {"seed": 0, "noise": {"name": "class_conditional", "params": {"matrix": [[1.0, 0.0], [1.0, 0.0]]}}}
    ratio = estimate_training_keep_ratio(_keep_ratio_items(tmp_path), meta, num_classes=2, min_ratio=0.0)
    assert ratio.tolist() == pytest.approx([896 / 960, 1.0])
    # the lower clamp
    clamped = estimate_training_keep_ratio(_keep_ratio_items(tmp_path), meta, num_classes=2, min_ratio=0.95)
    assert clamped.tolist() == pytest.approx([0.95, 1.0])


def test_resolve_keep_ratio_sources(tmp_path):
    items = _keep_ratio_items(tmp_path)
    meta = {"seed": 0, "noise": {"name": "none", "params": {}}}
    assert resolve_keep_ratio("config", [0.9, 0.7], items, meta, 2) == [0.9, 0.7]
    assert resolve_keep_ratio("auto", [0.9, 0.7], items, meta, 2) == [1.0, 1.0]  # HQ + noise: estimate
    assert resolve_keep_ratio("auto", [0.9, 0.7], items[1:], meta, 2) == [0.9, 0.7]  # no HQ: config
    assert resolve_keep_ratio("auto", 0.8, items, {}, 2) == [0.8, 0.8]  # no recorded noise: config
    with pytest.raises(ValueError, match="HQ"):
        resolve_keep_ratio("hq_estimate", 0.8, items[1:], meta, 2)
    with pytest.raises(ValueError, match="noise"):
        resolve_keep_ratio("hq_estimate", 0.8, items, {}, 2)
    with pytest.raises(ValueError, match="keep_ratio_source"):
        resolve_keep_ratio("known", 0.8, items, meta, 2)


def test_hq_estimate_is_deterministic(tmp_path):
    items = _keep_ratio_items(tmp_path)
    meta = json.loads(json.dumps({"seed": 3, "noise": {"name": "mtcl", "params": {"r_min": 2, "r_max": 3}}}))
    first = estimate_training_keep_ratio(items, meta, 2, min_ratio=0.0)
    assert torch.equal(first, estimate_training_keep_ratio(items, meta, 2, min_ratio=0.0))
    assert torch.all(first <= 1.0) and torch.any(first < 1.0)


def test_hq_estimate_matches_the_true_label_precision_of_a_downsampled_dataset(tmp_path):
    """Noise is simulated at native resolution before pooling; the estimate must do the same (a K = 2 dataset)."""
    import h5py

    from custom.data import load_datalist, read_datalist_meta
    from custom.data.prepare_cli import main_la
    from custom.io import load_nifti

    h5 = tmp_path / "h5"
    h5.mkdir()
    rng = np.random.default_rng(0)
    ids = [f"C{i:02d}" for i in range(14)]
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in (64, 56, 40)], indexing="ij")
    for case in ids:
        c = np.array([32, 28, 20]) + rng.integers(-4, 5, size=3)
        axes = np.array([18.0, 15.0, 11.0]) * rng.uniform(0.85, 1.15, size=3)
        label = ((zz - c[0]) / axes[0]) ** 2 + ((yy - c[1]) / axes[1]) ** 2 + ((xx - c[2]) / axes[2]) ** 2 <= 1
        with h5py.File(h5 / f"{case}.h5", "w") as f:
            f["image"] = (label + rng.normal(0, 0.5, label.shape)).astype(np.float32)
            f["label"] = label.astype(np.uint8)
    (h5 / "train.list").write_text("\n".join(ids) + "\n")
    out = tmp_path / "data"
    argv = ["--h5-dir", str(h5), "--out", str(out), "--noise", "mtcl", "--param", "r_min=2", "--param", "r_max=6",
            "--hq-count", "4", "--val-count", "0", "--downsample", "2", "--seed", "3"]
    assert main_la(argv) == 0
    datalist = out / "datalist.json"
    items, meta = load_datalist(datalist), read_datalist_meta(datalist)
    assert int(meta["downsample"]) == 2
    # the truth: precision of the foreground (and background) of the training labels against the clean ones
    right, total = np.zeros(2), np.zeros(2)
    for item in items:
        label = np.asarray(load_nifti(item["label"])[0]).astype(np.int64)
        clean = np.asarray(load_nifti(item["label_clean"])[0]).astype(np.int64)
        total += np.bincount(label.ravel(), minlength=2)[:2]
        right += np.bincount(label.ravel(), weights=(label == clean).ravel().astype(float), minlength=2)[:2]
    truth = right / total
    estimate = estimate_training_keep_ratio(items, meta, num_classes=2, min_ratio=0.0, draws_per_case=8).numpy()
    assert truth[1] < 0.95  # the noise is strong enough to matter
    assert abs(estimate[1] - truth[1]) <= 0.05 and abs(estimate[0] - truth[0]) <= 0.05, (estimate, truth)


def _row(batch: dict, index: int) -> dict:
    return {k: v[index:index + 1] for k, v in batch.items()}


@pytest.mark.parametrize("cls", ALL_TRAINERS)
def test_trust_hq_ranks_only_the_lq_samples(cls):
    # batch of 2: sample 0 HQ, sample 1 LQ. HQ keeps every voxel; the LQ sample's masks are those the same trainer
    # selects on a batch holding that sample alone (same R, same losses).
    batch = {**_batches(num_batches=1)[0], "quality": ["hq", "lq"]}
    count = 3 if cls is TriNetworkTrainer else 2
    logits = [torch.randn(2, 2, SIDE, SIDE, SIDE) for _ in range(count)]
    trusting = _trainer(cls, trust_hq=True)
    plain = _trainer(cls)
    terms = trusting.selection_terms(logits, batch["label"], batch)
    alone = plain.selection_terms([z[1:] for z in logits], batch["label"][1:], _row(batch, 1))
    assert len(terms) == len(alone)
    for (_, mask), (_, lq_mask) in zip(terms, alone):
        assert bool(mask[0].all())
        assert torch.equal(mask[1:], lq_mask)
        assert not bool(lq_mask.all())
    # without HQ samples in the batch, trusting HQ changes nothing
    batch["quality"] = ["lq", "lq"]
    for (_, a), (_, b) in zip(trusting.selection_terms(logits, batch["label"], batch),
                              plain.selection_terms(logits, batch["label"], batch)):
        assert torch.equal(a, b)
    # an all-HQ batch keeps every voxel
    batch["quality"] = ["hq", "hq"]
    assert all(bool(mask.all()) for _, mask in trusting.selection_terms(logits, batch["label"], batch))


def test_trust_hq_needs_the_quality_of_every_sample():
    batch = _batches(num_batches=1)[0]
    logits = [torch.randn(2, 2, SIDE, SIDE, SIDE) for _ in range(2)]
    trainer = _trainer(CoTeachingTrainer, trust_hq=True)
    with pytest.raises(ValueError, match="'quality'"):
        trainer.selection_terms(logits, batch["label"], batch)
    with pytest.raises(ValueError, match="2 samples"):
        trainer.selection_terms(logits, batch["label"], {**batch, "quality": ["hq"]})


def test_trust_hq_trains_a_step_with_hq_rows():
    batches = [{**b, "quality": ["hq", "lq"]} for b in _batches(num_batches=2)]
    trainer = _trainer(SPGuidedTrainer, keep_ratio=(0.5, 0.5), batches=batches, trust_hq=True)
    trainer.run()
    # half the voxels are the HQ sample's (all kept), the LQ half keeps R = 0.5 of its voxels (or a piece less)
    assert 0.6 <= float(trainer.state.output["selected_fraction"]) <= 0.75 + 0.03


def test_hq_estimate_without_the_hq_cases_hand_computed(tmp_path):
    # trust_hq: only the LQ labels are ranked, so R is their precision alone. The one LQ case is corrupted (every
    # foreground voxel turned background): R_bg = 448 / 512 = 0.875; R_fg = 1 (no voxel labelled foreground)
    meta = {"seed": 0, "noise": {"name": "class_conditional", "params": {"matrix": [[1.0, 0.0], [1.0, 0.0]]}}}
    items = _keep_ratio_items(tmp_path)
    ratio = estimate_training_keep_ratio(items, meta, num_classes=2, min_ratio=0.0, count_hq=False)
    assert ratio.tolist() == pytest.approx([0.875, 1.0])
    assert resolve_keep_ratio("hq_estimate", 0.8, items, meta, 2, min_ratio=0.0, trust_hq=True) == [0.875, 1.0]
    assert resolve_keep_ratio("hq_estimate", 0.8, items, meta, 2, min_ratio=0.0) == [round(896 / 960, 6), 1.0]
