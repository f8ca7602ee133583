"""The service with ``LLEM_EXECUTOR=slurm`` against the scripted controller: the real API,
scheduler and client; jobs run the real batch script and node-side runner."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from llem_client import Client, JobStatus, ServerError
from llem_service.deps import get_slurm_api

from tests.conftest import LiveServer, make_config
from tests.fake_slurm import FakeSlurm
from tests.fakes import ScriptedBackend

StartServer = Callable[..., LiveServer]


@pytest.fixture
def slurm() -> Iterator[FakeSlurm]:
    fake = FakeSlurm(kill_wait_s=5.0)
    yield fake
    fake.close()


def start_slurm_service(
    start_server: StartServer, tmp_path: Path, slurm: FakeSlurm, **settings: Any
) -> LiveServer:
    return start_server(
        backend=ScriptedBackend(pid_dir=str(tmp_path)),
        replacements={get_slurm_api: lambda: slurm},
        executor="slurm",
        slurm_shared_dir=tmp_path / "shared",
        slurm_gres="",
        slurm_exclusive=False,
        slurm_poll_s=0.1,
        **settings,
    )


def test_a_result_names_the_slurm_job_and_node_it_ran_on(
    start_server: StartServer, tmp_path: Path, slurm: FakeSlurm
) -> None:
    server = start_slurm_service(start_server, tmp_path, slurm)

    with Client(server.base_url) as client:
        info = client.info()
        job = client.wait(client.submit(make_config()).id, timeout=60)
        result = client.result(job.id)

    assert (info.executor, info.executor_available, info.executor_reason) == ("slurm", True, None)
    assert info.gpus == []  # Slurm grants them
    assert info.max_gpus_per_experiment is None  # no gres configured
    assert job.status is JobStatus.SUCCEEDED, job.error
    placement = result.placement
    assert placement is not None
    assert placement.executor == "slurm"
    assert placement.executor_ref == next(iter(slurm.jobs))
    assert placement.host == "fake-node" or placement.host  # the node runner's host name


def test_an_unreachable_controller_refuses_submits_and_info_says_why(
    start_server: StartServer, tmp_path: Path, slurm: FakeSlurm
) -> None:
    server = start_slurm_service(start_server, tmp_path, slurm)
    slurm.down = "connect failure"

    with Client(server.base_url, max_retries=0) as client:
        deadline = time.monotonic() + 15  # the service asks slurmctld every 5 s at most
        while (info := client.info()).executor_available:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        with pytest.raises(ServerError) as refused:
            client.submit(make_config())
        listed = client.list()

    assert info.executor_available is False
    assert info.executor_reason == "slurmctld does not answer (connect failure)"
    assert refused.value.status_code == 503
    assert "slurmctld does not answer (connect failure)" in str(refused.value)
    assert listed.items == []


def test_queued_jobs_wait_while_slurm_is_unreachable_and_run_once_it_is_back(
    start_server: StartServer, tmp_path: Path, slurm: FakeSlurm
) -> None:
    server = start_slurm_service(start_server, tmp_path, slurm, slurm_max_submitted=1)

    with Client(server.base_url) as client:
        first = client.submit(make_config(tags={"fake.sleep_s": "1.5"})).id
        second = client.submit(make_config()).id
        deadline = time.monotonic() + 30
        while not slurm.jobs:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        slurm.down = "connect failure"
        time.sleep(2.5)  # the first ends meanwhile; the second may not be handed over
        waiting = client.get(second)
        slurm.down = None
        jobs = [client.wait(i, timeout=60) for i in (first, second)]

    # Still queued, or handed to an sbatch that retries until Slurm answers: never failed.
    assert (waiting.status, waiting.progress.phase) in {
        (JobStatus.QUEUED, "queued"),
        (JobStatus.RUNNING, "submitting"),
    }
    assert [j.status for j in jobs] == [JobStatus.SUCCEEDED, JobStatus.SUCCEEDED], [
        j.error for j in jobs
    ]
    assert len(slurm.jobs) == 2


def test_cancel_from_the_client_is_scancel(
    start_server: StartServer, tmp_path: Path, slurm: FakeSlurm
) -> None:
    server = start_slurm_service(start_server, tmp_path, slurm)

    with Client(server.base_url) as client:
        job_id = client.submit(make_config(tags={"fake.fault": "hang"})).id
        deadline = time.monotonic() + 30
        while client.get(job_id).progress.phase != "measuring":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        client.cancel(job_id)
        job = client.wait(job_id, timeout=30)

    assert job.status is JobStatus.CANCELLED
    assert slurm.cancelled == list(slurm.jobs)


def test_a_restarted_service_follows_the_slurm_jobs_of_the_last_one(
    start_server: StartServer, tmp_path: Path, slurm: FakeSlurm
) -> None:
    first = start_slurm_service(start_server, tmp_path, slurm)
    with Client(first.base_url) as client:
        job_id = client.submit(make_config(tags={"fake.sleep_s": "3"})).id
        deadline = time.monotonic() + 30
        while client.get(job_id).progress.phase != "measuring":
            assert time.monotonic() < deadline
            time.sleep(0.05)
    first.stop()
    (slurm_job,) = slurm.jobs.values()
    running_without_a_server = slurm_job.state

    second = start_slurm_service(start_server, tmp_path, slurm, data_dir=first.data_dir)
    with Client(second.base_url) as client:
        job = client.wait(job_id, timeout=60)
        result = client.result(job_id)

    assert running_without_a_server == "RUNNING"
    assert slurm.cancelled == []
    assert job.status is JobStatus.SUCCEEDED, job.error
    assert result.placement is not None
    assert result.placement.executor_ref == slurm_job.job_id
