"""Off-policy estimators: a target policy's value from bandit feedback another policy logged.

Notation: row i logged action a_i at position p_i with reward r_i and the logger's marginal
probability pscore_i; the target puts pi(a | i) = action_dist[i, a, p_i] on action a at that
position (obp's layout), and q(i, a) = estimated_rewards[i, a, p_i] is a reward model's
prediction. With w_i = pi(a_i | i) / pscore_i and dm_i = sum_a pi(a | i) q(i, a):

- dm: mean dm_i (the direct method).
- ips: mean w_i r_i (Horvitz & Thompson 1952; inverse propensity scoring).
- snips: sum w_i r_i / sum w_i (self-normalised; Swaminathan & Joachims 2015).
- dr: mean dm_i + w_i (r_i - q(i, a_i)) (Dudík, Langford & Li 2011).
- switch-dr: dr's correction only where w_i <= tau, dm alone elsewhere (Wang, Agarwal & Dudík
  2017; tau = inf is dr, tau = 0 is dm).
- dr-os: dr with the weight shrunk to lambda w / (w^2 + lambda) (Su, Dimakopoulou,
  Krishnamurthy & Dudík 2020, "optimistic shrinkage"; lambda = inf is dr, 0 is dm).
- pseudo-inverse: per round (a whole slate of len_list positions), (sum_j r_j)
  (sum_j w_j - (len_list - 1)) (Swaminathan et al. 2017). Exact for additive slate rewards
  when the logger picks positions independently (or uniformly without replacement); with
  len_list = 1 it is ips.

Values follow obp's conventions (Saito et al. 2021): the mean over logged rows of each row's
estimate, so a slate log gives the value per impression; pseudo-inverse alone is per round
(positions summed, the slate's expected reward), as Swaminathan et al. define it. obp's
switch-dr and dr-os read the same formulas.

Intervals treat rounds as the independent unit (rows of one slate share a user): each
estimate is a ratio sum_r A_r / sum_r B_r of per-round sums (B_r the round's rows, its
weights for snips, 1 for pseudo-inverse). `normal` (the default) is the delta-method interval
of that ratio, deterministic and cheap; `bootstrap` resamples rounds (seeded) and takes
percentiles. obp's bootstrap resamples rows and, for snips, keeps the full sample's
normaliser; ours re-normalises every resample.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import get_args

import numpy as np
import numpy.typing as npt
from scipy import stats

from pinlab_data.contracts import BanditFeedback
from pinlab_eval._stats import _resampled_means
from pinlab_eval.contracts import (
    CiMethod,
    Float64Array,
    OpeEstimate,
    OpeEstimatorName,
    OpeInputError,
    SupportBasis,
)

ESTIMATORS: tuple[OpeEstimatorName, ...] = get_args(OpeEstimatorName)
IPS_FAMILY: frozenset[OpeEstimatorName] = frozenset(
    {"ips", "snips", "dr", "switch-dr", "dr-os", "pseudo-inverse"}
)
"""Estimators that divide by the logger's probability, so need its support."""
NEEDS_REWARD_MODEL: frozenset[OpeEstimatorName] = frozenset({"dm", "dr", "switch-dr", "dr-os"})

SUPPORT_TOL = 1e-6
"""Mean target mass (per row) outside the logger's support above which IPS-family refuse."""
TAU_GRID = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1e3, 2e3, 5e3, 1e4, math.inf)
LAMBDA_GRID = (*(10.0**k for k in range(-2, 9)), math.inf)
_DIST_ATOL = 1e-6

WeightMap = Callable[[Float64Array, float], Float64Array]
"""A modified importance weight (switch-dr's cut, dr-os's shrinkage) at one hyperparameter."""


@dataclass(frozen=True)
class _Rows:
    """What the estimators read, gathered once at each row's logged position."""

    pi: Float64Array  # (n, n_actions): the target at the row's position
    w: Float64Array  # (n,) importance weight of the logged action
    reward: Float64Array
    q_logged: Float64Array | None  # (n,) the reward model at the logged action
    dm: Float64Array | None  # (n,) the reward model's value under the target


