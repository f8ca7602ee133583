"""Hypothesis on config validation: arbitrary documents near the config's shape.

Properties: validation either gives a config or a `ValidationError` naming fields, never
another exception; a valid config survives JSON and keeps its hash; labels never change the
hash; and the server agrees with the client on every document (202 exactly when the client's
model accepts it, else a 422 problem listing the fields).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from llem_client import ExperimentConfig, measurement_config_hash
from llem_service.models.catalog import ModelCatalog, ModelRefused
from pydantic import ValidationError

from tests.conftest import build_app
from tests.fakes import FakeHub, FakeInferenceBackend

pytestmark = pytest.mark.fuzz
JSON = {"content-type": "application/json"}

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
#: Keys of the config and its sections, and a few that belong nowhere.
KEYS = st.sampled_from(
    [
        *ExperimentConfig.model_fields,
        "source", "input_len", "seed", "path", "field", "prompts", "mode", "temperature",
        "top_k", "top_p", "batches", "cv_threshold", "window", "max_batches", "enabled",
        "duration_s", "device", "load_in_4bit", "load_in_8bit", "trust_remote_code",
        "nonsense", "",
    ]
)  # fmt: skip
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=5),
    max_leaves=12,
)
VALID_ENOUGH = {
    "model": st.text(min_size=1, max_size=30),
    "n_prompts": st.integers(min_value=-2, max_value=64),
    "batch_size": st.integers(min_value=-2, max_value=64),
    "max_output_tokens": st.integers(min_value=0, max_value=64),
    "precision": st.sampled_from(["fp32", "fp16", "bf16", "fp8"]),
    "prompts": VALUES,
    "decoding": VALUES,
    "warmup": VALUES,
    "pytorch": VALUES,
    "repeats": st.integers(min_value=0, max_value=101),
}
DOCUMENTS = st.fixed_dictionaries(
    {"model": VALID_ENOUGH["model"]},
    optional={
        **{k: v for k, v in VALID_ENOUGH.items() if k != "model"},
        "nonsense": VALUES,
        "tags": VALUES,
        "name": VALUES,
    },
)


def _validate(document: Any) -> ExperimentConfig | ValidationError:
    try:
        return ExperimentConfig.model_validate(document)
    except ValidationError as exc:
        return exc


@settings(max_examples=400, deadline=None)
@given(document=st.one_of(DOCUMENTS, VALUES))
def test_validation_gives_a_config_or_a_validation_error(document: Any) -> None:
    outcome = _validate(document)  # any other exception fails the test

    if isinstance(outcome, ValidationError):
        assert outcome.error_count() > 0
        return
    again = ExperimentConfig.model_validate_json(outcome.model_dump_json())
    assert again == outcome
    assert measurement_config_hash(again) == measurement_config_hash(outcome)


@settings(max_examples=200, deadline=None)
@given(
    document=DOCUMENTS,
    name=st.text(max_size=50),
    tags=st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=3),
)
def test_labels_never_change_the_hash(document: Any, name: str, tags: dict[str, str]) -> None:
    outcome = _validate(document)
    if isinstance(outcome, ValidationError):
        return
    relabelled = outcome.model_copy(update={"name": name, "tags": tags})

    assert measurement_config_hash(relabelled) == measurement_config_hash(outcome)


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    data_dir: Path = tmp_path_factory.mktemp("fuzz") / "data"
    # Accepted jobs queue behind one that runs for a minute: no child process per example.
    with TestClient(build_app(data_dir, backend=FakeInferenceBackend(sleep_s=60))) as client:
        yield client


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(document=DOCUMENTS)
def test_the_server_agrees_with_the_client(http: TestClient, document: Any) -> None:
    outcome = _validate(document)

    # json.dumps writes NaN and Infinity as Python's parser (the server's) reads them.
    data = json.dumps(document).encode()
    response = http.post("/v1/experiments", content=data, headers=JSON)

    if isinstance(outcome, ValidationError):
        assert response.status_code == 422, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["errors"]
    elif _model_refused(outcome.model):
        # Valid, but this server has no such model (no roots here; the fake hub has every
        # well-formed hub id): refused at submit, naming the model alone.
        assert response.status_code == 422, response.text
        assert [e["loc"] for e in response.json()["errors"]] == [["model"]]
    else:
        assert response.status_code == 202, response.text


def _model_refused(model: str) -> bool:
    try:
        ModelCatalog((), FakeHub()).check(model, None)
    except ModelRefused:
        return True
    return False
