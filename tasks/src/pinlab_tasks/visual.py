"""Visual workflows: the encoder (train, eval, recipes), image-text alignment, dedupe.

Every function reads a dataset or run directory, writes under the run directory and
returns a JSON-able dict.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pinlab_data import (
    Dataset,
    DedupeReport,
    PinlabDataError,
    caption_attributes,
    dedupe_dataset,
    holdout_mask,
    load_dataset,
    read_json_object,
    write_json_atomic,
)
from pinlab_eval import (
    RetrievalReport,
    embedding_map,
    evaluate_retrieval,
    evaluate_text_to_image,
    linear_probe,
    visual_protocol,
)
from pinlab_models import (
    TRAINING_STATE,
    AlignConfig,
    CNNEncoder,
    EncoderConfig,
    ImageEncoder,
    ImageTextModel,
    RecipeConfig,
    TrainContext,
    TrainProgress,
    load_image_text_model,
    resolve_device,
    seed_everything,
    train_alignment,
    train_encoder,
    train_with_recipe,
    world,
    zero_shot_labels,
)
from pinlab_tasks.runs import RunLayout, trained_seed

DEDUPE_FILE = "duplicates.json"
EncoderProtocol = Literal["held-out-pins", "unseen-classes"]

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


def pin_images(ds: Dataset) -> np.ndarray:
    """Every pin's packed image, in pin-table order."""
    rows = ds.pins.column("image_row")
    if ds.images is None or rows.null_count:
        raise PinlabDataError(
            f"{ds.root} lacks packed images (images.npy, image_row) for some pins; visual "
            f"models need them: run `pinlab data validate {ds.root}`"
        )
    return np.asarray(ds.images[rows.to_numpy()])


def pin_labels(ds: Dataset) -> np.ndarray:
    """Category names as dense integer labels."""
    names = ds.pins.column("category").to_pylist()
    index = {name: i for i, name in enumerate(sorted(set(names)))}
    return np.array([index[n] for n in names], dtype=np.int64)


def train_visual(
    run: RunLayout,
    data_dir: Path,
    config: EncoderConfig,
    seed: int,
    device: str,
    progress: TrainProgress = True,
) -> dict[str, Any]:
    """Train the CNN encoder on the training pins; early-stop on validation recall@1."""
    ds = load_dataset(data_dir)
    images, labels = pin_images(ds), pin_labels(ds)
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

    ctx = TrainContext(
        run_dir=run.visual, seed=seed, device=device, progress=progress, metric="recall@1"
    )
    encoder, report = train_encoder(images[split.train], labels[split.train], config, ctx, validate)
    model_id = encoder.save(run.encoder)
    result = {"model_id": model_id, "train_pins": len(split.train), **report.model_dump()}
    write_json_atomic(run.visual / "train.json", result)
    return result


def eval_visual(run: RunLayout, seed: int) -> dict[str, Any]:
    """Retrieval by category on held-out pins, for the trained and the untrained encoder."""
    ds = load_dataset(run.trained_data_dir())
    images, labels = pin_images(ds), pin_labels(ds)
    categories = np.asarray(ds.pins.column("category").to_pylist(), dtype=object)
    protocol, test = visual_test_rows(run, ds, seed)
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


def visual_test_rows(run: RunLayout, ds: Dataset, seed: int) -> tuple[str, np.ndarray]:
    """The protocol and the pin rows `eval_visual` measures the run's encoder on."""
    if _trained_protocol(run) == "held-out-pins":
        return "held-out-pins", visual_split(ds, seed).test
    # `train encoder --protocol unseen-classes`
    categories = np.asarray(ds.pins.column("category").to_pylist(), dtype=object)
    split = visual_protocol(categories, ds.pin_ids(), seed)
    return split.name, split.test


def _trained_protocol(run: RunLayout) -> str:
    """The protocol the run's encoder was trained under (train.json), held-out-pins if none."""
    path = run.visual / "train.json"
    if not path.is_file():
        return "held-out-pins"
    protocol = read_json_object(path, "rerun `pinlab train visual`").get("protocol")
    return protocol if isinstance(protocol, str) else "held-out-pins"


def captioned(ds: Dataset, rows: np.ndarray) -> np.ndarray:
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
    progress: TrainProgress = True,
) -> dict[str, Any]:
    """Align the image tower to MiniLM caption embeddings on the training pins.

    Early-stops on text-to-image recall@10 of the validation pins. Without `data_dir`, the
    run's recorded dataset.
    """
    data_dir = run.data_dir() if data_dir is None else data_dir
    ds = load_dataset(data_dir)
    images = pin_images(ds)
    if images.shape[1] != config.image_size:  # the dataset decides the input size
        config = config.model_copy(update={"image_size": int(images.shape[1])})
    split = visual_split(ds, seed)
    train_rows, valid_rows = captioned(ds, split.train), captioned(ds, split.valid)
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

    ctx = TrainContext(
        run_dir=run.visual / "align",
        seed=seed,
        device=device,
        progress=progress,
        metric="text recall@10",
    )
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
    seed = trained_seed(trained, "pinlab train align")
    ds = load_dataset(run.trained_data_dir())
    images = pin_images(ds)
    test = captioned(ds, visual_split(ds, seed).test)
    if len(test) == 0:
        raise PinlabDataError(f"{ds.root}: no held-out pin has a caption to query with")
    model = load_image_text_model(run.image_text)
    report, relevance = _text_to_image(model, images, ds, test)
    metrics = {f"text_{k}": v for k, v in report.metrics.items()}
    names = sorted(set(ds.pins.column("category").to_pylist()))
    if len(names) > 1 and all(names):
        predicted = zero_shot_labels(model, images[test], names)
        metrics["zero_shot_accuracy"] = float((predicted == pin_labels(ds)[test]).mean())
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


