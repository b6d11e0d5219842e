"""`pinlab bench`: measure how fast pinlab's steps run and how much memory they take."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from pinlab_data import ClickModel, PinlabDataError, write_json_atomic, write_movielens_like
from pinlab_eval import CiMethod, protocol_spec
from pinlab_models import GeneratorConfig, resolve_device
from pinlab_serve import PinlabServeError
from pinlab_tasks import generative
from pinlab_tasks._app import (
    DeviceOpt,
    JsonFlag,
    NewRunOpt,
    ProtocolSeedOpt,
    SeedOpt,
    settings,
)
from pinlab_tasks._measure import run_measured
from pinlab_tasks._output import busy, emit, stderr, stdout
from pinlab_tasks._progress import step_say, train_progress
from pinlab_tasks.benchmarks import bench_recsys, item_text_features, render_recsys
from pinlab_tasks.commands.train import parse_model_settings, parse_settings, validated
from pinlab_tasks.embedding import DEFAULT_SHARD_ROWS
from pinlab_tasks.runs import RunLayout, new_run_dir
from pinlab_tasks.settings import MAX_SEED
from pinlab_tasks.tracking import tracked
from pinlab_tasks.visual_bench import (
    DEFAULT_BUDGET_SECONDS,
    DEFAULT_TRIALS,
    bench_visual,
    check_search,
)

app = typer.Typer(help="Measure pinlab's steps: time and peak memory.", no_args_is_help=True)

# The simulated world of `bench ope` and `bench bandits`.
WorldDataOpt = Annotated[
    Path | None,
    typer.Option(
        "--data",
        help="A dataset directory (its truth.npz, else a fitted ease, is the truth). "
        "Default: a synthetic world of --users x --items under RUN/world.",
    ),
]
UsersOpt = Annotated[int, typer.Option("--users", min=2)]
ItemsOpt = Annotated[int, typer.Option("--items", min=4)]
SlateOpt = Annotated[int, typer.Option("--slate", min=1, max=3, help="Items per slate.")]

ML20M_ROWS = 20_000_263
_CONVERT = """
import json, sys
from pathlib import Path
from pinlab_data import load_movielens
report = load_movielens(Path(sys.argv[1]), Path(sys.argv[2]))
print(json.dumps(report.model_dump()))
"""


@app.command("data")
def data(
    rows: Annotated[
        int,
        typer.Option("--rows", min=1, help="Ratings to generate (MovieLens-20M has 20,000,263)."),
    ] = ML20M_ROWS,
    as_json: JsonFlag = False,
) -> None:
    """Convert a generated MovieLens-20M-format ratings.csv; report rows/s and peak memory.

    Generated (seed 0) in a temporary folder; converted in a child process, whose peak counts.

    Writes: nothing that stays (a temporary folder).
    """
    with tempfile.TemporaryDirectory(prefix="pinlab-bench-data-") as tmp:
        source = Path(tmp) / "ml-like"
        with busy(f"generating {rows:,} ratings", as_json):
            write_movielens_like(source, rows, seed=0)
        size_mb = (source / "ratings.csv").stat().st_size / 2**20
        with busy(f"converting {rows:,} ratings", as_json):
            measured = run_measured(_CONVERT, str(source), str(Path(tmp) / "dataset"))
    seconds = float(measured.result["seconds"])
    payload = {
        "rows": int(measured.result["num_interactions"]),
        "seconds": round(seconds, 2),
        "rows_per_s": round(rows / seconds) if seconds > 0 else None,
        "peak_rss_mb": measured.peak_rss_mb,
        "file_mb": round(size_mb, 1),
    }

    def render() -> None:
        table = Table(show_header=False, title="bench data: ratings.csv to a dataset")
        for key, value in payload.items():
            table.add_row(key, f"{value:,}" if isinstance(value, int) else str(value))
        stdout.print(table)

    emit(payload, as_json, render)


@app.command("ope")
def ope(
    seeds: Annotated[
        int, typer.Option("--seeds", min=2, help="Logs per pair (fresh users and clicks each).")
    ] = 50,
    rounds: Annotated[int, typer.Option("--rounds", min=10, help="Logged rounds per seed.")] = (
        10_000
    ),
    data: WorldDataOpt = None,
    users: UsersOpt = 1000,
    items: ItemsOpt = 100,
    slate: SlateOpt = 3,
    no_peers: Annotated[
        bool, typer.Option("--no-peers", help="Skip obp and the Open Bandit Dataset check.")
    ] = False,
    run: NewRunOpt = None,
    seed: SeedOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Every off-policy estimator against the exact value the simulator knows, per pair
    (logging policy, target policy), over seeds: estimate, interval, error and coverage.

    The simulator runs as a contextual bandit (pbm clicks, no drift or fatigue); each seed logs
    --rounds fresh rounds, fits the reward model on those logs alone (cross-fitted), and
    estimates each target. The truth is the target's exact expected clicks per impression over
    all users. Pairs: epsilon-greedy -> softmax (the issue's DR target), epsilon-greedy ->
    REINFORCE (trained on other logs), softmax -> greedy, random -> softmax, and greedy ->
    softmax (IPS-family estimators must report it unsupported). With the obp extra, obp's
    estimators on identical inputs and the Open Bandit Dataset check (BTS from random logs);
    without it, they say why they were skipped.

    `pinlab report RUN` lays the tables and the error plot out as a page.

    Writes: RUN/run.json, RUN/ope.json, RUN/ope_errors.png, RUN/world/ (without --data).
    """
    from pinlab_tasks.ope_bench import OPE_FILE, PLOT_FILE, bench_ope, errors_plot, render_ope
    from pinlab_tasks.simulate import world_for

    resolved = settings()
    layout = RunLayout(run or new_run_dir(resolved.runs_dir, "bench-ope"))
    layout.check_dataset(data)  # before the work, not after it
    seed_value = resolved.seed if seed is None else seed
    config = {"seeds": seeds, "rounds": rounds, "data": str(data) if data else None,
              "users": users, "items": items, "slate": slate, "peers": not no_peers,
              "seed": seed_value}  # fmt: skip
    say = step_say(stderr.print, "bench ope")
    with tracked("bench ope", config, run_dir=layout.root) as tracker:
        say("building the world")
        world = world_for(
            data, layout.root, users=users, items=items, recommender="ials", dim=16,
            seed=seed_value,
        )  # fmt: skip
        result = bench_ope(
            world, seeds=seeds, rounds=rounds, slate_size=slate, seed=seed_value, say=say,
            peers=not no_peers,
        )  # fmt: skip
        result["plot"] = str(errors_plot(result, layout.root / PLOT_FILE))
        layout.log_step("bench ope", config, data_dir=data)
        write_json_atomic(layout.root / OPE_FILE, result)
        tracker.log_metrics({"seconds": result["seconds"]})
        tracker.log_artifact(layout.root / OPE_FILE)
    payload = {"run": str(layout.root), **result}
    emit(payload, as_json, lambda: render_ope(payload))


