"""No route calls the job store on the event loop.

A store call waits for the store's lock (held by a study's submission while it inserts the
runs) and for the disk; made on the event loop it stalls every request in flight, /healthz
included. Routes that read the store are plain ``def`` routes (FastAPI runs them in its thread
pool) and the event streams read it through the thread pool.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from llem_service.jobs.events import running_loop

from tests.conftest import build_app, make_config


class LoopWatchingStore:
    """The app's store, noting each call made on an event loop's thread."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.on_loop: list[str] = []

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._inner, name)
        if not callable(found):
            return found

        def call(*args: Any, **kwargs: Any) -> Any:
            if running_loop() is not None:
                self.on_loop.append(name)
            return found(*args, **kwargs)

        return call


def wait_until_ended(http: TestClient, path: str, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found: dict[str, Any] = http.get(path).json()
        if found["status"] in ("succeeded", "failed", "cancelled"):
            return found
        time.sleep(0.05)
    raise AssertionError(f"{path} did not end")


def test_every_route_reads_the_store_off_the_event_loop(tmp_path: Path) -> None:
    app = build_app(tmp_path / "data")
    body = make_config().model_dump(mode="json", exclude_unset=True)
    study = {"name": "s", "base": body, "sweep": {"n_prompts": [1, 2]}}
    with TestClient(app) as http:
        # What the routes reach (get_store, get_study_store); the scheduler keeps the real one.
        watcher = app.state.store = LoopWatchingStore(app.state.store)
        job_id = http.post("/v1/experiments", json=body).json()["id"]
        study_id = http.post("/v1/studies", json=study).json()["id"]
        job = wait_until_ended(http, f"/v1/experiments/{job_id}")
        wait_until_ended(http, f"/v1/studies/{study_id}")
        answers = [
            http.get("/v1/experiments"),
            http.get(f"/v1/experiments/{job_id[:8]}"),
            http.get(f"/v1/experiments/{job_id}/config"),
            http.get(f"/v1/experiments/{job_id}/result"),
            http.get(f"/v1/experiments/{job_id}/events"),
            http.get("/v1/studies"),
            http.get(f"/v1/studies/{study_id}"),
            http.get(f"/v1/studies/{study_id}/events"),
            http.get(f"/v1/studies/{study_id}/results"),
            http.get(f"/v1/studies/{study_id}/pareto"),
            http.post(f"/v1/studies/{study_id}/cancel"),
            http.post(f"/v1/experiments/{job_id}/cancel"),
            http.delete(f"/v1/experiments/{job_id}"),
        ]

    assert job["status"] == "succeeded", job
    assert [a.status_code for a in answers] == [200] * 10 + [409, 409, 204]
    assert "event: job" in answers[4].text
    assert "event: study" in answers[7].text
    assert watcher.on_loop == []
