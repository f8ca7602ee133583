"""`LocalExecutor` on its own: each way an experiment process can end, and the reason given;
the grant it passes to the child; and the scheduler around it when recording an outcome
fails."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llem_client import ExperimentConfig, Job, JobProgress, JobStatus
from llem_service.executors.base import GpuGrant, RunContext, RunningJob, RunOutcome
from llem_service.executors.local import LocalExecutor
from llem_service.experiment.results import ResultFiles
from llem_service.jobs.events import ChangeFeed
from llem_service.jobs.scheduler import Scheduler
from llem_service.jobs.store import SqliteJobStore

from tests.conftest import make_config, make_result
from tests.fakes import ScriptedBackend, fake_meter


def _run(executor: LocalExecutor, **tags: str) -> tuple[JobStatus, str, float]:
    seen: list[JobProgress] = []
    started = time.monotonic()
    config = make_config(tags={f"fake.{k}": v for k, v in tags.items()})
    outcome = executor.open(GpuGrant()).run(RunContext("job", config, on_progress=seen.append))
    detail = outcome.error.detail if outcome.error is not None else ""
    return outcome.status, detail or "", time.monotonic() - started


def test_a_hung_experiment_is_stopped_at_the_timeout() -> None:
    executor = LocalExecutor(ScriptedBackend(), fake_meter(), cancel_grace_s=1, timeout_s=1.5)

    status, detail, took_s = _run(executor, fault="hang")

    assert status is JobStatus.FAILED
    assert "did not finish within 1.5 s" in detail
    assert "LLEM_EXPERIMENT_TIMEOUT_S" in detail
    assert took_s < 10  # not the hour the fake would hang


def test_an_experiment_within_the_timeout_is_not_touched() -> None:
    executor = LocalExecutor(ScriptedBackend(), fake_meter(), timeout_s=30)

    status, _, _ = _run(executor, sleep_s="0.2")

    assert status is JobStatus.SUCCEEDED


def test_running_out_of_memory_fails_with_that_reason() -> None:
    executor = LocalExecutor(ScriptedBackend(oom_limit_bytes=64 * 2**20), fake_meter())

    status, detail, _ = _run(executor, fault="oom")

    assert status is JobStatus.FAILED
    assert detail == "the experiment ran out of memory (MemoryError)"


def test_stale_temp_files_of_a_killed_writer_are_removed(tmp_path: Path) -> None:
    results = ResultFiles(tmp_path)
    kept = results.write(make_result())
    (tmp_path / ".tmp-abc.json").write_text('{"half": ')

    ResultFiles(tmp_path)

    assert sorted(p.name for p in tmp_path.iterdir()) == [kept.name]


class DiskFullStore(SqliteJobStore):
    """A real store whose first ``failures`` calls to `finish` fail as SQLite does on a full
    disk."""

    def __init__(self, path: Path, failures: int) -> None:
        super().__init__(path)
        self.failures = failures

    def finish(self, job_id: str, status: JobStatus, **kwargs: Any) -> Job:
        if self.failures > 0:
            self.failures -= 1
            raise sqlite3.OperationalError("database or disk is full")
        return super().finish(job_id, status, **kwargs)


@dataclass
class InstantExecutor:
    """An `Executor` whose sessions fail every job at once, in-process."""

    name: str = "instant"

    def unavailable_reason(self) -> str | None:
        return None

    def open(self, grant: GpuGrant) -> InstantExecutor:
        return self

    def reattach(self, job: RunningJob) -> None:
        return None

    def run(self, context: RunContext) -> RunOutcome:
        return RunOutcome(JobStatus.FAILED)

    def reusable_for(self, config: ExperimentConfig) -> bool:
        return False

    def close(self) -> None:
        pass


def test_the_scheduler_outlives_a_store_that_cannot_record(tmp_path: Path) -> None:
    store = DiskFullStore(tmp_path / "jobs.sqlite3", failures=2)
    first = store.submit(make_config()).job.id
    second = store.submit(make_config()).job.id

    async def scenario() -> None:
        scheduler = Scheduler(
            store, ResultFiles(tmp_path / "results"), ChangeFeed(), InstantExecutor
        )
        scheduler.start()
        deadline = time.monotonic() + 20
        while (job := store.get(second)) is None or not job.status.terminal:
            assert time.monotonic() < deadline, "the scheduler stopped taking jobs"
            await asyncio.sleep(0.05)
        await scheduler.stop()

    asyncio.run(scenario())

    first_job, second_job = store.get(first), store.get(second)
    assert first_job is not None
    assert first_job.status is JobStatus.RUNNING  # its end could not be written
    assert second_job is not None
    assert second_job.status is JobStatus.FAILED


@dataclass
class EnvironmentReportingBackend(ScriptedBackend):
    """Reports, as a 'version', the CUDA_VISIBLE_DEVICES its experiment process saw."""

    def versions(self) -> dict[str, str]:
        return {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")}


def test_a_grant_is_what_the_experiment_process_sees() -> None:
    executor = LocalExecutor(EnvironmentReportingBackend(), fake_meter())
    grant = GpuGrant(("GPU-aaaa", "GPU-bbbb"))

    granted = executor.open(grant).run(RunContext("job", make_config()))
    whole = executor.open(GpuGrant()).run(RunContext("job", make_config()))

    assert granted.result is not None
    assert granted.result.environment.backend_versions == {
        "CUDA_VISIBLE_DEVICES": "GPU-aaaa,GPU-bbbb"
    }
    assert whole.result is not None
    assert whole.result.environment.backend_versions == {
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")
    }


@dataclass
class PidReportingBackend(ScriptedBackend):
    """Reports, as a 'version', the id of the experiment process that ran it."""

    def versions(self) -> dict[str, str]:
        return {"pid": str(os.getpid())}


def _warm_run(session: Any, job_id: str, **overrides: Any) -> RunOutcome:
    return session.run(  # type: ignore[no-any-return]
        RunContext(job_id, make_config(**overrides), keep_warm=True)
    )


def test_consecutive_runs_with_one_model_share_a_process_that_keeps_it_loaded() -> None:
    session = LocalExecutor(PidReportingBackend(), fake_meter()).open(GpuGrant())
    try:
        first = _warm_run(session, "a", batch_size=1)
        assert session.reusable_for(make_config(batch_size=4, pytorch={"static_kv_cache": True}))
        assert not session.reusable_for(make_config(model="other-model"))
        assert not session.reusable_for(make_config(precision="fp16"))
        second = _warm_run(session, "b", batch_size=4, pytorch={"static_kv_cache": True})
        third = _warm_run(session, "c", model="other-model")
    finally:
        session.close()

    results = [o.result for o in (first, second, third)]
    assert all(r is not None for r in results)
    a, b, c = (r for r in results if r is not None)
    assert a.environment.backend_versions == b.environment.backend_versions  # one process
    assert c.environment.backend_versions != b.environment.backend_versions  # a fresh one
    assert (a.model_reused_from, b.model_reused_from, c.model_reused_from) == (None, "a", None)
    assert b.model_load_time_sec == 0.0
    assert a.model_load_time_sec == c.model_load_time_sec == 0.25
    assert b.n_requests == 4


def test_without_keep_warm_every_run_has_its_own_process() -> None:
    session = LocalExecutor(PidReportingBackend(), fake_meter()).open(GpuGrant())
    try:
        first = session.run(RunContext("a", make_config()))
        assert not session.reusable_for(make_config())
        second = session.run(RunContext("b", make_config()))
    finally:
        session.close()

    assert first.result is not None
    assert second.result is not None
    assert first.result.environment.backend_versions != second.result.environment.backend_versions


def test_a_failed_run_ends_the_warm_process() -> None:
    session = LocalExecutor(PidReportingBackend(), fake_meter()).open(GpuGrant())
    try:
        ok = _warm_run(session, "a")
        failed = _warm_run(session, "b", tags={"fake.fault": "exit"})
        assert not session.reusable_for(make_config())
        after = _warm_run(session, "c")
    finally:
        session.close()

    assert ok.status is JobStatus.SUCCEEDED
    assert failed.status is JobStatus.FAILED
    assert after.result is not None
    assert after.result.model_reused_from is None
