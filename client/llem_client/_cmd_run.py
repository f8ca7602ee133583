"""``run``, ``config show`` and ``config validate``: one config, built from a file and flags.

The three take the same config arguments (a file, named flags, ``--set``), so what ``config
show`` prints is exactly what ``run`` would submit.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from llem_client._cli_common import (
    Commands,
    add_json_flag,
    follow_hint,
    tag_filter,
    tags_of,
    write_stdout,
)
from llem_client._cli_errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, CliError

if TYPE_CHECKING:
    from llem_client._cli_common import ClientFactory
    from llem_client._client import Client
    from llem_client._config import ExperimentConfig
    from llem_client._jobs import Job


def register(commands: Commands) -> None:
    run = commands.add("run", "run an experiment and wait for its result", run_command)
    add_config_arguments(run)
    output = run.add_argument_group("output")
    output.add_argument(
        "--out",
        metavar="PATH",
        help="write the result JSON here (a file, or a directory for the default name); "
        "default: MODEL-YYYYmmdd-HHMMSS.json in the current directory, unless --json",
    )
    output.add_argument(
        "--json",
        action="store_true",
        help="print the result JSON alone on stdout (errors as JSON too)",
    )
    output.add_argument(
        "--no-wait", action="store_true", help="print the job id and return at once"
    )

    config = commands.add(
        "config", "work with configs (offline: no server needed)", None, connection=False
    )
    config_commands = config.add_subparsers(dest="config_command", metavar="COMMAND", required=True)
    show = config_commands.add_parser(
        "show",
        help="print the effective config, defaults filled in",
        description="Print the config that 'run' would submit with the same arguments, every "
        "default filled in, and its measurement config hash.",
    )
    add_config_arguments(show)
    add_json_flag(show, "the config")
    show.set_defaults(handler=config_show_command)
    validate = config_commands.add_parser(
        "validate",
        help="check a config without a server",
        description="Check the config that 'run' would submit with the same arguments; print "
        "its measurement config hash.",
    )
    add_config_arguments(validate)
    add_json_flag(validate, "the verdict")
    validate.set_defaults(handler=config_validate_command)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """A config file and the flags that override it: the same for run, show and validate."""
    parser.add_argument("config", nargs="?", metavar="CONFIG", help="YAML or JSON config file")
    fields = parser.add_argument_group("config overrides (applied over CONFIG)")
    fields.add_argument(
        "--model", help="hub id, or a model directory on the server (required w/o CONFIG)"
    )
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
        "--tag",
        action="append",
        type=tag_filter,
        default=[],
        metavar="KEY=VALUE",
        help="a tag for the experiment (list and export filter by them); repeatable",
    )
    fields.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set any field by its dotted path; VALUE is read as YAML "
        "(e.g. --set decoding.mode=sample --set decoding.temperature=0.7); repeatable",
    )


def build_config(args: argparse.Namespace) -> ExperimentConfig:
    """The config the arguments describe, validated locally.

    Raises:
        CliError: No file and no --model, or the config is invalid (exit 2).
    """
    from llem_client._cli_config import (
        FLAG_KEYS,
        apply_overrides,
        load_config_file,
        validate_config,
    )

    if args.config is None and args.model is None:
        raise CliError(f"{args.command} needs a CONFIG file or --model MODEL")
    data = load_config_file(args.config) if args.config is not None else {}
    data = apply_overrides(
        data,
        flags={flag: getattr(args, flag) for flag in FLAG_KEYS},
        input_len=args.input_len,
        sets=args.set,
    )
    if args.tag:  # the value is text as written, not read as YAML as --set reads it
        tags = data.setdefault("tags", {})
        if not isinstance(tags, dict):
            raise CliError("--tag needs the config's tags to be a mapping")
        tags.update(tags_of(args.tag))
    return validate_config(data)


def run_command(args: argparse.Namespace, make_client: ClientFactory) -> int:
    from llem_client._cli_output import checked_out_path, emit_result

    if args.no_wait and args.out:
        raise CliError("--out needs the result, so it cannot be used with --no-wait")
    config = build_config(args)
    # Checked before submitting: a typo in --out must not cost a whole experiment.
    out = checked_out_path(args.out)

    with make_client(args.server, args.token, args.timeout) as client:
        job = client.submit(config)
        if args.no_wait:
            write_stdout(job.model_dump_json(indent=2) if args.json else job.id)
            return EXIT_OK
        print(f"submitted job {job.id} to {client.base_url}", file=sys.stderr, flush=True)
        job = wait_with_progress(client, job, args)
        raise_unless_succeeded(job)
        result = client.result(job.id)
    emit_result(result, out=out, as_json=args.json, default_file=not args.json)
    return EXIT_OK


def raise_unless_succeeded(job: Job) -> None:
    """Raises: CliError: the job failed (with its reason) or was cancelled (exit 1)."""
    from llem_client._cli_render import job_reason

    if job.status.value == "failed":
        raise CliError(f"job {job.id} failed: {job_reason(job)}", EXIT_FAILURE)
    if job.status.value == "cancelled":
        raise CliError(f"job {job.id} was cancelled", EXIT_FAILURE)


def wait_with_progress(client: Client, job: Job, args: argparse.Namespace) -> Job:
    """Follow the job with a progress display until it ends; Ctrl-C says how to resume."""
    from llem_client._cli_progress import make_reporter

    reporter = make_reporter(job.id)
    try:
        reporter(job)
        return client.wait(job.id, on_update=reporter)
    except KeyboardInterrupt:
        reporter.close()  # stop the live display before printing under it
        hint = follow_hint(args)
        raise CliError(
            f"interrupted; job {job.id} goes on running on the server. Follow it with "
            f"'{hint} watch {job.id}' and fetch its result with '{hint} result {job.id}' "
            f"(or stop it with '{hint} cancel {job.id}')",
            EXIT_INTERRUPTED,
        ) from None
    finally:
        reporter.close()


def config_show_command(args: argparse.Namespace, make_client: ClientFactory) -> int:
    from llem_client._hashing import measurement_config_hash

    config = build_config(args)
    data: dict[str, Any] = config.model_dump(mode="json")
    if args.json:
        write_stdout(config.model_dump_json(indent=2))
        return EXIT_OK
    import yaml

    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=False)
    write_stdout(f"{text}# measurement config hash: {measurement_config_hash(config)}")
    return EXIT_OK


def config_validate_command(args: argparse.Namespace, make_client: ClientFactory) -> int:
    from llem_client._hashing import measurement_config_hash

    config = build_config(args)
    digest = measurement_config_hash(config)
    if args.json:
        import json

        write_stdout(json.dumps({"valid": True, "measurement_config_hash": digest}))
    else:
        write_stdout(f"valid: {digest}")
    return EXIT_OK