@app.command("bandits")
def bandits(
    rounds: Annotated[int, typer.Option("--rounds", min=10, help="Rounds per policy and seed.")] = (
        100_000
    ),
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="Repeats (users, clicks).")] = 2,
    data: WorldDataOpt = None,
    users: UsersOpt = 1000,
    items: ItemsOpt = 100,
    slate: SlateOpt = 3,
    click_model: Annotated[
        ClickModel, typer.Option("--click-model", help="cascade or pbm.")
    ] = "cascade",
    train_rounds: Annotated[
        int, typer.Option("--train-rounds", min=10, help="Logged rounds REINFORCE learns from.")
    ] = 20_000,
    speed_impressions: Annotated[
        int,
        typer.Option("--speed-impressions", min=3, help="Impressions the speed check serves."),
    ] = 1_000_000,
    run: NewRunOpt = None,
    seed: SeedOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Every policy in the simulator (drift and fatigue on) for --rounds rounds: cumulative
    reward and regret curves, REINFORCE against its logging policy, and the simulator's speed.

    Regret is the expected clicks of the best slate for the user at that moment minus the
    slate shown's (expectations, not sampled clicks). Learners update after every batch of
    users from the positions a cascade user saw (or all, with pbm).

    `pinlab report RUN` shows the curves.

    Writes: RUN/run.json, RUN/bandits.json, RUN/bandits.png, RUN/world/ (without --data).
    """
    from pinlab_tasks.bandit_bench import (
        BANDITS_FILE,
        PLOT_FILE,
        bandits_plot,
        bench_bandits,
        render_bandits,
    )
    from pinlab_tasks.simulate import world_for

    resolved = settings()
    layout = RunLayout(run or new_run_dir(resolved.runs_dir, "bench-bandits"))
    layout.check_dataset(data)  # before the work, not after it
    seed_value = resolved.seed if seed is None else seed
    config = {"rounds": rounds, "seeds": seeds, "data": str(data) if data else None,
              "users": users, "items": items, "slate": slate, "click_model": click_model,
              "train_rounds": train_rounds, "speed_impressions": speed_impressions,
              "seed": seed_value}  # fmt: skip
    say = step_say(stderr.print, "bench bandits")
    with tracked("bench bandits", config, run_dir=layout.root) as tracker:
        say("building the world")
        world = world_for(
            data, layout.root, users=users, items=items, recommender="ials", dim=16,
            seed=seed_value,
        )  # fmt: skip
        result = bench_bandits(
            world, rounds=rounds, seeds=seeds, slate_size=slate, click_model=click_model,
            train_rounds=train_rounds, seed=seed_value, speed_impressions=speed_impressions,
            say=say,
        )  # fmt: skip
        result["plot"] = str(bandits_plot(result, layout.root / PLOT_FILE))
        layout.log_step("bench bandits", config, data_dir=data)
        write_json_atomic(layout.root / BANDITS_FILE, result)
        tracker.log_metrics(
            {f"regret/{name}": p["regret"]["mean"] for name, p in result["policies"].items()}
            | {"seconds": result["seconds"]}
        )
        tracker.log_artifact(layout.root / BANDITS_FILE)
    payload = {"run": str(layout.root), **result}
    emit(payload, as_json, lambda: render_bandits(payload))


@app.command("ope-real")
def ope_real(
    campaign: Annotated[
        str, typer.Option("--campaign", help="Open Bandit Dataset campaign: all, men or women.")
    ] = "all",
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="An Open Bandit Dataset folder ({random,bts}/CAMPAIGN/CAMPAIGN.csv). Default: "
            "the small sample obp ships.",
        ),
    ] = None,
    folds: Annotated[int, typer.Option("--folds", min=2, help="Reward model cross-fitting.")] = 3,
    ci: Annotated[
        CiMethod, typer.Option("--ci", help="Interval: normal (delta method) or bootstrap.")
    ] = "normal",
    run: NewRunOpt = None,
    seed: SeedOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Estimate the Bernoulli Thompson sampling policy's click rate from the uniform-random
    policy's logs of the Open Bandit Dataset, as the OBP paper does, with every off-policy
    estimator; compare with BTS's own logged click rate (relative error, interval coverage),
    and run obp's estimators on identical inputs (they must agree to 1e-6).

    Needs the optional extra: `uv sync --all-packages --extra obp`.

    Writes: RUN/run.json (resolved config), RUN/ope_real.json.
    """
    from pinlab_tasks.ope_peers import open_bandit_check, render_open_bandit, require_obp

    require_obp()
    resolved = settings()
    layout = RunLayout(run or new_run_dir(resolved.runs_dir, "bench-ope-real"))
    seed_value = resolved.seed if seed is None else seed
    config = {
        "campaign": campaign,
        "data": str(data) if data else None,
        "folds": folds,
        "ci": ci,
        "seed": seed_value,
    }
    with tracked("bench ope-real", config, run_dir=layout.root) as tracker:
        with busy("estimating BTS from the random policy's logs", as_json):
            result = open_bandit_check(
                campaign=campaign, data=data, folds=folds, seed=seed_value, ci=ci
            )
        layout.log_step("bench ope-real", config)
        write_json_atomic(layout.root / "ope_real.json", result)
        tracker.log_metrics(
            {
                f"relative_error/{row['name']}": row["relative_error"]
                for row in result["estimates"]
                if row["value"] is not None
            }
            | {"obp_max_abs_diff": result["agreement"]["max_abs_diff"]}
        )
        tracker.log_artifact(layout.root / "ope_real.json")
    payload = {"run": str(layout.root), **result}
    emit(payload, as_json, lambda: render_open_bandit(payload))


