"""The OpenAPI document as a generated client reads it, and /docs and /redoc offline."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from llem_service.api.docs import VENDOR_DIR

from tests.conftest import build_app

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    data = tmp_path_factory.mktemp("openapi") / "data"
    with TestClient(build_app(data, token="t", max_batch_size=64)) as client:
        yield client


@pytest.fixture(scope="module")
def doc(http: TestClient) -> dict[str, Any]:
    document: dict[str, Any] = http.get("/openapi.json").json()
    return document


def operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            yield method, path, operation


def test_every_v1_route_declares_the_bearer_scheme(doc: dict[str, Any]) -> None:
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "The server's LLEM_API_TOKEN (LLEM_TOKEN or --token for llem-client).",
    }
    for method, path, operation in operations(doc):
        expected: list[dict[str, list[str]]] | None = (
            [{"bearer": []}] if path.startswith("/v1") else None
        )
        assert operation.get("security") == expected, (method, path)
        if path.startswith("/v1"):
            headers = operation["responses"]["401"]["headers"]
            assert "WWW-Authenticate" in headers, (method, path)


def test_operation_ids_are_the_route_names(doc: dict[str, Any]) -> None:
    ids = {f"{m.upper()} {p}": op["operationId"] for m, p, op in operations(doc)}

    assert ids == {
        "GET /healthz": "healthz",
        "POST /v1/experiments": "submit_experiment",
        "GET /v1/experiments": "list_experiments",
        "GET /v1/experiments/{job_id}": "get_experiment",
        "DELETE /v1/experiments/{job_id}": "delete_experiment",
        "GET /v1/experiments/{job_id}/config": "get_config",
        "GET /v1/experiments/{job_id}/result": "get_result",
        "GET /v1/experiments/{job_id}/timeseries": "get_timeseries",
        "POST /v1/experiments/{job_id}/cancel": "cancel_experiment",
        "GET /v1/experiments/{job_id}/events": "stream_events",
        "POST /v1/studies": "submit_study",
        "GET /v1/studies": "list_studies",
        "GET /v1/studies/{study_id}": "get_study",
        "POST /v1/studies/{study_id}/cancel": "cancel_study",
        "GET /v1/studies/{study_id}/events": "stream_study_events",
        "GET /v1/studies/{study_id}/results": "get_study_results",
        "GET /v1/studies/{study_id}/pareto": "get_study_pareto",
        "GET /v1/models": "list_models",
        "GET /v1/info": "get_info",
        "GET /v1/baselines": "get_baselines",
    }


def test_errors_are_problems_and_only_those_sent(doc: dict[str, Any]) -> None:
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    for method, path, operation in operations(doc):
        for code, response in operation["responses"].items():
            if code[0] in "45":
                assert set(response["content"]) == {PROBLEM}, (method, path, code)
                assert response["content"][PROBLEM]["schema"]["$ref"].endswith("/ProblemDetail")
    job = doc["paths"]["/v1/experiments/{job_id}"]["get"]["responses"]
    assert set(job) == {"200", "400", "401", "404"}  # no 422: a path string cannot fail


def test_timeseries_and_events_have_their_media_types(doc: dict[str, Any]) -> None:
    timeseries = doc["paths"]["/v1/experiments/{job_id}/timeseries"]["get"]["responses"]["200"]
    events = doc["paths"]["/v1/experiments/{job_id}/events"]["get"]["responses"]["200"]

    binary = {"type": "string", "format": "binary"}
    assert timeseries["content"] == {
        "application/vnd.apache.parquet": {"schema": binary},
        "text/csv": {"schema": binary},
    }
    assert set(events["content"]) == {"text/event-stream"}


def test_headers_and_links_are_documented(doc: dict[str, Any]) -> None:
    submit = doc["paths"]["/v1/experiments"]["post"]

    assert "Location" in submit["responses"]["202"]["headers"]
    links = submit["responses"]["202"]["links"]
    assert links["get_result"] == {
        "operationId": "get_result",
        "parameters": {"job_id": "$response.body#/id"},
    }
    headers = {p["name"]: p for p in submit["parameters"] if p["in"] == "header"}
    assert "Idempotency-Key" in headers


def test_the_servers_limits_are_in_the_document(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    config = next(v for k, v in schemas.items() if k.startswith("ExperimentConfig"))

    assert config["properties"]["batch_size"]["maximum"] == 64
    assert config["properties"]["n_prompts"]["maximum"] == 100_000
    assert schemas["SyntheticPrompts"]["properties"]["input_len"]["maximum"] == 131_072


def test_docs_pages_load_only_assets_the_service_serves(http: TestClient) -> None:
    for page in ("/docs", "/redoc"):
        html = http.get(page).text
        assert not re.search(r"(src|href)=[\"']https?://", html), page
        for asset in re.findall(r"(?:src|href)=[\"'](/docs/assets/[^\"']+)", html):
            response = http.get(asset)
            assert response.status_code == 200, asset
            assert len(response.content) > 0
    css = http.get("/docs/assets/swagger-ui/swagger-ui.css")
    assert css.headers["content-type"].startswith("text/css")


def test_the_swagger_page_does_not_keep_the_token_in_the_browsers_storage(
    http: TestClient,
) -> None:
    html = http.get("/docs").text

    assert "SwaggerUIBundle(" in html  # the page that would be configured to keep it
    assert "persistAuthorization" not in html


def test_vendored_assets_name_their_version_and_licence() -> None:
    readme = (VENDOR_DIR / "README.md").read_text()
    assert "swagger-ui-dist` | 5.35.0 | Apache-2.0" in readme
    assert "`redoc` | 2.5.4 | MIT" in readme
    for directory in ("swagger-ui", "redoc"):
        assert (Path(VENDOR_DIR) / directory / "LICENSE").is_file()
