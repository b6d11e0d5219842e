"""Fairness over groups: exposure per item group, a metric's quality per user group, contracts."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from pinlab_data.contracts import Int64Array, PinlabDataError
from pinlab_eval import (
    Csr,
    ExposureReport,
    GroupExposure,
    GroupQuality,
    GroupQualityReport,
    exposure_by_group,
    quality_by_group,
)

PROPERTY = settings(max_examples=50, deadline=None)
ITEM_GROUP = np.array([0, 0, 1, 2], dtype=np.int64)


def csr(rows: list[list[int]]) -> Csr:
    indptr = np.cumsum([0, *map(len, rows)]).astype(np.int64)
    indices = np.array([i for row in rows for i in row], dtype=np.int64)
    return indptr, indices


# --- exposure -------------------------------------------------------------------------------------


def test_exposure_by_hand() -> None:
    ranked = np.array([[0, 2], [1, 2]], dtype=np.int64)
    report = exposure_by_group(ranked, ITEM_GROUP, csr([[0, 3], [3]]), num_groups=4)
    second = 1 / math.log2(3)  # rank 2's exposure; rank 1's is 1
    total = 2 + 2 * second
    g0, g1, g2, g3 = report.groups
    # Group 0 (items 0, 1) sits at rank 1 twice and holds 1 of 3 targets.
    assert g0.exposure_share == pytest.approx(2 / total)
    assert g0.relevance_share == pytest.approx(1 / 3)
    assert g0.ratio == pytest.approx((2 / total) / (1 / 3))
    # Group 1 (item 2) is shown but no user's target: empty, not a relevance share of 0.
    assert g1.empty and g1.relevance_share is None and g1.ratio is None
    assert g1.exposure_share == pytest.approx(2 * second / total)
    # Group 2 (item 3) holds 2 of 3 targets and is never shown: ratio 0.
    assert g2.relevance_share == pytest.approx(2 / 3)
    assert (g2.exposure_share, g2.ratio) == (0.0, 0.0)
    # Group 3 has no items at all.
    assert g3.empty and g3.num_items == 0 and g3.exposure_share == 0.0
    tv = 0.5 * (abs(2 / total - 1 / 3) + 2 * second / total + 2 / 3)
    assert report.disparity == pytest.approx(tv)
    assert (report.k, report.num_users) == (2, 2)


def test_exposure_matching_relevance_has_no_disparity() -> None:
    # Each user's one slot shows their one target: exposure and relevance coincide.
    ranked = np.array([[0], [2], [3], [1]], dtype=np.int64)
    report = exposure_by_group(ranked, ITEM_GROUP, csr([[0], [2], [3], [1]]))
    assert report.disparity == pytest.approx(0.0)
    assert [g.ratio for g in report.groups] == pytest.approx([1.0, 1.0, 1.0])


@st.composite
def exposure_cases(draw: st.DrawFn) -> tuple[Int64Array, Int64Array, Csr]:
    num_items = draw(st.integers(2, 10))
    k = draw(st.integers(1, num_items))
    num_users = draw(st.integers(1, 6))
    ranked = [draw(st.permutations(range(num_items)))[:k] for _ in range(num_users)]
    groups = draw(st.lists(st.integers(0, 3), min_size=num_items, max_size=num_items))
    targets = [sorted(draw(st.sets(st.integers(0, num_items - 1), min_size=1))) for _ in ranked]
    return np.array(ranked, dtype=np.int64), np.array(groups, dtype=np.int64), csr(targets)


@PROPERTY
@given(exposure_cases(), st.integers(0, 2**16))
def test_exposure_shares_are_distributions_and_ignore_user_order(
    case: tuple[Int64Array, Int64Array, Csr], seed: int
) -> None:
    ranked, groups, relevant = case
    report = exposure_by_group(ranked, groups, relevant)
    assert sum(g.exposure_share for g in report.groups) == pytest.approx(1.0)
    assert sum(g.relevance_share or 0.0 for g in report.groups) == pytest.approx(1.0)
    assert 0 <= report.disparity <= 1
    indptr, indices = relevant
    for g in report.groups:
        has_targets = bool((groups[indices] == g.group).any())
        assert g.empty is not has_targets
    order = np.random.default_rng(seed).permutation(len(ranked))
    rows = [indices[indptr[u] : indptr[u + 1]].tolist() for u in order]
    moved = exposure_by_group(ranked[order], groups, csr(rows))
    assert moved.disparity == pytest.approx(report.disparity)
    for a, b in zip(moved.groups, report.groups, strict=True):
        assert a.exposure_share == pytest.approx(b.exposure_share)
        assert a.ratio == pytest.approx(b.ratio)


def test_exposure_refuses_bad_input() -> None:
    ranked = np.array([[0, 1]], dtype=np.int64)
    with pytest.raises(PinlabDataError, match="covers 2 items"):
        exposure_by_group(np.array([[0, 3]], dtype=np.int64), ITEM_GROUP[:2], csr([[0]]))
    with pytest.raises(PinlabDataError, match="line up"):
        exposure_by_group(ranked, ITEM_GROUP, csr([[0], [1]]))
    with pytest.raises(PinlabDataError, match="relevant items"):
        exposure_by_group(ranked, ITEM_GROUP, csr([[7]]))
    with pytest.raises(PinlabDataError, match="no targets"):
        exposure_by_group(ranked, ITEM_GROUP, csr([[]]))
    with pytest.raises(PinlabDataError, match="past num_groups"):
        exposure_by_group(ranked, ITEM_GROUP, csr([[0]]), num_groups=2)
    with pytest.raises(PinlabDataError, match=r"0\.\.G-1"):
        exposure_by_group(ranked, np.array([0, -1, 0, 0], dtype=np.int64), csr([[0]]))


# --- quality per user group -----------------------------------------------------------------------


def test_quality_by_group_by_hand() -> None:
    values = np.array([1.0, 0.0, 0.2, 0.2])
    report = quality_by_group(values, np.array([0, 0, 1, 1]), "ndcg@10", num_groups=3, seed=3)
    g0, g1, g2 = report.groups
    assert (g0.count, g0.mean, g1.count) == (2, 0.5, 2)
    assert g1.mean == pytest.approx(0.2)
    # Two users valued 1 and 0: resampled means are 0, 1/2 or 1, so the interval spans them.
    assert g0.ci == (0.0, 1.0)
    assert g1.ci == pytest.approx((0.2, 0.2))
    assert g2.empty and g2.count == 0 and g2.mean is None and g2.ci is None
    assert (report.worst_group, report.best_group) == (1, 0)
    assert report.gap == pytest.approx(0.3)
    again = quality_by_group(values, np.array([0, 0, 1, 1]), "ndcg@10", num_groups=3, seed=3)
    assert again == report


@PROPERTY
@given(
    st.lists(st.tuples(st.floats(0, 1), st.integers(0, 3)), min_size=1, max_size=30),
    st.integers(0, 2**16),
)
def test_quality_means_sit_in_their_intervals_and_ignore_user_order(
    users: list[tuple[float, int]], seed: int
) -> None:
    values = np.array([v for v, _ in users])
    groups = np.array([g for _, g in users], dtype=np.int64)
    report = quality_by_group(values, groups, "recall@10", num_groups=4, resamples=200, seed=seed)
    assert sum(g.count for g in report.groups) == len(users)
    for g in report.groups:
        if g.empty:
            assert not (groups == g.group).any()
            continue
        assert g.ci is not None and g.mean is not None
        assert g.ci[0] <= g.mean <= g.ci[1]
    means = [g.mean for g in report.groups if g.mean is not None]
    assert report.gap == pytest.approx(max(means) - min(means))
    order = np.random.default_rng(seed).permutation(len(users))
    moved = quality_by_group(values[order], groups[order], "recall@10", 4, resamples=200)
    assert [g.count for g in moved.groups] == [g.count for g in report.groups]
    assert [g.mean for g in moved.groups] == pytest.approx([g.mean for g in report.groups])


def test_quality_refuses_bad_input() -> None:
    with pytest.raises(PinlabDataError, match="one length"):
        quality_by_group(np.zeros(3), np.zeros(2, dtype=np.int64), "ndcg@10")
    with pytest.raises(PinlabDataError, match="no users"):
        quality_by_group(np.zeros(0), np.zeros(0, dtype=np.int64), "ndcg@10")
    with pytest.raises(PinlabDataError, match="NaN"):
        quality_by_group(np.array([np.nan, 1.0]), np.zeros(2, dtype=np.int64), "ndcg@10")
    with pytest.raises(PinlabDataError, match="past num_groups"):
        quality_by_group(np.zeros(2), np.array([0, 5]), "ndcg@10", num_groups=2)


# --- contracts ------------------------------------------------------------------------------------


def test_empty_groups_carry_no_numbers_and_survive_json() -> None:
    with pytest.raises(ValidationError, match="empty group"):
        GroupExposure(group=0, num_items=1, exposure_share=0.5, relevance_share=0.0, empty=True)
    with pytest.raises(ValidationError, match="empty group"):
        GroupExposure(group=0, num_items=1, exposure_share=0.5, empty=False)
    with pytest.raises(ValidationError, match="mean exactly"):
        GroupQuality(group=0, count=0, mean=0.0, ci=(0.0, 0.0), empty=True)
    with pytest.raises(ValidationError, match="interval"):
        GroupQuality(group=0, count=2, mean=0.5, empty=False)
    report = exposure_by_group(
        np.array([[0, 2]], dtype=np.int64), ITEM_GROUP, csr([[0]]), num_groups=3
    )
    raw = report.model_dump_json()
    assert '"relevance_share":null' in raw
    assert ExposureReport.model_validate_json(raw) == report
    quality = quality_by_group(np.array([0.5]), np.array([1]), "mrr@10")
    assert GroupQualityReport.model_validate_json(quality.model_dump_json()) == quality
    assert quality.groups[0].empty and quality.worst_group == quality.best_group == 1
