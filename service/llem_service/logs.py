"""The service's log format: one line per record, whatever the record quotes.

Model ids, job names, paths and error texts come from users; a newline in one would forge a
log line and an escape sequence would act on the terminal of whoever reads the log. The
formatter escapes control characters in the message (`llem_client.escape_controls`); a
traceback, which is ours, keeps its lines.
"""

from __future__ import annotations

import logging
from typing import Any

from llem_client import escape_controls

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class SafeFormatter(logging.Formatter):
    """`logging.Formatter` that escapes control characters in the formatted message."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.getMessage())
        return super().formatMessage(record)


def log_config(level: str) -> dict[str, Any]:
    """A `logging.config.dictConfig` for the service and uvicorn: one handler on stderr with
    `SafeFormatter`, so uvicorn's access and error logs are escaped too."""
    level = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"safe": {"()": SafeFormatter, "fmt": FORMAT}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "safe",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": level},
        "loggers": {
            name: {"handlers": [], "level": level, "propagate": True}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }
