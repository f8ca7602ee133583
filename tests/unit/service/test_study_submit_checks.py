"""A study's points get every check a single experiment gets at submit: the server's size
limits, its models and the model's context. A refused point is skipped with its reason (or
refuses the study with ``on_invalid: fail``), and nothing of a refused study is queued."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import build_app
from tests.fakes import FakeHub

BASE: dict[str, Any] = {
    "model": "tiny-test-model",
    "precision": "fp32",
    "prompts": {"input_len": 8},
    "n_prompts": 4,
    "max_output_tokens": 4,
    "baseline": {"enabled": False},
}


def study(**overrides: Any) -> dict[str, Any]:
    document: dict[str, Any] = {"name": "s", "base": BASE, "cycles": 2}
    document.update(overrides)
    return document


@pytest.fixture
def hub() -> FakeHub:
    return FakeHub(models={"tiny-test-model", "other-model"})


@pytest.fixture
def http(tmp_path: Path, hub: FakeHub) -> Iterator[TestClient]:
    root = tmp_path / "models"
    (root / "tiny-gpt2").mkdir(parents=True)
    (root / "tiny-gpt2" / "config.json").write_text(
        json.dumps({"model_type": "gpt2", "n_positions": 64})
    )
    app = build_app(tmp_path / "data", hub=hub, max_n_prompts=8, model_roots=str(root))
    with TestClient(app) as client:
        yield client


def jobs(http: TestClient) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = http.get("/v1/experiments", params={"limit": 500}).json()["items"]
    return items


def test_a_point_over_the_servers_size_limit_is_skipped_with_the_setting_named(
    http: TestClient,
) -> None:
    response = http.post("/v1/studies", json=study(sweep={"n_prompts": [4, 100_000]}))

    assert response.status_code == 202, response.text
    body = response.json()
    assert [p["values"] for p in body["points"]] == [{"n_prompts": 4}]
    (skipped,) = body["skipped"]
    assert skipped["values"] == {"n_prompts": 100_000}
    assert "LLEM_MAX_N_PROMPTS" in skipped["reason"]
    assert skipped["errors"][0]["loc"] == ["n_prompts"]
    assert skipped["errors"][0]["type"] == "refused"
    # Only the accepted point's runs were queued; nothing over the limit.
    assert sorted(j["id"] for j in jobs(http)) == sorted(r["job_id"] for r in body["runs"])
    assert len(body["runs"]) == 2


def test_on_invalid_fail_refuses_the_study_naming_each_points_field(http: TestClient) -> None:
    response = http.post(
        "/v1/studies",
        json=study(sweep={"n_prompts": [4, 100_000, 200_000]}, on_invalid="fail"),
    )

    assert response.status_code == 422
    problem = response.json()
    assert problem["type"] == "urn:llem:problem:study-invalid"
    locs = [e["loc"] for e in problem["errors"]]
    assert ["body", "points", 1, "n_prompts"] in locs
    assert ["body", "points", 2, "n_prompts"] in locs
    assert jobs(http) == []
    assert http.get("/v1/studies").json()["items"] == []


def test_a_study_whose_every_point_is_refused_queues_nothing(http: TestClient) -> None:
    response = http.post("/v1/studies", json=study(sweep={"n_prompts": [100, 200]}))

    assert response.status_code == 422
    problem = response.json()
    assert "no valid point among 2" in problem["detail"]
    assert "LLEM_MAX_N_PROMPTS" in problem["detail"]
    assert [e["loc"] for e in problem["errors"][1:]] == [
        ["body", "points", 0, "n_prompts"],
        ["body", "points", 1, "n_prompts"],
    ]
    assert jobs(http) == []


def test_an_unknown_model_is_skipped_and_each_model_is_looked_up_once(
    http: TestClient, hub: FakeHub
) -> None:
    response = http.post(
        "/v1/studies",
        json=study(
            variants=[{"model": "tiny-test-model"}, {"model": "no-such-model"}],
            sweep={"batch_size": [1, 2, 4]},
        ),
    )

    assert response.status_code == 202, response.text
    body = response.json()
    assert {p["values"]["model"] for p in body["points"]} == {"tiny-test-model"}
    assert len(body["skipped"]) == 3
    assert all(s["errors"][0]["loc"] == ["model"] for s in body["skipped"])
    assert "hub has no model of that name" in body["skipped"][0]["reason"]
    # Six points, two models: the hub was asked twice, not six times.
    assert sorted(hub.lookups) == ["no-such-model", "tiny-test-model"]


def test_a_point_longer_than_the_models_context_is_skipped(http: TestClient) -> None:
    base = {**BASE, "model": "tiny-gpt2"}
    response = http.post(
        "/v1/studies", json=study(base=base, sweep={"prompts.input_len": [8, 100]})
    )

    assert response.status_code == 202, response.text
    (skipped,) = response.json()["skipped"]
    assert skipped["values"] == {"prompts.input_len": 100}
    assert "longer than the model's context of 64" in skipped["reason"]
