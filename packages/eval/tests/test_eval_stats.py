"""Bootstrap intervals, the paired test and the bench summary, on seeded synthetic users."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pinlab_eval import (
    BenchSummary,
    Float64Array,
    UserMetrics,
    bootstrap_ci,
    holm,
    paired_bootstrap_test,
    seed_std,
    summarize_models,
)

PROPERTY = settings(max_examples=30, deadline=None)


def ndcg_like(seed: int, users: int, mean: float = 0.4) -> Float64Array:
    """Per-user scores in [0, 1] with many zeros, like nDCG."""
    rng = np.random.default_rng(seed)
    return np.where(rng.random(users) < 0.2, 0.0, rng.beta(4 * mean, 4 * (1 - mean), users))


def user_metrics_of(users: int, **per_user: Float64Array) -> UserMetrics:
    return UserMetrics(
        users=np.arange(users, dtype=np.int64), per_user=per_user, lists={"coverage@10": 0.3}
    )


# --- bootstrap intervals -----------------------------------------------------------------------


def test_interval_contains_the_mean_and_narrows_with_more_users() -> None:
    few, many = ndcg_like(0, 100), ndcg_like(1, 10_000)
    (low, high), (low_many, high_many) = (
        bootstrap_ci({"ndcg@10": values})["ndcg@10"] for values in (few, many)
    )
    assert low < few.mean() < high
    assert low_many < many.mean() < high_many
    # 100 times the users: about a tenth of the width
    assert (high_many - low_many) < (high - low) / 5


def test_interval_width_is_about_four_standard_errors() -> None:
    values = ndcg_like(2, 2000)
    low, high = bootstrap_ci({"x": values}, resamples=2000)["x"]
    standard_error = values.std() / np.sqrt(len(values))
    assert high - low == pytest.approx(2 * 1.96 * standard_error, rel=0.1)


def test_intervals_are_seeded() -> None:
    per_user = {"a": ndcg_like(3, 300), "b": ndcg_like(4, 300)}
    assert bootstrap_ci(per_user, seed=7) == bootstrap_ci(per_user, seed=7)
    assert bootstrap_ci(per_user, seed=7) != bootstrap_ci(per_user, seed=8)


def test_nan_per_user_values_are_refused() -> None:
    with pytest.raises(ValueError, match="'recall@10' has NaN"):
        bootstrap_ci({"ndcg@10": np.ones(3), "recall@10": np.array([1.0, np.nan, 0.0])})


@PROPERTY
@given(st.lists(st.floats(0, 1), min_size=1, max_size=40), st.integers(0, 2**32 - 1))
def test_interval_is_ordered_and_brackets_the_mean(values: list[float], seed: int) -> None:
    array = np.array(values)
    low, high = bootstrap_ci({"m": array}, resamples=200, seed=seed)["m"]
    assert low <= array.mean() + 1e-9
    assert array.mean() <= high + 1e-9


# --- paired test -------------------------------------------------------------------------------


def test_paired_test_detects_a_real_difference() -> None:
    a = ndcg_like(5, 500)
    rng = np.random.default_rng(6)
    b = np.clip(a - 0.03 + rng.normal(0, 0.05, 500), 0, 1)  # a is better by about 0.03
    result = paired_bootstrap_test(a, b)
    assert result.significant
    assert result.p_value < 0.001
    assert result.difference == pytest.approx(float((a - b).mean()))
    assert result.difference_ci95[0] > 0
    assert "paired bootstrap" in result.test


def test_paired_test_finds_nothing_between_equally_good_models() -> None:
    a, b = ndcg_like(7, 500), ndcg_like(8, 500)  # same distribution, independent draws
    result = paired_bootstrap_test(a, b)
    assert not result.significant
    assert result.p_value > 0.05
    assert result.difference_ci95[0] < 0 < result.difference_ci95[1]


def test_identical_models_have_p_value_one() -> None:
    a = ndcg_like(9, 50)
    result = paired_bootstrap_test(a, a.copy())
    assert (result.difference, result.p_value, result.significant) == (0.0, 1.0, False)


def test_paired_test_needs_the_same_users() -> None:
    with pytest.raises(ValueError, match="same users"):
        paired_bootstrap_test(np.ones(3), np.ones(4))


# --- bench summary -----------------------------------------------------------------------------


def test_summary_rows_and_comparisons_over_seeds() -> None:
    users = 400
    rng = np.random.default_rng(11)
    strong = [ndcg_like(10 + r, users, mean=0.5) for r in range(3)]
    results = {
        "popularity": [
            user_metrics_of(users, **{"ndcg@10": ndcg_like(20 + r, users, mean=0.2)})
            for r in range(3)
        ],
        "ease": [user_metrics_of(users, **{"ndcg@10": s}) for s in strong],
        "ials": [
            user_metrics_of(
                users, **{"ndcg@10": np.clip(s - 0.04 + rng.normal(0, 0.05, users), 0, 1)}
            )
            for s in strong
        ],
    }
    summary = summarize_models(results)
    assert summary.seeds == 3
    assert [row.model for row in summary.rows] == ["popularity", "ease", "ials"]
    ease = summary.rows[1]
    per_seed = [float(s.mean()) for s in strong]
    assert ease.per_seed["ndcg@10"] == pytest.approx(per_seed)
    assert ease.metrics["ndcg@10"] == pytest.approx(np.mean(per_seed))
    assert ease.std["ndcg@10"] == pytest.approx(np.std(per_seed, ddof=1))
    assert ease.num_users == 3 * users
    for row in summary.rows:
        low, high = row.ci95["ndcg@10"]
        assert low < row.metrics["ndcg@10"] < high
        assert row.metrics["coverage@10"] == 0.3  # list metrics: mean over seeds, no interval
        assert row.std["coverage@10"] == 0.0 and "coverage@10" not in row.ci95
    pairs = [(c.a, c.b) for c in summary.comparisons]
    assert pairs == [("ease", "ials"), ("ease", "popularity"), ("ials", "popularity")]
    first = summary.comparisons[0]
    assert first.difference > 0 and first.significant and first.wins == 3
    assert len(first.per_seed) == 3 and all(d > 0 for d in first.per_seed)
    assert first.p_holm >= first.p_value
    dumped = summary.model_dump(mode="json")
    assert BenchSummary.model_validate(dumped) == summary


def test_holm_by_hand() -> None:
    # Sorted 0.01, 0.03, 0.04 times 3, 2, 1: 0.03, 0.06, 0.04 -> running max 0.03, 0.06, 0.06.
    assert holm([0.04, 0.01, 0.03]) == pytest.approx([0.06, 0.03, 0.06])
    assert holm([0.9, 0.8]) == [1.0, 1.0]


@PROPERTY
@given(st.lists(st.floats(0, 1), min_size=1, max_size=20))
def test_holm_never_lowers_a_p_value_and_keeps_the_order(p_values: list[float]) -> None:
    adjusted = holm(p_values)
    assert all(a >= p and a <= 1 for a, p in zip(adjusted, p_values, strict=True))
    order = np.argsort(p_values, kind="stable")
    assert all(np.diff(np.asarray(adjusted)[order]) >= 0)


def test_one_model_has_no_comparison() -> None:
    summary = summarize_models({"ease": [user_metrics_of(10, **{"ndcg@10": ndcg_like(13, 10)})]})
    assert summary.comparisons == []
    assert len(summary.rows) == 1 and summary.rows[0].std["ndcg@10"] == 0.0


def test_summary_refuses_models_ranked_for_other_users() -> None:
    a = user_metrics_of(5, **{"ndcg@10": ndcg_like(14, 5)})
    b = UserMetrics(users=np.arange(1, 6), per_user={"ndcg@10": ndcg_like(15, 5)}, lists={})
    with pytest.raises(ValueError, match="other users"):
        summarize_models({"a": [a], "b": [b]})


def test_summary_refuses_unequal_runs() -> None:
    a = user_metrics_of(5, **{"ndcg@10": ndcg_like(14, 5)})
    with pytest.raises(ValueError, match="same number of runs"):
        summarize_models({"a": [a, a], "b": [a]})


def test_summary_says_which_metric_is_missing() -> None:
    a = user_metrics_of(5, **{"ndcg@10": ndcg_like(16, 5)})
    b = user_metrics_of(5, **{"ndcg@20": ndcg_like(17, 5)})
    with pytest.raises(ValueError, match="no per-user 'ndcg@10'"):
        summarize_models({"a": [a], "b": [b]})


def test_seed_std_is_the_sample_std_and_zero_for_one_run() -> None:
    # (1, 2, 3, 6): mean 3, squared deviations 4 + 1 + 0 + 9 = 14, over n - 1 = 3
    assert seed_std([1.0, 2.0, 3.0, 6.0]) == pytest.approx((14 / 3) ** 0.5)
    assert seed_std(np.array([0.5, 0.5])) == 0.0
    assert seed_std([0.7]) == 0.0
