"""A retried submission (same Idempotency-Key, same body) gets what the first one made, even
when this server would now refuse the request: its answer was lost, not its job."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import build_app, make_config

KEY = {"Idempotency-Key": "retry-me"}


def experiment(**overrides: Any) -> dict[str, Any]:
    return make_config(n_prompts=8, **overrides).model_dump(mode="json", exclude_unset=True)


def study(**overrides: Any) -> dict[str, Any]:
    document = {"name": "s", "base": experiment(), "sweep": {"batch_size": [1, 2]}}
    document.update(overrides)
    return document


@pytest.mark.parametrize(
    ("path", "body", "changed"),
    [
        ("/v1/experiments", experiment, {"batch_size": 4}),
        ("/v1/studies", study, {"cycles": 2}),
    ],
)
def test_a_replay_gets_what_it_made_though_the_server_now_refuses_it(
    tmp_path: Path,
    path: str,
    body: Callable[..., dict[str, Any]],
    changed: dict[str, Any],
) -> None:
    data_dir = tmp_path / "data"
    with TestClient(build_app(data_dir)) as http:
        first = http.post(path, json=body(), headers=KEY)
    # The server restarts with a lower limit: a new submission of this body is refused.
    with TestClient(build_app(data_dir, max_n_prompts=4)) as http:
        again = http.post(path, json=body(), headers=KEY)
        other = http.post(path, json=body(**changed), headers=KEY)
        fresh = http.post(path, json=body())

    assert first.status_code == 202, first.text
    assert again.status_code == 202, again.text
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Location"] == first.headers["Location"]
    assert other.status_code == 422
    assert "retry-me" in other.json()["detail"]  # the key's misuse, not the limit
    assert fresh.status_code == 422
    assert "LLEM_MAX_N_PROMPTS" in fresh.text
