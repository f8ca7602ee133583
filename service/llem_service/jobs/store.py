"""The job store: the `JobStore` seam and its SQLite implementation (WAL mode).

Every state change is one SQL statement or one immediate transaction, so a crash never leaves
a job half-updated, and a restarted server finds queued jobs still queued.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

from llem_client import (
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
    Failures,
    IdempotencyKeyReused,
    InvalidCursor,
    JobStillActive,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    model TEXT NOT NULL,
    name TEXT,
    config_json TEXT NOT NULL,
    config_hash TEXT NOT NULL,
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    progress_json TEXT NOT NULL,
    error_json TEXT,
    result_path TEXT,
    idempotency_key TEXT UNIQUE,
    request_fingerprint TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, seq);
-- Headline figures of succeeded jobs, for listings; a table of its own so the jobs table
-- keeps its shape. Deleted with its job.
CREATE TABLE IF NOT EXISTS job_metrics (
    job_id TEXT PRIMARY KEY,
    tokens_per_second REAL NOT NULL,
    energy_per_output_token_j REAL
);
"""

_JOB_COLUMNS = (
    "jobs.seq, jobs.id, jobs.status, jobs.model, jobs.name, jobs.config_hash, jobs.created_at,"
    " jobs.started_at, jobs.finished_at, jobs.progress_json, jobs.error_json,"
    " json_extract(jobs.config_json, '$.tags') AS tags_json,"
    " m.tokens_per_second, m.energy_per_output_token_j"
)
_JOBS = "jobs LEFT JOIN job_metrics m ON m.job_id = jobs.id"
#: Shortest job id prefix looked up as a prefix: shorter ones match too much to be meant.
MIN_ID_PREFIX = 4
#: Candidates an ambiguous prefix lists.
MAX_CANDIDATES = 10


@dataclass(frozen=True)
class Submission:
    """A submitted job, and whether this call created it (False: an idempotent replay)."""

    job: Job
    created: bool


@dataclass(frozen=True)
class ClaimedJob:
    job: Job
    config: ExperimentConfig


class JobStore(Protocol):
    """Where jobs live. The worker claims, updates and finishes; the API submits and reads."""

    def submit(
        self, config: ExperimentConfig, idempotency_key: str | None = None
    ) -> Submission: ...

    def get(self, job_id: str) -> Job | None: ...

    def list_jobs(
        self,
        status: JobStatus | None = None,
        limit: int = 50,
        cursor: str | None = None,
        *,
        tags: Mapping[str, str] | None = None,
        name: str | None = None,
    ) -> tuple[list[Job], str | None]: ...

    def find(self, id_or_prefix: str) -> Job | None: ...

    def delete_finished(self, job_id: str) -> Job | None: ...

    def record_metrics(self, job_id: str, metrics: JobMetrics) -> None: ...

    def succeeded_without_metrics(self) -> list[tuple[str, str | None]]: ...

    def claim_next(self) -> ClaimedJob | None: ...

    def update_progress(self, job_id: str, progress: JobProgress) -> None: ...

    def finish(
        self,
        job_id: str,
        status: JobStatus,
        *,
        error: ProblemDetail | None = None,
        result_path: str | None = None,
    ) -> Job: ...

    def cancel_queued(self, job_id: str) -> Job | None: ...

    def recover_interrupted(self) -> list[str]: ...

    def result_path(self, job_id: str) -> str | None: ...

    def queue_length(self) -> int: ...

    def running_job_id(self) -> str | None: ...

    def close(self) -> None: ...


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _with_phase(progress: JobProgress, phase: str) -> str:
    return progress.model_copy(update={"phase": phase}).model_dump_json()


def _request_fingerprint(config: ExperimentConfig) -> str:
    """Identity of a request body for idempotency: the whole effective config, labels included."""
    text = json.dumps(config.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"seq:{seq}".encode()).decode().rstrip("=")


TERMINAL = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def _decode_cursor(cursor: str) -> int:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        kind, _, value = base64.urlsafe_b64decode(padded.encode()).decode().partition(":")
        if kind != "seq":
            raise ValueError(kind)
        return int(value)
    except ValueError as exc:  # binascii.Error and UnicodeDecodeError are ValueErrors
        raise InvalidCursor(f"cursor {cursor!r} is not one this server issued") from exc


