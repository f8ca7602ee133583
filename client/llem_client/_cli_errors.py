"""How the CLI turns expected failures into one line on stderr and an exit code.

Exit codes: 0 success; 1 the experiment failed or the server answered an error (or could not
be reached); 2 bad usage or an invalid config; 130 interrupted. Only unexpected exceptions (bugs)
are allowed to end in a traceback.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llem_client._exceptions import APIStatusError, LlemError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

PROG = "llem-client"


class CliError(Exception):
    """An expected failure: ``message`` is printed as one line, then the CLI exits ``exit_code``.

    Args:
        message: What went wrong and, where it helps, what to do; without the program prefix.
        exit_code: `EXIT_USAGE` for bad input, `EXIT_FAILURE` for everything else.
    """

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines included) collapsed to one space, and
    any other control character escaped (`llem_client.escape_controls`).

    Error texts come from httpx, YAML and the server, any of which may span lines; the CLI's
    promise is one line per error so that logs and ``2>`` redirects stay greppable, and that
    nothing a server sends acts on the terminal.
    """
    from llem_client._text import escape_controls

    return escape_controls(" ".join(text.split()))


def format_field_errors(errors: Iterable[tuple[Sequence[str | int], str]]) -> str:
    """``loc: message`` per offending field, joined with ``; ``.

    ``loc`` is joined with dots; an empty ``loc`` (a rule across the whole config) prints the
    message alone. pydantic prefixes the messages of custom validators with "Value error, ",
    which says nothing to a user, so it is removed.
    """
    parts = []
    for loc, raw in errors:
        msg = raw.removeprefix("Value error, ")
        where = ".".join(str(part) for part in loc)
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)


def describe_api_error(exc: LlemError) -> tuple[str, int]:
    """The line to print and the exit code for an error raised by the client."""
    from llem_client._exceptions import (
        APIStatusError,
        AuthenticationError,
        NotFoundError,
        UnprocessableEntityError,
    )

    if isinstance(exc, AuthenticationError):
        return _authentication(exc), EXIT_FAILURE
    if isinstance(exc, NotFoundError):
        foreign = _not_llem(exc)
        if foreign is not None:
            return foreign, EXIT_FAILURE
    if isinstance(exc, UnprocessableEntityError):
        problem = exc.problem
        if problem.errors:
            # FastAPI locates body fields under "body"; the user wrote a config, not a body.
            fields = format_field_errors(
                (_strip_body(error.loc), error.msg) for error in problem.errors
            )
        else:
            fields = problem.detail or problem.title
        return f"invalid config (rejected by the server): {fields}", EXIT_USAGE
    if isinstance(exc, APIStatusError):
        return f"the server answered {exc}", EXIT_FAILURE
    # Connection and timeout errors already name the server and the cause.
    return str(exc), EXIT_FAILURE


def _strip_body(loc: Sequence[str | int]) -> Sequence[str | int]:
    return loc[1:] if loc and loc[0] == "body" else loc


PROBLEM_URN = "urn:llem:problem:"


def _server_of(exc: APIStatusError) -> str:
    url = exc.response.request.url
    return f"{url.scheme}://{url.netloc.decode()}"


def _authentication(exc: APIStatusError) -> str:
    server = _server_of(exc)
    if exc.response.request.headers.get("Authorization"):
        return (
            f"the server at {server} refused the token (from --token or LLEM_TOKEN): it is not "
            "the server's LLEM_API_TOKEN"
        )
    return f"the server at {server} requires a token: set LLEM_TOKEN (or pass --token)"


def _not_llem(exc: APIStatusError) -> str | None:
    """The message for a 404 that no llem job route gave, or None for an llem one."""
    request = exc.response.request
    where = f"{request.method} {request.url.path}"
    base_hint = (
        "; give the server's address without /v1" if request.url.path.startswith("/v1/v1/") else ""
    )
    kind = exc.problem.type
    if kind == f"{PROBLEM_URN}no-such-route":
        return f"the llem server at {_server_of(exc)} has no route {where}{base_hint}"
    if not kind.startswith(PROBLEM_URN):
        return (
            f"{_server_of(exc)} does not look like an llem server: {where} answered "
            f"{exc.status_code} without an llem problem{base_hint}"
        )
    return None
