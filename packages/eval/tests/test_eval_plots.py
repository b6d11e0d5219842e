"""Embedding maps: PCA by hand, and a PNG written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pinlab_data import PinlabDataError
from pinlab_eval import embedding_map, project_2d


def test_projection_keeps_the_two_main_directions() -> None:
    rng = np.random.default_rng(0)
    along = rng.normal(size=(200, 1)) * 10
    across = rng.normal(size=(200, 1)) * 3
    noise = rng.normal(size=(200, 3)) * 0.01
    data = np.hstack([along, across, noise]).astype(np.float32)
    points = project_2d(data)
    assert points.shape == (200, 2)
    # PC 1 is the first axis, PC 2 the second (up to sign, fixed by the largest point).
    assert abs(np.corrcoef(points[:, 0], along[:, 0])[0, 1]) > 0.99
    assert abs(np.corrcoef(points[:, 1], across[:, 0])[0, 1]) > 0.99
    assert np.allclose(project_2d(data), points)


def test_embedding_map_writes_a_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(60, 8)).astype(np.float32)
    labels = ["a", "b", "c"] * 20
    path = embedding_map(emb, labels, tmp_path / "map" / "emb.png", "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["emb.png"]
    with pytest.raises(PinlabDataError, match="labels"):
        embedding_map(emb, labels[:3], tmp_path / "x.png", "bad")
