"""The pin index: inner-product search over L2-normalised embeddings, keyed by pin id.

Small catalogues get exact search (`IndexFlatIP`); from `HNSW_THRESHOLD` pins on, an HNSW
graph whose recall@10 against exact search is measured at build time and kept in the manifest.
Both sit in an `IndexIDMap2`, so pins are added and removed by id without a rebuild; an
HNSW graph keeps removed pins as tombstones until `save` (or re-adding one) compacts it.

Past memory, `_pq.py` builds the same class over product-quantised codes (IVF-PQ, OPQ +
IVF-PQ, HNSW over PQ): there only the codes are kept, `vector` decodes them (approximate), the
pin ids live in the inverted lists (IVF) or an `IndexIDMap` (HNSW-PQ), and `load(mmap=True)`
maps the file instead of reading it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import faiss
import numpy as np
import numpy.typing as npt
from pydantic import ValidationError

from pinlab_data import atomic_writer, make_directory
from pinlab_data._images import load_image
from pinlab_data.contracts import Float32Array, Int64Array
from pinlab_serve.contracts import (
    HNSW_THRESHOLD,
    INDEX_FILE_PREFIX,
    INDEX_FILE_SUFFIX,
    MANIFEST_FILE,
    Hit,
    IndexKind,
    IndexManifest,
    IndexTuning,
    Latency,
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
"""How much a filtered approximate search widens its candidate list each time it comes up short."""
Family = Literal["flat", "hnsw", "ivf", "hnsw-pq"]
"""How a FAISS index holds pins: IDMap2 over full vectors (flat, HNSW), ids inside inverted
lists of PQ codes (IVF, with or without an OPQ rotation in front), IDMap over an HNSW-PQ graph."""
MMAP_FLAGS = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY
"""Map codes, lists and graph links from the file instead of copying them (every kind)."""


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


def family_of(index: Any) -> Family:
    """Which of the layouts pinlab serves `index` is; anything else is refused."""
    if isinstance(index, faiss.IndexIDMap2):  # before IndexIDMap, its base class
        inner = faiss.downcast_index(index.index)
        if isinstance(inner, faiss.IndexHNSWFlat):
            return "hnsw"
        if isinstance(inner, faiss.IndexFlat):
            return "flat"
    elif isinstance(index, faiss.IndexIDMap):
        if isinstance(faiss.downcast_index(index.index), faiss.IndexHNSWPQ):
            return "hnsw-pq"
    elif isinstance(index, faiss.IndexIVFPQ) or (
        isinstance(index, faiss.IndexPreTransform)
        and isinstance(faiss.downcast_index(index.index), faiss.IndexIVFPQ)
    ):
        return "ivf"
    raise PinlabServeError(f"a FAISS {type(index).__name__} is not an index pinlab serves")


def _ivf(index: Any) -> Any:
    return faiss.downcast_index(faiss.extract_index_ivf(index))


def factory_of(index: Any) -> str:
    """The FAISS factory string that describes `index` (the manifest's `kind`)."""
    family = family_of(index)
    if family == "flat":
        return FLAT
    if family in ("hnsw", "hnsw-pq"):
        inner: Any = faiss.downcast_index(index.index)
        neighbours = inner.hnsw.nb_neighbors(1)
        if family == "hnsw":
            return f"IDMap2,HNSW{neighbours}"
        return f"IDMap,HNSW{neighbours}_PQ{_faiss.downcast_index(inner.storage).pq.M}"
    ivf = _ivf(index)
    bits = "" if ivf.pq.nbits == 8 else f"x{ivf.pq.nbits}"
    base = f"IVF{ivf.nlist},PQ{ivf.pq.M}{bits}"
    return f"OPQ{ivf.pq.M},{base}" if isinstance(index, faiss.IndexPreTransform) else base


def kind_of(index: Any) -> IndexKind:
    family = family_of(index)
    if family != "ivf":
        return family
    return "opq-ivf-pq" if isinstance(index, faiss.IndexPreTransform) else "ivf-pq"


class PinIndex:
    """Pin embeddings in a FAISS index, searched and changed by pin id.

    Flat and HNSW: an `IndexIDMap2` over `IndexFlatIP` or `IndexHNSWFlat`. IDMap2 (not IDMap)
    keeps the id -> row map both ways, so a pin's vector can be fetched by id (`vector`,
    `similar`) and pins can be added or removed without a rebuild. HNSW graphs cannot drop
    nodes, so removal there is a tombstone that search filters out until `compact` rebuilds
    the graph (`save` does, and so does re-adding a removed pin).

    PQ kinds (`_pq.build_pq`): IVF-PQ keeps the pin ids in its inverted lists (removal works);
    HNSW-PQ keeps them in an `IndexIDMap` and refuses removal. Their pin -> position table,
    which `vector` needs, is built on first use rather than at load.
    """

    def __init__(
        self,
        index: Any,
        model_id: str,
        created: str,
        params: dict[str, int | float],
        recall_at_10: float | None,
        tombstones: Sequence[int] = (),
        *,
        memory_bytes: int | None = None,
        latency: Latency | None = None,
        tuning: IndexTuning | None = None,
        mapped: bool = False,
    ) -> None:
        """Wrap an existing FAISS index; use `build`, `_pq.build_pq` or `load` instead."""
        self._index = index
        self._family = family_of(index)
        self._kind = factory_of(index)
        self._model_id = model_id
        self._created = created
        self._params = dict(params)
        self._recall = recall_at_10
        self._tombstones = {int(t) for t in tombstones}
        self._memory = memory_bytes
        self._latency = latency
        self._tuning = tuning
        self._mapped = mapped
        self._sorted: Int64Array | None = None
        self._where: Int64Array | None = None
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
        tombstones; other kinds never have any (`remove` deletes their entries).
        """
        if not self._tombstones:
            return
        inner = faiss.downcast_index(self._index.index)
        stored = np.asarray(inner.reconstruct_n(0, inner.ntotal), dtype=np.float32)
        stored_ids = np.asarray(faiss.vector_to_array(self._index.id_map), dtype=np.int64)
        live = ~np.isin(stored_ids, np.fromiter(self._tombstones, np.int64))
        vectors, ids = np.ascontiguousarray(stored[live]), stored_ids[live]
        self._index = _new_index(vectors, ids, self._params)
        self._kind = factory_of(self._index)
        self._tombstones = set()
        self._changed()
        self._recall = self._measure_recall(vectors, ids, seed) if len(ids) else None

    def _measure_recall(self, vectors: Float32Array, ids: Int64Array, seed: int) -> float:
        rng = np.random.default_rng(seed)
        rows = rng.choice(len(ids), size=min(RECALL_QUERIES, len(ids)), replace=False)
        k = min(10, len(ids))
        truth = ids[exact_top_k(vectors, vectors[rows], k)]
        params = self._params_for(None, fetch=k, k=k)
        found = np.asarray(self._index.search(vectors[rows], k, params=params)[1])
        hits = sum(
            len(set(t) & set(f)) for t, f in zip(truth.tolist(), found.tolist(), strict=True)
        )
        return round(hits / (len(rows) * k), 4)

    def __len__(self) -> int:
        return int(self._index.ntotal) - len(self._tombstones)

    def __contains__(self, pin_id: object) -> bool:
        if not isinstance(pin_id, int | np.integer):
            return False
        return bool(self.contains(np.asarray([pin_id], dtype=np.int64))[0])

    @property
    def dim(self) -> int:
        return int(self._index.d)

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def kind(self) -> str:
        """The FAISS factory string, e.g. 'IDMap2,Flat' or 'IVF1024,PQ16'."""
        return self._kind

    @property
    def index_kind(self) -> IndexKind:
        return kind_of(self._index)

    @property
    def mapped(self) -> bool:
        """Loaded with `mmap=True`: read-only, its codes paged in from the file."""
        return self._mapped

    @property
    def breadth_param(self) -> str | None:
        """The search setting that trades speed for recall: ef_search, nprobe, or None."""
        return {"flat": None, "hnsw": "ef_search", "hnsw-pq": "ef_search", "ivf": "nprobe"}[
            self._family
        ]

    def set_search_breadth(self, value: int) -> None:
        """Set nprobe (IVF) or ef_search (HNSW kinds) for the searches that follow."""
        name = self.breadth_param
        if name is None:
            raise PinlabServeError(f"a {self.kind} index is exact; it has no search breadth")
        if value <= 0:
            raise PinlabServeError(f"{name} must be positive, got {value}")
        self._params[name] = int(value)
        self._manifest = None

    def manifest_params(self) -> dict[str, int | float]:
        """Build and search parameters as the manifest records them (a copy)."""
        return dict(self._params)

    def annotate(
        self, *, recall_at_10: float, latency: Latency | None, tuning: IndexTuning | None
    ) -> None:
        """Record what the tuner measured; `save` writes it into the manifest."""
        self._recall, self._latency, self._tuning = recall_at_10, latency, tuning
        self._manifest = None

    @property
    def manifest(self) -> IndexManifest:
        """The manifest `save` writes (checksum over the serialised index), computed once."""
        if self._manifest is None:
            self._manifest = self._manifest_for(self._serialize())
        return self._manifest

    def ids(self) -> Int64Array:
        """Searchable pin ids, ascending."""
        if self._sorted is None:
            self._build_lookup()
        assert self._sorted is not None
        return self._sorted

    def _build_lookup(self) -> None:
        """Sort the stored ids (less tombstones); PQ kinds also note where each one sits."""
        where: Int64Array | None = None
        if self._family == "ivf":
            stored, where = _ivf_entries(_ivf(self._index))
        else:
            stored = np.asarray(faiss.vector_to_array(self._index.id_map), dtype=np.int64)
            if self._family == "hnsw-pq":
                where = np.arange(len(stored), dtype=np.int64)
        if self._tombstones:
            keep = ~np.isin(stored, np.fromiter(self._tombstones, np.int64))
            stored = stored[keep]
            where = None if where is None else where[keep]
        order = np.argsort(stored, kind="stable")
        ids = stored[order]
        ids.flags.writeable = False  # shared by every caller
        self._sorted = ids
        self._where = None if where is None else where[order]

    def contains(self, pin_ids: Int64Array) -> npt.NDArray[np.bool_]:
        """Which of `pin_ids` are searchable (a boolean array): `in`, for many ids at once."""
        live = self.ids()
        if len(live) == 0:
            return np.zeros(len(pin_ids), dtype=bool)
        at = np.searchsorted(live, pin_ids).clip(max=len(live) - 1)
        return np.asarray(live[at] == pin_ids, dtype=bool)

    def _changed(self) -> None:
        self._sorted = None
        self._where = None
        self._manifest = None

    def vectors(self, pin_ids: Int64Array) -> Float32Array:
        """Stored vectors of `pin_ids`, shape (n, d); every id must be searchable.

        PQ kinds decode their codes: the vectors are approximations of the indexed ones.
        """
        if len(pin_ids) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        ids = np.asarray(pin_ids, dtype=np.int64)
        live = self.contains(ids)
        if not live.all():
            self.vector(int(ids[np.flatnonzero(~live)[0]]))  # raises, naming it
        return self._decode(ids)

    def _decode(self, ids: Int64Array) -> Float32Array:
        """The stored vectors of searchable `ids` (PQ kinds: decoded from their codes)."""
        if self._family in ("flat", "hnsw"):
            return np.asarray(self._index.reconstruct_batch(ids), dtype=np.float32)
        self.ids()
        assert self._sorted is not None and self._where is not None
        where = self._where[np.searchsorted(self._sorted, ids)]
        if self._family == "hnsw-pq":
            graph = faiss.downcast_index(self._index.index)
            return np.asarray(graph.reconstruct_batch(where), dtype=np.float32)
        ivf = _ivf(self._index)
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        for row, at in enumerate(where.tolist()):
            ivf.reconstruct_from_offset(at >> 32, at & 0xFFFFFFFF, faiss.swig_ptr(out[row]))
        if isinstance(self._index, faiss.IndexPreTransform):
            chain: Any = self._index.chain
            for step in reversed(range(chain.size())):
                rotation = faiss.downcast_VectorTransform(chain.at(step))
                out = np.asarray(rotation.reverse_transform(out), dtype=np.float32)
        return out

    def _serialize(self) -> Any:
        # The array, not bytes(...) of it: a 10M-pin index would be copied once more.
        return faiss.serialize_index(self._index)

    def _manifest_for(self, data: Any) -> IndexManifest:
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
            memory_bytes=self._memory,
            latency=self._latency,
            tuning=self._tuning,
        )

    def _writable(self, what: str) -> None:
        if self._mapped:
            raise PinlabServeError(
                f"the index is memory-mapped read-only, so pins cannot be {what}; load it "
                "without mmap to change it"
            )

    def add(self, embeddings: Float32Array, pin_ids: Int64Array) -> None:
        """Add pins without a rebuild; ids must be new (a removed id may come back)."""
        self._writable("added")
        vectors = _unit_rows(embeddings, "embeddings", self.dim)
        ids = _check_ids(pin_ids, vectors.shape[0])
        taken = ids[self.contains(ids)]
        if len(taken):
            raise PinlabServeError(
                f"pins {taken[:5].tolist()} are already in the index; remove them first to "
                "replace them"
            )
        if any(int(p) in self._tombstones for p in ids):
            # The graph still holds their old vectors under the same ids; drop them first so
            # one id never has two vectors.
            self.compact()
        self._index.add_with_ids(vectors, ids)
        self._changed()

    def remove(self, pin_ids: Sequence[int]) -> None:
        """Remove pins by id; unknown ids are an error and nothing is removed.

        HNSW-PQ refuses: its graph cannot drop nodes and it keeps no vectors to rebuild from.
        """
        self._writable("removed")
        if self._family == "hnsw-pq":
            raise PinlabServeError(
                f"a {self.kind} index cannot remove pins (an HNSW graph over PQ codes can "
                "neither drop nodes nor be rebuilt without the vectors); rebuild it with "
                "`pinlab index build`, or build --kind ivf-pq, which can remove"
            )
        ids = np.asarray([int(p) for p in pin_ids], dtype=np.int64)
        unknown = ids[~self.contains(ids)]
        if len(unknown):
            raise PinNotFoundError(
                f"pins {unknown[:5].tolist()} are not in the index; nothing removed"
            )
        if self._family == "hnsw":
            self._tombstones.update(ids.tolist())
        else:
            self._index.remove_ids(ids)
        self._changed()

    def vector(self, pin_id: int) -> Float32Array:
        """The stored (normalised) embedding of `pin_id`, shape (d,); PQ kinds decode it."""
        if int(pin_id) not in self:
            raise PinNotFoundError(
                f"pin {pin_id} is not in the index; it holds {len(self)} pins built by model "
                f"{self._model_id}, so rebuild the index if the pin is new"
            )
        row: Float32Array = self._decode(np.asarray([int(pin_id)], dtype=np.int64))[0]
        return row

    def _params_for(
        self, allow: Int64Array | None, deny: Sequence[int] = (), fetch: int = 0, k: int = 1
    ) -> Any:
        """FAISS search parameters: the search breadth, and an id selector for filters.

        The selectors run inside the search (IDMap2 translates them to row ids; IVF lists
        hold the pin ids themselves): exact search then never misses an allowed pin; the
        approximate kinds may, which `_fill_short_rows` makes up for. The HNSW beam is
        ef_search, or `fetch` if wider (FAISS does not widen it to k by itself when a selector
        is set); IVF probes `fetch / (k + 1)` times more lists, as a filter passing a share
        1/x of the pins needs x times more entries scanned.
        """
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
        params: Any
        if self._family in ("hnsw", "hnsw-pq"):
            ef = max(int(self._params["ef_search"]), fetch)
            params = _faiss.SearchParametersHNSW(sel=selector, efSearch=ef)
        elif self._family == "ivf":
            widen = max(1, -(-fetch // (k + 1)))
            nprobe = min(int(self._params["nprobe"]) * widen, int(self._params["nlist"]))
            params = _faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)
            if isinstance(self._index, faiss.IndexPreTransform):
                owners.append(params)
                params = _faiss.SearchParametersPreTransform(index_params=params)
        elif selector is None:
            return None
        else:
            params = _faiss.SearchParameters(sel=selector)
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
        approximate = self._family != "flat"
        # One extra candidate makes room for the excluded pin if it ranks in the top k.
        fetch = min(k + (exclude is not None), total)
        if approximate and allow is not None and len(allow) > 0:
            # An approximate search applies a selector while it walks the graph or scans the
            # lists, so only a share len/total of what it visits passes: widen it by that
            # factor from the start.
            fetch = min(-(-fetch * total // len(allow)), total)
            if fetch >= len(allow):  # the beam would be no smaller than the allowed set
                return self._exact(vectors, self._passing(allow, deny), own, k)
        results = self._top(vectors, fetch, allow, deny, own, k)
        if not approximate:
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
        params = self._params_for(allow, deny, fetch, k)
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
        """Search short approximate rows again, wider, until each has `k` hits or all its
        filters allow.

        A search can still come back short (tombstones, a filter whose pins lie away from the
        query): each round asks for `_GROWTH` times more results with a beam (or probe) as
        wide. Once that reaches the number of pins the filters let through, exact search over
        just those is cheaper and cannot miss one.
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
        scores = vectors @ self._decode(pins).T
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
        make_directory(directory)
        data = self._serialize()
        manifest = self._manifest_for(data)
        _write_atomic(directory / manifest.file, data)
        del data
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
    def load(
        cls, directory: Path, expect_model_id: str | None = None, *, mmap: bool = False
    ) -> PinIndex:
        """Read an index written by `save`, refusing anything that does not check out.

        Raises PinlabServeError when the files are missing, the manifest is malformed, the
        index bytes do not match the manifest checksum, the index disagrees with the
        manifest, or the index was built by a model other than `expect_model_id`. With
        `mmap`, FAISS maps the file's codes, lists and graph instead of copying them: pages
        are read as searches touch them and the kernel may drop them again, and the index
        is read-only (add and remove refuse).
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
        if manifest.metric != METRIC:
            raise PinlabServeError(
                f"index at {directory} is {manifest.kind}/{manifest.metric}; only {METRIC} "
                f"is supported, so {_REBUILD}"
            )
        with index_path.open("rb") as f:  # streamed: a 10M-pin index is not read into memory
            checksum = hashlib.file_digest(f, "sha256").hexdigest()
        if checksum != manifest.checksum:
            raise PinlabServeError(
                f"{index_path} does not match the checksum in {manifest_path}: the index is "
                f"corrupt; {_REBUILD}"
            )
        try:
            index = faiss.read_index(str(index_path), MMAP_FLAGS if mmap else 0)
        except RuntimeError as exc:
            raise PinlabServeError(
                f"{index_path} is not a readable FAISS index; {_REBUILD}"
            ) from exc
        try:
            described = factory_of(index)
        except PinlabServeError as exc:
            raise PinlabServeError(
                f"{index_path} holds a {type(index).__name__}; {_REBUILD}"
            ) from exc
        if described != manifest.kind:
            raise PinlabServeError(
                f"{index_path} holds a {described} index but the manifest says "
                f"{manifest.kind}; {_REBUILD}"
            )
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
            memory_bytes=manifest.memory_bytes,
            latency=manifest.latency,
            tuning=manifest.tuning,
            mapped=mmap,
        )
        loaded._manifest = manifest
        return loaded


def _ivf_entries(ivf: Any) -> tuple[Int64Array, Int64Array]:
    """Every id in an IVF's lists and where it sits, as `list << 32 | offset`."""
    lists = ivf.invlists
    ids: list[Int64Array] = []
    where: list[Int64Array] = []
    for number in range(ivf.nlist):
        size = lists.list_size(number)
        if size == 0:
            continue
        ids.append(np.array(faiss.rev_swig_ptr(lists.get_ids(number), size), dtype=np.int64))
        where.append((number << 32) + np.arange(size, dtype=np.int64))
    if not ids:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(ids), np.concatenate(where)


def embed_image_file(path: Path, encoder: ImageEncoder) -> Float32Array:
    """Embed one image file as a (1, d) row; unreadable files raise PinlabDataError."""
    image = load_image(path, encoder.image_size)
    return encoder.embed(image[None, ...])
