"""`pinlab serve` for real: uvicorn on a loopback port in a child process."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from PIL import Image

from pinlab_serve import listen
from pinlab_tasks.cli import run
from pinlab_tasks.serve_bench import ENDPOINTS


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def serving(
    run_dir: Path, *extra: str, ready_streak: int = 1, env: dict[str, str] | None = None
) -> Iterator[str]:
    """A real `pinlab serve`, once `ready_streak` fresh connections in a row found it ready.

    With several workers each warms up on its own, so one ready answer is not enough.
    """
    port = free_port()
    cmd = [sys.executable, "-m", "pinlab_tasks", "serve", "--run", str(run_dir)]
    with subprocess.Popen(
        [*cmd, "--port", str(port), *extra],
        stderr=subprocess.PIPE,
        text=True,
        env=None if env is None else os.environ | env,
    ) as proc:
        url = f"http://127.0.0.1:{port}"
        try:
            deadline, streak = time.monotonic() + 120, 0
            while streak < ready_streak:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "the server never became ready"
                ready = False
                with contextlib.suppress(httpx.HTTPError):
                    ready = httpx.get(f"{url}/readyz", timeout=2).status_code == 200
                streak = streak + 1 if ready else 0
                if not ready:
                    time.sleep(0.1)
            yield url
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.mark.slow  # ~20 s: a fresh interpreter loads torch and MiniLM before it is ready
def test_serve_on_loopback(serve_run: Path) -> None:
    with serving(serve_run) as url:
        pins = httpx.get(f"{url}/v1/search/text", params={"q": "a red circle", "k": 3}).json()
        pin = pins["hits"][0]["pin_id"]
        similar = httpx.get(f"{url}/v1/pins/{pin}/similar", params={"k": 4})
        assert similar.status_code == 200
        assert len(similar.json()["hits"]) == 4
        buffer = io.BytesIO()
        Image.new("RGB", (50, 50), (10, 200, 10)).save(buffer, format="PNG")
        image = httpx.post(
            f"{url}/v1/search/image",
            files={"image": ("g.png", buffer.getvalue(), "image/png")},
        )
        assert image.status_code == 200 and len(image.json()["hits"]) == 10
        bad = httpx.get(f"{url}/v1/pins/{pin}/similar", params={"k": 5000})
        assert bad.status_code == 422 and "query.k" in bad.json()["error"]
        assert "pinlab_requests_total" in httpx.get(f"{url}/metrics").text
        assert "<title>pinlab</title>" in httpx.get(url).text


def test_serve_refuses_a_bad_run(tmp_path: Path) -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = run(["serve", "--run", str(tmp_path), "--json"])
    assert code == 2
    assert "not a pinlab run" in json.loads(out.getvalue())["error"]


@pytest.fixture
def never_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    """`pinlab serve` must refuse before it loads the run: loading fails the test."""
    import pinlab_serve._app

    def loaded(*_: object, **__: object) -> None:
        raise AssertionError("the run was loaded before the port was checked")

    monkeypatch.setattr(pinlab_serve._app, "create_app", loaded)


@pytest.mark.usefixtures("never_loaded")
def test_serve_refuses_a_busy_port_before_loading_anything(serve_run: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = run(["serve", "--run", str(serve_run), "--port", str(port), "--json"])
    assert code == 2
    assert json.loads(out.getvalue())["error"].startswith(
        f"cannot listen on 127.0.0.1 port {port}: "
    )
    with contextlib.closing(listen("127.0.0.1", 0)) as sock:  # 0: the port it got is known
        assert sock.getsockname()[1] > 0


@pytest.mark.usefixtures("never_loaded")
def test_serve_reads_its_settings_from_the_environment_under_its_options(
    serve_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PINLAB_SERVE_HOST, _PORT, _RUNTIME, ... were ignored: the options' defaults won."""

    def serve(*args: str) -> tuple[int, str]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = run(["serve", "--run", str(serve_run), *args, "--json"])
        return code, json.loads(out.getvalue())["error"]

    for name, value, message in [
        ("PINLAB_SERVE_HOST", "", "bad value for host (PINLAB_SERVE_HOST"),  # all interfaces
        ("PINLAB_SERVE_RUNTIME", "nope", "bad value for runtime (PINLAB_SERVE_RUNTIME"),
        ("PINLAB_SERVE_PORT", "70000", "bad value for port (PINLAB_SERVE_PORT"),
    ]:
        with monkeypatch.context() as env:
            env.setenv(name, value)
            code, error = serve()
            assert code == 2 and message in error, error
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        monkeypatch.setenv("PINLAB_SERVE_PORT", port)
        code, error = serve()  # the environment's port is the one tried
        assert code == 2 and error.startswith(f"cannot listen on 127.0.0.1 port {port}: ")
        monkeypatch.setenv("PINLAB_SERVE_HOST", "")
        code, error = serve("--host", "127.0.0.1")  # the option overrides the environment
        assert code == 2 and error.startswith(f"cannot listen on 127.0.0.1 port {port}: ")


