"""`AsyncClient`: the asynchronous twin of `llem_client.Client`, over the same request policy
(`llem_client._client._Policy`)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx

from llem_client._client import (
    DEFAULT_TIMEOUT_S,
    RETRY_STATUSES,
    ConfigLike,
    JobCallback,
    TimeseriesFormat,
    _expired,
    _permanent,
    _Policy,
    _remaining,
)
from llem_client._client_studies import AsyncStudyMethods
from llem_client._exceptions import (
    APIConnectionError,
    APITimeoutError,
    ResponseFormatError,
    ServerShutdownError,
)
from llem_client._jobs import Job, JobList, JobStatus, ModelList, ServiceInfo
from llem_client._results import ExperimentResult
from llem_client._sse import SSEDecoder
from llem_client._transport import transport_error as _transport_error


class AsyncClient(AsyncStudyMethods):
    """The asynchronous twin of `Client`; same arguments, same methods, awaitable."""

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_retries: int = 2,
        retry_backoff_s: float = 0.5,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._policy = _Policy(base_url, token, max_retries, retry_backoff_s)
        self.base_url = self._policy.base_url
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=self._policy.headers,
            timeout=timeout,
            transport=transport,
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        safe = self._policy.retry_safe(method, headers)
        attempt = 0
        while True:
            try:
                response = await self._http.request(
                    method, path, json=json_body, params=params, headers=headers
                )
            except httpx.TransportError as exc:
                if not safe or attempt >= self._policy.max_retries or _permanent(exc):
                    raise _transport_error(exc, self.base_url) from exc
                await asyncio.sleep(self._policy.delay_s(attempt, None))
            else:
                if not (
                    safe
                    and response.status_code in RETRY_STATUSES
                    and attempt < self._policy.max_retries
                ):
                    return response
                await asyncio.sleep(self._policy.delay_s(attempt, response))
            attempt += 1

    async def submit(self, config: ConfigLike, *, idempotency_key: str | None = None) -> Job:
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        body = self._policy.submit_body(config)
        response = await self._request("POST", "/v1/experiments", json_body=body, headers=headers)
        return self._policy.parse(response, Job)

    async def get(self, job_id: str) -> Job:
        return self._policy.parse(await self._request("GET", f"/v1/experiments/{job_id}"), Job)

    async def result(self, job_id: str) -> ExperimentResult:
        response = await self._request("GET", f"/v1/experiments/{job_id}/result")
        return self._policy.parse(response, ExperimentResult)

    async def timeseries(self, job_id: str, *, format: TimeseriesFormat = "parquet") -> bytes:
        """The power timeline of a succeeded job: Parquet (default) or CSV bytes."""
        response = await self._request(
            "GET", f"/v1/experiments/{job_id}/timeseries", params={"format": format}
        )
        self._policy.raise_for_status(response)
        return response.content

    async def list(
        self,
        *,
        status: JobStatus | str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        tags: Mapping[str, str] | None = None,
        name: str | None = None,
    ) -> JobList:
        params = self._policy.list_params(status, limit, cursor, tags, name)
        response = await self._request("GET", "/v1/experiments", params=params)
        return self._policy.parse(response, JobList)

    async def cancel(self, job_id: str) -> Job:
        response = await self._request("POST", f"/v1/experiments/{job_id}/cancel")
        return self._policy.parse(response, Job)

    async def delete(self, job_id: str) -> None:
        response = await self._request("DELETE", f"/v1/experiments/{job_id}")
        self._policy.raise_for_status(response)

    async def info(self) -> ServiceInfo:
        return self._policy.parse(await self._request("GET", "/v1/info"), ServiceInfo)

    async def models(self) -> ModelList:
        return self._policy.parse(await self._request("GET", "/v1/models"), ModelList)

    async def events(
        self, job_id: str, *, read_timeout_s: float | None = 60.0
    ) -> AsyncIterator[Job]:
        timeout = httpx.Timeout(self._http.timeout.connect, read=read_timeout_s)
        path = f"/v1/experiments/{job_id}/events"
        try:
            async with self._http.stream("GET", path, timeout=timeout) as response:
                if response.status_code >= 400:
                    await response.aread()
                    self._policy.raise_for_status(response)
                decoder = SSEDecoder()
                async for line in response.aiter_lines():
                    event = decoder.feed(line)
                    job = self._policy.event_job(event) if event is not None else None
                    if job is not None:
                        yield job
        except httpx.TransportError as exc:
            raise _transport_error(exc, self.base_url) from exc

    async def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        on_update: JobCallback | None = None,
        use_events: bool = True,
        poll_interval_s: float = 0.5,
        max_poll_interval_s: float = 5.0,
    ) -> Job:
        deadline = None if timeout is None else time.monotonic() + timeout
        if use_events:
            try:
                async for job in self.events(job_id, read_timeout_s=_remaining(deadline, cap=60.0)):
                    if on_update is not None:
                        on_update(job)
                    if job.status.terminal:
                        return job
            except ServerShutdownError as exc:
                try:
                    polled: Job | None = await self.get(job_id)
                    error: Exception | None = None
                except APIConnectionError as poll_error:
                    polled, error = None, poll_error
                if polled is not None and on_update is not None:
                    on_update(polled)
                return self._policy.after_stream(job_id, str(exc), polled, error)
            except APITimeoutError:
                if _expired(deadline):
                    raise APITimeoutError(f"job {job_id} not finished after {timeout} s") from None
            except (APIConnectionError, ResponseFormatError):
                pass
        interval = poll_interval_s
        while True:
            job = await self.get(job_id)
            if on_update is not None:
                on_update(job)
            if job.status.terminal:
                return job
            if _expired(deadline):
                raise APITimeoutError(f"job {job_id} not finished after {timeout} s")
            await asyncio.sleep(min(interval, _remaining(deadline, cap=interval) or interval))
            interval = min(interval * 1.5, max_poll_interval_s)
