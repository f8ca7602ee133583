"""Progress of a job while ``llem-client run`` waits: live on a terminal, plain lines otherwise.

Both reporters are called with each new state of the job (`Client.wait`'s ``on_update``) and
write to stderr only, so that stdout carries nothing but the result (``--json`` pipes cleanly).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TextIO

from llem_client._cli_render import format_progress
from llem_client._text import escape_controls

if TYPE_CHECKING:
    from rich.console import Console

    from llem_client._jobs import Job


class ProgressReporter(Protocol):
    """Called with every state of the job; `close` once the wait is over, however it ended."""

    def __call__(self, job: Job) -> None: ...

    def close(self) -> None: ...


def describe(job: Job) -> str:
    """The status for jobs that are not running, else the phase and counts (as the server
    sent them, control characters escaped)."""
    if job.status.value == "running":
        return escape_controls(format_progress(job.progress))
    return job.status.value


class PlainProgress:
    """One line per change, e.g. ``job 3f2a: measuring 8/32 requests``, for logs and pipes.

    A change of status or phase is always printed. A change of count alone is printed at most
    once per ``min_interval_s`` (and always when the count reaches the total), so that a run of
    thousands of requests does not write thousands of lines.

    Args:
        job_id: The job, named on every line so interleaved logs stay readable.
        stream: Where to write; default ``sys.stderr`` at the time of each write.
        min_interval_s: Least seconds between two lines that differ only in their count.
        clock: Seconds, monotonic; replaceable so tests need not sleep.
    """

    def __init__(
        self,
        job_id: str,
        stream: TextIO | None = None,
        *,
        min_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._job_id = job_id
        self._stream = stream
        self._min_interval_s = min_interval_s
        self._clock = clock
        self._last_text: str | None = None
        self._last_stage: tuple[str, str] | None = None
        self._last_at = float("-inf")

    def __call__(self, job: Job) -> None:
        text = describe(job)
        if text == self._last_text:
            return
        stage = (job.status.value, job.progress.phase)
        progress = job.progress
        finished_count = progress.total is not None and progress.completed >= progress.total
        now = self._clock()
        if (
            stage == self._last_stage
            and not finished_count
            and now - self._last_at < self._min_interval_s
        ):
            return
        stream = self._stream if self._stream is not None else sys.stderr
        print(f"job {self._job_id}: {text}", file=stream, flush=True)
        self._last_text, self._last_stage, self._last_at = text, stage, now

    def close(self) -> None:
        """Nothing to tear down; lines are flushed as they are written."""


class LiveProgress:
    """A rich progress bar on a terminal: spinner, job and phase, bar, count, elapsed time.

    Args:
        job_id: The job shown in the description.
        console: Where to draw; default a rich console on stderr.
    """

    def __init__(self, job_id: str, console: Console | None = None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self._job_id = job_id
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console or Console(stderr=True),
        )
        self._task = self._progress.add_task(f"job {job_id}: submitted", total=None)
        self._progress.start()
        self._closed = False

    def __call__(self, job: Job) -> None:
        progress = job.progress
        running = job.status.value == "running"
        # The unit names what the bar counts, while it counts: not on "succeeded".
        unit = (
            f" ({progress.unit})"
            if running and progress.unit and progress.total is not None
            else ""
        )
        phase = escape_controls(progress.phase) if running else job.status.value
        self._progress.update(
            self._task,
            description=f"job {self._job_id}: {phase}{unit}",
            # total=None makes the bar pulse: the phase has no count (loading, saving).
            total=progress.total,
            completed=progress.completed,
        )

    def close(self) -> None:
        """Stop redrawing and leave the last state on screen; safe to call twice."""
        if not self._closed:
            self._closed = True
            self._progress.stop()


def make_reporter(job_id: str) -> ProgressReporter:
    """`LiveProgress` when stderr is a terminal, else `PlainProgress`; both name the job by
    the 8 characters every command accepts, so a progress line fits 80 columns."""
    if sys.stderr.isatty():
        return LiveProgress(job_id[:8])
    return PlainProgress(job_id[:8])
