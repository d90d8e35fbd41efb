#!/usr/bin/env python
"""One command for the noise-robustness benchmark: methods x noise settings on the LA data, resumable.

    python scripts/benchmark.py                      # the CPU protocol (cpu_converged), report in the work folder
    python scripts/benchmark.py --write-docs         # the same, and write docs/benchmarks.md (+ results json)
    python scripts/benchmark.py --profile gpu        # the papers' scale (configs/paper_la.json), for a GPU
    python scripts/benchmark.py --report-only        # rebuild the report from finished runs
    python scripts/benchmark.py --method-issue-runs  # the method issues' runs (METHOD_ISSUE_RUNS), 3 seeds

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

from custom.benchmark.figures import plot_dice_vs_noise, plot_learning_curves, plot_paired_differences
from custom.benchmark.harness import (
    AUDIT_SOURCES,
    METHOD_ISSUE_RUNS,
    METHOD_LABELS,
    METHODS,
    PROTOCOL_PREPARE_ARGS,
    PROTOCOL_SEEDS,
    SETTING_INDEPENDENT_METHODS,
    SETTINGS,
    TIMING_FILE,
    available_cpus,
    describe_timing,
    read_timing,
    run_benchmark,
)
from custom.benchmark.report import write_markdown
from custom.benchmark.results import PRIMARY_SETTINGS, build_results, collect_runs
from custom.benchmark.run_archive import export_runs, import_runs
from custom.benchmark.timing import describe_run_time_budget, run_time_budget
from custom.io import write_json

# cpu_converged (the CPU protocol): cpu_la.json's data, patch, width and batch with 1400 iterations in bfloat16
# autocast (docs/benchmark_notes.md "How the profile was chosen"); cpu: the superseded float32 profile (docs/float32/)
PROFILES = {
    "cpu": ["configs/cpu_la.json"],
    "cpu_converged": ["configs/cpu_la.json", "configs/cpu_converged.json"],
    "gpu": ["configs/paper_la.json"],
    "quick": ["configs/quick.json"],
}
DEFAULT_SETTINGS = ["mtcl_hq25", "sp_a0.7_b0.7"]


def write_outputs(
    work_dir: str | Path,
    report_path: Path,
    results_path: Path,
    figures_dir: Path,
    notes: str,
    protocol: dict,
    profile: str,
    runs_from: str | Path | None = None,
) -> tuple[dict, Path]:
    """Build the results document from the finished runs of ``work_dir``, then write it (JSON), the figures and the
    markdown report generated from the same document. ``runs_from``: where the report says the runs and their
    timing records are kept (the run archive they were imported from; default ``work_dir``). Returns ``(results,
    report path)``."""
    runs_from = Path(work_dir if runs_from is None else runs_from)
    settings = [s for s in SETTINGS if (Path(work_dir) / s).is_dir()]
    runs = collect_runs(work_dir, settings, list(METHODS))
    results = build_results(runs, list(METHODS), PRIMARY_SETTINGS, protocol)
    records = read_timing(work_dir)
    required = [(s, m, seed) for s, methods in METHOD_ISSUE_RUNS.items() for m in methods for seed in PROTOCOL_SEEDS]
    results["run_time_budget"] = {
        "method_issues": {
            "runs": {s: list(m) for s, m in METHOD_ISSUE_RUNS.items()}, "seeds": list(PROTOCOL_SEEDS),
            **run_time_budget(records, required, SETTING_INDEPENDENT_METHODS),
        }
    }
    write_json(results, results_path)
    figures: dict[str, list[Path]] = {}
    for name in results["settings"]:
        made = [
            plot_learning_curves(  # the protocol's rows; one-seed tuning and diagnostic runs are in the tables
                runs, name, list(METHODS), METHOD_LABELS, figures_dir / f"learning_curves_{name}.png",
                min_seeds=len(PROTOCOL_SEEDS),
            ),
            plot_paired_differences(
                results["settings"][name], name, METHOD_LABELS, figures_dir / f"paired_diff_{name}.png"
            ),
        ]
        figures[name] = [p for p in made if p is not None]
    for family, xlabel in (("sp", "SP noise level (alpha * beta)"), ("mtcl", "fraction of LQ cases")):
        levels = [(s.name, s.noise_level) for s in SETTINGS.values() if s.family == family]
        made = plot_dice_vs_noise(
            results, levels, list(METHODS), METHOD_LABELS, figures_dir / f"dice_vs_noise_{family}.png", xlabel
        )
        if made is not None:
            figures.setdefault("", []).append(made)
    header = (
        notes.rstrip()
        + "\n\n"
        + f"## Results (`scripts/benchmark.py --profile {profile}`, runs in `{runs_from}`)\n\n"
        + "Test Dice against clean labels, last checkpoint (never selected on test), mean +- std over seeds; "
        "paired diff = mean over test cases of (method - baseline), each case averaged over the common seeds, with a "
        "95% percentile bootstrap interval over cases (10000 resamples): *better*/*worse* only when the interval "
        "excludes 0, else *not resolved*; (k/n) = cases where the method is better. Gap recovery = (method - HL-Sup) "
        "/ (clean - HL-Sup). Label Dice = last epoch's training-patch labels vs clean. s/iter = median training "
        "step; iteration / step = median iteration with data loading over median step, in the same run. "
        f"Machine-readable: `{results_path.name}` beside this file."
    )
    timing = describe_timing(records, str(runs_from / TIMING_FILE))
    timing += "\n\n" + describe_run_time_budget(
        results["run_time_budget"]["method_issues"], "the method issues' runs (3 seeds; `METHOD_ISSUE_RUNS`)"
    )
    report = write_markdown(results, report_path, METHOD_LABELS, header, timing, figures)
    return results, report


def _run(args: argparse.Namespace, argv: list[str] | None, jobs: int, extra: dict) -> None:
    """Run (or resume) the benchmark invocation that the arguments describe."""
    # SIGTERM ends the run like Ctrl-C: children stopped, the timing record marked "interrupted"
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    command = shlex.join(["python", "scripts/benchmark.py", *(sys.argv[1:] if argv is None else argv)])
    run_benchmark(
        args.h5_dir,
        args.work_dir,
        list(METHOD_ISSUE_RUNS) if args.method_issue_runs else args.settings,
        METHOD_ISSUE_RUNS if args.method_issue_runs else args.methods,
        PROFILES[args.profile],
        args.seeds,
        args.downsample,
        extra,
        jobs=jobs,
        threads=args.threads_per_job,
        record={"command": command, "profile_name": args.profile},
        prepare_args=PROTOCOL_PREPARE_ARGS if args.lists == "protocol" else (),
        audit_methods=args.audit_methods,
    )


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
    parser.add_argument(
        "--method-issue-runs",
        action="store_true",
        help="run exactly the methods each primary setting needs for the method issues (METHOD_ISSUE_RUNS of "
        "custom/benchmark/harness.py, longest first) instead of --settings x --methods",
    )
    parser.add_argument(
        "--profile",
        default="cpu_converged",
        choices=sorted(PROFILES),
        help="config overlays of every run: cpu_converged = the CPU protocol (1400 iterations, bfloat16 autocast; "
        "default), cpu = the float32 1000-iteration profile of docs/float32/, gpu = the papers' scale, quick = smoke",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=list(PROTOCOL_SEEDS), help="training and noise seeds")
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
        "--archive-dir",
        default=None,
        help="run archive (e.g. docs/benchmark_runs): its runs are imported into the work folder first (a finished "
        "local run wins) and every finished local run is exported to it at the end, also after an interruption; "
        "lets a fresh machine resume an invocation (custom/benchmark/run_archive.py)",
    )
    parser.add_argument(
        "--audit-methods", nargs="*", default=None, choices=sorted(AUDIT_SOURCES),
        help="methods whose runs get the label audit after evaluation (default: all of them; none when given empty)",
    )
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
    archive = Path(args.archive_dir) if args.archive_dir is not None else None
    if archive is not None and archive.exists() and not archive.is_dir():
        parser.error(f"--archive-dir {archive}: not a folder")
    start = time.perf_counter()
    if archive is not None and archive.is_dir():  # a new archive is made by the export below
        imported = import_runs(args.archive_dir, args.work_dir)
        print(f"imported {len(imported)} run(s) from {args.archive_dir}")
    try:
        if not args.report_only:
            _run(args, argv, jobs, extra)
    finally:
        if args.archive_dir is not None:
            exported = export_runs(args.work_dir, args.archive_dir)
            print(f"archived {len(exported)} run(s) in {args.archive_dir}")
    results_path = Path(args.report).with_name("benchmark_results.json")
    figures_dir = Path(args.report).parent / "figures"
    notes = Path(args.notes).read_text() if args.notes and Path(args.notes).is_file() else "# Benchmarks\n"
    protocol = {
        "profile": args.profile,
        "profile_configs": PROFILES[args.profile],
        "downsample": args.downsample,
        "lists": args.lists,
        "prepare_args": PROTOCOL_PREPARE_ARGS if args.lists == "protocol" else [],
        "work_dir": str(args.work_dir),
    }
    results, report = write_outputs(
        args.work_dir, Path(args.report), results_path, figures_dir, notes, protocol, args.profile, args.archive_dir
    )
    n_runs = sum(e["n_seeds"] for st in results["settings"].values() for e in st["methods"].values())
    print(f"results: {results_path}")
    print(f"report: {report} ({n_runs} runs, {time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