@app.command("recsys")
def recsys(
    data: Annotated[Path, typer.Option("--data", help="A pinlab dataset directory.")],
    protocol: Annotated[
        str, typer.Option("--protocol", help="stratified, leave-last-out or temporal.")
    ] = "stratified",
    models: Annotated[
        str | None,
        typer.Option("--models", help="Comma-separated registered names. Default: all."),
    ] = None,
    negatives: Annotated[
        int | None,
        typer.Option("--negatives", min=1, help="leave-last-out: rank against N sampled items."),
    ] = None,
    sampling: Annotated[
        str | None, typer.Option("--sampling", help="leave-last-out: uniform or popularity.")
    ] = None,
    stratify_by: Annotated[
        str | None, typer.Option("--stratify-by", help="stratified: item (default) or user.")
    ] = None,
    protocol_seed: ProtocolSeedOpt = None,
    peers: Annotated[
        str | None,
        typer.Option("--peers", help="implicit (ALS beside ials), cornac (BPR beside bpr)."),
    ] = None,
    seeds: Annotated[
        int,
        typer.Option(
            "--seeds",
            min=1,
            help="Repeat the whole pipeline with N split and "
            "training seeds; report mean, std and per-seed values.",
        ),
    ] = 1,
    trials: Annotated[
        int,
        typer.Option(
            "--trials",
            min=0,
            help="Optuna trials per model and seed on validation "
            "(0: defaults, epochs still early-stopped).",
        ),
    ] = 40,
    budget: Annotated[
        float,
        typer.Option(
            "--budget",
            min=0,
            help="Seconds of search per model and seed (0: none; a trial under way finishes).",
        ),
    ] = 20.0,
    metric: Annotated[
        str, typer.Option("--metric", help="What validation maximises, NAME@K.")
    ] = "ndcg@10",
    refit: Annotated[
        bool,
        typer.Option(
            "--refit/--no-refit",
            help="--no-refit: measure the model validation chose as fitted, given the test's "
            "histories (ICLRec's and RecBole's protocol); models with learnt user vectors "
            "are refitted anyway.",
        ),
    ] = True,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="A model setting held fixed, MODEL.KEY=VALUE (JSON value), repeatable: "
            "hstu.dropout=0.5. The search leaves it out.",
        ),
    ] = None,
    run: NewRunOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Search every model on validation, refit it, and rank it on the protocol's test split.

    Per seed: Optuna (seeded TPE, the model's declared space, epochs early-stopped and
    pruned) chooses settings on the validation split; the model is refitted on the training
    part and measured on the test part, which nothing reads before. Prints mean ± std over
    seeds of metrics at 10 (and 20 in --json), fit seconds and memory, what the search chose
    and whether it sat on an edge of its range, the best model against the next ones (paired
    over seeds and users, Holm-adjusted), and published numbers on the same protocol.

    Writes: RUN/run.json (resolved config), RUN/bench.json (the result), RUN/optuna.db (every
    study), RUN/user_metrics.npz (per-user values), RUN/MODEL/seed-S/ (logs).
    """
    names = [n.strip() for n in models.split(",") if n.strip()] if models is not None else None
    if names == []:
        raise PinlabDataError(f"--models {models!r} names no model; leave it out to run them all")
    fixed = parse_model_settings(set_ or [])
    spec = protocol_spec(
        protocol,
        {
            "negatives": negatives,
            "sampling": sampling,
            "stratify_by": stratify_by,
            "seed": protocol_seed,
        },
    )
    resolved = settings()
    layout = RunLayout(run or new_run_dir(resolved.runs_dir, "bench-recsys"))
    layout.check_dataset(data)  # before the work, not after it
    seed_value = resolved.seed if seed is None else seed
    config = {
        "protocol": spec.settings(),
        "models": names,
        "peers": peers,
        "seed": seed_value,
        "seeds": seeds,
        "trials": trials,
        "budget_seconds": budget or None,
        "metric": metric,
        "refit": refit,
        "fixed": fixed,
        "device": device or resolved.device,
    }
    with tracked("bench recsys", config, run_dir=layout.root) as tracker:
        result = bench_recsys(
            data,
            spec,
            names,
            layout.root,
            seed=seed_value,
            seeds=seeds,
            trials=trials,
            budget_seconds=budget or None,
            metric=metric,
            device=device or resolved.device,
            progress=train_progress(True, "bench recsys"),  # on stderr: stdout stays one document
            item_features=lambda: item_text_features(data),
            peers=[p.strip() for p in (peers or "").split(",") if p.strip()],
            refit=refit,
            fixed=fixed,
            say=step_say(stderr.print, "bench recsys"),
        )
        layout.log_step("bench recsys", config, data_dir=data)  # only once it succeeded
        write_json_atomic(layout.root / "bench.json", result)
        tracker.log_metrics({"seconds": result["seconds"]})
        tracker.log_artifact(layout.root / "bench.json")
    payload = {"run": str(layout.root), **result}
    emit(payload, as_json, lambda: render_recsys(payload))


@app.command("rerank")
def rerank(
    data: Annotated[Path, typer.Option("--data", help="A pinlab dataset directory.")],
    by: Annotated[
        str | None,
        typer.Option(
            "--by",
            help="Pin column that groups items for exposure (default: creator_group on the "
            "synthetic world, category elsewhere).",
        ),
    ] = None,
    model: Annotated[
        str, typer.Option("--model", help="The recommender whose candidates are re-ranked.")
    ] = "ease",
    candidates: Annotated[
        int, typer.Option("--candidates", min=10, help="Candidates per user re-ranked to 10.")
    ] = 100,
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="Splits and fits repeated.")] = 1,
    run: NewRunOpt = None,
    seed: SeedOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Re-rank one recommender's candidates with MMR, DPP, calibrated and exposure-constrained
    re-ranking (its minimum as is, and dithered over users) over a sweep of trade-offs; report
    the NDCG@10-diversity frontier.

    Per seed (stratified split, seed 42 + r) the model is fitted with default settings on the
    validation and then the test training part. Validation picks each re-ranker's trade-off
    (most category diversity for MMR and DPP within 1% relative NDCG loss, least
    miscalibration for calibrated and smallest exposure gap for exposure-constrained within
    2%); the test split reports the frontier and that choice, mean ± std over seeds. On the
    synthetic world the exposure gap is to the group's true merit (no exposure bias).

    `pinlab report RUN` lays out the choices and the frontier as a page.

    Writes: RUN/run.json (resolved config), RUN/rerank.json, RUN/frontier.png.
    """
    from pinlab_tasks.rerank_bench import (
        RERANK_FILE,
        bench_rerank,
        frontier_plot,
        render_rerank,
    )

    resolved = settings()
    layout = RunLayout(run or new_run_dir(resolved.runs_dir, "bench-rerank"))
    layout.check_dataset(data)  # before the work, not after it
    seed_value = resolved.seed if seed is None else seed
    config = {
        "by": by,
        "model": model,
        "candidates": candidates,
        "seeds": seeds,
        "seed": seed_value,
    }
    with tracked("bench rerank", config, run_dir=layout.root) as tracker:
        result = bench_rerank(
            data,
            layout.root,
            by=by,
            model=model,
            candidates=candidates,
            seeds=seeds,
            seed=seed_value,
            say=step_say(stderr.print, "bench rerank"),
        )
        result["plot"] = str(frontier_plot(result, layout.root / "frontier.png"))
        layout.log_step("bench rerank", config, data_dir=data)
        write_json_atomic(layout.root / RERANK_FILE, result)
        tracker.log_artifact(layout.root / RERANK_FILE)
    payload = {"run": str(layout.root), **result}
    emit(payload, as_json, lambda: render_rerank(payload))


