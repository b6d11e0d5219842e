"""One pipeline for a recommender under a protocol, used by `train`, `eval` and `bench`.

Choose settings on `split.valid` (a search, or just early-stopped epochs), then refit on
`split.test.train` with them; only then may `split.test` be read. `train recommender`,
`eval recommender` and `bench recsys` all go through `tune_and_refit`, so the same settings
give the same model and the same numbers by every path.
"""

from __future__ import annotations

import time
from collections.abc import Callable, MutableMapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from pinlab_data import (
    InteractionLog,
    PinlabDataError,
    interaction_log,
    load_dataset,
    load_truth,
    make_directory,
    read_json_object,
    seen_csr,
    write_json_atomic,
)
from pinlab_eval import (
    ProtocolSpec,
    ProtocolSplit,
    apply_protocol,
    evaluate_holdout,
    protocol_spec,
    taste_recovery,
    top_k,
)
from pinlab_models import (
    TRAINING_STATE,
    HistoryUpdatable,
    Recommender,
    TrainContext,
    TrainProgress,
    build_recommender,
    load_recommender,
    recommender_spec,
    resolve_device,
    world,
)
from pinlab_tasks._measure import added_peak_rss
from pinlab_tasks.cold_start import item_features
from pinlab_tasks.runs import RunLayout
from pinlab_tasks.tuning import OnTrial, search_on_validation

Say = Callable[[str], None]
RANKING_KS = (10, 20)

DEFAULT_PROTOCOL = "leave-last-out"
"""What `train`/`eval recommender` use unless told: each user's last item is the test."""


def split_for(log: InteractionLog, spec: ProtocolSpec) -> ProtocolSplit:
    split = apply_protocol(log, spec)
    if len(split.test.target) == 0:
        raise PinlabDataError(f"protocol {spec.label()} leaves no test interactions")
    return split


def stored_protocol(settings: dict[str, Any]) -> ProtocolSpec:
    """The protocol recorded with a trained model (its train.json), rebuilt exactly."""
    settings = dict(settings)
    return protocol_spec(str(settings.pop("name")), settings)


