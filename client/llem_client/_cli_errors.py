"""How the CLI turns expected failures into one line on stderr and an exit code.

Exit codes: 0 success; 1 the experiment failed or the server answered an error (or could not
be reached); 2 bad usage or an invalid config; 130 interrupted. Only unexpected exceptions (bugs)
are allowed to end in a traceback.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llem_client._exceptions import LlemError

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
    """``text`` with every run of whitespace (newlines included) collapsed to one space.

    Error texts come from httpx, YAML and the server, any of which may span lines; the CLI's
    promise is one line per error so that logs and ``2>`` redirects stay greppable.
    """
    return " ".join(text.split())


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
    from llem_client._exceptions import APIStatusError, UnprocessableEntityError

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
