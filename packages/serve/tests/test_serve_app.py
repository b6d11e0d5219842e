"""The HTTP service through Starlette's TestClient: every endpoint and every bad input."""

from __future__ import annotations

import asyncio
import io
import json
import re
import shutil
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from conftest import wait_ready
from pinlab_data import load_dataset
from pinlab_serve import Diversify, PinIndex, PinlabServeError, ServeSettings
from pinlab_serve._app import STAGES, check_run, create_app
from pinlab_serve._service import PinService

TOKEN = "s3cret-admin-token-for-tests"


@pytest.fixture(scope="module")
def client(serve_run: Path) -> Iterator[TestClient]:
    with TestClient(create_app(serve_run, ServeSettings())) as client:
        wait_ready(client)
        yield client


@pytest.fixture(scope="module")
def pins(serve_run: Path) -> dict[str, Any]:
    ds = load_dataset(serve_run / "data")
    rows = ds.pins.to_pylist()
    return {"ids": [r["pin_id"] for r in rows], "rows": {r["pin_id"]: r for r in rows}, "ds": ds}


def png(image: np.ndarray | None = None, size: tuple[int, int] = (40, 30)) -> bytes:
    img = Image.fromarray(image) if image is not None else Image.new("RGB", size, (200, 30, 30))
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def upload(data: bytes, content_type: str = "image/png") -> dict[str, Any]:
    return {"files": {"image": ("query.png", data, content_type)}}


