"""Schemathesis over the service's own OpenAPI schema, against a real uvicorn: a bounded number of
generated requests per operation, valid and invalid, and none may get a 5xx (a 503 from /readyz or
overload is declared and allowed); every 4xx is the service's JSON error body."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.schemas import OpenApiSchema

from bev_service.service.app import create_app
from bev_service.service.settings import Settings
from tests.service.conftest import LiveServer

EXAMPLES = {GenerationMode.POSITIVE: 25, GenerationMode.NEGATIVE: 25}
# The schema is the app's whatever it is started with: read it once, at collection, starting nothing.
PATHS = create_app(Settings()).openapi()["paths"]
OPERATIONS = [f"{method.upper()} {path}" for path, methods in PATHS.items() for method in methods]
# Invalid requests can only be made for operations that take something (parameters or a body).
CASES = [
    (f"{method.upper()} {path}", mode)
    for path, methods in PATHS.items()
    for method, spec in methods.items()
    for mode in EXAMPLES
    if mode is GenerationMode.POSITIVE or spec.get("parameters") or spec.get("requestBody")
]


@pytest.fixture(scope="module")
def fuzzed(make_server: Callable[..., LiveServer]) -> LiveServer:
    """Its own server: fuzzed PUTs may store rigs in its rigs_dir."""
    return make_server()


@pytest.fixture(scope="module")
def schema(fuzzed: LiveServer) -> OpenApiSchema:
    return schemathesis.openapi.from_url(fuzzed.url("/openapi.json"))


def test_schema_lists_the_api() -> None:
    assert {"POST /v1/bev", "GET /v1/rigs", "PUT /v1/rigs/{rig_id}", "GET /healthz", "GET /metrics"} <= set(OPERATIONS)


@pytest.mark.parametrize(("operation", "mode"), CASES, ids=[f"{op}-{mode.value}" for op, mode in CASES])
def test_no_server_error(operation: str, mode: GenerationMode, fuzzed: LiveServer, schema: OpenApiSchema) -> None:
    method, path = operation.split(" ", 1)
    api_operation = schema[path][method]
    statuses: list[int] = []

    @given(case=api_operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES[mode],
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case) -> None:
        response = case.call(base_url=fuzzed.base_url, timeout=60)
        case.validate_response(response, checks=[not_a_server_error])
        statuses.append(response.status_code)
        if response.status_code >= 400:
            body = response.json()
            assert {"error", "detail"} <= set(body), (response.status_code, body)

    run()
    assert statuses, "no request was sent"
    assert all(s < 500 or s == 503 for s in statuses), statuses
