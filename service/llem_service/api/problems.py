"""Problem responses: the one place that turns every error into ``application/problem+json``
(RFC 9457), and the OpenAPI description of the problems each route can give.

Routes raise the domain errors of `llem_service.errors` and never build error responses
themselves.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from llem_client import FieldError, ProblemDetail
from llem_client._config import unknown_field_hint
from starlette.exceptions import HTTPException as StarletteHTTPException

from llem_service.errors import PROBLEM_URN, LlemServiceError

PROBLEM_MEDIA_TYPE = "application/problem+json"
_log = logging.getLogger("llem.service")

_DESCRIPTIONS = {
    400: "Bad request: a body that is not UTF-8 JSON, an ambiguous job id prefix (`candidates` "
    "lists the jobs it matches), or a cursor this server did not issue",
    401: "Missing or wrong bearer token",
    404: "No such job or study (or, for a timeseries, none was recorded)",
    409: "The job or study is not in a state that allows this",
    413: "Request body too large",
    422: "Validation failed, or the config cannot run on this server (a model it does not "
    "have, a size over its limits); `errors` lists each field",
    500: "Server error",
    503: "The executor cannot run experiments now (the problem says why); retry later",
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for these statuses, each an RFC 9457 problem."""
    return {
        status: {"model": ProblemDetail, "description": _DESCRIPTIONS[status]}
        for status in statuses
    }


def problem_response(
    problem: ProblemDetail, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        problem.model_dump(mode="json", exclude_none=True),
        status_code=problem.status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=dict(headers or {}),
    )


def field_errors(errors: Sequence[Any]) -> list[FieldError]:
    """Pydantic/FastAPI errors as `FieldError`s, messages without pydantic's prefixes."""
    out = []
    for error in errors:
        msg = str(error.get("msg", ""))
        for prefix in ("Value error, ", "Assertion failed, "):
            msg = msg.removeprefix(prefix)
        loc = [part for part in error.get("loc", ()) if isinstance(part, str | int)]
        if error.get("type") == "extra_forbidden" and loc[:1] == ["body"]:
            msg = unknown_field_hint(loc[1:])
        out.append(FieldError(loc=loc, msg=msg, type=str(error.get("type", "value_error"))))
    return out


def validation_problem(errors: Sequence[Any], instance: str | None = None) -> ProblemDetail:
    fields = field_errors(errors)
    detail = "; ".join(f"{'.'.join(str(p) for p in e.loc) or '(body)'}: {e.msg}" for e in fields)
    return ProblemDetail(
        type=f"{PROBLEM_URN}validation-error",
        title="Invalid request",
        status=422,
        detail=detail,
        instance=instance,
        errors=fields,
    )


def install_error_handlers(app: FastAPI) -> None:
    """Map every error the app can raise to an RFC 9457 problem response."""

    async def on_domain_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, LlemServiceError)
        return problem_response(exc.problem(request.url.path), exc.headers)

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return problem_response(validation_problem(exc.errors(), request.url.path))

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        detail = str(exc.detail)
        kind = "about:blank"
        if exc.status_code == 404 and detail == "Not Found":
            # Routing found nothing: say so, so a client given a wrong URL (a base URL ending
            # in /v1, say) can tell "no such route" from "no such job".
            kind = f"{PROBLEM_URN}no-such-route"
            detail = f"this llem server has no route {request.url.path}"
        elif exc.status_code == 405:
            kind = f"{PROBLEM_URN}method-not-allowed"
            detail = f"{request.method} is not a method of {request.url.path}"
        problem = ProblemDetail(
            type=kind,
            title=_reason(exc.status_code),
            status=exc.status_code,
            detail=detail,
            instance=request.url.path,
        )
        return problem_response(problem, exc.headers)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        _log.exception("unhandled error on %s %s", request.method, request.url.path)
        problem = ProblemDetail(
            type=f"{PROBLEM_URN}internal-error",
            title="Internal Server Error",
            status=500,
            detail="the server failed unexpectedly; its log has the details",
            instance=request.url.path,
        )
        return problem_response(problem)

    app.add_exception_handler(LlemServiceError, on_domain_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)


def _reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
