"""The `GpuPool` seam: which GPUs a queued job may start on, if any.

The scheduler asks the pool for a grant for each job in queue order; the pool answers with a
`GpuGrant` (the job starts now, on those GPUs), None (it waits), or raises `NeverFits` (it can
never start here). A grant is held until the scheduler releases it, after the job's session
closed.

Three pools:

- `PerGpuPool`: a host whose GPUs the service sees (NVML). Whole GPUs, by UUID, each under the
  exclusive OS lock of `llem_service.jobs.gpu_locks`, so several experiments run at once, each
  on GPUs of its own, and no other llem service of the host can take them meanwhile.
- `WholeHostPool`: a host with no GPU the service can see (a CPU host, or NVML missing): one job
  at a time with every device, so measurements never overlap.
- `SlotPool`: an executor whose jobs someone else places (Slurm grants the GPUs): at most so
  many jobs handed to it at once, each with an empty grant.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from llem_client import ExperimentConfig

from llem_service.executors.base import WHOLE_HOST, GpuGrant
from llem_service.jobs.base import QueuedJob
from llem_service.jobs.gpu_locks import GpuLockDirError, GpuLocks, LockHolder

_log = logging.getLogger("llem.scheduler")


class NeverFits(Exception):
    """The job asks for more than the pool can ever grant; the message says what and why."""


class GpuPool(Protocol):
    """Grants GPUs to jobs."""

    def try_grant(self, job: QueuedJob) -> GpuGrant | None:
        """A grant for ``job`` now, or None if it must wait. Raises `NeverFits` for a job that
        cannot start here however long it waits."""
        ...

    def release(self, grant: GpuGrant) -> None:
        """The job on ``grant`` ended and its session closed: its GPUs are free."""
        ...

    def reserve(self, grant: GpuGrant) -> None:
        """A job reattached after a restart holds ``grant`` (granted by an earlier server)."""
        ...

    def reassign(self, grant: GpuGrant, job_id: str) -> None:
        """``job_id`` now runs on ``grant`` (a session's next job, or a job reattached)."""
        ...


def gpus_needed(config: ExperimentConfig, host_gpus: int) -> int:
    """GPUs ``config`` takes on a host of ``host_gpus``: all of them with ``exclusive_host``."""
    return host_gpus if config.exclusive_host else config.gpus


def grant_fits(grant: GpuGrant, config: ExperimentConfig) -> bool:
    """Whether a job of ``config`` may run on ``grant`` as it is (a session's next job): the
    whole host fits anything; otherwise the same count, and an exclusive job only after one."""
    if not grant.uuids:
        return True
    return not config.exclusive_host and len(grant.uuids) == config.gpus


@dataclass(frozen=True)
class GpuState:
    """One GPU of a `PerGpuPool`: the job of this service on it, or the other holder."""

    uuid: str
    job_id: str | None = None
    held_by: LockHolder | None = None


class PerGpuPool:
    """Whole GPUs by UUID, each locked in ``locks`` while granted.

    GPUs are granted in the order given (NVML's, which is PCI order), first free first: a 2-GPU
    job gets the two lowest free GPUs. A GPU whose lock another service holds is skipped until
    it is free; the scheduler retries waiting jobs every second, so it is noticed. A lock that
    cannot be taken at all (the directory unwritable, a file another user made unreadable)
    lets go of what the grant had taken, and jobs wait with the reason in
    `unavailable_reason` until the locks work again.

    Args:
        uuids: The host's GPUs the service may use, in NVML order.
        locks: Their lock files.
    """

    def __init__(self, uuids: Sequence[str], locks: GpuLocks) -> None:
        if not uuids:
            raise ValueError("a per-GPU pool needs at least one GPU")
        self.uuids = tuple(uuids)
        self.locks = locks
        self._fds: dict[str, int] = {}
        self._jobs: dict[str, str] = {}
        self._fault: str | None = None  # why locks cannot be taken now

    @property
    def total(self) -> int:
        return len(self.uuids)

    def try_grant(self, job: QueuedJob) -> GpuGrant | None:
        needed = gpus_needed(job.config, self.total)
        if needed > self.total:
            raise NeverFits(
                f"the experiment asks for gpus={job.config.gpus}, and this host has "
                f"{self.total} GPU(s) the service can use"
            )
        taken: list[tuple[str, int]] = []
        try:
            for uuid in self.uuids:
                if len(taken) == needed:
                    break
                if uuid in self._fds:
                    continue
                fd = self.locks.acquire(uuid)
                if fd is not None:
                    taken.append((uuid, fd))
        except GpuLockDirError as exc:  # let go of what was taken: else locked for good
            for _, fd in taken:
                self.locks.release(fd)
            self._set_fault(str(exc))
            return None
        self._set_fault(None)
        if len(taken) < needed:
            for _, fd in taken:
                self.locks.release(fd)
            return None
        grant = GpuGrant(tuple(uuid for uuid, _ in taken))
        for uuid, fd in taken:
            self._fds[uuid] = fd
            self._jobs[uuid] = job.id
            self.locks.describe(fd, job.id, grant.uuids)
        return grant

    def unavailable_reason(self) -> str | None:
        """Why no GPU can be granted now (its lock cannot be taken), or None. While there is a
        reason, each call tries the free GPUs' locks again, so it clears once they work."""
        if self._fault is None:
            return None
        try:
            for uuid in self.uuids:
                if uuid not in self._fds and (fd := self.locks.acquire(uuid)) is not None:
                    self.locks.release(fd)
        except GpuLockDirError as exc:
            self._set_fault(str(exc))
        else:
            self._set_fault(None)
        return self._fault

    def _set_fault(self, fault: str | None) -> None:
        if fault == self._fault:
            return
        if fault is None:
            _log.info("GPU locks can be taken again")
        else:
            _log.warning("GPU locks cannot be taken, queued jobs wait: %s", fault)
        self._fault = fault

    def reassign(self, grant: GpuGrant, job_id: str) -> None:
        """Name ``job_id`` as the job on ``grant``'s GPUs, here (`states`, /v1/info) and in the
        lock files other services read."""
        for uuid in grant.uuids:
            fd = self._fds.get(uuid)
            if fd is None:
                continue  # held by someone else (a reattached job's GPU): not ours to name
            self._jobs[uuid] = job_id
            self.locks.describe(fd, job_id, grant.uuids)

    def release(self, grant: GpuGrant) -> None:
        for uuid in grant.uuids:
            fd = self._fds.pop(uuid, None)
            self._jobs.pop(uuid, None)
            if fd is not None:
                self.locks.release(fd)

    def reserve(self, grant: GpuGrant) -> None:
        # Only executors whose jobs outlive the server reattach, and those do not take GPUs
        # from this pool; lock what is free so that nothing else is granted beside the job.
        for uuid in grant.uuids:
            if uuid in self._fds:
                continue
            fd = self.locks.acquire(uuid)
            if fd is None:
                _log.warning("GPU %s of a reattached job is locked by another holder", uuid)
                continue
            self._fds[uuid] = fd

    def lock_fds(self, grant: GpuGrant) -> tuple[int, ...]:
        """The descriptors holding ``grant``'s locks, for the experiment process to inherit."""
        return tuple(self._fds[uuid] for uuid in grant.uuids if uuid in self._fds)

    def neighbours(self) -> list[LockHolder]:
        """Locks of this host's GPUs held by someone other than this service: any lock held
        on a GPU this pool has not granted (another service, or an experiment process that
        outlived a service before this one)."""
        return list(self.locks.holders([u for u in self.uuids if u not in self._fds]).values())

    def states(self) -> list[GpuState]:
        """Every GPU with its job here or its other holder."""
        others = {h.uuid: h for h in self.neighbours()}
        return [
            GpuState(uuid=uuid, job_id=self._jobs.get(uuid), held_by=others.get(uuid))
            for uuid in self.uuids
        ]


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

    def reassign(self, grant: GpuGrant, job_id: str) -> None:
        pass  # nothing names the job: every device is the one job's


class SlotPool:
    """At most ``slots`` jobs at once, each with an empty grant: the executor's own scheduler
    (Slurm) picks the GPUs. Bounds how many jobs llem hands over at once, so a study of
    thousands of points does not flood the cluster's queue."""

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError("a slot pool needs at least one slot")
        self.slots = slots
        self.used = 0

    def try_grant(self, job: QueuedJob) -> GpuGrant | None:
        if self.used >= self.slots:
            return None
        self.used += 1
        return WHOLE_HOST

    def release(self, grant: GpuGrant) -> None:
        self.used = max(0, self.used - 1)

    def reserve(self, grant: GpuGrant) -> None:
        self.used += 1

    def reassign(self, grant: GpuGrant, job_id: str) -> None:
        pass  # the executor's scheduler placed the job: nothing here names it
