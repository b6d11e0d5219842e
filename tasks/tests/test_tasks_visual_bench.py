"""bench visual's parts: the protocol split, the linear probe, raw pixels, and a tiny run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pinlab_data import PinlabDataError, SynthConfig, write_synth
from pinlab_tasks.runs import RunLayout
from pinlab_tasks.visual_bench import bench_visual, linear_probe, raw_pixels, visual_protocol


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


def test_linear_probe_separates_separable_classes() -> None:
    rng = np.random.default_rng(0)
    labels = np.array(["left", "right"] * 50, dtype=object)
    emb = rng.normal(size=(100, 4)).astype(np.float32)
    emb[:, 0] += np.where(labels == "left", -3.0, 3.0)
    fit = np.arange(100) < 60
    assert linear_probe(emb, labels, fit) == 1.0
    noise = rng.normal(size=(100, 4)).astype(np.float32)
    assert linear_probe(noise, labels, fit) < 0.8


def test_raw_pixels_are_centred_unit_vectors() -> None:
    images = np.random.default_rng(0).integers(0, 255, (10, 64, 64, 3), dtype=np.uint8)
    flat = raw_pixels(images)
    assert flat.shape == (10, 32 * 32 * 3)
    assert np.allclose(np.linalg.norm(flat, axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_tiny_bench_reports_every_row(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_synth(data, SynthConfig(num_pins=120, num_users=10, num_categories=4, image_size=16))
    run = RunLayout(tmp_path / "run")
    payload = bench_visual(data, run, ["proxy-anchor"], epochs=1, progress=False)
    assert payload["protocol"]["name"] == "unseen-classes"
    rows = {r["recipe"]: r for r in payload["results"]}
    assert list(rows) == ["raw pixels", "untrained", "proxy-anchor"]
    assert [r["baseline"] for r in rows.values()] == [True, True, False]
    for row in rows.values():
        assert set(row["metrics"]) == {"recall@1", "recall@10", "map@r", "linear_probe"}
        assert row["embed_images_per_s"] > 0 and row["peak_rss_mb"] > 0
    assert rows["proxy-anchor"]["train_images_per_s"] > 0
    assert (run.root / "bench_visual.json").is_file() and (run.root / "run.json").is_file()
    assert all(Path(p).read_bytes()[:4] == b"\x89PNG" for p in payload["embedding_maps"].values())
    with pytest.raises(PinlabDataError, match="unknown recipe 'arcface'"):
        bench_visual(data, run, ["arcface"])
