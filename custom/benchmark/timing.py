"""The benchmark's time records: one JSON record per invocation in ``<work_dir>/benchmark_timing.json``.

A record (written by :mod:`custom.benchmark.scheduler`) holds the invocation's start, end, wall seconds, jobs, threads
per job and, per run, its status and seconds. :func:`describe_timing` states the wall time of the latest full
invocation; :func:`run_time_budget` sums the run times of a required set of runs over every invocation that trained
one of them, for a budget that no single invocation covers (runs resumed over several sessions).
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: the in-process lock still serialises this invocation's writes
    fcntl = None

from custom.benchmark.run_archive import TIMING_FILE, read_timing_file
from custom.io import write_json

__all__ = [
    "read_timing", "store_timing", "describe_timing", "run_time_budget", "describe_run_time_budget", "format_number"
]


def read_timing(work_dir: str | Path) -> list[dict[str, Any]]:
    """The invocation records of ``<work_dir>/benchmark_timing.json`` (:func:`read_timing_file`)."""
    return read_timing_file(Path(work_dir) / TIMING_FILE)


def store_timing(work: Path, record: Mapping[str, Any]) -> None:
    """Insert or replace (by ``id``) this invocation's record; a file lock guards against other invocations."""
    work.mkdir(parents=True, exist_ok=True)
    with open(work / f".{TIMING_FILE}.lock", "a") as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            records = [r for r in read_timing(work) if r.get("id") != record["id"]]
            write_json([*records, dict(record)], work / TIMING_FILE)
        finally:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_UN)


