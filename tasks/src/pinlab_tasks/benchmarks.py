"""`pinlab bench recsys`: every recommender under one named protocol, repeated over seeds.

Per seed (its own split seed and training seed), each model's settings are searched on the
validation split (Optuna over its declared space, epochs early-stopped; `pinlab_tasks.tuning`),
then it is refitted on the protocol's training part and measured on its test part
(`pinlab_tasks.recsys.tune_and_refit`). The test split chooses nothing. Rows report means over
seeds with their spread and per-seed values; every pair of models is compared paired over
seeds and users.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from pinlab_data import PinlabDataError, interaction_log, load_dataset, make_directory
from pinlab_eval import (
    ProtocolSpec,
    ProtocolSplit,
    UserMetrics,
    anchors_for,
    evaluate_holdout,
    summarize_models,
)
from pinlab_models import (
    IALSConfig,
    TrainContext,
    TrainProgress,
    build_recommender,
    interaction_matrix,
    recommender_names,
    recommender_spec,
    resolve_device,
)
from pinlab_tasks._output import stdout
from pinlab_tasks.cold_start import caption_vectors
from pinlab_tasks.recsys import Say, split_for, tune_and_refit
from pinlab_tasks.tracking import tracked


def _ordered(names: Sequence[str]) -> list[str]:
    """Blends after the models they blend, so their members' settings are chosen first."""
    blends = [n for n in names if recommender_spec(n).members is not None]
    return [n for n in names if n not in blends] + blends