def estimate(
    name: OpeEstimatorName,
    feedback: BanditFeedback,
    action_dist: Float64Array,
    estimated_rewards: Float64Array | None = None,
    *,
    alpha: float = 0.05,
    ci: CiMethod = "normal",
    n_bootstrap: int = 2000,
    seed: int = 0,
    tau: float | None = None,
    lam: float | None = None,
    logger_dist: Float64Array | None = None,
) -> OpeEstimate:
    """Estimate the value of the target policy `action_dist` from `feedback`, with an interval.

    `action_dist` and `estimated_rewards` have shape (rows, n_actions, len_list). `tau`
    (switch-dr) and `lam` (dr-os) default to the value on `TAU_GRID`/`LAMBDA_GRID` with the
    least estimated mean squared error (`_tune`). IPS-family estimators first check that the
    target stays where the logger acts (`logger_dist`, else `feedback.logger_dist`, else the
    (action, position) pairs the logs hold) and return `supported=False` with no value if
    not.
    """
    return estimate_all(
        feedback,
        action_dist,
        estimated_rewards,
        names=(name,),
        alpha=alpha,
        ci=ci,
        n_bootstrap=n_bootstrap,
        seed=seed,
        tau=tau,
        lam=lam,
        logger_dist=logger_dist,
    )[0]


def estimate_all(
    feedback: BanditFeedback,
    action_dist: Float64Array,
    estimated_rewards: Float64Array | None = None,
    *,
    names: Sequence[OpeEstimatorName] | None = None,
    alpha: float = 0.05,
    ci: CiMethod = "normal",
    n_bootstrap: int = 2000,
    seed: int = 0,
    tau: float | None = None,
    lam: float | None = None,
    logger_dist: Float64Array | None = None,
) -> list[OpeEstimate]:
    """`estimate` for several estimators on one gathering of the inputs.

    `names` defaults to every estimator the inputs allow: those needing a reward model only
    with `estimated_rewards`, pseudo-inverse only when every round is a full slate.
    """
    if not 0 < alpha < 1:
        raise OpeInputError(f"alpha must be between 0 and 1, got {alpha}")
    if ci not in get_args(CiMethod):
        raise OpeInputError(f"ci must be one of {', '.join(get_args(CiMethod))}, got {ci!r}")
    if n_bootstrap < 1:
        raise OpeInputError(f"n_bootstrap must be positive, got {n_bootstrap}")
    rows = _gather(feedback, action_dist, estimated_rewards)
    rounds = feedback.round_index()
    if names is None:
        names = [
            name
            for name in ESTIMATORS
            if (estimated_rewards is not None or name not in NEEDS_REWARD_MODEL)
            and (name != "pseudo-inverse" or _full_slates(feedback, rounds))
        ]
    unknown = [name for name in names if name not in ESTIMATORS]
    if unknown:
        raise OpeInputError(
            f"unknown estimator(s) {', '.join(map(repr, unknown))}; choose from "
            f"{', '.join(ESTIMATORS)}"
        )
    support = None
    if any(name in IPS_FAMILY for name in names):
        support = _support(feedback, rows.pi, logger_dist)
    results = []
    for name in names:
        params: dict[str, float] = {}
        note = None
        if name in NEEDS_REWARD_MODEL and rows.dm is None:
            raise OpeInputError(f"{name} needs estimated_rewards (a reward model's predictions)")
        if name == "switch-dr":
            params["tau"], note = _hyperparameter(tau, "tau", TAU_GRID, rows, _switch_weight)
        elif name == "dr-os":
            params["lambda"], note = _hyperparameter(lam, "lambda", LAMBDA_GRID, rows, _shrunk)
        mass, bad_rows, basis = 0.0, 0, "not-needed"
        if support is not None and name in IPS_FAMILY:
            mass, bad_rows, basis = support
        if mass > SUPPORT_TOL:
            value, low, high = None, None, None
            note = (
                f"unsupported: the target puts {mass:.3g} of its mass (mean per row, {bad_rows} "
                f"rows) on actions the logger never takes there ({basis}); use dm, or log "
                "with a policy that explores those actions"
            )
        else:
            a, b = _per_round(name, feedback, rounds, rows, params)
            value, low, high, ci_note = _interval(a, b, alpha, ci, n_bootstrap, seed)
            note = "; ".join(text for text in (note, ci_note) if text) or None
        results.append(
            OpeEstimate(
                name=name,
                value=value,
                ci_low=low,
                ci_high=high,
                n=len(feedback),
                n_rounds=int(rounds.max()) + 1 if len(rounds) else 0,
                alpha=alpha,
                ci=ci,
                supported=mass <= SUPPORT_TOL,
                unsupported_mass=mass,
                unsupported_rows=bad_rows,
                support=basis,
                params=params,
                note=note,
            )
        )
    return results


