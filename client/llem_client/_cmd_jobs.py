"""``status``, ``list``, ``watch`` (``wait``), ``cancel`` and ``delete``: jobs on the server.

Every command that takes a job takes its id or a unique prefix of it (the 8 characters that
``list`` shows); the server resolves the prefix, and an ambiguous one lists the candidates.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import TYPE_CHECKING

from llem_client._cli_common import (
    JOB_STATUSES,
    Commands,
    add_job_filters,
    add_json_flag,
    follow_hint,
    positive_int,
    tags_of,
    write_stdout,
)
from llem_client._cli_errors import EXIT_FAILURE, EXIT_OK, CliError

if TYPE_CHECKING:
    from llem_client._cli_common import ClientFactory


def register(commands: Commands) -> None:
    status = commands.add("status", "show a job (its reason, if it failed)", status_command)
    status.add_argument("job_id", metavar="ID", help="job id or a unique prefix")
    add_json_flag(status, "the job")

    jobs = commands.add(
        "list",
        "list jobs, newest first",
        list_command,
        description="List jobs, newest first: id prefix, name, model, status, age, output "
        "tokens/s and raw J/token.",
    )
    jobs.add_argument("--status", choices=JOB_STATUSES, help="only jobs in this status")
    add_job_filters(jobs)
    jobs.add_argument("--limit", metavar="N", type=positive_int, default=20, help="default 20")
    jobs.add_argument("--cursor", help="continue a listing (printed when there are more jobs)")
    add_json_flag(jobs, "the job list")

    watch = commands.add(
        "watch",
        "follow a job until it ends",
        watch_command,
        aliases=("wait",),
        description="Follow a queued or running job until it ends, then print its result "
        "summary (or why it failed). Exit 0 if it succeeded, 1 otherwise.",
    )
    watch.add_argument("job_id", metavar="ID", help="job id or a unique prefix")
    add_json_flag(watch, "the final job")

    cancel = commands.add("cancel", "cancel a queued or running job", cancel_command)
    cancel.add_argument("job_id", metavar="ID", help="job id or a unique prefix")
    add_json_flag(cancel, "the job")

    delete = commands.add(
        "delete", "delete a finished job, its result and its timeseries", delete_command
    )
    delete.add_argument("job_id", metavar="ID", help="job id or a unique prefix")
    add_json_flag(delete, "what was deleted")


def status_command(args: argparse.Namespace, make_client: ClientFactory) -> int:
    with make_client(args.server, args.token, args.timeout) as client:
        job = client.get(args.job_id)
    if args.json:
        write_stdout(job.model_dump_json(indent=2))
    else:
        from llem_client._cli_render import print_job, stdout_console

        print_job(job, stdout_console())
    return EXIT_OK


def _next_page_hint(args: argparse.Namespace, cursor: str) -> str:
    """The command for the next page: the same filters and limit, the new cursor."""
    parts = [follow_hint(args), "list"]
    if args.status:
        parts += ["--status", args.status]
    for tag in args.tag or []:
        parts += ["--tag", shlex.quote(tag)]
    if args.name:
        parts += ["--name", shlex.quote(args.name)]
    parts += ["--limit", str(args.limit), "--cursor", cursor]
    return " ".join(parts)


def list_command(args: argparse.Namespace, make_client: ClientFactory) -> int:
    with make_client(args.server, args.token, args.timeout) as client:
        page = client.list(
            status=args.status,
            limit=args.limit,
            cursor=args.cursor,
            tags=tags_of(args.tag),
            name=args.name,
        )
    if args.json:
        write_stdout(page.model_dump_json(indent=2))
        return EXIT_OK
    from llem_client._cli_render import print_job_list, stdout_console

    print_job_list(page.items, stdout_console())
    if page.next_cursor is not None:
        print(f"more jobs: {_next_page_hint(args, page.next_cursor)}", file=sys.stderr)
    return EXIT_OK


def watch_command(args: argparse.Namespace, make_client: ClientFactory) -> int:
    from llem_client._cmd_run import raise_unless_succeeded, wait_with_progress

    with make_client(args.server, args.token, args.timeout) as client:
        job = wait_with_progress(client, client.get(args.job_id), args)
        if args.json:
            write_stdout(job.model_dump_json(indent=2))
            return EXIT_OK if job.status.value == "succeeded" else EXIT_FAILURE
        raise_unless_succeeded(job)
        result = client.result(job.id)
    from llem_client._cli_render import print_result_summary, stdout_console

    print_result_summary(result, stdout_console())
    return EXIT_OK


def cancel_command(args: argparse.Namespace, make_client: ClientFactory) -> int:
    with make_client(args.server, args.token, args.timeout) as client:
        job = client.cancel(args.job_id)
    if args.json:
        write_stdout(job.model_dump_json(indent=2))
    elif job.status.terminal:
        write_stdout(f"job {job.id}: {job.status.value}")
    else:
        # A running job is stopped asynchronously: the server answers before it has ended.
        write_stdout(f"job {job.id}: cancel requested; it is {job.status.value} and will stop")
    return EXIT_OK


def delete_command(args: argparse.Namespace, make_client: ClientFactory) -> int:
    from llem_client._exceptions import ConflictError

    with make_client(args.server, args.token, args.timeout) as client:
        job = client.get(args.job_id)  # the whole id, and a clear 404 for a typo
        try:
            client.delete(job.id)
        except ConflictError as exc:
            raise CliError(
                f"job {job.id} is {job.status.value}: cancel it first "
                f"('{follow_hint(args)} cancel {job.id[:8]}')",
                EXIT_FAILURE,
            ) from exc
    if args.json:
        import json

        write_stdout(json.dumps({"deleted": job.id}))
    else:
        write_stdout(f"deleted job {job.id} with its result and timeseries")
    return EXIT_OK
