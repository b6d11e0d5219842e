"""`pinlab describe` (the tool, as JSON, for agents) and `pinlab doctor` (the machine)."""

from __future__ import annotations

import os
import platform
import re
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import click
import torch
import typer
from rich.table import Table

from pinlab_tasks._app import JsonFlag, settings
from pinlab_tasks._output import emit, stdout

EXIT_CODES = {"0": "success", "1": "failure", "2": "bad usage or bad input"}
PACKAGES = ("pinlab-data", "pinlab-models", "pinlab-eval", "pinlab-serve", "pinlab-tasks")
LIBRARIES = ("torch", "numpy", "pyarrow", "faiss-cpu", "pydantic", "typer")


def register(app: typer.Typer) -> None:
    def describe(as_json: JsonFlag = False) -> None:
        """Every command with its options, inputs and outputs, as JSON for agents."""
        root = typer.main.get_command(app)
        commands = list(_walk(root, []))
        payload = {
            "tool": "pinlab",
            "json_flag": "--json prints exactly one JSON document on stdout; logs go to stderr",
            "exit_codes": EXIT_CODES,
            "global_options": [_param(p) for p in root.params if p.name != "help"],
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


def _walk(command: click.Command, path: list[str]) -> Any:
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            yield from _walk(sub, [*path, name])
        return
    doc = command.help or ""
    writes = re.search(r"Writes: (.+?)(?:\n|$)", doc)
    yield {
        "command": " ".join(["pinlab", *path]),
        "summary": doc.strip().splitlines()[0] if doc.strip() else "",
        "help": doc.strip(),
        "inputs": [_param(p) for p in command.params if p.name != "help"],
        "outputs": {
            "stdout": "rich text, or one JSON document with --json",
            "files": writes.group(1).strip() if writes else None,
        },
    }


def _param(param: click.Parameter) -> dict[str, Any]:
    kind = param.type
    default = param.default if not callable(param.default) else None
    return {
        "name": param.name,
        "flags": list(param.opts),
        "kind": "argument" if isinstance(param, click.Argument) else "option",
        "type": kind.name,
        "choices": list(kind.choices) if isinstance(kind, click.Choice) else None,
        "required": param.required,
        "default": default
        if isinstance(default, str | int | float | bool | None)
        else str(default),
        "multiple": param.multiple,
        "help": getattr(param, "help", None),
    }


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