@app.command("index")
def index(
    vectors: Annotated[
        int, typer.Option("--vectors", min=1000, help="Vectors to index (10000000 for 10M).")
    ] = 100_000,
    dim: Annotated[int, typer.Option("--dim", min=8, help="Dimension of the vectors.")] = 64,
    queries: Annotated[
        int, typer.Option("--queries", min=10, help="Fresh queries for recall and latency.")
    ] = 1000,
    kinds: Annotated[
        str, typer.Option("--kinds", help="Comma-separated index kinds.")
    ] = "flat,hnsw,ivf-pq,opq-ivf-pq,hnsw-pq",
    m: Annotated[
        int | None,
        typer.Option("--m", min=1, help="Bytes per PQ code (default: the dimension)."),
    ] = None,
    tune_recall: Annotated[
        float | None,
        typer.Option("--tune-recall", help="Also run the tuner for this recall@10."),
    ] = None,
    tune_memory: Annotated[
        str | None, typer.Option("--tune-memory", help="The tuner's memory cap, e.g. 1GB.")
    ] = None,
    work: Annotated[
        Path | None,
        typer.Option(
            "--work",
            help="Keep the shards and indexes here: a new or empty folder, or an earlier "
            "--work (shards are reused by a rerun with the same --vectors, --dim and --seed).",
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, max=MAX_SEED)] = 0,
    as_json: JsonFlag = False,
) -> None:
    """Build each index kind over generated clustered vectors (a seeded Gaussian mixture, one
    cluster per 1,000) and measure build time, memory (in a fresh process that loads the
    index, plain and memory-mapped), recall@10 against exact search on fresh queries, and
    single-query latency p50/p99 on one FAISS thread at each search breadth.

    Writes: nothing that stays unless --work DIR (shards/, index-KIND/, queries.npz).
    """
    import faiss

    from pinlab_serve import INDEX_KINDS, check_target_recall
    from pinlab_tasks.index_bench import bench_index, render_index
    from pinlab_tasks.queries import parse_size

    faiss.omp_set_num_threads(settings().threads)  # builds; latency is measured on one
    if tune_recall is not None:  # before the builds, not after them
        check_target_recall(tune_recall, "--tune-recall")
    chosen = [k.strip() for k in kinds.split(",") if k.strip()]
    unknown = [k for k in chosen if k not in INDEX_KINDS]
    if unknown or not chosen:
        what = f"unknown {', '.join(unknown)}" if unknown else "names no kind"
        raise PinlabServeError(f"--kinds {kinds!r}: {what}; choose from {', '.join(INDEX_KINDS)}")
    payload = bench_index(
        vectors,
        dim,
        queries,
        [k for k in INDEX_KINDS if k in chosen],
        m or dim,
        seed,
        work=work,
        tune_target=tune_recall,
        tune_memory=parse_size(tune_memory) if tune_memory else None,
        say=step_say((lambda _: None) if as_json else stderr.print, "bench index"),
    )
    emit(payload, as_json, lambda: render_index(payload))