def assert_error(response: Any, status: int, match: str) -> None:
    """`response`: an httpx response (TestClient may hand an httpx2 one; same surface)."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"}
    assert match in body["error"], body["error"]
    assert "Traceback" not in response.text


def test_health_ready_docs_and_page(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "ready": True, "detail": None}
    assert client.get("/readyz").json()["status"] == "ready"
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    for path in (
        "/v1/search/image",
        "/v1/search/text",
        "/v1/pins/{pin_id}/similar",
        "/v1/users/{user_id}/recommendations",
        "/v1/pins/{pin_id}",
        "/v1/pins/{pin_id}/image",
        "/v1/admin/reload",
    ):
        assert path in paths
    assert "multipart/form-data" in paths["/v1/search/image"]["post"]["requestBody"]["content"]
    # The ranked endpoints read their query string as one model; the docs still list each key.
    ranking = ["k", "category", "exclude", "diversify", "tradeoff", "target", "diversity"]
    for path, method, first in (
        ("/v1/search/image", "post", []),
        ("/v1/search/text", "get", []),
        ("/v1/pins/{pin_id}/similar", "get", ["pin_id"]),
        ("/v1/users/{user_id}/recommendations", "get", ["user_id"]),
    ):
        params = paths[path][method]["parameters"]
        names = [p["name"] for p in params]
        assert names == first + ranking + (["q"] if path == "/v1/search/text" else []), names
        k = next(p for p in params if p["name"] == "k")
        assert k["schema"]["minimum"] == 1 and k["schema"]["maximum"] == 1000
        assert next(p for p in params if p["name"] == "exclude")["schema"]["type"] == "array"
    page = client.get("/")
    assert page.headers["content-type"].startswith("text/html")
    for element in ('id="q"', 'id="image"', 'id="user"', 'id="results"'):
        assert element in page.text


def test_similar_matches_the_index(
    client: TestClient, serve_run: Path, pins: dict[str, Any]
) -> None:
    pin = pins["ids"][5]
    body = client.get(f"/v1/pins/{pin}/similar", params={"k": 7}).json()
    want = PinIndex.load(serve_run / "index").similar(pin, 7)
    assert [h["pin_id"] for h in body["hits"]] == [h.pin_id for h in want]
    np.testing.assert_allclose([h["score"] for h in body["hits"]], [h.score for h in want])
    assert body["mode"] == "similar" and body["index"] == "IDMap2,Flat"
    first = body["hits"][0]
    row = pins["rows"][first["pin_id"]]
    assert first["caption"] == row["caption"] and first["category"] == row["category"]
    assert first["image_url"] == f"/v1/pins/{first['pin_id']}/image"


def test_filters(client: TestClient, pins: dict[str, Any]) -> None:
    pin = pins["ids"][0]
    category = pins["rows"][pins["ids"][1]]["category"]
    body = client.get(f"/v1/pins/{pin}/similar", params={"k": 20, "category": category}).json()
    assert len(body["hits"]) == 20
    assert {h["category"] for h in body["hits"]} == {category}
    plain = client.get(f"/v1/pins/{pin}/similar", params={"k": 5}).json()["hits"]
    dropped = [plain[0]["pin_id"], plain[2]["pin_id"]]
    body = client.get(f"/v1/pins/{pin}/similar", params={"k": 5, "exclude": dropped}).json()
    ids = [h["pin_id"] for h in body["hits"]]
    assert not set(ids) & set(dropped) and len(ids) == 5
    assert ids[:2] == [plain[1]["pin_id"], plain[3]["pin_id"]]


def test_diversity_spreads_categories(client: TestClient, pins: dict[str, Any]) -> None:
    pin = pins["ids"][3]

    def categories(diversity: float) -> int:
        params = {"k": 8, "diversity": diversity}
        hits = client.get(f"/v1/pins/{pin}/similar", params=params).json()["hits"]
        assert len(hits) == 8
        return len({h["category"] for h in hits})

    assert categories(1.0) >= categories(0.0)
    assert categories(1.0) == 4  # every category of the world appears


def test_search_image_finds_the_pin(client: TestClient, pins: dict[str, Any]) -> None:
    ds = pins["ds"]
    pin = pins["ids"][10]
    row = pins["rows"][pin]["image_row"]
    response = client.post("/v1/search/image", params={"k": 3}, **upload(png(ds.images[row])))
    body = response.json()
    assert response.status_code == 200, body
    assert body["mode"] == "image"
    assert body["hits"][0]["pin_id"] == pin
    assert body["hits"][0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_search_text(client: TestClient, pins: dict[str, Any]) -> None:
    caption = pins["rows"][pins["ids"][7]]["caption"]
    body = client.get("/v1/search/text", params={"q": caption, "k": 5}).json()
    assert body["mode"] == "caption"
    assert body["model_id"] == "sentence-transformers/all-MiniLM-L6-v2"
    # The exact caption embeds to the same vector as the pins that carry it.
    assert body["hits"][0]["caption"] == caption
    assert body["hits"][0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_recommendations_exclude_seen(client: TestClient, pins: dict[str, Any]) -> None:
    ds = pins["ds"]
    user = int(ds.user_ids()[2])
    interactions = ds.interactions.to_pylist()
    seen = {r["pin_id"] for r in interactions if r["user_id"] == user}
    body = client.get(f"/v1/users/{user}/recommendations", params={"k": 15}).json()
    assert body["model"] == "popularity"
    assert body["seen_excluded"] == len(seen)
    ids = [h["pin_id"] for h in body["hits"]]
    assert len(ids) == 15 and not set(ids) & seen
    scores = [h["score"] for h in body["hits"]]
    assert scores == sorted(scores, reverse=True)
    category = body["hits"][0]["category"]
    filtered = client.get(
        f"/v1/users/{user}/recommendations", params={"k": 5, "category": category}
    ).json()
    assert {h["category"] for h in filtered["hits"]} == {category}
    diverse = client.get(
        f"/v1/users/{user}/recommendations", params={"k": 8, "diversity": 1}
    ).json()
    assert len({h["category"] for h in diverse["hits"]}) == 4


def test_a_chosen_recommender_answers_users_and_sessions(
    serve_run: Path, pins: dict[str, Any]
) -> None:
    """The best by eval.json (popularity) answers unless another is chosen; sessions take the
    chosen one where it reads histories."""
    user, history = int(pins["ds"].user_ids()[0]), pins["ids"][:2]
    with TestClient(create_app(serve_run, ServeSettings(recommender="itemknn"))) as chosen:
        wait_ready(chosen)
        listed = chosen.get(f"/v1/users/{user}/recommendations", params={"k": 3}).json()
        session = chosen.post("/v1/recommendations/session", json={"history": history}).json()
    assert (listed["model"], session["model"]) == ("itemknn", "itemknn"), (listed, session)
    with pytest.raises(PinlabServeError, match=r"no trained recommender 'mf' \(trained: itemk"):
        check_run(serve_run, recommender="mf")


def test_session_recommendations_for_a_visitor(client: TestClient, pins: dict[str, Any]) -> None:
    """A visitor's pins, never trained on: the run's history model (itemknn) scores them."""
    ds = pins["ds"]
    user = int(ds.user_ids()[2])
    history = [r["pin_id"] for r in ds.interactions.to_pylist() if r["user_id"] == user]
    body = client.post("/v1/recommendations/session", json={"history": history, "k": 7}).json()
    assert body["model"] == "itemknn" and body["window"] is None
    assert (body["history_used"], body["unknown_ids"], body["truncated"]) == (
        len(history), [], False,
    )  # fmt: skip
    ids = [h["pin_id"] for h in body["hits"]]
    assert len(ids) == 7 and not set(ids) & set(history)
    # The same history, served as this user's: itemknn reads nothing else, so the same list.
    service = client.app.state.service  # type: ignore[attr-defined]
    position = service.catalog.user(user)
    as_user = service._session.score(np.array([position], dtype=np.int64))[0]
    as_user[service.catalog.seen(position)] = -np.inf
    top = np.argsort(-as_user, kind="stable")[:7]
    assert sorted(ids) == sorted(int(p) for p in service.catalog.log.item_ids[top])
    # Unknown ids are ignored and named; the rest still counts.
    mixed = client.post(
        "/v1/recommendations/session", json={"history": [*history, 987654321], "k": 7}
    ).json()
    assert mixed["unknown_ids"] == [987654321] and "ignored 1 unknown" in mixed["warnings"][0]
    assert [h["pin_id"] for h in mixed["hits"]] == ids


def test_bad_session_histories_are_422s(client: TestClient) -> None:
    path = "/v1/recommendations/session"
    assert_error(client.post(path, json={"history": []}), 422, "history")
    assert_error(
        client.post(path, json={"history": [123456789, 987654321]}), 422, "none of the 2 pin"
    )
    # Ids are non-negative int64s: past that range is malformed, not unknown (2**63 once
    # overflowed NumPy into a 500).
    assert_error(client.post(path, json={"history": [-5]}), 422, "body.history.0")
    assert_error(client.post(path, json={"history": [1, 2**63]}), 422, "body.history.1")
    assert_error(client.post(path, json={"k": 3}), 422, "history")
    assert_error(client.post(path, json={"history": [1], "k": 0}), 422, "k")
    assert_error(client.post(path, json={"history": [1], "colour": "red"}), 422, "colour")


def test_recommendations_inline_and_threaded_agree(
    serve_run: Path, client: TestClient, pins: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cheap scorer runs on the event loop, a slow one on a thread: the same answer."""
    user = int(pins["ds"].user_ids()[3])
    assert client.app.state.service.recommend_inline  # type: ignore[attr-defined]
    inline = client.get(f"/v1/users/{user}/recommendations", params={"k": 12}).json()
    # The fixture's popularity scorer takes microseconds; any scorer slower than 0 s threads.
    monkeypatch.setattr("pinlab_serve._service.INLINE_SCORE_SECONDS", 0.0)
    with TestClient(create_app(serve_run, ServeSettings())) as threaded:
        wait_ready(threaded)
        assert not threaded.app.state.service.recommend_inline  # type: ignore[attr-defined]
        answer = threaded.get(f"/v1/users/{user}/recommendations", params={"k": 12}).json()
    assert answer == inline


