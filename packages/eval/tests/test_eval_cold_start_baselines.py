"""Cold-start baselines: the exact random expectation, feature popularity, content kNN."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pinlab_data import PinlabDataError, SynthConfig, interaction_log, load_dataset, write_synth
from pinlab_data.contracts import Float32Array, Int64Array, InteractionLog
from pinlab_eval import (
    ContentKNN,
    FeaturePopularity,
    Holdout,
    HoldoutCounts,
    apply_protocol,
    evaluate_holdout,
    protocol_spec,
    random_ranking_metrics,
)


def log_of(pairs: list[tuple[int, int]], num_users: int, num_items: int) -> InteractionLog:
    users = np.array([u for u, _ in pairs], dtype=np.int64)
    items = np.array([i for _, i in pairs], dtype=np.int64)
    return InteractionLog(
        users=users,
        items=items,
        timestamps=np.arange(len(pairs), dtype=np.int64),
        weights=np.ones(len(pairs), dtype=np.float32),
        user_ids=np.arange(num_users, dtype=np.int64),
        item_ids=np.arange(num_items, dtype=np.int64),
    )


def cold_holdout(
    train: list[tuple[int, int]],
    target: list[tuple[int, int]],
    candidates: list[int],
    num_users: int,
    num_items: int,
) -> Holdout:
    counts = HoldoutCounts(
        train_interactions=len(train),
        target_interactions=len(target),
        target_users=len({u for u, _ in target}),
        skipped_users=0,
        dropped_interactions=0,
    )
    return Holdout(
        log_of(train, num_users, num_items),
        log_of(target, num_users, num_items),
        None,
        counts,
        np.array(candidates, dtype=np.int64),
    )


def test_random_expectation_by_hand() -> None:
    # 4 cold items 2..5; user 0 wants one of them, user 1 two; top 2.
    holdout = cold_holdout(
        [(0, 0), (1, 1)], [(0, 2), (1, 3), (1, 4)], [2, 3, 4, 5], num_users=2, num_items=6
    )
    metrics = random_ranking_metrics(holdout, ks=(2,))
    # hr: user 0 misses with C(3,2)/C(4,2) = 1/2, user 1 with C(2,2)/C(4,2) = 1/6.
    assert metrics["hr@2"] == pytest.approx((0.5 + 5 / 6) / 2)
    # ndcg: E[DCG] = r/4 (1 + 1/log2 3); ideal 1 for user 0, 1 + 1/log2 3 for user 1.
    discounts = 1 + 1 / math.log2(3)
    assert metrics["ndcg@2"] == pytest.approx((discounts / 4 + 0.5) / 2)
    assert metrics["recall@2"] == pytest.approx(0.5)
    assert metrics["precision@2"] == pytest.approx((0.25 + 0.5) / 2)


class FixedScores:
    def __init__(self, scores: Float32Array) -> None:
        self.scores = scores

    def score(self, users: Int64Array) -> Float32Array:
        return np.broadcast_to(self.scores, (len(users), len(self.scores))).copy()


@settings(max_examples=25, deadline=None)
@given(
    num_candidates=st.integers(1, 5),
    wanted=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    k=st.integers(1, 6),
)
def test_random_expectation_is_the_mean_over_every_ranking(
    num_candidates: int, wanted: list[int], k: int
) -> None:
    num_users, num_items = len(wanted), num_candidates + 1  # item 0 is warm
    train = [(u, 0) for u in range(num_users)]
    target = [(u, 1 + i) for u, r in enumerate(wanted) for i in range(min(r, num_candidates))]
    holdout = cold_holdout(train, target, list(range(1, num_items)), num_users, num_items)
    expected = random_ranking_metrics(holdout, ks=(k,))
    # Brute force: every ordering of the candidates, each ranked by the real metric code.
    totals = dict.fromkeys(expected, 0.0)
    orders = list(itertools.permutations(range(num_candidates)))
    for order in orders:
        scores = np.full(num_items, -1.0, dtype=np.float32)
        scores[1:] = num_candidates - np.array(order, dtype=np.float32)
        measured = evaluate_holdout(FixedScores(scores), holdout, ks=(k,)).means()
        for name in totals:
            totals[name] += measured[name] / len(orders)
    for name, value in expected.items():
        assert value == pytest.approx(totals[name], abs=1e-9), name


def test_feature_popularity_ranks_by_category_and_breaks_ties_at_random() -> None:
    # Items 0-1 category 0, 2-3 category 1, 4-7 category 2; cold items 3..7.
    category = np.array([0, 0, 1, 1, 2, 2, 2, 2], dtype=np.int64)
    train = log_of([(0, 0), (1, 0), (1, 1), (0, 2)], num_users=2, num_items=8)
    model = FeaturePopularity(train, category, seed=0)
    scores = model.score(np.array([0, 1], dtype=np.int64))
    assert scores.shape == (2, 8) and (scores[0] == scores[1]).all()
    # Category 1 had one interaction, category 2 none: item 3 outranks every item of 2.
    assert (scores[0, 3] > scores[0, 4:]).all()
    assert np.floor(scores[0]).tolist() == [3, 3, 1, 1, 0, 0, 0, 0]
    # Ties among items 4..7 follow a seeded permutation, not the index order.
    tie_orders = {
        tuple(np.argsort(-FeaturePopularity(train, category, s).item_scores[4:]).tolist())
        for s in range(10)
    }
    assert len(tie_orders) > 1
    assert FeaturePopularity(train, category, 3).item_scores.tolist() == (
        FeaturePopularity(train, category, 3).item_scores.tolist()
    )
    with pytest.raises(PinlabDataError, match="one non-negative code per item"):
        FeaturePopularity(train, category[:5], seed=0)


def test_content_knn_ranks_items_near_the_users_history_first() -> None:
    # Two users; user 0 engaged with item 0 (east), user 1 with items 1 and 2 (north, west).
    features = np.array(
        [[1, 0], [0, 1], [-1, 0], [0.9, 0.1], [0.1, 0.9], [-0.9, -0.1], [0.7, 0.7]],
        dtype=np.float32,
    )
    train = log_of([(0, 0), (1, 1), (1, 2)], num_users=2, num_items=7)
    candidates = np.array([3, 4, 5, 6], dtype=np.int64)
    nearest = ContentKNN(train, features, neighbours=1, candidates=candidates)
    scores = nearest.score(np.array([0, 1], dtype=np.int64))
    assert np.isneginf(scores[:, :3]).all()
    assert np.argmax(scores[0]) == 3
    # User 1: item 4 is nearest north, item 5 nearest west; 6 is between north and east.
    assert scores[1, 4] == pytest.approx(features[4] @ features[1] / np.linalg.norm(features[4]))
    assert scores[1, 5] > scores[1, 6]
    # With neighbours >= history, the score is the mean cosine over the whole history.
    mean = ContentKNN(train, features, neighbours=2, candidates=candidates)
    averaged = mean.score(np.array([1], dtype=np.int64))[0]
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    assert averaged[candidates] == pytest.approx(
        ((unit[[1, 2]] @ unit[candidates].T).mean(axis=0)).tolist(), abs=1e-6
    )
    with pytest.raises(PinlabDataError, match="one row per item"):
        ContentKNN(train, features[:3])


def test_random_hit_rate_matches_monte_carlo_on_a_synthetic_world(tmp_path: Path) -> None:
    small = SynthConfig(
        num_pins=100, num_users=60, num_categories=6, num_creators=30, interactions_per_user=15
    )
    write_synth(tmp_path / "world", small)
    log = interaction_log(load_dataset(tmp_path / "world"))
    holdout = apply_protocol(log, protocol_spec("cold-start", {"seed": 3})).test
    assert holdout.candidates is not None
    cold, k = len(holdout.candidates), 10
    _, per_user = np.unique(holdout.target.users, return_counts=True)
    expected = np.mean([1 - math.comb(cold - r, k) / math.comb(cold, k) for r in per_user])
    assert random_ranking_metrics(holdout, (k,))["hr@10"] == pytest.approx(expected)
    # Monte Carlo agrees: draw k random candidates per user and count hits.
    rng = np.random.default_rng(0)
    users = np.unique(holdout.target.users)
    hits = 0
    for _ in range(200):
        for user in users:
            drawn = rng.choice(holdout.candidates, k, replace=False)
            hits += int(np.isin(drawn, holdout.target.items[holdout.target.users == user]).any())
    assert hits / (200 * len(users)) == pytest.approx(expected, abs=0.02)
