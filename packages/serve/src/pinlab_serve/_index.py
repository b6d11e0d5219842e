"""The pin index: exact inner-product search over L2-normalised embeddings, keyed by pin id."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np

from pinlab_data._images import load_image
from pinlab_data.contracts import Float32Array, Int64Array
from pinlab_serve.contracts import INDEX_FILE, MANIFEST_FILE, Hit, IndexManifest, PinlabServeError

if TYPE_CHECKING:
    # Importing pinlab_models runs its __init__, which loads torch (~2 s); loading and
    # searching an index should not pay for that.
    from pinlab_models.contracts import ImageEncoder

KIND = "IDMap2,Flat"
METRIC = "inner_product"
_REBUILD = "build one with `pinlab index build --run RUN`"


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


def _check_k(k: int) -> None:
    if k <= 0:
        raise PinlabServeError(f"k must be a positive number of results, got {k}")


def _write_atomic(path: Path, data: bytes) -> None:
    """Write via a temp file in the same directory and rename, so readers never see a torn file."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        # mkstemp makes owner-only files; the index is meant to be read by the serving process.
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class PinIndex:
    """Pin embeddings in a FAISS `IndexIDMap2(IndexFlatIP)`: exact cosine search by pin id.

    IDMap2 (not IDMap) keeps the id -> row map both ways, so a pin's vector can be fetched by
    id (`vector`, `similar`) and pins can later be added or removed without a rebuild.
    """

    def __init__(
        self, index: Any, model_id: str, created: str, manifest: IndexManifest | None = None
    ) -> None:
        """Wrap an existing FAISS index; use `build` or `load` instead of calling this."""
        self._index = index
        self._model_id = model_id
        self._created = created
        self._manifest = manifest

    @classmethod
    def build(cls, embeddings: Float32Array, pin_ids: Int64Array, model_id: str) -> PinIndex:
        """Index `embeddings[i]` under `pin_ids[i]`; rows are re-normalised."""
        vectors = _unit_rows(embeddings, "embeddings")
        ids = np.asarray(pin_ids)
        if ids.ndim != 1 or ids.shape[0] != vectors.shape[0]:
            raise PinlabServeError(
                f"pin_ids must be a 1-D array with one id per embedding row "
                f"({vectors.shape[0]}), got shape {ids.shape}"
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
        if not model_id:
            raise PinlabServeError("model_id must be a non-empty string")
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
        index.add_with_ids(vectors, ids)
        return cls(index, model_id, datetime.now(UTC).isoformat())

    def __len__(self) -> int:
        return int(self._index.ntotal)

    @property
    def dim(self) -> int:
        return int(self._index.d)

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def manifest(self) -> IndexManifest:
        """The manifest `save` writes (checksum over the serialised index), computed once."""
        if self._manifest is None:
            self._manifest = self._manifest_for(self._serialize())
        return self._manifest

    def _serialize(self) -> bytes:
        return bytes(faiss.serialize_index(self._index))

    def _manifest_for(self, data: bytes) -> IndexManifest:
        return IndexManifest(
            model_id=self._model_id,
            dim=self.dim,
            count=len(self),
            metric=METRIC,
            kind=KIND,
            checksum=hashlib.sha256(data).hexdigest(),
            created=self._created,
        )

    def vector(self, pin_id: int) -> Float32Array:
        """The stored (normalised) embedding of `pin_id`, shape (d,)."""
        try:
            vec = self._index.reconstruct(int(pin_id))
        except RuntimeError as exc:
            # IDMap2 raises a bare RuntimeError("key not found") for unknown ids.
            raise PinlabServeError(
                f"pin {pin_id} is not in the index; it holds {len(self)} pins built by model "
                f"{self._model_id}, so rebuild the index if the pin is new"
            ) from exc
        return np.asarray(vec, dtype=np.float32)

    def search(
        self, queries: Float32Array, k: int, exclude: Sequence[int | None] | None = None
    ) -> list[list[Hit]]:
        """Top-`k` pins per query row by cosine, best first; `exclude[i]` is dropped from row i.

        `k` larger than the index is clipped, so rows may hold fewer than `k` hits.
        """
        _check_k(k)
        vectors = _unit_rows(queries, "queries", self.dim)
        if exclude is not None and len(exclude) != vectors.shape[0]:
            raise PinlabServeError(
                f"exclude must give one id (or None) per query: {len(exclude)} for "
                f"{vectors.shape[0]} queries"
            )
        # One extra candidate makes room for the excluded pin if it ranks in the top k.
        fetch = min(k + (exclude is not None), len(self))
        scores, ids = self._index.search(vectors, fetch)
        results: list[list[Hit]] = []
        for row in range(vectors.shape[0]):
            skip = None if exclude is None else exclude[row]
            hits = [
                Hit(pin_id=pid, score=score)
                for pid, score in zip(ids[row].tolist(), scores[row].tolist(), strict=True)
                if pid not in (-1, skip)
            ]
            results.append(hits[:k])
        return results

    def similar(self, pin_id: int, k: int) -> list[Hit]:
        """The `k` pins most similar to `pin_id`, best first, never `pin_id` itself."""
        _check_k(k)
        return self.search(self.vector(pin_id)[None, :], k, exclude=[int(pin_id)])[0]

    def save(self, directory: Path) -> IndexManifest:
        """Write `index.faiss`, then `index.json`, each atomically; return the manifest.

        The manifest goes second and carries the index checksum, so a crash between the two
        renames leaves a new index beside the old manifest: `load` then refuses it with a
        checksum mismatch instead of serving vectors under the wrong description.
        """
        directory.mkdir(parents=True, exist_ok=True)
        data = self._serialize()
        manifest = self._manifest_for(data)
        _write_atomic(directory / INDEX_FILE, data)
        _write_atomic(
            directory / MANIFEST_FILE, (manifest.model_dump_json(indent=2) + "\n").encode()
        )
        self._manifest = manifest
        return manifest

    @classmethod
    def load(cls, directory: Path, expect_model_id: str | None = None) -> PinIndex:
        """Read an index written by `save`, refusing anything that does not check out.

        Raises PinlabServeError when the files are missing, the manifest is malformed, the
        index bytes do not match the manifest checksum (corrupt, or a save interrupted
        between its two writes), the index disagrees with the manifest, or the index was
        built by a model other than `expect_model_id`.
        """
        index_path, manifest_path = directory / INDEX_FILE, directory / MANIFEST_FILE
        if not index_path.is_file() or not manifest_path.is_file():
            raise PinlabServeError(f"no index at {directory}; {_REBUILD}")
        try:
            manifest = IndexManifest.model_validate(json.loads(manifest_path.read_text()))
        except ValueError as exc:
            # Covers JSONDecodeError, UnicodeDecodeError and pydantic's ValidationError.
            raise PinlabServeError(
                f"index manifest {manifest_path} is malformed ({type(exc).__name__}); "
                f"delete {directory} and {_REBUILD}"
            ) from exc
        if expect_model_id is not None and manifest.model_id != expect_model_id:
            raise PinlabServeError(
                f"index at {directory} was built by model {manifest.model_id} but the serving "
                f"model is {expect_model_id}; rebuild the index with the serving model"
            )
        if manifest.kind != KIND or manifest.metric != METRIC:
            raise PinlabServeError(
                f"index at {directory} is {manifest.kind}/{manifest.metric}; only "
                f"{KIND}/{METRIC} is supported, so {_REBUILD}"
            )
        data = index_path.read_bytes()
        if hashlib.sha256(data).hexdigest() != manifest.checksum:
            raise PinlabServeError(
                f"{index_path} does not match the checksum in {manifest_path}: the index is "
                f"corrupt or a save was interrupted; {_REBUILD}"
            )
        try:
            index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        except RuntimeError as exc:
            raise PinlabServeError(
                f"{index_path} is not a readable FAISS index; {_REBUILD}"
            ) from exc
        if not isinstance(index, faiss.IndexIDMap2):
            raise PinlabServeError(f"{index_path} holds a {type(index).__name__}; {_REBUILD}")
        if index.d != manifest.dim or index.ntotal != manifest.count:
            raise PinlabServeError(
                f"{index_path} holds {index.ntotal} vectors of dimension {index.d} but the "
                f"manifest says {manifest.count} of dimension {manifest.dim}; {_REBUILD}"
            )
        return cls(index, manifest.model_id, manifest.created, manifest)


def embed_image_file(path: Path, encoder: ImageEncoder) -> Float32Array:
    """Embed one image file as a (1, d) row; unreadable files raise PinlabDataError."""
    image = load_image(path, encoder.image_size)
    return encoder.embed(image[None, ...])
