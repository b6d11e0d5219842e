"""The NumPy brute-force searcher (MMR moved to pinlab_models: test_models_rerank.py)."""

from __future__ import annotations

import numpy as np
import pytest

from pinlab_serve import PinIndex, PinNotFoundError
from pinlab_serve._brute import NumpySearcher


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
