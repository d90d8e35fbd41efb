"""The results document and its report, built from hand-made run folders with values computed by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from custom.benchmark.report import format_difference, write_markdown
from custom.benchmark.results import build_results, collect_runs, plateau_change

CASES = ["c1", "c2", "c3", "c4"]


def _run(work: Path, setting: str, method: str, seed: int, dice: list[float], curve=None, quality=None) -> None:
    run = work / setting / f"{method}_s{seed}"
    (run / "eval").mkdir(parents=True)
    lines = ["case_id,dice_1,dice_mean"] + [f"{c},{d},{d}" for c, d in zip(CASES, dice)]
    (run / "eval" / "metrics_per_case.csv").write_text("\n".join(lines) + "\n")
    mean = sum(dice) / len(dice)
    (run / "eval" / "metrics_summary.json").write_text(json.dumps({"dice_mean": {"mean": mean, "std": 0.0}}))
    (run / "run_stats.json").write_text(
        json.dumps({"iterations": 100, "seconds_per_iteration_median": 0.5, "iteration_to_step_ratio": 1.1})
    )
    if curve:
        rows = ["epoch,iteration,val_mean_dice"] + [f"{i},{it},{v}" for i, (it, v) in enumerate(curve, 1)]
        (run / "validation_curve.csv").write_text("\n".join(rows) + "\n")
    if quality:
        rows = ["epoch,iteration,noisy_dice,refined_dice"]
        rows += [f"{i},{i * 10},{n},{r}" for i, (n, r) in enumerate(quality, 1)]
        (run / "label_quality.csv").write_text("\n".join(rows) + "\n")


def test_plateau_change_uses_the_last_quarter_of_the_iterations():
    points = [(25, 0.5), (50, 0.7), (75, 0.80), (90, 0.83), (100, 0.81)]
    curve = [{"iteration": it, "val_mean_dice": v} for it, v in points]
    # the window starts at iteration 75: first 0.80, last 0.81, spread 0.83 - 0.80; least squares through
    # (75, .80), (90, .83), (100, .81): mean x 88.33, mean y .81333, Sxy = .16667, Sxx = 316.67 -> slope
    # 5.263e-4, rise over the window's 25 iterations 0.013158
    figures = plateau_change(curve, 100)
    assert figures["change"] == pytest.approx(0.01) and figures["spread"] == pytest.approx(0.03)
    assert figures["trend"] == pytest.approx(0.013158, abs=1e-6) and figures["rounds"] == 3
    assert plateau_change(curve[:3], 100) is None  # one round in the window: no figure


@pytest.fixture
def work(tmp_path):
    work = tmp_path / "work"
    curve = [(50, 0.6), (75, 0.78), (100, 0.785)]
    for seed, shift in ((0, 0.0), (1, 0.02), (2, -0.02)):
        _run(work, "mtcl_hq25", "hl_sup", seed, [0.6 + shift, 0.7, 0.5, 0.8])
        _run(work, "mtcl_hq25", "clean", seed, [0.7 + shift, 0.8, 0.6, 0.9], curve=curve)
        _run(work, "mtcl_hq25", "mean_teacher", seed, [0.65 + shift, 0.7, 0.55, 0.8])
        _run(work, "mtcl_hq25", "alc", seed, [0.6 + shift, 0.75, 0.45, 0.8], quality=[(0.7, 0.6), (0.7, 0.75)])
    _run(work, "mtcl_hq25", "mtcl", 0, [0.6, 0.7, 0.5, 0.8])  # one seed only
    return work


def test_build_results_from_run_folders(work):
    methods = ["hl_sup", "clean", "mean_teacher", "alc", "mtcl"]
    runs = collect_runs(work, ["mtcl_hq25", "sp_a0.7_b0.7"], methods)
    assert len(runs) == 13
    results = build_results(runs, methods, n_boot=2000)
    assert results["primary_settings"] == {"mtcl": "mtcl_hq25", "sp": "sp_a0.7_b0.7"}
    st = results["settings"]["mtcl_hq25"]
    assert st["n_test_cases"] == 4 and set(st["methods"]) == set(methods)
    hl, clean, mt, alc = (st["methods"][m] for m in ("hl_sup", "clean", "mean_teacher", "alc"))
    # per-seed means of HL-Sup: 0.65, 0.655, 0.645 -> mean 0.65, sample std 0.005
    assert hl["dice_mean"] == pytest.approx(0.65) and hl["dice_std"] == pytest.approx(0.005)
    assert hl["n_seeds"] == 3 and hl["diff_to_hl_sup"] is None
    # clean is +0.1 on every case and seed: the interval is [0.1, 0.1], resolved
    d = clean["diff_to_hl_sup"]
    assert d["mean"] == pytest.approx(0.1) and d["ci_low"] == pytest.approx(0.1) and d["verdict"] == "better"
    assert st["noise_gap"]["clean_minus_hl_sup"] == pytest.approx(0.1)
    # MT: +0.05 on c1 and c3, 0 on c2 and c4 -> mean +0.025; gap recovery 0.025 / 0.1
    assert mt["diff_to_hl_sup"]["mean"] == pytest.approx(0.025) and mt["gap_recovery"] == pytest.approx(0.25)
    assert mt["diff_to_hl_sup"]["cases_better"] == 2
    # ALC vs MT: -0.05, +0.05, -0.10, 0 -> mean -0.025, with both signs present: not resolved
    vs_mt = alc["diff_to"]["mean_teacher"]
    assert vs_mt["mean"] == pytest.approx(-0.025) and vs_mt["verdict"] == "not resolved"
    assert vs_mt["ci_low"] < 0 < vs_mt["ci_high"]
    assert alc["noisy_label_dice"] == pytest.approx(0.7) and alc["refined_label_dice"] == pytest.approx(0.75)
    assert mt["noisy_label_dice"] is None and mt["refined_label_dice"] is None
    # MTCL pairs with HL-Sup on its one seed only
    assert st["methods"]["mtcl"]["diff_to_hl_sup"]["seeds"] == [0] and st["methods"]["mtcl"]["dice_std"] is None
    # plateau: rounds (75, 0.78), (100, 0.785) in the last 25%: the line rises 0.005 over 25 iterations
    assert st["clean_plateau_delta"] == pytest.approx(0.005)
    assert [c["seed"] for c in st["clean_plateau_per_seed"]] == [0, 1, 2]
    assert clean["iteration_to_step_ratio"] == pytest.approx(1.1)


def test_report_tables_hold_the_numbers_of_the_document(work, tmp_path):
    methods = ["hl_sup", "clean", "mean_teacher", "alc", "mtcl"]
    results = build_results(collect_runs(work, ["mtcl_hq25"], methods), methods, n_boot=2000)
    path = write_markdown(results, tmp_path / "docs" / "b.md", {"alc": "ALC", "hl_sup": "HL-Sup"}, "# B", "timing")
    text = path.read_text()
    assert "### Setting `mtcl_hq25` (4 test cases)" in text
    assert "| HL-Sup | 0.6500 \u00b1 0.005 | 3 |" in text
    assert format_difference(results["settings"]["mtcl_hq25"]["methods"]["clean"]["diff_to_hl_sup"]) in text
    assert "+0.100 [+0.100, +0.100] better (4/4)" in text
    assert "not resolved" in text and "largest |trend| over seeds **0.0050**" in text


def test_figures_from_the_run_folders(work, tmp_path):
    pytest.importorskip("matplotlib")
    from custom.benchmark.figures import method_colours, plot_learning_curves, plot_paired_differences

    methods = ["hl_sup", "clean", "mean_teacher", "alc", "mtcl"]
    runs = collect_runs(work, ["mtcl_hq25"], methods)
    results = build_results(runs, methods, n_boot=500)
    curves = plot_learning_curves(runs, "mtcl_hq25", methods, {}, tmp_path / "f" / "curves.png")
    paired = plot_paired_differences(results["settings"]["mtcl_hq25"], "mtcl_hq25", {}, tmp_path / "f" / "paired.png")
    assert curves.read_bytes()[:4] == b"\x89PNG" and paired.read_bytes()[:4] == b"\x89PNG"
    assert plot_learning_curves(runs, "sp_a0.7_b0.7", methods, {}, tmp_path / "f" / "none.png") is None
    # a method with fewer runs than min_seeds is left out; none left -> no figure
    seeds = {m: sum(r["method"] == m for r in runs) for m in methods}
    assert plot_learning_curves(
        runs, "mtcl_hq25", methods, {}, tmp_path / "f" / "few.png", min_seeds=max(seeds.values()) + 1
    ) is None
    colours = method_colours(methods)
    assert len(set(colours.values())) == len(methods)  # no two methods share a colour
