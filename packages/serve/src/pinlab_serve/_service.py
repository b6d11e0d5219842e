"""The service behind the HTTP routes: loads a run, answers queries, swaps indexes."""

from __future__ import annotations

import base64
import io
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from pinlab_data import decode_image, encode_png
from pinlab_data.contracts import Float32Array, ImageArray, Int64Array, SessionHistory
from pinlab_serve._brute import NumpySearcher
from pinlab_serve._catalog import Catalog, RunFiles
from pinlab_serve._index import PinIndex
from pinlab_serve.contracts import (
    TRADEOFF_GRID,
    Diversify,
    GenerateRequest,
    GenerateResponse,
    Hit,
    IndexManifest,
    ModelNotFoundError,
    PayloadTooLargeError,
    PinlabServeError,
    RecommendationResponse,
    ReloadResponse,
    Searcher,
    SearchResponse,
    ServeSettings,
    SessionResponse,
    UnprocessableError,
)

if TYPE_CHECKING:
    from pinlab_models import GenerateLimits, HistoryScorer, TextToImage

log = logging.getLogger("pinlab.serve")

INLINE_SCORE_SECONDS = 0.002
"""A recommender that scores a user faster than this is called on the event loop: handing it
to a thread costs more than the work (a hop, then GIL handoffs under load) and doubled
recommendations' p99 in `bench serve` on a 4,000-pin MF run. Slower ones go to a thread so
the loop keeps answering."""

StageObserver = Callable[[str, float], None]
"""Told each request stage's name and seconds (the app feeds a Prometheus histogram)."""


@dataclass(frozen=True)
class IndexState:
    """One loaded index and the searcher over it; swapped as a whole, never mutated."""

    index: PinIndex
    searcher: Searcher
    kind: str


@dataclass(frozen=True)
class TextSearch:
    mode: str
    model_id: str
    embed: Callable[[list[str]], Float32Array]
    state: IndexState


def _top(scores: Float32Array, n: int) -> Int64Array:
    """Positions of the `n` best scores, best first, ties by position.

    torch.topk, not np.argpartition: a selection over 20,000 scores took 78 us against 200 us,
    the largest cost of a recommendation request on the 20,000-pin bench world.
    """
    top = torch.topk(torch.from_numpy(scores), n).indices.numpy()
    # topk picks any of the pins tied at the cut; widening to every pin at that score makes
    # the answer not depend on how many were asked for.
    top = np.flatnonzero(scores >= scores[top].min())
    return np.asarray(top[np.lexsort((top, -scores[top]))][:n], dtype=np.int64)


def _searcher(index: PinIndex, backend: str) -> IndexState:
    if backend == "numpy":
        return IndexState(index, NumpySearcher(index), "numpy")
    return IndexState(index, index, index.kind)


