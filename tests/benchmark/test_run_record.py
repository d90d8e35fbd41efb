"""Runs carry their own record: a variant with no entry in code is reported from its archived record."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from custom.benchmark.registry import METHODS, MethodSpec
from custom.benchmark.results import build_results, collect_runs
from custom.benchmark.run_record import (
    RUN_RECORD_FILE,
    make_run_record,
    method_specs,
    read_run_record,
    report_order,
    write_run_record,
)
from custom.io import DataError
from tests.benchmark.test_benchmark_results import _run

REPO_ROOT = Path(__file__).resolve().parents[2]
# a variant the code has never heard of: its record is all the report has
VARIANT = MethodSpec(
    "alc_lam9", "ALC, lambda 9 (a test variant)", "mean_teacher", ("configs/alc_la.json",), {"lambda_noisy": 9.0},
    diff_to=("mean_teacher", "alc"),
)


def _script():
    spec = importlib.util.spec_from_file_location("benchmark_script", REPO_ROOT / "scripts" / "benchmark.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def _archive(root: Path, with_variant: bool) -> Path:
    """A tiny run archive: HL-Sup, clean, Mean Teacher and ALC (3 seeds each) with records, and the variant."""
    for seed, shift in ((0, 0.0), (1, 0.02), (2, -0.02)):
        runs = {"hl_sup": 0.6, "clean": 0.7, "mean_teacher": 0.62, "alc": 0.64}
        if with_variant:
            runs[VARIANT.key] = 0.66
        for key, base in runs.items():
            _run(root, "mtcl_hq25", key, seed, [base + shift, base + 0.1, base - 0.1, base + 0.2])
            spec = VARIANT if key == VARIANT.key else METHODS[key]
            record = make_run_record(spec, "mtcl_hq25", seed, [], {}, commit="0" * 40)
            write_run_record(root / "mtcl_hq25" / f"{key}_s{seed}", record)
    (root / "benchmark_timing.json").write_text("[]\n")
    return root


def test_a_variant_in_the_archive_is_reported_with_no_code_change(tmp_path):
    assert VARIANT.key not in METHODS
    archive = _archive(tmp_path / "archive", with_variant=True)
    report = tmp_path / "out" / "benchmarks.md"
    code = _script().main(["--report-only", "--work-dir", str(tmp_path / "work"), "--archive-dir", str(archive),
                           "--report", str(report), "--notes", ""])
    assert code == 0
    text = report.read_text()
    assert "| ALC, lambda 9 (a test variant) | 0.7100" in text  # its label, from its record
    assert "| ALC, lambda 9 (a test variant) | ALC |" in text  # its baselines, from its record
    doc = json.loads((report.parent / "benchmark_results.json").read_text())
    methods = doc["settings"]["mtcl_hq25"]["methods"]
    assert list(methods) == ["hl_sup", "clean", "mean_teacher", "alc", VARIANT.key]  # after its family's methods
    assert set(methods[VARIANT.key]["diff_to"]) == {"mean_teacher", "alc"}
    assert methods[VARIANT.key]["diff_to"]["alc"]["mean"] == pytest.approx(0.02)
    assert methods[VARIANT.key]["n_seeds"] == 3 and doc["settings"]["mtcl_hq25"]["n_test_cases"] == 4
    # the same archive without the variant: the protocol's methods report the same figures
    plain = _archive(tmp_path / "plain", with_variant=False)
    runs = collect_runs(plain, ["mtcl_hq25"])
    without = build_results(runs, n_boot=500)["settings"]["mtcl_hq25"]["methods"]
    with_variant = build_results(collect_runs(archive, ["mtcl_hq25"]), n_boot=500)["settings"]["mtcl_hq25"]["methods"]
    assert {k: v for k, v in with_variant.items() if k != VARIANT.key} == without


def test_a_run_without_a_record_falls_back_to_the_registry_then_to_its_folder_name(tmp_path):
    _run(tmp_path, "mtcl_hq25", "alc", 0, [0.6, 0.7, 0.5, 0.8])
    _run(tmp_path, "mtcl_hq25", "mystery", 0, [0.6, 0.7, 0.5, 0.8])
    specs = method_specs(collect_runs(tmp_path, ["mtcl_hq25"]))
    assert specs["alc"] == METHODS["alc"]
    assert specs["mystery"].label == "mystery" and specs["mystery"].diff_to == ()
    assert report_order(specs) == ["alc", "mystery"]


def test_run_record_round_trip_and_malformed_records(tmp_path):
    record = make_run_record(VARIANT, "sp_a0.7_b0.7", 2, ["configs/quick.json"], {"max_epochs": 2}, commit="abc")
    write_run_record(tmp_path, record)
    back = read_run_record(tmp_path)
    assert back == json.loads(json.dumps(record)) and MethodSpec.from_dict(back["method"]) == VARIANT
    assert back["seed"] == 2 and back["commit"] == "abc" and back["extra_overrides"] == {"max_epochs": 2}
    assert read_run_record(tmp_path / "none") is None
    (tmp_path / RUN_RECORD_FILE).write_text(json.dumps({**record, "method": {"key": "x"}}))
    with pytest.raises(DataError, match="missing fields"):
        read_run_record(tmp_path)
    (tmp_path / RUN_RECORD_FILE).write_text("{")
    with pytest.raises(DataError, match="not valid JSON"):
        read_run_record(tmp_path)
    with pytest.raises(ValueError, match="no config files"):
        MethodSpec("k", "K", "baseline", ())


def test_run_one_writes_the_record_before_training(tmp_path, monkeypatch):
    from custom.benchmark import runner

    seen = []
    # the record exists when the first child starts; the children "fail" so that nothing trains
    monkeypatch.setattr(runner, "run_child", lambda cmd, env=None, stdout=None: seen.append(
        (tmp_path / "mtcl_hq25" / "alc_lam9_s1" / RUN_RECORD_FILE).is_file()) or 1)
    with pytest.raises(RuntimeError, match="alc_lam9: `training` failed"):
        runner.run_one(VARIANT, tmp_path / "data", tmp_path / "mtcl_hq25" / "alc_lam9_s1", ["configs/quick.json"], 1)
    assert seen == [True]
    record = read_run_record(tmp_path / "mtcl_hq25" / "alc_lam9_s1")
    assert record["setting"] == "mtcl_hq25" and record["seed"] == 1 and record["profile"] == ["configs/quick.json"]
    assert record["method"]["overrides"] == {"lambda_noisy": 9.0}


def test_report_only_on_a_missing_work_folder_is_an_error(tmp_path, capsys):
    code = _script().main(["--report-only", "--work-dir", str(tmp_path / "missing"), "--notes", ""])
    assert code != 0
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("noisyseg: error: --work-dir: ")
    assert not (tmp_path / "missing").exists()


def test_the_converged_archive_has_a_record_for_every_run():
    archive = REPO_ROOT / "docs" / "benchmark_runs_converged"
    runs = [p for p in archive.glob("*/*_s*") if (p / "eval" / "metrics_summary.json").is_file()]
    assert runs and all(read_run_record(p) is not None for p in runs)
    for run in runs:
        record = read_run_record(run)
        assert f"{record['method']['key']}_s{record['seed']}" == run.name and record["setting"] == run.parent.name
