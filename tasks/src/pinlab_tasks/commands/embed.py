"""`pinlab embed`: every pin's vectors as Parquet shards, here or on a Ray cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pinlab_tasks import embedding
from pinlab_tasks._app import JsonFlag, settings
from pinlab_tasks._output import emit, stderr, stdout
from pinlab_tasks._progress import step_say
from pinlab_tasks.runs import RunLayout
from pinlab_tasks.tracking import tracked


def register(app: typer.Typer) -> None:
    app.command("embed")(embed)


def embed(
    run: Annotated[
        Path, typer.Option("--run", help="Run directory with a trained encoder (visual/).")
    ],
    data: Annotated[
        Path | None,
        typer.Option("--data", help="Dataset directory to embed. Default: the run's dataset."),
    ] = None,
    engine: Annotated[
        embedding.Engine,
        typer.Option(
            "--engine",
            help="local: this process; ray: Ray Data workers on a local Ray cluster started "
            "for the run, or the one at --address (needs `uv sync --extra distributed`).",
        ),
    ] = "local",
    address: Annotated[
        str | None,
        typer.Option(
            "--address",
            help="Join this Ray cluster (HOST:PORT of its head, ray://HOST:PORT, or auto) "
            "instead of starting one; its workers must see DATA and have pinlab installed.",
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=1,
            help="Ray workers, each loading the encoder once; the --threads budget is split "
            "between them.",
        ),
    ] = 2,
    out: Annotated[
        Path | None, typer.Option("--out", help="Output directory. Default: RUN/embeddings.")
    ] = None,
    shard_rows: Annotated[
        int, typer.Option("--shard-rows", min=1, help="Pins per Parquet shard.")
    ] = embedding.DEFAULT_SHARD_ROWS,
    as_json: JsonFlag = False,
) -> None:
    """Embed every pin's image with the run's encoder, and its caption with the run's text
    tower where the run has an image-text model (`pinlab train align`; otherwise images only,
    and the output says so). Both engines give identical vectors. The output directory is
    replaced whole when the run completes: an error or Ctrl-C leaves the old one untouched.
    Only embeddings (a manifest.json) or an empty folder are replaced; any other is refused.

    Writes: OUT/{manifest.json, image-NNNNN.parquet, text-NNNNN.parquet} (OUT defaults to
    RUN/embeddings; shards of pin_id int64 and vector `fixed_size_list<float32>[dim]`),
    RUN/run.json.
    """
    layout = RunLayout(run)
    params = {"run": str(run), "data": str(data) if data else None, "engine": engine,
              "address": address, "workers": workers, "threads": settings().threads,
              "shard_rows": shard_rows}  # fmt: skip
    with tracked("embed", params, run_dir=run) as tracker:
        result = embedding.embed_run(
            layout,
            data,
            engine=engine,
            address=address,
            workers=workers,
            threads=settings().threads,
            out=out,
            shard_rows=shard_rows,
            say=step_say((lambda _: None) if as_json else stderr.print, "embed"),
        )
        tracker.log_metrics({"images_per_s": result["images_per_s"] or 0.0})

    def render() -> None:
        sets = ", ".join(f"{k}: {v['count']} x {v['dim']}" for k, v in result["sets"].items())
        stdout.print(
            f"embedded {result['pins']} pins ({sets}) in {result['seconds']:.1f} s on "
            f"{result['engine']} -> {result['out']}"
        )
        stdout.print(result["text"])

    emit(result, as_json, render)
