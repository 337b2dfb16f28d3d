"""Schemathesis fuzzes every operation of the OpenAPI schema, with data that fits the schema
and data that does not: no input yields a 5xx, and every answer is one the schema documents.

(Schemathesis's own pytest fixture loader does not run under this pytest, so the operations
are driven through its Hypothesis strategies directly.)
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.app import create_app
from tests.service.conftest import settings_for

pytestmark = pytest.mark.slow

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.mark.parametrize("kind", ["cond", "uncond"])
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_input_makes_a_server_error(bundles, kind, mode):
    app = create_app(settings_for(bundles[kind], max_duration_s=2.0))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)  # starts the lifespan
    try:
        deadline = time.monotonic() + 30
        while not app.state.service.ready:
            assert time.monotonic() < deadline, "the app did not become ready"
            time.sleep(0.01)
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) == 7
        for operation in operations:
            fuzz(operation, mode)
    finally:
        shutdown_lifespans()  # stop the engine and restore torch's settings


def fuzz(operation: Any, mode: GenerationMode) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=15,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(checks=CHECKS)

    try:
        run()
    except Unsatisfiable:  # nothing to break in an operation without inputs
        assert mode == GenerationMode.NEGATIVE and operation.method.upper() == "GET"
