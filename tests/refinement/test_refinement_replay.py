"""Tests for custom/refinement/refinement_replay.py and scripts/replay_refinement.py: rules replayed on hand-made
scores (voxel pieces, so every flip is countable by hand), and the script on a real checkpoint."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from custom.refinement.refinement_replay import ReplayCase, replay_refinement, summarize_replay
from custom.refinement.superpixel_refinement import piece_scores

REPO_ROOT = Path(__file__).resolve().parents[2]


def _case(case_id, quality, noisy, clean, fg_prob):
    """Voxel pieces of a 1-D case: ``fg_prob`` is the networks' foreground probability per voxel."""
    labels = torch.tensor(noisy).reshape(1, 1, -1)
    p = torch.tensor(fg_prob, dtype=torch.float32).reshape(1, 1, -1)
    scores = piece_scores(torch.cat([1 - p, p], dim=1), labels, None)
    return ReplayCase(case_id, quality, scores, torch.tensor(clean).reshape(1, 1, -1))


FG4 = [1, 1, 1, 1, 0, 0, 0, 0]
# HQ: predicted as labelled (agreement 1, so the case gate refines an LQ case below 0.98)
HQ = _case("hq", "hq", FG4, FG4, [0.99] * 4 + [0.01] * 4)
# corrupted: two background voxels labelled foreground; the networks say background at 0.9 (agreement 8 / 10)
CORRUPTED = _case("corrupted", "lq", [1, 1, 1, 1, 1, 1, 0, 0], FG4, [0.99] * 4 + [0.1, 0.1] + [0.01] * 2)
# uncorrupted but hard: the networks miss one true foreground voxel at 0.85 (agreement 6 / 7)
HARD = _case("hard", "lq", FG4, FG4, [0.99] * 3 + [0.15] + [0.01] * 4)
CASES = [HQ, CORRUPTED, HARD]


def _by_id(rows):
    return {r["case_id"]: r for r in rows}


def test_a_gate_below_the_hard_cases_confidence_damages_it():
    rows = _by_id(replay_refinement(CASES, [0.5, 0.5], min_confidence=0.8))
    assert rows["corrupted"]["agreement"] == pytest.approx(0.8) and rows["hard"]["agreement"] == pytest.approx(6 / 7)
    assert rows["corrupted"]["refined"] and rows["hard"]["refined"]
    assert rows["corrupted"]["dice_before"] == pytest.approx(0.8) and rows["corrupted"]["dice_after"] == 1.0
    assert rows["hard"]["uncorrupted"] and not rows["corrupted"]["uncorrupted"]
    assert rows["hard"]["dice_after"] == pytest.approx(6 / 7) and rows["hard"]["changed_fraction"] == 1 / 8
    summary = summarize_replay(list(rows.values()))
    assert summary["worst_uncorrupted_loss"] == pytest.approx(1 / 7, abs=1e-6)
    assert summary["mean_dice_before"] == pytest.approx(0.9) and summary["refined"] == 2


def test_a_gate_above_it_keeps_the_hard_case_and_still_corrects_the_corrupted_one():
    rows = _by_id(replay_refinement(CASES, [0.5, 0.5], min_confidence=0.9))
    assert rows["corrupted"]["dice_after"] == 1.0
    assert rows["hard"]["dice_after"] == 1.0 and rows["hard"]["changed_fraction"] == 0.0
    assert summarize_replay(list(rows.values()))["worst_uncorrupted_loss"] == 0.0


def test_the_case_gate_keeps_a_case_that_agrees_like_the_hq_cases():
    agreeing = _case("agreeing", "lq", FG4, FG4, [0.99] * 4 + [0.01] * 4)
    rows = _by_id(replay_refinement([HQ, CORRUPTED, agreeing], [0.5, 0.5], case_gate="hq_agreement"))
    assert not rows["agreeing"]["refined"] and rows["corrupted"]["refined"]
    rows = _by_id(replay_refinement([HQ, CORRUPTED, agreeing], [0.5, 0.5], case_gate="none"))
    assert rows["agreeing"]["refined"] and rows["agreeing"]["changed_fraction"] == 0.0


def test_the_pooled_budget_goes_to_the_globally_largest_losses():
    # no confidence gate. R_fg = 0.8 pooled over the refined cases' 10 foreground voxels: 2 voxels, the corrupted
    # case's two (-log 0.1 each) before the hard case's (-log 0.15)
    pooled = _by_id(replay_refinement(CASES, [1.0, 0.8], min_confidence=0.0, budget="pooled"))
    assert pooled["corrupted"]["dice_after"] == 1.0 and pooled["hard"]["changed_fraction"] == 0.0
    # R_fg = 0.5 per case: the hard case spends its own 2 voxels on its largest loss, the missed true voxel
    per_case = _by_id(replay_refinement(CASES, [1.0, 0.5], min_confidence=0.0, budget="per_case"))
    assert per_case["corrupted"]["dice_after"] == 1.0
    assert per_case["hard"]["dice_after"] == pytest.approx(6 / 7)


@pytest.mark.parametrize("kwargs, message", [
    ({"case_gate": "always"}, "case_gate"), ({"budget": "global"}, "budget"), ({"min_confidence": 1.5}, "min_conf"),
])
def test_bad_rules_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        replay_refinement(CASES, [0.5, 0.5], **kwargs)


def test_the_case_gate_needs_an_hq_case():
    with pytest.raises(ValueError, match="HQ case"):
        replay_refinement([CORRUPTED, HARD], [0.5, 0.5], case_gate="hq_agreement")


def test_the_script_replays_a_real_checkpoint(demo_dataset, tmp_path, monkeypatch):
    from monai.bundle import run

    monkeypatch.chdir(REPO_ROOT)
    out = tmp_path / "run"
    configs = ["configs/spguided_la.json", "configs/quick.json"]
    run("training", config_file=configs, dataset_dir=str(demo_dataset.parent), datalist=str(demo_dataset),
        output_dir=str(out), device="cpu", max_epochs=3)
    checkpoint = out / "checkpoints" / "checkpoint_final.pt"
    assert checkpoint.is_file()
    csv_path = tmp_path / "replay.csv"
    cmd = [sys.executable, "scripts/replay_refinement.py", "--config_file", *configs, "--dataset_dir",
           str(demo_dataset.parent), "--override", f"datalist=\"{demo_dataset}\"", "--checkpoint", str(checkpoint),
           "--min-confidence", "0.5", "0.99", "0.5,0.99", "--case-gate", "none", "--output", str(csv_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "min_confidence 0.5," in done.stdout and "min_confidence [0.5, 0.99]," in done.stdout
    rows = list(csv.DictReader(open(csv_path)))
    lq = {r["case_id"] for r in rows}
    assert len(rows) == 3 * len(lq) and lq
    assert {r["min_confidence"] for r in rows} == {"0.5", "0.99", "[0.5, 0.99]"}
    # a stricter gate never changes more voxels of a case
    by = {(r["case_id"], r["min_confidence"]): float(r["changed_fraction"]) for r in rows}
    assert all(by[(c, "0.99")] <= by[(c, "[0.5, 0.99]")] <= by[(c, "0.5")] for c in lq)

    bad = subprocess.run([*cmd[:-2], "--checkpoint", str(tmp_path / "missing.pt")], capture_output=True, text=True,
                         cwd=REPO_ROOT)
    assert bad.returncode == 1 and "--checkpoint" in bad.stderr.strip().splitlines()[-1]
