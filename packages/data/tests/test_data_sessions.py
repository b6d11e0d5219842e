"""A visitor's pin ids as item indexes: unknown ids named, long histories cut, bad ones refused."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pinlab_data import PinlabDataError, session_history

CATALOGUE = np.array([500, 40, 7, 12, 900], dtype=np.int64)  # item index -> pin id


def test_known_ids_become_indexes_in_history_order() -> None:
    history = session_history(CATALOGUE, [12, 40, 7], window=None)
    assert history.items.tolist() == [3, 1, 2]
    assert (history.given, history.unknown, history.truncated_from) == (3, [], None)
    assert history.warnings() == []


def test_unknown_ids_are_named_and_left_out() -> None:
    history = session_history(CATALOGUE, [12, 13, 7, 1_000_000], window=None)
    assert history.items.tolist() == [3, 2]
    assert history.unknown == [13, 1_000_000]
    assert history.warnings() == ["ignored 2 unknown pin ids: [13, 1000000]"]


def test_a_long_history_keeps_its_most_recent_items() -> None:
    history = session_history(CATALOGUE, [500, 40, 999, 7, 12], window=2)
    assert history.items.tolist() == [2, 3]
    assert history.truncated_from == 4
    assert "had 4 known pins; the model reads the most recent 2" in history.warnings()[-1]


def test_empty_or_all_unknown_histories_are_refused() -> None:
    with pytest.raises(PinlabDataError, match="the history is empty"):
        session_history(CATALOGUE, [], window=5)
    with pytest.raises(PinlabDataError, match=r"none of the 2 pin ids .* \(3, 4\)"):
        session_history(CATALOGUE, [3, 4], window=5)


@given(st.lists(st.integers(0, 1000), min_size=1, max_size=30), st.integers(1, 10))
def test_every_kept_index_maps_back_to_a_given_id(ids: list[int], window: int) -> None:
    catalogue = np.arange(0, 1000, 3, dtype=np.int64)[::-1].copy()  # not sorted
    known = [i for i in ids if i % 3 == 0]
    if not known:
        with pytest.raises(PinlabDataError):
            session_history(catalogue, ids, window)
        return
    history = session_history(catalogue, ids, window)
    assert catalogue[history.items].tolist() == known[-window:]
    assert history.unknown == [i for i in ids if i % 3]


def test_a_precomputed_order_gives_the_same_history() -> None:
    catalogue = np.array([70, 10, 40, 12, 7], dtype=np.int64)
    order = np.argsort(catalogue, kind="stable")
    alone = session_history(catalogue, [12, 99, 7, 40], window=2)
    given = session_history(catalogue, [12, 99, 7, 40], window=2, order=order)
    assert given.items.tolist() == alone.items.tolist() == [4, 2]
    assert given.unknown == alone.unknown == [99]
