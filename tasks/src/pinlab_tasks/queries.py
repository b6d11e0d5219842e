"""Queries over a trained run: build its index, search pins, recommend to a user."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pinlab_data import (
    Dataset,
    PinlabDataError,
    interaction_log,
    load_dataset,
    seen_csr,
    session_history,
)
from pinlab_eval import (
    top_k,
)
from pinlab_models import (
    CNNEncoder,
    HistoryScorer,
    Recommender,
    Runtime,
    load_image_encoder,
    load_image_text,
    load_recommender,
)
from pinlab_serve import PinIndex, RunFiles, embed_image_file
from pinlab_tasks.runs import RunLayout
from pinlab_tasks.visual import pin_images


def build_index(run: RunLayout) -> dict[str, Any]:
    ds = load_dataset(run.data_dir())
    encoder = CNNEncoder.load(run.encoder)
    index = PinIndex.build(encoder.embed(pin_images(ds)), ds.pin_ids(), model_id=encoder.model_id)
    manifest = index.save(run.index)
    run.log_step("index build", {"model_id": encoder.model_id})
    return manifest.model_dump()


def _pin_rows(ds: Dataset, pin_ids: list[int]) -> list[dict[str, Any]]:
    ids = ds.pin_ids()
    order = np.argsort(ids)
    rows = order[np.searchsorted(ids, pin_ids, sorter=order).clip(max=len(ids) - 1)]
    missing = [p for p, found in zip(pin_ids, ids[rows], strict=True) if p != found]
    if missing:
        raise PinlabDataError(f"pin {missing[0]} is not in the dataset {ds.root}")
    table = ds.pins.take(rows).select(["pin_id", "caption", "category", "creator_group"])
    records: list[dict[str, Any]] = table.to_pylist()
    return records


def search(
    run: RunLayout,
    k: int,
    pin: int | None = None,
    image: Path | None = None,
    text: str | None = None,
    runtime: Runtime = "torch",
) -> dict[str, Any]:
    """Pins most similar to a pin of the catalogue, an image file, or a text (aligned model);
    image and text queries are embedded on `runtime` (a pin's vector is read from the index)."""
    if sum(q is not None for q in (pin, image, text)) != 1:
        raise PinlabDataError("give exactly one of --pin ID, --image PATH or --text TEXT")
    _check_k(k)
    if text is not None:
        return _search_text(run, text, k, runtime)
    encoder = load_image_encoder(run.encoder, runtime, run.onnx)
    index = PinIndex.load(run.index, expect_model_id=encoder.model_id)
    ds = load_dataset(run.data_dir())
    if pin is not None:
        hits = index.similar(pin, k)
        query: dict[str, Any] = {"pin": _pin_rows(ds, [pin])[0]}
    else:
        assert image is not None
        hits = index.search(embed_image_file(image, encoder), k)[0]
        query = {"image": str(image)}
    rows = _pin_rows(ds, [h.pin_id for h in hits])
    return {
        "query": query,
        "runtime": runtime,
        "hits": [{**r, "score": h.score} for r, h in zip(rows, hits, strict=True)],
    }


def _search_text(run: RunLayout, text: str, k: int, runtime: Runtime) -> dict[str, Any]:
    """Every pin's aligned image embedding against the text's, by inner product (exact)."""
    if not run.image_text.is_file():
        raise PinlabDataError(
            f"run {run.root} has no image-text model; train one with "
            f"`pinlab train align --run {run.root}`"
        )
    model = load_image_text(run.image_text, runtime, run.onnx)
    ds = load_dataset(run.data_dir())
    scores = model.embed_images(pin_images(ds)) @ model.embed_texts([text])[0]
    top = np.argsort(-scores, kind="stable")[:k]
    rows = _pin_rows(ds, [int(p) for p in ds.pin_ids()[top]])
    return {
        "query": {"text": text},
        "model_id": model.model_id,
        "runtime": runtime,
        "hits": [{**r, "score": float(scores[i])} for r, i in zip(rows, top, strict=True)],
    }


def recommend(run: RunLayout, user: int, k: int, model_name: str | None = None) -> dict[str, Any]:
    """Top-k pins for a user, excluding every pin they already engaged with."""
    _check_k(k)
    names = run.trained_recommenders()
    if not names:
        raise PinlabDataError(f"run {run.root} has no trained recommender")
    if model_name is None:
        evaluation = run.recommenders / "eval.json"
        model_name = _best_model(evaluation) if evaluation.is_file() else names[-1]
    if model_name not in names:
        raise PinlabDataError(
            f"no trained {model_name!r} in {run.root}; trained: {', '.join(names)}"
        )
    ds = load_dataset(run.data_dir())
    log = interaction_log(ds)
    position = np.flatnonzero(log.user_ids == user)
    if len(position) == 0:
        raise PinlabDataError(
            f"user {user} is not in the dataset; user ids run over the users table"
        )
    model: Recommender = load_recommender(run.recommender(model_name))
    ranked = top_k(model, position.astype(np.int64), k, seen_csr(log))[0]
    pin_ids = [int(p) for p in log.item_ids[ranked]]
    history = log.item_ids[log.items[log.users == position[0]]][-5:]
    return {
        "user": user,
        "model": model_name,
        "recent": _pin_rows(ds, [int(p) for p in history]),
        "items": _pin_rows(ds, pin_ids),
    }


def recommend_session(
    run: RunLayout, history: list[int], k: int, model_name: str | None = None
) -> dict[str, Any]:
    """Top-k pins for a visitor the model never trained on, from the pins of their session
    (oldest first), by the run's best model that reads histories (or `model_name`)."""
    _check_k(k)
    ranked = RunFiles(run.root).ranked_recommenders()
    if not ranked:
        raise PinlabDataError(f"run {run.root} has no trained recommender")
    names = [model_name] if model_name is not None else ranked
    if model_name is not None and model_name not in ranked:
        raise PinlabDataError(
            f"no trained {model_name!r} in {run.root}; trained: {', '.join(ranked)}"
        )
    model: HistoryScorer | None = None
    for name in names:
        loaded = load_recommender(run.recommender(name))
        if isinstance(loaded, HistoryScorer):
            model, model_name = loaded, name
            break
    if model is None:
        which = (
            f"{model_name!r} in {run.root} does not read a history"
            if len(names) == 1
            else f"none of the models in {run.root} reads a history ({', '.join(names)})"
        )
        raise PinlabDataError(
            f"{which}; train one that does (sasrec, two-tower, ease, dlae, itemknn, rp3beta) "
            "with `pinlab train recommender --model NAME`"
        )
    ds = load_dataset(run.data_dir())
    log = interaction_log(ds)
    session = session_history(log.item_ids, history, model.history_window)
    scores = model.score_histories([session.items])[0]
    scores[session.items] = -np.inf  # never the pins the visitor already has
    top = np.argsort(-scores, kind="stable")[:k]
    top = top[np.isfinite(scores[top])]
    return {
        "model": model_name,
        "history_used": len(session.items),
        "unknown_ids": session.unknown,
        "truncated": session.truncated_from is not None,
        "window": model.history_window,
        "warnings": session.warnings(),
        "items": _pin_rows(ds, [int(p) for p in log.item_ids[top]]),
    }


def _best_model(path: Path) -> str:
    best: str = json.loads(path.read_text())["best"]
    return best


def _check_k(k: int) -> None:
    if k <= 0:
        raise PinlabDataError(f"k must be a positive number of results, got {k}")
