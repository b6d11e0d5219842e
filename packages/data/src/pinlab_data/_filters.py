"""Interaction filters the loaders apply: rating threshold, de-duplication, k-core.

Each works on the interaction columns as numpy arrays and returns the rows it keeps, so a
loader filters once, at the end, whatever the size of the log.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from pinlab_data.contracts import (
    FilterStep,
    Float32Array,
    Int64Array,
    InteractionFilters,
    PinlabDataError,
)

BoolArray = npt.NDArray[np.bool_]


def filter_interactions(
    users: Int64Array,
    items: Int64Array,
    times: Int64Array,
    ratings: Float32Array | None,
    filters: InteractionFilters,
) -> tuple[Int64Array, list[FilterStep]]:
    """Rows kept by `filters` (in their order: min_rating, dedupe, k_core), in input order.

    `ratings` is None for logs without ratings. A filter that leaves nothing raises
    PinlabDataError naming it, so no empty dataset is ever written.
    """
    rows = np.arange(len(users), dtype=np.int64)
    steps: list[FilterStep] = []

    def record(name: str, flag: str, value: float | bool, kept: Int64Array) -> Int64Array:
        steps.append(
            FilterStep.model_validate(
                {
                    "name": name,
                    "value": value,
                    "rows_before": len(rows),
                    "rows_after": len(kept),
                }
            )
        )
        if len(kept) == 0:
            loosen = "a lower threshold" if name == "min-rating" else "a smaller K"
            raise PinlabDataError(
                f"filter {flag} removed all {len(rows)} interactions left before it; "
                f"use {loosen} or drop the filter"
            )
        return kept

    if filters.min_rating is not None:
        if ratings is None:
            raise PinlabDataError(
                "--min-rating needs ratings, and this log has none; map the rating column "
                "with --rating-col or drop --min-rating"
            )
        flag = f"--min-rating {filters.min_rating:g}"
        rows = record("min-rating", flag, filters.min_rating, rows[ratings >= filters.min_rating])
    if filters.dedupe:
        rows = record(
            "dedupe", "--dedupe", True, rows[_first_of_pairs(users[rows], items[rows], times[rows])]
        )
    if filters.k_core is not None:
        k = filters.k_core
        rows = record("k-core", f"--k-core {k}", k, rows[_k_core(users[rows], items[rows], k)])
    return rows, steps


def _first_of_pairs(users: Int64Array, items: Int64Array, times: Int64Array) -> Int64Array:
    """Positions of the earliest row of each (user, item) pair (ties: the first), in order."""
    pairs = _pair_codes(users, items)
    order = np.lexsort((times, pairs))  # stable: equal times keep their order
    ordered = pairs[order]
    first = np.ones(len(order), dtype=np.bool_)
    first[1:] = ordered[1:] != ordered[:-1]
    return np.sort(order[first])


def _k_core(users: Int64Array, items: Int64Array, k: int) -> Int64Array:
    """Positions kept once every user and item left has at least k interactions."""
    users, items = _dense(users), _dense(items)
    keep = np.ones(len(users), dtype=np.bool_)
    while True:
        user_counts = np.bincount(users[keep], minlength=int(users.max()) + 1)
        item_counts = np.bincount(items[keep], minlength=int(items.max()) + 1)
        still = keep & (user_counts[users] >= k) & (item_counts[items] >= k)
        if still.sum() == keep.sum():
            return np.flatnonzero(keep)
        keep = still


def _pair_codes(users: Int64Array, items: Int64Array) -> Int64Array:
    """One int64 per (user, item) pair, equal exactly when the pair is."""
    users, items = _dense(users), _dense(items)
    return users * (int(items.max()) + 1) + items


def _dense(ids: Int64Array) -> Int64Array:
    """Small non-negative codes for `ids` (the ids themselves when they already are)."""
    if len(ids) == 0 or (ids.min() >= 0 and ids.max() < 4 * len(ids) + 1024):
        return ids
    return np.unique(ids, return_inverse=True)[1].astype(np.int64)