@app.command("serve")
def serve(
    pins: Annotated[int, typer.Option("--pins", min=100, help="Pins in the world.")] = 20_000,
    concurrency: Annotated[
        str, typer.Option("--concurrency", help="Comma-separated concurrency levels.")
    ] = "1,8,16",
    scale: Annotated[
        float, typer.Option("--scale", min=0.01, max=10, help="Multiply the request counts.")
    ] = 1.0,
    duration: Annotated[
        float, typer.Option("--duration", min=1, help="Seconds cap per endpoint and level.")
    ] = 20.0,
    run: Annotated[
        Path | None, typer.Option("--run", help="Serve this run instead of building a world.")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, max=MAX_SEED)] = 0,
    as_json: JsonFlag = False,
) -> None:
    """Load-test `pinlab serve` on loopback (one worker): QPS, p50/p95/p99 and errors per
    endpoint and concurrency, against the same service with NumPy brute-force search, plus an
    open-loop run at a fixed arrival rate. The server runs as `pinlab serve` would (threads
    from PINLAB_SERVE_*); states the encoder, index, pin and thread counts, and times a
    12-megapixel JPEG upload on its own.

    Writes: nothing that stays (the world is built in a temporary folder unless --run).
    """
    # Imported here: the load generator's modules are only needed by this command.
    from pinlab_tasks.serve_bench import bench_serve, parse_levels, render_serve

    payload = bench_serve(
        pins,
        parse_levels(concurrency),
        scale,
        duration,
        seed,
        run_dir=run,
        say=step_say((lambda _: None) if as_json else stderr.print, "bench serve"),
    )
    emit(payload, as_json, lambda: render_serve(payload))


