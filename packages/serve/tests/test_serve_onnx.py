"""The service on an ONNX runtime: queries are embedded by ONNX Runtime on the run's export,
and a run without a current export is refused."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import get_args

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import ValidationError

import pinlab_models
from pinlab_data import load_dataset
from pinlab_serve import ServeSettings, check_run, create_app
from pinlab_serve.contracts import Runtime


def test_the_runtimes_are_the_models_runtimes() -> None:
    assert get_args(Runtime) == get_args(pinlab_models.Runtime)
    assert ServeSettings().runtime == "torch"
    with pytest.raises(ValidationError):
        ServeSettings(runtime="tensorrt")


def test_a_run_without_an_export_fails_to_load_saying_how_to_export(serve_run: Path) -> None:
    with pytest.raises(pinlab_models.PinlabModelError, match="pinlab export onnx --run"):
        check_run(serve_run, "onnx")
    check_run(serve_run)  # the eager runtime needs no export
    with TestClient(create_app(serve_run, ServeSettings(runtime="onnx"))) as client:
        deadline = time.monotonic() + 60
        while client.get("/readyz").json()["status"] == "loading":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert "encoder.onnx, which does not exist" in ready.json()["detail"]


def png_of_row(run: Path, row: int) -> bytes:
    ds = load_dataset(run / "data")
    assert ds.images is not None
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(ds.images[row])).save(buffer, format="PNG")
    return buffer.getvalue()


def ready_client(run: Path, runtime: Runtime) -> TestClient:
    client = TestClient(create_app(run, ServeSettings(runtime=runtime)))
    client.__enter__()
    deadline = time.monotonic() + 120
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").json()
        time.sleep(0.05)
    return client


@pytest.mark.slow
def test_queries_are_embedded_through_onnx(onnx_run: Path) -> None:
    image = {"image": ("q.png", png_of_row(onnx_run, 7), "image/png")}
    answers = {}
    for runtime in ("torch", "onnx", "onnx-int8"):
        client = ready_client(onnx_run, runtime)
        try:
            service = client.app.state.service  # type: ignore[attr-defined]
            embedder = service._embed_images.__self__
            expected = "CNNEncoder" if runtime == "torch" else "OnnxImageEncoder"
            assert type(embedder).__name__ == expected
            found = client.post("/v1/search/image", params={"k": 5}, files=image)
            text = client.get("/v1/search/text", params={"q": "a neon star", "k": 5})
        finally:
            client.__exit__(None, None, None)
        assert found.status_code == 200 and text.status_code == 200, (found.text, text.text)
        answers[runtime] = (found.json(), text.json())
    for runtime, (found, text) in answers.items():
        assert found["runtime"] == runtime and text["runtime"] == runtime
        assert found["model_id"] == answers["torch"][0]["model_id"]  # the checkpoint's id
    torch_hits = answers["torch"][0]["hits"]
    onnx_hits = answers["onnx"][0]["hits"]
    assert [h["pin_id"] for h in onnx_hits] == [h["pin_id"] for h in torch_hits]
    np.testing.assert_allclose(
        [h["score"] for h in onnx_hits], [h["score"] for h in torch_hits], atol=1e-5
    )
    np.testing.assert_allclose(
        [h["score"] for h in answers["onnx"][1]["hits"]],
        [h["score"] for h in answers["torch"][1]["hits"]],
        atol=1e-5,
    )
    assert answers["onnx-int8"][0]["hits"][0]["pin_id"] == torch_hits[0]["pin_id"]
