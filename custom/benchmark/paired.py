"""Statistics of the benchmark protocol: mean +- std over seeds, and paired per-case differences to a baseline.

The protocol trains every (setting, method) with the same seeds on the same test cases. A method's difference to a
baseline is paired twice: per seed (the seed fixes the noisy labels, the split and the initialisation of both runs)
and per case. For each test case the differences ``dice_method - dice_baseline`` are averaged over the seeds both
methods finished; the reported difference is the mean of these per-case values, with a 95% **percentile bootstrap
interval over cases** (the cases are the sample; resampling them with replacement, ``n_boot`` times, seeded). An
interval that contains 0 means the benchmark does not resolve the difference (:func:`verdict`).

That interval treats the seeds as fixed: it does not see that another draw of the HQ cases (the seed) moves a
baseline such as H-Sup by more than the differences being measured. :func:`seed_case_bootstrap_interval` (the
``"seeds_and_cases"`` interval of :func:`compare_to_baseline`) resamples the seeds too: each resample draws ``S``
seeds with replacement, then ``N`` cases with replacement, and averages the per-(seed, case) paired differences of the
drawn seeds over the drawn cases. Every seed is evaluated on the same test cases (seeds and cases are crossed, not
nested), so the drawn cases are the same in each drawn seed: a case on which a method is better in every seed counts
as one case, not as ``S`` independent ones. The interval then carries the three parts of the variance of the mean
difference: between seeds, between cases, and their interaction (:mod:`custom.benchmark.power`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "seed_mean_std",
    "paired_case_differences",
    "bootstrap_mean_interval",
    "paired_seed_case_matrix",
    "seed_case_bootstrap_interval",
    "INTERVALS",
    "compare_to_baseline",
    "verdict",
]

CaseDice = Mapping[int, Mapping[str, float]]  # seed -> case id -> Dice


def seed_mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof 1) of per-seed figures; std is None for fewer than 2 values.

    NaN values are dropped first. Returns ``(None, None)`` when nothing is left.
    """
    kept = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not kept:
        return None, None
    mean = sum(kept) / len(kept)
    if len(kept) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in kept) / (len(kept) - 1))


def paired_case_differences(method: CaseDice, baseline: CaseDice) -> tuple[dict[str, float], list[int]]:
    """Per test case, the mean over the common seeds of ``method - baseline``.

    Args:
        method: ``{seed: {case_id: dice}}`` of the method.
        baseline: the same for the baseline.

    Returns:
        ``({case_id: mean difference}, common seeds)``. A case enters only when both have it for every common seed;
        NaN Dice values (a case that failed to score) drop that case.

    Raises:
        ValueError: when the two share no seed, or the common seeds do not share the same case set.
    """
    seeds = sorted(set(method) & set(baseline))
    if not seeds:
        raise ValueError(f"no common seed: method has {sorted(method)}, baseline has {sorted(baseline)}")
    case_sets = [set(method[s]) & set(baseline[s]) for s in seeds]
    cases = set.intersection(*case_sets)
    if any(c != cases for c in case_sets):
        raise ValueError("the common seeds were evaluated on different test cases; the pairing needs the same ones")
    out: dict[str, float] = {}
    for case in sorted(cases):
        diffs = [float(method[s][case]) - float(baseline[s][case]) for s in seeds]
        if any(math.isnan(d) for d in diffs):
            continue
        out[case] = sum(diffs) / len(diffs)
    return out, seeds


def paired_seed_case_matrix(method: CaseDice, baseline: CaseDice) -> tuple[np.ndarray, list[int], list[str]]:
    """The paired differences ``method - baseline`` per common seed and case.

    Returns:
        ``(d, seeds, cases)`` with ``d[i, j]`` the difference on ``cases[j]`` in ``seeds[i]``, shape ``(S, N)``. A
        case with a NaN difference in any seed is left out (as in :func:`paired_case_differences`).

    Raises:
        ValueError: as :func:`paired_case_differences`.
    """
    diffs, seeds = paired_case_differences(method, baseline)
    cases = sorted(diffs)
    d = np.array([[float(method[s][c]) - float(baseline[s][c]) for c in cases] for s in seeds], dtype=np.float64)
    return d.reshape(len(seeds), len(cases)), seeds, cases


