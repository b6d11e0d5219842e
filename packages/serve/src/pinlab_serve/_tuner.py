"""The index tuner: the smallest (or fastest) index meeting a recall@10 target under a memory cap.

Recall@10 is measured against exact search over the same vectors. Queries are indexed pins
(their own id left out of both lists, as `similar` does), drawn with the seed in two disjoint
sets: the tuning queries choose the kind, its code size and its search breadth; the fresh
queries only check the choice. A candidate meets the target when the lower end of its
recall's 95% interval over the tuning queries does, so a choice made on them holds on fresh
ones. Candidates are tried smallest estimated memory first; past `SCREEN_ROWS` vectors each is
first built on a sample of `SCREEN_ROWS` and searched at its widest: codes that cannot reach the
target there will not on more vectors (the more vectors, the closer the neighbours, the more a
code's error reorders them), so it is dropped without a full build.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import faiss
import numpy as np

from pinlab_data.contracts import Float32Array, Int64Array
from pinlab_serve._index import HNSW_M, PinIndex
from pinlab_serve._pq import (
    HNSW_PQ_M,
    PQSpec,
    Say,
    _quiet,
    build_pq,
    check_ids,
    code_sizes,
    nlist_for,
    rss_bytes,
    single_query_latency,
)
from pinlab_serve._shards import ArrayVectors, VectorSource
from pinlab_serve.contracts import (
    INDEX_KINDS,
    IndexCandidate,
    IndexKind,
    IndexTuning,
    PinlabServeError,
)

K = 10
DEFAULT_TARGET_RECALL = 0.9
TUNING_QUERIES = 500
FRESH_QUERIES = 500
SCREEN_ROWS = 200_000
EF_SEARCH = (16, 32, 64, 128, 256, 512, 1024)
Prefer = Literal["memory", "latency"]


@dataclass(frozen=True)
class Candidate:
    """A kind and its build settings; `pq` is None for flat and HNSW (full vectors)."""

    kind: IndexKind
    pq: PQSpec | None = None

    @property
    def label(self) -> str:
        return self.pq.label if self.pq is not None else self.kind

    @property
    def m_bytes(self) -> int:
        """Bytes per code (full vectors count as 4 per dimension: they always rank first)."""
        return self.pq.m if self.pq is not None else 1 << 20

    @property
    def factory(self) -> str:
        if self.pq is not None:
            return self.pq.factory
        return "IDMap2,Flat" if self.kind == "flat" else f"IDMap2,HNSW{HNSW_M}"

    def memory_bytes(self, rows: int, dim: int) -> int:
        """Estimated: PQ kinds as `PQSpec.memory_bytes`; flat and HNSW hold the float32
        vectors, IDMap2's two id maps (~56 bytes a pin) and the sorted ids; HNSW adds its
        links (2M ints at level 0) and offsets."""
        if self.pq is not None:
            return self.pq.memory_bytes(rows, dim)
        per_vector = 4 * dim + 56 + 8
        if self.kind == "hnsw":
            per_vector += 8 * HNSW_M + 16
        return rows * per_vector


def candidates(rows: int, dim: int, kinds: tuple[IndexKind, ...]) -> list[Candidate]:
    """Every candidate of `kinds` for `rows` vectors of `dim`, smallest estimated memory first."""
    found: list[Candidate] = []
    for kind in kinds:
        if kind in ("flat", "hnsw"):
            found.append(Candidate(kind))
            continue
        for m in code_sizes(dim):
            if kind == "hnsw-pq":
                found.append(Candidate(kind, PQSpec(kind, m, M=HNSW_PQ_M)))
            else:
                found.append(Candidate(kind, PQSpec(kind, m, nlist=nlist_for(rows))))
    order = {kind: n for n, kind in enumerate(INDEX_KINDS)}
    return sorted(found, key=lambda c: (c.memory_bytes(rows, dim), order[c.kind]))


def format_bytes(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.2f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Queries:
    """Query vectors, each one's own pin id (or -1) and the exact top-K ids without it."""

    vectors: Float32Array
    own: Int64Array
    truth: Int64Array

    def __len__(self) -> int:
        return len(self.own)

    def subset(self, rows: slice) -> Queries:
        return Queries(self.vectors[rows], self.own[rows], self.truth[rows])


