"""The scheduler when things happen at awkward moments: a cancel just after a claim, a shutdown
or a crash during a study run, a cancelled study at restart, and its own bookkeeping failing.
In-process executors and stores (`test_scheduler_seam.py` has the ordinary paths)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llem_client import ExperimentConfig, JobStatus
from llem_service.executors.base import WHOLE_HOST, GpuGrant, RunContext, RunningJob, RunOutcome
from llem_service.experiment.results import ResultFiles
from llem_service.jobs.base import ClaimedJob, QueuedJob
from llem_service.jobs.events import ChangeFeed
from llem_service.jobs.gpus import WholeHostPool
from llem_service.jobs.overlaps import OverlapTracker
from llem_service.jobs.scheduler import Scheduler
from llem_service.jobs.store import SqliteJobStore
from llem_service.jobs.study_store import NewStudy, PlannedRun

from tests.conftest import make_config


@dataclass
class Session:
    """Runs until told to stop (or ``run_s`` passes); notes each run and whether it saw
    the cancel. ``close_error``: `close` raises it."""

    executor: StopExecutor
    close_error: Exception | None = None

    def run(self, context: RunContext) -> RunOutcome:
        self.executor.started.append(context.job_id)
        self.executor.running.set()
        if context.cancel.wait(self.executor.run_s):
            self.executor.saw_cancel.append(context.job_id)
            if context.detach.is_set() and self.executor.outlives_server:
                return RunOutcome(JobStatus.RUNNING)
            return RunOutcome(JobStatus.CANCELLED)
        return RunOutcome(JobStatus.SUCCEEDED)

    def reusable_for(self, config: ExperimentConfig) -> bool:
        return False

    def close(self) -> None:
        self.executor.closed += 1
        if self.close_error is not None:
            raise self.close_error


@dataclass
class StopExecutor:
    """An executor whose runs last ``run_s`` unless cancelled. ``follow``: executor handles
    it reattaches to after a restart (its jobs outlive the server, as Slurm's do)."""

    name: str = "stop"
    run_s: float = 10.0
    follow: frozenset[str] = frozenset()
    close_error: Exception | None = None
    started: list[str] = field(default_factory=list)
    saw_cancel: list[str] = field(default_factory=list)
    closed: int = 0
    running: threading.Event = field(default_factory=threading.Event)

    @property
    def outlives_server(self) -> bool:
        return bool(self.follow)

    def unavailable_reason(self) -> str | None:
        return None

    def open(self, grant: GpuGrant) -> Session:
        return Session(self, self.close_error)

    def reattach(self, job: RunningJob) -> Session | None:
        return Session(self) if job.executor_ref in self.follow else None


def scheduler_for(
    store: SqliteJobStore, tmp_path: Path, executor: StopExecutor, **kwargs: Any
) -> Scheduler:
    return Scheduler(
        store, ResultFiles(tmp_path / "results"), ChangeFeed(), lambda: executor, **kwargs
    )


async def until(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def terminal(store: SqliteJobStore, *ids: str) -> Callable[[], bool]:
    return lambda: all((job := store.get(i)) is not None and job.status.terminal for i in ids)


def run(scenario: Callable[[], Coroutine[Any, Any, Any]]) -> None:
    asyncio.run(scenario())


def submit_study(store: SqliteJobStore, n: int) -> tuple[str, list[str]]:
    runs = [PlannedRun(make_config(name=f"p{i}"), i, 0, i) for i in range(n)]
    record, _ = store.submit_study(
        NewStudy("s", "0" * 16, "{}", runs, reuse=False, cooldown=None, fingerprint="f")
    )
    return record.id, [r.run.job_id for r in store.study_runs(record.id)]


# -- a cancel just after the claim ---------------------------------------------------------------


class CancelOnClaim(SqliteJobStore):
    """A store through which a user cancels each job the moment it is claimed, before its run
    begins, as the API does: the store keeps the cancel, then the scheduler is told."""

    scheduler: Scheduler
    told: list[bool]

    def claim(self, job_id: str, grant: GpuGrant = WHOLE_HOST) -> ClaimedJob | None:
        claimed = super().claim(job_id, grant)
        if claimed is not None:
            assert self.request_cancel(job_id)
            self.told.append(self.scheduler.request_cancel(job_id))
        return claimed


def test_a_cancel_arriving_just_after_the_claim_is_not_lost(tmp_path: Path) -> None:
    store = CancelOnClaim(tmp_path / "jobs.sqlite3")
    store.told = []
    job_id = store.submit(make_config()).job.id
    executor = StopExecutor()

    async def scenario() -> None:
        scheduler = store.scheduler = scheduler_for(store, tmp_path, executor)
        scheduler.start()
        await until(terminal(store, job_id))
        await scheduler.stop()
        assert scheduler.running_job_ids == ()

    run(scenario)

    assert store.told == [False]  # no run to tell yet: only the store had it
    job = store.get(job_id)
    assert job is not None
    assert job.status is JobStatus.CANCELLED
    assert executor.started == []  # nothing ran for a job cancelled before it began


def test_a_cancel_kept_before_a_restart_stops_the_job_the_next_server_follows(
    tmp_path: Path,
) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    job_id = store.submit(make_config()).job.id
    store.claim(job_id)
    store.set_executor_ref(job_id, "slurm-7")
    assert store.request_cancel(job_id)  # ...and the server stopped before the run heard it
    executor = StopExecutor(follow=frozenset({"slurm-7"}))

    async def scenario() -> None:
        scheduler = scheduler_for(store, tmp_path, executor)
        scheduler.start()
        await until(terminal(store, job_id))
        await scheduler.stop()

    run(scenario)

    assert executor.saw_cancel == [job_id]
    assert store.get(job_id).status is JobStatus.CANCELLED  # type: ignore[union-attr]


def test_a_cancel_of_a_job_that_is_not_running_is_not_kept(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    queued = store.submit(make_config()).job.id

    assert not store.request_cancel(queued)
    assert not store.cancel_requested(queued)


# -- shutdown and restart during a study ---------------------------------------------------------


async def shutdown_during_a_run(store: SqliteJobStore, tmp_path: Path) -> StopExecutor:
    """Start a scheduler, and stop it (SIGTERM) once its first run is under way."""
    executor = StopExecutor()
    scheduler = scheduler_for(store, tmp_path, executor)
    scheduler.start()
    await until(executor.running.is_set)
    await scheduler.stop()
    return executor


def test_a_graceful_shutdown_during_a_study_run_queues_it_again_as_attempt_2(
    tmp_path: Path,
) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    study_id, (first, second) = submit_study(store, 2)
    executor = asyncio.run(shutdown_during_a_run(store, tmp_path))

    assert executor.started == [first]
    runs = [r.run for r in store.study_runs(study_id)]
    assert [(r.job_id, r.status, r.attempt) for r in runs] == [
        (first, JobStatus.QUEUED, 2),
        (second, JobStatus.QUEUED, 1),
    ]
    assert store.queued()[0].id == first  # in its place, ahead of the rest

    done = StopExecutor(run_s=0.0)

    async def restart() -> None:
        scheduler = scheduler_for(store, tmp_path, done)
        scheduler.start()
        await until(terminal(store, first, second))
        await scheduler.stop()

    run(restart)

    assert done.started == [first, second]
    assert {r.run.status for r in store.study_runs(study_id)} == {JobStatus.SUCCEEDED}


def test_a_second_shutdown_during_the_retry_fails_the_run(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    study_id, (first, _) = submit_study(store, 2)

    for _ in range(2):
        run(lambda: shutdown_during_a_run(store, tmp_path))

    run_ = store.study_runs(study_id)[0].run
    assert (run_.job_id, run_.status, run_.attempt) == (first, JobStatus.FAILED, 2)
    assert run_.error is not None
    assert run_.error.detail == "the server shut down during the run"


class StopOnClaim(SqliteJobStore):
    """A store whose first claim begins the server's shutdown: the job is claimed, and its
    run has not begun when the scheduler is told to stop."""

    scheduler: Scheduler
    stopping: list[asyncio.Task[None]]

    def claim(self, job_id: str, grant: GpuGrant = WHOLE_HOST) -> ClaimedJob | None:
        claimed = super().claim(job_id, grant)
        if claimed is not None and not self.stopping:
            self.stopping.append(asyncio.get_running_loop().create_task(self.scheduler.stop()))
        return claimed


def test_a_job_claimed_but_not_started_at_shutdown_goes_back_in_line(tmp_path: Path) -> None:
    store = StopOnClaim(tmp_path / "jobs.sqlite3")
    store.stopping = []
    job_id = store.submit(make_config()).job.id
    executor = StopExecutor()

    async def scenario() -> None:
        scheduler = store.scheduler = scheduler_for(store, tmp_path, executor)
        scheduler.start()
        await until(lambda: bool(store.stopping) and store.stopping[0].done())

    run(scenario)

    job = store.get(job_id)
    assert job is not None
    assert (job.status, job.started_at, job.error) == (JobStatus.QUEUED, None, None)
    assert executor.started == []
    assert [q.id for q in store.queued()] == [job_id]


def test_a_restart_does_not_queue_again_a_run_of_a_cancelled_study(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    study_id, ids = submit_study(store, 3)
    store.claim(ids[0])
    assert store.cancel_study(study_id) == [ids[0]]
    # ...and the server crashed before the run ended.
    executor = StopExecutor()

    async def restart() -> None:
        scheduler = scheduler_for(store, tmp_path, executor)
        scheduler.start()
        await asyncio.sleep(0.3)
        await scheduler.stop()

    run(restart)

    assert store.retry_interrupted([ids[0]]) == []
    assert [r.run.status for r in store.study_runs(study_id)] == [JobStatus.CANCELLED] * 3
    assert [r.run.attempt for r in store.study_runs(study_id)] == [1, 1, 1]
    assert store.queued() == []
    assert executor.started == []


def test_a_restart_ends_a_cancelled_job_cancelled_not_failed(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    job_id = store.submit(make_config()).job.id
    store.claim(job_id)
    store.request_cancel(job_id)

    store.fail_interrupted([job_id])

    job = store.get(job_id)
    assert job is not None
    assert (job.status, job.error) == (JobStatus.CANCELLED, None)


# -- the scheduler's own bookkeeping failing -----------------------------------------------------


class BrokenOverlaps(OverlapTracker):
    """Overlap records whose lock directory cannot be read at ``when`` ("begin" or "end")."""

    def __init__(self, when: str) -> None:
        super().__init__("host")
        self.when = when

    def begin(self, job_id: str, gpus: Any = (), host: str | None = None) -> None:
        if self.when == "begin":
            raise OSError("lock dir unreadable")
        super().begin(job_id, gpus, host)

    def end(self, job_id: str) -> list[Any]:
        if self.when == "end":
            raise OSError("lock dir unreadable")
        return super().end(job_id)


def test_a_job_whose_overlap_records_fail_before_the_run_fails_instead_of_hanging(
    tmp_path: Path,
) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    job_id = store.submit(make_config()).job.id
    executor = StopExecutor(run_s=0.0)

    async def scenario() -> None:
        scheduler = scheduler_for(store, tmp_path, executor, overlaps=BrokenOverlaps("begin"))
        scheduler.start()
        await until(terminal(store, job_id), timeout_s=5)
        assert scheduler.running_job_ids == ()
        await scheduler.stop()

    run(scenario)

    job = store.get(job_id)
    assert job is not None
    assert job.status is JobStatus.FAILED
    assert job.error is not None
    assert "lock dir unreadable" in (job.error.detail or "")


def test_a_run_whose_overlap_records_fail_after_it_is_still_recorded(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    job_id = store.submit(make_config()).job.id
    executor = StopExecutor(run_s=0.0)

    async def scenario() -> None:
        scheduler = scheduler_for(store, tmp_path, executor, overlaps=BrokenOverlaps("end"))
        scheduler.start()
        await until(terminal(store, job_id), timeout_s=5)
        await scheduler.stop()

    run(scenario)

    # The fake run has no result: it ends as the executor said, not stuck running.
    assert store.get(job_id).status is JobStatus.SUCCEEDED  # type: ignore[union-attr]


def test_a_session_that_fails_to_close_still_gives_its_gpus_back(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    ids = [store.submit(make_config(name=f"j{i}")).job.id for i in range(2)]
    executor = StopExecutor(run_s=0.0, close_error=RuntimeError("child would not exit"))
    pool = WholeHostPool()

    async def scenario() -> None:
        scheduler = scheduler_for(store, tmp_path, executor, pool=pool)
        scheduler.start()
        await until(terminal(store, *ids), timeout_s=5)
        await scheduler.stop()

    run(scenario)

    # With the host's one grant never given back, the second job would wait for ever.
    assert executor.started == ids
    assert executor.closed == 2
    assert pool.try_grant(QueuedJob("next", 0, make_config())) is not None
