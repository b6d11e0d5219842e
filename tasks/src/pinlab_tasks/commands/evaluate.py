"""`pinlab eval`: measure a run's models under named protocols."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pinlab_tasks import workflows
from pinlab_tasks._app import JsonFlag, SeedOpt, settings
from pinlab_tasks._output import emit, metrics_table, stdout
from pinlab_tasks.runs import RunLayout

app = typer.Typer(help="Evaluate a run's models.", no_args_is_help=True)

RunArg = Annotated[Path, typer.Option("--run", help="Run directory with trained models.")]


@app.command("visual")
def visual(run: RunArg, seed: SeedOpt = None, as_json: JsonFlag = False) -> None:
    """Recall@K and mAP by category on held-out pins, trained vs untrained encoder.

    With an aligned image-text model (`pinlab train align`), also text-to-image recall@K and
    zero-shot category accuracy.

    Use the seed the encoder was trained with: it picks the held-out pins.
    Writes: RUN/visual/eval.json.
    """
    result = workflows.eval_visual(RunLayout(run), settings().seed if seed is None else seed)

    def render() -> None:
        stdout.print(
            metrics_table(
                f"visual, {result['protocol']}",
                {"trained": result["trained"], "untrained": result["untrained"]},
            )
        )
        if "text_to_image" in result:
            align = result["text_to_image"]
            stdout.print(
                metrics_table(
                    f"text to image, relevant = same {align['relevance']}",
                    {"aligned": align["metrics"]},
                )
            )

    emit(result, as_json, render)


@app.command("recommender")
def recommender(run: RunArg, as_json: JsonFlag = False) -> None:
    """Every trained recommender, leave-last-out, full ranking.

    Writes: RUN/recommender/eval.json.
    """
    result = workflows.eval_recommenders(RunLayout(run))
    emit(
        result,
        as_json,
        lambda: stdout.print(
            metrics_table(f"recommenders, {result['protocol']}", result["models"])
        ),
    )
