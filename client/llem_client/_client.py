"""The HTTP client: `Client` (sync) and `AsyncClient`, twins over one request policy.

Retries only where repeating is safe: GETs, and POSTs that carry an ``Idempotency-Key`` (every
`submit` sends one, generated unless given). Connection errors and 408/429/502/503/504 are
retried with exponential backoff, honouring ``Retry-After``.
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from llem_client._client_studies import StudyMethods
from llem_client._config import ExperimentConfig
from llem_client._exceptions import (
    APIConnectionError,
    APITimeoutError,
    ResponseFormatError,
    ServerShutdownError,
    error_for_status,
)
from llem_client._jobs import Job, JobList, JobStatus, ModelList, ProblemDetail, ServiceInfo
from llem_client._results import ExperimentResult
from llem_client._sse import ServerSentEvent, SSEDecoder
from llem_client._transport import transport_error as _transport_error
from llem_client._version import __version__

DEFAULT_SERVER = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT_S = 30.0
RETRY_STATUSES = frozenset({408, 429, 502, 503, 504})
MAX_RETRY_AFTER_S = 30.0

ModelT = TypeVar("ModelT", bound=BaseModel)
ConfigLike = ExperimentConfig | Mapping[str, Any]
TimeseriesFormat = Literal["parquet", "csv"]
JobCallback = Callable[[Job], None]


class _Policy:
    """What both clients share: addressing, headers, retry decisions and response parsing."""

    def __init__(
        self,
        base_url: str | None,
        token: str | None,
        max_retries: int,
        retry_backoff_s: float,
    ) -> None:
        self.base_url = (base_url or os.environ.get("LLEM_SERVER") or DEFAULT_SERVER).rstrip("/")
        token = token if token is not None else os.environ.get("LLEM_TOKEN")
        self.headers = {"User-Agent": f"llem-client/{__version__}", "Accept": "application/json"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.max_retries = max_retries
        self.retry_backoff_s = retry_backoff_s

    @staticmethod
    def retry_safe(method: str, headers: Mapping[str, str] | None) -> bool:
        return method == "GET" or (method == "POST" and "Idempotency-Key" in (headers or {}))

    def delay_s(self, attempt: int, response: httpx.Response | None) -> float:
        if response is not None:
            retry_after = response.headers.get("Retry-After")
            if retry_after is not None:
                try:
                    return min(max(float(retry_after), 0.0), MAX_RETRY_AFTER_S)
                except ValueError:
                    pass  # an HTTP date: fall back to backoff
        base = self.retry_backoff_s * (2**attempt)
        return float(base + random.uniform(0, base / 2))

    @staticmethod
    def raise_for_status(response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        try:
            problem: ProblemDetail | None = ProblemDetail.model_validate(response.json())
        except (ValueError, ValidationError):
            problem = None  # not a problem document: a proxy's page, say
        if problem is None:
            problem = ProblemDetail(
                title=response.reason_phrase or "Error",
                status=response.status_code,
                detail=response.text[:500],
            )
        raise error_for_status(response, problem)

    @classmethod
    def parse(cls, response: httpx.Response, model: type[ModelT]) -> ModelT:
        cls.raise_for_status(response)
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            raise ResponseFormatError(
                f"{response.request.method} {response.request.url.path}: the answer is not a "
                f"valid {model.__name__} ({exc.error_count()} errors); is this an llem server "
                "of the same schema version?"
            ) from exc

    @staticmethod
    def submit_body(config: ConfigLike) -> dict[str, Any]:
        if isinstance(config, ExperimentConfig):
            return config.model_dump(mode="json", exclude_unset=True)
        return dict(config)

    @staticmethod
    def job_from_event(data: str) -> Job:
        try:
            return Job.model_validate_json(data)
        except ValidationError as exc:
            raise ResponseFormatError(f"an event is not a valid Job: {exc}") from exc

    def event_job(self, event: ServerSentEvent) -> Job | None:
        """The Job of a ``job`` event; None for other events.

        Raises:
            ServerShutdownError: The server said it is shutting down (its last event).
        """
        if event.event == "job":
            return self.job_from_event(event.data)
        if event.event == "shutdown":
            try:
                detail = str(json.loads(event.data).get("detail", "shutting down"))
            except (ValueError, AttributeError):
                detail = "shutting down"
            raise ServerShutdownError(f"the server at {self.base_url} said: {detail}")
        return None

    @staticmethod
    def list_params(
        status: JobStatus | str | None,
        limit: int,
        cursor: str | None,
        tags: Mapping[str, str] | None,
        name: str | None,
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit}
        if status is not None:
            params["status"] = JobStatus(status).value
        if cursor:
            params["cursor"] = cursor
        if tags:
            params["tag"] = [f"{key}={value}" for key, value in tags.items()]
        if name:
            params["name"] = name
        return params

    def after_stream(
        self, job_id: str, why: str, polled: Job | None, error: Exception | None
    ) -> Job:
        """What `wait` does once the event stream ended before the job did, having polled
        the job once: return it if it ended, else raise an error that says what is known.

        Args:
            why: Why the stream ended, as it was told ("the server ... said: shutting down").
            polled: The job as the one poll found it; None if the poll failed with ``error``.
        """
        if polled is not None and polled.status.terminal:
            return polled
        if polled is not None:
            raise ServerShutdownError(
                f"{why}; job {polled.id} is {polled.status.value} there and carries on when "
                "the server is back",
                polled,
            )
        raise APIConnectionError(
            f"{why}, and the job could not be read after it ({error}); job {job_id} may "
            "have ended or may run when the server is back"
        )


class Client(StudyMethods):
    """A synchronous llem client.

    Args:
        base_url: The server, e.g. ``http://gpu-host:8000``; default ``$LLEM_SERVER``, else
            ``http://127.0.0.1:8000``.
        token: Bearer token; default ``$LLEM_TOKEN``.
        timeout: Seconds per request (not per `wait`).
        max_retries: Retries of a retry-safe request.
        retry_backoff_s: First backoff delay; doubled at each retry.
        transport: An httpx transport, e.g. ``httpx.ASGITransport(app)`` for in-process tests.
    """

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_retries: int = 2,
        retry_backoff_s: float = 0.5,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._policy = _Policy(base_url, token, max_retries, retry_backoff_s)
        self.base_url = self._policy.base_url
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=self._policy.headers,
            timeout=timeout,
            transport=transport,
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(
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
                response = self._http.request(
                    method, path, json=json_body, params=params, headers=headers
                )
            except httpx.TransportError as exc:
                if not safe or attempt >= self._policy.max_retries or _permanent(exc):
                    raise _transport_error(exc, self.base_url) from exc
                time.sleep(self._policy.delay_s(attempt, None))
            else:
                if not (
                    safe
                    and response.status_code in RETRY_STATUSES
                    and attempt < self._policy.max_retries
                ):
                    return response
                time.sleep(self._policy.delay_s(attempt, response))
            attempt += 1

    def submit(self, config: ConfigLike, *, idempotency_key: str | None = None) -> Job:
        """Queue an experiment. The key makes the POST safe to retry; one is generated if absent."""
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        body = self._policy.submit_body(config)
        response = self._request("POST", "/v1/experiments", json_body=body, headers=headers)
        return self._policy.parse(response, Job)

    def get(self, job_id: str) -> Job:
        return self._policy.parse(self._request("GET", f"/v1/experiments/{job_id}"), Job)

    def result(self, job_id: str) -> ExperimentResult:
        response = self._request("GET", f"/v1/experiments/{job_id}/result")
        return self._policy.parse(response, ExperimentResult)

    def timeseries(self, job_id: str, *, format: TimeseriesFormat = "parquet") -> bytes:
        """The power timeline of a succeeded job: Parquet (default) or CSV bytes."""
        response = self._request(
            "GET", f"/v1/experiments/{job_id}/timeseries", params={"format": format}
        )
        self._policy.raise_for_status(response)
        return response.content

    def list(
        self,
        *,
        status: JobStatus | str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        tags: Mapping[str, str] | None = None,
        name: str | None = None,
    ) -> JobList:
        """A page of jobs, newest first; ``tags`` (all of them) and ``name`` (a substring,
        any case) filter them."""
        params = self._policy.list_params(status, limit, cursor, tags, name)
        return self._policy.parse(self._request("GET", "/v1/experiments", params=params), JobList)

    def cancel(self, job_id: str) -> Job:
        response = self._request("POST", f"/v1/experiments/{job_id}/cancel")
        return self._policy.parse(response, Job)

    def delete(self, job_id: str) -> None:
        """Remove a finished job and its files (`ConflictError` while it is active)."""
        self._policy.raise_for_status(self._request("DELETE", f"/v1/experiments/{job_id}"))

    def info(self) -> ServiceInfo:
        return self._policy.parse(self._request("GET", "/v1/info"), ServiceInfo)

    def models(self) -> ModelList:
        """The models the server has: under its LLEM_MODEL_ROOTS and in its hub cache."""
        return self._policy.parse(self._request("GET", "/v1/models"), ModelList)

    def events(self, job_id: str, *, read_timeout_s: float | None = 60.0) -> Iterator[Job]:
        """The job's state at each change, from the SSE stream, until a terminal state."""
        timeout = httpx.Timeout(self._http.timeout.connect, read=read_timeout_s)
        path = f"/v1/experiments/{job_id}/events"
        try:
            with self._http.stream("GET", path, timeout=timeout) as response:
                if response.status_code >= 400:
                    response.read()
                    self._policy.raise_for_status(response)
                decoder = SSEDecoder()
                for line in response.iter_lines():
                    event = decoder.feed(line)
                    job = self._policy.event_job(event) if event is not None else None
                    if job is not None:
                        yield job
        except httpx.TransportError as exc:
            raise _transport_error(exc, self.base_url) from exc

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        on_update: JobCallback | None = None,
        use_events: bool = True,
        poll_interval_s: float = 0.5,
        max_poll_interval_s: float = 5.0,
    ) -> Job:
        """Block until the job is terminal; return it. Raises `APITimeoutError` past ``timeout``.

        Follows the SSE stream; if the stream breaks or ends early, polls with backoff. If the
        server says it is shutting down, the job is polled once: returned if it ended, else
        `ServerShutdownError` says its state (or `APIConnectionError`, if it cannot be read).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if use_events:
            try:
                for job in self.events(job_id, read_timeout_s=_remaining(deadline, cap=60.0)):
                    if on_update is not None:
                        on_update(job)
                    if job.status.terminal:
                        return job
            except ServerShutdownError as exc:
                try:
                    polled: Job | None = self.get(job_id)
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
                pass  # fall back to polling
        interval = poll_interval_s
        while True:
            job = self.get(job_id)
            if on_update is not None:
                on_update(job)
            if job.status.terminal:
                return job
            if _expired(deadline):
                raise APITimeoutError(f"job {job_id} not finished after {timeout} s")
            time.sleep(min(interval, _remaining(deadline, cap=interval) or interval))
            interval = min(interval * 1.5, max_poll_interval_s)


def _permanent(exc: httpx.TransportError) -> bool:
    """A transport error that retrying cannot fix (a URL without http://, say)."""
    return isinstance(exc, httpx.UnsupportedProtocol)


def _remaining(deadline: float | None, *, cap: float) -> float:
    if deadline is None:
        return cap
    return max(0.001, min(cap, deadline - time.monotonic()))


def _expired(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline
