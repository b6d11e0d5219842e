"""pinlab_serve: the FAISS pin index and the HTTP service over a run directory."""

from pinlab_serve._app import check_run, create_app, http_url, listen, run_server, serve_app
from pinlab_serve._catalog import RunFiles
from pinlab_serve._clustered import ClusteredVectors
from pinlab_serve._index import FLAT, HNSW, PinIndex, embed_image_file
from pinlab_serve._pq import PQSpec, build_pq, single_query_latency
from pinlab_serve._shards import ArrayVectors, EmbeddingShards, VectorSource, open_shards
from pinlab_serve._tuner import (
    DEFAULT_TARGET_RECALL,
    Queries,
    check_target_recall,
    format_bytes,
    recall_per_query,
    sample_queries,
    summarise,
    tune,
)
from pinlab_serve.contracts import (
    HNSW_THRESHOLD,
    INDEX_KINDS,
    MANIFEST_FILE,
    PQ_KINDS,
    Diversify,
    Hit,
    IndexCandidate,
    IndexKind,
    IndexManifest,
    IndexTuning,
    Latency,
    PinlabServeError,
    PinNotFoundError,
    ServeSettings,
)

__all__ = [
    "DEFAULT_TARGET_RECALL",
    "FLAT",
    "HNSW",
    "HNSW_THRESHOLD",
    "INDEX_KINDS",
    "MANIFEST_FILE",
    "PQ_KINDS",
    "ArrayVectors",
    "ClusteredVectors",
    "Diversify",
    "EmbeddingShards",
    "Hit",
    "IndexCandidate",
    "IndexKind",
    "IndexManifest",
    "IndexTuning",
    "Latency",
    "PQSpec",
    "PinIndex",
    "PinNotFoundError",
    "PinlabServeError",
    "Queries",
    "RunFiles",
    "ServeSettings",
    "VectorSource",
    "build_pq",
    "check_run",
    "check_target_recall",
    "create_app",
    "embed_image_file",
    "format_bytes",
    "http_url",
    "listen",
    "open_shards",
    "recall_per_query",
    "run_server",
    "sample_queries",
    "serve_app",
    "single_query_latency",
    "summarise",
    "tune",
]
