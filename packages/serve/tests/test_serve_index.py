"""PinIndex against brute-force numpy, its save/load checks, and embedding one image file."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest
from PIL import Image

from pinlab_data.contracts import Float32Array, ImageArray, Int64Array, PinlabDataError
from pinlab_models.contracts import ImageEncoder
from pinlab_serve import (
    FLAT,
    HNSW,
    MANIFEST_FILE,
    PinIndex,
    PinlabServeError,
    PinNotFoundError,
    embed_image_file,
)

DIM = 16
MODEL = "enc-abc123"


def unit(rng: np.random.Generator, n: int, d: int = DIM) -> Float32Array:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return np.asarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


@pytest.fixture
def data() -> tuple[Float32Array, Int64Array]:
    rng = np.random.default_rng(0)
    # Sparse, shuffled ids so a mix-up between row positions and pin ids would show.
    ids = rng.choice(10_000, size=200, replace=False).astype(np.int64)
    return unit(rng, 200), ids


@pytest.fixture
def index(data: tuple[Float32Array, Int64Array]) -> PinIndex:
    return PinIndex.build(*data, model_id=MODEL)


def brute_force(
    emb: Float32Array, ids: Int64Array, query: Float32Array, k: int
) -> tuple[list[int], Float32Array]:
    scores = emb @ query
    order = np.argsort(-scores, kind="stable")[:k]
    return ids[order].tolist(), scores[order]


def test_search_matches_brute_force(data: tuple[Float32Array, Int64Array], index: PinIndex) -> None:
    emb, ids = data
    queries = unit(np.random.default_rng(1), 5)
    results = index.search(queries, k=10)
    assert len(results) == 5
    for query, hits in zip(queries, results, strict=True):
        want_ids, want_scores = brute_force(emb, ids, query, 10)
        assert [h.pin_id for h in hits] == want_ids
        np.testing.assert_allclose([h.score for h in hits], want_scores, rtol=1e-5, atol=1e-5)


def test_search_renormalises_queries(index: PinIndex) -> None:
    query = unit(np.random.default_rng(2), 1)
    plain = index.search(query, k=5)
    scaled = index.search(query * 7.5, k=5)
    assert [h.pin_id for h in plain[0]] == [h.pin_id for h in scaled[0]]


def test_build_renormalises_embeddings(data: tuple[Float32Array, Int64Array]) -> None:
    emb, ids = data
    index = PinIndex.build(emb * 3.0, ids, MODEL)
    np.testing.assert_allclose(index.vector(int(ids[4])), emb[4], atol=1e-6)


def test_search_exclude_and_clip(data: tuple[Float32Array, Int64Array], index: PinIndex) -> None:
    emb, ids = data
    own = int(ids[3])
    hits = index.search(emb[3:5], k=3, exclude=[own, None])
    assert own not in [h.pin_id for h in hits[0]]
    assert len(hits[0]) == 3
    assert hits[1][0].pin_id == int(ids[4])
    everything = index.search(emb[:1], k=10_000)[0]
    assert len(everything) == len(index) == 200
    assert len(index.search(emb[:1], k=10_000, exclude=[own])[0]) == 199


def test_similar(data: tuple[Float32Array, Int64Array], index: PinIndex) -> None:
    emb, ids = data
    pin = int(ids[7])
    hits = index.similar(pin, k=8)
    assert len(hits) == 8
    assert pin not in [h.pin_id for h in hits]
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    want_ids, _ = brute_force(emb, ids, emb[7], 9)
    assert [h.pin_id for h in hits] == [p for p in want_ids if p != pin][:8]


def test_vector_len_dim_manifest(data: tuple[Float32Array, Int64Array], index: PinIndex) -> None:
    emb, ids = data
    np.testing.assert_allclose(index.vector(int(ids[0])), emb[0], atol=1e-6)
    assert len(index) == 200
    assert index.dim == DIM
    manifest = index.manifest
    assert (manifest.model_id, manifest.dim, manifest.count) == (MODEL, DIM, 200)
    assert manifest.kind == FLAT
    assert manifest.metric == "inner_product"
    assert manifest.recall_at_10 == 1.0
    assert manifest.params == {"hnsw_threshold": 50_000}


def test_save_load_round_trip(index: PinIndex, tmp_path: Path) -> None:
    manifest = index.save(tmp_path / "idx")
    assert manifest == index.manifest
    loaded = PinIndex.load(tmp_path / "idx", expect_model_id=MODEL)
    assert loaded.manifest == manifest
    assert (len(loaded), loaded.dim, loaded.model_id) == (200, DIM, MODEL)
    queries = unit(np.random.default_rng(3), 4)
    assert loaded.search(queries, k=7) == index.search(queries, k=7)
    on_disk = json.loads((tmp_path / "idx" / MANIFEST_FILE).read_text())
    assert on_disk["checksum"] == manifest.checksum
    # Atomic writes leave no temp files behind; the index file is named by its checksum.
    assert manifest.file == f"index-{manifest.checksum[:16]}.faiss"
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == [manifest.file, MANIFEST_FILE]


def test_save_overwrites(data: tuple[Float32Array, Int64Array], tmp_path: Path) -> None:
    emb, ids = data
    PinIndex.build(emb, ids, MODEL).save(tmp_path)
    manifest = PinIndex.build(emb[:10], ids[:10], "other").save(tmp_path)
    loaded = PinIndex.load(tmp_path)
    assert (len(loaded), loaded.model_id) == (10, "other")
    # The previous index file is gone once the new manifest is in place.
    assert sorted(p.name for p in tmp_path.iterdir()) == [manifest.file, MANIFEST_FILE]


def test_load_corrupt_index(index: PinIndex, tmp_path: Path) -> None:
    path = tmp_path / index.save(tmp_path).file
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(PinlabServeError, match="checksum"):
        PinIndex.load(tmp_path)


def test_load_manifest_names_other_file(
    data: tuple[Float32Array, Int64Array], index: PinIndex, tmp_path: Path
) -> None:
    """A manifest whose checksum does not match the file it names is refused."""
    emb, ids = data
    index.save(tmp_path)
    old_manifest = json.loads((tmp_path / MANIFEST_FILE).read_text())
    new = PinIndex.build(emb[:5], ids[:5], MODEL).save(tmp_path)
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(old_manifest | {"file": new.file}))
    with pytest.raises(PinlabServeError, match="checksum"):
        PinIndex.load(tmp_path)


@pytest.mark.parametrize("name", ["../index.faiss", "/etc/passwd", "..", "sub/../x.faiss"])
def test_load_refuses_paths_in_manifest(index: PinIndex, tmp_path: Path, name: str) -> None:
    index.save(tmp_path)
    manifest = json.loads((tmp_path / MANIFEST_FILE).read_text())
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(manifest | {"file": name}))
    with pytest.raises(PinlabServeError, match=r"malformed: field 'file': .*inside the index"):
        PinIndex.load(tmp_path)


def test_load_refuses_a_link_out_of_the_folder(index: PinIndex, tmp_path: Path) -> None:
    """A plain file name that is a symlink to a file elsewhere is refused before reading."""
    outside = tmp_path / "elsewhere"
    manifest = index.save(outside)
    folder = tmp_path / "idx"
    folder.mkdir()
    (folder / manifest.file).symlink_to(outside / manifest.file)
    (folder / MANIFEST_FILE).write_text(manifest.model_dump_json())
    with pytest.raises(PinlabServeError, match=r"field 'file' .* resolves outside"):
        PinIndex.load(folder)
    # The same files in place load fine: only the escape is refused.
    assert len(PinIndex.load(outside)) == len(index)


def test_load_missing(index: PinIndex, tmp_path: Path) -> None:
    with pytest.raises(PinlabServeError, match=r"no index at .*pinlab index build"):
        PinIndex.load(tmp_path / "nope")
    manifest = index.save(tmp_path)
    (tmp_path / manifest.file).unlink()
    with pytest.raises(PinlabServeError, match=r"no index at .*missing"):
        PinIndex.load(tmp_path)


@pytest.mark.parametrize("text", ["{not json", '{"model_id": "x"}', "[]"])
def test_load_malformed_manifest(index: PinIndex, tmp_path: Path, text: str) -> None:
    index.save(tmp_path)
    (tmp_path / MANIFEST_FILE).write_text(text)
    with pytest.raises(PinlabServeError, match="malformed"):
        PinIndex.load(tmp_path)


def test_load_count_disagrees(index: PinIndex, tmp_path: Path) -> None:
    manifest = index.save(tmp_path)
    lying = manifest.model_copy(update={"count": 999})
    (tmp_path / MANIFEST_FILE).write_text(lying.model_dump_json())
    with pytest.raises(PinlabServeError, match="999"):
        PinIndex.load(tmp_path)


def test_load_model_mismatch(index: PinIndex, tmp_path: Path) -> None:
    index.save(tmp_path)
    with pytest.raises(PinlabServeError, match=f"{MODEL}.*enc-new.*rebuild"):
        PinIndex.load(tmp_path, expect_model_id="enc-new")


def test_build_rejects_bad_input(data: tuple[Float32Array, Int64Array]) -> None:
    emb, ids = data
    dupes = ids.copy()
    dupes[1] = dupes[0]
    with pytest.raises(PinlabServeError, match="unique"):
        PinIndex.build(emb, dupes, MODEL)
    nan = emb.copy()
    nan[2, 3] = np.nan
    with pytest.raises(PinlabServeError, match="NaN"):
        PinIndex.build(nan, ids, MODEL)
    with pytest.raises(PinlabServeError, match="shape"):
        PinIndex.build(emb[0], ids[:1], MODEL)
    with pytest.raises(PinlabServeError, match="one id per embedding"):
        PinIndex.build(emb, ids[:-1], MODEL)
    with pytest.raises(PinlabServeError, match="non-negative"):
        PinIndex.build(emb[:1], np.array([-1], dtype=np.int64), MODEL)
    with pytest.raises(PinlabServeError, match="all zeros"):
        PinIndex.build(np.zeros((1, DIM), dtype=np.float32), ids[:1], MODEL)


def test_query_rejects_bad_input(data: tuple[Float32Array, Int64Array], index: PinIndex) -> None:
    emb, _ = data
    with pytest.raises(PinlabServeError, match="dimension 8 but the index has 16"):
        index.search(emb[:2, :8], k=3)
    for k in (0, -1):
        with pytest.raises(PinlabServeError, match="k must be"):
            index.search(emb[:1], k=k)
        with pytest.raises(PinlabServeError, match="k must be"):
            index.similar(0, k=k)
    with pytest.raises(PinlabServeError, match="one id"):
        index.search(emb[:2], k=3, exclude=[1])
    with pytest.raises(PinNotFoundError, match="pin 10001 is not in the index"):
        index.similar(10_001, k=3)
    with pytest.raises(PinlabServeError, match="pin 10001 is not in the index"):
        index.vector(10_001)


class MeanColourEncoder:
    """Mean RGB -> fixed random projection, normalised: enough to satisfy ImageEncoder."""

    def __init__(self, dim: int = 8, size: int = 12) -> None:
        self._proj = np.random.default_rng(0).standard_normal((3, dim)).astype(np.float32)
        self._size = size

    @property
    def embedding_dim(self) -> int:
        return int(self._proj.shape[1])

    @property
    def image_size(self) -> int:
        return self._size

    def embed(self, images: ImageArray, batch_size: int = 512) -> Float32Array:
        assert images.shape[1:] == (self._size, self._size, 3)
        out = (images.mean(axis=(1, 2)).astype(np.float32) / 255.0 + 0.1) @ self._proj
        return np.asarray(out / np.linalg.norm(out, axis=1, keepdims=True), dtype=np.float32)


def test_embed_image_file(tmp_path: Path) -> None:
    encoder = MeanColourEncoder()
    assert isinstance(encoder, ImageEncoder)
    path = tmp_path / "red.png"
    Image.new("RGB", (20, 30), (200, 10, 10)).save(path)
    vec = embed_image_file(path, encoder)
    assert vec.shape == (1, encoder.embedding_dim)
    assert vec.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vec), 1.0, rtol=1e-5)
    index = PinIndex.build(vec, np.array([42], dtype=np.int64), "fake")
    assert index.search(vec, k=1)[0][0].pin_id == 42


def test_embed_image_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(PinlabDataError, match="not a readable image"):
        embed_image_file(bad, MeanColourEncoder())
    with pytest.raises(PinlabDataError, match="does not exist"):
        embed_image_file(tmp_path / "missing.png", MeanColourEncoder())


def test_hnsw_above_threshold(data: tuple[Float32Array, Int64Array], tmp_path: Path) -> None:
    emb, ids = data
    index = PinIndex.build(emb, ids, MODEL, hnsw_threshold=100, ef_search=200)
    manifest = index.manifest
    assert manifest.kind == HNSW
    assert manifest.params == {
        "hnsw_threshold": 100,
        "M": 32,
        "ef_construction": 80,
        "ef_search": 200,
    }
    assert manifest.recall_at_10 is not None and manifest.recall_at_10 >= 0.95
    queries = unit(np.random.default_rng(5), 20)
    approx = index.search(queries, k=10)
    overlap = np.mean(
        [
            len({h.pin_id for h in hits} & set(brute_force(emb, ids, q, 10)[0])) / 10
            for q, hits in zip(queries, approx, strict=True)
        ]
    )
    assert overlap >= 0.95
    loaded = PinIndex.load(tmp_path / "h") if index.save(tmp_path / "h") else None
    assert loaded is not None and loaded.manifest == manifest
    assert loaded.search(queries, k=10) == approx


def test_recall_is_measured(tmp_path: Path) -> None:
    """A graph too sparse to find its neighbours reports the recall it really has."""
    rng = np.random.default_rng(0)
    emb, ids = unit(rng, 3000, 32), np.arange(3000, dtype=np.int64)
    poor = PinIndex.build(emb, ids, MODEL, hnsw_threshold=1, ef_construction=4, ef_search=1)
    good = PinIndex.build(emb, ids, MODEL, hnsw_threshold=1, ef_search=256)
    assert poor.manifest.recall_at_10 is not None and good.manifest.recall_at_10 is not None
    assert poor.manifest.recall_at_10 < good.manifest.recall_at_10
    assert good.manifest.recall_at_10 > 0.9


@pytest.mark.parametrize("threshold", [10_000, 100])
def test_add_and_remove_without_rebuild(
    data: tuple[Float32Array, Int64Array], tmp_path: Path, threshold: int
) -> None:
    emb, ids = data
    index = PinIndex.build(emb[:150], ids[:150], MODEL, hnsw_threshold=threshold, ef_search=400)
    index.add(emb[150:], ids[150:])
    assert len(index) == 200
    target = int(ids[170])
    assert index.search(emb[170:171], k=1)[0][0].pin_id == target
    index.remove([target, int(ids[3])])
    assert len(index) == 198
    assert target not in index
    asked = np.array([target, int(ids[4]), 10_001, int(ids[3]), int(ids[199])], dtype=np.int64)
    assert index.contains(asked).tolist() == [False, True, False, False, True]
    hits = index.search(emb[170:171], k=198)[0]
    assert target not in {h.pin_id for h in hits} and len(hits) == 198
    with pytest.raises(PinNotFoundError):
        index.vector(target)
    with pytest.raises(PinNotFoundError, match="nothing removed"):
        index.remove([int(ids[0]), 10_001])
    assert len(index) == 198
    with pytest.raises(PinlabServeError, match="already in the index"):
        index.add(emb[:1], ids[:1])
    manifest = index.save(tmp_path)
    loaded = PinIndex.load(tmp_path, expect_model_id=MODEL)
    assert len(loaded) == manifest.count == 198
    assert loaded.search(emb[170:171], k=5) == index.search(emb[170:171], k=5)
    np.testing.assert_array_equal(loaded.ids(), np.sort(index.ids()))


def test_filters_allow_and_deny(data: tuple[Float32Array, Int64Array]) -> None:
    emb, ids = data
    for threshold in (10_000, 100):
        index = PinIndex.build(emb, ids, MODEL, hnsw_threshold=threshold, ef_search=200)
        allow = ids[::9]
        hits = index.search(emb[:2], k=len(allow) + 5, allow=allow)
        for row in hits:
            assert sorted(h.pin_id for h in row) == sorted(allow.tolist())
        deny = [int(ids[0]), int(ids[9])]
        row = index.search(emb[:1], k=5, allow=allow, deny=deny)[0]
        assert not {h.pin_id for h in row} & set(deny)
        assert {h.pin_id for h in row} <= set(allow.tolist())
        want = [p for p in brute_force(emb, ids, emb[0], 200)[0] if p in set(allow.tolist())]
        assert [h.pin_id for h in row] == [p for p in want if p not in deny][:5]


def filtered_brute_force(
    emb: Float32Array, ids: Int64Array, query: Float32Array, allow: Int64Array, k: int
) -> list[int]:
    keep = np.isin(ids, allow)
    return brute_force(emb[keep], ids[keep], query, k)[0]


def test_hnsw_rare_category_still_returns_k() -> None:
    """A filter few pins pass still fills every row: the beam widens, or search goes exact."""
    rng = np.random.default_rng(7)
    emb, ids = unit(rng, 6000, 24), rng.permutation(100_000)[:6000].astype(np.int64)
    index = PinIndex.build(emb, ids, MODEL, hnsw_threshold=1000)
    queries = unit(np.random.default_rng(8), 30, 24)
    for size in (12, 150, 600):
        allow = rng.choice(ids, size=size, replace=False)
        rows = index.search(queries, k=10, allow=allow)
        for query, hits in zip(queries, rows, strict=True):
            assert len(hits) == 10, size
            assert {h.pin_id for h in hits} <= set(allow.tolist())
            truth = filtered_brute_force(emb, ids, query, allow, 10)
            assert len({h.pin_id for h in hits} & set(truth)) >= 9, size
    few = rng.choice(ids, size=6, replace=False)
    assert [len(r) for r in index.search(queries[:3], k=10, allow=few)] == [6, 6, 6]
    own = int(few[0])
    similar = index.search(index.vector(own)[None, :], k=10, exclude=[own], allow=few)[0]
    assert sorted(h.pin_id for h in similar) == sorted(int(p) for p in few[1:])


def test_hnsw_tombstones_are_compacted(tmp_path: Path) -> None:
    """Removed HNSW pins leave the graph on save, and a removed pin can come back."""
    rng = np.random.default_rng(3)
    emb, ids = unit(rng, 400), np.arange(1000, 1400, dtype=np.int64)
    index = PinIndex.build(emb, ids, MODEL, hnsw_threshold=100, ef_search=200)
    gone = [int(p) for p in ids[:40]]
    index.remove(gone)
    assert index.manifest.tombstones == gone
    manifest = index.save(tmp_path)
    assert (manifest.tombstones, manifest.count, manifest.kind) == ([], 360, HNSW)
    assert manifest.recall_at_10 is not None and manifest.recall_at_10 >= 0.95
    loaded = PinIndex.load(tmp_path)
    stored = faiss.vector_to_array(loaded._index.id_map)
    assert len(stored) == loaded._index.ntotal == 360
    assert not set(stored.tolist()) & set(gone)
    # Re-adding a removed pin (with a new vector) compacts first: one vector per id.
    index.remove([int(ids[50])])
    moved = unit(np.random.default_rng(4), 1)
    index.add(moved, ids[50:51])
    index.add(emb[:1], ids[:1])
    assert index._index.ntotal == len(index) == 361
    np.testing.assert_allclose(index.vector(int(ids[50])), moved[0], atol=1e-6)
    assert index.search(moved, k=1)[0][0].pin_id == int(ids[50])
    assert index.search(emb[:1], k=1)[0][0].pin_id == int(ids[0])
