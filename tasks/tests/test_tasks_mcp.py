"""`pinlab mcp` through the MCP SDK's own clients: in process, and over stdio as a subprocess."""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import jsonschema
import mcp_types as types
import pytest
from mcp import Client, ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPError

from pinlab_tasks.cli import run
from pinlab_tasks.mcp_server import (
    build_server,
    command_argv,
    command_tools,
    settings_env,
    tool_name,
    tool_result,
)
from pinlab_tasks.runs import INCOMPLETE
from pinlab_tasks.settings import PinlabSettings

T = TypeVar("T")

# What differs between two runs of the same seeded demo: where, when, how long, how much memory.
VOLATILE = {"run_dir", "out", "seconds", "train_seconds", "peak_rss_mb", "created"}


def with_client(root: Path, use: Callable[[Client], Awaitable[T]]) -> T:
    """Connect the SDK's client to a server over `root` in this process, and `use` it."""

    async def session() -> T:
        async with Client(build_server(root), mode="legacy") as client:
            return await use(client)

    return anyio.run(session)


def call(root: Path, name: str, arguments: dict[str, Any]) -> types.CallToolResult:
    return with_client(root, lambda c: c.call_tool(name, arguments))


def refused(root: Path, request: Callable[[Client], Awaitable[object]]) -> str:
    """The message of the protocol error that the server must answer `request` with."""

    async def error(client: Client) -> MCPError:
        # Caught inside the session: escaping it, the error would come wrapped in a group.
        with pytest.raises(MCPError) as caught:
            await request(client)
        return caught.value

    raised = with_client(root, error)
    assert raised.code == types.INVALID_PARAMS
    return raised.message


def refused_call(root: Path, name: str, arguments: dict[str, Any]) -> str:
    return refused(root, lambda c: c.call_tool(name, arguments))


def cli_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any]:
    code = run([*args, "--json"])
    return code, json.loads(capsys.readouterr().out)


