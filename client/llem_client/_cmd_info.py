"""``info`` and ``models``: what the server is and what it can run."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from llem_client._cli_common import Commands, add_json_flag, write_stdout
from llem_client._cli_errors import EXIT_OK
from llem_client._version import SCHEMA_VERSION

if TYPE_CHECKING:
    from llem_client._cli_common import ClientFactory


def register(commands: Commands) -> None:
    info = commands.add("info", "show what the server is and has", info_command)
    add_json_flag(info, "the service info")
    models = commands.add(
        "models",
        "list the models the server has",
        models_command,
        description="List the models under the server's LLEM_MODEL_ROOTS and in its hub "
        "cache, with their context length. A hub id not listed may still run.",
    )
    add_json_flag(models, "the model list")


def info_command(args: argparse.Namespace, make_client: ClientFactory) -> int:
    with make_client(args.server, args.token, args.timeout) as client:
        info = client.info()
        server = client.base_url
    if args.json:
        write_stdout(info.model_dump_json(indent=2))
        return EXIT_OK
    from llem_client._cli_render import print_info, stdout_console

    print_info(info, server, SCHEMA_VERSION, stdout_console())
    return EXIT_OK


def models_command(args: argparse.Namespace, make_client: ClientFactory) -> int:
    with make_client(args.server, args.token, args.timeout) as client:
        models = client.models()
    if args.json:
        write_stdout(models.model_dump_json(indent=2))
        return EXIT_OK
    from llem_client._cli_render import print_models, stdout_console

    print_models(models.items, stdout_console())
    return EXIT_OK
