"""The MCP server behind `pinlab mcp`: every CLI command as a tool, run directories as resources.

Tools are generated from the catalogue `pinlab describe` prints (`meta.walk_commands`), so a command
gets its tool, input schema and description by being declared once, as a Typer command.
A call runs the command through `cli.run` with `--json` in a process of its own and returns
the one JSON document it prints; its `--progress json` events become progress notifications.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import itertools
import json
import multiprocessing
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import anyio.to_thread
import mcp_types as types
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match
from mcp.server import Server, ServerRequestContext
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError
from pydantic import ValidationError as PydanticValidationError

from pinlab_models import ProgressEvent
from pinlab_tasks._app import app
from pinlab_tasks.cards import CARDS_DIR, DATA_CARD, MODEL_CARD
from pinlab_tasks.cli import run  # importing cli also registers every command on `app`
from pinlab_tasks.commands.meta import walk_commands
from pinlab_tasks.runs import INCOMPLETE, RunLayout, mark_incomplete
from pinlab_tasks.settings import PinlabSettings

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
    if kind in ("int", "float"):
        bounds = {"minimum": param.get("min"), "maximum": param.get("max")}
        return {"type": _JSON_TYPES[kind]} | {k: v for k, v in bounds.items() if v is not None}
    if kind == "path":  # "" would be read as ".", the server's working directory
        return {"type": "string", "minLength": 1}
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


# Each call runs in its own process, forked from a server that has imported pinlab once: a
# call starts in milliseconds, calls run side by side, and a cancelled one can be stopped
# wherever it is. `pinlab_tasks.mcp_server` is preloaded there, so the CLI is too.
_PROCESSES = multiprocessing.get_context("forkserver")

STOP_GRACE_S = 10.0
"""How long a cancelled command has, after SIGTERM, to unwind (atomic writers delete their
temporary files) before it is killed."""


def settings_env(current: PinlabSettings) -> dict[str, str]:
    """PINLAB_* variables carrying the server's resolved settings (root flags given before
    `mcp` included) into each call; progress is always json, the stream the server reads."""
    env = {}
    for key, value in current.model_dump(mode="json").items():
        if value is not None:
            text = json.dumps(value) if isinstance(value, bool) else str(value)
            env[f"PINLAB_{key.upper()}"] = text
    env["PINLAB_RUNS_DIR"] = str(current.runs_dir.resolve())
    env["PINLAB_PROGRESS"] = "json"
    return env


class _LineSender(io.TextIOBase):
    """The command's stderr: each complete line goes to the server as it is written."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._partial = ""

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        *lines, self._partial = (self._partial + s).split("\n")
        for line in lines:
            self._conn.send(("line", line))
        return len(s)

    def flush(self) -> None:
        if self._partial:
            self._conn.send(("line", self._partial))
            self._partial = ""


def _run_in_child(argv: list[str], env: dict[str, str], conn: Connection) -> None:
    """The call's process: run the CLI, stream stderr lines, send the exit code and stdout."""
    # SIGTERM unwinds like Ctrl-C, so atomic writers and temporary directories clean up.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    os.dup2(2, 1)  # under stdio fd 1 is the protocol's: nothing else may write there
    os.environ.update(env)
    out, err = io.StringIO(), _LineSender(conn)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = run(argv)
        err.flush()
        conn.send(("exit", code, out.getvalue()))
    except KeyboardInterrupt:
        return  # stopped: the server reads nothing more


ProgressReport = Callable[[ProgressEvent], Awaitable[None]]


async def run_command(
    argv: list[str], env: Mapping[str, str], report: ProgressReport
) -> tuple[int, str, str]:
    """Run the CLI in a child process: its exit code, stdout, and the stderr lines that are
    not progress events (those go to `report` as they come)."""
    receive, send = _PROCESSES.Pipe(duplex=False)
    process = _PROCESSES.Process(target=_run_in_child, args=(argv, dict(env), send))
    process.start()
    send.close()  # the child holds the only writer: EOF means it is gone
    logs: list[str] = []
    try:
        while True:
            if not await anyio.to_thread.run_sync(receive.poll, 0.2):
                continue
            try:
                message = receive.recv()
            except EOFError:
                process.join()
                logs.append(f"the command's process died (exit code {process.exitcode})")
                return 1, "", "\n".join(logs)
            if message[0] == "exit":
                return int(message[1]), str(message[2]), "\n".join(logs)
            event = progress_event(message[1])
            if event is None:
                logs.append(message[1])
                print(message[1], file=sys.stderr)  # the command's log, in the server's
            else:
                await report(event)
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(_stop, process)
        receive.close()


def _stop(process: BaseProcess) -> None:
    if process.is_alive():
        process.terminate()
        process.join(STOP_GRACE_S)
    if process.is_alive():
        process.kill()
    process.join()


def progress_event(line: str) -> ProgressEvent | None:
    if not line.startswith("{"):
        return None
    try:
        return ProgressEvent.model_validate_json(line)
    except PydanticValidationError:
        return None


def progress_message(event: ProgressEvent) -> str:
    """One line of a progress notification."""
    what = event.label or event.command
    if event.event == "step":
        return f"{what}: {event.message}"
    if event.event == "start":
        return f"{what}: started" + (f", at most {event.epochs} epochs" if event.epochs else "")
    if event.event == "end":
        done = f"{what}: done after {event.epoch} epochs"
        if event.best is None:
            return done
        return f"{done}, best {event.metric} {event.best:.4f} at epoch {event.best_epoch}"
    parts = [f"{what}: epoch {event.epoch}/{event.epochs}"]
    if event.loss is not None:
        parts.append(f"loss {event.loss:.4g}")
    if event.value is not None:
        parts.append(f"{event.metric} {event.value:.4f}")
    if event.eta_s is not None:
        parts.append(f"ETA {event.eta_s:.0f} s")
    return ", ".join(parts)