def exact_neighbours(source: VectorSource, vectors: Float32Array, own: Int64Array) -> Int64Array:
    """Exact top-K pin ids by inner product over every shard, each query's own id left out."""
    queries = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    heap = faiss.ResultHeap(len(queries), K + 1, keep_max=True)
    for ids, shard in source:
        for start in range(0, len(ids), 1 << 20):
            block = np.ascontiguousarray(shard[start : start + (1 << 20)], dtype=np.float32)
            block = block / np.linalg.norm(block, axis=1, keepdims=True)
            scores, rows = faiss.knn(
                queries, block, min(K + 1, len(block)), faiss.METRIC_INNER_PRODUCT
            )
            found = np.where(rows >= 0, ids[start:][rows.clip(min=0)], -1)
            if scores.shape[1] < K + 1:  # a block smaller than K + 1 rows
                pad = K + 1 - scores.shape[1]
                scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
                found = np.pad(found, ((0, 0), (0, pad)), constant_values=-1)
            heap.add_result(np.ascontiguousarray(scores), np.ascontiguousarray(found))
    heap.finalize()
    truth = np.full((len(queries), K), -1, dtype=np.int64)
    for row, (ranked, skip) in enumerate(zip(heap.I, own, strict=True)):
        kept = ranked[(ranked != skip) & (ranked >= 0)][:K]
        truth[row, : len(kept)] = kept
    return truth


def sample_queries(source: VectorSource, count: int, seed: int) -> Queries:
    """`count` indexed pins drawn with `seed`, with their exact neighbours."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(source.rows, size=min(count, source.rows), replace=False))
    ids, vectors = source.take(rows.astype(np.int64))
    order = rng.permutation(len(rows))  # tuning and fresh halves from all over the data
    ids, vectors = ids[order], np.ascontiguousarray(vectors[order])
    return Queries(vectors, ids, exact_neighbours(source, vectors, ids))


def recall_per_query(index: PinIndex, queries: Queries) -> Float32Array:
    """Each query's recall@K: its exact top-K (own pin left out) found by `index`."""
    exclude = [int(p) if p >= 0 else None for p in queries.own.tolist()]
    rows = index.search(queries.vectors, K, exclude=exclude)
    out = np.empty(len(rows), dtype=np.float32)
    for n, (hits, truth) in enumerate(zip(rows, queries.truth.tolist(), strict=True)):
        wanted = {t for t in truth if t >= 0}
        out[n] = len(wanted & {h.pin_id for h in hits}) / max(len(wanted), 1)
    return out


def summarise(recalls: Float32Array) -> tuple[float, float]:
    """Mean recall and the lower end of its 95% interval (normal approximation)."""
    mean = float(recalls.mean())
    spread = float(recalls.std(ddof=1)) / np.sqrt(len(recalls)) if len(recalls) > 1 else 0.0
    return round(mean, 4), round(max(0.0, mean - 1.96 * spread), 4)


def breadths(index: PinIndex) -> list[int]:
    """The search breadths tried, narrowest first: nprobe 1, 2, 4... nlist, or `EF_SEARCH`."""
    if index.breadth_param == "nprobe":
        nlist = int(index.manifest_params()["nlist"])
        return [2**p for p in range(nlist.bit_length()) if 2**p < nlist] + [nlist]
    if index.breadth_param == "ef_search":
        return list(EF_SEARCH)
    return [0]


def sweep(
    index: PinIndex, queries: Queries, target: float, widths: list[int]
) -> tuple[int, float, float]:
    """The narrowest breadth whose recall's lower bound meets `target` (else the widest):
    (breadth, recall, lower bound)."""
    result = (0, 0.0, 0.0)
    for width in widths:
        if width:
            index.set_search_breadth(width)
        mean, low = summarise(recall_per_query(index, queries))
        result = (width, mean, low)
        if low >= target:
            break
    return result


