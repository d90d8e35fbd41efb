"""Validation-split choices between benchmark runs (validation_choice, scripts/compare_validation.py)."""

import json

import pytest

from custom.benchmark.validation_choice import format_choice, run_validation_score, validation_scores
from custom.io import DataError
from scripts.compare_validation import main


def _run(root, setting, name, rows, iterations=100):
    run = root / setting / name
    run.mkdir(parents=True)
    lines = ["epoch,iteration,val_mean_dice"] + [f"{i // 10},{i},{v}" for i, v in rows]
    (run / "validation_curve.csv").write_text("\n".join(lines) + "\n")
    (run / "run_stats.json").write_text(json.dumps({"total_iterations": iterations}))
    return run


def test_the_score_is_the_last_quarter_mean_and_the_best_round_is_listed(tmp_path):
    run = _run(tmp_path, "s", "a_s0", [(20, 0.9), (70, 0.5), (80, 0.6), (100, 0.7)])
    score = run_validation_score(run)
    assert score["tail_mean"] == pytest.approx(0.65)  # rounds at 80 and 100
    assert (score["best"], score["best_iteration"], score["rounds"]) == (0.9, 20, 4)


def test_methods_are_ranked_by_their_mean_over_seeds(tmp_path):
    _run(tmp_path, "s", "a_s0", [(80, 0.60), (100, 0.70)])
    _run(tmp_path, "s", "a_s1", [(80, 0.80), (100, 0.80)])
    _run(tmp_path, "s", "b_s0", [(80, 0.75), (100, 0.75)])
    _run(tmp_path, "s", "b_s1", [(80, 0.70), (100, 0.72)])
    scores = validation_scores(tmp_path, "s", ["a", "b"], [0, 1])
    assert scores["a"]["tail_mean"] == pytest.approx((0.65 + 0.80) / 2)
    assert scores["b"]["tail_mean"] == pytest.approx((0.75 + 0.71) / 2)
    text = format_choice(scores)
    assert "| a | 0.6500 / 0.7000 | 0.8000 / 0.8000 | 0.7250 |" in text
    assert text.splitlines()[-1].endswith("b (+0.0050 over a)")


def test_a_missing_or_unfinished_run_is_named(tmp_path, capsys):
    _run(tmp_path, "s", "a_s0", [(80, 0.6), (100, 0.7)])
    with pytest.raises(DataError, match="b_s0"):
        validation_scores(tmp_path, "s", ["a", "b"], [0])
    _run(tmp_path, "s", "c_s0", [(10, 0.6)], iterations=1000)  # stopped early: nothing in the last quarter
    with pytest.raises(DataError, match="last 25%"):
        run_validation_score(tmp_path / "s" / "c_s0")
    assert main(["--work-dir", str(tmp_path), "--setting", "s", "--methods", "a", "b"]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("noisyseg: error: ") and "b_s0" in last
    assert main(["--work-dir", str(tmp_path), "--setting", "s", "--methods", "a"]) == 0
