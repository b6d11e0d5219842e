"""Workflows that cross packages: each CLI command is one call here, and so is each test.

Every function reads its inputs from a dataset or run directory, writes its artifacts
under the run directory, and returns a JSON-able dict.
"""

from __future__ import annotations

import json
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pinlab_data import (
    Dataset,
    PinlabDataError,
    SynthConfig,
    caption_attributes,
    describe_dataset,
    holdout_mask,
    interaction_log,
    load_dataset,
    seen_csr,
    write_json_atomic,
    write_synth,
)
from pinlab_eval import (
    RetrievalReport,
    embedding_map,
    evaluate_retrieval,
    evaluate_text_to_image,
    linear_probe,
    top_k,
    visual_protocol,
)
from pinlab_models import (
    AlignConfig,
    CNNEncoder,
    EncoderConfig,
    ImageTextModel,
    Recommender,
    TrainContext,
    load_image_text_model,
    load_recommender,
    resolve_device,
    seed_everything,
    train_alignment,
    train_encoder,
    zero_shot_labels,
)
from pinlab_serve import PinIndex, embed_image_file
from pinlab_tasks.presets import PRESETS
from pinlab_tasks.recsys import eval_recommenders, train_recommender
from pinlab_tasks.runs import RunLayout

HOLDOUT_FRACTION = 0.2
"""Share of pins never seen by the encoder in training; retrieval is measured on them."""
VALID_FRACTION = 0.1
"""Share of the remaining pins used for early stopping."""
VISUAL_KS = (1, 10)


@dataclass(frozen=True)
class VisualSplit:
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray


def visual_split(ds: Dataset, seed: int) -> VisualSplit:
    """Rows of pins for training, validation and held-out evaluation; stable per pin id."""
    ids = ds.pin_ids()
    test = holdout_mask(ids, HOLDOUT_FRACTION, seed)
    valid = holdout_mask(ids, VALID_FRACTION, seed + 1) & ~test
    train = ~(test | valid)
    return VisualSplit(np.flatnonzero(train), np.flatnonzero(valid), np.flatnonzero(test))


def _images(ds: Dataset) -> np.ndarray:
    """Every pin's packed image, in pin-table order."""
    rows = ds.pins.column("image_row")
    if ds.images is None or rows.null_count:
        raise PinlabDataError(
            f"{ds.root} lacks packed images (images.npy, image_row) for some pins; visual "
            f"models need them: run `pinlab data validate {ds.root}`"
        )
    return np.asarray(ds.images[rows.to_numpy()])


def _labels(ds: Dataset) -> np.ndarray:
    """Category names as dense integer labels."""
    names = ds.pins.column("category").to_pylist()
    index = {name: i for i, name in enumerate(sorted(set(names)))}
    return np.array([index[n] for n in names], dtype=np.int64)


def synth(out: Path, config: SynthConfig, overwrite: bool = False) -> dict[str, Any]:
    start = time.perf_counter()
    write_synth(out, config, overwrite=overwrite)
    return {
        "dataset": str(out),
        "seconds": round(time.perf_counter() - start, 2),
        **describe_dataset(load_dataset(out)),
    }


