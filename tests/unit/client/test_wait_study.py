"""`wait_study` follows a study across a restart of the server: a study outlives it (its
interrupted run is queued again), so a wait keeps trying until the study ends or its timeout
passes. Both clients (the ``client_for`` fixture)."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
from llem_client import APIConnectionError, APITimeoutError, Study, StudySummary

from tests.unit.client import test_client
from tests.unit.client.test_client import ClientFor, ScriptedTransport

#: Both clients, `Client` and `AsyncClient`, from the policy tests.
client_for = test_client.client_for

SUMMARY: dict[str, Any] = {
    "id": "s1",
    "name": "sweep",
    "status": "running",
    "design_hash": "0123456789abcdef",
    "created_at": "2026-01-01T00:00:00Z",
    "started_at": "2026-01-01T00:00:01Z",
    "finished_at": None,
    "n_points": 1,
    "n_skipped": 0,
    "cycles": 1,
    "n_runs": 1,
    "counts": {"queued": 0, "running": 1, "succeeded": 0, "failed": 0, "cancelled": 0},
}


def study_json(status: str) -> dict[str, Any]:
    return {
        **SUMMARY,
        "status": status,
        "order": "interleaved",
        "seed": None,
        "isolation": "reuse",
        "on_invalid": "skip",
        "cooldown": {},
        "swept_fields": [],
        "points": [],
        "skipped": [],
        "runs": [],
    }


def stream(*events: tuple[str, dict[str, Any]]) -> httpx.Response:
    text = "".join(
        f"event: {name}\nid: {i}\ndata: {json.dumps(data)}\n\n"
        for i, (name, data) in enumerate(events, 1)
    )
    return httpx.Response(200, text=text, headers={"content-type": "text/event-stream"})


SHUTDOWN = ("shutdown", {"detail": "the server is shutting down"})


def test_a_wait_outlasts_a_restart_and_returns_the_study_once_it_ends(
    client_for: ClientFor,
) -> None:
    transport = ScriptedTransport(
        stream(("study", SUMMARY), SHUTDOWN),  # the server stops
        httpx.ConnectError,  # reading the study: down
        httpx.ConnectError,  # following again: still down
        httpx.ConnectError,
        stream(("study", {**SUMMARY, "status": "succeeded"})),  # back, and the study ends
        httpx.Response(200, json=study_json("succeeded")),
    )
    client = client_for(transport, max_retries=0)
    updates: list[Any] = []

    done = client.wait_study("s1", timeout=30, on_update=updates.append, poll_interval_s=0.01)

    assert isinstance(done, Study)
    assert done.status.value == "succeeded"
    assert [u.study.status.value for u in updates] == ["running", "succeeded"]
    assert transport.answers == []
    Study.model_validate(study_json("running"))  # the script speaks the wire
    StudySummary.model_validate(SUMMARY)


def test_a_server_that_stays_down_ends_the_wait_at_its_timeout_with_the_cause(
    client_for: ClientFor,
) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    client = client_for(httpx.MockTransport(refuse), max_retries=0)
    started = time.monotonic()

    with pytest.raises(APITimeoutError, match=r"s1 not finished after 0\.3 s") as raised:
        client.wait_study("s1", timeout=0.3, poll_interval_s=0.01, max_poll_interval_s=0.05)

    assert time.monotonic() - started >= 0.3
    assert isinstance(raised.value.__cause__, APIConnectionError)
