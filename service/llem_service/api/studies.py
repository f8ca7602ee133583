"""``/v1/studies``: submit a study, follow it, cancel it, and read its results and frontier."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from llem_client import (
    JobStatus,
    ParetoTargets,
    Study,
    StudyDocument,
    StudyList,
    StudyPareto,
    StudyResults,
    StudySummary,
)
from starlette.concurrency import run_in_threadpool

from llem_service.api.admission import admit_all
from llem_service.api.problems import problem_responses
from llem_service.api.sse import KEEP_ALIVE, EventIds, changed, event_stream
from llem_service.deps import (
    AdmissionDep,
    CatalogDep,
    FeedDep,
    SchedulerDep,
    SettingsDep,
    StudyStoreDep,
)
from llem_service.errors import StudyAlreadyFinished, StudyNotFound
from llem_service.jobs.events import ChangeFeed
from llem_service.jobs.study_store import (
    NewStudy,
    PlannedRun,
    RunRecord,
    StudyRecord,
    StudyStore,
)
from llem_service.jobs.submit_checks import ConfigChecker
from llem_service.studies import views
from llem_service.studies.design import StudyDesign, expand
from llem_service.studies.pareto import pareto
from llem_service.studies.table import build_results, to_csv, to_parquet

router = APIRouter(prefix="/studies", tags=["studies"])

PARQUET_MEDIA_TYPE = "application/vnd.apache.parquet"


@functools.lru_cache(maxsize=32)
def _design(design_json: str) -> StudyDesign:
    """A study's design never changes after submission: parse each one once."""
    return StudyDesign.model_validate_json(design_json)


def _record_or_404(store: StudyStore, study_id: str) -> StudyRecord:
    record = store.get_study(study_id)
    if record is None:
        raise StudyNotFound(f"no study with id {study_id!r}")
    return record


def _full(store: StudyStore, record: StudyRecord) -> Study:
    tally = store.study_tallies([record.id])[record.id]
    runs = [r.run for r in store.study_runs(record.id)]
    return views.full(record, tally, _design(record.design_json), runs)


