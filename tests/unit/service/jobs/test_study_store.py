"""The study half of the SQLite store: runs inserted in planned order with their links, counts,
cancelling, idempotent submission, retry after a restart, and the migration of an older store."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from llem_client import CooldownConfig, JobProgress, JobStatus
from llem_service.errors import IdempotencyKeyReused
from llem_service.jobs.schema import MIGRATIONS, SCHEMA
from llem_service.jobs.store import SqliteJobStore
from llem_service.jobs.study_store import NewStudy, PlannedRun

from tests.conftest import make_config


def _study(n_points: int = 2, cycles: int = 2, **overrides: object) -> NewStudy:
    runs = [
        PlannedRun(make_config(batch_size=1 + p % 2, name=f"p{p}"), p, c, c * n_points + p)
        for c in range(cycles)
        for p in range(n_points)
    ]
    data: dict[str, object] = {
        "name": "study",
        "design_hash": "0123456789abcdef",
        "design_json": "{}",
        "runs": runs,
        "reuse": True,
        "cooldown": CooldownConfig(seconds=1.0),
        "fingerprint": "f" * 64,
    }
    data.update(overrides)
    return NewStudy(**data)  # type: ignore[arg-type]


def test_runs_queue_in_planned_order_with_their_links(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    record, created = store.submit_study(_study())

    queued = store.queued()
    runs = store.study_runs(record.id)

    assert created
    assert [(r.run.point, r.run.cycle, r.run.position) for r in runs] == [
        (0, 0, 0),
        (1, 0, 1),
        (0, 1, 2),
        (1, 1, 3),
    ]
    assert [q.id for q in queued] == [r.run.job_id for r in runs]
    assert {q.reuse_group for q in queued} == {record.id}
    first = store.claim(queued[0].id)
    second = store.claim(queued[1].id)
    assert first is not None
    assert first.study is not None
    assert first.study.cooldown == CooldownConfig(seconds=1.0)
    assert second is not None
    assert second.study is not None
    assert (second.study.point, second.study.cycle, second.study.attempt) == (1, 0, 1)
    assert second.study.cooldown == CooldownConfig(seconds=1.0)


def test_no_reuse_group_when_the_study_asks_for_a_process_per_run(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    store.submit_study(_study(reuse=False))

    assert {q.reuse_group for q in store.queued()} == {None}


def test_cancel_keeps_finished_runs_and_names_the_running_one(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    record, _ = store.submit_study(_study())
    first, second, *_ = [q.id for q in store.queued()]
    store.claim(first)
    store.finish(first, JobStatus.SUCCEEDED, metrics={"tokens_per_s": 10.0})
    store.claim(second)

    running = store.cancel_study(record.id)
    tally = store.study_tallies([record.id])[record.id]
    runs = store.study_runs(record.id)

    assert running == [second]
    assert tally.counts == {
        JobStatus.SUCCEEDED: 1,
        JobStatus.RUNNING: 1,
        JobStatus.CANCELLED: 2,
    }
    assert tally.finished_at is None  # one still runs
    assert runs[0].metrics == {"tokens_per_s": 10.0}
    assert runs[0].run.tokens_per_s == 10.0
    assert store.get_study(record.id).cancelled_at is not None  # type: ignore[union-attr]


def test_a_replayed_submission_gives_the_same_study(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    first, created = store.submit_study(_study(), idempotency_key="k")
    again, created_again = store.submit_study(_study(), idempotency_key="k")

    assert created
    assert not created_again
    assert again.id == first.id
    assert store.queue_length() == 4
    with pytest.raises(IdempotencyKeyReused):
        store.submit_study(_study(fingerprint="0" * 64), idempotency_key="k")


def test_an_interrupted_run_is_retried_once_in_its_place(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    record, _ = store.submit_study(_study())
    lone = store.submit(make_config()).job.id
    first = store.queued()[0].id
    store.claim(first)
    store.claim(lone)

    retried = store.retry_interrupted([first, lone])

    assert retried == [first]  # a plain experiment is not a study run
    assert store.queued()[0].id == first  # in its place, ahead of the rest
    run = store.study_runs(record.id)[0].run
    assert (run.status, run.attempt) == (JobStatus.QUEUED, 2)
    store.claim(first)
    assert store.retry_interrupted([first]) == []  # once only


def test_studies_list_newest_first_in_pages(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    ids = [store.submit_study(_study(n_points=1, cycles=1))[0].id for _ in range(3)]

    page, cursor = store.list_studies(limit=2)
    rest, end = store.list_studies(limit=2, cursor=cursor)

    assert [s.id for s in page + rest] == ids[::-1]
    assert end is None


def test_temperatures_are_kept_per_study(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    record, _ = store.submit_study(_study())

    assert store.study_temperatures(record.id) is None
    store.set_study_temperatures(record.id, {"GPU-a": 41.0})
    assert store.study_temperatures(record.id) == {"GPU-a": 41.0}


def test_a_store_of_the_previous_schema_gains_the_study_columns(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    db = sqlite3.connect(path)
    # What the release before studies wrote: the table and the first migration only.
    db.executescript(f"{SCHEMA} {MIGRATIONS[0]} PRAGMA user_version = 1;")
    db.execute(
        "INSERT INTO jobs (id, status, model, config_json, config_hash, created_at,"
        " progress_json) VALUES ('old', 'queued', 'm', ?, '0123456789abcdef', '2026-01-01', ?)",
        (make_config().model_dump_json(), JobProgress(phase="queued").model_dump_json()),
    )
    db.commit()
    db.close()
    job_id = "old"

    store = SqliteJobStore(path)

    assert store.queued()[0].id == job_id
    assert store.submit_study(_study())[1]


def test_changed_runs_gives_each_run_again_only_when_it_changed(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    record, _ = store.submit_study(_study())
    first, *rest = [r.run.job_id for r in store.study_runs(record.id)]

    assert store.changed_runs(record.id) == ([], 0)  # queued runs have not changed yet
    assert store.claim(first) is not None
    claimed, mark = store.changed_runs(record.id)
    assert [r.run.job_id for r in claimed] == [first]
    assert store.changed_runs(record.id, mark) == ([], mark)

    store.update_progress(first, JobProgress(phase="measuring", completed=1, total=4))
    progressed, mark = store.changed_runs(record.id, mark)
    assert [(r.run.job_id, r.run.progress.completed) for r in progressed] == [(first, 1)]

    assert store.cancel_study(record.id) == [first]
    cancelled, mark = store.changed_runs(record.id, mark)
    assert [(r.run.job_id, r.run.status) for r in cancelled] == [
        (job_id, JobStatus.CANCELLED) for job_id in rest
    ]
    store.finish(first, JobStatus.CANCELLED)
    ended, _ = store.changed_runs(record.id, mark)
    assert [(r.run.job_id, r.run.status) for r in ended] == [(first, JobStatus.CANCELLED)]
    everything, _ = store.changed_runs(record.id)
    assert len(everything) == 4  # a new stream starts with every run that left the queue
