"""The scheduler: starts queued jobs in order, on the GPUs its pool grants, through an executor.

It owns each job's life cycle around the experiment: claim, run (in the executor's session,
in a thread), record the outcome, release the GPUs. With `WholeHostPool` (the default) it runs
one experiment at a time on the whole host, so measurements never overlap; with `PerGpuPool`
several at once, each on GPUs of its own.

Order: jobs start in submission order. A job the pool cannot grant yet waits; a later job may
start ahead of it only within the bound of `llem_service.jobs.backfill` (0 by default: it
blocks the jobs behind it). A job the pool can never grant fails at once (`NeverFits`), and
while the executor is unavailable (slurmctld unreachable) nothing starts and jobs stay queued.

Overlaps: each run's span is recorded (`OverlapTracker`), and its result's ``placement`` names
the host, the GPUs and the other experiments that overlapped it.

Reuse: when a job ends, its session may take the next queued job on the same grant, if that
job comes first in line, belongs to the same reuse group (a study that allows reuse) and the
session can reuse what it holds for it (`ExecutorSession.reusable_for`: the same model and
loading options). Otherwise the session closes and the grant goes back to the pool.

Before a run: a `BeforeRun` hook, given, runs in the run's own cancellable window (the app
gives the studies' cooldown, `llem_service.studies.cooldown.StudyCooldown`); a warning it
returns goes on the result. The scheduler knows nothing of studies but their store columns.

Restart: jobs the store still lists as running are offered to the executor
(`Executor.reattach`); of those it cannot follow, study runs on their first attempt are queued
again in their place (attempt 2) and the rest are failed as interrupted.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from llem_client import (
    ExperimentConfig,
    ExperimentResult,
    Job,
    JobProgress,
    JobStatus,
    Placement,
    ProblemDetail,
    ResultWarning,
)

from llem_service.energy.baseline import BaselineCache
from llem_service.errors import Failures
from llem_service.executors.base import (
    Executor,
    ExecutorSession,
    GpuGrant,
    RunContext,
    RunningJob,
    RunOutcome,
)
from llem_service.experiment.figures import run_metrics
from llem_service.experiment.results import ResultFiles
from llem_service.jobs.backfill import BackfillBound
from llem_service.jobs.base import BeforeRun, ClaimedJob, JobStore, QueuedJob
from llem_service.jobs.events import ChangeFeed, on_loop
from llem_service.jobs.gpus import GpuPool, NeverFits, WholeHostPool, grant_fits
from llem_service.jobs.overlaps import OverlapTracker, with_placement

_log = logging.getLogger("llem.scheduler")

#: After the store failed (a full disk), wait this long before using it again: never spin.
STORE_RETRY_S = 1.0
#: While a job waits for GPUs another service may free, or runs go on beside other services'
#: runs, look again this often: nothing in this process says when they change.
POOL_RETRY_S = 1.0

#: Told each job the scheduler ran, once its end is recorded, with its result if it succeeded.
FinishedListener = Callable[[Job, ExperimentResult | None], None]


class Scheduler:
    """Runs queued jobs until stopped.

    Args:
        store: The job store.
        results: Where results are written.
        feed: Notified at each job change (for SSE).
        make_executor: Builds the executor of the next session; called per session, so the
            backend and meter it carries are resolved when the job starts.
        pool: Grants GPUs; `WholeHostPool` (one job at a time) by default.
        backfill_limit: How many later jobs may start ahead of one that waits for GPUs
            (`llem_service.jobs.backfill`); 0: none, strict submission order.
        overlaps: Records which runs overlapped; one for this host by default.
        before_run: Called before each run, in its cancellable window (a study's cooldown);
            None: runs start at once.
    """

    def __init__(
        self,
        store: JobStore,
        results: ResultFiles,
        feed: ChangeFeed,
        make_executor: Callable[[], Executor],
        pool: GpuPool | None = None,
        before_run: BeforeRun | None = None,
        *,
        backfill_limit: int = 0,
        overlaps: OverlapTracker | None = None,
    ) -> None:
        self.store = store
        self.before_run = before_run
        self.results = results
        self.feed = feed
        self.make_executor = make_executor
        self.pool: GpuPool = pool if pool is not None else WholeHostPool()
        self.baselines = BaselineCache()
        self.backfill = BackfillBound(backfill_limit)
        self.overlaps = overlaps if overlaps is not None else OverlapTracker(socket.gethostname())
        self.executor_reason: str | None = None  # why nothing starts now, if something says
        self._wake = asyncio.Event()
        self._stopping = False
        self._cancels: dict[str, threading.Event] = {}  # running here, oldest first
        self._detach = threading.Event()  # set at shutdown: jobs that outlive us go on
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # set at start; owns ``_wake``
        #: Told each ended run (metrics count outcomes and energy); a failing one is logged.
        self.finished_listeners: list[FinishedListener] = []

    # -- control ------------------------------------------------------------------------------

    def start(self) -> None:
        """Recover what a previous server left running, then start taking jobs."""
        self._loop = asyncio.get_running_loop()
        self._recover()
        self._loop_task = asyncio.create_task(self._run_forever(), name="llem-scheduler")

    def wake(self) -> None:
        """A job was queued, or GPUs were freed. Any thread may call it (``def`` routes do)."""
        on_loop(self._loop, self._wake.set)

    @property
    def running_job_ids(self) -> tuple[str, ...]:
        """Jobs running here now, oldest first."""
        return tuple(self._cancels)

    def request_cancel(self, job_id: str) -> bool:
        """Stop the job's run if it has begun here; True if it had.

        Call it after the store kept the cancel (`JobStore.request_cancel`): a run registers
        its stop signal before it reads the store's cancel, so a job claimed a moment ago,
        whose run has not begun yet, stops all the same (False here, then)."""
        cancel = self._cancels.get(job_id)
        if cancel is None:
            return False
        cancel.set()
        return True

    async def stop(self) -> None:
        """Stop taking jobs; running experiments are stopped and their jobs marked interrupted."""
        self._detach.set()  # before any cancel: a cancel seen with it is the shutdown's
        self._stopping = True
        for cancel in self._cancels.values():
            cancel.set()
        self._wake.set()
        if self._loop_task is not None:
            await self._loop_task
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- starting jobs ------------------------------------------------------------------------

    def _recover(self) -> None:
        lost = []
        for job in self.store.running():
            session = None
            try:
                session = self.make_executor().reattach(job)
            except Exception:
                _log.exception("job %s: could not reattach", job.job_id)
            if session is None:
                lost.append(job.job_id)
                continue
            _log.info("job %s: reattached", job.job_id)
            self.pool.reserve(job.grant)
            self.pool.reassign(job.grant, job.job_id)
            self._spawn(self._follow(session, job))
        if lost:
            retried = set(self.store.retry_interrupted(lost))
            if retried:
                _log.warning("queued %d interrupted study run(s) again: %s", len(retried), retried)
            ended = [job_id for job_id in lost if job_id not in retried]
            if ended:
                self.store.fail_interrupted(ended)
                _log.warning("ended %d interrupted job(s): %s", len(ended), ended)

    async def _run_forever(self) -> None:
        while not self._stopping:
            try:
                if await asyncio.to_thread(self._executor_unavailable):
                    waiting = True
                else:
                    # The queue is read (and its configs parsed) in a worker thread: on the
                    # loop, a long queue held every request up at each submit.
                    waiting = self._dispatch(await asyncio.to_thread(self.store.queued))
            except Exception:
                _log.exception("could not start queued jobs")
                await asyncio.sleep(STORE_RETRY_S)
                continue
            if waiting or self._cancels:
                try:
                    await asyncio.wait_for(self._wake.wait(), POOL_RETRY_S)
                except asyncio.TimeoutError:
                    await asyncio.to_thread(self.overlaps.observe)
            else:
                await self._wake.wait()
            self._wake.clear()

    def _executor_unavailable(self) -> bool:
        """Whether the executor cannot take jobs now (it says why; the jobs stay queued)."""
        reason = self.make_executor().unavailable_reason()
        if reason != self.executor_reason:
            if reason is None:
                _log.info("the executor is available again")
            else:
                _log.warning("the executor is unavailable, queued jobs wait: %s", reason)
        self.executor_reason = reason
        return reason is not None

    def _dispatch(self, queued: list[QueuedJob]) -> bool:
        """Start the ``queued`` jobs the pool grants now, in order, within the backfill bound.
        True when a job was left waiting (look again later)."""
        self.backfill.keep_only({q.id for q in queued})
        waiting: list[str] = []
        for job in queued:
            if self._stopping:
                return False
            if waiting and not self.backfill.may_overtake(waiting):
                break
            try:
                grant = self.pool.try_grant(job)
            except NeverFits as exc:
                self._fail_unplaceable(job.id, str(exc))
                continue
            if grant is None:
                waiting.append(job.id)
                continue
            claimed = self.store.claim(job.id, grant)
            if claimed is None:  # cancelled since it was listed
                self.pool.release(grant)
                continue
            if waiting:
                _log.info("job %s starts ahead of waiting job(s) %s", job.id, waiting)
                self.backfill.overtook(waiting)
            self._spawn(self._run_session(claimed))
        return bool(waiting)

    def _fail_unplaceable(self, job_id: str, why: str) -> None:
        if self.store.claim(job_id) is None:
            return  # cancelled meanwhile
        self.store.finish(job_id, JobStatus.FAILED, error=Failures.NOT_ENOUGH_GPUS.problem(why))
        _log.warning("job %s: %s", job_id, why)
        self.feed.notify()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_session(self, claimed: ClaimedJob) -> None:
        """Run ``claimed``, then the jobs the session can take after it, on one grant."""
        grant = claimed.grant
        session: ExecutorSession | None = None
        job: ClaimedJob | None = claimed
        try:
            while job is not None:
                if session is None:
                    try:
                        session = self.make_executor().open(grant)
                    except Exception as exc:
                        _log.exception("job %s: could not open a session", job.job.id)
                        outcome = RunOutcome(JobStatus.FAILED, error=_could_not_start(exc))
                        await self._record_safely(job.job.id, outcome, job.job.progress)
                        return
                _log.info("job %s: starting (%s) on %s", job.job.id, job.config.model, grant)
                context = RunContext(job.job.id, job.config, keep_warm=job.reuse_group is not None)
                await self._execute(session, context, job.job.progress, grant, job)
                job = self._next_on(session, grant, job)
        except Exception:  # a fault of ours: the job it held must not stay running for ever
            _log.exception("unexpected error in the session of job %s", claimed.job.id)
            if job is not None:
                await self._fail_held(job.job.id)
        finally:
            await self._close(session, grant)

    async def _close(self, session: ExecutorSession | None, grant: GpuGrant) -> None:
        """Close ``session`` and give ``grant`` back, whatever the closing does."""
        try:
            if session is not None:
                await asyncio.to_thread(session.close)
        except Exception:
            _log.exception("could not close a session on %s; its GPUs are released", grant)
        finally:
            try:
                self.pool.release(grant)
            except Exception:
                _log.exception("could not release %s", grant)
            self.wake()

    async def _fail_held(self, job_id: str) -> None:
        """Fail a job this scheduler holds after an error of its own, unless it ended."""
        try:
            job = self.store.get(job_id)
        except Exception:
            _log.exception("job %s: could not read it back", job_id)
            return
        if job is not None and job.status is JobStatus.RUNNING:
            error = Failures.SCHEDULER_ERROR.problem("unexpected error in the scheduler")
            await self._record_safely(
                job_id, RunOutcome(JobStatus.FAILED, error=error), job.progress
            )

    def _next_on(
        self, session: ExecutorSession, grant: GpuGrant, previous: ClaimedJob
    ) -> ClaimedJob | None:
        """The first job in line, claimed on ``grant``, if it is of ``previous``'s reuse group
        and ``session`` can take it."""
        if self._stopping or previous.reuse_group is None:
            return None
        try:
            first = self.store.queued(limit=1)
            if (
                not first
                or first[0].reuse_group != previous.reuse_group
                or not grant_fits(grant, first[0].config)
                or not session.reusable_for(first[0].config)
            ):
                return None
            claimed = self.store.claim(first[0].id, grant)
            if claimed is not None:
                self.pool.reassign(grant, claimed.job.id)
            return claimed
        except Exception:
            _log.exception("could not look for the next job of a session")
            return None

    async def _follow(self, session: ExecutorSession, running: RunningJob) -> None:
        """A job reattached after a restart, followed to its end."""
        try:
            job = self.store.get(running.job_id)
            progress = job.progress if job is not None else JobProgress(phase="running")
            context = RunContext(running.job_id, running.config, executor_ref=running.executor_ref)
            await self._execute(session, context, progress, running.grant)
        except Exception:
            _log.exception("unexpected error following job %s", running.job_id)
            await self._fail_held(running.job_id)
        finally:
            await self._close(session, running.grant)

    # -- one run ------------------------------------------------------------------------------

    async def _execute(
        self,
        session: ExecutorSession,
        context: RunContext,
        progress: JobProgress,
        grant: GpuGrant,
        job: ClaimedJob | None = None,
    ) -> None:
        """Run one job in ``session`` and record how it ended (``job``: a job claimed now;
        None: one followed after a restart). Whatever fails, the job ends recorded, is put
        back in line (the server stopped before it began), or is left running in the executor
        for the next server."""
        job_id = context.job_id
        cancel = threading.Event()
        # Registered before the store's cancel is read: a cancel kept before the read is seen
        # by it, one kept after it finds this event (`request_cancel`).
        self._cancels[job_id] = cancel
        run = _Run(progress, context.executor_ref)
        try:
            outcome = await self._run(session, context, grant, job, cancel, run)
        except Exception as exc:
            _log.exception("job %s: could not run", job_id)
            outcome = RunOutcome(JobStatus.FAILED, error=_could_not_start(exc))
        finally:
            self._cancels.pop(job_id, None)
        if outcome is None:
            self.feed.notify()
            return
        if outcome.status is JobStatus.RUNNING:
            _log.warning("job %s: left running in the executor; the next server follows it", job_id)
            return
        placement = await self._placement(job_id, grant, context.config, run)
        await self._record_safely(job_id, outcome, run.progress, run.warnings, placement)

    async def _run(
        self,
        session: ExecutorSession,
        context: RunContext,
        grant: GpuGrant,
        job: ClaimedJob | None,
        cancel: threading.Event,
        run: _Run,
    ) -> RunOutcome | None:
        """The run itself; None when a claimed job never started (recorded already)."""
        job_id = context.job_id
        if self._stopping or self.store.cancel_requested(job_id):
            cancel.set()
        if job is not None and self._not_started(job_id, cancel):
            return None
        self.feed.notify()
        loop = asyncio.get_running_loop()

        def on_progress(update: JobProgress) -> None:  # runs in the session's thread
            run.progress = update
            self.store.update_progress(job_id, update)
            loop.call_soon_threadsafe(self.feed.notify)

        def on_executor_ref(ref: str) -> None:  # runs in the session's thread
            run.ref = ref
            self.store.set_executor_ref(job_id, ref)

        def on_placement(host: str, gpus: tuple[str, ...], started_at: float) -> None:
            self.overlaps.place(job_id, host, gpus, started_at)

        run.executor = self.make_executor().name
        await asyncio.to_thread(self.overlaps.begin, job_id, grant.uuids)
        if job is not None and self.before_run is not None:
            warning = await asyncio.to_thread(self.before_run, job, cancel, on_progress)
            if warning is not None:
                run.warnings.append(warning)
        if job is not None and self._not_started(job_id, cancel):  # told while it waited
            await asyncio.to_thread(self.overlaps.end, job_id)
            return None
        context = RunContext(
            job_id=job_id,
            config=context.config,
            cancel=cancel,
            on_progress=on_progress,
            baselines=self.baselines.all(),
            executor_ref=context.executor_ref,
            on_executor_ref=on_executor_ref,
            on_placement=on_placement,
            detach=self._detach,
            keep_warm=context.keep_warm,
        )
        return await asyncio.to_thread(session.run, context)

    def _not_started(self, job_id: str, cancel: threading.Event) -> bool:
        """Before a claimed job's run begins: if it was cancelled meanwhile, end it cancelled;
        if the server is stopping, put it back in line (nothing ran, so nothing was
        interrupted). True when it was either."""
        if not cancel.is_set():
            return False
        if self._stopping and not self.store.cancel_requested(job_id):
            self.store.unclaim(job_id)
            _log.info("job %s: not started before the shutdown; queued again", job_id)
        else:
            self.store.finish(job_id, JobStatus.CANCELLED)
            _log.info("job %s: cancelled before it started", job_id)
        return True

    async def _placement(
        self, job_id: str, grant: GpuGrant, config: ExperimentConfig, run: _Run
    ) -> Placement | None:
        """Where the run ran and what overlapped it; None (no placement in the result) when
        the records cannot say."""
        try:
            where = self.overlaps.placement(job_id) or (self.overlaps.host, grant.uuids)
            overlapping = await asyncio.to_thread(self.overlaps.end, job_id)
            return Placement(
                executor=run.executor or "unknown",
                host=where[0],
                gpus=list(where[1]),
                exclusive_host=config.exclusive_host,
                executor_ref=run.ref,
                overlapping_experiments=overlapping,
            )
        except Exception:
            _log.exception("job %s: could not tell where it ran and beside what", job_id)
            return None

    async def _record_safely(
        self,
        job_id: str,
        outcome: RunOutcome,
        progress: JobProgress,
        warnings: list[ResultWarning] | None = None,
        placement: Placement | None = None,
    ) -> None:
        try:
            await self._record(job_id, outcome, progress, warnings or [], placement)
        except Exception:  # the scheduler must outlive any one job
            _log.exception("job %s: unexpected error while recording its outcome", job_id)
            try:
                self.store.finish(
                    job_id,
                    JobStatus.FAILED,
                    error=Failures.SCHEDULER_ERROR.problem("unexpected error in the scheduler"),
                )
            except Exception:  # the store itself failed (disk full): log, keep serving
                _log.exception("job %s: could not record its failure", job_id)
                await asyncio.sleep(STORE_RETRY_S)
        self.feed.notify()
        self._tell_finished(job_id, outcome.result)

    def _tell_finished(self, job_id: str, result: ExperimentResult | None) -> None:
        if not self.finished_listeners:
            return
        try:
            job = self.store.get(job_id)
        except Exception:
            _log.exception("job %s: could not read it back for its listeners", job_id)
            return
        if job is None or not job.status.terminal:
            return
        for listener in self.finished_listeners:
            try:
                listener(job, result if job.status is JobStatus.SUCCEEDED else None)
            except Exception:
                _log.exception("job %s: a finished-job listener failed", job_id)

    async def _record(
        self,
        job_id: str,
        outcome: RunOutcome,
        progress: JobProgress,
        warnings: list[ResultWarning],
        placement: Placement | None = None,
    ) -> None:
        if outcome.status is JobStatus.CANCELLED and self._stopping:
            # As a crash would be (`_recover`): a study run is queued again, once.
            if self.store.retry_interrupted([job_id]):
                _log.warning("job %s: interrupted by shutdown; queued again (attempt 2)", job_id)
                return
            self.store.fail_interrupted([job_id], "the server shut down during the run")
            _log.warning("job %s: interrupted by shutdown", job_id)
            return
        if outcome.result is None:
            self.store.finish(job_id, outcome.status, error=outcome.error)
            _log.info("job %s: %s", job_id, outcome.status.value)
            return
        self.store.update_progress(job_id, progress.model_copy(update={"phase": "saving"}))
        result = outcome.result
        if warnings:
            result = result.model_copy(update={"warnings": [*result.warnings, *warnings]})
        if placement is not None:
            result = with_placement(result, placement)
        if result.energy is not None:
            self.baselines.update(result.energy.baselines)
        try:
            if outcome.timeseries is not None:
                await asyncio.to_thread(self.results.write_timeseries, job_id, outcome.timeseries)
                result = result.model_copy(
                    update={"timeseries": f"/v1/experiments/{job_id}/timeseries"}
                )
            path = await asyncio.to_thread(self.results.write, result)
        except OSError as exc:
            # No timeseries without its result: a failed job serves neither.
            self.results.timeseries_path(job_id).unlink(missing_ok=True)
            self.store.finish(
                job_id,
                JobStatus.FAILED,
                error=Failures.RESULT_NOT_SAVED.problem(f"could not write the result: {exc}"),
            )
            _log.error("job %s: result not saved: %s", job_id, exc)
            return
        self.store.finish(
            job_id, JobStatus.SUCCEEDED, result_path=str(path), metrics=run_metrics(result)
        )
        _log.info("job %s: succeeded", job_id)


class _Run:
    """What one run tells the scheduler as it goes: its last progress, the executor's handle
    of it, the executor's name, and warnings for its result."""

    def __init__(self, progress: JobProgress, ref: str | None) -> None:
        self.progress = progress
        self.ref = ref
        self.executor: str | None = None
        self.warnings: list[ResultWarning] = []


def _could_not_start(exc: Exception) -> ProblemDetail:
    return Failures.RUNNER_ERROR.problem(f"{type(exc).__name__}: {exc}")