def seed_case_bootstrap_interval(
    differences: np.ndarray, confidence: float = 0.95, n_boot: int = 10000, seed: int = 0
) -> tuple[float, float]:
    """Percentile interval of the mean paired difference, resampling the seeds and then the cases (module docstring).

    Args:
        differences: ``(S, N)`` paired differences per seed and case (:func:`paired_seed_case_matrix`).
        confidence: coverage, in (0, 1).
        n_boot: resamples.
        seed: of the resampling generator.

    Returns:
        ``(low, high)``. With one seed this is :func:`bootstrap_mean_interval` of that seed's differences.

    Raises:
        ValueError: for an empty or non-2D array, a confidence outside (0, 1) or ``n_boot`` < 1.
    """
    d = np.asarray(differences, dtype=np.float64)
    if d.ndim != 2 or d.size == 0:
        raise ValueError(f"expected a non-empty (seeds, cases) array, got shape {d.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    n_seeds, n_cases = d.shape
    rng = np.random.default_rng(seed)
    means = np.empty(int(n_boot))
    chunk = max(1, 2_000_000 // (n_seeds * n_cases))  # bounds the (chunk, S, N) gather
    for start in range(0, int(n_boot), chunk):
        size = min(chunk, int(n_boot) - start)
        seeds = rng.integers(0, n_seeds, size=(size, n_seeds))
        cases = rng.integers(0, n_cases, size=(size, n_cases))
        means[start : start + size] = d[seeds[:, :, None], cases[:, None, :]].mean(axis=(1, 2))
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(low), float(high)


def bootstrap_mean_interval(
    values: Sequence[float], confidence: float = 0.95, n_boot: int = 10000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (resampling them with replacement).

    Args:
        values: the sample (at least one value).
        confidence: coverage, in (0, 1).
        n_boot: resamples.
        seed: of the resampling generator (the interval is reproducible).

    Returns:
        ``(low, high)``: the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of the resampled means.

    Raises:
        ValueError: for an empty sample, a confidence outside (0, 1) or ``n_boot`` < 1.
    """
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        raise ValueError("bootstrap needs at least one value")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, data.size, size=(int(n_boot), data.size))
    means = data[picks].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(low), float(high)


def verdict(low: float, high: float) -> str:
    """``"better"`` / ``"worse"`` when the interval excludes 0 on one side, else ``"not resolved"``."""
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return "not resolved"


#: the paired intervals: over cases (the seeds fixed; the previous protocol's), over seeds and cases
INTERVALS = ("cases", "seeds_and_cases")


def compare_to_baseline(
    method: CaseDice,
    baseline: CaseDice,
    confidence: float = 0.95,
    n_boot: int = 10000,
    seed: int = 0,
    interval: str = "cases",
) -> dict[str, Any] | None:
    """Paired difference ``method - baseline``: mean, bootstrap interval, verdict, wins, cases and seeds.

    Args:
        interval: ``"cases"`` (:func:`bootstrap_mean_interval` of the per-case differences averaged over the seeds)
            or ``"seeds_and_cases"`` (:func:`seed_case_bootstrap_interval`). The mean is the same for both.

    Returns None when the two share no seed (nothing to pair).

    Raises:
        ValueError: for an unknown ``interval``.
    """
    if interval not in INTERVALS:
        raise ValueError(f"interval must be one of {INTERVALS}, got {interval!r}")
    try:
        diffs, seeds = paired_case_differences(method, baseline)
    except ValueError:
        return None
    if not diffs:
        return None
    values = list(diffs.values())
    if interval == "cases":
        low, high = bootstrap_mean_interval(values, confidence, n_boot, seed)
        described = f"{int(round(confidence * 100))}% percentile bootstrap over cases ({n_boot} resamples)"
    else:
        low, high = seed_case_bootstrap_interval(paired_seed_case_matrix(method, baseline)[0], confidence, n_boot, seed)
        described = (f"{int(round(confidence * 100))}% percentile bootstrap over seeds, then cases "
                     f"({n_boot} resamples)")
    return {
        "mean": sum(values) / len(values),
        "ci_low": low,
        "ci_high": high,
        "verdict": verdict(low, high),
        "cases_better": sum(v > 0 for v in values),
        "n_cases": len(values),
        "seeds": seeds,
        "interval": described,
    }
