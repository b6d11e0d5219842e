"""Cold-start evaluation: recommend pins nobody has engaged with, from their features alone.

The `cold-start` protocol holds a seeded share of the pins out entirely; the hybrid recommender
sees them only through item features (caption or image embeddings). It is compared with
baselines that can rank cold pins: the exact expectation of a uniformly random ranking, the
training popularity of the pin's category, and content kNN over the user's history on the same
features. Plain item popularity is not one: it scores every cold pin 0.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pinlab_data import (
    Dataset,
    Float32Array,
    InteractionLog,
    PinlabDataError,
    interaction_log,
    load_dataset,
    write_json_atomic,
)
from pinlab_eval import (
    ContentKNN,
    FeaturePopularity,
    Holdout,
    apply_protocol,
    evaluate_holdout,
    protocol_spec,
    random_ranking_metrics,
)
from pinlab_models import (
    CNNEncoder,
    FitReport,
    HybridConfig,
    HybridRecommender,
    Scorer,
    TextEncoder,
    TrainContext,
    TrainProgress,
    load_image_text_model,
    resolve_device,
)
from pinlab_tasks._output import log as logger
from pinlab_tasks.runs import RunLayout

FeatureKind = Literal["text", "visual", "aligned"]
COLD_KS = (10, 20)
KNN_NEIGHBOURS = (1, 5, 25)
"""Content kNN's neighbours (1: the nearest history item), chosen on the validation holdout."""
HEADLINE = ("hr@10", "ndcg@10")


def item_features(
    ds: Dataset, log: InteractionLog, kind: FeatureKind, run: RunLayout
) -> Float32Array:
    """One feature row per item of `log`, in its index order.

    `text`: MiniLM embeddings of the captions (zeros for a pin without one: no text, no
    signal); `visual`: the run's trained CNN encoder on the images; `aligned`: the run's image
    tower aligned to text (`pinlab train align`).
    """
    rows = _pin_rows(ds, log)
    if kind == "text":
        captions = ds.pins.column("caption").to_pylist()
        texts = [captions[r] for r in rows]
        if not any(t.strip() for t in texts):
            raise PinlabDataError(
                f"{ds.root} has no pin captions, and text item features are made of them; load "
                "captions with the data (e.g. --text-col), or train a model that reads ids alone"
            )
        return caption_vectors(texts)
    if ds.images is None:
        raise PinlabDataError(f"{ds.root} has no packed images for {kind} item features")
    images = np.asarray(ds.images[ds.pins.column("image_row").to_numpy()[rows]])
    if kind == "visual":
        return CNNEncoder.load(run.encoder).embed(images)
    return load_image_text_model(run.image_text).embed_images(images)


def caption_vectors(captions: list[str]) -> Float32Array:
    """MiniLM embeddings of `captions`, zeros for an empty one: no text, no signal (and no
    made-up words standing in for it)."""
    worded = np.array([bool(c.strip()) for c in captions], dtype=bool)
    if not worded.all():
        logger.warning("%d of %d pins have no caption: their text features are zeros",
                       int((~worded).sum()), len(captions))  # fmt: skip
    vectors = np.zeros((len(captions), TextEncoder.embedding_dim), dtype=np.float32)
    if worded.any():
        vectors[worded] = TextEncoder().encode(
            [c for c, w in zip(captions, worded, strict=True) if w]
        )
    return vectors


def item_categories(ds: Dataset, log: InteractionLog) -> np.ndarray:
    """Each item's category as a dense code, in `log`'s item order."""
    categories = np.asarray(ds.pins.column("category").to_pylist(), dtype=object)
    codes: np.ndarray = np.unique(categories, return_inverse=True)[1].astype(np.int64)
    ordered: np.ndarray = codes[_pin_rows(ds, log)]
    return ordered


def _pin_rows(ds: Dataset, log: InteractionLog) -> np.ndarray:
    pin_ids = ds.pin_ids()
    order = np.argsort(pin_ids)
    rows: np.ndarray = order[np.searchsorted(pin_ids, log.item_ids, sorter=order)]
    return rows