class PinService:
    """Everything a request needs, loaded by `load` (slow: models, index, text vectors)."""

    def __init__(
        self, run_dir: Path, settings: ServeSettings, on_stage: StageObserver | None = None
    ) -> None:
        self.files = RunFiles(run_dir.resolve())
        self.settings = settings
        self.on_stage: StageObserver = on_stage or (lambda _stage, _seconds: None)
        self.error: str | None = None
        self._ready = threading.Event()
        self._reload_lock = threading.Lock()
        self._state: IndexState | None = None
        self._catalog: Catalog | None = None
        self._text: TextSearch | None = None
        self._encoder_id = ""
        self.image_size = 0
        self.recommender_name: str | None = None
        self._embed_images: Callable[[ImageArray], Float32Array] | None = None
        self._score: Callable[[Int64Array], Float32Array] | None = None
        self.recommend_inline = False
        self.session_name: str | None = None
        self._session: HistoryScorer | None = None
        self._generator: TextToImage | None = None
        self.seconds_per_image_step = 0.0
        self._generate_lock = threading.Lock()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    @property
    def catalog(self) -> Catalog:
        assert self._catalog is not None, "load() first"
        return self._catalog

    @property
    def state(self) -> IndexState:
        assert self._state is not None, "load() first"
        return self._state

    @property
    def manifest(self) -> IndexManifest:
        return self.state.index.manifest

    def load(self) -> None:
        """Load data, encoder, index, text vectors and recommender; warm them; mark ready."""
        from pinlab_models import HistoryScorer, load_image_encoder, load_recommender

        start = time.perf_counter()
        self._limit_threads()
        self.files.check()
        self._catalog = Catalog(self.files.data_dir())
        settings = self.settings
        encoder = load_image_encoder(
            self.files.encoder, settings.runtime, self.files.onnx, settings.torch_threads
        )
        # An ONNX encoder keeps its checkpoint's model id, so it searches that one's index.
        self._encoder_id, self.image_size = encoder.model_id, encoder.image_size
        self._embed_images = encoder.embed
        index = PinIndex.load(self.files.index, expect_model_id=encoder.model_id)
        self._state = _searcher(index, self.settings.search_backend)
        self._text = self._load_text()
        for name in self.files.served_recommenders(settings.recommender):
            model = load_recommender(self.files.recommenders / name / "model.pt")
            if self._score is None:
                self.recommender_name, self._score = name, model.score
            if isinstance(model, HistoryScorer):
                self.session_name, self._session = name, model
                break
        self._warm()
        self._load_generator()
        self._ready.set()
        log.info(
            "ready in %.1f s: %d pins, index %s, text %s, recommender %s, runtime %s",
            time.perf_counter() - start,
            len(self.state.index),
            self.state.kind,
            self._text.mode,
            self.recommender_name,
            settings.runtime,
        )

    def _limit_threads(self) -> None:
        """The process's thread pools as the settings say (FAISS, PyTorch, BLAS), so a served
        run is measured and served the same however the process was started. FAISS's is the
        calling thread's only, so `_hits` sets it again on whichever thread searches."""
        import torch
        from threadpoolctl import threadpool_limits

        faiss.omp_set_num_threads(self.settings.search_threads)
        torch.set_num_threads(self.settings.torch_threads)
        threadpool_limits(self.settings.blas_threads, user_api="blas")

    def _load_text(self) -> TextSearch:
        """The run's image-text model if it has one, else MiniLM over the pin captions; both
        on the settings' runtime."""
        from pinlab_models import load_image_text, load_text_encoder

        catalog, settings, onnx = self.catalog, self.settings, self.files.onnx
        threads = settings.torch_threads
        if self.files.image_text.is_file() and catalog.images is not None:
            model = load_image_text(self.files.image_text, settings.runtime, onnx, threads)
            rows = np.array([r if r is not None else -1 for r in catalog.image_rows])
            has = rows >= 0
            vectors = model.embed_images(np.asarray(catalog.images[rows[has]]))
            index = PinIndex.build(vectors, catalog.pin_ids[has], model.model_id)
            return TextSearch(
                "image-text",
                model.model_id,
                model.embed_texts,
                _searcher(index, settings.search_backend),
            )
        encoder = load_text_encoder(settings.runtime, onnx, threads)
        # Captions repeat a lot (templated), so embed each distinct one once.
        unique, inverse = np.unique(np.asarray(catalog.captions), return_inverse=True)
        vectors = encoder.encode(unique.tolist())[inverse]
        index = PinIndex.build(vectors, catalog.pin_ids, f"captions:{encoder.model_id}")
        return TextSearch(
            "caption",
            encoder.model_id,
            encoder.encode,
            _searcher(index, settings.search_backend),
        )

    def _warm(self) -> None:
        """One query through every path, so the first request pays no lazy initialisation."""
        image = np.zeros((1, self.image_size, self.image_size, 3), dtype=np.uint8)
        vector = self.embed_images(image)
        self.state.searcher.search(vector, 10)
        assert self._text is not None
        self._text.state.searcher.search(self._text.embed(["warm up"]), 10)
        if self._score is not None and self.catalog.user_position:
            user = np.zeros(1, dtype=np.int64)
            self._score(user)
            start = time.perf_counter()
            self._score(user)
            self.recommend_inline = time.perf_counter() - start < INLINE_SCORE_SECONDS
        if self._session is not None:
            history = np.arange(min(50, len(self.catalog.log.item_ids)), dtype=np.int64)
            self._session.score_histories([history, history[:3]])

    def _load_generator(self) -> None:
        """The run's generator, if it has one, warmed; its time per image-step (guided) is
        what the budget check of `generate` multiplies."""
        if not self.files.generator.is_file():
            return
        from pinlab_models import load_generator

        model = load_generator(self.files.generator)
        model.generate(["warm up"], steps=2)  # MiniLM, kernels: lazy the first time
        start = time.perf_counter()
        model.generate(["warm up"] * 2, steps=2)
        self.seconds_per_image_step = (time.perf_counter() - start) / 4
        self._generator = model

    def check_generation(self, request: GenerateRequest) -> float:
        """Refuse a generation this service will not run, before it starts; return the
        estimated seconds. Bounds come from the settings, the estimate from the warm-up."""
        from pinlab_models import PinlabModelError, check_request

        if self._generator is None:
            raise ModelNotFoundError(
                f"run {self.files.root} has no generator; train one with `pinlab train "
                f"generator --data DIR --run {self.files.root}` and restart the server"
            )
        try:
            check_request(
                request.text, request.n, request.steps, request.guidance, self._limits(),
                request.autoguidance,
            )  # fmt: skip
        except PinlabModelError as exc:
            raise UnprocessableError(str(exc)) from None
        per_image = request.steps * self.seconds_per_image_step
        estimate = request.n * per_image
        budget = self.settings.generate_budget_s
        if estimate > budget:
            most = int(budget // per_image)
            fewer = (
                f"ask for at most {most} images at {request.steps} steps"
                if most >= 1
                else f"ask for at most {max(1, int(budget // self.seconds_per_image_step))} "
                "steps for one image"
            )
            raise UnprocessableError(
                f"{request.n} images at {request.steps} steps would take about {estimate:.1f} s "
                f"here, over this service's budget of {budget:g} s: {fewer}"
            )
        return estimate

    def _limits(self) -> GenerateLimits:
        from pinlab_models import GenerateLimits

        return GenerateLimits(
            max_images=self.settings.generate_max_images,
            max_steps=self.settings.generate_max_steps,
        )

    def generate(self, request: GenerateRequest) -> GenerateResponse:
        """Run a checked generation (one at a time) and encode each image as a PNG."""
        estimate = self.check_generation(request)
        assert self._generator is not None
        with self._generate_lock, self.stage("generate"):
            start = time.perf_counter()
            category = self._generator.resolve_categories(
                [request.text], None, request.infer_category
            )[0]
            images = self._generator.generate(
                [request.text] * request.n, steps=request.steps, guidance=request.guidance,
                seed=request.seed, limits=self._limits(), autoguidance=request.autoguidance,
                category=category, infer_category=False,  # resolved just above
            )  # fmt: skip
            seconds = time.perf_counter() - start
        urls = []
        for i, image in enumerate(images):
            text = self._generator.png_text(
                request.text, seed=request.seed, index=i, steps=request.steps,
                guidance=request.guidance, autoguidance=request.autoguidance,
                category=category, category_inferred=category is not None,
            )  # fmt: skip
            urls.append(
                "data:image/png;base64," + base64.b64encode(encode_png(image, text)).decode()
            )
        return GenerateResponse(
            model_id=self._generator.model_id, text=request.text, n=request.n,
            steps=request.steps, guidance=request.guidance,
            autoguidance=self._generator.autoguidance(request.autoguidance), category=category,
            seed=request.seed,
            seconds=round(seconds, 3), estimate_s=round(estimate, 3), images=urls,
        )  # fmt: skip

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block as request stage `name` (decode, embed, search, rank, recommend)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.on_stage(name, time.perf_counter() - start)

    def embed_images(self, images: ImageArray) -> Float32Array:
        assert self._embed_images is not None, "load() first"
        with self.stage("embed"):
            return self._embed_images(images)

    def reload_index(self) -> ReloadResponse:
        """Load the index on disk and swap it in if it changed; in-flight requests keep theirs."""
        with self._reload_lock:
            previous = self.state
            manifest_now = previous.index.manifest
            index = PinIndex.load(self.files.index, expect_model_id=self._encoder_id)
            swapped = index.manifest.checksum != manifest_now.checksum
            if swapped:
                self._state = _searcher(index, self.settings.search_backend)
                log.info("swapped index: %d -> %d pins", len(previous.index), len(index))
            return ReloadResponse(
                previous=manifest_now, current=self.state.index.manifest, swapped=swapped
            )

    def decode_upload(self, data: bytes) -> ImageArray:
        """Upload bytes to the encoder's input; refuses too many pixels before decoding.

        Only the header is read before the pixel count is checked (413 over `max_pixels`),
        and `decode_image` decodes a JPEG at a reduced scale: a 40-megapixel photo costs
        ~2 MB of pixels, not ~120 MB (`tests/test_serve_decode.py` measures it).
        """
        try:
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            # Pillow's own limit, far above ours: an error, or a warning raised as one.
            raise PayloadTooLargeError(
                f"the image has too many pixels ({exc}); resize it first"
            ) from exc
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise PinlabServeError(
                f"the upload is not a readable image ({type(exc).__name__}); send a JPEG, "
                "PNG, WebP, BMP or GIF file"
            ) from exc
        if width * height > self.settings.max_pixels:
            raise PayloadTooLargeError(
                f"the image is {width}x{height} pixels, over the limit of "
                f"{self.settings.max_pixels:,}; resize it first"
            )
        with self.stage("decode"):
            return decode_image(
                data, self.image_size, source="the upload", max_pixels=self.settings.max_pixels
            )

    def _hits(
        self,
        state: IndexState,
        vector: Float32Array,
        k: int,
        category: str | None,
        exclude: Sequence[int],
        div: Diversify,
        own: int | None = None,
    ) -> dict[str, Any]:
        """The response fields a search fills: `hits` and what re-ranking was applied."""
        catalog = self.catalog
        allow = catalog.allowed(category)
        fetch = k if div.method is None else max(k, self.settings.candidates)
        with self.stage("search"):
            # FAISS's OpenMP thread count is per calling thread; a request may run on the event
            # loop or a worker thread, not the one that loaded, so set it here (it costs ~0).
            faiss.omp_set_num_threads(self.settings.search_threads)
            hits = state.searcher.search(
                vector[None, :],
                fetch,
                exclude=None if own is None else [own],
                allow=allow,
                deny=exclude,
            )[0]
        return self._ranked(state, hits, k, div, history=[])

    def _ranked(
        self, state: IndexState, hits: list[Hit], k: int, div: Diversify, history: list[str]
    ) -> dict[str, Any]:
        ranked, tradeoff = self._rerank(state, hits, k, div, history)
        return {
            "hits": ranked,
            "diversity": tradeoff,
            "diversify": div.method,
            "target": div.target,
        }

    def _rerank(
        self, state: IndexState, hits: list[Hit], k: int, div: Diversify, history: list[str]
    ) -> tuple[list[dict[str, Any]], float]:
        """The top `k` hits, re-ranked as `div` asks; and the trade-off applied."""
        with self.stage("rank"):
            order, tradeoff = self._order(state, hits, k, div, history)
            return [self.catalog.hit(hits[i].pin_id, hits[i].score) for i in order], tradeoff

    def _order(
        self, state: IndexState, hits: list[Hit], k: int, div: Diversify, history: list[str]
    ) -> tuple[list[int], float]:
        if div.method is None or len(hits) <= 1:
            return list(range(min(k, len(hits)))), 0.0
        # Imported here: pinlab_models loads torch, which `load()` has already paid for.
        from pinlab_models import (
            PinlabModelError,
            calibrated,
            category_diversity,
            dpp,
            in_relevance_order,
            miscalibration,
            mmr,
            self_adjusting,
        )

        catalog = self.catalog
        rows = [catalog.row(h.pin_id) for h in hits]
        categories = [catalog.categories[r] for r in rows]
        relevance = [h.score for h in hits]
        vectors = (
            None
            if div.method == "calibrated"
            else state.searcher.vectors(np.asarray([h.pin_id for h in hits], dtype=np.int64))
        )
        groups = [catalog.creator_groups[r] for r in rows]

        def rerank(tradeoff: float) -> list[int]:
            if div.method == "calibrated":
                chosen = calibrated(relevance, categories, history, k, tradeoff)
            elif div.method == "dpp":
                assert vectors is not None
                chosen = dpp(relevance, vectors, k, tradeoff)
            else:
                assert vectors is not None
                chosen = mmr(relevance, vectors, categories, groups, k, tradeoff)
            return in_relevance_order(chosen, relevance)

        def met(order: list[int]) -> float:
            chosen = [categories[i] for i in order]
            if div.method == "calibrated":  # less is better: search on its negative
                return -miscalibration(chosen, history)
            return category_diversity(chosen)

        if div.method == "calibrated" and not history:
            raise UnprocessableError(
                "diversify=calibrated matches the category mix of a user's history; use "
                "it on /v1/users/{id}/recommendations for a user with interactions, or "
                "choose diversify=mmr or dpp"
            )
        goal = div.target
        if goal is not None and div.method == "calibrated":
            goal = -goal
        if goal is None:
            return rerank(div.tradeoff), div.tradeoff
        try:
            tradeoff, order = self_adjusting(rerank, met, goal, TRADEOFF_GRID)
        except PinlabModelError:
            reach = [abs(met(rerank(t))) for t in TRADEOFF_GRID]
            best = min(reach) if div.method == "calibrated" else max(reach)
            what = "miscalibration" if div.method == "calibrated" else "category diversity"
            allowed = f"{best:.4g} or more" if div.method == "calibrated" else f"0 to {best:.4g}"
            raise UnprocessableError(
                f"target {div.target} is out of reach: {what} of these {len(hits)} candidates "
                f"reaches {best:.4g} at best over trade-offs 0..1; allowed target: {allowed}"
            ) from None
        return order, tradeoff

    def search_vector(
        self,
        vector: Float32Array,
        k: int,
        category: str | None,
        exclude: Sequence[int],
        div: Diversify,
    ) -> SearchResponse:
        state = self.state
        return SearchResponse(
            query={"kind": "image"},
            mode="image",
            model_id=self._encoder_id,
            runtime=self.settings.runtime,
            index=state.kind,
            **self._hits(state, vector, k, category, exclude, div),
        )

    def similar(
        self,
        pin_id: int,
        k: int,
        category: str | None,
        exclude: Sequence[int],
        div: Diversify,
    ) -> SearchResponse:
        state = self.state  # one snapshot: a concurrent swap cannot mix two indexes
        self.catalog.row(pin_id)
        vector = state.searcher.vector(pin_id)
        return SearchResponse(
            query={"pin_id": pin_id},
            mode="similar",
            model_id=self._encoder_id,
            index=state.kind,
            **self._hits(state, vector, k, category, exclude, div, own=pin_id),
        )

    def search_text(
        self,
        text: str,
        k: int,
        category: str | None,
        exclude: Sequence[int],
        div: Diversify,
    ) -> SearchResponse:
        assert self._text is not None, "load() first"
        search = self._text
        if not text.strip():
            raise PinlabServeError("q is blank; give a few words to search for")
        with self.stage("embed"):
            vector = search.embed([text])[0]
        return SearchResponse(
            query={"q": text},
            mode=search.mode,
            model_id=search.model_id,
            runtime=self.settings.runtime,
            index=search.state.kind,
            **self._hits(search.state, vector, k, category, exclude, div),
        )

    def recommend(
        self,
        user_id: int,
        k: int,
        category: str | None,
        exclude: Sequence[int],
        div: Diversify,
    ) -> RecommendationResponse:
        catalog = self.catalog
        position = catalog.user(user_id)
        if self._score is None or self.recommender_name is None:
            raise PinlabServeError(
                f"run {self.files.root} has no trained recommender; train one with "
                "`pinlab train recommender --run RUN`"
            )
        seen = catalog.seen(position)
        with self.stage("recommend"):
            scores = np.asarray(self._score(np.array([position], dtype=np.int64))[0], np.float32)
            hits = self._candidates(scores, seen, k, category, exclude, div)
        return RecommendationResponse(
            user_id=user_id,
            user_external_id=catalog.user_external_ids[position],
            model=self.recommender_name,
            seen_excluded=len(seen),
            **self._ranked(self.state, hits, k, div, self._categories(seen, div)),
        )

    def resolve_session(self, history_ids: Sequence[int]) -> SessionHistory:
        """A visitor's pin ids as the session model's item indexes (unknown ids named, cut to
        its window); 422 when the history is empty or none of it is known."""
        from pinlab_data import PinlabDataError, session_history

        if self._session is None:
            raise PinlabServeError(
                f"run {self.files.root} has no recommender that reads histories; train one "
                "(sasrec, two-tower, ease, dlae, itemknn or rp3beta) with "
                "`pinlab train recommender --run RUN --model NAME`"
            )
        try:
            return session_history(
                self.catalog.log.item_ids,
                history_ids,
                self._session.history_window,
                self.catalog.item_order,
            )
        except PinlabDataError as exc:
            raise UnprocessableError(str(exc)) from None

    def score_sessions(self, histories: list[Int64Array]) -> list[Float32Array]:
        """Every item's score for each resolved history, in one model call (the app batches
        concurrent session requests through here)."""
        assert self._session is not None, "resolve_session() first"
        with self.stage("recommend"):
            scores = np.asarray(self._session.score_histories(histories), np.float32)
        return list(scores)

    def session_response(
        self,
        history: SessionHistory,
        scores: Float32Array,
        k: int,
        category: str | None,
        exclude: Sequence[int],
        div: Diversify,
    ) -> SessionResponse:
        """The top `k` of a session's `scores`, its own pins left out."""
        assert self._session is not None and self.session_name is not None
        with self.stage("recommend"):
            hits = self._candidates(scores, history.items, k, category, exclude, div)
        ranked = self._ranked(self.state, hits, k, div, self._categories(history.items, div))
        return SessionResponse(
            model=self.session_name,
            history_used=len(history.items),
            unknown_ids=history.unknown,
            truncated=history.truncated_from is not None,
            window=self._session.history_window,
            warnings=history.warnings(),
            **ranked,
        )

    def recommend_session(
        self,
        history_ids: Sequence[int],
        k: int,
        category: str | None,
        exclude: Sequence[int],
        div: Diversify,
    ) -> SessionResponse:
        """Pins for a visitor the model never trained on, from the pins of their session."""
        history = self.resolve_session(history_ids)
        (scores,) = self.score_sessions([history.items])
        return self.session_response(history, scores, k, category, exclude, div)

    def _candidates(
        self,
        scores: Float32Array,
        seen: Int64Array,
        k: int,
        category: str | None,
        exclude: Sequence[int],
        div: Diversify,
    ) -> list[Hit]:
        """The best of a recommender's `scores` to rank: `seen` items (indexes), pins outside
        `category` and `exclude`d pins left out; as many as the re-ranker needs."""
        catalog = self.catalog
        item_ids = catalog.log.item_ids
        scores[seen] = -np.inf
        allow = catalog.allowed(category)
        if allow is not None:
            scores[~np.isin(item_ids, allow)] = -np.inf
        if exclude:
            scores[np.isin(item_ids, np.asarray(exclude, dtype=np.int64))] = -np.inf
        fetch = min(k if div.method is None else max(k, self.settings.candidates), len(scores))
        top = _top(scores, fetch)
        top = top[np.isfinite(scores[top])]
        if div.method is not None:  # the re-rank needs vectors: it skips pins the index lacks
            top = top[self.state.index.contains(item_ids[top])]
        return [
            Hit(pin_id, score)
            for pin_id, score in zip(item_ids[top].tolist(), scores[top].tolist(), strict=True)
        ]

    def _categories(self, items: Int64Array, div: Diversify) -> list[str]:
        """The categories of a history's items (indexes), which calibration matches."""
        if div.method != "calibrated":
            return []
        catalog = self.catalog
        return [catalog.categories[catalog.row(int(catalog.log.item_ids[i]))] for i in items]
