"""Study methods of `Client` and `AsyncClient` (mixins over their request machinery)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal

import httpx
from pydantic import ValidationError

from llem_client._exceptions import APIConnectionError, APITimeoutError, ResponseFormatError
from llem_client._sse import SSEDecoder
from llem_client._studies import (
    Study,
    StudyDocument,
    StudyEvent,
    StudyList,
    StudyPareto,
    StudyResults,
    StudyRun,
    StudySummary,
)
from llem_client._transport import transport_error

if TYPE_CHECKING:
    from llem_client._client import _Policy

StudyLike = StudyDocument | Mapping[str, Any]
ResultsFormat = Literal["csv", "parquet"]
StudyCallback = Callable[[StudyEvent], None]


def _body(document: StudyLike) -> dict[str, Any]:
    if isinstance(document, StudyDocument):
        return document.model_dump(mode="json", exclude_unset=True)
    return dict(document)


def _event(name: str, data: str) -> StudyEvent | None:
    try:
        if name == "study":
            return StudyEvent(event="study", study=StudySummary.model_validate_json(data))
        if name == "run":
            return StudyEvent(event="run", run=StudyRun.model_validate_json(data))
    except ValidationError as exc:
        raise ResponseFormatError(f"a study event is not valid: {exc}") from exc
    return None


def _targets(**targets: float | None) -> dict[str, float]:
    return {name: value for name, value in targets.items() if value is not None}


class StudyMethods:
    """`Client`'s study methods."""

    _policy: _Policy
    _http: httpx.Client
    base_url: str

    if TYPE_CHECKING:

        def _request(
            self,
            method: str,
            path: str,
            *,
            json_body: Any = None,
            params: Mapping[str, Any] | None = None,
            headers: Mapping[str, str] | None = None,
        ) -> httpx.Response: ...

    def submit_study(self, document: StudyLike, *, idempotency_key: str | None = None) -> Study:
        """Submit a study; the server answers with its design, points, skipped points and
        planned order. Safe to retry (an ``Idempotency-Key`` is always sent)."""
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        response = self._request("POST", "/v1/studies", json_body=_body(document), headers=headers)
        return self._policy.parse(response, Study)

    def get_study(self, study_id: str) -> Study:
        return self._policy.parse(self._request("GET", f"/v1/studies/{study_id}"), Study)

    def list_studies(self, *, limit: int = 50, cursor: str | None = None) -> StudyList:
        params: dict[str, Any] = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        response = self._request("GET", "/v1/studies", params=params)
        return self._policy.parse(response, StudyList)

    def cancel_study(self, study_id: str) -> StudySummary:
        response = self._request("POST", f"/v1/studies/{study_id}/cancel")
        return self._policy.parse(response, StudySummary)

    def study_results(self, study_id: str) -> StudyResults:
        """The results so far as typed rows (``.to_pandas()`` with pandas installed)."""
        response = self._request("GET", f"/v1/studies/{study_id}/results")
        return self._policy.parse(response, StudyResults)

    def study_results_file(self, study_id: str, *, format: ResultsFormat = "csv") -> bytes:
        """The results table as CSV or Parquet bytes."""
        response = self._request(
            "GET", f"/v1/studies/{study_id}/results", params={"format": format}
        )
        self._policy.raise_for_status(response)
        return response.content

    def study_pareto(
        self,
        study_id: str,
        *,
        max_ttft_p90_s: float | None = None,
        max_itl_p90_s: float | None = None,
        min_tokens_per_s: float | None = None,
    ) -> StudyPareto:
        """The frontier, and the lowest-energy point that meets the targets (or the closest)."""
        params = _targets(
            max_ttft_p90_s=max_ttft_p90_s,
            max_itl_p90_s=max_itl_p90_s,
            min_tokens_per_s=min_tokens_per_s,
        )
        response = self._request("GET", f"/v1/studies/{study_id}/pareto", params=params)
        return self._policy.parse(response, StudyPareto)

    def study_events(
        self, study_id: str, *, read_timeout_s: float | None = 60.0
    ) -> Iterator[StudyEvent]:
        """The study's events (each changed run, then the summary) until it ends."""
        timeout = httpx.Timeout(self._http.timeout.connect, read=read_timeout_s)
        try:
            with self._http.stream(
                "GET", f"/v1/studies/{study_id}/events", timeout=timeout
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    self._policy.raise_for_status(response)
                decoder = SSEDecoder()
                for line in response.iter_lines():
                    sse = decoder.feed(line)
                    event = _event(sse.event, sse.data) if sse is not None else None
                    if event is not None:
                        yield event
        except httpx.TransportError as exc:
            raise transport_error(exc, self.base_url) from exc

    def wait_study(
        self,
        study_id: str,
        *,
        timeout: float | None = None,
        on_update: StudyCallback | None = None,
        poll_interval_s: float = 1.0,
        max_poll_interval_s: float = 15.0,
    ) -> Study:
        """Block until the study ends; return it. Raises `APITimeoutError` past ``timeout``.

        Follows the event stream. A study outlives a restart of the server (its interrupted
        run is queued again), so while the server is down or shutting down this keeps
        trying, with backoff from ``poll_interval_s`` to ``max_poll_interval_s``, until the
        study ends or ``timeout`` passes; the last connection error is then the timeout's
        cause. ``timeout=None`` waits for as long as that takes."""
        deadline = None if timeout is None else time.monotonic() + timeout
        waits = _Backoff(poll_interval_s, max_poll_interval_s)
        error: Exception | None = None
        while True:
            try:
                for event in self.study_events(study_id, read_timeout_s=_cap(deadline)):
                    if on_update is not None:
                        on_update(event)
                    if event.study is not None and event.study.status.terminal:
                        break
                study = self.get_study(study_id)  # the stream ended: the study, or a shutdown
            except APIConnectionError as exc:  # timeouts too: down, or restarting
                error = exc
            except ResponseFormatError as exc:
                error = exc  # a stream cut mid-event
            else:
                if study.status.terminal:
                    return study
                waits.reset()
            if deadline is not None and time.monotonic() >= deadline:
                raise APITimeoutError(f"study {study_id} not finished after {timeout} s") from error
            time.sleep(waits.next(deadline))


class AsyncStudyMethods:
    """`AsyncClient`'s study methods."""

    _policy: _Policy
    _http: httpx.AsyncClient
    base_url: str

    if TYPE_CHECKING:

        async def _request(
            self,
            method: str,
            path: str,
            *,
            json_body: Any = None,
            params: Mapping[str, Any] | None = None,
            headers: Mapping[str, str] | None = None,
        ) -> httpx.Response: ...

    async def submit_study(
        self, document: StudyLike, *, idempotency_key: str | None = None
    ) -> Study:
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        response = await self._request(
            "POST", "/v1/studies", json_body=_body(document), headers=headers
        )
        return self._policy.parse(response, Study)

    async def get_study(self, study_id: str) -> Study:
        return self._policy.parse(await self._request("GET", f"/v1/studies/{study_id}"), Study)

    async def list_studies(self, *, limit: int = 50, cursor: str | None = None) -> StudyList:
        params: dict[str, Any] = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        response = await self._request("GET", "/v1/studies", params=params)
        return self._policy.parse(response, StudyList)

    async def cancel_study(self, study_id: str) -> StudySummary:
        response = await self._request("POST", f"/v1/studies/{study_id}/cancel")
        return self._policy.parse(response, StudySummary)

    async def study_results(self, study_id: str) -> StudyResults:
        response = await self._request("GET", f"/v1/studies/{study_id}/results")
        return self._policy.parse(response, StudyResults)

    async def study_results_file(self, study_id: str, *, format: ResultsFormat = "csv") -> bytes:
        response = await self._request(
            "GET", f"/v1/studies/{study_id}/results", params={"format": format}
        )
        self._policy.raise_for_status(response)
        return response.content

    async def study_pareto(
        self,
        study_id: str,
        *,
        max_ttft_p90_s: float | None = None,
        max_itl_p90_s: float | None = None,
        min_tokens_per_s: float | None = None,
    ) -> StudyPareto:
        params = _targets(
            max_ttft_p90_s=max_ttft_p90_s,
            max_itl_p90_s=max_itl_p90_s,
            min_tokens_per_s=min_tokens_per_s,
        )
        response = await self._request("GET", f"/v1/studies/{study_id}/pareto", params=params)
        return self._policy.parse(response, StudyPareto)

    async def study_events(
        self, study_id: str, *, read_timeout_s: float | None = 60.0
    ) -> AsyncIterator[StudyEvent]:
        timeout = httpx.Timeout(self._http.timeout.connect, read=read_timeout_s)
        try:
            async with self._http.stream(
                "GET", f"/v1/studies/{study_id}/events", timeout=timeout
            ) as response:
                if response.status_code >= 400:
                    await response.aread()
                    self._policy.raise_for_status(response)
                decoder = SSEDecoder()
                async for line in response.aiter_lines():
                    sse = decoder.feed(line)
                    event = _event(sse.event, sse.data) if sse is not None else None
                    if event is not None:
                        yield event
        except httpx.TransportError as exc:
            raise transport_error(exc, self.base_url) from exc

    async def wait_study(
        self,
        study_id: str,
        *,
        timeout: float | None = None,
        on_update: StudyCallback | None = None,
        poll_interval_s: float = 1.0,
        max_poll_interval_s: float = 15.0,
    ) -> Study:
        """`Client.wait_study`, awaitable."""
        deadline = None if timeout is None else time.monotonic() + timeout
        waits = _Backoff(poll_interval_s, max_poll_interval_s)
        error: Exception | None = None
        while True:
            try:
                async for event in self.study_events(study_id, read_timeout_s=_cap(deadline)):
                    if on_update is not None:
                        on_update(event)
                    if event.study is not None and event.study.status.terminal:
                        break
                study = await self.get_study(study_id)
            except APIConnectionError as exc:
                error = exc
            except ResponseFormatError as exc:
                error = exc
            else:
                if study.status.terminal:
                    return study
                waits.reset()
            if deadline is not None and time.monotonic() >= deadline:
                raise APITimeoutError(f"study {study_id} not finished after {timeout} s") from error
            await asyncio.sleep(waits.next(deadline))


class _Backoff:
    """Waits between tries that grow by half each time up to a cap, and never past a
    deadline."""

    def __init__(self, first_s: float, cap_s: float) -> None:
        self.first_s = first_s
        self.cap_s = max(cap_s, first_s)
        self.wait_s = first_s

    def reset(self) -> None:
        self.wait_s = self.first_s

    def next(self, deadline: float | None) -> float:
        wait_s = self.wait_s
        self.wait_s = min(self.wait_s * 1.5, self.cap_s)
        if deadline is not None:
            wait_s = min(wait_s, max(0.0, deadline - time.monotonic()))
        return wait_s


def _cap(deadline: float | None, cap: float = 60.0) -> float:
    if deadline is None:
        return cap
    return max(0.001, min(cap, deadline - time.monotonic()))
