"""`pinlab bench index`: build time, memory, recall@10 and latency of each index kind.

The vectors are a seeded Gaussian mixture (`pinlab_serve.ClusteredVectors`, one cluster per
1,000 vectors), written as `.npy` shards of `SHARD_ROWS` and indexed from them as `pinlab
index build --vectors` would. Queries are fresh draws from the same mixture (not indexed);
recall@10 is against exact search. Each kind is built here (its time and the memory the build
added), saved, then measured in a child process that loads it as serving does: the memory
loading and searching added (plain and memory-mapped), and per search breadth the recall and
single-query latency on one FAISS thread.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from pinlab_data import atomic_writer, make_directory, write_json_atomic
from pinlab_serve import (
    ClusteredVectors,
    EmbeddingShards,
    IndexKind,
    PinIndex,
    PQSpec,
    build_pq,
    format_bytes,
    open_shards,
    tune,
)
from pinlab_serve._pq import nlist_for
from pinlab_serve._tuner import Queries, exact_neighbours, recall_per_query, summarise
from pinlab_tasks._measure import added_peak_rss, run_measured
from pinlab_tasks.runs import check_output_folder

SHARD_ROWS = 1_000_000
SHARDS_SPEC = "shards.json"
VECTORS_PER_CLUSTER = 1_000
MODEL_ID = "bench-clustered"
RECALL_TARGET = 0.9
"""The operating point each kind reports: the narrowest breadth at this recall@10."""
IVF_NPROBES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
HNSW_EFS = (16, 32, 64, 128, 256, 512)
EXACT_LATENCY_QUERIES = 100
"""Exact search over 10M vectors takes ~0.1-1 s a query on one thread: fewer queries."""

Say = Callable[[str], None]

# The child loads the saved index as serving does and searches it: "plain" at every breadth
# (recall, single-query latency), "mmap" memory-mapped at the widest. The memory it reports
# is what loading and searching added to a process that had imported everything.
_MEASURE = """
import json, sys
from pathlib import Path
import numpy as np, psutil
from pinlab_serve import PinIndex
from pinlab_serve._tuner import Queries, recall_per_query, summarise
from pinlab_serve._pq import single_query_latency
directory, mode, queries_file = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
widths, latency_queries = json.loads(sys.argv[4]), int(sys.argv[5])
data = np.load(queries_file)
queries = Queries(data["vectors"], data["own"], data["truth"])
process = psutil.Process()

def resident():
    info = process.memory_info()
    return info.rss / 2**20, (info.rss - info.shared) / 2**20

rss0, anon0 = resident()
index = PinIndex.load(directory, mmap=mode == "mmap")
rss1, anon1 = resident()
points = []
for width in widths if mode == "plain" else widths[-1:]:
    if width:
        index.set_search_breadth(width)
    mean, low = summarise(recall_per_query(index, queries))
    point = {"breadth": width, "recall_at_10": mean, "recall_low": low}
    if mode == "plain":
        latency = single_query_latency(index, queries.vectors[:latency_queries])
        point |= {"p50_ms": latency.p50_ms, "p99_ms": latency.p99_ms}
    points.append(point)
index.similar(int(index.ids()[0]), 10)  # builds the pin -> position table `similar` needs
rss2, anon2 = resident()
print(json.dumps({"load_mb": rss1 - rss0, "resident_mb": rss2 - rss0,
                  "anon_mb": anon2 - anon0, "points": points}))