def bench_recsys(
    data_dir: Path,
    protocol: ProtocolSpec,
    models: Sequence[str] | None,
    run_dir: Path,
    ks: Sequence[int] = (10, 20),
    seed: int = 0,
    seeds: int = 1,
    trials: int = 40,
    budget_seconds: float | None = 20.0,
    metric: str = "ndcg@10",
    device: str = "auto",
    progress: TrainProgress = True,
    item_features: Callable[[], np.ndarray] | None = None,
    peers: Sequence[str] = (),
    refit: bool = True,
    fixed: Mapping[str, Mapping[str, Any]] | None = None,
    say: Say = lambda _: None,
) -> dict[str, Any]:
    """Search, refit and measure each model on `seeds` repetitions of the protocol.

    Repetition r uses split seed `protocol.seed + r` and training seed `seed + r`. `trials`
    and `budget_seconds` bound each model's search per repetition; `metric` is what
    validation maximises. `peers=("implicit",)` also fits the `implicit` library's ALS with
    the settings validation chose for our iALS (added to the models if missing);
    `("cornac",)` fits Cornac's BPR as Microsoft Recommenders' benchmark runs it, beside our bpr.
    `refit=False` measures the model validation chose as it is, given the test's histories,
    wherever the model can take them (`tune_and_refit`). `fixed` holds settings per model
    that stay as given: the search and the refit use them, and the search leaves them out.
    """
    unknown_peers = sorted(set(peers) - {"implicit", "cornac"})
    if unknown_peers:
        raise PinlabDataError(f"unknown peer {unknown_peers[0]!r}; peers: implicit, cornac")
    ds = load_dataset(data_dir)
    log = interaction_log(ds)
    names = list(models) if models else _defaults_for(log.num_items, say)
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
    held = {name: dict(values) for name, values in (fixed or {}).items()}
    for name, values in held.items():
        if name not in names:
            raise PinlabDataError(
                f"settings are given for {name!r}, which this bench does not run; "
                f"its models: {', '.join(names)}"
            )
        build_recommender(name, values)  # a bad setting fails before any work
    if seeds < 1:
        raise PinlabDataError(f"--seeds must be at least 1, got {seeds}")
    _check_metric(metric, ks)
    names = _ordered(names)
    wants_features = any(recommender_spec(n).uses_item_features for n in names)
    features = item_features() if item_features is not None and wants_features else None
    device = resolve_device(device)
    say(
        f"{len(names)} models x {seeds} seed(s), up to {trials} trials each"
        + (
            f"; search budget {budget_seconds:.0f} s per model and seed, so at most "
            f"~{len(names) * seeds * budget_seconds / 60:.0f} min of searching plus the refits"
            if budget_seconds
            else ""
        )
    )
    make_directory(run_dir)
    clock = time.perf_counter()
    results: dict[str, list[UserMetrics]] = {n: [] for n in names}
    extras: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    # One split per repetition, built once; a model runs on every seed before the next model.
    splits = [
        split_for(log, protocol.model_copy(update={"seed": protocol.seed + r}))
        for r in range(seeds)
    ]
    counts = [
        {"seed": seed + r, "split_seed": protocol.seed + r, **split.test.counts.model_dump()}
        for r, split in enumerate(splits)
    ]
    chosen: list[dict[str, dict[str, Any]]] = [{} for _ in splits]
    for i, name in enumerate(names):
        with tracked(name, {"model": name}) as model_run:
            for r, split in enumerate(splits):
                with tracked(f"{name} seed {seed + r}", {"seed": seed + r}) as seed_run:
                    model, info = _tune_refit_tracked(
                        name, split, TrainContext(
                            run_dir=run_dir / name / f"seed-{seed + r}",
                            seed=seed + r,
                            device=device,
                            progress=progress,
                            item_features=features,
                        ),
                        chosen[r], trials, budget_seconds, metric, run_dir, say, refit,
                        held.get(name),
                    )  # fmt: skip
                    results[name].append(evaluate_holdout(model, split.test, ks=ks))
                    extras[name].append(info)
                    seed_run.log_params({"chosen": info["settings"]})
                    seed_run.log_metrics(results[name][-1].means())
                    seed_run.log_metrics({"fit_seconds": info["fit_seconds"]})
                done = i * seeds + r + 1
                elapsed = time.perf_counter() - clock
                left = elapsed / done * (seeds * len(names) - done)
                search = info["search"]
                valid = "-" if search["valid_value"] is None else f"{search['valid_value']:.4f}"
                fitted = (
                    f"refit {info['fit_seconds']:.1f} s"
                    if info["refit"]
                    else "validation fit kept, test histories given"
                )
                say(
                    f"{name} seed {seed + r}: {len(search['trials'])} trial(s), valid {valid}, "
                    f"{fitted}; {elapsed / 60:.1f} min in, about {left / 60:.1f} min left"
                )
            per_seed = [run.means() for run in results[name]]
            model_run.log_metrics(
                {key: float(np.mean([m[key] for m in per_seed])) for key in per_seed[0]}
            )
    peer_rows = [
        implicit_peer(split, info["settings"], info, result.means(), seed + r)
        for r, (split, info, result) in enumerate(
            zip(splits, extras.get("ials", []), results.get("ials", []), strict=False)
        )
        if "implicit" in peers
    ] + [
        cornac_peer(split, info, result.means(), seed + r)
        for r, (split, info, result) in enumerate(
            zip(splits, extras.get("bpr", []), results.get("bpr", []), strict=False)
        )
        if "cornac" in peers
    ]
    summary = summarize_models(results, metric=metric, seed=seed)
    rows = [{**row.model_dump(), **_costs(extras[row.model])} for row in summary.rows]
    rows.sort(key=lambda row: -row["metrics"][metric])
    return {
        "dataset": ds.manifest.name,
        "protocol": {"name": protocol.name, **protocol.settings()},
        "seeds": [seed + r for r in range(seeds)],
        "split_seeds": [protocol.seed + r for r in range(seeds)],
        "validation_metric": metric,
        "trials": trials,
        "budget_seconds": budget_seconds,
        "refit": refit,
        "fixed": held,
        "counts": counts,
        "results": rows,
        "comparisons": [c.model_dump() for c in summary.comparisons],
        "anchors": [a.model_dump() for a in anchors_for(ds.manifest.name, protocol)],
        "peers": peer_rows,
        "seconds": round(time.perf_counter() - clock, 1),
        "user_metrics": _save_user_metrics(run_dir / "user_metrics.npz", results),
    }


