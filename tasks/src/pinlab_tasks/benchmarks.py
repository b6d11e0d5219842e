"""`pinlab bench recsys`: every recommender under one named protocol, in one table.

Each model is fitted on the protocol's training part and measured on its test part. Models
that train in epochs are first fitted on the validation split (the same protocol applied again
inside the training part) to choose their epoch count by validation NDCG@10, then refitted on
the whole training part for that many epochs: the test split never chooses anything.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from pinlab_data import PinlabDataError, interaction_log, load_dataset
from pinlab_eval import (
    ProtocolSpec,
    ProtocolSplit,
    UserMetrics,
    anchors_for,
    apply_protocol,
    evaluate_holdout,
    summarize_models,
)
from pinlab_models import (
    Recommender,
    Scorer,
    TrainContext,
    build_recommender,
    recommender_names,
    recommender_spec,
    resolve_device,
)

EPOCH_FIELDS = ("epochs", "iterations")
"""Config fields that count training passes; tuned on validation, then fixed for the refit."""


@contextmanager
def peak_rss() -> Iterator[Callable[[], float]]:
    """Samples this process's resident memory while the block runs; yields the peak in MB."""
    process = psutil.Process()
    peak = [process.memory_info().rss]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], process.memory_info().rss)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield lambda: max(peak[0], process.memory_info().rss) / 2**20
    finally:
        done.set()
        thread.join()


def _epoch_field(name: str) -> str | None:
    fields = recommender_spec(name).config_type.model_fields
    return next((f for f in EPOCH_FIELDS if f in fields), None)


def _fit_one(
    name: str,
    split: ProtocolSplit,
    ctx: TrainContext,
    ks: Sequence[int],
) -> tuple[Recommender, dict[str, Any]]:
    """Tune the epoch count on validation when the model has one, then fit on training."""
    settings: dict[str, Any] = {}
    tuned: dict[str, Any] = {}
    field = _epoch_field(name)
    has_valid = len(split.valid.target) > 0
    if field and has_valid:

        def validate(scorer: Scorer) -> float:
            metrics = evaluate_holdout(scorer, split.valid, ks=(10,)).means()
            return metrics["ndcg@10"]

        probe = build_recommender(name)
        start = time.perf_counter()
        probe_ctx = TrainContext(
            run_dir=ctx.run_dir / "validation",
            seed=ctx.seed,
            device=ctx.device,
            progress=ctx.progress,
            item_features=ctx.item_features,
        )
        report = probe.fit(split.valid.train, probe_ctx, validate)
        settings[field] = report.best_epoch
        tuned = {
            field: report.best_epoch,
            "valid_ndcg@10": report.best_valid,
            "tune_seconds": round(time.perf_counter() - start, 2),
        }
    model = build_recommender(name, settings)
    with peak_rss() as peak:
        start = time.perf_counter()
        model.fit(split.test.train, ctx)
        seconds = time.perf_counter() - start
        rss = peak()
    return model, {"fit_seconds": round(seconds, 3), "peak_rss_mb": round(rss, 1), "tuned": tuned}


def bench_recsys(
    data_dir: Path,
    protocol: ProtocolSpec,
    models: Sequence[str] | None,
    run_dir: Path,
    ks: Sequence[int] = (10, 20),
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
    item_features: Callable[[], np.ndarray] | None = None,
) -> dict[str, Any]:
    """Fit and measure each model; rows with CIs, the best two compared, published anchors."""
    names = list(models) if models else recommender_names()
    unknown = [n for n in names if n not in recommender_names()]
    if unknown:
        raise PinlabDataError(
            f"unknown model {unknown[0]!r}; registered: {', '.join(recommender_names())}"
        )
    ds = load_dataset(data_dir)
    split = apply_protocol(interaction_log(ds), protocol)
    if len(split.test.target) == 0:
        raise PinlabDataError(f"protocol {protocol.label()} leaves no test interactions")
    features = item_features() if item_features is not None else None
    device = resolve_device(device)
    results: dict[str, UserMetrics] = {}
    extras: dict[str, dict[str, Any]] = {}
    for name in names:
        ctx = TrainContext(
            run_dir=run_dir / name,
            seed=seed,
            device=device,
            progress=progress,
            item_features=features,
        )
        model, extras[name] = _fit_one(name, split, ctx, ks)
        results[name] = evaluate_holdout(model, split.test, ks=ks)
    summary = summarize_models(results, metric=f"ndcg@{min(ks)}", seed=seed)
    rows = [{**row.model_dump(), **extras[row.model]} for row in summary.rows]
    return {
        "dataset": ds.manifest.name,
        "protocol": {"name": protocol.name, **protocol.settings()},
        "counts": split.test.counts.model_dump(),
        "results": rows,
        "comparison": summary.comparison.model_dump() if summary.comparison else None,
        "anchors": [a.model_dump() for a in anchors_for(ds.manifest.name, protocol)],
    }
