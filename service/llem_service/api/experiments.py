"""``/v1/experiments``: submit, list, read, cancel, stream and fetch results."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Path, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from llem_client import ExperimentConfig, ExperimentResult, Job, JobList, JobStatus
from pydantic import StringConstraints
from starlette.concurrency import run_in_threadpool

from llem_service.api.admission import admit
from llem_service.api.problems import problem_responses
from llem_service.api.sse import KEEP_ALIVE, EventIds, changed, event_stream
from llem_service.deps import (
    AdmissionDep,
    CatalogDep,
    FeedDep,
    ResultsDep,
    SchedulerDep,
    SettingsDep,
    StoreDep,
)
from llem_service.errors import (
    JobAlreadyFinished,
    JobHasNoResult,
    JobNotFinished,
    JobNotFound,
    JobStillActive,
    ResultUnavailable,
    TimeseriesNotRecorded,
)
from llem_service.jobs.base import JobStore
from llem_service.jobs.store import MIN_ID_PREFIX
from llem_service.jobs.submit_checks import check_config

router = APIRouter(prefix="/experiments", tags=["experiments"])

#: The job routes' path parameter: a whole id or a unique prefix of one.
JobId = Annotated[
    str,
    Path(
        description=f"A job id, or a unique prefix of one (at least {MIN_ID_PREFIX} "
        "characters); an ambiguous prefix is a 400 listing the candidates."
    ),
]
#: OpenAPI links from a submitted job to the routes that take its id.
_JOB_LINKS = {
    name: {"operationId": name, "parameters": {"job_id": "$response.body#/id"}}
    for name in (
        "get_experiment",
        "get_result",
        "get_timeseries",
        "cancel_experiment",
        "stream_events",
        "delete_experiment",
    )
}


#: One Server-Sent Event (OpenAPI 3.1 describes an event stream by the schema of each event).
_SSE_EVENT = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["job", "shutdown"]},
        "id": {"type": "string", "description": "Increases by one per event of the stream."},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "description": "job: the Job (as GET /v1/experiments/{job_id} gives it); shutdown: "
            '{"detail": "..."}, the last event when the server stops before the job ends.',
            "contentSchema": {
                "oneOf": [
                    {"$ref": "#/components/schemas/Job"},
                    {
                        "type": "object",
                        "required": ["detail"],
                        "properties": {"detail": {"type": "string"}},
                    },
                ]
            },
        },
    },
}


#: Reads of a job that changes state while it is being cancelled, before the cancel gives up.
_CANCEL_TRIES = 4


def _job_or_404(store: JobStore, job_id: str) -> Job:
    job = store.find(job_id)
    if job is None:
        hint = (
            f" (a prefix needs at least {MIN_ID_PREFIX} characters)"
            if len(job_id) < MIN_ID_PREFIX
            else ""
        )
        raise JobNotFound(f"no job with id {job_id!r}{hint}")
    return job


def _succeeded_or_409(store: JobStore, job_id: str, what: str) -> Job:
    """The job; 404 if unknown, 409 unless it succeeded (``what`` names the missing thing).
    A failed job's 409 gives its reason."""
    job = _job_or_404(store, job_id)
    if not job.status.terminal:
        raise JobNotFinished(f"job {job.id} is {job.status.value}; its {what} is not ready yet")
    if job.status is not JobStatus.SUCCEEDED:
        reason = ""
        if job.error is not None:
            said = job.error.detail or job.error.title
            reason = f" ({job.error.title}: {said})" if said != job.error.title else f" ({said})"
        raise JobHasNoResult(f"job {job.id} ended {job.status.value}{reason} and has no {what}")
    return job


