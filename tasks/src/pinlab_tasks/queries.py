"""Queries over a trained run: build its index, search pins, recommend to a user."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pyarrow.compute as pc

from pinlab_data import (
    Dataset,
    PinlabDataError,
    interaction_log,
    load_dataset,
    read_json_object,
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
from pinlab_serve import (
    DEFAULT_TARGET_RECALL,
    INDEX_KINDS,
    ArrayVectors,
    IndexKind,
    PinIndex,
    PinlabServeError,
    RunFiles,
    VectorSource,
    embed_image_file,
    open_shards,
    tune,
)
from pinlab_tasks.runs import RunLayout, check_output_folder
from pinlab_tasks.visual import pin_images

BuildKind = IndexKind | str
"""`--kind`: 'size' (exact below `HNSW_THRESHOLD` pins, HNSW above), 'auto' (the tuner over
every kind) or one kind (the tuner over that kind alone)."""
_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}  # fmt: skip


def parse_size(text: str) -> int:
    """'1GB' (10^9 bytes), '512MiB' (2^20 each), '2.5GB', '1000000'; bad text raises."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).upper() if match else ""
    if match is None or unit not in _SIZE_UNITS or float(match.group(1)) <= 0:
        raise PinlabServeError(
            f"--max-memory {text!r} is not a size; write e.g. 1GB, 512MB or 2GiB"
        )
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def build_index(
    run: RunLayout | None,
    *,
    vectors: Sequence[Path] = (),
    out: Path | None = None,
    model_id: str | None = None,
    kind: BuildKind = "size",
    target_recall: float | None = None,
    max_memory: str | None = None,
    prefer: str = "memory",
    seed: int = 0,
    say: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Index a run's pins (embedded with its encoder) or embedding shards, and save it.

    Everything is built in memory; only `PinIndex.save` writes, and its manifest rename is the
    commit, so a build stopped at any point leaves the previous index serving and no file of
    the new one. With a target, a memory cap or a kind other than 'size', the tuner chooses
    and measures (`pinlab_serve.tune`).
    """
    if out is not None:
        destination = out
        # The index's manifest and its file, or an older pinlab's one index.faiss.
        ours = ("index.json", "index.faiss")
        check_output_folder(
            out, lambda name: name in ours or name.endswith(".faiss"), "--out", "index build"
        )
    elif run is not None:
        destination = run.index
    else:
        raise PinlabServeError("give --run RUN (writes RUN/index) or --out DIR")
    cap = parse_size(max_memory) if max_memory is not None else None
    kinds = _kinds(kind, tuned=target_recall is not None or cap is not None)
    if prefer not in ("memory", "latency"):
        raise PinlabServeError(f"--prefer must be memory or latency, got {prefer!r}")
    source, model = _index_source(run, vectors, model_id, say)
    if kinds is None:
        say(f"indexing {source.rows:,} vectors")
        ids = np.concatenate([ids for ids, _ in source])
        index = PinIndex.build(np.concatenate([v for _, v in source]), ids, model, seed=seed)
    else:
        index = tune(
            source,
            model,
            target_recall=DEFAULT_TARGET_RECALL if target_recall is None else target_recall,
            max_memory=cap,
            kinds=kinds,
            prefer="latency" if prefer == "latency" else "memory",
            seed=seed,
            say=say,
        )
    manifest = index.save(destination)
    config = {
        "vectors": [str(v) for v in vectors],
        "out": str(destination),
        "kind": kind,
        "target_recall": target_recall,
        "max_memory": max_memory,
        "prefer": prefer,
        "seed": seed,
        "model_id": model,
    }
    if run is not None:
        run.log_step("index build", config)
    return {"out": str(destination), **manifest.model_dump()}


def _kinds(kind: BuildKind, tuned: bool) -> tuple[IndexKind, ...] | None:
    """The kinds the tuner may choose from, or None for the size rule."""
    if kind == "size":
        return INDEX_KINDS if tuned else None
    if kind == "auto":
        return INDEX_KINDS
    for known in get_args(IndexKind):
        if kind == known:
            return (known,)
    raise PinlabServeError(
        f"--kind {kind!r} is not an index kind; use size, auto or one of {', '.join(INDEX_KINDS)}"
    )


def _index_source(
    run: RunLayout | None, vectors: Sequence[Path], model_id: str | None, say: Callable[[str], None]
) -> tuple[VectorSource, str]:
    """The vectors to index and the id of the model that made them."""
    if vectors:
        shards = open_shards(list(vectors))
        model = model_id or shards.model_id
        if model is None and run is not None and run.encoder.is_file():
            model = CNNEncoder.load(run.encoder).model_id
        if model is None:
            raise PinlabServeError(
                "the shards do not say which model made them; pass --model-id ID (or --run "
                "RUN to take its encoder's)"
            )
        return shards, model
    if run is None:
        raise PinlabServeError(
            "give --vectors FILE_OR_DIR to index, or --run RUN to embed its pins"
        )
    ds = load_dataset(run.trained_data_dir())
    encoder = CNNEncoder.load(run.encoder)
    say(f"embedding {len(ds.pin_ids()):,} pins")
    embedded = np.asarray(encoder.embed(pin_images(ds)), dtype=np.float32)
    return ArrayVectors(ds.pin_ids(), embedded), model_id or encoder.model_id


def _pin_rows(ds: Dataset, pin_ids: list[int]) -> list[dict[str, Any]]:
    ids = ds.pin_ids()
    order = np.argsort(ids)
    rows = order[np.searchsorted(ids, pin_ids, sorter=order).clip(max=len(ids) - 1)]
    missing = [p for p, found in zip(pin_ids, ids[rows], strict=True) if p != found]
    if missing:
        raise PinlabDataError(f"pin {missing[0]} is not in the dataset {ds.root}")
    # external_id: the id the source data gave the pin (null where pinlab's id is the source's).
    columns = ["pin_id", "external_id", "caption", "category", "creator_group"]
    table = ds.pins.take(rows).select(columns)
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
    ds = load_dataset(run.trained_data_dir())
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
    ds = load_dataset(run.trained_data_dir())
    scores = model.embed_images(pin_images(ds)) @ model.embed_texts([text])[0]
    top = np.argsort(-scores, kind="stable")[:k]
    rows = _pin_rows(ds, [int(p) for p in ds.pin_ids()[top]])
    return {
        "query": {"text": text},
        "model_id": model.model_id,
        "runtime": runtime,
        "hits": [{**r, "score": float(scores[i])} for r, i in zip(rows, top, strict=True)],
    }


def recommend(
    run: RunLayout,
    user: int | None,
    k: int,
    model_name: str | None = None,
    external_user: str | None = None,
) -> dict[str, Any]:
    """Top-k pins for a user, excluding every pin they already engaged with; the user is
    pinlab's `user` id or, with `external_user`, the loaded source's id of them."""
    _check_k(k)
    if (user is None) == (external_user is None):
        raise PinlabDataError("give exactly one of user (pinlab's id) or external_user")
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
    ds = load_dataset(run.trained_data_dir())
    if external_user is not None:
        user = _user_by_external_id(ds, external_user)
    log = interaction_log(ds)
    position = np.flatnonzero(log.user_ids == user)
    if len(position) == 0:
        # A source's id given for pinlab's: name the pinlab id it has.
        named = _source_user(ds, str(user))
        hint = (
            f"; the source's user '{user}' is pinlab user {named} (or pass --external-user {user})"
            if named is not None
            else ""
        )
        raise PinlabDataError(
            f"user {user} is not in the dataset; user ids run over the users table{hint}"
        )
    model: Recommender = load_recommender(run.recommender(model_name))
    ranked = top_k(model, position.astype(np.int64), k, seen_csr(log))[0]
    pin_ids = [int(p) for p in log.item_ids[ranked]]
    history = log.item_ids[log.items[log.users == position[0]]][-5:]
    users = ds.users.filter(pc.equal(ds.users.column("user_id"), user))
    return {
        "user": user,
        "user_external_id": users.column("external_id")[0].as_py() if users.num_rows else None,
        "model": model_name,
        "recent": _pin_rows(ds, [int(p) for p in history]),
        "items": _pin_rows(ds, pin_ids),
    }


def _source_user(ds: Dataset, external: str) -> int | None:
    """pinlab's id of the user the loaded source calls `external`, if one has that id."""
    named = ds.users.filter(pc.equal(ds.users.column("external_id"), external))
    return int(named.column("user_id")[0].as_py()) if named.num_rows else None


def _user_by_external_id(ds: Dataset, external: str) -> int:
    user = _source_user(ds, external)
    if user is None:
        loaded = pc.count(ds.users.column("external_id")).as_py()  # nulls are not counted
        where = (
            "its users have no source ids (a synthetic world): use --user with pinlab's id"
            if not loaded
            else f"the source's ids are the users table's external_id ({loaded} users)"
        )
        raise PinlabDataError(f"no user has the source's id {external!r}; {where}")
    return user


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
    ds = load_dataset(run.trained_data_dir())
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
    best = read_json_object(path, "rerun `pinlab eval recommender`").get("best")
    if not isinstance(best, str):
        raise PinlabDataError(f"{path} names no best model; rerun `pinlab eval recommender`")
    return best


def _check_k(k: int) -> None:
    if k <= 0:
        raise PinlabDataError(f"k must be a positive number of results, got {k}")
