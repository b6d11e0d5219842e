"""`pinlab`: the entry point. Errors become one line and an exit code; bad input exits 2."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from pydantic import ValidationError
from rich.markup import escape
from typer._click.exceptions import ClickException  # Typer vendors Click; pinned in uv.lock
from typer.rich_utils import rich_format_error

from pinlab_data import PinlabDataError
from pinlab_models import PinlabModelError
from pinlab_serve import PinlabServeError, ServeSettings
from pinlab_tasks import distributed
from pinlab_tasks._app import app, use_invocation, use_settings
from pinlab_tasks._output import configure_logging, stderr
from pinlab_tasks.commands import (
    bench,
    card,
    data,
    demo,
    embed,
    evaluate,
    export,
    generate,
    index,
    meta,
    new,
    query,
    runs,
    serve,
    sim,
    train,
)
from pinlab_tasks.commands.mcp import register as register_mcp
from pinlab_tasks.commands.report import register as register_report
from pinlab_tasks.scaffold import ScaffoldError
from pinlab_tasks.settings import LogLevel, PinlabSettings, ProgressMode

_ENV_PREFIXES = {
    settings.__name__: str(settings.model_config.get("env_prefix", ""))
    for settings in (PinlabSettings, ServeSettings)
}
BAD_INPUT = (PinlabDataError, PinlabModelError, PinlabServeError, ScaffoldError, FileNotFoundError)

app.add_typer(data.app, name="data")
app.add_typer(train.app, name="train")
app.add_typer(evaluate.app, name="eval")
app.add_typer(index.app, name="index")
app.add_typer(export.app, name="export")
app.add_typer(bench.app, name="bench")
app.add_typer(runs.app, name="runs")
app.add_typer(new.app, name="new")
app.add_typer(sim.app, name="sim")
demo.register(app)
embed.register(app)
serve.register(app)
query.register(app)
generate.register(app)
meta.register(app)
card.register(app)
register_report(app)
register_mcp(app)


@app.callback()
def root(
    threads: Annotated[
        int | None, typer.Option("--threads", help="CPU threads for PyTorch [env PINLAB_THREADS].")
    ] = None,
    log_level: Annotated[
        LogLevel | None, typer.Option("--log-level", help="[env PINLAB_LOG_LEVEL]")
    ] = None,
    runs_dir: Annotated[
        Path | None, typer.Option("--runs-dir", help="Where new runs go [env PINLAB_RUNS_DIR].")
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            "--tracking-uri",
            help="MLflow store for runs; default sqlite:///RUNS_DIR/mlflow.db "
            "[env PINLAB_TRACKING_URI].",
        ),
    ] = None,
    no_tracking: Annotated[
        bool, typer.Option("--no-tracking", help="Log nothing to MLflow [env PINLAB_TRACKING=off].")
    ] = False,
    progress: Annotated[
        ProgressMode | None,
        typer.Option(
            "--progress",
            help="How long jobs report on stderr: auto (a bar on a terminal, plain lines "
            "elsewhere), rich (also under --json), json (one event per line: start, epoch "
            "with ETA, end, step; schema in `describe`), off [env PINLAB_PROGRESS].",
        ),
    ] = None,
) -> None:
    overrides = {
        "threads": threads,
        "log_level": log_level,
        "runs_dir": runs_dir,
        "tracking_uri": tracking_uri,
        "progress": progress,
    }
    # From the environment each time: flags of an earlier invocation in this process must not
    # stick. Options override the environment and are validated like it (--threads 0 is bad).
    given: dict[str, Any] = (
        {k: v for k, v in overrides.items() if v is not None}
        | ({"debug": True} if debug else {})
        | ({"tracking": False} if no_tracking else {})
    )
    resolved = PinlabSettings(**given)
    use_settings(resolved)
    configure_logging(resolved.log_level)
    torch.set_num_threads(resolved.threads)


def _fail(message: str, code: int, as_json: bool) -> int:
    worker = distributed.rank()
    if worker > 0:  # a torchrun worker past rank 0: rank 0 prints the stdout document
        if code == 2:
            return code  # bad input is the same on every rank, and rank 0 says it
        message, as_json = f"rank {worker}: {message}", False
    if as_json:
        print(json.dumps({"error": message, "exit_code": code}))
    stderr.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return code


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code: 0 success, 1 failure, 2 bad usage or input.

    Usage errors (a missing argument, a value out of its range) and pinlab's own errors both
    arrive here, so under --json each prints one JSON document with the message on stdout.
    """
    args = sys.argv[1:] if argv is None else argv
    use_invocation(args)
    debug = "--debug" in args or os.environ.get("PINLAB_DEBUG") == "1"
    as_json = "--json" in args
    empty = _empty_path(args)
    if empty is not None:
        return _fail(f"{empty} is empty; pass a path ('.' for this folder)", 2, as_json)
    try:
        # Not standalone: Typer would print usage errors itself and exit, without JSON.
        code = app(args=argv, prog_name="pinlab", standalone_mode=False)
        return code if isinstance(code, int) else 0  # an int only from typer.Exit(code)
    except ClickException as exc:
        if as_json:
            print(json.dumps({"error": _usage_message(exc), "exit_code": exc.exit_code}))
        rich_format_error(exc)  # Typer's usage line and boxed message, for people
        return exc.exit_code
    except typer.Abort:
        stderr.print("Aborted!")
        return 1
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt:
        if not distributed.under_torchrun():
            raise
        return 130  # stopped by the launcher: atomic writers have cleaned up
    except BAD_INPUT as exc:
        if debug:
            raise
        return _fail(str(exc), 2, as_json)
    except ValidationError as exc:
        if debug:
            raise
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        prefix = _ENV_PREFIXES.get(exc.title)  # settings come from options or the environment
        source = f" ({prefix}{where.upper()}, or its option)" if prefix else ""
        return _fail(f"bad value for {where}{source}: {first['msg']}", 2, as_json)
    except Exception as exc:
        if debug:
            raise
        return _fail(
            f"{type(exc).__name__}: {exc} (rerun with --debug for the traceback)", 1, as_json
        )


