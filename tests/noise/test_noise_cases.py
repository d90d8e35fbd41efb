"""Choice of the corrupted cases (the alpha of SP-guided)."""

from __future__ import annotations

import pytest

from custom.noise.cases import select_corrupted_cases

IDS = [f"case{i:02d}" for i in range(20)]


@pytest.mark.parametrize("alpha, expected", [(0.0, 0), (0.3, 6), (0.5, 10), (0.74, 15), (1.0, 20)])
def test_selects_round_alpha_n(alpha, expected):
    chosen = select_corrupted_cases(IDS, alpha, seed=0)
    assert len(chosen) == expected and set(chosen) <= set(IDS)
    assert chosen == sorted(chosen)


def test_depends_on_the_set_not_the_order():
    assert select_corrupted_cases(IDS, 0.5, 3) == select_corrupted_cases(list(reversed(IDS)), 0.5, 3)


def test_seed_changes_the_choice():
    assert select_corrupted_cases(IDS, 0.5, 0) != select_corrupted_cases(IDS, 0.5, 1)


def test_larger_alpha_selects_a_superset():
    assert set(select_corrupted_cases(IDS, 0.3, 7)) <= set(select_corrupted_cases(IDS, 0.7, 7))


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_bad_alpha(alpha):
    with pytest.raises(ValueError):
        select_corrupted_cases(IDS, alpha, 0)


def test_duplicate_ids():
    with pytest.raises(ValueError, match="unique"):
        select_corrupted_cases(["a", "b", "a"], 0.5, 0)
