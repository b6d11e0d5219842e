"""Beyond-accuracy metrics: by hand, properties, and Microsoft Recommenders' formulas re-derived."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pinlab_data.contracts import Int64Array, PinlabDataError
from pinlab_eval import (
    Csr,
    Float64Array,
    category_diversity_at_k,
    distributional_coverage,
    embedding_diversity_at_k,
    gini_at_k,
    miscalibration_at_k,
    serendipity_at_k,
)

PROPERTY = settings(max_examples=60, deadline=None)

# Four items in 2-d: 0 and 1 orthogonal, 2 halfway between them, 3 opposite to 0.
EMBEDDINGS = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0], [-1.0, 0.0]])
CATEGORY = np.array([0, 0, 1, 2], dtype=np.int64)
HALF = 1 / math.sqrt(2)


def ranked_of(rows: list[list[int]]) -> Int64Array:
    return np.array(rows, dtype=np.int64)


def csr(rows: list[list[int]]) -> Csr:
    indptr = np.cumsum([0, *map(len, rows)]).astype(np.int64)
    indices = np.array([i for row in rows for i in row], dtype=np.int64)
    return indptr, indices


# --- hand-computed --------------------------------------------------------------------------------


def test_distributional_coverage_by_hand() -> None:
    # Slots: item 0 twice, items 1 and 2 once: p = (1/2, 1/4, 1/4), H = 1/2 + 2 * 1/4 * 2 bits.
    assert distributional_coverage(ranked_of([[0, 1], [0, 2]]), 4) == pytest.approx(1.5)
    assert distributional_coverage(ranked_of([[3], [3]]), 4) == 0.0


def test_category_diversity_by_hand() -> None:
    # [0, 1, 2]: pairs (0,1) share category 0, (0,2) and (1,2) differ -> 2/3; [0, 1] -> 0.
    diversity = category_diversity_at_k(ranked_of([[0, 1, 2], [1, 0, 3]]), CATEGORY)
    np.testing.assert_allclose(diversity, [2 / 3, 2 / 3])
    assert category_diversity_at_k(ranked_of([[0, 1]]), CATEGORY).tolist() == [0.0]


def test_embedding_diversity_by_hand() -> None:
    # cos(0,1) = 0, cos(0,2) = cos(1,2) = 1/sqrt(2); the length of item 2 does not matter.
    diversity = embedding_diversity_at_k(ranked_of([[0, 1, 2], [0, 3, 1]]), EMBEDDINGS)
    np.testing.assert_allclose(diversity, [1 - 2 * HALF / 3, 1 - (-1 + 0 + 0) / 3])


def test_serendipity_by_hand() -> None:
    ranked = ranked_of([[1, 2], [0, 1], [0, 1]])
    history = csr([[0], [0, 1], []])
    # User 0 had item 0: item 1 is fully unexpected (1), item 2 half-way (1 - 1/sqrt(2)).
    # User 1 had items 0 and 1: each recommended item's mean similarity to them is 1/2.
    # User 2 has no history: nothing to be unexpected against.
    every = serendipity_at_k(ranked, history, EMBEDDINGS)
    np.testing.assert_allclose(every[:2], [(2 - HALF) / 2, 0.5])
    assert math.isnan(every[2])
    # With held-out targets only the relevant items count: user 0's item 2, none of user 1's.
    relevant = serendipity_at_k(ranked, history, EMBEDDINGS, relevant=csr([[2], [3], [0]]))
    np.testing.assert_allclose(relevant[:2], [(1 - HALF) / 2, 0.0])


def test_miscalibration_by_hand() -> None:
    ranked = ranked_of([[2, 3], [0, 2], [0, 1], [0, 1]])
    history = csr([[0, 1], [1, 2], [0, 2], []])
    got = miscalibration_at_k(ranked, history, CATEGORY, alpha=0.01)
    # User 0: history all category 0, list none of it: q~(0) = alpha, KL = log(1 / 0.01).
    # User 1: history and list both half category 0, half category 1: KL = 0.
    # User 2: p = (1/2, 1/2, 0), q = (1, 0, 0): q~ = (0.995, 0.005, 0).
    user_2 = 0.5 * math.log(0.5 / 0.995) + 0.5 * math.log(0.5 / 0.005)
    np.testing.assert_allclose(got[:3], [math.log(100), 0.0, user_2], atol=1e-12)
    assert math.isnan(got[3])


# --- properties -----------------------------------------------------------------------------------


@st.composite
def lists(draw: st.DrawFn) -> tuple[Int64Array, Csr, int]:
    """Top-k lists without repeats over a small catalogue, and a non-empty history per user."""
    num_items = draw(st.integers(2, 10))
    num_users = draw(st.integers(1, 6))
    k = draw(st.integers(2, num_items))
    ranked = [draw(st.permutations(range(num_items)))[:k] for _ in range(num_users)]
    history = [sorted(draw(st.sets(st.integers(0, num_items - 1), min_size=1))) for _ in ranked]
    return ranked_of(ranked), csr(history), num_items


def side_data(num_items: int, seed: int) -> tuple[Int64Array, Float64Array]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 3, num_items).astype(np.int64), rng.normal(size=(num_items, 4))


def permute_rows(rows: Csr, order: Int64Array) -> Csr:
    indptr, indices = rows
    return csr([indices[indptr[u] : indptr[u + 1]].tolist() for u in order])


def within(values: Float64Array, low: float, high: float) -> bool:
    """All values in [low, high], up to rounding."""
    return bool(((values >= low - 1e-12) & (values <= high + 1e-12)).all())


@PROPERTY
@given(lists(), st.integers(0, 2**16))
def test_metrics_lie_in_their_ranges(case: tuple[Int64Array, Csr, int], seed: int) -> None:
    ranked, history, num_items = case
    category, embeddings = side_data(num_items, seed)
    assert 0 <= distributional_coverage(ranked, num_items) <= math.log2(num_items) + 1e-12
    assert within(category_diversity_at_k(ranked, category), 0, 1)
    assert within(embedding_diversity_at_k(ranked, embeddings), 0, 2)
    assert within(serendipity_at_k(ranked, history, embeddings), 0, 2)
    assert (miscalibration_at_k(ranked, history, category) >= -1e-12).all()


@PROPERTY
@given(lists(), st.integers(0, 2**16))
def test_permuting_users_permutes_the_values(case: tuple[Int64Array, Csr, int], seed: int) -> None:
    ranked, history, num_items = case
    category, embeddings = side_data(num_items, seed)
    order = np.random.default_rng(seed).permutation(len(ranked)).astype(np.int64)
    moved, moved_history = ranked[order], permute_rows(history, order)
    assert distributional_coverage(moved, num_items) == pytest.approx(
        distributional_coverage(ranked, num_items)
    )
    for got, want in [
        (category_diversity_at_k(moved, category), category_diversity_at_k(ranked, category)),
        (embedding_diversity_at_k(moved, embeddings), embedding_diversity_at_k(ranked, embeddings)),
        (
            serendipity_at_k(moved, moved_history, embeddings),
            serendipity_at_k(ranked, history, embeddings),
        ),
        (
            miscalibration_at_k(moved, moved_history, category),
            miscalibration_at_k(ranked, history, category),
        ),
    ]:
        np.testing.assert_allclose(got, want[order], atol=1e-12)


@PROPERTY
@given(lists(), st.integers(0, 2**16))
def test_list_order_does_not_change_set_metrics(
    case: tuple[Int64Array, Csr, int], seed: int
) -> None:
    ranked, history, num_items = case
    category, embeddings = side_data(num_items, seed)
    reversed_lists = np.ascontiguousarray(ranked[:, ::-1])
    np.testing.assert_allclose(
        category_diversity_at_k(reversed_lists, category), category_diversity_at_k(ranked, category)
    )
    np.testing.assert_allclose(
        embedding_diversity_at_k(reversed_lists, embeddings * 3.0),  # and scale does not either
        embedding_diversity_at_k(ranked, embeddings),
    )
    np.testing.assert_allclose(
        miscalibration_at_k(reversed_lists, history, category),
        miscalibration_at_k(ranked, history, category),
    )


@given(st.integers(2, 12), st.integers(1, 12))
def test_an_even_spread_has_full_entropy_and_zero_gini(num_items: int, k: int) -> None:
    k = min(k, num_items)
    # User u sees items u, u+1, ... (mod n): every item fills exactly k slots.
    ranked = (np.arange(num_items)[:, None] + np.arange(k)[None, :]) % num_items
    assert distributional_coverage(ranked, num_items) == pytest.approx(math.log2(num_items))
    assert gini_at_k(ranked, num_items) == pytest.approx(0.0, abs=1e-12)


@PROPERTY
@given(lists(), st.integers(0, 2**16))
def test_a_list_that_mirrors_the_history_is_calibrated(
    case: tuple[Int64Array, Csr, int], seed: int
) -> None:
    ranked, _, num_items = case
    category, _ = side_data(num_items, seed)
    # The history is the list itself: the same category mix, so KL(p || q~) = 0.
    history = csr(ranked.tolist())
    np.testing.assert_allclose(miscalibration_at_k(ranked, history, category), 0.0, atol=1e-12)


@PROPERTY
@given(lists(), st.integers(0, 2**16))
def test_relevance_only_removes_serendipity(case: tuple[Int64Array, Csr, int], seed: int) -> None:
    ranked, history, num_items = case
    _, embeddings = side_data(num_items, seed)
    everything = csr([list(range(num_items))] * len(ranked))
    every = serendipity_at_k(ranked, history, embeddings)
    np.testing.assert_allclose(serendipity_at_k(ranked, history, embeddings, everything), every)
    nothing = csr([[]] * len(ranked))
    np.testing.assert_allclose(serendipity_at_k(ranked, history, embeddings, nothing), 0.0)


# --- cross-check against Microsoft Recommenders' documented definitions ---------------------------


def cosine(a: Float64Array, b: Float64Array) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_matches_microsoft_recommenders_definitions() -> None:
    """Re-derive their `distributional_coverage`, `diversity` and `serendipity`, item by item.

    From the docstrings of recommenders.evaluation.python_evaluation: distributional coverage
    is -Σ_i p(i) log2 p(i) with p(i) = count of i in the recommendations / number of
    recommendations; diversity is the mean over users of 1 - ILS(u), ILS the mean similarity of
    the pairs of u's list (cosine of item features); serendipity is the mean over users of the
    mean over their items of (1 - mean_{j in history} sim(i, j)) * relevance(u, i).
    """
    rng = np.random.default_rng(7)
    num_items, k = 9, 4
    ranked = np.stack([rng.permutation(num_items)[:k] for _ in range(5)]).astype(np.int64)
    features = rng.normal(size=(num_items, 3))
    history_rows = [rng.choice(num_items, 3, replace=False).tolist() for _ in range(5)]
    target_rows = [rng.choice(num_items, 2, replace=False).tolist() for _ in range(5)]

    slots = [int(item) for row in ranked for item in row]
    share = [slots.count(item) / len(slots) for item in set(slots)]
    entropy = -sum(p * math.log2(p) for p in share)
    assert distributional_coverage(ranked, num_items) == pytest.approx(entropy)

    user_diversity = []
    for row in ranked:
        pairs = list(itertools.combinations(row.tolist(), 2))
        ils = sum(cosine(features[i], features[j]) for i, j in pairs) / len(pairs)
        user_diversity.append(1 - ils)
    assert embedding_diversity_at_k(ranked, features).mean() == pytest.approx(
        sum(user_diversity) / len(user_diversity)
    )

    user_serendipity = []
    for row, seen, targets in zip(ranked, history_rows, target_rows, strict=True):
        values = []
        for item in row.tolist():
            similarity = sum(cosine(features[item], features[j]) for j in seen) / len(seen)
            values.append((1 - similarity) * (1.0 if item in targets else 0.0))
        user_serendipity.append(sum(values) / len(values))
    got = serendipity_at_k(ranked, csr(history_rows), features, relevant=csr(target_rows))
    np.testing.assert_allclose(got, user_serendipity)


# --- bad input ------------------------------------------------------------------------------------


def test_bad_input_is_refused_with_a_reason() -> None:
    ranked = ranked_of([[0, 1], [2, 3]])
    history = csr([[0], [1]])
    with pytest.raises(PinlabDataError, match="covers 3 items"):
        distributional_coverage(ranked, 3)
    with pytest.raises(PinlabDataError, match=r"\(users, k\)"):
        category_diversity_at_k(np.array([0, 1], dtype=np.int64), CATEGORY)
    with pytest.raises(PinlabDataError, match="k >= 2"):
        embedding_diversity_at_k(ranked_of([[0], [1]]), EMBEDDINGS)
    with pytest.raises(PinlabDataError, match="covers 3 items"):
        embedding_diversity_at_k(ranked, EMBEDDINGS[:3])
    with pytest.raises(PinlabDataError, match="zero embedding"):
        embedding_diversity_at_k(ranked, np.vstack([EMBEDDINGS[:3], [[0.0, 0.0]]]))
    with pytest.raises(PinlabDataError, match="line up"):
        serendipity_at_k(ranked, csr([[0]]), EMBEDDINGS)
    with pytest.raises(PinlabDataError, match="history items"):
        serendipity_at_k(ranked, csr([[0], [9]]), EMBEDDINGS)
    with pytest.raises(PinlabDataError, match="line up"):
        serendipity_at_k(ranked, history, EMBEDDINGS, relevant=csr([[0]]))
    for alpha in (0.0, 1.0, -0.5, 1.5):
        with pytest.raises(PinlabDataError, match="alpha"):
            miscalibration_at_k(ranked, history, CATEGORY, alpha=alpha)
    with pytest.raises(PinlabDataError, match="non-negative"):
        miscalibration_at_k(ranked, history, np.array([0, -1, 0, 0], dtype=np.int64))
