"""Hyper-parameter search on the validation split, with Optuna.

Each registered recommender declares a search space (`RecommenderSpec.search_space`). A study
samples it with seeded TPE; every trial fits on `split.valid.train` and is scored on
`split.valid.target` after each epoch, so models that train in epochs are early-stopped (and
pruned by the median rule) inside their trial. The first trial is always the config's
defaults. The test split is never read here. `run_study` is the study itself (seeded TPE,
trial 0 enqueued, median pruning, trial and time budgets), shared with `pinlab bench visual`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna

from pinlab_eval import ProtocolSplit, evaluate_holdout
from pinlab_models import (
    Choice,
    FloatRange,
    IntRange,
    Recommender,
    Scorer,
    SearchParam,
    Simplex,
    TrainContext,
    build_recommender,
    recommender_spec,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

OnTrial = Callable[[dict[str, Any]], None]


def space_json(space: Mapping[str, SearchParam]) -> dict[str, Any]:
    return {name: param.model_dump() for name, param in space.items()}


def suggest(trial: optuna.Trial, name: str, param: SearchParam, members: Sequence[str] = ()) -> Any:
    if isinstance(param, FloatRange):
        return trial.suggest_float(name, param.low, param.high, log=param.log)
    if isinstance(param, IntRange):
        return trial.suggest_int(name, param.low, param.high, log=param.log)
    if isinstance(param, Choice):
        return trial.suggest_categorical(name, param.values)
    assert isinstance(param, Simplex)
    # Independent uniforms, normalised: a standard (if not uniform) cover of the simplex.
    raw = [trial.suggest_float(f"{name}.{member}", 1e-6, 1.0) for member in members]
    return tuple(round(w / sum(raw), 6) for w in raw)


def defaults_point(
    space: Mapping[str, SearchParam], config: Mapping[str, Any], members: Sequence[str] = ()
) -> dict[str, Any]:
    """The config's own values in Optuna's parameter names, to enqueue as the first trial."""
    point: dict[str, Any] = {}
    for name, param in space.items():
        value = config.get(name)
        if isinstance(param, Simplex):
            weights = value or [1.0 / len(members)] * len(members)
            point.update({f"{name}.{m}": float(w) for m, w in zip(members, weights, strict=True)})
        elif isinstance(param, Choice):
            if value in param.values:
                point[name] = value
        elif value is not None and param.low <= value <= param.high:
            point[name] = value
    return point


def search_on_validation(
    name: str,
    split: ProtocolSplit,
    ctx: TrainContext,
    *,
    base: Mapping[str, Any] | None = None,
    metric: str = "ndcg@10",
    trials: int = 40,
    budget_seconds: float | None = None,
    storage: Path | None = None,
    on_trial: OnTrial | None = None,
    keep: Callable[[Recommender], None] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The settings validation chooses for `name`, and a record of the search.

    `base` holds fixed settings (an ensemble's members, a user's choice), left out of the
    searched space unless None; `trials` caps the study and
    `budget_seconds` stops it once spent (epoch training stops at the next validation past
    it; a closed-form fit under way finishes). `trials=0` or an empty space fits the defaults
    once, early-stopping the epochs. The record holds the space, every
    trial (params, value, state, validation curve), the chosen point, its value, and which
    chosen values sit on the edge of their range. The study is saved in `storage` (SQLite),
    one study per model and seed, so `optuna.load_study` reads it back. `keep` gets each
    trial's fitted model that beats every trial before it, so its last call is the chosen
    model, fitted on the validation split's training part (a blend's trials fit nothing).
    """
    spec = recommender_spec(name)
    base = dict(base or {})
    # A setting given a value in `base` is fixed; one given as None is still searched.
    space = (
        {n: p for n, p in spec.search_space.items() if base.get(n) is None} if trials > 0 else {}
    )
    record: dict[str, Any] = {
        "space": space_json(space),
        "metric": metric,
        "trials": [],
        "chosen": base,
        "valid_value": None,
        "boundary": [],
        "budget_hit": False,
    }
    if len(split.valid.target) == 0:
        return base, record | {"note": "no validation targets: defaults kept"}
    config = spec.config_type.model_validate(base)
    members = list(spec.members(config)) if spec.members else []
    k = int(metric.split("@")[1])
    probe_ctx = replace(ctx, run_dir=ctx.run_dir / "validation", label="validation", metric=metric)
    fitted = _fit_members(config, members, split, probe_ctx) if spec.of_fitted else None
    kept_value = -float("inf")

    def objective(trial: optuna.Trial, deadline: float | None) -> float:
        point = base | {n: suggest(trial, n, p, members) for n, p in space.items()}
        curve: list[tuple[int, float]] = []

        def validate(scorer: Scorer) -> float:
            value = evaluate_holdout(scorer, split.valid, ks=(k,)).means()[metric]
            curve.append((len(curve) + 1, value))
            trial.set_user_attr("curve", curve)
            trial.report(value, len(curve))
            if spec.epoch_field and trial.should_prune():
                raise optuna.TrialPruned
            return value

        trial.set_user_attr("point", _jsonable(point))
        if fitted is not None and spec.of_fitted is not None:
            # A blend's trial only re-weighs members fitted once for the whole study.
            return validate(spec.of_fitted(spec.config_type.model_validate(point), fitted))
        model = build_recommender(name, point)
        trial_ctx = replace(
            probe_ctx,
            run_dir=probe_ctx.run_dir / f"trial-{trial.number}",
            deadline=deadline,
            label=f"validation trial {trial.number + 1}",
        )
        report = model.fit(split.valid.train, trial_ctx, validate)
        # From the fit's own history: a resumed fit validated only its last epochs here.
        values = [r.valid for r in report.history if r.valid is not None]
        trial.set_user_attr("curve", [(n, v) for n, v in enumerate(values, 1)])
        value = report.best_valid if report.best_valid is not None else validate(model)
        if spec.epoch_field:
            trial.set_user_attr("epochs", report.best_epoch)
        nonlocal kept_value
        if keep is not None and value > kept_value:  # strictly: ties go to the earlier trial
            kept_value = value
            keep(model)
        return value

    study, seconds = run_study(
        f"{name}-seed{ctx.seed}",
        objective,
        first=defaults_point(space, config.model_dump(), members) if space else None,
        trials=max(trials, 1) if space else 1,
        budget_seconds=budget_seconds,
        seed=ctx.seed,
        storage=storage,
        on_trial=on_trial,
    )
    best = best_trial(study)
    chosen = dict(best.user_attrs["point"])
    if spec.epoch_field:
        chosen[spec.epoch_field] = best.user_attrs["epochs"]
    return chosen, record | {
        "trials": [trial_json(t) for t in study.trials],
        "chosen": chosen,
        "valid_value": round(float(best.value or 0.0), 5),
        "boundary": on_edges(space, chosen),
        "budget_hit": bool(space) and len(study.trials) < trials,
        "seconds": seconds,
    }


