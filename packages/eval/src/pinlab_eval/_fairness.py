"""Fairness over groups: item groups' share of exposure, and a metric's quality per user group."""

from __future__ import annotations

import numpy as np

from pinlab_data.contracts import Int64Array, PinlabDataError
from pinlab_eval._beyond_accuracy import check_ranked, check_rows
from pinlab_eval._stats import bootstrap_ci
from pinlab_eval.contracts import (
    Csr,
    ExposureReport,
    Float64Array,
    GroupExposure,
    GroupQuality,
    GroupQualityReport,
)


def _num_groups(labels: Int64Array, num_groups: int | None, what: str) -> int:
    """How many groups 0..G-1 there are, refusing negative labels or labels past `num_groups`."""
    if labels.ndim != 1:
        raise PinlabDataError(f"{what} groups must be a 1-d array, got shape {labels.shape}")
    if labels.size and labels.min() < 0:
        raise PinlabDataError(f"{what} groups must be labelled 0..G-1, got {labels.min()}")
    seen = int(labels.max(initial=-1)) + 1
    if num_groups is None:
        return seen
    if seen > num_groups:
        raise PinlabDataError(f"{what} group {seen - 1} is past num_groups={num_groups}")
    return num_groups


def exposure_by_group(
    ranked: Int64Array,
    item_group: Int64Array,
    relevant: Csr,
    num_groups: int | None = None,
) -> ExposureReport:
    """Each item group's share of exposure in the top-k lists against its share of relevance.

    Fairness of exposure (Singh & Joachims, KDD 2018): the item at rank r (1-based) gets
    exposure 1 / log2(r + 1), the DCG position bias, summed over every user's list; a group's
    relevance is how many (user, target item) pairs of the held-out `relevant` (a CSR lined up
    with `ranked`) fall in it. Exposure proportional to relevance (ratio 1 for every group) is
    their demographic-parity-of-merit criterion. Groups are `item_group[item]`, 0..G-1;
    `num_groups` adds groups with no items. A group with no held-out targets is reported empty.
    """
    if ranked.ndim != 2 or ranked.shape[1] == 0:
        raise PinlabDataError(f"ranked must be (users, k) with k >= 1, got shape {ranked.shape}")
    check_ranked(ranked, len(item_group))
    check_rows(ranked, relevant, "relevant", len(item_group))
    indices = relevant[1]
    if len(ranked) == 0:
        raise PinlabDataError("no users to measure exposure on")
    groups = _num_groups(item_group, num_groups, "item")
    k = ranked.shape[1]
    weight = 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))
    exposure = np.bincount(
        item_group[ranked].ravel(), weights=np.tile(weight, len(ranked)), minlength=groups
    )
    relevance = np.bincount(item_group[indices], minlength=groups).astype(np.float64)
    if relevance.sum() == 0:
        raise PinlabDataError("relevant holds no targets; exposure needs held-out items")
    exposure_share = exposure / exposure.sum()
    relevance_share = relevance / relevance.sum()
    sizes = np.bincount(item_group, minlength=groups)
    rows = [
        GroupExposure(
            group=g,
            num_items=int(sizes[g]),
            exposure_share=float(exposure_share[g]),
            relevance_share=None if relevance[g] == 0 else float(relevance_share[g]),
            ratio=None if relevance[g] == 0 else float(exposure_share[g] / relevance_share[g]),
            empty=bool(relevance[g] == 0),
        )
        for g in range(groups)
    ]
    disparity = 0.5 * float(np.abs(exposure_share - relevance_share).sum())
    # Disjoint shares give exactly 1, which rounding can push a hair past.
    return ExposureReport(k=k, num_users=len(ranked), groups=rows, disparity=min(disparity, 1.0))


def quality_by_group(
    values: Float64Array,
    user_group: Int64Array,
    metric: str,
    num_groups: int | None = None,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> GroupQualityReport:
    """Mean of a per-user metric per user group, with a seeded percentile bootstrap interval.

    `values` is one metric of `UserMetrics.per_user` (e.g. `per_user["ndcg@10"]`) and
    `user_group[i]` the group 0..G-1 of the same user i. Each group's interval resamples its own
    users (`bootstrap_ci`, same seed for every group). Groups without users (up to
    `num_groups`) are reported empty; worst and best are over the others.
    """
    if values.ndim != 1 or values.shape != user_group.shape:
        raise PinlabDataError(
            f"values {values.shape} and user_group {user_group.shape} must be 1-d arrays "
            "of one length, one entry per user"
        )
    if len(values) == 0:
        raise PinlabDataError("no users to group")
    groups = _num_groups(user_group, num_groups, "user")
    rows: list[GroupQuality] = []
    for g in range(groups):
        members = np.asarray(values[user_group == g], dtype=np.float64)
        if len(members) == 0:
            rows.append(GroupQuality(group=g, count=0, empty=True))
            continue
        ci = bootstrap_ci({metric: members}, resamples=resamples, seed=seed, level=level)
        mean = float(members.mean())
        # A percentile interval of means can round a hair past the mean for a constant group.
        low, high = ci[metric]
        rows.append(
            GroupQuality(
                group=g,
                count=len(members),
                mean=mean,
                ci=(min(low, mean), max(high, mean)),
                empty=False,
            )
        )
    means = {row.group: row.mean for row in rows if row.mean is not None}
    worst = min(means, key=means.__getitem__)
    best = max(means, key=means.__getitem__)
    return GroupQualityReport(
        metric=metric,
        level=level,
        resamples=resamples,
        seed=seed,
        groups=rows,
        worst_group=worst,
        best_group=best,
        gap=means[best] - means[worst],
    )
