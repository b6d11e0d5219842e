"""`pinlab bench bandits`: every policy in the simulator for a long run, with drift and fatigue.

Per seed, every policy meets the same users in the same order and the same click draws (the
simulator's seed), so differences come from the policies. Each round's regret is the expected
clicks of the best slate for that user at that moment (under their true, drifted and tired
attraction) minus the expected clicks of the slate shown: expectations, not the sampled clicks,
which would only add noise. The oracle is myopic (best now), not the best long-run plan.

REINFORCE (top-K off-policy correction) is trained on `train_rounds` rounds that its logging
policy (epsilon-greedy over the fitted recommender) logged in the same world with another
seed, then runs as long as the others; its long-term reward is compared with its logger's.
The simulator's own speed is timed by a uniformly random policy over a million impressions.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from pinlab_data import ClickModel, SimConfig, write_bytes_atomic
from pinlab_eval import curves_png, seed_std
from pinlab_eval.contracts import Curve
from pinlab_models import POLICIES, ReinforceConfig, build_policy, train_reinforce
from pinlab_tasks.simulate import Trace, World, run_policy

BANDITS_FILE = "bandits.json"
PLOT_FILE = "bandits.png"
LOGGER: tuple[str, dict[str, Any]] = ("epsilon-greedy", {"epsilon": 0.2})
EXPLORERS = ("linucb", "thompson")
BASELINES = ("greedy", "epsilon-greedy", "online-greedy", "online-epsilon-greedy")
"""The issue's target: LinUCB and Thompson sampling end with less regret than these."""
SPEED_IMPRESSIONS = 1_000_000


