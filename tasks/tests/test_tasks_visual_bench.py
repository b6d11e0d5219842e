"""bench visual's parts: raw pixels, tiny runs over seeds, and selection blind to test classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pinlab_data import PinlabDataError, SynthConfig, load_dataset, write_synth
from pinlab_tasks.runs import RunLayout
from pinlab_tasks.visual_bench import bench_visual, raw_pixels


def test_raw_pixels_are_centred_unit_vectors() -> None:
    images = np.random.default_rng(0).integers(0, 255, (10, 64, 64, 3), dtype=np.uint8)
    flat = raw_pixels(images)
    assert flat.shape == (10, 32 * 32 * 3)
    assert np.allclose(np.linalg.norm(flat, axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_tiny_bench_reports_every_row_over_seeds(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_synth(data, SynthConfig(num_pins=160, num_users=10, num_categories=8, image_size=16))
    run = RunLayout(tmp_path / "run")
    payload = bench_visual(data, run, ["proxy-anchor"], epochs=2, progress=False, seeds=2)
    assert payload["protocol"]["name"] == "unseen-classes"
    assert payload["protocol"]["seeds"] == [0, 1]
    for split in payload["protocol"]["splits"]:
        assert not set(split["validation_classes"]) & set(split["test_classes"])
        assert not set(split["fit_classes"]) & set(split["test_classes"])
    rows = {r["recipe"]: r for r in payload["results"]}
    assert list(rows) == ["raw pixels", "untrained", "proxy-anchor"]
    assert [r["baseline"] for r in rows.values()] == [True, True, False]
    for row in rows.values():
        assert set(row["metrics"]) == {"recall@1", "recall@10", "map@r", "linear_probe"}
        for metric, values in row["per_seed"].items():
            assert len(values) == 2
            assert row["metrics"][metric] == pytest.approx(np.mean(values), abs=1e-4)
            assert row["std"][metric] == pytest.approx(np.std(values, ddof=1), abs=1e-4)
        assert row["embed_images_per_s"] > 0 and row["peak_rss_mb"] > 0
    trained = rows["proxy-anchor"]
    assert trained["train_images_per_s"] > 0 and trained["max_epochs"] == 2
    assert all(1 <= e <= 2 for e in trained["epochs_per_seed"])
    assert trained["epochs_at_edge"] == [e == 2 for e in trained["epochs_per_seed"]]
    assert {p["vs"] for p in payload["paired"]} == {"raw pixels", "untrained"}
    assert all((run.root / f"seed{s}" / "rows.json").is_file() for s in (0, 1))
    assert (run.root / "bench_visual.json").is_file() and (run.root / "run.json").is_file()
    assert all(Path(p).read_bytes()[:4] == b"\x89PNG" for p in payload["embedding_maps"].values())
    with pytest.raises(PinlabDataError, match="unknown recipe 'arcface'"):
        bench_visual(data, run, ["arcface"])


@pytest.mark.slow
def test_chosen_epochs_ignore_the_test_classes(tmp_path: Path) -> None:
    """Replacing every test-class image with noise changes no chosen setting."""
    data = tmp_path / "data"
    write_synth(data, SynthConfig(num_pins=160, num_users=10, num_categories=8, image_size=16))
    before = bench_visual(
        data, RunLayout(tmp_path / "a"), ["supcon"], epochs=4, progress=False, seeds=1
    )
    test_classes = set(before["protocol"]["test_classes"])
    ds = load_dataset(data)
    labels = np.asarray(ds.pins.column("category").to_pylist(), dtype=object)
    rows = ds.pins.column("image_row").to_numpy()[np.isin(labels, list(test_classes))]
    images = np.load(data / "images.npy")
    images[rows] = np.random.default_rng(0).integers(0, 255, images[rows].shape, dtype=np.uint8)
    np.save(data / "images.npy", images)
    after = bench_visual(
        data, RunLayout(tmp_path / "b"), ["supcon"], epochs=4, progress=False, seeds=1
    )
    assert after["protocol"]["test_classes"] == before["protocol"]["test_classes"]
    chosen = {r["recipe"]: r.get("epochs_per_seed") for r in before["results"]}
    assert chosen == {r["recipe"]: r.get("epochs_per_seed") for r in after["results"]}
    # ...while the test-class numbers do see the change.
    assert before["results"][0]["metrics"] != after["results"][0]["metrics"]
