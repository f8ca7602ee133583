"""``result``, ``compare`` and ``export``: results of finished jobs."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from llem_client._cli_common import (
    JOB_STATUSES,
    Commands,
    add_job_filters,
    add_json_flag,
    follow_hint,
    tags_of,
    write_stdout,
)
from llem_client._cli_errors import EXIT_FAILURE, EXIT_OK, CliError

if TYPE_CHECKING:
    from llem_client._cli_common import ClientFactory


def register(commands: Commands) -> None:
    result = commands.add("result", "fetch the result of a finished job", result_command)
    result.add_argument("job_id", metavar="ID", help="job id or a unique prefix")
    result.add_argument("--out", metavar="FILE", help="also write the result JSON to FILE")
    result.add_argument("--json", action="store_true", help="print the result JSON only")
    result.add_argument(
        "--timeseries",
        metavar="FILE",
        help="also download the power timeline to FILE (CSV if it ends in .csv, else Parquet)",
    )
    result.add_argument(
        "--wait", action="store_true", help="wait for a queued or running job to end first"
    )

    compare = commands.add(
        "compare",
        "compare the results of two or more jobs",
        compare_command,
        description="Compare results side by side: the config fields that differ, then "
        "throughput, energy and latency, each with its difference relative to the first job.",
    )
    compare.add_argument("job_ids", nargs="+", metavar="ID", help="two or more jobs")
    add_json_flag(compare, "the comparison")

    export = commands.add(
        "export",
        "write many results as one CSV or Parquet table",
        export_command,
        description="Write one row per job (config fields, headline figures, energy) to a CSV "
        "or Parquet file, for pandas, R or a spreadsheet. Parquet needs pyarrow.",
    )
    export.add_argument(
        "--out", metavar="FILE", required=True, help="FILE.csv or FILE.parquet (the suffix decides)"
    )
    add_job_filters(export)
    export.add_argument(
        "--status",
        choices=JOB_STATUSES,
        default="succeeded",
        help="jobs in this status (default succeeded; only they have results)",
    )
    export.add_argument(
        "--max-jobs", metavar="N", type=int, default=10_000, help="stop after N (default 10000)"
    )


def result_command(args: argparse.Namespace, make_client: ClientFactory) -> int:
    from llem_client._cli_output import checked_out_path, emit_result
    from llem_client._exceptions import ConflictError, NotFoundError

    out = checked_out_path(args.out)
    timeseries_path = checked_out_path(args.timeseries, flag="--timeseries")
    missing_timeseries = None
    with make_client(args.server, args.token, args.timeout) as client:
        job = client.get(args.job_id)
        if args.wait and not job.status.terminal:
            from llem_client._cmd_run import wait_with_progress

            job = wait_with_progress(client, job, args)
        try:
            result = client.result(job.id)
        except ConflictError as exc:
            raise CliError(_no_result(client.get(job.id), args), EXIT_FAILURE) from exc
        if timeseries_path is not None:
            csv = timeseries_path.suffix.lower() == ".csv"
            try:
                data = client.timeseries(job.id, format="csv" if csv else "parquet")
            except NotFoundError as exc:
                missing_timeseries = exc.problem.detail or exc.problem.title
            else:
                timeseries_path.write_bytes(data)
    # The result is written whether or not there was a timeseries to go with it.
    emit_result(result, out=out, as_json=args.json, default_file=False)
    if missing_timeseries is not None:
        raise CliError(f"{timeseries_path} not written: {missing_timeseries}", EXIT_FAILURE)
    if timeseries_path is not None:
        sys.stderr.write(f"wrote {timeseries_path}\n")  # stderr: --json keeps stdout clean
    return EXIT_OK


def _no_result(job: object, args: argparse.Namespace) -> str:
    """Why a job has no result: its reason if it failed, how to wait if it has not ended."""
    from llem_client._cli_render import format_progress, job_reason
    from llem_client._jobs import Job

    assert isinstance(job, Job)
    status = job.status.value
    if status == "failed":
        return f"job {job.id} failed: {job_reason(job)}; it has no result"
    if status == "cancelled":
        return f"job {job.id} was cancelled; it has no result"
    progress = format_progress(job.progress) if status == "running" else status
    return (
        f"job {job.id} is {progress}; wait for its result with "
        f"'{follow_hint(args)} result {job.id[:8]} --wait'"
    )


def compare_command(args: argparse.Namespace, make_client: ClientFactory) -> int:
    from llem_client._cli_compare import comparison, print_comparison
    from llem_client._exceptions import ConflictError

    if len(args.job_ids) < 2:
        raise CliError("compare needs at least two jobs")
    results = []
    with make_client(args.server, args.token, args.timeout) as client:
        for job_id in args.job_ids:
            job = client.get(job_id)
            try:
                results.append(client.result(job.id))
            except ConflictError as exc:
                raise CliError(_no_result(client.get(job.id), args), EXIT_FAILURE) from exc
    table = comparison(results)
    if args.json:
        import json

        write_stdout(json.dumps(table.as_json(), indent=2))
        return EXIT_OK
    from llem_client._cli_render import stdout_console

    print_comparison(table, stdout_console())
    return EXIT_OK


def export_command(args: argparse.Namespace, make_client: ClientFactory) -> int:
    from llem_client._cli_export import result_row, write_table
    from llem_client._cli_output import checked_out_path

    out = checked_out_path(args.out)
    assert out is not None
    if out.suffix.lower() not in (".csv", ".parquet"):
        raise CliError(f"--out {out}: name a .csv or a .parquet file")
    rows: list[dict[str, Any]] = []
    skipped = 0
    with make_client(args.server, args.token, args.timeout) as client:
        cursor = None
        while len(rows) + skipped < args.max_jobs:
            page = client.list(
                status=args.status,
                limit=min(500, args.max_jobs - len(rows) - skipped),
                cursor=cursor,
                tags=tags_of(args.tag),
                name=args.name,
            )
            for job in page.items:
                if job.status.value != "succeeded":
                    skipped += 1
                    continue
                rows.append(result_row(client.result(job.id)))
            cursor = page.next_cursor
            if cursor is None:
                break
    if not rows:
        raise CliError("no succeeded job matches; nothing to export", EXIT_FAILURE)
    write_table(rows, out)
    note = f" ({skipped} without a result skipped)" if skipped else ""
    print(f"wrote {len(rows)} results to {out}{note}", file=sys.stderr)
    return EXIT_OK