def train_visual(
    run: RunLayout,
    data_dir: Path,
    config: EncoderConfig,
    seed: int,
    device: str,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the CNN encoder on the training pins; early-stop on validation recall@1."""
    ds = load_dataset(data_dir)
    images, labels = _images(ds), _labels(ds)
    if images.shape[1] != config.image_size:  # the dataset decides the input size
        config = config.model_copy(update={"image_size": int(images.shape[1])})
    split = visual_split(ds, seed)
    device = resolve_device(device)
    run.log_step("train visual", {"encoder": config.model_dump(), "seed": seed}, data_dir)

    seed_everything(seed)
    CNNEncoder(config, device).save(run.untrained_encoder)  # the same init train_encoder draws

    def validate(encoder: Any) -> float:
        emb = encoder.embed(images[split.valid])
        report = evaluate_retrieval(emb, labels[split.valid], ks=(1,), protocol="valid")
        return report.metrics["recall@1"]

    ctx = TrainContext(run_dir=run.visual, seed=seed, device=device, progress=progress)
    encoder, report = train_encoder(images[split.train], labels[split.train], config, ctx, validate)
    model_id = encoder.save(run.encoder)
    result = {"model_id": model_id, "train_pins": len(split.train), **report.model_dump()}
    write_json_atomic(run.visual / "train.json", result)
    return result


def eval_visual(run: RunLayout, seed: int) -> dict[str, Any]:
    """Retrieval by category on held-out pins, for the trained and the untrained encoder."""
    ds = load_dataset(run.data_dir())
    images, labels = _images(ds), _labels(ds)
    categories = np.asarray(ds.pins.column("category").to_pylist(), dtype=object)
    protocol, test = "held-out-pins", visual_split(ds, seed).test
    if _trained_protocol(run) != "held-out-pins":  # `train encoder --protocol unseen-classes`
        split = visual_protocol(categories, ds.pin_ids(), seed)
        protocol, test = split.name, split.test
    result: dict[str, Any] = {"protocol": protocol, "num_queries": len(test)}
    probe_fit = ~holdout_mask(ds.pin_ids()[test], 0.5, seed + 1)
    for name, path in (("trained", run.encoder), ("untrained", run.untrained_encoder)):
        encoder = CNNEncoder.load(path)
        embeddings = encoder.embed(images[test])
        report = evaluate_retrieval(embeddings, labels[test], ks=VISUAL_KS, protocol=protocol)
        probe = linear_probe(embeddings, labels[test], probe_fit)
        result[name] = {**report.metrics, "linear_probe": probe}
        if name == "trained":
            names = categories[test]
            title = f"{encoder.model_id}: {protocol}, PCA"
            picture = embedding_map(
                embeddings, names.tolist(), run.visual / "embedding_map.png", title
            )
            result["embedding_map"] = str(picture)
    if run.image_text.is_file():
        result["text_to_image"] = eval_align(run)
    write_json_atomic(run.visual / "eval.json", result)
    return result


def _trained_protocol(run: RunLayout) -> str:
    """The protocol the run's encoder was trained under (train.json), held-out-pins if none."""
    path = run.visual / "train.json"
    if not path.is_file():
        return "held-out-pins"
    protocol: str = json.loads(path.read_text()).get("protocol", "held-out-pins")
    return protocol


def _captioned(ds: Dataset, rows: np.ndarray) -> np.ndarray:
    """The rows among `rows` whose pin has a caption: alignment learns from nothing else."""
    captions = ds.pins.column("caption").to_pylist()
    kept: np.ndarray = rows[np.array([bool(captions[r].strip()) for r in rows], dtype=bool)]
    return kept


def text_relevance(ds: Dataset, rows: np.ndarray) -> tuple[np.ndarray, str]:
    """Keys for text-to-image relevance at `rows`, and what they compare.

    A pin is relevant to a caption query when it shares the query pin's category and every
    attribute the caption names. On synthetic worlds the caption names a palette and a texture
    (read by `caption_attributes`), so the key is category + palette + texture; elsewhere no
    attribute vocabulary is known, so the key is the category, or the caption itself when the
    pins have no categories.
    """
    captions = ds.pins.column("caption").to_pylist()
    categories = ds.pins.column("category").to_pylist()
    keys: list[str]
    if ds.manifest.source == "synth":
        named = [caption_attributes(captions[r]) for r in rows]
        keys = [
            f"{categories[r]}|{n.get('palette')}|{n.get('texture')}"
            for r, n in zip(rows, named, strict=True)
        ]
        relevance = "category+palette+texture"
    elif any(categories[r] for r in rows):
        keys, relevance = [categories[r] for r in rows], "category"
    else:
        keys, relevance = [captions[r] for r in rows], "caption"
    _, dense = np.unique(np.array(keys, dtype=object), return_inverse=True)
    return dense.astype(np.int64), relevance


def _text_to_image(
    model: ImageTextModel, images: np.ndarray, ds: Dataset, rows: np.ndarray
) -> tuple[RetrievalReport, str]:
    keys, relevance = text_relevance(ds, rows)
    captions = ds.pins.column("caption").to_pylist()
    report = evaluate_text_to_image(
        model.embed_texts([captions[r] for r in rows]),
        keys,
        model.embed_images(images[rows]),
        keys,
        ks=VISUAL_KS,
    )
    return report, relevance


def train_align(
    run: RunLayout,
    data_dir: Path | None,
    config: AlignConfig,
    seed: int,
    device: str,
    progress: bool = True,
) -> dict[str, Any]:
    """Align the image tower to MiniLM caption embeddings on the training pins.

    Early-stops on text-to-image recall@10 of the validation pins. Without `data_dir`, the
    run's recorded dataset.
    """
    data_dir = run.data_dir() if data_dir is None else data_dir
    ds = load_dataset(data_dir)
    images = _images(ds)
    if images.shape[1] != config.image_size:  # the dataset decides the input size
        config = config.model_copy(update={"image_size": int(images.shape[1])})
    split = visual_split(ds, seed)
    train_rows, valid_rows = _captioned(ds, split.train), _captioned(ds, split.valid)
    if len(train_rows) < 2:
        raise PinlabDataError(
            f"{ds.root}: {len(train_rows)} training pins have a caption; alignment learns "
            "from captions, so load the images with a manifest that has a caption column"
        )
    device = resolve_device(device)
    run.log_step("train align", {"align": config.model_dump(), "seed": seed}, data_dir)
    captions = ds.pins.column("caption").to_pylist()

    def validate(model: ImageTextModel) -> float:
        return _text_to_image(model, images, ds, valid_rows)[0].metrics["recall@10"]

    ctx = TrainContext(run_dir=run.visual / "align", seed=seed, device=device, progress=progress)
    model, report = train_alignment(
        images[train_rows],
        [captions[r] for r in train_rows],
        config,
        ctx,
        validate if len(valid_rows) else None,
    )
    model_id = model.save(run.image_text)
    result = {
        "model_id": model_id,
        "seed": seed,
        "train_pins": len(train_rows),
        "temperature": round(model.temperature, 4),
        **report.model_dump(),
    }
    write_json_atomic(run.visual / "align" / "train.json", result)
    return result


def eval_align(run: RunLayout) -> dict[str, Any]:
    """Text-to-image recall@k and zero-shot category accuracy on the held-out pins.

    The held-out pins are those of the seed the alignment trained with (in its train.json),
    so no evaluated pin was trained on. Queries are their captions; the gallery is their
    images; relevance is `text_relevance`. Zero-shot: each image gets the category whose
    name, in "a photo of {name}", embeds nearest.
    """
    trained = run.visual / "align" / "train.json"
    if not trained.is_file():
        raise PinlabDataError(f"run {run.root} has no {trained.name}; `pinlab train align` first")
    seed = int(json.loads(trained.read_text())["seed"])
    ds = load_dataset(run.data_dir())
    images = _images(ds)
    test = _captioned(ds, visual_split(ds, seed).test)
    if len(test) == 0:
        raise PinlabDataError(f"{ds.root}: no held-out pin has a caption to query with")
    model = load_image_text_model(run.image_text)
    report, relevance = _text_to_image(model, images, ds, test)
    metrics = {f"text_{k}": v for k, v in report.metrics.items()}
    names = sorted(set(ds.pins.column("category").to_pylist()))
    if len(names) > 1 and all(names):
        predicted = zero_shot_labels(model, images[test], names)
        metrics["zero_shot_accuracy"] = float((predicted == _labels(ds)[test]).mean())
    result: dict[str, Any] = {
        "protocol": "held-out-pins",
        "seed": seed,
        "relevance": relevance,
        "num_queries": report.num_queries,
        "model_id": model.model_id,
        "metrics": metrics,
    }
    write_json_atomic(run.visual / "align" / "eval.json", result)
    return result


def build_index(run: RunLayout) -> dict[str, Any]:
    ds = load_dataset(run.data_dir())
    encoder = CNNEncoder.load(run.encoder)
    index = PinIndex.build(encoder.embed(_images(ds)), ds.pin_ids(), model_id=encoder.model_id)
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
) -> dict[str, Any]:
    """Pins most similar to a pin of the catalogue, an image file, or a text (aligned model)."""
    if sum(q is not None for q in (pin, image, text)) != 1:
        raise PinlabDataError("give exactly one of --pin ID, --image PATH or --text TEXT")
    _check_k(k)
    if text is not None:
        return _search_text(run, text, k)
    encoder = CNNEncoder.load(run.encoder)
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
        "hits": [{**r, "score": h.score} for r, h in zip(rows, hits, strict=True)],
    }


