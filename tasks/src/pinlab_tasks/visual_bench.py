"""`pinlab bench visual`: every encoder recipe against baselines, under one retrieval protocol.

Protocol `unseen-classes` (the metric-learning one, as on CUB or SOP): the labels are split in
two by a seeded shuffle; encoders train on the first half's images and are measured on the
second half's, whose classes they never saw. A dataset with fewer than four labels has
`held-out-images` instead: half the images (a hash of pin id and seed) are held out and the
rest train. Measured on the evaluation images: Recall@1/@10 and MAP@R (each image queries all
the others), and linear-probe accuracy (logistic regression on frozen embeddings, trained on
half the evaluation images and scored on the other half). Baselines: raw pixels and the
untrained encoder. Epochs are fixed per recipe (no early stopping): nothing is tuned on the
evaluation classes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the PyTorch convention

from pinlab_data import (
    Dataset,
    PinlabDataError,
    holdout_mask,
    load_dataset,
    write_json_atomic,
)
from pinlab_eval import embedding_map, evaluate_retrieval
from pinlab_models import (
    CNNEncoder,
    EncoderConfig,
    Recipe,
    RecipeConfig,
    TrainContext,
    resolve_device,
    seed_everything,
    train_with_recipe,
)
from pinlab_tasks.benchmarks import peak_rss
from pinlab_tasks.runs import RunLayout

RECIPES: tuple[Recipe, ...] = ("supcon", "simclr", "proxy-anchor")
MIN_CLASSES_UNSEEN = 4
RAW_SIDE = 32
"""Raw-pixel baseline: images average-pooled to at most this side, so its width stays small."""
TARGET_RECALL_AT_1 = 0.90

# Chosen by a GPU sweep on the default synthetic world; the whole bench takes about 3 minutes
# on 2 CPU cores. SimCLR learns without labels, so it sees fewer epochs at
# twice the cost each and stronger views (SimCLR's own advice: crops, colour, grey).
RECIPE_ENCODER: dict[Recipe, dict[str, Any]] = {
    "supcon": {"epochs": 40},
    "simclr": {"epochs": 15},
    "proxy-anchor": {"epochs": 40, "batch_size": 32},
}
RECIPE_SETTINGS: dict[Recipe, dict[str, Any]] = {
    "supcon": {},
    "simclr": {"crop_scale": 0.3, "rotation_degrees": 180, "hue": 0.5, "grayscale_p": 0.2},
    "proxy-anchor": {},
}


@dataclass(frozen=True)
class VisualProtocol:
    name: str
    train: np.ndarray
    """Rows of the pins table the encoders train on."""
    test: np.ndarray
    """Rows measured."""
    train_classes: list[str]
    test_classes: list[str]


def visual_protocol(labels: np.ndarray, pin_ids: np.ndarray, seed: int) -> VisualProtocol:
    """Split classes in two when there are enough of them, else images within each class."""
    classes = sorted(set(labels.tolist()))
    if len(classes) < 2:
        raise PinlabDataError(
            f"bench visual needs labelled images of at least 2 classes, found {len(classes)} "
            f"({', '.join(classes)}); load images with one folder per class or a label column"
        )
    if len(classes) >= MIN_CLASSES_UNSEEN:
        shuffled = np.random.default_rng(seed).permutation(classes).tolist()
        seen = set(shuffled[: len(classes) // 2])
        in_train = np.array([label in seen for label in labels.tolist()])
        return VisualProtocol(
            "unseen-classes",
            np.flatnonzero(in_train),
            np.flatnonzero(~in_train),
            sorted(seen),
            sorted(set(classes) - seen),
        )
    held_out = holdout_mask(pin_ids, 0.5, seed)
    return VisualProtocol(
        "held-out-images", np.flatnonzero(~held_out), np.flatnonzero(held_out), classes, classes
    )


def linear_probe(embeddings: np.ndarray, labels: np.ndarray, fit: np.ndarray) -> float:
    """Accuracy of multinomial logistic regression on frozen embeddings.

    Fitted (L-BFGS, light L2) on the rows where `fit` is True; scored on the others.
    """
    names, y = np.unique(labels, return_inverse=True)
    x = torch.from_numpy(np.asarray(embeddings, dtype=np.float32))
    target = torch.from_numpy(y.astype(np.int64))
    train, test = torch.from_numpy(fit), torch.from_numpy(~fit)
    if int(train.sum()) == 0 or int(test.sum()) == 0:
        raise PinlabDataError("the linear probe needs images on both sides of its split")
    mean, std = x[train].mean(0), x[train].std(0).clamp(min=1e-6)
    x = (x - mean) / std
    x_fit, y_fit = x[train], target[train]
    weight = torch.zeros(x.shape[1], len(names), requires_grad=True)
    bias = torch.zeros(len(names), requires_grad=True)
    # Converged to within 1e-5 of the gradient: further digits do not move the accuracy.
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=100,
        tolerance_grad=1e-5,
        tolerance_change=1e-7,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x_fit @ weight + bias, y_fit)
        loss = loss + 1e-3 * weight.pow(2).sum()
        torch.autograd.backward(loss)
        return loss

    # Matrices this small gain nothing from more threads, and on a busy machine their
    # synchronisation costs 100x the arithmetic.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        optimizer.step(closure)  # type: ignore[no-untyped-call]  # torch leaves LBFGS.step untyped
    finally:
        torch.set_num_threads(threads)
    with torch.no_grad():
        predicted = (x[test] @ weight + bias).argmax(1)
    return float((predicted == target[test]).float().mean())


def packed_images(ds: Dataset) -> np.ndarray:
    """Every pin's image in pin-table order (as workflows reads them, without the serving
    stack that module imports: the bench runs where only training is installed)."""
    rows = ds.pins.column("image_row")
    if ds.images is None or rows.null_count:
        raise PinlabDataError(
            f"{ds.root} lacks packed images (images.npy, image_row) for some pins; load them "
            "with `pinlab data load images`"
        )
    return np.asarray(ds.images[rows.to_numpy()])


def raw_pixels(images: np.ndarray) -> np.ndarray:
    """Pixels pooled to RAW_SIDE, centred and L2-normalised: the no-learning baseline."""
    out = []
    for start in range(0, len(images), 1024):
        x = torch.from_numpy(np.ascontiguousarray(images[start : start + 1024]))
        x = x.permute(0, 3, 1, 2).float()
        if x.shape[-1] > RAW_SIDE:
            x = F.adaptive_avg_pool2d(x, RAW_SIDE)
        out.append(x.flatten(1))
    flat = torch.cat(out)
    flat = flat - flat.mean(0)
    return F.normalize(flat, dim=1).numpy()


def bench_visual(
    data_dir: Path,
    run: RunLayout,
    recipes: Sequence[str] | None = None,
    epochs: int | None = None,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Train each recipe on the protocol's training images, measure all rows, draw the map."""
    started = time.perf_counter()
    unknown = [r for r in recipes or () if r not in RECIPES]
    if unknown:
        raise PinlabDataError(f"unknown recipe {unknown[0]!r}; choose from {', '.join(RECIPES)}")
    chosen = [r for r in RECIPES if recipes is None or r in recipes]
    ds = load_dataset(data_dir)
    images = packed_images(ds)
    labels = np.asarray(ds.pins.column("category").to_pylist(), dtype=object)
    protocol = visual_protocol(labels, ds.pin_ids(), seed)
    test_labels = labels[protocol.test]
    probe_fit = ~holdout_mask(ds.pin_ids()[protocol.test], 0.5, seed + 1)
    dense = np.unique(labels, return_inverse=True)[1].astype(np.int64)
    device = resolve_device(device)
    base = EncoderConfig(image_size=int(images.shape[1]))
    run.log_step(
        "bench visual",
        {
            "seed": seed,
            "protocol": protocol.name,
            "recipes": chosen,
            "epochs": epochs,
            "encoder": base.model_dump(),
            "recipe_encoder": RECIPE_ENCODER,
            "recipe_settings": RECIPE_SETTINGS,
        },
        data_dir,
    )

    def measure(embeddings: np.ndarray) -> dict[str, float]:
        test = embeddings[protocol.test]
        report = evaluate_retrieval(test, dense[protocol.test], ks=(1, 10), protocol=protocol.name)
        return {
            "recall@1": report.metrics["recall@1"],
            "recall@10": report.metrics["recall@10"],
            "map@r": report.metrics["map@r"],
            "linear_probe": linear_probe(test, test_labels, probe_fit),
        }

    def timed_embed(embed: Any) -> tuple[np.ndarray, float]:
        embed(images[:64])  # warm-up: CUDA context, kernels and allocator outside the clock
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        embeddings = np.asarray(embed(images))
        return embeddings, len(images) / max(time.perf_counter() - start, 1e-9)

    results: list[dict[str, Any]] = []
    with peak_rss() as peak:
        raw, speed = timed_embed(raw_pixels)
        results.append(_row("raw pixels", True, measure(raw), None, speed, peak()))
    seed_everything(seed)
    untrained = CNNEncoder(base, device)
    with peak_rss() as peak:
        emb, speed = timed_embed(untrained.embed)
        results.append(_row("untrained", True, measure(emb), None, speed, peak()))
    maps = {"untrained": emb}

    for recipe in chosen:
        overrides = RECIPE_ENCODER[recipe] | ({} if epochs is None else {"epochs": epochs})
        config = base.model_copy(update=overrides)
        recipe_config = RecipeConfig(recipe=recipe, **RECIPE_SETTINGS[recipe])
        ctx = TrainContext(run_dir=run.root / recipe, seed=seed, device=device, progress=progress)
        train_labels = None if recipe == "simclr" else dense[protocol.train]
        with peak_rss() as peak:
            start = time.perf_counter()
            encoder, report = train_with_recipe(
                images[protocol.train], train_labels, config, recipe_config, ctx
            )
            train_seconds = time.perf_counter() - start
            encoder.save(run.root / recipe / "encoder.pt")
            emb, speed = timed_embed(encoder.embed)
            rss = peak()
        train_speed = len(protocol.train) * report.epochs / max(train_seconds, 1e-9)
        row = _row(recipe, False, measure(emb), train_speed, speed, rss)
        row |= {"epochs": report.epochs, "train_seconds": round(train_seconds, 2)}
        results.append(row)
        maps[recipe] = emb

    trained = [r for r in results if not r["baseline"]]
    best = max(trained, key=lambda r: r["metrics"]["recall@1"])
    map_files = {}
    for name in ("untrained", best["recipe"]):
        path = run.root / f"embedding_map_{name}.png"
        title = f"{name}: {protocol.name} ({len(protocol.test)} images), PCA"
        embedding_map(maps[name][protocol.test], test_labels.tolist(), path, title, seed)
        map_files[name] = str(path)
    payload = {
        "dataset": ds.manifest.name,
        "run_dir": str(run.root),
        "protocol": {
            "name": protocol.name,
            "train_images": len(protocol.train),
            "test_images": len(protocol.test),
            "train_classes": protocol.train_classes,
            "test_classes": protocol.test_classes,
        },
        "device": device,
        "threads": torch.get_num_threads(),
        "results": results,
        "best": best["recipe"],
        "targets": {
            "recall@1 >= 0.90 (best recipe)": best["metrics"]["recall@1"] >= TARGET_RECALL_AT_1
        },
        "embedding_maps": map_files,
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json_atomic(run.root / "bench_visual.json", payload)
    return payload


def _row(
    recipe: str,
    baseline: bool,
    metrics: dict[str, float],
    train_speed: float | None,
    embed_speed: float,
    rss: float,
) -> dict[str, Any]:
    return {
        "recipe": recipe,
        "baseline": baseline,
        "metrics": {k: round(v, 4) for k, v in metrics.items()},
        "train_images_per_s": None if train_speed is None else round(train_speed, 1),
        "embed_images_per_s": round(embed_speed, 1),
        "peak_rss_mb": round(rss, 1),
    }
