"""``/v1/experiments``: submit, list, read, cancel, stream and fetch results."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from llem_client import ExperimentConfig, ExperimentResult, Job, JobList, JobStatus

from llem_service.api.admission import admit
from llem_service.api.problems import problem_responses
from llem_service.deps import (
    AdmissionDep,
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
    ResultUnavailable,
    TimeseriesNotRecorded,
)
from llem_service.jobs.store import JobStore

router = APIRouter(prefix="/experiments", tags=["experiments"])


def _job_or_404(store: JobStore, job_id: str) -> Job:
    job = store.get(job_id)
    if job is None:
        raise JobNotFound(f"no job with id {job_id!r}")
    return job


def _succeeded_or_409(store: JobStore, job_id: str, what: str) -> None:
    """404 for an unknown job, 409 unless it succeeded (``what`` names the missing thing)."""
    job = _job_or_404(store, job_id)
    if not job.status.terminal:
        raise JobNotFinished(f"job {job_id} is {job.status.value}; its {what} is not ready yet")
    if job.status is not JobStatus.SUCCEEDED:
        raise JobHasNoResult(f"job {job_id} ended {job.status.value} and has no {what}")


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Job,
    responses=problem_responses(400, 401, 413, 422, 503),
    summary="Submit an experiment",
)
def submit_experiment(
    config: ExperimentConfig,
    request: Request,
    response: Response,
    store: StoreDep,
    scheduler: SchedulerDep,
    feed: FeedDep,
    admission: AdmissionDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            max_length=255,
            description="Repeat a request with the same key and body to get the same job.",
        ),
    ] = None,
) -> Job:
    """Validate the config and queue it. Returns the job at once; it runs in order."""
    admit(config, admission)
    submission = store.submit(config, idempotency_key)
    if submission.created:
        scheduler.wake()
        feed.notify()
    response.headers["Location"] = str(request.url_for("get_experiment", job_id=submission.job.id))
    return submission.job


@router.get("", response_model=JobList, responses=problem_responses(400, 401, 422))
async def list_experiments(
    store: StoreDep,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this state.")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> JobList:
    """Jobs, newest first, a page at a time."""
    jobs, next_cursor = store.list_jobs(status=status, limit=limit, cursor=cursor)
    return JobList(items=jobs, next_cursor=next_cursor)


@router.get("/{job_id}", response_model=Job, responses=problem_responses(401, 404))
async def get_experiment(job_id: str, store: StoreDep) -> Job:
    return _job_or_404(store, job_id)


@router.get(
    "/{job_id}/config", response_model=ExperimentConfig, responses=problem_responses(401, 404)
)
def get_config(job_id: str, store: StoreDep) -> ExperimentConfig:
    """The config the job was submitted with, defaults filled in, in any state (to run it
    again, say)."""
    config = store.config(job_id)
    if config is None:
        raise JobNotFound(f"no job with id {job_id!r}")
    return config


@router.get(
    "/{job_id}/result",
    response_model=ExperimentResult,
    responses=problem_responses(401, 404, 409, 500),
)
def get_result(job_id: str, store: StoreDep, results: ResultsDep) -> Response:
    """The result of a succeeded job; 409 while it is queued or running, or if it failed."""
    _succeeded_or_409(store, job_id, "result")
    path = store.result_path(job_id)
    try:
        content = results.read_bytes(path) if path else None
    except OSError as exc:
        raise ResultUnavailable(f"the result file of job {job_id} cannot be read: {exc}") from exc
    if content is None:
        raise ResultUnavailable(f"job {job_id} succeeded but no result file is recorded")
    return Response(content=content, media_type="application/json")


PARQUET_MEDIA_TYPE = "application/vnd.apache.parquet"


@router.get(
    "/{job_id}/timeseries",
    response_class=Response,
    responses={
        200: {
            "description": "The power timeline: one row per GPU per sampling round",
            "content": {PARQUET_MEDIA_TYPE: {}, "text/csv": {}},
        },
        **problem_responses(401, 404, 409, 422, 500),
    },
)
def get_timeseries(
    job_id: str,
    store: StoreDep,
    results: ResultsDep,
    format: Annotated[Literal["parquet", "csv"], Query(description="File format.")] = "parquet",
) -> Response:
    """The power timeline of a succeeded job, as Parquet (default) or CSV. Columns: t_s,
    device_uuid, power_t_s, power_w, temperature_c, sm_clock_mhz, memory_used_bytes,
    utilization_pct, clock_event_reasons, phase."""
    _succeeded_or_409(store, job_id, "timeseries")
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
        **problem_responses(401, 404, 409),
        202: {"model": Job, "description": "Running: the experiment is being stopped"},
    },
)
def cancel_experiment(
    job_id: str, response: Response, store: StoreDep, scheduler: SchedulerDep, feed: FeedDep
) -> Job:
    """Cancel a queued job at once (200), or stop a running one (202; it ends ``cancelled``)."""
    job = _job_or_404(store, job_id)
    if job.status is JobStatus.QUEUED:
        cancelled = store.cancel_queued(job_id)
        if cancelled is not None:
            feed.notify()
            return cancelled
        job = _job_or_404(store, job_id)  # claimed in between: it is running now
    if job.status is JobStatus.RUNNING:
        scheduler.request_cancel(job_id)
        response.status_code = status.HTTP_202_ACCEPTED
        return job
    raise JobAlreadyFinished(f"job {job_id} already ended {job.status.value}")


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={
        **problem_responses(401, 404),
        200: {
            "description": "A stream of `job` events (data: the Job as JSON) until the job "
            "ends; comments keep the connection alive.",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
    },
)
async def stream_events(
    job_id: str, store: StoreDep, feed: FeedDep, settings: SettingsDep
) -> StreamingResponse:
    """Server-Sent Events: the job at each change of status or progress, until it ends."""
    _job_or_404(store, job_id)

    async def stream() -> AsyncIterator[str]:
        last = ""
        event_id = 0
        while True:
            waiter = feed.waiter()
            job = store.get(job_id)
            if job is None:
                return
            text = job.model_dump_json()
            if text != last:
                event_id += 1
                yield f"event: job\nid: {event_id}\ndata: {text}\n\n"
                last = text
            if job.status.terminal or feed.closed:
                return
            try:
                await asyncio.wait_for(waiter.wait(), timeout=settings.sse_keepalive_s)
            except asyncio.TimeoutError:
                yield ": keep-alive\n\n"

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
