"""Public types of pinlab_serve: the index manifest, search hits and the service settings."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal, NamedTuple, Protocol

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from pinlab_data.contracts import MAX_ID, Float32Array, Int64Array

MANIFEST_FILE = "index.json"
INDEX_FILE_PREFIX = "index-"
INDEX_FILE_SUFFIX = ".faiss"
ADMIN_TOKEN_MIN = 16
HNSW_THRESHOLD = 50_000
"""Catalogues with at least this many pins get an HNSW graph; smaller ones exact search."""
Runtime = Literal["torch", "onnx", "onnx-int8"]
"""`pinlab_models.Runtime`, spelled here so the settings load without importing torch (a test
checks that the two agree)."""

Id = Annotated[int, Field(ge=0, le=MAX_ID)]
"""A pin or user id in a request: the data's ids are non-negative int64, so a larger one is a
422 (it once overflowed NumPy into a 500)."""
IndexKind = Literal["flat", "hnsw", "ivf-pq", "opq-ivf-pq", "hnsw-pq"]
"""Index kinds `pinlab index build --kind` knows: exact, HNSW over full vectors, and three over
product-quantised codes (an inverted file, the same after an OPQ rotation, an HNSW graph)."""
INDEX_KINDS: tuple[IndexKind, ...] = ("flat", "hnsw", "ivf-pq", "opq-ivf-pq", "hnsw-pq")
PQ_KINDS: tuple[IndexKind, ...] = ("ivf-pq", "opq-ivf-pq", "hnsw-pq")


class PinlabServeError(ValueError):
    """Bad input to the index or service: unknown id, corrupt index, wrong dimensions."""


class PinNotFoundError(PinlabServeError):
    """A pin or user id that is not in the catalogue (HTTP 404)."""


class PayloadTooLargeError(PinlabServeError):
    """An upload over the byte or pixel limit (HTTP 413)."""


class UnsupportedMediaError(PinlabServeError):
    """An upload that is not a multipart image (HTTP 415)."""


class UnauthorizedError(PinlabServeError):
    """An admin request without the configured bearer token (HTTP 401)."""


class ForbiddenError(PinlabServeError):
    """An admin request while no admin token is configured (HTTP 403)."""


class ModelNotFoundError(PinlabServeError):
    """A request for a model the served run does not have, e.g. no generator (HTTP 404)."""


class UnprocessableError(PinlabServeError):
    """Parameters that parse but cannot be served together, e.g. an unreachable target (422)."""


DiversifyMethod = Literal["mmr", "dpp", "calibrated"]
TRADEOFF_GRID = tuple(round(0.1 * i, 1) for i in range(11))
"""Trade-offs a target searches, smallest first (Pinterest's self-adjusting diversity)."""


class Diversify(BaseModel):
    """How a request re-ranks its candidates; `method` None keeps the relevance order.

    `mmr` and `dpp` spread the list over the embedding space (and, for MMR, categories and
    creator groups); `calibrated` (Steck 2018) matches the category mix of the user's history.
    Either `tradeoff` (0 keeps the order, 1 is most re-ranking) or `target`: for `mmr` and
    `dpp` the least category diversity (share of pairs in different categories, 0..1), for
    `calibrated` the most miscalibration (KL, >= 0); the smallest trade-off on
    `TRADEOFF_GRID` that meets it is applied.
    """

    model_config = {"frozen": True}

    method: DiversifyMethod | None = None
    tradeoff: float = Field(default=0.0, ge=0, le=1)
    target: float | None = Field(default=None, ge=0)


class RankQuery(BaseModel):
    """The query string of every ranked endpoint, validated as one model.

    One model, not one FastAPI parameter per field: FastAPI re-inspects each parameter's
    annotation on every request, 37% of a `similar` route's time under cProfile.
    """

    k: int = Field(default=10, ge=1, le=1000, description="Number of results.")
    category: str | None = Field(
        default=None, min_length=1, max_length=100, description="Only pins of this category."
    )
    exclude: list[Id] = Field(
        default_factory=list,
        max_length=1000,
        description="Pin ids never to return (repeat the key).",
    )
    diversify: DiversifyMethod | None = Field(
        default=None,
        description="Re-rank the candidates: mmr, dpp or calibrated (with tradeoff or target).",
    )
    tradeoff: float | None = Field(
        default=None, ge=0, le=1, description="0 keeps the relevance order; 1 re-ranks most."
    )
    target: float | None = Field(
        default=None,
        ge=0,
        description="Instead of tradeoff, the smallest trade-off that meets it: mmr, dpp: "
        "least category diversity (0..1); calibrated: most miscalibration (KL).",
    )
    diversity: float = Field(
        default=0.0, ge=0, le=1, description="0: by score; 1: spread across categories/creators."
    )

    def diversification(self) -> Diversify:
        """The request's re-ranking; `diversity=x` is the older spelling of mmr at trade-off x.

        Raises UnprocessableError (422) for parameters that parse but do not go together.
        """
        method, tradeoff, target = self.diversify, self.tradeoff, self.target
        if method is None:
            if tradeoff is not None or target is not None:
                raise UnprocessableError(
                    "tradeoff and target need diversify=mmr, dpp or calibrated"
                )
            return (
                Diversify(method="mmr", tradeoff=self.diversity)
                if self.diversity > 0
                else (Diversify())
            )
        if self.diversity > 0:
            raise UnprocessableError(
                f"give diversify={method} with tradeoff or target, not diversity as well "
                "(diversity=x means diversify=mmr&tradeoff=x)"
            )
        if (tradeoff is None) == (target is None):
            raise UnprocessableError(
                f"diversify={method} needs exactly one of tradeoff (0 to 1) or target "
                "(mmr, dpp: category diversity 0 to 1; calibrated: miscalibration 0 or more)"
            )
        if target is not None and method != "calibrated" and target > 1:
            raise UnprocessableError(
                f"target {target} is a category diversity (share of pairs in different "
                "categories); allowed range 0 to 1"
            )
        return Diversify(method=method, tradeoff=tradeoff or 0.0, target=target)


class TextQuery(RankQuery):
    """`/v1/search/text`'s query string: the words and the ranking."""

    q: str = Field(min_length=1, max_length=500, description="What to find.")


class Latency(BaseModel):
    """Single-query search time, one FAISS thread, as a serving worker runs it."""

    p50_ms: float
    p99_ms: float
    queries: int


class IndexCandidate(BaseModel):
    """One index the tuner measured: its settings and what they gave on the tuning queries."""

    kind: IndexKind
    factory: str = Field(description="FAISS factory string of the index.")
    params: dict[str, int] = Field(
        description="Build settings (nlist, m, M...) and the search breadth it settled on "
        "(nprobe or ef_search)."
    )
    memory_bytes: int = Field(description="Estimated: codes + ids + centroids, tables, graph.")
    stage: Literal["screen", "full"] = Field(
        description="screen: built on a sample of the vectors to rule it out cheaply; "
        "full: built on all of them."
    )
    recall_at_10: float = Field(description="On the tuning queries, at `params`' breadth.")
    recall_low: float = Field(description="Lower end of recall_at_10's 95% interval.")
    meets: bool
    build_seconds: float
    latency: Latency | None = None


class IndexTuning(BaseModel):
    """What `pinlab index build --target-recall/--max-memory` tried and why it chose its index.

    Recall@10 is against exact search over the same vectors; a query is a pin of the index and
    its own id is left out of both lists. The tuning queries choose everything; the fresh
    queries, drawn apart from them, only check the choice.
    """

    target_recall: float
    max_memory_bytes: int | None
    prefer: Literal["memory", "latency"]
    kinds: list[IndexKind]
    seed: int
    tuning_queries: int
    fresh_queries: int
    candidates: list[IndexCandidate]
    chosen: int = Field(description="Position of the chosen candidate in `candidates`.")
    fresh_recall_at_10: float = Field(description="The chosen index on the fresh queries.")
    fresh_recall_low: float
    rss_growth_bytes: int = Field(
        description="How much the building process's resident memory grew while it built "
        "the chosen index (training data and the index itself)."
    )
    seconds: float


class IndexManifest(BaseModel):
    """`index.json`: describes the index file it names, enough to refuse a mismatched one.

    The manifest is the commit point of a save: it names a content-addressed index file, so a
    save killed at any moment leaves the previous manifest pointing at the previous file.
    """

    model_id: str = Field(description="Checksum-derived id of the encoder that made the vectors.")
    dim: int
    count: int = Field(description="Searchable pins (stored vectors minus tombstones).")
    metric: str = "inner_product"
    kind: str = Field(
        description="FAISS factory string: 'IDMap2,Flat', 'IDMap2,HNSW32', 'IVF1024,PQ16', "
        "'OPQ16,IVF1024,PQ16' or 'IDMap,HNSW32_PQ16' (PQ kinds keep only codes)."
    )
    file: str = Field(default="index.faiss", description="Index file name in the same directory.")
    checksum: str = Field(description="SHA-256 of the index file.")
    created: str = Field(description="UTC creation time, ISO 8601.")
    params: dict[str, int | float] = Field(
        default_factory=dict,
        description="Build and search parameters (HNSW: M, ef_construction, ef_search; "
        "the size threshold that chose the kind; IVF: nlist, m, nbits, nprobe).",
    )
    memory_bytes: int | None = Field(
        default=None, description="Estimated memory of the loaded index (PQ kinds)."
    )
    latency: Latency | None = Field(
        default=None, description="Single-query latency measured at build time (PQ kinds)."
    )
    tuning: IndexTuning | None = Field(
        default=None, description="The tuner's candidates and checks, when it chose the index."
    )
    recall_at_10: float | None = Field(
        default=None, description="Recall@10 against exact search, measured at build time."
    )
    tombstones: list[int] = Field(
        default_factory=list,
        description="Removed pins still in an HNSW graph (graphs cannot drop nodes); never "
        "returned by search, and gone once the graph is compacted (`save` does that).",
    )

    @field_validator("file")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        # The manifest chooses which file is read: keep it inside the index directory.
        if not value or "/" in value or "\\" in value or value in {".", ".."}:
            raise ValueError(
                f"must name a file inside the index directory (no path), got {value!r}"
            )
        return value


class Hit(NamedTuple):
    """A pin and its score. A tuple, not a model: a re-ranked request builds 200 of them, and
    validating each cost more than the re-ranking."""

    pin_id: int
    score: float


class ServeSettings(BaseSettings):
    """Settings of `pinlab serve` (environment: PINLAB_SERVE_*; the CLI passes its options)."""

    model_config = SettingsConfigDict(env_prefix="PINLAB_SERVE_", extra="forbid")

    run_dir: Path | None = Field(
        default=None, description="Run directory to serve (the app factory's default)."
    )
    host: str = Field(
        default="127.0.0.1",
        min_length=1,  # "" binds every interface
        description="Bind address; loopback by default.",
    )
    port: int = Field(default=8000, ge=0, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    max_upload_bytes: int = Field(default=10 * 2**20, ge=1024, le=200 * 2**20)
    max_pixels: int = Field(
        default=40_000_000, ge=64, le=40_000_000, description="Largest image, width x height."
    )
    # NoDecode: the environment's value is split below, not parsed as JSON only.
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origins allowed by CORS, as scheme://host[:port] (in the environment, "
        "comma-separated or a JSON list); empty turns CORS off.",
    )
    search_backend: Literal["faiss", "numpy"] = Field(
        default="faiss", description="'numpy' is the brute-force baseline for benchmarks."
    )
    runtime: Runtime = Field(
        default="torch",
        description="What embeds query images and texts: eager PyTorch, or ONNX Runtime on the "
        "run's export (`pinlab export onnx`), float32 or int8; threads: `torch_threads`.",
    )
    batch_window_ms: float = Field(
        default=2.0, ge=0, le=100, description="How long image searches wait to share a batch."
    )
    max_batch: int = Field(default=32, ge=1, le=1024)
    search_threads: int = Field(
        default=1,
        ge=1,
        le=256,
        description="FAISS OpenMP threads; one query per call gains nothing from more, and "
        "idle OpenMP workers spin on the cores the event loop needs.",
    )
    torch_threads: int = Field(
        default=1,
        ge=1,
        le=256,
        description="PyTorch intra-op threads (the encoders, the recommender); a 32-pixel "
        "query gains nothing from more, and each extra thread competes with the event loop.",
    )
    blas_threads: int = Field(
        default=1,
        ge=1,
        le=256,
        description="BLAS threads (NumPy's matrix products); one, for the same reason.",
    )
    candidates: int = Field(
        default=200, ge=10, le=5000, description="Candidates fetched for a diversity re-rank."
    )
    recommender: str | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="The trained recommender that answers /v1/users/{id}/recommendations (a "
        "name under RUN/recommender/); default: the best by eval.json's ndcg@10. Sessions use "
        "it too where it reads histories, else the best one that does.",
    )
    admin_token: SecretStr | None = Field(
        default=None,
        description="Bearer token POST /v1/admin/reload requires; unset: the endpoint is off.",
    )
    generate_max_images: int = Field(
        default=8, ge=1, le=64, description="Most images one POST /v1/generate may ask for."
    )
    generate_max_steps: int = Field(
        default=50, ge=1, le=200, description="Most sampling steps one generation may ask for."
    )
    generate_budget_s: float = Field(
        default=30.0,
        gt=0,
        description="A generation estimated (from the warm-up's time per image-step) to take "
        "longer is refused before it starts.",
    )
    watch_interval_s: float = Field(
        default=0.0,
        ge=0,
        description="Poll the index manifest this often and swap in a new index; 0: off.",
    )

    @field_validator("admin_token")
    @classmethod
    def _strong_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < ADMIN_TOKEN_MIN:
            raise ValueError(
                f"the admin token must be at least {ADMIN_TOKEN_MIN} characters; make one "
                "with `python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
            )
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):  # from the environment
            text = value.strip()
            if text.startswith("["):
                try:
                    return json.loads(text)
                except json.JSONDecodeError as exc:
                    raise ValueError(
                        f"{text!r} is no JSON list ({exc.msg}); write the origins "
                        "comma-separated, or as a JSON list of strings"
                    ) from None
            return [origin.strip() for origin in text.split(",") if origin.strip()]
        return value

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        if "*" in value:
            raise ValueError("a wildcard CORS origin is unsafe; list the origins you trust")
        for origin in value:
            # A browser's Origin header has no path, so 'http://a.example/' would never match.
            if not re.fullmatch(r"[a-z][a-z0-9+.-]*://[^/?#\s]+", origin):
                raise ValueError(
                    f"{origin!r} is not an origin: write scheme://host[:port], with no path or "
                    "trailing slash, e.g. https://app.example"
                )
        return value


