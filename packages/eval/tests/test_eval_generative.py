"""Generative metrics: Fréchet distance, improved precision/recall, near-duplicates."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pinlab_eval import (
    distance_quantiles,
    frechet_distance,
    gaussian_frechet_distance,
    improved_precision_recall,
    near_duplicates,
    nearest_distances,
)

finite = st.floats(-10, 10, allow_nan=False, allow_infinity=False)


def test_frechet_of_a_set_with_itself_is_zero() -> None:
    x = np.random.default_rng(0).normal(size=(200, 5))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)


def test_gaussian_frechet_matches_the_closed_form_for_diagonal_covariances() -> None:
    # Diagonal C1, C2 commute: Tr(C1 + C2 - 2 sqrt(C1 C2)) = sum (sqrt(a) - sqrt(b))^2.
    # mu: (1-0)^2 + (2-0)^2 = 5; covariances (4, 9) vs (1, 1): (2-1)^2 + (3-1)^2 = 5; total 10.
    mu1, mu2 = np.array([1.0, 2.0]), np.zeros(2)
    distance = gaussian_frechet_distance(mu1, np.diag([4.0, 9.0]), mu2, np.eye(2))
    assert distance == pytest.approx(10.0)


def test_gaussian_frechet_of_equal_covariances_is_the_mean_gap() -> None:
    cov = np.array([[2.0, 0.5], [0.5, 1.0]])
    assert gaussian_frechet_distance(np.zeros(2), cov, np.array([3.0, 4.0]), cov) == pytest.approx(
        25.0
    )


def test_frechet_of_samples_approaches_the_gaussians() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal([0, 0, 0], [1, 2, 1], size=(20_000, 3))
    b = rng.normal([1, 0, 0], [1, 1, 3], size=(20_000, 3))
    # 1 + (2-1)^2 + (1-3)^2 = 6
    assert frechet_distance(a, b) == pytest.approx(6.0, rel=0.05)


@settings(max_examples=30, deadline=None)
@given(
    arrays(np.float64, (12, 3), elements=finite),
    arrays(np.float64, (9, 3), elements=finite),
    arrays(np.float64, (3,), elements=finite),
)
def test_frechet_is_symmetric_non_negative_and_shift_invariant(
    a: np.ndarray, b: np.ndarray, shift: np.ndarray
) -> None:
    d = frechet_distance(a, b)
    assert d >= 0
    assert d == pytest.approx(frechet_distance(b, a), rel=1e-6, abs=1e-6)
    assert d == pytest.approx(frechet_distance(a + shift, b + shift), rel=1e-6, abs=1e-5)


def test_frechet_refuses_mismatched_features() -> None:
    with pytest.raises(ValueError, match="dimensions differ"):
        frechet_distance(np.zeros((3, 2)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="n >= 2"):
        frechet_distance(np.zeros((1, 2)), np.zeros((3, 2)))


def test_precision_recall_by_hand() -> None:
    # Real 0, 1, 2, 3 with k=1: every ball has radius 1. Generated 0.5 is inside (of 0 and 1),
    # 10 is not: precision 1/2. The generated balls reach each other (radius 9.5), and every
    # real point is within 9.5 of 0.5: recall 1.
    real = np.array([[0.0], [1.0], [2.0], [3.0]])
    generated = np.array([[0.5], [10.0]])
    precision, recall = improved_precision_recall(real, generated, k=1)
    assert precision == pytest.approx(0.5)
    assert recall == pytest.approx(1.0)


def test_precision_recall_of_a_set_with_itself_is_one_and_far_sets_zero() -> None:
    x = np.random.default_rng(2).normal(size=(50, 4))
    assert improved_precision_recall(x, x, k=3) == (1.0, 1.0)
    assert improved_precision_recall(x, x + 100.0, k=3) == (0.0, 0.0)


def test_dropping_a_mode_costs_recall_and_off_samples_cost_precision() -> None:
    rng = np.random.default_rng(3)
    real = np.concatenate([rng.normal(size=(50, 2)), rng.normal(size=(50, 2)) + 100.0])
    one_mode = rng.normal(size=(100, 2))  # only the first of the two real modes
    precision, recall = improved_precision_recall(real, one_mode, k=3)
    assert precision == 1.0
    assert 0.4 < recall <= 0.5  # the second mode is never reached; outliers of the first may not
    half_off = np.concatenate([real[:50] + 0.01, rng.normal(size=(50, 2)) - 100.0])
    precision, _recall = improved_precision_recall(real, half_off, k=3)
    assert precision == pytest.approx(0.5)


def test_nearest_distances_and_quantiles_by_hand() -> None:
    queries = np.array([[0.0, 0.0], [3.0, 4.0]])
    reference = np.array([[3.0, 4.0], [1.0, 0.0]])
    # (0, 0): nearest (1, 0) at 1; (3, 4): itself at 0.
    np.testing.assert_allclose(nearest_distances(queries, reference), [1.0, 0.0], atol=1e-6)
    quantiles = distance_quantiles(np.arange(101.0))
    assert quantiles == {"p5": 5.0, "p25": 25.0, "p50": 50.0, "p75": 75.0, "p95": 95.0}


def _unit(rows: np.ndarray) -> np.ndarray:
    out: np.ndarray = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return out


def test_near_duplicates_find_copies_and_only_copies() -> None:
    rng = np.random.default_rng(4)
    reference = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    fresh = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    generated = np.concatenate([reference[[3]], fresh])  # row 0 copies reference row 3
    ref_emb = _unit(rng.normal(size=(5, 8)))
    gen_emb = np.concatenate([ref_emb[[3]], _unit(rng.normal(size=(2, 8)))])
    found = near_duplicates(generated, reference, gen_emb, ref_emb)
    assert (found.count, found.total, found.pairs) == (1, 3, [(0, 3)])
    assert found.share == pytest.approx(1 / 3)


def test_near_duplicates_need_the_embeddings_to_agree() -> None:
    rng = np.random.default_rng(5)
    reference = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    emb = _unit(rng.normal(size=(3, 8)))
    found = near_duplicates(reference[:1], reference, -emb[:1], emb)
    assert found.count == 0 and found.pairs == []
