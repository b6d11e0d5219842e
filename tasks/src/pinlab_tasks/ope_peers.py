"""obp as a peer of pinlab's off-policy estimators, and the Open Bandit Dataset check.

`obp_agreement` runs our estimators and Open Bandit Pipeline's (Saito et al. 2021) on one set
of inputs and reports the differences. `open_bandit_check` repeats the OBP paper's real-data
check: the Bernoulli Thompson sampling (BTS) policy's click rate estimated from the
uniform-random policy's logs, against the click rate BTS itself logged. Both need the optional
extra (`uv sync --all-packages --extra obp`) and say why when it is absent.
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from collections.abc import Mapping
from importlib.metadata import version
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from rich.table import Table
from scipy import stats

from pinlab_data import BanditFeedback, PinlabDataError, load_open_bandit
from pinlab_eval import (
    CiMethod,
    Float64Array,
    OpeEstimatorName,
    estimate_all,
    round_rewards,
)
from pinlab_tasks._output import stdout

OBP_TOLERANCE = 1e-6
"""Ours and obp's estimates on identical inputs must agree to this (absolute)."""
OBP_ESTIMATORS: dict[OpeEstimatorName, tuple[str, str]] = {
    "dm": ("DirectMethod", "dm"),
    "ips": ("InverseProbabilityWeighting", "ipw"),
    "snips": ("SelfNormalizedInverseProbabilityWeighting", "snipw"),
    "dr": ("DoublyRobust", "dr"),
    "switch-dr": ("SwitchDoublyRobust", "switch-dr"),
    "dr-os": ("DoublyRobustWithShrinkage", "dr-os"),
}
"""Our name: (obp's class in obp.ope, its estimator_name)."""
CAMPAIGNS = ("all", "men", "women")
BTS_SIMULATIONS = 100_000
"""Draws per round obp's BernoulliTS uses to turn its posterior into action probabilities."""
BTS_SEED = 12345
"""obp's examples' random_state for BernoulliTS."""


def obp_missing() -> str | None:
    """Why obp cannot be used here, or None when it can."""
    if importlib.util.find_spec("obp") is None:
        return (
            "obp is not installed; it is an optional extra: `uv sync --all-packages --extra obp` "
            "(see README, 'Off-policy evaluation')"
        )
    return None


def obp_agreement(
    feedback: BanditFeedback,
    action_dist: Float64Array,
    estimated_rewards: Float64Array,
    *,
    tau: float = 10.0,
    lam: float = 10.0,
) -> dict[str, Any]:
    """Ours against obp's estimates on identical inputs: both values and their difference.

    `tau` and `lam` are given to both sides (switch-dr's tau is obp's SwitchDoublyRobust
    `lambda_`, dr-os's lambda DoublyRobustWithShrinkage's). Values are compared without the
    support check (obp has none). With single-action logs the pseudo-inverse is compared
    with obp's IPW, which it equals there.
    """
    missing = obp_missing()
    if missing is not None:
        return {"available": False, "reason": missing}
    obp = _import_obp()
    bandit_feedback = {
        "n_rounds": len(feedback),
        "n_actions": feedback.n_actions,
        "action": feedback.action,
        "position": feedback.position,
        "reward": feedback.reward,
        "pscore": feedback.pscore,
        "context": feedback.context,
    }
    settings = {"switch-dr": {"lambda_": tau}, "dr-os": {"lambda_": lam}}
    estimators = [
        getattr(obp.ope, cls)(**settings.get(name, {})) for name, (cls, _) in OBP_ESTIMATORS.items()
    ]
    peer = obp.ope.OffPolicyEvaluation(bandit_feedback=bandit_feedback, ope_estimators=estimators)
    theirs = peer.estimate_policy_values(
        action_dist=action_dist, estimated_rewards_by_reg_model=estimated_rewards
    )
    pairs: dict[str, tuple[OpeEstimatorName, str]] = {
        name: (name, obp_name) for name, (_, obp_name) in OBP_ESTIMATORS.items()
    }
    full_rounds = feedback.len_list == 1 and feedback.n_rounds == len(feedback)
    if full_rounds:
        pairs["pseudo-inverse"] = ("pseudo-inverse", "ipw")
    rows = {}
    for label, (name, obp_name) in pairs.items():
        a, b = round_rewards(name, feedback, action_dist, estimated_rewards, tau=tau, lam=lam)
        ours = float(a.sum() / b.sum())
        other = float(theirs[obp_name])
        rows[label] = {"ours": ours, "obp": other, "abs_diff": abs(ours - other)}
    worst = max(row["abs_diff"] for row in rows.values())
    return {
        "available": True,
        "obp": version("obp"),
        "tolerance": OBP_TOLERANCE,
        "params": {"tau": tau, "lambda": lam},
        "estimators": rows,
        "max_abs_diff": worst,
        "agree": worst <= OBP_TOLERANCE,
    }


