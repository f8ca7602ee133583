"""The SQLite job store: ordering, idempotency, pagination, claiming, grants, recovery,
migrations."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from llem_client import JobProgress, JobStatus, ProblemDetail
from llem_service.errors import IdempotencyKeyReused, InvalidCursor
from llem_service.executors.base import WHOLE_HOST, GpuGrant, RunningJob
from llem_service.jobs.base import ClaimedJob
from llem_service.jobs.schema import MIGRATIONS, SCHEMA
from llem_service.jobs.store import SqliteJobStore

from tests.conftest import make_config


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteJobStore]:
    s = SqliteJobStore(tmp_path / "jobs.sqlite3")
    yield s
    s.close()


def test_submitted_job_is_queued_with_the_config_hash(store: SqliteJobStore) -> None:
    config = make_config(name="first")

    job = store.submit(config).job

    assert job.status is JobStatus.QUEUED
    assert job.model == config.model
    assert job.name == "first"
    assert job.progress.phase == "queued"
    assert job.started_at is None


def test_store_uses_wal_mode(tmp_path: Path) -> None:
    import sqlite3

    SqliteJobStore(tmp_path / "jobs.sqlite3").close()

    mode = sqlite3.connect(tmp_path / "jobs.sqlite3").execute("PRAGMA journal_mode").fetchone()

    assert mode == ("wal",)


def test_same_idempotency_key_and_body_returns_the_same_job(store: SqliteJobStore) -> None:
    first = store.submit(make_config(), "key-1")
    again = store.submit(make_config(), "key-1")

    assert first.created
    assert not again.created
    assert again.job.id == first.job.id
    assert store.queue_length() == 1


def test_same_idempotency_key_with_another_body_is_refused(store: SqliteJobStore) -> None:
    store.submit(make_config(), "key-1")

    with pytest.raises(IdempotencyKeyReused, match="key-1"):
        store.submit(make_config(batch_size=4), "key-1")


def claim_first(store: SqliteJobStore, grant: GpuGrant = WHOLE_HOST) -> ClaimedJob | None:
    """What the scheduler does with the whole-host pool: claim the first job in line."""
    first = store.queued(limit=1)
    return store.claim(first[0].id, grant) if first else None


def test_the_queue_lists_jobs_in_submission_order(store: SqliteJobStore) -> None:
    ids = [store.submit(make_config(name=f"job-{i}")).job.id for i in range(3)]

    queued = store.queued()

    assert [q.id for q in queued] == ids
    assert [q.config.name for q in queued] == ["job-0", "job-1", "job-2"]
    assert [q.id for q in store.queued(limit=2)] == ids[:2]


def test_claims_follow_submission_order(store: SqliteJobStore) -> None:
    ids = [store.submit(make_config()).job.id for _ in range(3)]

    claimed = [claim_first(store) for _ in range(3)]

    assert [c.job.id for c in claimed if c] == ids
    assert all(c and c.job.status is JobStatus.RUNNING for c in claimed)
    assert claim_first(store) is None


def test_a_job_is_claimed_once_and_never_after_it_was_cancelled(store: SqliteJobStore) -> None:
    once = store.submit(make_config()).job.id
    cancelled = store.submit(make_config()).job.id
    store.cancel_queued(cancelled)

    assert store.claim(once) is not None
    assert store.claim(once) is None
    assert store.claim(cancelled) is None


def test_a_running_job_keeps_its_grant_and_executor_handle(store: SqliteJobStore) -> None:
    job_id = store.submit(make_config()).job.id
    grant = GpuGrant(("GPU-aaaa", "GPU-bbbb"))

    claimed = store.claim(job_id, grant)
    store.set_executor_ref(job_id, "slurm:4242")

    assert claimed is not None
    assert claimed.grant == grant
    assert store.running() == [
        RunningJob(job_id=job_id, config=claimed.config, grant=grant, executor_ref="slurm:4242")
    ]


def test_a_store_written_before_the_migrations_gains_their_columns(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(SCHEMA)  # what the first release wrote, user_version 0
    old.execute(
        "INSERT INTO jobs (id, status, model, config_json, config_hash, created_at,"
        " progress_json) VALUES ('old', 'queued', 'm', ?, '0123456789abcdef', '2026-01-01', ?)",
        (make_config().model_dump_json(), JobProgress(phase="queued").model_dump_json()),
    )
    old.commit()
    old.close()

    store = SqliteJobStore(path)
    claimed = store.claim("old", GpuGrant(("GPU-aaaa",)))

    assert claimed is not None
    assert store.running()[0].grant == GpuGrant(("GPU-aaaa",))
    version = sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0]
    assert version == len(MIGRATIONS)
    store.close()
    SqliteJobStore(path).close()  # reopening applies nothing twice


def test_list_is_newest_first_and_pages_with_a_cursor(store: SqliteJobStore) -> None:
    ids = [store.submit(make_config()).job.id for _ in range(5)]

    page1, cursor = store.list_jobs(limit=2)
    page2, cursor2 = store.list_jobs(limit=2, cursor=cursor)
    page3, cursor3 = store.list_jobs(limit=2, cursor=cursor2)

    listed = [j.id for j in page1 + page2 + page3]
    assert listed == ids[::-1]
    assert cursor3 is None


def test_list_filters_by_status(store: SqliteJobStore) -> None:
    running = store.submit(make_config()).job.id
    queued = store.submit(make_config()).job.id
    claim_first(store)

    queued_jobs, _ = store.list_jobs(status=JobStatus.QUEUED)
    running_jobs, _ = store.list_jobs(status=JobStatus.RUNNING)

    assert [j.id for j in queued_jobs] == [queued]
    assert [j.id for j in running_jobs] == [running]


@pytest.mark.parametrize("cursor", ["garbage!", "c2VxOm5vdC1hLW51bWJlcg", "b3RoZXI6MQ"])
def test_a_forged_cursor_is_refused(store: SqliteJobStore, cursor: str) -> None:
    with pytest.raises(InvalidCursor):
        store.list_jobs(cursor=cursor)


def test_progress_updates_only_running_jobs(store: SqliteJobStore) -> None:
    job_id = store.submit(make_config()).job.id
    store.update_progress(job_id, JobProgress(phase="measuring", completed=1, total=4))
    assert store.get(job_id).progress.phase == "queued"  # type: ignore[union-attr]

    claim_first(store)
    store.update_progress(job_id, JobProgress(phase="measuring", completed=1, total=4))

    assert store.get(job_id).progress.completed == 1  # type: ignore[union-attr]


def test_finish_records_status_error_and_result_path(store: SqliteJobStore) -> None:
    ok = store.submit(make_config()).job.id
    bad = store.submit(make_config()).job.id
    claim_first(store)
    claim_first(store)
    problem = ProblemDetail(title="Experiment failed", status=500, detail="boom")

    store.finish(ok, JobStatus.SUCCEEDED, result_path="/results/ok.json")
    failed = store.finish(bad, JobStatus.FAILED, error=problem)

    assert store.result_path(ok) == "/results/ok.json"
    assert failed.status is JobStatus.FAILED
    assert failed.error is not None
    assert failed.error.detail == "boom"
    assert failed.finished_at is not None


def test_cancel_queued_only_cancels_queued_jobs(store: SqliteJobStore) -> None:
    running = store.submit(make_config()).job.id
    queued = store.submit(make_config()).job.id
    claim_first(store)

    assert store.cancel_queued(running) is None
    cancelled = store.cancel_queued(queued)

    assert cancelled is not None
    assert cancelled.status is JobStatus.CANCELLED
    assert claim_first(store) is None


def test_reopening_fails_running_jobs_and_keeps_queued_ones(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    first = SqliteJobStore(path)
    running = first.submit(make_config()).job.id
    queued = first.submit(make_config()).job.id
    claim_first(first)
    first.close()

    second = SqliteJobStore(path)
    interrupted = [job.job_id for job in second.running()]
    second.fail_interrupted(interrupted)

    assert interrupted == [running]
    job = second.get(running)
    assert job is not None
    assert job.status is JobStatus.FAILED
    assert job.error is not None
    assert "the server restarted" in job.error.detail
    claimed = claim_first(second)
    assert claimed is not None
    assert claimed.job.id == queued
    second.close()


def test_status_counts_and_the_submitted_config(store: SqliteJobStore) -> None:
    config = make_config(name="kept", batch_size=3)
    first = store.submit(config).job
    store.submit(make_config())
    store.cancel_queued(first.id)

    assert store.status_counts() == {JobStatus.QUEUED: 1, JobStatus.CANCELLED: 1}
    assert store.config(first.id) == config  # in any state, the effective config
    assert store.config("nope") is None