def test_pin_metadata_image_and_users(client: TestClient, pins: dict[str, Any]) -> None:
    pin = pins["ids"][4]
    body = client.get(f"/v1/pins/{pin}").json()
    row = pins["rows"][pin]
    assert body == {
        "pin_id": pin,
        "external_id": row["external_id"],  # None on the synthetic world: pin_id is the id
        "caption": row["caption"],
        "category": row["category"],
        "creator_id": row["creator_id"],
        "creator_group": row["creator_group"],
        "image_url": f"/v1/pins/{pin}/image",
    }
    image = client.get(f"/v1/pins/{pin}/image")
    assert image.headers["content-type"] == "image/png"
    decoded = np.asarray(Image.open(io.BytesIO(image.content)))
    np.testing.assert_array_equal(decoded, pins["ds"].images[row["image_row"]])
    users = client.get("/v1/users", params={"limit": 5, "offset": 1}).json()
    # external_ids: null on the synthetic world, whose user ids are pinlab's.
    ids = pins["ds"].user_ids()[1:6].tolist()
    assert users == {"user_ids": ids, "external_ids": [None] * 5, "total": 40}


@pytest.mark.parametrize(
    ("url", "status", "match"),
    [
        ("/v1/pins/{pin}/similar?k=0", 422, "query.k"),
        ("/v1/pins/{pin}/similar?k=1001", 422, "less than or equal to 1000"),
        ("/v1/pins/{pin}/similar?k=ten", 422, "valid integer"),
        ("/v1/pins/{pin}/similar?diversity=1.5", 422, "query.diversity"),
        ("/v1/pins/{pin}/similar?exclude=abc", 422, "query.exclude"),
        ("/v1/pins/{pin}/similar?exclude=9223372036854775808", 422, "query.exclude.0"),
        ("/v1/search/text?q=star&exclude=1&exclude=-1", 422, "query.exclude.1"),
        ("/v1/pins/{pin}/similar?category=hexagon", 400, "unknown category 'hexagon'"),
        ("/v1/pins/123456789/similar", 404, "pin 123456789 is not in the catalogue"),
        ("/v1/pins/-3/similar", 422, "path.pin_id"),
        ("/v1/pins/99999999999999999999999/similar", 422, "path.pin_id"),
        ("/v1/pins/123456789", 404, "pin 123456789"),
        ("/v1/pins/123456789/image", 404, "pin 123456789"),
        ("/v1/users/123456789/recommendations", 404, "user 123456789 is not in the dataset"),
        ("/v1/users/abc/recommendations", 422, "path.user_id"),
        ("/v1/search/text", 422, "query.q"),
        ("/v1/search/text?q=", 422, "query.q"),
        ("/v1/search/text?q=%20%20", 400, "q is blank"),
        ("/v1/search/text?q=" + "a" * 501, 422, "query.q"),
        ("/v1/search/text?q=%ff%fe", 200, ""),
        ("/v1/users?limit=0", 422, "query.limit"),
        ("/v1/users?external_id=", 422, "query.external_id"),
        ("/v1/users?external_id=ann", 404, "no user has the source's id 'ann'"),
        ("/v1/nowhere", 404, "Not Found"),
        ("/v1/pins/..%2F..%2Frun.json/image", 404, "Not Found"),
        ("/static/../run.json", 404, "Not Found"),
    ],
)
def test_bad_queries(
    client: TestClient, pins: dict[str, Any], url: str, status: int, match: str
) -> None:
    response = client.get(url.format(pin=pins["ids"][0]))
    if status == 200:  # undecodable bytes are replaced, never a crash
        assert response.status_code == 200
        return
    assert_error(response, status, match)


