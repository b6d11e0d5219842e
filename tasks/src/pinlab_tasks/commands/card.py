"""`pinlab card`: a model card and a data card of a run, in Markdown."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pinlab_tasks._app import JsonFlag, SeedOpt, settings
from pinlab_tasks._output import emit, stdout
from pinlab_tasks.cards import write_cards
from pinlab_tasks.tracking import tracked


def register(app: typer.Typer) -> None:
    app.command("card")(card)


def card(
    run: Annotated[Path, typer.Argument(help="A run directory (pinlab demo, train, eval).")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Directory of the cards. Default: RUN/cards.")
    ] = None,
    user_group: Annotated[
        list[str] | None,
        typer.Option(
            "--user-group",
            help="User column to break quality down by (repeat; 'activity' or an attribute "
            "column such as MovieLens's age, gender, occupation). Default: all of them.",
        ),
    ] = None,
    seed: SeedOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Write a model card (Mitchell et al. 2019) and a data card (Gebru et al. 2021) of a run.

    The model card states the models, their provenance, intended and out-of-scope use, the
    stored metrics, quality per user group (activity quartile and each user attribute, such as
    MovieLens's age buckets) with bootstrap intervals and the worst group's gap, exposure by
    creator group, visual search recall per creator group and category, and limitations; the
    data card the dataset's size, categories, creator groups, splits and known biases. Numbers
    come from the run or are recomputed from its saved models; what the run lacks is named.
    `--seed` seeds the bootstrap.

    Writes: RUN/cards/{model_card.md, data_card.md} (or --out DIR); a `card` step in run.json.
    """
    seed = settings().seed if seed is None else seed
    config = {"run": str(run), "seed": seed, "user_group": user_group}
    with tracked("card", config, run_dir=run) as tracker:
        cards = write_cards(run, out, seed=seed, user_columns=user_group)
        tracker.log_artifact(cards.model_card)
        tracker.log_artifact(cards.data_card)
    payload = {
        "model_card": str(cards.model_card),
        "data_card": str(cards.data_card),
        "missing": cards.facts["missing"],
        "facts": cards.facts,
    }

    def render() -> None:
        stdout.print(f"model card: {cards.model_card}\ndata card: {cards.data_card}")
        for line in cards.facts["missing"]:
            stdout.print(f"not in this run: {line}", highlight=False)

    emit(payload, as_json, render)
