"""The run archive: finished runs' small files out of a work folder and back into a fresh one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from custom.benchmark.results import collect_runs
from custom.benchmark.run_archive import IMPORTED_FILE, export_runs, import_runs, merge_timing
from custom.benchmark.runner import run_one

CSV_HEADER = "case_id,dice_left_atrium,dice_mean\n"


def _finished_run(work: Path, name: str, dice: dict[str, float], setting: str = "mtcl_hq25") -> Path:
    run = work / setting / name
    (run / "eval").mkdir(parents=True)
    (run / "models").mkdir()
    (run / "models" / "model.pt").write_bytes(b"weights")  # large in real runs: never archived
    rows = "".join(f"{case},{d},{d}\n" for case, d in dice.items())
    (run / "eval" / "metrics_per_case.csv").write_text(CSV_HEADER + rows)
    mean = sum(dice.values()) / len(dice)
    (run / "eval" / "metrics_summary.json").write_text(json.dumps({"dice_mean": {"mean": mean, "std": 0.0}}))
    (run / "run_stats.json").write_text(json.dumps({"iterations": 10, "seconds_per_iteration_median": 0.5}))
    (run / "validation_curve.csv").write_text("iteration,val_mean_dice\n5,0.5\n10,0.6\n")
    return run


def test_export_keeps_the_result_files_of_finished_runs_only(tmp_path):
    work, archive = tmp_path / "work", tmp_path / "archive"
    _finished_run(work, "hl_sup_s0", {"A": 0.6, "B": 0.8})
    (work / "mtcl_hq25" / "alc_s0" / "checkpoints").mkdir(parents=True)  # still training: no summary
    (work / "benchmark_timing.json").write_text(json.dumps([{"id": "x", "start": "2026-12-02T10:00"}]))
    written = export_runs(work, archive)
    assert written == [archive / "mtcl_hq25" / "hl_sup_s0"]
    assert (archive / "mtcl_hq25" / "hl_sup_s0" / "eval" / "metrics_per_case.csv").is_file()
    assert (archive / "mtcl_hq25" / "hl_sup_s0" / "validation_curve.csv").is_file()
    assert not (archive / "mtcl_hq25" / "hl_sup_s0" / "models").exists()
    assert not (archive / "mtcl_hq25" / "alc_s0").exists()
    assert [r["id"] for r in json.loads((archive / "benchmark_timing.json").read_text())] == ["x"]


def test_import_resumes_on_a_fresh_work_folder_and_a_finished_local_run_wins(tmp_path):
    first, archive, fresh = tmp_path / "first", tmp_path / "archive", tmp_path / "fresh"
    _finished_run(first, "hl_sup_s0", {"A": 0.6, "B": 0.8})
    _finished_run(first, "alc_s0", {"A": 0.7, "B": 0.9})
    export_runs(first, archive)
    _finished_run(fresh, "alc_s0", {"A": 0.1, "B": 0.1})  # trained here: kept, not replaced
    (fresh / "mtcl_hq25" / "hl_sup_s0" / "checkpoints").mkdir(parents=True)  # an interrupted attempt: replaced
    imported = import_runs(archive, fresh)
    assert imported == [fresh / "mtcl_hq25" / "hl_sup_s0"]
    assert (fresh / "mtcl_hq25" / "hl_sup_s0" / IMPORTED_FILE).is_file()
    assert not (fresh / "mtcl_hq25" / "hl_sup_s0" / "checkpoints").exists()
    runs = {r["method"]: r for r in collect_runs(fresh, ["mtcl_hq25"], ["hl_sup", "alc"])}
    assert runs["hl_sup"]["case_dice"] == {"A": 0.6, "B": 0.8}
    assert runs["alc"]["case_dice"] == {"A": 0.1, "B": 0.1}
    # exporting again writes the local run only; the imported one is already in the archive
    assert export_runs(fresh, archive) == [archive / "mtcl_hq25" / "alc_s0"]
    assert "0.1" in (archive / "mtcl_hq25" / "alc_s0" / "eval" / "metrics_per_case.csv").read_text()


def test_an_imported_run_is_not_trained_nor_audited_again(tmp_path):
    archive, work = tmp_path / "archive", tmp_path / "work"
    _finished_run(archive, "hl_sup_s0", {"A": 0.6, "B": 0.8})
    import_runs(archive, work)
    run_dir = work / "mtcl_hq25" / "hl_sup_s0"
    row = run_one("hl_sup", tmp_path / "no_data", run_dir, [], 0, audit=True)
    assert row["dice_mean"] == pytest.approx(0.7)
    assert not (run_dir / "benchmark.log").exists() and not (run_dir / "audit").exists()


def test_merge_timing_replaces_records_by_id_and_rejects_a_non_list(tmp_path):
    source, target = tmp_path / "a.json", tmp_path / "b.json"
    source.write_text(json.dumps([{"id": "2", "start": "b", "wall_seconds": 9}]))
    target.write_text(json.dumps([{"id": "1", "start": "a"}, {"id": "2", "start": "b", "wall_seconds": 1}]))
    assert merge_timing(source, target) == 1
    records = json.loads(target.read_text())
    assert [(r["id"], r.get("wall_seconds")) for r in records] == [("1", None), ("2", 9)]
    source.write_text("{}")
    with pytest.raises(ValueError, match="a.json"):
        merge_timing(source, target)


def test_merge_timing_keeps_the_further_copy_of_a_running_invocation(tmp_path):
    # the archive holds an older copy of a record that the running invocation has since extended
    archive, work = tmp_path / "archive.json", tmp_path / "work.json"
    archive.write_text(json.dumps([{"id": "r", "start": "a", "wall_seconds": 100, "runs": [{"method": "m1"}]}]))
    runs = [{"method": "m1"}, {"method": "m2"}]
    work.write_text(json.dumps([{"id": "r", "start": "a", "wall_seconds": 200, "runs": runs}]))
    assert merge_timing(archive, work) == 0  # importing does not roll the work folder's record back
    assert len(json.loads(work.read_text())[0]["runs"]) == 2
    assert merge_timing(work, archive) == 1  # exporting brings the archive forward
    assert json.loads(archive.read_text())[0]["wall_seconds"] == 200


def test_import_names_a_missing_archive(tmp_path):
    with pytest.raises(ValueError, match="run archive not found"):
        import_runs(tmp_path / "nowhere", tmp_path / "work")


def test_benchmark_script_reports_from_an_archive_on_an_empty_work_folder(tmp_path, monkeypatch, capsys):
    import importlib.util

    repo = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("benchmark_script", repo / "scripts" / "benchmark.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.chdir(tmp_path)
    archive, work = tmp_path / "archive", tmp_path / "work"
    _finished_run(archive, "hl_sup_s0", {"A": 0.6, "B": 0.8})
    _finished_run(archive, "alc_s0", {"A": 0.7, "B": 0.9})
    argv = ["--report-only", "--work-dir", str(work), "--notes", "", "--archive-dir", str(archive)]
    assert script.main(argv) == 0
    doc = json.loads((work / "benchmark_results.json").read_text())
    alc = doc["settings"]["mtcl_hq25"]["methods"]["alc"]
    assert alc["diff_to_hl_sup"]["mean"] == pytest.approx(0.1)
    (tmp_path / "file").write_text("")
    assert script.main(["--report-only", "--work-dir", str(work), "--archive-dir", str(tmp_path / "file")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("noisyseg: error: --archive-dir: ")
