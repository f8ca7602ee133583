"""Studies in the job store: a studies table, and each study run an ordinary job linked to it.

A study's runs are jobs like any other (the scheduler, the pool and the executors see no
difference), inserted in the study's planned order in the same transaction as the study, so
their place in the queue is the planned order. The job rows carry the study, point, cycle,
place in the plan and attempt; the studies table keeps the expanded design as an opaque
JSON document (`llem_service.studies.design.StudyDesign`) that the store does not read.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Protocol

from llem_client import (
    CooldownConfig,
    ExperimentConfig,
    JobProgress,
    JobStatus,
    ProblemDetail,
    StudyRun,
    measurement_config_hash,
)

from llem_service.jobs.cursors import study_cursor, study_seq
from llem_service.jobs.schema import keyed_id

#: SQLite's default limit of host parameters in one statement is 999 on old builds.
_CHUNK = 500


@dataclass(frozen=True)
class PlannedRun:
    """One run of a new study: a point's config in one cycle, at its place in the plan."""

    config: ExperimentConfig
    point: int
    cycle: int
    position: int


@dataclass(frozen=True)
class NewStudy:
    """A study to insert.

    Attributes:
        name: Its label.
        design_hash: `llem_service.studies.design` hash of the expanded design.
        design_json: The expanded design, stored as given.
        runs: Every run, in planned order.
        reuse: Whether consecutive runs may share an experiment process.
        cooldown: The pause between runs; None for none.
        fingerprint: Identity of the request body, for idempotent replays.
    """

    name: str
    design_hash: str
    design_json: str
    runs: Sequence[PlannedRun]
    reuse: bool
    cooldown: CooldownConfig | None
    fingerprint: str


@dataclass(frozen=True)
class StudyRecord:
    """A study row, with what its runs say about it."""

    id: str
    seq: int
    name: str
    design_hash: str
    created_at: datetime
    cancelled_at: datetime | None
    design_json: str


@dataclass(frozen=True)
class StudyTally:
    """A study's runs by status, and when the first started and the last finished."""

    counts: dict[JobStatus, int]
    started_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True)
class RunRecord:
    """A run as the store has it: its wire form and the metrics kept at its finish."""

    run: StudyRun
    metrics: dict[str, float | None] | None


class StudyStore(Protocol):
    """What the studies API needs of the store."""

    def submit_study(
        self, study: NewStudy, idempotency_key: str | None = None
    ) -> tuple[StudyRecord, bool]: ...

    def replay_study(self, fingerprint: str, idempotency_key: str) -> StudyRecord | None: ...

    def get_study(self, study_id: str) -> StudyRecord | None: ...

    def list_studies(
        self, limit: int = 50, cursor: str | None = None
    ) -> tuple[list[StudyRecord], str | None]: ...

    def study_tallies(self, study_ids: Sequence[str]) -> dict[str, StudyTally]: ...

    def study_runs(
        self, study_id: str, statuses: Sequence[JobStatus] | None = None
    ) -> list[RunRecord]: ...

    def changed_runs(self, study_id: str, after: int = 0) -> tuple[list[RunRecord], int]: ...

    def cancel_study(self, study_id: str) -> list[str]: ...

    def set_study_temperatures(self, study_id: str, temperatures: Mapping[str, float]) -> None: ...

    def study_temperatures(self, study_id: str) -> dict[str, float] | None: ...


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


_RUN_COLUMNS = (
    "id, status, progress_json, error_json, metrics_json, study_point, study_cycle,"
    " study_position, attempt"
)


def _run_record(row: sqlite3.Row) -> RunRecord:
    metrics = json.loads(row["metrics_json"]) if row["metrics_json"] else None
    run = StudyRun(
        job_id=row["id"],
        point=row["study_point"],
        cycle=row["study_cycle"],
        position=row["study_position"],
        attempt=row["attempt"],
        status=JobStatus(row["status"]),
        progress=JobProgress.model_validate_json(row["progress_json"]),
        error=(ProblemDetail.model_validate_json(row["error_json"]) if row["error_json"] else None),
        tokens_per_s=(metrics or {}).get("tokens_per_s"),
        energy_per_output_token_j=(metrics or {}).get("energy_per_output_token_j"),
    )
    return RunRecord(run, metrics)


