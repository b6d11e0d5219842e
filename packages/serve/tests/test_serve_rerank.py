"""The MMR re-rank and the NumPy brute-force searcher."""

from __future__ import annotations

import numpy as np
import pytest

from pinlab_serve import PinIndex, PinNotFoundError
from pinlab_serve._brute import NumpySearcher
from pinlab_serve._rerank import mmr


def test_mmr_zero_diversity_keeps_order() -> None:
    vectors = np.eye(4, dtype=np.float32)
    assert mmr([0.9, 0.8, 0.7, 0.6], vectors, list("aabb"), list("xxyy"), 3, 0.0) == [0, 1, 2]


def test_mmr_spreads_categories_and_near_duplicates() -> None:
    # Candidates 0 and 1 are the same picture in the same category; 2 is another category.
    vectors = np.array([[1, 0], [1, 0], [0, 1]], dtype=np.float32)
    relevance = [1.0, 0.95, 0.5]
    assert mmr(relevance, vectors, ["a", "a", "b"], ["x", "x", "x"], 3, 0.0) == [0, 1, 2]
    # Hand-computed at diversity 0.5, step 2 (rel scaled: 1, 0.9, 0):
    #   cand 1: 0.5 * 0.9 - 0.5 * (1/2 + 1/4 + 1/4) = -0.05
    #   cand 2: 0.5 * 0.0 - 0.5 * (0/2 + 0/4 + 1/4) = -0.125  -> 1 still wins
    assert mmr(relevance, vectors, ["a", "a", "b"], ["x", "x", "x"], 3, 0.5) == [0, 1, 2]
    # At 0.8: cand 1: 0.2 * 0.9 - 0.8 = -0.62; cand 2: 0 - 0.8 * 0.25 = -0.2 -> 2 first.
    assert mmr(relevance, vectors, ["a", "a", "b"], ["x", "x", "x"], 3, 0.8) == [0, 2, 1]


def test_mmr_edge_cases() -> None:
    vectors = np.eye(2, dtype=np.float32)
    assert mmr([], np.zeros((0, 2), np.float32), [], [], 5, 0.5) == []
    assert mmr([0.3], vectors[:1], ["a"], ["x"], 5, 1.0) == [0]
    assert sorted(mmr([0.5, 0.5], vectors, ["a", "b"], ["x", "y"], 5, 1.0)) == [0, 1]


def test_numpy_searcher_matches_flat_index() -> None:
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((300, 12)).astype(np.float32)
    ids = rng.choice(10_000, 300, replace=False).astype(np.int64)
    index = PinIndex.build(emb, ids, "m")
    brute = NumpySearcher(index)
    assert (len(brute), brute.dim) == (300, 12)
    queries = rng.standard_normal((4, 12)).astype(np.float32)
    allow = ids[::3]
    deny = [int(ids[0]), int(ids[3])]
    for kwargs in ({}, {"allow": allow}, {"deny": deny}, {"allow": allow, "deny": deny}):
        want = index.search(queries, 15, exclude=[int(ids[6]), None, None, 0], **kwargs)
        got = brute.search(queries, 15, exclude=[int(ids[6]), None, None, 0], **kwargs)
        assert [[h.pin_id for h in row] for row in got] == [[h.pin_id for h in r] for r in want]
    np.testing.assert_allclose(brute.vector(int(ids[5])), index.vector(int(ids[5])))
    with pytest.raises(PinNotFoundError):
        brute.vector(10_001)
    assert len(brute.search(queries[:1], 1000)[0]) == 300
