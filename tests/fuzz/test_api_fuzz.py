"""Schemathesis against the server's own OpenAPI document, over real HTTP.

Every operation gets generated requests, valid and invalid (positive and negative data). Each
response must not be a server error and must match the document: a declared status code, the
declared content type, a body that validates against the declared schema, declared headers.
The count of requests sent is asserted, so a schema that yields too little fails loudly.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

pytest.importorskip("schemathesis", reason="schemathesis 4 needs Python 3.11 or newer")

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.result import Ok
from schemathesis.generation.modes import GenerationMode

from tests.conftest import LiveServer
from tests.fakes import ScriptedBackend

pytestmark = pytest.mark.fuzz

#: Generated requests per operation and mode at most (simple operations exhaust sooner).
EXAMPLES = int(os.environ.get("LLEM_FUZZ_EXAMPLES", "150"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


def test_generated_requests_get_no_server_error_and_match_the_schema(
    start_server: Callable[..., LiveServer], figures: Callable[[str, dict[str, Any]], None]
) -> None:
    # Valid submissions queue jobs; a fast backend with a short timeout keeps the scheduler moving.
    # A low study limit keeps generated sweeps from queueing thousands of runs.
    server = start_server(backend=ScriptedBackend(), experiment_timeout_s=2.0, max_study_points=20)
    schema = schemathesis.openapi.from_url(f"{server.base_url}/openapi.json")
    sent: dict[str, int] = {}
    statuses: dict[int, int] = {}

    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result.err()  # the document itself is valid
        operations.append(result.ok())
    labels = {op.label for op in operations}
    assert "GET /v1/experiments/{job_id}/events" in labels
    assert {
        "POST /v1/studies",
        "GET /v1/studies",
        "GET /v1/studies/{study_id}",
        "POST /v1/studies/{study_id}/cancel",
        "GET /v1/studies/{study_id}/events",
        "GET /v1/studies/{study_id}/results",
        "GET /v1/studies/{study_id}/pareto",
    } <= labels
    for operation in operations:
        label = f"{operation.method.upper()} {operation.path}"
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            for status in _fuzz(operation, mode):
                sent[label] = sent.get(label, 0) + 1
                statuses[status] = statuses.get(status, 0) + 1

    total = sum(sent.values())
    figures(
        "fuzz",
        {
            "requests": total,
            "per_operation": sent,
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "server_errors": sum(v for k, v in statuses.items() if k >= 500),
        },
    )
    assert total >= 1000
    assert not any(code >= 500 for code in statuses)


def _fuzz(operation: Any, mode: Any) -> list[int]:
    """Send up to ``EXAMPLES`` generated requests to one operation, data fitting the schema
    (positive) or not (negative), validating each response; return their status codes."""
    seen: list[int] = []

    @settings(
        max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(case=operation.as_strategy(mode))
    def exercise(case: Any) -> None:
        response = case.call_and_validate(checks=CHECKS, timeout=30)
        seen.append(response.status_code)

    try:
        exercise()
    except Unsatisfiable:
        assert mode is GenerationMode.NEGATIVE, operation.label  # nothing in it to get wrong
    return seen