def _summary(store: StudyStore, record: StudyRecord) -> StudySummary:
    tally = store.study_tallies([record.id])[record.id]
    return views.summary(record, tally, _design(record.design_json))


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Study,
    responses=problem_responses(400, 401, 413, 422, 503),
    summary="Submit a study",
)
def submit_study(
    document: StudyDocument,
    request: Request,
    response: Response,
    store: StudyStoreDep,
    scheduler: SchedulerDep,
    feed: FeedDep,
    settings: SettingsDep,
    catalog: CatalogDep,
    admission: AdmissionDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            max_length=255,
            description="Repeat a request with the same key and body to get the same study.",
        ),
    ] = None,
) -> Study:
    """Expand the document into points, check each as a single experiment is checked (its
    fields, this server's limits and models, the model's context), and queue every valid point
    once per cycle in the planned order. Invalid points are listed in ``skipped`` with their
    reasons; a study with no valid point, an unknown field or too many points is refused
    (422), as is any invalid point with ``on_invalid: fail``. A repeated Idempotency-Key with
    the same body gets the study it made, before any check: those may answer otherwise now."""
    body = json.dumps(document.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    fingerprint = hashlib.sha256(body.encode()).hexdigest()
    if idempotency_key is not None:
        replayed = store.replay_study(fingerprint, idempotency_key)
        if replayed is not None:
            response.headers["Location"] = str(request.url_for("get_study", study_id=replayed.id))
            return _full(store, replayed)
    check = ConfigChecker(settings, catalog)
    expanded = expand(
        document,
        max_points=settings.max_study_points,
        max_runs=settings.max_study_runs,
        check=check,
    )
    admit_all(expanded.configs, admission)
    design = expanded.design
    runs = [
        PlannedRun(expanded.configs[point], point, cycle, position)
        for position, (point, cycle) in enumerate(design.plan)
    ]
    cooldown = document.cooldown
    wants_cooldown = cooldown.seconds > 0 or cooldown.until_temperature_within_c is not None
    record, created = store.submit_study(
        NewStudy(
            name=document.name,
            design_hash=expanded.design_hash,
            design_json=design.model_dump_json(),
            runs=runs,
            reuse=document.isolation == "reuse",
            cooldown=cooldown if wants_cooldown else None,
            fingerprint=fingerprint,
        ),
        idempotency_key,
    )
    submitted = _full(store, record)  # as queued: read before the scheduler is woken
    if created:
        scheduler.wake()
        feed.notify()
    response.headers["Location"] = str(request.url_for("get_study", study_id=record.id))
    return submitted


@router.get("", response_model=StudyList, responses=problem_responses(400, 401, 422))
def list_studies(
    store: StudyStoreDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[
        str | None,
        Query(description="next_cursor of the previous page; absent or empty: the first page"),
    ] = None,
) -> StudyList:
    """Studies, newest first, a page at a time, each with its runs counted by status."""
    records, next_cursor = store.list_studies(limit=limit, cursor=cursor)
    tallies = store.study_tallies([r.id for r in records])
    items = [views.summary(r, tallies[r.id], _design(r.design_json)) for r in records]
    return StudyList(items=items, next_cursor=next_cursor)


@router.get("/{study_id}", response_model=Study, responses=problem_responses(401, 404))
def get_study(study_id: str, store: StudyStoreDep) -> Study:
    """The study: its design, planned order, and each run's status and progress."""
    return _full(store, _record_or_404(store, study_id))


@router.post(
    "/{study_id}/cancel",
    response_model=StudySummary,
    responses={
        **problem_responses(401, 404, 409),
        202: {"model": StudySummary, "description": "A running point is being stopped"},
    },
)
def cancel_study(
    study_id: str,
    response: Response,
    store: StudyStoreDep,
    scheduler: SchedulerDep,
    feed: FeedDep,
) -> StudySummary:
    """Cancel the runs still to run, stop the running one (202), keep the finished ones."""
    record = _record_or_404(store, study_id)
    if _summary(store, record).status.terminal:
        raise StudyAlreadyFinished(f"study {study_id} has already ended")
    running = store.cancel_study(study_id)
    for job_id in running:
        scheduler.request_cancel(job_id)
    feed.notify()
    if running:
        response.status_code = status.HTTP_202_ACCEPTED
    return _summary(store, _record_or_404(store, study_id))


#: One Server-Sent Event (OpenAPI 3.1 describes an event stream by the schema of each event).
_SSE_EVENT = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["run", "study", "shutdown"]},
        "id": {"type": "string", "description": "Increases by one per event of the stream."},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "description": "run: a StudyRun; study: the StudySummary; shutdown: "
            '{"detail": "..."}, the last event when the server stops before the study ends.',
        },
    },
}


@router.get(
    "/{study_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "A stream of `study` events (data: the StudySummary) and `run` "
            "events (data: a StudyRun) at each change, until the study ends; comments keep "
            "the connection alive; if the server stops first, a last `shutdown` event (data: "
            '`{"detail": "..."}`).',
            "content": {"text/event-stream": {"schema": _SSE_EVENT}},
        },
        **problem_responses(401, 404),
    },
)
def stream_study_events(
    study_id: str, store: StudyStoreDep, feed: FeedDep, settings: SettingsDep
) -> StreamingResponse:
    """Server-Sent Events: the study's summary at each change and each run that changed."""
    _record_or_404(store, study_id)
    return event_stream(study_events(store, feed, study_id, settings.sse_keepalive_s))


