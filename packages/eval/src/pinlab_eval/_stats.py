"""Uncertainty of mean metrics over users: bootstrap intervals and a paired bootstrap test.

Users are the resampling unit: a model's score is a mean over users, and two models ranked for
the same users are compared user by user. Each resample is turned into counts of how often each
user was picked, so one (resamples × users) count matrix times the per-user values gives every
resampled mean at once, for every metric.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from pinlab_data.contracts import PinlabDataError
from pinlab_eval.contracts import (
    BenchSummary,
    Comparison,
    Float64Array,
    ModelResult,
    PairedTest,
    UserMetrics,
)

_COUNTS_PER_CHUNK = 1 << 22
"""Counts held at once (resamples × users); fixed, so results never hang on memory."""


def bootstrap_ci(
    per_user: Mapping[str, Float64Array],
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap interval of each metric's mean over users (Efron & Tibshirani 1993).

    Every metric is resampled with the same draws of users (they describe the same users), so
    the intervals of one call are consistent with each other. The interval holds the
    (1 - level)/2 and (1 + level)/2 quantiles of `resamples` means of n users drawn with
    replacement; it narrows like 1/sqrt(n).
    """
    names, values = _stack(per_user)
    _check(resamples, level)
    means = np.concatenate(list(_resampled_means(values, resamples, seed)))
    tail = (1 - level) / 2
    bounds = np.quantile(means, [tail, 1 - tail], axis=0)
    return {name: (float(bounds[0, i]), float(bounds[1, i])) for i, name in enumerate(names)}


