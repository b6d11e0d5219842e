"""Re-rankers: MMR, DPP greedy MAP, category pairs, calibrated, exposure-constrained and the
self-adjusting mode."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np
import pytest

from pinlab_models import (
    PinlabModelError,
    calibrated,
    category_diversity,
    category_pairs,
    dpp,
    exposure_boost,
    exposure_constrained,
    in_relevance_order,
    mmr,
    self_adjusting,
)
from pinlab_models._rerank import CALIBRATION_SMOOTHING

# ---------------------------------------------------------------- MMR (moved from pinlab_serve)


def test_mmr_zero_diversity_keeps_order() -> None:
    vectors = np.eye(4, dtype=np.float32)
    assert mmr([0.9, 0.8, 0.7, 0.6], vectors, list("aabb"), list("xxyy"), 3, 0.0) == [0, 1, 2]


def test_mmr_spreads_categories_and_near_duplicates() -> None:
    # Candidates 0 and 1 are the same picture in the same category; 2 is another category.
    vectors = np.array([[1, 0], [1, 0], [0, 1]], dtype=np.float32)
    relevance = [1.0, 0.95, 0.5]
    assert mmr(relevance, vectors, ["a", "a", "b"], ["x", "x", "x"], 3, 0.0) == [0, 1, 2]
    # Hand-computed at diversity 0.5, step 2 (rel scaled: 1, 0.9, 0):
    #   cand 1: 0.5 * 0.9 - 0.5 * (1/2 + 1/4 + 1/4) = -0.05
    #   cand 2: 0.5 * 0.0 - 0.5 * (0/2 + 0/4 + 1/4) = -0.125  -> 1 still wins
    assert mmr(relevance, vectors, ["a", "a", "b"], ["x", "x", "x"], 3, 0.5) == [0, 1, 2]
    # At 0.8: cand 1: 0.2 * 0.9 - 0.8 = -0.62; cand 2: 0 - 0.8 * 0.25 = -0.2 -> 2 first.
    assert mmr(relevance, vectors, ["a", "a", "b"], ["x", "x", "x"], 3, 0.8) == [0, 2, 1]


def test_mmr_edge_cases() -> None:
    vectors = np.eye(2, dtype=np.float32)
    assert mmr([], np.zeros((0, 2), np.float32), [], [], 5, 0.5) == []
    assert mmr([0.3], vectors[:1], ["a"], ["x"], 5, 1.0) == [0]
    assert sorted(mmr([0.5, 0.5], vectors, ["a", "b"], ["x", "y"], 5, 1.0)) == [0, 1]


# ---------------------------------------------------------------- DPP


def _brute_greedy_dpp(
    relevance: np.ndarray, vectors: np.ndarray, k: int, diversity: float
) -> list[int]:
    """Each step adds the item maximising log det L_Y, with det computed directly."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    rel = (relevance - relevance.min()) / (relevance.max() - relevance.min())
    theta = 1 - diversity
    q = np.exp(theta / (2 * (1 - theta)) * rel)
    kernel = q[:, None] * (unit @ unit.T) * q[None, :]
    chosen: list[int] = []
    for _ in range(k):
        free = [i for i in range(len(rel)) if i not in chosen]
        dets = [np.linalg.det(kernel[np.ix_([*chosen, i], [*chosen, i])]) for i in free]
        chosen.append(free[int(np.argmax(np.log(dets)))])
    return chosen


@pytest.mark.parametrize("seed", range(12))
def test_dpp_matches_brute_force_greedy_log_det(seed: int) -> None:
    rng = np.random.default_rng(seed)
    m = int(rng.integers(2, 9))
    relevance = rng.random(m)
    vectors = rng.standard_normal((m, 8))
    for diversity in (0.2, 0.5, 0.9, 0.99):  # at 1.0 the first pick is a tie
        k = int(rng.integers(1, m + 1))
        want = _brute_greedy_dpp(relevance, vectors, k, diversity)
        assert dpp(list(relevance), vectors, k, diversity) == want


