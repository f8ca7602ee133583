"""Serving an app with uvicorn so that a SIGTERM reaches the app at once (see
`llem_service.jobs.shutdown`), and its log lines are escaped (`llem_service.logs`)."""

from __future__ import annotations

import asyncio
import logging
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI

from llem_service.logs import log_config
from llem_service.settings import Settings

_log = logging.getLogger("llem.service")

#: How long uvicorn waits, after the experiment has had its cancel grace, for connections to
#: close before it cuts them.
CLOSE_MARGIN_S = 5.0


class GracefulServer(uvicorn.Server):
    """`uvicorn.Server` that tells the app to shut down when it is told to exit, before it
    waits for open connections (event streams) to close.

    Args:
        config: uvicorn's configuration; ``config.app`` is the FastAPI app, whose
            ``state.shutdown`` (set by its lifespan) is begun on exit.
    """

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self.request_app_shutdown()

    def request_app_shutdown(self) -> None:
        """Begin the app's shutdown from any thread (a signal handler, a test)."""
        app = self.config.app
        shutdown = getattr(getattr(app, "state", None), "shutdown", None)
        if self._loop is not None and shutdown is not None:
            self._loop.call_soon_threadsafe(shutdown.begin)

    def exit(self) -> None:
        """Stop as SIGTERM would, from any thread."""
        self.should_exit = True
        self.request_app_shutdown()


def make_server(app: FastAPI, settings: Settings, **options: Any) -> GracefulServer:
    """A `GracefulServer` for ``app`` on ``settings``' address, logging through the escaping
    formatter; ``options`` are further `uvicorn.Config` arguments."""
    options.setdefault("timeout_graceful_shutdown", int(settings.cancel_grace_s + CLOSE_MARGIN_S))
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=log_config(settings.log_level),
        **options,
    )
    return GracefulServer(config)
