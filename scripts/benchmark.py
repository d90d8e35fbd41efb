#!/usr/bin/env python
"""One command for the noise-robustness benchmark: methods x noise settings on the LA data, resumable.

    python scripts/benchmark.py                      # the CPU profile, default settings, writes docs/benchmarks.md
    python scripts/benchmark.py --profile gpu        # the papers' scale (configs/paper_la.json), for a GPU
    python scripts/benchmark.py --report-only        # rebuild the report from finished runs

Runs are skipped when already finished, so re-running after an interruption continues where it stopped.
Seeds, commands and timings are recorded beside each run (``<work-dir>/<setting>/<method>_s<seed>/``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from custom.benchmark.harness import METHODS, SETTINGS, collect_results, run_benchmark, write_report

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
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--downsample", type=int, default=2, help="LA resolution factor (2 = 1.25 mm, the CPU profile)")
    parser.add_argument("--report", default="docs/benchmarks.md")
    parser.add_argument(
        "--notes",
        default="docs/benchmark_notes.md",
        help="markdown placed above the generated tables (how to read them, targets met or missed)",
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
    if not args.report_only and not (Path(args.h5_dir) / "train.list").is_file():
        parser.error(f"{args.h5_dir}: no LA h5 data (train.list missing)")
    extra = {}
    for item in args.override:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--override expects KEY=VALUE, got {item!r}")
        extra[key] = value
    start = time.perf_counter()
    if not args.report_only:
        run_benchmark(
            args.h5_dir,
            args.work_dir,
            args.settings,
            args.methods,
            PROFILES[args.profile],
            args.seeds,
            args.downsample,
            extra,
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
    report = write_report(rows, args.report, header=header, plots_dir=Path(args.report).parent / "figures")
    print(f"report: {report} ({len(rows)} runs, {time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
