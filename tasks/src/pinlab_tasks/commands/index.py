"""`pinlab index`: the FAISS index over a run's pin embeddings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pinlab_tasks import queries
from pinlab_tasks._app import JsonFlag
from pinlab_tasks._output import emit, stdout
from pinlab_tasks.runs import RunLayout

app = typer.Typer(help="Build vector indexes.", no_args_is_help=True)


@app.command("build")
def build(
    run: Annotated[Path, typer.Option("--run", help="Run directory with a trained encoder.")],
    as_json: JsonFlag = False,
) -> None:
    """Embed every pin with the run's encoder and index it. Writes: RUN/index/."""
    result = queries.build_index(RunLayout(run))
    emit(result, as_json, lambda: stdout.print(f"indexed {result['count']} pins -> {run}/index"))
