"""Beyond-accuracy metrics of top-k lists: exposure entropy, diversity, serendipity, calibration.

Every function takes `ranked` (users × k item indices, best first, as `top_k` returns) and item
side information indexed by item. Catalogue coverage and the Gini index of exposure are in
`_ranking.py` (`catalogue_coverage`, `gini_at_k`). Per-user functions return one float64 per
user; a user for whom the metric is undefined (no history) gets NaN.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from pinlab_data.contracts import Int64Array, PinlabDataError
from pinlab_eval.contracts import Csr, Float64Array

FloatArray = npt.NDArray[np.floating[Any]]


def check_ranked(ranked: Int64Array, num_items: int) -> None:
    """Refuse a `ranked` that is not (users, k) or names items outside 0..num_items-1."""
    if ranked.ndim != 2:
        raise PinlabDataError(f"ranked must be (users, k), got shape {ranked.shape}")
    if ranked.size and (ranked.min() < 0 or ranked.max() >= num_items):
        raise PinlabDataError(
            f"ranked items run over {ranked.min()}..{ranked.max()} but the item data covers "
            f"{num_items} items (0..{num_items - 1})"
        )


def check_rows(ranked: Int64Array, rows: Csr, name: str, num_items: int) -> None:
    """Refuse a CSR that does not line up with `ranked` row for row, or names unknown items."""
    indptr, indices = rows
    if len(indptr) != len(ranked) + 1:
        raise PinlabDataError(
            f"ranked has {len(ranked)} rows but {name} has {len(indptr) - 1}; "
            "they must line up row for row"
        )
    if indices.size and (indices.min() < 0 or indices.max() >= num_items):
        raise PinlabDataError(
            f"{name} items run over {indices.min()}..{indices.max()} outside 0..{num_items - 1}"
        )


def _unit_rows(embeddings: FloatArray) -> Float64Array:
    """Embeddings scaled to unit length, refusing NaN and zero vectors (no cosine for them)."""
    if embeddings.ndim != 2:
        raise PinlabDataError(f"item embeddings must be (items, dim), got {embeddings.shape}")
    vectors = np.asarray(embeddings, dtype=np.float64)
    if not np.isfinite(vectors).all():
        raise PinlabDataError("item embeddings contain NaN or infinity")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if (norms == 0).any():
        raise PinlabDataError(
            f"item {int(np.argmax(norms[:, 0] == 0))} has a zero embedding; cosine needs length"
        )
    return np.asarray(vectors / norms, dtype=np.float64)


def _pairs(k: int) -> tuple[Int64Array, Int64Array]:
    """Positions (a, b), a < b, of every unordered pair of slots in a list of k."""
    if k < 2:
        raise PinlabDataError(f"diversity compares pairs of items; lists need k >= 2, got {k}")
    first, second = np.triu_indices(k, 1)
    return first.astype(np.int64), second.astype(np.int64)


def distributional_coverage(ranked: Int64Array, num_items: int) -> float:
    """Shannon entropy, in bits, of how the recommendation slots spread over items.

    With p(i) the share of all slots (every user's top-k) that show item i,
    H = -Σ_i p(i) log2 p(i): 0 when one item fills every slot, log2(num_items) when every item
    is shown equally often. Shani & Gunawardana (Recommender Systems Handbook 2010, eq. 21), as
    Microsoft Recommenders' `distributional_coverage` (log base 2; unshown items add 0).
    Key `entropy@k`.
    """
    if num_items <= 0:
        raise PinlabDataError(f"num_items must be positive, got {num_items}")
    check_ranked(ranked, num_items)
    if ranked.size == 0:
        raise PinlabDataError("no recommendations to measure exposure on")
    counts = np.bincount(ranked.ravel(), minlength=num_items)
    share = counts[counts > 0] / ranked.size
    return float(-(share * np.log2(share)).sum()) + 0.0  # + 0.0: -0.0 reads badly


def category_diversity_at_k(ranked: Int64Array, item_category: Int64Array) -> Float64Array:
    """Share of each user's list pairs whose two items have different categories.

    Intra-list diversity (Ziegler et al., WWW 2005) with the 0/1 distance "different
    category": 0 when the whole list is one category, 1 when every item's category differs.
    Key `category_diversity@k`.
    """
    check_ranked(ranked, len(item_category))
    first, second = _pairs(ranked.shape[1])
    categories = item_category[ranked]
    differ = categories[:, first] != categories[:, second]
    return np.asarray(differ.mean(axis=1), dtype=np.float64)


def embedding_diversity_at_k(ranked: Int64Array, item_embeddings: FloatArray) -> Float64Array:
    """Mean cosine distance 1 - cos(e_i, e_j) over the unordered pairs of each user's list.

    Microsoft Recommenders' `diversity` is 1 - ILS with ILS the mean pairwise cosine similarity
    of the list's item vectors (item features, or co-occurrence counts when none are given); the
    per-user value here is exactly that with the item embeddings as features (their package then
    averages over users: take `.mean()`). Unlike theirs, nothing falls back to co-occurrence and
    the value stays per user for intervals. Ranges over [0, 2]; 0 when all items point the same
    way. Key `diversity@k`.
    """
    check_ranked(ranked, len(item_embeddings))
    unit = _unit_rows(item_embeddings)
    first, second = _pairs(ranked.shape[1])
    lists = unit[ranked]  # users × k × dim
    similarity = np.einsum("ukd,ujd->ukj", lists, lists)
    return np.asarray(1.0 - similarity[:, first, second].mean(axis=1), dtype=np.float64)


def serendipity_at_k(
    ranked: Int64Array,
    history: Csr,
    item_embeddings: FloatArray,
    relevant: Csr | None = None,
) -> Float64Array:
    """Mean relevance × unexpectedness of each user's recommended items (Microsoft Recommenders).

    unexpectedness(u, i) = 1 - mean_{j ∈ H(u)} cos(e_i, e_j), with H(u) the user's history
    (`history`, rows lined up with `ranked`); relevance(u, i) is 1 if i is among the user's
    held-out targets (`relevant`), else 0, or 1 for every item when `relevant` is None (their
    default without a relevance column). serendipity(u) is the mean over the k items, as their
    `user_serendipity` (Zhang et al., Auralist, WSDM 2012), with the item embeddings as their
    `item_feature_vector` similarity. Differences: a recommended item that is also in the
    history counts its self-similarity 1 here, 0 there (their pair table has no self-pairs;
    `top_k` excludes seen items, so it does not arise), and a user with no history gets NaN
    here (nothing to be unexpected against) where they drop the user. Key `serendipity@k`.
    """
    num_items = len(item_embeddings)
    check_ranked(ranked, num_items)
    check_rows(ranked, history, "history", num_items)
    unit = _unit_rows(item_embeddings)
    indptr, indices = history
    sizes = np.diff(indptr)
    # Sum of each user's history vectors: mean cosine to H(u) is e_i · Σ_j e_j / |H(u)|.
    owners = np.repeat(np.arange(len(ranked), dtype=np.int64), sizes)
    summed = np.zeros((len(ranked), unit.shape[1]))
    np.add.at(summed, owners, unit[indices])
    mean_similarity = np.einsum("ukd,ud->uk", unit[ranked], summed) / np.maximum(sizes, 1)[:, None]
    unexpected = 1.0 - mean_similarity
    if relevant is not None:
        check_rows(ranked, relevant, "relevant", num_items)
        unexpected = unexpected * _is_relevant(ranked, relevant, num_items)
    out = np.asarray(unexpected.mean(axis=1), dtype=np.float64)
    out[sizes == 0] = np.nan
    return out


def _is_relevant(ranked: Int64Array, relevant: Csr, num_items: int) -> Float64Array:
    """1.0 where ranked[u, r] is among row u's relevant items, else 0.0."""
    indptr, indices = relevant
    owners = np.repeat(np.arange(len(ranked), dtype=np.int64), np.diff(indptr))
    keys = owners * num_items + indices
    slots = np.arange(len(ranked), dtype=np.int64)[:, None] * num_items + ranked
    return np.isin(slots, keys).astype(np.float64)


def miscalibration_at_k(
    ranked: Int64Array,
    history: Csr,
    item_category: Int64Array,
    alpha: float = 0.01,
) -> Float64Array:
    """Steck's miscalibration KL(p || q~) of each user's list against their history, in nats.

    Calibrated recommendations (Steck, RecSys 2018): p(g|u) is the category mix of the user's
    history and q(g|u) that of the top-k list; q~ = (1 - alpha) q + alpha p keeps the KL finite
    when the list misses a category the user had. Each item has one category, history items
    count once each and list positions are unweighted (the paper weights both by interaction
    weight and by rank; here every slot counts the same). 0 when the list mirrors the history's
    mix. A user with no history gets NaN. Key `miscalibration@k`.
    """
    if not 0 < alpha < 1:
        raise PinlabDataError(f"alpha must lie strictly between 0 and 1, got {alpha}")
    num_items = len(item_category)
    check_ranked(ranked, num_items)
    check_rows(ranked, history, "history", num_items)
    if item_category.size and item_category.min() < 0:
        raise PinlabDataError("item categories must be non-negative integers")
    num_categories = int(item_category.max(initial=-1)) + 1
    num_users = len(ranked)
    indptr, indices = history
    sizes = np.diff(indptr)
    owners = np.repeat(np.arange(num_users, dtype=np.int64), sizes)
    p = _category_shares(owners, item_category[indices], num_users, num_categories)
    list_owners = np.repeat(np.arange(num_users, dtype=np.int64), ranked.shape[1])
    q = _category_shares(list_owners, item_category[ranked.ravel()], num_users, num_categories)
    q_smooth = (1 - alpha) * q + alpha * p
    terms = np.zeros_like(p)
    present = p > 0  # 0 log 0 = 0; where p > 0, q~ ≥ alpha p > 0
    terms[present] = p[present] * np.log(p[present] / q_smooth[present])
    out = np.asarray(terms.sum(axis=1), dtype=np.float64)
    out[sizes == 0] = np.nan
    return out


def _category_shares(
    owners: Int64Array, categories: Int64Array, num_users: int, num_categories: int
) -> Float64Array:
    """Each user's share of entries per category (users × categories); rows of no entries are 0."""
    counts = np.bincount(
        owners * num_categories + categories, minlength=num_users * num_categories
    ).reshape(num_users, num_categories)
    totals = counts.sum(axis=1, keepdims=True)
    return np.asarray(counts / np.maximum(totals, 1), dtype=np.float64)