def test_dpp_utility_only_keeps_relevance_order() -> None:
    rng = np.random.default_rng(3)
    relevance = rng.random(30)
    vectors = rng.standard_normal((30, 4))  # rank 4 < 30: the tail is filled by relevance
    order = [int(i) for i in np.argsort(-relevance)]
    assert dpp(list(relevance), vectors, 10, 0.0) == order[:10]
    # theta -> 1 (alpha ~ 5e5): the relevance term dominates without overflowing.
    assert dpp(list(relevance), vectors, 30, 1e-6) == order


def test_dpp_hand_case_skips_duplicate() -> None:
    # 0 and 1 are the same direction: after 0, candidate 1 adds nothing to det, so 2 comes next,
    # and 1 fills in last by relevance.
    vectors = np.array([[1, 0], [2, 0], [0, 1]], dtype=np.float32)
    assert dpp([1.0, 0.9, 0.0], vectors, 3, 0.5) == [0, 2, 1]
    assert dpp([1.0, 0.9, 0.0], vectors, 3, 0.0) == [0, 1, 2]
    # Cosine 0.6 between 0 and 1, 1 orthogonal to nothing: det gain of 1 after 0 is 1 - 0.36,
    # of 2 (orthogonal to 0) is 1. At diversity 0.5 (alpha 0.5, rel 1, 0.9, 0):
    #   1: exp(0.9) * 0.64 = 1.574 ; 2: exp(0) * 1 = 1 -> 1 second.
    vectors = np.array([[1, 0, 0], [0.6, 0.8, 0], [0, 0, 1]])
    assert dpp([1.0, 0.9, 0.0], vectors, 2, 0.5) == [0, 1]
    # At diversity 0.9 (alpha 1/18): 1: exp(0.1) * 0.64 = 0.707 < 1 -> 2 second.
    assert dpp([1.0, 0.9, 0.0], vectors, 2, 0.9) == [0, 2]


# ---------------------------------------------------------------- category pairs


def _pairs_objective(
    chosen: tuple[int, ...], relevance: list[float], categories: list[str], price: float
) -> float:
    picked = [categories[i] for i in chosen]
    same = sum(c * (c - 1) // 2 for c in (picked.count(x) for x in set(picked)))
    return sum(relevance[i] for i in chosen) - price * same


@pytest.mark.parametrize("seed", range(20))
def test_category_pairs_is_the_exact_maximiser(seed: int) -> None:
    rng = np.random.default_rng(seed)
    m = int(rng.integers(2, 10))
    relevance = list(rng.random(m))
    categories = [str(c) for c in rng.choice(list("abc"), m)]
    for price in (0.05, 0.2, 0.6, 3.0):
        k = int(rng.integers(1, m + 1))
        best = max(  # every k-subset
            itertools.combinations(range(m), k),
            key=lambda s: _pairs_objective(s, relevance, categories, price),
        )
        got = category_pairs(relevance, categories, k, price)
        assert sorted(got) == sorted(best), (price, k)


def test_category_pairs_hand_case() -> None:
    # a, a, b at 0.5, 0.45, 0.3; the second pick: 0.45 - price (another a) against 0.3 (a b).
    rel, cats = [0.5, 0.45, 0.3], ["a", "a", "b"]
    assert category_pairs(rel, cats, 2, 0.0) == [0, 1]
    assert category_pairs(rel, cats, 2, 0.1) == [0, 1]  # 0.35 > 0.3
    assert category_pairs(rel, cats, 2, 0.2) == [0, 2]  # 0.25 < 0.3
    # The third pick is the second a whatever the price: nothing else is left.
    assert category_pairs(rel, cats, 3, 5.0) == [0, 2, 1]


def test_category_pairs_spreads_categories_as_the_price_grows() -> None:
    rng = np.random.default_rng(7)
    relevance = list(rng.random(40))
    categories = [str(c) for c in rng.choice(list("abcdef"), 40)]
    diversity = [
        category_diversity([categories[i] for i in category_pairs(relevance, categories, 6, p)])
        for p in (0.0, 0.01, 0.05, 0.2, 10.0)
    ]
    assert diversity == sorted(diversity) and diversity[0] < 1.0
    assert diversity[-1] == 1.0  # six picks, six categories: one of each


@pytest.mark.parametrize("seed", range(10))
def test_category_pairs_is_permutation_consistent(seed: int) -> None:
    rel, _, cats, _ = _instance(seed)
    perm = [int(i) for i in np.random.default_rng(seed + 100).permutation(len(rel))]
    for price in (0.0, 0.1, 0.5, 2.0):
        base = category_pairs(rel, cats, 5, price)
        moved = category_pairs([rel[i] for i in perm], [cats[i] for i in perm], 5, price)
        assert [perm[i] for i in moved] == base


def test_category_pairs_refuses_bad_input() -> None:
    for price in (-0.1, math.nan):
        with pytest.raises(PinlabModelError, match=r"price must be in \[0.0, inf\]"):
            category_pairs([0.1, 0.2], ["a", "b"], 2, price)
    with pytest.raises(PinlabModelError, match="categories has 1 rows but there are 2"):
        category_pairs([0.1, 0.2], ["a"], 2, 0.1)
    with pytest.raises(PinlabModelError, match="must be finite"):
        category_pairs([0.1, math.inf], ["a", "b"], 2, 0.1)


# ---------------------------------------------------------------- calibrated


def _kl_of(order: list[int], categories: list[str], history: list[str]) -> float:
    names = sorted(set(history) | set(categories))
    p = np.array([history.count(c) for c in names]) / len(history)
    chosen = [categories[i] for i in order]
    q = np.array([chosen.count(c) for c in names]) / len(chosen)
    q = (1 - CALIBRATION_SMOOTHING) * q + CALIBRATION_SMOOTHING * p
    return float(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True) if pi > 0))