class SqliteJobStore:
    """`JobStore` on one SQLite file in WAL mode; safe to share between threads."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @staticmethod
    def _job(row: sqlite3.Row) -> Job:
        metrics = None
        if row["tokens_per_second"] is not None:
            metrics = JobMetrics(
                tokens_per_second=row["tokens_per_second"],
                energy_per_output_token_j=row["energy_per_output_token_j"],
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
            f"SELECT {_JOB_COLUMNS} FROM {_JOBS} WHERE jobs.id = ?", (job_id,)
        ).fetchone()
        return self._job(row) if row else None

    def submit(self, config: ExperimentConfig, idempotency_key: str | None = None) -> Submission:
        fingerprint = _request_fingerprint(config)
        job_id = uuid.uuid4().hex
        with self._lock:
            if idempotency_key is not None:
                row = self._db.execute(
                    "SELECT id, request_fingerprint FROM jobs WHERE idempotency_key = ?",
                    (idempotency_key,),
                ).fetchone()
                if row is not None:
                    if row["request_fingerprint"] != fingerprint:
                        raise IdempotencyKeyReused(
                            f"Idempotency-Key {idempotency_key!r} was used for a different "
                            f"experiment (job {row['id']}); use a new key for a new request"
                        )
                    existing = self._fetch(row["id"])
                    assert existing is not None
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
            args.append(_decode_cursor(cursor))
        for key, value in (tags or {}).items():
            where.append(
                "EXISTS (SELECT 1 FROM json_each(jobs.config_json, '$.tags')"
                " WHERE json_each.key = ? AND json_each.value = ?)"
            )
            args += [key, value]
        if name:
            where.append("instr(lower(jobs.name), lower(?)) > 0")
            args.append(name)
        sql = f"SELECT {_JOB_COLUMNS} FROM {_JOBS}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY jobs.seq DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(sql, (*args, limit + 1)).fetchall()
        jobs = [self._job(row) for row in rows[:limit]]
        next_cursor = _encode_cursor(rows[limit - 1]["seq"]) if len(rows) > limit else None
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
        """Remove a finished job (its row and metrics); return it, or None if unknown.

        Raises:
            JobStillActive: The job is queued or running (cancel it first).
        """
        with self._lock:
            job = self._fetch(job_id)
            if job is None:
                return None
            if not job.status.terminal:
                raise JobStillActive(
                    f"job {job_id} is {job.status.value}; cancel it before deleting it"
                )
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM job_metrics WHERE job_id = ?", (job_id,))
                self._db.execute(
                    "DELETE FROM jobs WHERE id = ? AND status IN (?, ?, ?)",
                    (job_id, *(s.value for s in TERMINAL)),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return job

    def record_metrics(self, job_id: str, metrics: JobMetrics) -> None:
        """Keep a succeeded job's headline figures for listings."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO job_metrics"
                " (job_id, tokens_per_second, energy_per_output_token_j) VALUES (?, ?, ?)",
                (job_id, metrics.tokens_per_second, metrics.energy_per_output_token_j),
            )

    def succeeded_without_metrics(self) -> list[tuple[str, str | None]]:
        """(id, result path) of succeeded jobs with no figures yet (stored before there were)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT jobs.id, jobs.result_path FROM jobs LEFT JOIN job_metrics m"
                " ON m.job_id = jobs.id WHERE jobs.status = ? AND m.job_id IS NULL",
                (JobStatus.SUCCEEDED.value,),
            ).fetchall()
        return [(row["id"], row["result_path"]) for row in rows]

    def claim_next(self) -> ClaimedJob | None:
        """Oldest queued job, now running. Atomic: two workers never claim the same job."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT id, config_json FROM jobs WHERE status = ? ORDER BY seq LIMIT 1",
                    (JobStatus.QUEUED.value,),
                ).fetchone()
                if row is None:
                    self._db.execute("COMMIT")
                    return None
                self._db.execute(
                    "UPDATE jobs SET status = ?, started_at = ?, progress_json = ? WHERE id = ?",
                    (
                        JobStatus.RUNNING.value,
                        _now(),
                        JobProgress(phase="starting").model_dump_json(),
                        row["id"],
                    ),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            job = self._fetch(row["id"])
        assert job is not None
        return ClaimedJob(job, ExperimentConfig.model_validate_json(row["config_json"]))

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
                " progress_json = ? WHERE id = ? AND status = ?",
                (
                    status.value,
                    _now(),
                    error.model_dump_json(exclude_none=True) if error else None,
                    result_path,
                    _with_phase(job.progress, phase),
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

    def recover_interrupted(self) -> list[str]:
        """Fail the jobs a previous server process left running; return their ids."""
        error = Failures.INTERRUPTED.problem(
            "the server restarted while this experiment ran; submit it again"
        )
        with self._lock:
            ids = [
                row["id"]
                for row in self._db.execute(
                    "SELECT id FROM jobs WHERE status = ?", (JobStatus.RUNNING.value,)
                )
            ]
            self._db.execute(
                "UPDATE jobs SET status = ?, finished_at = ?, error_json = ?, progress_json = ?"
                " WHERE status = ?",
                (
                    JobStatus.FAILED.value,
                    _now(),
                    error.model_dump_json(exclude_none=True),
                    JobProgress(phase="failed").model_dump_json(),
                    JobStatus.RUNNING.value,
                ),
            )
        return ids

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

    def running_job_id(self) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id FROM jobs WHERE status = ? ORDER BY seq LIMIT 1",
                (JobStatus.RUNNING.value,),
            ).fetchone()
        return row["id"] if row else None
