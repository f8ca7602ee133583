"""Domain errors and the one place that turns every error into ``application/problem+json``.

Routes raise these errors and never build error responses themselves.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from llem_client import FieldError, ProblemDetail
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_MEDIA_TYPE = "application/problem+json"
_log = logging.getLogger("llem.service")


class LlemServiceError(Exception):
    """An error with an HTTP meaning. Subclasses set the status, title and problem type."""

    status = 500
    title = "Internal Server Error"
    slug = "internal-error"

    def __init__(self, detail: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = dict(headers or {})

    def problem(self, instance: str | None = None) -> ProblemDetail:
        return ProblemDetail(
            type=f"urn:llem:problem:{self.slug}",
            title=self.title,
            status=self.status,
            detail=self.detail,
            instance=instance,
        )


class JobNotFound(LlemServiceError):
    status, title, slug = 404, "Job not found", "job-not-found"


class JobNotFinished(LlemServiceError):
    status, title, slug = 409, "Job not finished", "job-not-finished"


class JobHasNoResult(LlemServiceError):
    status, title, slug = 409, "Job has no result", "job-has-no-result"


class JobAlreadyFinished(LlemServiceError):
    status, title, slug = 409, "Job already finished", "job-already-finished"


class IdempotencyKeyReused(LlemServiceError):
    status, title, slug = 422, "Idempotency key reused", "idempotency-key-reused"


class InvalidCursor(LlemServiceError):
    status, title, slug = 400, "Invalid cursor", "invalid-cursor"


class NotAuthenticated(LlemServiceError):
    status, title, slug = 401, "Not authenticated", "not-authenticated"


class PayloadTooLarge(LlemServiceError):
    status, title, slug = 413, "Payload too large", "payload-too-large"


class TimeseriesNotRecorded(LlemServiceError):
    status, title, slug = 404, "No timeseries", "timeseries-not-recorded"


class ResultUnavailable(LlemServiceError):
    status, title, slug = 500, "Result unavailable", "result-unavailable"


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
        out.append(FieldError(loc=loc, msg=msg, type=str(error.get("type", "value_error"))))
    return out


def validation_problem(errors: Sequence[Any], instance: str | None = None) -> ProblemDetail:
    fields = field_errors(errors)
    detail = "; ".join(f"{'.'.join(str(p) for p in e.loc) or '(body)'}: {e.msg}" for e in fields)
    return ProblemDetail(
        type="urn:llem:problem:validation-error",
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
        problem = ProblemDetail(
            title=_reason(exc.status_code),
            status=exc.status_code,
            detail=str(exc.detail),
            instance=request.url.path,
        )
        return problem_response(problem, exc.headers)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        _log.exception("unhandled error on %s %s", request.method, request.url.path)
        problem = ProblemDetail(
            type="urn:llem:problem:internal-error",
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