def test_wrong_method(client: TestClient) -> None:
    response = client.get("/v1/search/image")
    assert_error(response, 405, "Method Not Allowed")
    assert response.headers["allow"] == "POST"  # RFC 9110: a 405 names what is allowed
    assert client.request("TRACE", "/healthz").headers["allow"] == "GET"


@pytest.mark.parametrize(
    ("kwargs", "status", "match"),
    [
        (upload(b"this is not an image"), 400, "not a readable image"),
        (upload(png(), "text/plain"), 415, "content type is text/plain"),
        (upload(b""), 400, "image is empty"),
        ({"content": b"raw", "headers": {"content-type": "image/png"}}, 415, "multipart"),
        ({"data": {"image": "text"}}, 415, "multipart/form-data"),
        ({"files": {"picture": ("a.png", png(), "image/png")}}, 400, "no file field"),
    ],
)
def test_bad_uploads(client: TestClient, kwargs: dict[str, Any], status: int, match: str) -> None:
    assert_error(client.post("/v1/search/image", **kwargs), status, match)


def test_upload_limits(serve_run: Path) -> None:
    settings = ServeSettings(max_upload_bytes=4096, max_pixels=1000)
    with TestClient(create_app(serve_run, settings)) as client:
        wait_ready(client)
        rng = np.random.default_rng(0)
        # Over the file limit, but within the multipart slack: refused after parsing.
        medium = png(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
        assert 4096 < len(medium) < 64 * 1024
        assert_error(client.post("/v1/search/image", **upload(medium)), 413, "over the limit")
        # Far over: refused while the body streams in.
        big = png(rng.integers(0, 255, (300, 300, 3), dtype=np.uint8))
        assert len(big) > 4096 + 64 * 1024
        assert_error(client.post("/v1/search/image", **upload(big)), 413, "over the limit")
        # Over the limit only in the declared length: refused before the body is read.
        response = client.post(
            "/v1/search/image",
            content=b"x" * 10,
            headers={
                "content-type": "multipart/form-data; boundary=x",
                "content-length": str(10**9),
            },
        )
        assert_error(response, 413, "1,000,000,000 bytes")
        small = png(size=(40, 30))
        assert len(small) < 4096
        assert_error(client.post("/v1/search/image", **upload(small)), 413, "40x30 pixels")
        assert client.post("/v1/search/image", **upload(png(size=(30, 30)))).status_code == 200


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares `width` x `height` pixels but carries no image data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_a_real_size_photo_upload(client: TestClient) -> None:
    """A 12-megapixel JPEG, as phones take them, is searched like any other image."""
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(small).resize((4000, 3000)).save(buffer, format="JPEG", quality=90)
    response = client.post("/v1/search/image", **upload(buffer.getvalue(), "image/jpeg"))
    assert response.status_code == 200, response.text
    assert len(response.json()["hits"]) == 10


@pytest.mark.parametrize("side", [7000, 30_000])
def test_pixel_bombs_are_refused_unread(client: TestClient, side: int) -> None:
    """40M+ pixels (ours) or 180M+ (PIL's own bomb check): 413 from the header alone."""
    response = client.post("/v1/search/image", **upload(png_header_only(side, side)))
    assert_error(response, 413, "pixels")


def test_metrics(client: TestClient, pins: dict[str, Any]) -> None:
    client.get(f"/v1/pins/{pins['ids'][0]}/similar")
    client.get("/v1/pins/123456789")
    text = client.get("/metrics").text
    assert 'pinlab_requests_total{endpoint="similar",method="GET",status="200"}' in text
    assert 'pinlab_requests_total{endpoint="pin",method="GET",status="404"}' in text
    assert 'pinlab_request_seconds_bucket{endpoint="similar",le="0.005"}' in text
    assert "pinlab_index_pins 240.0" in text
    assert "pinlab_encoder_batch_size_count" in text


def stage_counts(client: TestClient) -> dict[str, float]:
    """Observations per request stage, read from /metrics as Prometheus exposes them."""
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        if family.name == "pinlab_stage_seconds":
            for sample in family.samples:
                if sample.name.endswith("_count"):
                    counts[sample.labels["stage"]] = sample.value
    return counts


def test_metrics_time_every_request_stage(client: TestClient, pins: dict[str, Any]) -> None:
    before = stage_counts(client)
    client.get(f"/v1/pins/{pins['ids'][0]}/similar")
    after_similar = stage_counts(client)
    client.post("/v1/search/image", **upload(png()))
    user = client.get("/v1/users").json()["user_ids"][0]
    client.get(f"/v1/users/{user}/recommendations")
    after = stage_counts(client)

    def grew(a: dict[str, float], b: dict[str, float], stage: str) -> float:
        return b.get(stage, 0.0) - a.get(stage, 0.0)

    # `similar` looks up the stored vector: no decode, no encoder call.
    assert {s: grew(before, after_similar, s) for s in STAGES} == {
        "decode": 0,
        "embed": 0,
        "search": 1,
        "rank": 1,
        "recommend": 0,
        "serialise": 1,
    }
    assert {s: grew(after_similar, after, s) for s in STAGES} == {
        "decode": 1,
        "embed": 1,
        "search": 1,
        "rank": 2,
        "recommend": 1,
        "serialise": 2,
    }


def test_no_cors_by_default(client: TestClient, serve_run: Path) -> None:
    headers = {"origin": "http://evil.example", "access-control-request-method": "GET"}
    assert "access-control-allow-origin" not in client.get("/healthz", headers=headers).headers
    settings = ServeSettings(cors_origins=["http://app.example"])
    with TestClient(create_app(serve_run, settings)) as cors:
        got = cors.get("/healthz", headers={"origin": "http://app.example"})
        assert got.headers["access-control-allow-origin"] == "http://app.example"


def test_not_ready_and_failed_load(serve_run: Path, tmp_path: Path) -> None:
    broken = tmp_path / "run"
    shutil.copytree(serve_run, broken)
    shutil.rmtree(broken / "index")
    with TestClient(create_app(broken, ServeSettings())) as client:
        deadline = time.monotonic() + 30
        while client.get("/readyz").json()["status"] == "loading":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert "no index" in ready.json()["detail"]
        assert_error(client.get("/v1/pins/1"), 503, "not ready: PinlabServeError: run")
        assert client.get("/healthz").status_code == 200


async def _concurrent_uploads(app: FastAPI, images: list[bytes]) -> tuple[list[Any], str]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            while (await client.get("/readyz")).status_code != 200:
                await asyncio.sleep(0.05)
            responses = await asyncio.gather(
                *(
                    client.post("/v1/search/image", files={"image": ("q.png", d, "image/png")})
                    for d in images
                )
            )
            metrics = (await client.get("/metrics")).text
    return [r.json() for r in responses], metrics


def test_image_searches_are_micro_batched(serve_run: Path, pins: dict[str, Any]) -> None:
    app = create_app(serve_run, ServeSettings(batch_window_ms=100, max_batch=16))
    ds = pins["ds"]
    chosen = pins["ids"][20:28]
    images = [png(ds.images[pins["rows"][p]["image_row"]]) for p in chosen]
    bodies, metrics = asyncio.run(_concurrent_uploads(app, images))
    assert [b["hits"][0]["pin_id"] for b in bodies] == chosen
    values = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in metrics.splitlines()
        if line.startswith("pinlab_encoder_batch_size_")
    }
    # Eight queries, fewer encoder calls: concurrent uploads shared batches.
    assert values["pinlab_encoder_batch_size_sum"] == 8
    assert values["pinlab_encoder_batch_size_count"] < 8


