"""``llem-client study``: run a study file, follow it live, and read its results.

    llem-client study run study.yaml       submit, show each run as it lands, then the table
    llem-client study status|cancel ID
    llem-client study list
    llem-client study results ID [--format table|csv|parquet|json] [--out FILE]
                                 [--max-ttft-p90-s S] [--max-itl-p90-s S] [--min-tokens-per-s N]

Exit codes as for ``run``: 0 every run succeeded; 1 a run failed, the study was cancelled or
the server answered an error; 2 an invalid study file; 130 interrupted (the study goes on).
Like ``cli.py``, this module imports only argparse at load time.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from llem_client._cli_errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, PROG, CliError

if TYPE_CHECKING:
    from rich.console import Console

    from llem_client._client import Client
    from llem_client._studies import Study, StudyEvent, StudyPareto, StudyRow, StudyRun

    ClientFactory = Callable[[str | None, str | None, float | None], Client]

RESULT_FORMATS = ("table", "csv", "parquet", "json")


def add_study_commands(
    commands: Any, connection: argparse.ArgumentParser, positive_float: Callable[[str], float]
) -> None:
    """The ``study`` command group, on the CLI's subcommand action ``commands``."""
    study = commands.add_parser(
        "study",
        help="sweep many configurations as one study, compare them",
        description="Sweep many configurations as one study and compare them.",
    )
    sub = study.add_subparsers(dest="study_command", metavar="COMMAND", required=True)

    def command(name: str, text: str, handler: Callable[..., int]) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = sub.add_parser(
            name, help=text, description=text, parents=[connection]
        )
        parser.set_defaults(handler=handler)
        return parser

    run = command("run", "submit a study file, follow its runs, print its results", _cmd_run)
    run.add_argument("file", metavar="FILE", help="YAML or JSON study document")
    run.add_argument("--no-wait", action="store_true", help="print the study id and return")
    run.add_argument("--json", action="store_true", help="print the finished Study as JSON")

    status = command("status", "show a study and its runs", _cmd_status)
    status.add_argument("study_id", metavar="ID")
    status.add_argument("--json", action="store_true", help="print the Study as JSON")

    results = command("results", "a study's results, ranked, with the frontier", _cmd_results)
    results.add_argument("study_id", metavar="ID")
    results.add_argument(
        "--format", choices=RESULT_FORMATS, default="table", help="default: a ranked table"
    )
    results.add_argument("--out", metavar="FILE", help="write csv, parquet or json here")
    for flag, text in (
        ("--max-ttft-p90-s", "target: time to first token p90 at most this (seconds)"),
        ("--max-itl-p90-s", "target: inter-token latency p90 at most this (seconds)"),
        ("--min-tokens-per-s", "target: output tokens per second at least this"),
    ):
        results.add_argument(flag, type=positive_float, metavar="X", help=text)

    cancel = command("cancel", "cancel a study (finished runs are kept)", _cmd_cancel)
    cancel.add_argument("study_id", metavar="ID")

    listing = command("list", "list studies, newest first", _cmd_list)
    listing.add_argument("--limit", type=int, default=20, metavar="N", help="default 20")
    listing.add_argument("--cursor", help="continue a listing")
    listing.add_argument("--json", action="store_true", help="print the list as JSON")


