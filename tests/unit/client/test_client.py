"""The client's request policy: retries only when safe, typed errors, SSE decoding.

Every policy test runs against both `Client` and `AsyncClient` (the ``client_for`` fixture):
the twins share the policy but each has its own request loop. A scripted
`httpx.MockTransport` stands in for the network: it answers from a list, in order.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from llem_client import (
    APIConnectionError,
    APIStatusError,
    AsyncClient,
    AuthenticationError,
    Client,
    ConflictError,
    NotFoundError,
    ResponseFormatError,
    ServerError,
    UnprocessableEntityError,
)
from llem_client._sse import ServerSentEvent, SSEDecoder

from tests.conftest import make_config


class ScriptedTransport(httpx.MockTransport):
    """Answers each request with the next scripted answer, and records the requests."""

    def __init__(self, *answers: httpx.Response | type[Exception]) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []
        super().__init__(self._answer)

    def _answer(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, type):
            raise answer("scripted failure", request=request)  # type: ignore[call-arg]
        return answer


def problem(status: int, title: str = "Problem", detail: str = "") -> httpx.Response:
    return httpx.Response(
        status,
        json={"type": "about:blank", "title": title, "status": status, "detail": detail},
        headers={"content-type": "application/problem+json"},
    )


def job_json(status: str = "queued") -> dict[str, object]:
    return {
        "id": "j1",
        "status": status,
        "model": "m",
        "config_hash": "0123456789abcdef",
        "created_at": "2026-01-01T00:00:00Z",
        "progress": {"phase": status},
    }


class Blocking:
    """An `AsyncClient` whose coroutine methods are called like `Client`'s (run to the end on
    a loop of its own), so one test body checks both clients."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client
        self._loop = asyncio.new_event_loop()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if inspect.iscoroutinefunction(attribute):
            return lambda *args, **kwargs: self._loop.run_until_complete(attribute(*args, **kwargs))
        return attribute

    def close(self) -> None:
        self._loop.run_until_complete(self._client.aclose())
        self._loop.close()


ClientFor = Callable[..., Any]


@pytest.fixture(params=["Client", "AsyncClient"])
def client_for(request: pytest.FixtureRequest) -> Iterator[ClientFor]:
    """``client_for(transport, **kwargs)``: a sync client, or an async one driven to the end."""
    made: list[Any] = []

    def make(transport: ScriptedTransport, **kwargs: Any) -> Any:
        if request.param == "Client":
            client: Any = Client(
                "http://llem.test", transport=transport, retry_backoff_s=0, **kwargs
            )
        else:
            client = Blocking(
                AsyncClient("http://llem.test", transport=transport, retry_backoff_s=0, **kwargs)
            )
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def test_get_is_retried_after_a_connection_error_and_a_503(client_for: ClientFor) -> None:
    transport = ScriptedTransport(
        httpx.ConnectError, problem(503), httpx.Response(200, json=job_json())
    )

    job = client_for(transport).get("j1")

    assert job.id == "j1"
    assert len(transport.requests) == 3


def test_retries_stop_at_max_retries(client_for: ClientFor) -> None:
    transport = ScriptedTransport(problem(503), problem(503), problem(503))

    with pytest.raises(ServerError):
        client_for(transport, max_retries=2).get("j1")

    assert len(transport.requests) == 3


def test_submit_sends_an_idempotency_key_and_reuses_it_on_retry(client_for: ClientFor) -> None:
    transport = ScriptedTransport(httpx.ReadTimeout, httpx.Response(202, json=job_json()))

    client_for(transport).submit(make_config())

    keys = [r.headers.get("Idempotency-Key") for r in transport.requests]
    assert keys[0] is not None
    assert keys[0] == keys[1]


def test_cancel_is_not_retried(client_for: ClientFor) -> None:
    transport = ScriptedTransport(httpx.ConnectError, httpx.Response(200, json=job_json()))

    with pytest.raises(APIConnectionError, match="cannot reach"):
        client_for(transport).cancel("j1")

    assert len(transport.requests) == 1


def test_retry_after_is_honoured_and_capped(client_for: ClientFor) -> None:
    policy = client_for(ScriptedTransport())._policy

    assert policy.delay_s(0, httpx.Response(429, headers={"Retry-After": "7"})) == 7.0
    assert policy.delay_s(0, httpx.Response(503, headers={"Retry-After": "3600"})) == 30.0


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (401, AuthenticationError),
        (404, NotFoundError),
        (409, ConflictError),
        (422, UnprocessableEntityError),
        (500, ServerError),
    ],
)
def test_each_status_maps_to_its_error_with_the_problem(
    status: int, error: type[APIStatusError], client_for: ClientFor
) -> None:
    transport = ScriptedTransport(problem(status, "Scripted", "what went wrong"))

    with pytest.raises(error) as info:
        client_for(transport, max_retries=0).get("j1")

    assert info.value.problem.detail == "what went wrong"
    assert info.value.status_code == status


def test_a_non_problem_error_body_still_gives_a_typed_error(client_for: ClientFor) -> None:
    transport = ScriptedTransport(httpx.Response(502, text="<html>Bad gateway</html>"))

    with pytest.raises(ServerError) as info:
        client_for(transport, max_retries=0).get("j1")

    assert "Bad gateway" in info.value.problem.detail


def test_an_answer_outside_the_contract_is_a_format_error(client_for: ClientFor) -> None:
    transport = ScriptedTransport(httpx.Response(200, json={"hello": "world"}))

    with pytest.raises(ResponseFormatError, match="not a valid Job"):
        client_for(transport).get("j1")


@pytest.mark.parametrize("cls", [Client, AsyncClient])
def test_token_and_server_fall_back_to_the_environment(
    monkeypatch: pytest.MonkeyPatch, cls: type[Client] | type[AsyncClient]
) -> None:
    monkeypatch.setenv("LLEM_SERVER", "http://gpu-host:9000/")
    monkeypatch.setenv("LLEM_TOKEN", "t0ken")

    client = cls()

    assert client.base_url == "http://gpu-host:9000"
    assert client._http.headers["Authorization"] == "Bearer t0ken"


def test_sse_decoder_reads_events_and_skips_comments() -> None:
    decoder = SSEDecoder()
    lines = [": keep-alive", "", "event: job", "id: 1", 'data: {"a":', "data: 1}", ""]

    events = [e for e in map(decoder.feed, lines) if e is not None]

    assert events == [ServerSentEvent(event="job", data='{"a":\n1}', id="1")]


def test_a_url_without_a_scheme_fails_at_once(client_for: ClientFor) -> None:
    transport = ScriptedTransport(httpx.UnsupportedProtocol, httpx.Response(200, json=job_json()))

    with pytest.raises(APIConnectionError):
        client_for(transport).get("j1")

    assert len(transport.requests) == 1
