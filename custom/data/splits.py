"""The dataset split: test, validation, HQ (clean) and LQ (noisy) training cases, deterministic per seed."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["DEFAULT_HQ_FRACTION", "check_split_options", "assign_splits"]

DEFAULT_HQ_FRACTION = 0.25


def check_split_options(
    *,
    hq_fraction: float | None,
    hq_count: int | None,
    val_count: int,
    test_count: int,
    alpha: float | None,
    downsample: int,
) -> None:
    """Validate the split / noise options shared by the CLIs and :func:`prepare_dataset`.

    Raises:
        ValueError: an option out of range, or both ``hq_fraction`` and ``hq_count`` given.
    """
    if hq_fraction is not None and hq_count is not None:
        raise ValueError("give either hq_fraction or hq_count, not both")
    if hq_fraction is not None and not 0.0 <= hq_fraction <= 1.0:
        raise ValueError(f"hq_fraction must be in [0, 1], got {hq_fraction}")
    if hq_count is not None and hq_count < 0:
        raise ValueError(f"hq_count must be >= 0, got {hq_count}")
    if val_count < 0 or test_count < 0:
        raise ValueError(f"val_count and test_count must be >= 0, got {val_count} and {test_count}")
    if alpha is not None and not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if int(downsample) != downsample or downsample < 1:
        raise ValueError(f"downsample must be an integer >= 1, got {downsample}")


def _round_half_up(value: float) -> int:
    # Python's round() rounds half to even (round(5.5) = 6 but round(4.5) = 4); counts should not depend on parity
    return int(math.floor(value + 0.5))


def assign_splits(
    case_ids: Sequence[str],
    *,
    seed: int,
    val_count: int = 2,
    test_count: int = 0,
    hq_fraction: float | None = None,
    hq_count: int | None = None,
) -> dict[str, list[str]]:
    """Deterministically split case IDs into ``test``, ``validation``, ``hq`` and ``lq``.

    The IDs are sorted, shuffled by a generator seeded with ``seed`` (so the result depends on the set of IDs and
    the seed, not on their order), then cut into consecutive slices: ``test_count`` test cases,
    ``val_count`` validation cases, the HQ cases, and the rest (LQ). The HQ count is ``hq_count`` or
    ``round(hq_fraction * remaining)`` (half up; default fraction 0.25). Each returned list keeps the input order.

    Raises:
        ValueError: bad options, duplicate IDs, or fewer than one training case left after the held-out splits.
    """
    check_split_options(
        hq_fraction=hq_fraction, hq_count=hq_count, val_count=val_count, test_count=test_count, alpha=None, downsample=1
    )
    ids = [str(i) for i in case_ids]
    if len(set(ids)) != len(ids):
        raise ValueError("case IDs must be unique")
    remaining = len(ids) - val_count - test_count
    if remaining < 1:
        raise ValueError(
            f"{len(ids)} cases cannot hold {test_count} test + {val_count} validation cases and still train"
        )
    if hq_count is None:
        hq_count = _round_half_up((DEFAULT_HQ_FRACTION if hq_fraction is None else hq_fraction) * remaining)
    if hq_count > remaining:
        raise ValueError(f"hq_count {hq_count} exceeds the {remaining} training cases")
    rng = np.random.default_rng([int(seed) % (2**32), 0x5B1])  # fixed salt: independent of the noise streams
    shuffled = [sorted(ids)[i] for i in rng.permutation(len(ids))]
    cuts = np.cumsum([test_count, val_count, hq_count])
    groups = {
        "test": set(shuffled[: cuts[0]]),
        "validation": set(shuffled[cuts[0] : cuts[1]]),
        "hq": set(shuffled[cuts[1] : cuts[2]]),
        "lq": set(shuffled[cuts[2] :]),
    }
    return {name: [i for i in ids if i in members] for name, members in groups.items()}
