"""The web page end to end: headless Chromium (driven by Playwright) against a real server."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import BrowserPage, LiveServer
from pinlab_data import load_dataset


@pytest.fixture
def server_url(serve_run: Path, live_server: LiveServer) -> Iterator[str]:
    with live_server(serve_run, 60) as url:
        yield url


@pytest.mark.slow
def test_page_in_headless_chromium(
    browser_page: BrowserPage, serve_run: Path, server_url: str, tmp_path: Path
) -> None:
    ds = load_dataset(serve_run / "data")
    assert ds.images is not None
    query = tmp_path / "query.png"
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(ds.images[0])).resize((96, 96)).save(buffer, format="PNG")
    query.write_bytes(buffer.getvalue())

    with browser_page(f"{server_url}/") as (page, errors):
        page.wait_for_function("document.querySelectorAll('#user option').length > 0")

        def tiles_with_images() -> int:
            page.wait_for_selector("#results .tile img")
            page.wait_for_function(
                "[...document.querySelectorAll('#results .tile img')]"
                ".every(img => img.complete && img.naturalWidth > 0)"
            )
            count: int = page.locator("#results .tile").count()
            return count

        page.set_input_files("#image", str(query))
        page.click("#image-form button")
        assert tiles_with_images() == 12
        first = page.locator("#results .tile").first
        assert first.locator(".caption").inner_text().strip()
        assert "·" in first.locator(".meta").inner_text()  # id · category · score
        assert "results for the image" in page.locator("#status").inner_text()

        page.fill("#q", "a striped circle")
        page.click("#text-form button")
        page.wait_for_function(
            "document.querySelector('#status').textContent.includes('\"a striped circle\"')"
        )
        assert tiles_with_images() == 12

        page.click("#user-form button")
        page.wait_for_function(
            "document.querySelector('#status').textContent.includes('results for user')"
        )
        assert tiles_with_images() == 12

        # A re-ranker chosen: the same list without and with it, side by side.
        page.select_option("#diversify", "dpp")
        page.click("#user-form button")
        page.wait_for_function("document.querySelectorAll('#results .column').length == 2")
        assert tiles_with_images() == 24
        headings = page.locator("#results .column h2").all_inner_texts()
        assert headings == ["without diversification", "with dpp, trade-off 0.5"]
        assert errors == []
