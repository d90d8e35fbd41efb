"""How finely a protocol resolves paired differences: variance components of per-(seed, case) differences and the
expected half-width of the paired interval for a number of seeds and test cases.

The paired difference of two methods on test case ``c`` in seed ``s`` is modelled as a two-way crossed random-effects
layout (every seed is evaluated on the same cases)::

    d[s, c] = mu + a[s] + b[c] + e[s, c],   Var a = s2_seed, Var b = s2_case, Var e = s2_residual

``a[s]``: what the seed (the HQ draw, the noisy labels, the initialisation) does to the whole difference; ``b[c]``:
cases on which one method is better in every seed; ``e``: the seed x case interaction and noise. The mean over ``S``
seeds and ``N`` cases has variance ``s2_seed / S + s2_case / N + s2_residual / (S N)``, estimated by the ANOVA mean
squares (:func:`variance_components`; negative estimates are set to 0). The expected half-width of a 95% interval is
``z * sqrt(that)`` (:func:`expected_half_width`, ``interval="model"``).

The seeds-and-cases bootstrap (:func:`custom.benchmark.paired.seed_case_bootstrap_interval`) is conservative for a
crossed layout: resampling seeds re-draws the interaction through the seed means and resampling cases re-draws it
again through the case means, so it counts ``s2_residual / (S N)`` about three times (and the seed part with the
factor ``(S - 1) / S`` of a bootstrap over ``S`` values). Its expected half-width (``interval="bootstrap"``) is::

    z * sqrt((S-1)/S * (s2_seed + s2_residual/N) / S + (N-1)/N * (s2_case + s2_residual/S) / N
             + (S-1)(N-1)/(S N) * s2_residual / (S N))

the figure a protocol must plan with, since the report prints the bootstrap interval.

Two plainer figures are reported beside the components: the between-seed variance of the per-seed mean difference
(``Var_s mean_c d[s, c] = s2_seed + s2_residual / N``) and the within-seed case variance (``mean_s Var_c d[s, c] =
s2_case + s2_residual``, roughly).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["VarianceComponents", "variance_components", "pooled_components", "expected_half_width", "Z_95"]

Z_95 = 1.959963984540054

VarianceComponents = Mapping[str, float]


def variance_components(differences: np.ndarray) -> dict[str, float]:
    """Variance components of ``(S, N)`` paired differences (module docstring).

    Returns:
        ``{"mean", "s2_seed", "s2_case", "s2_residual", "seed_mean_variance", "within_seed_case_variance",
        "n_seeds", "n_cases"}``.

    Raises:
        ValueError: for fewer than 2 seeds or 2 cases, or a NaN difference.
    """
    d = np.asarray(differences, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] < 2 or d.shape[1] < 2:
        raise ValueError(f"variance components need >= 2 seeds and >= 2 cases, got shape {d.shape}")
    if np.isnan(d).any():
        raise ValueError("variance components need finite differences (drop cases with NaN first)")
    n_seeds, n_cases = d.shape
    grand = d.mean()
    seed_means, case_means = d.mean(axis=1), d.mean(axis=0)
    ms_seed = n_cases * ((seed_means - grand) ** 2).sum() / (n_seeds - 1)
    ms_case = n_seeds * ((case_means - grand) ** 2).sum() / (n_cases - 1)
    residual = d - seed_means[:, None] - case_means[None, :] + grand
    ms_residual = (residual**2).sum() / ((n_seeds - 1) * (n_cases - 1))
    return {
        "mean": float(grand),
        "s2_seed": float(max(0.0, (ms_seed - ms_residual) / n_cases)),
        "s2_case": float(max(0.0, (ms_case - ms_residual) / n_seeds)),
        "s2_residual": float(ms_residual),
        "seed_mean_variance": float(seed_means.var(ddof=1)),
        "within_seed_case_variance": float(d.var(axis=1, ddof=1).mean()),
        "n_seeds": int(n_seeds),
        "n_cases": int(n_cases),
    }


def pooled_components(components: Sequence[VarianceComponents]) -> dict[str, float]:
    """The mean of each variance component over several comparisons (``s2_seed``, ``s2_case``, ``s2_residual``).

    Raises:
        ValueError: for an empty sequence.
    """
    if not components:
        raise ValueError("nothing to pool")
    keys = ("s2_seed", "s2_case", "s2_residual", "seed_mean_variance", "within_seed_case_variance")
    return {k: float(sum(c[k] for c in components) / len(components)) for k in keys}


def expected_half_width(
    components: VarianceComponents, n_seeds: int, n_cases: int, z: float = Z_95, interval: str = "bootstrap"
) -> float:
    """The expected half-width of the paired interval of the mean difference over ``n_seeds`` seeds and ``n_cases``
    test cases: ``interval="model"`` for ``z * sqrt(s2_seed / S + s2_case / N + s2_residual / (S N))``,
    ``"bootstrap"`` for the seeds-and-cases bootstrap's (module docstring).

    Raises:
        ValueError: for fewer than one seed or case, or an unknown ``interval``.
    """
    if n_seeds < 1 or n_cases < 1:
        raise ValueError(f"need at least one seed and one case, got {n_seeds} and {n_cases}")
    s, n = float(n_seeds), float(n_cases)
    seed, case, residual = components["s2_seed"], components["s2_case"], components["s2_residual"]
    if interval == "model":
        variance = seed / s + case / n + residual / (s * n)
    elif interval == "bootstrap":
        variance = (
            (s - 1) / s * (seed + residual / n) / s
            + (n - 1) / n * (case + residual / s) / n
            + (s - 1) * (n - 1) / (s * n) * residual / (s * n)
        )
    else:
        raise ValueError(f"interval must be 'model' or 'bootstrap', got {interval!r}")
    return z * math.sqrt(variance)
