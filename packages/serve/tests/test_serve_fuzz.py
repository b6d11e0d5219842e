"""Every endpoint against requests Schemathesis generates from the service's own OpenAPI
schema, valid and invalid alike: none may get a server error, and every answer must be one
the schema documents (its status code, content type and body)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.result import Err
from schemathesis.specs.openapi.schemas import OpenApiSchema

from conftest import wait_ready
from pinlab_serve import ServeSettings
from pinlab_serve._app import create_app

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def api(generator_run: Path) -> Iterator[OpenApiSchema]:
    # Small generation bounds: the generate route's valid requests run a real (tiny) UNet.
    app = create_app(generator_run, ServeSettings(generate_max_images=4, generate_max_steps=10))
    with TestClient(app) as client:  # runs the lifespan: the service loads once
        wait_ready(client)
        yield schemathesis.openapi.from_asgi("/openapi.json", app)


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
            case.call_and_validate(checks=CHECKS)

        answers()