"""


def write_shards(out: Path, rows: int, dim: int, seed: int, say: Say) -> list[Path]:
    """`rows` clustered vectors as `.npy` shards of `SHARD_ROWS` in `out`."""
    mixture = ClusteredVectors(dim, max(16, rows // VECTORS_PER_CLUSTER), seed=seed)
    make_directory(out)
    paths = []
    for number, chunk in enumerate(mixture.chunks(rows, seed, SHARD_ROWS)):
        say(f"writing shard {number + 1} ({len(chunk):,} vectors)")
        path = out / f"vectors-{number:05d}.npy"
        with atomic_writer(path) as f:  # a stopped bench never leaves a short shard to reuse
            np.save(f, chunk)
        paths.append(path)
    return paths


def drawn_shards(folder: Path, rows: int, dim: int, seed: int, say: Say) -> list[Path]:
    """`write_shards` into `folder`, unless it holds shards drawn with the same rows, dim and
    seed (a rerun with the same --work), which are reused."""
    spec = {"vectors": rows, "dim": dim, "seed": seed, "shard_rows": SHARD_ROWS}
    paths = _reusable_shards(folder, spec)
    if paths is None:
        # The spec goes first, so shards cut short by a stop are never taken for it.
        for stale in [folder / SHARDS_SPEC, *folder.glob("vectors-*")]:
            stale.unlink(missing_ok=True)
        paths = write_shards(folder, rows, dim, seed, say)
        write_json_atomic(folder / SHARDS_SPEC, spec | {"files": [p.name for p in paths]})
    return paths


def _reusable_shards(folder: Path, spec: dict[str, int]) -> list[Path] | None:
    """The shards an earlier run with this --work wrote, where it drew them as `spec` says
    (the same count, dimension and seed); otherwise None, and they are drawn again."""
    try:
        written = json.loads((folder / SHARDS_SPEC).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # none yet, or damaged
        return None
    if not isinstance(written, dict) or not isinstance(written.get("files"), list):
        return None
    paths = [folder / str(name) for name in written.pop("files")]
    return paths if written == spec and paths and all(p.is_file() for p in paths) else None


def fresh_queries(shards: EmbeddingShards, count: int, dim: int, seed: int) -> Queries:
    """`count` new draws from the mixture (never indexed), with their exact neighbours."""
    mixture = ClusteredVectors(dim, max(16, shards.rows // VECTORS_PER_CLUSTER), seed=seed)
    vectors = mixture.sample(count, seed=seed + 7_919)
    own = np.full(count, -1, dtype=np.int64)
    return Queries(vectors, own, exact_neighbours(shards, vectors, own))


def widths_for(index: PinIndex) -> list[int]:
    if index.breadth_param == "nprobe":
        nlist = int(index.manifest_params()["nlist"])
        return [n for n in IVF_NPROBES if n <= nlist]
    if index.breadth_param == "ef_search":
        return list(HNSW_EFS)
    return [0]


def build_kind(kind: IndexKind, shards: EmbeddingShards, m: int, seed: int, say: Say) -> PinIndex:
    if kind in ("flat", "hnsw"):
        say(f"{kind}: reading {shards.rows:,} vectors")
        ids = np.concatenate([ids for ids, _ in shards])
        vectors = np.concatenate([v for _, v in shards])
        threshold = 1 if kind == "hnsw" else shards.rows + 1
        return PinIndex.build(vectors, ids, MODEL_ID, hnsw_threshold=threshold, seed=seed)
    spec = PQSpec(kind, m, nlist=nlist_for(shards.rows), M=16)
    return build_pq(shards, spec, MODEL_ID, seed=seed, say=say)


def bench_index(
    vectors: int,
    dim: int,
    queries: int,
    kinds: list[IndexKind],
    m: int,
    seed: int,
    *,
    work: Path | None = None,
    tune_target: float | None = None,
    tune_memory: int | None = None,
    say: Say,
) -> dict[str, Any]:
    """Generate the vectors, then build and measure each kind; see the module docstring."""
    start = time.perf_counter()
    with _workdir(work) as root:
        began = time.perf_counter()
        paths = drawn_shards(root / "shards", vectors, dim, seed, say)
        generate_s = time.perf_counter() - began
        shards = open_shards(paths)
        say(f"exact neighbours of {queries} fresh queries")
        began = time.perf_counter()
        fresh = fresh_queries(shards, queries, dim, seed)
        truth_s = time.perf_counter() - began
        queries_file = root / "queries.npz"
        np.savez(queries_file, vectors=fresh.vectors, own=fresh.own, truth=fresh.truth)
        rows = [
            _measure_kind(kind, shards, m, seed, root, queries_file, queries, say) for kind in kinds
        ]
        tuned = (
            _tuned(shards, fresh, tune_target, tune_memory, seed, say)
            if tune_target is not None
            else None
        )
    return {
        "vectors": vectors,
        "dim": dim,
        "queries": queries,
        "clusters": max(16, vectors // VECTORS_PER_CLUSTER),
        "seed": seed,
        "m": m,
        "generate_s": round(generate_s, 1),
        "exact_truth_s": round(truth_s, 1),
        "kinds": rows,
        "tuner": tuned,
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "seconds": round(time.perf_counter() - start, 1),
    }


def _measure_kind(
    kind: IndexKind,
    shards: EmbeddingShards,
    m: int,
    seed: int,
    root: Path,
    queries_file: Path,
    queries: int,
    say: Say,
) -> dict[str, Any]:
    say(f"building {kind}")
    began = time.perf_counter()
    with added_peak_rss() as added:
        index = build_kind(kind, shards, m, seed, say)
        build_s = time.perf_counter() - began
        build_mb = added()
    directory = root / f"index-{kind}"
    manifest = index.save(directory)
    widths = widths_for(index)
    estimate = index.manifest.memory_bytes
    del index
    say(f"measuring {kind} ({len(widths)} breadths) in a fresh process")
    latency_queries = EXACT_LATENCY_QUERIES if kind == "flat" else queries
    args = (str(queries_file), json.dumps(widths), str(latency_queries))
    plain = run_measured(_MEASURE, str(directory), "plain", *args).result
    mapped = run_measured(_MEASURE, str(directory), "mmap", *args).result
    points = plain["points"]
    meeting = [p for p in points if p["recall_at_10"] >= RECALL_TARGET]
    return {
        "kind": kind,
        "factory": manifest.kind,
        "params": manifest.params,
        "build_s": round(build_s, 3),
        "build_added_mb": round(build_mb, 1),
        "file_mb": round((directory / manifest.file).stat().st_size / 2**20, 1),
        "estimate_mb": round(estimate / 2**20, 1) if estimate else None,
        "memory_mb": round(plain["resident_mb"], 1),
        "load_mb": round(plain["load_mb"], 1),
        "mmap_anon_mb": round(mapped["anon_mb"], 1),
        "mmap_resident_mb": round(mapped["resident_mb"], 1),
        "mmap_recall_at_10": mapped["points"][0]["recall_at_10"],
        "at_target": meeting[0] if meeting else None,
        "points": points,
    }


def _tuned(
    shards: EmbeddingShards,
    fresh: Queries,
    target: float,
    memory: int | None,
    seed: int,
    say: Say,
) -> dict[str, Any]:
    """The tuner over every PQ kind, then its choice on the bench's fresh queries."""
    say(f"tuning for recall@10 {target} within {format_bytes(memory) if memory else 'no cap'}")
    index = tune(shards, MODEL_ID, target_recall=target, max_memory=memory, seed=seed, say=say)
    manifest = index.manifest
    assert manifest.tuning is not None
    mean, low = summarise(recall_per_query(index, fresh))
    return {
        "chosen": manifest.kind,
        "params": manifest.params,
        "memory_mb": round((manifest.memory_bytes or 0) / 2**20, 1),
        "tuning_recall_at_10": manifest.tuning.candidates[manifest.tuning.chosen].recall_at_10,
        "held_out_pins_recall_at_10": manifest.tuning.fresh_recall_at_10,
        "fresh_queries_recall_at_10": mean,
        "fresh_queries_recall_low": low,
        "meets_target_on_fresh": mean >= target,
        "latency": manifest.latency.model_dump() if manifest.latency else None,
        "candidates": [c.model_dump() for c in manifest.tuning.candidates],
        "seconds": manifest.tuning.seconds,
    }


