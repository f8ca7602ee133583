"""The scheduler's before-run hook, the studies' cooldown behind it, and the layering it keeps:
the job machinery knows nothing of studies (studies build on jobs, not the other way)."""

from __future__ import annotations

import ast
import threading
from pathlib import Path

import llem_service.jobs
from llem_client import CooldownConfig, JobProgress, ResultWarning
from llem_service.jobs.base import ClaimedJob
from llem_service.jobs.store import SqliteJobStore
from llem_service.jobs.study_store import NewStudy, PlannedRun
from llem_service.studies.cooldown import StudyCooldown

from tests.conftest import make_config
from tests.unit.service.jobs.test_scheduler_seam import RecordingExecutor, _run_until_done

JOBS_DIR = Path(llem_service.jobs.__file__).parent


def imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_no_module_of_the_job_machinery_imports_the_studies_or_the_api() -> None:
    offending = {
        f"{path.name}: {module}"
        for path in sorted(JOBS_DIR.glob("*.py"))
        for module in imported_modules(path)
        if module.startswith(("llem_service.studies", "llem_service.api"))
    }

    assert offending == set()


def submit_study(store: SqliteJobStore, cooldown: CooldownConfig | None) -> list[str]:
    runs = [PlannedRun(make_config(name=f"p{i}"), i, 0, i) for i in range(2)]
    record, _ = store.submit_study(
        NewStudy("s", "0" * 16, "{}", runs, reuse=False, cooldown=cooldown, fingerprint="f")
    )
    return [r.run.job_id for r in store.study_runs(record.id)]


def test_the_hook_runs_before_each_run(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    ids = [store.submit(make_config(name=f"j{i}")).job.id for i in range(3)]
    executor = RecordingExecutor()
    calls: list[tuple[str, int]] = []

    def before_run(
        job: ClaimedJob, cancel: threading.Event, on_progress: object
    ) -> ResultWarning | None:
        calls.append((job.job.id, sum(len(runs) for runs in executor.sessions)))
        return None

    _run_until_done(store, tmp_path, executor, ids, lambda s: setattr(s, "before_run", before_run))

    # Each call came before its own run (the runs done by then: the ones before it).
    assert sorted(calls) == sorted(zip(ids, range(3), strict=True))


def claim_all(store: SqliteJobStore, ids: list[str]) -> list[ClaimedJob]:
    claimed = [store.claim(job_id) for job_id in ids]
    assert all(c is not None for c in claimed)
    return [c for c in claimed if c is not None]


def test_the_study_cooldown_pauses_study_runs_only_and_says_when_it_could_not(
    tmp_path: Path,
) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    by_temperature = CooldownConfig(seconds=0.01, until_temperature_within_c=2.0)
    first, second = claim_all(store, submit_study(store, by_temperature))
    (plain,) = claim_all(store, [store.submit(make_config()).job.id])
    hook = StudyCooldown(store, thermometer=None)
    phases: list[str] = []

    def note(progress: JobProgress) -> None:
        phases.append(progress.phase)

    answers = [hook(job, threading.Event(), note) for job in (plain, first, second)]

    assert answers[:2] == [None, None]  # no study; the study's first run waits for nothing
    assert answers[2] is not None
    assert answers[2].code == "cooldown_not_applied"
    assert phases == ["cooldown"]  # only the second run of the study cooled down
