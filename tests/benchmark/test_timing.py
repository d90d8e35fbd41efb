"""Tests for custom/benchmark/timing.py: the run-time budget of a set of runs over several invocations,
hand-computed."""

from __future__ import annotations

from custom.benchmark.timing import describe_run_time_budget, run_time_budget


def _run(setting, method, seed, status="trained", seconds=None):
    return {"setting": setting, "method": method, "seed": seed, "status": status, "seconds": seconds}


RECORDS = [
    {"start": "2026-01-01T00:00:00+00:00", "end": "2026-01-01T01:00:00+00:00",
     "runs": [_run("m", "a", 0, seconds=1000.0), _run("m", "b", 0, seconds=500.0),
              _run("m", "clean", 0, seconds=300.0)]},
    # overlaps the first by 30 min; retrains a (the latest record counts)
    {"start": "2026-01-01T00:30:00+00:00", "end": "2026-01-01T02:00:00+00:00",
     "runs": [_run("m", "a", 0, seconds=1200.0), _run("s", "b", 0, status="skipped")]},
    # interrupted: no end, its wall seconds give the interval
    {"start": "2026-01-01T05:00:00+00:00", "end": None, "wall_seconds": 600.0,
     "runs": [_run("m", "c", 2, seconds=100.0), _run("s", "b", 0, status="failed", seconds=50.0)]},
    # trains nothing of the set: its hour is not counted
    {"start": "2026-01-01T10:00:00+00:00", "end": "2026-01-01T11:00:00+00:00",
     "runs": [_run("m", "z", 0, seconds=9.0)]},
]
REQUIRED = [("m", "a", 0), ("m", "b", 0), ("s", "b", 0), ("s", "clean", 0), ("m", "c", 2), ("m", "a", 0)]


def test_run_time_budget_sums_the_latest_trained_runs_and_merges_overlapping_invocations():
    budget = run_time_budget(RECORDS, REQUIRED, shared_methods=("clean",))
    # a 1200 (second record) + b 500 + clean 300 (an m run serves s) + c 100; s/b only skipped or failed
    assert budget["runs_required"] == 5 and budget["runs_timed"] == 4
    assert budget["sum_run_seconds"] == 2100.0
    assert budget["missing"] == [["s", "b", 0]]
    # invocations 1-3: [0 h, 1 h] and [0.5 h, 2 h] merge to 2 h, plus 600 s
    assert budget["invocations"] == 3 and budget["wall_seconds"] == 7800.0


def test_run_time_budget_without_shared_methods_or_records():
    assert run_time_budget(RECORDS, [("s", "clean", 0)])["missing"] == [["s", "clean", 0]]
    empty = run_time_budget([], REQUIRED)
    assert empty["runs_timed"] == 0 and empty["sum_run_seconds"] == 0.0 and empty["wall_seconds"] == 0.0


def test_describe_run_time_budget_states_sum_per_job_and_missing_runs():
    text = describe_run_time_budget(run_time_budget(RECORDS, REQUIRED, ("clean",)), "the set", jobs=2)
    assert "4 of 5 runs" in text and "**35 min**" in text and "**18 min** with 2 runs" in text
    assert "2 h 10 min wall" in text and "s/b/0" in text and "target <= 6 h" in text
