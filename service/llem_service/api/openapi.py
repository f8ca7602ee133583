"""The OpenAPI document as clients need it: FastAPI's, made exact.

- Errors are ``application/problem+json`` (`ProblemDetail`), and a route declares only the
  errors it sends: FastAPI's own ``422 HTTPValidationError`` (a shape this server never sends)
  is dropped from every route.
- ``401`` answers document their ``WWW-Authenticate`` challenge.
- The server's size limits (``LLEM_MAX_*``) are the ``maximum`` of the fields they bound, so
  a generated client or a fuzzer knows what this server accepts.
- Operation ids are the route functions' names (`operation_id`).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from llem_service.api.problems import PROBLEM_MEDIA_TYPE
from llem_service.settings import Settings

_FASTAPI_VALIDATION = "#/components/schemas/HTTPValidationError"
_CHALLENGE_HEADER = {
    "WWW-Authenticate": {
        "description": 'The challenge: Bearer realm="llem"',
        "schema": {"type": "string"},
    }
}


def operation_id(route: APIRoute) -> str:
    """``submit_experiment``, ``get_result``...: the route function's name, unique in the app."""
    return route.name


def _limits(settings: Settings) -> dict[tuple[str, str], int]:
    """(schema, property) -> the server's maximum for it."""
    return {
        ("ExperimentConfig", "n_prompts"): settings.max_n_prompts,
        ("ExperimentConfig", "max_output_tokens"): settings.max_output_tokens,
        ("ExperimentConfig", "batch_size"): settings.max_batch_size,
        ("ExperimentConfig", "max_input_tokens"): settings.max_input_tokens,
        ("SyntheticPrompts", "input_len"): settings.max_input_tokens,
    }


def _set_maximum(schema: dict[str, Any], maximum: int) -> None:
    # An optional integer is anyOf [integer, null]: the bound belongs to the integer.
    for branch in schema.get("anyOf", [schema]):
        if branch.get("type") == "integer":
            branch["maximum"] = min(maximum, branch.get("maximum", maximum))


def _fix_responses(operation: dict[str, Any]) -> None:
    responses = operation.get("responses", {})
    for code in list(responses):
        content = responses[code].get("content", {})
        ref = content.get("application/json", {}).get("schema", {}).get("$ref")
        if ref == _FASTAPI_VALIDATION:
            del responses[code]
            continue
        if code[0] in "45" and "application/json" in content:
            content[PROBLEM_MEDIA_TYPE] = content.pop("application/json")
        if code == "401":
            responses[code].setdefault("headers", {}).update(_CHALLENGE_HEADER)


def build_openapi(app: FastAPI, settings: Settings) -> dict[str, Any]:
    """The app's document (made once, then kept on the app)."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        description=app.description,
        routes=app.routes,
        tags=app.openapi_tags,
    )
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            _fix_responses(operation)
    components = schema.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    for (model, field), maximum in _limits(settings).items():
        # A model used in requests and responses may be split into "X-Input" and "X-Output".
        for name, component in components.items():
            if name == model or name.startswith(f"{model}-"):
                prop = component.get("properties", {}).get(field)
                if prop is not None:
                    _set_maximum(prop, maximum)
    app.openapi_schema = schema
    return schema