async def study_events(
    store: StudyStore, feed: ChangeFeed, study_id: str, keepalive_s: float
) -> AsyncIterator[str]:
    """The study's event stream: each run as it changes, the summary when it changed.

    Every change of any job wakes the stream: it reads the runs of this study changed since
    its last read (mostly none), off the event loop, and tallies the study again only when one
    did or the study's record changed. Following a study costs what changed, not its size.
    """

    def read(after: int) -> tuple[StudyRecord | None, list[RunRecord], int]:
        record = store.get_study(study_id)
        if record is None:
            return None, [], after
        runs, mark = store.changed_runs(study_id, after)
        return record, runs, mark

    ids = EventIds()
    sent: dict[str, str] = {}

    def run_events(runs: list[RunRecord]) -> list[str]:
        events = []
        for found in runs:
            text = found.run.model_dump_json()
            if sent.get(found.run.job_id) != text:
                sent[found.run.job_id] = text
                events.append(ids.event("run", text))
        return events

    mark = 0
    shown: StudyRecord | None = None
    last = ""
    ended = False
    while True:
        waiter = feed.waiter()
        record, runs, mark = await run_in_threadpool(read, mark)
        if record is None:
            return
        for event in run_events(runs):
            yield event
        if runs or record != shown:
            shown = record
            head = await run_in_threadpool(_summary, store, record)
            ended = head.status.terminal
            if ended:  # the runs' last changes, made since the read above, come before it
                runs, mark = await run_in_threadpool(store.changed_runs, study_id, mark)
                for event in run_events(runs):
                    yield event
            text = head.model_dump_json()
            if text != last:
                yield ids.event("study", text)
                last = text
        if ended:
            return
        if feed.closed:
            yield ids.shutdown()
            return
        if not await changed(waiter, keepalive_s):
            yield KEEP_ALIVE


@router.get(
    "/{study_id}/results",
    response_model=StudyResults,
    responses={
        200: {
            "description": "One row per finished run and one aggregated row per point",
            "content": {"text/csv": {}, PARQUET_MEDIA_TYPE: {}},
        },
        **problem_responses(401, 404, 422),
    },
)
def get_study_results(
    study_id: str,
    store: StudyStoreDep,
    format: Annotated[
        Literal["json", "csv", "parquet"], Query(description="JSON (default), CSV or Parquet.")
    ] = "json",
) -> Response:
    """The results so far: a row per succeeded run (point x cycle, in run order), then a row
    per point with the mean and 95% CI over its cycles. Columns: the swept fields, tokens/s,
    J/token raw and adjusted with their uncertainties, TTFT and ITL p50/p90/p99, per-request
    energy, mean power, peak memory, warnings."""
    record = _record_or_404(store, study_id)
    runs = store.study_runs(study_id, statuses=[JobStatus.SUCCEEDED])
    results = build_results(study_id, _design(record.design_json), runs)
    if format == "json":
        return Response(results.model_dump_json(), media_type="application/json")
    content = to_csv(results) if format == "csv" else to_parquet(results)
    media_type = "text/csv" if format == "csv" else PARQUET_MEDIA_TYPE
    disposition = f'attachment; filename="{study_id}.results.{format}"'
    return Response(content, media_type=media_type, headers={"Content-Disposition": disposition})


@router.get(
    "/{study_id}/pareto", response_model=StudyPareto, responses=problem_responses(401, 404, 422)
)
def get_study_pareto(
    study_id: str,
    store: StudyStoreDep,
    max_ttft_p90_s: Annotated[float | None, Query(gt=0, description="TTFT p90 at most.")] = None,
    max_itl_p90_s: Annotated[float | None, Query(gt=0, description="ITL p90 at most.")] = None,
    min_tokens_per_s: Annotated[
        float | None, Query(gt=0, description="Output tokens/s at least.")
    ] = None,
) -> StudyPareto:
    """The time-energy frontier (J/token against tokens/s and against TTFT p90) and the
    lowest-energy point that meets the targets, or, when none does, the closest."""
    record = _record_or_404(store, study_id)
    runs = store.study_runs(study_id, statuses=[JobStatus.SUCCEEDED])
    results = build_results(study_id, _design(record.design_json), runs)
    targets = ParetoTargets(
        max_ttft_p90_s=max_ttft_p90_s,
        max_itl_p90_s=max_itl_p90_s,
        min_tokens_per_s=min_tokens_per_s,
    )
    return pareto(results, targets)
