"""Job routes as a user of the CLI needs them: id prefixes, filters, headline figures, delete,
and the HTTP edges (empty cursor, OPTIONS, 405, unknown routes, 401 texts)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import build_app, make_config
from tests.fakes import FakeInferenceBackend

PROBLEM = "application/problem+json"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def http(data_dir: Path) -> Iterator[TestClient]:
    with TestClient(build_app(data_dir)) as client:
        yield client


def submit(http: TestClient, **overrides: Any) -> str:
    response = http.post("/v1/experiments", json=make_config(**overrides).model_dump(mode="json"))
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def wait_done(http: TestClient, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        job: dict[str, Any] = http.get(f"/v1/experiments/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.02)
    raise AssertionError(job_id)


def rename(data_dir: Path, old: str, new: str) -> None:
    """Give a job a chosen id, so two ids can share a prefix (uuid4s rarely do)."""
    with sqlite3.connect(data_dir / "jobs.sqlite3") as db:
        db.execute("UPDATE jobs SET id = ? WHERE id = ?", (new, old))


def test_a_unique_prefix_finds_the_job_on_every_route(http: TestClient) -> None:
    job_id = submit(http)
    wait_done(http, job_id)
    prefix = job_id[:8]

    assert http.get(f"/v1/experiments/{prefix}").json()["id"] == job_id
    assert http.get(f"/v1/experiments/{prefix}/result").json()["experiment_id"] == job_id
    assert http.get(f"/v1/experiments/{prefix}/timeseries").status_code == 200
    assert http.get(f"/v1/experiments/{prefix.upper()}").json()["id"] == job_id


def test_an_ambiguous_prefix_lists_the_candidates(http: TestClient, data_dir: Path) -> None:
    ids = [submit(http) for _ in range(3)]
    for job_id in ids:
        wait_done(http, job_id)
    rename(data_dir, ids[0], "abcd0001" + "0" * 24)
    rename(data_dir, ids[1], "abcd0002" + "0" * 24)

    response = http.get("/v1/experiments/abcd")

    assert response.status_code == 400
    problem = response.json()
    assert problem["type"] == "urn:llem:problem:ambiguous-job-id"
    assert problem["candidates"] == ["abcd0001" + "0" * 24, "abcd0002" + "0" * 24]
    assert http.get("/v1/experiments/abcd0002").json()["id"] == "abcd0002" + "0" * 24


def test_a_prefix_shorter_than_four_is_not_looked_up(http: TestClient) -> None:
    job_id = submit(http)

    response = http.get(f"/v1/experiments/{job_id[:3]}")

    assert response.status_code == 404
    assert "a prefix needs at least 4 characters" in response.json()["detail"]


def test_jobs_carry_tags_and_once_succeeded_their_headline_figures(http: TestClient) -> None:
    job_id = submit(http, tags={"sweep": "bs"})

    job = wait_done(http, job_id)

    assert job["tags"] == {"sweep": "bs"}
    assert job["metrics"]["tokens_per_second"] == 32.0  # the fake's 16 tokens over 0.5 s
    # Null when the energy's uncertainty is too wide to publish (the fake's window is short).
    energy = job["metrics"]["energy_per_output_token_j"]
    assert energy is None or energy >= 0


def test_list_filters_by_tag_and_name(http: TestClient) -> None:
    a = submit(http, name="llama-bs8", tags={"sweep": "bs", "gpu": "a100"})
    b = submit(http, name="llama-bs16", tags={"sweep": "bs"})
    c = submit(http, name="mistral", tags={"sweep": "len"})

    def ids(**params: Any) -> list[str]:
        response = http.get("/v1/experiments", params=params)
        assert response.status_code == 200, response.text
        return [job["id"] for job in response.json()["items"]]

    assert ids(tag="sweep=bs") == [b, a]
    assert ids(tag=["sweep=bs", "gpu=a100"]) == [a]
    assert ids(name="LLAMA") == [b, a]
    assert ids(name="mis", tag="sweep=len") == [c]
    assert ids(tag="sweep=nope") == []
    bad = http.get("/v1/experiments", params={"tag": "no-equals"})
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["loc"] == ["query", "tag", 0]


def test_an_empty_cursor_is_the_first_page(http: TestClient) -> None:
    job_id = submit(http)

    response = http.get("/v1/experiments?cursor=")

    assert response.status_code == 200
    assert [job["id"] for job in response.json()["items"]] == [job_id]


def test_delete_removes_a_finished_job_and_its_files(http: TestClient, data_dir: Path) -> None:
    job_id = submit(http)
    wait_done(http, job_id)
    files = sorted(p.name for p in (data_dir / "results").iterdir())
    assert files == [f"{job_id}.json", f"{job_id}.timeseries.parquet"]

    response = http.delete(f"/v1/experiments/{job_id[:8]}")

    assert response.status_code == 204
    assert response.content == b""
    assert list((data_dir / "results").iterdir()) == []
    assert http.get(f"/v1/experiments/{job_id}").status_code == 404
    assert http.delete(f"/v1/experiments/{job_id}").status_code == 404


def test_delete_refuses_an_active_job(data_dir: Path) -> None:
    with TestClient(build_app(data_dir, backend=FakeInferenceBackend(sleep_s=30))) as http:
        running = submit(http)
        queued = submit(http)

        for job_id in (running, queued):
            response = http.delete(f"/v1/experiments/{job_id}")
            assert response.status_code == 409
            assert response.headers["content-type"] == PROBLEM
            assert "cancel it before deleting it" in response.json()["detail"]
        http.post(f"/v1/experiments/{running}/cancel")


def test_the_result_of_a_failed_job_gives_the_reason(data_dir: Path) -> None:
    backend = FakeInferenceBackend(fail_in="load", error_message="weights are corrupt")
    with TestClient(build_app(data_dir, backend=backend)) as http:
        job_id = submit(http)
        wait_done(http, job_id)

        response = http.get(f"/v1/experiments/{job_id}/result")

    assert response.status_code == 409
    assert response.json()["detail"] == (
        f"job {job_id} ended failed (Experiment failed: weights are corrupt) and has no result"
    )


def test_options_and_405_list_every_method_of_the_path(http: TestClient) -> None:
    options = http.options("/v1/experiments")
    put = http.put("/v1/experiments")

    assert options.status_code == 204
    assert options.headers["allow"] == "GET, OPTIONS, POST"
    assert put.status_code == 405
    assert put.headers["allow"] == "GET, OPTIONS, POST"
    assert put.json()["type"] == "urn:llem:problem:method-not-allowed"
    assert http.options("/v1/experiments/abcd").headers["allow"] == "DELETE, GET, OPTIONS"
    assert http.options("/nowhere").status_code == 404


def test_an_unknown_route_says_it_is_no_route_of_this_server(http: TestClient) -> None:
    response = http.get("/v1/v1/experiments")

    assert response.status_code == 404
    assert response.json()["type"] == "urn:llem:problem:no-such-route"
    assert response.json()["detail"] == "this llem server has no route /v1/v1/experiments"


def test_401_tells_a_missing_token_from_a_wrong_one(tmp_path: Path) -> None:
    with TestClient(build_app(tmp_path / "data", token="s3cret")) as http:
        missing = http.get("/v1/info")
        wrong = http.get("/v1/info", headers={"Authorization": "Bearer nope"})

    assert "none was sent" in missing.json()["detail"]
    assert wrong.json()["detail"] == "the bearer token sent is not this server's token"
    for response in (missing, wrong):
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == 'Bearer realm="llem"'
        assert "LLEM_API_TOKEN" not in response.json()["detail"]


def test_typos_in_a_submitted_config_get_a_suggestion(http: TestClient) -> None:
    body = {"model": "m", "batch_sise": 2, "decoding": {"mode": "sample", "temprature": 0.5}}

    response = http.post("/v1/experiments", json=body)

    errors = {".".join(map(str, e["loc"])): e["msg"] for e in response.json()["errors"]}
    assert errors["body.batch_sise"] == "unknown field (did you mean 'batch_size'?)"
    assert errors["body.decoding.temprature"] == "unknown field (did you mean 'temperature'?)"
