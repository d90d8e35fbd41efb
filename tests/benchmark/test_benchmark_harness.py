"""A tiny benchmark end to end (2 methods, 1 setting, 2 iterations each) so that the harness cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from custom.benchmark.run_archive import TIMING_FILE
from custom.benchmark.runner import _bundle_cmd
from custom.benchmark.scheduler import estimate_eta, run_benchmark, threads_per_job
from custom.benchmark.timing import describe_timing, read_timing

REPO_ROOT = Path(__file__).resolve().parents[2]


def _fake_la(folder: Path, n_train: int = 6, n_test: int = 2) -> Path:
    """Tiny LA-like h5 cases: a bright ellipsoid (label 1) in noise, z-scored like the real files."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    ids = [f"CASE{i:02d}" for i in range(n_train + n_test)]
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in (48, 40, 32)], indexing="ij")
    for i, case in enumerate(ids):
        c = np.array([24, 20, 16]) + rng.integers(-3, 4, size=3)
        label = (((zz - c[0]) / 12.0) ** 2 + ((yy - c[1]) / 9.0) ** 2 + ((xx - c[2]) / 7.0) ** 2) <= 1
        image = label * 2.0 + rng.normal(0, 0.5, label.shape)
        image = (image - image.mean()) / image.std()
        with h5py.File(folder / f"{case}.h5", "w") as f:
            f.create_dataset("image", data=image.astype(np.float32))
            f.create_dataset("label", data=label.astype(np.uint8))
    (folder / "train.list").write_text("\n".join(ids[:n_train]) + "\n")
    (folder / "test.list").write_text("\n".join(ids[n_train:]) + "\n")
    return folder


def _quick_benchmark_command(h5: Path, work: Path, report: Path, methods: list[str], *extra: str) -> list[str]:
    """``scripts/benchmark.py`` on the fake LA set: setting mtcl_hq25, quick profile, full resolution, no validation."""
    return [sys.executable, "scripts/benchmark.py", "--h5-dir", str(h5), "--work-dir", str(work), "--settings",
            "mtcl_hq25", "--methods", *methods, "--profile", "quick", "--downsample", "1", "--report", str(report),
            "--override", "val_interval=100", "--lists", "legacy", "--seeds", "0", *extra]


def test_tiny_benchmark_writes_results_report_and_resumes(tmp_path):
    h5 = _fake_la(tmp_path / "h5")
    work = tmp_path / "work"
    report = tmp_path / "docs" / "bench.md"
    cmd = _quick_benchmark_command(h5, work, report, ["h_sup", "hl_sup"], "--jobs", "1")
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    first = read_timing(work)
    assert len(first) == 1 and first[0]["status"] == "completed" and first[0]["jobs"] == 1
    assert first[0]["runs_trained"] == 2 and first[0]["threads_per_job"] >= 1
    rows = json.loads((work / "results.json").read_text())
    assert sorted(r["method"] for r in rows) == ["h_sup", "hl_sup"]
    for row in rows:
        assert 0.0 <= row["dice_mean"] <= 1.0
        assert row["iterations"] == 2 and row["sec_per_iter"] > 0
        assert row["seed"] == 0 and row["setting"] == "mtcl_hq25"
        run = work / "mtcl_hq25" / f"{row['method']}_s0"
        assert (run / "models" / "model.pt").is_file() and (run / "training_command.json").is_file()
    text = report.read_text()
    assert "| H-Sup |" in text and "| HL-Sup |" in text
    # the machine-readable document beside the report, built from the same finished runs
    doc = json.loads((report.parent / "benchmark_results.json").read_text())
    assert doc["primary_settings"] == {"mtcl": "mtcl_hq25", "sp": "sp_a0.7_b0.7"}
    setting = doc["settings"]["mtcl_hq25"]
    assert setting["n_test_cases"] == 2 and set(setting["methods"]) == {"h_sup", "hl_sup"}
    h_sup = setting["methods"]["h_sup"]
    assert h_sup["n_seeds"] == 1 and h_sup["dice_mean"] == pytest.approx(rows[0]["dice_mean"], abs=1e-6)
    assert set(h_sup["diff_to_hl_sup"]) >= {"mean", "ci_low", "ci_high", "verdict"}
    assert h_sup["noisy_label_dice"] is None and h_sup["iteration_to_step_ratio"] > 0
    assert f"{h_sup['dice_mean']:.4f}" in text
    assert (report.parent / "figures" / "paired_diff_mtcl_hq25.png").is_file()
    # resumable: a second invocation finds both runs finished and trains nothing
    stamp = (work / "mtcl_hq25" / "h_sup_s0" / "models" / "model.pt").stat().st_mtime_ns
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (work / "mtcl_hq25" / "h_sup_s0" / "models" / "model.pt").stat().st_mtime_ns == stamp
    # the resumed invocation is appended to the timing file; the report keeps citing the full (first) one
    timing = read_timing(work)
    assert [t["runs_skipped"] for t in timing] == [0, 2] and timing[1]["runs_trained"] == 0
    assert timing[1]["status"] == "completed" and timing[0] == first[0]
    text = report.read_text()
    assert f"({first[0]['wall_seconds']:.0f} s, {first[0]['start']} to" in text
    assert "Since then" not in text  # a resume that had nothing left to do is not worth a sentence


