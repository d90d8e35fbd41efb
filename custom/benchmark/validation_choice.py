"""Hyperparameter choices on the validation split: the converged validation Dice of competing benchmark runs.

A choice between two values of an option (a method and its variant, e.g. ``spguided``
with ``lam`` 0.3 and ``spguided_lam065`` with 0.65) compares the runs' validation curves only, never their test
Dice. A run's score is the mean validation Dice over the rounds in the last quarter of its iterations
(:func:`custom.handlers.validation_curve.tail_mean`), the window of the protocol's plateau check: on a 4-case
validation split a single best round is mostly noise. The best round is listed beside it.

Example::

    scores = validation_scores("~/noisyseg-runs/protocol", "sp_a0.7_b0.7", ["spguided", "spguided_lam065"], [0])
    print(format_choice(scores))
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from custom.handlers.validation_curve import CURVE_FILE, read_validation_curve, tail_mean
from custom.io import DataError

__all__ = ["TAIL", "run_validation_score", "validation_scores", "format_choice"]

TAIL = 0.25


def run_validation_score(run_dir: str | Path, tail: float = TAIL) -> dict[str, Any]:
    """The validation figures of one finished run folder.

    Args:
        run_dir: a harness run folder (``validation_curve.csv`` and ``run_stats.json``).
        tail: fraction of the run at its end that the score averages.

    Returns:
        ``{"tail_mean": float, "best": float, "best_iteration": int, "rounds": int}``.

    Raises:
        DataError: when the curve or the run's iteration count is missing, or no round lies in the window.
    """
    run_dir = Path(run_dir).expanduser()
    curve_file, stats_file = run_dir / CURVE_FILE, run_dir / "run_stats.json"
    curve = [r for r in read_validation_curve(curve_file) if not math.isnan(r.get("val_mean_dice", math.nan))]
    if not curve:
        raise DataError(curve_file, "no validation rounds (is the run finished?)")
    try:
        iterations = float(json.loads(stats_file.read_text())["total_iterations"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(stats_file, f"cannot read total_iterations ({type(exc).__name__}: {exc})") from exc
    score = tail_mean(curve, iterations, tail=tail)
    if score is None:
        raise DataError(curve_file, f"no validation round in the last {tail:.0%} of {iterations:.0f} iterations")
    best = max(curve, key=lambda r: r["val_mean_dice"])
    return {"tail_mean": score, "best": best["val_mean_dice"], "best_iteration": int(best["iteration"]),
            "rounds": len(curve)}


def validation_scores(
    work_dir: str | Path, setting: str, methods: Sequence[str], seeds: Sequence[int], tail: float = TAIL
) -> dict[str, dict[str, Any]]:
    """Validation figures of ``<work_dir>/<setting>/<method>_s<seed>`` for every method and seed.

    Returns:
        ``{method: {"seeds": {seed: run_validation_score(...)}, "tail_mean": mean over seeds}}``.

    Raises:
        ValueError: for an empty method or seed list.
        DataError: for a missing or unfinished run (the first one, named).
    """
    if not methods or not seeds:
        raise ValueError("give at least one method and one seed")
    root = Path(work_dir).expanduser() / setting
    scores: dict[str, dict[str, Any]] = {}
    for method in methods:
        per_seed = {int(s): run_validation_score(root / f"{method}_s{int(s)}", tail) for s in seeds}
        mean = sum(v["tail_mean"] for v in per_seed.values()) / len(per_seed)
        scores[method] = {"seeds": per_seed, "tail_mean": mean}
    return scores


def format_choice(scores: dict[str, dict[str, Any]], tail: float = TAIL) -> str:
    """A markdown table of :func:`validation_scores` and the line naming the method ranked first."""
    seeds = sorted({s for v in scores.values() for s in v["seeds"]})
    head = "| method | " + " | ".join(f"seed {s}: last {tail:.0%} / best" for s in seeds) + " | mean of last " \
        f"{tail:.0%} |"
    lines = [head, "|---" * (len(seeds) + 2) + "|"]
    for method, v in scores.items():
        cells = [f"{v['seeds'][s]['tail_mean']:.4f} / {v['seeds'][s]['best']:.4f}" if s in v["seeds"] else "-"
                 for s in seeds]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {v['tail_mean']:.4f} |")
    ranked = sorted(scores, key=lambda m: scores[m]["tail_mean"], reverse=True)
    if len(ranked) > 1:
        margin = scores[ranked[0]]["tail_mean"] - scores[ranked[1]]["tail_mean"]
        lines.append(f"\nhighest validation Dice (mean of the last {tail:.0%} of rounds): {ranked[0]} "
                     f"(+{margin:.4f} over {ranked[1]})")
    return "\n".join(lines)
