"""`pinlab data`: make, check and summarise dataset directories."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.table import Table

from pinlab_data import describe_dataset, load_dataset, validate_dataset
from pinlab_tasks import workflows
from pinlab_tasks._app import JsonFlag, SeedOpt, settings
from pinlab_tasks._output import emit, stdout
from pinlab_tasks.presets import PRESETS

app = typer.Typer(help="Make, check and describe datasets.", no_args_is_help=True)

DataDir = Annotated[Path, typer.Argument(help="A pinlab dataset directory.")]


@app.command("synth")
def synth(
    out: Annotated[Path, typer.Option("--out", help="Dataset directory to create.")],
    preset: Annotated[
        Literal["tiny", "default"], typer.Option(help="Base sizes, from the demo presets.")
    ] = "default",
    pins: Annotated[int | None, typer.Option(help="Number of pins (20..200000).")] = None,
    users: Annotated[int | None, typer.Option(help="Number of users.")] = None,
    categories: Annotated[int | None, typer.Option(help="Number of categories (2..16).")] = None,
    image_size: Annotated[int | None, typer.Option(help="Image side in pixels.")] = None,
    seed: SeedOpt = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing dataset.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Generate a seeded synthetic pin world.

    Writes: OUT/{dataset.json, pins/users/interactions.parquet, images.npy, truth.npz}.
    """
    updates: dict[str, Any] = {
        "num_pins": pins,
        "num_users": users,
        "num_categories": categories,
        "image_size": image_size,
        "seed": settings().seed if seed is None else seed,
    }
    base = PRESETS[preset].synth
    config = base.model_validate(
        base.model_dump() | {k: v for k, v in updates.items() if v is not None}
    )
    result = workflows.synth(out, config, overwrite=overwrite)
    emit(result, as_json, lambda: _render_description(result))


@app.command("validate")
def validate(path: DataDir, as_json: JsonFlag = False) -> None:
    """Check types, dangling ids, duplicates, empty users and timestamps. Exit 2 on errors."""
    report = validate_dataset(path)
    payload = {"ok": report.ok, **report.model_dump()}

    def render() -> None:
        table = Table(title=f"{path}: {'valid' if report.ok else 'INVALID'}", title_justify="left")
        for column in ("severity", "code", "where", "message"):
            table.add_column(column)
        for p in report.problems:
            style = "red" if p.severity == "error" else "yellow"
            table.add_row(f"[{style}]{p.severity}[/]", p.code, p.where, p.message)
        stdout.print(table if report.problems else f"{path}: valid, no problems found")

    emit(payload, as_json, render)
    if not report.ok:
        raise typer.Exit(2)


@app.command("describe")
def describe(path: DataDir, as_json: JsonFlag = False) -> None:
    """Counts, categories, activity and time range of a dataset."""
    result = describe_dataset(load_dataset(path))
    emit(result, as_json, lambda: _render_description(result))


def _render_description(result: dict[str, Any]) -> None:
    table = Table(show_header=False, title="dataset", title_justify="left")
    for key, value in result.items():
        table.add_row(key, str(value))
    stdout.print(table)
