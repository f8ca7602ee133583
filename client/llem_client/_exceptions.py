"""Errors raised by the llem client.

LlemError
├── APIConnectionError          the server could not be reached
│   ├── APITimeoutError         the request (or a wait) took too long
│   └── ServerShutdownError     the server said it is shutting down before the job ended
├── ResponseFormatError         the server answered something that is not the contract
└── APIStatusError              the server answered 4xx/5xx; carries .problem and .response
    ├── ClientRequestError      any 4xx
    │   ├── BadRequestError            400
    │   ├── AuthenticationError        401
    │   ├── PermissionDeniedError      403
    │   ├── NotFoundError              404
    │   ├── ConflictError              409
    │   ├── PayloadTooLargeError       413
    │   ├── UnprocessableEntityError   422 (the config failed validation)
    │   └── RateLimitError             429
    └── ServerError             any 5xx
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx

    from llem_client._jobs import Job, ProblemDetail


class LlemError(Exception):
    """Base of every error this package raises."""


class APIConnectionError(LlemError):
    """The server could not be reached."""


class APITimeoutError(APIConnectionError):
    """The request, or a wait for a job, ran out of time."""


class ServerShutdownError(APIConnectionError):
    """The server is shutting down and the job has not ended; ``job`` is its last known state
    (None if it could not be read)."""

    def __init__(self, message: str, job: Job | None = None) -> None:
        super().__init__(message)
        self.job = job


class ResponseFormatError(LlemError):
    """The server's answer does not match the wire contract (wrong service or version?)."""


class APIStatusError(LlemError):
    """The server answered with an error status; ``problem`` is its RFC 9457 detail."""

    def __init__(self, response: httpx.Response, problem: ProblemDetail) -> None:
        self.response = response
        self.problem = problem
        self.status_code = response.status_code
        message = f"{problem.status} {problem.title}"
        if problem.detail:
            message += f": {problem.detail}"
        super().__init__(message)


class ClientRequestError(APIStatusError):
    """A 4xx answer: the request was wrong and retrying it unchanged will not help."""


class BadRequestError(ClientRequestError):
    """400."""


class AuthenticationError(ClientRequestError):
    """401: missing or wrong token (``LLEM_TOKEN``)."""


class PermissionDeniedError(ClientRequestError):
    """403."""


class NotFoundError(ClientRequestError):
    """404: no such job, or no such route on this server."""


class ConflictError(ClientRequestError):
    """409: the job is not in a state that allows this (a result before it finished)."""


class PayloadTooLargeError(ClientRequestError):
    """413: the request body is over the server's limit."""


class UnprocessableEntityError(ClientRequestError):
    """422: the config (or a parameter) failed validation; ``problem.errors`` lists the fields."""


class RateLimitError(ClientRequestError):
    """429."""


class ServerError(APIStatusError):
    """A 5xx answer."""


_BY_STATUS: dict[int, type[ClientRequestError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


def error_for_status(response: httpx.Response, problem: ProblemDetail) -> APIStatusError:
    """The most specific error class for an error response."""
    if response.status_code >= 500:
        return ServerError(response, problem)
    cls = _BY_STATUS.get(response.status_code, ClientRequestError)
    return cls(response, problem)
