"""Embedding shards: the vectors an index is built from, read one file at a time.

A shard is a Parquet file with `pin_id` (integer) and `vector` (a fixed-size list of float32,
what `pinlab embed` writes), an `.npz` with arrays `pin_id` and `vector`, or an `.npy` matrix
(its pin ids are its row numbers counted over all shards, in the order given). A directory
stands for its shards: those its `manifest.json` lists for the image vectors (`pinlab
embed`'s layout, which also names the model), else every shard file in it, sorted by name.
Only one shard's vectors are in memory at a time; `.npy` shards are memory-mapped.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pinlab_data import open_npz, read_npy
from pinlab_data.contracts import Float32Array, Int64Array, PinlabDataError
from pinlab_serve.contracts import PinlabServeError

SHARD_SUFFIXES = (".parquet", ".npz", ".npy")
EMBEDDINGS_MANIFEST = "manifest.json"
SHARD_FIX = "save it again: np.save of a (rows, dim) matrix, or np.savez of pin_id and vector"


@dataclass(frozen=True)
class Shard:
    path: Path
    rows: int
    dim: int
    first_row: int
    """Row of its first vector over all shards (an `.npy` shard's first pin id)."""

    def read_ids(self) -> Int64Array:
        """Its pin ids alone (Parquet reads only that column)."""
        if self.path.suffix == ".npy":
            return np.arange(self.first_row, self.first_row + self.rows, dtype=np.int64)
        if self.path.suffix == ".npz":
            with open_npz(self.path, SHARD_FIX) as arrays:
                return np.asarray(arrays["pin_id"], dtype=np.int64)
        table = pq.read_table(self.path, columns=["pin_id"])
        return np.asarray(table.column("pin_id").to_numpy(), dtype=np.int64)

    def read(self) -> tuple[Int64Array, Float32Array]:
        """Its pin ids and (rows, dim) float32 vectors."""
        suffix = self.path.suffix
        if suffix == ".npy":
            vectors = read_npy(self.path, SHARD_FIX, mmap=True)
            ids = np.arange(self.first_row, self.first_row + self.rows, dtype=np.int64)
            return ids, np.asarray(vectors, dtype=np.float32)
        if suffix == ".npz":
            with open_npz(self.path, SHARD_FIX) as arrays:
                return (
                    np.asarray(arrays["pin_id"], dtype=np.int64),
                    np.asarray(arrays["vector"], dtype=np.float32),
                )
        table = pq.read_table(self.path, columns=["pin_id", "vector"])
        column = table.column("vector").combine_chunks()
        flat = np.asarray(column.flatten().to_numpy(), dtype=np.float32)
        return (
            np.asarray(table.column("pin_id").to_numpy(), dtype=np.int64),
            flat.reshape(self.rows, self.dim),
        )


class VectorSource(Protocol):
    """What an index is built from: shards read one after another, or rows picked out."""

    @property
    def rows(self) -> int: ...

    @property
    def dim(self) -> int: ...

    @property
    def parts(self) -> int: ...

    def __iter__(self) -> Iterator[tuple[Int64Array, Float32Array]]: ...

    def take(self, rows: Int64Array) -> tuple[Int64Array, Float32Array]: ...

    def read_ids(self) -> Int64Array: ...


class ArrayVectors:
    """Vectors already in memory, as one shard (tests, and the tuner's screening sample)."""

    def __init__(self, ids: Int64Array, vectors: Float32Array) -> None:
        if vectors.ndim != 2 or len(ids) != len(vectors):
            raise PinlabServeError(
                f"need (n, d) vectors and one id each, got {vectors.shape} and {len(ids)} ids"
            )
        self._ids = np.asarray(ids, dtype=np.int64)
        self._vectors = vectors

    @property
    def rows(self) -> int:
        return len(self._ids)

    @property
    def dim(self) -> int:
        return int(self._vectors.shape[1])

    @property
    def parts(self) -> int:
        return 1

    def __iter__(self) -> Iterator[tuple[Int64Array, Float32Array]]:
        yield self._ids, self._vectors

    def take(self, rows: Int64Array) -> tuple[Int64Array, Float32Array]:
        return self._ids[rows], np.asarray(self._vectors[rows], dtype=np.float32)

    def read_ids(self) -> Int64Array:
        return self._ids


class EmbeddingShards:
    """The shards of one build, checked to agree on the dimension; iterate to read them."""

    def __init__(self, shards: Sequence[Shard], model_id: str | None = None) -> None:
        if not shards:
            raise PinlabServeError("no embedding shards given; pass --vectors FILE_OR_DIR")
        dims = {s.dim for s in shards}
        if len(dims) > 1:
            raise PinlabServeError(
                f"the shards disagree on the dimension ({sorted(dims)}): "
                + ", ".join(f"{s.path.name}: {s.dim}" for s in shards[:4])
                + "; give shards of one model"
            )
        self.shards = list(shards)
        self.model_id = model_id

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def dim(self) -> int:
        return self.shards[0].dim

    @property
    def parts(self) -> int:
        return len(self.shards)

    def __iter__(self) -> Iterator[tuple[Int64Array, Float32Array]]:
        for shard in self.shards:
            yield shard.read()

    def take(self, rows: Int64Array) -> tuple[Int64Array, Float32Array]:
        """Pin ids and vectors at global `rows` (ascending), reading each shard once."""
        ids = np.empty(len(rows), dtype=np.int64)
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        for shard in self.shards:
            lo = np.searchsorted(rows, shard.first_row)
            hi = np.searchsorted(rows, shard.first_row + shard.rows)
            if hi > lo:
                shard_ids, vectors = shard.read()
                at = rows[lo:hi] - shard.first_row
                ids[lo:hi], out[lo:hi] = shard_ids[at], vectors[at]
        return ids, out

    def read_ids(self) -> Int64Array:
        return np.concatenate([shard.read_ids() for shard in self.shards])


def open_shards(paths: Sequence[Path]) -> EmbeddingShards:
    """Open the shards in `paths` (files or directories), reading only their headers."""
    files: list[Path] = []
    model_ids: set[str] = set()
    for path in paths:
        listed, model_id = _expand(path)
        files += listed
        if model_id:
            model_ids.add(model_id)
    if len(model_ids) > 1:
        raise PinlabServeError(
            f"the embedding directories were made by different models ({sorted(model_ids)}); "
            "index the vectors of one model"
        )
    shards: list[Shard] = []
    first = 0
    for file in files:
        rows, dim = _header(file)
        shards.append(Shard(file, rows, dim, first))
        first += rows
    return EmbeddingShards(shards, next(iter(model_ids), None))


def _expand(path: Path) -> tuple[list[Path], str | None]:
    if path.is_file():
        if path.suffix not in SHARD_SUFFIXES:
            raise PinlabServeError(
                f"{path} is not an embedding shard; give {', '.join(SHARD_SUFFIXES)} files "
                "or a directory of them"
            )
        return [path], None
    if not path.is_dir():
        raise PinlabServeError(f"{path} does not exist; give embedding shards or their folder")
    manifest = path / EMBEDDINGS_MANIFEST
    if manifest.is_file():
        try:
            image: dict[str, Any] = json.loads(manifest.read_text())["sets"]["image"]
            return [path / str(name) for name in image["shards"]], str(image["model_id"])
        except (ValueError, KeyError, TypeError) as exc:
            raise PinlabServeError(
                f"{manifest} lists no image shards (sets.image.shards, model_id); "
                "re-embed with `pinlab embed`"
            ) from exc
    found = sorted(p for p in path.iterdir() if p.suffix in SHARD_SUFFIXES)
    if not found:
        raise PinlabServeError(f"{path} holds no {', '.join(SHARD_SUFFIXES)} shards")
    return found, None


def _header(path: Path) -> tuple[int, int]:
    """(rows, dim) of a shard, from its header; malformed shards raise, naming the fix."""
    try:
        if path.suffix == ".npy":
            shape = read_npy(path, SHARD_FIX, mmap=True).shape
        elif path.suffix == ".npz":
            with open_npz(path, SHARD_FIX) as arrays:
                missing = {"pin_id", "vector"} - set(arrays.files)
                if missing:
                    raise PinlabServeError(
                        f"{path} lacks the arrays {sorted(missing)}; save pin_id and vector"
                    )
                shape = arrays["vector"].shape
                if arrays["pin_id"].shape != shape[:1]:
                    raise PinlabServeError(
                        f"{path} has {arrays['pin_id'].shape[0]} pin ids for {shape[0]} vectors"
                    )
        else:
            schema = pq.read_schema(path)
            rows = pq.ParquetFile(path).metadata.num_rows
            return rows, _parquet_dim(path, schema)
    except (PinlabDataError, PinlabServeError):
        raise
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise PinlabServeError(f"{path} is not a readable shard ({exc})") from exc
    if len(shape) != 2 or shape[1] == 0:
        raise PinlabServeError(f"{path} holds an array of shape {shape}; shards are (rows, dim)")
    return int(shape[0]), int(shape[1])


def _parquet_dim(path: Path, schema: pa.Schema) -> int:
    names = set(schema.names)
    if not {"pin_id", "vector"} <= names:
        raise PinlabServeError(
            f"{path} has columns {sorted(names)}; a shard needs pin_id and vector "
            "(a fixed-size list of float32)"
        )
    vector = schema.field("vector").type
    if not pa.types.is_fixed_size_list(vector) or not pa.types.is_floating(vector.value_type):
        raise PinlabServeError(
            f"{path}'s vector column is {vector}; it must be a fixed-size list of float32"
        )
    if not pa.types.is_integer(schema.field("pin_id").type):
        raise PinlabServeError(f"{path}'s pin_id column is {schema.field('pin_id').type}")
    return int(vector.list_size)
