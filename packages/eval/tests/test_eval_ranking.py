"""Recommendation metrics against hand computations, plus properties that must always hold."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pinlab_data.contracts import Float32Array, Int64Array, InteractionLog
from pinlab_eval import (
    Csr,
    Scorer,
    catalogue_coverage,
    evaluate_ranking,
    gini_at_k,
    hit_rate_at_k,
    item_popularity,
    map_all_at_k,
    map_at_k,
    mrr_at_k,
    ndcg_at_k,
    novelty_at_k,
    precision_at_k,
    recall_at_k,
    taste_recovery,
    top_k,
    user_metrics,
)

PROPERTY = settings(max_examples=60, deadline=None)
METRICS = (
    recall_at_k,
    precision_at_k,
    hit_rate_at_k,
    ndcg_at_k,
    mrr_at_k,
    map_at_k,
    map_all_at_k,
)


class FixedScorer:
    """Scores users by looking up rows of a fixed matrix."""

    def __init__(self, scores: Float32Array) -> None:
        self.scores = scores

    def score(self, users: Int64Array) -> Float32Array:
        return self.scores[users]


def csr(rows: list[list[int]]) -> Csr:
    indptr = np.cumsum([0, *map(len, rows)]).astype(np.int64)
    indices = np.array([i for row in rows for i in row], dtype=np.int64)
    return indptr, indices


def ranked_of(rows: list[list[int]]) -> Int64Array:
    return np.array(rows, dtype=np.int64)


def log_of(users: list[int], items: list[int], num_users: int, num_items: int) -> InteractionLog:
    return InteractionLog(
        users=np.array(users, dtype=np.int64),
        items=np.array(items, dtype=np.int64),
        timestamps=np.arange(len(users), dtype=np.int64),
        weights=np.ones(len(users), dtype=np.float32),
        user_ids=np.arange(num_users, dtype=np.int64),
        item_ids=np.arange(num_items, dtype=np.int64),
    )


# --- hand-computed metrics -------------------------------------------------------------------

# Row 0 ranks [3, 1, 4] with relevant {1, 5}: one hit, at rank 2.
# Row 1 ranks [2, 0, 1] with relevant {2, 1}: hits at ranks 1 and 3.
RANKED = ranked_of([[3, 1, 4], [2, 0, 1]])
RELEVANT = csr([[1, 5], [2, 1]])
INV_LOG3 = 1 / math.log2(3)  # discount at rank 2


def test_recall_is_hits_over_relevant() -> None:
    # row 0: 1 of 2 relevant found; row 1: 2 of 2
    np.testing.assert_allclose(recall_at_k(RANKED, RELEVANT), [0.5, 1.0])


def test_precision_is_hits_over_k() -> None:
    # row 0: 1 hit / k=3; row 1: 2 hits / 3
    np.testing.assert_allclose(precision_at_k(RANKED, RELEVANT), [1 / 3, 2 / 3])


def test_hit_rate() -> None:
    np.testing.assert_allclose(hit_rate_at_k(RANKED, RELEVANT), [1.0, 1.0])
    np.testing.assert_allclose(hit_rate_at_k(ranked_of([[0, 4]]), csr([[1]])), [0.0])


def test_ndcg() -> None:
    # row 0: DCG = 1/log2(3); ideal has min(3, 2) = 2 hits: 1 + 1/log2(3)
    # row 1: DCG = 1 + 1/log2(4) = 1.5; same ideal
    expected = [INV_LOG3 / (1 + INV_LOG3), 1.5 / (1 + INV_LOG3)]
    np.testing.assert_allclose(ndcg_at_k(RANKED, RELEVANT), expected)


def test_ndcg_single_hit_at_rank_two() -> None:
    # one relevant item at rank 2: DCG = 1/log2(3), ideal DCG = 1/log2(2) = 1
    np.testing.assert_allclose(ndcg_at_k(ranked_of([[7, 3, 9]]), csr([[3]])), [INV_LOG3])


def test_ndcg_ideal_is_capped_at_k() -> None:
    # 3 relevant but k = 2, both slots hit: DCG = ideal DCG = 1 + 1/log2(3)
    np.testing.assert_allclose(ndcg_at_k(ranked_of([[0, 1]]), csr([[0, 1, 2]])), [1.0])


def test_mrr() -> None:
    # row 0: first hit at rank 2 -> 1/2; row 1: at rank 1 -> 1; row 2: none -> 0
    ranked = ranked_of([[3, 1, 4], [2, 0, 1], [0, 1, 2]])
    np.testing.assert_allclose(mrr_at_k(ranked, csr([[1, 5], [2, 1], [9]])), [0.5, 1.0, 0.0])


def test_map() -> None:
    # row 0: precision@2 = 1/2 at the only hit, over min(3, 2) = 2 -> 1/4
    # row 1: precision@1 = 1 and precision@3 = 2/3, over 2 -> 5/6
    np.testing.assert_allclose(map_at_k(RANKED, RELEVANT), [0.25, 5 / 6])


def test_map_all_divides_by_every_relevant_item_and_map_by_at_most_k() -> None:
    # 5 relevant {0..4}, k = 3, hits at ranks 1 and 3: precision 1 and 2/3, sum 5/3
    ranked, relevant = ranked_of([[0, 9, 1]]), csr([[0, 1, 2, 3, 4]])
    np.testing.assert_allclose(map_at_k(ranked, relevant), [(5 / 3) / 3])  # min(k, 5) = 3
    np.testing.assert_allclose(map_all_at_k(ranked, relevant), [(5 / 3) / 5])  # all 5


def test_a_perfect_list_scores_map_1_but_map_all_only_its_recall() -> None:
    # 4 relevant, k = 2, both slots hit: map@2 = (1 + 1) / 2; map_all@2 = (1 + 1) / 4
    ranked, relevant = ranked_of([[0, 1]]), csr([[0, 1, 2, 3]])
    np.testing.assert_allclose(map_at_k(ranked, relevant), [1.0])
    np.testing.assert_allclose(map_all_at_k(ranked, relevant), [0.5])
    np.testing.assert_allclose(recall_at_k(ranked, relevant), [0.5])


def test_map_all_equals_map_when_k_covers_every_relevant_item() -> None:
    np.testing.assert_allclose(map_all_at_k(RANKED, RELEVANT), map_at_k(RANKED, RELEVANT))


def test_novelty_is_mean_self_information_of_training_popularity() -> None:
    # popularity 4, 2, 1, 1, 0 of 8: -log2 p = 1, 2, 3, 3 and, never chosen, as if once: 3
    popularity = np.array([4, 2, 1, 1, 0], dtype=np.int64)
    ranked = ranked_of([[0, 1], [2, 4]])
    np.testing.assert_allclose(novelty_at_k(ranked, popularity), [(1 + 2) / 2, (3 + 3) / 2])


def test_item_popularity_counts_distinct_users() -> None:
    # item 0: users 0 and 1 (user 0 twice counts once); item 2: user 1; items 1, 3: nobody
    log = log_of([0, 0, 1, 1], [0, 0, 0, 2], num_users=2, num_items=4)
    np.testing.assert_array_equal(item_popularity(log), [2, 0, 1, 0])


def test_gini_of_exposure() -> None:
    # exposure over 4 items: item 0 twice, items 1 and 2 once, item 3 never -> sorted 0, 1, 1, 2
    # G = (-3*0 - 1*1 + 1*1 + 3*2) / (4 * 4) = 6 / 16
    assert gini_at_k(ranked_of([[0, 1], [0, 2]]), 4) == pytest.approx(0.375)
    # every item shown once: equal exposure
    assert gini_at_k(ranked_of([[0, 1], [2, 3]]), 4) == pytest.approx(0.0)
    # one item takes every slot of 3: (n - 1) / n
    assert gini_at_k(ranked_of([[0], [0], [0]]), 3) == pytest.approx(2 / 3)


def test_duplicate_relevant_items_count_once() -> None:
    # {1, 1, 5} is {1, 5}: recall 1/2 as in row 0 above
    np.testing.assert_allclose(recall_at_k(ranked_of([[3, 1, 4]]), csr([[1, 1, 5]])), [0.5])


def test_users_without_relevant_items_are_undefined_not_zero() -> None:
    ranked, empty = ranked_of([[0, 1]]), csr([[]])
    assert np.isnan(recall_at_k(ranked, empty)).all()
    assert np.isnan(ndcg_at_k(ranked, empty)).all()
    assert np.isnan(map_at_k(ranked, empty)).all()
    np.testing.assert_allclose(precision_at_k(ranked, empty), [0.0])
    np.testing.assert_allclose(mrr_at_k(ranked, empty), [0.0])


def test_misaligned_relevant_rows_are_refused() -> None:
    with pytest.raises(ValueError, match="line up"):
        recall_at_k(RANKED, csr([[1]]))


def test_catalogue_coverage() -> None:
    # items {0, 1, 2} of 5 recommended
    assert catalogue_coverage(ranked_of([[0, 1], [1, 2]]), 5) == pytest.approx(3 / 5)


# --- top_k -----------------------------------------------------------------------------------


def test_top_k_orders_by_score() -> None:
    scores = np.array([[0.1, 0.9, 0.5, 0.7], [0.4, 0.3, 0.2, 0.1]], dtype=np.float32)
    got = top_k(FixedScorer(scores), np.array([0, 1]), 3, None)
    np.testing.assert_array_equal(got, [[1, 3, 2], [0, 1, 2]])


def test_top_k_breaks_ties_by_lower_item_index() -> None:
    scores = np.array([[1.0, 2.0, 2.0, 0.0, 2.0]], dtype=np.float32)
    scorer = FixedScorer(scores)
    # three items tie at 2.0; a cut through the tie keeps the lowest indices
    np.testing.assert_array_equal(top_k(scorer, np.array([0]), 2, None), [[1, 2]])
    np.testing.assert_array_equal(top_k(scorer, np.array([0]), 4, None), [[1, 2, 4, 0]])
    flat = FixedScorer(np.zeros((1, 6), dtype=np.float32))
    np.testing.assert_array_equal(top_k(flat, np.array([0]), 3, None), [[0, 1, 2]])
    # In one batch: a row whose tie overflows the cut, one whose tie fits, one with no tie.
    mixed = np.array([[1, 2, 2, 0, 2], [3, 2, 2, 0, 1], [5, 4, 3, 2, 1]], dtype=np.float32)
    np.testing.assert_array_equal(
        top_k(FixedScorer(mixed), np.arange(3), 2, None), [[1, 2], [0, 1], [0, 1]]
    )
    np.testing.assert_array_equal(
        top_k(FixedScorer(mixed), np.arange(3), 3, None), [[1, 2, 4], [0, 1, 2], [0, 1, 2]]
    )


def test_excluding_seen_items_changes_the_ranking() -> None:
    scores = np.array([[5.0, 4.0, 3.0, 2.0], [5.0, 4.0, 3.0, 2.0]], dtype=np.float32)
    seen = csr([[0, 2], []])
    scorer = FixedScorer(scores)
    np.testing.assert_array_equal(top_k(scorer, np.array([0, 1]), 2, None), [[0, 1], [0, 1]])
    np.testing.assert_array_equal(top_k(scorer, np.array([0, 1]), 2, seen), [[1, 3], [0, 1]])
    # exclusion is looked up by user index, not by position in `users`
    np.testing.assert_array_equal(top_k(scorer, np.array([1, 0]), 2, seen), [[0, 1], [1, 3]])


def test_excluded_items_fill_the_tail_when_nothing_else_is_left() -> None:
    scores = np.array([[5.0, 4.0, 3.0, 2.0]], dtype=np.float32)
    got = top_k(FixedScorer(scores), np.array([0]), 4, csr([[0, 2]]))
    np.testing.assert_array_equal(got, [[1, 3, 0, 2]])


def test_nan_scores_rank_last() -> None:
    scores = np.array([[np.nan, 1.0, 3.0]], dtype=np.float32)
    np.testing.assert_array_equal(top_k(FixedScorer(scores), np.array([0]), 3, None), [[2, 1, 0]])


@pytest.mark.parametrize("k", [0, -3])
def test_top_k_refuses_non_positive_k(k: int) -> None:
    with pytest.raises(ValueError, match="k must be a positive"):
        top_k(FixedScorer(np.zeros((1, 3), dtype=np.float32)), np.array([0]), k, None)


def test_top_k_clips_k_to_the_catalogue() -> None:
    scores = np.array([[0.2, 0.1]], dtype=np.float32)
    np.testing.assert_array_equal(top_k(FixedScorer(scores), np.array([0]), 10, None), [[0, 1]])


def test_top_k_refuses_exclusion_for_too_few_users() -> None:
    scorer = FixedScorer(np.zeros((3, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="exclude"):
        top_k(scorer, np.array([2]), 2, csr([[0]]))


def test_top_k_leaves_the_scorers_array_alone_and_batches_agree() -> None:
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((7, 30)).astype(np.float32)
    before = scores.copy()
    users = np.array([6, 0, 3, 3, 1])
    seen = csr([[1, 2], [], [5], [0, 29], [], [], [7, 8, 9]])
    whole = top_k(FixedScorer(scores), users, 5, seen)
    np.testing.assert_array_equal(top_k(FixedScorer(scores), users, 5, seen, batch_size=2), whole)
    np.testing.assert_array_equal(scores, before)
    np.testing.assert_array_equal(
        whole, np.argsort(-scores_without(scores, seen)[users], kind="stable")[:, :5]
    )


def scores_without(scores: Float32Array, seen: Csr) -> Float32Array:
    out = scores.copy()
    for user in range(len(out)):
        out[user, seen[1][seen[0][user] : seen[0][user + 1]]] = -np.inf
    return out


# --- evaluate_ranking ------------------------------------------------------------------------


def test_evaluate_ranking_with_a_fixed_scorer() -> None:
    scores = np.array(
        [
            [0.9, 0.8, 0.7, 0.6, 0.5],  # user 0: seen {0}, ranks 1, 2, 3, 4
            [0.1, 0.2, 0.3, 0.4, 0.5],  # user 1: nothing seen, ranks 4, 3, 2, 1
            [0.0, 0.0, 0.0, 0.0, 0.0],  # user 2: not in the target
        ],
        dtype=np.float32,
    )
    scorer: Scorer = FixedScorer(scores)
    # user 0's target item 2 ranks 2nd; user 1's target item 0 ranks 5th (outside k=2)
    target = log_of([0, 1], [2, 0], num_users=3, num_items=5)
    report = evaluate_ranking(scorer, target, csr([[0], [], []]), ks=(2, 5), protocol="test")
    assert report.protocol == "test"
    assert (report.num_users, report.num_items) == (2, 5)
    m = report.metrics
    assert m["recall@2"] == pytest.approx(0.5)  # (1 + 0) / 2
    assert m["hr@2"] == pytest.approx(0.5)
    assert m["precision@2"] == pytest.approx(0.25)  # (1/2 + 0) / 2
    assert m["mrr@2"] == pytest.approx(0.25)  # (1/2 + 0) / 2
    assert m["ndcg@2"] == pytest.approx(INV_LOG3 / 2)  # (1/log2(3) + 0) / 2
    assert m["map@2"] == pytest.approx(0.25)  # (1/2 / 1 + 0) / 2
    assert m["coverage@2"] == pytest.approx(4 / 5)  # {1, 2} and {4, 3}
    assert m["recall@5"] == pytest.approx(1.0)
    assert m["mrr@5"] == pytest.approx((1 / 2 + 1 / 5) / 2)
    assert m["ndcg@5"] == pytest.approx((INV_LOG3 + 1 / math.log2(6)) / 2)


def test_user_metrics_keep_one_value_per_user_and_list_metrics_apart() -> None:
    scores = np.array([[0.9, 0.8, 0.7, 0.6], [0.1, 0.2, 0.3, 0.4]], dtype=np.float32)
    target = log_of([1, 0, 0], [0, 2, 3], num_users=2, num_items=4)
    popularity = np.array([1, 1, 1, 1], dtype=np.int64)
    result = user_metrics(FixedScorer(scores), target, None, ks=(2,), popularity=popularity)
    np.testing.assert_array_equal(result.users, [0, 1])
    # user 0 ranks 0, 1 and wants {2, 3}: nothing; user 1 ranks 3, 2 and wants {0}: nothing
    np.testing.assert_allclose(result.per_user["hr@2"], [0.0, 0.0])
    np.testing.assert_allclose(result.per_user["novelty@2"], [2.0, 2.0])  # -log2(1/4)
    assert set(result.lists) == {"coverage@2", "gini@2"}
    assert result.lists["coverage@2"] == pytest.approx(1.0)
    assert result.means()["hr@2"] == 0.0
    assert result.means().keys() == result.per_user.keys() | result.lists.keys()


def test_evaluate_ranking_refuses_bad_input() -> None:
    scorer = FixedScorer(np.zeros((1, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="nothing to rank"):
        evaluate_ranking(scorer, log_of([], [], 1, 3), None)
    with pytest.raises(ValueError, match="ks must be positive"):
        evaluate_ranking(scorer, log_of([0], [1], 1, 3), None, ks=(0, 10))


# --- taste_recovery --------------------------------------------------------------------------


def test_taste_recovery() -> None:
    category = np.array([0, 1, 0, 1], dtype=np.int64)
    ranked = ranked_of([[0, 1], [0, 2], [0, 2]])
    taste = np.array([[0.5, 0.5], [0.0, 1.0], [1.0, 1.0]], dtype=np.float32)
    # histograms [1/2, 1/2], [1, 0], [1, 0]; cosines 1, 0 and 1/sqrt(2)
    assert taste_recovery(ranked, category, taste) == pytest.approx((1 + 0 + 2**-0.5) / 3)


def test_taste_recovery_refuses_misaligned_rows() -> None:
    with pytest.raises(ValueError, match="one row per user"):
        taste_recovery(ranked_of([[0]]), np.array([0]), np.ones((2, 1), dtype=np.float32))


# --- properties ------------------------------------------------------------------------------


@st.composite
def rankings(draw: st.DrawFn) -> tuple[Int64Array, Csr, int]:
    """Rankings of a small catalogue and non-empty relevant sets, one per user."""
    num_items = draw(st.integers(2, 12))
    num_users = draw(st.integers(1, 6))
    k = draw(st.integers(1, num_items))
    items = st.permutations(range(num_items))
    ranked = [draw(items)[:k] for _ in range(num_users)]
    relevant = [sorted(draw(st.sets(st.integers(0, num_items - 1), min_size=1))) for _ in ranked]
    return ranked_of(ranked), csr(relevant), k


@PROPERTY
@given(rankings())
def test_metrics_lie_in_unit_interval(case: tuple[Int64Array, Csr, int]) -> None:
    ranked, relevant, _ = case
    for metric in METRICS:
        values = metric(ranked, relevant)
        assert values.shape == (len(ranked),)
        assert ((values >= 0) & (values <= 1 + 1e-12)).all(), metric.__name__


@PROPERTY
@given(rankings())
def test_metrics_relate_as_they_should(case: tuple[Int64Array, Csr, int]) -> None:
    ranked, relevant, k = case
    hits = np.array([np.isin(row, relevant[1][a:b]).sum() for row, a, b in rows_of(case)])
    np.testing.assert_allclose(precision_at_k(ranked, relevant) * k, hits)
    assert (mrr_at_k(ranked, relevant) >= hit_rate_at_k(ranked, relevant) / k).all()
    recalls = [recall_at_k(ranked[:, :j], relevant) for j in range(1, k + 1)]
    assert all((a <= b).all() for a, b in itertools.pairwise(recalls))


def rows_of(case: tuple[Int64Array, Csr, int]) -> list[tuple[Int64Array, int, int]]:
    ranked, (indptr, _), _ = case
    return [(ranked[u], int(indptr[u]), int(indptr[u + 1])) for u in range(len(ranked))]


@PROPERTY
@given(rankings())
def test_a_single_relevant_item_ranked_first_is_perfect(case: tuple[Int64Array, Csr, int]) -> None:
    ranked, _, _ = case
    first_only = csr([[int(row[0])] for row in ranked])
    for metric in (recall_at_k, hit_rate_at_k, ndcg_at_k, mrr_at_k, map_at_k):
        np.testing.assert_allclose(metric(ranked, first_only), 1.0)


@PROPERTY
@given(
    st.integers(4, 15).flatmap(
        lambda n: st.tuples(st.permutations(range(n)), st.integers(0, 2**32 - 1))
    )
)
def test_permuting_the_catalogue_changes_nothing(case: tuple[list[int], int]) -> None:
    perm, seed = case
    num_items = len(perm)
    new_index = np.array(perm, dtype=np.int64)
    rng = np.random.default_rng(seed)
    num_users = 4
    # distinct scores, so the tie rule (which depends on item indices) never comes into play
    scores = rng.permutation(num_users * num_items).reshape(num_users, num_items).astype(np.float32)
    target_users = rng.integers(0, num_users, 6)
    target_items = rng.integers(0, num_items, 6)
    # one seen item each, so at least k = 3 items stay eligible and no tie at -inf is cut
    seen = csr([[int(rng.integers(0, num_items))] for _ in range(num_users)])

    moved_scores = np.empty_like(scores)
    moved_scores[:, new_index] = scores
    moved_seen = (seen[0], new_index[seen[1]])
    ks = (1, 3)
    before = evaluate_ranking(
        FixedScorer(scores),
        log_of(list(target_users), list(target_items), num_users, num_items),
        seen,
        ks=ks,
    )
    after = evaluate_ranking(
        FixedScorer(moved_scores),
        log_of(list(target_users), list(new_index[target_items]), num_users, num_items),
        moved_seen,
        ks=ks,
    )
    assert before.metrics.keys() == after.metrics.keys()
    for name, value in before.metrics.items():
        assert after.metrics[name] == pytest.approx(value), name


@PROPERTY
@given(rankings())
def test_map_all_is_bounded_by_map_and_recall(case: tuple[Int64Array, Csr, int]) -> None:
    ranked, relevant, k = case
    map_all, map_k = map_all_at_k(ranked, relevant), map_at_k(ranked, relevant)
    assert (map_all <= map_k + 1e-12).all()
    assert (map_all <= recall_at_k(ranked, relevant) + 1e-12).all()
    few = np.diff(relevant[0]) <= k  # no more relevant items than slots: the two agree
    np.testing.assert_allclose(map_all[few], map_k[few])


@PROPERTY
@given(
    st.integers(1, 8).flatmap(
        lambda n: st.tuples(st.just(n), st.lists(st.integers(0, n - 1), min_size=1, max_size=30))
    )
)
def test_gini_matches_the_mean_absolute_difference(case: tuple[int, list[int]]) -> None:
    num_items, shown = case
    exposure = np.bincount(shown, minlength=num_items).astype(float)
    # Gini = sum_ij |c_i - c_j| / (2 n^2 mean c)
    expected = np.abs(exposure[:, None] - exposure[None, :]).sum() / (
        2 * num_items**2 * exposure.mean()
    )
    assert gini_at_k(ranked_of([[i] for i in shown]), num_items) == pytest.approx(expected)


@PROPERTY
@given(st.lists(st.integers(0, 20), min_size=2, max_size=10))
def test_novelty_is_higher_for_rarer_items(counts: list[int]) -> None:
    popularity = np.array(counts, dtype=np.int64)
    if popularity.sum() == 0:
        return
    order = np.argsort(-np.maximum(popularity, 1), kind="stable")
    head, tail = order[:1], order[-1:]
    novelty = novelty_at_k(np.stack([head, tail]).astype(np.int64), popularity)
    assert novelty[0] <= novelty[1]
    assert (novelty >= 0).all()
