"""`pinlab bench ope`: every off-policy estimator against the truth the simulator knows.

The world (default: a synthetic world of 1,000 users and 100 pins) is simulated as a
contextual bandit: pbm clicks without drift or fatigue (`SimConfig.stationary()`), so a
policy's value depends only on the user and the slate and off-policy estimators' assumptions
hold. For each pair (logging policy, target policy) and each seed, the logger serves
`rounds` rounds (fresh users and clicks per seed), a reward model is fitted on those logs
alone (cross-fitted, `fit_reward_model`), and every estimator estimates the target's value
with its interval. The truth is the target's exact expected clicks per impression over all
users (`Simulator.on_policy_value`: attraction times examination times the target's exact
marginals; times the slate size for pseudo-inverse, whose value is per slate).

The REINFORCE target is trained once, before the seeds, on separate logs of the
epsilon-greedy logger (its own seed), so no evaluation log ever trained it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats
from threadpoolctl import threadpool_limits

from pinlab_data import SimConfig
from pinlab_eval import estimate_all
from pinlab_models import (
    PinlabModelError,
    ReinforceConfig,
    StationaryPolicy,
    build_policy,
    fit_reward_model,
    train_reinforce,
)
from pinlab_tasks.simulate import Logged, World, run_policy

OPE_FILE = "ope.json"
PLOT_FILE = "ope_errors.png"
ALPHA = 0.05
TARGET_RELATIVE_ERROR = 0.10
REINFORCE_TRAIN_ROUNDS = 20_000


@dataclass(frozen=True)
class PolicyRef:
    name: str
    settings: dict[str, Any]

    def label(self) -> str:
        inside = ", ".join(f"{k}={v}" for k, v in self.settings.items())
        return f"{self.name}({inside})" if inside else self.name


EPSILON_GREEDY = PolicyRef("epsilon-greedy", {"epsilon": 0.2})
PAIRS: tuple[tuple[PolicyRef, PolicyRef, str], ...] = (
    (EPSILON_GREEDY, PolicyRef("softmax", {"temperature": 0.5}),
     "the issue's target: DR within 10% from an epsilon-greedy logger"),
    (EPSILON_GREEDY, PolicyRef("reinforce", {}),
     "a policy trained from other logs of the same logger (Chen et al.'s use)"),
    (PolicyRef("softmax", {"temperature": 1.0}), PolicyRef("greedy", {}),
     "a deterministic target from a stochastic logger"),
    (PolicyRef("random", {}), PolicyRef("softmax", {"temperature": 0.5}),
     "uniform logs, where pseudo-inverse is unbiased"),
    (PolicyRef("greedy", {}), PolicyRef("softmax", {"temperature": 0.5}),
     "a logger that never explores: IPS-family estimators must refuse"),
)  # fmt: skip
"""(logger, target, why the pair is here)."""


def bench_ope(
    world: World,
    *,
    seeds: int,
    rounds: int,
    slate_size: int,
    seed: int,
    say: Callable[[str], None] = lambda _: None,
    peers: bool = True,
) -> dict[str, Any]:
    """Run every pair over `seeds` seeds; see the module doc. Returns the JSON-able result."""
    started = time.perf_counter()
    config = SimConfig(slate_size=slate_size, click_model="pbm").stationary()
    sim = world.simulator(config)
    inputs = world.inputs(slate_size, seed)
    targets: dict[str, tuple[StationaryPolicy, np.ndarray, float]] = {}
    reinforce_report: dict[str, Any] | None = None
    with threadpool_limits(1, "blas"):  # small matrices: threads only contend
        for _, target, _ in PAIRS:
            if target.label() in targets:
                continue
            if target.name == "reinforce":
                say(f"training reinforce on {REINFORCE_TRAIN_ROUNDS:,} rounds of its logger's logs")
                policy, reinforce_report = _reinforce_target(world, config, slate_size, seed)
            else:
                built = build_policy(target.name, inputs, target.settings)
                assert isinstance(built, StationaryPolicy)
                policy = built
            marginals = policy.marginals(world.contexts)
            targets[target.label()] = (policy, marginals, sim.on_policy_value(marginals))
        per_pair: dict[str, dict[str, list[dict[str, Any]]]] = {
            _pair_label(lg, tg): {} for lg, tg, _ in PAIRS
        }
        peer_inputs: tuple[Logged, np.ndarray, np.ndarray] | None = None
        for r in range(seeds):
            loggers: dict[str, tuple[Logged, np.ndarray]] = {}
            for logger_ref, target_ref, _ in PAIRS:
                key = logger_ref.label()
                if key not in loggers:
                    say(f"seed {seed + r}: logging {rounds:,} rounds with {key}")
                    logged = _log(world, config, inputs, logger_ref, rounds, seed + r)
                    q = fit_reward_model(logged.feedback, world.items, folds=2, seed=seed + r)
                    loggers[key] = (logged, q)
                logged, q = loggers[key]
                _, marginals, truth = targets[target_ref.label()]
                dist = np.repeat(marginals[logged.users], slate_size, axis=0)
                estimates = estimate_all(logged.feedback, dist, q, alpha=ALPHA, seed=seed + r)
                rows = per_pair[_pair_label(logger_ref, target_ref)]
                for est in estimates:
                    rows.setdefault(est.name, []).append(est.model_dump(mode="json"))
                if peer_inputs is None and (logger_ref, target_ref) == PAIRS[0][:2]:
                    peer_inputs = (logged, dist, q)
    pairs: list[dict[str, Any]] = []
    for logger_ref, target_ref, why in PAIRS:
        truth = targets[target_ref.label()][2]
        label = _pair_label(logger_ref, target_ref)
        pairs.append(
            {
                "pair": label,
                "logger": logger_ref.label(),
                "target": target_ref.label(),
                "why": why,
                "truth_per_impression": truth,
                "truth_per_slate": truth * slate_size,
                "estimators": {
                    name: _summary(runs, truth * (slate_size if name == "pseudo-inverse" else 1))
                    for name, runs in per_pair[label].items()
                },
            }
        )
    headline = pairs[0]["estimators"]["dr"]
    result: dict[str, Any] = {
        "world": world.about,
        "sim": config.model_dump(),
        "rounds": rounds,
        "slate_size": slate_size,
        "seeds": list(range(seed, seed + seeds)),
        "alpha": ALPHA,
        "truth": "exact: mean over all users of sum_p theta_p sum_a pi(a, p | user) "
        "attraction(user, a), per impression (/ k); pseudo-inverse per slate (x k)",
        "reward_model": "cross-fitted (2 folds over rounds) logistic regression on the logged "
        "context, the fitted recommender's item vectors and the position "
        "(pinlab_models.fit_reward_model); never the true attraction",
        "pairs": pairs,
        "reinforce": reinforce_report,
        "targets": {
            "dr_mean_relative_error": headline["mean_relative_error"],
            "dr_within_10pct": bool(
                headline["mean_relative_error"] is not None
                and headline["mean_relative_error"] < TARGET_RELATIVE_ERROR
            ),
            "dr_coverage": headline["coverage"],
            "dr_coverage_ci95": headline["coverage_ci95"],
            "dr_coverage_nominal": 1 - ALPHA,
            "dr_coverage_consistent_with_nominal": bool(
                headline["coverage_ci95"] is not None
                and headline["coverage_ci95"][0] <= 1 - ALPHA <= headline["coverage_ci95"][1]
            ),
        },
    }
    if peers:
        result["peers"] = _peers(peer_inputs, say)
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def _pair_label(logger: PolicyRef, target: PolicyRef) -> str:
    return f"{logger.label()} -> {target.label()}"


def _log(
    world: World,
    config: SimConfig,
    inputs: Any,
    ref: PolicyRef,
    rounds: int,
    seed: int,
) -> Logged:
    logger = build_policy(ref.name, inputs, ref.settings)
    run_config = config.model_copy(update={"seed": seed})
    _, logged = run_policy(world, logger, run_config, rounds, seed=seed, log=True)
    assert logged is not None
    return logged


def _reinforce_target(
    world: World, config: SimConfig, slate_size: int, seed: int
) -> tuple[StationaryPolicy, dict[str, Any]]:
    # Seeds far from the evaluation seeds: these logs never serve as evaluation logs.
    train_seed = seed + 1_000_003
    logged = _log(
        world, config, world.inputs(slate_size, seed), EPSILON_GREEDY,
        REINFORCE_TRAIN_ROUNDS, train_seed,
    )  # fmt: skip
    policy = train_reinforce(logged.feedback, world.items, ReinforceConfig(), seed=seed)
    return policy, {
        "trained_on": f"{REINFORCE_TRAIN_ROUNDS:,} rounds of {EPSILON_GREEDY.label()} "
        f"(simulator seed {train_seed})",
        **policy.report,
    }


def _summary(runs: list[dict[str, Any]], truth: float) -> dict[str, Any]:
    """Error, bias and coverage over seeds of one estimator on one pair."""
    values = np.array([r["value"] for r in runs if r["value"] is not None], dtype=np.float64)
    covered = [
        r["ci_low"] <= truth <= r["ci_high"]
        for r in runs
        if r["value"] is not None and r["ci_low"] is not None and r["ci_high"] is not None
    ]
    widths = [
        (r["ci_high"] - r["ci_low"]) / truth
        for r in runs
        if r["ci_low"] is not None and r["ci_high"] is not None
    ]
    unsupported = [r for r in runs if not r["supported"]]
    out: dict[str, Any] = {
        "truth": truth,
        "runs": len(runs),
        "estimated": len(values),
        "unsupported": len(unsupported),
        "unsupported_mass": float(np.mean([r["unsupported_mass"] for r in unsupported]))
        if unsupported
        else 0.0,
        "note": unsupported[0]["note"] if unsupported else None,
        "params": runs[0]["params"] if runs else {},
        "values": values.tolist(),
        "mean": None,
        "bias": None,
        "relative_bias": None,
        "mean_relative_error": None,
        "relative_rmse": None,
        "coverage": None,
        "coverage_ci95": None,
        "mean_relative_width": None,
    }
    if len(values):
        rel = (values - truth) / truth
        out |= {
            "mean": float(values.mean()),
            "bias": float(values.mean() - truth),
            "relative_bias": float(rel.mean()),
            "mean_relative_error": float(np.abs(rel).mean()),
            "relative_rmse": float(np.sqrt((rel**2).mean())),
        }
    if covered:
        out["coverage"] = float(np.mean(covered))
        out["coverage_ci95"] = _wilson(sum(covered), len(covered))
        out["mean_relative_width"] = float(np.mean(widths))
    return out


def _wilson(hits: int, n: int, alpha: float = 0.05) -> list[float]:
    """Wilson score interval of a binomial proportion: how sure the coverage itself is."""
    z = float(stats.norm.ppf(1 - alpha / 2))
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)]


def _peers(
    inputs: tuple[Logged, np.ndarray, np.ndarray] | None, say: Callable[[str], None]
) -> dict[str, Any]:
    """obp on the first seed's inputs of the first pair, and the Open Bandit Dataset check
    (each `{"available": False, "reason": ...}` without the optional obp extra)."""
    from pinlab_tasks.ope_peers import obp_agreement, open_bandit_check

    out: dict[str, Any] = {}
    if inputs is not None:
        logged, dist, q = inputs
        say("obp's estimators on the first pair's first seed")
        out["obp_agreement"] = {
            "pair": _pair_label(*PAIRS[0][:2]),
            **obp_agreement(logged.feedback, dist, q),
        }
    say("Open Bandit Dataset: BTS from the random policy's logs")
    try:
        out["open_bandit"] = open_bandit_check()
    except (OSError, PinlabModelError) as exc:  # the sample missing from an obp install
        out["open_bandit"] = {"available": False, "reason": str(exc)}
    return out


def errors_plot(result: dict[str, Any], path: Path) -> Path:
    """Signed relative error per seed of every estimator, one panel per pair."""
    from pinlab_data import write_bytes_atomic
    from pinlab_eval import spread_png

    panels = {
        pair["pair"]: {
            name: (np.asarray(s["values"]) - s["truth"]) / s["truth"]
            for name, s in pair["estimators"].items()
            if s["values"]
        }
        for pair in result["pairs"]
    }
    panels = {title: values for title, values in panels.items() if values}
    write_bytes_atomic(
        path,
        spread_png(panels, "(estimate - truth) / truth, one point per seed", band=0.10),
    )
    return path


def render_ope(payload: dict[str, Any]) -> None:
    from rich.table import Table

    from pinlab_tasks._output import stdout

    world = payload["world"]
    stdout.print(
        f"bench ope: {world['users']} users x {world['items']} items, slates of "
        f"{payload['slate_size']}, {payload['rounds']:,} logged rounds per seed, "
        f"{len(payload['seeds'])} seeds; intervals at {1 - payload['alpha']:.0%}"
    )
    for pair in payload["pairs"]:
        table = Table(
            title=f"{pair['pair']} (truth {pair['truth_per_impression']:.4f} per impression)",
            title_justify="left",
        )
        for column in ("estimator", "mean", "rel. bias", "mean |rel. err|", "rel. RMSE",
                       "coverage", "rel. width", "unsupported"):  # fmt: skip
            table.add_column(column, justify="left" if column == "estimator" else "right")
        for name, s in pair["estimators"].items():
            table.add_row(
                name,
                _f(s["mean"], 4),
                _pct(s["relative_bias"]),
                _share(s["mean_relative_error"]),
                _share(s["relative_rmse"]),
                "-" if s["coverage"] is None else f"{s['coverage']:.2f}",
                _share(s["mean_relative_width"]),
                f"{s['unsupported']}/{s['runs']}" if s["unsupported"] else "",
            )
        stdout.print(table)
    targets = payload["targets"]
    stdout.print(
        f"target: DR's mean relative error {_share(targets['dr_mean_relative_error'])} "
        f"({'met' if targets['dr_within_10pct'] else 'NOT met'}: < 10%); coverage "
        f"{targets['dr_coverage']} (95% interval {targets['dr_coverage_ci95']}, nominal "
        f"{targets['dr_coverage_nominal']})"
    )
    for name, peer in (payload.get("peers") or {}).items():
        if not peer.get("available"):
            stdout.print(f"{name}: skipped ({peer.get('reason')})")
        elif name == "obp_agreement":
            stdout.print(
                f"obp on identical inputs: max |ours - obp| {peer['max_abs_diff']:.2g} "
                f"({'agree' if peer['agree'] else 'DISAGREE'})"
            )
        else:
            dr: dict[str, Any] = next((e for e in peer["estimates"] if e["name"] == "dr"), {})
            stdout.print(
                f"Open Bandit Dataset ({peer['campaign']}): BTS logged "
                f"{peer['on_policy']['value']:.4f}; DR from random logs {_f(dr.get('value'), 4)} "
                f"(relative error {_share(dr.get('relative_error'))})"
            )
    stdout.print(f"plot: {payload.get('plot')}; {payload['seconds']} s")


def _f(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:+.1f}%"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"
