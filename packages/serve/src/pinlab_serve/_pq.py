"""Indexes past memory: FAISS indexes over product-quantised codes, built shard by shard.

Kinds: `ivf-pq` (`IVF{nlist},PQ{m}`: a coarse k-means, each vector's residual as m bytes),
`opq-ivf-pq` (the same behind an `OPQMatrix` rotation that balances the variance over the
sub-vectors) and `hnsw-pq` (`HNSW{M}_PQ{m}`: a graph whose nodes are PQ codes). Each is
trained once on a seeded sample drawn over all shards. IVF kinds then give every shard its own
copy of the trained, empty index and merge the inverted lists (`merge_from`), FAISS's way of
building a large IVF in pieces; HNSW-PQ adds shard after shard to one graph (graphs do not
merge). Only one shard's vectors are in memory at a time.
"""

from __future__ import annotations

import math
import os
import resource
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from pinlab_data.contracts import Float32Array, Int64Array
from pinlab_serve._index import PinIndex, _ivf, _unit_rows
from pinlab_serve._shards import VectorSource
from pinlab_serve.contracts import IndexKind, Latency, PinlabServeError

_faiss: Any = faiss  # the stubs lack attributes of downcast indexes
CHUNK_ROWS = 1 << 18
"""Rows normalised and added at once: 64 MB of 64-d float32."""
HNSW_PQ_M = 16
"""Neighbours per HNSW-PQ node: its links (8 * M bytes a vector) outweigh 16-byte codes."""
HNSW_PQ_EF_CONSTRUCTION = 40
PQ_TRAIN_POINTS_PER_CENTROID = 64
PQ_TRAIN_ITERATIONS = 10
"""PQ k-means (256 centroids per 1-8 dimensional sub-vector) on 16k points, 10 passes:
FAISS's defaults (65k points, 25 passes) took 50 s for 64-byte codes on a loaded 2-core
machine; k-means in so few dimensions has settled long before."""
IVF_TRAIN_POINTS_PER_CENTROID = 64
OPQ_TRAIN_POINTS = 1 << 15
OPQ_ITERATIONS = 20
"""OPQ alternates rotation and PQ training 50 times by default (4 PQ passes each): 20 here."""

Say = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class PQSpec:
    """One PQ index's build settings: its kind, bytes per code `m`, and `nlist` or `M`."""

    kind: IndexKind
    m: int
    nlist: int = 0
    M: int = 0

    @property
    def factory(self) -> str:
        if self.kind == "hnsw-pq":
            return f"IDMap,HNSW{self.M}_PQ{self.m}"
        base = f"IVF{self.nlist},PQ{self.m}"
        return f"OPQ{self.m},{base}" if self.kind == "opq-ivf-pq" else base

    @property
    def label(self) -> str:
        shape = f"M={self.M}" if self.kind == "hnsw-pq" else f"nlist={self.nlist}"
        return f"{self.kind} m={self.m} {shape}"

    def params(self) -> dict[str, int]:
        if self.kind == "hnsw-pq":
            return {
                "m": self.m,
                "nbits": 8,
                "M": self.M,
                "ef_construction": HNSW_PQ_EF_CONSTRUCTION,
            }
        return {"m": self.m, "nbits": 8, "nlist": self.nlist}

    def memory_bytes(self, rows: int, dim: int) -> int:
        """Estimated resident size once loaded and serving `similar`.

        Codes (m bytes) and pin ids (8) per vector; the PQ codebooks (256 x dim floats); IVF:
        the coarse centroids (and OPQ's d x d rotation); HNSW: links at level 0 (2M ints),
        upper levels and offsets (~16 bytes); and `PinIndex`'s pin -> position table (16
        bytes a vector), built on the first `vector`/`similar`.
        """
        per_vector = self.m + 8 + 16
        fixed = 256 * dim * 4
        if self.kind == "hnsw-pq":
            per_vector += 8 * self.M + 16
        else:
            fixed += self.nlist * dim * 4
            if self.kind == "opq-ivf-pq":
                fixed += dim * dim * 4
        return rows * per_vector + fixed


