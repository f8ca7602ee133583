"""``llem-service``: start the server from ``LLEM_*`` settings (one uvicorn process)."""

from __future__ import annotations

import argparse
import logging
import logging.config
import sys


def main(argv: list[str] | None = None) -> None:
    from pydantic import ValidationError

    from llem_service.settings import Settings

    parser = argparse.ArgumentParser(
        prog="llem-service",
        description="Run the llem measurement server. Settings come from LLEM_* variables; "
        "these flags override them.",
    )
    parser.add_argument("--host", help="address to bind (LLEM_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (LLEM_PORT, default 8000)")
    parser.add_argument("--data-dir", help="job store and results (LLEM_DATA_DIR)")
    args = parser.parse_args(argv)
    overrides = {
        key: value
        for key, value in (("host", args.host), ("port", args.port), ("data_dir", args.data_dir))
        if value is not None
    }
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "settings"
        message = str(first["msg"]).removeprefix("Value error, ")
        sys.exit(f"llem-service: invalid setting {where}: {message}")
    problem = settings.exposure_problem()
    if problem is not None:
        sys.exit(f"llem-service: {problem}")

    from llem_service.app import create_app
    from llem_service.logs import log_config
    from llem_service.serve import make_server

    logging.config.dictConfig(log_config(settings.log_level))
    make_server(create_app(settings), settings).run()


if __name__ == "__main__":
    main()