def paired_bootstrap_test(
    a: Float64Array,
    b: Float64Array,
    resamples: int = 10_000,
    seed: int = 0,
    alpha: float = 0.05,
) -> PairedTest:
    """Paired bootstrap test of mean(a) - mean(b), a[i] and b[i] measured on the same user.

    With d = a - b and mean d̄, users are resampled with replacement; the p-value is two-sided,
    the share of resampled means of the centred differences d - d̄ (the null hypothesis of no
    mean difference, imposed by centring) at least as far from 0 as d̄ is:
    (1 + #{|d̄* - d̄| >= |d̄|}) / (1 + resamples), so never 0 (Efron & Tibshirani 1993, ch. 16;
    the +1s as in Davison & Hinkley 1997). `difference_ci95` is the 95% percentile interval of
    d̄*. Chosen over the Wilcoxon signed-rank test because it tests the difference of means that
    the table reports, and assumes no symmetry of per-user differences that are mostly tied.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise PinlabDataError(
            f"paired values must be two 1-d arrays over the same users, got {a.shape}, {b.shape}"
        )
    _check(resamples, 1 - alpha)
    _, values = _stack({"difference": a - b})
    means = np.concatenate(list(_resampled_means(values, resamples, seed)))[:, 0]
    observed = float(values[:, 0].mean())
    extreme = int((np.abs(means - observed) >= abs(observed)).sum())
    p_value = (1 + extreme) / (1 + resamples)
    low, high = np.quantile(means, [0.025, 0.975])
    return PairedTest(
        difference=observed,
        difference_ci95=(float(low), float(high)),
        p_value=p_value,
        significant=p_value < alpha,
        test=f"paired bootstrap over users ({resamples} resamples, seed {seed}, two-sided)",
    )


def summarize_models(
    results: Mapping[str, Sequence[UserMetrics]],
    metric: str = "ndcg@10",
    resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> BenchSummary:
    """Bench rows over repeated runs, and every pair of models compared on `metric`.

    `results[name][r]` is the model's per-user metrics in run r (a seed: its own split and
    training); every model must be measured on the same users within a run. A row's values
    are means over runs with their spread; its interval is the bootstrap over (run, user)
    pairs. Each pair of models is compared by `paired_bootstrap_test` on the pooled (run,
    user) differences, and the p-values are Holm-adjusted over the table, since picking the
    best of many models out of one test makes chance wins likely.
    """
    if not results:
        raise PinlabDataError("no model results to summarize")
    runs = {len(r) for r in results.values()}
    if len(runs) != 1 or 0 in runs:
        raise PinlabDataError(f"every model needs the same number of runs (>0), got {runs}")
    rows = [_row(name, list(by_run), resamples, seed) for name, by_run in results.items()]
    names = list(results)
    for name in names:
        for run in results[name]:
            if metric not in run.per_user:
                raise PinlabDataError(
                    f"model {name!r} has no per-user {metric!r}; it has {sorted(run.per_user)}"
                )
    for r in range(runs.pop()):
        first = results[names[0]][r]
        for name in names[1:]:
            if not np.array_equal(results[name][r].users, first.users):
                raise PinlabDataError(
                    f"model {name!r} was evaluated on other users than {names[0]!r} in run "
                    f"{r}; a paired test needs every model ranked for the same holdout"
                )
    pooled = {
        name: np.concatenate([run.per_user[metric] for run in results[name]]) for name in names
    }
    order = sorted(names, key=lambda name: -float(pooled[name].mean()))
    pairs = [(a, b) for i, a in enumerate(order) for b in order[i + 1 :]]
    tests = [paired_bootstrap_test(pooled[a], pooled[b], seed=seed) for a, b in pairs]
    adjusted = holm([t.p_value for t in tests])
    comparisons = [
        Comparison(
            a=a,
            b=b,
            metric=metric,
            difference=test.difference,
            difference_ci95=test.difference_ci95,
            p_value=test.p_value,
            p_holm=p_holm,
            significant=p_holm < alpha,
            per_seed=[
                float(ra.per_user[metric].mean() - rb.per_user[metric].mean())
                for ra, rb in zip(results[a], results[b], strict=True)
            ],
            wins=sum(
                float(ra.per_user[metric].mean()) > float(rb.per_user[metric].mean())
                for ra, rb in zip(results[a], results[b], strict=True)
            ),
            test=f"{test.test}, over (run, user) pairs; Holm-adjusted over {len(pairs)} pairs",
        )
        for (a, b), test, p_holm in zip(pairs, tests, adjusted, strict=True)
    ]
    return BenchSummary(rows=rows, comparisons=comparisons, seeds=len(results[names[0]]))


def seed_std(values: Sequence[float] | np.ndarray) -> float:
    """The sample standard deviation (ddof 1) of a metric over repeated runs; 0 for one run.
    What every bench reports as a figure's spread over seeds."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _row(name: str, runs: list[UserMetrics], resamples: int, seed: int) -> ModelResult:
    per_run = [run.means() for run in runs]
    keys = list(per_run[0])
    per_seed = {key: [float(m[key]) for m in per_run] for key in keys}
    pooled = {key: np.concatenate([run.per_user[key] for run in runs]) for key in runs[0].per_user}
    spread = {key: seed_std(values) for key, values in per_seed.items()}
    return ModelResult(
        model=name,
        num_users=sum(len(run.users) for run in runs),
        metrics={key: float(np.mean(values)) for key, values in per_seed.items()},
        std=spread,
        per_seed=per_seed,
        ci95=bootstrap_ci(pooled, resamples, seed),
    )


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment (Holm, 1979): controls the family-wise error rate.

    The i-th smallest of m p-values is multiplied by (m - i), made non-decreasing along that
    order, and capped at 1.
    """
    m = len(p_values)
    order = np.argsort(p_values, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(p_values[index])))
        adjusted[index] = running
    return [float(p) for p in adjusted]


def _stack(per_user: Mapping[str, Float64Array]) -> tuple[list[str], Float64Array]:
    """The metrics as one (users × metrics) matrix, refusing empty, ragged or NaN input."""
    if not per_user:
        raise PinlabDataError("no per-user metrics given")
    names = list(per_user)
    columns = [np.asarray(per_user[name], dtype=np.float64) for name in names]
    sizes = {column.shape for column in columns}
    if len(sizes) != 1 or columns[0].ndim != 1 or len(columns[0]) == 0:
        raise PinlabDataError(
            f"per-user metrics must be non-empty 1-d arrays of one length, got shapes {sizes}"
        )
    values = np.stack(columns, axis=1)
    if not np.isfinite(values).all():
        bad = names[int(np.argmax(~np.isfinite(values).all(axis=0)))]
        raise PinlabDataError(
            f"per-user {bad!r} has NaN or infinite values; evaluate only users with targets"
        )
    return names, values


def _resampled_means(values: Float64Array, resamples: int, seed: int) -> Iterator[Float64Array]:
    """Means of `resamples` bootstrap samples of the rows of `values`, in chunks of resamples."""
    num_users = len(values)
    rng = np.random.default_rng(seed)
    per_chunk = max(1, _COUNTS_PER_CHUNK // num_users)
    for start in range(0, resamples, per_chunk):
        size = min(per_chunk, resamples - start)
        picks = rng.integers(0, num_users, (size, num_users))
        # How often each user was picked, per resample: one bincount over offset rows.
        offsets = np.arange(size, dtype=np.int64)[:, None] * num_users
        counts = np.bincount((picks + offsets).ravel(), minlength=size * num_users)
        # In float64, so the product goes to BLAS rather than numpy's integer loop.
        yield (counts.reshape(size, num_users).astype(np.float64) @ values) / num_users


def _check(resamples: int, level: float) -> None:
    if resamples <= 0:
        raise PinlabDataError(f"resamples must be positive, got {resamples}")
    if not 0 < level < 1:
        raise PinlabDataError(f"the confidence level must be between 0 and 1, got {level}")
