"""Change notification for Server-Sent Events: 'something about the jobs changed'.

Subscribers take the current waiter, re-read their job, send it if it changed, then wait.
Taking the waiter before reading means no change between the read and the wait is lost.

Changes are told from the event loop (the scheduler, async routes) and from worker threads
(plain ``def`` routes run in FastAPI's thread pool, runs in the scheduler's threads). An
`asyncio.Event` belongs to its loop: set from another thread it schedules its waiters' wake-up
on a loop that is not watching (a stream never woken; ``RuntimeError: Non-thread-safe
operation`` under ``PYTHONASYNCIODEBUG``). `on_loop` hands such calls to the loop's thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The loop running in this thread, or None in a worker thread."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def on_loop(loop: asyncio.AbstractEventLoop | None, call: Callable[[], None]) -> None:
    """Run ``call`` in ``loop``'s thread: now when already there, else as soon as the loop can.

    With no loop yet, or one closed, nothing can be waiting on it: the call runs now."""
    if loop is None or loop.is_closed() or running_loop() is loop:
        call()
        return
    try:
        loop.call_soon_threadsafe(call)
    except RuntimeError:  # closed between the check and the call: no one waits any more
        call()


class ChangeFeed:
    """Wakes every waiter at each `notify`, which any thread may call."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._loop = running_loop()  # built in the app's lifespan: the server's loop
        self.closed = False

    def waiter(self) -> asyncio.Event:
        """The event the next change sets; take it on the loop, before reading."""
        if self._loop is None:
            self._loop = running_loop()
        return self._event

    def notify(self) -> None:
        on_loop(self._loop, self._notify)

    def _notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    def close(self) -> None:
        """Server shutting down: wake everyone so streams end."""
        self.closed = True
        self.notify()
