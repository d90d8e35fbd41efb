"""The label-ignoring baselines in the results and the report, the seeds-and-cases interval, the variance components
and the second protocol, on tiny synthetic archives (run folders written here) and hand-computable values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from custom.benchmark.paired import compare_to_baseline, paired_seed_case_matrix, seed_case_bootstrap_interval
from custom.benchmark.power import expected_half_width, variance_components
from custom.benchmark.registry import METHODS, PROTOCOLS, SETTINGS
from custom.benchmark.results import build_results, collect_runs
from tests.benchmark.test_benchmark_results import CASES, _run
from tests.benchmark.test_run_record import _script

# per method the four cases' Dice of seed 0; seeds 1 and 2 shift every case by +0.02 / -0.02 (the same for all
# methods, so paired differences are the same in every seed)
BASE = {"hl_sup": 0.60, "h_sup": 0.64, "ssl_mt": 0.66, "alc": 0.70, "clean": 0.76}
SHIFTS = {0: 0.0, 1: 0.02, 2: -0.02}


def _archive(root: Path, methods=BASE) -> Path:
    for seed, shift in SHIFTS.items():
        for key, base in methods.items():
            _run(root, "mtcl_hq25", key, seed, [base + shift, base + 0.1, base - 0.1, base + 0.2])
    (root / "benchmark_timing.json").write_text("[]\n")
    return root


def test_every_method_is_paired_with_both_ignoring_baselines_and_the_better_one_is_the_bar(tmp_path):
    runs = collect_runs(_archive(tmp_path / "work"), ["mtcl_hq25"])
    results = build_results(runs, n_boot=200)
    setting = results["settings"]["mtcl_hq25"]
    assert setting["n_test_cases"] == len(CASES)
    # ssl_mt 0.66 + 0.05 mean over cases beats h_sup's 0.64 + 0.05
    assert setting["best_ignoring"] == {"method": "ssl_mt", "dice_mean": pytest.approx(0.71)}
    alc = setting["methods"]["alc"]
    assert set(alc["diff_to"]) == {"h_sup", "ssl_mt"}
    assert alc["diff_to"]["h_sup"]["mean"] == pytest.approx(0.06)
    assert alc["diff_to_best_ignoring"] == alc["diff_to"]["ssl_mt"]
    assert alc["diff_to_best_ignoring"]["mean"] == pytest.approx(0.04)
    # (0.75 - 0.71) / (0.81 - 0.71)
    assert alc["gap_recovery_vs_best_ignoring"] == pytest.approx(0.4)
    assert setting["methods"]["h_sup"]["gap_recovery_vs_best_ignoring"] == pytest.approx(-0.2)
    assert "ssl_mt" not in setting["methods"]["ssl_mt"]["diff_to"]  # never paired with itself
    assert "diff_to_best_ignoring" not in setting["methods"]["ssl_mt"]
    # the existing gap recovery against HL-Sup is unchanged: (0.75 - 0.65) / (0.81 - 0.65)
    assert alc["gap_recovery"] == pytest.approx(0.625)


def test_without_ignoring_baselines_nothing_is_added(tmp_path):
    runs = collect_runs(_archive(tmp_path / "work", {"hl_sup": 0.6, "alc": 0.7, "clean": 0.76}), ["mtcl_hq25"])
    setting = build_results(runs, n_boot=200)["settings"]["mtcl_hq25"]
    assert "best_ignoring" not in setting
    assert setting["methods"]["alc"]["diff_to"] == {}
    assert "gap_recovery_vs_best_ignoring" not in setting["methods"]["alc"]


def test_report_has_the_gain_column_and_the_bar(tmp_path):
    archive = _archive(tmp_path / "archive")
    report = tmp_path / "out" / "benchmarks.md"
    code = _script().main(["--report-only", "--work-dir", str(tmp_path / "work"), "--archive-dir", str(archive),
                           "--report", str(report), "--notes", ""])
    assert code == 0
    text = report.read_text()
    assert "gain over the best method that ignores the noisy labels" in text
    assert "Best method that ignores the noisy labels: **SSL mean teacher (LQ labels unused)**" in text
    alc_row = next(line for line in text.splitlines() if line.startswith("| ALC |"))
    assert "+0.040 [" in alc_row and "| 0.40 |" in alc_row


def test_a_folder_of_one_protocol_refuses_the_other(tmp_path, capsys):
    archive = _archive(tmp_path / "archive")  # no protocol.json: runs of the first protocol
    code = _script().main(["--report-only", "--protocol", "v2", "--work-dir", str(tmp_path / "work"),
                           "--archive-dir", str(archive), "--report", str(tmp_path / "r.md"), "--notes", ""])
    assert code == 2
    assert "holds runs of protocol v1, not v2" in capsys.readouterr().err.splitlines()[-1]
    (tmp_path / "v2").mkdir()
    (tmp_path / "v2" / "protocol.json").write_text(json.dumps({"protocol": "v2"}))
    code = _script().main(["--report-only", "--work-dir", str(tmp_path / "v2"), "--report", str(tmp_path / "r.md"),
                           "--notes", ""])
    assert code == 2
    assert "holds runs of protocol v2, not v1" in capsys.readouterr().err.splitlines()[-1]


def test_v2_report_uses_the_seeds_and_cases_interval(tmp_path):
    work = tmp_path / "v2"
    _archive(work)
    (work / "protocol.json").write_text(json.dumps({"protocol": "v2"}))
    report = tmp_path / "out" / "benchmarks.md"
    assert _script().main(["--report-only", "--protocol", "v2", "--work-dir", str(work), "--report", str(report),
                           "--notes", ""]) == 0
    results = json.loads(report.with_name("benchmark_results.json").read_text())
    assert results["protocol"]["definition"]["interval"] == "seeds_and_cases"
    assert results["run_time_budget"]["method_issues"]["seeds"] == list(range(8))
    assert "resample the seeds, then the cases" in report.read_text()


# ---------------------------------------------------------------- the seeds-and-cases interval


def test_seed_case_matrix_and_interval():
    method = {0: {"a": 0.8, "b": 0.6}, 1: {"a": 0.7, "b": 0.9}}
    baseline = {0: {"a": 0.7, "b": 0.7}, 1: {"a": 0.6, "b": 0.7}}
    d, seeds, cases = paired_seed_case_matrix(method, baseline)
    assert seeds == [0, 1] and cases == ["a", "b"]
    np.testing.assert_allclose(d, [[0.1, -0.1], [0.1, 0.2]])
    low, high = seed_case_bootstrap_interval(d, n_boot=2000)
    # every resampled mean lies between the smallest and the largest difference
    assert -0.1 - 1e-12 <= low < d.mean() < high <= 0.2 + 1e-12
    with pytest.raises(ValueError, match="seeds, cases"):
        seed_case_bootstrap_interval(np.zeros(3))


def test_seed_variance_widens_the_interval_that_resamples_seeds():
    rng = np.random.default_rng(0)
    cases = {f"c{i}": 0.0 for i in range(30)}
    per_seed_shift = [0.06, -0.04, 0.03, -0.05, 0.0]  # the seed moves the whole difference
    method = {s: {c: 0.7 + shift + rng.normal(0, 0.01) for c in cases} for s, shift in enumerate(per_seed_shift)}
    baseline = {s: {c: 0.7 for c in cases} for s in method}
    over_cases = compare_to_baseline(method, baseline, n_boot=2000)
    over_both = compare_to_baseline(method, baseline, n_boot=2000, interval="seeds_and_cases")
    assert over_cases["mean"] == pytest.approx(over_both["mean"])
    assert over_cases["ci_high"] - over_cases["ci_low"] < 0.01  # blind to the seeds
    assert over_both["ci_high"] - over_both["ci_low"] > 0.04
    assert over_both["interval"].startswith("95% percentile bootstrap over seeds, then cases")
    with pytest.raises(ValueError, match="interval"):
        compare_to_baseline(method, baseline, interval="seeds")


# ---------------------------------------------------------------- variance components and half-widths


def test_variance_components_of_an_additive_layout():
    seed_effect = np.array([0.02, -0.02])
    case_effect = np.array([0.05, -0.05, 0.0])
    d = 0.01 + seed_effect[:, None] + case_effect[None, :]  # no interaction
    comp = variance_components(d)
    assert comp["mean"] == pytest.approx(0.01)
    assert comp["s2_residual"] == pytest.approx(0.0, abs=1e-15)
    assert comp["s2_seed"] == pytest.approx(np.var(seed_effect, ddof=1))
    assert comp["s2_case"] == pytest.approx(np.var(case_effect, ddof=1))
    assert comp["seed_mean_variance"] == pytest.approx(np.var(seed_effect, ddof=1))
    with pytest.raises(ValueError):
        variance_components(np.zeros((1, 5)))


def test_expected_half_width_formulas():
    comp = {"s2_seed": 4e-4, "s2_case": 2e-3, "s2_residual": 8e-3}
    # 1.96 * sqrt(4e-4/4 + 2e-3/40 + 8e-3/160) = 1.96 * sqrt(2e-4)
    assert expected_half_width(comp, 4, 40, z=1.96, interval="model") == pytest.approx(1.96 * np.sqrt(2e-4))
    assert expected_half_width(comp, 8, 40) < expected_half_width(comp, 4, 40)
    assert expected_half_width(comp, 4, 46) < expected_half_width(comp, 4, 20)


def test_expected_bootstrap_half_width_matches_the_bootstrap():
    rng = np.random.default_rng(1)
    n_seeds, n_cases = 6, 40
    widths = []
    for _ in range(40):
        d = (rng.normal(0, 0.02, (n_seeds, 1)) + rng.normal(0, 0.04, (1, n_cases))
             + rng.normal(0, 0.07, (n_seeds, n_cases)))
        low, high = seed_case_bootstrap_interval(d, n_boot=1000, seed=int(rng.integers(1 << 30)))
        widths.append((high - low) / 2)
    truth = {"s2_seed": 0.02**2, "s2_case": 0.04**2, "s2_residual": 0.07**2}
    assert np.mean(widths) == pytest.approx(expected_half_width(truth, n_seeds, n_cases), rel=0.15)


# ---------------------------------------------------------------- the second protocol


def test_second_protocol_lists_and_runs(la_h5_dir):
    from custom.data.sources import la_sources

    v2 = PROTOCOLS["v2"]
    args = list(v2.prepare_args)

    def lists(option: str) -> list[str]:
        start = args.index(option) + 1
        end = next((i for i in range(start, len(args)) if args[i].startswith("--")), len(args))
        return args[start:end]

    pool, test, val = la_sources(la_h5_dir, lists("--train-list"), lists("--test-list"), lists("--val-list"))
    assert (len(pool), len(test), len(val)) == (26, v2.n_test_cases, 8)  # la_sources refuses overlaps
    assert v2.n_validation_cases == len(val) + int(lists("--val-count")[0])
    assert v2.n_test_cases >= 40
    v1_pool, _, _ = la_sources(la_h5_dir, *[PROTOCOLS["v1"].prepare_args[1:3]], ["test.list"])
    assert [c.case_id for c in pool] == [c.case_id for c in v1_pool]  # the training pool unchanged
    assert {"mtcl_hq25", "mtcl_hq10"} <= set(v2.runs)
    for setting, methods in v2.runs.items():
        assert setting in SETTINGS
        assert {"h_sup", "ssl_mt", "clean"} <= set(methods)
        assert all(m in METHODS and m in SETTINGS[setting].methods for m in methods)
    assert PROTOCOLS["v1"].interval == "cases" and v2.interval == "seeds_and_cases"
