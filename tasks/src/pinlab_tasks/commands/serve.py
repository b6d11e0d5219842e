"""`pinlab serve`: the HTTP service (search, similar pins, recommendations, web page)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import typer

from pinlab_serve import ServeSettings, check_run, http_url, listen, run_server
from pinlab_tasks._app import JsonFlag, RuntimeOpt, settings
from pinlab_tasks._output import stderr


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)


def serve(
    run: Annotated[Path, typer.Option("--run", help="Run directory (encoder, index, data).")],
    host: Annotated[str, typer.Option(help="Bind address; loopback unless you mean it.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="TCP port (0: any free one).")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes, each with its own copy.")] = 1,
    backend: Annotated[
        Literal["faiss", "numpy"],
        typer.Option(help="Search backend; numpy is the brute-force baseline."),
    ] = "faiss",
    watch: Annotated[
        float, typer.Option(help="Swap in a rebuilt index when index.json changes (poll seconds).")
    ] = 0.0,
    runtime: RuntimeOpt = "torch",
    as_json: JsonFlag = False,
) -> None:
    """Serve a run over HTTP until interrupted: /v1 API, /docs, /metrics and a web page at /.

    Other settings (upload limits, CORS origins, batching) come from PINLAB_SERVE_* variables.
    POST /v1/admin/reload is off unless PINLAB_SERVE_ADMIN_TOKEN is set (16+ characters; an
    environment variable, never an option, so it stays out of `ps`); then it needs
    `Authorization: Bearer TOKEN`. With --runtime onnx or onnx-int8, query images and texts
    are embedded by ONNX Runtime on the run's export, refused at start unless it was exported
    from the run's models.

    Writes: nothing (reads RUN; POST /v1/admin/reload re-reads RUN/index/).
    """
    resolved = ServeSettings(
        host=host,
        port=port,
        workers=workers,
        search_backend=backend,
        watch_interval_s=watch,
        runtime=runtime,
    )
    check_run(run, runtime)
    sock = listen(host, port)  # before the models load: a busy port is refused at once
    resolved = resolved.model_copy(update={"port": sock.getsockname()[1]})  # 0: the one got
    url = http_url(host, sock)
    if as_json:
        print(json.dumps({"url": url, "run": str(run), **resolved.model_dump(mode="json")}))
    else:
        admin = "on (bearer token)" if resolved.admin_token is not None else "off"
        stderr.print(f"serving {run} at {url} (docs at {url}docs, admin {admin}); Ctrl-C stops")
    run_server(run, resolved, log_level=settings().log_level.lower(), sock=sock)
