"""Changes told from worker threads reach the event loop's waiters safely: the routes that
submit, cancel and delete run in FastAPI's thread pool, and an `asyncio.Event` set from there
breaks the loop (``RuntimeError: Non-thread-safe operation`` under ``PYTHONASYNCIODEBUG``, a
waiter never woken without it)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from llem_client import ExperimentConfig, JobStatus
from llem_service.executors.base import GpuGrant, RunContext, RunningJob, RunOutcome
from llem_service.experiment.results import ResultFiles
from llem_service.jobs.events import ChangeFeed
from llem_service.jobs.scheduler import Scheduler
from llem_service.jobs.store import SqliteJobStore

from tests.conftest import build_app, make_config


def on_debug_loop(scenario: Callable[[], Coroutine[Any, Any, None]], timeout_s: float = 10) -> None:
    """Run ``scenario`` on an event loop in debug mode, in a thread of its own so that a loop
    broken by a call from the wrong thread fails the test instead of hanging it."""
    errors: list[BaseException] = []

    async def debug() -> None:
        asyncio.get_running_loop().set_debug(True)
        await scenario()

    def target() -> None:
        try:
            asyncio.run(debug())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout_s)
    assert not thread.is_alive(), "the loop never woke"
    if errors:
        raise errors[0]


async def from_another_thread(call: Callable[[], None]) -> None:
    """``call()`` in a worker thread, as a plain ``def`` route runs."""
    await asyncio.to_thread(call)


def test_a_notify_from_a_worker_thread_wakes_the_streams_waiting_on_the_loop() -> None:
    async def scenario() -> None:
        feed = ChangeFeed()
        waiter = feed.waiter()
        waiting = asyncio.ensure_future(waiter.wait())
        await asyncio.sleep(0)  # a stream waits for the next change
        await from_another_thread(feed.notify)
        await asyncio.wait_for(waiting, 5)
        assert feed.waiter() is not waiter  # a fresh waiter for the change after

    on_debug_loop(scenario)


class Done:
    """An executor whose runs succeed at once."""

    name = "done"

    def unavailable_reason(self) -> str | None:
        return None

    def open(self, grant: GpuGrant) -> Done:
        return self

    def reattach(self, job: RunningJob) -> None:
        return None

    def run(self, context: RunContext) -> RunOutcome:
        return RunOutcome(JobStatus.SUCCEEDED)

    def reusable_for(self, config: ExperimentConfig) -> bool:
        return False

    def close(self) -> None:
        pass


def test_a_wake_from_a_worker_thread_starts_the_job_it_queued(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")

    async def scenario() -> None:
        scheduler = Scheduler(store, ResultFiles(tmp_path / "results"), ChangeFeed(), Done)
        scheduler.start()
        await asyncio.sleep(0.2)  # nothing queued: it waits to be woken
        job_id = store.submit(make_config()).job.id
        await from_another_thread(scheduler.wake)
        deadline = time.monotonic() + 5
        while (job := store.get(job_id)) is None or not job.status.terminal:
            assert time.monotonic() < deadline, "the scheduler was never woken"
            await asyncio.sleep(0.01)
        await scheduler.stop()

    on_debug_loop(scenario)


def test_the_routes_of_the_thread_pool_are_safe_on_a_debug_loop(tmp_path: Path) -> None:
    app = build_app(tmp_path / "data")
    body = make_config().model_dump(mode="json")
    with TestClient(app, backend_options={"debug": True}) as http:
        submitted = http.post("/v1/experiments", json=body)
        cancelled = http.post(f"/v1/experiments/{submitted.json()['id']}/cancel")
        study = http.post(
            "/v1/studies", json={"name": "s", "base": body, "sweep": {"batch_size": [1, 2]}}
        )

    assert submitted.status_code == 202, submitted.text
    assert cancelled.status_code in (200, 202), cancelled.text
    assert study.status_code == 202, study.text