@app.command("infer")
def infer(
    run: Annotated[
        Path | None,
        typer.Option("--run", help="Measure this run instead of building a world."),
    ] = None,
    pins: Annotated[int, typer.Option("--pins", min=100, help="Pins in the world.")] = 3000,
    batch_sizes: Annotated[
        str, typer.Option("--batch-sizes", help="Comma-separated batch sizes, each timed.")
    ] = "1,32,256",
    rounds: Annotated[
        int, typer.Option("--rounds", min=1, max=50, help="Alternated timed passes per runtime.")
    ] = 5,
    seed: Annotated[
        int, typer.Option("--seed", min=0, max=MAX_SEED, help="World, split and sample seed.")
    ] = 0,
    as_json: JsonFlag = False,
) -> None:
    """Eager PyTorch against ONNX Runtime (float32 and int8) for the image encoder and the text
    tower: images/s and texts/s at each batch size with the same threads (`--threads`),
    runtimes alternated round by round; visual search recall@10 (and text-to-image recall when
    aligned) on the same held-out queries per runtime; how far embeddings move; the issue's
    target (1.5x eager image throughput, recall@10 at most 0.01 lower).

    Without --run, a 3,000-pin world is built and trained briefly in a temporary folder. Use
    the seed the run's encoder was trained with: it picks the held-out pins.
    Writes: nothing that stays; with --run, RUN/onnx/ when its exports are missing or stale.
    """
    from pinlab_tasks.infer_bench import bench_infer, parse_batch_sizes, render_infer

    payload = bench_infer(
        pins,
        parse_batch_sizes(batch_sizes),
        rounds,
        seed,
        run_dir=run,
        say=step_say((lambda _: None) if as_json else stderr.print, "bench infer"),
    )
    emit(payload, as_json, lambda: render_infer(payload))


