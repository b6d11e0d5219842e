"""Diversity re-ranking: maximal marginal relevance with category and creator-group spread."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pinlab_data.contracts import Float32Array


def mmr(
    relevance: Sequence[float],
    vectors: Float32Array,
    categories: Sequence[str],
    groups: Sequence[str],
    k: int,
    diversity: float,
) -> list[int]:
    """Positions of `k` candidates chosen greedily by MMR; `diversity` 0 keeps the order.

    Each step picks the candidate maximising
    `(1 - diversity) * rel - diversity * (sim / 2 + cat_share / 4 + group_share / 4)`,
    where `rel` is relevance scaled to [0, 1] over the candidates, `sim` the largest cosine
    to an already chosen pin, and the shares the fraction of chosen pins with the same
    category and the same creator group.
    """
    n = len(relevance)
    if diversity <= 0 or n <= 1:
        return list(range(min(k, n)))
    rel = np.asarray(relevance, dtype=np.float64)
    span = rel.max() - rel.min()
    rel = (rel - rel.min()) / span if span > 0 else np.ones(n)
    sims = vectors.astype(np.float64) @ vectors.T.astype(np.float64)
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
