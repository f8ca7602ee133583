"""The client's request policy: retries only when safe, typed errors, SSE decoding.

A scripted `httpx.MockTransport` stands in for the network: it answers from a list, in order.
"""

from __future__ import annotations

import httpx
import pytest
from llem_client import (
    APIConnectionError,
    APIStatusError,
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


def client_for(transport: ScriptedTransport, **kwargs: object) -> Client:
    return Client("http://llem.test", transport=transport, retry_backoff_s=0, **kwargs)  # type: ignore[arg-type]


def test_get_is_retried_after_a_connection_error_and_a_503() -> None:
    transport = ScriptedTransport(
        httpx.ConnectError, problem(503), httpx.Response(200, json=job_json())
    )

    job = client_for(transport).get("j1")

    assert job.id == "j1"
    assert len(transport.requests) == 3


def test_retries_stop_at_max_retries() -> None:
    transport = ScriptedTransport(problem(503), problem(503), problem(503))

    with pytest.raises(ServerError):
        client_for(transport, max_retries=2).get("j1")

    assert len(transport.requests) == 3


def test_submit_sends_an_idempotency_key_and_reuses_it_on_retry() -> None:
    transport = ScriptedTransport(httpx.ReadTimeout, httpx.Response(202, json=job_json()))

    client_for(transport).submit(make_config())

    keys = [r.headers.get("Idempotency-Key") for r in transport.requests]
    assert keys[0] is not None
    assert keys[0] == keys[1]


def test_cancel_is_not_retried() -> None:
    transport = ScriptedTransport(httpx.ConnectError, httpx.Response(200, json=job_json()))

    with pytest.raises(APIConnectionError, match="cannot reach"):
        client_for(transport).cancel("j1")

    assert len(transport.requests) == 1


def test_retry_after_is_honoured_and_capped() -> None:
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
    status: int, error: type[APIStatusError]
) -> None:
    transport = ScriptedTransport(problem(status, "Scripted", "what went wrong"))

    with pytest.raises(error) as info:
        client_for(transport, max_retries=0).get("j1")

    assert info.value.problem.detail == "what went wrong"
    assert info.value.status_code == status


def test_a_non_problem_error_body_still_gives_a_typed_error() -> None:
    transport = ScriptedTransport(httpx.Response(502, text="<html>Bad gateway</html>"))

    with pytest.raises(ServerError) as info:
        client_for(transport, max_retries=0).get("j1")

    assert "Bad gateway" in info.value.problem.detail


def test_an_answer_outside_the_contract_is_a_format_error() -> None:
    transport = ScriptedTransport(httpx.Response(200, json={"hello": "world"}))

    with pytest.raises(ResponseFormatError, match="not a valid Job"):
        client_for(transport).get("j1")


def test_token_and_server_fall_back_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLEM_SERVER", "http://gpu-host:9000/")
    monkeypatch.setenv("LLEM_TOKEN", "t0ken")

    client = Client()

    assert client.base_url == "http://gpu-host:9000"
    assert client._http.headers["Authorization"] == "Bearer t0ken"


def test_sse_decoder_reads_events_and_skips_comments() -> None:
    decoder = SSEDecoder()
    lines = [": keep-alive", "", "event: job", "id: 1", 'data: {"a":', "data: 1}", ""]

    events = [e for e in map(decoder.feed, lines) if e is not None]

    assert events == [ServerSentEvent(event="job", data='{"a":\n1}', id="1")]


def test_a_url_without_a_scheme_fails_at_once() -> None:
    transport = ScriptedTransport(httpx.UnsupportedProtocol, httpx.Response(200, json=job_json()))

    with pytest.raises(APIConnectionError):
        client_for(transport).get("j1")

    assert len(transport.requests) == 1
