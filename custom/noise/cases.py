"""Which cases of a dataset get corrupted: the fraction alpha of SP-guided's noise settings."""

from __future__ import annotations

from collections.abc import Sequence

from custom.seeding import rng_for_case

__all__ = ["select_corrupted_cases"]


def select_corrupted_cases(case_ids: Sequence[str], alpha: float, seed: int) -> list[str]:
    """Choose ``round(alpha * n)`` of the ``n`` cases to corrupt, deterministically.

    Every case gets a pseudo-random key from ``rng_for_case(seed, case_id)``; the cases with the smallest keys
    are chosen. So the choice depends only on the set of ids and the seed (not on their order), a larger alpha
    selects a superset of a smaller one, and adding cases to the dataset does not reshuffle the others.
    ``round`` is Python's (halves to even, e.g. ``round(2.5) == 2``).

    Args:
        case_ids: unique case identifiers.
        alpha: fraction of cases to corrupt, in ``[0, 1]``.
        seed: integer seed.

    Returns:
        the chosen ids, sorted.

    Raises:
        ValueError: ``alpha`` outside ``[0, 1]`` or duplicate ids.
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}.")
    ids = [str(case_id) for case_id in case_ids]
    if len(set(ids)) != len(ids):
        duplicates = sorted({case_id for case_id in ids if ids.count(case_id) > 1})
        raise ValueError(f"case_ids must be unique, duplicated: {duplicates[:5]}.")
    count = round(float(alpha) * len(ids))
    ranked = sorted(ids, key=lambda case_id: (rng_for_case(seed, case_id).random(), case_id))
    return sorted(ranked[:count])
