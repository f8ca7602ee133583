"""Change notification for Server-Sent Events: 'something about the jobs changed'.

Subscribers take the current waiter, re-read their job, send it if it changed, then wait.
Taking the waiter before reading means no change between the read and the wait is lost.
"""

from __future__ import annotations

import asyncio


class ChangeFeed:
    """Wakes every waiter at each `notify`. Use from the event loop's thread only."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.closed = False

    def waiter(self) -> asyncio.Event:
        return self._event

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    def close(self) -> None:
        """Server shutting down: wake everyone so streams end."""
        self.closed = True
        self.notify()
