"""Graceful shutdown with clients attached: event streams end with a final event, the running
experiment is stopped and marked interrupted within the cancel grace, and a waiting client
reports the job's real state instead of "cannot reach the server"."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from llem_client import APIConnectionError, Client, Job, ServerShutdownError

from tests.conftest import LiveServer, make_config
from tests.fakes import FakeInferenceBackend
from tests.server_process import ServerProcess


def read_events(url: str, out: list[tuple[str, dict[str, Any]]]) -> None:
    """Every (event, data) of an SSE stream until it ends."""
    event = ""
    with httpx.stream("GET", url, timeout=60) as response:
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                out.append((event, json.loads(line.removeprefix("data: "))))


def wait_status(client: Client, job_id: str, status: str) -> None:
    deadline = time.monotonic() + 20
    while client.get(job_id).status.value != status:
        assert time.monotonic() < deadline, f"{job_id} never {status}"
        time.sleep(0.02)


def test_streams_end_with_a_final_event_and_the_running_job_is_interrupted(
    start_server: Callable[..., LiveServer],
) -> None:
    server = start_server(backend=FakeInferenceBackend(sleep_s=60))
    with Client(server.base_url) as client:
        running = client.submit(make_config()).id
        queued = client.submit(make_config()).id
        wait_status(client, running, "running")
    streams: dict[str, list[tuple[str, dict[str, Any]]]] = {running: [], queued: []}
    readers = [
        threading.Thread(
            target=read_events,
            args=(f"{server.base_url}/v1/experiments/{job_id}/events", events),
        )
        for job_id, events in streams.items()
    ]
    for reader in readers:
        reader.start()
    time.sleep(0.3)  # both streams open and past their first event

    started = time.monotonic()
    server.stop()
    for reader in readers:
        reader.join(timeout=30)
    took_s = time.monotonic() - started

    assert not any(reader.is_alive() for reader in readers)
    event, last = streams[running][-1]
    assert event == "job"
    assert last["status"] == "failed"
    assert last["error"]["type"] == "urn:llem:problem:interrupted"
    assert last["error"]["detail"] == "the server shut down during the run"
    assert streams[queued][-1] == ("shutdown", {"detail": "the server is shutting down"})
    assert streams[queued][-2][1]["status"] == "queued"
    # The cancel grace is 2 s (tests.conftest.build_app); uvicorn's own wait never started.
    assert took_s < 10


def test_a_waiting_client_reports_the_real_state(
    start_server: Callable[..., LiveServer],
) -> None:
    server = start_server(backend=FakeInferenceBackend(sleep_s=60))
    outcomes: dict[str, Job | Exception] = {}
    with Client(server.base_url, retry_backoff_s=0.05) as client:
        running = client.submit(make_config()).id
        queued = client.submit(make_config()).id
        wait_status(client, running, "running")

        def wait(job_id: str) -> None:
            try:
                outcomes[job_id] = client.wait(job_id)
            except Exception as exc:
                outcomes[job_id] = exc

        waiters = [threading.Thread(target=wait, args=(job,)) for job in (running, queued)]
        for waiter in waiters:
            waiter.start()
        time.sleep(0.3)
        server.stop()
        for waiter in waiters:
            waiter.join(timeout=30)

    interrupted = outcomes[running]
    assert isinstance(interrupted, Job)
    assert interrupted.status.value == "failed"
    assert interrupted.error is not None
    assert interrupted.error.detail == "the server shut down during the run"
    # The one poll after the notice reaches the server if a kept-alive connection is still
    # open when it is made; either way the error says what is known, never just "cannot reach".
    gone = outcomes[queued]
    said = f"the server at {server.base_url} said: the server is shutting down"
    if isinstance(gone, ServerShutdownError):
        assert gone.job is not None
        assert gone.job.status.value == "queued"
        assert str(gone) == (
            f"{said}; job {queued} is queued there and carries on when the server is back"
        )
    else:
        assert isinstance(gone, APIConnectionError)
        assert str(gone).startswith(f"{said}, and the job could not be read after it")
        assert f"job {queued} may have ended or may run when the server is back" in str(gone)


@pytest.mark.slow
def test_sigterm_to_llem_service_with_a_watching_cli(
    server_process: Callable[..., ServerProcess],
) -> None:
    server = server_process(cancel_grace_s="1")
    with Client(server.url) as client:
        job = client.submit(make_config(tags={"fake.sleep_s": "60"}))
        wait_status(client, job.id, "running")
    watcher = subprocess.Popen(
        [sys.executable, "-m", "llem_client.cli", "--server", server.url, "watch", job.id[:8]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    # Its first progress line is printed just before it opens the event stream (a few ms).
    assert watcher.stderr is not None
    first = watcher.stderr.readline()
    assert first.startswith(f"job {job.id[:8]}: "), first
    time.sleep(1.0)

    server.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    server_code = server.process.wait(timeout=30)  # type: ignore[union-attr]
    _, rest = watcher.communicate(timeout=30)
    err = first + rest

    assert server_code in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
    assert watcher.returncode == 1, err
    assert err.splitlines()[-1] == (
        f"llem-client: job {job.id} failed: Interrupted: the server shut down during the run"
    )
    assert "cannot reach" not in err
