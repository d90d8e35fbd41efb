"""A run archive: the small result files of finished benchmark runs, kept where a work folder cannot be.

A work folder holds checkpoints and prepared data (gigabytes), so it lives outside the repository; on a machine that
does not keep it between sessions, every run would have to be redone. The archive keeps only what the report reads
(per-case metrics, curves, run statistics, label quality, the audit ranking, the commands, the run's record,
:mod:`custom.benchmark.run_record`), a few kB per run, in the
same ``<setting>/<method>_s<seed>/`` layout, so that a later invocation on a fresh machine imports them and resumes:

    archive/<setting>/<method>_s<seed>/eval/metrics_per_case.csv ...
    archive/benchmark_timing.json           # the invocation records, merged by id

An imported run is finished for the harness (its ``eval/metrics_summary.json`` exists) and is marked with
``imported_from.json``; it has no checkpoint, so the label audit cannot be redone for it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from custom.io import write_json

__all__ = [
    "ARCHIVED_FILES",
    "IMPORTED_FILE",
    "TIMING_FILE",
    "export_runs",
    "import_runs",
    "merge_timing",
    "read_timing_file",
]

# what the report and the resume need from a run folder (paths relative to it), and the small logs the method pages
# cite (SP-guided's gate decisions); absent files are skipped
ARCHIVED_FILES = (
    "eval/metrics_summary.json",
    "eval/metrics_per_case.csv",
    "run_stats.json",
    "validation_curve.csv",
    "label_quality.csv",
    "refined_labels/refinement_log.csv",
    "refined_labels/case_gate.csv",
    "refined_labels/gate_calibration.csv",
    "audit_ranking.json",
    "training_command.json",
    "evaluating_command.json",
    "reused_from.json",
    "run_record.json",
)
IMPORTED_FILE = "imported_from.json"
_FINISHED = "eval/metrics_summary.json"
# the invocation records of a work folder (written by the harness, merged by the archive)
TIMING_FILE = "benchmark_timing.json"


def _run_dirs(root: Path) -> list[Path]:
    """``<root>/<setting>/<method>_s<seed>`` folders of finished runs, sorted."""
    found = []
    for setting in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        for run_dir in sorted(p for p in setting.iterdir() if p.is_dir()):
            method, _, seed = run_dir.name.rpartition("_s")
            if method and seed.isdigit() and (run_dir / _FINISHED).is_file():
                found.append(run_dir)
    return found


def _copy_run(source: Path, target: Path) -> None:
    """Copy the :data:`ARCHIVED_FILES` of ``source`` into ``target`` through a temporary folder, so that a crash
    never leaves a half-copied run that looks finished (the summary is what marks it finished)."""
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for rel in ARCHIVED_FILES:
        if (source / rel).is_file():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / rel, tmp / rel)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)


def read_timing_file(path: str | Path) -> list[dict[str, Any]]:
    """The invocation records of a ``benchmark_timing.json`` (empty when the file does not exist).

    Raises:
        ValueError: when the file is not a JSON list (move it away to start a new one).
    """
    path = Path(path)
    if not path.is_file():
        return []
    try:
        records = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); move it away to start a new timing file") from exc
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of invocation records, got {type(records).__name__}")
    return records


def merge_timing(source: Path, target: Path) -> int:
    """Add the invocation records of ``source`` (a ``benchmark_timing.json``) to ``target``'s, a record of the same
    ``id`` replaced by the source's; returns the number of records taken from ``source``.

    Raises:
        ValueError: when either file is not a JSON list.
    """
    incoming = read_timing_file(source)
    if not incoming:
        return 0
    present = {r.get("id"): r for r in read_timing_file(target)}
    # an invocation still running is copied while it runs: of two copies of one record the further one wins (a
    # report made meanwhile must not roll the running invocation's record back to the archive's older copy)
    taken = [r for r in incoming if r.get("id") not in present or _progress(r) >= _progress(present[r.get("id")])]
    ids = {r.get("id") for r in taken}
    kept = [r for r in present.values() if r.get("id") not in ids]
    merged = sorted([*kept, *taken], key=lambda r: str(r.get("start", "")))
    write_json(merged, target)
    return len(taken)


def _progress(record: dict) -> tuple[int, float]:
    return len(record.get("runs") or []), float(record.get("wall_seconds") or 0.0)


def export_runs(work_dir: str | Path, archive_dir: str | Path) -> list[Path]:
    """Copy every finished run of ``work_dir`` that is not an import into ``archive_dir`` (replacing an archived
    copy of the same run), and merge the timing records. Returns the archived run folders written."""
    work, archive = Path(work_dir), Path(archive_dir)
    written = []
    for run_dir in _run_dirs(work):
        if (run_dir / IMPORTED_FILE).is_file():
            continue
        target = archive / run_dir.parent.name / run_dir.name
        _copy_run(run_dir, target)
        written.append(target)
    merge_timing(work / TIMING_FILE, archive / TIMING_FILE)
    return written


def import_runs(archive_dir: str | Path, work_dir: str | Path) -> list[Path]:
    """Copy every archived run into ``work_dir`` where that run is not finished there (a finished local run wins),
    mark it with ``imported_from.json``, and merge the timing records. Returns the run folders imported.

    Raises:
        ValueError: when ``archive_dir`` is not a folder.
    """
    archive, work = Path(archive_dir), Path(work_dir)
    if not archive.is_dir():
        raise ValueError(f"{archive}: run archive not found (a folder of <setting>/<method>_s<seed>/ runs)")
    imported = []
    for run_dir in _run_dirs(archive):
        target = work / run_dir.parent.name / run_dir.name
        if (target / _FINISHED).is_file():
            continue
        if target.exists():  # an unfinished local attempt: the archived result replaces it
            shutil.rmtree(target)
        _copy_run(run_dir, target)
        write_json({"imported_from": str(run_dir)}, target / IMPORTED_FILE)
        imported.append(target)
    merge_timing(archive / TIMING_FILE, work / TIMING_FILE)
    return imported
