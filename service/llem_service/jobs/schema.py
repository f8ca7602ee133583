"""The job store's SQLite schema: the tables, the migrations since the first release, and how
a store file is opened.

``PRAGMA user_version`` counts the migrations applied, so a store written by an older server
gains its columns when a newer one opens it. Add a migration at the end; never edit one.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Literal

from llem_service.errors import IdempotencyKeyReused

SCHEMA = """
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
"""

#: Schema changes since the table above, in order; ``PRAGMA user_version`` counts those applied,
#: so a store written by an older server gains its columns when a newer one opens it.
MIGRATIONS: tuple[str, ...] = (
    # The GPUs the scheduler granted (JSON list of UUIDs; [] = the whole host), and the
    # executor's own handle of the job (a Slurm job id), so a restarted server can reattach.
    "ALTER TABLE jobs ADD COLUMN granted_gpus TEXT; ALTER TABLE jobs ADD COLUMN executor_ref TEXT;",
    # Studies (#12): a studies table, and each study run an ordinary job linked to its study,
    # point, cycle and place in the planned order. ``attempt`` counts tries (2: retried after
    # a restart); ``reuse_group`` lets consecutive jobs of one group share an experiment
    # process; ``metrics_json`` keeps a succeeded job's headline figures for study tables.
    """
    CREATE TABLE IF NOT EXISTS studies (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        design_hash TEXT NOT NULL,
        created_at TEXT NOT NULL,
        cancelled_at TEXT,
        design_json TEXT NOT NULL,
        temperatures_json TEXT,
        idempotency_key TEXT UNIQUE,
        request_fingerprint TEXT
    );
    ALTER TABLE jobs ADD COLUMN study_id TEXT;
    ALTER TABLE jobs ADD COLUMN study_point INTEGER;
    ALTER TABLE jobs ADD COLUMN study_cycle INTEGER;
    ALTER TABLE jobs ADD COLUMN study_position INTEGER;
    ALTER TABLE jobs ADD COLUMN attempt INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE jobs ADD COLUMN reuse_group TEXT;
    ALTER TABLE jobs ADD COLUMN cooldown_json TEXT;
    ALTER TABLE jobs ADD COLUMN metrics_json TEXT;
    ALTER TABLE jobs ADD COLUMN retried_error_json TEXT;
    CREATE INDEX IF NOT EXISTS jobs_by_study ON jobs (study_id, study_position);
    """,
    # A cancel asked for while the job runs, kept with it (`llem_service.jobs.interrupts`): one
    # that arrives before the run can be told, or before a restart, is not lost.
    # ``changed_seq`` numbers the changes of a study's runs (per study, by a trigger, whatever
    # statement makes them), so a study's event stream reads only the runs changed since its
    # last read, not all of a large study's runs at every change. Runs that left the queue
    # before this step count as changed once.
    """
    ALTER TABLE jobs ADD COLUMN cancel_requested_at TEXT;
    ALTER TABLE jobs ADD COLUMN changed_seq INTEGER NOT NULL DEFAULT 0;
    UPDATE jobs SET changed_seq = 1 WHERE study_id IS NOT NULL AND status != 'queued';
    CREATE INDEX IF NOT EXISTS jobs_study_changes ON jobs (study_id, changed_seq);
    CREATE TRIGGER IF NOT EXISTS jobs_study_run_changed
    AFTER UPDATE OF status, progress_json, error_json, metrics_json, attempt ON jobs
    WHEN NEW.study_id IS NOT NULL
    BEGIN
        UPDATE jobs SET changed_seq = 1 + (
            SELECT MAX(changed_seq) FROM jobs WHERE study_id = NEW.study_id
        ) WHERE seq = NEW.seq;
    END;
    """,
)

#: The columns a `Job` is read from.
JOB_COLUMNS = (
    "jobs.seq, jobs.id, jobs.status, jobs.model, jobs.name, jobs.config_hash, jobs.created_at,"
    " jobs.started_at, jobs.finished_at, jobs.progress_json, jobs.error_json,"
    " json_extract(jobs.config_json, '$.tags') AS tags_json, jobs.metrics_json"
)


def open_database(path: Path) -> sqlite3.Connection:
    """The store file at ``path`` (created if missing) in WAL mode, migrated to this release.
    Autocommit: each statement is its own transaction unless a caller opens one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA busy_timeout=5000")
    db.executescript(SCHEMA)
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        # One transaction a step: a crash leaves the store at a step, never inside one.
        db.executescript(f"BEGIN IMMEDIATE; {script} PRAGMA user_version = {number}; COMMIT;")
    return db


#: What a request made in each keyed table: (the request's kind, the row's kind).
_KEYED = {"jobs": ("experiment", "job"), "studies": ("study", "study")}


def keyed_id(
    db: sqlite3.Connection,
    table: Literal["jobs", "studies"],
    idempotency_key: str,
    fingerprint: str,
) -> str | None:
    """The id of the row of ``table`` that a request with ``idempotency_key`` made, if any.

    Raises:
        IdempotencyKeyReused: The key made that row from another request body.
    """
    row = db.execute(
        f"SELECT id, request_fingerprint FROM {table} WHERE idempotency_key = ?",
        (idempotency_key,),
    ).fetchone()
    if row is None:
        return None
    if row["request_fingerprint"] != fingerprint:
        what, made = _KEYED[table]
        raise IdempotencyKeyReused(
            f"Idempotency-Key {idempotency_key!r} was used for a different {what} "
            f"({made} {row['id']}); use a new key for a new request"
        )
    found: str = row["id"]
    return found
