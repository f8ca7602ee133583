"""``llem-client``: submit experiments to an llem server and read their results.

Start-up time matters (``--help``, shell completion, scripts calling the CLI in loops), so this
module and the command groups (``_cmd_*``) import only argparse and light package modules at
load time. httpx, pydantic, PyYAML and rich are imported inside the command handlers, after the
arguments have been parsed.

A command group is a module with ``register(commands)``; `COMMAND_GROUPS` lists them in the
order ``--help`` shows them. A new group (``llem-client study ...``) is a new module and a line
here.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from llem_client import _cmd_info, _cmd_jobs, _cmd_results, _cmd_run
from llem_client._cli_common import Commands, positive_float, write_stdout
from llem_client._cli_errors import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    PROG,
    CliError,
    describe_api_error,
    one_line,
)
from llem_client._version import SCHEMA_VERSION, __version__

if TYPE_CHECKING:
    from llem_client._cli_common import ClientFactory
    from llem_client._client import Client


def _register_studies(commands: Commands) -> None:
    from llem_client._cli_study import add_study_commands

    add_study_commands(commands.subparsers, commands.connection, positive_float)


#: The command groups, in the order of ``--help``.
COMMAND_GROUPS: tuple[Callable[[Commands], None], ...] = (
    _cmd_run.register,
    _cmd_jobs.register,
    _cmd_results.register,
    _register_studies,
    _cmd_info.register,
)


def default_client_factory(server: str | None, token: str | None, timeout: float | None) -> Client:
    """The real `Client`; it falls back to ``$LLEM_SERVER`` and ``$LLEM_TOKEN`` itself."""
    from llem_client._client import DEFAULT_TIMEOUT_S, Client

    return Client(server, token, timeout=DEFAULT_TIMEOUT_S if timeout is None else timeout)


def main(argv: list[str] | None = None, *, client_factory: ClientFactory | None = None) -> int:
    """Run the CLI and return its exit code (0 ok, 1 failed, 2 bad usage, 130 interrupted).

    Args:
        argv: The arguments, without the program name; default ``sys.argv[1:]``.
        client_factory: How to build the client; tests pass one that returns a fake.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors: return, don't exit
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    # Light (no httpx or pydantic at import time); needed only once a command runs.
    from llem_client._exceptions import LlemError

    as_json = bool(getattr(args, "json", False))
    handler: Callable[[argparse.Namespace, ClientFactory], int] = args.handler
    try:
        return handler(args, client_factory or default_client_factory)
    except CliError as exc:
        return _fail(exc.message, exc.exit_code, as_json)
    except LlemError as exc:
        message, code = describe_api_error(exc)
        return _fail(message, code, as_json, exc)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED, as_json)
    except BrokenPipeError:
        # The reader went away (`llem-client list | head`); silence the flush at exit.
        _silence_stdout()
        return EXIT_FAILURE


def _fail(message: str, exit_code: int, as_json: bool, exc: Exception | None = None) -> int:
    """One line on stderr; with ``--json`` also ``{"error": {...}}`` on stdout for scripts."""
    line = one_line(message)
    if as_json:
        import json

        error: dict[str, Any] = {"message": line, "exit_code": exit_code}
        problem = getattr(exc, "problem", None)
        if problem is not None:
            error["problem"] = problem.model_dump(mode="json", exclude_none=True)
        sys.stdout.write(json.dumps({"error": error}, indent=2) + "\n")
        sys.stdout.flush()
    print(f"{PROG}: {line}", file=sys.stderr, flush=True)
    return exit_code


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass  # stdout has no file descriptor (captured in tests): nothing to flush at exit


def _add_connection_options(parser: argparse.ArgumentParser, default: Any) -> None:
    group = parser.add_argument_group("server")
    group.add_argument(
        "--server",
        metavar="URL",
        default=default,
        help="the llem server (default: $LLEM_SERVER, else http://127.0.0.1:8000)",
    )
    group.add_argument(
        "--token", metavar="TOKEN", default=default, help="bearer token (default: $LLEM_TOKEN)"
    )
    group.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=positive_float,
        default=default,
        help="timeout of each request (default: 30)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The whole command line. Building it imports nothing beyond argparse."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Measure the energy and speed of LLM inference on an llem server. "
        "Commands that take a job ID take a unique prefix of it too.",
        epilog=(
            "exit codes: 0 ok; 1 the experiment failed or the server answered an error; "
            "2 bad usage or an invalid config; 130 interrupted"
        ),
    )
    parser.add_argument(
        "--version", action="version", version=f"{PROG} {__version__} (schema {SCHEMA_VERSION})"
    )
    _add_connection_options(parser, default=None)
    # The same options after the command (`llem-client status ID --server URL`); SUPPRESS
    # keeps a command's parser from overwriting a value given before the command.
    connection = argparse.ArgumentParser(add_help=False)
    _add_connection_options(connection, default=argparse.SUPPRESS)

    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands = Commands(subparsers, connection)
    for register in COMMAND_GROUPS:
        register(commands)
    completion = commands.add(
        "completion",
        "print a shell completion script (bash, zsh, fish)",
        _completion_command,
        connection=False,
        description="Print a completion script: e.g. 'source <(llem-client completion bash)' "
        "in ~/.bashrc, or save 'llem-client completion fish' as "
        "~/.config/fish/completions/llem-client.fish.",
    )
    completion.add_argument("shell", choices=("bash", "zsh", "fish"))
    return parser


def _completion_command(args: argparse.Namespace, make_client: ClientFactory) -> int:
    from llem_client._cli_completion import script

    write_stdout(script(args.shell, build_parser()))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