def round_rewards(
    name: OpeEstimatorName,
    feedback: BanditFeedback,
    action_dist: Float64Array,
    estimated_rewards: Float64Array | None = None,
    *,
    tau: float = math.inf,
    lam: float = math.inf,
) -> tuple[Float64Array, Float64Array]:
    """Per-round sums (A_r, B_r) with value sum(A) / sum(B): what intervals resample.

    For a log of single actions with one row per round, A_r / B_r is obp's per-round reward
    (`_estimate_round_rewards`) for every estimator but snips.
    """
    rows = _gather(feedback, action_dist, estimated_rewards)
    if name in NEEDS_REWARD_MODEL and rows.dm is None:
        raise OpeInputError(f"{name} needs estimated_rewards (a reward model's predictions)")
    return _per_round(name, feedback, feedback.round_index(), rows, {"tau": tau, "lambda": lam})


def _gather(
    fb: BanditFeedback, action_dist: Float64Array, estimated_rewards: Float64Array | None
) -> _Rows:
    shape = (len(fb), fb.n_actions, fb.len_list)
    dist = _checked(action_dist, "action_dist", shape)
    at = np.arange(len(fb))
    sums = dist.sum(axis=1)
    bad = np.asarray(
        ~np.isclose(sums, 1.0, atol=_DIST_ATOL).all(axis=1) | (dist < 0).any(axis=(1, 2)),
        dtype=np.bool_,
    )
    if bad.any():
        raise OpeInputError(
            f"action_dist must be a distribution over actions at every position of every row; "
            f"{_rows_named(bad)} (sums {', '.join(f'{s:.6g}' for s in sums[bad][:5, 0])})"
        )
    pi = dist[at, :, fb.position]
    w = pi[at, fb.action] / fb.pscore
    if estimated_rewards is None:
        return _Rows(pi, w, fb.reward, None, None)
    q = _checked(estimated_rewards, "estimated_rewards", shape)[at, :, fb.position]
    return _Rows(pi, w, fb.reward, q[at, fb.action], np.einsum("na,na->n", pi, q))


def _checked(values: Float64Array, what: str, shape: tuple[int, int, int]) -> Float64Array:
    array = np.asarray(values, dtype=np.float64)
    if array.shape != shape:
        raise OpeInputError(
            f"{what} has shape {array.shape}, expected (rows, n_actions, len_list) = {shape}"
        )
    finite = np.asarray(np.isfinite(array).all(axis=(1, 2)), dtype=np.bool_)
    if not finite.all():
        raise OpeInputError(f"{what} is not finite; {_rows_named(~finite)}")
    return array


def _rows_named(mask: npt.NDArray[np.bool_]) -> str:
    rows = np.flatnonzero(mask)
    more = ", ..." if len(rows) > 5 else ""
    return f"{len(rows)} row(s) (rows {', '.join(str(r) for r in rows[:5])}{more})"


def _support(
    fb: BanditFeedback, pi: Float64Array, logger_dist: Float64Array | None
) -> tuple[float, int, SupportBasis]:
    """Mean target mass per row where the logger cannot act, rows with any, and the basis."""
    dist = logger_dist if logger_dist is not None else fb.logger_dist
    at = np.arange(len(fb))
    if dist is not None:
        logger = _checked(dist, "logger_dist", (len(fb), fb.n_actions, fb.len_list))
        outside = logger[at, :, fb.position] <= 0
        basis: SupportBasis = "logger_dist"
    else:
        seen = np.zeros((fb.len_list, fb.n_actions), dtype=np.bool_)
        seen[fb.position, fb.action] = True
        outside = ~seen[fb.position]
        basis = "logged-pairs"
    mass = np.where(outside, pi, 0.0).sum(axis=1)
    return float(mass.mean()) if len(mass) else 0.0, int((mass > SUPPORT_TOL).sum()), basis


def _switch_weight(w: Float64Array, tau: float) -> Float64Array:
    return np.where(w <= tau, w, 0.0)


def _shrunk(w: Float64Array, lam: float) -> Float64Array:
    if math.isinf(lam):
        return w
    denominator = w**2 + lam
    # lambda = 0 shrinks every weight to 0 (dm), including w = 0 where the ratio is 0/0.
    return np.divide(lam * w, denominator, out=np.zeros_like(w), where=denominator > 0)


