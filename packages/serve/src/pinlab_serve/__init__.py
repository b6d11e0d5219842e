"""pinlab_serve: the FAISS pin index and the HTTP service over a run directory."""

from pinlab_serve._app import check_run, create_app, run_server
from pinlab_serve._catalog import RunFiles
from pinlab_serve._index import FLAT, HNSW, PinIndex, embed_image_file
from pinlab_serve.contracts import (
    HNSW_THRESHOLD,
    MANIFEST_FILE,
    Diversify,
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
    "Diversify",
    "Hit",
    "IndexManifest",
    "PinIndex",
    "PinNotFoundError",
    "PinlabServeError",
    "RunFiles",
    "ServeSettings",
    "check_run",
    "create_app",
    "embed_image_file",
    "run_server",
]