class Searcher(Protocol):
    """What the service searches with: `PinIndex` (FAISS) or the NumPy brute-force baseline."""

    @property
    def dim(self) -> int: ...

    def __len__(self) -> int: ...

    def vector(self, pin_id: int) -> Float32Array: ...

    def vectors(self, pin_ids: Int64Array) -> Float32Array: ...

    def search(
        self,
        queries: Float32Array,
        k: int,
        exclude: Sequence[int | None] | None = None,
        *,
        allow: Int64Array | None = None,
        deny: Sequence[int] = (),
    ) -> list[list[Hit]]: ...


# HTTP bodies of the service (`/v1`).


class PinOut(BaseModel):
    """A pin's metadata as the service shows it."""

    pin_id: int
    external_id: str | None = Field(
        default=None, description="The id the loaded source gave the pin; None: pin_id is it."
    )
    caption: str
    category: str
    creator_id: int
    creator_group: str
    image_url: str | None = Field(description="Where GET fetches the pin's PNG; None: no image.")


class PinHit(PinOut):
    score: float = Field(description="Cosine similarity, or the recommender's score.")


class SearchResponse(BaseModel):
    query: dict[str, str | int | float | None] = Field(description="What was searched for.")
    mode: str = Field(
        description="'image', 'similar', 'image-text' (aligned model) or 'caption' (MiniLM "
        "over pin captions)."
    )
    model_id: str
    runtime: Runtime | None = Field(
        default=None,
        description="What embedded the query (torch, onnx, onnx-int8); none for similar pins, "
        "whose vector is read from the index.",
    )
    index: str = Field(description="Index kind that answered, e.g. 'IDMap2,Flat' or 'numpy'.")
    diversity: float = Field(description="The re-ranking trade-off applied (0: none).")
    diversify: DiversifyMethod | None = Field(
        default=None, description="The re-ranker applied, if any."
    )
    target: float | None = Field(default=None, description="The target it met, if one was given.")
    hits: list[PinHit]