def build_candidate(
    candidate: Candidate, source: VectorSource, model_id: str, seed: int, say: Say
) -> PinIndex:
    if candidate.pq is not None:
        return build_pq(source, candidate.pq, model_id, seed=seed, say=say)
    say(f"building {candidate.kind} over {source.rows:,} vectors")
    ids = np.concatenate([ids for ids, _ in source])
    vectors = np.concatenate([v for _, v in source])
    threshold = 1 if candidate.kind == "hnsw" else source.rows + 1
    return PinIndex.build(vectors, ids, model_id, hnsw_threshold=threshold, seed=seed)


@dataclass
class _Best:
    index: PinIndex
    position: int
    p99_ms: float


def check_target_recall(value: float, option: str = "--target-recall") -> None:
    """Refuse a recall target outside (0, 1], naming the option that gave it."""
    if not 0 < value <= 1:
        raise PinlabServeError(f"{option} must be in (0, 1], got {value}")


def tune(
    source: VectorSource,
    model_id: str,
    *,
    target_recall: float = DEFAULT_TARGET_RECALL,
    max_memory: int | None = None,
    kinds: tuple[IndexKind, ...] = INDEX_KINDS,
    prefer: Prefer = "memory",
    seed: int = 0,
    say: Say = _quiet,
) -> PinIndex:
    """Build the index of `kinds` that meets `target_recall` under `max_memory` bytes.

    `prefer` memory: the smallest estimated memory that meets the target; latency: of those
    that meet it, the lowest single-query p99. The chosen index carries what was tried in its
    manifest's `tuning`, its recall on the fresh queries and its latency. Raises
    PinlabServeError (one line, what to change) when no candidate fits `max_memory` or none
    that fits reaches the target.
    """
    start = time.perf_counter()
    check_target_recall(target_recall)
    if not kinds:
        raise PinlabServeError(f"give at least one index kind of {', '.join(INDEX_KINDS)}")
    rows, dim = source.rows, source.dim
    if rows < 2 * K + 2:
        raise PinlabServeError(f"tuning needs at least {2 * K + 2} vectors, got {rows}")
    check_ids(source)
    everything = candidates(rows, dim, kinds)
    fits = [c for c in everything if max_memory is None or c.memory_bytes(rows, dim) <= max_memory]
    if not fits:
        least = everything[0]
        need = least.memory_bytes(rows, dim)
        raise PinlabServeError(
            f"no index of {', '.join(kinds)} fits {rows:,} vectors of dimension {dim} in "
            f"{format_bytes(max_memory or 0)}: the smallest, {least.label}, needs about "
            f"{format_bytes(need)}; raise --max-memory to at least {format_bytes(need * 1.05)}"
        )
    say(f"exact neighbours of {TUNING_QUERIES + FRESH_QUERIES} sampled pins")
    drawn = sample_queries(source, min(TUNING_QUERIES + FRESH_QUERIES, rows), seed)
    half = len(drawn) // 2
    tuning_set, fresh_set = drawn.subset(slice(0, half)), drawn.subset(slice(half, None))
    screen = _screen_sample(source, seed) if rows > SCREEN_ROWS else None
    records: list[IndexCandidate] = []
    best: _Best | None = None
    closest: IndexCandidate | None = None
    growth = 0
    for candidate in fits:
        if screen is not None and candidate.kind != "flat":
            record = _screen(candidate, screen, model_id, target_recall, seed, say)
            records.append(record)
            closest = _closer(closest, record)
            if not record.meets:
                continue
        before = rss_bytes()
        began = time.perf_counter()
        index = build_candidate(candidate, source, model_id, seed, say)
        built = time.perf_counter() - began
        width, mean, low = sweep(index, tuning_set, target_recall, breadths(index))
        meets = low >= target_recall
        latency = single_query_latency(index, tuning_set.vectors) if meets else None
        record = IndexCandidate(
            kind=candidate.kind,
            factory=index.kind,
            params=_int_params(index),
            memory_bytes=candidate.memory_bytes(rows, dim),
            stage="full",
            recall_at_10=mean,
            recall_low=low,
            meets=meets,
            build_seconds=round(built, 2),
            latency=latency,
        )
        records.append(record)
        closest = _closer(closest, record)
        say(f"{candidate.label}: recall@10 {mean:.3f} (low {low:.3f}) at breadth {width}")
        if meets and latency is not None and (best is None or latency.p99_ms < best.p99_ms):
            best = _Best(index, len(records) - 1, latency.p99_ms)
            growth = rss_bytes() - before
        del index
        if best is not None and prefer == "memory":
            break
    if best is None:
        raise PinlabServeError(_unreachable(closest, target_recall, max_memory, everything, fits))
    chosen = best.index
    fresh_mean, fresh_low = summarise(recall_per_query(chosen, fresh_set))
    tuning = IndexTuning(
        target_recall=target_recall,
        max_memory_bytes=max_memory,
        prefer=prefer,
        kinds=list(kinds),
        seed=seed,
        tuning_queries=len(tuning_set),
        fresh_queries=len(fresh_set),
        candidates=records,
        chosen=best.position,
        fresh_recall_at_10=fresh_mean,
        fresh_recall_low=fresh_low,
        rss_growth_bytes=max(growth, 0),
        seconds=round(time.perf_counter() - start, 1),
    )
    chosen.annotate(recall_at_10=fresh_mean, latency=records[best.position].latency, tuning=tuning)
    return chosen


