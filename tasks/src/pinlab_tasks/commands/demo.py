"""`pinlab demo`: the whole pipeline on the built-in synthetic world."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.panel import Panel
from rich.table import Table

from pinlab_data import read_json_object
from pinlab_tasks import workflows
from pinlab_tasks._app import DeviceOpt, JsonFlag, SeedOpt, settings
from pinlab_tasks._output import emit, metrics_table, stdout
from pinlab_tasks._progress import step_say, train_progress
from pinlab_tasks.runs import RunLayout, new_run_dir
from pinlab_tasks.tracking import log_fit, numbers, tracked


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


def demo(
    preset: Annotated[
        Literal["tiny", "default"], typer.Option(help="World and training size.")
    ] = "default",
    out: Annotated[
        Path | None, typer.Option("--out", help="Run directory (new). Default: RUNS_DIR/demo-TIME.")
    ] = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    align: Annotated[
        bool,
        typer.Option(
            "--align", help="Also align images to text and search by text (minutes more)."
        ),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Generate a pin world, train and evaluate an encoder and recommenders, index, query.

    Writes: RUN/{run.json, summary.json, data/, visual/, recommender/, index/}.
    """
    s = settings()
    run_dir = out or new_run_dir(s.runs_dir, "demo")
    seed = s.seed if seed is None else seed
    params = {"preset": preset, "seed": seed, "device": device or s.device, "align": align}
    with tracked("demo", params, run_dir=run_dir) as tracker:
        result = workflows.demo(
            preset,
            run_dir,
            seed=seed,
            device=device or s.device,
            progress=train_progress(not as_json, "demo"),
            say=step_say(lambda _: None, "demo"),
            align=align,
        )
        _log_demo(RunLayout(run_dir), result)
        tracker.log_metrics(
            numbers({k: result[k] for k in ("visual", "recommender", "seconds", "peak_rss_mb")})
        )
        for path in ("summary.json", "visual/eval.json", "visual/embedding_map.png"):
            tracker.log_artifact(run_dir / path)
    emit(result, as_json, lambda: render(result))


def _log_demo(run: RunLayout, result: dict[str, Any]) -> None:
    """One child run per trained model: its config, per-epoch numbers and test metrics."""
    fits = {"visual encoder": (run.visual, result["visual"]["trained"])} | {
        f"recommender {name}": (run.recommender(name).parent, metrics)
        for name, metrics in result["recommender"].items()
    }
    for name, (directory, metrics) in fits.items():
        trained = read_json_object(directory / "train.json")
        with tracked(name, {"config": trained.get("config", {})}) as child:
            log_fit(child, trained)
            child.log_metrics(metrics)
            child.log_artifact(directory / "metrics.jsonl")


def render(result: dict[str, Any]) -> None:
    visual = result["visual"]
    stdout.print(
        metrics_table(
            f"Visual search, {visual['protocol']} (retrieval by category)",
            {"cnn (trained)": visual["trained"], "cnn (untrained)": visual["untrained"]},
        )
    )
    shown = ("ndcg@10", "recall@10", "mrr@10", "coverage@10", "taste_recovery")
    stdout.print(
        metrics_table(
            "Recommenders, leave-last-out, full ranking (all metrics: --json)",
            {
                n: {m: v for m, v in ms.items() if m in shown}
                for n, ms in result["recommender"].items()
            },
        )
    )
    search = result["search"]
    hits = Table(title=f"Pins like {search['query']['pin']['caption']!r}", title_justify="left")
    for column in ("pin_id", "category", "caption", "score"):
        hits.add_column(column)
    for hit in search["hits"]:
        hits.add_row(str(hit["pin_id"]), hit["category"], hit["caption"], f"{hit['score']:.3f}")
    stdout.print(hits)
    if "align" in result:
        _render_align(result)
    rec = result["recommend"]
    recent = ", ".join(p["category"] for p in rec["recent"])
    picks = Table(
        title=f"For user {rec['user']} (recently: {recent}) by {rec['model']}", title_justify="left"
    )
    for column in ("pin_id", "category", "caption"):
        picks.add_column(column)
    for item in rec["items"]:
        picks.add_row(str(item["pin_id"]), item["category"], item["caption"])
    stdout.print(picks)
    best = result["best_recommender"]
    ratio = result["recommender"][best]["ndcg@10"] / max(
        result["recommender"]["popularity"]["ndcg@10"], 1e-12
    )
    stdout.print(
        Panel(
            f"visual recall@1 {visual['trained']['recall@1']:.3f} "
            f"(untrained {visual['untrained']['recall@1']:.3f})\n"
            f"best recommender {best}: ndcg@10 {ratio:.2f}x popularity\n"
            f"{result['data']['num_pins']} pins, {result['data']['num_users']} users, "
            f"{result['seconds']:.0f} s, peak memory {result['peak_rss_mb']:.0f} MB\n"
            f"run directory: {result['run_dir']}",
            title="pinlab demo",
            expand=False,
        )
    )


def _render_align(result: dict[str, Any]) -> None:
    align = result["align"]
    stdout.print(
        metrics_table(
            f"Text to image, {align['protocol']} (relevant = same {align['relevance']})",
            {"aligned cnn": align["metrics"]},
        )
    )
    search = result["search_text"]
    hits = Table(title=f"Pins for the text {search['query']['text']!r}", title_justify="left")
    for column in ("pin_id", "category", "caption", "score"):
        hits.add_column(column)
    for hit in search["hits"]:
        hits.add_row(str(hit["pin_id"]), hit["category"], hit["caption"], f"{hit['score']:.3f}")
    stdout.print(hits)
