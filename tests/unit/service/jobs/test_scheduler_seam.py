"""The scheduler against in-process executors and pools: order, session reuse, reattaching
after a restart. (`test_scheduler.py` runs it with real child processes behind a server.)"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from llem_client import ExperimentConfig, JobStatus
from llem_service.executors.base import GpuGrant, RunContext, RunningJob, RunOutcome
from llem_service.experiment.results import ResultFiles
from llem_service.jobs.base import QueuedJob
from llem_service.jobs.events import ChangeFeed, running_loop
from llem_service.jobs.scheduler import Scheduler
from llem_service.jobs.store import SqliteJobStore
from llem_service.jobs.study_store import NewStudy, PlannedRun

from tests.conftest import make_config


@dataclass
class RecordingExecutor:
    """Sessions that 'run' a job by noting it; a session can take the next job when the
    model is the same (as a session holding a loaded model would). ``follow`` lists the
    executor handles it can reattach to after a restart."""

    name: str = "recording"
    follow: frozenset[str] = frozenset()
    sessions: list[list[str]] = field(default_factory=list)
    closed: int = 0
    release_run: threading.Event | None = None

    def unavailable_reason(self) -> str | None:
        return None

    def open(self, grant: GpuGrant) -> RecordingSession:
        self.sessions.append([])
        return RecordingSession(self, self.sessions[-1])

    def reattach(self, job: RunningJob) -> RecordingSession | None:
        if job.executor_ref not in self.follow:
            return None
        self.sessions.append([])
        return RecordingSession(self, self.sessions[-1])


@dataclass
class RecordingSession:
    executor: RecordingExecutor
    runs: list[str]
    model: str | None = None

    def run(self, context: RunContext) -> RunOutcome:
        if self.executor.release_run is not None:
            self.executor.release_run.wait(10)
        self.runs.append(context.config.name or context.job_id)
        self.model = context.config.model
        return RunOutcome(JobStatus.SUCCEEDED)

    def reusable_for(self, config: ExperimentConfig) -> bool:
        return config.model == self.model

    def close(self) -> None:
        self.executor.closed += 1


def _run_until_done(
    store: SqliteJobStore,
    tmp_path: Path,
    executor: RecordingExecutor,
    ids: list[str],
    before: Callable[[Scheduler], None] = lambda s: None,
    pool: object = None,
) -> None:
    async def scenario() -> None:
        scheduler = Scheduler(
            store,
            ResultFiles(tmp_path / "results"),
            ChangeFeed(),
            lambda: executor,
            pool,  # type: ignore[arg-type]
        )
        scheduler.start()
        before(scheduler)
        deadline = time.monotonic() + 20
        while not all((job := store.get(i)) is not None and job.status.terminal for i in ids):
            assert time.monotonic() < deadline, [store.get(i) for i in ids]
            await asyncio.sleep(0.02)
        await scheduler.stop()

    asyncio.run(scenario())


def _submit_study(store: SqliteJobStore, runs: list[tuple[str, str]], *, reuse: bool) -> list[str]:
    """A study whose runs are ``(name, model)`` in this order; their job ids."""
    planned = [
        PlannedRun(make_config(name=name, model=model), point, 0, point)
        for point, (name, model) in enumerate(runs)
    ]
    record, _ = store.submit_study(
        NewStudy("s", "0" * 16, "{}", planned, reuse=reuse, cooldown=None, fingerprint="f")
    )
    return [r.run.job_id for r in store.study_runs(record.id)]


def test_consecutive_runs_of_a_study_a_session_can_reuse_run_in_it(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    runs = [("a1", "model-a"), ("a2", "model-a"), ("b1", "model-b"), ("a3", "model-a")]
    ids = _submit_study(store, runs, reuse=True)
    # Same model, but not of the study: never in one of its sessions.
    ids.append(store.submit(make_config(name="a4", model="model-a")).job.id)
    ids += _submit_study(store, [("c1", "model-c"), ("c2", "model-c")], reuse=False)
    executor = RecordingExecutor()

    _run_until_done(store, tmp_path, executor, ids)

    assert executor.sessions == [["a1", "a2"], ["b1"], ["a3"], ["a4"], ["c1"], ["c2"]]
    assert executor.closed == 6
    assert all(store.get(i).status is JobStatus.SUCCEEDED for i in ids)  # type: ignore[union-attr]


def test_a_job_the_pool_cannot_grant_blocks_the_jobs_behind_it(tmp_path: Path) -> None:
    @dataclass
    class OneAtATimeForBigJobs:
        """Grants 'small' jobs freely, a 'big' one only when nothing runs."""

        held: int = 0
        order: list[str] = field(default_factory=list)

        def try_grant(self, job: QueuedJob) -> GpuGrant | None:
            if job.config.name == "big" and self.held:
                return None
            self.held += 1
            self.order.append(job.config.name or "")
            return GpuGrant((f"GPU-{self.held}",))

        def release(self, grant: GpuGrant) -> None:
            self.held -= 1

        def reserve(self, grant: GpuGrant) -> None:
            self.held += 1

        def reassign(self, grant: GpuGrant, job_id: str) -> None:
            pass

    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    ids = [
        store.submit(make_config(name=n, model=f"m-{n}")).job.id for n in ("small", "big", "last")
    ]
    pool = OneAtATimeForBigJobs()
    release = threading.Event()
    executor = RecordingExecutor(release_run=release)

    def let_runs_finish(scheduler: Scheduler) -> None:
        threading.Timer(0.3, release.set).start()

    _run_until_done(store, tmp_path, executor, ids, let_runs_finish, pool)

    # "last" could have run beside "small" but never overtakes "big", which waited.
    assert pool.order == ["small", "big", "last"]


def test_a_restarted_scheduler_follows_what_it_can_and_fails_the_rest(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    followed = store.submit(make_config(name="followed")).job.id
    lost = store.submit(make_config(name="lost")).job.id
    for job_id in (followed, lost):
        store.claim(job_id, GpuGrant(("GPU-x",)))
    store.set_executor_ref(followed, "cluster-17")
    executor = RecordingExecutor(follow=frozenset({"cluster-17"}))

    _run_until_done(store, tmp_path, executor, [followed, lost])

    assert executor.sessions == [["followed"]]
    lost_job = store.get(lost)
    assert lost_job is not None
    assert lost_job.status is JobStatus.FAILED
    assert lost_job.error is not None
    assert lost_job.error.type == "urn:llem:problem:interrupted"
    assert store.get(followed).status is JobStatus.SUCCEEDED  # type: ignore[union-attr]


def test_a_restart_retries_an_interrupted_study_run_once_and_fails_a_plain_job(
    tmp_path: Path,
) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    first, second = _submit_study(store, [("p0", "m"), ("p1", "m")], reuse=False)
    plain = store.submit(make_config(name="plain")).job.id
    store.claim(first)
    store.claim(plain)
    executor = RecordingExecutor()

    _run_until_done(store, tmp_path, executor, [first, second, plain])

    assert executor.sessions == [["p0"], ["p1"]]  # p0 again, in its place, before p1
    runs = store.study_runs(store.list_studies()[0][0].id)
    assert [(r.run.job_id, r.run.attempt, r.run.status) for r in runs] == [
        (first, 2, JobStatus.SUCCEEDED),
        (second, 1, JobStatus.SUCCEEDED),
    ]
    plain_job = store.get(plain)
    assert plain_job is not None
    assert plain_job.status is JobStatus.FAILED
    assert plain_job.error is not None
    assert plain_job.error.type == "urn:llem:problem:interrupted"


class QueueWatchingStore(SqliteJobStore):
    """Counts the reads of the queue, and those made on an event loop's thread."""

    reads = 0
    reads_on_loop = 0

    def queued(self, limit: int = 64) -> list[QueuedJob]:
        self.reads += 1
        if running_loop() is not None:
            self.reads_on_loop += 1
        return super().queued(limit)


def test_the_scheduler_reads_the_queue_off_the_event_loop(tmp_path: Path) -> None:
    # Each read parses up to 64 queued configs; on the loop it held every request up at each
    # submit while a long queue waited.
    store = QueueWatchingStore(tmp_path / "jobs.sqlite3")
    ids = [store.submit(make_config(name=f"j{i}")).job.id for i in range(3)]

    _run_until_done(store, tmp_path, RecordingExecutor(), ids)

    assert store.reads >= 1
    assert store.reads_on_loop == 0
