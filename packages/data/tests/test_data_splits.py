"""Dense interaction logs, leave-last-out, seen items and per-id holdout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pinlab_data import (
    INTERACTION_SCHEMA,
    PIN_SCHEMA,
    USER_SCHEMA,
    Dataset,
    DatasetManifest,
    InteractionLog,
    PinlabDataError,
    holdout_mask,
    interaction_log,
    leave_last_out,
    seen_csr,
)

Row = tuple[int, int, int]


def dataset(user_ids: list[int], pin_ids: list[int], rows: list[Row]) -> Dataset:
    """An in-memory dataset whose interactions are (user_id, pin_id, timestamp) rows."""
    n = len(pin_ids)
    pins = pa.table(
        {
            "pin_id": pin_ids,
            "caption": [""] * n,
            "category": ["c"] * n,
            "creator_id": [0] * n,
            "creator_group": ["g"] * n,
            "image_row": [None] * n,
            "image_path": [None] * n,
            "external_id": [None] * n,
        },
        schema=PIN_SCHEMA,
    )
    interactions = pa.table(
        {
            "user_id": [r[0] for r in rows],
            "pin_id": [r[1] for r in rows],
            "timestamp": [r[2] for r in rows],
            "event": ["view"] * len(rows),
            "weight": [float(i + 1) for i in range(len(rows))],
        },
        schema=INTERACTION_SCHEMA,
    )
    manifest = DatasetManifest(
        name="t", source="test", num_pins=n, num_users=len(user_ids), num_interactions=len(rows)
    )
    users = pa.table(
        {"user_id": user_ids, "external_id": [None] * len(user_ids)}, schema=USER_SCHEMA
    )
    return Dataset(Path("mem"), manifest, pins, users, interactions)


def make_log(rows: list[Row], num_users: int, num_items: int) -> InteractionLog:
    """A log of (user index, item index, timestamp) rows; weights count rows from 1."""
    return InteractionLog(
        users=np.array([r[0] for r in rows], dtype=np.int64),
        items=np.array([r[1] for r in rows], dtype=np.int64),
        timestamps=np.array([r[2] for r in rows], dtype=np.int64),
        weights=np.arange(1, len(rows) + 1, dtype=np.float32),
        user_ids=np.arange(100, 100 + num_users, dtype=np.int64),
        item_ids=np.arange(200, 200 + num_items, dtype=np.int64),
    )


def triples(log: InteractionLog) -> list[Row]:
    return [
        (int(u), int(i), int(t))
        for u, i, t in zip(log.users, log.items, log.timestamps, strict=True)
    ]


def test_interaction_log_indexes_every_user_and_pin_in_table_order() -> None:
    ds = dataset([5, 3, 9, 7], [30, 10, 20], [(9, 10, 5), (3, 20, 7), (3, 30, 7), (3, 10, 1)])
    log = interaction_log(ds)
    np.testing.assert_array_equal(log.user_ids, [5, 3, 9, 7])
    np.testing.assert_array_equal(log.item_ids, [30, 10, 20])
    # Sorted by (user, time); the tie at t=7 keeps table order.
    assert triples(log) == [(1, 1, 1), (1, 2, 7), (1, 0, 7), (2, 1, 5)]
    np.testing.assert_array_equal(log.weights, [4.0, 2.0, 3.0, 1.0])
    assert log.weights.dtype == np.float32 and log.users.dtype == np.int64
    assert (log.num_users, log.num_items, len(log)) == (4, 3, 4)


def test_interaction_log_refuses_dangling_and_repeated_ids() -> None:
    with pytest.raises(PinlabDataError, match="refer to pin ids not in the pins table"):
        interaction_log(dataset([1], [10], [(1, 99, 0)]))
    with pytest.raises(PinlabDataError, match="refer to user ids not in the users table"):
        interaction_log(dataset([1], [10], [(2, 10, 0)]))
    with pytest.raises(PinlabDataError, match="user id 1 appears more than once"):
        interaction_log(dataset([1, 1], [10], [(1, 10, 0)]))


def test_interaction_log_of_no_interactions() -> None:
    log = interaction_log(dataset([1, 2], [10], []))
    assert len(log) == 0 and log.num_users == 2 and log.num_items == 1


HAND_LOG = [
    (2, 1, 30),
    (0, 0, 10),
    (0, 1, 20),
    (1, 4, 10),
    (0, 0, 30),  # repeat of (0, 0): dropped, the first one stays
    (2, 2, 10),
    (0, 2, 40),
    (1, 5, 20),
    (0, 3, 50),
    (2, 3, 20),
    (1, 4, 30),  # repeat: user 1 then has only two distinct pins
]


def test_leave_last_out_by_hand() -> None:
    log = make_log(HAND_LOG, num_users=4, num_items=6)
    split = leave_last_out(log)
    assert triples(split.train) == [(0, 0, 10), (0, 1, 20), (1, 4, 10), (1, 5, 20), (2, 2, 10)]
    assert triples(split.valid) == [(0, 2, 40), (2, 3, 20)]
    assert triples(split.test) == [(0, 3, 50), (2, 1, 30)]
    # Weights travel with their rows: the kept (0, 0) is the first, the second row of HAND_LOG.
    np.testing.assert_array_equal(split.train.weights, [2.0, 3.0, 4.0, 8.0, 6.0])
    for part in (split.train, split.valid, split.test):
        assert part.user_ids is log.user_ids and part.item_ids is log.item_ids
    assert split.protocol == "leave-last-out"


def test_leave_last_out_breaks_time_ties_by_log_order() -> None:
    split = leave_last_out(make_log([(0, 2, 5), (0, 0, 5), (0, 1, 5)], 1, 3))
    assert triples(split.train) == [(0, 2, 5)]
    assert triples(split.valid) == [(0, 0, 5)]
    assert triples(split.test) == [(0, 1, 5)]


def test_leave_last_out_refuses_out_of_range_indexes() -> None:
    with pytest.raises(PinlabDataError, match=r"must index 0\.\.2"):
        leave_last_out(make_log([(0, 3, 1)], 1, 3))


def test_seen_csr_by_hand() -> None:
    indptr, indices = seen_csr(make_log(HAND_LOG, num_users=4, num_items=6))
    np.testing.assert_array_equal(indptr, [0, 4, 6, 9, 9])
    np.testing.assert_array_equal(indices, [0, 1, 2, 3, 4, 5, 1, 2, 3])
    assert indptr.dtype == np.int64 and indices.dtype == np.int64
    empty_ptr, empty = seen_csr(make_log([], 2, 0))
    np.testing.assert_array_equal(empty_ptr, [0, 0, 0])
    assert len(empty) == 0


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 5).flatmap(
        lambda users: st.integers(1, 7).flatmap(
            lambda items: st.tuples(
                st.just(users),
                st.just(items),
                st.lists(
                    st.tuples(
                        st.integers(0, users - 1), st.integers(0, items - 1), st.integers(0, 4)
                    ),
                    max_size=40,
                ),
            )
        )
    )
)
def test_leave_last_out_properties(case: tuple[int, int, list[Row]]) -> None:
    num_users, num_items, rows = case
    split = leave_last_out(make_log(rows, num_users, num_items))
    parts = [triples(split.train), triples(split.valid), triples(split.test)]
    kept = [(u, i) for part in parts for u, i, _ in part]
    assert len(kept) == len(set(kept)) == len({(u, i) for u, i, _ in rows})
    first_time: dict[tuple[int, int], int] = {}
    for u, i, t in rows:
        first_time[(u, i)] = min(t, first_time.get((u, i), t))
    assert all(first_time[(u, i)] == t for part in parts for u, i, t in part)
    for user in range(num_users):
        distinct = len({i for u, i, _ in rows if u == user})
        train_times = [t for u, _, t in parts[0] if u == user]
        valid_times = [t for u, _, t in parts[1] if u == user]
        test_times = [t for u, _, t in parts[2] if u == user]
        held = 1 if distinct >= 3 else 0
        assert len(valid_times) == len(test_times) == held
        if held:
            assert max(train_times) <= valid_times[0] <= test_times[0]


def test_holdout_mask_is_deterministic_per_id() -> None:
    ids = np.arange(-50_000, 50_000, dtype=np.int64) * 7919
    mask = holdout_mask(ids, 0.2, seed=3)
    np.testing.assert_array_equal(mask, holdout_mask(ids, 0.2, seed=3))
    assert abs(mask.mean() - 0.2) < 0.01
    order = np.random.default_rng(0).permutation(len(ids))
    np.testing.assert_array_equal(holdout_mask(ids[order], 0.2, seed=3), mask[order])
    np.testing.assert_array_equal(holdout_mask(ids[:10], 0.2, seed=3), mask[:10])
    assert not np.array_equal(holdout_mask(ids, 0.2, seed=4), mask)
    # A larger fraction holds out a superset: the hash draws one uniform number per id.
    assert (holdout_mask(ids, 0.5, seed=3) >= mask).all()


def test_holdout_mask_takes_any_ids_and_seeds() -> None:
    extremes = np.array([np.iinfo(np.int64).min, -1, 0, np.iinfo(np.int64).max], dtype=np.int64)
    assert holdout_mask(extremes, 0.5, seed=-1).shape == (4,)
    assert holdout_mask(np.array([1, 2], dtype=np.int64), 0.5, seed=2**70).dtype == np.bool_
    assert holdout_mask(np.zeros(0, dtype=np.int64), 0.5, seed=0).shape == (0,)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_holdout_mask_refuses_bad_fractions(fraction: float) -> None:
    with pytest.raises(PinlabDataError, match="between 0 and 1"):
        holdout_mask(np.arange(3, dtype=np.int64), fraction, seed=0)
