"""`pinlab serve`: the HTTP service (search, similar pins, recommendations, web page)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from pinlab_models import Runtime
from pinlab_serve import ServeSettings, check_run, http_url, listen, run_server
from pinlab_tasks._app import JsonFlag, settings
from pinlab_tasks._output import stderr


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)


def serve(
    run: Annotated[Path, typer.Option("--run", help="Run directory (encoder, index, data).")],
    host: Annotated[
        str | None,
        typer.Option(help="Bind address; loopback unless you mean it [default: 127.0.0.1]."),
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="TCP port (0: any free one) [default: 8000].")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Worker processes, each with its own copy [default: 1].")
    ] = None,
    backend: Annotated[
        Literal["faiss", "numpy"] | None,
        typer.Option(help="Search backend; numpy is the brute-force baseline [default: faiss]."),
    ] = None,
    watch: Annotated[
        float | None,
        typer.Option(
            help="Swap in a rebuilt index when index.json changes (poll seconds) [default: 0]."
        ),
    ] = None,
    runtime: Annotated[
        Runtime | None,
        typer.Option(
            help="What embeds queries: torch (eager), onnx or onnx-int8 (ONNX Runtime on the "
            "run's export: `pinlab export onnx --run RUN [--int8]`) [default: torch]."
        ),
    ] = None,
    recommender: Annotated[
        str | None,
        typer.Option(
            help="The trained recommender to serve (RUN/recommender/NAME) [default: the best "
            "by eval.json's ndcg@10]."
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Serve a run over HTTP until interrupted: /v1 API, /docs, /metrics and a web page at /.

    Every setting may come from its PINLAB_SERVE_* variable (PINLAB_SERVE_HOST, ..._RUNTIME);
    an option overrides it. Upload limits, CORS origins and batching come from them alone.
    POST /v1/admin/reload is off unless PINLAB_SERVE_ADMIN_TOKEN is set (16+ characters; an
    environment variable, never an option, so it stays out of `ps`); then it needs
    `Authorization: Bearer TOKEN`. With --runtime onnx or onnx-int8, query images and texts
    are embedded by ONNX Runtime on the run's export, refused at start unless it was exported
    from the run's models.

    Writes: nothing (reads RUN; POST /v1/admin/reload re-reads RUN/index/).
    """
    # An option overrides its PINLAB_SERVE_* variable, which overrides the default.
    given: dict[str, Any] = {
        "host": host, "port": port, "workers": workers, "search_backend": backend,
        "watch_interval_s": watch, "runtime": runtime, "recommender": recommender,
    }  # fmt: skip
    resolved = ServeSettings(**{k: v for k, v in given.items() if v is not None})
    check_run(run, resolved.runtime, resolved.recommender)
    sock = listen(resolved.host, resolved.port)  # before the models load: a busy port at once
    resolved = resolved.model_copy(update={"port": sock.getsockname()[1]})  # 0: the one got
    url = http_url(resolved.host, sock)
    if as_json:
        print(json.dumps({"url": url, "run": str(run), **resolved.model_dump(mode="json")}))
    else:
        admin = "on (bearer token)" if resolved.admin_token is not None else "off"
        stderr.print(f"serving {run} at {url} (docs at {url}docs, admin {admin}); Ctrl-C stops")
    run_server(run, resolved, log_level=settings().log_level.lower(), sock=sock)
