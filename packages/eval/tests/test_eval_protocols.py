"""Protocols: split proportions and determinism, the temporal cut, sampled negatives."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pinlab_data import leave_last_out
from pinlab_data.contracts import Float32Array, Int64Array, InteractionLog
from pinlab_eval import (
    CandidateScorer,
    NegativeSampling,
    ProtocolSpec,
    apply_protocol,
    evaluate_holdout,
    protocol_spec,
    sample_negatives,
    sampled_user_metrics,
)

PROPERTY = settings(max_examples=40, deadline=None)


def log_of(
    users: list[int] | Int64Array,
    items: list[int] | Int64Array,
    timestamps: list[int] | Int64Array | None = None,
    num_users: int | None = None,
    num_items: int | None = None,
) -> InteractionLog:
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    stamps = np.arange(len(users)) if timestamps is None else timestamps
    return InteractionLog(
        users=users,
        items=items,
        timestamps=np.asarray(stamps, dtype=np.int64),
        weights=np.ones(len(users), dtype=np.float32),
        user_ids=np.arange(num_users or int(users.max()) + 1, dtype=np.int64) + 100,
        item_ids=np.arange(num_items or int(items.max()) + 1, dtype=np.int64) + 1000,
    )


def random_log(
    seed: int, num_users: int = 60, num_items: int = 40, size: int = 900
) -> InteractionLog:
    """Distinct (user, item) pairs with skewed item popularity and shuffled timestamps."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, num_items + 1)
    users = rng.integers(0, num_users, size)
    items = rng.choice(num_items, size, p=popularity / popularity.sum())
    pairs = np.unique(users * num_items + items)
    return log_of(
        pairs // num_items,
        pairs % num_items,
        rng.permutation(len(pairs)),
        num_users=num_users,
        num_items=num_items,
    )


def pairs(log: InteractionLog) -> set[tuple[int, int]]:
    return set(zip(log.users.tolist(), log.items.tolist(), strict=True))


def kept_by_recommenders(size: int, ratio: float) -> int:
    """How many of a group's `size` rows `python_stratified_split` trains on.

    Its `split_pandas_data_with_ratios` cuts the shuffled group with
    `np.split(group, [round(ratio * len(group))])`: Python's round, half to even.
    """
    return len(np.split(np.arange(size), [round(ratio * size)])[0])


class TableScorer:
    def __init__(self, table: Float32Array) -> None:
        self.table = table

    def score(self, users: Int64Array) -> Float32Array:
        return self.table[users]


# --- the spec ----------------------------------------------------------------------------------


def test_spec_defaults_match_the_published_protocols() -> None:
    spec = ProtocolSpec(name="stratified")
    assert (spec.seed, spec.ratio, spec.stratify_by) == (42, 0.75, "item")
    assert spec.label() == "stratified(ratio=0.75, stratify_by=item, valid_ratio=0.9, seed=42)"
    assert spec.settings() == {
        "name": "stratified",
        "seed": 42,
        "ratio": 0.75,
        "stratify_by": "item",
        "valid_ratio": 0.9,
    }
    assert ProtocolSpec(name="leave-last-out").label() == "leave-last-out(ranking=full, seed=42)"
    assert ProtocolSpec(name="temporal", cut=7).label() == "temporal(cut=7, seed=42)"
    assert ProtocolSpec.model_validate_json(spec.model_dump_json()) == spec


def test_validation_spec_moves_the_seed_on_and_drops_a_timestamp_cut() -> None:
    assert ProtocolSpec(name="stratified", seed=3).for_validation().seed == 4
    inner = ProtocolSpec(name="stratified", ratio=0.8, valid_ratio=0.95).for_validation()
    assert (inner.ratio, inner.seed) == (0.95, 43)
    inner = ProtocolSpec(name="temporal", cut=50, quantile=0.7).for_validation()
    assert (inner.cut, inner.quantile) == (None, 0.7)