@pytest.mark.usefixtures("never_loaded")
def test_serve_refuses_a_recommender_the_run_has_not_trained(serve_run: Path) -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = run(["serve", "--run", str(serve_run), "--recommender", "ease", "--json"])
    assert code == 2
    assert json.loads(out.getvalue())["error"] == (
        f"run {serve_run} has no trained recommender 'ease' (trained: itemknn, popularity); "
        f"train it with `pinlab train recommender --run {serve_run} --model ease`, or serve "
        "one of those"
    )


def test_serve_stops_with_exit_2_when_the_run_fails_to_load(
    serve_run: Path, tmp_path: Path
) -> None:
    """A server that can never be ready does not stay up: the reason, then exit 2."""
    import shutil

    broken = tmp_path / "run"
    shutil.copytree(serve_run, broken)
    (broken / "visual" / "encoder.pt").write_bytes(b"")  # torn, as a full disk leaves it
    out = io.StringIO()
    # A server that stays up would block the test: Ctrl-C it after a minute (exit 0, failing).
    watchdog = threading.Timer(60, os.kill, (os.getpid(), signal.SIGINT))
    watchdog.start()
    try:
        with contextlib.redirect_stdout(out):
            code = run(["serve", "--run", str(broken), "--port", "0", "--json"])
    finally:
        watchdog.cancel()
    assert code == 2
    started, failed = (json.loads(line) for line in out.getvalue().splitlines())
    assert started["port"] > 0 and started["url"] == f"http://127.0.0.1:{started['port']}/"
    assert failed["error"] == (
        f"cannot serve {broken}: PinlabModelError: {broken / 'visual' / 'encoder.pt'} is not a "
        "readable pinlab checkpoint (EOFError); retrain it"
    )


@pytest.mark.slow
@pytest.mark.parametrize("recommender", [None, "itemknn"])
def test_serve_with_two_workers(serve_run: Path, recommender: str | None) -> None:
    """Workers read their settings from the environment: the admin token must arrive whole
    (a JSON dump of the settings would hand them the masked '**********'), an unset setting
    unset (not the text "null"), a chosen recommender chosen."""
    token = "two-workers-admin-token"
    env = {"PINLAB_SERVE_ADMIN_TOKEN": token}
    chosen = () if recommender is None else ("--recommender", recommender)
    with serving(serve_run, "--workers", "2", *chosen, ready_streak=20, env=env) as url:
        for _ in range(4):
            users = httpx.get(f"{url}/v1/users", params={"limit": 2})
            assert users.status_code == 200
            user = users.json()["user_ids"][0]
            listed = httpx.get(f"{url}/v1/users/{user}/recommendations", params={"k": 2}).json()
            assert listed["model"] == (recommender or "popularity"), listed
            # Fresh connections, so both workers answer over the loop.
            reload = httpx.post(
                f"{url}/v1/admin/reload", headers={"authorization": f"Bearer {token}"}
            )
            assert reload.status_code == 200, reload.text
            assert httpx.post(f"{url}/v1/admin/reload").status_code == 401


def test_bench_serve_helpers() -> None:
    from pinlab_data import PinlabDataError
    from pinlab_tasks.serve_bench import check_targets, parse_levels, ratios

    assert parse_levels("1, 8,16") == (1, 8, 16)
    for bad in ("", "0", "a,b", "1,999"):
        with pytest.raises(PinlabDataError, match="comma-separated"):
            parse_levels(bad)
    row = {"p50_ms": 1.0, "p95_ms": 2.0, "errors": 0}
    results: list[dict[str, Any]] = [
        {"endpoint": "similar", "concurrency": 16, "qps": 600.0, "p99_ms": 20.0, **row},
        {"endpoint": "search_image", "concurrency": 8, "qps": 90.0, "p99_ms": 170.0, **row},
    ]
    checks = check_targets(results)
    assert checks["similar@16"]["met"] is True
    assert checks["search_image@8"]["met"] is False
    slower = [{**r, "qps": r["qps"] / 2, "p99_ms": r["p99_ms"] * 4} for r in results]
    assert ratios(results, slower)[0] == {
        "endpoint": "similar",
        "concurrency": 16,
        "qps_ratio": 2.0,
        "p99_ratio": 0.25,
    }


