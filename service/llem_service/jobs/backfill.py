"""The order jobs start in, and how far a later job may go ahead of one that waits.

The rule (``LLEM_BACKFILL_LIMIT``, "the bound"):

1. Jobs start in submission order.
2. A job that cannot be granted its GPUs now waits. A later job may start ahead of it only if
   the GPUs that later job needs are free now (nothing is ever taken from a running job), and
   only while every earlier job that waits has been overtaken fewer times than the bound.
3. Once a waiting job has been overtaken as many times as the bound, nothing behind it starts
   before it: the GPUs that free up gather for it, and it starts as soon as enough have.

So a 2-GPU job behind a stream of 1-GPU jobs waits for at most ``bound`` of them, plus the ones
already running when it was submitted: it is never starved. A bound of 0 is strict submission
order. Counts live in the scheduler's memory; a restarted server counts afresh, which can only
delay a waiting job by one more bound.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence


class BackfillBound:
    """Counts how often each waiting job has been overtaken.

    Args:
        limit: The bound: how many later jobs may start ahead of a waiting one (0: none).
    """

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError("the backfill limit cannot be negative")
        self.limit = limit
        self._overtaken: dict[str, int] = {}

    def may_overtake(self, waiting: Sequence[str]) -> bool:
        """Whether a job may start ahead of every job in ``waiting`` (earlier, waiting ones)."""
        return all(self._overtaken.get(job_id, 0) < self.limit for job_id in waiting)

    def overtook(self, waiting: Sequence[str]) -> None:
        """A job started ahead of every job in ``waiting``."""
        for job_id in waiting:
            self._overtaken[job_id] = self._overtaken.get(job_id, 0) + 1

    def keep_only(self, queued: Collection[str]) -> None:
        """Forget jobs no longer queued (started, cancelled)."""
        for job_id in [j for j in self._overtaken if j not in queued]:
            del self._overtaken[job_id]
