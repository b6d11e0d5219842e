"""`pinlab describe` (the tool, as JSON, for agents) and `pinlab doctor` (the machine)."""

from __future__ import annotations

import inspect
import os
import platform
import re
from collections.abc import Callable, Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin, get_type_hints

import torch
import typer
from rich.table import Table
from typer.models import ArgumentInfo, ParameterInfo

from pinlab_tasks._app import JsonFlag, settings
from pinlab_tasks._output import emit, stdout
from pinlab_tasks._progress import progress_description

EXIT_CODES = {"0": "success", "1": "failure", "2": "bad usage or bad input"}
PACKAGES = ("pinlab-data", "pinlab-models", "pinlab-eval", "pinlab-serve", "pinlab-tasks")
LIBRARIES = ("torch", "numpy", "pyarrow", "faiss-cpu", "pydantic", "typer")


def register(app: typer.Typer) -> None:
    def describe(as_json: JsonFlag = False) -> None:
        """Every command with its options, inputs and outputs, as JSON for agents."""
        commands = sorted(walk_commands(app, []), key=lambda c: c["command"])
        payload = {
            "tool": "pinlab",
            "json_flag": "--json prints exactly one JSON document on stdout; logs go to stderr",
            "exit_codes": EXIT_CODES,
            "global_options": global_options(app),
            "progress": progress_description(),
            "commands": commands,
        }

        def render() -> None:
            table = Table(title="pinlab commands", title_justify="left")
            table.add_column("command")
            table.add_column("summary")
            for c in commands:
                table.add_row(c["command"], c["summary"])
            stdout.print(table)

        emit(payload, as_json, render)

    app.command("describe")(describe)
    app.command("doctor")(doctor)


def global_options(app: typer.Typer) -> list[dict[str, Any]]:
    """The options that come before a command (`pinlab --threads 2 ...`)."""
    root = app.registered_callback
    return _params(root.callback) if root and root.callback else []


def walk_commands(app: typer.Typer, path: list[str]) -> Iterator[dict[str, Any]]:
    """Every command of the app, read from the declared signatures (Typer's public API)."""
    for info in app.registered_commands:
        assert info.callback is not None
        name = info.name or info.callback.__name__.replace("_", "-")
        yield _command([*path, name], info.callback)
    for group in app.registered_groups:
        assert group.typer_instance is not None and group.name is not None
        yield from walk_commands(group.typer_instance, [*path, group.name])


def _command(path: list[str], fn: Callable[..., Any]) -> dict[str, Any]:
    doc = inspect.getdoc(fn) or ""
    writes = re.search(r"Writes: (.+?)(?:\n\n|$)", doc, re.DOTALL)
    return {
        "command": " ".join(["pinlab", *path]),
        "summary": doc.splitlines()[0] if doc else "",
        "help": doc,
        "inputs": _params(fn),
        "outputs": {
            "stdout": "rich text, or one JSON document with --json",
            "files": " ".join(writes.group(1).split()) if writes else None,
        },
    }


def _params(fn: Callable[..., Any]) -> list[dict[str, Any]]:
    hints = get_type_hints(fn, include_extras=True)
    out = []
    for name, param in inspect.signature(fn).parameters.items():
        hint = hints[name]
        base, *extras = get_args(hint) if get_origin(hint) is Annotated else (hint,)
        info = next((e for e in extras if isinstance(e, ParameterInfo)), None)
        # Typer reads a string first argument of Option("--flag") under Annotated as a flag.
        named = [info.default, *(info.param_decls or [])] if info else []
        decls = [d for d in named if isinstance(d, str) and d.startswith("-")]
        base = _unwrap_optional(base)
        default = None if param.default is inspect.Parameter.empty else param.default
        out.append(
            {
                "name": name,
                "flags": decls
                or ([] if isinstance(info, ArgumentInfo) else ["--" + name.replace("_", "-")]),
                "kind": "argument" if isinstance(info, ArgumentInfo) else "option",
                "type": _type_name(base),
                "choices": [str(c) for c in get_args(base)]
                if get_origin(base) is Literal
                else None,
                "required": param.default is inspect.Parameter.empty,
                "default": default if isinstance(default, str | int | float | bool) else None,
                "help": info.help if info else None,
                "min": getattr(info, "min", None),
                "max": getattr(info, "max", None),
            }
        )
    return out


def _unwrap_optional(hint: Any) -> Any:
    args = [a for a in get_args(hint) if a is not type(None)]
    return args[0] if type(None) in get_args(hint) and len(args) == 1 else hint


def _type_name(hint: Any) -> str:
    args = get_args(hint)
    if get_origin(hint) is Literal:
        return "choice"
    if get_origin(hint) is list:
        return f"list[{_type_name(args[0])}]"
    return {Path: "path", bool: "flag"}.get(hint, getattr(hint, "__name__", str(hint)))


def doctor(as_json: JsonFlag = False) -> None:
    """Versions, device and threads: what pinlab will run with here."""
    s = settings()
    cuda = torch.cuda.is_available()
    payload = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {p: _version(p) for p in PACKAGES},
        "libraries": {p: _version(p) for p in LIBRARIES},
        "device": {
            "setting": s.device,
            "resolved": "cuda" if cuda and s.device != "cpu" else "cpu",
            "cuda_available": cuda,
            "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        },
        "threads": {"torch": torch.get_num_threads(), "cpus": os.cpu_count()},
        "settings": s.model_dump(mode="json"),
    }

    def render() -> None:
        table = Table(title="pinlab doctor", show_header=False, title_justify="left")
        for key, value in payload.items():
            table.add_row(key, str(value))
        stdout.print(table)

    emit(payload, as_json, render)


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None