class _SlowHandler(http.server.BaseHTTPRequestHandler):
    """Answers every GET after SERVICE_S, one request at a time per connection."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the load generator's clients expect

    def do_GET(self) -> None:
        time.sleep(SERVICE_S)
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *_: Any) -> None:
        pass


SERVICE_S = 0.02


def test_open_loop_counts_the_queue_from_the_due_time() -> None:
    """Requests due every 10 ms at a one-connection server that takes 20 ms each: the queue
    grows, and latency from the due time shows it (the last waits at least ~300 ms), where a
    closed loop would report 20 ms a request."""
    from pinlab_tasks.serve_bench import drive_open

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"

        async def send(client: aiohttp.ClientSession, _: int) -> int:
            async with client.get("/") as response:
                await response.read()
                return response.status

        row = asyncio.run(drive_open(url, send, 100.0, 30, 10.0, 1))
    finally:
        server.shutdown()
        server.server_close()
    assert (row["requests"], row["errors"], row["rate"], row["connections"]) == (30, 0, 100.0, 1)
    # Request i is answered no sooner than (i + 1) * 20 ms, due at i * 10 ms.
    assert row["p99_ms"] >= 250 and row["p50_ms"] >= 100


@pytest.mark.slow
def test_bench_serve_command(serve_run: Path) -> None:
    """The real command at the smallest load: two servers (FAISS, NumPy), every endpoint."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = run(
            ["bench", "serve", "--run", str(serve_run), "--scale", "0.01", "--concurrency",
             "1,2", "--duration", "5", "--json"]
        )  # fmt: skip
    assert code == 0, out.getvalue()
    payload = json.loads(out.getvalue())
    for key in ("results", "baseline"):
        rows = payload[key]
        assert [(r["endpoint"], r["concurrency"]) for r in rows] == [
            (e, c)
            for e in ("similar", "search_image", "search_text", "recommendations", "session")
            for c in (1, 2)
        ]
        for r in rows:
            assert r["errors"] == 0 and r["qps"] > 0
            assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
    world = payload["world"]
    assert world["pins"] == 240 and world["index"] == "IDMap2,Flat"
    assert "sessions" not in world  # the run's itemknn reads histories
    assert world["encoder"]["arch"] == "cnn" and world["encoder"]["embedding_dim"] == 16
    assert world["threads"] == {"torch": 1, "faiss": 1, "blas": 1, "workers": 1}
    assert [r["endpoint"] for r in payload["open_loop"]] == list(ENDPOINTS)
    assert all(r["errors"] == 0 and r["rate"] > 0 for r in payload["open_loop"])
    photo = payload["photo_upload"]
    assert (photo["width"], photo["height"], photo["errors"]) == (4000, 3000, 0)
    assert photo["requests"] >= 3 and 0 < photo["p50_ms"] <= photo["p99_ms"]
    dpp = payload["dpp"]
    assert (dpp["k"], dpp["candidates"], dpp["errors"]) == (25, 200, 0)
    assert dpp["plain"]["requests"] == dpp["dpp"]["requests"] >= 20
    assert dpp["added_p99_ms"] == round(dpp["dpp"]["p99_ms"] - dpp["plain"]["p99_ms"], 2)
    assert payload["targets"]["dpp_added_p99"]["met"] == (dpp["added_p99_ms"] < 2.0)


def test_bench_serve_states_its_encoder_and_photo(serve_run: Path) -> None:
    from pinlab_tasks.runs import RunLayout
    from pinlab_tasks.serve_bench import encoder_of, photo_jpeg

    described = encoder_of(RunLayout(serve_run))
    assert {k: described[k] for k in ("arch", "widths", "embedding_dim", "image_size")} == {
        "arch": "cnn",
        "widths": [8, 16],
        "embedding_dim": 16,
        "image_size": 32,
    }
    assert described["model_id"].startswith("cnn-")
    data = photo_jpeg(0, (800, 600))
    assert data == photo_jpeg(0, (800, 600))  # seeded
    with Image.open(io.BytesIO(data)) as img:
        assert (img.format, img.size) == ("JPEG", (800, 600))
