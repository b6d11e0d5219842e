"""`pinlab report`: a bench or run directory as one self-contained HTML page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pinlab_tasks._app import JsonFlag
from pinlab_tasks._output import emit, stdout
from pinlab_tasks.report import write_report


def register(app: typer.Typer) -> None:
    app.command("report")(report)


def report(
    path: Annotated[
        Path,
        typer.Argument(help="A bench recsys, bench visual or run directory (pinlab demo)."),
    ],
    out: Annotated[
        Path | None, typer.Option("--out", help="The HTML file. Default: PATH/report.html.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Write one HTML page of a run: metrics with intervals and per-seed values, published
    numbers, the search, curves, per-user distributions, significance, embedding maps and
    cold start, and the model and data cards of a run (`pinlab card`), whichever the run has.
    Plots are embedded; the page needs no network.

    Writes: PATH/report.html (or --out); PATH/cards/ when a run has no cards yet.
    """
    written, result = write_report(path, out)
    payload = {
        "report": str(written),
        "kind": result.kind,
        "plots": result.plots,
        "sections": result.sections,
    }

    def render() -> None:
        stdout.print(
            f"{result.kind} report: {written} ({result.plots} plots; "
            f"sections {', '.join(result.sections)})",
            highlight=False,
        )

    emit(payload, as_json, render)