@pytest.mark.slow  # subprocess trainings: ~20-35 s; CI runs them with -m slow
def test_two_jobs_run_concurrently_and_record_timing(tmp_path):
    h5 = _fake_la(tmp_path / "h5")
    work = tmp_path / "work"
    report = tmp_path / "docs" / "bench.md"
    cmd = _quick_benchmark_command(h5, work, report, ["hl_sup", "h_sup"], "--jobs", "2", "--threads-per-job", "1")
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    # rows complete and in launch order (the order given), not in finishing order
    rows = json.loads((work / "results.json").read_text())
    assert [r["method"] for r in rows] == ["hl_sup", "h_sup"]
    assert all(0.0 <= r["dice_mean"] <= 1.0 and r["iterations"] == 2 for r in rows)
    assert (work / "results.csv").read_text().count("\n") == 3
    (record,) = json.loads((work / TIMING_FILE).read_text())
    assert record["status"] == "completed" and record["jobs"] == 2 and record["threads_per_job"] == 1
    assert record["threads_source"] == "--threads-per-job" and "--jobs 2" in record["command"]
    assert record["runs_total"] == record["runs_trained"] == 2 and len(record["preparations"]) == 1
    runs = record["runs"]
    assert record["sum_run_seconds"] == pytest.approx(sum(r["seconds"] for r in runs), abs=0.2)
    # only possible when the two runs overlapped (the wall time also includes the dataset preparation)
    assert record["wall_seconds"] - record["preparations"][0]["seconds"] < record["sum_run_seconds"]
    (a_start, a_end), (b_start, b_end) = [(r["started_after_seconds"], r["started_after_seconds"] + r["seconds"])
                                          for r in runs]
    assert a_start < b_end and b_start < a_end
    assert "[start 1/2] mtcl_hq25 / hl_sup" in proc.stdout and "[done 2/2]" in proc.stdout and "ETA" in proc.stdout
    text = report.read_text()
    assert "latest full invocation" in text and "for 2 runs, 2 at a time with 1 thread(s) each" in text


