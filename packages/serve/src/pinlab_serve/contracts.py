"""Public types of pinlab_serve: the index manifest and search hits."""

from __future__ import annotations

from pydantic import BaseModel, Field

INDEX_FILE = "index.faiss"
MANIFEST_FILE = "index.json"


class PinlabServeError(ValueError):
    """Bad input to the index or service: unknown id, corrupt index, wrong dimensions."""


class IndexManifest(BaseModel):
    """`index.json`, written beside `index.faiss`: enough to refuse a mismatched index."""

    model_id: str = Field(description="Checksum-derived id of the encoder that made the vectors.")
    dim: int
    count: int
    metric: str = "inner_product"
    kind: str = Field(description="FAISS factory string, e.g. 'IDMap2,Flat'.")
    checksum: str = Field(description="SHA-256 of index.faiss.")
    created: str = Field(description="UTC creation time, ISO 8601.")


class Hit(BaseModel):
    pin_id: int
    score: float