@contextmanager
def _workdir(work: Path | None) -> Iterator[Path]:
    if work is not None:
        # bench index writes shards/, queries.npz and index-KIND/ there.
        ours = ("shards", "queries.npz", "index-")
        check_output_folder(work, lambda name: name.startswith(ours), "--work", "bench index")
        work.mkdir(parents=True, exist_ok=True)
        yield work
        return
    with tempfile.TemporaryDirectory(prefix="pinlab-bench-index-") as tmp:
        yield Path(tmp)


def render_index(payload: dict[str, Any]) -> None:
    from rich.table import Table

    from pinlab_tasks._output import stdout

    table = Table(
        title=f"bench index: {payload['vectors']:,} x {payload['dim']} clustered vectors, "
        f"{payload['queries']} fresh queries; at the narrowest breadth with recall@10 >= "
        f"{RECALL_TARGET}"
    )
    for column in ("kind", "build s", "memory MB", "mmap anon MB", "breadth", "recall@10",
                   "p50 ms", "p99 ms"):  # fmt: skip
        table.add_column(column)
    for row in payload["kinds"]:
        point = row["at_target"] or row["points"][-1]
        name = row["factory"] + ("" if row["at_target"] else " (below target)")
        table.add_row(name, str(row["build_s"]), str(row["memory_mb"]),
                      str(row["mmap_anon_mb"]), str(point["breadth"]),
                      f"{point['recall_at_10']:.3f}", str(point["p50_ms"]),
                      str(point["p99_ms"]))  # fmt: skip
    stdout.print(table)
    tuned = payload.get("tuner")
    if tuned:
        stdout.print(
            f"tuner: {tuned['chosen']} {tuned['params']}, {tuned['memory_mb']} MB; recall@10 "
            f"{tuned['fresh_queries_recall_at_10']:.3f} on fresh queries"
        )
