"""The benchmark's scheduler: methods x noise settings x seeds, up to ``jobs`` runs at a time, resumable.

Each (setting, method, seed) run lives in ``<work_dir>/<setting>/<method>_s<seed>/`` (:mod:`custom.benchmark.runner`).
A run whose ``eval/metrics_summary.json`` exists is not repeated, so an interrupted benchmark resumes where it
stopped. This invocation's rows go to ``<work_dir>/results.json`` / ``results.csv``; the results document, the report
and the figures are built from the run folders by :mod:`custom.benchmark.report`.

Runs are launched in the order given (settings, then seeds, then methods) and up to ``jobs`` of them run at the same
time, each as its own subprocesses with ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` set to the threads per job (see
:func:`threads_per_job`). A setting's dataset is prepared once, by the first run that needs it, before any of its
runs starts. Every invocation appends a record (start, end, wall seconds, jobs, threads per job, per-run seconds)
to ``<work_dir>/benchmark_timing.json`` (:mod:`custom.benchmark.timing`).
"""

from __future__ import annotations

import datetime
import heapq
import os
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from custom.benchmark.registry import AUDIT_SOURCES, METHODS, SETTINGS, Setting
from custom.benchmark.run_archive import TIMING_FILE
from custom.benchmark.runner import (
    audit_run,
    copy_reused_run,
    log,
    prepare_setting,
    read_json,
    read_run,
    reusable_run,
    run_one,
    terminate_children,
)
from custom.benchmark.timing import format_number, store_timing
from custom.io import write_csv, write_json

__all__ = ["available_cpus", "threads_per_job", "estimate_eta", "run_benchmark"]


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask where the OS has one, else ``os.cpu_count()``."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return max(1, os.cpu_count() or 1)


