"""`pinlab bench`: measure how fast pinlab's steps run and how much memory they take."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from pinlab_data import write_movielens_like
from pinlab_tasks._app import JsonFlag
from pinlab_tasks._measure import run_measured
from pinlab_tasks._output import busy, emit, stdout

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
