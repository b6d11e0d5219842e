"""Plots: embedding maps (PCA by hand, a PNG written atomically), curves, distributions and the
difference matrix, as PNG bytes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pinlab_data import PinlabDataError
from pinlab_eval import (
    Curve,
    curves_png,
    difference_matrix_png,
    distributions_png,
    embedding_map,
    project_2d,
    spread_png,
)


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


def _size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(png)) as image:
        return image.size


def test_curves_are_small_multiples_four_a_row() -> None:
    trial = Curve(points=[(1, 0.1), (2, 0.2), (3, 0.25)])
    chosen = Curve(points=[(1, 0.2), (2, 0.3)], label="seed 0: chosen")
    one = _size(curves_png({"ease": [trial, chosen]}, "epoch", "ndcg@10"))
    four = _size(curves_png({f"m{i}": [trial] for i in range(4)}, "epoch", "ndcg@10"))
    five = _size(curves_png({f"m{i}": [trial] for i in range(5)}, "epoch", "ndcg@10"))
    assert four[0] > 3 * one[0] and abs(four[1] - one[1]) < 0.2 * one[1]  # one row of four
    assert five[1] > 1.8 * four[1]  # the fifth panel starts a second row
    assert _size(curves_png({"dot": [Curve(points=[(1, 0.5)], label="one pass")]}, "x", "y"))
    with pytest.raises(PinlabDataError, match="no curves"):
        curves_png({}, "epoch", "ndcg@10")


def test_distributions_drop_nan_and_refuse_empty_models() -> None:
    rng = np.random.default_rng(0)
    values = {"ndcg@10": {"ease": rng.uniform(size=50), "pop": np.r_[rng.uniform(size=9), np.nan]}}
    width, height = _size(distributions_png(values))
    assert width > 0 and height > 0
    more = {"ndcg@10": {f"m{i}": rng.uniform(size=20) for i in range(8)}}
    assert _size(distributions_png(more))[1] > height  # a taller panel for more boxes
    with pytest.raises(PinlabDataError, match="pop has no defined ndcg@10"):
        distributions_png({"ndcg@10": {"pop": np.array([np.nan, np.nan])}})


def test_difference_matrix_checks_its_shapes() -> None:
    models = ["ease", "mf", "pop"]
    difference = np.array([[np.nan, 0.1, 0.3], [-0.1, np.nan, 0.2], [-0.3, -0.2, np.nan]])
    p_value = np.full((3, 3), 0.01)
    significant = ~np.eye(3, dtype=bool)
    assert _size(difference_matrix_png(models, difference, p_value, significant, "ndcg@10"))
    with pytest.raises(PinlabDataError, match=r"p_value has shape \(2, 2\)"):
        difference_matrix_png(models, difference, p_value[:2, :2], significant, "ndcg@10")
    with pytest.raises(PinlabDataError, match="at least two"):
        difference_matrix_png(
            ["a"], np.full((1, 1), np.nan), p_value[:1, :1], significant[:1, :1], "ndcg@10"
        )


def test_spread_plots_values_per_name_and_refuses_nothing() -> None:
    rng = np.random.default_rng(2)
    panels = {"pair a": {"dr": rng.normal(size=30), "ips": rng.normal(size=30)}}
    one = _size(spread_png(panels, "relative error", band=0.1))
    more = {"pair a": {f"e{i}": rng.normal(size=30) for i in range(7)}}
    assert _size(spread_png(more, "relative error"))[1] > one[1]  # a taller panel for more rows
    assert spread_png(panels, "x") == spread_png(panels, "x")  # the jitter is fixed
    with pytest.raises(PinlabDataError, match="no values"):
        spread_png({}, "x")
