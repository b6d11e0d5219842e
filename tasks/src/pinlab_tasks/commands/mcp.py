"""`pinlab mcp`: the CLI as a Model Context Protocol server, for agents."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pinlab_tasks._app import settings


def register(app: typer.Typer) -> None:
    app.command("mcp")(mcp_command)


def mcp_command(
    http: Annotated[
        str | None,
        typer.Option(
            "--http",
            metavar="HOST:PORT",
            help="Serve streamable HTTP at http://HOST:PORT/mcp instead of stdio.",
        ),
    ] = None,
    runs: Annotated[
        Path | None,
        typer.Option(
            "--runs",
            help="Where run directories (with run.json, 2 levels deep at most) are served "
            "from as resources. Default: the current directory.",
        ),
    ] = None,
) -> None:
    """Serve every pinlab command as an MCP tool, and run directories as resources.

    Over stdio by default. One tool per command of `pinlab describe`, named by its path with
    `_` (`pinlab data load movielens` is data_load_movielens), its input schema built from the
    command's parameters; a call runs the command with --json and returns its JSON document,
    a failure its one-line error. Not tools: `serve`, which never returns, and `mcp` itself.
    Each call runs in a process of its own with this server's settings (root options given
    before `mcp` included). With a progress token, a call reports every stage and epoch as
    progress notifications; cancelled, it is stopped (SIGTERM, so temporary files go) and every
    directory it had changed gets an INCOMPLETE.json naming the command and the files.
    Resources: RUN/run.json, RUN/report.html and `RUN/cards/*.md` as `pinlab://run/<path>`.
    No --json here: under stdio, stdout carries the protocol.

    Writes: nothing itself; each tool call writes what its command writes.
    """
    address = None if http is None else _host_port(http)
    from pinlab_tasks import mcp_server  # the MCP SDK loads for this command only

    server = mcp_server.build_server(runs or Path.cwd(), settings())
    if address is None:
        mcp_server.serve_stdio(server)
    else:
        mcp_server.serve_http(server, *address)


def _host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise typer.BadParameter(
            f"{value!r} is not HOST:PORT; e.g. 127.0.0.1:8765", param_hint="--http"
        )
    return host.strip("[]"), int(port)