def train_encoder_recipe(
    run: RunLayout,
    data_dir: Path,
    config: EncoderConfig,
    recipe: RecipeConfig,
    seed: int,
    device: str,
    progress: TrainProgress = True,
    protocol: EncoderProtocol = "held-out-pins",
    resume: bool = False,
) -> dict[str, Any]:
    """Train an encoder of any architecture with a recipe (data-parallel under torchrun;
    `resume` continues from the fit's last epoch state, which goes once the encoder is saved).

    `held-out-pins`: 20% of pins never trained on (as `train visual`); `unseen-classes`: half
    the categories never trained on (held-out images when there are fewer than 4 categories),
    as `bench visual`; `eval visual` measures the held-out part of whichever ran. Writes the
    encoder where `pinlab train visual` does (RUN/visual/encoder.pt, and the same
    initialisation untrained beside it), so eval, index and search use it unchanged.
    """
    ds = load_dataset(data_dir)
    images, labels = pin_images(ds), pin_labels(ds)
    if images.shape[1] != config.image_size:  # the dataset decides the input size
        config = config.model_copy(update={"image_size": int(images.shape[1])})
    split = visual_split(ds, seed)
    protocol_name: str = protocol
    if protocol == "unseen-classes":
        categories = np.asarray(ds.pins.column("category").to_pylist(), dtype=object)
        classes = visual_protocol(categories, ds.pin_ids(), seed)
        in_valid = holdout_mask(ds.pin_ids()[classes.train], VALID_FRACTION, seed + 1)
        split = VisualSplit(classes.train[~in_valid], classes.train[in_valid], classes.test)
        protocol_name = classes.name
    device = resolve_device(device)
    run.log_step(
        "train encoder",
        {
            "encoder": config.model_dump(),
            "recipe": recipe.model_dump(),
            "protocol": protocol_name,
            "seed": seed,
            "processes": world()[1],
        },
        data_dir,
    )
    seed_everything(seed)
    # The same seed, so the same initialisation train_with_recipe draws.
    CNNEncoder(config, device).save(run.untrained_encoder)

    def validate(encoder: ImageEncoder) -> float:
        emb = encoder.embed(images[split.valid])
        report = evaluate_retrieval(emb, labels[split.valid], ks=(1,), protocol="valid")
        return report.metrics["recall@1"]

    ctx = TrainContext(
        run_dir=run.visual, seed=seed, device=device, progress=progress, metric="recall@1",
        checkpoints=True, resume=resume,
    )  # fmt: skip
    given = None if recipe.recipe == "simclr" else labels[split.train]
    # Early stopping needs a validation query with something to find.
    can_validate = bool((np.unique(labels[split.valid], return_counts=True)[1] > 1).any())
    encoder, report = train_with_recipe(
        images[split.train], given, config, recipe, ctx, validate if can_validate else None
    )
    model_id = encoder.save(run.encoder)
    result = {
        "model_id": model_id,
        "arch": config.arch,
        "recipe": recipe.recipe,
        "protocol": protocol_name,
        "train_pins": len(split.train),
        **report.model_dump(),
    }
    write_json_atomic(run.visual / "train.json", result)
    (run.visual / TRAINING_STATE).unlink(missing_ok=True)
    return result


def dedupe(
    data_dir: Path,
    run: RunLayout | None,
    max_distance: int,
    min_cosine: float,
    max_color_diff: float = 12.0,
    device: str = "cpu",
) -> DedupeReport:
    """Near-duplicate clusters by perceptual hash; with a run, confirmed by its encoder.

    Writes RUN/duplicates.json with a run, else DATA/duplicates.json.
    """
    if run is None:
        return dedupe_dataset(data_dir, max_distance=max_distance, max_color_diff=max_color_diff)
    encoder = CNNEncoder.load(run.encoder, resolve_device(device))
    ds = load_dataset(data_dir)
    images = ds.images
    rows = ds.pins.column("image_row")
    if images is None or images.shape[1] != encoder.image_size:
        size = "no images" if images is None else f"{images.shape[1]}px images"
        raise PinlabDataError(
            f"{data_dir} has {size} but the run's encoder takes {encoder.image_size}px; "
            "dedupe with the run the dataset was trained in, or without --run"
        )
    row_of = np.asarray(rows.fill_null(-1).to_numpy(), dtype=np.int64)

    def similarity(pairs: np.ndarray) -> np.ndarray:
        # Only the pins in candidate pairs are embedded: usually a small share.
        used, inverse = np.unique(pairs, return_inverse=True)
        assert images is not None
        emb = encoder.embed(np.asarray(images[row_of[used]]))
        a, b = inverse.reshape(pairs.shape).T
        cosines: np.ndarray = (emb[a] * emb[b]).sum(axis=1)
        return cosines

    run.log_step(
        "data dedupe",
        {
            "max_distance": max_distance,
            "max_color_diff": max_color_diff,
            "min_cosine": min_cosine,
            "model_id": encoder.model_id,
        },
    )
    return dedupe_dataset(
        data_dir,
        max_distance=max_distance,
        max_color_diff=max_color_diff,
        similarity=similarity,
        min_cosine=min_cosine,
        model_id=encoder.model_id,
        out=run.root / DEDUPE_FILE,
    )