class RecommendationResponse(BaseModel):
    user_id: int
    user_external_id: str | None = Field(
        default=None,
        description="The user's id in the loaded source (null on the synthetic world).",
    )
    model: str = Field(description="Recommender that scored (the run's best by ndcg@10).")
    diversity: float = Field(description="The re-ranking trade-off applied (0: none).")
    diversify: DiversifyMethod | None = Field(
        default=None, description="The re-ranker applied, if any."
    )
    target: float | None = Field(default=None, description="The target it met, if one was given.")
    seen_excluded: int = Field(description="Pins the user engaged with, never recommended.")
    hits: list[PinHit]


class SessionRequest(RankQuery):
    """POST /v1/recommendations/session: a visitor the model never trained on, by the pins
    they engaged with (oldest first), and the ranked endpoints' options."""

    model_config = ConfigDict(extra="forbid")

    history: list[Id] = Field(
        min_length=1,
        max_length=10_000,
        description="Pin ids the visitor engaged with, oldest first. Unknown ids are ignored "
        "with a warning (none known: 422); a history longer than the model's window keeps its "
        "most recent pins, and the response says so.",
    )


class SessionResponse(BaseModel):
    model: str = Field(description="Recommender that scored: the run's best that reads histories.")
    history_used: int = Field(description="Pins of the history the model read.")
    unknown_ids: list[int] = Field(description="History ids not in the catalogue, ignored.")
    truncated: bool = Field(description="Whether the history was cut to the model's window.")
    window: int | None = Field(description="Most recent pins the model reads; null: all.")
    warnings: list[str] = Field(description="What was ignored or cut, in words.")
    diversity: float = Field(description="The re-ranking trade-off applied (0: none).")
    diversify: DiversifyMethod | None = Field(default=None, description="The re-ranker applied.")
    target: float | None = Field(default=None, description="The target it met, if one was given.")
    hits: list[PinHit]


