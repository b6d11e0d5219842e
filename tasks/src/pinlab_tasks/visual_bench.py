"""`pinlab bench visual`: every encoder recipe against baselines, under one retrieval protocol.

Protocol `unseen-classes` (the metric-learning one, as on CUB or SOP): the labels are split in
two by a seeded shuffle; encoders train on the first half's images and are measured on the
second half's, whose classes they never saw. A dataset with fewer than four labels has
`held-out-images` instead: half the images (a hash of pin id and seed) are held out and the
rest train. Measured on the evaluation images: Recall@1/@10 and MAP@R (each image queries all
the others), and linear-probe accuracy (logistic regression on frozen embeddings, trained on
half the evaluation images and scored on the other half). Baselines: raw pixels and the
untrained encoder.

Selection, blind to the test classes: inside the training classes, `validation_classes`
holds half the classes out for validation and fits on the rest. Each recipe's settings are
searched there (`pinlab_models.RECIPE_SEARCH_SPACES`: learning rate, weight decay, batch size,
crop scale, and the loss's own temperature or proxy margin, scale and learning rate) by an
Optuna study: seeded TPE, the recipe's defaults (`RECIPE_ENCODER`, `RECIPE_SETTINGS`) as trial
0, every trial's epochs early-stopped (up to the cap) on validation-class recall@1, the median
rule pruning weak curves. The best trial's settings and epochs are then refitted on all
training classes and measured on the test classes. The whole pipeline repeats over `seeds`
class splits (and training seeds); rows report the mean, standard deviation and per-seed
values, and which chosen settings sit on the edge of their range.

Budget: by default each recipe and split gets at most `DEFAULT_TRIALS` trials and
`DEFAULT_BUDGET_SECONDS` seconds of search (trial 0 always runs whole; later trials stop their
epochs at the deadline). On 2 CPU cores the time binds first: the defaults alone take 25-60 s
per recipe, so 90 s buys 2-4 trials, and the three-split bench on the default world takes
about twice the 10-14 min of choosing epochs alone. `trials=1` is that epochs-only run.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
import torch.nn.functional as F  # noqa: N812 - the PyTorch convention

from pinlab_data import (
    Dataset,
    PinlabDataError,
    holdout_mask,
    load_dataset,
    write_json_atomic,
)
from pinlab_eval import (
    VisualProtocol,
    embedding_map,
    evaluate_retrieval,
    linear_probe,
    seed_std,
    validation_classes,
    visual_protocol,
)
from pinlab_models import (
    CNNEncoder,
    EncoderConfig,
    ImageEncoder,
    Recipe,
    RecipeConfig,
    SearchParam,
    TrainContext,
    TrainProgress,
    recipe_space,
    resolve_device,
    seed_everything,
    split_settings,
    train_with_recipe,
)
from pinlab_tasks._measure import peak_rss
from pinlab_tasks.runs import RunLayout
from pinlab_tasks.tuning import (
    best_trial,
    defaults_point,
    on_edges,
    run_study,
    space_json,
    suggest,
    trial_json,
)

RECIPES: tuple[Recipe, ...] = ("supcon", "simclr", "proxy-anchor")
RAW_SIDE = 32
"""Raw-pixel baseline: images average-pooled to at most this side, so its width stays small."""
TARGET_RECALL_AT_1 = 0.90
DEFAULT_TRIALS = 8
DEFAULT_BUDGET_SECONDS = 90.0

# Each recipe's starting point (the search's trial 0) and its epoch cap. SimCLR learns
# without labels, so it sees fewer epochs at twice the cost each and strong views (SimCLR's
# own advice: crops, colour, grey); its rotation, hue and grey chance are not searched.
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
    progress: TrainProgress = True,
    seeds: int = 3,
    trials: int = DEFAULT_TRIALS,
    budget_seconds: float | None = DEFAULT_BUDGET_SECONDS,
) -> dict[str, Any]:
    """Every recipe and baseline over `seeds` class splits; mean, spread and per-seed values.

    Split s uses seed `seed + s` for its classes and its training. Each recipe's settings and
    epochs are searched (at most `trials` trials and `budget_seconds`, per recipe and split;
    None or 0: no time limit) on validation classes carved out of the training classes, then
    the encoder is refitted on all training classes and measured on the test classes.
    """
    started = time.perf_counter()
    unknown = [r for r in recipes or () if r not in RECIPES]
    if unknown:
        raise PinlabDataError(f"unknown recipe {unknown[0]!r}; choose from {', '.join(RECIPES)}")
    if seeds < 1:
        raise PinlabDataError(f"--seeds must be at least 1, got {seeds}")
    check_search(trials, budget_seconds)
    search = Search(trials, budget_seconds or None, run.root / "optuna.db")
    chosen = [r for r in RECIPES if recipes is None or r in recipes]
    ds = load_dataset(data_dir)
    images = packed_images(ds)
    labels = np.asarray(ds.pins.column("category").to_pylist(), dtype=object)
    pin_ids = ds.pin_ids()
    device = resolve_device(device)
    base = EncoderConfig(image_size=int(images.shape[1]))
    max_epochs = {r: epochs or int(RECIPE_ENCODER[r]["epochs"]) for r in chosen}
    run.log_step(
        "bench visual",
        {
            "seed": seed,
            "seeds": seeds,
            "recipes": chosen,
            "max_epochs": max_epochs,
            "encoder": base.model_dump(),
            "recipe_encoder": RECIPE_ENCODER,
            "recipe_settings": RECIPE_SETTINGS,
            "trials": trials,
            "budget_seconds": search.budget_seconds,
        },
        data_dir,
    )
    splits = []
    for s in range(seeds):
        split = _bench_split(
            images, labels, pin_ids, chosen, max_epochs, base, seed + s, device, run, progress,
            search,
        )  # fmt: skip
        # Each finished split is kept, so a bench stopped part-way still has its seeds.
        write_json_atomic(
            run.root / f"seed{split.seed}" / "rows.json",
            split.describe() | {"rows": list(split.rows.values())},
        )
        splits.append(split)
    first = splits[0]
    results = [
        _summarize([split.rows[name] for split in splits]) for name in first.rows
    ]  # fmt: skip
    trained = [r for r in results if not r["baseline"]]
    best = max(trained, key=lambda r: r["metrics"]["recall@1"])
    map_files = {}
    test_labels = labels[first.protocol.test]
    for name in ("untrained", best["recipe"]):
        path = run.root / f"embedding_map_{name}.png"
        title = f"{name}: {first.protocol.name} ({len(first.protocol.test)} images), PCA"
        embedding_map(first.maps[name], test_labels.tolist(), path, title, seed)
        map_files[name] = str(path)
    payload = {
        "dataset": ds.manifest.name,
        "run_dir": str(run.root),
        "protocol": {
            "name": first.protocol.name,
            "selection": "settings searched (Optuna TPE, defaults first) and epochs "
            "early-stopped on validation-class recall@1 (half the training classes, fitting "
            "on the other half), then refitted on all training classes",
            "seeds": [split.seed for split in splits],
            "splits": [split.describe() for split in splits],
            "train_images": len(first.protocol.train),
            "test_images": len(first.protocol.test),
            "train_classes": first.protocol.train_classes,
            "test_classes": first.protocol.test_classes,
        },
        "search": {
            "trials": trials,
            "budget_seconds": search.budget_seconds,
            "storage": str(search.storage),
            "spaces": {r: space_json(recipe_space(r)) for r in chosen},
        },
        "device": device,
        "threads": torch.get_num_threads(),
        "results": results,
        "paired": _paired(results, best["recipe"]),
        "best": best["recipe"],
        "targets": {
            "recall@1 >= 0.90 (best recipe, mean over seeds)": best["metrics"]["recall@1"]
            >= TARGET_RECALL_AT_1
        },
        "embedding_maps": map_files,
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json_atomic(run.root / "bench_visual.json", payload)
    return payload


def check_search(trials: int, budget_seconds: float | None) -> None:
    if trials < 1:
        raise PinlabDataError(f"--trials must be at least 1 (1: the defaults only), got {trials}")
    if budget_seconds is not None and not budget_seconds >= 0:
        raise PinlabDataError(
            f"--budget must be seconds >= 0 (0: no time limit), got {budget_seconds:g}"
        )


@dataclass(frozen=True)
class Search:
    """How much searching each recipe gets per split, and where its studies are kept."""

    trials: int
    budget_seconds: float | None
    storage: Path


@dataclass
class _Split:
    seed: int
    protocol: VisualProtocol
    valid: VisualProtocol
    rows: dict[str, dict[str, Any]]
    maps: dict[str, np.ndarray]
    """Test-image embeddings for the PCA maps."""

    def describe(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "fit_classes": self.valid.train_classes,
            "validation_classes": self.valid.test_classes,
            "test_classes": self.protocol.test_classes,
        }


def _bench_split(
    images: np.ndarray,
    labels: np.ndarray,
    pin_ids: np.ndarray,
    recipes: Sequence[Recipe],
    max_epochs: dict[Recipe, int],
    base: EncoderConfig,
    seed: int,
    device: str,
    run: RunLayout,
    progress: TrainProgress,
    search: Search,
) -> _Split:
    protocol = visual_protocol(labels, pin_ids, seed)
    valid = validation_classes(protocol, labels, pin_ids, seed)
    test_labels = labels[protocol.test]
    probe_fit = ~holdout_mask(pin_ids[protocol.test], 0.5, seed + 1)
    dense = np.unique(labels, return_inverse=True)[1].astype(np.int64)

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

    rows: dict[str, dict[str, Any]] = {}
    with peak_rss() as peak:
        raw, speed = timed_embed(raw_pixels)
        rows["raw pixels"] = _row("raw pixels", True, measure(raw), None, speed, peak())
    seed_everything(seed)
    untrained = CNNEncoder(base, device)
    with peak_rss() as peak:
        emb, speed = timed_embed(untrained.embed)
        rows["untrained"] = _row("untrained", True, measure(emb), None, speed, peak())
    maps = {"untrained": emb[protocol.test]}

    for recipe in recipes:
        config = base.model_copy(update=RECIPE_ENCODER[recipe] | {"epochs": max_epochs[recipe]})
        recipe_config = RecipeConfig(recipe=recipe, **RECIPE_SETTINGS[recipe])
        directory = run.root / f"seed{seed}" / recipe
        # Only training rows go in: the test classes cannot sway the choice.
        config, recipe_config, epochs, record = search_recipe(
            images[protocol.train],
            labels[protocol.train],
            pin_ids[protocol.train],
            config,
            recipe_config,
            recipe_space(recipe) if search.trials > 1 else {},
            TrainContext(
                run_dir=directory / "valid",
                seed=seed,
                device=device,
                progress=progress,
                metric="recall@1",
            ),
            search,
        )
        ctx = TrainContext(run_dir=directory, seed=seed, device=device, progress=progress)
        train_labels = None if recipe == "simclr" else dense[protocol.train]
        with peak_rss() as peak:
            start = time.perf_counter()
            encoder, report = train_with_recipe(
                images[protocol.train],
                train_labels,
                config.model_copy(update={"epochs": epochs}),
                recipe_config,
                ctx,
            )
            train_seconds = time.perf_counter() - start
            encoder.save(directory / "encoder.pt")
            emb, speed = timed_embed(encoder.embed)
            rss = peak()
        train_speed = len(protocol.train) * report.epochs / max(train_seconds, 1e-9)
        row = _row(recipe, False, measure(emb), train_speed, speed, rss)
        row |= {
            "epochs": epochs,
            "max_epochs": max_epochs[recipe],
            "train_seconds": round(train_seconds, 2),
            "search": record,
        }
        rows[recipe] = row
        maps[recipe] = emb[protocol.test]
    return _Split(seed, protocol, valid, rows, maps)


def search_recipe(
    images: np.ndarray,
    labels: np.ndarray,
    pin_ids: np.ndarray,
    config: EncoderConfig,
    recipe: RecipeConfig,
    space: dict[str, SearchParam],
    ctx: TrainContext,
    search: Search,
) -> tuple[EncoderConfig, RecipeConfig, int, dict[str, Any]]:
    """The settings and epochs validation classes choose for `recipe`, and the search's record.

    Takes the training rows only: `visual_protocol` applied to them again (as
    `validation_classes` does) fits on half the training classes and validates on the
    others, after every epoch (recall@1). Trial 0 is `config` and `recipe` as given, with its
    epochs early-stopped up to `config.epochs`; an empty `space` runs that trial alone.
    """
    inner = visual_protocol(labels, pin_ids, ctx.seed)
    dense = np.unique(labels, return_inverse=True)[1].astype(np.int64)
    fit_images, valid_images, valid_labels = (
        images[inner.train],
        images[inner.test],
        dense[inner.test],
    )
    fit_labels = None if recipe.recipe == "simclr" else dense[inner.train]
    start = config.model_dump() | recipe.model_dump()

    def objective(trial: optuna.Trial, deadline: float | None) -> float:
        point = {name: suggest(trial, name, param) for name, param in space.items()}
        trial.set_user_attr("point", point)
        curve: list[tuple[int, float]] = []

        def validate(encoder: ImageEncoder) -> float:
            report = evaluate_retrieval(
                encoder.embed(valid_images), valid_labels, ks=(1,), protocol="valid"
            )
            value = report.metrics["recall@1"]
            curve.append((len(curve) + 1, value))
            trial.set_user_attr("curve", curve)
            trial.report(value, len(curve))
            if trial.should_prune():
                raise optuna.TrialPruned
            return value

        encoder_update, recipe_update = split_settings(point)
        # The defaults always run whole: the budget bounds the exploration beyond them.
        trial_ctx = replace(
            ctx,
            run_dir=ctx.run_dir / f"trial-{trial.number}",
            deadline=None if trial.number == 0 else deadline,
        )
        _, report = train_with_recipe(
            fit_images,
            fit_labels,
            config.model_copy(update=encoder_update),
            recipe.model_copy(update=recipe_update),
            trial_ctx,
            validate,
        )
        trial.set_user_attr("epochs", max(1, report.best_epoch))
        return float(report.best_valid or 0.0)

    study, seconds = run_study(
        f"{recipe.recipe}-seed{ctx.seed}",
        objective,
        first=defaults_point(space, start),
        trials=search.trials if space else 1,
        budget_seconds=search.budget_seconds,
        seed=ctx.seed,
        storage=search.storage,
        prune_after=2,
        warmup_epochs=5,
    )
    best = best_trial(study)
    chosen = dict(best.user_attrs["point"])
    encoder_update, recipe_update = split_settings(chosen)
    epochs = int(best.user_attrs["epochs"])
    record = {
        "space": space_json(space),
        "metric": "recall@1",
        "defaults": {name: start[name] for name in space},
        "chosen": chosen,
        "epochs": epochs,
        "valid_value": round(float(best.value or 0.0), 5),
        "best_trial": best.number,
        "boundary": on_edges(space, chosen),
        "trials": [trial_json(t) for t in study.trials],
        "seconds": seconds,
    }
    return (
        config.model_copy(update=encoder_update),
        recipe.model_copy(update=recipe_update),
        epochs,
        record,
    )


def _summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One row over seeds: mean metrics, their standard deviation and per-seed values."""
    first = rows[0]
    per_seed = {m: [r["metrics"][m] for r in rows] for m in first["metrics"]}
    summary: dict[str, Any] = {
        "recipe": first["recipe"],
        "baseline": first["baseline"],
        "metrics": {m: round(float(np.mean(v)), 4) for m, v in per_seed.items()},
        "std": {m: round(seed_std(v), 4) for m, v in per_seed.items()},
        "per_seed": per_seed,
    }
    for key in ("train_images_per_s", "embed_images_per_s", "peak_rss_mb"):
        values = [r[key] for r in rows if r[key] is not None]
        summary[key] = round(float(np.mean(values)), 1) if values else None
    if not first["baseline"]:
        chosen = [r["epochs"] for r in rows]
        searches = [r["search"] for r in rows]
        summary |= {
            "settings_per_seed": [s["chosen"] for s in searches],
            "trials_per_seed": [len(s["trials"]) for s in searches],
            # A chosen setting at the edge of its range: the best may lie beyond it.
            "on_edge_per_seed": [s["boundary"] for s in searches],
            "search_per_seed": searches,
            "epochs_per_seed": chosen,
            "max_epochs": first["max_epochs"],
            # The search could not look past its cap: more epochs might have helped.
            "epochs_at_edge": [e >= first["max_epochs"] for e in chosen],
            "train_seconds": round(float(np.mean([r["train_seconds"] for r in rows])), 2),
        }
    return summary


def _paired(results: list[dict[str, Any]], best: str) -> list[dict[str, Any]]:
    """Per-seed differences in recall@1 and map@r between the best recipe and each other row."""
    per_seed = {r["recipe"]: r["per_seed"] for r in results}
    out = []
    for row in results:
        if row["recipe"] == best:
            continue
        entry: dict[str, Any] = {"recipe": best, "vs": row["recipe"]}
        for metric in ("recall@1", "map@r"):
            diff = np.subtract(per_seed[best][metric], per_seed[row["recipe"]][metric])
            entry[metric] = {
                "mean_diff": round(float(diff.mean()), 4),
                "std_diff": round(seed_std(diff), 4),
                "wins": int((diff > 0).sum()),
            }
        out.append(entry)
    return out


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