def test_calibrated_hand_case() -> None:
    # History half a, half b. Relevance (scaled) 1, 0.8, 0 for a, a, b; k = 2.
    # A one-category list: q~ = (0.995, 0.005), KL = 0.5 ln(0.5/0.995) + 0.5 ln(0.5/0.005) = 1.9585.
    # A mixed list: KL 0. Second step at weight w: [0, 1] gives (1 - w) 1.8 - w 1.9585,
    # [0, 2] gives (1 - w) 1.0, so b wins once w > 0.8 / 2.7585 = 0.29.
    history = ["a", "a", "b", "b"]
    cats = ["a", "a", "b"]
    assert _kl_of([0, 1], cats, history) == pytest.approx(1.95851, abs=1e-5)
    assert calibrated([3.0, 2.6, 1.0], cats, history, 2, 0.0) == [0, 1]
    assert calibrated([3.0, 2.6, 1.0], cats, history, 2, 0.28) == [0, 1]
    assert calibrated([3.0, 2.6, 1.0], cats, history, 2, 0.30) == [0, 2]


def test_calibrated_reduces_miscalibration() -> None:
    # The most relevant ten are all comedies; the user watches 60% drama, 40% comedy.
    rng = np.random.default_rng(0)
    cats = ["comedy"] * 10 + ["drama"] * 10 + ["horror"] * 5
    relevance = list(np.concatenate([2 + rng.random(10), 1 + rng.random(10), rng.random(5)]))
    history = ["drama"] * 6 + ["comedy"] * 4
    plain = calibrated(relevance, cats, history, 10, 0.0)
    assert plain == [int(i) for i in np.argsort(-np.asarray(relevance))[:10]]
    tuned = calibrated(relevance, cats, history, 10, 0.5)
    assert _kl_of(tuned, cats, history) < _kl_of(plain, cats, history) / 10
    # Weight 1 ignores relevance: the list takes the history's mix exactly.
    exact = calibrated(relevance, cats, history, 10, 1.0)
    assert sorted(cats[i] for i in exact) == ["comedy"] * 4 + ["drama"] * 6
    assert _kl_of(exact, cats, history) == pytest.approx(0.0, abs=1e-12)


def test_calibrated_genre_lists_split_weight() -> None:
    # An item in two genres counts half to each: [ab] alone already matches a 50/50 history.
    order = calibrated([1.0, 0.9, 0.8], [["a", "b"], "a", "b"], ["a", "b"], 1, 1.0)
    assert order == [0]


