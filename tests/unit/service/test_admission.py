"""Submits refused before anything is queued: an executor that cannot run experiments now
(503, its reason, Retry-After) and more GPUs than there are (422 naming ``gpus``)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fastapi.testclient import TestClient
from llem_service.api.admission import Admission

from tests.conftest import build_app, make_config


@contextmanager
def client_with(tmp_path: Path, admission: Admission) -> Iterator[TestClient]:
    """The real app, its executor's state replaced by ``admission`` once it has started."""
    app = build_app(tmp_path / "data")
    with TestClient(app) as http:
        app.state.admission = admission
        yield http


def test_an_unavailable_executor_refuses_submits_and_says_why(tmp_path: Path) -> None:
    reason = "slurmctld at head:6817 does not answer (scontrol ping: DOWN)"
    admission = Admission("slurm", unavailable_reason=lambda: reason, max_gpus=lambda: 8)
    with client_with(tmp_path, admission) as http:
        refused = http.post("/v1/experiments", json=make_config().model_dump(mode="json"))
        info = http.get("/v1/info").json()
        listed = http.get("/v1/experiments").json()

    assert refused.status_code == 503
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.headers["Retry-After"] == "30"
    problem = refused.json()
    assert problem["type"] == "urn:llem:problem:executor-unavailable"
    assert reason in problem["detail"]
    assert "Nothing was queued" in problem["detail"]
    assert listed["items"] == []
    assert (info["executor"], info["executor_available"], info["executor_reason"]) == (
        "slurm",
        False,
        reason,
    )


def test_more_gpus_than_a_partition_node_has_is_refused_naming_the_field(tmp_path: Path) -> None:
    admission = Admission(
        "slurm", lambda: None, max_gpus=lambda: 4, where="a node of Slurm partition 'gpu'"
    )
    with client_with(tmp_path, admission) as http:
        refused = http.post("/v1/experiments", json=make_config(gpus=8).model_dump(mode="json"))
        accepted = http.post("/v1/experiments", json=make_config(gpus=4).model_dump(mode="json"))

    assert refused.status_code == 422
    assert refused.json()["errors"] == [
        {
            "loc": ["body", "gpus"],
            "msg": "asks for 8 GPUs, and a node of Slurm partition 'gpu' has 4",
            "type": "value_error",
        }
    ]
    assert accepted.status_code == 202


def test_a_study_is_refused_as_a_whole_naming_each_point_that_asks_too_much(
    tmp_path: Path,
) -> None:
    admission = Admission("local", lambda: None, max_gpus=lambda: 2)
    study = {
        "name": "too wide",
        "base": make_config().model_dump(mode="json", exclude={"gpus"}),
        "sweep": {"gpus": [1, 2, 4]},
    }
    down = Admission("slurm", lambda: "slurmctld does not answer", max_gpus=lambda: None)
    with client_with(tmp_path, admission) as http:
        refused = http.post("/v1/studies", json=study)
        studies = http.get("/v1/studies").json()
    with client_with(tmp_path / "2", down) as http:
        unavailable = http.post("/v1/studies", json={**study, "sweep": {"gpus": [1]}})

    assert refused.status_code == 422
    assert refused.json()["errors"] == [
        {
            "loc": ["body", "points", 2, "gpus"],
            "msg": "asks for 4 GPUs, and this host has 2",
            "type": "value_error",
        }
    ]
    assert studies["items"] == []
    assert unavailable.status_code == 503
    assert "slurmctld does not answer" in unavailable.json()["detail"]


def test_gpu_locks_that_cannot_be_taken_hold_jobs_and_say_why_until_they_work(
    tmp_path: Path,
) -> None:
    lock_dir = tmp_path / "locks"
    app = build_app(tmp_path / "data", gpu_lock_dir=lock_dir)
    body = make_config().model_dump(mode="json", exclude_unset=True)
    with TestClient(app) as http:
        assert http.get("/v1/info").json()["gpus"], "the fake NVML shows GPUs: a per-GPU pool"
        shutil.rmtree(lock_dir)
        lock_dir.write_text("not a directory")  # every lock file now fails to open
        job_id = http.post("/v1/experiments", json=body).json()["id"]
        deadline = time.monotonic() + 10
        while (info := http.get("/v1/info").json())["executor_available"]:
            assert time.monotonic() < deadline, "the pool never said why the job waits"
            time.sleep(0.05)
        refused = http.post("/v1/experiments", json=body)
        waiting = http.get(f"/v1/experiments/{job_id}").json()["status"]
        lock_dir.unlink()
        lock_dir.mkdir()
        deadline = time.monotonic() + 20
        while http.get(f"/v1/experiments/{job_id}").json()["status"] != "succeeded":
            assert time.monotonic() < deadline, "the job never ran once the locks worked"
            time.sleep(0.05)
        after = http.get("/v1/info").json()

    assert str(lock_dir) in info["executor_reason"]
    assert refused.status_code == 503
    assert str(lock_dir) in refused.json()["detail"]
    assert waiting == "queued"
    assert after["executor_available"] is True