def _write(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()


def _hint(args: argparse.Namespace) -> str:
    return f"{PROG} --server {args.server}" if args.server else PROG


# -- run ---------------------------------------------------------------------------------------


def _load(path: str) -> dict[str, Any]:
    from pydantic import ValidationError

    from llem_client._cli_config import load_config_file
    from llem_client._cli_errors import format_field_errors, one_line
    from llem_client._studies import StudyDocument

    data = load_config_file(path)
    try:
        StudyDocument.model_validate(data)
    except ValidationError as exc:
        fields = format_field_errors((e["loc"], e["msg"]) for e in exc.errors(include_url=False))
        raise CliError(f"invalid study: {one_line(fields)}") from exc
    return data


def _cmd_run(args: argparse.Namespace, make_client: ClientFactory) -> int:
    document = _load(args.file)
    with make_client(args.server, args.token, args.timeout) as client:
        study = client.submit_study(document)
        if args.no_wait:
            _write(study.model_dump_json(indent=2) if args.json else study.id)
            return EXIT_OK
        _announce(study, client.base_url)
        display = make_display(study)
        try:
            done = client.wait_study(study.id, on_update=display)
        except KeyboardInterrupt:
            display.close()
            hint = _hint(args)
            raise CliError(
                f"interrupted; study {study.id} goes on on the server. Follow it with "
                f"'{hint} study status {study.id}', read it with '{hint} study results "
                f"{study.id}' (or stop it with '{hint} study cancel {study.id}')",
                EXIT_INTERRUPTED,
            ) from None
        finally:
            display.close()
        if args.json:
            _write(done.model_dump_json(indent=2))
        else:
            from llem_client._cli_render import stdout_console

            print_ranked(client.study_pareto(study.id), done.swept_fields, stdout_console())
    if done.status.value != "succeeded":
        failed = sum(n for s, n in done.counts.items() if s.value == "failed")
        raise CliError(
            f"study {done.id} ended {done.status.value} ({failed} failed run(s)); "
            f"see '{_hint(args)} study status {done.id}'",
            EXIT_FAILURE,
        )
    return EXIT_OK


def _announce(study: Study, server: str) -> None:
    err = sys.stderr
    print(
        f"submitted study {study.id} to {server}: {study.n_points} points x {study.cycles} "
        f"cycle(s) = {study.n_runs} runs, order {study.order}"
        + (f" (seed {study.seed})" if study.seed is not None else "")
        + f", design {study.design_hash}",
        file=err,
    )
    for skipped in study.skipped:
        print(
            f"skipped point {skipped.index} ({_values(skipped.values)}): {skipped.reason}", file=err
        )
    for note in study.notes:
        print(f"note: {note}", file=err)
    err.flush()


def _values(values: dict[str, Any]) -> str:
    return ", ".join(f"{name}={value}" for name, value in values.items()) or "-"


def _figure(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def describe_run(run: StudyRun, values: dict[str, Any]) -> str:
    """E.g. ``point 2 (batch_size=4) cycle 1: succeeded, 1,234.5 tokens/s, 0.01 J/token``."""
    from llem_client._cli_render import format_problem, format_progress

    head = f"point {run.point} ({_values(values)}) cycle {run.cycle}"
    if run.attempt > 1:
        head += f" attempt {run.attempt} (retried)"
    state = run.status.value
    if state == "running":
        state = format_progress(run.progress)
    elif state == "succeeded":
        state += f", {_figure(run.tokens_per_s, ',.1f')} tokens/s"
        if run.energy_per_output_token_j is not None:
            state += f", {run.energy_per_output_token_j:.4g} J/token"
    elif state == "failed" and run.error is not None:
        state += f": {format_problem(run.error)}"
    return f"{head}: {state}"


class PlainStudyProgress:
    """One line per change of a run's status (not of its progress counts), for logs and pipes."""

    def __init__(self, study: Study) -> None:
        self._values = {p.index: p.values for p in study.points}
        self._short = study.id[:8]
        self._last: dict[str, str] = {}

    def __call__(self, event: StudyEvent) -> None:
        run = event.run
        if run is None:
            return
        key = f"{run.status.value}/{run.attempt}/{run.progress.phase}"
        if self._last.get(run.job_id) == key:
            return
        self._last[run.job_id] = key
        line = describe_run(run, self._values.get(run.point, {}))
        print(f"study {self._short}: {line}", file=sys.stderr, flush=True)

    def close(self) -> None:
        """Nothing to tear down."""


class LiveStudyTable:
    """A table of every run, redrawn in place on a terminal as events arrive."""

    def __init__(self, study: Study) -> None:
        from rich.console import Console
        from rich.live import Live

        self._study = study
        self._values = {p.index: p.values for p in study.points}
        self._runs = {run.job_id: run for run in study.runs}
        self._live = Live(self._table(), console=Console(stderr=True), auto_refresh=False)
        self._live.start()
        self._closed = False

    def __call__(self, event: StudyEvent) -> None:
        if event.run is not None:
            self._runs[event.run.job_id] = event.run
            self._live.update(self._table(), refresh=True)

    def _table(self) -> Any:
        from rich import box
        from rich.table import Table

        from llem_client._cli_render import format_progress

        table = Table(box=box.SIMPLE_HEAD, title=f"study {self._study.name}")
        fields = self._study.swept_fields
        for column in ("#", "point", *fields, "cycle", "status", "tokens/s", "J/token"):
            table.add_column(column, overflow="fold")
        for run in sorted(self._runs.values(), key=lambda r: r.position):
            values = self._values.get(run.point, {})
            status = run.status.value
            if status == "running":
                status = format_progress(run.progress)
            if run.attempt > 1:
                status += f" (attempt {run.attempt})"
            table.add_row(
                str(run.position),
                str(run.point),
                *(str(values.get(f, "")) for f in fields),
                str(run.cycle),
                status,
                _figure(run.tokens_per_s, ",.1f"),
                _figure(run.energy_per_output_token_j, ".4g"),
            )
        return table

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._live.stop()


def make_display(study: Study) -> PlainStudyProgress | LiveStudyTable:
    """The live table on a terminal, else plain lines."""
    return LiveStudyTable(study) if sys.stderr.isatty() else PlainStudyProgress(study)


# -- results -----------------------------------------------------------------------------------


def print_ranked(pareto: StudyPareto, fields: Sequence[str], console: Console) -> None:
    """Points ranked by J/token (tokens/s when there is no energy), frontier points marked."""
    from rich import box
    from rich.table import Table

    metric = pareto.energy_metric
    on_frontier = set(pareto.frontier_vs_tokens_per_s) | set(pareto.frontier_vs_ttft_p90)
    meeting = set(pareto.meeting_targets)
    targeted = any(v is not None for v in pareto.targets.model_dump().values())

    def rank(row: StudyRow) -> tuple[float, int]:
        if metric is not None and getattr(row, metric) is not None:
            return (float(getattr(row, metric)), row.point)
        return (-(row.tokens_per_s or 0.0), row.point)

    table = Table(box=box.SIMPLE_HEAD, title="Study results (mean over cycles)")
    columns = ["rank", "point", *fields, "cycles", "tokens/s", "J/token", "TTFT p90", "ITL p90"]
    for column in [*columns, "frontier", *(["meets"] if targeted else [])]:
        table.add_column(column, overflow="fold")
    for n, row in enumerate(sorted(pareto.points, key=rank), start=1):
        tps = _figure(row.tokens_per_s, ",.1f")
        ci = row.ci95.get("tokens_per_s")
        if ci is not None:
            tps += f" ±{(ci.high - ci.low) / 2:,.1f}"
        energy = getattr(row, metric) if metric is not None else None
        cells = [
            str(n),
            str(row.point),
            *(str(row.values.get(f, "")) for f in fields),
            str(row.n_cycles),
            tps,
            _figure(energy, ".4g") if metric is not None else "n/a (no meter)",
            _figure(row.ttft_p90_s, ".4g") + " s",
            (_figure(row.itl_p90_s, ".4g") + " s") if row.itl_p90_s is not None else "-",
            "*" if row.point in on_frontier else "",
        ]
        if targeted:
            cells.append("yes" if row.point in meeting else "no")
        table.add_row(*cells)
    console.print(table)
    if metric is not None:
        console.print(f"J/token: {metric}; * on the time-energy frontier", soft_wrap=True)
    console.print(pareto.message, soft_wrap=True)


def _cmd_results(args: argparse.Namespace, make_client: ClientFactory) -> int:
    from llem_client._cli_output import checked_out_path

    out = checked_out_path(args.out)
    if args.format == "parquet" and out is None:
        raise CliError("--format parquet needs --out FILE (Parquet is binary)")
    with make_client(args.server, args.token, args.timeout) as client:
        if args.format in ("csv", "parquet"):
            data = client.study_results_file(args.study_id, format=args.format)
            if out is None:
                sys.stdout.write(data.decode("utf-8"))
                sys.stdout.flush()
            else:
                out.write_bytes(data)
                print(f"wrote {out}", file=sys.stderr)
            return EXIT_OK
        if args.format == "json":
            text = client.study_results(args.study_id).model_dump_json(indent=2) + "\n"
            if out is None:
                _write(text)
            else:
                out.write_text(text, encoding="utf-8")
                print(f"wrote {out}", file=sys.stderr)
            return EXIT_OK
        study = client.get_study(args.study_id)
        pareto = client.study_pareto(
            args.study_id,
            max_ttft_p90_s=args.max_ttft_p90_s,
            max_itl_p90_s=args.max_itl_p90_s,
            min_tokens_per_s=args.min_tokens_per_s,
        )
    from llem_client._cli_render import stdout_console

    print_ranked(pareto, study.swept_fields, stdout_console())
    return EXIT_OK


# -- status, cancel, list ----------------------------------------------------------------------


def _cmd_status(args: argparse.Namespace, make_client: ClientFactory) -> int:
    with make_client(args.server, args.token, args.timeout) as client:
        study = client.get_study(args.study_id)
    if args.json:
        _write(study.model_dump_json(indent=2))
        return EXIT_OK
    counts = ", ".join(f"{n} {s.value}" for s, n in study.counts.items() if n)
    lines = [
        f"study     {study.id} ({study.name})",
        f"status    {study.status.value}: {counts or 'no runs'}",
        f"design    {study.design_hash}: {study.n_points} points ({study.n_skipped} skipped) "
        f"x {study.cycles} cycle(s), order {study.order}",
    ]
    values = {p.index: p.values for p in study.points}
    lines += [describe_run(run, values.get(run.point, {})) for run in study.runs]
    lines += [f"skipped point {s.index} ({_values(s.values)}): {s.reason}" for s in study.skipped]
    _write("\n".join(lines))
    return EXIT_OK


def _cmd_cancel(args: argparse.Namespace, make_client: ClientFactory) -> int:
    with make_client(args.server, args.token, args.timeout) as client:
        summary = client.cancel_study(args.study_id)
    state = summary.status.value
    if summary.status.terminal:
        _write(f"study {summary.id}: {state}")
    else:
        _write(f"study {summary.id}: cancel requested; its running point will stop")
    return EXIT_OK


def _cmd_list(args: argparse.Namespace, make_client: ClientFactory) -> int:
    with make_client(args.server, args.token, args.timeout) as client:
        page = client.list_studies(limit=args.limit, cursor=args.cursor)
    if args.json:
        _write(page.model_dump_json(indent=2))
        return EXIT_OK
    if not page.items:
        _write("no studies")
        return EXIT_OK
    from rich import box
    from rich.table import Table

    from llem_client._cli_render import format_time, stdout_console

    table = Table(box=box.SIMPLE_HEAD)
    for column in ("id", "name", "status", "runs", "created"):
        table.add_column(column, overflow="fold")
    for study in page.items:
        done = sum(n for s, n in study.counts.items() if s.terminal)
        table.add_row(
            study.id,
            study.name,
            study.status.value,
            f"{done}/{study.n_runs}",
            format_time(study.created_at),
        )
    stdout_console().print(table)
    if page.next_cursor is not None:
        print(f"more: {_hint(args)} study list --cursor {page.next_cursor}", file=sys.stderr)
    return EXIT_OK
