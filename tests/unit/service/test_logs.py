"""The service log: one line per record, whatever a user put in a model id or a path."""

from __future__ import annotations

import io
import logging
import logging.config

from llem_service.logs import SafeFormatter, log_config


def test_control_characters_in_a_message_are_escaped() -> None:
    record = logging.LogRecord(
        "llem.worker",
        logging.INFO,
        __file__,
        1,
        "job %s: %s",
        ("a", "evil\n2026 FAKE\x1b[2J"),
        None,
    )

    line = SafeFormatter("%(levelname)s %(message)s").format(record)

    assert line == "INFO job a: evil\\n2026 FAKE\\x1b[2J"


def test_uvicorns_loggers_go_through_the_same_formatter() -> None:
    stream = io.StringIO()
    config = log_config("info")
    config["handlers"]["stderr"]["stream"] = stream
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    logging.config.dictConfig(config)
    try:
        logging.getLogger("uvicorn.access").info('%s - "GET %s"', "127.0.0.1", "/v1/\r\nx")
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])

    assert stream.getvalue().endswith('uvicorn.access: 127.0.0.1 - "GET /v1/\\r\\nx"\n')
