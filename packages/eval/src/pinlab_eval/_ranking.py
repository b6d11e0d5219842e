"""Recommendation metrics over a full ranking of the catalogue.

Per-user metric functions take `ranked` (users × k item indices, best first) and the users'
relevant items as a `Csr` whose rows line up with `ranked`'s rows. They return one float64 per
user. A user with no relevant items has no recall, nDCG or MAP (0/0): those come back NaN and
the others 0, so callers evaluate only users with at least one relevant item
(`evaluate_ranking` does: its users are the users of the target log).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from pinlab_data.contracts import Float32Array, Int64Array, InteractionLog, PinlabDataError
from pinlab_eval.contracts import Csr, Float64Array, RankingReport, Scorer

BoolArray = npt.NDArray[np.bool_]


def _csr_rows(csr: Csr, rows: Int64Array) -> tuple[Int64Array, Int64Array]:
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


def _best_k(scores: Float32Array, k: int) -> Int64Array:
    """Column indices of the k highest scores per row, best first, ties to the lower index."""
    neg = -scores  # ascending `neg` is descending score
    kth = np.partition(neg, k - 1, axis=1)[:, k - 1 : k]
    better = neg < kth
    tied = neg == kth
    # argpartition picks arbitrary members of a tie at the cut; take every strictly better item,
    # then the lowest-index tied items until the row has k.
    room = k - better.sum(axis=1, keepdims=True)
    chosen = better | (tied & (np.cumsum(tied, axis=1) <= room))
    cols = np.nonzero(chosen)[1].reshape(len(scores), k)  # ascending index within each row
    # A stable sort keeps the ascending index order among equal scores.
    order = np.argsort(np.take_along_axis(neg, cols, axis=1), axis=1, kind="stable")
    return np.take_along_axis(cols, order, axis=1).astype(np.int64)


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
        raw = scorer.score(batch)
        # A copy in at least float32: we write -inf into it and must not touch the scorer's array.
        scores = np.array(raw, dtype=np.promote_types(raw.dtype, np.float32))
        if scores.ndim != 2 or len(scores) != len(batch):
            raise PinlabDataError(
                f"scorer returned shape {scores.shape} for {len(batch)} users; "
                "expected (num_users, num_items)"
            )
        if num_items is None:
            num_items = scores.shape[1]
        elif scores.shape[1] != num_items:
            raise PinlabDataError(
                f"scorer returned {scores.shape[1]} items after {num_items} for earlier users"
            )
        if num_items == 0:
            raise PinlabDataError("scorer returned no items; the catalogue is empty")
        scores[np.isnan(scores)] = -np.inf
        if exclude is not None:
            rows, cols = _csr_rows(exclude, batch)
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


def _map(hits: BoolArray, n_relevant: Int64Array) -> Float64Array:
    ranks = np.arange(1, hits.shape[1] + 1, dtype=np.float64)
    precision_at_hits = np.where(hits, np.cumsum(hits, axis=1) / ranks, 0.0)
    best_possible = np.minimum(n_relevant, hits.shape[1]).astype(np.float64)
    return _ratio(precision_at_hits.sum(axis=1), best_possible)


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


def catalogue_coverage(ranked: Int64Array, num_items: int) -> float:
    """Share of the catalogue recommended to at least one user."""
    if num_items <= 0:
        raise PinlabDataError(f"num_items must be positive, got {num_items}")
    return len(np.unique(ranked)) / num_items


def _relevant_csr(target: InteractionLog) -> tuple[Int64Array, Csr]:
    """Distinct users of the log and their distinct items as a CSR aligned with them."""
    users = np.unique(target.users).astype(np.int64)
    width = max(target.num_items, int(target.items.max()) + 1)
    keys = np.unique(target.users.astype(np.int64) * width + target.items)
    rows = np.searchsorted(users, keys // width)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=len(users)))])
    return users, (indptr.astype(np.int64), (keys % width).astype(np.int64))


def evaluate_ranking(
    scorer: Scorer,
    target: InteractionLog,
    exclude: Csr | None,
    ks: Sequence[int] = (10, 20),
    protocol: str = "leave-last-out",
) -> RankingReport:
    """Rank the whole catalogue for every user in `target`; their target items are relevant.

    Items in `exclude` (seen in training) are never recommended, so a target item that is also
    excluded cannot be found. Metrics are means over users; keys are `recall@k`, `ndcg@k`,
    `hr@k`, `mrr@k`, `precision@k`, `map@k` and `coverage@k` for each k.
    """
    if not ks or min(ks) <= 0:
        raise PinlabDataError(f"ks must be positive cut-offs, got {tuple(ks)}")
    if len(target) == 0:
        raise PinlabDataError("the target log has no interactions, so there is nothing to rank")
    users, relevant = _relevant_csr(target)
    ranked = top_k(scorer, users, max(ks), exclude)
    hits, n_relevant = _hits(ranked, relevant)
    metrics: dict[str, float] = {}
    for k in sorted(set(ks)):
        at_k = hits[:, :k]
        metrics[f"recall@{k}"] = float(_recall(at_k, n_relevant).mean())
        metrics[f"ndcg@{k}"] = float(_ndcg(at_k, n_relevant).mean())
        metrics[f"hr@{k}"] = float(_hit_rate(at_k).mean())
        metrics[f"mrr@{k}"] = float(_mrr(at_k).mean())
        metrics[f"precision@{k}"] = float(_precision(at_k).mean())
        metrics[f"map@{k}"] = float(_map(at_k, n_relevant).mean())
        metrics[f"coverage@{k}"] = catalogue_coverage(ranked[:, :k], target.num_items)
    return RankingReport(
        protocol=protocol, num_users=len(users), num_items=target.num_items, metrics=metrics
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