def _empty_path(args: list[str]) -> str | None:
    """The first path given as "" (`--run ""`, `--out=`, `data validate ""`, an unset shell
    variable), which Typer would read as "." and so read or write the working directory: its
    flag, or the argument's name."""
    if not any(arg == "" or arg.endswith("=") for arg in args):
        return None
    commands = list(meta.walk_commands(app, []))
    inputs = [*meta.global_options(app), *(p for c in commands for p in c["inputs"])]
    paths = {flag for p in inputs if "path" in p["type"] for flag in p["flags"]}
    takes_value = {flag for p in inputs if p["type"] != "flag" for flag in p["flags"]}
    path_argument = {  # a command's words (data validate) to its positional path's name
        tuple(c["command"].split()[1:]): p["name"]
        for c in commands
        for p in c["inputs"]
        if not p["flags"] and "path" in p["type"]
    }
    words: list[str] = []  # the command's words and arguments so far
    for at, arg in enumerate(args):
        flag, equals, value = arg.partition("=")
        if flag in paths and equals and not value:
            return flag
        if at and args[at - 1] in takes_value:  # an option's value
            if arg == "" and args[at - 1] in paths:
                return args[at - 1]
        elif arg == "":
            # Commands are leaves, so at most one prefix of the words names one.
            for n in range(len(words), 0, -1):
                if (name := path_argument.get(tuple(words[:n]))) is not None:
                    return f"the {name.upper()} argument"
        elif not arg.startswith("-"):
            words.append(arg)
    return None


def _usage_message(exc: ClickException) -> str:
    path = getattr(getattr(exc, "ctx", None), "command_path", None)
    return exc.format_message() + (f" (see `{path} --help`)" if path else "")


def main() -> None:
    sys.exit(run())