def open_bandit_check(
    *,
    campaign: str = "all",
    data: Path | None = None,
    folds: int = 3,
    seed: int = 0,
    alpha: float = 0.05,
    ci: CiMethod = "normal",
    n_bootstrap: int = 2000,
    n_sim: int = BTS_SIMULATIONS,
) -> dict[str, Any]:
    """BTS's click rate estimated from the random policy's logs, against BTS's own logs.

    `data` is an Open Bandit Dataset folder (`{random,bts}/CAMPAIGN/CAMPAIGN.csv`); by default
    the small sample (10,000 rows per policy and campaign) obp ships. BTS's action
    distribution is obp's: `BernoulliTS` with ZOZOTOWN's production prior, `n_sim` draws,
    random_state `BTS_SEED`. The reward model is a logistic regression cross-fitted over
    `folds` (`click_model`). Relative error is |estimate - on-policy| / on-policy, as the OBP
    paper reports; the on-policy rate has its own interval, since 10,000 rows of rare clicks
    leave it uncertain too.
    """
    missing = obp_missing()
    if missing is not None:
        return {"available": False, "reason": missing}
    if campaign not in CAMPAIGNS:
        raise PinlabDataError(f"campaign must be one of {', '.join(CAMPAIGNS)}, got {campaign!r}")
    obp = _import_obp()
    root = Path(data) if data is not None else shipped_open_bandit()
    logged = load_open_bandit(root / "random" / campaign / f"{campaign}.csv")
    on_policy = load_open_bandit(root / "bts" / campaign / f"{campaign}.csv")
    bts = obp.policy.BernoulliTS(
        n_actions=logged.n_actions,
        len_list=logged.len_list,
        random_state=BTS_SEED,
        is_zozotown_prior=True,
        campaign=campaign,
    )
    action_dist = bts.compute_batch_action_dist(n_rounds=len(logged), n_sim=n_sim)
    rewards = click_model(logged, folds=folds, seed=seed)
    estimates = estimate_all(
        logged, action_dist, rewards, alpha=alpha, ci=ci, n_bootstrap=n_bootstrap, seed=seed
    )
    truth = float(on_policy.reward.mean())
    half = (
        stats.norm.ppf(1 - alpha / 2)
        * float(on_policy.reward.std(ddof=1))
        / math.sqrt(len(on_policy))
    )
    rows = []
    for est in estimates:
        row: dict[str, Any] = est.model_dump(mode="json")
        if est.value is not None:
            row["relative_error"] = abs(est.value - truth) / truth
            row["covers_on_policy"] = bool(est.ci_low is not None and est.ci_low <= truth) and bool(
                est.ci_high is not None and truth <= est.ci_high
            )
        rows.append(row)
    chosen = {est.name: est.params for est in estimates}
    agreement = obp_agreement(
        logged,
        action_dist,
        rewards,
        tau=chosen.get("switch-dr", {}).get("tau", 10.0),
        lam=chosen.get("dr-os", {}).get("lambda", 10.0),
    )
    return {
        "available": True,
        "dataset": "Open Bandit Dataset"
        + (f" (the small sample shipped with obp {version('obp')})" if data is None else ""),
        "data": str(root),
        "campaign": campaign,
        "logger": "random",
        "target": "bts",
        "rows": len(logged),
        "logged_click_rate": float(logged.reward.mean()),
        "on_policy": {
            "value": truth,
            "ci_low": truth - half,
            "ci_high": truth + half,
            "rows": len(on_policy),
        },
        "estimates": rows,
        "agreement": agreement,
        "settings": {
            "folds": folds,
            "seed": seed,
            "alpha": alpha,
            "ci": ci,
            "n_bootstrap": n_bootstrap,
            "bts_n_sim": n_sim,
            "bts_random_state": BTS_SEED,
        },
    }


