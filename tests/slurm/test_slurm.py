"""llem on a real Slurm cluster, end to end: an experiment and a study's points as Slurm jobs,
cancel from ``llem-client`` as scancel, a job killed on the node, a slurmctld restart while
jobs are queued, and a job over its time limit.

Slurm enforces time limits in whole minutes and checks them every 30 s, so the job over its
limit is submitted first (`over_time_limit`) and runs while the other tests do; the last test
reads how it ended.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from llem_client import Client, JobStatus, StudyStatus
from llem_service.executors.slurm_cli import SlurmCli, SlurmError
from llem_service.executors.slurm_rest import SlurmRestd

from tests.conftest import make_config
from tests.server_process import ServerProcess
from tests.slurm.cluster import RESTD, SlurmCluster
from tests.slurm.conftest import SlurmService


@pytest.fixture(scope="module", autouse=True)
def over_time_limit(slurm_service: SlurmService) -> tuple[ServerProcess, str]:
    """A job that hangs under a one-minute Slurm time limit, submitted before every test."""
    server = slurm_service(slurm_time_limit="1")
    with Client(server.url) as client:
        job_id = client.submit(make_config(name="overtime", tags={"fake.fault": "hang"})).id
    return server, job_id


@pytest.fixture(scope="module")
def service(slurm_service: SlurmService) -> ServerProcess:
    return slurm_service()


def slurm_job_of(cluster: SlurmCluster, job_id: str, timeout_s: float = 60) -> str:
    """The Slurm job of an llem job, found by its name as Slurm lists it."""
    deadline = time.monotonic() + timeout_s
    while True:
        done = cluster.command(
            "squeue", "--noheader", "--states=all", f"--name=llem-{job_id}", "--format=%i"
        )
        if done.stdout.strip():
            return done.stdout.split()[-1]
        assert time.monotonic() < deadline, f"no Slurm job for {job_id}: {done.stderr}"
        time.sleep(0.2)


def wait_phase(client: Client, job_id: str, phase: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while (job := client.get(job_id)).progress.phase != phase:
        assert not job.status.terminal, job
        assert time.monotonic() < deadline, job
        time.sleep(0.1)


def ended_states(cluster: SlurmCluster, slurm_ids: list[str]) -> dict[str, str]:
    """Each Slurm job's state once none is still running (30 s at most). The node writes a
    run's outcome, then its batch script exits: Slurm may say RUNNING for a moment after llem
    has recorded the run."""
    deadline = time.monotonic() + 30
    states = {i: cluster.job_state(i) for i in slurm_ids}
    while "RUNNING" in states.values() and time.monotonic() < deadline:
        time.sleep(0.2)
        states = {i: cluster.job_state(i) for i in slurm_ids}
    return states


def test_a_tiny_model_experiment_runs_as_a_slurm_job(
    slurm_service: SlurmService, slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    from tests.integration.conftest import build_gpt2

    model = build_gpt2(tmp_path / "models" / "tiny-gpt2")
    server = slurm_service(test_real_backend="1", model_roots=str(tmp_path / "models"))
    config = make_config(model=str(model), n_prompts=4, batch_size=2, max_output_tokens=4)

    with Client(server.url) as client:
        job = client.wait(client.submit(config).id, timeout=240)
        result = client.result(job.id)

    assert job.status is JobStatus.SUCCEEDED, job.error
    assert (result.n_requests, result.input_tokens, result.output_tokens) == (4, 32, 16)
    assert result.environment.backend == "pytorch"
    placement = result.placement
    assert placement is not None
    assert placement.executor == "slurm"
    assert placement.executor_ref == slurm_job_of(slurm_cluster, job.id)
    assert ended_states(slurm_cluster, [placement.executor_ref]) == {
        placement.executor_ref: "COMPLETED"
    }
    assert placement.host == result.environment.hostname


def test_a_small_study_runs_its_points_as_separate_slurm_jobs(
    service: ServerProcess, slurm_cluster: SlurmCluster
) -> None:
    document = {
        "name": "batch sizes on slurm",
        "base": make_config(tags={"fake.sleep_s": "0.5"}).model_dump(mode="json"),
        "sweep": {"batch_size": [1, 2]},
        "cycles": 2,
    }

    with Client(service.url) as client:
        study = client.wait_study(client.submit_study(document).id, timeout=180)
        results = client.study_results(study.id)
        refs = [client.result(run.job_id).placement for run in study.runs]

    assert study.status is StudyStatus.SUCCEEDED, [r.error for r in study.runs]
    assert [(r.kind, r.point) for r in results.rows if r.kind == "point"] == [
        ("point", 0),
        ("point", 1),
    ]
    assert len([r for r in results.rows if r.kind == "run"]) == 4
    slurm_ids = [p.executor_ref for p in refs if p is not None]
    assert len(set(slurm_ids)) == 4  # every run its own Slurm job
    states = ended_states(slurm_cluster, [i for i in slurm_ids if i])
    assert set(states.values()) == {"COMPLETED"}, states


def test_cancel_from_llem_client_is_scancel(
    service: ServerProcess, slurm_cluster: SlurmCluster
) -> None:
    with Client(service.url) as client:
        job_id = client.submit(make_config(tags={"fake.fault": "hang"})).id
        wait_phase(client, job_id, "measuring")
        slurm_id = slurm_job_of(slurm_cluster, job_id)
        cancel = subprocess.run(
            [sys.executable, "-m", "llem_client.cli", "--server", service.url, "cancel", job_id],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        job = client.wait(job_id, timeout=60)

    assert cancel.returncode == 0, cancel.stderr
    assert job.status is JobStatus.CANCELLED
    assert slurm_cluster.job_state(slurm_id) == "CANCELLED"


def test_a_job_killed_on_the_node_fails_with_slurms_account(
    service: ServerProcess, slurm_cluster: SlurmCluster
) -> None:
    with Client(service.url) as client:
        job_id = client.submit(make_config(tags={"fake.fault": "hang"})).id
        wait_phase(client, job_id, "measuring")
        slurm_id = slurm_job_of(slurm_cluster, job_id)
        started = json.loads(
            (service.data_dir.parent / "shared" / "jobs" / job_id / "started.json").read_text()
        )
        os.kill(started["pid"], signal.SIGKILL)  # the batch step's process, on the node
        job = client.wait(job_id, timeout=60)

    assert job.status is JobStatus.FAILED
    assert job.error is not None
    assert job.error.type == "urn:llem:problem:slurm-job-failed"
    assert f"Slurm job {slurm_id} is FAILED" in job.error.detail
    assert "exit code 0:9" in job.error.detail
    assert slurm_cluster.job_state(slurm_id) == "FAILED"


def test_a_slurmctld_restart_while_jobs_are_queued_loses_nothing(
    slurm_service: SlurmService, slurm_cluster: SlurmCluster
) -> None:
    server = slurm_service(slurm_max_submitted="1")
    with Client(server.url, max_retries=0) as client:
        ids = [client.submit(make_config(tags={"fake.sleep_s": "2"})).id for _ in range(3)]
        wait_phase(client, ids[0], "measuring")
        slurm_cluster.stop_controller()
        try:
            deadline = time.monotonic() + 30
            while (info := client.info()).executor_available:
                assert time.monotonic() < deadline
                time.sleep(0.2)
            refused = httpx.post(
                f"{server.url}/v1/experiments", json=make_config().model_dump(mode="json")
            )
            during = [client.get(i) for i in ids]
        finally:
            slurm_cluster.start_controller()
        jobs = [client.wait(i, timeout=120) for i in ids]
        listed = client.list()

    assert info.executor_reason is not None
    assert "slurmctld" in info.executor_reason
    assert refused.status_code == 503
    assert info.executor_reason in refused.json()["detail"]
    # Nothing failed while it was down (the running one may have finished: its outcome is a
    # file on the shared filesystem, which needs no slurmctld).
    assert [j.status for j in during if j.status.terminal] in ([], [JobStatus.SUCCEEDED])
    assert [j.status for j in jobs] == [JobStatus.SUCCEEDED] * 3, [j.error for j in jobs]
    assert len(listed.items) == 3  # and the refused one was not queued


def test_the_command_wrapper_reads_what_slurm_says(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    cli = SlurmCli(env=slurm_cluster.env, timeout_s=30)
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/bash\nsleep 30\n")
    output = f"--output={tmp_path}/slurm-%j.out"

    assert cli.ping() is None
    job_id = cli.submit(script, ["--job-name=llem-wrapper", output, "--time=5"])
    listed = cli.states([job_id, "999999"])
    found = cli.find("llem-wrapper")
    cli.cancel(job_id)
    deadline = time.monotonic() + 30
    while (ended := cli.states([job_id])[job_id]).active:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    details = cli.details(job_id)
    with pytest.raises(SlurmError, match="Invalid"):
        cli.submit(script, ["--gres=gpu:1"])  # the node has no GPUs: sbatch refuses

    assert list(listed) == [job_id]  # a job Slurm does not know is left out, not invented
    assert listed[job_id].state in {"PENDING", "RUNNING", "CONFIGURING"}
    assert listed[job_id].time_limit == "5:00"
    assert found == job_id
    assert ended.state == "CANCELLED"
    assert details is not None
    assert details.state == "CANCELLED"
    assert details.exit_code.count(":") == 1
    assert cli.details("999999") is None  # no accounting here: sacct knows nothing either
    assert cli.max_gpus_per_node(None, "gpu") == 0
    assert cli.max_gpus_per_node("debug", "gpu") == 0


def test_gpus_a_partition_does_not_have_are_refused_at_submit(
    slurm_service: SlurmService,
) -> None:
    server = slurm_service(slurm_gres="gpu", slurm_partition="debug")

    response = httpx.post(
        f"{server.url}/v1/experiments", json=make_config().model_dump(mode="json")
    )

    assert response.status_code == 422
    assert response.json()["errors"] == [
        {
            "loc": ["body", "gpus"],
            "msg": "asks for 1 GPUs, and a node of Slurm's partition 'debug' has 0",
            "type": "value_error",
        }
    ]


def test_slurmrestd_reports_what_the_commands_do(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    if not RESTD.exists():
        pytest.skip("slurmrestd is not installed (apt install slurmrestd)")
    rest = SlurmRestd(slurm_cluster.start_restd(), env=slurm_cluster.env)
    cli = SlurmCli(env=slurm_cluster.env)
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/bash\nsleep 1\nkill -9 $$\n")

    job_id = rest.submit(script, [f"--output={tmp_path}/slurm-%j.out", "--time=90"])
    first = rest.states([job_id, "999999"])
    deadline = time.monotonic() + 30
    while rest.states([job_id])[job_id].active:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    by_rest, by_cli = rest.details(job_id), cli.details(job_id)

    assert rest.ping() is None
    assert list(first) == [job_id]
    assert first[job_id].source == "slurmrestd"
    assert first[job_id].time_limit == "1:30:00"
    assert by_rest is not None
    assert by_cli is not None
    assert (
        (by_rest.state, by_rest.exit_code)
        == (by_cli.state, by_cli.exit_code)
        == (
            "FAILED",
            "0:9",
        )
    )
    assert rest.details("999999") is None


def test_a_service_on_slurmrestd_runs_an_experiment(
    slurm_service: SlurmService, slurm_cluster: SlurmCluster
) -> None:
    if not RESTD.exists():
        pytest.skip("slurmrestd is not installed (apt install slurmrestd)")
    server = slurm_service(slurm_restd_url=slurm_cluster.start_restd())

    with Client(server.url) as client:
        info = client.info()
        job = client.wait(client.submit(make_config()).id, timeout=60)

    assert info.executor_available
    assert job.status is JobStatus.SUCCEEDED, job.error


def test_a_job_over_its_slurm_time_limit_fails_with_slurms_reason(
    over_time_limit: tuple[ServerProcess, str], slurm_cluster: SlurmCluster
) -> None:
    server, job_id = over_time_limit

    with Client(server.url) as client:
        job = client.wait(job_id, timeout=150)

    assert job.status is JobStatus.FAILED
    assert job.error is not None
    assert job.error.type == "urn:llem:problem:slurm-time-limit"
    assert "is TIMEOUT (reason: TimeLimit)" in job.error.detail
    assert (job.error.model_extra or {}).get("slurm_state") == "TIMEOUT"
    assert slurm_cluster.job_state(slurm_job_of(slurm_cluster, job_id)) == "TIMEOUT"