class UsersResponse(BaseModel):
    user_ids: list[int]
    external_ids: list[str | None] = Field(
        default_factory=list,
        description="Each user's id in the loaded source, in the order of user_ids (null on the "
        "synthetic world).",
    )
    total: int


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: one line saying what was wrong and how to fix it."""

    error: str
    detail: list[dict[str, str]] | None = None


class HealthResponse(BaseModel):
    status: str
    ready: bool
    detail: str | None = None


class ReloadResponse(BaseModel):
    previous: IndexManifest
    current: IndexManifest
    swapped: bool


class GenerateRequest(BaseModel):
    """POST /v1/generate: images of a prompt from the run's text-to-image generator."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=200, description="What to draw.")
    n: int = Field(default=4, ge=1, le=64, description="Images (the service may allow fewer).")
    steps: int = Field(default=25, ge=1, le=200, description="Sampling steps (idem).")
    guidance: float = Field(default=3.0, ge=0, le=20, description="Classifier-free guidance.")
    autoguidance: float | None = Field(
        default=None, ge=0, le=20,
        description="The early-epoch guide's weight (1: none; default: the generator's own).",
    )  # fmt: skip
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="The same seed, the same images.")
    infer_category: bool = Field(
        default=True,
        description="Also condition on the category the generator's caption prior infers from "
        "the text, where it is sure (false: the text alone).",
    )


class GenerateResponse(BaseModel):
    """Generated images as PNG data URLs; each PNG's text chunks say it was generated, by which
    model, from which prompt and seed."""

    model_id: str
    text: str
    n: int
    steps: int
    guidance: float
    autoguidance: float = Field(description="The guide's weight used (1: the generator has none).")
    category: str | None = Field(
        default=None, description="The category inferred from the text and conditioned on."
    )
    seed: int
    seconds: float
    estimate_s: float = Field(description="What the budget check expected it to take.")
    images: list[str] = Field(description="data:image/png;base64,... one per image.")
