"""Text-to-image Recall@k against hand-computed rankings."""

from __future__ import annotations

import numpy as np
import pytest

from pinlab_data import Float32Array, PinlabDataError
from pinlab_eval import evaluate_text_to_image


def unit(rows: list[list[float]]) -> Float32Array:
    a = np.asarray(rows, dtype=np.float32)
    normed: Float32Array = a / np.linalg.norm(a, axis=1, keepdims=True)
    return normed


def test_recall_by_hand() -> None:
    images = unit([[1, 0], [0, 1], [1, 1], [-1, 0]])
    image_keys = np.array([0, 1, 2, 0])
    texts = unit([[1, 0], [0, 1], [-1, 0.1]])
    # text 0 (key 0): image 0 is first -> hit@1. text 1 (key 2): image 2 is second -> hit@2.
    # text 2 (key 0): image 3 is first -> hit@1.
    report = evaluate_text_to_image(texts, np.array([0, 2, 0]), images, image_keys, ks=(1, 2))
    assert report.num_queries == 3
    assert report.metrics == {"recall@1": pytest.approx(2 / 3), "recall@2": 1.0}


def test_queries_without_relevant_images_are_not_counted() -> None:
    images = unit([[1, 0], [0, 1]])
    texts = unit([[1, 0], [0, 1]])
    report = evaluate_text_to_image(texts, np.array([0, 5]), images, np.array([0, 1]), ks=(1,))
    assert report.num_queries == 1
    assert report.metrics["recall@1"] == 1.0


def test_ties_count_against_the_query() -> None:
    collapsed = np.ones((5, 2), dtype=np.float32) / np.sqrt(2)
    keys = np.arange(5)
    report = evaluate_text_to_image(collapsed, keys, collapsed, keys, ks=(1, 4))
    assert report.metrics == {"recall@1": 0.0, "recall@4": 0.0}


def test_bad_shapes_and_values_are_refused() -> None:
    a = unit([[1, 0]])
    with pytest.raises(PinlabDataError, match="same d"):
        evaluate_text_to_image(a, np.array([0]), unit([[1, 0, 0]]), np.array([0]))
    with pytest.raises(PinlabDataError, match="positive"):
        evaluate_text_to_image(a, np.array([0]), a, np.array([0]), ks=(0,))
    with pytest.raises(PinlabDataError, match="no text query"):
        evaluate_text_to_image(a, np.array([1]), a, np.array([0]))
    with pytest.raises(PinlabDataError, match="NaN"):
        evaluate_text_to_image(a * np.float32(np.nan), np.array([0]), a, np.array([0]))