@pytest.mark.parametrize(
    ("name", "given", "says"),
    [
        ("stratified", {"negatives": 100}, "leave-last-out protocol"),
        ("temporal", {"stratify_by": "user"}, "stratified protocol"),
        ("leave-last-out", {"sampling": "popularity"}, "set `negatives`"),
        ("stratified", {"ratio": 1.0}, "ratio"),
        ("random", {}, "protocols: stratified, leave-last-out, temporal"),
    ],
)
def test_bad_protocols_are_one_line_data_errors(
    name: str, given: dict[str, object], says: str
) -> None:
    with pytest.raises(ValueError, match=says) as error:
        protocol_spec(name, given)
    assert type(error.value).__name__ == "PinlabDataError"
    assert "\n" not in str(error.value)


def test_unset_settings_are_left_at_their_defaults() -> None:
    spec = protocol_spec("leave-last-out", {"negatives": None, "seed": 7, "stratify_by": None})
    assert spec == ProtocolSpec(name="leave-last-out", seed=7)


# --- stratified --------------------------------------------------------------------------------


@pytest.mark.parametrize("by", ["item", "user"])
def test_stratified_trains_on_the_first_ratio_of_every_group(by: str) -> None:
    log = random_log(0)
    spec = ProtocolSpec.model_validate({"name": "stratified", "stratify_by": by})
    split = apply_protocol(log, spec)
    group = "items" if by == "item" else "users"
    train = np.bincount(getattr(split.test.train, group), minlength=40)
    whole = np.bincount(getattr(log, group), minlength=40)
    expected = [kept_by_recommenders(int(n), 0.75) for n in whole]
    np.testing.assert_array_equal(train, expected)


@PROPERTY
@given(st.integers(0, 2**32 - 1), st.floats(0.3, 0.8), st.sampled_from(["item", "user"]))
def test_stratified_keeps_the_recommenders_share_of_any_group(
    seed: int, ratio: float, by: str
) -> None:
    log = random_log(seed % 101, num_users=15, num_items=12, size=150)
    spec = ProtocolSpec.model_validate(
        {"name": "stratified", "ratio": ratio, "stratify_by": by, "seed": seed}
    )
    train = apply_protocol(log, spec).test.train
    group, size = ("items", 12) if by == "item" else ("users", 15)
    whole = np.bincount(getattr(log, group), minlength=size)
    expected = [kept_by_recommenders(int(n), ratio) for n in whole]
    np.testing.assert_array_equal(np.bincount(getattr(train, group), minlength=size), expected)


def test_stratified_partitions_the_log_and_counts_what_it_skips() -> None:
    log = random_log(1)
    split = apply_protocol(log, ProtocolSpec(name="stratified"))
    counts = split.test.counts
    train, target = pairs(split.test.train), pairs(split.test.target)
    assert not train & target
    assert counts.target_interactions + counts.dropped_interactions == len(log) - len(train)
    assert counts.train_interactions == len(train) == len(split.test.train)
    # targets only for users with training data; the rest counted as skipped
    assert set(split.test.target.users.tolist()) <= set(split.test.train.users.tolist())
    untrained = set(log.users.tolist()) - set(split.test.train.users.tolist())
    assert counts.skipped_users == len(untrained)
    np.testing.assert_array_equal(split.test.train.item_ids, log.item_ids)  # same index space


