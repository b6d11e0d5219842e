"""Visual protocols: class splits, validation classes inside the training ones, linear probe."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pinlab_data import PinlabDataError
from pinlab_eval import linear_probe, validation_classes, visual_protocol


def test_protocol_splits_classes_or_images() -> None:
    labels = np.array(["a", "b", "c", "d", "e"] * 10, dtype=object)
    ids = np.arange(50, dtype=np.int64)
    unseen = visual_protocol(labels, ids, seed=0)
    assert unseen.name == "unseen-classes" and len(unseen.train_classes) == 2
    assert not set(labels[unseen.train]) & set(labels[unseen.test])
    assert sorted(unseen.train_classes + unseen.test_classes) == ["a", "b", "c", "d", "e"]
    few = visual_protocol(labels[np.isin(labels, ["a", "b"])], ids[:20], seed=0)
    assert few.name == "held-out-images" and set(few.test_classes) == {"a", "b"}
    assert len(few.train) + len(few.test) == 20 and not set(few.train) & set(few.test)
    with pytest.raises(PinlabDataError, match="at least 2 classes"):
        visual_protocol(np.array(["x"] * 5, dtype=object), ids[:5], seed=0)


@settings(max_examples=30, deadline=None)
@given(num_classes=st.integers(2, 16), per_class=st.integers(1, 6), seed=st.integers(0, 99))
def test_validation_classes_stay_inside_the_training_classes(
    num_classes: int, per_class: int, seed: int
) -> None:
    labels = np.array([f"c{i}" for i in range(num_classes)] * per_class, dtype=object)
    ids = np.arange(len(labels), dtype=np.int64) * 7
    outer = visual_protocol(labels, ids, seed)
    if len(set(labels[outer.train].tolist())) < 2:
        with pytest.raises(PinlabDataError, match="at least 2 classes"):
            validation_classes(outer, labels, ids, seed)
        return
    inner = validation_classes(outer, labels, ids, seed)
    # Both sides of the validation split are training rows: no test image is ever used.
    assert set(inner.train) | set(inner.test) == set(outer.train)
    assert not set(inner.train) & set(inner.test)
    assert not (set(inner.train) | set(inner.test)) & set(outer.test)
    if outer.name == "unseen-classes":
        assert set(inner.test_classes) <= set(outer.train_classes)
        assert not set(inner.test_classes) & set(outer.test_classes)
    if inner.name == "unseen-classes":
        assert not set(labels[inner.train]) & set(labels[inner.test])


def test_linear_probe_separates_separable_classes() -> None:
    rng = np.random.default_rng(0)
    labels = np.array(["left", "right"] * 50, dtype=object)
    emb = rng.normal(size=(100, 4)).astype(np.float32)
    emb[:, 0] += np.where(labels == "left", -3.0, 3.0)
    fit = np.arange(100) < 60
    assert linear_probe(emb, labels, fit) == 1.0
    noise = rng.normal(size=(100, 4)).astype(np.float32)
    assert linear_probe(noise, labels, fit) < 0.8
    with pytest.raises(PinlabDataError, match="both sides"):
        linear_probe(emb, labels, np.ones(100, dtype=bool))


def test_linear_probe_reads_three_classes() -> None:
    rng = np.random.default_rng(1)
    centres = np.array([[4, 0], [0, 4], [-4, -4]], dtype=np.float32)
    y = np.repeat(np.arange(3), 40)
    emb = centres[y] + rng.normal(size=(120, 2)).astype(np.float32)
    labels = np.array(["a", "b", "c"], dtype=object)[y]
    assert linear_probe(emb, labels, rng.random(120) < 0.5) >= 0.95
