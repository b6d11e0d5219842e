"""Embeddings directories: shards of (pin_id, fixed-size float32 vector), a manifest, atomic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pinlab_data import (
    EMBEDDINGS_MANIFEST,
    EmbeddingSet,
    EmbeddingsManifest,
    PinlabDataError,
    atomic_directory,
    read_embeddings,
    shard_name,
    write_embedding_shard,
    write_json_atomic,
)


def _write(
    root: Path, parts: list[tuple[np.ndarray, np.ndarray]], count: int | None = None
) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for i, (ids, vectors) in enumerate(parts):
        write_embedding_shard(root / shard_name("image", i), ids, vectors)
    dim = parts[0][1].shape[1]
    total = sum(len(ids) for ids, _ in parts)
    manifest = EmbeddingsManifest(
        engine="local",
        created="now",
        dataset="d",
        dataset_fingerprint="f",
        count=total,
        sets={
            "image": EmbeddingSet(
                kind="image",
                model_id="m",
                dim=dim,
                count=total if count is None else count,
                shards=[shard_name("image", i) for i in range(len(parts))],
            )
        },
    )
    write_json_atomic(root / EMBEDDINGS_MANIFEST, manifest)


def test_shards_round_trip_with_the_contract_schema(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ids = np.array([5, 3, 9, 100, 7], dtype=np.int64)
    vectors = rng.normal(size=(5, 6)).astype(np.float32)
    _write(tmp_path, [(ids[:3], vectors[:3]), (ids[3:], vectors[3:])])
    schema = pq.read_schema(tmp_path / "image-00000.parquet")
    assert schema.field("pin_id").type == pa.int64()
    assert schema.field("vector").type == pa.list_(pa.float32(), 6)
    got_ids, got = read_embeddings(tmp_path, "image")
    np.testing.assert_array_equal(got_ids, ids)
    np.testing.assert_array_equal(got, vectors)
    assert got.dtype == np.float32


def test_reading_refuses_what_is_not_a_complete_set(tmp_path: Path) -> None:
    vectors = np.ones((2, 3), dtype=np.float32)
    with pytest.raises(PinlabDataError, match="no complete embeddings"):
        read_embeddings(tmp_path)
    _write(tmp_path, [(np.array([1, 2]), vectors)], count=3)
    with pytest.raises(PinlabDataError, match="manifest says 3"):
        read_embeddings(tmp_path)
    with pytest.raises(PinlabDataError, match="no 'text' vectors"):
        read_embeddings(tmp_path, "text")
    with pytest.raises(PinlabDataError, match="float32"):
        write_embedding_shard(tmp_path / "x.parquet", np.array([1, 2]), vectors.astype(np.float64))


def test_an_interrupted_directory_leaves_the_old_one_and_no_temporary(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_directory(out) as tmp:
        (tmp / "new.txt").write_text("half")
        raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    with atomic_directory(out) as tmp:
        (tmp / "new.txt").write_text("whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in out.iterdir()] == ["new.txt"]
