"""Fixtures shared by every test directory (one conftest, so mypy sees one module)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pytest

import pinlab_tasks  # noqa: F401 - its import sets OpenMP's spin before torch loads

if TYPE_CHECKING:
    from pinlab_serve import ServeSettings

ROOT = Path(__file__).parent
# CLI tests must not write an MLflow store into the checkout; tracking tests switch it on.
os.environ.setdefault("PINLAB_TRACKING", "off")


def shared_datasets() -> Path:
    """Real data for tests: PINLAB_TEST_DATA, default ../shared/datasets from the root."""
    return Path(os.environ.get("PINLAB_TEST_DATA", ROOT.parent / "shared" / "datasets"))


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny demo, run once through the real CLI; tests read its run directory."""
    from pinlab_tasks.cli import run

    out = tmp_path_factory.mktemp("demo") / "run"
    capture = out.parent / "stdout.json"
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = run(["demo", "--preset", "tiny", "--out", str(out), "--json", "--seed", "1"])
    capture.write_text(buffer.getvalue())
    assert code == 0, buffer.getvalue()
    result: dict[str, Any] = json.loads(buffer.getvalue())
    return result


@pytest.fixture(scope="session")
def serve_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small servable run directory built without the CLI: a synthetic world, an untrained
    (randomly initialised) CNN encoder, its index, a popularity recommender (what user
    recommendations serve) and itemknn (what sessions get: popularity reads no history)."""
    import numpy as np

    from pinlab_data import SynthConfig, interaction_log, load_dataset, write_synth
    from pinlab_models import (
        CNNEncoder,
        EncoderConfig,
        TrainContext,
        build_recommender,
        seed_everything,
    )
    from pinlab_serve import PinIndex

    run = tmp_path_factory.mktemp("serve") / "run"
    data = run / "data"
    write_synth(data, SynthConfig(num_pins=240, num_users=40, num_categories=4, seed=3))
    (run / "run.json").write_text(json.dumps({"data_dir": str(data), "steps": []}))
    ds = load_dataset(data)
    seed_everything(0)
    encoder = CNNEncoder(EncoderConfig(widths=(8, 16), embedding_dim=16))
    encoder.save(run / "visual" / "encoder.pt")
    encoder = CNNEncoder.load(run / "visual" / "encoder.pt")
    assert ds.images is not None
    images = np.asarray(ds.images[ds.pins.column("image_row").to_numpy()])
    PinIndex.build(encoder.embed(images), ds.pin_ids(), encoder.model_id).save(run / "index")
    log = interaction_log(ds)
    for name in ("popularity", "itemknn"):
        model = build_recommender(name)
        model.fit(log, TrainContext(run_dir=run / "recommender" / name))
        model.save(run / "recommender" / name / "model.pt")
    return run


@pytest.fixture(scope="session")
def generator_run(serve_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`serve_run` plus an untrained (randomly initialised) generator: serving is what is
    tested with it, not what the weights draw."""
    from pinlab_models import GeneratorConfig, TextToImage, seed_everything
    from pinlab_models._generator import GeneratorNet

    run = tmp_path_factory.mktemp("gen") / "run"
    shutil.copytree(serve_run, run)
    config = GeneratorConfig(widths=(16, 32), heads=2, text_tokens=8)
    seed_everything(0)
    TextToImage(GeneratorNet(config, 4), config, ["a", "b", "c", "d"]).save(
        run / "generator" / "generator.pt"
    )
    return run


@pytest.fixture(scope="session")
def onnx_run(serve_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`serve_run` copied and exported to ONNX, float32 and int8, through the real CLI
    (`pinlab export onnx --int8`): about a minute, so only slow tests use it."""
    import contextlib
    import io

    from pinlab_tasks.cli import run

    out = tmp_path_factory.mktemp("onnx") / "run"
    shutil.copytree(serve_run, out)
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = run(["export", "onnx", "--run", str(out), "--int8", "--json"])
    assert code == 0, buffer.getvalue()
    (out.parent / "export_stdout.json").write_text(buffer.getvalue())
    return out


@pytest.fixture(scope="session")
def chromium() -> str:
    """A headless-capable Chromium's path; skips when none is installed (.ci/run installs it)."""
    pytest.importorskip("playwright.sync_api", reason="playwright is a dev dependency")
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no Chromium installed, so no page is opened in a browser here "
                "(`apt-get install chromium`; .ci/run installs it)")  # fmt: skip


BrowserPage = Callable[[str], contextlib.AbstractContextManager[tuple[Any, list[str]]]]


@pytest.fixture(scope="session")
def browser_page(chromium: str) -> BrowserPage:
    """`with browser_page(url) as (page, errors)`: a headless Chromium page (Playwright) opened
    on `url`, the page's uncaught script errors collected in `errors`."""

    @contextlib.contextmanager
    def open_page(url: str) -> Iterator[tuple[Any, list[str]]]:
        from playwright import sync_api

        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=chromium, headless=True, args=["--no-sandbox"]
            )
            try:
                page = browser.new_page()
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.goto(url)
                yield page, errors
            finally:
                browser.close()

    return open_page


class LiveServer(Protocol):
    def __call__(
        self, run_dir: Path, ready_within: float, settings: ServeSettings | None = None
    ) -> contextlib.AbstractContextManager[str]: ...


@pytest.fixture(scope="session")
def live_server() -> LiveServer:
    """`with live_server(run, ready_within[, settings]) as url`: the run served by uvicorn on a
    free loopback port, yielded once /readyz answers 200, stopped on exit."""
    return _live_server


@contextlib.contextmanager
def _live_server(
    run_dir: Path, ready_within: float, settings: ServeSettings | None = None
) -> Iterator[str]:
    import socket
    import threading
    import time

    import httpx
    import uvicorn

    from pinlab_serve import ServeSettings, create_app

    settings = settings or ServeSettings()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = uvicorn.Config(
        create_app(run_dir, settings), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_within
        while True:
            assert time.monotonic() < deadline, "the server never became ready"
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def wait_ready(client: Any, timeout: float = 60) -> None:
    """Poll a FastAPI TestClient's /readyz until it answers 200 (the index loads in a thread)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError(f"not ready: {client.get('/readyz').json()}")
