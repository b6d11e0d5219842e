"""The root Typer app, the options every command shares, and the settings they resolve to."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from pinlab_models import Runtime
from pinlab_tasks.settings import MAX_SEED, PinlabSettings

app = typer.Typer(
    name="pinlab",
    help="pinlab: a lab for visual search and recommendation. Start with `pinlab demo`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="markdown",
)

JsonFlag = Annotated[
    bool, typer.Option("--json", help="Print one JSON document on stdout; logs go to stderr.")
]
SeedOpt = Annotated[
    int | None,
    typer.Option("--seed", min=0, max=MAX_SEED, help="Random seed [env PINLAB_SEED]."),
]
ProtocolSeedOpt = Annotated[
    int | None,
    typer.Option("--protocol-seed", min=0, max=MAX_SEED, help="Seed of the split (default 42)."),
]
NewRunOpt = Annotated[Path | None, typer.Option("--run", help="Run directory. Default: a new one.")]
DeviceOpt = Annotated[
    str | None, typer.Option("--device", help="auto, cpu or cuda [env PINLAB_DEVICE].")
]
KOpt = Annotated[int, typer.Option("-k", "--k", help="How many results.")]
AutoguidanceOpt = Annotated[
    float | None,
    typer.Option(
        "--autoguidance",
        help="The generator's early-epoch guide's weight (0..20; 1 leaves it out; default: "
        "the generator's own).",
    ),
]
RuntimeOpt = Annotated[
    Runtime,
    typer.Option(
        "--runtime",
        help="What embeds queries: torch (eager), onnx or onnx-int8 (ONNX Runtime on the run's "
        "export: `pinlab export onnx --run RUN [--int8]`).",
    ),
]

_settings: list[PinlabSettings] = []


def settings() -> PinlabSettings:
    """The settings of this invocation: environment first, then root flags."""
    if not _settings:
        _settings.append(PinlabSettings())
    return _settings[-1]


def use_settings(value: PinlabSettings) -> None:
    _settings[:] = [value]


_argv: list[list[str]] = []


def invocation() -> list[str]:
    """This invocation's arguments (after the program name), as `cli.run` received them."""
    return list(_argv[-1]) if _argv else sys.argv[1:]


def use_invocation(args: list[str]) -> None:
    _argv[:] = [list(args)]