def format_number(value: Any, digits: int = 0) -> str:
    """``value`` with ``digits`` decimals if it is a float, as text otherwise, ``-`` for None or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _is_full(record: Mapping[str, Any]) -> bool:
    """A full invocation finished and made every one of its runs: trained them, or copied a run it trained itself
    (``reused``: a setting-independent method); none found finished beforehand, none failed."""
    return (
        record.get("status") == "completed"
        and record.get("runs_total", 0) > 0
        and record.get("runs_trained", 0) + record.get("runs_reused", 0) == record.get("runs_total")
    )


def _reused(record: Mapping[str, Any]) -> str:
    n = record.get("runs_reused") or 0
    return f" (and {n} copies of them for a setting-independent method)" if n else ""


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes = int(round(seconds / 60))
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def _what(record: Mapping[str, Any]) -> str:
    methods = record.get("methods")
    command = record.get("command")
    what = f"`{command}`" if command else "the harness"
    if not methods:
        listed = "every method"
    elif isinstance(methods, Mapping):  # per setting (--protocol-runs)
        listed = "methods " + "; ".join(f"{s}: {', '.join(m)}" for s, m in methods.items())
    else:
        listed = "methods " + ", ".join(methods)
    return (
        f"{what} (settings {', '.join(record.get('settings') or [])}; {listed}; "
        f"seeds {', '.join(str(s) for s in record.get('seeds') or [])})"
    )


def describe_timing(records: Sequence[Mapping[str, Any]], source: str = TIMING_FILE) -> str:
    """A markdown paragraph on the measured wall time: the latest full invocation, and any later partial one.

    Args:
        records: invocation records from :func:`read_timing`, oldest first.
        source: where the records come from (named in the text).
    """
    if not records:
        return f"**Measured time.** No timed invocation recorded (`{source}` is missing or empty)."
    full = [r for r in records if _is_full(r)]
    parts = []
    if full:
        r = full[-1]
        parts.append(
            f"**Measured time.** The latest full invocation, {_what(r)}, took **{_duration(r.get('wall_seconds'))}** "
            f"wall time ({format_number(r.get('wall_seconds'))} s, {r.get('start')} to {r.get('end')}) for "
            f"{r.get('runs_trained')} runs{_reused(r)}, {r.get('jobs')} at a time with {r.get('threads_per_job')} "
            f"thread(s) each on {r.get('cpus')} CPUs (sum of the run times "
            f"{format_number(r.get('sum_run_seconds'))} s)."
        )
    else:
        parts.append("**Measured time.** No full invocation (every run trained in one go, none failed) recorded yet.")
    # after a full invocation, a resume that found everything finished changes nothing and is not mentioned
    later = list(records) if not full else [
        r
        for r in records[records.index(full[-1]) + 1 :]
        if r.get("runs_trained") or r.get("runs_failed") or r.get("status") != "completed"
    ]
    if later:
        r = later[-1]
        what = "the same command" if full and r.get("command") == full[-1].get("command") else _what(r)
        parts.append(
            f"{'Latest' if not full else 'Since then, latest'} invocation: {what}, status {r.get('status')}, "
            f"{r.get('runs_trained')} run(s) trained{_reused(r)}, {r.get('runs_skipped')} already finished, "
            f"{r.get('runs_failed')} failed of {r.get('runs_total')}, {format_number(r.get('wall_seconds'))} s wall "
            f"time with {r.get('jobs')} job(s) x {r.get('threads_per_job')} thread(s) (started {r.get('start')})."
        )
    parts.append(f"Per-run times: `{source}`.")
    return " ".join(parts)


def _interval(record: Mapping[str, Any]) -> tuple[float, float] | None:
    """``(start, end)`` of an invocation in POSIX seconds (end = start + wall seconds where no end was written)."""
    try:
        start = datetime.datetime.fromisoformat(str(record["start"])).timestamp()
    except (KeyError, ValueError):
        return None
    if record.get("end"):
        end = datetime.datetime.fromisoformat(str(record["end"])).timestamp()
    elif record.get("wall_seconds") is not None:
        end = start + float(record["wall_seconds"])
    else:
        return None
    return start, max(start, end)


def run_time_budget(
    records: Sequence[Mapping[str, Any]],
    required: Iterable[tuple[str, str, int]],
    shared_methods: Sequence[str] = (),
) -> dict[str, Any]:
    """What a set of runs cost, over every invocation that trained one of them.

    Each required run counts with its latest ``trained`` record. The wall time is that of the union of those
    invocations' intervals (overlapping invocations counted once); it includes any other runs they trained, so it is
    an upper bound for the set, while ``sum_run_seconds`` divided by the jobs is the set's own lower bound.

    Args:
        records: invocation records, oldest first (:func:`read_timing`).
        required: ``(setting, method, seed)`` of every run in the set.
        shared_methods: methods whose runs do not depend on the setting: a trained run of any setting counts.

    Returns:
        ``runs_required``, ``runs_timed``, ``missing`` (the untimed runs, sorted), ``sum_run_seconds``,
        ``invocations`` (how many trained at least one) and ``wall_seconds`` (their union; 0 with none).
    """
    required = sorted(set((str(s), str(m), int(seed)) for s, m, seed in required))
    latest: dict[tuple[str, str, int], tuple[float, int]] = {}
    for index, record in enumerate(records):
        for run in record.get("runs") or []:
            if run.get("status") != "trained" or run.get("seconds") is None:
                continue
            setting = "*" if run.get("method") in shared_methods else str(run.get("setting"))
            latest[(setting, str(run.get("method")), int(run.get("seed", -1)))] = (float(run["seconds"]), index)
    found: list[tuple[float, int]] = []  # (seconds, index of the invocation that trained it)
    missing: list[tuple[str, str, int]] = []
    for setting, method, seed in required:
        key = ("*" if method in shared_methods else setting, method, seed)
        if key in latest:
            found.append(latest[key])
        else:
            missing.append((setting, method, seed))
    used = sorted({index for _, index in found})
    intervals = sorted(i for i in (_interval(records[k]) for k in used) if i is not None)
    wall, current = 0.0, None
    for start, end in intervals:
        if current is None or start > current[1]:
            if current is not None:
                wall += current[1] - current[0]
            current = [start, end]
        else:
            current[1] = max(current[1], end)
    if current is not None:
        wall += current[1] - current[0]
    return {
        "runs_required": len(required), "runs_timed": len(found), "missing": [list(m) for m in missing],
        "sum_run_seconds": round(sum(seconds for seconds, _ in found), 1), "invocations": len(used),
        "wall_seconds": round(wall, 1),
    }


def describe_run_time_budget(budget: Mapping[str, Any], what: str, jobs: int = 2, limit_hours: float = 6.0) -> str:
    """A markdown paragraph on :func:`run_time_budget`'s figures for ``what`` (e.g. "the method issues' runs")."""
    total = float(budget["sum_run_seconds"])
    text = (
        f"**Run time of {what}.** {budget['runs_timed']} of {budget['runs_required']} runs have a time record: "
        f"their run times sum to **{_duration(total)}**, i.e. **{_duration(total / max(1, jobs))}** with {jobs} runs "
        f"at a time (target <= {limit_hours:g} h); the {budget['invocations']} invocations that trained them took "
        f"{_duration(budget['wall_seconds'])} wall time together (overlaps counted once; they also trained other "
        "runs, so this bounds the set from above)."
    )
    if budget["missing"]:
        shown = ", ".join("/".join(str(x) for x in m) for m in budget["missing"][:8])
        more = f" and {len(budget['missing']) - 8} more" if len(budget["missing"]) > 8 else ""
        text += f" No time record (trained before timing was kept, or not run): {shown}{more}."
    return text