async def _concurrent_sessions(app: FastAPI, histories: list[list[int]]) -> tuple[list[Any], str]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            while (await client.get("/readyz")).status_code != 200:
                await asyncio.sleep(0.05)
            one_by_one = [
                await client.post("/v1/recommendations/session", json={"history": h, "k": 9})
                for h in histories
            ]
            together = await asyncio.gather(
                *(
                    client.post("/v1/recommendations/session", json={"history": h, "k": 9})
                    for h in histories
                )
            )
            metrics = (await client.get("/metrics")).text
    return [r.json() for r in one_by_one] + [r.json() for r in together], metrics


def test_concurrent_sessions_share_model_calls(serve_run: Path, pins: dict[str, Any]) -> None:
    """Sessions that arrive together are scored in one call, each as it would be alone."""
    ds = pins["ds"]
    log = ds.interactions.to_pylist()
    users = [int(u) for u in ds.user_ids()[:8]]
    # Histories of different lengths, so a batch pads them differently.
    histories = [
        [r["pin_id"] for r in log if r["user_id"] == u][: 2 + i] for i, u in enumerate(users)
    ]
    bodies, metrics = asyncio.run(_concurrent_sessions(create_app(serve_run), histories))
    alone, together = bodies[:8], bodies[8:]
    # The same pins in the same order; scores equal up to float32 rounding, which a batched
    # product may do in another order than a lone one (it does on some CPUs' BLAS paths).
    assert [[h["pin_id"] for h in b["hits"]] for b in together] == [
        [h["pin_id"] for h in b["hits"]] for b in alone
    ]
    for t, a in zip(together, alone, strict=True):
        assert [h["score"] for h in t["hits"]] == pytest.approx(
            [h["score"] for h in a["hits"]], rel=1e-6, abs=1e-7
        )
    assert all(len(b["hits"]) == 9 for b in alone)
    values = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in metrics.splitlines()
        if line.startswith("pinlab_session_batch_size_")
    }
    # Sixteen sessions, fewer model calls: the eight concurrent ones shared batches.
    assert values["pinlab_session_batch_size_sum"] == 16
    assert values["pinlab_session_batch_size_count"] < 16


