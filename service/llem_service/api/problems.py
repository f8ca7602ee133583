"""OpenAPI descriptions of the problem responses each route can give."""

from __future__ import annotations

from typing import Any

from llem_client import ProblemDetail

_DESCRIPTIONS = {
    400: "Bad request (a cursor this server did not issue; a body that is not UTF-8 text)",
    401: "Missing or wrong bearer token",
    404: "No such job (or, for a timeseries, none was recorded)",
    409: "The job is not in a state that allows this",
    413: "Request body too large",
    422: "Validation failed; `errors` lists each field",
    500: "Server error",
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for these statuses, each an RFC 9457 problem."""
    return {
        status: {"model": ProblemDetail, "description": _DESCRIPTIONS[status]}
        for status in statuses
    }
