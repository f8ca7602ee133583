"""The worker: takes queued jobs in order and runs them one at a time.

One worker per service means one experiment at a time on the host's GPUs, so measurements
never overlap. The experiment itself runs in a child process (`ProcessRunner`); this module
owns the job's life cycle around it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

from llem_client import JobProgress, JobStatus

from llem_service.energy.baseline import BaselineCache
from llem_service.errors import Failures
from llem_service.executors.local import ExperimentRunner, RunOutcome
from llem_service.experiment.results import ResultFiles
from llem_service.jobs.events import ChangeFeed
from llem_service.jobs.store import ClaimedJob, JobStore

_log = logging.getLogger("llem.worker")


class Worker:
    """Runs queued jobs until stopped.

    Args:
        store: The job store.
        results: Where results are written.
        feed: Notified at each job change (for SSE).
        make_runner: Builds the runner for the next job; called per job, so the backend and
            meter it carries are resolved when the job starts.
    """

    def __init__(
        self,
        store: JobStore,
        results: ResultFiles,
        feed: ChangeFeed,
        make_runner: Callable[[], ExperimentRunner],
    ) -> None:
        self.store = store
        self.results = results
        self.feed = feed
        self.make_runner = make_runner
        self._wake = asyncio.Event()
        self._stopping = False
        self._current: tuple[str, threading.Event] | None = None
        self._task: asyncio.Task[None] | None = None
        self.baselines = BaselineCache()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run_forever(), name="llem-worker")

    def wake(self) -> None:
        """A job was queued."""
        self._wake.set()

    @property
    def current_job_id(self) -> str | None:
        return self._current[0] if self._current else None

    def request_cancel(self, job_id: str) -> bool:
        """Stop the running job if it is ``job_id``; True if it was running here."""
        if self._current is not None and self._current[0] == job_id:
            self._current[1].set()
            return True
        return False

    async def stop(self) -> None:
        """Stop taking jobs; a running experiment is stopped and its job marked interrupted."""
        self._stopping = True
        if self._current is not None:
            self._current[1].set()
        self._wake.set()
        if self._task is not None:
            await self._task

    async def _run_forever(self) -> None:
        while not self._stopping:
            claimed = self.store.claim_next()
            if claimed is None:
                await self._wake.wait()
                self._wake.clear()
                continue
            try:
                await self._execute(claimed)
            except Exception:  # the worker must outlive any one job
                _log.exception("job %s: unexpected error in the worker", claimed.job.id)
                try:
                    self.store.finish(
                        claimed.job.id,
                        JobStatus.FAILED,
                        error=Failures.WORKER_ERROR.problem("unexpected error in the worker"),
                    )
                except Exception:  # the store itself failed (disk full): log, keep serving
                    _log.exception("job %s: could not record its failure", claimed.job.id)
                    await asyncio.sleep(1.0)  # a store that keeps failing must not spin
                self.feed.notify()

    async def _execute(self, claimed: ClaimedJob) -> None:
        job_id = claimed.job.id
        cancel = threading.Event()
        self._current = (job_id, cancel)
        self.feed.notify()
        loop = asyncio.get_running_loop()
        last = [claimed.job.progress]

        def on_progress(progress: JobProgress) -> None:  # runs in the runner's thread
            last[0] = progress
            self.store.update_progress(job_id, progress)
            loop.call_soon_threadsafe(self.feed.notify)

        _log.info("job %s: starting (%s)", job_id, claimed.config.model)
        try:
            runner = self.make_runner()
            outcome = await asyncio.to_thread(
                runner.run, job_id, claimed.config, on_progress, cancel, self.baselines.all()
            )
        except Exception as exc:
            _log.exception("job %s: could not run", job_id)
            outcome = RunOutcome(
                JobStatus.FAILED,
                error=Failures.RUNNER_ERROR.problem(f"{type(exc).__name__}: {exc}"),
            )
        finally:
            self._current = None
        await self._record(job_id, outcome, last[0])
        self.feed.notify()

    async def _record(self, job_id: str, outcome: RunOutcome, progress: JobProgress) -> None:
        if outcome.status is JobStatus.CANCELLED and self._stopping:
            self.store.finish(
                job_id,
                JobStatus.FAILED,
                error=Failures.INTERRUPTED.problem("the server shut down during the run"),
            )
            _log.warning("job %s: interrupted by shutdown", job_id)
            return
        if outcome.result is None:
            self.store.finish(job_id, outcome.status, error=outcome.error)
            _log.info("job %s: %s", job_id, outcome.status.value)
            return
        self.store.update_progress(job_id, progress.model_copy(update={"phase": "saving"}))
        result = outcome.result
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
        self.store.finish(job_id, JobStatus.SUCCEEDED, result_path=str(path))
        _log.info("job %s: succeeded", job_id)
