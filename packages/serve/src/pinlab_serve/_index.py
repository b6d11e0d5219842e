"""The pin index: inner-product search over L2-normalised embeddings, keyed by pin id.

Small catalogues get exact search (`IndexFlatIP`); from `HNSW_THRESHOLD` pins on, an HNSW
graph whose recall@10 against exact search is measured at build time and kept in the manifest.
Both sit in an `IndexIDMap2`, so pins are added and removed by id without a rebuild; an
HNSW graph keeps removed pins as tombstones until `save` (or re-adding one) compacts it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np
from pydantic import ValidationError

from pinlab_data import atomic_writer
from pinlab_data._images import load_image
from pinlab_data.contracts import Float32Array, Int64Array
from pinlab_serve.contracts import (
    HNSW_THRESHOLD,
    INDEX_FILE_PREFIX,
    INDEX_FILE_SUFFIX,
    MANIFEST_FILE,
    Hit,
    IndexManifest,
    PinlabServeError,
    PinNotFoundError,
)

if TYPE_CHECKING:
    # Importing pinlab_models runs its __init__, which loads torch (~2 s); loading and
    # searching an index should not pay for that.
    from pinlab_models.contracts import ImageEncoder

FLAT = "IDMap2,Flat"
HNSW_M = 32
HNSW = f"IDMap2,HNSW{HNSW_M}"
METRIC = "inner_product"
RECALL_QUERIES = 1000
# The stubs shipped with faiss-cpu lack SearchParametersHNSW and the `sel` keyword.
_faiss: Any = faiss
_REBUILD = "build one with `pinlab index build --run RUN`"
_CHUNK = 1 << 20
_GROWTH = 4
"""How much a filtered HNSW search widens its candidate list each time it comes up short."""


def _unit_rows(x: Any, what: str, dim: int | None = None) -> Float32Array:
    """Check `x` is a finite (n, d) matrix of non-zero rows; return it L2-normalised float32."""
    arr = np.asarray(x)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise PinlabServeError(f"{what} must be a non-empty (n, d) matrix, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise PinlabServeError(f"{what} must be floating point, got dtype {arr.dtype}")
    if dim is not None and arr.shape[1] != dim:
        raise PinlabServeError(
            f"{what} have dimension {arr.shape[1]} but the index has {dim}; "
            "embed them with the index's model"
        )
    out = arr.astype(np.float32)
    if not np.isfinite(out).all():
        raise PinlabServeError(f"{what} contain NaN or infinite values; check the encoder output")
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    if (norms == 0).any():
        row = int(np.flatnonzero(norms[:, 0] == 0)[0])
        raise PinlabServeError(f"{what} row {row} is all zeros and cannot be normalised")
    # Encoders already normalise; doing it again keeps inner product equal to cosine even for
    # vectors from elsewhere, and float32 drift never pushes a self-match above 1 by much.
    return np.ascontiguousarray(out / norms, dtype=np.float32)


def _check_ids(pin_ids: Any, rows: int) -> Int64Array:
    ids = np.asarray(pin_ids)
    if ids.ndim != 1 or ids.shape[0] != rows:
        raise PinlabServeError(
            f"pin_ids must be a 1-D array with one id per embedding row ({rows}), "
            f"got shape {ids.shape}"
        )
    if not np.issubdtype(ids.dtype, np.integer):
        raise PinlabServeError(f"pin_ids must be integers, got dtype {ids.dtype}")
    ids = ids.astype(np.int64)
    # FAISS reports "no result" as id -1, so negative ids would be indistinguishable.
    if (ids < 0).any():
        raise PinlabServeError(f"pin ids must be non-negative, got {int(ids.min())}")
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        dupes = uniq[counts > 1][:5].tolist()
        raise PinlabServeError(f"pin ids must be unique; repeated: {dupes}")
    return ids


def _check_k(k: int) -> None:
    if k <= 0:
        raise PinlabServeError(f"k must be a positive number of results, got {k}")


def _write_atomic(path: Path, data: bytes) -> None:
    """`pinlab_data.atomic_writer`, fed in chunks (a crash test kills the save mid-file)."""
    with atomic_writer(path) as f:
        view = memoryview(data)
        for start in range(0, len(view), _CHUNK):
            f.write(view[start : start + _CHUNK])


def _hits(ids: Any, scores: Any, own: list[int | None], k: int) -> list[list[Hit]]:
    """Rows of (id, score) as hits, without FAISS's -1 padding or each row's own pin."""
    return [
        [
            Hit(pin_id=pid, score=score)
            for pid, score in zip(row_ids.tolist(), row_scores.tolist(), strict=True)
            if pid not in (-1, skip)
        ][:k]
        for row_ids, row_scores, skip in zip(ids, scores, own, strict=True)
    ]


def _reachable(passing: Int64Array, skip: int | None, k: int) -> int:
    """How many of the top `k` a row can hold: the pins passing its filters, less `skip`."""
    at = int(np.searchsorted(passing, skip)) if skip is not None else len(passing)
    own = at < len(passing) and int(passing[at]) == skip
    return min(k, len(passing) - own)


def exact_top_k(vectors: Float32Array, queries: Float32Array, k: int) -> Int64Array:
    """Row positions of the exact top-k by inner product (FAISS flat, chunk-free)."""
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    _, rows = flat.search(queries, k)
    return np.asarray(rows, dtype=np.int64)


def _new_index(vectors: Float32Array, ids: Int64Array, params: dict[str, int | float]) -> Any:
    """`IndexIDMap2` over HNSW (when `params` has its `M`) or exact inner-product search."""
    dim = vectors.shape[1]
    base: Any
    if "M" in params:
        base = faiss.IndexHNSWFlat(dim, int(params["M"]), faiss.METRIC_INNER_PRODUCT)
        base.hnsw.efConstruction = int(params["ef_construction"])
        base.hnsw.efSearch = int(params["ef_search"])
    else:
        base = faiss.IndexFlatIP(dim)
    index = faiss.IndexIDMap2(base)
    index.add_with_ids(vectors, ids)
    return index


class PinIndex:
    """Pin embeddings in a FAISS `IndexIDMap2` over `IndexFlatIP` or `IndexHNSWFlat`.

    IDMap2 (not IDMap) keeps the id -> row map both ways, so a pin's vector can be fetched by
    id (`vector`, `similar`) and pins can be added or removed without a rebuild. HNSW graphs
    cannot drop nodes, so removal there is a tombstone that search filters out until `compact`
    rebuilds the graph (`save` does, and so does re-adding a removed pin).
    """

    def __init__(
        self,
        index: Any,
        model_id: str,
        created: str,
        params: dict[str, int | float],
        recall_at_10: float | None,
        tombstones: Sequence[int] = (),
    ) -> None:
        """Wrap an existing FAISS index; use `build` or `load` instead of calling this."""
        self._index = index
        self._is_hnsw = self._hnsw(index)
        self._model_id = model_id
        self._created = created
        self._params = dict(params)
        self._recall = recall_at_10
        self._tombstones = {int(t) for t in tombstones}
        self._ids = {int(i) for i in faiss.vector_to_array(index.id_map)} - self._tombstones
        self._sorted: Int64Array | None = None
        self._manifest: IndexManifest | None = None

    @classmethod
    def build(
        cls,
        embeddings: Float32Array,
        pin_ids: Int64Array,
        model_id: str,
        *,
        hnsw_threshold: int = HNSW_THRESHOLD,
        ef_construction: int = 80,
        ef_search: int = 64,
        seed: int = 0,
    ) -> PinIndex:
        """Index `embeddings[i]` under `pin_ids[i]` (rows are re-normalised).

        Below `hnsw_threshold` rows the index is exact; from it on, HNSW with `HNSW_M`
        neighbours per node. Either way recall@10 against exact search is measured on up to
        `RECALL_QUERIES` indexed vectors (drawn with `seed`) and kept in the manifest.
        """
        vectors = _unit_rows(embeddings, "embeddings")
        ids = _check_ids(pin_ids, vectors.shape[0])
        if not model_id:
            raise PinlabServeError("model_id must be a non-empty string")
        if hnsw_threshold <= 0:
            raise PinlabServeError(f"hnsw_threshold must be positive, got {hnsw_threshold}")
        params: dict[str, int | float] = {"hnsw_threshold": hnsw_threshold}
        if len(ids) >= hnsw_threshold:
            params |= {"M": HNSW_M, "ef_construction": ef_construction, "ef_search": ef_search}
        index = _new_index(vectors, ids, params)
        built = cls(index, model_id, datetime.now(UTC).isoformat(), params, None)
        built._recall = built._measure_recall(vectors, ids, seed)
        return built

    def compact(self, seed: int = 0) -> None:
        """Rebuild an HNSW graph without its tombstones, so removed pins are really gone.

        Graphs cannot drop nodes, so this re-inserts the live vectors into a new graph with
        the same parameters and measures its recall@10 again (with `seed`). No-op without
        tombstones; flat indexes never have any (`remove` deletes their rows).
        """
        if not self._tombstones:
            return
        inner = faiss.downcast_index(self._index.index)
        stored = np.asarray(inner.reconstruct_n(0, inner.ntotal), dtype=np.float32)
        stored_ids = np.asarray(faiss.vector_to_array(self._index.id_map), dtype=np.int64)
        live = ~np.isin(stored_ids, np.fromiter(self._tombstones, np.int64))
        vectors, ids = np.ascontiguousarray(stored[live]), stored_ids[live]
        self._index = _new_index(vectors, ids, self._params)
        self._is_hnsw = self._hnsw(self._index)
        self._tombstones = set()
        self._recall = self._measure_recall(vectors, ids, seed) if len(ids) else None
        self._manifest = None

    def _measure_recall(self, vectors: Float32Array, ids: Int64Array, seed: int) -> float:
        rng = np.random.default_rng(seed)
        rows = rng.choice(len(ids), size=min(RECALL_QUERIES, len(ids)), replace=False)
        k = min(10, len(ids))
        truth = ids[exact_top_k(vectors, vectors[rows], k)]
        found = np.asarray(self._index.search(vectors[rows], k, params=self._params_for(None))[1])
        hits = sum(
            len(set(t) & set(f)) for t, f in zip(truth.tolist(), found.tolist(), strict=True)
        )
        return round(hits / (len(rows) * k), 4)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, pin_id: object) -> bool:
        return pin_id in self._ids

    @property
    def dim(self) -> int:
        return int(self._index.d)

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def kind(self) -> str:
        return HNSW if self._is_hnsw else FLAT

    @staticmethod
    def _hnsw(index: Any) -> bool:
        # Known once per FAISS index: downcasting on every search cost ~3% of a `similar`.
        return isinstance(faiss.downcast_index(index.index), faiss.IndexHNSWFlat)

    @property
    def manifest(self) -> IndexManifest:
        """The manifest `save` writes (checksum over the serialised index), computed once."""
        if self._manifest is None:
            self._manifest = self._manifest_for(self._serialize())
        return self._manifest

    def ids(self) -> Int64Array:
        """Searchable pin ids, ascending."""
        if self._sorted is None:
            ids = np.sort(np.fromiter(self._ids, dtype=np.int64, count=len(self._ids)))
            ids.flags.writeable = False  # shared by every caller
            self._sorted = ids
        return self._sorted

    def vectors(self, pin_ids: Int64Array) -> Float32Array:
        """Stored vectors of `pin_ids`, shape (n, d); every id must be searchable."""
        if len(pin_ids) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        missing = [p for p in np.asarray(pin_ids).tolist() if p not in self._ids]
        if missing:
            self.vector(missing[0])  # raises, naming it
        ids = np.asarray(pin_ids, dtype=np.int64)
        return np.asarray(self._index.reconstruct_batch(ids), dtype=np.float32)

    def _serialize(self) -> bytes:
        return bytes(faiss.serialize_index(self._index))

    def _manifest_for(self, data: bytes) -> IndexManifest:
        checksum = hashlib.sha256(data).hexdigest()
        return IndexManifest(
            model_id=self._model_id,
            dim=self.dim,
            count=len(self),
            metric=METRIC,
            kind=self.kind,
            file=f"{INDEX_FILE_PREFIX}{checksum[:16]}{INDEX_FILE_SUFFIX}",
            checksum=checksum,
            created=self._created,
            params=self._params,
            recall_at_10=self._recall,
            tombstones=sorted(self._tombstones),
        )

    def add(self, embeddings: Float32Array, pin_ids: Int64Array) -> None:
        """Add pins without a rebuild; ids must be new (a removed id may come back)."""
        vectors = _unit_rows(embeddings, "embeddings", self.dim)
        ids = _check_ids(pin_ids, vectors.shape[0])
        taken = [int(p) for p in ids if int(p) in self._ids]
        if taken:
            raise PinlabServeError(
                f"pins {taken[:5]} are already in the index; remove them first to replace them"
            )
        if any(int(p) in self._tombstones for p in ids):
            # The graph still holds their old vectors under the same ids; drop them first so
            # one id never has two vectors.
            self.compact()
        self._index.add_with_ids(vectors, ids)
        self._ids.update(int(p) for p in ids)
        self._sorted = None
        self._manifest = None

    def remove(self, pin_ids: Sequence[int]) -> None:
        """Remove pins by id; unknown ids are an error and nothing is removed."""
        ids = [int(p) for p in pin_ids]
        unknown = [p for p in ids if p not in self._ids]
        if unknown:
            raise PinNotFoundError(f"pins {unknown[:5]} are not in the index; nothing removed")
        if self._is_hnsw:
            self._tombstones.update(ids)
        else:
            self._index.remove_ids(np.asarray(ids, dtype=np.int64))
        self._ids.difference_update(ids)
        self._sorted = None
        self._manifest = None

    def vector(self, pin_id: int) -> Float32Array:
        """The stored (normalised) embedding of `pin_id`, shape (d,)."""
        if int(pin_id) not in self._ids:
            raise PinNotFoundError(
                f"pin {pin_id} is not in the index; it holds {len(self)} pins built by model "
                f"{self._model_id}, so rebuild the index if the pin is new"
            )
        return np.asarray(self._index.reconstruct(int(pin_id)), dtype=np.float32)

    def _params_for(
        self, allow: Int64Array | None, deny: Sequence[int] = (), fetch: int = 0
    ) -> Any:
        """FAISS search parameters: the HNSW beam, and an id selector for filters.

        The selectors run inside the search (IDMap2 translates them to row ids): exact search
        then never misses an allowed pin; HNSW may, which `_fill_short_rows` makes up for.
        The beam is ef_search, or `fetch` if wider (FAISS does not widen it to k by itself
        when a selector is set).
        """
        ef = max(int(self._params["ef_search"]), fetch) if self._is_hnsw else None
        denied = self._tombstones | {int(d) for d in deny}
        owners: list[Any] = []
        selector: Any = None
        if allow is not None:
            selector = faiss.IDSelectorBatch(np.asarray(allow, dtype=np.int64))
            owners.append(selector)
        if denied:
            batch = faiss.IDSelectorBatch(np.fromiter(denied, dtype=np.int64, count=len(denied)))
            negated = faiss.IDSelectorNot(batch)
            owners += [batch, negated]
            selector = negated if selector is None else faiss.IDSelectorAnd(selector, negated)
        if selector is None and ef is None:
            return None
        params: Any = (
            _faiss.SearchParametersHNSW(sel=selector, efSearch=ef)
            if ef is not None
            else _faiss.SearchParameters(sel=selector)
        )
        params.owners = (owners, selector)  # SWIG holds raw pointers; keep their owners alive
        return params

    def search(
        self,
        queries: Float32Array,
        k: int,
        exclude: Sequence[int | None] | None = None,
        *,
        allow: Int64Array | None = None,
        deny: Sequence[int] = (),
    ) -> list[list[Hit]]:
        """Top-`k` pins per query row by cosine, best first.

        `exclude[i]` is dropped from row i; `allow` (if given) limits every row to those ids
        and `deny` removes ids from every row. A row holds fewer than `k` hits only when
        fewer than `k` pins pass its filters.
        """
        _check_k(k)
        vectors = _unit_rows(queries, "queries", self.dim)
        if exclude is not None and len(exclude) != vectors.shape[0]:
            raise PinlabServeError(
                f"exclude must give one id (or None) per query: {len(exclude)} for "
                f"{vectors.shape[0]} queries"
            )
        own: list[int | None] = [None] * len(vectors) if exclude is None else list(exclude)
        total = int(self._index.ntotal)
        # One extra candidate makes room for the excluded pin if it ranks in the top k.
        fetch = min(k + (exclude is not None), total)
        if self._is_hnsw and allow is not None and len(allow) > 0:
            # HNSW applies a selector while it walks the graph, so only a share len/total of
            # the beam passes: widen the beam by that factor from the start.
            fetch = min(-(-fetch * total // len(allow)), total)
            if fetch >= len(allow):  # the beam would be no smaller than the allowed set
                return self._exact(vectors, self._passing(allow, deny), own, k)
        results = self._top(vectors, fetch, allow, deny, own, k)
        if not self._is_hnsw:
            return results  # exact search: a row is short only when the filters allow no more
        return self._fill_short_rows(vectors, results, fetch, own, k, allow, deny)

    def _top(
        self,
        vectors: Float32Array,
        fetch: int,
        allow: Int64Array | None,
        deny: Sequence[int],
        own: list[int | None],
        k: int,
    ) -> list[list[Hit]]:
        params = self._params_for(allow, deny, fetch)
        scores, ids = self._index.search(vectors, fetch, params=params)
        return _hits(ids, scores, own, k)

    def _fill_short_rows(
        self,
        vectors: Float32Array,
        results: list[list[Hit]],
        fetch: int,
        own: list[int | None],
        k: int,
        allow: Int64Array | None,
        deny: Sequence[int],
    ) -> list[list[Hit]]:
        """Search short HNSW rows again, wider, until each has `k` hits or all its filters allow.

        A beam can still come back short (tombstones, a filter whose pins lie away from the
        query): each round asks for `_GROWTH` times more results with a beam as wide. Once
        that reaches the number of pins the filters let through, exact search over just
        those is cheaper than the beam and cannot miss one.
        """
        short = [row for row, hits in enumerate(results) if len(hits) < k]
        if not short:
            return results
        passing = self._passing(allow, deny)
        while True:
            short = [r for r in short if len(results[r]) < _reachable(passing, own[r], k)]
            if not short:
                return results
            fetch *= _GROWTH
            owners = [own[r] for r in short]
            if fetch >= len(passing):
                found = self._exact(vectors[short], passing, owners, k)
            else:
                found = self._top(vectors[short], fetch, allow, deny, owners, k)
            for r, hits in zip(short, found, strict=True):
                results[r] = hits
            if fetch >= len(passing):
                return results

    def _passing(self, allow: Int64Array | None, deny: Sequence[int]) -> Int64Array:
        """Searchable pins (ascending) that `allow` and `deny` let through."""
        live = self.ids()
        keep = live
        if allow is not None:
            wanted = np.unique(np.asarray(allow, dtype=np.int64))
            at = np.searchsorted(live, wanted).clip(max=max(len(live) - 1, 0))
            keep = wanted[live[at] == wanted] if len(live) else live
        if deny:
            keep = keep[~np.isin(keep, np.asarray(deny, dtype=np.int64))]
        return keep

    def _exact(
        self, vectors: Float32Array, pins: Int64Array, own: list[int | None], k: int
    ) -> list[list[Hit]]:
        """Exact top-`k` of each query row among `pins`, best first (row i never `own[i]`)."""
        if len(pins) == 0:
            return [[] for _ in own]
        scores = vectors @ np.asarray(self._index.reconstruct_batch(pins), np.float32).T
        top = min(k + 1, len(pins))  # one spare for the row's own pin
        order = np.argsort(-scores, axis=1, kind="stable")[:, :top]
        return _hits(pins[order], np.take_along_axis(scores, order, axis=1), own, k)

    def similar(self, pin_id: int, k: int) -> list[Hit]:
        """The `k` pins most similar to `pin_id`, best first, never `pin_id` itself."""
        _check_k(k)
        return self.search(self.vector(pin_id)[None, :], k, exclude=[int(pin_id)])[0]

    def save(self, directory: Path) -> IndexManifest:
        """Write the index file, then `index.json`, each atomically; return the manifest.

        The index file is named by its checksum and the manifest is written last, so the
        manifest rename is the commit: a save killed at any point leaves the old manifest
        naming the old (untouched) file. Files no manifest names are removed afterwards.
        An HNSW graph with tombstones is compacted first, so removed pins never reach disk.
        """
        self.compact()
        directory.mkdir(parents=True, exist_ok=True)
        data = self._serialize()
        manifest = self._manifest_for(data)
        _write_atomic(directory / manifest.file, data)
        _write_atomic(
            directory / MANIFEST_FILE, (manifest.model_dump_json(indent=2) + "\n").encode()
        )
        for stale in directory.glob(f"{INDEX_FILE_PREFIX}*{INDEX_FILE_SUFFIX}"):
            if stale.name != manifest.file:
                stale.unlink(missing_ok=True)
        legacy = directory / "index.faiss"
        if manifest.file != legacy.name:
            legacy.unlink(missing_ok=True)
        self._manifest = manifest
        return manifest

    @classmethod
    def load(cls, directory: Path, expect_model_id: str | None = None) -> PinIndex:
        """Read an index written by `save`, refusing anything that does not check out.

        Raises PinlabServeError when the files are missing, the manifest is malformed, the
        index bytes do not match the manifest checksum, the index disagrees with the
        manifest, or the index was built by a model other than `expect_model_id`.
        """
        manifest_path = directory / MANIFEST_FILE
        if not manifest_path.is_file():
            raise PinlabServeError(f"no index at {directory}; {_REBUILD}")
        try:
            manifest = IndexManifest.model_validate(json.loads(manifest_path.read_text()))
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(part) for part in first["loc"])
            where = f"field '{field}'" if field else "the document"
            raise PinlabServeError(
                f"index manifest {manifest_path} is malformed: {where}: {first['msg']}; "
                f"delete {directory} and {_REBUILD}"
            ) from exc
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
            raise PinlabServeError(
                f"index manifest {manifest_path} is malformed ({type(exc).__name__}); "
                f"delete {directory} and {_REBUILD}"
            ) from exc
        index_path = directory / manifest.file
        if index_path.resolve().parent != directory.resolve():
            # A plain name can still be a link that leads out of the index directory.
            raise PinlabServeError(
                f"index manifest {manifest_path} field 'file' names {manifest.file!r}, which "
                f"resolves outside {directory}; delete {directory} and {_REBUILD}"
            )
        if not index_path.is_file():
            raise PinlabServeError(f"no index at {directory} ({manifest.file} missing); {_REBUILD}")
        if expect_model_id is not None and manifest.model_id != expect_model_id:
            raise PinlabServeError(
                f"index at {directory} was built by model {manifest.model_id} but the serving "
                f"model is {expect_model_id}; rebuild the index with the serving model"
            )
        if manifest.kind not in (FLAT, HNSW) or manifest.metric != METRIC:
            raise PinlabServeError(
                f"index at {directory} is {manifest.kind}/{manifest.metric}; only "
                f"{FLAT} or {HNSW} with {METRIC} is supported, so {_REBUILD}"
            )
        data = index_path.read_bytes()
        if hashlib.sha256(data).hexdigest() != manifest.checksum:
            raise PinlabServeError(
                f"{index_path} does not match the checksum in {manifest_path}: the index is "
                f"corrupt; {_REBUILD}"
            )
        try:
            index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        except RuntimeError as exc:
            raise PinlabServeError(
                f"{index_path} is not a readable FAISS index; {_REBUILD}"
            ) from exc
        if not isinstance(index, faiss.IndexIDMap2):
            raise PinlabServeError(f"{index_path} holds a {type(index).__name__}; {_REBUILD}")
        if index.d != manifest.dim or index.ntotal != manifest.count + len(manifest.tombstones):
            raise PinlabServeError(
                f"{index_path} holds {index.ntotal} vectors of dimension {index.d} but the "
                f"manifest says {manifest.count} (+{len(manifest.tombstones)} removed) of "
                f"dimension {manifest.dim}; {_REBUILD}"
            )
        loaded = cls(
            index,
            manifest.model_id,
            manifest.created,
            manifest.params,
            manifest.recall_at_10,
            manifest.tombstones,
        )
        loaded._manifest = manifest
        return loaded


def embed_image_file(path: Path, encoder: ImageEncoder) -> Float32Array:
    """Embed one image file as a (1, d) row; unreadable files raise PinlabDataError."""
    image = load_image(path, encoder.image_size)
    return encoder.embed(image[None, ...])
