"""The HTTP API through the real app (TestClient), with fakes behind the seams."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from llem_client import Job, JobStatus
from llem_service.app import create_app
from llem_service.deps import get_energy_meter, replace
from llem_service.energy import NullEnergyMeter
from llem_service.settings import Settings

from tests.conftest import build_app, make_config
from tests.fakes import FakeInferenceBackend, fake_meter

PROBLEM = "application/problem+json"


@pytest.fixture
def make_http(tmp_path: Path) -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    def make(**kwargs: Any) -> TestClient:
        client = TestClient(build_app(tmp_path / "data", **kwargs))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def http(make_http: Callable[..., TestClient]) -> TestClient:
    return make_http()


@pytest.fixture
def slow_http(make_http: Callable[..., TestClient]) -> TestClient:
    """A server whose experiments run for 30 s, so jobs stay queued or running."""
    return make_http(backend=FakeInferenceBackend(sleep_s=30))


def body(**overrides: Any) -> dict[str, Any]:
    return make_config(**overrides).model_dump(mode="json", exclude_unset=True)


def wait_for(http: TestClient, job_id: str, statuses: set[str], timeout_s: float = 20) -> Job:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = Job.model_validate(http.get(f"/v1/experiments/{job_id}").json())
        if job.status.value in statuses:
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} never reached {statuses}")


def assert_problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    problem: dict[str, Any] = response.json()
    assert {"type", "title", "status", "detail"} <= problem.keys()
    assert problem["status"] == status
    return problem


def test_healthz_answers_without_touching_the_store(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path / "data"))

    response = TestClient(app).get("/healthz")  # no lifespan: no store, no scheduler

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_submit_returns_202_the_job_and_its_location(http: TestClient) -> None:
    response = http.post("/v1/experiments", json=body())

    assert response.status_code == 202
    job = Job.model_validate(response.json())
    assert job.status in {JobStatus.QUEUED, JobStatus.RUNNING}
    assert response.headers["location"].endswith(f"/v1/experiments/{job.id}")
    assert http.get(response.headers["location"]).json()["id"] == job.id


def test_a_submitted_experiment_succeeds_and_has_a_result(http: TestClient) -> None:
    job_id = http.post("/v1/experiments", json=body()).json()["id"]

    job = wait_for(http, job_id, {"succeeded", "failed"})
    result = http.get(f"/v1/experiments/{job_id}/result")

    assert job.status is JobStatus.SUCCEEDED, job.error
    assert result.status_code == 200
    assert result.json()["experiment_id"] == job_id
    assert result.json()["measurement_config_hash"] == job.config_hash


def test_idempotency_key_with_the_same_body_returns_the_same_job(slow_http: TestClient) -> None:
    headers = {"Idempotency-Key": "abc-123"}

    first = slow_http.post("/v1/experiments", json=body(), headers=headers).json()
    again = slow_http.post("/v1/experiments", json=body(), headers=headers).json()
    other = slow_http.post("/v1/experiments", json=body(batch_size=4), headers=headers)

    assert again["id"] == first["id"]
    problem = assert_problem(other, 422)
    assert "abc-123" in problem["detail"]


def test_invalid_config_is_a_422_problem_naming_each_field(http: TestClient) -> None:
    response = http.post(
        "/v1/experiments",
        json={
            "model": "gpt2",
            "n_prompts": 0,
            "pytorch": {"load_in_4bit": True, "load_in_8bit": True},
        },
    )

    problem = assert_problem(response, 422)
    locations = [tuple(e["loc"]) for e in problem["errors"]]
    assert ("body", "n_prompts") in locations
    assert ("body", "pytorch") in locations
    assert "pytorch.load_in_4bit and pytorch.load_in_8bit" in problem["detail"]
    assert "Value error" not in problem["detail"]


@pytest.mark.parametrize(
    ("section", "named"),
    [
        ({"repeats": {"min": 5, "max": 3}}, ["repeats.min (5) exceeds repeats.max (3)"]),
        ({"repeats": {"target_ci_rel": 0}}, ["repeats.object.target_ci_rel"]),
        ({"repeats": {"target_ci_rel": -0.1}}, ["repeats.object.target_ci_rel"]),
        (
            {"baseline": {"enabled": False, "when": "before_and_after"}},
            ["baseline.when='before_and_after' requires baseline.enabled=true"],
        ),
    ],
)
def test_a_self_contradicting_energy_config_is_refused_naming_its_fields(
    http: TestClient, section: dict[str, object], named: list[str]
) -> None:
    response = http.post("/v1/experiments", json={"model": "gpt2", **section})

    problem = assert_problem(response, 422)
    for text in named:
        assert text in problem["detail"]
    assert http.get("/v1/experiments").json()["items"] == []  # nothing was queued


def test_malformed_json_is_a_422_problem(http: TestClient) -> None:
    response = http.post(
        "/v1/experiments", content=b"{not json", headers={"content-type": "application/json"}
    )

    assert_problem(response, 422)


def test_unknown_job_is_a_404_problem_on_every_job_route(http: TestClient) -> None:
    for method, path in [
        ("GET", "/v1/experiments/nope"),
        ("GET", "/v1/experiments/nope/result"),
        ("POST", "/v1/experiments/nope/cancel"),
        ("GET", "/v1/experiments/nope/events"),
    ]:
        problem = assert_problem(http.request(method, path), 404)
        assert problem["title"] == "Job not found"


def test_unknown_route_is_a_404_problem(http: TestClient) -> None:
    assert_problem(http.get("/v1/nothing-here"), 404)


def test_result_is_409_while_the_job_runs(slow_http: TestClient) -> None:
    job_id = slow_http.post("/v1/experiments", json=body()).json()["id"]

    problem = assert_problem(slow_http.get(f"/v1/experiments/{job_id}/result"), 409)

    assert "not ready" in problem["detail"]


def test_result_of_a_failed_job_is_409(make_http: Callable[..., TestClient]) -> None:
    http = make_http(backend=FakeInferenceBackend(fail_in="load"))
    job_id = http.post("/v1/experiments", json=body()).json()["id"]
    wait_for(http, job_id, {"failed"})

    problem = assert_problem(http.get(f"/v1/experiments/{job_id}/result"), 409)

    assert "failed" in problem["detail"]


def test_cancelling_a_queued_job_is_immediate(slow_http: TestClient) -> None:
    running = slow_http.post("/v1/experiments", json=body()).json()["id"]
    queued = slow_http.post("/v1/experiments", json=body()).json()["id"]
    wait_for(slow_http, running, {"running"})

    response = slow_http.post(f"/v1/experiments/{queued}/cancel")

    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    again = slow_http.post(f"/v1/experiments/{queued}/cancel")
    assert_problem(again, 409)


def test_list_is_newest_first_with_filter_and_cursor(slow_http: TestClient) -> None:
    ids = [slow_http.post("/v1/experiments", json=body()).json()["id"] for _ in range(3)]

    first = slow_http.get("/v1/experiments", params={"limit": 2}).json()
    second = slow_http.get(
        "/v1/experiments", params={"limit": 2, "cursor": first["next_cursor"]}
    ).json()
    queued = slow_http.get("/v1/experiments", params={"status": "queued"}).json()

    assert [j["id"] for j in first["items"] + second["items"]] == ids[::-1]
    assert second["next_cursor"] is None
    assert {j["status"] for j in queued["items"]} == {"queued"}


def test_bad_list_parameters_are_problems(http: TestClient) -> None:
    assert_problem(http.get("/v1/experiments", params={"status": "sleeping"}), 422)
    assert_problem(http.get("/v1/experiments", params={"limit": 0}), 422)
    assert_problem(http.get("/v1/experiments", params={"cursor": "forged"}), 400)


def test_info_reports_versions_devices_meter_and_queue(slow_http: TestClient) -> None:
    for _ in range(3):
        slow_http.post("/v1/experiments", json=body())

    info = slow_http.get("/v1/info").json()

    assert info["schema_version"] == "1"
    assert info["energy_meter"] == "nvml"
    assert info["energy_meter_available"] is True
    assert info["devices"][0]["uuid"].startswith("GPU-")
    assert info["queue_length"] + (info["running_job"] is not None) == 3


def test_info_says_why_energy_is_unavailable(make_http: Callable[..., TestClient]) -> None:
    http = make_http(meter=NullEnergyMeter("no NVIDIA GPU on this host"))

    info = http.get("/v1/info").json()

    assert info["energy_meter_available"] is False
    assert info["energy_meter_reason"] == "no NVIDIA GPU on this host"


def test_body_over_the_limit_is_413(make_http: Callable[..., TestClient]) -> None:
    http = make_http(max_body_bytes=1000)
    config = body(prompts={"source": "inline", "prompts": ["x" * 2000]})

    assert_problem(http.post("/v1/experiments", json=config), 413)


def test_with_a_token_every_v1_route_needs_it(make_http: Callable[..., TestClient]) -> None:
    http = make_http(token="s3cret")

    denied = http.get("/v1/info")
    wrong = http.get("/v1/info", headers={"Authorization": "Bearer nope"})
    allowed = http.get("/v1/info", headers={"Authorization": "Bearer s3cret"})

    assert_problem(denied, 401)
    assert denied.headers["www-authenticate"].startswith("Bearer")
    assert_problem(wrong, 401)
    assert allowed.status_code == 200
    assert http.get("/healthz").status_code == 200


def test_openapi_describes_every_route_and_its_problems(http: TestClient) -> None:
    doc = http.get("/openapi.json").json()
    paths = doc["paths"]

    assert set(paths) == {
        "/healthz",
        "/v1/info",
        "/v1/baselines",
        "/v1/experiments",
        "/v1/experiments/{job_id}",
        "/v1/experiments/{job_id}/config",
        "/v1/experiments/{job_id}/result",
        "/v1/experiments/{job_id}/cancel",
        "/v1/experiments/{job_id}/events",
        "/v1/experiments/{job_id}/timeseries",
        "/v1/models",
        "/v1/studies",
        "/v1/studies/{study_id}",
        "/v1/studies/{study_id}/cancel",
        "/v1/studies/{study_id}/events",
        "/v1/studies/{study_id}/results",
        "/v1/studies/{study_id}/pareto",
    }
    submit = paths["/v1/experiments"]["post"]["responses"]
    problem_ref = submit["422"]["content"][PROBLEM]["schema"]["$ref"]
    assert problem_ref.endswith("/ProblemDetail")
    assert "404" in paths["/v1/experiments/{job_id}/result"]["get"]["responses"]
    assert "409" in paths["/v1/experiments/{job_id}/result"]["get"]["responses"]
    events = paths["/v1/experiments/{job_id}/events"]["get"]["responses"]["200"]
    assert "text/event-stream" in events["content"]
    timeseries = paths["/v1/experiments/{job_id}/timeseries"]["get"]["responses"]
    assert set(timeseries["200"]["content"]) == {"application/vnd.apache.parquet", "text/csv"}
    assert PROBLEM in timeseries["404"]["content"]
    results = paths["/v1/studies/{study_id}/results"]["get"]["responses"]["200"]["content"]
    assert set(results) == {"application/json", "application/vnd.apache.parquet", "text/csv"}


def test_a_replaced_seam_reaches_the_api(tmp_path: Path) -> None:
    app: FastAPI = create_app(Settings(data_dir=tmp_path / "data"))
    replace(app, get_energy_meter, lambda: NullEnergyMeter("overridden"))

    with TestClient(app) as http:
        info = http.get("/v1/info").json()

    assert info["energy_meter_reason"] == "overridden"


def test_the_config_of_a_job_in_any_state_can_be_run_again(slow_http: TestClient) -> None:
    sent = body(name="again", batch_size=3)
    job_id = slow_http.post("/v1/experiments", json=sent).json()["id"]
    slow_http.post(f"/v1/experiments/{job_id}/cancel")

    config = slow_http.get(f"/v1/experiments/{job_id}/config").json()
    again = slow_http.post("/v1/experiments", json=config)

    assert config["name"] == "again"
    assert config["batch_size"] == 3
    assert again.status_code == 202
    assert (
        again.json()["config_hash"]
        == slow_http.get(f"/v1/experiments/{job_id}").json()["config_hash"]
    )
    assert slow_http.get("/v1/experiments/nope/config").status_code == 404


def test_baselines_list_what_the_service_keeps(make_http: Callable[..., TestClient]) -> None:
    http = make_http(meter=fake_meter(power_w=60.0))  # idle: a clean baseline, kept
    assert http.get("/v1/baselines").json() == {"items": []}
    config = body(baseline={"enabled": True, "duration_s": 0.2})
    job = wait_for(http, http.post("/v1/experiments", json=config).json()["id"], {"succeeded"})
    result = http.get(f"/v1/experiments/{job.id}/result").json()

    (kept,) = http.get("/v1/baselines").json()["items"]

    (measured,) = result["energy"]["baselines"]
    assert kept["device_uuid"] == measured["device_uuid"]
    assert kept["power_w"] == measured["power_w"]["value"]
    # the idle window's own part: the result adds the sensor's systematic part for its GPU
    assert kept["random_uncertainty_w"] == pytest.approx(measured["power_w"]["random"])
    assert kept["method"] == measured["method"]
    assert 0 <= kept["age_s"] < 60