def test_failed_preparation_is_tried_once_and_recorded(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    work = tmp_path / "work"
    rows = run_benchmark(str(tmp_path / "no_h5"), work, ["mtcl_hq25"], ["h_sup", "hl_sup"], ["configs/quick.json"],
                         jobs=2, threads=1)
    assert rows == []
    (record,) = read_timing(work)
    assert record["status"] == "failed" and record["runs_failed"] == 2 and record["runs_trained"] == 0
    assert [p["ok"] for p in record["preparations"]] == [False]
    with pytest.raises(RuntimeError, match="dataset preparation failed"):
        run_benchmark(str(tmp_path / "no_h5"), work, ["mtcl_hq25"], ["h_sup"], ["configs/quick.json"],
                      keep_going=False)
    assert [r["status"] for r in read_timing(work)] == ["failed", "failed"]
    with pytest.raises(ValueError, match="jobs"):
        run_benchmark(str(tmp_path / "no_h5"), work, ["mtcl_hq25"], ["h_sup"], ["configs/quick.json"], jobs=0)


def test_threads_per_job_precedence():
    assert threads_per_job(2, cpus=2) == (1, "cpus // jobs")
    assert threads_per_job(1, cpus=2) == (2, "cpus // jobs")
    assert threads_per_job(4, cpus=2) == (1, "cpus // jobs")
    assert threads_per_job(1, environ={"OMP_NUM_THREADS": "1"}, cpus=2) == (1, "OMP_NUM_THREADS")
    assert threads_per_job(1, 3, environ={"OMP_NUM_THREADS": "1"}, cpus=2) == (3, "--threads-per-job")
    for bad in [dict(jobs=0), dict(jobs=1, threads=0), dict(jobs=1, environ={"OMP_NUM_THREADS": "two"})]:
        with pytest.raises(ValueError):
            threads_per_job(**bad)


def test_estimate_eta():
    # 2 jobs, mean 100 s: running 30 s and 80 s in; 3 pending -> free at 20, 70; then 120, 170, 220
    assert estimate_eta(100.0, [80.0, 30.0], 3, 2) == pytest.approx(220.0)
    assert estimate_eta(100.0, [150.0], 0, 2) == 0.0
    assert estimate_eta(100.0, [], 0, 2) == 0.0
    assert estimate_eta(10.0, [], 4, 1) == pytest.approx(40.0)
    with pytest.raises(ValueError):
        estimate_eta(10.0, [1.0, 2.0, 3.0], 0, 2)


def test_describe_timing_cites_latest_full_invocation():
    full = {"status": "completed", "runs_total": 4, "runs_trained": 4, "runs_skipped": 0, "runs_failed": 0,
            "wall_seconds": 7500.0, "jobs": 2, "threads_per_job": 1, "cpus": 2, "sum_run_seconds": 14000.0,
            "start": "A", "end": "B", "settings": ["mtcl_hq25"], "methods": None, "seeds": [0]}
    resumed = {**full, "runs_trained": 1, "runs_skipped": 3, "wall_seconds": 900.0, "start": "C"}
    assert "No timed invocation" in describe_timing([])
    assert "No full invocation" in describe_timing([resumed]) and "3 already finished" in describe_timing([resumed])
    text = describe_timing([full, {**full, "wall_seconds": 9000.0, "status": "interrupted"}, resumed])
    assert "**2 h 05 min**" in text and "7500 s" in text and "for 4 runs, 2 at a time" in text
    assert "Since then, latest" in text and "started C" in text and "1 run(s) trained, 3 already finished" in text
    no_op = {**resumed, "runs_trained": 0, "runs_skipped": 4}
    assert "Since then" not in describe_timing([full, no_op])
    assert "the same command" in describe_timing([{**full, "command": "x"}, {**resumed, "command": "x"}])
    # --protocol-runs records its methods per setting; the text lists them per setting
    per_setting = {**full, "settings": ["s1", "m1"], "methods": {"s1": ["alc", "jcas"], "m1": ["mtcl"]}}
    assert "methods s1: alc, jcas; m1: mtcl;" in describe_timing([per_setting])


def test_describe_timing_counts_runs_reused_within_the_invocation_as_made_by_it():
    base = {"status": "completed", "runs_total": 4, "runs_failed": 0, "wall_seconds": 3000.0, "jobs": 2,
            "threads_per_job": 1, "cpus": 2, "sum_run_seconds": 5000.0, "start": "A", "end": "B",
            "settings": ["mtcl_hq25", "sp_a0.7_b0.7"], "methods": ["h_sup"], "seeds": [0, 1]}
    reused = {**base, "runs_trained": 2, "runs_reused": 2, "runs_skipped": 0}
    text = describe_timing([reused])
    assert "latest full invocation" in text and "for 2 runs (and 2 copies of them" in text
    # runs found finished beforehand make it a resume, whatever else was reused
    assert "No full invocation" in describe_timing([{**reused, "runs_reused": 1, "runs_skipped": 1}])


def test_a_setting_independent_run_copied_from_this_invocation_is_reused_not_skipped(tmp_path):
    h5 = _fake_la(tmp_path / "h5")
    work = tmp_path / "work"
    settings = ["mtcl_hq25", "sp_a0.7_b0.7"]  # the same HQ fraction: H-Sup's run serves both
    overrides = {"val_interval": 100}
    run_benchmark(str(h5), work, settings, ["h_sup"], ["configs/quick.json"], downsample=1, extra_overrides=overrides)
    (first,) = read_timing(work)
    assert [r["status"] for r in first["runs"]] == ["trained", "reused"]
    assert (first["runs_trained"], first["runs_reused"], first["runs_skipped"]) == (1, 1, 0)
    assert "latest full invocation" in describe_timing([first])
    run_benchmark(str(h5), work, settings, ["h_sup"], ["configs/quick.json"], downsample=1, extra_overrides=overrides)
    second = read_timing(work)[1]
    assert [r["status"] for r in second["runs"]] == ["skipped", "skipped"] and second["runs_reused"] == 0


def test_read_run_takes_the_last_logged_label_dice_and_the_refinement_round(tmp_path):
    from custom.benchmark.runner import read_run

    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "metrics_summary.json").write_text(json.dumps({"dice_mean": {"mean": 0.7, "std": 0.1}}))
    # SP-guided style: the noisy column until refinement, the refined column after it
    (run / "label_quality.csv").write_text(
        "epoch,iteration,noisy_dice,refined_dice\n1,10,0.80,\n2,20,0.82,\n3,30,,0.85\n4,40,,0.86\n"
    )
    (run / "refined_labels").mkdir()
    (run / "refined_labels" / "refinement_log.csv").write_text(
        "round,epoch,case_id,dice_before,dice_after\n1,2,a,0.5,0.9\n1,2,b,0.7,0.5\n2,4,a,0.9,0.95\n2,4,b,0.5,0.65\n"
    )
    row = read_run("spguided", run)
    assert row["dice_mean"] == 0.7
    assert row["noisy_label_dice"] == 0.82 and row["refined_label_dice"] == 0.86
    assert row["volume_dice_before"] == pytest.approx(0.7) and row["volume_dice_after"] == pytest.approx(0.8)
    assert "uncorrupted_worst_loss" not in row  # no case started uncorrupted