def test_index_swap(serve_run: Path, tmp_path: Path, pins: dict[str, Any]) -> None:
    run = tmp_path / "run"
    shutil.copytree(serve_run, run)
    old = PinIndex.load(run / "index")
    keep = old.ids()[:100]
    with TestClient(create_app(run, ServeSettings(admin_token=TOKEN))) as client:
        client.headers["authorization"] = f"Bearer {TOKEN}"
        wait_ready(client)
        service: PinService = client.app.state.service  # type: ignore[attr-defined]
        before = service.state  # what a request in flight holds
        assert client.post("/v1/admin/reload").json()["swapped"] is False
        smaller = PinIndex.build(old.vectors(keep), keep, old.model_id)
        smaller.save(run / "index")
        body = client.post("/v1/admin/reload").json()
        assert body["swapped"] is True
        assert (body["previous"]["count"], body["current"]["count"]) == (240, 100)
        hits = client.get(f"/v1/pins/{int(keep[0])}/similar", params={"k": 200}).json()["hits"]
        assert len(hits) == 99
        # The old snapshot still answers with the old index: in-flight requests finish on it.
        assert len(before.searcher.search(old.vectors(keep[:1]), 200)[0]) == 200
        assert "pinlab_index_swaps_total 1.0" in client.get("/metrics").text
        assert "pinlab_index_pins 100.0" in client.get("/metrics").text
        # A bad index on disk is refused and the serving one stays.
        (run / "index" / "index.json").write_text("{}")
        assert_error(client.post("/v1/admin/reload"), 400, "malformed")
        assert client.get(f"/v1/pins/{int(keep[0])}/similar").status_code == 200


def test_admin_reload_is_off_without_a_token(client: TestClient) -> None:
    response = client.post("/v1/admin/reload", headers={"authorization": f"Bearer {TOKEN}"})
    assert_error(response, 403, "set PINLAB_SERVE_ADMIN_TOKEN")


def test_admin_reload_needs_the_token(serve_run: Path) -> None:
    with TestClient(create_app(serve_run, ServeSettings(admin_token=TOKEN))) as client:
        wait_ready(client)
        for headers in (
            {},
            {"authorization": TOKEN},  # no scheme
            {"authorization": f"Basic {TOKEN}"},
            {"authorization": f"Bearer {TOKEN[:-1]}"},
            {"authorization": f"Bearer {TOKEN}x"},
            {"authorization": "Bearer "},
        ):
            response = client.post("/v1/admin/reload", headers=headers)
            assert_error(response, 401, "Authorization: Bearer TOKEN")
            assert response.headers["www-authenticate"] == "Bearer"
            assert TOKEN not in response.text
        good = client.post("/v1/admin/reload", headers={"authorization": f"bearer {TOKEN}"})
        assert good.status_code == 200 and good.json()["swapped"] is False


