"""`pinlab bench recsys`: every recommender under one named protocol, in one table.

Each model is fitted on the protocol's training part and measured on its test part. Its
settings are chosen first on the validation split (the same protocol applied again inside the
training part): every point of the model's registered `tune_grid`, and for models that train
in epochs the early-stopped epoch count, by validation NDCG@10. The test split never chooses.
"""

from __future__ import annotations

import importlib.util
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from rich.table import Table

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
    IALSConfig,
    Recommender,
    Scorer,
    TextEncoder,
    TrainContext,
    build_recommender,
    interaction_matrix,
    recommender_names,
    recommender_spec,
    resolve_device,
)
from pinlab_tasks._output import stdout

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


def grid_points(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in a fixed order ([{}] for an empty grid)."""
    keys = sorted(grid)
    return [dict(zip(keys, values, strict=True)) for values in product(*(grid[k] for k in keys))]


def tune_on_validation(
    name: str,
    split: ProtocolSplit,
    ctx: TrainContext,
    base: Mapping[str, Any] | None = None,
    metric: str = "ndcg@10",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The model's settings chosen on the validation split: its grid, and epochs by early stop.

    Each grid point (over `base` settings) is fitted on the validation split's training part
    and scored on its target; models that train in epochs keep their best epoch. The test
    split is never read.
    """
    base = dict(base or {})
    if len(split.valid.target) == 0:
        return base, {}
    k = int(metric.split("@")[1])

    def validate(scorer: Scorer) -> float:
        return evaluate_holdout(scorer, split.valid, ks=(k,)).means()[metric]

    field = _epoch_field(name)
    start = time.perf_counter()
    tried: list[tuple[float, dict[str, Any]]] = []
    for extra in grid_points(recommender_spec(name).tune_grid):
        point = base | extra
        probe = build_recommender(name, point)
        probe_ctx = replace(ctx, run_dir=ctx.run_dir / "validation", progress=False)
        report = probe.fit(split.valid.train, probe_ctx, validate)
        value = report.best_valid if report.best_valid is not None else validate(probe)
        tried.append((value, point | ({field: report.best_epoch} if field else {})))
    best_value, best = max(tried, key=lambda pair: pair[0])
    tuned = {
        "settings": best,
        f"valid_{metric}": round(best_value, 5),
        "grid_points": len(tried),
        "tune_seconds": round(time.perf_counter() - start, 2),
    }
    return best, tuned


def _member_settings(
    name: str, split: ProtocolSplit, ctx: TrainContext, chosen: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """An ensemble starts from its members' validated settings (tuning those not yet tuned)."""
    config_type = recommender_spec(name).config_type
    if "member_settings" not in config_type.model_fields:
        return {}
    members = config_type.model_fields["members"].default
    for member in members:
        if member not in chosen:
            chosen[member] = tune_on_validation(
                member, split, replace(ctx, run_dir=ctx.run_dir / member)
            )[0]
    return {"member_settings": {m: chosen[m] for m in members}}


def _fit_one(
    name: str, split: ProtocolSplit, ctx: TrainContext, chosen: dict[str, dict[str, Any]]
) -> tuple[Recommender, dict[str, Any]]:
    """Tune on validation, then fit on the whole training part with the chosen settings."""
    base = _member_settings(name, split, ctx, chosen)
    settings, tuned = tune_on_validation(name, split, ctx, base)
    chosen[name] = settings
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
    peers: Sequence[str] = (),
) -> dict[str, Any]:
    """Fit and measure each model; rows with CIs, the best two compared, published anchors.

    `peers=("implicit",)` also fits the `implicit` library's ALS with the settings validation
    chose for our iALS (which is added to the models if missing) and reports the ratios;
    `("cornac",)` fits Cornac's BPR as Microsoft Recommenders' benchmark runs it, beside our bpr.
    """
    unknown_peers = sorted(set(peers) - {"implicit", "cornac"})
    if unknown_peers:
        raise PinlabDataError(f"unknown peer {unknown_peers[0]!r}; peers: implicit, cornac")
    names = list(models) if models else recommender_names()
    if "implicit" in peers:
        _require_implicit()
        if "ials" not in names:
            names.append("ials")
    if "cornac" in peers:
        _require_cornac()
        if "bpr" not in names:
            names.append("bpr")
    unknown = [n for n in names if n not in recommender_names()]
    if unknown:
        raise PinlabDataError(
            f"unknown model {unknown[0]!r}; registered: {', '.join(recommender_names())}"
        )
    ds = load_dataset(data_dir)
    split = apply_protocol(interaction_log(ds), protocol)
    if len(split.test.target) == 0:
        raise PinlabDataError(f"protocol {protocol.label()} leaves no test interactions")
    wants_features = any(recommender_spec(n).uses_item_features for n in names)
    features = item_features() if item_features is not None and wants_features else None
    device = resolve_device(device)
    results: dict[str, UserMetrics] = {}
    extras: dict[str, dict[str, Any]] = {}
    chosen: dict[str, dict[str, Any]] = {}
    for name in names:
        ctx = TrainContext(
            run_dir=run_dir / name,
            seed=seed,
            device=device,
            progress=progress,
            item_features=features,
        )
        model, extras[name] = _fit_one(name, split, ctx, chosen)
        results[name] = evaluate_holdout(model, split.test, ks=ks)
    summary = summarize_models(results, metric=f"ndcg@{min(ks)}", seed=seed)
    rows = [{**row.model_dump(), **extras[row.model]} for row in summary.rows]
    peer_rows = [
        implicit_peer(split, chosen["ials"], extras["ials"], results["ials"].means(), seed)
        if peer == "implicit"
        else cornac_peer(split, extras["bpr"], results["bpr"].means(), seed)
        for peer in peers
    ]
    return {
        "dataset": ds.manifest.name,
        "protocol": {"name": protocol.name, **protocol.settings()},
        "counts": split.test.counts.model_dump(),
        "results": rows,
        "comparison": summary.comparison.model_dump() if summary.comparison else None,
        "anchors": [a.model_dump() for a in anchors_for(ds.manifest.name, protocol)],
        "peers": peer_rows,
    }


def item_text_features(data_dir: Path) -> np.ndarray:
    """Each pin's caption (titles and genres for MovieLens) embedded by the packaged MiniLM."""
    ds = load_dataset(data_dir)
    captions = [str(c) or "untitled" for c in ds.pins.column("caption").to_pylist()]
    return TextEncoder().encode(captions)


RECSYS_COLUMNS = ("ndcg@10", "hr@10", "precision@10", "recall@10", "map@10")


def render_recsys(payload: Mapping[str, Any]) -> None:
    """The bench as tables: ours with cost, what validation chose, then published numbers."""
    protocol = dict(payload["protocol"])
    name = protocol.pop("name")
    title = f"bench recsys: {payload['dataset']}, {name} {protocol}"
    table = Table(title=title, title_justify="left")
    table.add_column("model")
    for column in (*RECSYS_COLUMNS, "fit s", "MB"):
        table.add_column(column.replace("precision", "p").replace("recall", "r"), justify="right")
    for row in payload["results"]:
        metrics, ci = row["metrics"], row["ci95"]
        ndcg = f"{metrics['ndcg@10']:.4f}±{(ci['ndcg@10'][1] - ci['ndcg@10'][0]) / 2:.3f}"
        rest = [f"{metrics[c]:.4f}" for c in RECSYS_COLUMNS[1:]]
        cost = [f"{row['fit_seconds']:.2f}", f"{row['peak_rss_mb']:.0f}"]
        table.add_row(row["model"], ndcg, *rest, *cost)
    stdout.print(table)
    for row in payload["results"]:
        chosen = {
            k: v for k, v in row["tuned"].get("settings", {}).items() if k != "member_settings"
        }
        if chosen:
            stdout.print(f"  {row['model']} chosen on validation: {chosen}", highlight=False)
    if comparison := payload.get("comparison"):
        verdict = "significant" if comparison["significant"] else "not significant"
        stdout.print(
            f"{comparison['best']} vs {comparison['runner_up']}: {comparison['metric']} "
            f"{comparison['difference']:+.4f}, p={comparison['p_value']:.3g} ({verdict}; "
            f"{comparison['test']})"
        )
    for peer in payload.get("peers", []):
        ratio = peer["ours_over_peer"]
        stdout.print(
            f"peer {peer['peer']}: ndcg@10 {peer['metrics']['ndcg@10']:.4f} in "
            f"{peer['fit_seconds']:.2f} s; ours/peer: fit time {ratio['fit_seconds']:.2f}x, "
            f"ndcg@10 {ratio['ndcg@10']:.3f}x",
            highlight=False,
        )
    if payload["anchors"]:
        published = Table(title="published, same protocol", title_justify="left")
        for column in ("model", "metrics", "source"):
            published.add_column(column)
        for anchor in payload["anchors"]:
            shown = {k: v for k, v in anchor["metrics"].items() if v is not None}
            values = ", ".join(f"{k} {v:.3f}" for k, v in shown.items())
            published.add_row(anchor["model"], values, anchor["source"].split(",")[0])
        stdout.print(published)


def implicit_peer(
    split: ProtocolSplit,
    settings: Mapping[str, Any],
    ours: Mapping[str, Any],
    our_metrics: Mapping[str, float],
    seed: int,
) -> dict[str, Any]:
    """The `implicit` library's CPU ALS on the same split and settings as our iALS."""
    _require_implicit()
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits  # a dependency of implicit

    matrix = interaction_matrix(split.test.train).astype(np.float32)
    config = IALSConfig.model_validate(dict(settings))
    # implicit's advice: BLAS threads fight its own (it warns at construction otherwise).
    with threadpool_limits(1, "blas"):
        peer = AlternatingLeastSquares(
            factors=config.dim,
            regularization=config.l2,
            alpha=config.alpha,
            iterations=config.iterations,
            calculate_training_loss=False,
            random_state=seed,
        )
        start = time.perf_counter()
        peer.fit(matrix, show_progress=False)
        seconds = time.perf_counter() - start

    class _Peer:
        def score(self, users: np.ndarray) -> np.ndarray:
            scores: np.ndarray = peer.user_factors[users] @ peer.item_factors.T
            return scores.astype(np.float32)

    metrics = evaluate_holdout(_Peer(), split.test, ks=(10,)).means()
    return {
        "peer": f"implicit {implicit_version()} AlternatingLeastSquares (CPU)",
        "settings": config.model_dump(include={"dim", "l2", "alpha", "iterations"}),
        "fit_seconds": round(seconds, 3),
        "metrics": {k: metrics[k] for k in ("ndcg@10", "hr@10", "precision@10")},
        "ours_over_peer": {
            "fit_seconds": round(ours["fit_seconds"] / max(seconds, 1e-9), 3),
            "ndcg@10": round(our_metrics["ndcg@10"] / max(metrics["ndcg@10"], 1e-9), 4),
        },
    }


CORNAC_BPR_SETTINGS = {"k": 200, "max_iter": 200, "learning_rate": 0.01, "lambda_reg": 1e-3}
"""Microsoft Recommenders' MovieLens benchmark runs Cornac's BPR with these (its `bpr_params`)."""


def cornac_peer(
    split: ProtocolSplit, ours: Mapping[str, Any], our_metrics: Mapping[str, float], seed: int
) -> dict[str, Any]:
    """Cornac's BPR, with the benchmark's settings, on the same split as our bpr.

    Like Microsoft Recommenders, it ranks only the items its training data has (others score
    -inf) and trains on every interaction as an unweighted positive.
    """
    _require_cornac()
    from importlib.metadata import version

    import cornac

    train = split.test.train
    triples = zip(train.users.tolist(), train.items.tolist(), [1.0] * len(train), strict=True)
    data = cornac.data.Dataset.from_uir(list(triples), seed=seed)
    peer = cornac.models.BPR(**CORNAC_BPR_SETTINGS, seed=seed, verbose=False)
    start = time.perf_counter()
    peer.fit(data)
    seconds = time.perf_counter() - start
    item_index = np.array([data.iid_map.get(i, -1) for i in range(train.num_items)])
    known = item_index >= 0

    class _Peer:
        def score(self, users: np.ndarray) -> np.ndarray:
            rows = peer.u_factors[[data.uid_map[int(u)] for u in users]]
            inner = rows @ peer.i_factors.T + peer.i_biases
            scores = np.full((len(users), train.num_items), -np.inf, dtype=np.float32)
            scores[:, known] = inner[:, item_index[known]]
            return scores

    metrics = evaluate_holdout(_Peer(), split.test, ks=(10,)).means()
    return {
        "peer": f"cornac {version('cornac')} BPR (Microsoft Recommenders' benchmark settings)",
        "settings": dict(CORNAC_BPR_SETTINGS),
        "fit_seconds": round(seconds, 3),
        "metrics": {k: metrics[k] for k in ("ndcg@10", "hr@10", "precision@10")},
        "ours_over_peer": {
            "fit_seconds": round(ours["fit_seconds"] / max(seconds, 1e-9), 3),
            "ndcg@10": round(our_metrics["ndcg@10"] / max(metrics["ndcg@10"], 1e-9), 4),
        },
    }


def _require_cornac() -> None:
    if importlib.util.find_spec("cornac") is None:
        raise PinlabDataError(
            "the cornac peer needs the optional extra: `uv sync --all-packages --extra cornac`"
        )


def _require_implicit() -> None:
    if importlib.util.find_spec("implicit") is None:
        raise PinlabDataError(
            "the implicit peer needs the optional extra: `uv sync --extra implicit`"
        )


def implicit_version() -> str:
    from importlib.metadata import version

    return version("implicit")