def shipped_open_bandit() -> Path:
    """The Open Bandit Dataset sample inside the installed obp package."""
    spec = importlib.util.find_spec("obp")
    if spec is None or spec.origin is None:
        raise PinlabDataError(obp_missing() or "obp is not importable")
    return Path(spec.origin).parent / "dataset" / "obd"


def click_model(feedback: BanditFeedback, *, folds: int = 3, seed: int = 0) -> Float64Array:
    """Cross-fitted click probabilities for every (row, action, position): (n, n_actions, len_list).

    One L2-regularised logistic regression (scikit-learn) on the context and one-hot action
    and position, fitted on the other folds of each row's fold, so no row's own click informs
    its prediction (the cross-fitting obp's RegressionModel does with `n_folds`). The logit is
    additive, so every action and position is scored without building their rows.
    """
    from sklearn.linear_model import LogisticRegression

    n, n_actions, len_list = len(feedback), feedback.n_actions, feedback.len_list
    if folds < 2:
        raise PinlabDataError(f"folds must be at least 2, got {folds}")
    features = np.concatenate(
        [
            feedback.context,
            np.eye(n_actions)[feedback.action],
            np.eye(len_list)[feedback.position],
        ],
        axis=1,
    )
    d = feedback.context_dim
    out = np.empty((n, n_actions, len_list))
    order = np.random.default_rng(seed).permutation(n)
    for held in np.array_split(order, folds):
        train = np.setdiff1d(order, held)
        clicks = feedback.reward[train] > 0
        if clicks.all() or not clicks.any():  # one class: predict its rate
            out[held] = clicks.mean()
            continue
        model = LogisticRegression(max_iter=2000).fit(features[train], clicks)
        coef = model.coef_[0]
        base = feedback.context[held] @ coef[:d] + model.intercept_[0]
        logit = (
            base[:, None, None]
            + coef[d : d + n_actions][None, :, None]
            + coef[d + n_actions :][None, None, :]
        )
        out[held] = 1.0 / (1.0 + np.exp(-logit))
    return out


def _import_obp() -> ModuleType:
    # obp's sources hold invalid escape sequences; compiling them warns (SyntaxWarning), which
    # an error filter (pytest's) would turn into an import failure.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import obp.ope
        import obp.policy

        module: ModuleType = obp
    return module


def require_obp() -> None:
    """Raise the reason obp is missing as bad input (exit 2), naming the extra."""
    missing = obp_missing()
    if missing is not None:
        raise PinlabDataError(missing)


def render_open_bandit(payload: Mapping[str, Any]) -> None:
    """The Open Bandit check as a table: estimates against BTS's own click rate."""
    truth = payload["on_policy"]
    table = Table(
        title=f"BTS's click rate from the random policy's logs ({payload['dataset']}, "
        f"campaign {payload['campaign']}, {payload['rows']:,} rows)",
        caption=f"on-policy (BTS's own logs): {truth['value']:.5f} "
        f"[{truth['ci_low']:.5f}, {truth['ci_high']:.5f}]",
    )
    for column in ("estimator", "estimate", "interval", "relative error", "covers", "params"):
        table.add_column(column, justify="left" if column == "estimator" else "right")
    for row in payload["estimates"]:
        if row["value"] is None:
            table.add_row(row["name"], "unsupported", "", "", "", "")
            continue
        interval = (
            f"[{row['ci_low']:.5f}, {row['ci_high']:.5f}]" if row["ci_low"] is not None else ""
        )
        params = ", ".join(f"{k}={v:g}" for k, v in row["params"].items())
        table.add_row(
            row["name"],
            f"{row['value']:.5f}",
            interval,
            f"{row['relative_error']:.3f}",
            "yes" if row["covers_on_policy"] else "no",
            params,
        )
    stdout.print(table)
    agreement = payload["agreement"]
    stdout.print(
        f"obp {agreement['obp']} on identical inputs: max |ours - obp| = "
        f"{agreement['max_abs_diff']:.2e} ({'agrees' if agreement['agree'] else 'DISAGREES'} "
        f"within {agreement['tolerance']:g})"
    )