def eval_cold_start(
    run: RunLayout,
    data_dir: Path | None,
    features: FeatureKind,
    seed: int,
    device: str,
    cold_fraction: float = 0.2,
    config: HybridConfig | None = None,
    progress: TrainProgress = True,
) -> dict[str, Any]:
    """Fit the hybrid and the baselines on the warm pins; rank the cold pins for every user.

    The hybrid's epochs and content kNN's neighbours are chosen on the protocol's validation
    holdout (cold pins inside the training part); then each is refitted on the whole training
    part. The hybrid is reported as a ratio to the strongest baseline on each headline metric.
    """
    start = time.perf_counter()
    data_dir = run.trained_data_dir() if data_dir is None else data_dir
    ds = load_dataset(data_dir)
    log = interaction_log(ds)
    spec = protocol_spec("cold-start", {"seed": seed, "cold_fraction": cold_fraction})
    split = apply_protocol(log, spec)
    config = config or HybridConfig()
    device = resolve_device(device)
    run.log_step(
        "eval cold-start",
        {"protocol": spec.settings(), "features": features, "hybrid": config.model_dump()},
        data_dir,
    )
    vectors = item_features(ds, log, features, run)
    directory = run.root / "cold_start"

    tuned = config
    if split.valid.counts.target_users:
        _, probe = _fit_hybrid(
            config, split.valid.train, vectors, directory / "valid", seed, device, progress,
            split.valid,
        )  # fmt: skip
        tuned = config.model_copy(update={"epochs": max(1, probe.best_epoch)})
    hybrid, _ = _fit_hybrid(tuned, split.test.train, vectors, directory, seed, device, progress)
    hybrid.save(directory / "hybrid.pt")
    categories = item_categories(ds, log)
    neighbours = _choose_neighbours(split.valid, vectors)
    baselines: dict[str, Scorer] = {
        "category-popularity": FeaturePopularity(split.test.train, categories, seed),
        "content-knn": ContentKNN(split.test.train, vectors, neighbours, split.test.candidates),
    }
    models = {"hybrid": evaluate_holdout(hybrid, split.test, ks=COLD_KS).means()}
    models["random"] = random_ranking_metrics(split.test, COLD_KS)
    for name, scorer in baselines.items():
        models[name] = evaluate_holdout(scorer, split.test, ks=COLD_KS).means()
    strongest = {
        metric: max((n for n in models if n != "hybrid"), key=lambda n: models[n][metric])
        for metric in HEADLINE
    }
    assert split.test.candidates is not None
    result = {
        "protocol": spec.label(),
        "features": features,
        "feature_dim": int(vectors.shape[1]),
        "cold_items": len(split.test.candidates),
        "counts": split.test.counts.model_dump(),
        "hybrid_epochs": tuned.epochs,
        "content_knn_neighbours": neighbours,
        "models": models,
        "strongest_baseline": strongest,
        "vs_strongest_baseline": {
            metric: models["hybrid"][metric] / max(models[name][metric], 1e-12)
            for metric, name in strongest.items()
        },
        "hr@10_vs_random": models["hybrid"]["hr@10"] / max(models["random"]["hr@10"], 1e-12),
        "seconds": round(time.perf_counter() - start, 2),
    }
    write_json_atomic(directory / "eval.json", result)
    return result


def _fit_hybrid(
    config: HybridConfig,
    train: InteractionLog,
    vectors: Float32Array,
    directory: Path,
    seed: int,
    device: str,
    progress: TrainProgress,
    valid: Holdout | None = None,
) -> tuple[HybridRecommender, FitReport]:
    model = HybridRecommender(config)
    ctx = TrainContext(
        run_dir=directory, seed=seed, device=device, progress=progress, item_features=vectors
    )

    def validate(scorer: Scorer) -> float:
        assert valid is not None
        return evaluate_holdout(scorer, valid, ks=(10,)).means()["ndcg@10"]

    return model, model.fit(train, ctx, validate if valid is not None else None)


def _choose_neighbours(valid: Holdout, vectors: Float32Array) -> int:
    """Content kNN's neighbours with the best validation ndcg@10 (the smallest among ties)."""
    if not valid.counts.target_users:
        return KNN_NEIGHBOURS[0]

    def ndcg(neighbours: int) -> float:
        scorer = ContentKNN(valid.train, vectors, neighbours, valid.candidates)
        return evaluate_holdout(scorer, valid, ks=(10,)).means()["ndcg@10"]

    scores = {n: ndcg(n) for n in KNN_NEIGHBOURS}
    return max(KNN_NEIGHBOURS, key=lambda n: (scores[n], -n))