def test_watched_index_is_swapped(serve_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(serve_run, run)
    old = PinIndex.load(run / "index")
    with TestClient(create_app(run, ServeSettings(watch_interval_s=0.05))) as client:
        wait_ready(client)
        keep = old.ids()[:50]
        PinIndex.build(old.vectors(keep), keep, old.model_id).save(run / "index")
        deadline = time.monotonic() + 20
        while "pinlab_index_pins 50.0" not in client.get("/metrics").text:
            assert time.monotonic() < deadline, "the new index was never swapped in"
            time.sleep(0.05)


def test_numpy_backend_agrees(serve_run: Path, pins: dict[str, Any], client: TestClient) -> None:
    with TestClient(create_app(serve_run, ServeSettings(search_backend="numpy"))) as brute:
        wait_ready(brute)
        for pin in pins["ids"][:5]:
            params: dict[str, Any] = {"k": 10, "exclude": [pins["ids"][9]]}
            want = client.get(f"/v1/pins/{pin}/similar", params=params).json()
            got = brute.get(f"/v1/pins/{pin}/similar", params=params).json()
            assert got["index"] == "numpy"
            assert [h["pin_id"] for h in got["hits"]] == [h["pin_id"] for h in want["hits"]]


def test_settings_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = ServeSettings()
    assert (settings.host, settings.port, settings.workers) == ("127.0.0.1", 8000, 1)
    assert settings.max_upload_bytes == 10 * 2**20
    assert settings.cors_origins == []
    monkeypatch.setenv("PINLAB_SERVE_PORT", "9123")
    monkeypatch.setenv("PINLAB_SERVE_CORS_ORIGINS", '["http://a.example"]')
    env = ServeSettings()
    assert (env.port, env.cors_origins) == (9123, ["http://a.example"])
    with pytest.raises(ValueError, match="wildcard"):
        ServeSettings(cors_origins=["*"])
    # Comma-separated too; a value that was no JSON list was pydantic-settings' SettingsError.
    monkeypatch.setenv("PINLAB_SERVE_CORS_ORIGINS", "http://a.example, https://b.example:8443")
    assert ServeSettings().cors_origins == ["http://a.example", "https://b.example:8443"]
    for value, problem in [
        ("http://a.example/", "'http://a.example/' is not an origin: write scheme://host"),
        ("a.example", "'a.example' is not an origin"),
        ('["http://a.example"', "is no JSON list"),
    ]:
        monkeypatch.setenv("PINLAB_SERVE_CORS_ORIGINS", value)
        with pytest.raises(ValueError, match=re.escape(problem)):
            ServeSettings()
    monkeypatch.delenv("PINLAB_SERVE_CORS_ORIGINS")
    with pytest.raises(ValueError, match="port"):
        ServeSettings(port=70000)
    assert settings.admin_token is None
    monkeypatch.setenv("PINLAB_SERVE_ADMIN_TOKEN", TOKEN)
    secret = ServeSettings()
    assert secret.admin_token is not None and secret.admin_token.get_secret_value() == TOKEN
    assert TOKEN not in secret.model_dump_json() and TOKEN not in repr(secret)
    with pytest.raises(ValueError, match="at least 16 characters"):
        ServeSettings(admin_token="short")


def test_text_search_uses_the_image_text_model(serve_run: Path, tmp_path: Path) -> None:
    """With visual/image_text.pt in the run, text queries search its image embeddings."""
    from pinlab_models import AlignConfig, ImageTextModel
    from pinlab_models._align import build_tower

    run = tmp_path / "run"
    shutil.copytree(serve_run, run)
    config = AlignConfig(widths=(8, 16), projection_dim=32)
    model_id = ImageTextModel(build_tower(config), config).save(run / "visual/image_text.pt")
    with TestClient(create_app(run, ServeSettings())) as client:
        wait_ready(client)
        body = client.get("/v1/search/text", params={"q": "a neon star", "k": 5}).json()
        assert (body["mode"], body["model_id"]) == ("image-text", model_id)
        assert len(body["hits"]) == 5


def test_unexpected_errors_are_json_without_traceback(
    serve_run: Path, pins: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app(serve_run, ServeSettings())
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_ready(client)
        service: PinService = app.state.service

        def broken(*_: object) -> None:
            raise RuntimeError("secret internals /etc/shadow")

        monkeypatch.setattr(service, "similar", broken)
        response = client.get(f"/v1/pins/{pins['ids'][0]}/similar")
        assert_error(response, 500, "internal error (RuntimeError)")
        assert "secret" not in response.text


def test_faiss_threads_hold_on_the_thread_that_searches(
    serve_run: Path, pins: dict[str, Any]
) -> None:
    # The app loads on a worker thread and answers on the event loop; OpenMP's thread count
    # is per thread, so a setting made only while loading would not reach the search.
    import faiss

    svc = PinService(serve_run, ServeSettings(search_threads=1))
    loader = threading.Thread(target=svc.load)
    loader.start()
    loader.join()
    seen: list[int] = []
    search = svc.state.searcher.search

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(faiss.omp_get_max_threads())
        return search(*args, **kwargs)

    svc.state.searcher.search = spy  # type: ignore[method-assign]

    def answer() -> None:
        faiss.omp_set_num_threads(3)  # a fresh thread's default: every core
        svc.similar(pins["ids"][0], 5, None, [], Diversify())

    worker = threading.Thread(target=answer)
    worker.start()
    worker.join()
    assert seen == [1]


def _category_diversity(body: dict[str, Any]) -> float:
    from pinlab_models import category_diversity

    return category_diversity([h["category"] for h in body["hits"]])


def test_diversify_dpp_mmr_and_calibrated(client: TestClient, pins: dict[str, Any]) -> None:
    from pinlab_models import miscalibration

    ds = pins["ds"]
    user = int(ds.user_ids()[2])
    url = f"/v1/users/{user}/recommendations"
    plain = client.get(url, params={"k": 10}).json()
    assert plain["diversify"] is None and plain["diversity"] == 0
    # Trade-off 0 keeps the relevance order, whatever the re-ranker.
    for method in ("mmr", "dpp", "calibrated"):
        same = client.get(url, params={"k": 10, "diversify": method, "tradeoff": 0}).json()
        assert same["hits"] == plain["hits"] and same["diversify"] == method
    pin = pins["ids"][0]
    similar = client.get(f"/v1/pins/{pin}/similar", params={"k": 8}).json()
    spread = client.get(
        f"/v1/pins/{pin}/similar", params={"k": 8, "diversify": "dpp", "tradeoff": 0.9}
    ).json()
    assert spread["diversity"] == 0.9 and spread["diversify"] == "dpp"
    assert _category_diversity(spread) > _category_diversity(similar)
    # Calibrated: the list's category mix moves toward the user's history.
    interactions = ds.interactions.to_pylist()
    history = [pins["rows"][r["pin_id"]]["category"] for r in interactions if r["user_id"] == user]
    calibrated = client.get(url, params={"k": 10, "diversify": "calibrated", "tradeoff": 0.9})
    body = calibrated.json()
    kl = [miscalibration([h["category"] for h in b["hits"]], history) for b in (plain, body)]
    assert kl[1] < kl[0]


def test_diversify_target_takes_the_smallest_tradeoff(
    client: TestClient, pins: dict[str, Any]
) -> None:
    pin = pins["ids"][5]
    url = f"/v1/pins/{pin}/similar"
    for method in ("mmr", "dpp"):
        body = client.get(url, params={"k": 8, "diversify": method, "target": 0.7}).json()
        assert body["target"] == 0.7 and _category_diversity(body) >= 0.7
        chosen = body["diversity"]
        assert 0 < chosen <= 1
        below = client.get(
            url, params={"k": 8, "diversify": method, "tradeoff": round(chosen - 0.1, 1)}
        ).json()
        assert _category_diversity(below) < 0.7  # the next smaller grid value falls short
        again = client.get(url, params={"k": 8, "diversify": method, "tradeoff": chosen}).json()
        assert again["hits"] == body["hits"]


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"diversify": "random", "tradeoff": 0.5}, "'mmr', 'dpp' or 'calibrated'"),
        ({"diversify": "dpp", "tradeoff": 1.5}, "less than or equal to 1"),
        ({"diversify": "dpp", "tradeoff": -0.1}, "greater than or equal to 0"),
        ({"diversify": "dpp"}, "exactly one of tradeoff (0 to 1) or target"),
        ({"diversify": "dpp", "tradeoff": 0.5, "target": 0.5}, "exactly one of tradeoff"),
        ({"tradeoff": 0.5}, "need diversify=mmr, dpp or calibrated"),
        ({"diversify": "mmr", "tradeoff": 0.5, "diversity": 0.5}, "not diversity as well"),
        ({"diversify": "mmr", "target": 1.5}, "allowed range 0 to 1"),
        ({"diversify": "mmr", "target": 0.99}, "out of reach: category diversity"),
        ({"diversify": "calibrated", "tradeoff": 0.5}, "a user's history"),
    ],
)
def test_diversify_bad_input_is_422(
    client: TestClient, pins: dict[str, Any], params: dict[str, Any], match: str
) -> None:
    response = client.get(f"/v1/pins/{pins['ids'][1]}/similar", params={"k": 8, **params})
    assert_error(response, 422, match)
    if "out of reach" in match:
        assert "allowed target: 0 to 0." in response.json()["error"]


