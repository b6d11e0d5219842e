"""`pinlab runs`: read the MLflow store every command logs to (local or a team's server)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from pinlab_tasks import tracking
from pinlab_tasks._app import JsonFlag
from pinlab_tasks._output import emit, stdout

app = typer.Typer(
    help="Tracked runs in MLflow (default store: RUNS_DIR/mlflow.db).", no_args_is_help=True
)

RunIdArg = Annotated[str, typer.Argument(help="An MLflow run id (`pinlab runs list`).")]


@app.command("list")
def list_(
    experiment: Annotated[
        str | None, typer.Option("--experiment", help="Only this experiment (default: all).")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many runs.")] = 50,
    as_json: JsonFlag = False,
) -> None:
    """The newest tracked runs, newest first, nested runs included."""
    runs = tracking.list_runs(experiment, limit)

    def render() -> None:
        table = Table(title=f"{len(runs)} runs, newest first", title_justify="left")
        for column in ("run_id", "name", "experiment", "status", "start", "seconds", "parent"):
            table.add_column(column)
        for run in runs:
            table.add_row(
                run["run_id"],
                run["name"],
                run["experiment"],
                run["status"],
                run["start"],
                "-" if run["seconds"] is None else f"{run['seconds']:.1f}",
                (run["parent_run_id"] or "")[:8],
            )
        stdout.print(table)

    emit({"runs": runs}, as_json, render)


@app.command("show")
def show(run_id: RunIdArg, as_json: JsonFlag = False) -> None:
    """One run: params, metrics, tags, artifacts and its child runs."""
    run = tracking.show_run(run_id)

    def render() -> None:
        stdout.print(f"[bold]{run['name']}[/] {run['run_id']} ({run['status']}, {run['start']})")
        for title in ("params", "metrics", "tags"):
            stdout.print(_pairs(title, run[title]))
        stdout.print(f"artifacts: {', '.join(run['artifacts']) or '-'}")
        for child in run["children"]:
            stdout.print(f"  child {child['run_id']} {child['name']} ({child['status']})")

    emit(run, as_json, render)


@app.command("compare")
def compare(run_a: RunIdArg, run_b: RunIdArg, as_json: JsonFlag = False) -> None:
    """Two runs' params and metrics side by side; differing values are marked with *."""
    result = tracking.compare_runs(run_a, run_b)

    def render() -> None:
        for title in ("params", "metrics"):
            table = Table(title=title, title_justify="left")
            table.add_column("")
            table.add_column("key")
            table.add_column(f"a: {result['a']['name']}")
            table.add_column(f"b: {result['b']['name']}")
            for row in result[title]:
                table.add_row(
                    "*" if row["differs"] else "", row["key"], _cell(row["a"]), _cell(row["b"])
                )
            stdout.print(table)

    emit(result, as_json, render)


def _pairs(title: str, values: dict[str, Any]) -> Table:
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("key")
    table.add_column("value")
    for key, value in values.items():
        table.add_row(key, _cell(value))
    return table


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.6g}" if isinstance(value, float) else str(value)
