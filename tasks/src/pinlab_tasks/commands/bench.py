"""`pinlab bench`: measure how fast pinlab's steps run and how much memory they take."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from pinlab_data import write_json_atomic, write_movielens_like
from pinlab_eval import protocol_spec
from pinlab_tasks._app import DeviceOpt, JsonFlag, SeedOpt, settings
from pinlab_tasks._measure import run_measured
from pinlab_tasks._output import busy, emit, stdout
from pinlab_tasks.benchmarks import bench_recsys, item_text_features, render_recsys
from pinlab_tasks.runs import RunLayout, new_run_dir
from pinlab_tasks.visual_bench import bench_visual

app = typer.Typer(help="Measure pinlab's steps: time and peak memory.", no_args_is_help=True)

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
    protocol_seed: Annotated[
        int | None, typer.Option("--protocol-seed", help="Seed of the split (default 42).")
    ] = None,
    peers: Annotated[
        str | None,
        typer.Option("--peers", help="implicit (ALS beside ials), cornac (BPR beside bpr)."),
    ] = None,
    run: Annotated[
        Path | None, typer.Option("--run", help="Run directory. Default: a new one.")
    ] = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Tune every model on validation, fit it, and rank it on the protocol's test split.

    Prints metrics at 10 and 20 with 95% bootstrap intervals, fit seconds, peak memory, the
    settings validation chose, whether the best two differ significantly, and published
    numbers for the dataset under the same protocol.

    Writes: RUN/run.json (resolved config), RUN/bench.json (the result), per-model logs.
    """
    names = [n.strip() for n in models.split(",") if n.strip()] if models else None
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
    seed_value = resolved.seed if seed is None else seed
    config = {
        "protocol": spec.settings(),
        "models": names,
        "peers": peers,
        "seed": seed_value,
        "device": device or resolved.device,
    }
    with busy("tuning, fitting and ranking", as_json):
        result = bench_recsys(
            data,
            spec,
            names,
            layout.root,
            seed=seed_value,
            device=device or resolved.device,
            progress=not as_json,
            item_features=lambda: item_text_features(data),
            peers=[p.strip() for p in (peers or "").split(",") if p.strip()],
        )
    layout.log_step("bench recsys", config, data_dir=data)
    write_json_atomic(layout.root / "bench.json", result)
    payload = {"run": str(layout.root), **result}
    emit(payload, as_json, lambda: render_recsys(payload))


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
    server_threads: Annotated[
        int,
        typer.Option(
            "--server-threads",
            min=1,
            help="PyTorch threads of the server (1: an idle PyTorch pool spinning beside the "
            "search stalls requests for ~200 ms at a time on 2 cores).",
        ),
    ] = 1,
    run: Annotated[
        Path | None, typer.Option("--run", help="Serve this run instead of building a world.")
    ] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    as_json: JsonFlag = False,
) -> None:
    """Load-test `pinlab serve` on loopback (one worker): QPS, p50/p95/p99 and errors per
    endpoint and concurrency, against the same service with NumPy brute-force search.

    Writes: nothing that stays (the world is built in a temporary folder unless --run).
    """
    # Imported here: the load generator's modules are only needed by this command.
    from pinlab_tasks._output import stderr
    from pinlab_tasks.serve_bench import bench_serve, parse_levels, render_serve

    payload = bench_serve(
        pins,
        parse_levels(concurrency),
        scale,
        duration,
        seed,
        server_threads,
        run_dir=run,
        say=(lambda _: None) if as_json else stderr.print,
    )
    emit(payload, as_json, lambda: render_serve(payload))


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
        int | None, typer.Option("--epochs", min=1, help="Epochs for every recipe (default tuned).")
    ] = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Train every encoder recipe and measure it against raw pixels and the untrained encoder.

    Recall@1/@10, MAP@R and linear-probe accuracy on classes never trained on (or held-out
    images when there are fewer than 4 classes), images/s training and embedding, peak memory.

    Writes: RUN/{run.json, bench_visual.json, embedding_map_*.png, RECIPE/encoder.pt}.
    """
    s = settings()
    layout = RunLayout(run or new_run_dir(s.runs_dir, "bench-visual"))
    payload = bench_visual(
        data,
        layout,
        recipes,
        epochs,
        s.seed if seed is None else seed,
        device or s.device,
        progress=not as_json,
    )

    def render() -> None:
        protocol = payload["protocol"]
        table = Table(
            title=f"bench visual: {payload['dataset']}, {protocol['name']} "
            f"({protocol['test_images']} images of {len(protocol['test_classes'])} classes), "
            f"{payload['device']}, {payload['threads']} threads",
            title_justify="left",
        )
        columns = ("recall@1", "recall@10", "map@r", "linear_probe")
        for column in ("recipe", "r@1", "r@10", "map@r", "probe", "train/s", "embed/s", "MB"):
            table.add_column(column, justify="left" if column == "recipe" else "right")
        for row in payload["results"]:
            name = f"[dim]{row['recipe']}*[/]" if row["baseline"] else row["recipe"]
            train = row["train_images_per_s"]
            table.add_row(
                name,
                *(f"{row['metrics'][c]:.3f}" for c in columns),
                "-" if train is None else f"{train:,.0f}",
                f"{row['embed_images_per_s']:,.0f}",
                f"{row['peak_rss_mb']:,.0f}",
            )
        stdout.print(table)
        stdout.print("* baseline; r@k recall@k; probe linear-probe accuracy; /s images per second")
        for name, ok in payload["targets"].items():
            stdout.print(f"target {name}: {'met' if ok else 'NOT met'}")
        stdout.print(f"embedding maps: {', '.join(payload['embedding_maps'].values())}")

    emit(payload, as_json, render)
