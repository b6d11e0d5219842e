"""LearnBPR (Rendle et al., 2009): sequential SGD, one sample at a time, compiled by Numba.

BPR's published algorithm updates the factors after every (user, positive, negative) sample.
Batching the samples (as a PyTorch step would) is not the same algorithm: a popular item then
takes dozens of stale steps at once, and every epoch pays tensor overheads. Sequential SGD is
what Cornac and LibRec run, in C; here Numba compiles the loop (cached on disk after the
first call), which makes an epoch several times faster than the batched PyTorch step it
replaced and lets a search budget afford the small steps that validate best.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from pinlab_data.contracts import Float32Array, Int64Array


@njit(cache=True, nogil=True)
def _epoch(  # pragma: no cover - compiled; tests call it through `learn_bpr_epoch`
    users: Int64Array,
    positives: Int64Array,
    negatives: Int64Array,
    weights: Float32Array,
    known: Int64Array,
    user_factors: Float32Array,
    item_factors: Float32Array,
    item_bias: Float32Array,
    lr: float,
    l2: float,
) -> float:
    num_items = item_factors.shape[0]
    dim = item_factors.shape[1]
    total = 0.0
    for s in range(users.shape[0]):
        u, i, j = users[s], positives[s], negatives[s]
        key = u * num_items + j
        at = np.searchsorted(known, key)
        if at < known.shape[0] and known[at] == key:
            continue  # the draw is a positive of u: skipped, as Cornac does
        x = item_bias[i] - item_bias[j]
        for f in range(dim):
            x += user_factors[u, f] * (item_factors[i, f] - item_factors[j, f])
        # d/dx of -log sigmoid(x) is -sigmoid(-x): `pull` is the step along +x.
        w = weights[s]
        pull = w / (1.0 + math.exp(x)) if x > -30.0 else w
        shrink = w * l2
        for f in range(dim):
            pu, qi, qj = user_factors[u, f], item_factors[i, f], item_factors[j, f]
            user_factors[u, f] = pu + lr * (pull * (qi - qj) - shrink * pu)
            item_factors[i, f] = qi + lr * (pull * pu - shrink * qi)
            item_factors[j, f] = qj + lr * (-pull * pu - shrink * qj)
        item_bias[i] += lr * (pull - shrink * item_bias[i])
        item_bias[j] += lr * (-pull - shrink * item_bias[j])
        # -log sigmoid(x), stable for large |x|.
        total += w * (math.log1p(math.exp(-x)) if x > -30.0 else -x)
    return total


def learn_bpr_epoch(
    users: Int64Array,
    positives: Int64Array,
    negatives: Int64Array,
    weights: Float32Array,
    known: Int64Array,
    user_factors: Float32Array,
    item_factors: Float32Array,
    item_bias: Float32Array,
    lr: float,
    l2: float,
) -> float:
    """One pass over the samples in the given order, updating the factor arrays in place.

    `known` holds the sorted keys `user * num_items + item` of the training pairs: a negative
    that is a positive of its user is skipped. `l2` is per sample: each step shrinks the rows
    it touches. Returns the summed weighted BPR loss (without the L2) before each step.
    """
    for array in (user_factors, item_factors, item_bias):
        if array.dtype != np.float32 or not array.flags.c_contiguous:
            raise ValueError("factor arrays must be C-contiguous float32 (updated in place)")
    return float(
        _epoch(users, positives, negatives, weights, known, user_factors, item_factors,
               item_bias, lr, l2)
    )  # fmt: skip
