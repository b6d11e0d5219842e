"""The MCP server behind `pinlab mcp`: every CLI command as a tool, run directories as resources.

Tools are generated from the catalogue `pinlab describe` prints (`meta.walk_commands`), so a command
gets its tool, input schema and description by being declared once, as a Typer command.
A call runs the command in this process through `cli.run` with `--json` and returns the one
JSON document it prints.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import json
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

import anyio
import anyio.to_thread
import mcp_types as types
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match
from mcp.server import Server, ServerRequestContext
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError

from pinlab_tasks._app import app
from pinlab_tasks.cards import CARDS_DIR, DATA_CARD, MODEL_CARD
from pinlab_tasks.cli import run  # importing cli also registers every command on `app`
from pinlab_tasks.commands.meta import walk_commands

# `serve` runs a web server until interrupted, so its tool call would never return; `mcp` is
# this server. Every other command is a tool.
EXCLUDED = frozenset({"mcp", "serve"})

_JSON_TYPES = {
    "path": "string",
    "str": "string",
    "int": "integer",
    "float": "number",
    "flag": "boolean",
}

RUN_FILES = {
    "run.json": "application/json",
    "report.html": "text/html",
    "report/report.html": "text/html",
    f"{CARDS_DIR}/{MODEL_CARD}": "text/markdown",
    f"{CARDS_DIR}/{DATA_CARD}": "text/markdown",
}
"""The files of a run directory served as resources, when present, with their MIME types."""

RUN_DEPTH = 2
URI_PREFIX = "pinlab://run/"


@dataclass(frozen=True)
class CommandTool:
    """One CLI command as an MCP tool: where it sits under `pinlab`, its inputs, its schema."""

    path: tuple[str, ...]
    inputs: tuple[dict[str, Any], ...]
    tool: types.Tool
    validator: Draft202012Validator


def command_tools() -> dict[str, CommandTool]:
    """A tool per command of `pinlab describe`'s catalogue but `EXCLUDED`, by tool name."""
    tools: dict[str, CommandTool] = {}
    for command in sorted(walk_commands(app, []), key=lambda c: c["command"]):
        path = tuple(command["command"].split()[1:])
        if " ".join(path) in EXCLUDED:
            continue
        # The tool always passes --json itself, so it is no input.
        inputs = tuple(p for p in command["inputs"] if "--json" not in p["flags"])
        schema = input_schema(inputs)
        name = tool_name(path)
        if name in tools:
            raise ValueError(f"commands {tools[name].path} and {path} both make tool {name}")
        tool = types.Tool(name=name, description=command["help"], input_schema=schema)
        tools[name] = CommandTool(path, inputs, tool, Draft202012Validator(schema))
    return tools


def tool_name(path: Sequence[str]) -> str:
    """`data load movielens` -> `data_load_movielens`, `eval cold-start` -> `eval_cold_start`."""
    return "_".join(path).replace("-", "_")


def argument_name(param: Mapping[str, Any]) -> str:
    """The schema's name of a Typer parameter: its Python name without a keyword's `_`."""
    return str(param["name"]).rstrip("_")