RUN_ARGUMENTS = frozenset({"run", "out"})
"""Path arguments naming a directory the command writes into."""


@dataclass(frozen=True)
class WrittenDirs:
    """What the directories a call may write held before it: to tell, if it is stopped, which
    it had changed (and mark those incomplete) from which it left as they were."""

    named: dict[Path, dict[str, tuple[int, int]]]
    runs_dir: Path
    runs_before: frozenset[str]

    @classmethod
    def before(cls, tool: CommandTool, arguments: Mapping[str, Any], runs_dir: Path) -> WrittenDirs:
        named = [
            Path(arguments[argument_name(p)]).resolve()
            for p in tool.inputs
            if p["type"] == "path" and argument_name(p) in RUN_ARGUMENTS
            and arguments.get(argument_name(p)) is not None
        ]  # fmt: skip
        return cls({d: _files(d) for d in named}, runs_dir, frozenset(_children(runs_dir)))

    def mark_changed(self, command: str, reason: str) -> list[Path]:
        """Mark every directory the call changed; return them."""
        states = dict(self.named)
        for name in _children(self.runs_dir) - self.runs_before:  # a new run, unnamed
            states.setdefault(self.runs_dir / name, {})
        marked = []
        for root, before in states.items():
            after = _files(root)
            changed = sorted(
                p for p in before.keys() | after.keys() if before.get(p) != after.get(p)
            )
            if changed:
                mark_incomplete(root, command, reason, changed)
                marked.append(root)
        return marked


def _files(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under `root` (when it is a directory): its modification time and size."""
    if not root.is_dir():
        return {}
    found = {}
    for path in root.rglob("*"):
        with contextlib.suppress(OSError):  # gone while listing: counts as changed
            if path.is_file() and path.name != INCOMPLETE:
                stat = path.stat()
                found[path.relative_to(root).as_posix()] = (stat.st_mtime_ns, stat.st_size)
    return found


def _children(root: Path) -> set[str]:
    try:
        return {p.name for p in root.iterdir() if p.is_dir()}
    except OSError:
        return set()


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
    last = [line.strip() for line in stderr.splitlines() if line.strip()]
    return last[-1] if last else f"pinlab exited with code {code} and printed no message"


async def call_tool(
    tools: Mapping[str, CommandTool],
    name: str,
    arguments: Mapping[str, Any],
    current: PinlabSettings,
    report: ProgressReport,
) -> types.CallToolResult:
    """Validate, run the command in its own process, and shape its output.

    Progress events of the command reach `report`. Cancelled, the command is stopped and
    every directory it had changed is marked incomplete (`INCOMPLETE.json`).
    """
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
    written = WrittenDirs.before(tool, arguments, current.runs_dir.resolve())
    try:
        code, stdout, stderr = await run_command(argv, settings_env(current), report)
    except anyio.get_cancelled_exc_class():
        with anyio.CancelScope(shield=True):
            command = " ".join(tool.path)
            marked = written.mark_changed(command, "cancelled by the MCP client")
            where = ", ".join(map(str, marked)) or "nothing changed"
            print(
                f"pinlab mcp: {command} cancelled and stopped; incomplete: {where}", file=sys.stderr
            )
        raise
    return tool_result(code, stdout, stderr)


def run_dirs(root: Path, depth: int = RUN_DEPTH) -> Iterator[Path]:
    """Folders holding a run.json: `root` and its folders `depth` levels down (not hidden ones)."""
    if RunLayout(root).record.is_file():
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
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:  # gone since listed, or damaged
        why = "it is not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else exc.strerror
        raise MCPError(
            types.INTERNAL_ERROR, f"cannot read {uri} ({path}): {why}; rewrite or remove it"
        ) from exc
    contents = types.TextResourceContents(uri=uri, mime_type=mime, text=text)
    return types.ReadResourceResult(contents=[contents])


def build_server(runs_root: Path, current: PinlabSettings | None = None) -> Server[Any]:
    """The pinlab MCP server: command tools, and the run files under `runs_root`.

    Tool calls run with `current` settings (default: from PINLAB_* variables).
    """
    tools = command_tools()
    root = runs_root.resolve()
    current = current or PinlabSettings()
    _PROCESSES.set_forkserver_preload([__name__])

    async def on_list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[t.tool for t in tools.values()])

    async def on_call_tool(
        ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        done = itertools.count(1)

        async def report(event: ProgressEvent) -> None:
            # A no-op unless the client sent a progress token with the call.
            await ctx.session.report_progress(next(done), None, progress_message(event))

        return await call_tool(tools, params.name, params.arguments or {}, current, report)

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
            "a call runs it with --json and returns its JSON document; with a progress token it "
            "reports each stage and epoch, and a cancelled call is stopped, leaving the "
            "directories it had changed marked by INCOMPLETE.json. Run directories under "
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
    """Serve streamable HTTP at http://HOST:PORT/mcp until interrupted; a port in use or an
    unknown host is refused (PinlabServeError) before the server starts."""
    from pinlab_serve import http_url, listen, serve_app

    sock = listen(host, port)
    # uvicorn logs only warnings here, so this line is how port 0's number is known.
    print(f"serving MCP at {http_url(host, sock, '/mcp')}; Ctrl-C stops", file=sys.stderr)
    serve_app(server.streamable_http_app(host=host), sock, log_level="warning")
