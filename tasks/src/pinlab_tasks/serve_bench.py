"""`pinlab bench serve`: load-test the HTTP service on loopback, FAISS against brute force.

Builds a demo-like world (or reuses a run), starts `pinlab serve` in a child process with one
worker, exactly as a user would (its thread counts are `ServeSettings`' own), and drives each
endpoint with a bounded load (a fixed number of requests and a time cap) from an aiohttp
client at several concurrency levels (closed loop), then at a fixed arrival rate (open loop,
latency counted from each request's due time, so a queue cannot hide). The same load runs again
against the service with `--backend numpy`, the plain-NumPy brute-force baseline. One
real-size photo (a 12-megapixel JPEG, as phones take them) is also uploaded a few times, one
at a time, and its latency reported on its own: the load test's queries are small PNGs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import numpy as np
from PIL import Image
from rich.table import Table

from pinlab_data import PinlabDataError, SynthConfig, load_dataset, read_json_object
from pinlab_models import CNNEncoder, EncoderConfig
from pinlab_serve import RunFiles, ServeSettings
from pinlab_tasks import queries, recsys, visual, workflows
from pinlab_tasks._output import stdout
from pinlab_tasks.runs import RunLayout

ENDPOINTS = ("similar", "search_image", "search_text", "recommendations", "session")
TARGETS = {
    "similar": {"concurrency": 16, "p99_ms": 25.0, "qps": 500.0},
    "search_image": {"concurrency": 8, "p99_ms": 150.0},
    "recommendations": {"concurrency": 16, "p99_ms": 25.0},
    "session": {"concurrency": 8, "p99_ms": 20.0},
}
# Requests per (endpoint, concurrency): enough for a stable p99, bounded by `duration`.
REQUESTS = {
    "similar": 4000,
    "search_image": 800,
    "search_text": 600,
    "recommendations": 2000,
    "session": 2000,
}
SESSION_LENGTH = 50
"""Pins in each session request's history (issue 12: a history of 50 ids, k=10)."""
PHOTO_SIZE = (4000, 3000)
"""A 12-megapixel photo, the size phone cameras take."""
PHOTO_REQUESTS = 20
OPEN_RATES = {
    "similar": 500.0,
    "search_image": 50.0,
    "search_text": 100.0,
    "recommendations": 500.0,
    "session": 300.0,
}
"""Requests per second of the open-loop run (the closed-loop targets' throughput)."""
OPEN_CONNECTIONS = 32
ENCODER = EncoderConfig(epochs=3, patience=2)
"""The default encoder's architecture (what `pinlab demo` serves); fewer epochs only, which
change its weights, not what a query costs."""
RECOMMENDERS: dict[str, dict[str, Any]] = {
    "popularity": {},
    "mf": {"epochs": 3, "dim": 32},
    "sasrec": {"epochs": 3},  # what session requests get: it reads a history
}

Send = Callable[[aiohttp.ClientSession, int], Awaitable[int]]
"""Sends request i on a one-connection session; returns the status once the body is read."""