def input_schema(inputs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A JSON Schema object of a command's parameters, as `pinlab describe` lists them."""
    return {
        "type": "object",
        "properties": {argument_name(p): _property(p) for p in inputs},
        "required": [argument_name(p) for p in inputs if p["required"]],
        "additionalProperties": False,
    }


def _property(param: Mapping[str, Any]) -> dict[str, Any]:
    kind = str(param["type"])
    if kind.startswith("list[") and kind.endswith("]"):
        schema = {"type": "array", "items": _scalar(kind[5:-1], param)}
    else:
        schema = _scalar(kind, param)
    if param["help"]:
        schema["description"] = param["help"]
    if param["default"] is not None:
        schema["default"] = param["default"]
    return schema


def _scalar(kind: str, param: Mapping[str, Any]) -> dict[str, Any]:
    if kind == "choice":
        return {"type": "string", "enum": list(param["choices"])}
    if kind not in _JSON_TYPES:
        raise TypeError(
            f"no JSON Schema type for {kind!r} (parameter {param['name']}); "
            "add it to pinlab_tasks.mcp_server._JSON_TYPES"
        )
    return {"type": _JSON_TYPES[kind]}


def command_argv(tool: CommandTool, arguments: Mapping[str, Any]) -> list[str]:
    """The CLI's argv for validated arguments: arguments in declared order, then options."""
    positionals: list[str] = []
    options: list[str] = []
    for param in tool.inputs:
        value = arguments.get(argument_name(param))
        if value is None:
            continue
        if param["kind"] == "argument":
            values = value if isinstance(value, list) else [value]
            positionals += [_text(v, param["type"]) for v in values]
        else:
            options += _option(param, value)
    # `--` ends the options, so an argument value that starts with "-" stays a value.
    return [*tool.path, *options, "--json", *(["--", *positionals] if positionals else [])]


def _option(param: Mapping[str, Any], value: Any) -> list[str]:
    flags: list[str] = param["flags"]
    flag = next((f for f in flags if f.startswith("--")), flags[0])
    if param["type"] == "flag":
        on, _, off = flag.partition("/")  # `--pretrained/--no-pretrained` says both ways
        return [on] if value else ([off] if off else [])
    values = value if isinstance(value, list) else [value]
    # `--flag=value`, one token: a value that starts with "-" is not read as a flag.
    return [f"{flag}={_text(v, param['type'])}" for v in values]


def _text(value: Any, kind: str) -> str:
    # JSON Schema counts 3.0 as an integer; the CLI reads only "3".
    return str(int(value)) if "int" in kind else str(value)


def argument_problem(error: ValidationError) -> str:
    """One line naming the bad argument and what it accepts."""
    where = _where(error)
    # Set on every error that validation yields (the stubs also allow "unset").
    schema: Any = error.schema
    instance: Any = error.instance
    expected: Any = error.validator_value
    if error.validator == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        unknown = sorted(set(instance) - set(allowed))
        return f"unknown argument {', '.join(unknown)}; allowed: {', '.join(allowed) or 'none'}"
    if error.validator == "required":
        missing = [name for name in expected if name not in instance]
        return f"missing required argument {', '.join(missing)}"
    if error.validator == "type":
        wanted = " or ".join(expected) if isinstance(expected, list) else expected
        return f"argument {where} must be of type {wanted}, not {json.dumps(instance)}"
    if error.validator == "enum":
        choices = ", ".join(json.dumps(c) for c in expected)
        return f"argument {where} must be one of {choices}, not {json.dumps(instance)}"
    return f"argument {where}: {error.message}"


def _where(error: ValidationError) -> str:
    name, *rest = [*error.absolute_path] or ["(arguments)"]
    return str(name) + "".join(f"[{i}]" for i in rest)


class _Tee(io.StringIO):
    """Keeps what is written and passes it on, so a command's logs still reach our stderr."""

    def __init__(self, echo: TextIO) -> None:
        super().__init__()
        self._echo = echo

    def write(self, s: str) -> int:
        self._echo.write(s)
        return super().write(s)


# redirect_stdout swaps sys.stdout for the whole process, not this thread: two commands at
# once would print into each other's capture. Calls take turns.
_CLI_LOCK = threading.Lock()


def run_captured(argv: list[str]) -> tuple[int, str, str]:
    """Run the CLI in this process: its exit code, its stdout and its stderr."""
    with _CLI_LOCK:
        out, err = io.StringIO(), _Tee(sys.stderr)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = run(argv)
    return code, out.getvalue(), err.getvalue()


def tool_result(code: int, stdout: str, stderr: str) -> types.CallToolResult:
    """The command's JSON document as the result, or its one-line error as a tool error."""
    try:
        document: Any = json.loads(stdout) if stdout.strip() else None
    except json.JSONDecodeError:
        document = None
    if code != 0:
        return _tool_error(_error_message(document, stderr, code))
    if document is None:
        return _tool_error("the command printed no JSON document on stdout (a pinlab bug)")
    # Before 2026-07-28 structured content must be a JSON object.
    structured = document if isinstance(document, dict) else {"result": document}
    text = types.TextContent(text=json.dumps(structured))
    return types.CallToolResult(content=[text], structured_content=structured)


def _tool_error(message: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=message)], is_error=True)


def _error_message(document: Any, stderr: str, code: int) -> str:
    if isinstance(document, dict) and isinstance(document.get("error"), str):
        return str(document["error"])
    # Typer's usage errors print no JSON, only a box on stderr: its inner lines are the message.
    lines = stderr.splitlines()
    boxed = [line.strip("│ ") for line in lines if line.startswith("│")]
    if boxed:
        return " ".join(boxed)
    last = [line.strip() for line in lines if line.strip()]
    return last[-1] if last else f"pinlab exited with code {code} and printed no message"


