"""Compare benchmark runs on the validation split, for a hyperparameter choice (never on test Dice).

    python scripts/compare_validation.py --work-dir ~/noisyseg-runs/protocol --setting sp_a0.7_b0.7 \
        --methods spguided spguided_lam065 --seeds 0

Prints, per method and seed, the mean validation Dice over the last quarter of the run's iterations (the score the
choice uses) and the best round, then the method ranked first (``custom.benchmark.validation_choice``). A missing
or unfinished run ends with one line naming its folder and exit status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", type=Path, required=True, help="the benchmark's work folder")
    parser.add_argument("--setting", required=True, help="setting folder name, e.g. sp_a0.7_b0.7")
    parser.add_argument("--methods", nargs="+", required=True, help="harness method names to compare")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds (default: 0)")
    parser.add_argument("--tail", type=float, default=0.25, help="fraction of the run the score averages")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from custom.benchmark.validation_choice import format_choice, validation_scores
    from custom.errors import PREFIX

    args = parse_args(argv)
    try:
        scores = validation_scores(args.work_dir, args.setting, args.methods, args.seeds, args.tail)
    except ValueError as exc:  # DataError is a ValueError
        print(f"{PREFIX}{exc}", file=sys.stderr)
        return 1
    print(format_choice(scores, args.tail))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
