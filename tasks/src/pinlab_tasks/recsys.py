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

from pinlab_data import InteractionLog, PinlabDataError
from pinlab_eval import ProtocolSpec, ProtocolSplit, apply_protocol, protocol_spec
from pinlab_models import Recommender, TrainContext, build_recommender, recommender_spec
from pinlab_tasks._measure import added_peak_rss
from pinlab_tasks.search import OnTrial, search_on_validation

Say = Callable[[str], None]

DEFAULT_PROTOCOL = "leave-last-out"
"""What `train`/`eval recommender` use unless told: each user's last item is the test."""


def split_for(log: InteractionLog, spec: ProtocolSpec) -> ProtocolSplit:
    split = apply_protocol(log, spec)
    if len(split.test.target) == 0:
        raise PinlabDataError(f"protocol {spec.label()} leaves no test interactions")
    return split


def stored_protocol(settings: dict[str, Any]) -> ProtocolSpec:
    """The protocol recorded with a trained model (run.json), rebuilt exactly."""
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
) -> tuple[Recommender, dict[str, Any]]:
    """Settings chosen on validation, then the model refitted on the test's training part.

    `overrides` are fixed settings; `trials` > 0 searches the model's declared space on
    validation (`pinlab_tasks.search`), 0 keeps the defaults and only early-stops the epochs.
    A blend's members are tuned first (once per `chosen`, which collects every model's
    validated settings). Returns the fitted model and a record: the search, fit seconds and
    the memory the refit added.
    """
    chosen = {} if chosen is None else chosen
    base = dict(overrides or {})
    spec = recommender_spec(name)
    if spec.members is not None and "member_settings" not in base:
        members = spec.members(spec.config_type.model_validate(base))
        for member in members:
            if member not in chosen:
                member_ctx = replace(ctx, run_dir=ctx.run_dir / member)
                chosen[member], _ = search_on_validation(
                    member,
                    split,
                    member_ctx,
                    metric=metric,
                    trials=trials,
                    budget_seconds=budget_seconds,
                    storage=storage,
                )
        base["member_settings"] = {m: chosen[m] for m in members}
    settings, search = search_on_validation(
        name,
        split,
        ctx,
        base=base,
        metric=metric,
        trials=trials,
        budget_seconds=budget_seconds,
        storage=storage,
        on_trial=on_trial,
    )
    chosen[name] = settings
    model = build_recommender(name, settings)
    with added_peak_rss() as added:
        start = time.perf_counter()
        report = model.fit(split.test.train, ctx)
        seconds = time.perf_counter() - start
        peak = added()
    return model, {
        "settings": settings,
        "search": search,
        "fit_seconds": round(seconds, 3),
        "fit_peak_mb": round(peak, 1),
        "refit_history": [r.model_dump() for r in report.history],
    }
