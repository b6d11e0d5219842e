"""Interaction filters: hand-computed cases, and k-core against a plain reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pinlab_data import InteractionFilters, PinlabDataError, filter_interactions


def ints(values: list[int]) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def test_min_rating_keeps_ratings_at_or_above() -> None:
    users, items, times = ints([1, 1, 2, 2]), ints([5, 6, 5, 6]), ints([0, 1, 2, 3])
    ratings = np.array([3.5, 4.0, 5.0, 1.0], dtype=np.float32)
    rows, steps = filter_interactions(
        users, items, times, ratings, InteractionFilters(min_rating=4)
    )
    assert rows.tolist() == [1, 2]
    assert [s.model_dump() for s in steps] == [
        {"name": "min-rating", "value": 4.0, "rows_before": 4, "rows_after": 2}
    ]


def test_dedupe_keeps_the_earliest_of_each_pair_ties_in_order() -> None:
    users, items = ints([1, 1, 1, 2, 1, 2]), ints([5, 5, 6, 5, 5, 5])
    times = ints([30, 10, 20, 7, 10, 7])
    rows, _ = filter_interactions(users, items, times, None, InteractionFilters(dedupe=True))
    assert rows.tolist() == [1, 2, 3]  # (1,5) earliest is row 1 (time 10, before row 4)


def test_k_core_repeats_until_stable() -> None:
    # User 3 has two items; dropping user 4 (one interaction) leaves item 12 with one user,
    # so item 12 goes, then user 3 has one interaction and goes too.
    users = ints([1, 1, 2, 2, 3, 3, 4])
    items = ints([10, 11, 10, 11, 10, 12, 12])
    rows, steps = filter_interactions(
        users, items, np.zeros(7, np.int64), None, InteractionFilters(k_core=2)
    )
    assert rows.tolist() == [0, 1, 2, 3]
    assert (steps[0].name, steps[0].rows_before, steps[0].rows_after) == ("k-core", 7, 4)


def test_filters_run_in_order_and_an_emptying_one_is_named() -> None:
    users, items, times = ints([1, 1, 2]), ints([5, 5, 6]), ints([0, 1, 2])
    ratings = np.array([5, 5, 1], dtype=np.float32)
    filters = InteractionFilters(min_rating=4, dedupe=True, k_core=1)
    rows, steps = filter_interactions(users, items, times, ratings, filters)
    assert rows.tolist() == [0]
    assert [(s.name, s.rows_before, s.rows_after) for s in steps] == [
        ("min-rating", 3, 2),
        ("dedupe", 2, 1),
        ("k-core", 1, 1),
    ]
    with pytest.raises(PinlabDataError, match=r"^filter --k-core 2 removed all 1 interactions"):
        filter_interactions(users, items, times, ratings, filters.model_copy(update={"k_core": 2}))


def test_large_ids_are_fine() -> None:
    users = ints([2**40, 2**40, 7, 7])
    items = ints([2**50, 3, 2**50, 3])
    rows, _ = filter_interactions(
        users, items, ints([0, 1, 2, 3]), None, InteractionFilters(k_core=2, dedupe=True)
    )
    assert rows.tolist() == [0, 1, 2, 3]


def reference_k_core(pairs: list[tuple[int, int]], k: int) -> set[int]:
    kept = set(range(len(pairs)))
    while True:
        user_n: dict[int, int] = {}
        item_n: dict[int, int] = {}
        for row in kept:
            user_n[pairs[row][0]] = user_n.get(pairs[row][0], 0) + 1
            item_n[pairs[row][1]] = item_n.get(pairs[row][1], 0) + 1
        still = {r for r in kept if user_n[pairs[r][0]] >= k and item_n[pairs[r][1]] >= k}
        if still == kept:
            return kept
        kept = still


@settings(max_examples=60, deadline=None)
@given(
    pairs=st.lists(st.tuples(st.integers(0, 8), st.integers(0, 8)), min_size=1, max_size=60),
    k=st.integers(1, 4),
)
def test_k_core_matches_a_plain_reference(pairs: list[tuple[int, int]], k: int) -> None:
    users, items = ints([p[0] for p in pairs]), ints([p[1] for p in pairs])
    expected = reference_k_core(pairs, k)
    filters = InteractionFilters(k_core=k)
    if not expected:
        with pytest.raises(PinlabDataError, match="--k-core"):
            filter_interactions(users, items, np.zeros(len(pairs), np.int64), None, filters)
        return
    rows, _ = filter_interactions(users, items, np.zeros(len(pairs), np.int64), None, filters)
    assert set(rows.tolist()) == expected
    assert rows.tolist() == sorted(rows.tolist())
