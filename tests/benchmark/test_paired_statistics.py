"""Paired statistics of the benchmark protocol, on values small enough to compute by hand."""

from __future__ import annotations

import math

import pytest

from custom.benchmark.paired import (
    bootstrap_mean_interval,
    compare_to_baseline,
    paired_case_differences,
    seed_mean_std,
    verdict,
)


def test_seed_mean_and_sample_std():
    # mean 0.7; deviations -0.1, 0, +0.1 -> sum of squares 0.02 / (3 - 1) = 0.01 -> std 0.1
    mean, std = seed_mean_std([0.6, 0.7, 0.8])
    assert mean == pytest.approx(0.7) and std == pytest.approx(0.1)
    assert seed_mean_std([0.5]) == (0.5, None)
    assert seed_mean_std([]) == (None, None)
    assert seed_mean_std([0.4, math.nan, 0.6]) == (pytest.approx(0.5), pytest.approx(math.sqrt(0.02)))


def test_paired_differences_average_each_case_over_the_common_seeds():
    method = {0: {"a": 0.80, "b": 0.60}, 1: {"a": 0.70, "b": 0.90}, 2: {"a": 0.1, "b": 0.1}}
    baseline = {0: {"a": 0.70, "b": 0.70}, 1: {"a": 0.60, "b": 0.70}}
    diffs, seeds = paired_case_differences(method, baseline)
    # seed 2 has no baseline run: only seeds 0 and 1 pair; a: (0.1 + 0.1) / 2, b: (-0.1 + 0.2) / 2
    assert seeds == [0, 1]
    assert diffs == {"a": pytest.approx(0.1), "b": pytest.approx(0.05)}


def test_paired_differences_refuse_different_case_sets_and_no_common_seed():
    with pytest.raises(ValueError, match="no common seed"):
        paired_case_differences({0: {"a": 1.0}}, {1: {"a": 1.0}})
    with pytest.raises(ValueError, match="different test cases"):
        paired_case_differences({0: {"a": 1.0}, 1: {"b": 1.0}}, {0: {"a": 1.0}, 1: {"b": 1.0}})


def test_bootstrap_interval_of_two_values_is_their_range():
    # resampled means of [0, 1] are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4: the 2.5% and 97.5% quantiles are 0, 1
    low, high = bootstrap_mean_interval([0.0, 1.0], n_boot=20000, seed=3)
    assert (low, high) == (0.0, 1.0)
    # a constant sample has a degenerate interval
    assert bootstrap_mean_interval([0.25] * 5) == (pytest.approx(0.25), pytest.approx(0.25))
    # reproducible for a fixed seed
    sample = [0.1, -0.2, 0.05, 0.3, 0.0, 0.12]
    assert bootstrap_mean_interval(sample, seed=1) == bootstrap_mean_interval(sample, seed=1)
    with pytest.raises(ValueError):
        bootstrap_mean_interval([])
    with pytest.raises(ValueError):
        bootstrap_mean_interval([1.0], confidence=1.0)


def test_verdict_needs_the_whole_interval_on_one_side():
    assert verdict(0.01, 0.2) == "better"
    assert verdict(-0.2, -0.01) == "worse"
    assert verdict(-0.01, 0.2) == "not resolved"
    assert verdict(0.0, 0.2) == "not resolved"  # touching 0 is not a resolved win


def test_compare_to_baseline_reports_mean_interval_and_wins():
    method = {0: {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.6}}
    baseline = {0: {"a": 0.8, "b": 0.7, "c": 0.6, "d": 0.5}}
    result = compare_to_baseline(method, baseline)
    assert result["mean"] == pytest.approx(0.1) and result["ci_low"] == pytest.approx(0.1)
    assert result["ci_high"] == pytest.approx(0.1) and result["verdict"] == "better"
    assert result["cases_better"] == 4 and result["n_cases"] == 4 and result["seeds"] == [0]
    assert compare_to_baseline({1: {"a": 1.0}}, {0: {"a": 1.0}}) is None