def _tag_filters(tags: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` filters (the query's pattern has checked the form) as a mapping."""
    return dict(tag.partition("=")[::2] for tag in tags)


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Job,
    responses={
        202: {
            "description": "Queued (or, for a repeated Idempotency-Key, the job it made)",
            "headers": {
                "Location": {
                    "description": "The job's URL",
                    "schema": {"type": "string", "format": "uri-reference"},
                }
            },
            "links": _JOB_LINKS,
        },
        **problem_responses(400, 401, 413, 422, 503),
    },
    summary="Submit an experiment",
)
def submit_experiment(
    config: ExperimentConfig,
    request: Request,
    response: Response,
    store: StoreDep,
    scheduler: SchedulerDep,
    feed: FeedDep,
    settings: SettingsDep,
    catalog: CatalogDep,
    admission: AdmissionDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            max_length=255,
            description="Repeat a request with the same key and body to get the same job "
            "(safe retries); the same key with another body is a 422.",
        ),
    ] = None,
) -> Job:
    """Check the config against this server (its models, limits and the model's context, and
    an executor that can run it now) and queue it. Returns the job at once; jobs run in
    submission order. A repeated Idempotency-Key with the same config gets the job it made,
    before any check: those may answer otherwise now (a model gone, the executor busy)."""
    if idempotency_key is not None:
        replayed = store.replay(config, idempotency_key)
        if replayed is not None:
            response.headers["Location"] = str(
                request.url_for("get_experiment", job_id=replayed.id)
            )
            return replayed
    check_config(config, settings, catalog)
    admit(config, admission)
    submission = store.submit(config, idempotency_key)
    if submission.created:
        scheduler.wake()
        feed.notify()
    response.headers["Location"] = str(request.url_for("get_experiment", job_id=submission.job.id))
    return submission.job


# Every route that reads the store is a plain ``def`` (run in the thread pool), and the event
# streams read it through `run_in_threadpool`: a store call waits for its lock (a study's
# submission holds it while it inserts the runs) and for the disk, and on the event loop it
# would stall every request, /healthz included.


@router.get("", response_model=JobList, responses=problem_responses(400, 401, 422))
def list_experiments(
    store: StoreDep,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this state.")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[
        str | None,
        Query(description="next_cursor of the previous page; absent or empty: the first page"),
    ] = None,
    tag: Annotated[
        list[Annotated[str, StringConstraints(pattern=r"^[^=]+=")]] | None,
        Query(description="KEY=VALUE: only jobs with this tag; repeat for all of several"),
    ] = None,
    name: Annotated[
        str | None, Query(description="Only jobs whose name contains this (any case)")
    ] = None,
) -> JobList:
    """Jobs, newest first, a page at a time."""
    jobs, next_cursor = store.list_jobs(
        status=status, limit=limit, cursor=cursor, tags=_tag_filters(tag or []), name=name
    )
    return JobList(items=jobs, next_cursor=next_cursor)


@router.get("/{job_id}", response_model=Job, responses=problem_responses(400, 401, 404))
def get_experiment(job_id: JobId, store: StoreDep) -> Job:
    """The job: its status, progress, timestamps, headline figures and, if it failed, why."""
    return _job_or_404(store, job_id)


@router.delete(
    "/{job_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={
        204: {"description": "Deleted, with its result and timeseries"},
        **problem_responses(400, 401, 404, 409),
    },
)
def delete_experiment(
    job_id: JobId, store: StoreDep, results: ResultsDep, feed: FeedDep
) -> Response:
    """Remove a finished job and its files; 409 while it is queued or running."""
    job = _job_or_404(store, job_id)
    result_path = store.result_path(job.id)
    if store.delete_finished(job.id) is None:
        raise JobNotFound(f"no job with id {job_id!r}")
    results.delete(job.id, result_path)
    feed.notify()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{job_id}/config",
    response_model=ExperimentConfig,
    responses=problem_responses(400, 401, 404),
)
def get_config(job_id: JobId, store: StoreDep) -> ExperimentConfig:
    """The config the job was submitted with, defaults filled in, in any state (to run it
    again, say)."""
    config = store.config(_job_or_404(store, job_id).id)
    if config is None:
        raise JobNotFound(f"no job with id {job_id!r}")
    return config


@router.get(
    "/{job_id}/result",
    response_model=ExperimentResult,
    responses=problem_responses(400, 401, 404, 409, 500),
)
def get_result(job_id: JobId, store: StoreDep, results: ResultsDep) -> Response:
    """The result of a succeeded job; 409 while it is queued or running, or if it failed
    (with its reason)."""
    job = _succeeded_or_409(store, job_id, "result")
    path = store.result_path(job.id)
    try:
        content = results.read_bytes(path) if path else None
    except OSError as exc:
        raise ResultUnavailable(f"the result file of job {job.id} cannot be read: {exc}") from exc
    if content is None:
        raise ResultUnavailable(f"job {job.id} succeeded but no result file is recorded")
    return Response(content=content, media_type="application/json")


PARQUET_MEDIA_TYPE = "application/vnd.apache.parquet"
_BINARY = {"type": "string", "format": "binary"}


@router.get(
    "/{job_id}/timeseries",
    response_class=Response,
    responses={
        200: {
            "description": "The power timeline: one row per GPU per sampling round",
            "content": {
                PARQUET_MEDIA_TYPE: {"schema": _BINARY},
                "text/csv": {"schema": _BINARY},
            },
            "headers": {
                "Content-Disposition": {
                    "description": 'attachment; filename="<job id>.timeseries.<format>"',
                    "schema": {"type": "string"},
                }
            },
        },
        **problem_responses(400, 401, 404, 409, 422, 500),
    },
)
def get_timeseries(
    job_id: JobId,
    store: StoreDep,
    results: ResultsDep,
    format: Annotated[Literal["parquet", "csv"], Query(description="File format.")] = "parquet",
) -> Response:
    """The power timeline of a succeeded job, as Parquet (default) or CSV. Columns: t_s,
    device_uuid, power_t_s, power_w, temperature_c, sm_clock_mhz, memory_used_bytes,
    utilization_pct, clock_event_reasons, phase."""
    job_id = _succeeded_or_409(store, job_id, "timeseries").id
    path = results.timeseries_path(job_id)
    try:
        content = results.read_bytes(path)
    except FileNotFoundError:
        raise TimeseriesNotRecorded(
            f"no power timeseries was recorded for job {job_id} (the service measured no "
            "energy for it; see the result's warnings)"
        ) from None
    except OSError as exc:
        raise ResultUnavailable(f"the timeseries of job {job_id} cannot be read: {exc}") from exc
    if format == "csv":
        content = results.as_csv(content)
    media_type = "text/csv" if format == "csv" else PARQUET_MEDIA_TYPE
    disposition = f'attachment; filename="{job_id}.timeseries.{format}"'
    return Response(
        content=content, media_type=media_type, headers={"Content-Disposition": disposition}
    )


@router.post(
    "/{job_id}/cancel",
    response_model=Job,
    responses={
        200: {"description": "Queued: cancelled at once"},
        202: {"model": Job, "description": "Running: the experiment is being stopped"},
        **problem_responses(400, 401, 404, 409),
    },
)
def cancel_experiment(
    job_id: JobId, response: Response, store: StoreDep, scheduler: SchedulerDep, feed: FeedDep
) -> Job:
    """Cancel a queued job at once (200), or stop a running one (202; it ends ``cancelled``)."""
    job = _job_or_404(store, job_id)
    # A job may move on while this looks: claimed, or put back in line by a shutdown.
    for _ in range(_CANCEL_TRIES):
        if job.status is JobStatus.QUEUED:
            cancelled = store.cancel_queued(job.id)
            if cancelled is not None:
                feed.notify()
                return cancelled
        elif job.status is JobStatus.RUNNING:
            # Kept in the store first: a run that has not begun yet reads it when it does.
            if store.request_cancel(job.id):
                scheduler.request_cancel(job.id)
                response.status_code = status.HTTP_202_ACCEPTED
                return job
        else:
            break
        job = _job_or_404(store, job.id)
    if not job.status.terminal:
        raise JobStillActive(f"job {job.id} kept changing state; cancel it again")
    raise JobAlreadyFinished(f"job {job.id} already ended {job.status.value}")


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "Server-Sent Events until the job ends: a `job` event at each "
            "change (data: the Job as JSON), comments to keep the connection alive, and, if "
            "the server shuts down first, a last `shutdown` event (data: "
            '`{"detail": "..."}`).',
            "content": {"text/event-stream": {"schema": _SSE_EVENT}},
        },
        **problem_responses(400, 401, 404),
    },
)
def stream_events(
    job_id: JobId, store: StoreDep, feed: FeedDep, settings: SettingsDep
) -> StreamingResponse:
    """Server-Sent Events: the job at each change of status or progress, until it ends."""
    job_id = _job_or_404(store, job_id).id

    async def stream() -> AsyncIterator[str]:
        last = ""
        ids = EventIds()
        while True:
            waiter = feed.waiter()
            job = await run_in_threadpool(store.get, job_id)
            if job is None:
                return  # deleted
            text = job.model_dump_json()
            if text != last:
                yield ids.event("job", text)
                last = text
            if job.status.terminal:
                return
            if feed.closed:
                yield ids.shutdown()
                return
            if not await changed(waiter, settings.sse_keepalive_s):
                yield KEEP_ALIVE

    return event_stream(stream())
