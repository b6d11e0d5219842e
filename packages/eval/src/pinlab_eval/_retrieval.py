"""Image retrieval by label: every item queries all the others by inner product."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pinlab_data.contracts import Float32Array, Int64Array, PinlabDataError
from pinlab_eval._fairness import quality_by_group
from pinlab_eval.contracts import GroupQualityReport, QueryRetrieval, RetrievalReport


def evaluate_retrieval(
    embeddings: Float32Array,
    labels: Int64Array,
    ks: Sequence[int] = (1, 10),
    protocol: str = "held-out-pins",
    batch_size: int = 1024,
) -> RetrievalReport:
    """Recall@k, MAP and MAP@R of label retrieval, each item querying all the others.

    Embeddings are compared by inner product (pass L2-normalised ones for cosine). Relevant
    means same label. `recall@k` is the share of queries with at least one relevant item in the
    top k (Oh Song et al. 2016); `map` is mean average precision over the full ranking; `map@r`
    is MAP@R (Musgrave et al. 2020) with R the number of other items sharing the query's label.
    Items whose label has no other member are not queries (they stay in the gallery as
    distractors); `num_queries` counts the rest. Ties count against the query: an item tied
    with a relevant one ranks ahead of it, so collapsed embeddings score low, never perfect.
    Similarities are computed `batch_size` queries at a time, so memory is
    O(batch_size × num_items). `retrieval_per_query` keeps the values per query.
    """
    return retrieval_per_query(embeddings, labels, ks, protocol, batch_size).report()


def retrieval_per_query(
    embeddings: Float32Array,
    labels: Int64Array,
    ks: Sequence[int] = (1, 10),
    protocol: str = "held-out-pins",
    batch_size: int = 1024,
) -> QueryRetrieval:
    """`evaluate_retrieval`'s metrics before averaging: one value per query (see there)."""
    if embeddings.ndim != 2 or labels.shape != (len(embeddings),):
        raise PinlabDataError(
            f"embeddings {embeddings.shape} and labels {labels.shape} must be (n, d) and (n,)"
        )
    if not ks or min(ks) <= 0:
        raise PinlabDataError(f"ks must be positive cut-offs, got {tuple(ks)}")
    if batch_size <= 0:
        raise PinlabDataError(f"batch_size must be positive, got {batch_size}")
    emb = np.asarray(embeddings, dtype=np.float32)
    if not np.isfinite(emb).all():
        raise PinlabDataError("embeddings contain NaN or infinity; the encoder diverged")
    _, label_of, label_sizes = np.unique(labels, return_inverse=True, return_counts=True)
    members_by_label = np.argsort(label_of, kind="stable")
    label_start = np.concatenate([[0], np.cumsum(label_sizes)])
    queries = np.flatnonzero(label_sizes[label_of] > 1)
    if len(queries) == 0:
        raise PinlabDataError("no label has two items, so no query has anything to find")

    num_items = len(emb)
    first_hit = np.empty(len(queries), dtype=np.int64)
    average_precision = np.empty(len(queries))
    average_precision_at_r = np.empty(len(queries))
    for start in range(0, len(queries), batch_size):
        batch = queries[start : start + batch_size]
        sims = emb[batch] @ emb.T
        sims[np.arange(len(batch)), batch] = -np.inf  # a query never retrieves itself
        ascending = np.sort(sims, axis=1)
        for row, query in enumerate(batch):
            label = label_of[query]
            members = members_by_label[label_start[label] : label_start[label + 1]]
            # The query itself is among its label's members, first at -inf; drop it.
            relevant = np.sort(sims[row, members])[1:]
            best_first = relevant[::-1]
            # 0-based rank of each relevant item under pessimistic ties: it sits after every
            # item scoring at least as high, and tied relevant items take the last of those
            # places in turn (`at_least` counts all items, `relevant_at_least` the relevant).
            at_least = num_items - np.searchsorted(ascending[row], best_first, side="left")
            relevant_at_least = len(relevant) - np.searchsorted(relevant, best_first, side="left")
            found = np.arange(1, len(relevant) + 1)
            rank = at_least - relevant_at_least + found - 1
            precision = found / (rank + 1.0)
            i = start + row
            first_hit[i] = rank[0]
            average_precision[i] = precision.mean()
            average_precision_at_r[i] = precision[rank < len(relevant)].sum() / len(relevant)

    per_query = {f"recall@{k}": (first_hit < k).astype(np.float64) for k in sorted(set(ks))}
    per_query["map"] = average_precision
    per_query["map@r"] = average_precision_at_r
    return QueryRetrieval(
        protocol=protocol, num_items=num_items, queries=queries, per_query=per_query
    )


def retrieval_by_group(
    result: QueryRetrieval,
    item_group: Int64Array,
    metric: str = "recall@1",
    num_groups: int | None = None,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> GroupQualityReport:
    """A retrieval metric per group of queries, with counts and seeded bootstrap intervals.

    `item_group[i]` is item i's group 0..G-1 (e.g. its creator group or category); a query
    falls in its own item's group, whatever it retrieves. Each group's mean is over its queries
    (`quality_by_group` on `result.per_query[metric]`), so the counts-weighted group means give
    the overall mean. Groups with items but no queries (every item alone in its label), and
    any up to `num_groups`, are reported empty.
    """
    if item_group.shape != (result.num_items,):
        raise PinlabDataError(
            f"item_group has shape {item_group.shape} but retrieval ran over "
            f"{result.num_items} items; give one group per item, in the embeddings' order"
        )
    if item_group.size and item_group.min() < 0:
        raise PinlabDataError(f"item groups must be labelled 0..G-1, got {item_group.min()}")
    if metric not in result.per_query:
        raise PinlabDataError(
            f"no per-query {metric!r}; measured: {', '.join(sorted(result.per_query))}"
        )
    if num_groups is None:
        num_groups = int(item_group.max(initial=-1)) + 1
    return quality_by_group(
        result.per_query[metric],
        item_group[result.queries],
        metric,
        num_groups=num_groups,
        resamples=resamples,
        seed=seed,
        level=level,
    )
