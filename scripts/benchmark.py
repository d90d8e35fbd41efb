#!/usr/bin/env python
"""One command for the noise-robustness benchmark: methods x noise settings on the LA data, resumable.

    python scripts/benchmark.py                      # the CPU protocol (cpu_converged), report in the work folder
    python scripts/benchmark.py --write-docs         # the same, and write docs/benchmarks.md (+ results json)
    python scripts/benchmark.py --profile gpu        # the papers' scale (configs/paper_la.json), for a GPU
    python scripts/benchmark.py --report-only        # rebuild the report from finished runs
    python scripts/benchmark.py --protocol-runs      # the protocol's runs (PROTOCOL_RUNS), 3 seeds
    python scripts/benchmark.py --protocol v2 --protocol-runs --work-dir runs/benchmark_v2 \
        --archive-dir docs/benchmark_runs_v2         # the second protocol (docs/protocol.md): 46 test cases, 8 seeds

Protocols (``--protocol``, custom/benchmark/registry.py ``PROTOCOLS``): v1 is the archived one (20 test cases, 4
validation cases, 3 seeds, intervals over cases); v2 has 46 test cases, 12 validation cases, 8 seeds and intervals
over seeds and cases. Their runs are never paired: a work folder or archive holds one protocol's runs, named in its
``protocol.json`` (a folder with runs and no such file holds v1 runs), and the harness refuses to mix them.

Runs are skipped when already finished, so re-running after an interruption continues where it stopped.
Seeds, commands, timings and the run's own record (``run_record.json``: the method's configs, overrides, label and
baselines, the commit) are kept beside each run (``<work-dir>/<setting>/<method>_s<seed>/``); the report reads the
methods' labels and baselines from those records, so archived variants need no entry in code.

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
import json
import shlex
import signal
import sys
import time
from pathlib import Path

from custom.benchmark.registry import AUDIT_SOURCES, METHODS, PROTOCOLS, SETTINGS
from custom.benchmark.report import write_outputs
from custom.benchmark.run_archive import export_runs, import_runs
from custom.benchmark.scheduler import available_cpus, run_benchmark
from custom.errors import PREFIX
from custom.io import write_json

PROTOCOL_FILE = "protocol.json"

# cpu_converged (the CPU protocol): cpu_la.json's data, patch, width and batch with 1400 iterations in bfloat16
# autocast (docs/benchmark_notes.md "How the profile was chosen"); cpu: the previous protocol's float32 profile (its
# results: git show 48d32fd:docs/float32/benchmarks.md)
PROFILES = {
    "cpu": ["configs/cpu_la.json"],
    "cpu_converged": ["configs/cpu_la.json", "configs/cpu_converged.json"],
    "gpu": ["configs/paper_la.json"],
    "quick": ["configs/quick.json"],
}
DEFAULT_SETTINGS = ["mtcl_hq25", "sp_a0.7_b0.7"]


def _run(args: argparse.Namespace, argv: list[str] | None, jobs: int, extra: dict) -> None:
    """Run (or resume) the benchmark invocation that the arguments describe."""
    # SIGTERM ends the run like Ctrl-C: children stopped, the timing record marked "interrupted"
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    command = shlex.join(["python", "scripts/benchmark.py", *(sys.argv[1:] if argv is None else argv)])
    protocol = PROTOCOLS[args.protocol]
    run_benchmark(
        args.h5_dir,
        args.work_dir,
        list(protocol.runs) if args.protocol_runs else args.settings,
        protocol.runs if args.protocol_runs else args.methods,
        PROFILES[args.profile],
        args.seeds,
        args.downsample,
        extra,
        jobs=jobs,
        threads=args.threads_per_job,
        record={"command": command, "profile_name": args.profile, "protocol": args.protocol},
        prepare_args=list(protocol.prepare_args) if args.lists == "protocol" else (),
        audit_methods=args.audit_methods,
    )


def folder_protocol(folder: Path) -> str | None:
    """The protocol whose runs ``folder`` holds: its ``protocol.json``, else ``"v1"`` when it holds setting folders
    (runs made before the file existed), else None (a new or empty folder)."""
    marker = folder / PROTOCOL_FILE
    if marker.is_file():
        try:
            return str(json.loads(marker.read_text())["protocol"])
        except (ValueError, KeyError, TypeError):
            return f"unreadable {marker}"
    if folder.is_dir() and any((folder / s).is_dir() for s in SETTINGS):
        return "v1"
    return None


def _check_args(args: argparse.Namespace) -> str | None:
    """The first problem of the arguments as ``<option>: <problem>`` (the error line's text), or None."""
    for item in args.override:
        if "=" not in item:
            return f"--override: expected KEY=VALUE, got {item!r}"
    if args.jobs is not None and args.jobs < 1:
        return f"--jobs: must be >= 1, got {args.jobs}"
    if args.threads_per_job is not None and args.threads_per_job < 1:
        return f"--threads-per-job: must be >= 1, got {args.threads_per_job}"
    archive = Path(args.archive_dir) if args.archive_dir is not None else None
    if archive is not None and archive.exists() and not archive.is_dir():
        return f"--archive-dir: {archive} is not a folder"
    for option, folder in (("--work-dir", Path(args.work_dir)), ("--archive-dir", archive)):
        found = folder_protocol(folder) if folder is not None else None
        if found is not None and found != args.protocol:
            return (f"{option}: {folder} holds runs of protocol {found}, not {args.protocol}; runs of two protocols "
                    f"are never paired (give another folder, or --protocol {found})")
    if args.notes and not Path(args.notes).is_file():
        return f"--notes: {args.notes} not found (give an existing markdown file, or '' for no link)"
    if args.report_only:
        if not Path(args.work_dir).is_dir() and not (archive is not None and archive.is_dir()):
            return (f"--work-dir: {args.work_dir} is not a folder of finished runs (nothing to report; give the "
                    "benchmark's work folder, or --archive-dir with a run archive)")
    elif not (Path(args.h5_dir) / "train.list").is_file():
        return f"--h5-dir: {args.h5_dir} holds no LA h5 data (train.list missing)"
    return None


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
        "--protocol-runs",
        "--method-issue-runs",
        dest="protocol_runs",
        action="store_true",
        help="run exactly the protocol's methods of each primary setting (PROTOCOL_RUNS of "
        "custom/benchmark/registry.py, longest first) instead of --settings x --methods",
    )
    parser.add_argument(
        "--profile",
        default="cpu_converged",
        choices=sorted(PROFILES),
        help="config overlays of every run: cpu_converged = the CPU protocol (1400 iterations, bfloat16 autocast; "
        "default), cpu = the float32 1000-iteration profile of the previous protocol, gpu = the papers' scale, quick = "
        "smoke",
    )
    parser.add_argument(
        "--protocol",
        choices=sorted(PROTOCOLS),
        default="v1",
        help="case lists, seeds, protocol runs and paired interval (docs/protocol.md): v1 = the archived protocol (20 "
        "test cases, 3 seeds; default), v2 = 46 test cases, 12 validation cases, 8 seeds, intervals over seeds and "
        "cases",
    )
    parser.add_argument(
        "--seeds", nargs="+", type=int, default=None, help="training and noise seeds (default: the protocol's)"
    )
    parser.add_argument(
        "--downsample", type=int, default=3, help="LA resolution factor (3 = 1.875 mm, the CPU protocol)"
    )
    parser.add_argument(
        "--lists",
        choices=["protocol", "legacy"],
        default="protocol",
        help="case lists: protocol = the --protocol's (v1: 20 test cases, test.list + extra.list::14, 4 validation, 22 "
        "training; v2: 46 test cases, 12 validation, 22 training); legacy = train.list / test.list (6 test cases, 2 "
        "validation)",
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
        help="markdown file the report links to for the protocol and the reading of the results (never copied in; "
        "empty: no link)",
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
        help="run archive (e.g. docs/benchmark_runs_converged): its runs are imported into the work folder first (a "
        "finished local run wins) and every finished local run is exported to it at the end, also after an "
        "interruption; "
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
    if args.seeds is None:
        args.seeds = list(PROTOCOLS[args.protocol].seeds)
    if args.report is None:
        args.report = "docs/benchmarks.md" if args.write_docs else str(Path(args.work_dir) / "benchmarks.md")
    problem = _check_args(args)
    if problem is not None:
        print(f"{PREFIX}{problem}", file=sys.stderr)
        return 2
    extra = dict(item.partition("=")[::2] for item in args.override)
    jobs = args.jobs if args.jobs is not None else (1 if args.profile == "gpu" else min(2, available_cpus()))
    archive = Path(args.archive_dir) if args.archive_dir is not None else None
    start = time.perf_counter()
    if args.protocol != "v1" and not args.report_only:  # name the protocol of a new folder before any run lands in it
        for folder in (Path(args.work_dir), archive):
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)
                write_json({"protocol": args.protocol}, folder / PROTOCOL_FILE)
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
    notes = Path(args.notes) if args.notes else None
    protocol = {
        "profile": args.profile,
        "profile_configs": PROFILES[args.profile],
        "downsample": args.downsample,
        "lists": args.lists,
        "prepare_args": list(PROTOCOLS[args.protocol].prepare_args) if args.lists == "protocol" else [],
        "work_dir": str(args.work_dir),
    }
    results, report = write_outputs(
        args.work_dir, Path(args.report), results_path, figures_dir, notes, protocol, args.profile, args.archive_dir,
        protocol_name=args.protocol,
    )
    n_runs = sum(e["n_seeds"] for st in results["settings"].values() for e in st["methods"].values())
    print(f"results: {results_path}")
    print(f"report: {report} ({n_runs} runs, {time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