def tune_and_refit(
    name: str,
    split: ProtocolSplit,
    ctx: TrainContext,
    *,
    overrides: dict[str, Any] | None = None,
    chosen: MutableMapping[str, dict[str, Any]] | None = None,
    trials: int = 0,
    budget_seconds: float | None = None,
    metric: str = "ndcg@10",
    storage: Path | None = None,
    on_trial: OnTrial | None = None,
    refit: bool = True,
) -> tuple[Recommender, dict[str, Any]]:
    """Settings chosen on validation, then the model refitted on the test's training part.

    `overrides` are fixed settings; `trials` > 0 searches the model's declared space on
    validation (`pinlab_tasks.tuning`), 0 keeps the defaults and only early-stops the epochs.
    A blend's members are tuned first (once per `chosen`, which collects every model's
    validated settings). `refit=False` keeps the model validation chose, fitted on the
    validation's training part, and only hands it the test's histories
    (`HistoryUpdatable`), as ICLRec, S3-Rec and RecBole evaluate; a model that cannot take
    new histories is refitted all the same. Returns the fitted model and a record: the
    search, whether it was refitted, fit seconds and the memory the refit added.
    """
    chosen = {} if chosen is None else chosen
    base = dict(overrides or {})

    def search(
        model: str,
        fixed: dict[str, Any],
        report: OnTrial | None,
        keep: Callable[[Recommender], None] | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        return search_on_validation(
            model,
            split,
            replace(ctx, run_dir=ctx.run_dir / model) if model != name else ctx,
            base=fixed,
            metric=metric,
            trials=trials,
            budget_seconds=budget_seconds,
            storage=storage,
            on_trial=report,
            keep=keep,
        )

    spec = recommender_spec(name)
    if spec.members is not None and "member_settings" not in base:
        members = spec.members(spec.config_type.model_validate(base))
        for member in members:
            if member not in chosen:
                chosen[member], _ = search(member, {}, None)
        base["member_settings"] = {m: chosen[m] for m in members}
    kept: list[Recommender] = []

    def keep(model: Recommender) -> None:
        kept[:] = [model]  # only the best so far stays in memory

    updates = not refit and isinstance(build_recommender(name, base), HistoryUpdatable)
    settings, search_record = search(name, base, on_trial, keep if updates else None)
    chosen[name] = settings
    if kept and isinstance(kept[0], HistoryUpdatable):
        kept[0].update_histories(split.test.train)
        best = max(
            (t for t in search_record["trials"] if t["value"] is not None),
            key=lambda t: float(t["value"]),
        )
        return kept[0], {
            "settings": settings,
            "search": search_record,
            "refit": False,
            "fit_seconds": best["seconds"],  # its validation fit, epochs validated included
            "fit_peak_mb": 0.0,
            "refit_history": [],
        }
    model = build_recommender(name, settings)
    with added_peak_rss() as added:
        start = time.perf_counter()
        report = model.fit(split.test.train, ctx)
        seconds = time.perf_counter() - start
        peak = added()
    return model, {
        "settings": settings,
        "search": search_record,
        "refit": True,
        "fit_seconds": round(seconds, 3),
        "fit_peak_mb": round(peak, 1),
        "refit_history": [r.model_dump() for r in report.history],
    }


def train_recommender(
    run: RunLayout,
    data_dir: Path,
    name: str,
    overrides: dict[str, Any],
    seed: int,
    device: str,
    progress: TrainProgress = True,
    protocol: ProtocolSpec | None = None,
    trials: int = 0,
    resume: bool = False,
) -> dict[str, Any]:
    """Choose settings on validation (epochs, or a search with `trials`), refit, save.

    The protocol (leave-last-out unless given) is recorded in the model's `train.json`, so
    `eval_recommenders` measures it on exactly the split it was refitted for. Every fit keeps
    its state after each epoch (`TRAINING_STATE`), so `resume` continues an interrupted run;
    the states go once the model is saved. Under torchrun the fits are data-parallel.
    """
    spec = protocol or protocol_spec(DEFAULT_PROTOCOL)
    build_recommender(name, overrides)  # a bad setting fails before any work
    ds = load_dataset(data_dir)
    split = split_for(interaction_log(ds), spec)
    directory = run.recommender(name).parent
    config = {"model": name, "overrides": overrides, "seed": seed, "protocol": spec.settings(),
              "trials": trials, "processes": world()[1]}  # fmt: skip
    run.log_step("train recommender", config, data_dir)
    # Models that read item features (the cold-start hybrid) get the captions' embeddings.
    features = (
        item_features(ds, split.test.train, "text", run)
        if recommender_spec(name).uses_item_features
        else None
    )
    ctx = TrainContext(
        run_dir=directory,
        seed=seed,
        device=resolve_device(device),
        progress=progress,
        item_features=features,
        checkpoints=True,
        resume=resume,
    )
    start = time.perf_counter()
    if trials:
        make_directory(directory)  # the search's SQLite store opens before any fit writes here
    model, info = tune_and_refit(
        name,
        split,
        ctx,
        overrides=overrides,
        trials=trials,
        storage=directory / "optuna.db" if trials else None,
    )
    model.save(run.recommender(name))
    epoch_field = recommender_spec(name).epoch_field
    result = {
        "model": name,
        "protocol": spec.settings(),
        "config": info["settings"],
        "epochs": info["settings"].get(epoch_field) if epoch_field else None,
        "best_valid": info["search"].get("valid_value"),
        "search": info["search"],
        "fit_seconds": info["fit_seconds"],
        "seconds": round(time.perf_counter() - start, 3),
        "history": info["refit_history"],
    }
    write_json_atomic(directory / "train.json", result)
    drop_training_states(directory)
    return result


def drop_training_states(directory: Path) -> None:
    """A trained model no longer needs the states its fits kept for `--resume`."""
    for state in directory.rglob(TRAINING_STATE):
        state.unlink()


def eval_recommenders(run: RunLayout, ks: tuple[int, ...] = RANKING_KS) -> dict[str, Any]:
    """Every trained recommender on the test part of the protocol it was trained under."""
    names = run.trained_recommenders()
    if not names:
        raise PinlabDataError(
            f"run {run.root} has no trained recommender; `pinlab train recommender --run ...`"
        )
    ds = load_dataset(run.trained_data_dir())
    log = interaction_log(ds)
    truth = load_truth(ds.root) if ds.manifest.source == "synth" else None
    splits: dict[str, ProtocolSplit] = {}
    models: dict[str, dict[str, float]] = {}
    protocols: dict[str, dict[str, Any]] = {}
    for name in names:
        protocols[name] = _trained_protocol(run, name)
        key = repr(sorted(protocols[name].items()))
        if key not in splits:
            splits[key] = split_for(log, stored_protocol(protocols[name]))
        split = splits[key]
        model = load_recommender(run.recommender(name))
        metrics = evaluate_holdout(model, split.test, ks=ks).means()
        if truth is not None:
            users = np.unique(split.test.target.users)
            ranked = top_k(model, users, max(ks), seen_csr(split.test.train))
            metrics["taste_recovery"] = taste_recovery(
                ranked, truth.pin_category, truth.taste_end[users]
            )
        models[name] = metrics
    shared = {repr(sorted(p.items())) for p in protocols.values()}
    result = {
        "protocol": next(iter(protocols.values()))["name"] if len(shared) == 1 else "mixed",
        "protocols": protocols,
        "num_items": log.num_items,
        "models": models,
        "best": max(models, key=lambda n: models[n].get("ndcg@10", 0.0)),
    }
    write_json_atomic(run.recommenders / "eval.json", result)
    return result


def _trained_protocol(run: RunLayout, name: str) -> dict[str, Any]:
    path = run.recommender(name).parent / "train.json"
    try:
        return dict(read_json_object(path)["protocol"])
    except (KeyError, TypeError, ValueError):  # PinlabDataError is a ValueError
        raise PinlabDataError(
            f"{path} does not say which protocol {name} was trained under; retrain it with "
            "`pinlab train recommender`"
        ) from None
