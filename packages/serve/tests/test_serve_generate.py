"""POST /v1/generate: images from the run's generator, bounded, budgeted, searchable."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from conftest import BrowserPage, LiveServer, wait_ready
from pinlab_data import png_text
from pinlab_serve import ServeSettings
from pinlab_serve._app import create_app


@pytest.fixture(scope="module")
def client(generator_run: Path) -> Iterator[TestClient]:
    settings = ServeSettings(generate_max_images=4, generate_max_steps=10)
    with TestClient(create_app(generator_run, settings)) as client:
        wait_ready(client, 120)
        yield client


def test_generate_returns_pngs_that_say_what_made_them(client: TestClient) -> None:
    body = {"text": "a striped warm star", "n": 2, "steps": 2, "seed": 3}
    response = client.post("/v1/generate", json=body)
    assert response.status_code == 200, response.text
    out = response.json()
    assert out["n"] == 2 and len(out["images"]) == 2 and out["model_id"].startswith("gen-")
    first = base64.b64decode(out["images"][0].removeprefix("data:image/png;base64,"))
    meta = png_text(first)
    assert meta["pinlab:generated"] == "true" and meta["pinlab:prompt"] == body["text"]
    assert meta["pinlab:model_id"] == out["model_id"] and meta["pinlab:seed"] == "3"
    # This generator kept no autoguidance guide: none is used, and both say so.
    assert out["autoguidance"] == 1.0 and meta["pinlab:autoguidance"] == "1.0"
    # The category the caption prior inferred from the text, in the answer and the PNG.
    assert meta["pinlab:category"] == (out["category"] or "")
    alone = client.post("/v1/generate", json={**body, "infer_category": False}).json()
    assert alone["category"] is None
    assert png_text(base64.b64decode(alone["images"][0].split(",")[1]))["pinlab:category"] == ""
    assert client.post("/v1/generate", json=body).json()["images"] == out["images"]
    # A generated image goes straight to visual search.
    found = client.post("/v1/search/image", files={"image": ("g.png", first, "image/png")})
    assert found.status_code == 200 and len(found.json()["hits"]) > 0


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"text": "", "n": 1}, "body.text"),
        ({"text": "x" * 201, "n": 1}, "body.text"),
        ({"text": "a star", "n": 0}, "body.n"),
        ({"text": "a star", "n": 5}, "1..4"),  # over this service's limit
        ({"text": "a star", "steps": 11}, "1..10"),
        ({"text": "   ", "n": 1}, "prompt is empty"),
        ({"text": "a star", "guidance": 30}, "body.guidance"),
        ({"text": "a star", "autoguidance": -1}, "body.autoguidance"),
    ],
)
def test_out_of_range_requests_are_422_with_the_range(
    client: TestClient, body: dict[str, object], says: str
) -> None:
    response = client.post("/v1/generate", json=body)
    assert response.status_code == 422, response.text
    assert says in response.json()["error"]


def test_the_schema_states_this_services_bounds(client: TestClient) -> None:
    asked = client.get("/openapi.json").json()["components"]["schemas"]["GenerateRequest"]
    # The client fixture's settings (4, 10), not the contract's widest (64, 200).
    assert (asked["properties"]["n"]["maximum"], asked["properties"]["steps"]["maximum"]) == (
        4,
        10,
    )
    assert client.post("/v1/generate", json={"text": "a star", "n": 5}).status_code == 422


@pytest.mark.slow  # a second app, its models loaded again
def test_a_request_over_the_time_budget_is_refused_before_it_starts(
    generator_run: Path,
) -> None:
    settings = ServeSettings(generate_budget_s=1e-6)
    with TestClient(create_app(generator_run, settings)) as client:
        wait_ready(client, 120)
        response = client.post("/v1/generate", json={"text": "a star", "n": 2, "steps": 5})
    assert response.status_code == 422
    assert "over this service's budget" in response.json()["error"]


@pytest.mark.slow  # a third app
def test_a_run_without_a_generator_answers_404(serve_run: Path) -> None:
    with TestClient(create_app(serve_run, ServeSettings())) as client:
        wait_ready(client, 120)
        response = client.post("/v1/generate", json={"text": "a star"})
    assert response.status_code == 404 and "train generator" in response.json()["error"]


@pytest.mark.slow
def test_page_generates_and_searches_with_a_generated_image(
    browser_page: BrowserPage, generator_run: Path, live_server: LiveServer
) -> None:
    """In headless Chromium: the Generate form shows the images; clicking one searches."""
    with live_server(generator_run, 120) as url, browser_page(f"{url}/") as (page, errors):
        page.fill("#prompt", "a striped warm star")
        page.fill("#n", "2")
        page.fill("#steps", "2")
        page.click("#generate-form button")
        page.wait_for_function(
            "document.querySelectorAll('#results .tile.generated img').length == 2"
        )
        page.locator("#results .tile.generated").first.click()
        page.wait_for_function(
            "document.querySelector('#status').textContent"
            ".includes('results for generated image 1')"
        )
        assert page.locator("#results .tile").count() == 12
        assert errors == []