def _search_text(run: RunLayout, text: str, k: int) -> dict[str, Any]:
    """Every pin's aligned image embedding against the text's, by inner product (exact)."""
    if not run.image_text.is_file():
        raise PinlabDataError(
            f"run {run.root} has no image-text model; train one with "
            f"`pinlab train align --run {run.root}`"
        )
    model = load_image_text_model(run.image_text)
    ds = load_dataset(run.data_dir())
    scores = model.embed_images(_images(ds)) @ model.embed_texts([text])[0]
    top = np.argsort(-scores, kind="stable")[:k]
    rows = _pin_rows(ds, [int(p) for p in ds.pin_ids()[top]])
    return {
        "query": {"text": text},
        "model_id": model.model_id,
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


def _best_model(path: Path) -> str:
    best: str = json.loads(path.read_text())["best"]
    return best


def _check_k(k: int) -> None:
    if k <= 0:
        raise PinlabDataError(f"k must be a positive number of results, got {k}")


def _demo_align(
    run: RunLayout, config: AlignConfig, seed: int, device: str, progress: bool
) -> dict[str, Any]:
    trained = train_align(run, run.data, config, seed, device, progress)
    evaluation = eval_align(run)
    ds = load_dataset(run.data)
    query = ds.pins.column("caption")[int(visual_split(ds, seed).test[0])].as_py()
    return {
        "align": {
            "protocol": evaluation["protocol"],
            "relevance": evaluation["relevance"],
            "metrics": evaluation["metrics"],
            "train_seconds": round(trained["seconds"], 2),
            "model_id": trained["model_id"],
        },
        "search_text": search(run, k=5, text=query),
    }


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def demo(
    preset_name: str,
    out: Path,
    seed: int,
    device: str,
    progress: bool = True,
    align: bool = False,
) -> dict[str, Any]:
    """The whole pipeline on a synthetic world: data, encoder, recommenders, index, queries.

    `align` adds image-text alignment, its text metrics and a text search (about two more
    minutes on 2 CPU cores at the default preset).
    """
    start = time.perf_counter()
    preset = PRESETS[preset_name]
    if out.exists() and any(out.iterdir()):
        raise PinlabDataError(f"{out} already exists and is not empty; pass a new --out directory")
    run = RunLayout(out)
    synth_config = preset.synth.model_copy(update={"seed": seed})
    run.log_step(
        "demo", {"preset": preset_name, "seed": seed, "with_align": align, **preset.model_dump()}
    )
    data = synth(run.data, synth_config, overwrite=True)
    visual_train = train_visual(run, run.data, preset.encoder, seed, device, progress)
    visual = eval_visual(run, seed)
    for name, overrides in preset.recommenders.items():
        train_recommender(run, run.data, name, overrides, seed, device, progress)
    rec = eval_recommenders(run)
    index = build_index(run)

    ds = load_dataset(run.data)
    query_pin = int(ds.pin_ids()[visual_split(ds, seed).test[0]])
    query_user = int(ds.user_ids()[0])
    result = {
        "run_dir": str(out),
        "preset": preset_name,
        "seed": seed,
        "data": {k: data[k] for k in ("num_pins", "num_users", "num_interactions")},
        "visual": {
            "protocol": visual["protocol"],
            "trained": visual["trained"],
            "untrained": visual["untrained"],
            "train_seconds": round(visual_train["seconds"], 2),
            "model_id": visual_train["model_id"],
        },
        "recommender": rec["models"],
        "best_recommender": rec["best"],
        "index": index,
        "search": search(run, k=5, pin=query_pin),
        "recommend": recommend(run, query_user, k=5),
        **(_demo_align(run, preset.align, seed, device, progress) if align else {}),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "torch_threads": torch.get_num_threads(),
        "seconds": round(time.perf_counter() - start, 2),
    }
    write_json_atomic(out / "summary.json", result)
    return result