Objective = Callable[[optuna.Trial, float | None], float]
"""One trial: gets the trial and the search's deadline (a `time.monotonic()`, or None)."""


def run_study(
    study_name: str,
    objective: Objective,
    *,
    first: Mapping[str, Any] | None,
    trials: int,
    budget_seconds: float | None,
    seed: int,
    storage: Path | None,
    on_trial: OnTrial | None = None,
    prune_after: int = 4,
    warmup_epochs: int = 2,
) -> tuple[optuna.Study, float]:
    """Run a seeded-TPE study of at most `trials` trials and `budget_seconds`; its seconds.

    `first` (Optuna parameter names) is enqueued as trial 0. The median pruner stops a trial
    whose reported validation curve falls under the median of earlier trials at the same
    epoch, once `prune_after` trials are complete and past `warmup_epochs`. The study is kept
    in `storage` (SQLite) when given, replacing one of the same name (a rerun into a run).
    """
    url = f"sqlite:///{storage}" if storage else None
    if url and study_name in optuna.study.get_all_study_names(url):
        optuna.delete_study(study_name=study_name, storage=url)  # a rerun into the same run
    study = optuna.create_study(
        study_name=study_name,
        storage=url,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(8, trials)),
        pruner=optuna.pruners.MedianPruner(
            n_startup_trials=prune_after, n_warmup_steps=warmup_epochs
        ),
    )
    if first is not None:
        study.enqueue_trial(dict(first))

    def report_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if on_trial is not None:
            on_trial(trial_json(trial))

    start = time.perf_counter()
    # Epoch training stops at the budget too, so one long trial cannot overrun it.
    deadline = time.monotonic() + budget_seconds if budget_seconds else None
    study.optimize(
        lambda trial: objective(trial, deadline),
        n_trials=trials,
        timeout=budget_seconds,
        callbacks=[report_trial],
        catch=(),
    )
    return study, round(time.perf_counter() - start, 2)


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    return max(complete, key=lambda t: float(t.value or 0.0))


def _fit_members(
    config: Any, members: Sequence[str], split: ProtocolSplit, ctx: TrainContext
) -> list[Recommender]:
    """A blend's members, each with its validated settings, fitted on the validation split's
    training part."""
    settings = getattr(config, "member_settings", {})
    fitted = []
    for member in members:
        model = build_recommender(member, settings.get(member))
        model.fit(split.valid.train, replace(ctx, run_dir=ctx.run_dir / member))
        fitted.append(model)
    return fitted


def on_edges(space: Mapping[str, SearchParam], chosen: Mapping[str, Any]) -> list[str]:
    """The searched settings whose chosen value sits on the edge of its range."""
    return [n for n, p in space.items() if n in chosen and p.on_edge(chosen[n])]


def trial_json(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    return {
        "number": trial.number,
        "params": trial.user_attrs.get("point", trial.params),
        "value": None if trial.value is None else round(float(trial.value), 5),
        "state": trial.state.name,
        "epochs": trial.user_attrs.get("epochs"),
        "curve": trial.user_attrs.get("curve", []),
        "seconds": None if trial.duration is None else round(trial.duration.total_seconds(), 3),
    }


def _jsonable(point: Mapping[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in point.items()}
