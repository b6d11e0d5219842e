"""pinlab_serve: the FAISS pin index and the HTTP service over a run directory."""

from pinlab_serve._index import FLAT, HNSW, PinIndex, embed_image_file
from pinlab_serve.contracts import (
    HNSW_THRESHOLD,
    MANIFEST_FILE,
    Hit,
    IndexManifest,
    PinlabServeError,
    PinNotFoundError,
    ServeSettings,
)

__all__ = [
    "FLAT",
    "HNSW",
    "HNSW_THRESHOLD",
    "MANIFEST_FILE",
    "Hit",
    "IndexManifest",
    "PinIndex",
    "PinNotFoundError",
    "PinlabServeError",
    "ServeSettings",
    "embed_image_file",
]
