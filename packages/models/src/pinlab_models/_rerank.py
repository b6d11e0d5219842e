"""Re-rankers: reorder a recommender's candidates for diversity, calibration or group exposure.

Each is a pure function of the candidates' relevance scores, their features, one trade-off
and `k`, returning the chosen candidate positions in order. The trade-off is 0 for "keep the
relevance order" and grows toward more re-ranking, so `self_adjusting` can look for the
smallest one that meets a target.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from pinlab_models.contracts import PinlabModelError

FloatArray = npt.NDArray[np.float64]
Labels = Sequence[str | Sequence[str]]
"""Per item, one category or a list of genres (a list's weight is split equally)."""

CALIBRATION_SMOOTHING = 0.01
"""Steck's alpha: the list's category mix is mixed with 1% of the history's, so KL is finite."""

_EXHAUSTED = 1e-10
"""A conditional variance below this means the item adds no new direction to the DPP kernel."""


def mmr(
    relevance: Sequence[float],
    vectors: npt.NDArray[np.floating],
    categories: Sequence[str],
    groups: Sequence[str],
    k: int,
    diversity: float,
) -> list[int]:
    """Positions of `k` candidates chosen greedily by MMR; `diversity` in [0, 1], 0 keeps the order.

    Each step picks the candidate maximising
    `(1 - diversity) * rel - diversity * (sim / 2 + cat_share / 4 + group_share / 4)`,
    where `rel` is relevance scaled to [0, 1] over the candidates, `sim` the largest cosine
    to an already chosen pin, and the shares the fraction of chosen pins with the same
    category and the same creator group.
    """
    n = _check(relevance, k, ("diversity", diversity, 0.0, 1.0))
    _check_rows("vectors", len(vectors), n)
    _check_rows("categories", len(categories), n)
    _check_rows("groups", len(groups), n)
    if diversity == 0 or n <= 1:
        return _by_relevance(relevance, k)
    rel = _scaled(relevance)
    sims = np.asarray(vectors, dtype=np.float64) @ np.asarray(vectors, dtype=np.float64).T
    _, cat = np.unique(np.asarray(categories), return_inverse=True)
    _, grp = np.unique(np.asarray(groups), return_inverse=True)
    max_sim = np.full(n, 0.0)
    same_cat = np.zeros(n)
    same_grp = np.zeros(n)
    free = np.ones(n, dtype=bool)
    chosen: list[int] = []
    for step in range(min(k, n)):
        penalty = 0.0 if step == 0 else max_sim / 2 + (same_cat + same_grp) / (4 * step)
        gain = np.where(free, (1 - diversity) * rel - diversity * penalty, -np.inf)
        pick = int(np.argmax(gain))
        chosen.append(pick)
        free[pick] = False
        max_sim = np.maximum(max_sim, sims[pick]) if step else sims[pick].copy()
        same_cat += cat == cat[pick]
        same_grp += grp == grp[pick]
    return chosen


def dpp(
    relevance: Sequence[float],
    vectors: npt.NDArray[np.floating],
    k: int,
    diversity: float,
) -> list[int]:
    """Greedy MAP of a DPP (Chen, Zhang and Zhou, NeurIPS 2018); `diversity` in [0, 1].

    The kernel is `L = Diag(q) S Diag(q)` with `S` the cosine similarities of the vectors and
    `q_i = exp(alpha * rel_i)`, `rel` relevance scaled to [0, 1] over the candidates and
    `alpha = theta / (2 (1 - theta))` for the paper's `theta = 1 - diversity`: 0 keeps the
    relevance order, 1 maximises `det S` alone. Each step adds the item that maximises
    `log det L_Y`, through the paper's incremental Cholesky rows (O(k^2 M) in all). Because
    `q` only rescales the Cholesky factors, the gain `2 alpha rel_i + log d_i^2` is taken on
    `S`, so a large `alpha` never overflows. Once no candidate adds a new direction (more picks
    than the vectors' rank), the rest follow by relevance.
    """
    n = _check(relevance, k, ("diversity", diversity, 0.0, 1.0))
    _check_rows("vectors", len(vectors), n)
    if diversity == 0 or n <= 1:
        return _by_relevance(relevance, k)
    unit = _unit_rows(vectors)
    sims = unit @ unit.T  # one matrix product, not one per step (this runs inside requests)
    alpha = (1 - diversity) / (2 * diversity)
    boost = 2 * alpha * _scaled(relevance)
    steps = min(k, n)
    rows = np.zeros((steps, n))  # row t: the new Cholesky column entries of every candidate
    d2 = np.ones(n)  # conditional variance of each candidate given the chosen ones
    free = np.ones(n, dtype=bool)
    chosen: list[int] = []
    for step in range(steps):
        gain = boost + np.log(np.maximum(d2, _EXHAUSTED))
        gain[~free | (d2 <= _EXHAUSTED)] = -np.inf
        pick = int(np.argmax(gain))
        if gain[pick] == -np.inf:
            break
        chosen.append(pick)
        free[pick] = False
        e = (sims[pick] - rows[:step, pick] @ rows[:step]) / math.sqrt(d2[pick])
        rows[step] = e
        d2 = d2 - e**2
    rest = [i for i in _by_relevance(relevance, n) if free[i]]
    return chosen + rest[: steps - len(chosen)]


def calibrated(
    relevance: Sequence[float],
    categories: Labels,
    history: Labels,
    k: int,
    weight: float,
) -> list[int]:
    """Steck's calibrated re-ranking (RecSys 2018); `weight` (his lambda) in [0, 1].

    Greedily maximises `(1 - weight) * sum rel - weight * KL(p || q~)` over the growing list,
    where `rel` is relevance scaled to [0, 1] over the candidates, `p` the category mix of the
    user's `history`, `q` that of the list (items weighted equally) and
    `q~ = (1 - a) q + a p` with `a = CALIBRATION_SMOOTHING`. 0 keeps the relevance order.
    """
    n = _check(relevance, k, ("weight", weight, 0.0, 1.0))
    _check_rows("categories", len(categories), n)
    if not history:
        raise PinlabModelError("calibrated re-ranking needs a non-empty history of categories")
    if weight == 0 or n <= 1:
        return _by_relevance(relevance, k)
    names = sorted({c for labels in (*history, *categories) for c in _as_list(labels)})
    index = {c: j for j, c in enumerate(names)}
    items = np.stack([_mix(labels, index) for labels in categories])
    target = np.mean([_mix(labels, index) for labels in history], axis=0)
    rel = _scaled(relevance)
    free = np.ones(n, dtype=bool)
    mix_sum = np.zeros(len(names))
    rel_sum = 0.0
    chosen: list[int] = []
    for size in range(1, min(k, n) + 1):
        # Row i: the list's category mix if candidate i joined it.
        q = (mix_sum + items) / size
        kl = _kl(target, (1 - CALIBRATION_SMOOTHING) * q + CALIBRATION_SMOOTHING * target)
        gain = np.where(free, (1 - weight) * (rel_sum + rel) - weight * kl, -np.inf)
        pick = int(np.argmax(gain))
        chosen.append(pick)
        free[pick] = False
        mix_sum += items[pick]
        rel_sum += rel[pick]
    return chosen


def category_pairs(
    relevance: Sequence[float], categories: Sequence[str], k: int, price: float
) -> list[int]:
    """Positions of the `k` candidates that maximise `sum rel - price * same-category pairs`,
    exactly; `price` >= 0, in relevance's own units (0 keeps the relevance order).

    Each step picks the free candidate maximising `rel_i - price * (picked of i's category)`.
    That greedy pass is exact: for a given count a category's best members are its most
    relevant, and its pairs grow by its count with each pick, so every category's term is
    concave in its count and the marginal gains fall. With `rel` a calibrated probability of a
    hit, one price for every list is the Lagrangian of a bound on the mean same-category
    pairs (the mean intra-list category diversity) over lists: each list buys diversity as
    far as its expected hits allow, and the price says how far.
    """
    n = _check(relevance, k, ("price", price, 0.0, math.inf))
    _check_rows("categories", len(categories), n)
    if price == 0 or n <= 1:
        return _by_relevance(relevance, k)
    rel = np.asarray(relevance, dtype=np.float64)
    _, cat = np.unique(np.asarray(categories), return_inverse=True)
    picked = np.zeros(int(cat.max()) + 1)
    free = np.ones(n, dtype=bool)
    chosen: list[int] = []
    for _ in range(min(k, n)):
        gain = np.where(free, rel - price * picked[cat], -np.inf)
        pick = int(np.argmax(gain))
        chosen.append(pick)
        free[pick] = False
        picked[cat[pick]] += 1
    return chosen


def in_relevance_order(chosen: Sequence[int], relevance: Sequence[float]) -> list[int]:
    """The candidates `chosen` by a set re-ranker, most relevant first.

    MMR, the DPP and calibration pick a set greedily, and what they are judged on is the set's
    (its pairwise diversity, its determinant, its category mix with every slot counted the
    same): the order of the picks is an artifact of the greedy pass. Put back in relevance
    order, the same set keeps its most relevant items at the top, where NDCG counts most.
    """
    rel = np.asarray(relevance, dtype=np.float64)
    return sorted(chosen, key=lambda i: (-rel[i], i))


def exposure_constrained(
    relevance: Sequence[float],
    protected: Sequence[bool],
    k: int,
    target: float,
    offset: float = 0.0,
) -> list[int]:
    """Re-rank so the protected group holds at least a `target` share (in [0, 1]) of every prefix.

    The share is a count share, checked at every rank like Geyik et al.'s DetGreedy (KDD 2019,
    "Fairness-Aware Ranking in Search & Recommendation Systems"), with FA*IR's (Zehlike et al.
    2017) protected-minimum form: at rank `t` the top `t` must hold `floor(target * t +
    offset)` protected items. Each rank takes the most relevant candidate unless that minimum
    is unmet, then the most relevant protected one. A ranking that already meets the minimum
    at every rank is kept; with too few protected candidates, the rest follow by relevance.

    `offset` in [0, 1) dithers the minimum: with 10 ranks, `floor(target * t)` moves in whole
    items (every target from 1/6 to 1/5 places one protected item at rank 6), so a group's
    share jumps between targets. An offset drawn uniformly per list makes each prefix's
    expected minimum exactly `target * t` over lists (E[floor(x + U)] = x), so the share
    follows the target smoothly on average while each list still meets `floor(target * t)`.
    """
    n = _check(relevance, k, ("target", target, 0.0, 1.0))
    _check_rows("protected", len(protected), n)
    if not 0.0 <= offset < 1.0:
        raise PinlabModelError(f"offset must be in [0, 1), got {offset}")
    order = _by_relevance(relevance, n)
    group = [i for i in order if protected[i]]
    chosen: list[int] = []
    taken: set[int] = set()
    need = 0
    for rank in range(1, min(k, n) + 1):
        minimum = math.floor(target * rank + offset + 1e-9)  # the epsilon keeps 0.7 * 10 at 7
        if need < minimum and len(group) > need:
            pick = next(i for i in group if i not in taken)
        else:
            pick = next(i for i in order if i not in taken)
        chosen.append(pick)
        taken.add(pick)
        need += bool(protected[pick])
    return chosen


def exposure_boost(
    relevance: Sequence[float], protected: Sequence[bool], k: int, boost: float
) -> list[int]:
    """Re-rank by relevance (min-max scaled over the candidates) plus `boost` (in [0, 1]) for
    every protected candidate: 0 keeps the relevance order, 1 lifts the least relevant
    protected candidate level with the most relevant one.

    A constant bonus is the Lagrangian relaxation of an exposure constraint amortised over
    lists (Singh and Joachims 2018; FairCo, Morik et al. SIGIR 2020, adapts the bonus online):
    a protected item moves up only where it was already close to the top, so the exposure a
    group gains is bought where it costs the least relevance, not forced into every list as
    `exposure_constrained`'s per-prefix minimum does.
    """
    n = _check(relevance, k, ("boost", boost, 0.0, 1.0))
    _check_rows("protected", len(protected), n)
    bonus = boost * np.asarray(protected, dtype=np.float64)
    return _by_relevance((_scaled(relevance) + bonus).tolist(), k)


def self_adjusting(
    rerank: Callable[[float], list[int]],
    metric: Callable[[list[int]], float],
    target: float,
    grid: Sequence[float],
) -> tuple[float, list[int]]:
    """The smallest trade-off on `grid` whose list scores `metric >= target`, and that list.

    Pinterest's self-adjusting diversity ("Representation Online Matters", FAccT 2023): per
    request, diversify only as much as the target needs, so relevance is kept where the
    candidates are already diverse. `rerank` maps a trade-off to positions (e.g.
    `lambda d: dpp(rel, vecs, 10, d)`), `metric` scores positions (e.g. `category_diversity`
    of their categories).
    """
    if not grid:
        raise PinlabModelError("self-adjusting re-ranking needs a non-empty grid of trade-offs")
    if not math.isfinite(target):
        raise PinlabModelError(f"diversity target must be finite, got {target}")
    best = (-math.inf, math.nan)
    for tradeoff in sorted(grid):
        order = rerank(tradeoff)
        score = metric(order)
        if score >= target:
            return tradeoff, order
        best = max(best, (score, tradeoff))
    raise PinlabModelError(
        f"no trade-off in [{min(grid)}, {max(grid)}] reaches the target {target} "
        f"(best {best[0]:.4g} at {best[1]}); lower the target or widen the grid"
    )


def miscalibration(categories: Labels, history: Labels) -> float:
    """Steck's miscalibration of one list: `KL(p || q~)` as `calibrated` minimises it, with `p`
    the history's category mix and `q~` the list's, smoothed by `CALIBRATION_SMOOTHING`."""
    if not history or not categories:
        raise PinlabModelError("miscalibration needs a non-empty list and history")
    names = sorted({c for labels in (*history, *categories) for c in _as_list(labels)})
    index = {c: j for j, c in enumerate(names)}
    target = np.mean([_mix(labels, index) for labels in history], axis=0)
    mix = np.mean([_mix(labels, index) for labels in categories], axis=0)
    smoothed = (1 - CALIBRATION_SMOOTHING) * mix + CALIBRATION_SMOOTHING * target
    return float(_kl(target, smoothed))


def category_diversity(categories: Sequence[str]) -> float:
    """Intra-list diversity by category: the share of pairs in the list with different ones."""
    n = len(categories)
    if n < 2:
        return 0.0
    same = sum(c * (c - 1) for c in Counter(categories).values())
    return 1 - same / (n * (n - 1))


def _check(relevance: Sequence[float], k: int, tradeoff: tuple[str, float, float, float]) -> int:
    name, value, low, high = tradeoff
    if not low <= value <= high:  # also refuses NaN
        raise PinlabModelError(f"{name} must be in [{low}, {high}], got {value}")
    if k < 1:
        raise PinlabModelError(f"k must be at least 1, got {k}")
    if not np.isfinite(np.asarray(relevance, dtype=np.float64)).all():
        raise PinlabModelError("relevance scores must be finite; drop or fill NaN/inf candidates")
    return len(relevance)


def _check_rows(name: str, rows: int, n: int) -> None:
    if rows != n:
        raise PinlabModelError(f"{name} has {rows} rows but there are {n} relevance scores")


def _by_relevance(relevance: Sequence[float], k: int) -> list[int]:
    order = np.argsort(-np.asarray(relevance, dtype=np.float64), kind="stable")
    return [int(i) for i in order[:k]]


def _scaled(relevance: Sequence[float]) -> FloatArray:
    """Relevance min-max scaled over the candidates, so a trade-off means the same for any model."""
    rel = np.asarray(relevance, dtype=np.float64)
    span = rel.max() - rel.min()
    return (rel - rel.min()) / span if span > 0 else np.ones(len(rel))


def _unit_rows(vectors: npt.NDArray[np.floating]) -> FloatArray:
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2 or not np.isfinite(x).all():
        raise PinlabModelError("vectors must be a finite 2-D array, one row per candidate")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if (norms == 0).any():
        raise PinlabModelError("vectors must be non-zero: a DPP needs each candidate's direction")
    unit: FloatArray = x / norms
    return unit


def _as_list(labels: str | Sequence[str]) -> list[str]:
    return [labels] if isinstance(labels, str) else list(labels)


def _mix(labels: str | Sequence[str], index: dict[str, int]) -> FloatArray:
    out = np.zeros(len(index))
    names = _as_list(labels)
    if not names:
        raise PinlabModelError("every item needs at least one category")
    for c in names:
        out[index[c]] += 1 / len(names)
    return out


def _kl(p: FloatArray, q: FloatArray) -> FloatArray:
    """KL(p || q_i) for each row q_i; categories absent from `p` add nothing."""
    mask = p > 0
    kl: FloatArray = np.sum(p[mask] * np.log(p[mask] / q[..., mask]), axis=-1)
    return kl
