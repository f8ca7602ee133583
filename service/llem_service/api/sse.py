"""Server-Sent Events: the framing every llem stream shares.

A stream re-reads what it follows at each change of the `ChangeFeed`, sends an event when that
changed, and ends when it is over. While nothing changes it sends a keep-alive comment every
``sse_keepalive_s``, so proxies keep the connection open. When the server shuts down first, a
last ``shutdown`` event says so: a client then knows the thing it followed did not end.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from fastapi.responses import StreamingResponse

KEEP_ALIVE = ": keep-alive\n\n"
_SHUTDOWN_NOTICE = json.dumps({"detail": "the server is shutting down"})


class EventIds:
    """Frames events with ids that increase by one per event of the stream."""

    def __init__(self) -> None:
        self.last_id = 0

    def event(self, kind: str, data: str) -> str:
        self.last_id += 1
        return f"event: {kind}\nid: {self.last_id}\ndata: {data}\n\n"

    def shutdown(self) -> str:
        return self.event("shutdown", _SHUTDOWN_NOTICE)


async def changed(waiter: asyncio.Event, keepalive_s: float) -> bool:
    """Wait for ``waiter`` (taken from the feed before the last read): True when something
    changed, False when ``keepalive_s`` passed first (send `KEEP_ALIVE`)."""
    try:
        await asyncio.wait_for(waiter.wait(), timeout=keepalive_s)
    except asyncio.TimeoutError:
        return False
    return True


def event_stream(events: AsyncIterator[str]) -> StreamingResponse:
    """The response for a stream: unbuffered by proxies, never cached."""
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
