"""Every endpoint against requests Schemathesis generates from the service's own OpenAPI
schema, valid and invalid alike, sent to a real server on loopback: none may get a server
error, and every answer must be one the schema documents (its status code, content type and
body)."""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.result import Err
from schemathesis.specs.openapi.schemas import OpenApiSchema

from conftest import LiveServer
from pinlab_serve import ServeSettings
from pinlab_serve._app import UPLOAD_TYPES

# uvicorn's HTTP parser (httptools) refuses a request target (path and query) longer than this
# (measured); valid requests, whose list parameters the schema bounds, stay far below it.
REQUEST_TARGET_LIMIT = 65_535
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def encoded_images(kind: str) -> st.SearchStrategy[bytes]:
    """Real images of `kind` (image/png, ...), 1 to 64 pixels a side, of random pixels."""

    def encode(seed: int, side: int) -> bytes:
        pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format=kind.removeprefix("image/").upper())
        return buffer.getvalue()

    return st.builds(encode, st.integers(0, 2**16), st.integers(1, 64))


# The upload's part declares these types in the schema: without a strategy, Schemathesis
# would send random bytes, and the decode and search path behind them would go untested.
for kind in UPLOAD_TYPES.split(", "):
    schemathesis.openapi.media_type(kind, encoded_images(kind))


@pytest.fixture(scope="module")
def api(generator_run: Path, live_server: LiveServer) -> Iterator[OpenApiSchema]:
    # Small generation bounds: the generate route's valid requests run a real (tiny) UNet.
    bounds = ServeSettings(generate_max_images=4, generate_max_steps=10)
    with live_server(generator_run, 120, bounds) as url:
        yield schemathesis.openapi.from_url(f"{url}/openapi.json")


@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda mode: mode.value)
def test_no_request_gets_a_server_error_or_an_undocumented_answer(
    api: OpenApiSchema, mode: GenerationMode
) -> None:
    operations = []
    for result in api.get_all_operations():
        if isinstance(result, Err):  # a route the schema cannot describe
            raise result.err()
        operations.append(result.ok())
    assert len(operations) >= 10  # the schema is read whole, not one route of it
    statuses: Counter[tuple[str, int]] = Counter()
    for operation in operations:
        takes_input = any(True for _ in operation.iter_parameters()) or bool(
            operation.get_request_payload_content_types()
        )
        if mode is GenerationMode.NEGATIVE and not takes_input:
            continue  # /healthz, /readyz: nothing to make invalid

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=25,
            deadline=None,
            derandomize=True,  # the same requests every run: a failure is a regression
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def answers(case: schemathesis.Case[Any]) -> None:
            response = case.call()
            statuses[case.operation.label, response.status_code] += 1
            url = urlsplit(response.request.url)
            if len(url.path) + len(url.query) + 1 > REQUEST_TARGET_LIMIT:
                # uvicorn refuses it before pinlab sees it, with a plain-text 400
                assert response.status_code == 400, response.text
                return
            case.validate_response(response, checks=CHECKS)

        answers()
    if mode is GenerationMode.POSITIVE:
        # Valid uploads decode and are searched: the fuzz reaches past the form parser.
        assert statuses["POST /v1/search/image", 200] > 0, statuses