class SqliteStudyQueries:
    """The study half of `llem_service.jobs.store.SqliteJobStore` (a mixin over its
    connection and lock)."""

    _db: sqlite3.Connection
    _lock: threading.Lock

    def submit_study(
        self, study: NewStudy, idempotency_key: str | None = None
    ) -> tuple[StudyRecord, bool]:
        """Insert the study and its runs in one transaction; an idempotent replay returns the
        study the key made."""
        study_id = uuid.uuid4().hex
        now = _now()
        queued = JobProgress(phase="queued").model_dump_json()
        cooldown = study.cooldown.model_dump_json() if study.cooldown is not None else None
        reuse_group = study_id if study.reuse else None
        with self._lock:
            if idempotency_key is not None:
                existing = self._study_by_key(idempotency_key, study.fingerprint)
                if existing is not None:
                    return existing, False
            rows = []
            for run in study.runs:
                config = run.config
                rows.append(
                    (
                        uuid.uuid4().hex,
                        JobStatus.QUEUED.value,
                        config.model,
                        config.name,
                        config.model_dump_json(),
                        measurement_config_hash(config),
                        now,
                        queued,
                        study_id,
                        run.point,
                        run.cycle,
                        run.position,
                        reuse_group,
                        cooldown,
                    )
                )
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT INTO studies (id, name, design_hash, created_at, design_json,"
                    " idempotency_key, request_fingerprint) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        study_id,
                        study.name,
                        study.design_hash,
                        now,
                        study.design_json,
                        idempotency_key,
                        study.fingerprint,
                    ),
                )
                self._db.executemany(
                    "INSERT INTO jobs (id, status, model, name, config_json, config_hash,"
                    " created_at, progress_json, study_id, study_point, study_cycle,"
                    " study_position, reuse_group, cooldown_json)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            record = self._study_row(study_id)
        assert record is not None
        return record, True

    def replay_study(self, fingerprint: str, idempotency_key: str) -> StudyRecord | None:
        """The study a request with this key and body (``fingerprint``) made, if one did: a
        retried submission gets it before it is expanded and checked again.

        Raises:
            IdempotencyKeyReused: The key made a study from another body.
        """
        with self._lock:
            return self._study_by_key(idempotency_key, fingerprint)

    def _study_by_key(self, idempotency_key: str, fingerprint: str) -> StudyRecord | None:
        study_id = keyed_id(self._db, "studies", idempotency_key, fingerprint)
        return self._study_row(study_id) if study_id else None

    def _study_row(self, study_id: str) -> StudyRecord | None:
        row = self._db.execute(
            "SELECT seq, id, name, design_hash, created_at, cancelled_at, design_json"
            " FROM studies WHERE id = ?",
            (study_id,),
        ).fetchone()
        return self._record(row) if row else None

    @staticmethod
    def _record(row: sqlite3.Row) -> StudyRecord:
        created = _time(row["created_at"])
        assert created is not None
        return StudyRecord(
            id=row["id"],
            seq=row["seq"],
            name=row["name"],
            design_hash=row["design_hash"],
            created_at=created,
            cancelled_at=_time(row["cancelled_at"]),
            design_json=row["design_json"],
        )

    def get_study(self, study_id: str) -> StudyRecord | None:
        with self._lock:
            return self._study_row(study_id)

    def list_studies(
        self, limit: int = 50, cursor: str | None = None
    ) -> tuple[list[StudyRecord], str | None]:
        """Studies, newest first, a page at a time."""
        sql = (
            "SELECT seq, id, name, design_hash, created_at, cancelled_at, design_json FROM studies"
        )
        args: list[object] = []
        if cursor:  # an empty cursor is the first page, as for jobs
            sql += " WHERE seq < ?"
            args.append(study_seq(cursor))
        sql += " ORDER BY seq DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(sql, (*args, limit + 1)).fetchall()
        records = [self._record(row) for row in rows[:limit]]
        next_cursor = study_cursor(rows[limit - 1]["seq"]) if len(rows) > limit else None
        return records, next_cursor

    def study_tallies(self, study_ids: Sequence[str]) -> dict[str, StudyTally]:
        """Each study's runs by status, first start and last finish."""
        found: dict[str, tuple[dict[JobStatus, int], list[str], list[str]]] = {
            study_id: ({}, [], []) for study_id in study_ids
        }
        with self._lock:
            for start in range(0, len(study_ids), _CHUNK):
                chunk = list(study_ids[start : start + _CHUNK])
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    "SELECT study_id, status, COUNT(*) AS n, MIN(started_at) AS first,"
                    f" MAX(finished_at) AS last FROM jobs WHERE study_id IN ({marks})"
                    " GROUP BY study_id, status",
                    chunk,
                ).fetchall()
                for row in rows:
                    counts, starts, ends = found[row["study_id"]]
                    counts[JobStatus(row["status"])] = row["n"]
                    if row["first"]:
                        starts.append(row["first"])
                    if row["last"]:
                        ends.append(row["last"])
        tallies = {}
        for study_id, (counts, starts, ends) in found.items():
            ongoing = counts.get(JobStatus.QUEUED, 0) + counts.get(JobStatus.RUNNING, 0)
            tallies[study_id] = StudyTally(
                counts=counts,
                started_at=_time(min(starts)) if starts else None,
                finished_at=_time(max(ends)) if ends and not ongoing else None,
            )
        return tallies

    def study_runs(
        self, study_id: str, statuses: Sequence[JobStatus] | None = None
    ) -> list[RunRecord]:
        """The study's runs in planned order (only those in ``statuses`` when given)."""
        sql = f"SELECT {_RUN_COLUMNS} FROM jobs WHERE study_id = ?"
        args: list[object] = [study_id]
        if statuses is not None:
            sql += f" AND status IN ({','.join('?' * len(statuses))})"
            args.extend(status.value for status in statuses)
        sql += " ORDER BY study_position"
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [_run_record(row) for row in rows]

    def changed_runs(self, study_id: str, after: int = 0) -> tuple[list[RunRecord], int]:
        """The study's runs changed since mark ``after`` (0: every run that has left the
        queue), in planned order, and the mark to pass next time.

        Each change of a run (its status, progress, error, metrics or attempt) gives it a
        higher mark (``changed_seq``, kept by a trigger), so following a study costs what
        changed, not the size of the study."""
        with self._lock:
            # Sorted here: ORDER BY study_position makes SQLite walk the study's rows by the
            # position index instead of taking the few changed ones from the change index.
            rows = self._db.execute(
                f"SELECT {_RUN_COLUMNS}, changed_seq FROM jobs INDEXED BY jobs_study_changes"
                " WHERE study_id = ? AND changed_seq > ?",
                (study_id, after),
            ).fetchall()
        rows.sort(key=lambda row: int(row["study_position"]))
        mark = max((int(row["changed_seq"]) for row in rows), default=after)
        return [_run_record(row) for row in rows], mark

    def cancel_study(self, study_id: str) -> list[str]:
        """Mark the study cancelled and cancel its queued runs; return its running jobs (the
        caller stops them). Finished runs keep their results."""
        now = _now()
        cancelled = JobProgress(phase="cancelled").model_dump_json()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "UPDATE studies SET cancelled_at = ? WHERE id = ? AND cancelled_at IS NULL",
                    (now, study_id),
                )
                self._db.execute(
                    "UPDATE jobs SET status = ?, finished_at = ?, progress_json = ?"
                    " WHERE study_id = ? AND status = ?",
                    (JobStatus.CANCELLED.value, now, cancelled, study_id, JobStatus.QUEUED.value),
                )
                # Kept with each running run: a stop that finds no run to tell yet, or a
                # restart, does not lose it (`llem_service.jobs.interrupts`).
                self._db.execute(
                    "UPDATE jobs SET cancel_requested_at = COALESCE(cancel_requested_at, ?)"
                    " WHERE study_id = ? AND status = ?",
                    (now, study_id, JobStatus.RUNNING.value),
                )
                rows = self._db.execute(
                    "SELECT id FROM jobs WHERE study_id = ? AND status = ? ORDER BY seq",
                    (study_id, JobStatus.RUNNING.value),
                ).fetchall()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return [row["id"] for row in rows]

    def set_study_temperatures(self, study_id: str, temperatures: Mapping[str, float]) -> None:
        """Keep each GPU's temperature before the study's first run (the cooldown's target)."""
        with self._lock:
            self._db.execute(
                "UPDATE studies SET temperatures_json = ? WHERE id = ?",
                (json.dumps(dict(temperatures)), study_id),
            )

    def study_temperatures(self, study_id: str) -> dict[str, float] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT temperatures_json FROM studies WHERE id = ?", (study_id,)
            ).fetchone()
        if row is None or row["temperatures_json"] is None:
            return None
        temperatures: dict[str, float] = json.loads(row["temperatures_json"])
        return temperatures
