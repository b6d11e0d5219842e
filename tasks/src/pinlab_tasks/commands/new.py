"""`pinlab new`: a working recommender, loader or metric, wired in everywhere (`scaffold.py`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from pinlab_tasks import scaffold
from pinlab_tasks._app import JsonFlag
from pinlab_tasks._output import emit, stdout
from pinlab_tasks.scaffold import Plan, RecommenderKind

app = typer.Typer(
    help="Scaffold a recommender, a loader or a metric: real code, tests and docs in every "
    "place the house rules ask for, so the gates pass at once (--dry-run lists the files).",
    no_args_is_help=True,
)

RootOpt = Annotated[
    Path | None,
    typer.Option(
        "--root", help="The checkout to write into. Default: the one around the current folder."
    ),
]
DryRun = Annotated[
    bool, typer.Option("--dry-run", help="List what would be written; write nothing.")
]
NameArg = Annotated[str, typer.Argument(help="Lower case, words joined by dashes (mult-vae).")]


@app.command("recommender")
def recommender(
    name: NameArg,
    kind: Annotated[
        RecommenderKind,
        typer.Option(
            "--kind",
            help="epochs: embeddings trained in passes (softmax MF); item-item: an item-item "
            "matrix (asymmetric cosine); closed-form: one step (low-rank ridge).",
        ),
    ] = "epochs",
    root: RootOpt = None,
    dry_run: DryRun = False,
    as_json: JsonFlag = False,
) -> None:
    """A recommender that learns, registered with a search space, tested and documented.

    The contract suite runs it at once, and `pinlab train recommender --model NAME` sees it.

    Writes: ROOT/packages/models/src/pinlab_models/_NAME.py,
    ROOT/packages/models/tests/test_models_NAME.py; edits pinlab_models' contracts.py (config),
    registry.py (spec, search space), `__init__.py`, the contract suite's CANDIDATE_SCORERS,
    README.md and AGENTS.md.
    """
    _finish(scaffold.plan_recommender(_root(root), name, kind), dry_run, as_json)


@app.command("loader")
def loader(
    kind: Annotated[str, typer.Argument(help="The loader's kind, lower case with dashes (jsonl).")],
    root: RootOpt = None,
    dry_run: DryRun = False,
    as_json: JsonFlag = False,
) -> None:
    """A `pinlab data load KIND` loader (JSON Lines to start from), tested and documented.

    Writes: ROOT/packages/data/src/pinlab_data/_KIND_loader.py,
    ROOT/packages/data/tests/test_data_KIND_loader.py; edits pinlab_data's contracts.py
    (LoaderKind) and `__init__.py`, ROOT/tasks/src/pinlab_tasks/commands/data.py, README.md and
    AGENTS.md.
    """
    _finish(scaffold.plan_loader(_root(root), kind), dry_run, as_json)


@app.command("metric")
def metric(
    name: NameArg,
    root: RootOpt = None,
    dry_run: DryRun = False,
    as_json: JsonFlag = False,
) -> None:
    """A per-user top-k metric NAME_at_k(ranked, relevant) in pinlab_eval, with its tests.

    Writes: ROOT/packages/eval/src/pinlab_eval/_NAME.py,
    ROOT/packages/eval/tests/test_eval_NAME.py; edits `pinlab_eval/__init__.py`, README.md and
    packages/eval/AGENTS.md.
    """
    _finish(scaffold.plan_metric(_root(root), name), dry_run, as_json)


def _root(root: Path | None) -> Path:
    if root is None:
        return scaffold.find_root(Path.cwd())
    return scaffold.check_root(root.resolve())


def _finish(plan: Plan, dry_run: bool, as_json: bool) -> None:
    if not dry_run:
        plan.write()
    payload = plan.payload(dry_run)
    emit(payload, as_json, lambda: _render(payload))


def _render(payload: dict[str, Any]) -> None:
    would = "would be " if payload["dry_run"] else ""
    stdout.print(f"[bold]{payload['what']}[/] in {payload['root']}")
    for label, key in (("created", "created"), ("edited", "edited")):
        for rel in payload[key]:
            stdout.print(f"  {would}{label}: {rel}", highlight=False)
    stdout.print("next:")
    for number, step in enumerate(payload["next"], 1):
        stdout.print(f"  {number}. {step}", highlight=False, markup=False)
