"""The FastAPI app: routes under /v1, health, metrics, the web page and error bodies."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import io
import json
import logging
import os
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, TypeVar, get_origin

import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pinlab_data import MAX_ID, PinlabDataError
from pinlab_data.contracts import Float32Array, ImageArray, Int64Array
from pinlab_serve._batcher import MicroBatcher
from pinlab_serve._catalog import RunFiles
from pinlab_serve._service import PinService
from pinlab_serve.contracts import (
    ErrorBody,
    ForbiddenError,
    GenerateRequest,
    GenerateResponse,
    HealthResponse,
    ModelNotFoundError,
    PayloadTooLargeError,
    PinlabServeError,
    PinNotFoundError,
    PinOut,
    RankQuery,
    RecommendationResponse,
    ReloadResponse,
    Runtime,
    SearchResponse,
    ServeSettings,
    SessionRequest,
    SessionResponse,
    TextQuery,
    UnauthorizedError,
    UnprocessableError,
    UnsupportedMediaError,
    UsersResponse,
)

log = logging.getLogger("pinlab.serve")

Q = TypeVar("Q", bound=BaseModel)


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """OpenAPI `parameters` for a query model that `_query` reads (FastAPI does not see it)."""
    schema = model.model_json_schema()
    required = set(schema.get("required", []))
    return [
        {
            "name": name,
            "in": "query",
            "required": name in required,
            "description": field.get("description", ""),
            "schema": {key: v for key, v in field.items() if key != "description"},
        }
        for name, field in schema["properties"].items()
    ]


def _query(request: Request, model: type[Q]) -> Q:
    """The request's query string validated as `model`; a bad value is the usual 422.

    Read here rather than declared as FastAPI parameters: FastAPI re-inspects every declared
    parameter's annotation on each request, 37% of a `similar` route's time (cProfile in the
    server under `bench serve` load).
    """
    params = request.query_params
    data: dict[str, Any] = dict(params)
    for name in _LIST_FIELDS[model]:
        data[name] = params.getlist(name)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [{**e, "loc": ("query", *e["loc"])} for e in exc.errors()]
        raise RequestValidationError(errors) from None


_LIST_FIELDS: dict[type[BaseModel], list[str]] = {
    model: [n for n, f in model.model_fields.items() if get_origin(f.annotation) is list]
    for model in (RankQuery, TextQuery)
}
RANKED = {"parameters": _query_parameters(RankQuery)}
TEXT_RANKED = {"parameters": _query_parameters(TextQuery)}
PinId = Annotated[int, PathParam(ge=0, le=MAX_ID)]
UserId = Annotated[int, PathParam(ge=0, le=MAX_ID)]
MULTIPART_SLACK = 64 * 1024
"""Bytes a multipart body may carry beyond the file itself (boundaries, headers)."""
UPLOAD_TYPES = "image/jpeg, image/png, image/webp, image/bmp, image/gif"
"""The upload formats the schema names; any image/* part is tried by Pillow."""
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 404, 413, 415, 422, 503)
}
_STATUS = {
    UnauthorizedError: 401,
    ForbiddenError: 403,
    PinNotFoundError: 404,
    ModelNotFoundError: 404,
    PayloadTooLargeError: 413,
    UnsupportedMediaError: 415,
    UnprocessableError: 422,
}
ADMIN_OFF = (
    "admin endpoints are off; set PINLAB_SERVE_ADMIN_TOKEN (16+ characters) before starting "
    "the server and send it as 'Authorization: Bearer TOKEN'"
)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
_STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 1.0)
STAGES = ("decode", "embed", "search", "rank", "recommend", "serialise")
"""Request stages `pinlab_stage_seconds` times (rank: re-rank and the pins' rows)."""


class Metrics:
    """Prometheus series of one app (own registry, so several apps never share counters)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "pinlab_requests",
            "HTTP requests by endpoint and status.",
            ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "pinlab_request_seconds",
            "Request latency by endpoint.",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch = Histogram(
            "pinlab_encoder_batch_size",
            "Images per encoder call (micro-batching).",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=self.registry,
        )
        self.session_batch = Histogram(
            "pinlab_session_batch_size",
            "Session histories per model call (micro-batching).",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=self.registry,
        )
        self.stage = Histogram(
            "pinlab_stage_seconds",
            "Time spent in each request stage: " + ", ".join(STAGES) + ".",
            ["stage"],
            buckets=_STAGE_BUCKETS,
            registry=self.registry,
        )
        self.pins = Gauge("pinlab_index_pins", "Pins in the serving index.", registry=self.registry)
        self.swaps = Counter("pinlab_index_swaps", "Index swaps.", registry=self.registry)

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stage.labels(stage).observe(seconds)


class MetricsMiddleware:
    """Counts and times every request by the name of the route that answered it."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            endpoint = getattr(scope.get("endpoint"), "__name__", "unmatched")
            self.metrics.requests.labels(endpoint, scope["method"], str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)


def _error(status: int, message: str, detail: list[dict[str, str]] | None = None) -> JSONResponse:
    return JSONResponse(ErrorBody(error=message, detail=detail).model_dump(), status_code=status)


def _install_error_handlers(app: FastAPI) -> None:
    # Here, not at the top: importing pinlab_models loads torch, and `import pinlab_serve`
    # (an index alone) should not pay for it.
    from pinlab_models import PinlabModelError

    async def bad_input(_: Request, exc: Exception) -> JSONResponse:
        status = next((code for t, code in _STATUS.items() if isinstance(exc, t)), 400)
        response = _error(status, str(exc))
        if status == 401:
            response.headers["www-authenticate"] = "Bearer"
        return response

    async def invalid(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        detail = [
            {
                "where": ".".join(str(p) for p in e.get("loc", ())),
                "problem": str(e.get("msg", "")),
            }
            for e in exc.errors()
        ]
        first = detail[0] if detail else {"where": "request", "problem": "invalid"}
        return _error(422, f"bad value for {first['where']}: {first['problem']}", detail)

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        response = _error(exc.status_code, str(exc.detail))
        response.headers.update(exc.headers or {})  # a 405's Allow (RFC 9110), say
        return response

    async def crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path, exc_info=exc)
        return _error(500, f"internal error ({type(exc).__name__}); the server log has details")

    for kind in (PinlabServeError, PinlabDataError, PinlabModelError):
        app.add_exception_handler(kind, bad_input)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, crash)


async def _capped_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) as soon as it grows past `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(
            f"the upload is {int(declared):,} bytes, over the limit of "
            f"{limit - MULTIPART_SLACK:,}; send a smaller image"
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(
                f"the upload is over the limit of {limit - MULTIPART_SLACK:,} bytes; "
                "send a smaller image"
            )
        chunks.append(chunk)
    return b"".join(chunks)


async def _upload(request: Request, max_bytes: int) -> bytes:
    """The bytes of the multipart field `image`, checked for size and content type."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise UnsupportedMediaError(
            f"send the image as multipart/form-data in a field named 'image', not "
            f"{content_type or 'no content type'}"
        )
    body = await _capped_body(request, max_bytes + MULTIPART_SLACK)
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    # The form parser reads from `replay`, so nothing beyond the capped body is ever read.
    async with Request(request.scope, replay).form(max_files=1, max_fields=20) as form:
        part = form.get("image")
        if not isinstance(part, UploadFile):
            raise PinlabServeError("the form has no file field named 'image'; attach the image")
        if not (part.content_type or "").startswith("image/"):
            raise UnsupportedMediaError(
                f"the upload's content type is {part.content_type or 'missing'}; send an "
                "image/* file (JPEG, PNG, WebP, BMP or GIF)"
            )
        data = await part.read()
    if len(data) > max_bytes:
        raise PayloadTooLargeError(
            f"the image is {len(data):,} bytes, over the limit of {max_bytes:,}"
        )
    if not data:
        raise PinlabServeError("the uploaded image is empty; attach a file with content")
    return data


def _check_admin(request: Request, settings: ServeSettings) -> None:
    """Refuse an admin request: 403 while no token is configured, 401 without the token."""
    if settings.admin_token is None:
        raise ForbiddenError(ADMIN_OFF)
    scheme, _, sent = request.headers.get("authorization", "").partition(" ")
    expected = settings.admin_token.get_secret_value().encode()
    # compare_digest takes as long whatever the token shares with the expected one.
    if scheme.lower() != "bearer" or not hmac.compare_digest(sent.strip().encode(), expected):
        raise UnauthorizedError(
            "this admin endpoint needs 'Authorization: Bearer TOKEN' with the server's "
            "PINLAB_SERVE_ADMIN_TOKEN"
        )


def _json(body: BaseModel, metrics: Metrics) -> Response:
    """A model as a JSON response; the route's response_model documents it, and returning a
    Response spares FastAPI validating the model a second time (it was built validated)."""
    start = time.perf_counter()
    text = body.model_dump_json()
    metrics.observe_stage("serialise", time.perf_counter() - start)
    return Response(text, media_type="application/json")


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def create_app(run_dir: Path, settings: ServeSettings | None = None) -> FastAPI:
    """The service over `run_dir`. Loading starts with the app's lifespan, in a thread;
    `/readyz` answers 503 until the model and index are loaded and warmed."""
    settings = settings or ServeSettings()
    metrics = Metrics()
    service = PinService(run_dir, settings, metrics.observe_stage)
    batcher: MicroBatcher[ImageArray, Float32Array] = MicroBatcher(
        lambda images: list(service.embed_images(np.stack(images))),
        settings.batch_window_ms / 1000,
        settings.max_batch,
        metrics.batch.observe,
    )
    # Sessions batch only what is already queued: a lone visitor never waits, and under load
    # one transformer call serves every history that arrived during the last one.
    sessions: MicroBatcher[Int64Array, Float32Array] = MicroBatcher(
        service.score_sessions, 0.0, settings.max_batch, metrics.session_batch.observe
    )

    async def load() -> None:
        try:
            await asyncio.to_thread(service.load)
            metrics.pins.set(len(service.state.index))
        except Exception as exc:
            service.error = f"{type(exc).__name__}: {exc}"
            log.exception("loading %s failed", run_dir)
            # A run that failed to load stays failed: a server that `serve_app` runs stops
            # (its caller reports why); other hosts keep answering /readyz with the reason.
            stop = getattr(app.state, "stop_server", None)
            if stop is not None:
                stop()

    async def watch(interval: float) -> None:
        manifest = service.files.index / "index.json"
        seen = manifest.stat().st_mtime_ns if manifest.exists() else 0
        while True:
            await asyncio.sleep(interval)
            mtime = manifest.stat().st_mtime_ns if manifest.exists() else 0
            if service.ready and mtime != seen:
                seen = mtime
                try:
                    await reload_now()
                except PinlabServeError as exc:
                    log.error("index changed but was not swapped in: %s", exc)

    async def reload_now() -> ReloadResponse:
        result = await asyncio.to_thread(service.reload_index)
        if result.swapped:
            metrics.swaps.inc()
            metrics.pins.set(result.current.count)
        return result

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(load())]
        if settings.watch_interval_s > 0:
            tasks.append(asyncio.create_task(watch(settings.watch_interval_s)))
        yield
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await batcher.close()
        await sessions.close()

    app = FastAPI(
        title="pinlab",
        summary="Visual search and recommendations over one pinlab run.",
        version="1",
        lifespan=lifespan,
        responses=ERRORS,
    )
    app.state.service = service
    _install_error_handlers(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"]
        )
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    def ready() -> PinService:
        if not service.ready:
            reason = service.error or "the model and index are still loading"
            raise HTTPException(503, f"not ready: {reason}; poll /readyz")
        return service

    page = resources.files("pinlab_serve").joinpath("static/index.html").read_text()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def home() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/healthz", response_model=HealthResponse)
    async def healthz() -> HealthResponse:
        """The process is up (it may still be loading)."""
        return HealthResponse(status="ok", ready=service.ready, detail=service.error)

    @app.get("/readyz", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
    async def readyz() -> Response:
        """200 once the model and index are loaded and warmed; 503 before (or if loading failed)."""
        body = HealthResponse(
            status="ready" if service.ready else ("failed" if service.error else "loading"),
            ready=service.ready,
            detail=service.error,
        )
        return JSONResponse(body.model_dump(), status_code=200 if service.ready else 503)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    upload_doc: dict[str, Any] = {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {"image": {"type": "string", "format": "binary"}},
                        "required": ["image"],
                    },
                    "encoding": {"image": {"contentType": UPLOAD_TYPES}},
                }
            },
        }
    }

    @app.post("/v1/search/image", response_model=SearchResponse, openapi_extra=upload_doc | RANKED)
    async def search_image(request: Request) -> Response:
        """Pins that look like the uploaded image (multipart field `image`)."""
        query = _query(request, RankQuery)
        svc = ready()
        div = query.diversification()
        data = await _upload(request, settings.max_upload_bytes)
        image = await asyncio.to_thread(svc.decode_upload, data)  # times itself as "decode"
        vector = await batcher.submit(image)
        return _json(
            svc.search_vector(vector, query.k, query.category, query.exclude, div), metrics
        )

    @app.get("/v1/search/text", response_model=SearchResponse, openapi_extra=TEXT_RANKED)
    async def search_text(request: Request) -> Response:
        """Pins matching a text query (aligned image-text model, else pin captions)."""
        query = _query(request, TextQuery)
        svc = ready()
        args = (query.q, query.k, query.category, query.exclude, query.diversification())
        return _json(await asyncio.to_thread(svc.search_text, *args), metrics)

    @app.get("/v1/pins/{pin_id}/similar", response_model=SearchResponse, openapi_extra=RANKED)
    async def similar(pin_id: PinId, request: Request) -> Response:
        """Pins that look like pin `pin_id` (never itself)."""
        query = _query(request, RankQuery)
        div = query.diversification()
        return _json(ready().similar(pin_id, query.k, query.category, query.exclude, div), metrics)

    @app.get(
        "/v1/users/{user_id}/recommendations",
        response_model=RecommendationResponse,
        openapi_extra=RANKED,
    )
    async def recommendations(user_id: UserId, request: Request) -> Response:
        """Pins for a user from the run's best recommender; pins they engaged with excluded."""
        query = _query(request, RankQuery)
        svc = ready()
        args = (user_id, query.k, query.category, query.exclude, query.diversification())
        if svc.recommend_inline:
            return _json(svc.recommend(*args), metrics)
        return _json(await asyncio.to_thread(svc.recommend, *args), metrics)

    @app.post(
        "/v1/recommendations/session",
        response_model=SessionResponse,
        responses=ERRORS,
    )
    async def session_recommendations(body: SessionRequest) -> Response:
        """Pins for a visitor the model never trained on, from the pins of their session
        (oldest first), by the run's best recommender that reads histories; the history's
        pins excluded. Unknown ids are ignored and named; none known is a 422."""
        svc = ready()
        history = svc.resolve_session(body.history)
        scores = await sessions.submit(history.items)
        div = body.diversification()
        return _json(
            svc.session_response(history, scores, body.k, body.category, body.exclude, div),
            metrics,
        )

    @app.post("/v1/generate", response_model=GenerateResponse, responses=ERRORS)
    async def generate(body: GenerateRequest) -> Response:
        """Images of `text` from the run's text-to-image generator, as PNG data URLs.

        `n` and `steps` are bounded by the service's settings; a request the warm-up's timing
        says would exceed the time budget is refused (422) before it starts. One generation
        runs at a time."""
        svc = ready()
        svc.check_generation(body)  # on the loop: a refusal never waits behind a generation
        return _json(await asyncio.to_thread(svc.generate, body), metrics)

    @app.get("/v1/users", response_model=UsersResponse)
    async def users(
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
        external_id: Annotated[
            str | None,
            Query(min_length=1, max_length=200, description="Only the user with this source id."),
        ] = None,
    ) -> UsersResponse:
        """User ids and their loaded source's ids, for the web page's user picker; with
        `external_id`, the pinlab id of the user the source calls that (404 if none)."""
        catalog = ready().catalog
        if external_id is not None:
            user = catalog.user_by_external.get(external_id)
            if user is None:
                raise PinNotFoundError(
                    f"no user has the source's id {external_id!r}; GET /v1/users lists each "
                    "user's external_id"
                )
            return UsersResponse(user_ids=[user], external_ids=[external_id], total=1)
        window = slice(offset, offset + limit)
        return UsersResponse(
            user_ids=[int(u) for u in catalog.log.user_ids[window]],
            external_ids=catalog.user_external_ids[window],
            total=len(catalog.log.user_ids),
        )

    @app.get("/v1/pins/{pin_id}", response_model=PinOut)
    async def pin(pin_id: PinId) -> Response:
        """A pin's caption, category and creator."""
        return _json(ready().catalog.pin(pin_id), metrics)

    @app.get(
        "/v1/pins/{pin_id}/image",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}},
    )
    async def pin_image(pin_id: PinId) -> Response:
        """The pin's image as PNG (from the dataset's packed images)."""
        image = ready().catalog.image(pin_id)
        return Response(
            _png(image), media_type="image/png", headers={"cache-control": "max-age=3600"}
        )

    @app.post(
        "/v1/admin/reload",
        response_model=ReloadResponse,
        responses={code: {"model": ErrorBody} for code in (401, 403)},
    )
    async def reload_index(request: Request) -> ReloadResponse:
        """Load the index on disk and swap it in; requests in flight finish on the old.

        Off (403) unless the server has PINLAB_SERVE_ADMIN_TOKEN; then it needs
        `Authorization: Bearer TOKEN` (401 without it)."""
        _check_admin(request, settings)
        ready()
        return await reload_now()

    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        # The schema states this service's bounds, not the contract's widest: a client (or a
        # generated one) then knows what a request may ask for before a 422 tells it.
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = default_openapi()  # which FastAPI keeps as app.openapi_schema
        asked = schema["components"]["schemas"]["GenerateRequest"]["properties"]
        asked["n"]["maximum"] = settings.generate_max_images
        asked["steps"]["maximum"] = settings.generate_max_steps
        return schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented hook
    return app


def create_app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory` (and several workers): settings from PINLAB_SERVE_*."""
    settings = ServeSettings()
    if settings.run_dir is None:
        raise PinlabServeError("set PINLAB_SERVE_RUN_DIR to the run directory to serve")
    return create_app(settings.run_dir, settings)


def check_run(run_dir: Path, runtime: Runtime = "torch", recommender: str | None = None) -> None:
    """Raise PinlabServeError, saying what to make, when `run_dir` cannot be served (or has
    no `recommender` of that name); with an ONNX runtime, PinlabModelError when an export is
    missing or not of the run's models."""
    files = RunFiles(run_dir.resolve())
    files.check()
    files.served_recommenders(recommender)
    if runtime != "torch":
        from pinlab_models import load_image_encoder, load_image_text, load_text_encoder

        load_image_encoder(files.encoder, runtime, files.onnx, threads=1)
        if files.image_text.is_file():
            load_image_text(files.image_text, runtime, files.onnx, threads=1)
        else:
            load_text_encoder(runtime, files.onnx, threads=1)


def listen(host: str, port: int) -> socket.socket:
    """The server's listening socket, bound before anything loads: a port in use or an address
    this machine does not have is refused at once, and port 0 gets the number it was given."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise PinlabServeError(
            f"cannot listen on {host} port {port}: {exc.strerror or exc}; choose another "
            "port (0: any free one), or a host this machine has"
        ) from exc
    # Listening now, so a client that connects on the announced address before uvicorn starts
    # waits in the backlog (uvicorn's 2048) instead of being refused.
    sock.listen(2048)
    sock.set_inheritable(True)  # worker processes serve it too
    return sock


def http_url(host: str, sock: socket.socket, path: str = "/") -> str:
    """The URL a server on `sock` (from `listen(host, ...)`) answers at: its real port, so
    port 0's number too; an IPv6 host in brackets."""
    bound = f"[{host}]" if ":" in host else host
    return f"http://{bound}:{sock.getsockname()[1]}{path}"


def serve_app(app: ASGIApp, sock: socket.socket, log_level: str = "info") -> None:
    """Serve `app` with uvicorn on a bound socket (`listen`) until interrupted (blocking).
    An app with a `state` gets `state.stop_server`, which shuts the server down."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level))
    state = getattr(app, "state", None)
    if state is not None:
        state.stop_server = lambda: setattr(server, "should_exit", True)
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises Ctrl-C once stopped
        server.run(sockets=[sock])
    if not server.started:
        raise RuntimeError("the server did not start; its log above says why")


def run_server(
    run_dir: Path,
    settings: ServeSettings,
    log_level: str = "info",
    sock: socket.socket | None = None,
) -> None:
    """Check the run, then serve it with uvicorn on `sock` (default: `listen` on the settings'
    host and port) until interrupted (blocking)."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    check_run(run_dir, recommender=settings.recommender)
    sock = sock or listen(settings.host, settings.port)
    if settings.workers == 1:
        app = create_app(run_dir, settings)
        serve_app(app, sock, log_level)
        if app.state.service.error is not None:
            raise PinlabServeError(f"cannot serve {run_dir}: {app.state.service.error}")
        return
    # Several workers import the app by name; they read their settings from the environment.
    env = settings.model_copy(update={"run_dir": run_dir.resolve()}).model_dump(
        mode="json", exclude={"admin_token"}
    )
    if settings.admin_token is not None:  # JSON dumps a secret masked
        env["admin_token"] = settings.admin_token.get_secret_value()
    for key, value in env.items():
        if value is None:  # unset: a variable would read as the text "null"
            continue
        os.environ[f"PINLAB_SERVE_{key.upper()}"] = (
            value if isinstance(value, str) else json.dumps(value)
        )
    config = uvicorn.Config(
        "pinlab_serve._app:create_app_from_env",
        factory=True,
        workers=settings.workers,
        log_level=log_level,
    )
    with contextlib.suppress(KeyboardInterrupt):
        Multiprocess(config, sockets=[sock]).run()