def _per_round(
    name: OpeEstimatorName,
    fb: BanditFeedback,
    rounds: np.ndarray,
    rows: _Rows,
    params: dict[str, float],
) -> tuple[Float64Array, Float64Array]:
    n_rounds = int(rounds.max()) + 1 if len(rounds) else 0

    def by_round(values: Float64Array) -> Float64Array:
        return np.bincount(rounds, weights=values, minlength=n_rounds).astype(np.float64)

    ones = np.ones(len(fb))
    if name == "pseudo-inverse":
        if not _full_slates(fb, rounds):
            raise OpeInputError(
                f"pseudo-inverse needs whole slates: every round with len_list={fb.len_list} "
                "rows, one per position; these logs have rounds with fewer"
            )
        slate_reward = by_round(rows.reward)
        return slate_reward * (by_round(rows.w) - (fb.len_list - 1)), np.ones(n_rounds)
    if name == "ips":
        return by_round(rows.w * rows.reward), by_round(ones)
    if name == "snips":
        return by_round(rows.w * rows.reward), by_round(rows.w)
    assert rows.dm is not None and rows.q_logged is not None  # checked by the callers
    if name == "dm":
        return by_round(rows.dm), by_round(ones)
    weight = {
        "dr": rows.w,
        "switch-dr": _switch_weight(rows.w, params.get("tau", math.inf)),
        "dr-os": _shrunk(rows.w, params.get("lambda", math.inf)),
    }[name]
    return by_round(rows.dm + weight * (rows.reward - rows.q_logged)), by_round(ones)


def _full_slates(fb: BanditFeedback, rounds: np.ndarray) -> bool:
    # Positions are distinct within a round (BanditFeedback checks), so a count says it all.
    return bool(len(rounds)) and bool((np.bincount(rounds) == fb.len_list).all())


def _hyperparameter(
    given: float | None,
    label: str,
    grid: Sequence[float],
    rows: _Rows,
    modify: WeightMap,
) -> tuple[float, str | None]:
    if given is not None:
        if not given >= 0:
            raise OpeInputError(f"{label} must be a non-negative number (or inf), got {given}")
        return float(given), None
    chosen = _tune(rows, grid, modify)
    return chosen, f"{label}={chosen:g} chosen on {len(grid)} values by estimated MSE"


def _tune(rows: _Rows, grid: Sequence[float], modify: WeightMap) -> float:
    """The grid value whose modified-weight DR has the least estimated mean squared error.

    MSE is estimated as (bias bound)^2 + variance / n. The bias is taken against dr, unbiased
    whatever the reward model: the mean of d_i = (w_i - w'_i)(r_i - q_i), bounded above with
    probability 0.95 by the empirical Bernstein bound (Maurer & Pontil 2009) since the plain
    mean is itself noisy and would favour too much shrinkage. Su et al. (2020, section 4)
    choose lambda this way and Wang et al. (2017) tau by an MSE bound of the same shape; obp's
    "mse" tuning is alike. Ties go to the larger value (less bias).
    """
    assert rows.dm is not None and rows.q_logged is not None
    residual = rows.reward - rows.q_logged
    n = len(residual)
    best, best_mse = math.inf, math.inf
    for value in sorted(grid, reverse=True):
        weight = modify(rows.w, value)
        mse = _bias_bound((rows.w - weight) * residual) ** 2
        if n > 1:
            mse += float(np.var(rows.dm + weight * residual, ddof=1)) / n
        if mse < best_mse:
            best, best_mse = value, mse
    return best


def _bias_bound(d: Float64Array, delta: float = 0.05) -> float:
    """|mean(d)| plus the empirical Bernstein deviation of a mean of n values in a range b."""
    n = len(d)
    if n < 2:
        return abs(float(d.mean())) if n else 0.0
    spread = float(d.max() - d.min())
    log_term = math.log(2 / delta)
    deviation = math.sqrt(2 * float(np.var(d, ddof=1)) * log_term / n)
    return abs(float(d.mean())) + deviation + 7 * spread * log_term / (3 * (n - 1))


def _interval(
    a: Float64Array, b: Float64Array, alpha: float, ci: CiMethod, n_bootstrap: int, seed: int
) -> tuple[float | None, float | None, float | None, str | None]:
    """The ratio sum(a) / sum(b) over rounds and its 1 - alpha interval."""
    total = float(b.sum())
    if len(a) == 0 or total == 0:
        return None, None, None, "no rows with weight: the estimate is undefined"
    value = float(a.sum()) / total
    if len(a) < 2:
        return value, None, None, "one round: no interval"
    if ci == "normal":
        # Delta method for a ratio of means: var(a - value b) / (n mean(b)^2).
        n = len(a)
        spread = float(np.std(a - value * b, ddof=1))
        half = stats.norm.ppf(1 - alpha / 2) * spread / (math.sqrt(n) * total / n)
        return value, value - half, value + half, None
    means = np.concatenate(list(_resampled_means(np.stack([a, b], axis=1), n_bootstrap, seed)))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = means[:, 0] / means[:, 1]
    ratios = ratios[np.isfinite(ratios)]
    low, high = np.quantile(ratios, [alpha / 2, 1 - alpha / 2])
    return value, float(low), float(high), None
