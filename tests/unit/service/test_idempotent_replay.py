"""A retried submission (same Idempotency-Key, same body) gets what the first one made, even
when this server would now refuse the request: its answer was lost, not its job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from tests.conftest import build_app, make_config

KEY = {"Idempotency-Key": "retry-me"}


def experiment(**overrides: Any) -> dict[str, Any]:
    return make_config(n_prompts=8, **overrides).model_dump(mode="json", exclude_unset=True)


def study(**overrides: Any) -> dict[str, Any]:
    document = {"name": "s", "base": experiment(), "sweep": {"batch_size": [1, 2]}}
    document.update(overrides)
    return document


def test_a_replayed_experiment_gets_its_job_though_the_server_now_refuses_it(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    with TestClient(build_app(data_dir)) as http:
        first = http.post("/v1/experiments", json=experiment(), headers=KEY)
    # The server restarts with a lower limit: a new submission of this config is refused.
    with TestClient(build_app(data_dir, max_n_prompts=4)) as http:
        again = http.post("/v1/experiments", json=experiment(), headers=KEY)
        other = http.post("/v1/experiments", json=experiment(batch_size=4), headers=KEY)
        fresh = http.post("/v1/experiments", json=experiment())

    assert first.status_code == 202, first.text
    assert again.status_code == 202, again.text
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Location"] == first.headers["Location"]
    assert other.status_code == 422
    assert "retry-me" in other.json()["detail"]  # the key's misuse, not the limit
    assert fresh.status_code == 422
    assert "LLEM_MAX_N_PROMPTS" in fresh.text


def test_a_replayed_study_gets_its_study_though_the_server_now_refuses_it(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    with TestClient(build_app(data_dir)) as http:
        first = http.post("/v1/studies", json=study(), headers=KEY)
    with TestClient(build_app(data_dir, max_n_prompts=4)) as http:
        again = http.post("/v1/studies", json=study(), headers=KEY)
        other = http.post("/v1/studies", json=study(cycles=2), headers=KEY)
        fresh = http.post("/v1/studies", json=study())

    assert first.status_code == 202, first.text
    assert again.status_code == 202, again.text
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Location"] == first.headers["Location"]
    assert other.status_code == 422
    assert "retry-me" in other.json()["detail"]
    assert fresh.status_code == 422