def test_uncorrupted_worst_loss_follows_each_clean_case_from_its_first_to_its_latest_round(tmp_path):
    from custom.benchmark.results import refinement_volume_dice

    (tmp_path / "refined_labels").mkdir()
    # c and d start uncorrupted: c ends at 0.97 after two rounds (loss 0.03), d is kept (loss 0); a is corrupted
    (tmp_path / "refined_labels" / "refinement_log.csv").write_text(
        "round,epoch,case_id,dice_before,dice_after\n1,2,a,0.5,0.9\n1,2,c,1.0,0.99\n1,2,d,1.0,1.0\n"
        "2,4,a,0.9,0.95\n2,4,c,0.99,0.97\n2,4,d,1.0,1.0\n"
    )
    figures = refinement_volume_dice(tmp_path)
    assert figures["uncorrupted_cases"] == 2 and figures["uncorrupted_worst_loss"] == pytest.approx(0.03)
    assert figures["volume_dice_before"] == pytest.approx((0.9 + 0.99 + 1.0) / 3)


def test_report_goes_to_the_work_folder_unless_docs_are_asked_for(tmp_path, monkeypatch):
    import importlib.util

    monkeypatch.chdir(tmp_path)  # a docs/benchmarks.md written relative to the cwd would land here
    spec = importlib.util.spec_from_file_location("benchmark_script", REPO_ROOT / "scripts" / "benchmark.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    work = tmp_path / "work"
    work.mkdir()
    assert script.main(["--report-only", "--work-dir", str(work), "--notes", ""]) == 0
    assert (work / "benchmarks.md").is_file() and (work / "benchmark_results.json").is_file()
    assert not (tmp_path / "docs").exists()
    assert script.main(["--report-only", "--work-dir", str(work), "--notes", "", "--write-docs"]) == 0
    assert (tmp_path / "docs" / "benchmarks.md").is_file() and (tmp_path / "docs" / "benchmark_results.json").is_file()


@pytest.mark.slow  # subprocess trainings: ~20-35 s; CI runs them with -m slow
def test_sigterm_stops_the_benchmark_and_its_runs(tmp_path):
    import os
    import signal
    import time

    h5 = _fake_la(tmp_path / "h5")
    work = tmp_path / "work"
    cmd = _quick_benchmark_command(h5, work, tmp_path / "bench.md", ["hl_sup", "h_sup"], "--jobs", "1",
                                   "--override", "max_epochs=2000")
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        seen = ""
        while "[start 1/2]" not in seen and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:  # the benchmark ended before starting a run
                break
            seen += line
        assert "[start 1/2]" in seen, seen[-2000:]
        # wait until the training child has written its first epoch, so that it is really running
        progress = work / "mtcl_hq25" / "hl_sup_s0" / "progress.json"
        while not progress.is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert children, "the benchmark has no running child"
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        stopped_after = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 128 + signal.SIGTERM and stopped_after < 30
    for pid in children:  # the training runs went with it
        assert not os.path.exists(f"/proc/{pid}") or "zombie" in open(f"/proc/{pid}/status").read().lower()
    (record,) = read_timing(work)
    assert record["status"] == "interrupted"


def test_setting_independent_runs_are_reused_across_settings_with_the_same_hq_fraction(tmp_path):
    from custom.benchmark.registry import SETTINGS
    from custom.benchmark.runner import copy_reused_run, reusable_run

    work = tmp_path / "work"
    done = work / "mtcl_hq25" / "h_sup_s1"
    (done / "eval").mkdir(parents=True)
    (done / "eval" / "metrics_summary.json").write_text("{}")
    sp = SETTINGS["sp_a0.7_b0.7"]
    assert reusable_run(work, sp, "h_sup", 1) == done
    assert reusable_run(work, sp, "h_sup", 0) is None  # no finished run of that seed
    assert reusable_run(work, sp, "hl_sup", 1) is None  # the noisy labels matter
    assert reusable_run(work, sp, "clean", 1) is None  # no finished clean run yet
    assert reusable_run(work, SETTINGS["mtcl_hq10"], "h_sup", 1) is None  # another HQ fraction: another split
    copy_reused_run(done, work / "sp_a0.7_b0.7" / "h_sup_s1", work)
    record = json.loads((work / "sp_a0.7_b0.7" / "h_sup_s1" / "reused_from.json").read_text())
    assert record["reused_from"] == "mtcl_hq25/h_sup_s1"
    # a copy is never the source of another copy
    assert reusable_run(work, SETTINGS["sp_a0.5_b0.5"], "h_sup", 1) == done


def test_bundle_overrides_reach_the_bundle_as_python_literals():
    """python-fire (``monai.bundle run``) reads ``false`` as a string: booleans must go as ``False``."""
    import fire

    cmd = _bundle_cmd("training", ["a.json"], {"use_dar": False, "lam": 0.3, "token_grid": [8, 8, 8], "x": None})
    args = cmd[cmd.index("--use_dar") :]
    parsed = fire.Fire(lambda **kw: kw, command=args)
    assert parsed == {"use_dar": False, "lam": 0.3, "token_grid": [8, 8, 8], "x": None}
    assert parsed["use_dar"] is False


def test_every_method_has_a_label_existing_configs_and_known_baselines():
    from custom.benchmark.registry import AUDIT_SOURCES, FAMILIES, METHODS, PROTOCOL_RUNS, SETTINGS

    for key, spec in METHODS.items():
        assert spec.key == key and spec.label and spec.family in FAMILIES, key
        assert all((REPO_ROOT / config).is_file() for config in spec.configs), key
        assert set(spec.diff_to) <= set(METHODS), key  # the protocol's methods are paired with its methods only
    assert SETTINGS["mtcl_hq25"].methods == list(METHODS)
    assert "spguided" in SETTINGS["sp_a0.7_b0.7"].methods and "mtcl" not in SETTINGS["sp_a0.7_b0.7"].methods
    assert set(AUDIT_SOURCES) == {"alc", "mtcl", "spguided", "hl_sup"}
    for setting, methods in PROTOCOL_RUNS.items():
        assert set(methods) <= set(SETTINGS[setting].methods), setting


def test_methods_per_setting_and_the_protocol_runs_flag(tmp_path, monkeypatch):
    import importlib.util

    from custom.benchmark.registry import PROTOCOL_RUNS

    monkeypatch.chdir(REPO_ROOT)
    work = tmp_path / "work"
    per_setting = {"mtcl_hq25": ["hl_sup", "mtcl"], "sp_a0.7_b0.7": ["hl_sup", "mtcl"]}  # mtcl: not an SP method
    run_benchmark(str(tmp_path / "no_h5"), work, ["mtcl_hq25", "sp_a0.7_b0.7"], per_setting, ["configs/quick.json"])
    (record,) = read_timing(work)
    assert sorted((r["setting"], r["method"]) for r in record["runs"]) == [
        ("mtcl_hq25", "hl_sup"), ("mtcl_hq25", "mtcl"), ("sp_a0.7_b0.7", "hl_sup")
    ]

    spec = importlib.util.spec_from_file_location("benchmark_script", REPO_ROOT / "scripts" / "benchmark.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    flagged, listed_only = tmp_path / "flagged", tmp_path / "listed_only"
    listed_only.mkdir()
    (listed_only / "train.list").write_text("MISSING_CASE\n")  # listed, no .h5: each preparation fails at once
    script.main(["--protocol-runs", "--h5-dir", str(listed_only), "--work-dir", str(flagged),
                 "--profile", "quick", "--seeds", "0", "--notes", ""])
    (record,) = read_timing(flagged)
    expected = [(s, m) for s, methods in PROTOCOL_RUNS.items() for m in methods]
    assert sorted((r["setting"], r["method"]) for r in record["runs"]) == sorted(expected)  # in finishing order
    assert record["runs_failed"] == len(expected)  # no data here: every run fails at its dataset's preparation
