"""The job store: `SqliteJobStore`, the `JobStore` seam (`llem_service.jobs.base`) on one
SQLite file in WAL mode (`llem_service.jobs.schema`).

Every state change is one SQL statement or one immediate transaction, so a crash never leaves
a job half-updated, and a restarted server finds queued jobs still queued.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

from llem_client import (
    CooldownConfig,
    ExperimentConfig,
    Job,
    JobMetrics,
    JobProgress,
    JobStatus,
    ProblemDetail,
    measurement_config_hash,
)

from llem_service.errors import (
    AmbiguousJobId,
    JobStillActive,
)
from llem_service.executors.base import WHOLE_HOST, GpuGrant, RunningJob
from llem_service.jobs.base import ClaimedJob, QueuedJob, StudyLink, Submission
from llem_service.jobs.cursors import job_cursor, job_seq
from llem_service.jobs.interrupts import SqliteInterrupts
from llem_service.jobs.schema import JOB_COLUMNS, keyed_id, open_database
from llem_service.jobs.study_store import SqliteStudyQueries

_JOBS = "jobs"
#: Shortest job id prefix looked up as a prefix: shorter ones match too much to be meant.
MIN_ID_PREFIX = 4
#: Candidates an ambiguous prefix lists.
MAX_CANDIDATES = 10


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _with_phase(progress: JobProgress, phase: str) -> str:
    return progress.model_copy(update={"phase": phase}).model_dump_json()


def _request_fingerprint(config: ExperimentConfig) -> str:
    """Identity of a request body for idempotency: the whole effective config, labels included."""
    text = json.dumps(config.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


TERMINAL = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


class SqliteJobStore(SqliteStudyQueries, SqliteInterrupts):
    """`JobStore` on one SQLite file in WAL mode; safe to share between threads."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = open_database(path)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @staticmethod
    def _job(row: sqlite3.Row) -> Job:
        # A succeeded job's figures, as the scheduler stored them (`figures.run_metrics`).
        figures = json.loads(row["metrics_json"]) if row["metrics_json"] else None
        metrics = None
        if figures is not None and figures.get("tokens_per_s") is not None:
            metrics = JobMetrics(
                tokens_per_second=figures["tokens_per_s"],
                energy_per_output_token_j=figures.get("energy_per_output_token_j"),
            )
        return Job(
            id=row["id"],
            status=JobStatus(row["status"]),
            model=row["model"],
            name=row["name"],
            tags=json.loads(row["tags_json"]) if row["tags_json"] else {},
            metrics=metrics,
            config_hash=row["config_hash"],
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            progress=JobProgress.model_validate_json(row["progress_json"]),
            error=(
                ProblemDetail.model_validate_json(row["error_json"]) if row["error_json"] else None
            ),
        )

    def _fetch(self, job_id: str) -> Job | None:
        row = self._db.execute(
            f"SELECT {JOB_COLUMNS} FROM {_JOBS} WHERE jobs.id = ?", (job_id,)
        ).fetchone()
        return self._job(row) if row else None

    def _by_key(self, idempotency_key: str, fingerprint: str) -> Job | None:
        """The job ``idempotency_key`` made, if any (the store lock held)."""
        job_id = keyed_id(self._db, "jobs", idempotency_key, fingerprint)
        return self._fetch(job_id) if job_id else None

    def replay(self, config: ExperimentConfig, idempotency_key: str) -> Job | None:
        """The job a request with this key and config made, if one did: a retried submission
        gets it before any check of this server's (which may answer otherwise by now).

        Raises:
            IdempotencyKeyReused: The key made a job from another config.
        """
        with self._lock:
            return self._by_key(idempotency_key, _request_fingerprint(config))

    def submit(self, config: ExperimentConfig, idempotency_key: str | None = None) -> Submission:
        fingerprint = _request_fingerprint(config)
        job_id = uuid.uuid4().hex
        with self._lock:
            if idempotency_key is not None:
                existing = self._by_key(idempotency_key, fingerprint)
                if existing is not None:
                    return Submission(existing, created=False)
            self._db.execute(
                "INSERT INTO jobs (id, status, model, name, config_json, config_hash, created_at,"
                " progress_json, idempotency_key, request_fingerprint)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    JobStatus.QUEUED.value,
                    config.model,
                    config.name,
                    config.model_dump_json(),
                    measurement_config_hash(config),
                    _now(),
                    JobProgress(phase="queued").model_dump_json(),
                    idempotency_key,
                    fingerprint,
                ),
            )
            job = self._fetch(job_id)
        assert job is not None
        return Submission(job, created=True)

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._fetch(job_id)

    def list_jobs(
        self,
        status: JobStatus | None = None,
        limit: int = 50,
        cursor: str | None = None,
        *,
        tags: Mapping[str, str] | None = None,
        name: str | None = None,
    ) -> tuple[list[Job], str | None]:
        """A page of jobs, newest first.

        Args:
            tags: Only jobs whose config has every one of these tags with that value.
            name: Only jobs whose name contains this text (case-insensitive).
        """
        where: list[str] = []
        args: list[str | int] = []
        if status is not None:
            where.append("jobs.status = ?")
            args.append(status.value)
        if cursor:  # an empty cursor is the first page
            where.append("jobs.seq < ?")
            args.append(job_seq(cursor))
        for key, value in (tags or {}).items():
            where.append(
                "EXISTS (SELECT 1 FROM json_each(jobs.config_json, '$.tags')"
                " WHERE json_each.key = ? AND json_each.value = ?)"
            )
            args += [key, value]
        if name:
            where.append("instr(lower(jobs.name), lower(?)) > 0")
            args.append(name)
        sql = f"SELECT {JOB_COLUMNS} FROM {_JOBS}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY jobs.seq DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(sql, (*args, limit + 1)).fetchall()
        jobs = [self._job(row) for row in rows[:limit]]
        next_cursor = job_cursor(rows[limit - 1]["seq"]) if len(rows) > limit else None
        return jobs, next_cursor

    def find(self, id_or_prefix: str) -> Job | None:
        """The job with this id, or the one job whose id starts with it (at least
        `MIN_ID_PREFIX` characters); None if there is none.

        Raises:
            AmbiguousJobId: The prefix starts several jobs' ids; it lists some.
        """
        with self._lock:
            job = self._fetch(id_or_prefix)
            prefix = id_or_prefix.lower()
            if job is not None or len(prefix) < MIN_ID_PREFIX or not _is_hex(prefix):
                return job
            # A range, not LIKE, so the UNIQUE index on id serves it.
            rows = self._db.execute(
                "SELECT id FROM jobs WHERE id >= ? AND id < ? ORDER BY id LIMIT ?",
                (prefix, prefix + "g", MAX_CANDIDATES + 1),
            ).fetchall()
            if len(rows) == 1:
                return self._fetch(rows[0]["id"])
        if not rows:
            return None
        ids = [row["id"] for row in rows]
        more = " and more" if len(ids) > MAX_CANDIDATES else ""
        shown = ids[:MAX_CANDIDATES]
        raise AmbiguousJobId(
            f"job id prefix {id_or_prefix!r} matches {', '.join(shown)}{more}; give more of the id",
            extra={"candidates": shown},
        )

    def delete_finished(self, job_id: str) -> Job | None:
        """Remove a finished job; return it, or None if unknown.

        Raises:
            JobStillActive: The job is queued or running (cancel it first), or it is a run of
                a study, whose table it belongs to.
        """
        with self._lock:
            job = self._fetch(job_id)
            if job is None:
                return None
            if not job.status.terminal:
                raise JobStillActive(
                    f"job {job_id} is {job.status.value}; cancel it before deleting it"
                )
            row = self._db.execute("SELECT study_id FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row["study_id"] is not None:
                raise JobStillActive(
                    f"job {job_id} is a run of study {row['study_id']}; it stays with its study"
                )
            self._db.execute(
                "DELETE FROM jobs WHERE id = ? AND status IN (?, ?, ?)",
                (job_id, *(s.value for s in TERMINAL)),
            )
        return job

    def queued(self, limit: int = 64) -> list[QueuedJob]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, seq, config_json, reuse_group FROM jobs WHERE status = ?"
                " ORDER BY seq LIMIT ?",
                (JobStatus.QUEUED.value, limit),
            ).fetchall()
        return [
            QueuedJob(
                row["id"],
                row["seq"],
                ExperimentConfig.model_validate_json(row["config_json"]),
                row["reuse_group"],
            )
            for row in rows
        ]

    def claim(self, job_id: str, grant: GpuGrant = WHOLE_HOST) -> ClaimedJob | None:
        """Atomic: a job is claimed once, and never after it was cancelled."""
        with self._lock:
            cursor = self._db.execute(
                "UPDATE jobs SET status = ?, started_at = ?, progress_json = ?, granted_gpus = ?"
                " WHERE id = ? AND status = ?",
                (
                    JobStatus.RUNNING.value,
                    _now(),
                    JobProgress(phase="starting").model_dump_json(),
                    json.dumps(list(grant.uuids)),
                    job_id,
                    JobStatus.QUEUED.value,
                ),
            )
            if not cursor.rowcount:
                return None
            job = self._fetch(job_id)
            row = self._db.execute(
                "SELECT config_json, reuse_group, study_id, study_point, study_cycle,"
                " study_position, attempt, cooldown_json FROM jobs WHERE id = ?",
                (job_id,),
            ).fetchone()
        assert job is not None
        study = None
        if row["study_id"] is not None:
            cooldown = row["cooldown_json"]
            study = StudyLink(
                study_id=row["study_id"],
                point=row["study_point"],
                cycle=row["study_cycle"],
                position=row["study_position"],
                attempt=row["attempt"],
                cooldown=CooldownConfig.model_validate_json(cooldown) if cooldown else None,
            )
        return ClaimedJob(
            job,
            ExperimentConfig.model_validate_json(row["config_json"]),
            grant,
            reuse_group=row["reuse_group"],
            study=study,
        )

    def running(self) -> list[RunningJob]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, config_json, granted_gpus, executor_ref FROM jobs WHERE status = ?"
                " ORDER BY seq",
                (JobStatus.RUNNING.value,),
            ).fetchall()
        return [
            RunningJob(
                job_id=row["id"],
                config=ExperimentConfig.model_validate_json(row["config_json"]),
                grant=GpuGrant(tuple(json.loads(row["granted_gpus"] or "[]"))),
                executor_ref=row["executor_ref"],
            )
            for row in rows
        ]

    def set_executor_ref(self, job_id: str, ref: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET executor_ref = ? WHERE id = ? AND status = ?",
                (ref, job_id, JobStatus.RUNNING.value),
            )

    def update_progress(self, job_id: str, progress: JobProgress) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET progress_json = ? WHERE id = ? AND status = ?",
                (progress.model_dump_json(), job_id, JobStatus.RUNNING.value),
            )

    def finish(
        self,
        job_id: str,
        status: JobStatus,
        *,
        error: ProblemDetail | None = None,
        result_path: str | None = None,
        metrics: Mapping[str, float | None] | None = None,
    ) -> Job:
        if not status.terminal:
            raise ValueError(f"finish() needs a terminal status, not {status.value}")
        phase = "done" if status is JobStatus.SUCCEEDED else status.value
        with self._lock:
            job = self._fetch(job_id)
            if job is None:
                raise KeyError(job_id)
            if job.status is not JobStatus.RUNNING:
                return job  # already ended (cancelled while queued, or recovered)
            self._db.execute(
                "UPDATE jobs SET status = ?, finished_at = ?, error_json = ?, result_path = ?,"
                " progress_json = ?, metrics_json = ? WHERE id = ? AND status = ?",
                (
                    status.value,
                    _now(),
                    error.model_dump_json(exclude_none=True) if error else None,
                    result_path,
                    _with_phase(job.progress, phase),
                    json.dumps(dict(metrics)) if metrics is not None else None,
                    job_id,
                    JobStatus.RUNNING.value,
                ),
            )
            finished = self._fetch(job_id)
        assert finished is not None
        return finished

    def cancel_queued(self, job_id: str) -> Job | None:
        """Cancel the job if it is still queued; return it (None if it was not queued)."""
        with self._lock:
            cursor = self._db.execute(
                "UPDATE jobs SET status = ?, finished_at = ?, progress_json = ?"
                " WHERE id = ? AND status = ?",
                (
                    JobStatus.CANCELLED.value,
                    _now(),
                    JobProgress(phase="cancelled").model_dump_json(),
                    job_id,
                    JobStatus.QUEUED.value,
                ),
            )
            return self._fetch(job_id) if cursor.rowcount else None

    def result_path(self, job_id: str) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT result_path FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
        return row["result_path"] if row else None

    def queue_length(self) -> int:
        with self._lock:
            row = self._db.execute(
                "SELECT COUNT(*) AS n FROM jobs WHERE status = ?", (JobStatus.QUEUED.value,)
            ).fetchone()
        return int(row["n"])

    def status_counts(self) -> dict[JobStatus, int]:
        with self._lock:
            rows = self._db.execute(
                "SELECT status, COUNT(*) AS n FROM jobs GROUP BY status"
            ).fetchall()
        return {JobStatus(row["status"]): int(row["n"]) for row in rows}

    def config(self, job_id: str) -> ExperimentConfig | None:
        with self._lock:
            row = self._db.execute(
                "SELECT config_json FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
        return ExperimentConfig.model_validate_json(row["config_json"]) if row else None
