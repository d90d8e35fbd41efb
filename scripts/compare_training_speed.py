"""Seconds per iteration of real training runs of two or more checkouts (or option sets), alternated in one invocation.

Each variant is a checkout folder (its own ``custom`` package and configs: a ``git worktree`` of another commit) plus
extra command-line overrides. The variants run in turn, round after round (A B A B ...), so that load changes on a
shared machine hit all of them alike; each run is a real ``python -m monai.bundle run training`` of a short schedule,
and its ``run_stats.json`` (written by the training's run-statistics handler) gives the median seconds of a training
step. Printed: every variant's median over rounds and its ratio to the first variant.

Example (the code before a change against today's, on the CPU protocol's supervised run)::

    git worktree add /tmp/before <commit>
    python scripts/compare_training_speed.py --dataset-dir data/la_mtcl_ds3 --work-dir /tmp/speed \\
        --variant before=/tmp/before --variant today=. --variant today_contiguous=.:--memory_format,contiguous \\
        --iterations 10 --rounds 2 --threads 1

``--variant NAME=CHECKOUT[:OVERRIDE,VALUE,...]``; the configs default to the CPU protocol's supervised HL-Sup run
(``configs/supervised_la.json`` + ``cpu_la.json`` + ``cpu_converged.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

DEFAULT_CONFIGS = ["configs/supervised_la.json", "configs/cpu_la.json", "configs/cpu_converged.json"]


def parse_variant(text: str) -> tuple[str, Path, list[str]]:
    """``NAME=CHECKOUT[:ARG,ARG,...]`` -> (name, checkout folder, extra arguments)."""
    name, sep, rest = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--variant: expected NAME=CHECKOUT[:ARG,...], got {text!r}")
    checkout, _, extra = rest.partition(":")
    folder = Path(checkout).resolve()
    if not (folder / "custom").is_dir() or not (folder / "configs").is_dir():
        raise argparse.ArgumentTypeError(f"--variant: {folder} is not a checkout (no custom/ and configs/)")
    return name, folder, [a for a in extra.split(",") if a]


def run_once(name: str, checkout: Path, extra: list[str], args: argparse.Namespace, round_index: int) -> float:
    """One short training run of a variant; returns its median seconds per iteration (``run_stats.json``)."""
    output = Path(args.work_dir).resolve() / f"{name}_r{round_index}"
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "PYTHONPATH": str(checkout)}
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", json.dumps(args.configs),
           "--dataset_dir", str(Path(args.dataset_dir).resolve()), "--output_dir", str(output),
           "--max_epochs", "1", "--epoch_length", str(args.iterations), "--seed", "0", *extra]
    shutil.rmtree(output, ignore_errors=True)  # a fresh run folder each time (this script's own work folder)
    log = Path(args.work_dir).resolve() / f"{name}_r{round_index}.log"
    with open(log, "w") as stream:
        code = subprocess.run(cmd, cwd=checkout, env=env, stdout=stream, stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise SystemExit(f"noisyseg: error: --variant {name}: training failed (exit {code}), see {log}")
    return float(json.loads((output / "run_stats.json").read_text())["seconds_per_iteration_median"])


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", action="append", type=parse_variant, required=True)
    parser.add_argument("--dataset-dir", required=True)
    parser.add_argument("--work-dir", required=True)
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS)
    parser.add_argument("--iterations", type=int, default=10, help="training iterations per run (one epoch)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every run")
    args = parser.parse_args(argv)
    if args.iterations < 3 or args.rounds < 1 or args.threads < 1:
        parser.error("--iterations must be >= 3, --rounds and --threads >= 1")
    if not (Path(args.dataset_dir) / "datalist.json").is_file():
        parser.error(f"--dataset-dir: no datalist.json in {args.dataset_dir}")
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    print(f"command: python scripts/compare_training_speed.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(f"configs {args.configs}, {args.iterations} iterations per run, {args.rounds} rounds, "
          f"{args.threads} thread(s), load average before {os.getloadavg()[0]:.2f}")
    times: dict[str, list[float]] = {name: [] for name, _, _ in args.variant}
    for round_index in range(args.rounds):
        for name, checkout, extra in args.variant:
            seconds = run_once(name, checkout, extra, args, round_index)
            times[name].append(seconds)
            print(f"round {round_index + 1}: {name:<20} {seconds:.3f} s/it", flush=True)
    medians = {name: statistics.median(values) for name, values in times.items()}
    first = args.variant[0][0]
    print(f"\n{'variant':<20} {'median s/it':>12} {'ratio to ' + first:>20}")
    for name, value in medians.items():
        print(f"{name:<20} {value:>12.3f} {value / medians[first]:>20.3f}")
    print(f"load average after {os.getloadavg()[0]:.2f}")
    return medians


if __name__ == "__main__":
    main()
