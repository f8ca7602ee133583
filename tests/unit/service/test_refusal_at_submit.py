"""Refused at submit: what the server can know before a job waits its turn (issue 15).

Each test submits through the real app (TestClient) with the hub faked (`tests.fakes.FakeHub`)
and checks the 422 names the field, says what to do, and that no job was created.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from llem_client import ExperimentConfig, JobStatus
from llem_service.backends.base import ConfigError
from llem_service.backends.pytorch import check_context

from tests.conftest import build_app, make_config
from tests.fakes import FakeHub, FakeInferenceBackend

PROBLEM = "application/problem+json"
GPT2_CONFIG = {"model_type": "gpt2", "n_positions": 512, "n_embd": 64}


@pytest.fixture
def models_root(tmp_path: Path) -> Path:
    """A model root holding ``tiny-gpt2`` (512 positions) and ``org/llama-mini``, and a
    directory without a config.json."""
    root = tmp_path / "models"
    for name, config in (
        ("tiny-gpt2", GPT2_CONFIG),
        ("org/llama-mini", {"model_type": "llama", "max_position_embeddings": 2048}),
    ):
        (root / name).mkdir(parents=True)
        (root / name / "config.json").write_text(json.dumps(config))
    (root / "not-a-model").mkdir()
    (tmp_path / "outside").mkdir()
    return root


@pytest.fixture
def make_http(tmp_path: Path, models_root: Path) -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    def make(**kwargs: Any) -> TestClient:
        kwargs.setdefault("model_roots", str(models_root))
        client = TestClient(build_app(tmp_path / "data", **kwargs))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def submit(http: TestClient, **overrides: Any) -> Any:
    return http.post("/v1/experiments", json=make_config(**overrides).model_dump(mode="json"))


def refusal(response: Any) -> dict[str, str]:
    """The 422's messages by field (dotted), after checking it is a problem."""
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM
    problem = response.json()
    assert problem["type"] == "urn:llem:problem:config-refused"
    return {".".join(map(str, e["loc"])): e["msg"] for e in problem["errors"]}


def no_jobs(http: TestClient) -> bool:
    items: list[Any] = http.get("/v1/experiments").json()["items"]
    return items == []


# --- model names ----------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["/etc", "../tiny-gpt2", "./../outside"])
def test_a_path_outside_the_roots_is_refused_at_submit(make_http, model):
    http = make_http()

    errors = refusal(submit(http, model=model))

    assert "outside the allowed roots" in errors["model"]
    assert no_jobs(http)


def test_a_name_that_is_not_a_hub_id_is_refused_with_a_suggestion(make_http):
    http = make_http()

    errors = refusal(submit(http, model="tiny gpt2"))

    assert "is not a hub id" in errors["model"]
    assert "did you mean 'tiny-gpt2'?" in errors["model"]


@pytest.mark.parametrize("model", ["org/a--b", "a..b", "-lead", "x/y/z", "model.git"])
def test_malformed_hub_ids_are_refused(make_http, model):
    hub = FakeHub()
    http = make_http(hub=hub)

    errors = refusal(submit(http, model=model))

    assert "hub id" in errors["model"]
    assert hub.lookups == []  # refused without asking the hub


def test_a_typo_on_an_offline_server_is_refused_at_once_with_a_suggestion(make_http):
    hub = FakeHub(offline="HF_HUB_OFFLINE is set on the server")
    http = make_http(hub=hub)

    errors = refusal(submit(http, model="tiny-gpt3"))

    message = errors["model"]
    assert "is not a model directory under LLEM_MODEL_ROOTS" in message
    assert "did you mean 'tiny-gpt2'?" in message
    assert "HF_HUB_OFFLINE is set on the server" in message
    assert hub.lookups == []
    assert no_jobs(http)


def test_an_unreachable_hub_refuses_a_model_it_would_have_to_fetch(make_http):
    http = make_http(hub=FakeHub(unreachable="https://hub.example did not answer (timed out)"))

    errors = refusal(submit(http, model="meta-llama/Llama-3.1-8B"))

    assert (
        "cannot reach the hub to fetch it (https://hub.example did not answer" in (errors["model"])
    )
    assert "nor has it in its hub cache" in errors["model"]


def test_a_model_the_hub_does_not_have_is_refused(make_http):
    http = make_http(hub=FakeHub(models={"gpt2"}))

    errors = refusal(submit(http, model="gtp2"))

    assert "the hub has no model of that name" in errors["model"]
    assert submit(http, model="gpt2").status_code == 202


def test_a_cached_hub_model_runs_offline_and_is_listed(make_http):
    hub = FakeHub(offline="HF_HUB_OFFLINE is set", cached={"gpt2": {"n_positions": 1024}})
    http = make_http(hub=hub)

    assert submit(http, model="gpt2").status_code == 202
    models = http.get("/v1/models").json()["items"]
    assert {"name": "gpt2", "source": "hub-cache", "context_tokens": 1024} in models


def test_local_models_are_accepted_and_listed_with_their_context(make_http, models_root):
    http = make_http()

    assert submit(http, model="tiny-gpt2").status_code == 202
    assert submit(http, model="org/llama-mini").status_code == 202
    assert submit(http, model=str(models_root / "tiny-gpt2")).status_code == 202
    models = http.get("/v1/models").json()["items"]
    assert models == [
        {"name": "org/llama-mini", "source": "local", "context_tokens": 2048},
        {"name": "tiny-gpt2", "source": "local", "context_tokens": 512},
    ]


