#!/usr/bin/env python
"""Expected 95% half-width of the benchmark's paired differences, from the variance in a run archive.

    python scripts/protocol_power.py                                   # docs/benchmark_runs_converged, mtcl_hq25
    python scripts/protocol_power.py --settings mtcl_hq25 sp_a0.7_b0.7 --seeds 3 4 5 6 8 10 --cases 20 40 46

For each method paired with the baseline (default ``h_sup``) on the seeds both ran, the script prints the variance
components of the per-(seed, case) differences (:mod:`custom.benchmark.power`): between seeds, between cases, their
interaction, plus the between-seed variance of the per-seed mean difference and the within-seed case variance. It
pools the components over the noisy-label methods (every method but the baselines and the clean upper bound) and
prints the expected half-width ``1.96 sqrt(s2_seed/S + s2_case/N + s2_residual/(S N))`` for each number of seeds S
and test cases N, for the seeds-and-cases bootstrap the report prints and (in brackets) for the variance model,
the pooled table and the worst single comparison's. Each comparison's row shows, at the archive's own size, the
model's half-width, the bootstrap's expected one and the bootstrap's actual one on those runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from custom.benchmark.paired import paired_seed_case_matrix, seed_case_bootstrap_interval  # noqa: E402
from custom.benchmark.power import expected_half_width, pooled_components, variance_components  # noqa: E402
from custom.benchmark.results import read_case_dice  # noqa: E402
from custom.errors import PREFIX  # noqa: E402

#: not pooled: the label-ignoring baselines, HL-Sup and the clean upper bound are not the differences to resolve
NOT_POOLED = ("h_sup", "ssl_mt", "hl_sup", "clean")


def archive_case_dice(archive: Path, setting: str) -> dict[str, dict[int, dict[str, float]]]:
    """``{method: {seed: {case: dice}}}`` of the finished runs of ``archive/<setting>/``."""
    out: dict[str, dict[int, dict[str, float]]] = {}
    for run_dir in sorted((archive / setting).iterdir()):
        method, _, seed = run_dir.name.rpartition("_s")
        if method and seed.isdigit() and (run_dir / "eval" / "metrics_per_case.csv").is_file():
            out.setdefault(method, {})[int(seed)] = read_case_dice(run_dir)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive-dir", default="docs/benchmark_runs_converged")
    parser.add_argument("--settings", nargs="+", default=["mtcl_hq25"])
    parser.add_argument("--baseline", default="h_sup")
    parser.add_argument("--seeds", nargs="+", type=int, default=[3, 4, 5, 6, 8, 10, 12])
    parser.add_argument("--cases", nargs="+", type=int, default=[20, 40, 46])
    parser.add_argument("--n-boot", type=int, default=4000)
    args = parser.parse_args(argv)
    archive = Path(args.archive_dir)
    for setting in args.settings:
        if not (archive / setting).is_dir():
            print(f"{PREFIX}--archive-dir: {archive / setting} not found (no runs of setting {setting})",
                  file=sys.stderr)
            return 2
    if min(args.seeds + args.cases) < 1:
        print(f"{PREFIX}--seeds/--cases: counts must be >= 1", file=sys.stderr)
        return 2
    pooled_inputs = []
    rows = []
    print(f"Paired differences to {args.baseline} ({archive}); variances in Dice^2")
    print("| setting | method | seeds x cases | mean diff | s2_seed | s2_case | s2_residual | Var(seed mean) "
          "| within-seed case var | half-width now: model / expected bootstrap / bootstrap |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for setting in args.settings:
        runs = archive_case_dice(archive, setting)
        if args.baseline not in runs:
            print(f"{PREFIX}--baseline: no {args.baseline} runs in {archive / setting}", file=sys.stderr)
            return 2
        for method in sorted(runs):
            if method == args.baseline:
                continue
            try:
                d, seeds, cases = paired_seed_case_matrix(runs[method], runs[args.baseline])
            except ValueError:
                continue
            if len(seeds) < 2 or len(cases) < 2:
                continue
            comp = variance_components(d)
            low, high = seed_case_bootstrap_interval(d, n_boot=args.n_boot)
            model = expected_half_width(comp, len(seeds), len(cases), interval="model")
            expected = expected_half_width(comp, len(seeds), len(cases))
            cells = [
                setting, method, f"{len(seeds)} x {len(cases)}", f"{comp['mean']:+.4f}",
                *(f"{comp[k]:.2e}" for k in ("s2_seed", "s2_case", "s2_residual", "seed_mean_variance",
                                             "within_seed_case_variance")),
                f"{model:.4f} / {expected:.4f} / {(high - low) / 2:.4f}",
            ]
            print("| " + " | ".join(cells) + " |")
            rows.append((setting, method, comp))
            if method not in NOT_POOLED:
                pooled_inputs.append(comp)
    if not pooled_inputs:
        print(f"{PREFIX}--archive-dir: no noisy-label method paired with {args.baseline} on >= 2 seeds",
              file=sys.stderr)
        return 2
    pooled = pooled_components(pooled_inputs)
    worst_setting, worst_method, worst = max(
        ((s, m, c) for s, m, c in rows if m not in NOT_POOLED),
        key=lambda r: expected_half_width(r[2], max(args.seeds), max(args.cases)),
    )
    print()
    print(f"Pooled over {len(pooled_inputs)} noisy-label comparisons: s2_seed {pooled['s2_seed']:.2e}, "
          f"s2_case {pooled['s2_case']:.2e}, s2_residual {pooled['s2_residual']:.2e}; worst single comparison: "
          f"{worst_method} in {worst_setting}.")
    for title, comp in (("pooled", pooled), (f"worst ({worst_method}, {worst_setting})", worst)):
        print()
        print(f"Expected 95% half-width, {title}: seeds-and-cases bootstrap (model) (rows: seeds S, columns: test "
              "cases N)")
        print("| S | " + " | ".join(f"N={n}" for n in args.cases) + " |")
        print("|---|" + "---|" * len(args.cases))
        for s in args.seeds:
            cells = [f"{expected_half_width(comp, s, n):.4f} ({expected_half_width(comp, s, n, interval='model'):.4f})"
                     for n in args.cases]
            print(f"| {s} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
