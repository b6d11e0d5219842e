"""`pinlab demo`: the whole pipeline on the built-in synthetic world."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.panel import Panel
from rich.table import Table

from pinlab_tasks import workflows
from pinlab_tasks._app import DeviceOpt, JsonFlag, SeedOpt, settings
from pinlab_tasks._output import emit, metrics_table, stdout
from pinlab_tasks.runs import new_run_dir


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
    result = workflows.demo(
        preset,
        run_dir,
        seed=s.seed if seed is None else seed,
        device=device or s.device,
        progress=not as_json,
        align=align,
    )
    emit(result, as_json, lambda: render(result))


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
