"""``llem-client``: submit experiments to an llem server and read their results.

Start-up time matters (``--help``, shell completion, scripts calling the CLI in loops), so this
module imports only argparse and light package modules at load time. httpx, pydantic, PyYAML
and rich are imported inside the command handlers, after the arguments have been parsed.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

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
    from typing import TypeAlias

    from llem_client._client import Client
    from llem_client._jobs import Job

    #: Builds the client from ``--server``, ``--token`` and ``--timeout`` (``None`` if absent).
    ClientFactory: TypeAlias = Callable[[str | None, str | None, float | None], Client]

# Kept here, not read from JobStatus, so that building the parser needs no pydantic.
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


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

    handler: Callable[[argparse.Namespace, ClientFactory], int] = args.handler
    try:
        return handler(args, client_factory or default_client_factory)
    except CliError as exc:
        return _fail(exc.message, exc.exit_code)
    except LlemError as exc:
        message, code = describe_api_error(exc)
        return _fail(message, code)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)
    except BrokenPipeError:
        # The reader went away (`llem-client list | head`); silence the flush at exit.
        _silence_stdout()
        return EXIT_FAILURE


def _fail(message: str, exit_code: int) -> int:
    print(f"{PROG}: {one_line(message)}", file=sys.stderr, flush=True)
    return exit_code


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass  # stdout has no file descriptor (captured in tests): nothing to flush at exit


def _write_stdout(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()


# --- argument parsing -------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


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
        type=_positive_float,
        default=default,
        help="timeout of each request (default: 30)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The whole command line. Building it imports nothing beyond argparse."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Measure the energy and speed of LLM inference on an llem server.",
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

    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str, handler: Callable[..., int]) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text, parents=[connection])
        sub.set_defaults(handler=handler)
        return sub

    run = command("run", "run an experiment and wait for its result", _cmd_run)
    _add_run_arguments(run)

    status = command("status", "show a job", _cmd_status)
    status.add_argument("job_id", metavar="ID")
    status.add_argument("--json", action="store_true", help="print the job as JSON")

    result = command("result", "fetch the result of a finished job", _cmd_result)
    result.add_argument("job_id", metavar="ID")
    result.add_argument("--out", metavar="FILE", help="also write the result JSON to FILE")
    result.add_argument("--json", action="store_true", help="print the result JSON only")
    result.add_argument(
        "--timeseries",
        metavar="FILE",
        help="also download the power timeline to FILE (CSV if it ends in .csv, else Parquet)",
    )

    jobs = command("list", "list jobs, newest first", _cmd_list)
    jobs.add_argument("--status", choices=JOB_STATUSES, help="only jobs in this status")
    jobs.add_argument("--limit", metavar="N", type=_positive_int, default=20, help="default 20")
    jobs.add_argument("--cursor", help="continue a listing (printed when there are more jobs)")
    jobs.add_argument("--json", action="store_true", help="print the job list as JSON")

    cancel = command("cancel", "cancel a queued or running job", _cmd_cancel)
    cancel.add_argument("job_id", metavar="ID")
    cancel.add_argument("--json", action="store_true", help="print the job as JSON")

    info = command("info", "show what the server is and has", _cmd_info)
    info.add_argument("--json", action="store_true", help="print the service info as JSON")

    from llem_client._cli_study import add_study_commands

    add_study_commands(commands, connection, _positive_float)

    config = commands.add_parser("config", help="work with config files (offline)")
    config_commands = config.add_subparsers(dest="config_command", metavar="COMMAND", required=True)
    validate = config_commands.add_parser(
        "validate",
        help="check a config file without a server",
        description="Check a config file without a server; print its measurement config hash.",
    )
    validate.add_argument("file", metavar="FILE", help="YAML or JSON config")
    validate.set_defaults(handler=_cmd_config_validate)
    return parser


def _add_run_arguments(run: argparse.ArgumentParser) -> None:
    run.add_argument("config", nargs="?", metavar="CONFIG", help="YAML or JSON config file")
    fields = run.add_argument_group("config overrides (applied over CONFIG)")
    fields.add_argument("--model", help="Hub id or a directory on the server (required w/o CONFIG)")
    fields.add_argument("--backend", help="inference backend, e.g. pytorch")
    fields.add_argument("--precision", help="fp32, fp16 or bf16")
    fields.add_argument("--batch-size", type=int, metavar="N")
    fields.add_argument("-n", "--n-prompts", type=int, metavar="N", help="requests to measure")
    fields.add_argument("--max-output-tokens", type=int, metavar="N")
    fields.add_argument("--max-input-tokens", type=int, metavar="N")
    fields.add_argument("--input-len", type=int, metavar="N", help="tokens per synthetic prompt")
    fields.add_argument("--repeats", type=int, metavar="N")
    fields.add_argument("--name", help="a label for the experiment")
    fields.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set any field by its dotted path; VALUE is read as YAML "
        "(e.g. --set decoding.mode=sample --set decoding.temperature=0.7); repeatable",
    )
    output = run.add_argument_group("output")
    output.add_argument(
        "--out",
        metavar="PATH",
        help="write the result JSON here (a file, or a directory for the default name); "
        "default: MODEL-YYYYmmdd-HHMMSS.json in the current directory, unless --json",
    )
    output.add_argument("--json", action="store_true", help="print the result JSON alone on stdout")
    output.add_argument(
        "--no-wait", action="store_true", help="print the job id and return at once"
    )


# --- commands ---------------------------------------------------------------------------------


def _follow_hint(args: argparse.Namespace) -> str:
    """The command prefix a user should type to reach the same server again."""
    return f"{PROG} --server {args.server}" if args.server else PROG


def _cmd_run(args: argparse.Namespace, make_client: ClientFactory) -> int:
    from llem_client._cli_config import (
        FLAG_KEYS,
        apply_overrides,
        load_config_file,
        validate_config,
    )
    from llem_client._cli_output import checked_out_path, emit_result

    if args.config is None and args.model is None:
        raise CliError("run needs a CONFIG file or --model MODEL")
    if args.no_wait and args.out:
        raise CliError("--out needs the result, so it cannot be used with --no-wait")
    data = load_config_file(args.config) if args.config is not None else {}
    data = apply_overrides(
        data,
        flags={flag: getattr(args, flag) for flag in FLAG_KEYS},
        input_len=args.input_len,
        sets=args.set,
    )
    config = validate_config(data)
    # Checked before submitting: a typo in --out must not cost a whole experiment.
    out = checked_out_path(args.out)

    with make_client(args.server, args.token, args.timeout) as client:
        job = client.submit(config)
        if args.no_wait:
            _write_stdout(job.model_dump_json(indent=2) if args.json else job.id)
            return EXIT_OK
        print(f"submitted job {job.id} to {client.base_url}", file=sys.stderr, flush=True)
        job = _wait(client, job, args)
        if job.status.value == "failed":
            from llem_client._cli_render import format_problem

            reason = format_problem(job.error) if job.error else "the server gave no reason"
            raise CliError(f"job {job.id} failed: {reason}", EXIT_FAILURE)
        if job.status.value == "cancelled":
            raise CliError(f"job {job.id} was cancelled", EXIT_FAILURE)
        result = client.result(job.id)
    emit_result(result, out=out, as_json=args.json, default_file=not args.json)
    return EXIT_OK


def _wait(client: Client, job: Job, args: argparse.Namespace) -> Job:
    from llem_client._cli_progress import make_reporter

    reporter = make_reporter(job.id)
    try:
        reporter(job)
        return client.wait(job.id, on_update=reporter)
    except KeyboardInterrupt:
        reporter.close()  # stop the live display before printing under it
        hint = _follow_hint(args)
        raise CliError(
            f"interrupted; job {job.id} is still running on the server. Follow it with "
            f"'{hint} status {job.id}' and fetch its result with '{hint} result {job.id}' "
            f"(or stop it with '{hint} cancel {job.id}')",
            EXIT_INTERRUPTED,
        ) from None
    finally:
        reporter.close()


def _cmd_status(args: argparse.Namespace, make_client: ClientFactory) -> int:
    with make_client(args.server, args.token, args.timeout) as client:
        job = client.get(args.job_id)
    if args.json:
        _write_stdout(job.model_dump_json(indent=2))
    else:
        from llem_client._cli_render import print_job, stdout_console

        print_job(job, stdout_console())
    return EXIT_OK


def _cmd_result(args: argparse.Namespace, make_client: ClientFactory) -> int:
    from llem_client._cli_output import checked_out_path, emit_result
    from llem_client._exceptions import ConflictError, NotFoundError

    out = checked_out_path(args.out)
    timeseries_path = checked_out_path(args.timeseries, flag="--timeseries")
    with make_client(args.server, args.token, args.timeout) as client:
        try:
            result = client.result(args.job_id)
        except ConflictError as exc:
            problem = exc.problem.detail or exc.problem.title
            raise CliError(
                f"job {args.job_id} has no result: {problem}; "
                f"see '{_follow_hint(args)} status {args.job_id}'",
                EXIT_FAILURE,
            ) from exc
        if timeseries_path is not None:
            csv = timeseries_path.suffix.lower() == ".csv"
            try:
                data = client.timeseries(args.job_id, format="csv" if csv else "parquet")
            except NotFoundError as exc:
                raise CliError(
                    f"job {args.job_id} has no timeseries: "
                    f"{exc.problem.detail or exc.problem.title}",
                    EXIT_FAILURE,
                ) from exc
            timeseries_path.write_bytes(data)
    emit_result(result, out=out, as_json=args.json, default_file=False)
    if timeseries_path is not None:
        sys.stderr.write(f"wrote {timeseries_path}\n")  # stderr: --json keeps stdout clean
    return EXIT_OK


def _cmd_list(args: argparse.Namespace, make_client: ClientFactory) -> int:
    with make_client(args.server, args.token, args.timeout) as client:
        page = client.list(status=args.status, limit=args.limit, cursor=args.cursor)
    if args.json:
        _write_stdout(page.model_dump_json(indent=2))
        return EXIT_OK
    from llem_client._cli_render import print_job_list, stdout_console

    print_job_list(page.items, stdout_console())
    if page.next_cursor is not None:
        print(
            f"more jobs: {_follow_hint(args)} list --cursor {page.next_cursor}",
            file=sys.stderr,
        )
    return EXIT_OK


def _cmd_cancel(args: argparse.Namespace, make_client: ClientFactory) -> int:
    with make_client(args.server, args.token, args.timeout) as client:
        job = client.cancel(args.job_id)
    if args.json:
        _write_stdout(job.model_dump_json(indent=2))
    elif job.status.terminal:
        _write_stdout(f"job {job.id}: {job.status.value}")
    else:
        # A running job is stopped asynchronously: the server answers before it has ended.
        _write_stdout(f"job {job.id}: cancel requested; it is {job.status.value} and will stop")
    return EXIT_OK


def _cmd_info(args: argparse.Namespace, make_client: ClientFactory) -> int:
    with make_client(args.server, args.token, args.timeout) as client:
        info = client.info()
        server = client.base_url
    if args.json:
        _write_stdout(info.model_dump_json(indent=2))
        return EXIT_OK
    from llem_client._cli_render import print_info, stdout_console

    print_info(info, server, SCHEMA_VERSION, stdout_console())
    return EXIT_OK


def _cmd_config_validate(args: argparse.Namespace, make_client: ClientFactory) -> int:
    from llem_client._cli_config import load_config_file, validate_config
    from llem_client._hashing import measurement_config_hash

    config = validate_config(load_config_file(args.file))
    _write_stdout(f"valid: {measurement_config_hash(config)}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
