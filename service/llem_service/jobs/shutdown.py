"""The jobs side of a graceful shutdown, begun as soon as the server is told to stop.

uvicorn, on SIGTERM, stops accepting connections and then waits for the open ones to close
before it runs the app's lifespan shutdown. An event stream stays open until its job ends, so
waiting for the lifespan would keep the experiment running and the streams open until uvicorn
gives up on them and cuts them. `Shutdown.begin` is therefore called from the signal
(`llem_service.serve.GracefulServer`), before uvicorn waits: the scheduler stops the running
experiments (SIGTERM, then SIGKILL after the cancel grace) and marks them interrupted; then the
change feed closes, so every stream sends the job's last state, a final ``shutdown`` event
where the job has not ended, and closes. The lifespan's shutdown then finds it all done.
"""

from __future__ import annotations

import asyncio
import logging

from llem_service.jobs.events import ChangeFeed
from llem_service.jobs.scheduler import Scheduler

_log = logging.getLogger("llem.service")


class Shutdown:
    """Stops the scheduler, then closes the feed; once, however often it is begun."""

    def __init__(self, scheduler: Scheduler, feed: ChangeFeed) -> None:
        self.scheduler = scheduler
        self.feed = feed
        self._task: asyncio.Task[None] | None = None

    def begin(self) -> None:
        """Start shutting down (from the event loop's thread); returns at once."""
        if self._task is None:
            _log.info("shutting down: stopping the running experiment and the event streams")
            self._task = asyncio.get_running_loop().create_task(self._run(), name="llem-shutdown")

    async def _run(self) -> None:
        try:
            await self.scheduler.stop()
        finally:
            self.feed.close()

    async def wait(self) -> None:
        """Begin if not begun, and wait until done."""
        self.begin()
        assert self._task is not None
        await asyncio.shield(self._task)
