"""pinlab_serve: the FAISS pin index (and, later, the HTTP service)."""

from pinlab_serve._index import PinIndex, embed_image_file
from pinlab_serve.contracts import INDEX_FILE, MANIFEST_FILE, Hit, IndexManifest, PinlabServeError

__all__ = [
    "INDEX_FILE",
    "MANIFEST_FILE",
    "Hit",
    "IndexManifest",
    "PinIndex",
    "PinlabServeError",
    "embed_image_file",
]