@pytest.mark.parametrize("seed", range(5))
def test_in_relevance_order_keeps_the_set_best_first(seed: int) -> None:
    assert in_relevance_order([3, 0, 2], [0.9, 0.5, 0.7, 0.1]) == [0, 2, 3]
    assert in_relevance_order([2, 1], [0.5, 0.5, 0.5]) == [1, 2]  # ties by position
    rng = np.random.default_rng(seed)
    relevance = list(rng.random(20))
    vectors = rng.standard_normal((20, 4))
    chosen = dpp(relevance, vectors, 8, 0.8)
    ordered = in_relevance_order(chosen, relevance)
    assert sorted(ordered) == sorted(chosen)
    assert all(relevance[a] >= relevance[b] for a, b in itertools.pairwise(ordered))


# ---------------------------------------------------------------- exposure-constrained


def test_exposure_hand_case() -> None:
    protected = [False] * 6 + [True] * 4
    relevance = list(np.linspace(1, 0, 10))
    # Minimum protected count at rank t: floor(0.5 t) = 0, 1, 1, 2, 2, 3.
    assert exposure_constrained(relevance, protected, 6, 0.5) == [0, 6, 1, 7, 2, 8]
    # Too few protected candidates: they all come as early as the target asks, then relevance.
    few = [False] * 9 + [True]
    assert exposure_constrained(relevance, few, 4, 0.5) == [0, 9, 1, 2]


def test_exposure_offset_by_hand_and_on_average() -> None:
    protected = [False] * 6 + [True] * 4
    relevance = list(np.linspace(1, 0, 10))
    # Target 0.25, offset 0.5: minimum at rank t is floor(0.25 t + 0.5) = 0, 1, 1, 1, 1, 2.
    assert exposure_constrained(relevance, protected, 6, 0.25, 0.5) == [0, 6, 1, 2, 3, 7]
    assert exposure_constrained(relevance, protected, 6, 0.25) == [0, 1, 2, 6, 3, 4]
    # Over offsets spread evenly on [0, 1), each prefix's protected count averages target * t:
    # targets between the whole-item steps of one list are met on average.
    relevance = list(np.linspace(1, 0, 20))
    protected = [False] * 10 + [True] * 10
    for target in (0.17, 0.18, 0.19):
        counts = np.zeros(10)
        for u in range(1000):
            order = exposure_constrained(relevance, protected, 10, target, (u + 0.5) / 1000)
            counts += np.cumsum([protected[i] for i in order])
        np.testing.assert_allclose(counts / 1000, target * np.arange(1, 11), atol=2e-3)
    with pytest.raises(PinlabModelError, match=r"offset must be in \[0, 1\), got 1.0"):
        exposure_constrained(relevance, protected, 5, 0.2, 1.0)


def test_exposure_keeps_order_when_target_met() -> None:
    protected = [i % 2 == 1 for i in range(10)]
    relevance = list(np.linspace(1, 0, 10))
    assert exposure_constrained(relevance, protected, 8, 0.5) == list(range(8))
    assert exposure_constrained(relevance, [False] * 10, 8, 0.0) == list(range(8))


@pytest.mark.parametrize("seed", range(10))
def test_exposure_reaches_target_share(seed: int) -> None:
    rng = np.random.default_rng(seed)
    m, k = 40, 10
    protected = list(rng.random(m) < 0.3)
    relevance = list(rng.random(m) + np.where(protected, 0.0, 0.5))  # the group is under-ranked
    target = float(rng.choice([0.2, 0.3, 0.5, 0.8]))
    order = exposure_constrained(relevance, protected, k, target)
    if sum(protected) >= math.floor(target * k):
        for t in range(1, k + 1):
            assert sum(protected[i] for i in order[:t]) >= math.floor(target * t + 1e-9)