def nlist_for(rows: int) -> int:
    """Inverted lists for `rows` vectors: the power of two nearest sqrt(rows), so a probe
    scans about sqrt(rows) codes, and at least `IVF_TRAIN_POINTS_PER_CENTROID` rows each."""
    target = 2 ** round(math.log2(max(math.sqrt(rows), 1)))
    most = max(rows // IVF_TRAIN_POINTS_PER_CENTROID, 1)
    return int(max(1, min(target, 2 ** int(math.log2(most)))))


def code_sizes(dim: int) -> list[int]:
    """Bytes per code tried: dim/8, dim/4, dim/2 and dim (each sub-vector 8, 4, 2, 1 dims)."""
    return sorted({dim // s for s in (8, 4, 2, 1) if dim % s == 0 and dim // s >= 1})


def new_pq_index(spec: PQSpec, dim: int) -> Any:
    """An untrained FAISS index for `spec`, inner product, with pinlab's training budgets."""
    if spec.m <= 0 or dim % spec.m:
        raise PinlabServeError(
            f"m={spec.m} bytes per code must divide the dimension {dim}; try one of "
            f"{code_sizes(dim)}"
        )
    if spec.kind == "hnsw-pq":
        # The stubs know only the ProductQuantizer constructor; FAISS also takes (d, m, M,
        # nbits, metric).
        graph = _faiss.IndexHNSWPQ(dim, spec.m, spec.M, 8, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = HNSW_PQ_EF_CONSTRUCTION
        _limit_pq_training(graph.storage)
        return faiss.IndexIDMap(graph)
    index: Any = faiss.index_factory(
        dim, spec.factory.removeprefix("IDMap,"), faiss.METRIC_INNER_PRODUCT
    )
    ivf = _ivf(index)
    ivf.do_polysemous_training = False  # Hamming filtering is never used here
    ivf.cp.max_points_per_centroid = IVF_TRAIN_POINTS_PER_CENTROID
    ivf.pq.cp.max_points_per_centroid = PQ_TRAIN_POINTS_PER_CENTROID
    ivf.pq.cp.niter = PQ_TRAIN_ITERATIONS
    if isinstance(index, faiss.IndexPreTransform):
        chain: Any = index.chain
        opq: Any = faiss.downcast_VectorTransform(chain.at(0))
        opq.max_train_points = OPQ_TRAIN_POINTS
        opq.niter = OPQ_ITERATIONS
        opq.niter_pq_0 = PQ_TRAIN_ITERATIONS
    return index


def _limit_pq_training(storage: Any) -> None:
    pq = _faiss.downcast_index(storage).pq
    pq.cp.max_points_per_centroid = PQ_TRAIN_POINTS_PER_CENTROID
    pq.cp.niter = PQ_TRAIN_ITERATIONS


def training_rows(spec: PQSpec, rows: int, seed: int) -> Int64Array:
    """Global rows (ascending) the index is trained on, drawn with `seed`."""
    want = IVF_TRAIN_POINTS_PER_CENTROID * max(spec.nlist, 256)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(rows, size=min(rows, want), replace=False)).astype(np.int64)


def build_pq(
    shards: VectorSource,
    spec: PQSpec,
    model_id: str,
    *,
    seed: int = 0,
    say: Say = _quiet,
) -> PinIndex:
    """Train `spec` on a sample of `shards`, add every shard, and wrap it as a `PinIndex`.

    Pin ids are checked first (`check_ids`), so bad shards fail before minutes of training.
    Search breadth starts at nprobe 1 / ef_search 16; the tuner sets the one it chose.
    """
    if not model_id:
        raise PinlabServeError("model_id must be a non-empty string")
    dim = shards.dim
    index = new_pq_index(spec, dim)
    check_ids(shards)
    train = _unit_rows(shards.take(training_rows(spec, shards.rows, seed))[1], "embeddings")
    say(f"training {spec.label} on {len(train):,} vectors")
    _train(index, train)
    del train
    if spec.kind == "hnsw-pq":
        for number, (ids, vectors) in enumerate(shards):
            say(f"adding shard {number + 1}/{shards.parts} to {spec.label}")
            _add(index, ids, vectors)
        built = index
    else:
        built = None
        for number, (ids, vectors) in enumerate(shards):
            say(f"adding shard {number + 1}/{shards.parts} to {spec.label}")
            part = faiss.clone_index(index)  # trained and empty: this shard's own index
            _fast_encoding(part)
            _add(part, ids, vectors)
            built = part if built is None else _merge(built, part)
    params: dict[str, int | float] = dict(spec.params())
    params["ef_search" if spec.kind == "hnsw-pq" else "nprobe"] = (
        16 if spec.kind == "hnsw-pq" else 1
    )
    return PinIndex(
        built,
        model_id,
        datetime.now(UTC).isoformat(),
        params,
        None,
        memory_bytes=spec.memory_bytes(shards.rows, dim),
    )


def _train(index: Any, train: Float32Array) -> None:
    # k-means with FAISS's seeded clustering: the same sample gives the same index.
    index.train(train)
    _fast_encoding(index)


def _fast_encoding(index: Any) -> None:
    """Encode against transposed codebooks: for 1-2 dimensional sub-vectors FAISS otherwise
    calls a distance kernel per sub-vector and vector (64-byte codes: 18 times slower)."""
    if isinstance(index, faiss.IndexIDMap):
        graph: Any = faiss.downcast_index(index.index)
        _faiss.downcast_index(graph.storage).pq.sync_transposed_centroids()
    else:
        _ivf(index).pq.sync_transposed_centroids()


def _add(index: Any, ids: Int64Array, vectors: Float32Array) -> None:
    for start in range(0, len(ids), CHUNK_ROWS):
        chunk = _unit_rows(vectors[start : start + CHUNK_ROWS], "embeddings", index.d)
        index.add_with_ids(chunk, np.ascontiguousarray(ids[start : start + CHUNK_ROWS]))


def _merge(into: Any, part: Any) -> Any:
    """Append `part`'s inverted lists to `into`'s (ids kept), as FAISS merges shards."""
    _ivf(into).merge_from(_ivf(part), 0)
    if isinstance(into, faiss.IndexPreTransform):
        into.ntotal = _ivf(into).ntotal  # the wrapper does not see the lists grow
    return into


def check_ids(shards: VectorSource) -> None:
    """Pin ids must be non-negative and unique over all shards (read before any training)."""
    ids = shards.read_ids()
    if len(ids) and ids.min() < 0:
        raise PinlabServeError(f"pin ids must be non-negative, got {int(ids.min())}")
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise PinlabServeError(
            f"pin ids must be unique over the shards; repeated: {uniq[counts > 1][:5].tolist()}"
        )


def rss_bytes() -> int:
    """This process's resident memory now (Linux /proc; elsewhere the peak so far)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@contextmanager
def one_thread() -> Iterator[None]:
    """FAISS on one OpenMP thread, as a serving worker runs it (`ServeSettings`)."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def single_query_latency(index: PinIndex, queries: Float32Array, k: int = 10) -> Latency:
    """p50 and p99 of `index.search` over `queries` one at a time, on one thread."""
    times = np.empty(len(queries))
    with one_thread():
        index.search(queries[:1], k)  # the first call pays for lazy set-up
        for row in range(len(queries)):
            start = time.perf_counter()
            index.search(queries[row : row + 1], k)
            times[row] = time.perf_counter() - start
    return Latency(
        p50_ms=round(float(np.percentile(times, 50)) * 1e3, 3),
        p99_ms=round(float(np.percentile(times, 99)) * 1e3, 3),
        queries=len(queries),
    )