def build_world(out: Path, pins: int, seed: int) -> RunLayout:
    """A demo-like run: synthetic world, a briefly trained encoder, recommenders, index."""
    run = RunLayout(out)
    config = SynthConfig(num_pins=pins, num_users=max(200, pins // 10), seed=seed)
    run.log_step("bench serve world", {"synth": config.model_dump(), "seed": seed})
    workflows.synth(run.data, config, overwrite=True)
    visual.train_visual(run, run.data, ENCODER, seed, "cpu", progress=False)
    for name, overrides in RECOMMENDERS.items():
        recsys.train_recommender(run, run.data, name, overrides, seed, "cpu", progress=False)
    recsys.eval_recommenders(run)
    queries.build_index(run)
    return run


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def serving(run: Path, backend: str, log: Path) -> Iterator[str]:
    """`pinlab serve` in a child process (one worker) until the block ends; yields its URL.

    The command a user runs, with no thread options of its own: the server sets its FAISS,
    PyTorch and BLAS threads from `ServeSettings`, so what is measured is what is served.
    """
    port = _free_port()
    cmd = [sys.executable, "-m", "pinlab_tasks", "--log-level", "WARNING", "serve"]
    cmd += ["--run", str(run), "--port", str(port), "--backend", backend]
    with (
        log.open("a") as sink,
        subprocess.Popen(cmd, stdout=sink, stderr=sink) as proc,
    ):
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 300
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"pinlab serve exited with {proc.returncode}; see {log}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"pinlab serve was not ready within 300 s; see {log}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                time.sleep(0.2)
            yield url
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@dataclass(frozen=True)
class Queries:
    pin_ids: list[int]
    user_ids: list[int]
    images: list[bytes]
    texts: list[str]
    histories: list[list[int]]
    """Session histories of `SESSION_LENGTH` pins; empty when the run serves no sessions."""


def photo_jpeg(seed: int, size: tuple[int, int] = PHOTO_SIZE) -> bytes:
    """A photo-like JPEG: smooth colour regions plus sensor-like noise (about 4 MB at 12 MP)."""
    rng = np.random.default_rng(seed)
    width, height = size
    coarse = rng.integers(0, 256, (height // 50, width // 50, 3), dtype=np.uint8)
    smooth = Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC)
    noise = rng.normal(0, 8, (height, width, 1)).astype(np.int16)
    pixels = (np.asarray(smooth, dtype=np.int16) + noise).clip(0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def time_photo_upload(url: str, photo: bytes, requests: int, duration: float) -> dict[str, Any]:
    """`requests` uploads of one real-size photo, one at a time, through /v1/search/image."""

    def send(client: aiohttp.ClientSession, _: int) -> Awaitable[int]:
        return _upload(client, "photo.jpg", photo, "image/jpeg")

    row = asyncio.run(drive(url, send, 1, requests, duration))
    with Image.open(io.BytesIO(photo)) as img:
        width, height = img.size
    return {
        "width": width,
        "height": height,
        "megapixels": round(width * height / 1e6, 1),
        "bytes": len(photo),
        **row,
    }


DPP_K = 25
DPP_TARGET_MS = 2.0
"""Issue 11: DPP over the candidate pool down to k=25 adds under 2 ms at p99."""
DPP_REQUESTS = 400


def time_dpp(url: str, user_ids: list[int], requests: int, duration: float) -> dict[str, Any]:
    """What a DPP re-rank adds to a recommendation request (k=25 from the served candidate
    pool, `PINLAB_SERVE_CANDIDATES`, 200 by default): plain and `diversify=dpp` requests for
    the same users, alternated one at a time on one connection so drift hits both alike."""
    plain: dict[str, Any] = {"k": DPP_K}
    diverse: dict[str, Any] = {"k": DPP_K, "diversify": "dpp", "tradeoff": 0.5}

    async def pairs() -> tuple[list[float], list[float], int]:
        (client,) = _clients(url, 1)
        times: tuple[list[float], list[float]] = ([], [])
        errors = 0
        try:
            deadline = time.perf_counter() + duration
            for i in range(requests + 1):  # request 0 opens the connection, not measured
                if time.perf_counter() > deadline:
                    break
                path = f"/v1/users/{user_ids[i % len(user_ids)]}/recommendations"
                for params, out in zip((plain, diverse), times, strict=True):
                    began = time.perf_counter()
                    try:
                        ok = await _get(client, path, params) == 200
                    except (aiohttp.ClientError, TimeoutError):
                        ok = False
                    if i:
                        out.append(time.perf_counter() - began)
                        errors += not ok
        finally:
            await client.close()
        return times[0], times[1], errors

    without, with_dpp, errors = asyncio.run(pairs())
    elapsed = sum(without) + sum(with_dpp)
    rows = {
        "plain": _summary(without, 0, sum(without)),
        "dpp": _summary(with_dpp, 0, sum(with_dpp)),
    }
    added = {
        f"added_{q}_ms": round(rows["dpp"][f"{q}_ms"] - rows["plain"][f"{q}_ms"], 2)
        for q in ("p50", "p99")
    }
    return {
        "k": DPP_K,
        "candidates": ServeSettings().candidates,
        "tradeoff": diverse["tradeoff"],
        "seconds": round(elapsed, 2),
        "errors": errors,
        **rows,
        **added,
        "target_added_p99_ms": DPP_TARGET_MS,
        "met": added["added_p99_ms"] < DPP_TARGET_MS and errors == 0,
    }


def encoder_of(run: RunLayout) -> dict[str, Any]:
    """The image encoder the service embeds uploads with, as its checkpoint describes it."""
    encoder = CNNEncoder.load(run.encoder)
    config = encoder.config
    return {
        "model_id": encoder.model_id,
        "arch": config.arch,
        "widths": list(config.widths) if config.arch == "cnn" else None,
        "embedding_dim": config.embedding_dim,
        "image_size": config.image_size,
    }


def sample_queries(run: RunLayout, seed: int, n: int = 256) -> Queries:
    ds = load_dataset(run.data_dir())
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(ds.pin_ids()), size=min(n, len(ds.pin_ids())), replace=False)
    assert ds.images is not None
    images = []
    for row in rows[:64]:
        image_row = ds.pins.column("image_row")[int(row)].as_py()
        buffer = io.BytesIO()
        Image.fromarray(np.asarray(ds.images[image_row])).save(buffer, format="PNG")
        images.append(buffer.getvalue())
    captions = ds.pins.column("caption").to_pylist()
    users = ds.user_ids()
    pins = ds.pin_ids()
    length = min(SESSION_LENGTH, len(pins))
    return Queries(
        pin_ids=[int(p) for p in pins[rows]],
        user_ids=[int(u) for u in users[rng.choice(len(users), size=min(n, len(users)))]],
        images=images,
        texts=[captions[int(r)] for r in rows],
        histories=[
            [int(p) for p in pins[rng.choice(len(pins), length, replace=False)]] for _ in range(64)
        ],
    )


def serves_sessions(url: str, queries: Queries) -> str | None:
    """None when the run answers session requests; else why not (its error)."""
    answer = httpx.post(
        f"{url}/v1/recommendations/session", json={"history": queries.histories[0]}, timeout=30
    )
    return None if answer.status_code == 200 else str(answer.json().get("error"))


async def _get(client: aiohttp.ClientSession, path: str, params: dict[str, Any]) -> int:
    async with client.get(path, params=params) as response:
        await response.read()
        return response.status


async def _post(client: aiohttp.ClientSession, path: str, body: dict[str, Any]) -> int:
    async with client.post(path, json=body) as response:
        await response.read()
        return response.status


async def _upload(client: aiohttp.ClientSession, name: str, data: bytes, kind: str) -> int:
    form = aiohttp.FormData()
    # A file object, not bytes: aiohttp warns that a large bytes body may block the loop.
    form.add_field("image", io.BytesIO(data), filename=name, content_type=kind)
    async with client.post("/v1/search/image", data=form) as response:
        await response.read()
        return response.status


def senders(q: Queries) -> dict[str, Send]:
    def similar(client: aiohttp.ClientSession, i: int) -> Awaitable[int]:
        return _get(client, f"/v1/pins/{q.pin_ids[i % len(q.pin_ids)]}/similar", {"k": 10})

    def search_image(client: aiohttp.ClientSession, i: int) -> Awaitable[int]:
        return _upload(client, "q.png", q.images[i % len(q.images)], "image/png")

    def search_text(client: aiohttp.ClientSession, i: int) -> Awaitable[int]:
        return _get(client, "/v1/search/text", {"q": q.texts[i % len(q.texts)], "k": 10})

    def recommendations(client: aiohttp.ClientSession, i: int) -> Awaitable[int]:
        user = q.user_ids[i % len(q.user_ids)]
        return _get(client, f"/v1/users/{user}/recommendations", {"k": 10})

    def session(client: aiohttp.ClientSession, i: int) -> Awaitable[int]:
        history = q.histories[i % len(q.histories)]
        return _post(client, "/v1/recommendations/session", {"history": history, "k": 10})

    sending: dict[str, Send] = {
        "similar": similar,
        "search_image": search_image,
        "search_text": search_text,
        "recommendations": recommendations,
    }
    if q.histories:
        sending["session"] = session
    return sending


def _clients(url: str, n: int) -> list[aiohttp.ClientSession]:
    """`n` sessions of one keep-alive connection each (aiohttp sets TCP_NODELAY).

    aiohttp, not httpx: the client shares the server's two cores, and httpx's async client
    spent about 1.4 ms of CPU per request against aiohttp's 0.2 ms, more than the server
    itself (0.4-0.8 ms), so the bench measured its own load generator.
    """
    return [
        aiohttp.ClientSession(
            base_url=url,
            connector=aiohttp.TCPConnector(limit=1),
            timeout=aiohttp.ClientTimeout(total=30),
        )
        for _ in range(n)
    ]


async def _call(send: Send, client: aiohttp.ClientSession, i: int) -> bool:
    """Send request `i`; True when it was answered 200."""
    try:
        return await send(client, i) == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


def _summary(latencies: list[float], errors: int, elapsed: float) -> dict[str, Any]:
    ms = np.asarray(latencies) * 1000
    return {
        "requests": len(latencies),
        "seconds": round(elapsed, 2),
        "qps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p95_ms": round(float(np.percentile(ms, 95)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "errors": errors,
    }


async def drive(
    url: str, send: Send, concurrency: int, requests: int, duration: float
) -> dict[str, Any]:
    """Closed loop: `requests` requests (or as many as fit in `duration` s) from
    `concurrency` workers, each sending its next request when the last is answered."""
    clients = _clients(url, concurrency)
    latencies: list[float] = []
    errors = 0
    issued = 0
    try:
        for i, client in enumerate(clients):  # open the connections; not measured
            await send(client, i)
        start = time.perf_counter()
        deadline = start + duration

        async def worker(client: aiohttp.ClientSession) -> None:
            nonlocal issued, errors
            while issued < requests and time.perf_counter() < deadline:
                i = issued
                issued += 1
                began = time.perf_counter()
                ok = await _call(send, client, i)
                latencies.append(time.perf_counter() - began)
                errors += not ok

        await asyncio.gather(*(worker(c) for c in clients))
        elapsed = time.perf_counter() - start
    finally:
        await asyncio.gather(*(c.close() for c in clients))
    return {"concurrency": concurrency, **_summary(latencies, errors, elapsed)}


async def drive_open(
    url: str, send: Send, rate: float, requests: int, duration: float, connections: int
) -> dict[str, Any]:
    """Open loop: request i is due at `i / rate` s whether or not earlier ones were answered,
    and its latency counts from that due time. A closed loop slows its sending when the
    server slows, which hides the queue; here a server that falls behind shows it."""
    clients = _clients(url, connections)
    idle: asyncio.Queue[aiohttp.ClientSession] = asyncio.Queue()
    latencies: list[float] = []
    errors = 0

    async def one(i: int, due: float) -> None:
        nonlocal errors
        client = await idle.get()  # waiting for a free connection is queueing too
        try:
            ok = await _call(send, client, i)
        finally:
            idle.put_nowait(client)
        latencies.append(time.perf_counter() - due)
        errors += not ok

    try:
        for i, client in enumerate(clients):  # open the connections; not measured
            await send(client, i)
            idle.put_nowait(client)
        count = max(1, min(requests, int(rate * duration)))
        start = time.perf_counter()
        pending = []
        for i in range(count):
            due = start + i / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            pending.append(asyncio.create_task(one(i, due)))
        await asyncio.gather(*pending)
        elapsed = time.perf_counter() - start
    finally:
        await asyncio.gather(*(c.close() for c in clients))
    return {"rate": rate, "connections": connections, **_summary(latencies, errors, elapsed)}


def load_test(
    url: str, queries: Queries, levels: tuple[int, ...], scale: float, duration: float
) -> list[dict[str, Any]]:
    rows = []
    for endpoint, send in senders(queries).items():
        for concurrency in levels:
            requests = max(concurrency, int(REQUESTS[endpoint] * scale))
            row = asyncio.run(drive(url, send, concurrency, requests, duration))
            rows.append({"endpoint": endpoint, **row})
    return rows


def open_loop_test(
    url: str, queries: Queries, scale: float, duration: float
) -> list[dict[str, Any]]:
    """Each endpoint at its `OPEN_RATES` arrival rate for up to `duration` seconds."""
    rows = []
    for endpoint, send in senders(queries).items():
        requests = max(1, int(REQUESTS[endpoint] * scale))
        rate = OPEN_RATES[endpoint]
        row = asyncio.run(drive_open(url, send, rate, requests, duration, OPEN_CONNECTIONS))
        rows.append({"endpoint": endpoint, **row})
    return rows


def check_targets(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Each stated target, the measured value and whether it is met."""
    checks: dict[str, Any] = {}
    for endpoint, target in TARGETS.items():
        row = next(
            (
                r
                for r in results
                if r["endpoint"] == endpoint and r["concurrency"] == target["concurrency"]
            ),
            None,
        )
        if row is None:
            continue
        name = f"{endpoint}@{int(target['concurrency'])}"
        checks[name] = {
            "p99_ms": row["p99_ms"],
            "p99_target_ms": target["p99_ms"],
            "met": row["p99_ms"] < target["p99_ms"]
            and row["qps"] >= target.get("qps", 0.0)
            and row["errors"] == 0,
        }
        if "qps" in target:
            checks[name] |= {"qps": row["qps"], "qps_target": target["qps"]}
    checks["zero_errors"] = {"met": all(r["errors"] == 0 for r in results)}
    return checks


def bench_serve(
    pins: int,
    levels: tuple[int, ...],
    scale: float,
    duration: float,
    seed: int,
    run_dir: Path | None = None,
    say: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Build (or reuse) a world, then load-test the service with FAISS and with NumPy."""
    # httpx (the readiness probe) logs every request at INFO.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="pinlab-bench-serve-") as tmp:
        if run_dir is None:
            say(f"building a world of {pins:,} pins (encoder, recommenders, index)")
            started = time.perf_counter()
            run = build_world(Path(tmp) / "run", pins, seed)
            build_seconds: float | None = round(time.perf_counter() - started, 1)
        else:
            RunFiles(run_dir).check()  # what `pinlab serve` refuses, refused before any work
            run, build_seconds = RunLayout(run_dir), None
        index = read_json_object(run.index / "index.json", "rebuild it with `pinlab index build`")
        queries = sample_queries(run, seed)
        photo = photo_jpeg(seed)
        log = Path(tmp) / "serve.log"
        served = ServeSettings()  # what `pinlab serve` runs with (PINLAB_SERVE_* included)
        payload: dict[str, Any] = {
            "world": {
                "pins": index["count"],
                "index": index["kind"],
                "recall_at_10": index.get("recall_at_10"),
                "encoder": encoder_of(run),
                "build_seconds": build_seconds,
                "run": str(run_dir) if run_dir is not None else None,
                "cpu_cores": os.cpu_count(),
                "threads": {
                    "torch": served.torch_threads,
                    "faiss": served.search_threads,
                    "blas": served.blas_threads,
                    "workers": served.workers,
                },
                # Other processes share the cores: the load average says how much.
                "load_average_before": round(os.getloadavg()[0], 2),
            },
        }
        for key, backend in (("results", "faiss"), ("baseline", "numpy")):
            say(f"load-testing the service with {backend} search")
            with serving(run.root, backend, log) as url:
                if key == "results" and (why := serves_sessions(url, queries)) is not None:
                    say(f"no session requests: {why}")
                    payload["world"]["sessions"] = why
                    queries = dataclasses.replace(queries, histories=[])
                payload[key] = load_test(url, queries, levels, scale, duration)
                if backend == "faiss":
                    say("open loop: requests at a fixed arrival rate")
                    payload["open_loop"] = open_loop_test(url, queries, scale, duration)
                    say("timing real-size photo uploads")
                    requests = max(3, int(PHOTO_REQUESTS * scale))
                    payload["photo_upload"] = time_photo_upload(url, photo, requests, duration)
                    if queries.user_ids:
                        say(f"timing a DPP re-rank to k={DPP_K} on recommendations")
                        requests = max(20, int(DPP_REQUESTS * scale))
                        payload["dpp"] = time_dpp(url, queries.user_ids, requests, duration)
        payload["world"]["load_average_after"] = round(os.getloadavg()[0], 2)
        payload["targets"] = check_targets(payload["results"])
        if "dpp" in payload:
            payload["targets"]["dpp_added_p99"] = {
                key: payload["dpp"][key] for key in ("added_p99_ms", "target_added_p99_ms", "met")
            }
        payload["baseline_ratio"] = ratios(payload["results"], payload["baseline"])
    return payload


def ratios(results: list[dict[str, Any]], baseline: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """FAISS against brute force per row: QPS ratio (>1: FAISS faster), p99 ratio (<1)."""
    out = []
    for got, base in zip(results, baseline, strict=True):
        out.append(
            {
                "endpoint": got["endpoint"],
                "concurrency": got["concurrency"],
                "qps_ratio": round(got["qps"] / base["qps"], 2) if base["qps"] else None,
                "p99_ratio": round(got["p99_ms"] / base["p99_ms"], 2) if base["p99_ms"] else None,
            }
        )
    return out


def parse_levels(text: str) -> tuple[int, ...]:
    """'1,8,16' -> (1, 8, 16); each level a positive integer up to 256."""
    try:
        levels = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        levels = ()
    if not levels or any(not 1 <= level <= 256 for level in levels):
        raise PinlabDataError(
            f"--concurrency takes comma-separated integers in 1..256, like 1,8,16; got {text!r}"
        )
    return levels


def render_serve(payload: dict[str, Any]) -> None:
    world = payload["world"]
    encoder, threads = world["encoder"], world["threads"]
    stdout.print(
        f"{world['pins']:,} pins, index {world['index']} (recall@10 {world['recall_at_10']}), "
        f"encoder {encoder['arch']} {encoder['widths']} -> {encoder['embedding_dim']}-d "
        f"({encoder['image_size']}px), {world['cpu_cores']} CPU cores, one worker with "
        f"{threads['torch']} torch / {threads['faiss']} FAISS / {threads['blas']} BLAS threads"
    )
    for key, title in (("results", "FAISS"), ("baseline", "NumPy brute force (baseline)")):
        table = Table(title=title, title_justify="left")
        columns = ("endpoint", "concurrency", "qps", "p50_ms", "p95_ms", "p99_ms", "errors")
        for column in columns:
            table.add_column(column, justify="left" if column == "endpoint" else "right")
        for row in payload[key]:
            table.add_row(*(str(row[c]) for c in columns))
        stdout.print(table)
    table = Table(title="FAISS, open loop (fixed arrival rate)", title_justify="left")
    columns = ("endpoint", "rate", "qps", "p50_ms", "p95_ms", "p99_ms", "errors")
    for column in columns:
        table.add_column(column, justify="left" if column == "endpoint" else "right")
    for row in payload["open_loop"]:
        table.add_row(*(str(row[c]) for c in columns))
    stdout.print(table)
    photo = payload["photo_upload"]
    stdout.print(
        f"real-size photo upload ({photo['width']}x{photo['height']} JPEG, "
        f"{photo['bytes'] / 2**20:.1f} MiB, one at a time, {photo['requests']} requests): "
        f"p50 {photo['p50_ms']} ms, p95 {photo['p95_ms']} ms, errors {photo['errors']}"
    )
    if "dpp" in payload:
        dpp = payload["dpp"]
        stdout.print(
            f"DPP re-rank, {dpp['candidates']} candidates to k={dpp['k']} (trade-off "
            f"{dpp['tradeoff']}), one request at a time, {dpp['plain']['requests']} pairs: "
            f"p50 {dpp['plain']['p50_ms']} -> {dpp['dpp']['p50_ms']} ms, p99 "
            f"{dpp['plain']['p99_ms']} -> {dpp['dpp']['p99_ms']} ms (adds {dpp['added_p99_ms']})"
        )
    for name, check in payload["targets"].items():
        mark = "[green]met[/]" if check["met"] else "[red]not met[/]"
        detail = ", ".join(f"{k} {v}" for k, v in check.items() if k != "met")
        stdout.print(f"target {name}: {mark} {detail}")