def stable(value: Any) -> Any:
    """`value` without its `VOLATILE` keys, at any depth."""
    if isinstance(value, dict):
        return {k: stable(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [stable(v) for v in value]
    return value


class Progress:
    """A client's progress callback: every message, and an event at the first epoch."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.counts: list[float] = []
        self.first_epoch = anyio.Event()

    async def __call__(self, progress: float, total: float | None, message: str | None) -> None:
        self.counts.append(progress)
        self.messages.append(message or "")
        if " epoch " in (message or ""):
            self.first_epoch.set()


@pytest.fixture(scope="module")
def mcp_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], Progress]:
    """The tiny demo run once through the `demo` tool: the server's root, the result, and the
    progress it reported."""
    root = tmp_path_factory.mktemp("mcp")
    progress = Progress()
    arguments = {"preset": "tiny", "out": str(root / "run"), "seed": 1}
    result = with_client(root, lambda c: c.call_tool("demo", arguments, progress_callback=progress))
    assert not result.is_error, result.content
    assert isinstance(result.structured_content, dict)
    return root, result.structured_content, progress


def test_tools_are_describes_commands_but_mcp_and_serve(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, described = cli_json(capsys, "describe")
    assert code == 0
    commands = {tuple(c["command"].split()[1:]): c for c in described["commands"]}
    assert {("mcp",), ("serve",)} <= set(commands)
    tools = with_client(tmp_path, lambda c: c.list_tools()).tools
    expected = {tool_name(path) for path in commands} - {"mcp", "serve"}
    assert sorted(t.name for t in tools) == sorted(expected)
    by_name = {tool_name(path): c for path, c in commands.items()}
    for tool in tools:
        jsonschema.Draft202012Validator.check_schema(tool.input_schema)
        assert tool.input_schema["type"] == "object"
        assert tool.input_schema["additionalProperties"] is False
        assert "as_json" not in tool.input_schema["properties"]  # every call passes --json
        assert tool.description == by_name[tool.name]["help"]


def test_schemas_follow_the_typer_parameters() -> None:
    tools = command_tools()
    demo = tools["demo"].tool.input_schema
    assert demo["properties"]["preset"] == {
        "type": "string",
        "enum": ["tiny", "default"],
        "description": "World and training size.",
        "default": "default",
    }
    assert demo["properties"]["seed"]["type"] == "integer"
    assert demo["properties"]["align"] == {**demo["properties"]["align"], "type": "boolean"}
    assert demo["required"] == []
    recommend = tools["recommend"].tool.input_schema
    assert set(recommend["required"]) == {"run"}  # --user or --history
    assert recommend["properties"]["k"]["default"] == 10
    card = tools["card"].tool.input_schema["properties"]
    assert card["run"]["type"] == "string"
    assert card["user_group"]["type"] == "array" and card["user_group"]["items"]["type"] == "string"
    dedupe = tools["data_dedupe"].tool.input_schema["properties"]
    assert dedupe["min_cosine"]["type"] == "number"
    assert "set" in tools["train_encoder"].tool.input_schema["properties"]  # not `set_`
    # Typer's bounds become the schema's.
    scale = tools["bench_serve"].tool.input_schema["properties"]["scale"]
    assert (scale["minimum"], scale["maximum"]) == (0.01, 10)
    assert "maximum" not in tools["runs_list"].tool.input_schema["properties"]["limit"]


def test_arguments_become_the_command_line() -> None:
    tools = command_tools()
    argv = command_argv(
        tools["train_encoder"],
        {"data": "d", "pretrained": False, "set": ["lr=0.1", "tau=-1"], "epochs": 3.0},
    )
    assert argv == [
        "train", "encoder", "--data=d", "--no-pretrained", "--epochs=3",
        "--set=lr=0.1", "--set=tau=-1", "--json",
    ]  # fmt: skip
    assert command_argv(tools["demo"], {"align": True, "preset": "tiny"}) == [
        "demo", "--preset=tiny", "--align", "--json",
    ]  # fmt: skip
    assert command_argv(tools["demo"], {"align": False}) == ["demo", "--json"]
    # An argument is positional, after `--`, so a value starting with "-" is not a flag.
    assert command_argv(tools["card"], {"run": "-r", "user_group": ["age", "gender"]}) == [
        "card", "--user-group=age", "--user-group=gender", "--json", "--", "-r",
    ]  # fmt: skip
    assert command_argv(tools["search"], {"run": "r", "k": 3})[-2:] == ["--k=3", "--json"]


def test_the_demo_tool_returns_what_the_cli_prints(
    mcp_demo: tuple[Path, dict[str, Any], Progress], tiny_demo: dict[str, Any]
) -> None:
    root, result, _ = mcp_demo
    assert result["run_dir"] == str(root / "run")
    assert (root / "run" / "run.json").is_file()
    assert stable(result) == stable(tiny_demo)  # metrics, index file, chosen model, hits


def test_search_and_recommend_tools_on_the_demo_run(
    mcp_demo: tuple[Path, dict[str, Any], Progress],
) -> None:
    root, result, _ = mcp_demo
    run_dir = result["run_dir"]
    pin = result["search"]["query"]["pin"]["pin_id"]
    found = call(root, "search", {"run": run_dir, "pin": pin, "k": 3})
    assert not found.is_error
    assert isinstance(found.structured_content, dict)
    hits = found.structured_content["hits"]
    assert len(hits) == 3 and pin not in [h["pin_id"] for h in hits]
    assert json.loads(found.content[0].text) == found.structured_content  # type: ignore[union-attr]
    liked = call(root, "recommend", {"run": run_dir, "user": 3, "k": 5})
    assert not liked.is_error
    assert isinstance(liked.structured_content, dict)
    assert len(liked.structured_content["items"]) == 5


def test_run_files_are_resources(mcp_demo: tuple[Path, dict[str, Any], Progress]) -> None:
    root, _, _ = mcp_demo

    async def read_run_json(client: Client) -> tuple[list[str], str]:
        listed = await client.list_resources()
        read = await client.read_resource("pinlab://run/run/run.json")
        content = read.contents[0]
        assert isinstance(content, types.TextResourceContents)
        return [str(r.uri) for r in listed.resources], content.text

    uris, text = with_client(root, read_run_json)
    assert "pinlab://run/run/run.json" in uris
    assert json.loads(text) == json.loads((root / "run" / "run.json").read_text())
    message = refused(root, lambda c: c.read_resource("pinlab://run/../../etc/passwd"))
    assert message.startswith("no resource")


def test_a_damaged_run_file_is_named_not_served(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "run.json").write_bytes(b"\xff\xfe\x00{")

    async def error(client: Client) -> MCPError:
        with pytest.raises(MCPError) as caught:
            await client.read_resource("pinlab://run/r/run.json")
        return caught.value

    raised = with_client(tmp_path, error)
    assert raised.code == types.INTERNAL_ERROR
    assert "cannot read pinlab://run/r/run.json" in raised.message
    assert raised.message.endswith("it is not UTF-8 text; rewrite or remove it")


def test_the_demo_reports_its_stages_and_epochs_as_progress(
    mcp_demo: tuple[Path, dict[str, Any], Progress],
) -> None:
    _, _, progress = mcp_demo
    assert progress.counts == sorted(set(progress.counts))  # strictly increasing, as MCP asks
    assert any(m.startswith("demo: ") for m in progress.messages)  # a workflow stage
    epochs = [m for m in progress.messages if " epoch " in m]
    assert any(m.startswith("train mf") and "epoch 3/3" in m for m in epochs), epochs


def test_a_cancelled_call_stops_its_command_and_marks_what_it_changed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data, run_dir = tmp_path / "data", tmp_path / "run"
    assert run(["data", "synth", "--preset", "tiny", "--out", str(data)]) == 0
    arguments = {
        "data": str(data),
        "run": str(run_dir),
        "model": "mf",
        # Thousands of epochs that validation never stops: only the cancel ends it.
        "set": ['loss="softmax"', "dim=8", "epochs=5000", "patience=5000"],
    }
    marker = run_dir / INCOMPLETE
    progress = Progress()

    async def cancel_after_an_epoch(client: Client) -> None:
        async with anyio.create_task_group() as group:

            async def train() -> None:
                await client.call_tool("train_recommender", arguments, progress_callback=progress)

            group.start_soon(train)
            with anyio.fail_after(120):
                await progress.first_epoch.wait()
            group.cancel_scope.cancel()
        with anyio.fail_after(60):  # the server stops the command, then marks the run
            while not marker.is_file():
                await anyio.sleep(0.1)

    with_client(tmp_path, cancel_after_an_epoch)
    stopped = json.loads(marker.read_text())
    assert stopped["command"] == "train recommender"
    assert stopped["reason"] == "cancelled by the MCP client"
    trial = "recommender/mf/validation/trial-0/metrics.jsonl"  # its epochs on validation
    assert trial in stopped["changed"]
    files = sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file())
    assert not [f for f in files if f.rsplit("/", 1)[-1].startswith(".")]  # no temporary files
    assert not (run_dir / "recommender" / "mf" / "model.pt").exists()  # it never finished
    epochs_logged = (run_dir / trial).read_text()
    anyio.run(anyio.sleep, 1.5)
    assert (run_dir / trial).read_text() == epochs_logged  # stopped, not still training
    # Reading the run warns that it is incomplete; running the command to its end clears it.
    code = run(["train", "recommender", "--data", str(data), "--run", str(run_dir),
                "--set", "dim=8", "--set", "epochs=2"])  # fmt: skip
    assert code == 0
    assert "marked incomplete" in capsys.readouterr().err
    assert not marker.exists()


def test_calls_run_with_the_servers_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Root flags given before `mcp` reach every call: the environment a call gets resolves
    to the server's settings (progress always json, which the server reads)."""
    server = PinlabSettings(
        runs_dir=tmp_path / "r", threads=1, tracking=False, log_level="WARNING", seed=7,
        tracking_uri="sqlite:///x.db", debug=True,
    )  # fmt: skip
    for key in list(os.environ):
        if key.startswith("PINLAB_"):
            monkeypatch.delenv(key)
    for key, value in settings_env(server).items():
        monkeypatch.setenv(key, value)
    expected = server.model_copy(update={"progress": "json", "runs_dir": (tmp_path / "r")})
    assert PinlabSettings() == expected


def test_bad_arguments_and_unknown_tools_are_protocol_errors(tmp_path: Path) -> None:
    message = refused_call(tmp_path, "demo", {"seed": "one"})
    assert "seed" in message and "integer" in message
    message = refused_call(tmp_path, "demo", {"preset": "huge"})
    assert "preset" in message and '"tiny", "default"' in message
    message = refused_call(tmp_path, "demo", {"sede": 1})
    assert "unknown argument sede" in message and "seed" in message
    assert "missing required argument run" in refused_call(tmp_path, "card", {})
    assert "user_group[0]" in refused_call(tmp_path, "card", {"run": "r", "user_group": [1]})
    # An empty path would be the server's working directory.
    assert (
        refused_call(tmp_path, "card", {"run": ""}) == "card: argument run: '' should be non-empty"
    )
    message = refused_call(tmp_path, "serve", {"run": str(tmp_path)})
    assert "unknown tool 'serve'" in message
    assert "did you mean demo" in refused_call(tmp_path, "dmeo", {})


def test_a_failing_command_is_a_tool_error_with_the_cli_message(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = str(tmp_path / "no-such-run")
    code, printed = cli_json(capsys, "card", missing)
    assert code == 2
    result = call(tmp_path, "card", {"run": missing})
    assert result.is_error and result.structured_content is None
    assert [c.text for c in result.content] == [printed["error"]]  # type: ignore[union-attr]
    # Typer's bounds are in the schema, so the protocol refuses them before any run.
    message = refused_call(tmp_path, "runs_list", {"limit": 0})
    assert "limit: 0 is less than the minimum of 1" in message
    # A usage error past the schema is JSON on stdout too, so it comes back as its message.
    code = run(["runs", "list", "--limit", "0", "--json"])
    out, err = capsys.readouterr()
    assert code == 2 and "╭─ Error" in err  # Typer's box is for people, on stderr
    result = tool_result(code, out, err)
    assert result.is_error and result.content[0].text == json.loads(out)["error"]  # type: ignore[union-attr]
    assert "'--limit': Input should be greater than or equal to 1" in result.content[0].text  # type: ignore[union-attr]
    # A command that dies without a document: its last stderr line is the message.
    assert tool_result(1, "", "loading\nKilled\n").content[0].text == "Killed"  # type: ignore[union-attr]


def test_http_refuses_a_busy_port(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = run(["mcp", "--runs", str(tmp_path), "--http", f"127.0.0.1:{port}"])
    assert code == 2
    assert f"cannot listen on 127.0.0.1 port {port}: " in capsys.readouterr().err


def test_http_serves_the_tools_at_the_address_it_announces(tmp_path: Path) -> None:
    """`pinlab mcp --http 127.0.0.1:0` as a subprocess: the port it got, then streamable HTTP."""
    import re
    import signal
    import subprocess
    import threading

    from mcp.client.streamable_http import streamable_http_client

    command = [sys.executable, "-m", "pinlab_tasks", "mcp", "--runs", str(tmp_path)]
    with subprocess.Popen(
        [*command, "--http", "127.0.0.1:0"], stderr=subprocess.PIPE, text=True,
        env=os.environ | {"PINLAB_TRACKING": "off"},
    ) as proc:  # fmt: skip
        assert proc.stderr is not None
        watchdog = threading.Timer(60, proc.kill)  # a server that never says where: stderr ends
        watchdog.start()
        try:
            said = ""
            while not (found := re.search(r"serving MCP at (http://127\.0\.0\.1:\d+/mcp)", said)):
                line = proc.stderr.readline()
                assert line, f"the server ended without saying where: {said}"
                said += line

            async def tools() -> list[str]:
                async with (
                    streamable_http_client(found.group(1)) as (read, write, *_),
                    ClientSession(read, write) as client,
                ):
                    await client.initialize()
                    return [t.name for t in (await client.list_tools()).tools]

            names = anyio.run(tools)
        finally:
            watchdog.cancel()
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
    assert "describe" in names and "search" in names and "serve" not in names


def test_stdio_subprocess_lists_tools_searches_recommends_and_refuses(
    mcp_demo: tuple[Path, dict[str, Any], Progress], tmp_path: Path
) -> None:
    """`pinlab mcp` as a subprocess over stdio, on the demo run the in-process server made."""
    root, demo, _ = mcp_demo
    env = {"PINLAB_TRACKING": "off"}
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "pinlab_tasks", "mcp", "--runs", str(root)],
        env=env | {k: os.environ[k] for k in ("PINLAB_THREADS",) if k in os.environ},
        cwd=tmp_path,
    )
    run_dir = demo["run_dir"]
    pin = demo["search"]["query"]["pin"]["pin_id"]

    async def session() -> tuple[list[str], list[types.CallToolResult], str]:
        with (tmp_path / "server.err").open("w") as errlog:
            async with (
                stdio_client(params, errlog=errlog) as (read, write),
                ClientSession(read, write) as client,
            ):
                await client.initialize()
                tools = await client.list_tools()
                results = [
                    await client.call_tool("describe", {}),
                    await client.call_tool("search", {"run": run_dir, "pin": pin, "k": 3}),
                    await client.call_tool("recommend", {"run": run_dir, "user": 3, "k": 4}),
                    await client.call_tool("card", {"run": str(tmp_path / "no-such-run")}),
                ]
                with pytest.raises(MCPError) as refused:
                    await client.call_tool("demo", {"seed": "one"})
                return [t.name for t in tools.tools], results, refused.value.message

    names, (described, found, liked, failed), message = anyio.run(session)
    assert "demo" in names and "describe" in names and "serve" not in names
    assert not described.is_error, (tmp_path / "server.err").read_text()
    assert isinstance(described.structured_content, dict)
    commands = {c["command"] for c in described.structured_content["commands"]}
    assert {tool_name(c.split()[1:]) for c in commands} - {"mcp", "serve"} == set(names)
    assert isinstance(found.structured_content, dict) and len(found.structured_content["hits"]) == 3
    assert (
        isinstance(liked.structured_content, dict) and len(liked.structured_content["items"]) == 4
    )
    assert failed.is_error and "does not exist" in failed.content[0].text  # type: ignore[union-attr]
    assert "seed" in message and "integer" in message