def test_pins_carry_the_id_their_source_gave_them(tmp_path: Path) -> None:
    from pinlab_data import load_sequences
    from pinlab_serve._catalog import Catalog

    source = tmp_path / "log.txt"
    source.write_text("ann p7 p9\nbob p9 p5\n")
    load_sequences(source, tmp_path / "ds")
    catalog = Catalog(tmp_path / "ds")
    assert [catalog.pin(p).external_id for p in catalog.pin_ids.tolist()] == ["p7", "p9", "p5"]
    assert catalog.hit(1, 0.5)["external_id"] == "p9"
    assert catalog.log.user_ids.tolist() == [0, 1]
    assert catalog.user_external_ids == ["ann", "bob"]
    assert catalog.user_by_external == {"ann": 0, "bob": 1}


def test_a_user_is_found_and_answered_by_the_source_id(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog = client.app.state.service.catalog  # type: ignore[attr-defined]
    user = int(catalog.log.user_ids[3])
    # The synthetic world has no source ids: give user 3 one, as a loaded source would.
    named = [*catalog.user_external_ids]
    named[3] = "u-77"
    monkeypatch.setattr(catalog, "user_external_ids", named)
    monkeypatch.setattr(catalog, "user_by_external", {"u-77": user})
    found = client.get("/v1/users", params={"external_id": "u-77"}).json()
    assert found == {"user_ids": [user], "external_ids": ["u-77"], "total": 1}
    body = client.get(f"/v1/users/{user}/recommendations", params={"k": 3}).json()
    assert (body["user_id"], body["user_external_id"]) == (user, "u-77")
    other = client.get(f"/v1/users/{int(catalog.log.user_ids[4])}/recommendations").json()
    assert other["user_external_id"] is None


def test_a_run_whose_dataset_changed_since_training_is_not_served(tmp_path: Path) -> None:
    from pinlab_data import dataset_fingerprint
    from pinlab_serve import PinlabServeError, RunFiles

    data = tmp_path / "data"
    data.mkdir()
    (data / "pins.parquet").write_bytes(b"the data it was trained on")
    record = {"data_dir": str(data), "dataset_fingerprint": dataset_fingerprint(data)}
    (tmp_path / "run.json").write_text(json.dumps(record))
    files = RunFiles(tmp_path)
    assert files.data_dir() == data
    (data / "duplicates.json").write_text("{}")  # `data dedupe`'s report is not data
    assert files.data_dir() == data
    (data / "pins.parquet").write_bytes(b"other pins, other ids")
    with pytest.raises(PinlabServeError, match=r"data changed since the steps of .* read it"):
        files.data_dir()


@pytest.mark.parametrize("content", [b'{"best": "mf", ', b"\xff\xfe", b"[1]"])
def test_a_run_whose_records_are_torn_is_refused_naming_the_file(
    tmp_path: Path, content: bytes
) -> None:
    from pinlab_serve import PinlabServeError, RunFiles

    (tmp_path / "recommender" / "mf").mkdir(parents=True)
    (tmp_path / "recommender" / "mf" / "model.pt").write_bytes(b"")
    (tmp_path / "recommender" / "eval.json").write_bytes(content)
    (tmp_path / "run.json").write_bytes(content)
    files = RunFiles(tmp_path)
    with pytest.raises(PinlabServeError, match=r"eval\.json is not a JSON object; rerun `pinlab"):
        files.ranked_recommenders()
    with pytest.raises(PinlabServeError, match=r"run\.json is not a valid run record"):
        files.data_dir()
