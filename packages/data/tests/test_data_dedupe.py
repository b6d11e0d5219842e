"""Near-duplicate clusters: copies, resized and re-encoded JPEGs link; distinct images do not."""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pinlab_data import (
    DUPLICATES_FILE,
    DedupeReport,
    PinlabDataError,
    candidate_pairs,
    cluster_pairs,
    dedupe_dataset,
    load_dataset,
    load_images,
)


def photo(seed: int, size: int = 128) -> Image.Image:
    """A smooth random picture: low-frequency colour fields, like a photo's large shapes."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)


def write_collection(folder: Path) -> dict[str, str]:
    """Six distinct pictures; three have copies. Returns each file's original."""
    folder.mkdir(parents=True)
    original: dict[str, str] = {}
    for k in range(6):
        photo(k).save(folder / f"p{k}.png")
        original[f"p{k}.png"] = f"p{k}"
    (folder / "p0_copy.png").write_bytes((folder / "p0.png").read_bytes())
    photo(1).resize((70, 70), Image.Resampling.BILINEAR).save(folder / "p1_small.jpg", quality=70)
    photo(2).save(folder / "p2_q40.jpg", quality=40)
    photo(2).resize((200, 200)).save(folder / "p2_big.jpg", quality=85)
    original |= {"p0_copy.png": "p0", "p1_small.jpg": "p1", "p2_q40.jpg": "p2", "p2_big.jpg": "p2"}
    # The same picture in other colours hashes alike (pHash sees grey levels) but is no copy.
    recoloured = np.asarray(photo(3))[..., ::-1]
    Image.fromarray(np.ascontiguousarray(recoloured)).save(folder / "p3_bgr.png")
    original["p3_bgr.png"] = "p3 recoloured"
    return original


def test_copies_cluster_and_distinct_images_do_not(tmp_path: Path) -> None:
    original = write_collection(tmp_path / "src" / "all")
    load_images(tmp_path / "src", tmp_path / "ds", size=64)
    report = dedupe_dataset(tmp_path / "ds", max_distance=8)
    ds = load_dataset(tmp_path / "ds")
    name_of = dict(
        zip(ds.pin_ids().tolist(), ds.pins.column("external_id").to_pylist(), strict=True)
    )
    groups = sorted(
        sorted(original[name_of[p].removeprefix("all/")] for p in c.pin_ids)
        for c in report.clusters
    )
    assert groups == [["p0", "p0"], ["p1", "p1"], ["p2", "p2", "p2"]]
    assert report.duplicates == 4 and report.num_images == 11
    assert report.hash_pairs == 6 and report.candidate_pairs == 5  # the recoloured p3 drops
    written = DedupeReport.model_validate(
        json.loads((tmp_path / "ds" / DUPLICATES_FILE).read_text())
    )
    assert written == report


def test_embedding_confirmation_drops_pairs(tmp_path: Path) -> None:
    write_collection(tmp_path / "src" / "all")
    load_images(tmp_path / "src", tmp_path / "ds", size=64)
    seen: list[int] = []

    def similarity(pairs: np.ndarray) -> np.ndarray:
        seen.append(len(pairs))
        return np.where(pairs.min(axis=1) == 0, 0.99, 0.5).astype(np.float32)

    out = tmp_path / "run" / "dedupe.json"
    report = dedupe_dataset(
        tmp_path / "ds", max_distance=8, similarity=similarity, min_cosine=0.9, out=out
    )
    assert seen == [report.candidate_pairs] and report.confirmed_pairs < report.candidate_pairs
    assert all(0 in c.pin_ids for c in report.clusters) and out.is_file()
    assert all(c.min_cosine is not None and c.min_cosine >= 0.9 for c in report.clusters)


def test_candidate_pairs_match_brute_force() -> None:
    rng = np.random.default_rng(3)
    base = rng.integers(0, 2**63, 40, dtype=np.int64).astype(np.uint64)
    flips = np.uint64(1) << rng.integers(0, 64, (40, 4)).astype(np.uint64)
    near = base.copy()
    for column in range(rng.integers(0, 5)):
        near ^= flips[:, column]
    hashes = np.concatenate([base, near])
    for d in (0, 3, 6, 10):
        pairs, distances = candidate_pairs(hashes, d)
        expected = {
            (i, j)
            for i, j in combinations(range(len(hashes)), 2)
            if bin(int(hashes[i]) ^ int(hashes[j])).count("1") <= d
        }
        assert {tuple(p) for p in pairs.tolist()} == expected
        assert (distances <= d).all()


def test_cluster_pairs_are_connected_components() -> None:
    clusters = cluster_pairs(7, np.array([[0, 1], [1, 4], [5, 6]], dtype=np.int64))
    assert sorted(c.tolist() for c in clusters) == [[0, 1, 4], [5, 6]]
    assert cluster_pairs(3, np.empty((0, 2), dtype=np.int64)) == []


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(PinlabDataError, match="max distance 40"):
        candidate_pairs(np.zeros(2, dtype=np.uint64), 40)
    with pytest.raises(PinlabDataError, match="does not exist"):
        dedupe_dataset(tmp_path / "nope")
