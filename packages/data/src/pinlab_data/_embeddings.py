"""Embeddings directories: vectors of pins as Parquet shards, and the manifest that lists them.

A directory holds `manifest.json` (`EmbeddingsManifest`) and, per kind of vector ('image',
'text'), shards `KIND-00000.parquet`, ... of `embedding_schema(dim)`: `pin_id` (int64, as in
the pins table) and `vector` (fixed-size list of float32). Shards follow the pin-table order.
The whole directory is written through `atomic_directory`, the manifest last.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import ValidationError

from pinlab_data._store import atomic_writer
from pinlab_data.contracts import (
    EMBEDDINGS_FORMAT,
    EmbeddingsManifest,
    Float32Array,
    Int64Array,
    PinlabDataError,
    embedding_schema,
)

EMBEDDINGS_MANIFEST = "manifest.json"


def shard_name(kind: str, index: int) -> str:
    return f"{kind}-{index:05d}.parquet"


def embedding_table(pin_ids: Int64Array, vectors: Float32Array) -> pa.Table:
    """The Arrow table of one shard: (n,) pin ids and (n, dim) float32 vectors."""
    if vectors.ndim != 2 or vectors.dtype != np.float32 or len(vectors) != len(pin_ids):
        raise PinlabDataError(
            f"a shard needs (n, dim) float32 vectors, one per pin id; got {vectors.dtype} "
            f"{vectors.shape} for {len(pin_ids)} pin ids"
        )
    dim = vectors.shape[1]
    flat = pa.array(np.ascontiguousarray(vectors).reshape(-1), pa.float32())
    ids = pa.array(np.asarray(pin_ids, dtype=np.int64))
    return pa.Table.from_arrays(
        [ids, pa.FixedSizeListArray.from_arrays(flat, dim)],
        schema=embedding_schema(dim),
    )


def write_embedding_shard(path: Path, pin_ids: Int64Array, vectors: Float32Array) -> None:
    """Write one shard atomically."""
    table = embedding_table(pin_ids, vectors)
    with atomic_writer(path) as f:
        pq.write_table(table, f)


def load_embeddings_manifest(root: Path) -> EmbeddingsManifest:
    """The manifest of an embeddings directory; anything missing or malformed raises
    PinlabDataError saying what to do."""
    path = Path(root) / EMBEDDINGS_MANIFEST
    if not path.is_file():
        raise PinlabDataError(
            f"{root} holds no complete embeddings (no {EMBEDDINGS_MANIFEST}); make them with "
            "`pinlab embed --data DIR --run RUN`"
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        manifest = EmbeddingsManifest.model_validate(raw)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValidationError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise PinlabDataError(f"{path} is not an embeddings manifest ({first}); re-embed") from exc
    if manifest.format_version > EMBEDDINGS_FORMAT:
        raise PinlabDataError(
            f"{path} has format_version {manifest.format_version}, newer than this pinlab "
            f"reads ({EMBEDDINGS_FORMAT}); upgrade pinlab"
        )
    return manifest


def read_embeddings(root: Path, kind: str = "image") -> tuple[Int64Array, Float32Array]:
    """Every vector of one kind, in shard order: (n,) pin ids and (n, dim) float32 rows."""
    manifest = load_embeddings_manifest(root)
    if kind not in manifest.sets:
        raise PinlabDataError(
            f"{root} has no {kind!r} vectors (it has {', '.join(manifest.sets) or 'none'})"
        )
    spec = manifest.sets[kind]
    expected = embedding_schema(spec.dim)
    ids: list[Int64Array] = []
    vectors: list[Float32Array] = []
    for name in spec.shards:
        path = Path(root) / name
        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as exc:
            raise PinlabDataError(f"{path} is not a readable shard ({exc}); re-embed") from exc
        if not table.schema.equals(expected):
            raise PinlabDataError(
                f"{path} has schema {table.schema}, expected {expected} ({kind}, dim "
                f"{spec.dim}); re-embed"
            )
        column = table.column("vector").combine_chunks()
        ids.append(np.asarray(table.column("pin_id").to_numpy(), dtype=np.int64))
        vectors.append(
            np.asarray(column.flatten().to_numpy(), dtype=np.float32).reshape(-1, spec.dim)
        )
    pin_ids = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
    matrix = np.concatenate(vectors) if vectors else np.zeros((0, spec.dim), dtype=np.float32)
    if len(pin_ids) != spec.count:
        raise PinlabDataError(
            f"{root}'s {kind} shards hold {len(pin_ids)} vectors but its manifest says "
            f"{spec.count}; re-embed"
        )
    return pin_ids, matrix
