"""The `JobStore` seam: where jobs live, and the records the scheduler and the API exchange
with it. The SQLite implementation is `llem_service.jobs.store.SqliteJobStore`."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from llem_client import (
    CooldownConfig,
    ExperimentConfig,
    Job,
    JobProgress,
    JobStatus,
    ProblemDetail,
    ResultWarning,
)

from llem_service.executors.base import WHOLE_HOST, GpuGrant, RunningJob


@dataclass(frozen=True)
class Submission:
    """A submitted job, and whether this call created it (False: an idempotent replay)."""

    job: Job
    created: bool


@dataclass(frozen=True)
class QueuedJob:
    """A job waiting to run, as the scheduler sees it: its place in line and its config.

    ``reuse_group``: jobs of one group (a study that allows it) may run one after another in
    one executor session that keeps what it loaded; None: never run in another job's session.
    """

    id: str
    seq: int
    config: ExperimentConfig
    reuse_group: str | None = None


@dataclass(frozen=True)
class StudyLink:
    """Where a job stands in its study.

    Attributes:
        study_id: The study.
        point: The point of the design.
        cycle: The cycle, from 0.
        position: Place in the study's planned order, from 0.
        attempt: 1, or 2 for a retry after a restart.
        cooldown: The pause the study asks for between its runs; None for none.
    """

    study_id: str
    point: int
    cycle: int
    position: int
    attempt: int = 1
    cooldown: CooldownConfig | None = None


@dataclass(frozen=True)
class ClaimedJob:
    """A job the scheduler has started, on the GPUs it granted."""

    job: Job
    config: ExperimentConfig
    grant: GpuGrant = WHOLE_HOST
    reuse_group: str | None = None
    study: StudyLink | None = None


class JobStore(Protocol):
    """Where jobs live. The scheduler claims, updates and finishes; the API submits and reads."""

    def submit(
        self, config: ExperimentConfig, idempotency_key: str | None = None
    ) -> Submission: ...

    def replay(self, config: ExperimentConfig, idempotency_key: str) -> Job | None: ...

    def get(self, job_id: str) -> Job | None: ...

    def list_jobs(
        self,
        status: JobStatus | None = None,
        limit: int = 50,
        cursor: str | None = None,
        *,
        tags: Mapping[str, str] | None = None,
        name: str | None = None,
    ) -> tuple[list[Job], str | None]: ...

    def find(self, id_or_prefix: str) -> Job | None: ...

    def delete_finished(self, job_id: str) -> Job | None: ...

    def queued(self, limit: int = 64) -> list[QueuedJob]:
        """The first ``limit`` queued jobs, oldest first (the order they are meant to run)."""
        ...

    def claim(self, job_id: str, grant: GpuGrant = WHOLE_HOST) -> ClaimedJob | None:
        """Mark the job running on ``grant``, if it is still queued (None otherwise)."""
        ...

    def running(self) -> list[RunningJob]:
        """Jobs marked running, oldest first, with their grants and executor handles."""
        ...

    def set_executor_ref(self, job_id: str, ref: str) -> None:
        """Remember the executor's handle of a running job (for reattaching after a restart)."""
        ...

    def request_cancel(self, job_id: str) -> bool:
        """Keep a cancel for a running job (read by its run, and after a restart); False when
        it is not running."""
        ...

    def cancel_requested(self, job_id: str) -> bool:
        """Whether the job's cancel, or its study's, was asked for."""
        ...

    def unclaim(self, job_id: str) -> bool:
        """Put a claimed job whose run never started back in line, in its place."""
        ...

    def fail_interrupted(self, job_ids: Sequence[str], why: str | None = None) -> None:
        """End these running jobs, interrupted by a shutdown or a restart: cancelled where a
        cancel was asked for, otherwise failed as interrupted (``why`` says how)."""
        ...

    def retry_interrupted(self, job_ids: Sequence[str]) -> list[str]:
        """Queue again, in their place, those of these running jobs that are study runs on
        their first attempt and not cancelled (marked attempt 2); return them. The rest stay
        running."""
        ...

    def update_progress(self, job_id: str, progress: JobProgress) -> None: ...

    def set_study_temperatures(self, study_id: str, temperatures: Mapping[str, float]) -> None:
        """Keep each GPU's temperature before the study's first run (the cooldown's target)."""
        ...

    def study_temperatures(self, study_id: str) -> dict[str, float] | None: ...

    def finish(
        self,
        job_id: str,
        status: JobStatus,
        *,
        error: ProblemDetail | None = None,
        result_path: str | None = None,
        metrics: Mapping[str, float | None] | None = None,
    ) -> Job:
        """End a running job. ``metrics``: a succeeded job's headline figures, kept for study
        tables (`llem_service.experiment.figures.run_metrics`)."""
        ...

    def cancel_queued(self, job_id: str) -> Job | None: ...

    def result_path(self, job_id: str) -> str | None: ...

    def queue_length(self) -> int: ...

    def status_counts(self) -> dict[JobStatus, int]:
        """How many jobs are in each status (statuses with none are absent)."""
        ...

    def config(self, job_id: str) -> ExperimentConfig | None:
        """The config the job was submitted with (None for an unknown job)."""
        ...

    def close(self) -> None: ...


class BeforeRun(Protocol):
    """What the scheduler does before each claimed job's run (a study's cooldown:
    `llem_service.studies.cooldown.StudyCooldown`), in the run's thread, inside its
    cancellable window: it may block, and should return soon once ``cancel`` is set.

    Returns:
        A warning for the run's result when it fell short of what was asked, or None.
    """

    def __call__(
        self,
        job: ClaimedJob,
        cancel: threading.Event,
        on_progress: Callable[[JobProgress], None],
    ) -> ResultWarning | None: ...
