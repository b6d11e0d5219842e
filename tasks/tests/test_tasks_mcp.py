"""`pinlab mcp` through the MCP SDK's own clients: in process, and over stdio as a subprocess."""

from __future__ import annotations

import json
import os
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
from pinlab_tasks.mcp_server import build_server, command_argv, command_tools, tool_name

T = TypeVar("T")

# What differs between two runs of the same seeded demo: where, when, how long, how much memory.
VOLATILE = {"run_dir", "seconds", "train_seconds", "peak_rss_mb", "created"}


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


@pytest.fixture(scope="module")
def mcp_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The tiny demo run once through the `demo` tool: the server's root and the result."""
    root = tmp_path_factory.mktemp("mcp")
    result = call(root, "demo", {"preset": "tiny", "out": str(root / "run"), "seed": 1})
    assert not result.is_error, result.content
    assert isinstance(result.structured_content, dict)
    return root, result.structured_content


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
    assert set(recommend["required"]) == {"run", "user"}
    assert recommend["properties"]["k"]["default"] == 10
    card = tools["card"].tool.input_schema["properties"]
    assert card["run"]["type"] == "string"
    assert card["user_group"]["type"] == "array" and card["user_group"]["items"]["type"] == "string"
    dedupe = tools["data_dedupe"].tool.input_schema["properties"]
    assert dedupe["min_cosine"]["type"] == "number"
    assert "set" in tools["train_encoder"].tool.input_schema["properties"]  # not `set_`


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
    mcp_demo: tuple[Path, dict[str, Any]], tiny_demo: dict[str, Any]
) -> None:
    root, result = mcp_demo
    assert result["run_dir"] == str(root / "run")
    assert (root / "run" / "run.json").is_file()
    assert stable(result) == stable(tiny_demo)  # metrics, index file, chosen model, hits


def test_search_and_recommend_tools_on_the_demo_run(
    mcp_demo: tuple[Path, dict[str, Any]],
) -> None:
    root, result = mcp_demo
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


def test_run_files_are_resources(mcp_demo: tuple[Path, dict[str, Any]]) -> None:
    root, _ = mcp_demo

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


def test_bad_arguments_and_unknown_tools_are_protocol_errors(tmp_path: Path) -> None:
    message = refused_call(tmp_path, "demo", {"seed": "one"})
    assert "seed" in message and "integer" in message
    message = refused_call(tmp_path, "demo", {"preset": "huge"})
    assert "preset" in message and '"tiny", "default"' in message
    message = refused_call(tmp_path, "demo", {"sede": 1})
    assert "unknown argument sede" in message and "seed" in message
    assert "missing required argument run" in refused_call(tmp_path, "card", {})
    assert "user_group[0]" in refused_call(tmp_path, "card", {"run": "r", "user_group": [1]})
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
    # A usage error Typer reports itself (no JSON) still comes back as its one line.
    result = call(tmp_path, "runs_list", {"limit": 0})
    assert result.is_error
    assert "Invalid value for '--limit'" in result.content[0].text  # type: ignore[union-attr]


def test_stdio_subprocess_lists_tools_and_runs_describe(tmp_path: Path) -> None:
    env = {"PINLAB_TRACKING": "off", "OMP_WAIT_POLICY": "PASSIVE"}
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "pinlab_tasks", "mcp", "--runs", str(tmp_path)],
        env=env | {k: os.environ[k] for k in ("PINLAB_THREADS",) if k in os.environ},
        cwd=tmp_path,
    )

    async def session() -> tuple[list[str], types.CallToolResult]:
        with (tmp_path / "server.err").open("w") as errlog:
            async with (
                stdio_client(params, errlog=errlog) as (read, write),
                ClientSession(read, write) as client,
            ):
                await client.initialize()
                tools = await client.list_tools()
                return [t.name for t in tools.tools], await client.call_tool("describe", {})

    names, described = anyio.run(session)
    assert "demo" in names and "describe" in names and "serve" not in names
    assert not described.is_error, (tmp_path / "server.err").read_text()
    assert isinstance(described.structured_content, dict)
    commands = {c["command"] for c in described.structured_content["commands"]}
    assert {tool_name(c.split()[1:]) for c in commands} - {"mcp", "serve"} == set(names)
