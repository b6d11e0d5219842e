"""Recommendation metrics over a full ranking of the catalogue, or over sampled candidates.

Per-user metric functions take `ranked` (users × k item indices, best first) and the users'
relevant items as a `Csr` whose rows line up with `ranked`'s rows. They return one float64 per
user. A user with no relevant items has no recall, nDCG or MAP (0/0): those come back NaN and
the others 0, so callers evaluate only users with at least one relevant item
(`evaluate_ranking` does: its users are the users of the target log).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from pinlab_data import seen_csr
from pinlab_data.contracts import Float32Array, Int64Array, InteractionLog, PinlabDataError
from pinlab_eval.contracts import (
    CandidateScorer,
    Csr,
    Float64Array,
    Holdout,
    RankingReport,
    Scorer,
    UserMetrics,
)

BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.floating[Any]]


def csr_entries(csr: Csr, rows: Int64Array) -> tuple[Int64Array, Int64Array]:
    """The entries of some CSR rows as (position in `rows`, column) pairs."""
    indptr, indices = csr
    starts = indptr[rows]
    lengths = indptr[rows + 1] - starts
    positions = np.repeat(np.arange(len(rows), dtype=np.int64), lengths)
    # Each entry's offset inside its own row, added to that row's start in `indices`.
    within = np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(
        np.cumsum(lengths) - lengths, lengths
    )
    return positions, indices[np.repeat(starts, lengths) + within].astype(np.int64)


def _best_k(scores: FloatArray, k: int) -> Int64Array:
    """Column indices of the k highest scores per row, best first, ties to the lower index."""
    neg = -scores  # ascending `neg` is descending score
    kth = np.partition(neg, k - 1, axis=1)[:, k - 1 : k]
    better = neg < kth
    tied = neg == kth
    # argpartition picks arbitrary members of a tie at the cut; take every strictly better item,
    # then the lowest-index tied items until the row has k.
    room = k - better.sum(axis=1, keepdims=True)
    chosen = better | tied
    # Only rows whose tie at the cut overflows need counting (a cumsum over the whole batch
    # was half of a validation pass on a 12,000-item catalogue).
    over = np.flatnonzero(tied.sum(axis=1) > room[:, 0])
    if len(over):
        ties = tied[over]
        chosen[over] = better[over] | (ties & (np.cumsum(ties, axis=1) <= room[over]))
    cols = np.nonzero(chosen)[1].reshape(len(scores), k)  # ascending index within each row
    # A stable sort keeps the ascending index order among equal scores.
    order = np.argsort(np.take_along_axis(neg, cols, axis=1), axis=1, kind="stable")
    return np.take_along_axis(cols, order, axis=1).astype(np.int64)


def _score_batch(scorer: Scorer, batch: Int64Array, num_items: int | None) -> FloatArray:
    """The scorer's scores for a batch as a fresh float array, NaN turned into -inf.

    `num_items` is the width earlier batches had (None for the first); a scorer that changes
    its mind about the catalogue, or returns the wrong shape, is refused.
    """
    raw = scorer.score(batch)
    # A copy in at least float32: we write -inf into it and must not touch the scorer's array.
    scores = np.array(raw, dtype=np.promote_types(raw.dtype, np.float32))
    if scores.ndim != 2 or len(scores) != len(batch):
        raise PinlabDataError(
            f"scorer returned shape {scores.shape} for {len(batch)} users; "
            "expected (num_users, num_items)"
        )
    if num_items is not None and scores.shape[1] != num_items:
        raise PinlabDataError(
            f"scorer returned {scores.shape[1]} items after {num_items} for earlier users"
        )
    if scores.shape[1] == 0:
        raise PinlabDataError("scorer returned no items; the catalogue is empty")
    scores[np.isnan(scores)] = -np.inf
    return scores


def _candidate_scores(scorer: Scorer, users: Int64Array, candidates: Int64Array) -> FloatArray:
    """Scores of each user's `candidates` row, NaN turned into -inf.

    A `CandidateScorer` scores just those items; any other scorer scores the whole catalogue,
    from which they are picked.
    """
    if isinstance(scorer, CandidateScorer):
        raw = scorer.score_candidates(users, candidates)
        if np.shape(raw) != candidates.shape:
            raise PinlabDataError(
                f"score_candidates returned shape {np.shape(raw)} for candidates of shape "
                f"{candidates.shape}; expected one score per candidate"
            )
    else:
        full = scorer.score(users)
        if full.ndim != 2 or len(full) != len(users):
            raise PinlabDataError(
                f"scorer returned shape {full.shape} for {len(users)} users; "
                "expected (num_users, num_items)"
            )
        if int(candidates.max()) >= full.shape[1]:
            raise PinlabDataError(
                f"candidate items run past the scorer's {full.shape[1]} items; sample negatives "
                "from a log over the same catalogue"
            )
        raw = np.take_along_axis(full, candidates, axis=1)
    scores = np.array(raw, dtype=np.promote_types(raw.dtype, np.float32))
    scores[np.isnan(scores)] = -np.inf
    return scores


def top_k(
    scorer: Scorer,
    users: Int64Array,
    k: int,
    exclude: Csr | None,
    batch_size: int = 1024,
) -> Int64Array:
    """The k best items per user over the whole catalogue, shape (len(users), k).

    `exclude` holds items never to recommend (typically the ones already seen), as a CSR over
    all users indexed by user index. Excluded items and NaN scores rank last; they still fill
    the list when a user has fewer than k other items. k above the catalogue size is clipped to
    it. Ties go to the lower item index, so rankings are deterministic.
    """
    if k <= 0:
        raise PinlabDataError(f"k must be a positive number of items, got {k}")
    if batch_size <= 0:
        raise PinlabDataError(f"batch_size must be positive, got {batch_size}")
    users = np.asarray(users, dtype=np.int64)
    if len(users) == 0:
        return np.empty((0, k), dtype=np.int64)
    if exclude is not None and (users.min() < 0 or users.max() >= len(exclude[0]) - 1):
        raise PinlabDataError(
            f"user indices run over 0..{users.max()} but `exclude` has rows for "
            f"{len(exclude[0]) - 1} users; build it from a log over the same users"
        )
    parts: list[Int64Array] = []
    num_items: int | None = None
    for start in range(0, len(users), batch_size):
        batch = users[start : start + batch_size]
        scores = _score_batch(scorer, batch, num_items)
        num_items = scores.shape[1]
        if exclude is not None:
            rows, cols = csr_entries(exclude, batch)
            scores[rows, cols] = -np.inf
        parts.append(_best_k(scores, min(k, num_items)))
    return np.concatenate(parts)


def _hits(ranked: Int64Array, relevant: Csr) -> tuple[BoolArray, Int64Array]:
    """Which ranked items are relevant (users × k) and each user's count of distinct relevant."""
    indptr, indices = relevant
    if ranked.ndim != 2 or len(indptr) != len(ranked) + 1:
        raise PinlabDataError(
            f"ranked has shape {ranked.shape} but relevant has {len(indptr) - 1} rows; "
            "they must line up row for row"
        )
    if (ranked.size and ranked.min() < 0) or (indices.size and indices.min() < 0):
        raise PinlabDataError("item indices must be non-negative")
    num_users = len(ranked)
    # Encode (user, item) as one integer so membership is a single sorted lookup.
    width = 1 + max(int(ranked.max(initial=0)), int(indices.max(initial=0)))
    owners = np.repeat(np.arange(num_users, dtype=np.int64), np.diff(indptr))
    keys = np.unique(owners * width + indices)
    n_relevant = np.bincount(keys // width, minlength=num_users).astype(np.int64)
    hits = np.isin(np.arange(num_users, dtype=np.int64)[:, None] * width + ranked, keys)
    return hits, n_relevant


def _ratio(num: Float64Array, den: Float64Array) -> Float64Array:
    """num / den, NaN where den is 0 (a user with nothing relevant), without a warning."""
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _recall(hits: BoolArray, n_relevant: Int64Array) -> Float64Array:
    return _ratio(hits.sum(axis=1).astype(np.float64), n_relevant.astype(np.float64))


def _precision(hits: BoolArray) -> Float64Array:
    return np.asarray(hits.sum(axis=1), dtype=np.float64) / int(hits.shape[1])


def _hit_rate(hits: BoolArray) -> Float64Array:
    return np.asarray(hits.any(axis=1), dtype=np.float64)


def _ndcg(hits: BoolArray, n_relevant: Int64Array) -> Float64Array:
    discount = 1.0 / np.log2(np.arange(2, hits.shape[1] + 2, dtype=np.float64))
    dcg = hits @ discount
    # The ideal list puts all relevant items first: min(k, n_relevant) hits at the top.
    ideal = np.concatenate([[0.0], np.cumsum(discount)])[np.minimum(n_relevant, hits.shape[1])]
    return _ratio(dcg, ideal)


def _mrr(hits: BoolArray) -> Float64Array:
    first = hits.argmax(axis=1)
    return np.where(hits.any(axis=1), 1.0 / (first + 1.0), 0.0)


def _precision_sum(hits: BoolArray) -> Float64Array:
    """Sum of precision@i over the ranks i of the hits: average precision's numerator."""
    ranks = np.arange(1, hits.shape[1] + 1, dtype=np.float64)
    return np.asarray(np.where(hits, np.cumsum(hits, axis=1) / ranks, 0.0).sum(axis=1))


def _map(hits: BoolArray, n_relevant: Int64Array) -> Float64Array:
    best_possible = np.minimum(n_relevant, hits.shape[1]).astype(np.float64)
    return _ratio(_precision_sum(hits), best_possible)


def _map_all(hits: BoolArray, n_relevant: Int64Array) -> Float64Array:
    return _ratio(_precision_sum(hits), n_relevant.astype(np.float64))


def recall_at_k(ranked: Int64Array, relevant: Csr) -> Float64Array:
    """Relevant items found in the top k over the number of relevant items, per user."""
    hits, n_relevant = _hits(ranked, relevant)
    return _recall(hits, n_relevant)


def precision_at_k(ranked: Int64Array, relevant: Csr) -> Float64Array:
    """Relevant items found in the top k over k (`ranked.shape[1]`), per user."""
    return _precision(_hits(ranked, relevant)[0])


def hit_rate_at_k(ranked: Int64Array, relevant: Csr) -> Float64Array:
    """1 where the top k holds at least one relevant item, per user."""
    return _hit_rate(_hits(ranked, relevant)[0])


def ndcg_at_k(ranked: Int64Array, relevant: Csr) -> Float64Array:
    """Binary-relevance nDCG with a log2 discount; the ideal has min(k, n_relevant) hits."""
    hits, n_relevant = _hits(ranked, relevant)
    return _ndcg(hits, n_relevant)


def mrr_at_k(ranked: Int64Array, relevant: Csr) -> Float64Array:
    """Reciprocal rank of the first relevant item in the top k, 0 if none, per user."""
    return _mrr(_hits(ranked, relevant)[0])


def map_at_k(ranked: Int64Array, relevant: Csr) -> Float64Array:
    """Sum of precision@i over the ranks i of hits, over min(k, n_relevant), per user."""
    hits, n_relevant = _hits(ranked, relevant)
    return _map(hits, n_relevant)


def map_all_at_k(ranked: Int64Array, relevant: Csr) -> Float64Array:
    """Sum of precision@i over the ranks i ≤ k of hits, over ALL the user's relevant items.

    Key `map_all@k`. This is the MAP of Microsoft Recommenders' `map(k=...)` (their
    `python_evaluation.map` sums `hits so far / rank` over the hits in the top k and divides by
    `actual`, the user's number of relevant items) and of Spark MLlib's
    `RankingMetrics.meanAveragePrecision` over a top-k list; trec_eval calls it `map_cut_k`.
    Until recommenders PR #2004 (issue #1702) their `map_at_k` computed it too, which is why
    the MAP column of their MovieLens benchmark table is this metric. It never exceeds
    recall@k: a perfect ranking scores min(k, n)/n for n relevant items. `map_at_k` differs
    only in dividing by min(k, n) (Spark's `meanAveragePrecisionAt(k)`, recommenders'
    `map_at_k` since #2004), so a perfect ranking scores 1.
    """
    hits, n_relevant = _hits(ranked, relevant)
    return _map_all(hits, n_relevant)


def item_popularity(log: InteractionLog) -> Int64Array:
    """How many distinct users interacted with each item, one count per item of the catalogue."""
    if len(log) == 0:
        return np.zeros(log.num_items, dtype=np.int64)
    pairs = np.unique(log.users.astype(np.int64) * log.num_items + log.items)
    return np.bincount(pairs % log.num_items, minlength=log.num_items).astype(np.int64)


def novelty_at_k(ranked: Int64Array, popularity: Int64Array) -> Float64Array:
    """Mean self-information -log2 p(i) of each user's recommended items, in bits.

    p(i) = popularity[i] / popularity.sum(), with popularity the training interactions per
    item (`item_popularity(train)`): the item-choice model of Castells, Vargas & Wang (ECIR
    2011), as in Microsoft Recommenders' `novelty`. Items nobody chose in training count as
    chosen once, the highest finite novelty (recommenders would give them 0). Key `novelty@k`.
    """
    if ranked.ndim != 2:
        raise PinlabDataError(f"ranked must be (users, k), got shape {ranked.shape}")
    total = int(popularity.sum())
    if total <= 0:
        raise PinlabDataError("novelty needs training interactions; the popularity is all 0")
    if ranked.size and (ranked.min() < 0 or ranked.max() >= len(popularity)):
        raise PinlabDataError(
            f"ranked items run over {ranked.min()}..{ranked.max()} but popularity covers "
            f"{len(popularity)} items"
        )
    bits = np.log2(total) - np.log2(np.maximum(popularity, 1).astype(np.float64))
    return np.asarray(bits[ranked].mean(axis=1), dtype=np.float64)


def gini_at_k(ranked: Int64Array, num_items: int) -> float:
    """Gini index of exposure: how unequally the top-k lists spread over the whole catalogue.

    With c_(1) ≤ ... ≤ c_(n) the number of lists each of the n = `num_items` items appears in,
    G = Σ_j (2j - n - 1) c_(j) / (n Σ_j c_j): 0 when every item is shown equally often,
    (n - 1) / n when one item takes every slot. Items never recommended count with c = 0. As
    RecBole's `GiniIndex`; the sales-concentration measure of Fleder & Hosanagar (Management
    Science 2009). Key `gini@k`.
    """
    if num_items <= 0:
        raise PinlabDataError(f"num_items must be positive, got {num_items}")
    if ranked.size and (ranked.min() < 0 or ranked.max() >= num_items):
        raise PinlabDataError(
            f"ranked items run over {ranked.min()}..{ranked.max()} outside 0..{num_items - 1}"
        )
    if ranked.size == 0:
        raise PinlabDataError("no recommendations to measure exposure on")
    exposure = np.sort(np.bincount(ranked.ravel(), minlength=num_items)).astype(np.float64)
    position = np.arange(1, num_items + 1, dtype=np.float64)
    return float(((2 * position - num_items - 1) @ exposure) / (num_items * exposure.sum()))


def catalogue_coverage(ranked: Int64Array, num_items: int) -> float:
    """Share of the catalogue recommended to at least one user."""
    if num_items <= 0:
        raise PinlabDataError(f"num_items must be positive, got {num_items}")
    return len(np.unique(ranked)) / num_items


def relevant_csr(target: InteractionLog) -> tuple[Int64Array, Csr]:
    """Distinct users of the log and their distinct items as a CSR aligned with them."""
    users = np.unique(target.users).astype(np.int64)
    width = max(target.num_items, int(target.items.max()) + 1)
    keys = np.unique(target.users.astype(np.int64) * width + target.items)
    rows = np.searchsorted(users, keys // width)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=len(users)))])
    return users, (indptr.astype(np.int64), (keys % width).astype(np.int64))


def _check_ks(ks: Sequence[int]) -> list[int]:
    if not ks or min(ks) <= 0:
        raise PinlabDataError(f"ks must be positive cut-offs, got {tuple(ks)}")
    return sorted(set(ks))


def _per_user(hits: BoolArray, n_relevant: Int64Array, ks: list[int]) -> dict[str, Float64Array]:
    """Every accuracy metric at every cut-off, from the hit matrix of the longest list."""
    out: dict[str, Float64Array] = {}
    for k in ks:
        at_k = hits[:, :k]
        out[f"recall@{k}"] = _recall(at_k, n_relevant)
        out[f"ndcg@{k}"] = _ndcg(at_k, n_relevant)
        out[f"hr@{k}"] = _hit_rate(at_k)
        out[f"mrr@{k}"] = _mrr(at_k)
        # Over k, not the list's width: a list cut short by a small catalogue still has k slots.
        out[f"precision@{k}"] = np.asarray(at_k.sum(axis=1), dtype=np.float64) / k
        out[f"map@{k}"] = _map(at_k, n_relevant)
        out[f"map_all@{k}"] = _map_all(at_k, n_relevant)
    return out


def user_metrics(
    scorer: Scorer,
    target: InteractionLog,
    exclude: Csr | None,
    ks: Sequence[int] = (10, 20),
    popularity: Int64Array | None = None,
    batch_size: int = 1024,
) -> UserMetrics:
    """Rank the whole catalogue for every user in `target`; keep every metric per user.

    The users are the distinct users of `target` (ascending); their target items are the
    relevant ones. Items in `exclude` (seen in training) are never recommended, so a target
    item that is also excluded cannot be found. Per user, for each k: `recall@k`, `ndcg@k`,
    `hr@k`, `mrr@k`, `precision@k`, `map@k`, `map_all@k` and, given the training `popularity`
    (`item_popularity(train)`), `novelty@k`; for the lists as a whole `coverage@k` and `gini@k`.
    """
    ks = _check_ks(ks)
    if len(target) == 0:
        raise PinlabDataError("the target log has no interactions, so there is nothing to rank")
    users, relevant = relevant_csr(target)
    ranked = top_k(scorer, users, max(ks), exclude, batch_size)
    hits, n_relevant = _hits(ranked, relevant)
    per_user = _per_user(hits, n_relevant, ks)
    lists: dict[str, float] = {}
    for k in ks:
        if popularity is not None:
            per_user[f"novelty@{k}"] = novelty_at_k(ranked[:, :k], popularity)
        lists[f"coverage@{k}"] = catalogue_coverage(ranked[:, :k], target.num_items)
        lists[f"gini@{k}"] = gini_at_k(ranked[:, :k], target.num_items)
    return UserMetrics(users=users, per_user=per_user, lists=lists)


def sampled_user_metrics(
    scorer: Scorer,
    target: InteractionLog,
    negatives: Int64Array,
    ks: Sequence[int] = (10, 20),
    batch_size: int = 1024,
) -> UserMetrics:
    """Rank each user's one target item among its sampled negatives (the NCF / SASRec protocol).

    `negatives[i]` are the N candidates of the i-th distinct target user (ascending), items the
    user never interacted with (`sample_negatives`). The rank of the target among the 1 + N
    candidates is the number of negatives scoring at least as high as it: ties count against
    the target, so a constant scorer ranks it last rather than first. The metrics are those of
    `user_metrics` with one relevant item (so `recall@k` = `hr@k`, `map@k` = `map_all@k` =
    `mrr@k`); coverage, Gini and novelty describe full-catalogue lists and are not computed.
    Sampled metrics can disagree with full ranking about which model is better (Krichene &
    Rendle, KDD 2020); report them as the protocol that published numbers used, not instead.
    """
    ks = _check_ks(ks)
    if len(target) == 0:
        raise PinlabDataError("the target log has no interactions, so there is nothing to rank")
    users, (indptr, items) = relevant_csr(target)
    if not (np.diff(indptr) == 1).all():
        raise PinlabDataError(
            "sampled evaluation ranks one held-out item per user, but some target users have "
            "several; use leave-last-out, or full ranking"
        )
    if negatives.ndim != 2 or len(negatives) != len(users) or negatives.shape[1] == 0:
        raise PinlabDataError(
            f"negatives have shape {negatives.shape}; expected one non-empty row for each of "
            f"the {len(users)} target users"
        )
    if negatives.min() < 0:
        raise PinlabDataError("negatives must be item indices, found a negative one")
    if batch_size <= 0:
        raise PinlabDataError(f"batch_size must be positive, got {batch_size}")
    ranks: list[Int64Array] = []
    for start in range(0, len(users), batch_size):
        rows = slice(start, start + batch_size)
        # Column 0 is the held-out item, the rest its negatives.
        candidates = np.concatenate([items[rows, None], negatives[rows]], axis=1)
        scores = _candidate_scores(scorer, users[rows], candidates)
        ranks.append((scores[:, 1:] >= scores[:, :1]).sum(axis=1).astype(np.int64))
    rank = np.concatenate(ranks)
    # The one relevant item sits at `rank`; past the longest cut-off it is simply not a hit.
    hits = rank[:, None] == np.arange(max(ks), dtype=np.int64)
    per_user = _per_user(hits, np.ones(len(users), dtype=np.int64), ks)
    return UserMetrics(users=users, per_user=per_user, lists={})


class _OnlyCandidates:
    """A scorer whose items outside `candidates` score -inf, so they rank last."""

    def __init__(self, scorer: Scorer, candidates: Int64Array) -> None:
        self.scorer = scorer
        self.candidates = candidates

    def score(self, users: Int64Array) -> Float32Array:
        scores = _score_batch(self.scorer, users, None)
        masked = np.full(scores.shape, -np.inf, dtype=scores.dtype)
        masked[:, self.candidates] = scores[:, self.candidates]
        return masked


def evaluate_holdout(
    scorer: Scorer, holdout: Holdout, ks: Sequence[int] = (10, 20), batch_size: int = 1024
) -> UserMetrics:
    """A model fitted on `holdout.train`, measured on `holdout.target`, metrics per user.

    Seen training items are excluded and novelty uses training popularity; a holdout with
    sampled negatives is ranked against them instead of the whole catalogue, and one with
    `candidates` (cold-start) over those items only.
    """
    if holdout.negatives is not None:
        return sampled_user_metrics(scorer, holdout.target, holdout.negatives, ks, batch_size)
    if holdout.candidates is not None:
        scorer = _OnlyCandidates(scorer, holdout.candidates)
    return user_metrics(
        scorer,
        holdout.target,
        seen_csr(holdout.train),
        ks,
        popularity=item_popularity(holdout.train),
        batch_size=batch_size,
    )


def evaluate_ranking(
    scorer: Scorer,
    target: InteractionLog,
    exclude: Csr | None,
    ks: Sequence[int] = (10, 20),
    protocol: str = "leave-last-out",
    popularity: Int64Array | None = None,
) -> RankingReport:
    """`user_metrics` averaged over users: one number per metric, under a protocol's name."""
    result = user_metrics(scorer, target, exclude, ks, popularity)
    return RankingReport(
        protocol=protocol,
        num_users=len(result.users),
        num_items=target.num_items,
        metrics=result.means(),
    )


def taste_recovery(ranked: Int64Array, item_category: Int64Array, taste: Float32Array) -> float:
    """Mean cosine between each user's category histogram of recommendations and true taste.

    `item_category[i]` is item i's category; `taste` has one row per row of `ranked` and one
    column per category. 1.0 means the recommendations spread over categories exactly as the
    user's taste does. A user whose taste row is all zero counts as 0.
    """
    if ranked.ndim != 2 or taste.ndim != 2 or len(taste) != len(ranked):
        raise PinlabDataError(
            f"ranked {ranked.shape} and taste {taste.shape} must both be 2-d with one row per user"
        )
    if len(ranked) == 0:
        raise PinlabDataError("no users to measure taste recovery on")
    num_users, num_categories = taste.shape
    categories = item_category[ranked]
    if categories.min() < 0 or categories.max() >= num_categories:
        raise PinlabDataError(
            f"item categories run over {categories.min()}..{categories.max()} but taste has "
            f"{num_categories} columns"
        )
    rows = np.repeat(np.arange(num_users, dtype=np.int64), ranked.shape[1])
    counts = np.bincount(
        rows * num_categories + categories.ravel(), minlength=num_users * num_categories
    ).reshape(num_users, num_categories)
    histogram = counts / ranked.shape[1]  # normalised; cosine would not mind, readers might
    true = taste.astype(np.float64)
    norms = np.linalg.norm(histogram, axis=1) * np.linalg.norm(true, axis=1)
    cosine = np.zeros(num_users)
    np.divide((histogram * true).sum(axis=1), norms, out=cosine, where=norms > 0)
    return float(cosine.mean())
