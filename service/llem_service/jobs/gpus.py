"""The `GpuPool` seam: which GPUs a queued job may start on, if any.

The scheduler asks the pool for a grant for each job in queue order; the pool answers with a
`GpuGrant` (the job starts now, on those GPUs) or None (it waits). A grant is held until the
scheduler releases it, after the job's session closed.

`WholeHostPool` is the rule of a host that runs one experiment at a time: one grant at a time,
covering every GPU, so measurements never overlap.
"""

from __future__ import annotations

from typing import Protocol

from llem_service.executors.base import WHOLE_HOST, GpuGrant
from llem_service.jobs.store import QueuedJob


class GpuPool(Protocol):
    """Grants GPUs to jobs."""

    def try_grant(self, job: QueuedJob) -> GpuGrant | None:
        """A grant for ``job`` now, or None if it must wait."""
        ...

    def release(self, grant: GpuGrant) -> None:
        """The job on ``grant`` ended and its session closed: its GPUs are free."""
        ...

    def reserve(self, grant: GpuGrant) -> None:
        """A job reattached after a restart holds ``grant`` (granted by an earlier server)."""
        ...


class WholeHostPool:
    """One job at a time, on every GPU the service sees."""

    def __init__(self) -> None:
        self._held = False

    def try_grant(self, job: QueuedJob) -> GpuGrant | None:
        if self._held:
            return None
        self._held = True
        return WHOLE_HOST

    def release(self, grant: GpuGrant) -> None:
        self._held = False

    def reserve(self, grant: GpuGrant) -> None:
        self._held = True