def threads_per_job(
    jobs: int, threads: int | None = None, environ: Mapping[str, str] | None = None, cpus: int | None = None
) -> tuple[int, str]:
    """Intra-op threads for each of ``jobs`` concurrent runs, and where that number comes from.

    Precedence: ``threads`` (the ``--threads-per-job`` option), then ``OMP_NUM_THREADS`` when it is set in
    ``environ`` (the user chose it explicitly, e.g. to leave cores to others), then ``max(1, cpus // jobs)``.
    The chosen number is exported to every run as both ``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS``.

    Args:
        jobs: runs at the same time (>= 1).
        threads: explicit threads per job (>= 1), or None.
        environ: environment to look for ``OMP_NUM_THREADS`` in (None: ignore the environment).
        cpus: CPUs to share (default :func:`available_cpus`).

    Returns:
        ``(threads, source)`` with source one of ``"--threads-per-job"``, ``"OMP_NUM_THREADS"``, ``"cpus // jobs"``.

    Raises:
        ValueError: when ``jobs`` or ``threads`` is below 1, or ``OMP_NUM_THREADS`` is not a positive integer.
    """
    if int(jobs) < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}.")
    if threads is not None:
        if int(threads) < 1:
            raise ValueError(f"threads per job must be >= 1, got {threads}.")
        return int(threads), "--threads-per-job"
    value = (environ or {}).get("OMP_NUM_THREADS", "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"OMP_NUM_THREADS must be a positive integer, got {value!r}; unset it or fix it.")
        return int(value), "OMP_NUM_THREADS"
    return max(1, (cpus or available_cpus()) // int(jobs)), "cpus // jobs"


def estimate_eta(mean_seconds: float, running_elapsed: Sequence[float], pending: int, jobs: int) -> float:
    """Seconds until the last run ends if every run takes ``mean_seconds`` and ``jobs`` run at a time.

    Args:
        mean_seconds: mean duration of the runs finished so far.
        running_elapsed: seconds already spent by each run in progress (at most ``jobs`` of them).
        pending: runs not started yet.
        jobs: concurrent runs.

    Raises:
        ValueError: for ``jobs`` < 1, more running runs than jobs, or negative inputs.
    """
    if jobs < 1 or len(running_elapsed) > jobs or pending < 0 or mean_seconds < 0:
        raise ValueError(
            f"bad ETA inputs: mean {mean_seconds}, {len(running_elapsed)} running, {pending} pending, {jobs} jobs."
        )
    # each slot holds the time at which that job becomes free; pending runs go to the earliest free job
    slots = [max(mean_seconds - elapsed, 0.0) for elapsed in running_elapsed]
    slots += [0.0] * (jobs - len(slots))
    heapq.heapify(slots)
    for _ in range(pending):
        heapq.heappush(slots, heapq.heappop(slots) + mean_seconds)
    return max(slots) if (pending or running_elapsed) else 0.0


def _hms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


@dataclass
class _Task:
    index: int
    setting: Setting
    method: str
    seed: int
    run_dir: Path


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


class _Benchmark:
    """State of one invocation: the run queue (in launch order), the workers, results and timing (one lock)."""

    def __init__(self, tasks, work, h5_dir, profile, downsample, extra, keep_going, jobs, env, record, prepare_args=(),
                 audit_methods=None):
        self.prepare_args = list(prepare_args)
        self.audit_methods = set(AUDIT_SOURCES if audit_methods is None else audit_methods)
        self.tasks: list[_Task] = tasks
        self.work: Path = work
        self.h5_dir = h5_dir
        self.profile = profile
        self.downsample = downsample
        self.extra = extra
        self.keep_going = keep_going
        self.jobs = jobs
        self.env = env
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.next_task = 0
        self.done = 0
        self.running: dict[int, float] = {}  # task index -> perf_counter at start
        self.run_seconds: list[float] = []
        self.trained_dirs: set[Path] = set()  # run folders this invocation trained (sources it may reuse)
        self.rows: dict[int, dict[str, Any]] = {}
        self.errors: list[BaseException] = []
        self.datasets: dict[tuple[str, int], Path | BaseException] = {}
        self.dataset_locks: dict[tuple[str, int], threading.Lock] = {}
        self.t0 = time.perf_counter()
        self.record = record

    # ---- datasets: prepared once, by the first run that needs one, while the others of that setting wait
    def dataset(self, setting: Setting, seed: int) -> Path:
        key = (setting.name, seed)
        with self.lock:
            key_lock = self.dataset_locks.setdefault(key, threading.Lock())
        with key_lock:
            if key not in self.datasets:
                start = time.perf_counter()
                try:
                    self.datasets[key] = prepare_setting(
                        setting, self.h5_dir, self.work / "data", seed, self.downsample, self.env, self.prepare_args
                    )
                except RuntimeError as exc:
                    self.datasets[key] = exc
                with self.lock:
                    self.record["preparations"].append(
                        {
                            "setting": setting.name,
                            "seed": seed,
                            "seconds": round(time.perf_counter() - start, 1),
                            "ok": not isinstance(self.datasets[key], BaseException),
                        }
                    )
            result = self.datasets[key]
        if isinstance(result, BaseException):
            raise RuntimeError(f"dataset of {setting.name} (seed {seed}) not available: {result}")
        return result

    def log_progress(self) -> None:
        """One line per running run: its epoch and elapsed time (from the run's ``progress.json``)."""
        with self.lock:
            running = [(self.tasks[i], start) for i, start in self.running.items()]
        now = time.perf_counter()
        for task, start in running:
            progress = read_json(task.run_dir / "progress.json") or {}
            epoch = (
                f"epoch {progress.get('epoch')}/{progress.get('max_epochs')}"
                if progress.get("epoch")
                else "starting / evaluating"
            )
            log(f"[running] {self._name(task)}: {epoch}, {_hms(now - start)} elapsed")

    # ---- workers
    def worker(self) -> None:
        try:
            while not self.stop.is_set():
                with self.lock:
                    if self.next_task >= len(self.tasks):
                        return
                    task = self.tasks[self.next_task]
                    self.next_task += 1
                self.run(task)
        except BaseException as exc:  # a bug, not a failed run: stop launching and let the main thread raise it
            with self.lock:
                self.errors.append(exc)
            self.stop.set()

    def _name(self, task: _Task) -> str:
        return f"{task.setting.name} / {task.method} / seed {task.seed}"

    def run(self, task: _Task) -> None:
        n = len(self.tasks)
        source = reusable_run(self.work, task.setting, task.method, task.seed)
        # a copy of a run this invocation trained counts as done by it ("reused"); anything else found finished
        # was done before ("skipped"), so a resumed invocation is never reported as a full one
        status = "skipped"
        if source is not None and not task.run_dir.exists():
            copy_reused_run(source, task.run_dir, self.work)
            log(f"{self._name(task)}: reusing {source} (the method does not depend on the noise setting)")
            with self.lock:
                status = "reused" if source in self.trained_dirs else "skipped"
        if (task.run_dir / "eval" / "metrics_summary.json").is_file():
            if task.method in self.audit_methods:
                audit_run(task.method, None, task.run_dir, self.extra, self.env)
            row = read_run(task.method, task.run_dir)
            dice = format_number(row.get("dice_mean"), 4)
            what = f"reused {source.relative_to(self.work)}" if status == "reused" else "already finished"
            self.finish(task, status, None, row, f"{what} (dice {dice})")
            return
        try:
            data = self.dataset(task.setting, task.seed)
        except RuntimeError as exc:
            self.finish(task, "failed", None, None, f"FAILED: {exc}", exc)
            return
        start = time.perf_counter()
        with self.lock:
            self.running[task.index] = start
            log(
                f"[start {task.index + 1}/{n}] {self._name(task)} ({len(self.running)} running, "
                f"{self.env.get('OMP_NUM_THREADS')} thread(s) each)"
            )
        try:
            row = run_one(
                task.method, data, task.run_dir, self.profile, task.seed, self.extra, env=self.env,
                audit=task.method in self.audit_methods,
            )
        except RuntimeError as exc:
            status = "interrupted" if self.stop.is_set() else "failed"
            self.finish(task, status, time.perf_counter() - start, None, f"{status.upper()}: {exc}", exc)
            return
        seconds = time.perf_counter() - start
        dice = format_number(row.get("dice_mean"), 4)
        self.finish(task, "trained", seconds, row, f"dice {dice} in {_hms(seconds)}")

    def finish(self, task, status, seconds, row, message, error=None) -> None:
        with self.lock:
            self.running.pop(task.index, None)
            self.done += 1
            entry = {"setting": task.setting.name, "method": task.method, "seed": task.seed, "status": status}
            if seconds is not None:
                entry["seconds"] = round(seconds, 1)
                entry["started_after_seconds"] = round(time.perf_counter() - self.t0 - seconds, 1)
            self.record["runs"].append(entry)
            if status == "trained":
                self.run_seconds.append(seconds)
                self.trained_dirs.add(task.run_dir)
            if row is not None:
                row.update(
                    {
                        "setting": task.setting.name,
                        "seed": task.seed,
                        "noise_level": task.setting.noise_level,
                        "family": task.setting.family,
                    }
                )
                self.rows[task.index] = row
                rows = self.ordered_rows()
                write_json(rows, self.work / "results.json")
                write_csv(rows, self.work / "results.csv")
            elapsed = time.perf_counter() - self.t0
            progress = f"elapsed {_hms(elapsed)}"
            if self.run_seconds:
                now = time.perf_counter()
                pending = len(self.tasks) - self.next_task if not self.stop.is_set() else 0
                eta = estimate_eta(
                    sum(self.run_seconds) / len(self.run_seconds),
                    [now - t for t in self.running.values()],
                    pending,
                    self.jobs,
                )
                progress += f", ETA {_hms(eta)} (mean of {len(self.run_seconds)} trained run(s))"
            log(f"[done {self.done}/{len(self.tasks)}] {self._name(task)}: {message}; {progress}")
            self.update_record()
        if error is not None and status == "failed" and not self.keep_going:
            with self.lock:
                self.errors.append(error)
            self.stop.set()

    def ordered_rows(self) -> list[dict[str, Any]]:
        return [self.rows[i] for i in sorted(self.rows)]

    def update_record(self, end: bool = False, status: str | None = None) -> None:
        """Refresh the counters of the timing record and store it (call with ``self.lock`` held or at the end)."""
        runs = self.record["runs"]
        wall = time.perf_counter() - self.t0
        self.record.update(
            {
                "wall_seconds": round(wall, 1),
                "runs_total": len(self.tasks),
                "runs_trained": sum(r["status"] == "trained" for r in runs),
                "runs_skipped": sum(r["status"] == "skipped" for r in runs),
                "runs_reused": sum(r["status"] == "reused" for r in runs),
                "runs_failed": sum(r["status"] in ("failed", "interrupted") for r in runs),
                "sum_run_seconds": round(sum(self.run_seconds), 1),
            }
        )
        if end:
            self.record["end"] = _now()
        if status is not None:
            self.record["status"] = status
        store_timing(self.work, self.record)


def run_benchmark(
    h5_dir: str,
    work_dir: str | Path,
    settings: Sequence[str],
    methods: Sequence[str] | Mapping[str, Sequence[str]] | None,
    profile: Sequence[str],
    seeds: Sequence[int] = (0,),
    downsample: int = 2,
    extra_overrides: Mapping[str, Any] | None = None,
    keep_going: bool = True,
    jobs: int = 1,
    threads: int | None = None,
    record: Mapping[str, Any] | None = None,
    prepare_args: Sequence[str] = (),
    progress_interval: float = 60.0,
    audit_methods: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Run every (setting, method, seed) not yet done, up to ``jobs`` at a time; returns this invocation's rows.

    Runs start in the order settings x seeds x methods (methods in the order given). ``results.json`` /
    ``results.csv`` are rewritten (in that order) each time a run finishes; the timing record of this invocation
    in ``<work_dir>/benchmark_timing.json`` is stored at the start, after each run and at the end, with status
    ``running``, ``completed``, ``failed`` (a run or a dataset preparation failed) or ``interrupted``.

    Args:
        h5_dir: folder of the LA h5 files.
        work_dir: benchmark folder (datasets, run folders, results, timing).
        settings: names from :data:`SETTINGS`.
        methods: names from :data:`METHODS` in launch order (None: every method of each setting), or per setting
            (``{setting: [method, ...]}``, e.g. :data:`~custom.benchmark.registry.PROTOCOL_RUNS`; a setting
            without an entry runs none).
        profile: config overlays applied after each method's configs.
        seeds: training / noise seeds.
        downsample: LA resolution factor for the dataset preparation.
        extra_overrides: config overrides for every run.
        keep_going: when False, a failed run stops the launch of further runs (those running are finished) and
            its error is raised.
        jobs: runs at the same time.
        threads: intra-op threads per run (None: see :func:`threads_per_job`).
        record: extra fields for the timing record (e.g. the command line).
        prepare_args: more ``scripts/prepare_la.py`` arguments for every setting's dataset (the case lists).
        progress_interval: seconds between progress lines of the running runs (their epoch, from the run's
            ``progress.json``).
        audit_methods: methods whose runs are audited after evaluation (default: every method of
            :data:`AUDIT_SOURCES`; empty: none).

    Raises:
        ValueError: for an unknown setting, ``jobs`` < 1 or a bad thread count.
        RuntimeError: the first failure when ``keep_going`` is False.
    """
    for setting_name in settings:
        if setting_name not in SETTINGS:
            raise ValueError(f"unknown setting {setting_name!r}; choose from {sorted(SETTINGS)}")
    if int(jobs) < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}.")
    work = Path(work_dir)
    n_threads, source = threads_per_job(jobs, threads, os.environ)
    env = {**os.environ, "OMP_NUM_THREADS": str(n_threads), "MKL_NUM_THREADS": str(n_threads)}
    tasks: list[_Task] = []
    for setting_name in settings:
        setting = SETTINGS[setting_name]
        for seed in seeds:
            # the order given on the command line wins (run the most important methods first)
            wanted = methods.get(setting_name, ()) if isinstance(methods, Mapping) else (methods or setting.methods)
            for method in [m for m in wanted if m in setting.methods]:
                if not all(Path(c).is_file() for c in METHODS[method].configs):
                    log(f"skip {method}: config missing")
                    continue
                tasks.append(_Task(len(tasks), setting, method, seed, work / setting_name / f"{method}_s{seed}"))
    start = _now()
    timing = {
        # unique even for two invocations within the same second of one process
        "id": f"{start}-pid{os.getpid()}-{uuid.uuid4().hex[:8]}",
        "start": start,
        "end": None,
        "status": "running",
        "jobs": int(jobs),
        "threads_per_job": n_threads,
        "threads_source": source,
        "cpus": available_cpus(),
        "settings": list(settings),
        # a {setting: [method, ...]} mapping (--protocol-runs) is kept as one; list(mapping) would keep its keys
        "methods": None if methods is None else (
            {s: list(m) for s, m in methods.items()} if isinstance(methods, Mapping) else list(methods)
        ),
        "seeds": list(seeds),
        "profile": list(profile),
        **dict(record or {}),
        "preparations": [],
        "runs": [],
    }
    bench = _Benchmark(
        tasks, work, h5_dir, profile, downsample, extra_overrides, keep_going, int(jobs), env, timing, prepare_args,
        audit_methods,
    )
    log(
        f"{len(tasks)} run(s), {jobs} at a time, {n_threads} thread(s) each ({source}); "
        f"timing in {work / TIMING_FILE}"
    )
    with bench.lock:
        bench.update_record()
    workers = [
        threading.Thread(target=bench.worker, name=f"benchmark-job-{i}", daemon=True)
        for i in range(min(int(jobs), len(tasks)))
    ]
    for thread in workers:
        thread.start()
    last_progress = time.perf_counter()
    try:
        while any(thread.is_alive() for thread in workers):
            for thread in workers:
                thread.join(0.5)
            if time.perf_counter() - last_progress >= progress_interval:
                last_progress = time.perf_counter()
                bench.log_progress()
    except BaseException:  # Ctrl-C / SIGTERM: stop launching, stop the running children, record, re-raise
        bench.stop.set()
        log("interrupted: stopping the running runs (they will be repeated on resume)")
        terminate_children()
        for thread in workers:
            thread.join(30)
        with bench.lock:
            bench.update_record(end=True, status="interrupted")
        raise
    with bench.lock:
        failed = bench.errors or any(r["status"] not in ("trained", "skipped", "reused") for r in timing["runs"])
        bench.update_record(end=True, status="failed" if failed else "completed")
        rows = bench.ordered_rows()
    log(
        f"finished in {_hms(timing['wall_seconds'])}: {timing['runs_trained']} trained, {timing['runs_reused']} "
        f"reused, {timing['runs_skipped']} already done, {timing['runs_failed']} failed "
        f"(sum of run times {_hms(timing['sum_run_seconds'])})"
    )
    if bench.errors:
        raise bench.errors[0]
    return rows