def test_exposure_boost_hand_case() -> None:
    relevance = [1.0, 0.9, 0.5, 0.85, 0.0]  # scaled: 1, 0.9, 0.5, 0.85, 0
    protected = [False, False, False, True, True]
    assert exposure_boost(relevance, protected, 5, 0.0) == [0, 1, 3, 2, 4]
    # +0.1: the protected 0.85 passes 0.9 (0.95) but not 1.0; 0 stays below 0.5.
    assert exposure_boost(relevance, protected, 5, 0.1) == [0, 3, 1, 2, 4]
    # +0.6: 0.85 -> 1.45 first; 0 -> 0.6 passes 0.5 only.
    assert exposure_boost(relevance, protected, 5, 0.6) == [3, 0, 1, 4, 2]
    # +1: the least relevant protected candidate ties the most relevant (ties keep order).
    assert exposure_boost(relevance, protected, 3, 1.0) == [3, 0, 4]


def test_exposure_boost_spends_exposure_where_it_is_cheap() -> None:
    """Two lists, one protected slot to give: the bonus gives it to the list whose protected
    candidate is nearly on top (it costs little), a per-list minimum to both."""
    close = exposure_boost([1.0, 0.95, 0.0], [False, True, False], 1, 0.1)
    far = exposure_boost([1.0, 0.2, 0.0], [False, True, False], 1, 0.1)
    assert (close, far) == ([1], [0])
    assert exposure_constrained([1.0, 0.2, 0.0], [False, True, False], 1, 1.0) == [1]


# ---------------------------------------------------------------- self-adjusting


def _one_hot(categories: list[str]) -> np.ndarray:
    names = sorted(set(categories))
    return np.array([[c == n for n in names] for c in categories], dtype=np.float64) + 0.05


def test_self_adjusting_picks_smallest_tradeoff() -> None:
    cats = ["a"] * 6 + ["b"] * 3 + ["c"] * 3
    relevance = list(np.linspace(1, 0.4, 12))
    vectors = _one_hot(cats)
    grid = [0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0]

    def rerank(d: float) -> list[int]:
        return dpp(relevance, vectors, 6, d)

    def metric(order: list[int]) -> float:
        return category_diversity([cats[i] for i in order])

    tradeoff, order = self_adjusting(rerank, metric, 0.6, grid)
    assert metric(order) >= 0.6 and order == rerank(tradeoff)
    assert all(metric(rerank(d)) < 0.6 for d in grid if d < tradeoff)
    assert tradeoff > 0
    # Already diverse enough: no re-ranking.
    assert self_adjusting(rerank, metric, 0.0, grid) == (0.0, rerank(0.0))
    with pytest.raises(PinlabModelError, match=r"no trade-off in \[0.0, 1.0\] reaches"):
        self_adjusting(rerank, metric, 0.99, grid)
    with pytest.raises(PinlabModelError, match="non-empty grid"):
        self_adjusting(rerank, metric, 0.5, [])


def test_category_diversity() -> None:
    assert category_diversity(["a", "a", "b", "c"]) == pytest.approx(1 - 2 / 12)
    assert category_diversity(["a"]) == 0.0
    assert category_diversity(["a", "b"]) == 1.0


# ---------------------------------------------------------------- shared properties and errors


Rerank = Callable[[list[float], list[int], int, float], list[int]]


def _instance(seed: int) -> tuple[list[float], np.ndarray, list[str], list[bool]]:
    rng = np.random.default_rng(seed)
    m = int(rng.integers(1, 16))
    cats = [str(c) for c in rng.choice(list("abcd"), m)]
    return list(rng.random(m)), rng.standard_normal((m, 5)), cats, list(rng.random(m) < 0.4)


