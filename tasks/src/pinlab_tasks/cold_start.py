"""Cold-start evaluation: recommend pins nobody has engaged with, from their features alone.

The `cold-start` protocol holds a seeded share of the pins out entirely; the hybrid recommender
sees them only through item features (caption or image embeddings). It is compared with the
popularity baseline and with the exact expectation of a uniformly random ranking.
"""

from __future__ import annotations

import math
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
from pinlab_eval import Holdout, apply_protocol, evaluate_holdout, protocol_spec
from pinlab_models import (
    CNNEncoder,
    FitReport,
    HybridConfig,
    HybridRecommender,
    Popularity,
    Scorer,
    TextEncoder,
    TrainContext,
    load_image_text_model,
    resolve_device,
)
from pinlab_tasks.runs import RunLayout

FeatureKind = Literal["text", "visual", "aligned"]
COLD_KS = (10, 20)


def item_features(
    ds: Dataset, log: InteractionLog, kind: FeatureKind, run: RunLayout
) -> Float32Array:
    """One feature row per item of `log`, in its index order.

    `text`: MiniLM embeddings of the captions; `visual`: the run's trained CNN encoder on the
    images; `aligned`: the run's image tower aligned to text (`pinlab train align`).
    """
    pin_ids = ds.pin_ids()
    order = np.argsort(pin_ids)
    rows = order[np.searchsorted(pin_ids, log.item_ids, sorter=order)]
    if kind == "text":
        captions = ds.pins.column("caption").to_pylist()
        return TextEncoder().encode([captions[r] for r in rows])
    if ds.images is None:
        raise PinlabDataError(f"{ds.root} has no packed images for {kind} item features")
    images = np.asarray(ds.images[ds.pins.column("image_row").to_numpy()[rows]])
    if kind == "visual":
        return CNNEncoder.load(run.encoder).embed(images)
    return load_image_text_model(run.image_text).embed_images(images)


def random_hit_rate(holdout: Holdout, k: int) -> float:
    """Expected hr@k of a uniformly random ranking of the candidates, exactly.

    A user with r relevant among C candidates misses with probability C(C-r, k) / C(C, k).
    """
    assert holdout.candidates is not None
    num_candidates = len(holdout.candidates)
    users, counts = np.unique(holdout.target.users, return_counts=True)
    k = min(k, num_candidates)
    misses = [
        math.comb(num_candidates - r, k) / math.comb(num_candidates, k)
        for r in np.minimum(counts, num_candidates)
    ]
    return float(1.0 - np.mean(misses)) if len(users) else 0.0


def eval_cold_start(
    run: RunLayout,
    data_dir: Path | None,
    features: FeatureKind,
    seed: int,
    device: str,
    cold_fraction: float = 0.2,
    config: HybridConfig | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Fit the hybrid and popularity on the warm pins; rank the cold pins for every user.

    The hybrid's epochs are chosen on the protocol's validation holdout (cold pins inside the
    training part), then it is refitted on the whole training part for that many epochs.
    """
    start = time.perf_counter()
    data_dir = run.data_dir() if data_dir is None else data_dir
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
    popularity = Popularity()
    popularity.fit(split.test.train, TrainContext(run_dir=directory / "popularity", progress=False))

    models = {
        name: evaluate_holdout(model, split.test, ks=COLD_KS).means()
        for name, model in (("hybrid", hybrid), ("popularity", popularity))
    }
    models["random"] = {f"hr@{k}": random_hit_rate(split.test, k) for k in COLD_KS}
    hr = {name: metrics["hr@10"] for name, metrics in models.items()}
    assert split.test.candidates is not None
    result = {
        "protocol": spec.label(),
        "features": features,
        "feature_dim": int(vectors.shape[1]),
        "cold_items": len(split.test.candidates),
        "counts": split.test.counts.model_dump(),
        "hybrid_epochs": tuned.epochs,
        "models": models,
        "hr@10_vs_random": hr["hybrid"] / max(hr["random"], 1e-12),
        "hr@10_vs_popularity": hr["hybrid"] / max(hr["popularity"], 1e-12),
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
    progress: bool,
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
