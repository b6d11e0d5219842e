"""`pinlab sim`: run a policy in the simulator and log what it did."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from pinlab_data import ClickModel, PinlabDataError, SimConfig, write_json_atomic
from pinlab_tasks._app import JsonFlag, NewRunOpt, SeedOpt, settings
from pinlab_tasks._output import busy, emit, stdout
from pinlab_tasks.runs import RunLayout, new_run_dir
from pinlab_tasks.tracking import tracked

app = typer.Typer(help="Policies in the recommendation simulator.", no_args_is_help=True)

SIM_RESULT = "sim.json"

DataOpt = Annotated[
    Path | None,
    typer.Option(
        "--data",
        help="A dataset directory: its truth.npz drives the simulator, else a second fitted "
        "model (ease). Default: a synthetic world of --users x --items written under RUN/world.",
    ),
]
UsersOpt = Annotated[
    int, typer.Option("--users", min=2, help="Users (the most active ones of --data).")
]
ItemsOpt = Annotated[
    int, typer.Option("--items", min=2, help="Items (the most popular ones of --data).")
]
SlateOpt = Annotated[int, typer.Option("--slate", min=1, max=50, help="Items per slate (k).")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="A policy setting KEY=VALUE (repeatable), e.g. epsilon=0.1."),
]


@app.command("run")
def run_(
    policy: Annotated[
        str,
        typer.Option(
            "--policy",
            help="random, greedy, softmax, epsilon-greedy, online-greedy, "
            "online-epsilon-greedy, linucb, thompson, neural-linear or reinforce.",
        ),
    ],
    rounds: Annotated[
        int, typer.Option("--rounds", min=1, help="Rounds (one slate each).")
    ] = 10_000,
    data: DataOpt = None,
    users: UsersOpt = 1000,
    items: ItemsOpt = 100,
    slate: SlateOpt = 3,
    click_model: Annotated[
        ClickModel, typer.Option("--click-model", help="pbm (position-based) or cascade.")
    ] = "pbm",
    stationary: Annotated[
        bool,
        typer.Option(
            "--stationary",
            help="No drift or fatigue: a contextual bandit, whose logs `eval ope` can check "
            "against the exact value.",
        ),
    ] = False,
    set_: SetOpt = None,
    train_logs: Annotated[
        Path | None,
        typer.Option("--train-logs", help="reinforce: logs to train on (RUN/logs of a sim run)."),
    ] = None,
    no_log: Annotated[
        bool, typer.Option("--no-log", help="Do not write the logged feedback.")
    ] = False,
    run: NewRunOpt = None,
    seed: SeedOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Serve --rounds rounds of users a slate each from one policy; report its clicks and regret.

    Users are drawn uniformly, click through the click model with their true attraction, drift
    and tire of what they see (unless --stationary). Regret is the expected clicks of the best
    slate at that moment minus the slate shown's (expectations, not the sampled clicks).
    Policies see the fitted recommender (ials, 16 factors) only, never the truth. The logs hold
    every impression with the policy's propensities, so `pinlab eval ope --logs RUN/logs` can
    value another policy from them.

    Writes: RUN/run.json, RUN/sim.json, RUN/logs/ (feedback.parquet, feedback.json,
    logger_dist.npy when the policy's marginals are known and fit, world.npz, sim.json),
    RUN/world/ (the synthetic world, without --data).
    """
    from pinlab_tasks.commands.train import parse_settings
    from pinlab_tasks.simulate import LOGS_DIR, sim_run, target_policy, world_for

    resolved = settings()
    seed_value = resolved.seed if seed is None else seed
    policy_settings = parse_settings(set_)
    layout = RunLayout(run or new_run_dir(resolved.runs_dir, "sim"))
    layout.check_dataset(data)  # before the work, not after it
    own_logs = (layout.root / LOGS_DIR).resolve()
    if train_logs is not None and not no_log and train_logs.resolve() == own_logs:
        raise PinlabDataError(
            f"--train-logs {train_logs} are the logs of --run {layout.root}, which this run "
            "replaces with its own; pass another --run (or --no-log)"
        )
    config = SimConfig(slate_size=slate, click_model=click_model, seed=seed_value)
    if stationary:
        config = config.stationary()
    params: dict[str, Any] = {
        "policy": policy, "rounds": rounds, "data": str(data) if data else None,
        "users": users, "items": items, "sim": config.model_dump(), "settings": policy_settings,
        "train_logs": str(train_logs) if train_logs else None, "seed": seed_value,
    }  # fmt: skip
    with tracked("sim run", params, run_dir=layout.root) as tracker:
        with busy("building the world", as_json):
            world = world_for(
                data, layout.root, users=users, items=items, recommender="ials", dim=16,
                seed=seed_value,
            )  # fmt: skip
        with busy(f"serving {rounds:,} rounds with {policy}", as_json):
            trained = None
            if policy == "reinforce":
                trained = target_policy(
                    world, policy, policy_settings, slate, seed=seed_value, train_logs=train_logs
                )
            result = sim_run(
                world, policy, config, rounds, layout.root, seed=seed_value,
                settings=policy_settings, log=not no_log, policy=trained,
            )  # fmt: skip
        layout.log_step("sim run", params, data_dir=data)
        write_json_atomic(layout.root / SIM_RESULT, result)
        tracker.log_metrics(
            {k: result[k] for k in ("reward_per_round", "regret_per_round", "clicks_per_round")}
        )
        tracker.log_artifact(layout.root / SIM_RESULT)
    payload = {"run": str(layout.root), **{k: v for k, v in result.items() if k != "curve"}}

    def render() -> None:
        table = Table(show_header=False, title=f"sim run: {policy}, {rounds:,} rounds")
        for key in ("reward_per_round", "clicks_per_round", "regret_per_round", "regret",
                    "impressions", "impressions_per_s", "seconds", "logs"):  # fmt: skip
            if key in payload:
                value = payload[key]
                table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
        stdout.print(table)

    emit(payload, as_json, render)
