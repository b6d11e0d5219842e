"""Retrieval by label against hand computations and a brute-force reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pinlab_data.contracts import Float32Array, Int64Array
from pinlab_eval import evaluate_retrieval, retrieval_by_group, retrieval_per_query

PROPERTY = settings(max_examples=40, deadline=None)

# Two labels in the plane. Inner products:
#   a0·a1 = 0.8   a0·b0 = 0     a0·b1 = 0.6
#   a1·b0 = 0.6   a1·b1 = 0.96  b0·b1 = 0.8
# a0 -> a1, b1, b0: first relevant at rank 1, AP 1
# a1 -> b1, a0, b0: first relevant at rank 2, AP 1/2, MAP@R (R = 1) 0
# b0 -> b1, a1, a0: rank 1, AP 1
# b1 -> a1, b0, a0: rank 2, AP 1/2, MAP@R 0
PLANE = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.6, 0.8]], dtype=np.float32)
PLANE_LABELS = np.array([0, 0, 1, 1], dtype=np.int64)


def test_hand_made_plane() -> None:
    report = evaluate_retrieval(PLANE, PLANE_LABELS, ks=(1, 2), protocol="plane")
    assert report.protocol == "plane"
    assert report.num_queries == 4
    assert report.metrics == pytest.approx(
        {"recall@1": 0.5, "recall@2": 1.0, "map": 0.75, "map@r": 0.5}
    )


def test_singleton_labels_are_distractors_not_queries() -> None:
    # A lone label-2 item opposite a0 scores below everything for every query, so the
    # metrics stay as in the plane; it is not a query since nothing shares its label.
    embeddings = np.vstack([PLANE, [[-1.0, 0.0]]]).astype(np.float32)
    labels = np.append(PLANE_LABELS, 2)
    report = evaluate_retrieval(embeddings, labels, ks=(1, 2))
    assert report.num_queries == 4
    assert report.metrics == pytest.approx(
        {"recall@1": 0.5, "recall@2": 1.0, "map": 0.75, "map@r": 0.5}
    )


def test_a_close_distractor_pushes_relevant_items_down() -> None:
    # A lone label-2 copy of a0 (similarity 1 to a0, 0.8 to a1, 0 to b0, 0.6 to b1):
    # a0 -> c, a1, ...: first hit at rank 2, AP 1/2
    # a1 -> b1, then a0 and c tie at 0.8; the tie counts against a1, so a0 is 3rd: AP 1/3
    # b0 -> b1 first: AP 1;  b1 -> a1, b0, ...: AP 1/2
    embeddings = np.vstack([PLANE, [[1.0, 0.0]]]).astype(np.float32)
    labels = np.append(PLANE_LABELS, 2)
    report = evaluate_retrieval(embeddings, labels, ks=(1,))
    assert report.num_queries == 4
    assert report.metrics == pytest.approx(
        {"recall@1": 1 / 4, "map": (1 / 2 + 1 / 3 + 1 + 1 / 2) / 4, "map@r": 1 / 4}
    )


def test_ties_count_against_the_query() -> None:
    # Collapsed embeddings: every other item ties, so the one relevant item ranks last of 3.
    embeddings = np.ones((4, 2), dtype=np.float32) / np.sqrt(2)
    report = evaluate_retrieval(embeddings, PLANE_LABELS, ks=(1, 2, 3))
    assert report.metrics == pytest.approx(
        {"recall@1": 0.0, "recall@2": 0.0, "recall@3": 1.0, "map": 1 / 3, "map@r": 0.0}
    )


def test_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="no label has two items"):
        evaluate_retrieval(PLANE, np.arange(4, dtype=np.int64))
    with pytest.raises(ValueError, match="must be"):
        evaluate_retrieval(PLANE, PLANE_LABELS[:3])
    with pytest.raises(ValueError, match="NaN"):
        evaluate_retrieval(np.full((2, 2), np.nan, dtype=np.float32), np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="ks must be positive"):
        evaluate_retrieval(PLANE, PLANE_LABELS, ks=(0,))


def reference(
    embeddings: Float32Array, labels: Int64Array, ks: tuple[int, ...]
) -> dict[str, float]:
    """One query at a time with a full sort: the definitions, written plainly."""
    recalls: dict[int, list[float]] = {k: [] for k in ks}
    aps: list[float] = []
    ap_rs: list[float] = []
    for q in range(len(labels)):
        others = np.delete(np.arange(len(labels)), q)
        order = others[np.argsort(-(embeddings[others] @ embeddings[q]), kind="stable")]
        relevant = labels[order] == labels[q]
        r = int(relevant.sum())
        if r == 0:
            continue
        precision = np.cumsum(relevant) / np.arange(1, len(order) + 1)
        aps.append(float(precision[relevant].sum() / r))
        ap_rs.append(float(precision[:r][relevant[:r]].sum() / r))
        for k in ks:
            recalls[k].append(float(relevant[:k].any()))
    out = {f"recall@{k}": float(np.mean(v)) for k, v in recalls.items()}
    return {**out, "map": float(np.mean(aps)), "map@r": float(np.mean(ap_rs))}


def unit_rows(x: Float32Array) -> Float32Array:
    return np.asarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


@PROPERTY
@given(st.integers(3, 40), st.integers(1, 5), st.integers(0, 2**32 - 1))
def test_matches_the_plain_definitions(num_items: int, num_labels: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_labels, num_items)
    labels[:2] = 0  # at least one query
    embeddings = unit_rows(rng.standard_normal((num_items, 4)).astype(np.float32))
    # Near-ties rank by float rounding (batched vs one query at a time), and a tie counts
    # against the query there but not in the plain reference: keep rankings unambiguous.
    assume(np.diff(np.sort(embeddings @ embeddings.T, axis=1), axis=1).min() > 1e-5)
    ks = (1, 3, 10)
    report = evaluate_retrieval(embeddings, labels, ks=ks, batch_size=7)
    assert report.metrics == pytest.approx(reference(embeddings, labels, ks))
    assert report.num_queries == int((np.bincount(labels)[labels] > 1).sum())
    assert all(0.0 <= v <= 1.0 for v in report.metrics.values())


@PROPERTY
@given(st.lists(st.integers(0, 5), min_size=2, max_size=30))
def test_one_hot_embeddings_retrieve_perfectly(label_list: list[int]) -> None:
    labels = np.array(label_list, dtype=np.int64)
    if (np.bincount(labels) > 1).sum() == 0:
        labels[1] = labels[0]
    embeddings = np.eye(6, dtype=np.float32)[labels]
    report = evaluate_retrieval(embeddings, labels, ks=(1,), batch_size=4)
    assert report.metrics == pytest.approx({"recall@1": 1.0, "map": 1.0, "map@r": 1.0})


@PROPERTY
@given(
    st.integers(3, 25).flatmap(
        lambda n: st.tuples(st.permutations(range(n)), st.integers(0, 2**32 - 1))
    )
)
def test_permuting_items_changes_nothing(case: tuple[list[int], int]) -> None:
    perm, seed = case
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, len(perm))
    labels[:2] = 0
    embeddings = unit_rows(rng.standard_normal((len(perm), 3)).astype(np.float32))
    before = evaluate_retrieval(embeddings, labels, ks=(1, 5))
    after = evaluate_retrieval(embeddings[perm], labels[perm], ks=(1, 5))
    assert after.num_queries == before.num_queries
    assert after.metrics == pytest.approx(before.metrics)


# --- per query and per group ------------------------------------------------------------------


def test_per_query_values_and_groups_by_hand() -> None:
    # The plane plus a lone label-2 distractor far from everything: queries 0..3, recall@1 of
    # 1, 0, 1, 0 (see PLANE). Groups: a0 alone in 0, a1 and b0 in 1, b1 in 2, the distractor
    # in 3 (items but no query) and nothing in 4.
    embeddings = np.vstack([PLANE, [[-1.0, 0.0]]]).astype(np.float32)
    labels = np.append(PLANE_LABELS, 2)
    result = retrieval_per_query(embeddings, labels, ks=(1, 2))
    assert result.queries.tolist() == [0, 1, 2, 3]
    assert result.per_query["recall@1"].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert result.per_query["map"].tolist() == pytest.approx([1.0, 0.5, 1.0, 0.5])
    assert result.report().metrics == evaluate_retrieval(embeddings, labels, ks=(1, 2)).metrics
    groups = np.array([0, 1, 1, 2, 3], dtype=np.int64)
    report = retrieval_by_group(result, groups, "recall@1", num_groups=5, resamples=200, seed=3)
    assert [(g.count, g.mean) for g in report.groups] == [
        (1, 1.0), (2, 0.5), (1, 0.0), (0, None), (0, None)
    ]  # fmt: skip
    assert report.groups[0].ci == (1.0, 1.0) and report.groups[2].ci == (0.0, 0.0)
    low, high = report.groups[1].ci or (None, None)
    assert low is not None and high is not None and 0.0 <= low <= 0.5 <= high <= 1.0
    assert report.groups[3].empty and report.groups[3].ci is None
    assert (report.worst_group, report.best_group, report.gap) == (2, 0, 1.0)
    # Without num_groups, the distractor's group still shows, empty.
    assert len(retrieval_by_group(result, groups, resamples=10).groups) == 4


def test_retrieval_by_group_refuses_bad_input() -> None:
    result = retrieval_per_query(PLANE, PLANE_LABELS, ks=(1,))
    with pytest.raises(ValueError, match="one group per item"):
        retrieval_by_group(result, np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match=r"0\.\.G-1"):
        retrieval_by_group(result, np.array([0, -1, 0, 0], dtype=np.int64))
    with pytest.raises(ValueError, match="measured: map, map@r, recall@1"):
        retrieval_by_group(result, np.zeros(4, dtype=np.int64), "recall@10")


@PROPERTY
@given(st.integers(3, 40), st.integers(1, 5), st.integers(1, 4), st.integers(0, 2**32 - 1))
def test_group_recalls_weighted_by_counts_give_the_overall(
    num_items: int, num_labels: int, num_groups: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_labels, num_items)
    labels[:2] = 0
    groups = rng.integers(0, num_groups, num_items)
    embeddings = unit_rows(rng.standard_normal((num_items, 4)).astype(np.float32))
    result = retrieval_per_query(embeddings, labels, ks=(1, 3), batch_size=5)
    overall = evaluate_retrieval(embeddings, labels, ks=(1, 3))
    for metric in ("recall@1", "recall@3", "map@r"):
        report = retrieval_by_group(result, groups, metric, num_groups=num_groups, resamples=50)
        assert sum(g.count for g in report.groups) == overall.num_queries
        weighted = sum(g.count * (g.mean or 0.0) for g in report.groups)
        assert weighted / overall.num_queries == pytest.approx(overall.metrics[metric])
        for g in report.groups:
            queries_in_group = int((groups[result.queries] == g.group).sum())
            assert g.count == queries_in_group and g.empty is (queries_in_group == 0)
            if g.ci is not None and g.mean is not None:
                assert g.ci[0] <= g.mean <= g.ci[1]
