"""What every command group of ``llem-client`` shares: how a command is registered, the
argument types, the follow-up hints, and writing to stdout.

A command group is a module with ``register(commands)`` (``_cmd_jobs``, ``_cmd_results``...):
it adds its subcommands through `Commands.add`, which gives each the connection options and its
handler. Like ``cli.py``, these modules import only argparse and light package modules at load
time, so ``llem-client --help`` stays fast; heavier imports live inside the handlers.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from llem_client._cli_errors import PROG

if TYPE_CHECKING:
    from typing import TypeAlias

    from llem_client._client import Client

    #: Builds the client from ``--server``, ``--token`` and ``--timeout`` (``None`` if absent).
    ClientFactory: TypeAlias = Callable[[str | None, str | None, float | None], Client]
    Handler: TypeAlias = Callable[[argparse.Namespace, ClientFactory], int]

# Kept here, not read from JobStatus, so that building the parser needs no pydantic.
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


class Commands:
    """Registers subcommands, each with the connection options and a handler.

    Args:
        subparsers: The top-level parser's subcommands.
        connection: A parent parser holding ``--server``, ``--token`` and ``--timeout``.
    """

    def __init__(self, subparsers: Any, connection: argparse.ArgumentParser) -> None:
        self.subparsers = subparsers
        self.connection = connection

    def add(
        self,
        name: str,
        help_text: str,
        handler: Handler | None,
        *,
        aliases: tuple[str, ...] = (),
        description: str | None = None,
        connection: bool = True,
    ) -> argparse.ArgumentParser:
        """A subcommand; ``handler`` None for a group whose own subcommands have handlers."""
        sub: argparse.ArgumentParser = self.subparsers.add_parser(
            name,
            help=help_text,
            description=description or help_text,
            aliases=list(aliases),
            parents=[self.connection] if connection else [],
        )
        if handler is not None:
            sub.set_defaults(handler=handler)
        return sub


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


def tag_filter(text: str) -> str:
    key, sep, _ = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return text


def tags_of(filters: list[str] | None) -> dict[str, str]:
    """``--tag KEY=VALUE`` options as a mapping."""
    return dict(item.partition("=")[::2] for item in filters or [])


def add_json_flag(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--json", action="store_true", help=f"print {what} as JSON (errors too, on stdout)"
    )


def add_job_filters(parser: argparse.ArgumentParser) -> None:
    """``--tag`` and ``--name``, as ``list`` and ``export`` take them."""
    parser.add_argument(
        "--tag",
        action="append",
        type=tag_filter,
        metavar="KEY=VALUE",
        help="only jobs with this tag; repeat for several (all must match)",
    )
    parser.add_argument("--name", metavar="TEXT", help="only jobs whose name contains TEXT")


def follow_hint(args: argparse.Namespace) -> str:
    """The command prefix a user should type to reach the same server again."""
    return f"{PROG} --server {args.server}" if getattr(args, "server", None) else PROG


def short_id(job_id: str) -> str:
    """The first 8 characters of a job id: what listings show and what commands accept."""
    return job_id[:8]


def write_stdout(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()
