"""PQ indexes (IVF-PQ, OPQ, HNSW-PQ): recall against exact search, save and memory-mapped
load, sharded builds, what serving needs (ids, vectors, filters, removal), and the tuner."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pinlab_data.contracts import Float32Array, Int64Array, PinlabDataError
from pinlab_serve import (
    ArrayVectors,
    ClusteredVectors,
    PinIndex,
    PinlabServeError,
    PinNotFoundError,
    PQSpec,
    build_pq,
    open_shards,
    recall_per_query,
    sample_queries,
    summarise,
    tune,
)
from pinlab_serve._pq import nlist_for

DIM = 16
ROWS = 2000
MODEL = "enc-pq"


@pytest.fixture(scope="module")
def data() -> tuple[Int64Array, Float32Array]:
    vectors = ClusteredVectors(DIM, clusters=8, seed=0).sample(ROWS, seed=1)
    # Sparse, shuffled ids so a mix-up between positions and pin ids would show.
    ids = np.random.default_rng(2).permutation(100_000)[:ROWS].astype(np.int64)
    return ids, vectors


def spec(kind: str, m: int = DIM) -> PQSpec:
    return PQSpec(kind, m, nlist=nlist_for(ROWS), M=16)  # type: ignore[arg-type]


CODE_BYTES = {"ivf-pq": DIM, "opq-ivf-pq": DIM // 2, "hnsw-pq": DIM}
"""OPQ at half the bytes: its rotation trains ~120 PQ k-means passes, 10 s at one byte a dim."""


@pytest.fixture(scope="module")
def built(data: tuple[Int64Array, Float32Array]) -> dict[str, PinIndex]:
    return {
        kind: build_pq(ArrayVectors(*data), spec(kind, CODE_BYTES[kind]), MODEL)
        for kind in CODE_BYTES
    }


def widest(index: PinIndex) -> None:
    index.set_search_breadth(int(index.manifest_params()["nlist"]) if "nlist" in
                             index.manifest_params() else 256)  # fmt: skip


@pytest.mark.parametrize("kind", ["ivf-pq", "opq-ivf-pq", "hnsw-pq"])
def test_each_kind_finds_exact_neighbours(
    data: tuple[Int64Array, Float32Array], built: dict[str, PinIndex], kind: str
) -> None:
    index = built[kind]
    assert len(index) == ROWS and index.index_kind == kind
    queries = sample_queries(ArrayVectors(*data), 200, seed=3)
    widest(index)
    mean, low = summarise(recall_per_query(index, queries))
    # One byte per one or two dimensions of 16-d clustered data: PQ keeps nearly the exact
    # order; a random top 10 of 2,000 would score 0.005.
    assert mean >= 0.8 and low <= mean
    index.set_search_breadth(1)
    narrow, _ = summarise(recall_per_query(index, queries))
    assert narrow <= mean


def test_fewer_bytes_lose_recall(data: tuple[Int64Array, Float32Array]) -> None:
    queries = sample_queries(ArrayVectors(*data), 200, seed=3)
    recalls = []
    for m in (2, DIM):
        index = build_pq(ArrayVectors(*data), spec("ivf-pq", m), MODEL)
        widest(index)
        recalls.append(summarise(recall_per_query(index, queries))[0])
    assert recalls[0] < recalls[1]


@pytest.mark.parametrize("kind", ["ivf-pq", "opq-ivf-pq", "hnsw-pq"])
def test_ids_vectors_and_similar(
    data: tuple[Int64Array, Float32Array], built: dict[str, PinIndex], kind: str
) -> None:
    ids, vectors = data
    index = built[kind]
    np.testing.assert_array_equal(index.ids(), np.sort(ids))
    assert int(ids[5]) in index and 100_001 not in index
    decoded = index.vectors(ids[:20])
    cosine = np.sum(decoded * vectors[:20], axis=1) / np.linalg.norm(decoded, axis=1)
    assert cosine.min() > 0.95  # decoded codes: close to, not equal to, the vectors
    np.testing.assert_allclose(index.vector(int(ids[3])), decoded[3], atol=1e-5)
    hits = index.similar(int(ids[0]), 10)
    assert len(hits) == 10 and int(ids[0]) not in {h.pin_id for h in hits}
    with pytest.raises(PinNotFoundError, match="pin 100001 is not in the index"):
        index.vector(100_001)


@pytest.mark.parametrize("kind", ["ivf-pq", "hnsw-pq"])
def test_filters_fill_rows(
    data: tuple[Int64Array, Float32Array], built: dict[str, PinIndex], kind: str
) -> None:
    ids, vectors = data
    index = built[kind]
    index.set_search_breadth(1)  # narrowest: the filter must widen the search itself
    allow = ids[::50]
    for row in index.search(vectors[:5], k=10, allow=allow, deny=[int(allow[0])]):
        found = {h.pin_id for h in row}
        assert len(row) == 10 and found <= set(allow.tolist()) and int(allow[0]) not in found


@pytest.mark.parametrize("kind", ["ivf-pq", "opq-ivf-pq", "hnsw-pq"])
def test_save_then_load_plain_and_mapped(
    data: tuple[Int64Array, Float32Array], built: dict[str, PinIndex], kind: str, tmp_path: Path
) -> None:
    ids, vectors = data
    index = built[kind]
    index.set_search_breadth(4)
    manifest = index.save(tmp_path)
    assert manifest.kind == index.kind and manifest.params["m"] == CODE_BYTES[kind]
    assert manifest.memory_bytes is not None and manifest.memory_bytes > ROWS * DIM
    want = index.search(vectors[:8], 10)
    for mmap in (False, True):
        loaded = PinIndex.load(tmp_path, expect_model_id=MODEL, mmap=mmap)
        assert loaded.mapped is mmap and loaded.manifest == manifest
        assert loaded.search(vectors[:8], 10) == want
        np.testing.assert_array_equal(loaded.vectors(ids[:4]), index.vectors(ids[:4]))
    with pytest.raises(PinlabServeError, match="memory-mapped read-only"):
        loaded.add(vectors[:1], np.array([100_001]))
    with pytest.raises(PinlabServeError, match="memory-mapped read-only"):
        loaded.remove([int(ids[0])])


def test_ivf_removes_and_adds(data: tuple[Int64Array, Float32Array]) -> None:
    ids, vectors = data
    index = build_pq(ArrayVectors(ids[:1500], vectors[:1500]), spec("ivf-pq"), MODEL)
    index.set_search_breadth(int(index.manifest_params()["nlist"]))
    index.add(vectors[1500:], ids[1500:])
    assert len(index) == ROWS and int(ids[1700]) in index
    gone = [int(ids[0]), int(ids[1700])]
    index.remove(gone)
    assert len(index) == ROWS - 2 and not {*gone} & set(index.ids().tolist())
    rows = index.search(vectors[[0, 1700]], k=20)
    assert not {h.pin_id for row in rows for h in row} & set(gone)
    with pytest.raises(PinNotFoundError, match="nothing removed"):
        index.remove([int(ids[0])])
    assert index.similar(int(ids[5]), 5)[0].pin_id != int(ids[5])


def test_hnsw_pq_refuses_removal(built: dict[str, PinIndex]) -> None:
    index = built["hnsw-pq"]
    with pytest.raises(PinlabServeError, match=r"cannot remove pins.*--kind ivf-pq"):
        index.remove([int(index.ids()[0])])
    assert len(index) == ROWS


def write_parquet(path: Path, ids: Int64Array, vectors: Float32Array) -> None:
    flat = pa.array(vectors.reshape(-1), pa.float32())
    table = pa.table(
        {"pin_id": pa.array(ids), "vector": pa.FixedSizeListArray.from_arrays(flat, DIM)}
    )
    pq.write_table(table, path)


@pytest.mark.parametrize(
    "kind",
    ["ivf-pq", pytest.param("opq-ivf-pq", marks=pytest.mark.slow)],  # OPQ trains ~10 s
)
def test_sharded_build_equals_unsharded(
    data: tuple[Int64Array, Float32Array], tmp_path: Path, kind: str
) -> None:
    """Three Parquet shards, each added to its own copy of the trained index and merged,
    give the very index one file does: same lists, same answers."""
    ids, vectors = data
    cuts = [0, 500, 1300, ROWS]
    for n, (lo, hi) in enumerate(itertools.pairwise(cuts)):
        write_parquet(tmp_path / f"image-{n:05d}.parquet", ids[lo:hi], vectors[lo:hi])
    np.savez(tmp_path / "whole.npz", pin_id=ids, vector=vectors)
    parts = open_shards([tmp_path / f"image-{n:05d}.parquet" for n in range(3)])
    sharded = build_pq(parts, spec(kind, 4), MODEL)
    whole = build_pq(open_shards([tmp_path / "whole.npz"]), spec(kind, 4), MODEL)
    for index in (sharded, whole):
        index.set_search_breadth(4)
    np.testing.assert_array_equal(sharded.ids(), whole.ids())
    assert sharded.search(vectors[:50], 10) == whole.search(vectors[:50], 10)
    assert sharded.manifest.checksum == whole.manifest.checksum


def test_shards_reader(data: tuple[Int64Array, Float32Array], tmp_path: Path) -> None:
    vectors = data[1]
    np.save(tmp_path / "a.npy", vectors[:100])
    np.save(tmp_path / "b.npy", vectors[100:250])
    shards = open_shards([tmp_path])
    assert (shards.rows, shards.dim, shards.parts) == (250, DIM, 2)
    got_ids, got = shards.take(np.array([5, 99, 100, 249]))
    np.testing.assert_array_equal(got_ids, [5, 99, 100, 249])  # .npy: ids count rows
    np.testing.assert_array_equal(got, vectors[[5, 99, 100, 249]])
    (tmp_path / "bad").mkdir()
    table = pa.table({"pin_id": pa.array([1]), "vector": pa.array([[1.0, 2.0]])})
    pq.write_table(table, tmp_path / "bad" / "x.parquet")
    with pytest.raises(PinlabServeError, match="fixed-size list of float32"):
        open_shards([tmp_path / "bad"])
    np.save(tmp_path / "bad" / "x.npy", vectors[:3, :8])
    (tmp_path / "bad" / "x.parquet").unlink()
    with pytest.raises(PinlabServeError, match="disagree on the dimension"):
        open_shards([tmp_path / "a.npy", tmp_path / "bad" / "x.npy"])
    with pytest.raises(PinlabServeError, match="does not exist"):
        open_shards([tmp_path / "missing"])
    np.savez(tmp_path / "dup.npz", pin_id=np.array([1, 1, 2]), vector=vectors[:3])
    with pytest.raises(PinlabServeError, match=r"unique.*\[1\]"):
        build_pq(open_shards([tmp_path / "dup.npz"]), spec("ivf-pq"), MODEL)


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_a_damaged_shard_is_named_with_the_fix(
    data: tuple[Int64Array, Float32Array], tmp_path: Path, suffix: str
) -> None:
    """NumPy called foreign bytes a pickle to load unsafely; a torn .npz was exit 1."""
    good = tmp_path / f"good{suffix}"
    if suffix == ".npy":
        np.save(good, data[1][:50])
    else:
        np.savez(good, pin_id=data[0][:50], vector=data[1][:50])
    foreign, torn = tmp_path / f"foreign{suffix}", tmp_path / f"torn{suffix}"
    foreign.write_bytes(b"random bytes " * 20)
    torn.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    what = "not a .npy array" if suffix == ".npy" else "not an .npz archive"
    for shard, said in [(foreign, what), (torn, "not a readable")]:
        with pytest.raises(PinlabDataError, match=f"{shard} is {said}.*; save it again: np.save"):
            open_shards([shard])


def test_tuner_meets_the_target(data: tuple[Int64Array, Float32Array]) -> None:
    source = ArrayVectors(*data)
    index = tune(source, MODEL, target_recall=0.8, kinds=("ivf-pq", "hnsw-pq"), seed=0)
    manifest = index.manifest
    tuning = manifest.tuning
    assert tuning is not None
    chosen = tuning.candidates[tuning.chosen]
    assert chosen.meets and chosen.recall_low >= 0.8 and chosen.stage == "full"
    assert manifest.kind == chosen.factory and chosen.latency is not None
    # Smallest memory first: every candidate tried before the choice missed the target.
    assert all(not c.meets for c in tuning.candidates[: tuning.chosen])
    assert [c.memory_bytes for c in tuning.candidates] == sorted(
        c.memory_bytes for c in tuning.candidates
    )
    assert manifest.recall_at_10 == tuning.fresh_recall_at_10 >= 0.8 - 0.05
    assert manifest.latency == chosen.latency
    # The choice holds on queries the tuner never saw (drawn with another seed).
    fresh = sample_queries(source, 300, seed=99)
    assert summarise(recall_per_query(index, fresh))[0] >= 0.8 - 0.05


def test_tuner_respects_the_memory_cap(data: tuple[Int64Array, Float32Array]) -> None:
    source = ArrayVectors(*data)
    capped = spec("ivf-pq", 4).memory_bytes(ROWS, DIM)
    index = tune(source, MODEL, target_recall=0.3, max_memory=capped, kinds=("ivf-pq",))
    assert index.manifest.memory_bytes is not None and index.manifest.memory_bytes <= capped


def test_tuner_refuses_what_no_kind_can_do(data: tuple[Int64Array, Float32Array]) -> None:
    source = ArrayVectors(*data)
    with pytest.raises(PinlabServeError, match=r"fits.*raise --max-memory to at least") as e:
        tune(source, MODEL, max_memory=1000, kinds=("ivf-pq", "hnsw-pq"))
    assert "\n" not in str(e.value)
    impossible = (
        r"no index reaches recall@10 0\.9999 within .*: the best, IVF.*, reached 0\.\d+; "
        r"lower --target-recall to 0\.\d\d or raise --max-memory to fit flat"
    )
    with pytest.raises(PinlabServeError, match=impossible):
        tune(source, MODEL, target_recall=0.9999, max_memory=ROWS * 100, kinds=("flat", "ivf-pq"))