def _int_params(index: PinIndex) -> dict[str, int]:
    return {k: int(v) for k, v in index.manifest_params().items()}


def _screen_sample(source: VectorSource, seed: int) -> tuple[ArrayVectors, Queries]:
    rng = np.random.default_rng(seed + 1)
    rows = np.sort(rng.choice(source.rows, size=SCREEN_ROWS, replace=False)).astype(np.int64)
    sample = ArrayVectors(*source.take(rows))
    return sample, sample_queries(sample, TUNING_QUERIES, seed + 2)


def _screen(
    candidate: Candidate,
    screen: tuple[ArrayVectors, Queries],
    model_id: str,
    target: float,
    seed: int,
    say: Say,
) -> IndexCandidate:
    """Build `candidate` on the sample and search it at its widest breadth."""
    sample, queries = screen
    pq = candidate.pq
    if pq is not None and pq.kind != "hnsw-pq":
        pq = PQSpec(pq.kind, pq.m, nlist=nlist_for(sample.rows))
    began = time.perf_counter()
    index = build_candidate(Candidate(candidate.kind, pq), sample, model_id, seed, say)
    built = time.perf_counter() - began
    _, mean, low = sweep(index, queries, target, breadths(index)[-1:])
    say(f"screen {candidate.label}: recall@10 {mean:.3f} at its widest on {sample.rows:,}")
    return IndexCandidate(
        kind=candidate.kind,
        factory=index.kind,
        params=_int_params(index),
        memory_bytes=candidate.memory_bytes(sample.rows, sample.dim),
        stage="screen",
        recall_at_10=mean,
        recall_low=low,
        meets=low >= target,
        build_seconds=round(built, 2),
    )


def _closer(closest: IndexCandidate | None, record: IndexCandidate) -> IndexCandidate:
    if closest is None or record.recall_at_10 > closest.recall_at_10:
        return record
    return closest


def _unreachable(
    closest: IndexCandidate | None,
    target: float,
    max_memory: int | None,
    everything: list[Candidate],
    fits: list[Candidate],
) -> str:
    cap = f" within {format_bytes(max_memory)}" if max_memory is not None else ""
    best = (
        f"the best, {closest.factory} ({closest.stage} build), reached {closest.recall_at_10:.3f}"
        if closest is not None
        else "none was measured"
    )
    # Exact search always reaches the target; else the largest the cap left out.
    left_out = sorted(
        (c for c in everything if c not in fits), key=lambda c: (c.kind != "flat", -c.m_bytes)
    )
    bigger = f" or raise --max-memory to fit {left_out[0].label}" if left_out else ""
    floor = np.floor((closest.recall_low if closest else 0) * 100) / 100
    return (
        f"no index reaches recall@10 {target}{cap}: {best}; lower --target-recall to "
        f"{floor:.2f}{bigger}"
    )