async def call_tool(
    tools: Mapping[str, CommandTool], name: str, arguments: Mapping[str, Any]
) -> types.CallToolResult:
    """Validate, run the command in a worker thread, and shape its output."""
    tool = tools.get(name)
    if tool is None:
        near = difflib.get_close_matches(name, tools, n=3)
        hint = f"did you mean {', '.join(near)}? " if near else ""
        raise MCPError(
            types.INVALID_PARAMS,
            f"unknown tool {name!r}; {hint}tools/list names all {len(tools)}",
        )
    error = best_match(tool.validator.iter_errors(arguments))
    if error is not None:
        raise MCPError(types.INVALID_PARAMS, f"{name}: {argument_problem(error)}")
    argv = command_argv(tool, arguments)
    code, stdout, stderr = await anyio.to_thread.run_sync(run_captured, argv)
    return tool_result(code, stdout, stderr)


def run_dirs(root: Path, depth: int = RUN_DEPTH) -> Iterator[Path]:
    """Folders holding a run.json: `root` and its folders `depth` levels down (not hidden ones)."""
    if (root / "run.json").is_file():
        yield root
    if depth == 0:
        return
    try:
        children = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:  # unreadable: nothing to serve there
        return
    for child in children:
        yield from run_dirs(child, depth - 1)


def run_files(root: Path) -> dict[str, tuple[Path, str]]:
    """Every served run file under `root`: its URI -> (path, MIME type)."""
    found: dict[str, tuple[Path, str]] = {}
    for run_dir in run_dirs(root):
        for name, mime in RUN_FILES.items():
            path = run_dir / name
            if path.is_file():
                found[URI_PREFIX + quote(path.relative_to(root).as_posix())] = (path, mime)
    return found


def list_resources(root: Path) -> types.ListResourcesResult:
    resources = [
        types.Resource(
            uri=uri,
            name=path.relative_to(root).as_posix(),
            description=f"{path.name} of the run {path.parent.relative_to(root).as_posix()}",
            mime_type=mime,
            size=path.stat().st_size,
        )
        for uri, (path, mime) in run_files(root).items()
    ]
    return types.ListResourcesResult(resources=resources)


def read_resource(root: Path, uri: str) -> types.ReadResourceResult:
    # Looked up among the listed files, never joined onto the root: no path escapes it.
    found = run_files(root).get(uri)
    if found is None:
        raise MCPError(
            types.INVALID_PARAMS,
            f"no resource {uri}; resources/list names the run files under {root}",
        )
    path, mime = found
    contents = types.TextResourceContents(uri=uri, mime_type=mime, text=path.read_text("utf-8"))
    return types.ReadResourceResult(contents=[contents])


def build_server(runs_root: Path) -> Server[Any]:
    """The pinlab MCP server: command tools, and the run files under `runs_root`."""
    tools = command_tools()
    root = runs_root.resolve()

    async def on_list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[t.tool for t in tools.values()])

    async def on_call_tool(
        ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        return await call_tool(tools, params.name, params.arguments or {})

    async def on_list_resources(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        return list_resources(root)

    async def on_read_resource(
        ctx: ServerRequestContext[Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        return read_resource(root, params.uri)

    return Server(
        "pinlab",
        version=version("pinlab-tasks"),
        instructions=(
            "Each pinlab CLI command is a tool (all but `serve`, which never returns, and `mcp`); "
            "a call runs it with --json and returns its JSON document. Run directories under "
            f"{root} are resources: run.json, the HTML report and the model and data cards."
        ),
        on_list_tools=on_list_tools,
        on_call_tool=on_call_tool,
        on_list_resources=on_list_resources,
        on_read_resource=on_read_resource,
    )


def serve_stdio(server: Server[Any]) -> None:
    """Serve over stdin and stdout until the client closes stdin."""

    async def main() -> None:
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())

    anyio.run(main)


def serve_http(server: Server[Any], host: str, port: int) -> None:
    """Serve streamable HTTP at http://HOST:PORT/mcp until interrupted."""
    import uvicorn

    uvicorn.run(server.streamable_http_app(host=host), host=host, port=port, log_level="warning")
