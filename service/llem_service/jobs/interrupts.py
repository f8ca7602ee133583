"""Jobs the scheduler could not see through, in the job store: cancels asked for while a job
runs, jobs given back before they started, and runs a shutdown or a crash interrupted.

A cancel is stored with the job (``cancel_requested_at``) before the scheduler is told, so
that it cannot be lost: a job claimed a moment earlier, whose run has not registered its stop
signal yet, reads it when it does; a server that restarts reads it when it follows the job
again. A study's cancel counts for each of its runs.

An interrupted run (the server stopped or crashed during it) ends in one of three ways:

- a study run on its first attempt is queued again in its place, as attempt 2, keeping why
  attempt 1 ended (`retry_interrupted`);
- a run whose cancel was asked for (its own, or its study's) ends cancelled, as asked;
- anything else fails as interrupted (`fail_interrupted`).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from datetime import datetime, timezone

from llem_client import JobProgress, JobStatus

from llem_service.errors import Failures

#: SQLite's default limit of host parameters in one statement is 999 on old builds.
_CHUNK = 500

#: A job whose cancel was asked for, by itself or through its study (SQL, on ``jobs``).
CANCEL_ASKED = (
    "(jobs.cancel_requested_at IS NOT NULL OR EXISTS (SELECT 1 FROM studies"
    " WHERE studies.id = jobs.study_id AND studies.cancelled_at IS NOT NULL))"
)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _marks(chunk: Sequence[str]) -> str:
    return ",".join("?" * len(chunk))


class SqliteInterrupts:
    """The interrupts half of `llem_service.jobs.store.SqliteJobStore` (a mixin over its
    connection and lock)."""

    _db: sqlite3.Connection
    _lock: threading.Lock

    def request_cancel(self, job_id: str) -> bool:
        """Keep a cancel for a running job; False when it is not running (any more)."""
        with self._lock:
            cursor = self._db.execute(
                "UPDATE jobs SET cancel_requested_at = COALESCE(cancel_requested_at, ?)"
                " WHERE id = ? AND status = ?",
                (_now(), job_id, JobStatus.RUNNING.value),
            )
        return bool(cursor.rowcount)

    def cancel_requested(self, job_id: str) -> bool:
        """Whether the job's cancel, or its study's, was asked for."""
        with self._lock:
            row = self._db.execute(
                f"SELECT {CANCEL_ASKED} AS asked FROM jobs WHERE jobs.id = ?", (job_id,)
            ).fetchone()
        return bool(row and row["asked"])

    def unclaim(self, job_id: str) -> bool:
        """Put a claimed job whose run never started back in line, in its place, as if it
        had never been claimed; False when it is not running."""
        with self._lock:
            cursor = self._db.execute(
                "UPDATE jobs SET status = ?, started_at = NULL, progress_json = ?,"
                " granted_gpus = NULL, executor_ref = NULL WHERE id = ? AND status = ?",
                (
                    JobStatus.QUEUED.value,
                    JobProgress(phase="queued").model_dump_json(),
                    job_id,
                    JobStatus.RUNNING.value,
                ),
            )
        return bool(cursor.rowcount)

    def retry_interrupted(self, job_ids: Sequence[str]) -> list[str]:
        """Queue again, in their place, the study runs among ``job_ids`` (running jobs a
        shutdown or a crash interrupted) that were on their first attempt and whose cancel
        nobody asked for; return those. Each becomes attempt 2 (which says why: only an
        interrupted run is tried again)."""
        queued = JobProgress(phase="queued").model_dump_json()
        retried: list[str] = []
        with self._lock:
            for start in range(0, len(job_ids), _CHUNK):
                chunk = list(job_ids[start : start + _CHUNK])
                rows = self._db.execute(
                    f"UPDATE jobs SET status = ?, attempt = attempt + 1, started_at = NULL,"
                    f" progress_json = ?, granted_gpus = NULL,"
                    f" executor_ref = NULL WHERE id IN ({_marks(chunk)}) AND status = ?"
                    f" AND study_id IS NOT NULL AND attempt = 1 AND NOT {CANCEL_ASKED}"
                    " RETURNING id",
                    (JobStatus.QUEUED.value, queued, *chunk, JobStatus.RUNNING.value),
                ).fetchall()
                retried.extend(row["id"] for row in rows)
        return retried

    def fail_interrupted(self, job_ids: Sequence[str], why: str | None = None) -> None:
        """End these running jobs, interrupted: cancelled where a cancel was asked for (the
        job's or its study's), otherwise failed as interrupted, ``why`` saying how."""
        error = Failures.INTERRUPTED.problem(
            why or "the server restarted while this experiment ran; submit it again"
        ).model_dump_json(exclude_none=True)
        now = _now()
        failed = JobProgress(phase="failed").model_dump_json()
        cancelled = JobProgress(phase="cancelled").model_dump_json()
        running = JobStatus.RUNNING.value
        with self._lock:
            for start in range(0, len(job_ids), _CHUNK):
                chunk = list(job_ids[start : start + _CHUNK])
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.execute(
                        f"UPDATE jobs SET status = ?, finished_at = ?, progress_json = ?"
                        f" WHERE id IN ({_marks(chunk)}) AND status = ? AND {CANCEL_ASKED}",
                        (JobStatus.CANCELLED.value, now, cancelled, *chunk, running),
                    )
                    self._db.execute(
                        f"UPDATE jobs SET status = ?, finished_at = ?, error_json = ?,"
                        f" progress_json = ? WHERE id IN ({_marks(chunk)}) AND status = ?",
                        (JobStatus.FAILED.value, now, error, failed, *chunk, running),
                    )
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
