"""The `Executor` seam: how one job's experiment runs, wherever it runs.

The scheduler (`llem_service.jobs.scheduler`) decides *when* a job runs and on *which GPUs*
(a `GpuGrant`); an executor decides *how*: in a child process on this host (`local`), or as a
batch job on a cluster (`slurm`). The scheduler never knows which.

An executor hands out sessions. A session holds a grant and runs jobs on it one after another:

    session = executor.open(grant)
    outcome = session.run(context)            # blocking; the scheduler calls it in a thread
    if session.reusable_for(next_config):     # e.g. the same model, already loaded
        outcome = session.run(next_context)   # the scheduler claimed the next job on the grant
    session.close()                           # always

A one-off experiment is a session of one run. A session whose `reusable_for` is always False
(the default for a fresh process per experiment) behaves exactly like that.

After a server restart, jobs the store still lists as running are offered back to the executor
with `Executor.reattach`: an executor whose jobs outlive the server (a Slurm job) returns a
session that follows the job to its end; one whose jobs die with the server (a child process)
returns None, and the job is recovered by the store's rule (failed as interrupted, or retried).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from llem_client import ExperimentConfig, ExperimentResult, JobProgress, JobStatus, ProblemDetail

from llem_service.energy.base import Baseline
from llem_service.energy.readings import GpuReading
from llem_service.energy.timeseries import Columns

ProgressCallback = Callable[[JobProgress], None]
TelemetryCallback = Callable[[Sequence[GpuReading]], None]


@dataclass(frozen=True)
class GpuGrant:
    """The GPUs one job may use, by NVML/CUDA UUID (``GPU-...``).

    An empty grant restricts nothing: the experiment sees every GPU the service sees (a host
    run one job at a time, or a CPU host). A non-empty grant is exported to the experiment as
    ``CUDA_VISIBLE_DEVICES``, so CUDA device 0 of the experiment is ``uuids[0]``.
    """

    uuids: tuple[str, ...] = ()

    def cuda_visible_devices(self) -> str | None:
        """The value of ``CUDA_VISIBLE_DEVICES`` for this grant; None leaves it as it is."""
        return ",".join(self.uuids) if self.uuids else None


#: The grant of a host that runs one experiment at a time: every GPU the service sees.
WHOLE_HOST = GpuGrant()


@dataclass(frozen=True)
class RunOutcome:
    """How an experiment ended: a result (succeeded), an error (failed), or cancelled; or
    ``running``: the server is shutting down and the job goes on without it (`RunContext.detach`).
    """

    status: JobStatus
    result: ExperimentResult | None = None
    error: ProblemDetail | None = None
    timeseries: Columns | None = None


def _ignore_ref(ref: str) -> None:
    """The default `RunContext.on_executor_ref`: nothing to remember."""


def _ignore_placement(host: str, gpus: tuple[str, ...], started_at: float) -> None:
    """The default `RunContext.on_placement`: nothing to record."""


def _ignore_telemetry(readings: Sequence[GpuReading]) -> None:
    """The default `RunContext.on_telemetry`: nobody watches."""


@dataclass(frozen=True)
class RunContext:
    """Everything one run needs from the scheduler.

    Attributes:
        job_id: The job, also the experiment's id in its result.
        config: What to run.
        cancel: Set by the scheduler to stop the run; the run then ends ``cancelled``.
        on_progress: Told each change of phase or progress (from the session's thread).
        baselines: Idle baselines the service keeps for reuse across experiments.
        executor_ref: The executor's own handle of the job (a Slurm job id) when following a
            job started before a restart; None for a new run.
        on_executor_ref: Told the executor's handle as soon as there is one, so that the store
            keeps it and a restarted server can reattach.
        on_placement: Told where the run really started, when that is not where the scheduler
            put it: the host (a Slurm node), the GPU UUIDs it got and when it started (seconds
            since the epoch). A local run never calls it.
        detach: Set when the server shuts down. A session whose job outlives the server (a
            Slurm job) then returns at once with status ``running`` and leaves the job to the
            next server (`Executor.reattach`); one whose job cannot outlive it is also told
            ``cancel``, and stops.
        on_telemetry: Told the metered GPUs' latest readings (about once a second) while the
            run's meter samples them, for live monitoring; never used for a result. Executors
            that cannot forward them never call it.
        keep_warm: The scheduler may offer the session a next job that can reuse what this run
            loads (a study's next point): keep it after a successful run, until `close`.
    """

    job_id: str
    config: ExperimentConfig
    cancel: threading.Event = field(default_factory=threading.Event)
    on_progress: ProgressCallback = field(default=lambda progress: None)
    baselines: tuple[Baseline, ...] = ()
    executor_ref: str | None = None
    on_executor_ref: Callable[[str], None] = _ignore_ref
    on_placement: Callable[[str, tuple[str, ...], float], None] = _ignore_placement
    detach: threading.Event = field(default_factory=threading.Event)
    on_telemetry: TelemetryCallback = _ignore_telemetry
    keep_warm: bool = False


@dataclass(frozen=True)
class RunningJob:
    """A job the store lists as running, as a restarted server finds it."""

    job_id: str
    config: ExperimentConfig
    grant: GpuGrant
    executor_ref: str | None


class ExecutorSession(Protocol):
    """Runs jobs, one at a time, on one grant."""

    def run(self, context: RunContext) -> RunOutcome:
        """Run to the end, or until ``context.cancel`` is set; blocking."""
        ...

    def reusable_for(self, config: ExperimentConfig) -> bool:
        """Whether the next run may be ``config`` in this session (it can reuse what this one
        holds, such as a loaded model) rather than in a fresh one."""
        ...

    def close(self) -> None:
        """Release everything the session holds. Safe to call twice, and after a failure."""
        ...


class Executor(Protocol):
    """Where and how experiments run."""

    name: str

    def unavailable_reason(self) -> str | None:
        """Why this executor cannot run jobs right now (in words a user can act on), or None.
        The service shows it in ``/v1/info`` and refuses submissions while it is not None."""
        ...

    def open(self, grant: GpuGrant) -> ExecutorSession:
        """A session on ``grant``. Cheap: work starts with the first run."""
        ...

    def reattach(self, job: RunningJob) -> ExecutorSession | None:
        """A session that follows ``job`` (started before a restart) to its end, or None when
        the job cannot have survived the restart."""
        ...