def test_a_user_known_only_from_a_single_rated_item_is_skipped_and_counted() -> None:
    # users 0..5 rated items 0..5; user 6 rated only item 6, which nobody else rated: at ratio
    # 0.4 a group of one keeps round(0.4) = 0 rows in train, so user 6 has no training data
    grid = np.arange(36)
    log = log_of([*(grid // 6), 6], [*(grid % 6), 6])
    split = apply_protocol(log, ProtocolSpec(name="stratified", ratio=0.4))
    assert 6 not in split.test.target.users
    assert 6 not in split.test.train.items
    untrained = set(range(7)) - set(split.test.train.users.tolist())
    assert 6 in untrained
    assert split.test.counts.skipped_users == len(untrained)
    assert split.test.counts.dropped_interactions == int(np.isin(log.users, list(untrained)).sum())


def test_stratified_is_deterministic_in_its_seed() -> None:
    log = random_log(2)
    first = apply_protocol(log, ProtocolSpec(name="stratified", seed=5))
    again = apply_protocol(log, ProtocolSpec(name="stratified", seed=5))
    other = apply_protocol(log, ProtocolSpec(name="stratified", seed=6))
    assert pairs(first.test.target) == pairs(again.test.target)
    assert pairs(first.valid.target) == pairs(again.valid.target)
    assert pairs(first.test.target) != pairs(other.test.target)


def test_repeated_pairs_are_split_once() -> None:
    log = log_of([0, 0, 0, 1, 1, 1, 0], [0, 1, 2, 0, 1, 2, 0])  # (0, 0) twice
    split = apply_protocol(log, ProtocolSpec(name="stratified", ratio=0.5))
    assert len(split.test.train) + len(split.test.target) == 6
    assert len(pairs(split.test.train) | pairs(split.test.target)) == 6


def test_validation_is_the_protocol_again_inside_training() -> None:
    log = random_log(3)
    split = apply_protocol(log, ProtocolSpec(name="stratified"))
    inner = pairs(split.valid.train) | pairs(split.valid.target)
    assert inner <= pairs(split.test.train)
    assert not inner & pairs(split.test.target)
    assert not pairs(split.valid.train) & pairs(split.valid.target)


# --- leave-last-out ----------------------------------------------------------------------------


def test_leave_last_out_wraps_the_data_package_split() -> None:
    log = random_log(4)
    parts = leave_last_out(log)
    split = apply_protocol(log, ProtocolSpec(name="leave-last-out"))
    assert pairs(split.test.target) == pairs(parts.test)
    assert pairs(split.test.train) == pairs(parts.train) | pairs(parts.valid)
    assert pairs(split.valid.train) == pairs(parts.train)
    assert pairs(split.valid.target) == pairs(parts.valid)
    assert split.test.negatives is None


def test_leave_last_out_with_negatives_samples_a_row_per_target_user() -> None:
    log = random_log(5)
    split = apply_protocol(log, ProtocolSpec(name="leave-last-out", negatives=10, seed=1))
    negatives = split.test.negatives
    assert negatives is not None
    assert negatives.shape == (split.test.counts.target_users, 10)
    assert split.valid.negatives is not None
    for row, user in zip(negatives, np.unique(split.test.target.users), strict=True):
        assert not set(row.tolist()) & set(log.items[log.users == user].tolist())


# --- temporal ----------------------------------------------------------------------------------


def test_temporal_cuts_at_the_quantile_of_timestamps() -> None:
    # ten interactions at times 0..9: the cut is the timestamp at position floor(0.8 * 10) = 8
    users = [0, 1, 0, 1, 0, 1, 0, 1, 0, 1]
    items = [0, 1, 2, 3, 4, 5, 6, 7, 1, 0]
    split = apply_protocol(log_of(users, items), ProtocolSpec(name="temporal"))
    assert split.test.train.timestamps.max() == 7
    np.testing.assert_array_equal(split.test.target.timestamps, [8, 9])


def test_temporal_targets_only_known_users_and_items_new_to_the_user() -> None:
    # cut at time 4; after it: user 0 re-watches item 0 (a repeat), user 1 takes item 9 (never
    # seen in training), user 2 has no training data, user 1 takes item 0 (kept), twice
    users = [0, 1, 0, 1, 0, 1, 2, 1, 1]
    items = [0, 1, 2, 3, 0, 9, 0, 0, 0]
    stamps = [0, 1, 2, 3, 4, 5, 6, 7, 8]
    split = apply_protocol(log_of(users, items, stamps), ProtocolSpec(name="temporal", cut=4))
    assert pairs(split.test.target) == {(1, 0)}
    np.testing.assert_array_equal(split.test.target.timestamps, [7])
    counts = split.test.counts
    assert (counts.skipped_users, counts.dropped_interactions) == (1, 4)


def test_an_explicit_cut_wins_over_the_quantile() -> None:
    log = random_log(6)
    split = apply_protocol(log, ProtocolSpec(name="temporal", cut=100))
    assert split.test.train.timestamps.max() < 100
    assert split.test.target.timestamps.min() >= 100
    assert split.valid.train.timestamps.max() < split.valid.target.timestamps.min()


def test_a_protocol_that_leaves_nobody_to_evaluate_says_so() -> None:
    log = log_of([0, 1], [0, 1], [0, 1])
    with pytest.raises(ValueError, match="no user with both training and held-out"):
        apply_protocol(log, ProtocolSpec(name="temporal"))


# --- sampled negatives -------------------------------------------------------------------------


def test_negatives_are_seeded() -> None:
    log = random_log(7)
    users = np.arange(60, dtype=np.int64)
    first = sample_negatives(log, users, 5, seed=11)
    np.testing.assert_array_equal(first, sample_negatives(log, users, 5, seed=11))
    assert not np.array_equal(first, sample_negatives(log, users, 5, seed=12))


def test_popularity_negatives_follow_popularity_and_skip_untouched_items() -> None:
    # items 1 and 2 chosen by 1 and 3 background users; item 3 by nobody; the probes all
    # chose item 0. One negative per probe: item 2 three times as often as item 1.
    probes = 4000
    users = [*range(probes), probes, probes + 1, probes + 2, probes + 3]
    items = [0] * probes + [1, 2, 2, 2]
    log = log_of(users, items, num_items=4)
    drawn = sample_negatives(log, np.arange(probes), 1, "popularity", seed=0).ravel()
    share = np.bincount(drawn, minlength=4) / probes
    assert share[0] == 0 and share[3] == 0
    assert share[2] == pytest.approx(0.75, abs=0.03)  # binomial sd 0.007


def test_asking_for_more_negatives_than_a_user_has_left_is_an_error() -> None:
    log = log_of([0, 0, 0, 1], [0, 1, 2, 3])
    with pytest.raises(ValueError, match="at most 1 negatives"):
        sample_negatives(log, np.array([0]), 2)


@PROPERTY
@given(st.integers(0, 2**32 - 1), st.integers(1, 8), st.sampled_from(["uniform", "popularity"]))
def test_negatives_are_distinct_and_never_the_users_items(
    seed: int, count: int, sampling: NegativeSampling
) -> None:
    log = random_log(seed % 97, num_users=12, num_items=30, size=150)
    users = np.unique(log.users)
    drawable = set(range(30)) if sampling == "uniform" else set(log.items.tolist())
    if any(len(drawable - set(log.items[log.users == u].tolist())) < count for u in users):
        return  # asking for more than some user has left is an error, tested above
    negatives = sample_negatives(log, users, count, sampling, seed)
    for user, row in zip(users, negatives, strict=True):
        assert len(set(row.tolist())) == count
        assert not set(row.tolist()) & set(log.items[log.users == user].tolist())
        assert set(row.tolist()) <= drawable


# --- sampled evaluation ------------------------------------------------------------------------


def test_the_target_ranks_after_every_negative_scoring_at_least_as_high() -> None:
    scores = np.array([[0.5, 0.9, 0.1, 0.5, 0.7]], dtype=np.float32)
    target = log_of([0], [0], num_items=5)
    # negatives 1, 2, 3 score 0.9, 0.1, 0.5: two at least 0.5, so the target ranks third
    result = sampled_user_metrics(TableScorer(scores), target, np.array([[1, 2, 3]]), ks=(2, 3))
    assert result.per_user["hr@2"][0] == 0.0
    assert result.per_user["hr@3"][0] == 1.0
    assert result.per_user["ndcg@3"][0] == pytest.approx(1 / math.log2(4))
    assert result.per_user["mrr@3"][0] == pytest.approx(1 / 3)
    assert result.per_user["precision@3"][0] == pytest.approx(1 / 3)
    assert result.lists == {}


def test_a_constant_scorer_ranks_the_target_last_not_first() -> None:
    target = log_of([0, 1], [0, 1], num_items=6)
    flat = TableScorer(np.zeros((2, 6), dtype=np.float32))
    result = sampled_user_metrics(flat, target, np.array([[2, 3, 4], [2, 3, 5]]), ks=(3,))
    np.testing.assert_array_equal(result.per_user["hr@3"], [0.0, 0.0])


class CandidateTable(TableScorer):
    """A CandidateScorer over a table that counts the items it was asked about."""

    def __init__(self, table: Float32Array) -> None:
        super().__init__(table)
        self.asked = 0

    def score(self, users: Int64Array) -> Float32Array:
        raise AssertionError("sampled evaluation must not score the whole catalogue")

    def score_candidates(self, users: Int64Array, items: Int64Array) -> Float32Array:
        self.asked += items.size
        return np.take_along_axis(self.table[users], items, axis=1)


def test_a_candidate_scorer_scores_only_the_candidates_and_agrees() -> None:
    rng = np.random.default_rng(3)
    table = rng.random((30, 50)).astype(np.float32)
    table[4, 7] = np.nan  # NaN ranks last either way
    target = log_of(list(range(30)), rng.integers(0, 50, 30).tolist(), num_items=50)
    negatives = rng.integers(0, 50, (30, 9))
    picky = CandidateTable(table)
    assert isinstance(picky, CandidateScorer)
    fast = sampled_user_metrics(picky, target, negatives, ks=(1, 5), batch_size=7)
    slow = sampled_user_metrics(TableScorer(table), target, negatives, ks=(1, 5), batch_size=7)
    assert picky.asked == 30 * 10
    for name, values in slow.per_user.items():
        np.testing.assert_array_equal(fast.per_user[name], values)


def test_a_candidate_scorer_returning_the_wrong_shape_is_refused() -> None:
    class Short(CandidateTable):
        def score_candidates(self, users: Int64Array, items: Int64Array) -> Float32Array:
            return super().score_candidates(users, items)[:, 1:]

    target = log_of([0], [0], num_items=5)
    with pytest.raises(ValueError, match="one score per candidate"):
        sampled_user_metrics(Short(np.zeros((1, 5), np.float32)), target, np.array([[1, 2]]))


def test_sampled_evaluation_needs_one_target_per_user() -> None:
    target = log_of([0, 0], [0, 1], num_items=4)
    with pytest.raises(ValueError, match="one held-out item per user"):
        sampled_user_metrics(TableScorer(np.zeros((1, 4), np.float32)), target, np.array([[2]]))


def test_evaluate_holdout_follows_the_protocol() -> None:
    log = random_log(8)
    rng = np.random.default_rng(0)
    scorer = TableScorer(rng.random((60, 40)).astype(np.float32))
    full = evaluate_holdout(scorer, apply_protocol(log, ProtocolSpec(name="leave-last-out")).test)
    sampled_split = apply_protocol(log, ProtocolSpec(name="leave-last-out", negatives=5))
    sampled = evaluate_holdout(scorer, sampled_split.test)
    assert "novelty@10" in full.per_user and "gini@10" in full.lists
    assert "novelty@10" not in sampled.per_user
    # five negatives: the target is always in the top 10 of 6 candidates
    np.testing.assert_array_equal(sampled.per_user["hr@10"], 1.0)
    np.testing.assert_array_equal(full.users, sampled.users)