def _save_user_metrics(path: Path, results: Mapping[str, list[UserMetrics]]) -> str:
    """Every (seed, user) value of every per-user metric, for distributions and re-analysis.

    Keys `MODEL/METRIC` (seed-major, users ascending within a seed) and `MODEL/seed`, the
    repetition index of each value.
    """
    arrays: dict[str, np.ndarray] = {}
    for name, runs in results.items():
        arrays[f"{name}/seed"] = np.concatenate(
            [np.full(len(run.users), r) for r, run in enumerate(runs)]
        )
        for metric in runs[0].per_user:
            arrays[f"{name}/{metric}"] = np.concatenate([run.per_user[metric] for run in runs])
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npz")
    np.savez_compressed(partial, allow_pickle=False, **arrays)
    partial.replace(path)
    return path.name


def _tune_refit_tracked(
    name: str,
    split: ProtocolSplit,
    ctx: TrainContext,
    chosen: dict[str, dict[str, Any]],
    trials: int,
    budget_seconds: float | None,
    metric: str,
    run_dir: Path,
    say: Say,
    refit: bool,
    fixed: dict[str, Any] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """`tune_and_refit`, each trial logged as a tracked run under the active (seed) run."""
    line = _trial_line(f"{name} seed {ctx.seed}", trials, say)

    def on_trial(trial: dict[str, Any]) -> None:
        line(trial)
        with tracked(f"trial {trial['number']}", trial["params"]) as trial_run:
            for epoch, value in trial["curve"]:
                trial_run.log_metrics({"valid": value}, step=epoch)
            if trial["value"] is not None:
                trial_run.log_metrics({f"valid_{metric}": trial["value"]})
            trial_run.set_tags({"state": trial["state"]})

    return tune_and_refit(
        name,
        split,
        ctx,
        overrides=fixed,
        chosen=chosen,
        trials=trials,
        budget_seconds=budget_seconds,
        metric=metric,
        storage=run_dir / "optuna.db",
        on_trial=on_trial,
        refit=refit,
    )


def _defaults_for(num_items: int, say: Say) -> list[str]:
    """Every registered model, but dense item-item ones past their catalogue limit."""
    names: list[str] = []
    left_out: list[str] = []
    for name in recommender_names():
        limit = recommender_spec(name).max_items
        (left_out if limit is not None and num_items > limit else names).append(name)
    if left_out:
        say(
            f"left out at {num_items:,} items (dense items x items matrices): "
            f"{', '.join(left_out)}; name them in --models to run them anyway"
        )
    return names


def _trial_line(label: str, trials: int, say: Say) -> Callable[[dict[str, Any]], None]:
    def line(trial: dict[str, Any]) -> None:
        value = "pruned" if trial["value"] is None else f"valid {trial['value']:.4f}"
        epochs = f", {trial['epochs']} epochs" if trial.get("epochs") else ""
        say(f"  {label} trial {trial['number'] + 1}/{max(trials, 1)}: {value}{epochs}, "
            f"{trial['seconds']} s")  # fmt: skip

    return line


def _costs(infos: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-model cost and search record over the seeds."""
    return {
        "fit_seconds": round(float(np.mean([i["fit_seconds"] for i in infos])), 3),
        "fit_peak_mb": round(max(i["fit_peak_mb"] for i in infos), 1),
        "refitted": all(i["refit"] for i in infos),
        "search": [i["search"] for i in infos],
        "settings": [i["settings"] for i in infos],
        "boundary": sorted({b for i in infos for b in i["search"].get("boundary", [])}),
    }


def _check_metric(metric: str, ks: Sequence[int]) -> None:
    """Before any work: a metric the bench computes, at one of its cut-offs `ks`."""
    name, _, k = metric.partition("@")
    if not k.isdigit() or name not in {"ndcg", "hr", "recall", "precision", "map", "mrr"}:
        raise PinlabDataError(
            f"bad validation metric {metric!r}; use NAME@K with NAME one of ndcg, hr, recall, "
            "precision, map, mrr (e.g. ndcg@10)"
        )
    if int(k) not in ks:
        raise PinlabDataError(
            f"validation metric {metric!r}: the bench measures at K = "
            f"{', '.join(map(str, ks))}; use one of those (e.g. {name}@{ks[0]})"
        )


def item_text_features(data_dir: Path) -> np.ndarray:
    """Each pin's caption (titles and genres for MovieLens) embedded by the packaged MiniLM,
    in the log's item order (pins.parquet's); zeros where a pin has no caption."""
    return caption_vectors(load_dataset(data_dir).pins.column("caption").to_pylist())


RECSYS_COLUMNS = {
    "ndcg@10": "ndcg@10",
    "hr@10": "hr@10",
    "precision@10": "p@10",
    "recall@10": "r@10",
    "map_all@10": "map@10†",
}
"""Columns and their headers; `map_all@10` divides by all relevant items, as Microsoft
Recommenders' MAP column does (`pinlab_eval.map_all_at_k`)."""


def render_recsys(payload: Mapping[str, Any]) -> None:
    """The bench as tables: mean ± std over seeds with cost, the search, published numbers."""
    protocol = dict(payload["protocol"])
    name = protocol.pop("name")
    seeds = payload["seeds"]
    title = (
        f"bench recsys: {payload['dataset']}, {name} {protocol}; mean ± std over "
        f"{len(seeds)} seed(s) {seeds}"
    )
    table = Table(title=title, title_justify="left")
    table.add_column("model")
    main = payload["validation_metric"]
    columns = [main, *(c for c in RECSYS_COLUMNS if c != main)]
    for column in columns[:1]:
        table.add_column(RECSYS_COLUMNS.get(column, column), justify="right")
        table.add_column("±std", justify="right")
    for column in columns[1:]:
        table.add_column(RECSYS_COLUMNS[column], justify="right")
    for header in ("fit s", "fit MB"):
        table.add_column(header, justify="right")
    for row in payload["results"]:
        metrics = row["metrics"]
        cells = [f"{metrics[c]:.4f}" if c in metrics else "-" for c in columns]
        cells.insert(1, f"{row['std'][main]:.4f}")
        cost = [f"{row['fit_seconds']:.2f}", f"{row['fit_peak_mb']:.1f}"]
        mark = ("*" if row["boundary"] else "") + ("" if row.get("refitted", True) else "°")
        table.add_row(row["model"] + mark, *cells, *cost)
    stdout.print(table)
    stdout.print(
        "† MAP dividing by all relevant items (Microsoft Recommenders' MAP); fit MB: memory "
        "the refit added at its peak; * a chosen setting on the edge of its search range; "
        "° not refitted (--no-refit): the validation fit, its seconds, given the test's histories",
        highlight=False,
    )
    for row in payload["results"]:
        for seed, search in zip(seeds, row["search"], strict=True):
            shown = {k: _short(v) for k, v in search["chosen"].items() if k != "member_settings"}
            if not shown:
                continue
            edge = f"; on the edge: {', '.join(search['boundary'])}" if search["boundary"] else ""
            cut = "; budget hit" if search.get("budget_hit") else ""
            stdout.print(
                f"  {row['model']} seed {seed}: {len(search['trials'])} trials, chose {shown}"
                f"{edge}{cut}",
                highlight=False,
            )
    best = [c for c in payload["comparisons"] if c["a"] == payload["results"][0]["model"]][:3]
    for c in best:
        verdict = "significant" if c["significant"] else "not significant"
        stdout.print(
            f"{c['a']} vs {c['b']}: {c['metric']} {c['difference']:+.4f} "
            f"[{c['difference_ci95'][0]:+.4f}, {c['difference_ci95'][1]:+.4f}], ahead on "
            f"{c['wins']}/{len(seeds)} seeds, Holm p={c['p_holm']:.3g} ({verdict})",
            highlight=False,
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
        stdout.print("published on the same protocol (not rerun here):", highlight=False)
        for anchor in payload["anchors"]:
            shown = {k: v for k, v in anchor["metrics"].items() if v is not None}
            values = ", ".join(f"{RECSYS_COLUMNS.get(k, k)} {v:.3f}" for k, v in shown.items())
            note = f" ({anchor['note']})" if anchor.get("note") else ""
            stdout.print(f"  {anchor['model']}: {values}{note}", highlight=False)
        for source in dict.fromkeys(a["source"] for a in payload["anchors"]):
            stdout.print(f"  source: {source}", highlight=False)


def _short(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, list | tuple):
        return [_short(v) for v in value]
    return value


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
