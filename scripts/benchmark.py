#!/usr/bin/env python
"""One command for the noise-robustness benchmark: methods x noise settings on the LA data, resumable.

    python scripts/benchmark.py                      # the CPU protocol, default settings, report in the work folder
    python scripts/benchmark.py --write-docs         # the same, and write docs/benchmarks.md (+ results json)
    python scripts/benchmark.py --profile gpu        # the papers' scale (configs/paper_la.json), for a GPU
    python scripts/benchmark.py --report-only        # rebuild the report from finished runs

Runs are skipped when already finished, so re-running after an interruption continues where it stopped.
Seeds, commands and timings are recorded beside each run (``<work-dir>/<setting>/<method>_s<seed>/``).

Parallel runs: ``--jobs N`` runs N (setting, method, seed) runs at a time (default 2 on this 2-core machine for the
CPU and quick profiles, i.e. min(2, CPUs); 1 for the GPU profile), started in the order given. Each run gets
``OMP_NUM_THREADS`` = ``MKL_NUM_THREADS`` = ``--threads-per-job`` if given, else the ``OMP_NUM_THREADS`` already set
in the environment (an explicit choice is respected), else max(1, CPUs // N). On 2 cores, two runs with one thread
each finish sooner in total than one run at a time with two threads.

Timing: each invocation that runs the benchmark (not ``--report-only``) appends its record (start, end, wall
seconds, jobs, threads per job, per-run seconds, sum of run seconds) to ``<work-dir>/benchmark_timing.json``; the
report states the wall time of the latest full invocation (every run trained in one go) and of any later one.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import time
from pathlib import Path

from custom.benchmark.harness import (
    METHODS,
    PROTOCOL_PREPARE_ARGS,
    SETTINGS,
    TIMING_FILE,
    available_cpus,
    collect_results,
    read_timing,
    run_benchmark,
    write_report,
)

PROFILES = {"cpu": ["configs/cpu_la.json"], "gpu": ["configs/paper_la.json"], "quick": ["configs/quick.json"]}
DEFAULT_SETTINGS = ["mtcl_hq25", "sp_a0.7_b0.7"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--h5-dir", default=str(Path(__file__).resolve().parents[1].parent / "shared/data/la2018_h5"))
    parser.add_argument("--work-dir", default="runs/benchmark")
    parser.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS, choices=sorted(SETTINGS))
    parser.add_argument(
        "--methods",
        nargs="+",
        default=None,
        choices=sorted(METHODS),
        help="subset of methods (default: every method of each setting)",
    )
    parser.add_argument("--profile", default="cpu", choices=sorted(PROFILES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="training and noise seeds")
    parser.add_argument(
        "--downsample", type=int, default=3, help="LA resolution factor (3 = 1.875 mm, the CPU protocol)"
    )
    parser.add_argument(
        "--lists",
        choices=["protocol", "legacy"],
        default="protocol",
        help="case lists: protocol = 20 test cases (test.list + extra.list::14), 4 validation, 22 training; "
        "legacy = train.list / test.list (6 test cases, 2 validation)",
    )
    parser.add_argument(
        "--report",
        default=None,
        help="markdown report to write (default: <work-dir>/benchmarks.md; see --write-docs)",
    )
    parser.add_argument(
        "--write-docs",
        action="store_true",
        help="write the tracked docs/benchmarks.md and docs/benchmark_results.json (figures in docs/figures/)",
    )
    parser.add_argument(
        "--notes",
        default="docs/benchmark_notes.md",
        help="markdown placed above the generated tables (how to read them, targets met or missed)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="runs at the same time (default: min(2, CPUs) for the cpu and quick profiles, 1 for gpu)",
    )
    parser.add_argument(
        "--threads-per-job",
        type=int,
        default=None,
        help="OMP/MKL threads of each run (default: $OMP_NUM_THREADS if set, else max(1, CPUs // jobs))",
    )
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument(
        "--override",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="extra config overrides for every run, e.g. max_epochs=2",
    )
    args = parser.parse_args(argv)
    if args.report is None:
        args.report = "docs/benchmarks.md" if args.write_docs else str(Path(args.work_dir) / "benchmarks.md")
    if not args.report_only and not (Path(args.h5_dir) / "train.list").is_file():
        parser.error(f"{args.h5_dir}: no LA h5 data (train.list missing)")
    extra = {}
    for item in args.override:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--override expects KEY=VALUE, got {item!r}")
        extra[key] = value
    jobs = args.jobs if args.jobs is not None else (1 if args.profile == "gpu" else min(2, available_cpus()))
    if jobs < 1:
        parser.error(f"--jobs must be >= 1, got {jobs}")
    if args.threads_per_job is not None and args.threads_per_job < 1:
        parser.error(f"--threads-per-job must be >= 1, got {args.threads_per_job}")
    start = time.perf_counter()
    if not args.report_only:
        # SIGTERM ends the run like Ctrl-C: children stopped, the timing record marked "interrupted"
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
        command = shlex.join(["python", "scripts/benchmark.py", *(sys.argv[1:] if argv is None else argv)])
        run_benchmark(
            args.h5_dir,
            args.work_dir,
            args.settings,
            args.methods,
            PROFILES[args.profile],
            args.seeds,
            args.downsample,
            extra,
            jobs=jobs,
            threads=args.threads_per_job,
            record={"command": command, "profile_name": args.profile},
            prepare_args=PROTOCOL_PREPARE_ARGS if args.lists == "protocol" else (),
        )
    rows = collect_results(args.work_dir)
    notes = Path(args.notes).read_text() if args.notes and Path(args.notes).is_file() else "# Benchmarks\n"
    header = (
        notes.rstrip()
        + "\n\n"
        + (
            f"## Results (`scripts/benchmark.py --profile {args.profile}`; {len(rows)} runs from "
            f"`{args.work_dir}`)\n\nDice etc. on the 6 LA test cases against clean labels, last checkpoint; "
            "gap recovery = (method - HL-Sup) / (clean - HL-Sup); label Dice = last epoch's training-patch "
            "labels vs clean; s/iter = median training-step time."
        )
    )
    report = write_report(
        rows,
        args.report,
        header=header,
        plots_dir=Path(args.report).parent / "figures",
        timing=read_timing(args.work_dir),
        timing_source=str(Path(args.work_dir) / TIMING_FILE),
    )
    print(f"report: {report} ({len(rows)} runs, {time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