def _rerankers(seed: int) -> dict[str, Callable[[list[int], int, float], list[int]]]:
    """Each re-ranker on the candidates in the order `perm`."""
    rel, vecs, cats, prot = _instance(seed)
    history = ["a", "a", "b", "c", "d", "d", "d"]

    def pick(perm: list[int]) -> tuple[list[float], np.ndarray, list[str], list[bool]]:
        return [rel[i] for i in perm], vecs[perm], [cats[i] for i in perm], [prot[i] for i in perm]

    def run_mmr(perm: list[int], k: int, t: float) -> list[int]:
        r, v, c, p = pick(perm)
        return mmr(r, v, c, [str(x) for x in p], k, t)

    def run_dpp(perm: list[int], k: int, t: float) -> list[int]:
        r, v, _, _ = pick(perm)
        return dpp(r, v, k, t)

    def run_cal(perm: list[int], k: int, t: float) -> list[int]:
        r, _, c, _ = pick(perm)
        return calibrated(r, c, history, k, t)

    def run_exp(perm: list[int], k: int, t: float) -> list[int]:
        r, _, _, p = pick(perm)
        return exposure_constrained(r, p, k, t)

    def run_boost(perm: list[int], k: int, t: float) -> list[int]:
        r, _, _, p = pick(perm)
        return exposure_boost(r, p, k, t)

    return {
        "mmr": run_mmr, "dpp": run_dpp, "calibrated": run_cal, "exposure": run_exp,
        "exposure_boost": run_boost,
    }  # fmt: skip


@pytest.mark.parametrize("seed", range(15))
def test_rerankers_are_permutation_consistent(seed: int) -> None:
    m = len(_instance(seed)[0])
    rng = np.random.default_rng(seed + 100)
    perm = [int(i) for i in rng.permutation(m)]
    identity = list(range(m))
    for name, run in _rerankers(seed).items():
        for tradeoff in (0.0, 0.3, 0.7, 0.95):  # at 1.0 relevance is ignored: ties
            k = int(rng.integers(1, m + 3))
            base = run(identity, k, tradeoff)
            assert len(base) == min(k, m) and len(set(base)) == len(base), name
            assert all(0 <= i < m for i in base), name
            assert [perm[i] for i in run(perm, k, tradeoff)] == base, (name, tradeoff)


@pytest.mark.parametrize("tradeoff", [-0.1, 1.5, math.nan])
def test_tradeoff_out_of_range_names_the_range(tradeoff: float) -> None:
    for run in _rerankers(1).values():
        with pytest.raises(PinlabModelError, match=r"must be in \[0.0, 1.0\]"):
            run(list(range(len(_instance(1)[0]))), 3, tradeoff)


def test_bad_input_is_refused() -> None:
    vecs = np.eye(3)
    with pytest.raises(PinlabModelError, match="k must be at least 1"):
        dpp([0.1, 0.2, 0.3], vecs, 0, 0.5)
    with pytest.raises(PinlabModelError, match="must be finite"):
        dpp([0.1, math.nan, 0.3], vecs, 2, 0.5)
    with pytest.raises(PinlabModelError, match="must be finite"):
        exposure_constrained([0.1, math.inf], [True, False], 2, 0.5)
    with pytest.raises(PinlabModelError, match="vectors has 3 rows but there are 2"):
        dpp([0.1, 0.2], vecs, 2, 0.5)
    with pytest.raises(PinlabModelError, match="protected has 1 rows"):
        exposure_constrained([0.1, 0.2], [True], 2, 0.5)
    with pytest.raises(PinlabModelError, match="protected has 3 rows"):
        exposure_boost([0.1, 0.2], [True, False, True], 2, 0.5)
    with pytest.raises(PinlabModelError, match="categories has 2 rows"):
        calibrated([0.1, 0.2, 0.3], ["a", "b"], ["a"], 2, 0.5)
    with pytest.raises(PinlabModelError, match="groups has 1 rows"):
        mmr([0.1, 0.2, 0.3], vecs, list("abc"), ["x"], 2, 0.5)
    with pytest.raises(PinlabModelError, match="non-empty history"):
        calibrated([0.1, 0.2], ["a", "b"], [], 2, 0.5)
    with pytest.raises(PinlabModelError, match="non-zero"):
        dpp([0.1, 0.2, 0.3], np.diag([1.0, 0.0, 1.0]), 2, 0.5)


def test_miscalibration_by_hand() -> None:
    from pinlab_models import miscalibration

    # p = (1, 0); q = (0.5, 0.5), smoothed to 0.99 q + 0.01 p = (0.505, 0.495).
    assert miscalibration(["a", "b"], ["a", "a"]) == pytest.approx(math.log(1 / 0.505))
    assert miscalibration(["a", "b"], ["b", "a"]) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(PinlabModelError, match="non-empty"):
        miscalibration([], ["a"])
