"""Tests for custom/benchmark/audit_ranking.py: the ranking figures against hand-computed values, cleanlab's score
of a 3D volume, the ``audit_ranking.json`` document; and its way through the harness (which methods are audited),
the results document and the report's ranking table (hand-made run folders)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from custom.benchmark.audit_ranking import (
    AUDIT_RANKING_FILE,
    audit_ranking,
    cleanlab_label_quality,
    cleanlab_suspicion,
    is_corrupted,
    midranks,
    ranking_metrics,
    roc_auc,
    spearman,
    top_k_precision,
)
from custom.benchmark.report import write_markdown
from custom.benchmark.results import audit_ranking_figures, build_results, collect_runs
from custom.benchmark.runner import read_run


def test_midranks_share_the_mean_rank_of_a_tie():
    np.testing.assert_allclose(midranks([0.5, 0.1, 0.5]), [2.5, 1.0, 2.5])
    np.testing.assert_allclose(midranks([3.0, 1.0, 2.0]), [3.0, 1.0, 2.0])


def test_roc_auc_counts_a_tie_as_one_half():
    # corrupted 0.9 and 0.4; untouched 0.4 and 0.1: pairs 0.9>0.4, 0.9>0.1, 0.4=0.4 (1/2), 0.4>0.1 -> 3.5 / 4
    assert roc_auc([0.9, 0.4, 0.4, 0.1], [True, True, False, False]) == pytest.approx(0.875)
    assert roc_auc([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 1.0
    assert roc_auc([0.1, 0.2, 0.8, 0.9], [True, True, False, False]) == 0.0
    assert roc_auc([0.5, 0.5, 0.5], [True, False, False]) == 0.5


def test_roc_auc_needs_both_groups_and_matching_lengths():
    with pytest.raises(ValueError, match="corrupted and untouched"):
        roc_auc([0.1, 0.2], [True, True])
    with pytest.raises(ValueError, match="3 scores but 2"):
        roc_auc([0.1, 0.2, 0.3], [True, False])
    with pytest.raises(ValueError, match="finite"):
        roc_auc([0.1, math.nan], [True, False])


def test_top_k_precision_with_k_the_number_corrupted():
    # k = 2: the top two are 0.9 (corrupted) and 0.7 (untouched) -> 1 / 2
    assert top_k_precision([0.9, 0.7, 0.3, 0.1], [True, False, True, False]) == pytest.approx(0.5)
    assert top_k_precision([0.9, 0.7, 0.3, 0.1], [True, True, False, False]) == 1.0
    assert top_k_precision([0.9, 0.7, 0.3, 0.1], [True, False, True, False], k=3) == pytest.approx(2 / 3)


def test_top_k_precision_counts_a_tie_at_the_cut_off_by_expectation():
    # k = 2: 0.9 (corrupted) is in; one place left for the two tied 0.4 cases, one of them corrupted -> (1 + 0.5) / 2
    assert top_k_precision([0.9, 0.4, 0.4, 0.1], [True, False, True, False]) == pytest.approx(0.75)
    # the order of the input does not matter
    assert top_k_precision([0.4, 0.1, 0.9, 0.4], [True, False, True, False]) == pytest.approx(0.75)


def test_top_k_precision_rejects_a_bad_k():
    with pytest.raises(ValueError, match="at least one corrupted"):
        top_k_precision([0.1, 0.2], [False, False])
    with pytest.raises(ValueError, match=r"k must be in \[1, 2\]"):
        top_k_precision([0.1, 0.2], [True, False], k=3)


def test_spearman_hand_computed_with_and_without_ties():
    # no ties: d = [0, 1, 1, 0] -> 1 - 6 * 2 / (4 * 15) = 0.8
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    # ties: ranks x = [1, 2.5, 2.5, 4]; centred [-1.5, 0, 0, 1.5] and [-1.5, -0.5, 0.5, 1.5] -> 4.5 / sqrt(4.5 * 5)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(22.5))
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError, match="at least 2"):
        spearman([1], [1])


def test_ranking_metrics_correlate_the_score_with_one_minus_dice():
    # the most suspicious case has the worst noisy label: a positive correlation
    metrics = ranking_metrics([0.9, 0.5, 0.1], [True, True, True], [0.2, 0.6, 0.9])
    assert metrics["spearman"] == pytest.approx(1.0)
    assert metrics["auc"] is None  # every case corrupted (MTCL noise): AUC undefined
    assert metrics["top_k_precision"] == 1.0


def test_is_corrupted_compares_the_label_maps():
    clean = np.zeros((2, 2, 2), dtype=np.int64)
    noisy = clean.copy()
    assert not is_corrupted(noisy, clean)
    noisy[0, 0, 0] = 1
    assert is_corrupted(noisy, clean)
    with pytest.raises(ValueError, match="shape"):
        is_corrupted(noisy, np.zeros((2, 2)))


def _softmin(pixel_scores, temperature=0.1):
    weights = np.exp((1 - np.asarray(pixel_scores)) / temperature)
    return float(np.sum(np.asarray(pixel_scores) * weights / weights.sum()))


def test_cleanlab_quality_of_a_3d_volume_is_the_softmin_over_its_voxels():
    pytest.importorskip("cleanlab")
    # (1, 1, 2) volume; p(label) = 0.8 and 0.6: weights softmax([2, 4]) -> 0.8 / (1 + e^2) + 0.6 e^2 / (1 + e^2)
    probabilities = np.array([[[[0.8, 0.4]]], [[[0.2, 0.6]]]])
    label = np.array([[[0, 1]]])
    expected = 0.8 / (1 + math.e**2) + 0.6 * math.e**2 / (1 + math.e**2)
    assert cleanlab_label_quality(probabilities, label) == pytest.approx(expected)
    assert cleanlab_suspicion(probabilities, label) == pytest.approx(1 - expected)


def test_cleanlab_quality_does_not_depend_on_the_voxel_arrangement():
    pytest.importorskip("cleanlab")
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 4, 5, 6))
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=0, keepdims=True)
    label = rng.integers(0, 3, size=(4, 5, 6))
    score = cleanlab_label_quality(probabilities, label)
    pixel_scores = np.take_along_axis(probabilities, label[None], axis=0).reshape(-1)
    assert score == pytest.approx(_softmin(pixel_scores))
    permuted = cleanlab_label_quality(probabilities.transpose(0, 3, 1, 2), label.transpose(2, 0, 1))
    assert permuted == pytest.approx(score)


def test_cleanlab_quality_checks_its_inputs():
    with pytest.raises(ValueError, match="shape"):
        cleanlab_label_quality(np.ones((2, 3, 3, 3)) / 2, np.zeros((3, 3, 4)))
    with pytest.raises(ValueError, match=r"label values must be in \[0, 1\]"):
        cleanlab_label_quality(np.ones((2, 2, 2, 2)) / 2, np.full((2, 2, 2), 2))


def test_audit_ranking_document():
    cases = [
        {"case_id": "a", "corrupted": True, "noisy_dice": 0.3, "scores": {"audit": 0.9, "cleanlab": 0.2}},
        {"case_id": "b", "corrupted": False, "noisy_dice": 1.0, "scores": {"audit": 0.1, "cleanlab": 0.4}},
        {"case_id": "c", "corrupted": True, "noisy_dice": 0.6, "scores": {"audit": 0.5, "cleanlab": 0.3}},
    ]
    document = audit_ranking(cases, "teacher_uncertainty")
    assert document["n_cases"] == 3 and document["n_corrupted"] == 2
    assert document["metrics"]["audit"] == {"auc": 1.0, "top_k_precision": 1.0, "spearman": pytest.approx(1.0)}
    # cleanlab ranks the untouched case first: AUC 0, top-2 = {b, c} -> 1/2, Spearman vs 1 - Dice = -1
    assert document["metrics"]["cleanlab"] == {"auc": 0.0, "top_k_precision": 0.5, "spearman": pytest.approx(-1.0)}
    assert [c["case_id"] for c in document["cases"]] == ["a", "b", "c"]
    with pytest.raises(ValueError, match="expected"):
        audit_ranking([cases[0], {**cases[1], "scores": {"audit": 0.1}}], "x")
    with pytest.raises(ValueError, match="at least one"):
        audit_ranking([], "x")


# ---- the harness's audit_ranking.json in the results document, the report and the harness's rows

def _finished_run(work, setting, method, seed, ranking=None):
    run = work / setting / f"{method}_s{seed}"
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "metrics_per_case.csv").write_text("case_id,dice_1,dice_mean\nc1,0.8,0.8\nc2,0.6,0.6\n")
    (run / "eval" / "metrics_summary.json").write_text(json.dumps({"dice_mean": {"mean": 0.7, "std": 0.1}}))
    if ranking is not None:
        auc, cleanlab_auc = ranking
        metrics = {
            "audit": {"auc": auc, "top_k_precision": 0.75, "spearman": None},
            "cleanlab": {"auc": cleanlab_auc, "top_k_precision": 0.5, "spearman": 0.2},
        }
        document = {"score_name": "teacher_uncertainty", "n_cases": 4, "n_corrupted": 3, "metrics": metrics,
                    "cases": []}
        (run / AUDIT_RANKING_FILE).write_text(json.dumps(document))
    return run


def test_results_and_report_carry_the_ranking_table(tmp_path):
    work = tmp_path / "work"
    for seed, auc in ((0, 0.9), (1, 0.8)):
        _finished_run(work, "sp_a0.7_b0.7", "alc", seed, ranking=(auc, 0.6))
        _finished_run(work, "sp_a0.7_b0.7", "hl_sup", seed)
    _finished_run(work, "mtcl_hq25", "alc", 0)  # no audit: no ranking for this setting
    methods = ["hl_sup", "alc"]
    results = build_results(collect_runs(work, ["sp_a0.7_b0.7", "mtcl_hq25"], methods), methods, n_boot=200)
    ranking = results["settings"]["sp_a0.7_b0.7"]["audit_ranking"]
    assert list(ranking) == ["alc"]  # HL-Sup has no audit_ranking.json here
    alc = ranking["alc"]
    assert alc["score_name"] == "teacher_uncertainty" and alc["n_seeds"] == 2 and alc["seeds"] == [0, 1]
    # AUC 0.9 and 0.8: mean 0.85, sample std 0.1 / sqrt(2)
    assert alc["audit"]["auc"]["mean"] == pytest.approx(0.85)
    assert alc["audit"]["auc"]["std"] == pytest.approx(0.1 / math.sqrt(2))
    assert alc["cleanlab"]["auc"] == {"mean": pytest.approx(0.6), "std": pytest.approx(0.0)}
    assert alc["audit"]["spearman"] == {"mean": None, "std": None}  # undefined in every seed
    assert "audit_ranking" not in results["settings"]["mtcl_hq25"]

    report = write_markdown(results, tmp_path / "report.md", {"alc": "ALC", "hl_sup": "HL-Sup"}).read_text()
    sp_part, mtcl_part = report.split("### Setting `mtcl_hq25`")
    row = next(line for line in sp_part.splitlines() if line.startswith("| ALC | teacher_uncertainty"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells == ["ALC", "teacher_uncertainty", "2", "0.850 \u00b1 0.071", "0.600 \u00b1 0.000",
                     "0.750 \u00b1 0.000", "0.500 \u00b1 0.000", "-", "0.200 \u00b1 0.000"]
    assert "Label audit ranking" not in mtcl_part


def test_audit_ranking_figures_of_a_run(tmp_path):
    run = _finished_run(tmp_path, "sp_a0.7_b0.7", "alc", 0, ranking=(0.9, 0.6))
    figures = audit_ranking_figures(run)
    assert figures["audit_score_name"] == "teacher_uncertainty"
    assert figures["audit_auc"] == 0.9 and figures["cleanlab_auc"] == 0.6 and figures["audit_spearman"] is None
    assert read_run("alc", run)["audit_top_k_precision"] == 0.75  # the harness's per-invocation rows
    (run / AUDIT_RANKING_FILE).write_text("not json")
    assert audit_ranking_figures(run) == {}
    assert audit_ranking_figures(tmp_path / "missing") == {}


def test_harness_audits_only_the_methods_with_an_audit(tmp_path, monkeypatch):
    from custom.benchmark import runner

    commands = []

    def fake_child(cmd, env=None, stdout=None):
        commands.append(list(cmd))
        return 0

    monkeypatch.setattr(runner, "run_child", fake_child)
    dataset = tmp_path / "data"
    dataset.mkdir()
    (dataset / "datalist.json").write_text("{}")
    run = _finished_run(tmp_path, "sp_a0.7_b0.7", "alc", 0)
    assert not runner.audit_run("mean_teacher", dataset, run)  # no audit for this method: nothing started
    assert commands == []
    assert not runner.audit_run("alc", None, run)  # the run's dataset is unknown (no training_command.json)
    assert commands == []
    (run / "training_command.json").write_text(json.dumps({"command": ["python", "--dataset_dir", str(dataset)]}))
    runner.audit_run("alc", None, run, extra={"device": "cpu"})
    cmd = commands[-1]
    assert cmd[1] == "scripts/audit_labels.py"
    assert cmd[cmd.index("--datalist") + 1] == str(dataset / "datalist.json")
    assert cmd[cmd.index("--source") + 1] == "alc" and cmd[cmd.index("--device") + 1] == "cpu"
    assert cmd[cmd.index("--ranking") + 1] == str(run / AUDIT_RANKING_FILE)
    runner.audit_run("hl_sup", dataset, run)
    assert commands[-1][commands[-1].index("--source") + 1] == "disagreement"
    (run / AUDIT_RANKING_FILE).write_text("{}")
    n = len(commands)
    assert runner.audit_run("alc", dataset, run) and len(commands) == n  # done once: not repeated


def test_run_one_audits_only_when_asked(tmp_path, monkeypatch):
    from custom.benchmark import runner

    commands = []
    monkeypatch.setattr(runner, "run_child", lambda cmd, env=None, stdout=None: commands.append(list(cmd)) or 0)
    dataset = tmp_path / "data"
    dataset.mkdir()
    (dataset / "datalist.json").write_text("{}")
    run = _finished_run(tmp_path, "mtcl_hq25", "alc", 0)
    runner.run_one("alc", dataset, run, [], 0, audit=False)  # finished: no training; audit off: nothing started
    assert commands == []
    runner.run_one("alc", dataset, run, [], 0)
    assert [c[1] for c in commands] == ["scripts/audit_labels.py"]