def test_a_directory_without_a_config_is_not_a_model(make_http):
    errors = refusal(submit(make_http(), model="./not-a-model"))

    assert "holds no readable config.json" in errors["model"]


# --- sizes --------------------------------------------------------------------------------------


def test_sizes_over_the_limits_are_refused_naming_the_settings(make_http):
    http = make_http(hub=FakeHub())

    errors = refusal(
        submit(
            http,
            n_prompts=1_000_000_000_000,
            max_output_tokens=1_000_000_000,
            batch_size=100_000_000,
            prompts={"source": "synthetic", "input_len": 200_000},
        )
    )

    assert errors["n_prompts"].endswith("over this server's limit of 100,000 (LLEM_MAX_N_PROMPTS "
                                        "raises it)")  # fmt: skip
    assert "LLEM_MAX_OUTPUT_TOKENS" in errors["max_output_tokens"]
    assert "LLEM_MAX_BATCH_SIZE" in errors["batch_size"]
    assert "LLEM_MAX_INPUT_TOKENS" in errors["prompts.input_len"]
    assert no_jobs(http)


def test_limits_come_from_settings(make_http):
    http = make_http(max_n_prompts=8)

    assert submit(http, n_prompts=8).status_code == 202
    assert "limit of 8" in refusal(submit(http, n_prompts=9))["n_prompts"]


# --- the model's context ------------------------------------------------------------------------


def test_a_prompt_longer_than_a_local_models_context_is_refused(make_http):
    http = make_http()

    errors = refusal(
        submit(
            http,
            model="tiny-gpt2",
            prompts={"source": "synthetic", "input_len": 5000},
            max_output_tokens=16,
        )
    )

    assert errors["prompts.input_len"] == (
        "prompts.input_len (5,000) + max_output_tokens (16) = 5,016 tokens, longer than the "
        "model's context of 512 (n_positions in its config.json)"
    )


def test_max_input_tokens_bounds_file_prompts_against_the_context(make_http):
    http = make_http(hub=FakeHub(cached={"gpt2": {"n_positions": 1024}}))
    prompts = {"source": "inline", "prompts": ["hello"]}

    errors = refusal(
        submit(http, model="gpt2", prompts=prompts, max_input_tokens=1000, max_output_tokens=100)
    )

    assert "max_input_tokens (1,000) + max_output_tokens (100)" in errors["max_input_tokens"]
    assert submit(http, model="gpt2", prompts=prompts, max_output_tokens=100).status_code == 202


def test_when_the_context_is_only_known_at_run_time_it_fails_early_as_a_config_error():
    config = make_config(prompts={"source": "inline", "prompts": ["x"]}, max_output_tokens=16)

    with pytest.raises(ConfigError, match=r"longest prompt \(600 tokens\) \+ max_output_tokens"):
        check_context(config, [[1] * 600], {"max_position_embeddings": 512})
    check_context(config, [[1] * 496], {"max_position_embeddings": 512})  # fits exactly


# --- prompt files -------------------------------------------------------------------------------


def test_a_prompt_file_is_checked_at_submit(make_http, models_root, tmp_path):
    (models_root / "p.jsonl").write_text('{"prompt": "hi"}\n')
    http = make_http(max_dataset_bytes=10)

    assert (
        "outside the allowed roots"
        in refusal(submit(http, prompts={"source": "jsonl", "path": str(tmp_path / "outside")}))[
            "prompts.path"
        ]
    )
    assert (
        "does not exist"
        in refusal(submit(http, prompts={"source": "jsonl", "path": "missing.jsonl"}))[
            "prompts.path"
        ]
    )
    assert (
        "LLEM_MAX_DATASET_BYTES"
        in refusal(submit(http, prompts={"source": "jsonl", "path": "p.jsonl"}))["prompts.path"]
    )


def test_prompts_with_a_path_and_no_source_are_jsonl(make_http, models_root):
    (models_root / "p.jsonl").write_text('{"text": "hi"}\n')
    body = {"model": "tiny-gpt2", "prompts": {"path": "p.jsonl", "field": "text"}}

    response = make_http().post("/v1/experiments", json=body)

    assert response.status_code == 202, response.text


# --- failure classes ----------------------------------------------------------------------------


def test_a_config_error_at_run_time_is_a_user_error_not_a_crash(make_http):
    backend = FakeInferenceBackend(
        fail_in="load", fail_as_config_error=True, error_message="no such model"
    )
    http = make_http(backend=backend)
    job_id = submit(http).json()["id"]

    job = _wait(http, job_id)

    assert job["status"] == JobStatus.FAILED.value
    assert job["error"]["type"] == "urn:llem:problem:config-error"
    assert job["error"]["status"] == 422
    assert job["error"]["detail"] == "no such model"


def test_a_backend_failure_stays_ours(make_http):
    http = make_http(backend=FakeInferenceBackend(fail_in="load"))

    job = _wait(http, submit(http).json()["id"])

    assert job["error"]["type"] == "urn:llem:problem:backend-error"
    assert job["error"]["status"] == 500


def _wait(http: TestClient, job_id: str) -> dict[str, Any]:
    import time

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        job: dict[str, Any] = http.get(f"/v1/experiments/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not end")


def test_the_contract_refuses_control_characters_in_labels_and_models():
    for field in ("name", "model", "revision"):
        with pytest.raises(ValueError, match=r"control character '\\x1b' at position 1"):
            make_config(**{field: "a\x1b[2J"})
    with pytest.raises(ValueError, match="control character"):
        make_config(tags={"k": "line\nbreak"})
    assert ExperimentConfig.model_validate({"model": "Überm-ödel"}).model == "Überm-ödel"
