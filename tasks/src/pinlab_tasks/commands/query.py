"""`pinlab search` and `pinlab recommend`: ask a trained run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from pinlab_data import MAX_ID, PinlabDataError
from pinlab_tasks import queries
from pinlab_tasks._app import JsonFlag, KOpt, RuntimeOpt
from pinlab_tasks._output import emit, log, stdout
from pinlab_tasks.runs import RunLayout

RunOpt = Annotated[Path, typer.Option("--run", help="Run directory (the demo's works).")]


def register(app: typer.Typer) -> None:
    app.command("search")(search)
    app.command("recommend")(recommend)


def search(
    run: RunOpt,
    pin: Annotated[
        int | None,
        typer.Option("--pin", min=0, max=MAX_ID, help="Find pins like this pin id."),
    ] = None,
    image: Annotated[
        Path | None, typer.Option("--image", help="Find pins like this image file.")
    ] = None,
    text: Annotated[
        str | None,
        typer.Option("--text", help="Find pins matching this text (needs `pinlab train align`)."),
    ] = None,
    k: KOpt = 10,
    runtime: RuntimeOpt = "torch",
    as_json: JsonFlag = False,
) -> None:
    """Visual search by pin id or image file over the run's index, or by text; the query is
    embedded on --runtime (an ONNX file not exported from the run's model is refused)."""
    result = queries.search(RunLayout(run), k, pin=pin, image=image, text=text, runtime=runtime)
    emit(result, as_json, lambda: _table("search results", result["hits"], ["score"]))


def recommend(
    run: RunOpt,
    user: Annotated[
        int | None,
        typer.Option(
            "--user",
            min=0,
            max=MAX_ID,
            help="pinlab's user id (one of --user, --external-user or --history).",
        ),
    ] = None,
    external_user: Annotated[
        str | None,
        typer.Option(
            "--external-user",
            help="The user's id in the loaded source (the users table's external_id, e.g. "
            "MovieLens's user id), instead of pinlab's.",
        ),
    ] = None,
    history: Annotated[
        str | None,
        typer.Option(
            "--history",
            help="A visitor's pin ids, oldest first, comma-separated (12,40,7): a live session "
            "the model never trained on. Unknown ids are ignored with a warning.",
        ),
    ] = None,
    k: KOpt = 10,
    model: Annotated[
        str | None,
        typer.Option(
            "--model", help="Trained model name. Default: the best (that reads histories)."
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Top-k pins for a user, or for a session's history; pins already engaged with excluded.

    With --history, the run's best model that scores from a history alone (sasrec, two-tower,
    ease, dlae, itemknn, rp3beta) answers; a history longer than its window keeps its most
    recent pins, and the result says so.
    """
    if sum(given is not None for given in (user, external_user, history)) != 1:
        raise PinlabDataError(
            "give exactly one of --user ID, --external-user ID or --history ID,ID,..."
        )
    if history is not None:
        result = queries.recommend_session(RunLayout(run), _ids(history), k, model)
        for warning in result["warnings"]:
            log.warning("%s", warning)
        title = f"for a session of {result['history_used']} pins by {result['model']}"
        emit(result, as_json, lambda: _table(title, result["items"], []))
        return
    result = queries.recommend(RunLayout(run), user, k, model, external_user)
    emit(
        result,
        as_json,
        lambda: _table(f"for user {result['user']} by {result['model']}", result["items"], []),
    )


def _ids(text: str) -> list[int]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in parts if not p.isdigit() or int(p) > MAX_ID]
    if bad:
        raise PinlabDataError(
            f"--history takes pin ids (0 to {MAX_ID}) separated by commas; {bad[0]!r} is not one"
        )
    return [int(p) for p in parts]


def _table(title: str, rows: list[dict[str, Any]], extra: list[str]) -> None:
    table = Table(title=title, title_justify="left")
    columns = ["pin_id", "category", "creator_group", "caption", *extra]
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(f"{row[c]:.3f}" if c == "score" else str(row[c]) for c in columns))
    stdout.print(table)
