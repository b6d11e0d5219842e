"""Visual workflows beyond the demo's: encoders trained by recipe, and near-duplicate search.

Each function reads a dataset or run directory, writes under the run (or the dataset, for a
dedupe report without a run) and returns a JSON-able dict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np

from pinlab_data import (
    DedupeReport,
    PinlabDataError,
    dedupe_dataset,
    holdout_mask,
    load_dataset,
    write_json_atomic,
)
from pinlab_eval import evaluate_retrieval, visual_protocol
from pinlab_models import (
    CNNEncoder,
    EncoderConfig,
    ImageEncoder,
    RecipeConfig,
    TrainContext,
    resolve_device,
    seed_everything,
    train_with_recipe,
)
from pinlab_tasks.runs import RunLayout
from pinlab_tasks.workflows import VALID_FRACTION, VisualSplit, _images, _labels, visual_split

DEDUPE_FILE = "duplicates.json"
EncoderProtocol = Literal["held-out-pins", "unseen-classes"]


def train_encoder_recipe(
    run: RunLayout,
    data_dir: Path,
    config: EncoderConfig,
    recipe: RecipeConfig,
    seed: int,
    device: str,
    progress: bool = True,
    protocol: EncoderProtocol = "held-out-pins",
) -> dict[str, Any]:
    """Train an encoder of any architecture with a recipe.

    `held-out-pins`: 20% of pins never trained on (as `train visual`); `unseen-classes`: half
    the categories never trained on (held-out images when there are fewer than 4 categories),
    as `bench visual`; `eval visual` measures the held-out part of whichever ran. Writes the
    encoder where `pinlab train visual` does (RUN/visual/encoder.pt, and the same
    initialisation untrained beside it), so eval, index and search use it unchanged.
    """
    ds = load_dataset(data_dir)
    images, labels = _images(ds), _labels(ds)
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

    ctx = TrainContext(run_dir=run.visual, seed=seed, device=device, progress=progress)
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
