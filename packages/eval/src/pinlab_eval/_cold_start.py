"""Cold-start baselines that can rank items nobody has engaged with.

A cold item has no training interactions, so item popularity scores every one of them 0 and
a top-k tie-break decides the ranking. These baselines rank cold items honestly: the exact
expectation of a uniformly random ranking, the popularity of the item's feature value (its
category), and content similarity to what the user engaged with.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from pinlab_data import Float32Array, Int64Array, InteractionLog, PinlabDataError
from pinlab_eval.contracts import Holdout, Metrics


def random_ranking_metrics(holdout: Holdout, ks: Sequence[int] = (10, 20)) -> Metrics:
    """hr, ndcg, recall and precision @k of a uniformly random ranking of the candidates,
    in expectation over the ranking and averaged over the target users, exactly.

    A user with r relevant among C candidates misses all of the top k' = min(k, C) with
    probability C(C-r, k') / C(C, k'); each rank holds a relevant item with probability r / C,
    so the expected DCG is r / C times the sum of the first k' discounts.
    """
    if holdout.candidates is None:
        raise PinlabDataError("a random ranking's expectation needs a holdout with candidates")
    num_candidates = len(holdout.candidates)
    users, counts = np.unique(holdout.target.users, return_counts=True)
    if not len(users) or not num_candidates:
        return {f"{m}@{k}": 0.0 for k in ks for m in ("hr", "ndcg", "recall", "precision")}
    relevant = np.minimum(counts, num_candidates)
    metrics: Metrics = {}
    for k in ks:
        shown = min(k, num_candidates)
        miss = np.array([math.comb(num_candidates - r, shown) for r in relevant.tolist()])
        discount = 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))
        ideal = np.concatenate([[0.0], np.cumsum(discount)])[np.minimum(relevant, k)]
        share = relevant / num_candidates
        metrics[f"hr@{k}"] = float(np.mean(1.0 - miss / math.comb(num_candidates, shown)))
        metrics[f"ndcg@{k}"] = float(np.mean(share * discount[:shown].sum() / ideal))
        metrics[f"recall@{k}"] = shown / num_candidates
        metrics[f"precision@{k}"] = float(np.mean(share * shown / k))
    return metrics


class FeaturePopularity:
    """Scores an item by the training interactions with all items sharing its feature value.

    `item_group[i]` is item i's value of one feature column (its category, creator...) as a
    dense non-negative code. Items of equal popularity are ordered by a seeded random
    permutation, never by their index.
    """

    def __init__(self, train: InteractionLog, item_group: Int64Array, seed: int) -> None:
        if len(item_group) != train.num_items or (len(item_group) and item_group.min() < 0):
            raise PinlabDataError(
                f"item_group needs one non-negative code per item ({train.num_items}), "
                f"got {len(item_group)}"
            )
        per_group = np.bincount(
            item_group[train.items], minlength=int(item_group.max(initial=0)) + 1
        )
        # The tie-break lies in [0, 1): it orders equal counts and never overturns a count.
        jitter = np.random.default_rng(seed).permutation(train.num_items) / max(train.num_items, 1)
        self.item_scores = (per_group[item_group] + jitter).astype(np.float32)

    def score(self, users: Int64Array) -> Float32Array:
        return np.broadcast_to(self.item_scores, (len(users), len(self.item_scores))).copy()


class ContentKNN:
    """Scores an item by its cosine similarity to the user's training items.

    The score is the mean of the `neighbours` largest cosines between the item's feature row
    and those of the items the user engaged with (1: the nearest one; a large number: the
    mean over the whole history). With `candidates`, only those items are scored (the rest
    get -inf), which keeps a cold-start evaluation to the cold items.
    """

    def __init__(
        self,
        train: InteractionLog,
        features: Float32Array,
        neighbours: int = 5,
        candidates: Int64Array | None = None,
    ) -> None:
        if features.ndim != 2 or len(features) != train.num_items:
            raise PinlabDataError(
                f"features need one row per item ({train.num_items}), got shape {features.shape}"
            )
        if neighbours < 1:
            raise PinlabDataError(f"neighbours must be at least 1, got {neighbours}")
        norms = np.linalg.norm(features, axis=1, keepdims=True)
        self.unit = (features / np.maximum(norms, 1e-12)).astype(np.float32)
        self.neighbours = neighbours
        self.columns = np.arange(train.num_items) if candidates is None else candidates
        order = np.argsort(train.users, kind="stable")
        self.history = np.split(
            train.items[order], np.cumsum(np.bincount(train.users, minlength=train.num_users))[:-1]
        )

    def score(self, users: Int64Array) -> Float32Array:
        out = np.full((len(users), len(self.unit)), -np.inf, dtype=np.float32)
        columns = self.unit[self.columns]
        for row, user in enumerate(users.tolist()):
            seen = np.unique(self.history[user])
            if not len(seen):
                continue
            cosines = self.unit[seen] @ columns.T  # (history, candidates)
            top = min(self.neighbours, len(seen))
            nearest = -np.partition(-cosines, top - 1, axis=0)[:top]
            out[row, self.columns] = nearest.mean(axis=0)
        return out
