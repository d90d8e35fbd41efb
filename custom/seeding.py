"""Reproducible random streams: one generator per (seed, case id), independent of processing order."""

from __future__ import annotations

import zlib

import numpy as np

__all__ = ["rng_for_case", "case_seed"]


def case_seed(seed: int, case_id: str) -> int:
    """A 32-bit seed derived from ``seed`` and a stable hash (CRC32) of ``case_id``."""
    return (int(seed) * 1_000_003 + zlib.crc32(str(case_id).encode("utf-8"))) % (2**32)


def rng_for_case(seed: int, case_id: str) -> np.random.Generator:
    """A NumPy generator that depends only on ``(seed, case_id)``: the same case always gets the same draws."""
    return np.random.default_rng([int(seed) % (2**32), zlib.crc32(str(case_id).encode("utf-8"))])
