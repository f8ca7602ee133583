"""A study's event stream follows what changed: each change of a run is one ``run`` event, and
a stream over a large study reads the runs that changed, not every run at every change."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from llem_client import JobProgress, JobStatus, StudyDocument
from llem_service.api.studies import study_events
from llem_service.jobs.events import ChangeFeed
from llem_service.jobs.store import SqliteJobStore
from llem_service.jobs.study_store import NewStudy, PlannedRun, RunRecord
from llem_service.studies.design import expand

BASE: dict[str, Any] = {
    "model": "tiny-test-model",
    "prompts": {"input_len": 8},
    "n_prompts": 4,
    "max_output_tokens": 4,
}


class CountingStore(SqliteJobStore):
    """The real store, counting the study runs its reads return."""

    rows_read = 0

    def study_runs(
        self, study_id: str, statuses: Sequence[JobStatus] | None = None
    ) -> list[RunRecord]:
        runs = super().study_runs(study_id, statuses)
        self.rows_read += len(runs)
        return runs

    def changed_runs(self, study_id: str, after: int = 0) -> tuple[list[RunRecord], int]:
        runs, mark = super().changed_runs(study_id, after)
        self.rows_read += len(runs)
        return runs, mark


def submit(store: SqliteJobStore, n_points: int, cycles: int) -> tuple[str, list[str]]:
    document = StudyDocument.model_validate(
        {
            "name": "big",
            "base": BASE,
            "sweep": {"max_output_tokens": list(range(1, n_points + 1))},
            "cycles": cycles,
            "order": "sequential",
        }
    )
    expanded = expand(document, max_points=n_points)
    runs = [
        PlannedRun(expanded.configs[point], point, cycle, position)
        for position, (point, cycle) in enumerate(expanded.design.plan)
    ]
    new = NewStudy(
        "big", expanded.design_hash, expanded.design.model_dump_json(), runs, False, None, "f"
    )
    record, _ = store.submit_study(new)
    return record.id, [r.run.job_id for r in store.study_runs(record.id)]


def run_to_end(store: SqliteJobStore, job_id: str) -> None:
    assert store.claim(job_id) is not None
    store.finish(job_id, JobStatus.SUCCEEDED)


def kind_and_data(event: str) -> tuple[str, dict[str, Any]]:
    fields = dict(line.split(": ", 1) for line in event.strip().splitlines())
    return fields["event"], json.loads(fields["data"])


def test_a_stream_reads_only_the_runs_that_changed_since_its_last_read(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "jobs.sqlite3")
    study_id, job_ids = submit(store, n_points=10, cycles=10)
    for job_id in job_ids[:90]:
        run_to_end(store, job_id)
    following = job_ids[90]
    assert store.claim(following) is not None
    store.rows_read = 0

    async def scenario() -> None:
        feed = ChangeFeed()
        events: AsyncIterator[str] = study_events(store, feed, study_id, keepalive_s=30)
        first = [kind_and_data(await anext(events)) for _ in range(92)]
        assert [kind for kind, _ in first] == ["run"] * 91 + ["study"]
        assert first[-1][1]["status"] == "running"
        for step in range(1, 21):
            progress = JobProgress(phase="measuring", completed=step, total=20, unit="requests")
            store.update_progress(following, progress)
            feed.notify()
            kind, run = kind_and_data(await asyncio.wait_for(anext(events), 5))
            assert (kind, run["job_id"], run["progress"]["completed"]) == ("run", following, step)
        store.finish(following, JobStatus.SUCCEEDED)
        for job_id in job_ids[91:]:
            run_to_end(store, job_id)
        feed.notify()
        rest = [kind_and_data(event) async for event in events]
        assert [kind for kind, _ in rest] == ["run"] * 10 + ["study"]
        assert rest[-1][1]["status"] == "succeeded"

    asyncio.run(scenario())

    # The first read (91 runs), one run per progress step (20), the last ten runs once each.
    assert store.rows_read == 91 + 20 + 10