def bench_bandits(
    world: World,
    *,
    rounds: int,
    seeds: int,
    slate_size: int,
    click_model: ClickModel,
    train_rounds: int,
    seed: int,
    speed_impressions: int = SPEED_IMPRESSIONS,
    say: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Run every policy `rounds` rounds per seed; see the module doc."""
    started = time.perf_counter()
    base = SimConfig(slate_size=slate_size, click_model=click_model)
    feedback = "cascade" if click_model == "cascade" else "all"
    traces: dict[str, list[Trace]] = {}
    reinforce_reports = []
    with threadpool_limits(1, "blas"):  # small matrices: threads only contend
        for r in range(seeds):
            config = base.model_copy(update={"seed": seed + r})
            inputs = world.inputs(slate_size, seed + r)
            for name, spec in POLICIES.items():
                settings: dict[str, Any] = {"feedback": feedback} if spec.learns else {}
                if name == LOGGER[0]:
                    settings = dict(LOGGER[1])
                say(f"seed {seed + r}: {name}, {rounds:,} rounds")
                policy = build_policy(name, inputs, settings)
                trace, _ = run_policy(world, policy, config, rounds, seed=seed + r)
                traces.setdefault(name, []).append(trace)
            say(f"seed {seed + r}: reinforce, trained on {train_rounds:,} logged rounds")
            logger = build_policy(LOGGER[0], inputs, LOGGER[1])
            log_config = config.model_copy(update={"seed": seed + r + 1_000_003})
            _, logged = run_policy(world, logger, log_config, train_rounds, seed=seed + r, log=True)
            assert logged is not None
            learned = train_reinforce(
                logged.feedback, world.items, ReinforceConfig(), seed=seed + r
            )
            reinforce_reports.append(learned.report)
            trace, _ = run_policy(world, learned, config, rounds, seed=seed + r)
            traces.setdefault("reinforce", []).append(trace)
        say(f"simulator speed: a random policy over {speed_impressions:,} impressions")
        speed = _speed(world, base.model_copy(update={"seed": seed}), seed, speed_impressions)
    policies = {name: _aggregate(runs) for name, runs in traces.items()}
    logger_reward = policies[LOGGER[0]]["reward_per_round"]["mean"]
    reinforce_reward = policies["reinforce"]["reward_per_round"]["mean"]
    final = {name: p["regret"]["mean"] for name, p in policies.items()}
    result: dict[str, Any] = {
        "world": world.about,
        "sim": base.model_dump(exclude={"seed"}),
        "rounds": rounds,
        "seeds": list(range(seed, seed + seeds)),
        "regret": "per round: expected clicks of the best slate for the user at that moment "
        "(true attraction after drift and fatigue) minus the slate shown's, summed; "
        "expectations, not sampled clicks",
        "learner_feedback": feedback,
        "policies": policies,
        "reinforce": {
            "logger": LOGGER[0],
            "logger_settings": LOGGER[1],
            "train_rounds": train_rounds,
            "training": reinforce_reports,
            "logger_reward_per_round": logger_reward,
            "reinforce_reward_per_round": reinforce_reward,
            "relative_improvement": reinforce_reward / logger_reward - 1,
        },
        "simulator_speed": speed,
        "targets": {
            f"{explorer}_beats_{baseline}": final[explorer] < final[baseline]
            for explorer in EXPLORERS
            for baseline in BASELINES
        }
        | {
            "reinforce_beats_its_logger": reinforce_reward > logger_reward,
            "million_impressions_under_60s": (
                speed["seconds"] * SPEED_IMPRESSIONS / speed["impressions"] < 60
            ),
        },
    }
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def _speed(world: World, config: SimConfig, seed: int, impressions: int) -> dict[str, Any]:
    k = config.slate_size
    rounds = math.ceil(impressions / k)
    policy = build_policy("random", world.inputs(k, seed))
    trace, _ = run_policy(world, policy, config, rounds, seed=seed, points=1)
    impressions = rounds * k
    return {
        "impressions": impressions,
        "seconds": round(trace.seconds, 2),
        "impressions_per_s": round(impressions / trace.seconds),
        "users_per_step": config.users_per_step,
        "note": "wall time of the loop: user draws, the random policy, clicks, drift and "
        "fatigue updates",
    }


def _stat(values: list[float]) -> dict[str, Any]:
    a = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(a.mean()),
        "std": seed_std(a),
        "per_seed": a.tolist(),
    }


def _aggregate(runs: list[Trace]) -> dict[str, Any]:
    """Means over seeds; the curves are sampled at the same rounds in every seed."""
    n = min(len(t.curve_rounds) for t in runs)
    return {
        "regret": _stat([t.regret for t in runs]),
        "reward_per_round": _stat([t.expected / t.rounds for t in runs]),
        "clicks_per_round": _stat([t.clicks / t.rounds for t in runs]),
        "regret_per_round": _stat([t.regret / t.rounds for t in runs]),
        "seconds": _stat([t.seconds for t in runs]),
        "curve": {
            "rounds": runs[0].curve_rounds[:n],
            "regret": np.mean([t.curve_regret[:n] for t in runs], axis=0).tolist(),
            "reward": np.mean([t.curve_reward[:n] for t in runs], axis=0).tolist(),
        },
    }


def bandits_plot(result: dict[str, Any], path: Path) -> Path:
    """Cumulative regret and the running reward per round of every policy (means over seeds)."""
    regret, reward = [], []
    for name, p in result["policies"].items():
        x = p["curve"]["rounds"]
        regret.append(Curve(points=list(zip(x, p["curve"]["regret"], strict=True)), label=name))
        per_round = [c / n for c, n in zip(p["curve"]["reward"], x, strict=True)]
        reward.append(Curve(points=list(zip(x, per_round, strict=True)), label=name))
    png = curves_png(
        {"cumulative regret": regret, "expected clicks per round, so far": reward},
        "rounds",
        "",
        whole_x=False,
    )
    write_bytes_atomic(path, png)
    return path


def render_bandits(payload: dict[str, Any]) -> None:
    from rich.table import Table

    from pinlab_tasks._output import stdout

    world, sim = payload["world"], payload["sim"]
    table = Table(
        title=f"bench bandits: {world['users']} users x {world['items']} items, "
        f"{sim['click_model']} clicks, slates of {sim['slate_size']}, fatigue {sim['fatigue']}, "
        f"drift {sim['drift']}; {payload['rounds']:,} rounds, seeds {payload['seeds']}",
        title_justify="left",
    )
    for column in ("policy", "regret", "regret/round", "clicks/round (exp.)", "s"):
        table.add_column(column, justify="left" if column == "policy" else "right")
    ordered = sorted(payload["policies"].items(), key=lambda kv: kv[1]["regret"]["mean"])
    for name, p in ordered:
        table.add_row(
            name,
            f"{p['regret']['mean']:,.0f} ± {p['regret']['std']:,.0f}",
            f"{p['regret_per_round']['mean']:.4f}",
            f"{p['reward_per_round']['mean']:.4f}",
            f"{p['seconds']['mean']:.1f}",
        )
    stdout.print(table)
    rf = payload["reinforce"]
    stdout.print(
        f"reinforce vs its logger ({rf['logger']}): {rf['reinforce_reward_per_round']:.4f} vs "
        f"{rf['logger_reward_per_round']:.4f} expected clicks per round "
        f"({rf['relative_improvement'] * 100:+.1f}%)"
    )
    speed = payload["simulator_speed"]
    stdout.print(
        f"simulator: {speed['impressions']:,} impressions in {speed['seconds']} s "
        f"({speed['impressions_per_s']:,}/s)"
    )
    for name, ok in payload["targets"].items():
        stdout.print(f"target {name}: {'met' if ok else 'NOT met'}")
    stdout.print(f"plot: {payload.get('plot')}; {payload['seconds']} s")