@app.command("embed")
def embed(
    pins: Annotated[
        int, typer.Option("--pins", min=1, help="Pins of the synthetic bench world.")
    ] = 100_000,
    repeats: Annotated[
        int, typer.Option("--repeats", min=1, help="Runs of each engine, alternating.")
    ] = 3,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Ray workers.")] = 2,
    shard_rows: Annotated[
        int, typer.Option("--shard-rows", min=1, help="Pins per shard.")
    ] = DEFAULT_SHARD_ROWS,
    run: Annotated[
        Path | None,
        typer.Option("--run", help="Embed with this run's encoder instead of a bench world."),
    ] = None,
    data: Annotated[
        Path | None, typer.Option("--data", help="With --run: this dataset (default: the run's).")
    ] = None,
    seed: SeedOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Images/s of `pinlab embed` on the local engine against the Ray engine (a local Ray
    cluster of `--workers` workers sharing the `--threads` budget), on the same data in one
    process, repetitions alternating; whether the vectors are bit-identical; the machine's
    load. Target: Ray at least 0.8x the local engine's images/s.

    Writes: nothing that stays (a temporary folder).
    """
    from pinlab_tasks.embed_bench import bench_embed, render_embed

    s = settings()
    params = {"pins": pins, "repeats": repeats, "workers": workers, "threads": s.threads,
              "shard_rows": shard_rows, "run": str(run) if run else None}  # fmt: skip
    with tracked("bench embed", params) as tracker:
        payload = bench_embed(
            pins,
            repeats,
            workers,
            s.threads,
            shard_rows,
            s.seed if seed is None else seed,
            run_dir=run,
            data_dir=data,
            say=step_say((lambda _: None) if as_json else stderr.print, "bench embed"),
        )
        tracker.log_metrics(
            {
                "local_images_per_s": payload["local"]["images_per_s"],
                "ray_images_per_s": payload["ray"]["images_per_s"],
                "ratio": payload["ratio"],
            }
        )
    emit(payload, as_json, lambda: render_embed(payload))


@app.command("device")
def device_(
    scale: Annotated[
        float,
        typer.Option("--scale", min=0.01, max=1.0, help="Shrink the work (1: the GPU's sizes)."),
    ] = 1.0,
    data: Annotated[
        Path | None,
        typer.Option("--data", help="SASRec's dataset (default: the synthetic world's log)."),
    ] = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Throughput of pinlab's own steps on one device: encoder training (float32, and bf16
    autocast on CUDA), embedding, the generator's guided sampling and SASRec epochs, so a GPU
    and the CPU are compared on the same code.

    Writes: nothing that stays (a temporary folder).
    """
    from pinlab_tasks.device_bench import bench_device, render_device

    s = settings()
    with tempfile.TemporaryDirectory(prefix="pinlab-bench-device-") as work:
        payload = bench_device(
            device or s.device,
            scale,
            s.seed if seed is None else seed,
            Path(work),
            data,
            say=step_say((lambda _: None) if as_json else stderr.print, "bench device"),
        )
    emit(payload, as_json, lambda: render_device(payload))


@app.command("visual")
def visual(
    data: Annotated[Path, typer.Option("--data", help="Dataset with labelled images.")],
    run: Annotated[
        Path | None,
        typer.Option("--run", help="Run directory (created). Default: RUNS_DIR/bench-visual-TIME."),
    ] = None,
    recipes: Annotated[
        list[str] | None,
        typer.Option("--recipe", help="supcon, simclr or proxy-anchor; repeatable (default all)."),
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option(
            "--epochs",
            min=1,
            help="Cap on every recipe's epochs (default per recipe); "
            "the epochs used are early-stopped on validation classes.",
        ),
    ] = None,
    seeds: Annotated[
        int, typer.Option("--seeds", min=1, help="Class splits (and training seeds) to average.")
    ] = 3,
    trials: Annotated[
        int,
        typer.Option(
            "--trials",
            help="Optuna trials per recipe and split, on validation classes; trial 0 is the "
            "recipe's defaults, so 1 keeps them and only early-stops the epochs.",
        ),
    ] = DEFAULT_TRIALS,
    budget: Annotated[
        float,
        typer.Option(
            "--budget",
            help="Seconds of search per recipe and split (the defaults' trial always "
            "finishes); 0: no time limit, --trials alone stops the search.",
        ),
    ] = DEFAULT_BUDGET_SECONDS,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Train every encoder recipe and measure it against raw pixels and the untrained encoder.

    Recall@1/@10, MAP@R and linear-probe accuracy on classes never trained on (or held-out
    images when there are fewer than 4 classes), images/s training and embedding, peak memory.
    Each recipe's settings (learning rate, weight decay, batch, crop, loss settings) and epochs
    are searched with Optuna on validation classes inside the training classes, never on the
    reported ones; every number is a mean over `--seeds` class splits, with its standard
    deviation and per-seed values. `*` marks a chosen setting on the edge of its range.

    Writes: RUN/{run.json, bench_visual.json, optuna.db, embedding_map_*.png, seedS/rows.json,
    seedS/RECIPE/encoder.pt, seedS/RECIPE/valid/trial-N/metrics.jsonl}.
    """
    check_search(trials, budget)  # before the run directory exists
    s = settings()
    layout = RunLayout(run or new_run_dir(s.runs_dir, "bench-visual"))
    params = {"data": str(data), "recipes": recipes, "epochs": epochs, "seeds": seeds,
              "trials": trials, "budget": budget,
              "seed": s.seed if seed is None else seed}  # fmt: skip
    with tracked("bench visual", params, run_dir=layout.root) as tracker:
        payload = bench_visual(
            data,
            layout,
            recipes,
            epochs,
            s.seed if seed is None else seed,
            device or s.device,
            progress=train_progress(not as_json, "bench visual"),
            seeds=seeds,
            trials=trials,
            budget_seconds=budget,
        )
        tracker.log_metrics(
            {
                f"{row['recipe']}.{k}": v
                for row in payload["results"]
                for k, v in row["metrics"].items()
            }
        )
        tracker.log_artifact(layout.root / "bench_visual.json")

    def render() -> None:
        protocol = payload["protocol"]
        table = Table(
            title=f"bench visual: {payload['dataset']}, {protocol['name']}, "
            f"mean ± std over seeds {protocol['seeds']}, "
            f"{payload['device']}, {payload['threads']} threads",
            title_justify="left",
        )
        columns = ("recall@1", "recall@10", "map@r", "linear_probe")
        for column in (
            "recipe",
            "epochs",
            "r@1",
            "r@10",
            "map@r",
            "probe",
            "train/s",
            "embed/s",
            "MB",
        ):
            table.add_column(column, justify="left" if column == "recipe" else "right")
        for row in payload["results"]:
            edge = any(row.get("on_edge_per_seed", []))
            name = (
                f"[dim]{row['recipe']} (baseline)[/]"
                if row["baseline"]
                else row["recipe"] + ("*" if edge else "")
            )
            train = row["train_images_per_s"]
            epochs_used = (
                "-"
                if row["baseline"]
                else ",".join(
                    f"{e}{'!' if edge else ''}"
                    for e, edge in zip(row["epochs_per_seed"], row["epochs_at_edge"], strict=True)
                )
            )
            table.add_row(
                name,
                epochs_used,
                *(f"{row['metrics'][c]:.3f}±{row['std'][c]:.3f}" for c in columns),
                "-" if train is None else f"{train:,.0f}",
                f"{row['embed_images_per_s']:,.0f}",
                f"{row['peak_rss_mb']:,.0f}",
            )
        stdout.print(table)
        stdout.print(
            "epochs per seed, chosen on validation classes (! at the cap); * a chosen setting "
            "on the edge of its search range; r@k recall@k; probe linear-probe accuracy; /s "
            "images per second"
        )
        search = payload["search"]
        budget_text = f"{search['budget_seconds']:g} s" if search["budget_seconds"] else "no"
        stdout.print(
            f"search per recipe and split: up to {search['trials']} trials, {budget_text} "
            f"budget; study in {search['storage']}"
        )
        for row in payload["results"]:
            if row["baseline"]:
                continue
            for split_seed, point, count, edges in zip(
                protocol["seeds"],
                row["settings_per_seed"],
                row["trials_per_seed"],
                row["on_edge_per_seed"],
                strict=True,
            ):
                chosen = ", ".join(f"{k} {_short(v)}" for k, v in point.items()) or "defaults"
                flag = f"; on the edge: {', '.join(edges)}" if edges else ""
                stdout.print(f"{row['recipe']} seed {split_seed} ({count} trials): {chosen}{flag}")
        for name, ok in payload["targets"].items():
            stdout.print(f"target {name}: {'met' if ok else 'NOT met'}")
        stdout.print(f"embedding maps: {', '.join(payload['embedding_maps'].values())}")

    emit(payload, as_json, render)


def _short(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


@app.command("generative")
def generative_(
    data: Annotated[Path, typer.Option("--data", help="Dataset with captioned images.")],
    seeds: Annotated[
        int, typer.Option("--seeds", min=1, help="Train and evaluate the generator N times.")
    ] = 1,
    run: Annotated[
        Path | None,
        typer.Option(
            "--run",
            help="Run directory; one with `train visual`/`train align` reuses them. "
            "Default: RUNS_DIR/bench-generative-TIME.",
        ),
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(min=1, help="The generator's maximum epochs.")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="GeneratorConfig field as KEY=VALUE (JSON), repeatable."),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=1,
            help="Processes sharing the --threads budget, one job each. Default on CPU: one "
            "per seed and one for the instruments, at most two per thread; on a GPU, 1.",
        ),
    ] = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Train and evaluate the text-to-image generator over seeds, against the mean-image
    baseline and the real-vs-real floor, and check the issue's targets.

    The encoder, alignment and classifier (the measuring instruments) are trained once when
    the run lacks them; the generator's training seed varies, its split does not.

    Writes: RUN/{run.json, generative.json, generative/seed-S/{generator.pt, metrics.jsonl,
    train.json, eval.json, samples.png}, visual/}.
    """
    s = settings()
    seed = s.seed if seed is None else seed
    fields = parse_settings(set_ or []) | ({} if epochs is None else {"epochs": epochs})
    config = validated(GeneratorConfig, fields)
    device = resolve_device(device or s.device)
    if workers is None:
        # A thread each beats two each for these small networks; a worker per seed keeps every
        # core busy to the end, and one more trains the CNN judge beside the seeds rather than
        # ahead of the last one (README, "Generating pins").
        workers = 1 if device != "cpu" else min(seeds + 1, 2 * s.threads)
    layout = RunLayout(run or new_run_dir(s.runs_dir, "bench-generative"))
    params = {
        "data": str(data), "seeds": seeds, "seed": seed, "workers": workers,
        "generator": config.model_dump(),
    }  # fmt: skip
    with tracked("bench generative", params, run_dir=layout.root) as tracker:
        payload = generative.bench_generative(
            layout,
            data,
            seeds=seeds,
            seed=seed,
            config=config,
            device=device,
            workers=workers,
            threads=s.threads,
            progress=train_progress(not as_json, "bench generative"),
            say=step_say(lambda _: None, "bench generative"),
        )
        tracker.log_metrics({k: v["mean"] for k, v in payload["summary"].items()})
        tracker.log_artifact(layout.root / generative.BENCH_FILE)
    payload["run_dir"] = str(layout.root)

    def render() -> None:
        table = Table(
            title=f"bench generative: {payload['data']}, mean ± std over seeds "
            f"{payload['seeds']}, {payload['device']}, {payload['seconds']:.0f} s",
            title_justify="left",
        )
        for column in ("target", "wanted", "mean", "std", "met"):
            table.add_column(column)
        for key, target in payload["targets"].items():
            spread = payload["summary"].get(key, {}).get("std")
            table.add_row(
                key, target["target"], str(target["mean"]), str(spread),
                "yes" if target["met"] else "no",
            )  # fmt: skip
        stdout.print(table)
        stdout.print(f"every figure: {layout.root / generative.BENCH_FILE}")

    emit(payload, as_json, render)
