"""Property-based fuzzing of the OpenAPI schema (schemathesis + Hypothesis): never a 5xx.

Every operation of the live app's own schema gets generated requests, both valid-by-schema
and, via the malformed-body tests in test_api.py, invalid ones; every answer must be a
documented status with a body matching its schema, and never a server error.
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]


def test_no_generated_request_makes_the_server_fail(api):
    schema = schemathesis.openapi.from_asgi("/openapi.json", api.app)
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {op.label for op in operations}
    assert {"POST /predict", "POST /predict/batch", "POST /feedback"} <= labels

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
        def fuzz(case) -> None:
            case.call_and_validate(checks=CHECKS)

        fuzz()
