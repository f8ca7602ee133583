"""``/metrics`` through the real app: request counts and latencies, jobs, outcomes, energy by
model, and live GPU readings from the running experiment's own sampler."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import build_app, make_config
from tests.fakes import FAKE_DEVICE, FakeInferenceBackend, fake_meter

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def make_http(tmp_path: Path) -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    def make(**kwargs: Any) -> TestClient:
        client = TestClient(build_app(tmp_path / f"data{len(clients)}", **kwargs))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def scrape(http: TestClient) -> Samples:
    response = http.get("/metrics")
    assert response.status_code == 200
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples: Samples, metric: str, **labels: str) -> float | None:
    return samples.get((metric, frozenset(labels.items())))


def submit(http: TestClient, **overrides: Any) -> str:
    response = http.post("/v1/experiments", json=make_config(**overrides).model_dump(mode="json"))
    assert response.status_code == 202
    return str(response.json()["id"])


def wait(http: TestClient, job_id: str, statuses: set[str], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while http.get(f"/v1/experiments/{job_id}").json()["status"] not in statuses:
        assert time.monotonic() < deadline, f"job {job_id} never reached {statuses}"
        time.sleep(0.05)


def test_requests_are_counted_by_route_template_and_status(
    make_http: Callable[..., TestClient],
) -> None:
    http = make_http()
    http.get("/v1/experiments/abc")
    http.get("/v1/experiments/def")
    http.get("/nowhere")
    http.get("/ui/static/app.css")
    http.get("/ui/experiments/abc")  # a path parameter that spans segments

    samples = scrape(http)

    route = "/v1/experiments/{job_id}"
    assert value(samples, "llem_http_requests_total", route=route, method="GET", status="404") == 2
    assert (
        value(samples, "llem_http_requests_total", route="unmatched", method="GET", status="404")
        == 1
    )
    assert (
        value(
            samples,
            "llem_http_requests_total",
            route="/ui/static/{path}",
            method="GET",
            status="200",
        )
        == 1
    )
    assert (
        value(samples, "llem_http_request_duration_seconds_count", route=route, method="GET") == 2
    )
    assert not any("abc" in str(labels) for _, labels in samples)  # no job id becomes a label


def test_job_gauges_outcomes_and_energy_by_model(make_http: Callable[..., TestClient]) -> None:
    http = make_http(backend=FakeInferenceBackend(fail_in="run"))
    failed = submit(http, model="model-a")
    wait(http, failed, {"failed"})
    ok = make_http()
    first = submit(ok, model="model-b")
    wait(ok, first, {"succeeded"})
    result = ok.get(f"/v1/experiments/{first}/result").json()

    failing, succeeding = scrape(http), scrape(ok)

    assert (
        value(failing, "llem_experiments_finished_total", outcome="failed", failure="backend-error")
        == 1
    )
    assert value(failing, "llem_jobs", status="failed") == 1
    assert value(failing, "llem_jobs", status="succeeded") == 0
    assert (
        value(succeeding, "llem_experiments_finished_total", outcome="succeeded", failure="") == 1
    )
    energy = value(succeeding, "llem_measured_energy_joules_total", model="model-b")
    assert energy == pytest.approx(result["energy"]["energy_j"])
    tokens = value(succeeding, "llem_measured_output_tokens_total", model="model-b")
    assert tokens == result["output_tokens"]
    assert value(succeeding, "llem_queue_length") == 0


def test_a_running_experiment_shows_its_phase_and_feeds_the_gpu_gauges(
    make_http: Callable[..., TestClient],
) -> None:
    http = make_http(backend=FakeInferenceBackend(sleep_s=30), meter=fake_meter(power_w=321.0))
    running = submit(http, model="model-c", n_prompts=4, batch_size=1)
    queued = submit(http)
    deadline = time.monotonic() + 30
    while True:
        samples = scrape(http)
        age = [labels for (name, labels) in samples if name == "llem_gpu_reading_age_seconds"]
        if any(("source", "experiment") in labels for labels in age):
            break
        assert time.monotonic() < deadline, "no reading came from the experiment"
        time.sleep(0.1)

    gpu = {"uuid": FAKE_DEVICE.uuid, "name": FAKE_DEVICE.name}
    assert value(samples, "llem_gpu_power_watts", **gpu) == pytest.approx(321.0)
    assert value(samples, "llem_gpu_temperature_celsius", **gpu) is not None
    assert (
        value(samples, "llem_running_job_phase", job_id=running, model="model-c", phase="measuring")
        == 1
    )
    assert value(samples, "llem_queue_length") == 1
    assert value(samples, "llem_jobs", status="running") == 1
    http.post(f"/v1/experiments/{running}/cancel")
    http.post(f"/v1/experiments/{queued}/cancel")


def test_the_idle_poll_feeds_the_gauges_between_runs(make_http: Callable[..., TestClient]) -> None:
    http = make_http(metrics_poll_s=0.05)
    deadline = time.monotonic() + 10
    while (
        value(scrape(http), "llem_gpu_power_watts", uuid=FAKE_DEVICE.uuid, name=FAKE_DEVICE.name)
        is None
    ):
        assert time.monotonic() < deadline, "the idle poll never read the GPU"
        time.sleep(0.05)

    samples = scrape(http)

    labels = {"uuid": FAKE_DEVICE.uuid, "name": FAKE_DEVICE.name, "source": "idle_poll"}
    assert value(samples, "llem_gpu_reading_age_seconds", **labels) is not None
    assert value(
        samples, "llem_gpu_power_watts", uuid=FAKE_DEVICE.uuid, name=FAKE_DEVICE.name
    ) == pytest.approx(60.0)
