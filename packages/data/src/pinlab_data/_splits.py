"""Interactions in dense index space, and the splits models are trained and measured on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from pinlab_data.contracts import (
    Dataset,
    Int64Array,
    InteractionLog,
    LeaveLastOutSplit,
    PinlabDataError,
)

BoolArray = npt.NDArray[np.bool_]
UInt64Array = npt.NDArray[np.uint64]

MIN_ITEMS_TO_HOLD_OUT = 3
"""A user needs this many distinct pins to give one to test and one to validation."""


def interaction_log(dataset: Dataset) -> InteractionLog:
    """All interactions as dense indexes, sorted by (user, timestamp), ties in table order.

    Every user of users.parquet and every pin of pins.parquet gets an index (in table order),
    interactions or not.
    """
    root = dataset.root
    for table, file, columns in (
        (dataset.users, "users.parquet", ("user_id",)),
        (dataset.pins, "pins.parquet", ("pin_id",)),
        (dataset.interactions, "interactions.parquet", ("user_id", "pin_id", "timestamp")),
    ):
        for column in columns:
            if table.column(column).null_count:
                raise PinlabDataError(
                    f"{root / file} has null {column} values; run `pinlab data validate {root}`"
                    " and fix them"
                )
    user_ids, item_ids = dataset.user_ids(), dataset.pin_ids()
    table = dataset.interactions
    users = _dense_index(user_ids, _ints(table.column("user_id")), "user", root)
    items = _dense_index(item_ids, _ints(table.column("pin_id")), "pin", root)
    timestamps = _ints(table.column("timestamp"))
    weights = np.asarray(table.column("weight"), dtype=np.float32)
    order = np.lexsort((timestamps, users))  # lexsort is stable: ties keep table order
    return InteractionLog(
        users=users[order],
        items=items[order],
        timestamps=timestamps[order],
        weights=weights[order],
        user_ids=user_ids,
        item_ids=item_ids,
    )


def leave_last_out(log: InteractionLog) -> LeaveLastOutSplit:
    """Per user by time: last distinct pin to test, the one before to validation, rest to train.

    Repeats of a (user, pin) pair are dropped first, keeping the earliest, since a repeat of a
    training pin would be excluded as already seen when ranking. Users with fewer than three
    distinct pins keep them all in train.
    """
    _check_indexes(log)
    order = np.lexsort((log.timestamps, log.users))
    keep = order[_first_of_each_pair(log.users[order], log.items[order], log.num_items)]
    users = log.users[keep]
    counts = np.bincount(users, minlength=log.num_users)
    run_end = np.cumsum(counts)  # users are sorted, so each user's rows end here
    from_end = run_end[users] - np.arange(len(users)) - 1
    eligible = counts[users] >= MIN_ITEMS_TO_HOLD_OUT
    test = eligible & (from_end == 0)
    valid = eligible & (from_end == 1)
    return LeaveLastOutSplit(
        train=_subset(log, keep[~(test | valid)]),
        valid=_subset(log, keep[valid]),
        test=_subset(log, keep[test]),
    )


def seen_csr(log: InteractionLog) -> tuple[Int64Array, Int64Array]:
    """Each user's distinct items as CSR `(indptr, indices)`, sorted within each user.

    User u saw `indices[indptr[u]:indptr[u + 1]]`; rankers use it to exclude seen items.
    """
    _check_indexes(log)
    indptr = np.zeros(log.num_users + 1, dtype=np.int64)
    if len(log) == 0:
        return indptr, np.zeros(0, dtype=np.int64)
    keys = np.unique(log.users * log.num_items + log.items)
    users, items = np.divmod(keys, log.num_items)
    np.cumsum(np.bincount(users, minlength=log.num_users), out=indptr[1:])
    return indptr, items.astype(np.int64)


def holdout_mask(ids: Int64Array, fraction: float, seed: int) -> BoolArray:
    """True for about `fraction` of `ids`, decided per id by a hash of (id, seed).

    The same id gets the same answer whatever else is in `ids` and in whatever order.
    """
    if not 0 < fraction < 1:
        raise PinlabDataError(f"holdout fraction must be between 0 and 1, got {fraction}")
    keys = np.ascontiguousarray(ids, dtype=np.int64).view(np.uint64)
    seed_key = np.array([seed % 2**64], dtype=np.uint64)
    hashed = _splitmix64(_splitmix64(keys) ^ _splitmix64(seed_key))
    uniform = (hashed >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return uniform < fraction


def _splitmix64(x: UInt64Array) -> UInt64Array:
    # Wrapping uint64 arithmetic is the point of the hash, not an accident.
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _ints(column: object) -> Int64Array:
    return np.asarray(column, dtype=np.int64)


def _dense_index(ids: Int64Array, values: Int64Array, what: str, root: Path) -> Int64Array:
    """Position of each value in `ids`; refuses ids repeated or values with no match."""
    order = np.argsort(ids, kind="stable")
    ordered = ids[order]
    repeated = ordered[1:][ordered[1:] == ordered[:-1]]
    if len(repeated):
        raise PinlabDataError(
            f"{root}: {what} id {repeated[0]} appears more than once in the {what}s table; "
            f"run `pinlab data validate {root}` and fix it"
        )
    if len(ids) == 0:
        position = np.zeros(len(values), dtype=np.int64)
        found = np.zeros(len(values), dtype=np.bool_)
    else:
        position = np.minimum(np.searchsorted(ordered, values), len(ids) - 1)
        found = ordered[position] == values
    if not found.all():
        missing = values[~found]
        raise PinlabDataError(
            f"{root}: {len(missing)} interaction(s) refer to {what} ids not in the {what}s "
            f"table (first: {missing[0]}); run `pinlab data validate {root}` and fix them"
        )
    return order[position].astype(np.int64)


def _first_of_each_pair(users: Int64Array, items: Int64Array, num_items: int) -> Int64Array:
    """Rows, in order, that are the first occurrence of their (user, item) pair."""
    _, first = np.unique(users * num_items + items, return_index=True)
    return np.sort(first).astype(np.int64)


def _subset(log: InteractionLog, rows: Int64Array) -> InteractionLog:
    return InteractionLog(
        users=log.users[rows],
        items=log.items[rows],
        timestamps=log.timestamps[rows],
        weights=log.weights[rows],
        user_ids=log.user_ids,
        item_ids=log.item_ids,
    )


def _check_indexes(log: InteractionLog) -> None:
    for name, values, size in (
        ("users", log.users, log.num_users),
        ("items", log.items, log.num_items),
    ):
        if len(values) and (values.min() < 0 or values.max() >= size):
            raise PinlabDataError(
                f"interaction log {name} must index 0..{size - 1}, found {values.min()}.."
                f"{values.max()}; build logs with interaction_log()"
            )
