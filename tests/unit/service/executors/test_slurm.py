"""The Slurm executor against a scripted controller (`FakeSlurm`) whose jobs run the real batch
script, so the real node-side runner runs each experiment and writes its outcome; and the
sbatch options and batch scripts it builds. (The ``slurm`` tier runs it on a real Slurm.)"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from llem_client import ExperimentConfig, JobProgress, JobStatus
from llem_service.executors.base import GpuGrant, RunContext, RunningJob, RunOutcome
from llem_service.executors.slurm import (
    SlurmExecutor,
    SlurmOptions,
    SlurmSession,
    batch_script,
    options_from_settings,
    sbatch_args,
)
from llem_service.executors.slurm_cli import PRIVATE_ENV, SlurmCli, SlurmUnreachable, gres_count
from llem_service.executors.slurm_files import JobDir
from llem_service.executors.slurm_rest import _job_state
from llem_service.settings import Settings

from tests.conftest import make_config
from tests.fake_slurm import FakeSlurm
from tests.fakes import FAKE_DEVICE, ScriptedBackend, fake_meter


@pytest.fixture
def slurm() -> Iterator[FakeSlurm]:
    fake = FakeSlurm(kill_wait_s=5.0)
    yield fake
    fake.close()


def executor_on(tmp_path: Path, slurm: FakeSlurm, **options: Any) -> SlurmExecutor:
    settings: dict[str, Any] = {
        "shared_dir": tmp_path / "shared",
        "gres": "",
        "exclusive": False,
        "poll_s": 0.1,
        "vanish_grace_s": 1.0,
        "outcome_grace_s": 0.5,
        **options,
    }
    backend = ScriptedBackend(pid_dir=str(tmp_path))
    return SlurmExecutor(
        slurm,
        SlurmOptions(**settings),
        backend=lambda: backend,
        meter=fake_meter,
        timeout_s=60,
        cancel_grace_s=2.0,
        ping_ttl_s=0,
    )


class Run:
    """One session run in a thread, with what it told the scheduler."""

    def __init__(
        self,
        session: SlurmSession,
        config: ExperimentConfig,
        job_id: str = "job-1",
        executor_ref: str | None = None,
        cancel: threading.Event | None = None,
        detach: threading.Event | None = None,
    ) -> None:
        self.progress: list[JobProgress] = []
        self.refs: list[str] = []
        self.placements: list[tuple[str, tuple[str, ...], float]] = []
        self.context = RunContext(
            job_id=job_id,
            config=config,
            cancel=cancel or threading.Event(),
            on_progress=self.progress.append,
            executor_ref=executor_ref,
            on_executor_ref=self.refs.append,
            on_placement=lambda host, gpus, at: self.placements.append((host, gpus, at)),
            detach=detach or threading.Event(),
        )
        self.outcome: RunOutcome | None = None
        self.thread = threading.Thread(target=self._run, args=(session,), daemon=True)
        self.thread.start()

    def _run(self, session: SlurmSession) -> None:
        self.outcome = session.run(self.context)

    def wait(self, timeout_s: float = 60) -> RunOutcome:
        self.thread.join(timeout_s)
        assert self.outcome is not None, "the run did not end"
        return self.outcome

    def wait_for(self, what: Callable[[], bool], timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while not what():
            assert self.thread.is_alive(), self.outcome
            assert time.monotonic() < deadline
            time.sleep(0.05)

    def phases(self) -> list[str]:
        return [p.phase for p in self.progress]


def job(sleep_s: float = 0.0, fault: str = "", **fields: Any) -> ExperimentConfig:
    tags = {"fake.sleep_s": str(sleep_s), "fake.pid_name": "experiment"}
    if fault:
        tags["fake.fault"] = fault
    return make_config(tags=tags, **fields)


def test_an_experiment_runs_as_a_slurm_job_and_its_result_comes_back(
    tmp_path: Path, slurm: FakeSlurm
) -> None:
    executor = executor_on(tmp_path, slurm)

    outcome = Run(executor.open(GpuGrant()), job(sleep_s=0.3), job_id="j1").wait()

    assert outcome.status is JobStatus.SUCCEEDED, outcome.error
    assert outcome.result is not None
    assert outcome.result.experiment_id == "j1"
    assert outcome.timeseries is not None
    (slurm_job,) = slurm.jobs.values()
    assert slurm_job.name == "llem-j1"
    slurm.wait_state(slurm_job.job_id, "COMPLETED")
    job_dir = tmp_path / "shared" / "jobs" / "j1"
    assert slurm_job.script == job_dir / "job.sh"
    assert (job_dir / "run.pickle").stat().st_mode & 0o777 == 0o600
    assert job_dir.stat().st_mode & 0o777 == 0o700


def test_the_session_relays_the_slurm_id_progress_and_where_the_node_ran_it(
    tmp_path: Path, slurm: FakeSlurm
) -> None:
    executor = executor_on(tmp_path, slurm)

    run = Run(executor.open(GpuGrant()), job(sleep_s=0.5), job_id="j1")
    run.wait()

    assert run.refs == list(slurm.jobs)
    assert run.phases()[0] == "submitting"
    assert "measuring" in run.phases()
    ((host, gpus, started_at),) = run.placements
    assert host == socket.gethostname()
    assert gpus == (FAKE_DEVICE.uuid,)  # what the meter saw on the node
    assert abs(started_at - time.time()) < 60


def test_a_job_over_its_time_limit_fails_with_slurms_reason(
    tmp_path: Path, slurm: FakeSlurm
) -> None:
    executor = executor_on(tmp_path, slurm)
    run = Run(executor.open(GpuGrant()), job(fault="hang"))
    run.wait_for((tmp_path / "experiment.pid").exists)

    (job_id,) = slurm.jobs
    slurm.finish(job_id, "TIMEOUT", "TimeLimit")
    outcome = run.wait()

    assert outcome.status is JobStatus.FAILED
    assert outcome.error is not None
    assert outcome.error.type == "urn:llem:problem:slurm-time-limit"
    assert f"Slurm job {job_id} is TIMEOUT (reason: TimeLimit)" in outcome.error.detail
    extra = outcome.error.model_extra or {}
    assert extra["slurm_state"] == "TIMEOUT"
    assert "terminated" in extra["slurm_output"] or extra["slurm_output"]


def test_a_node_failure_with_requeue_runs_the_job_again(tmp_path: Path, slurm: FakeSlurm) -> None:
    executor = executor_on(tmp_path, slurm)
    run = Run(executor.open(GpuGrant()), job(sleep_s=2.0))
    run.wait_for(lambda: "measuring" in run.phases())

    (job_id,) = slurm.jobs
    slurm.requeue(job_id, "NodeDown", start_after_s=0.5)
    outcome = run.wait()

    assert outcome.status is JobStatus.SUCCEEDED, outcome.error
    assert "requeued" in run.phases()
    assert len(run.placements) == 2  # started twice: after the requeue, anew
    assert slurm.jobs[job_id].restarts == 1


@pytest.mark.parametrize(
    ("state", "reason", "kind"),
    [
        ("PREEMPTED", "None", "slurm-preempted"),
        ("NODE_FAIL", "NodeDown", "slurm-node-failed"),
        ("CANCELLED", "None", "slurm-cancelled"),
    ],
)
def test_a_job_slurm_ends_without_requeue_fails_with_slurms_reason(
    tmp_path: Path, slurm: FakeSlurm, state: str, reason: str, kind: str
) -> None:
    executor = executor_on(tmp_path, slurm)
    run = Run(executor.open(GpuGrant()), job(fault="hang"))
    run.wait_for((tmp_path / "experiment.pid").exists)

    (job_id,) = slurm.jobs
    slurm.finish(job_id, state, reason)
    outcome = run.wait()

    assert outcome.status is JobStatus.FAILED
    assert outcome.error is not None
    assert outcome.error.type == f"urn:llem:problem:{kind}"
    assert f"Slurm job {job_id} is {state}" in outcome.error.detail


def test_a_job_killed_on_the_node_fails_with_its_exit_code(
    tmp_path: Path, slurm: FakeSlurm
) -> None:
    executor = executor_on(tmp_path, slurm)
    run = Run(executor.open(GpuGrant()), job(fault="hang"))
    run.wait_for((tmp_path / "experiment.pid").exists)

    (slurm_job,) = slurm.jobs.values()
    assert slurm_job.process is not None
    os.kill(slurm_job.process.pid, signal.SIGKILL)  # the batch step's own process
    outcome = run.wait()

    assert outcome.status is JobStatus.FAILED
    assert outcome.error is not None
    assert outcome.error.type == "urn:llem:problem:slurm-job-failed"
    assert "is FAILED (reason: NonZeroExitCode) with exit code 0:9" in outcome.error.detail


def test_an_experiment_that_fails_on_the_node_fails_with_its_own_error(
    tmp_path: Path, slurm: FakeSlurm
) -> None:
    executor = executor_on(tmp_path, slurm)

    outcome = Run(executor.open(GpuGrant()), job(fault="exit")).wait()

    assert outcome.status is JobStatus.FAILED
    assert outcome.error is not None
    assert outcome.error.type == "urn:llem:problem:experiment-process-died"
    slurm.wait_state(next(iter(slurm.jobs)), "FAILED")  # exit status 1 for Slurm's records


def test_a_job_that_vanishes_from_slurms_view_fails_after_the_grace(
    tmp_path: Path, slurm: FakeSlurm
) -> None:
    slurm.run = False  # queued, never started
    executor = executor_on(tmp_path, slurm, vanish_grace_s=0.5)
    run = Run(executor.open(GpuGrant()), job())
    run.wait_for(lambda: bool(run.refs))

    slurm.forget(run.refs[0])
    outcome = run.wait()

    assert outcome.status is JobStatus.FAILED
    assert outcome.error is not None
    assert outcome.error.type == "urn:llem:problem:slurm-job-vanished"
    assert f"Slurm job {run.refs[0]} is no longer known to Slurm" in outcome.error.detail


def test_an_unreachable_controller_makes_no_job_vanish(tmp_path: Path, slurm: FakeSlurm) -> None:
    slurm.run = False
    executor = executor_on(tmp_path, slurm, vanish_grace_s=0.5)
    run = Run(executor.open(GpuGrant()), job())
    run.wait_for(lambda: "pending" in run.phases())

    slurm.down = "connect failure"
    time.sleep(1.5)  # three times the grace: nothing is known, so nothing is concluded
    still_running = run.thread.is_alive()
    slurm.down = None
    slurm.start(run.refs[0])
    outcome = run.wait()

    assert still_running
    assert outcome.status is JobStatus.SUCCEEDED, outcome.error


def test_cancel_is_scancel(tmp_path: Path, slurm: FakeSlurm) -> None:
    executor = executor_on(tmp_path, slurm)
    run = Run(executor.open(GpuGrant()), job(fault="hang"))
    run.wait_for((tmp_path / "experiment.pid").exists)

    run.context.cancel.set()
    outcome = run.wait()

    assert outcome.status is JobStatus.CANCELLED
    assert slurm.cancelled == run.refs


def test_a_stopping_server_leaves_the_job_running_and_the_next_one_follows_it(
    tmp_path: Path, slurm: FakeSlurm
) -> None:
    executor = executor_on(tmp_path, slurm)
    config = job(sleep_s=2.0)
    first = Run(executor.open(GpuGrant()), config, job_id="j1")
    first.wait_for(lambda: bool(first.placements))

    first.context.detach.set()
    first.context.cancel.set()  # a stopping scheduler sets both
    left = first.wait()
    (slurm_id,) = first.refs
    restarted = executor_on(tmp_path, slurm)
    session = restarted.reattach(RunningJob("j1", config, GpuGrant(), slurm_id))
    followed = Run(session, config, job_id="j1", executor_ref=slurm_id).wait()

    assert left.status is JobStatus.RUNNING
    assert slurm.cancelled == []
    assert followed.status is JobStatus.SUCCEEDED, followed.error
    assert len(slurm.jobs) == 1


def test_a_reattached_job_without_a_slurm_id_is_found_by_name(
    tmp_path: Path, slurm: FakeSlurm
) -> None:
    executor = executor_on(tmp_path, slurm)
    config = job(sleep_s=1.0)
    first = Run(executor.open(GpuGrant()), config, job_id="j1")
    first.wait_for(lambda: bool(first.refs))
    first.context.detach.set()
    first.wait()

    # The server died between sbatch's answer and storing the id.
    session = executor.reattach(RunningJob("j1", config, GpuGrant(), None))
    followed = Run(session, config, job_id="j1")
    outcome = followed.wait()

    assert outcome.status is JobStatus.SUCCEEDED, outcome.error
    assert followed.refs == []  # nothing submitted again
    assert len(slurm.jobs) == 1


class LostAnswers(FakeSlurm):
    """A controller that takes every sbatch but whose answer never comes back (sbatch times
    out), until ``answer`` is set."""

    answer = False

    def submit(self, script: Path, args: Sequence[str]) -> str:
        job_id = super().submit(script, args)
        if not self.answer:
            raise SlurmUnreachable("sbatch did not answer within 30 s")
        return job_id


def test_a_shutdown_while_sbatch_is_retried_leaves_the_job_to_the_next_server(
    tmp_path: Path,
) -> None:
    slurm = LostAnswers(kill_wait_s=5.0)
    try:
        executor = executor_on(tmp_path, slurm, poll_s=5.0)
        config = job(sleep_s=0.5)
        first = Run(executor.open(GpuGrant()), config, job_id="j1")
        first.wait_for(lambda: bool(slurm.jobs))  # taken by Slurm, answer lost: retrying

        first.context.detach.set()
        first.context.cancel.set()  # a stopping scheduler sets both
        left = first.wait(timeout_s=10)
        slurm.answer = True
        session = executor_on(tmp_path, slurm).reattach(RunningJob("j1", config, GpuGrant(), None))
        followed = Run(session, config, job_id="j1")
        outcome = followed.wait()
    finally:
        slurm.close()

    assert left.status is JobStatus.RUNNING  # not cancelled: the server only stopped
    assert slurm.cancelled == []
    assert outcome.status is JobStatus.SUCCEEDED, outcome.error
    assert len(slurm.jobs) == 1  # found by name, not submitted twice


def test_a_shutdown_before_the_sbatch_leaves_the_submit_to_the_next_server(
    tmp_path: Path, slurm: FakeSlurm
) -> None:
    detach, cancel = threading.Event(), threading.Event()
    detach.set()
    cancel.set()

    outcome = Run(
        executor_on(tmp_path, slurm).open(GpuGrant()), job(), cancel=cancel, detach=detach
    ).wait()

    assert outcome.status is JobStatus.RUNNING
    assert slurm.jobs == {}


class ShutdownBetweenChecks(threading.Event):
    """A server's detach signal that the server sets, with the cancel (as a stopping scheduler
    does), right after the session's follow loop has looked at it and seen it clear: the
    moment between that loop's look at detach and its look at cancel."""

    def __init__(self, cancel: threading.Event) -> None:
        super().__init__()
        self.cancel = cancel
        self.armed = False

    def is_set(self) -> bool:
        seen = super().is_set()
        if self.armed and not seen and sys._getframe(1).f_code.co_name == "run":
            self.armed = False
            self.set()
            self.cancel.set()
        return seen


def test_a_shutdown_between_the_follow_loops_checks_never_scancels(
    tmp_path: Path, slurm: FakeSlurm
) -> None:
    cancel = threading.Event()
    detach = ShutdownBetweenChecks(cancel)
    run = Run(
        executor_on(tmp_path, slurm).open(GpuGrant()),
        job(sleep_s=3.0),
        cancel=cancel,
        detach=detach,
    )
    run.wait_for(lambda: bool(run.placements))

    detach.armed = True
    outcome = run.wait(timeout_s=20)

    assert not detach.armed  # the shutdown came between the two checks
    assert outcome.status is JobStatus.RUNNING
    assert slurm.cancelled == []


def test_a_refused_sbatch_fails_the_job_with_slurms_message(
    tmp_path: Path, slurm: FakeSlurm
) -> None:
    slurm.refuse = "Batch job submission failed: Invalid generic resource (gres) specification"
    executor = executor_on(tmp_path, slurm, gres="gpu")

    outcome = Run(executor.open(GpuGrant()), job()).wait()

    assert outcome.status is JobStatus.FAILED
    assert outcome.error is not None
    assert outcome.error.type == "urn:llem:problem:slurm-submit-failed"
    assert "Invalid generic resource (gres) specification" in outcome.error.detail


def test_the_executor_says_why_it_is_unavailable(tmp_path: Path, slurm: FakeSlurm) -> None:
    executor = executor_on(tmp_path, slurm)
    assert executor.unavailable_reason() is None

    slurm.down = "connect failure"
    down = executor.unavailable_reason()
    slurm.down = None
    (tmp_path / "not-a-dir").write_text("")
    blocked = executor_on(tmp_path, slurm, shared_dir=tmp_path / "not-a-dir").unavailable_reason()

    assert down == "slurmctld does not answer (connect failure)"
    assert blocked is not None
    assert "LLEM_SLURM_SHARED_DIR" in blocked


def test_sbatch_gets_the_gpus_exclusivity_and_the_settings(tmp_path: Path) -> None:
    options = SlurmOptions(
        shared_dir=tmp_path,
        partition="h100",
        account="energy",
        time_limit="6:15:00",
        extra_args=("--qos=short", "--cpus-per-gpu=8"),
    )
    job_dir = JobDir.under(tmp_path, "abc")

    args = sbatch_args(options, make_config(gpus=4), job_dir)

    assert args == [
        "--job-name=llem-abc",
        f"--output={tmp_path}/jobs/abc/slurm-%j.out",
        f"--chdir={tmp_path}/jobs/abc",
        "--nodes=1",
        "--ntasks=1",
        "--gres=gpu:4",
        "--exclusive",
        "--partition=h100",
        "--account=energy",
        "--time=6:15:00",
        "--requeue",
        "--qos=short",
        "--cpus-per-gpu=8",
    ]


def test_exclusive_host_asks_for_a_node_of_its_own_whatever_the_setting(tmp_path: Path) -> None:
    shared = SlurmOptions(shared_dir=tmp_path, exclusive=False, gres="gpu", requeue=False)
    job_dir = JobDir.under(tmp_path, "abc")

    alone = sbatch_args(shared, make_config(exclusive_host=True), job_dir)
    beside = sbatch_args(shared, make_config(), job_dir)
    no_gres = sbatch_args(SlurmOptions(shared_dir=tmp_path, gres=""), make_config(), job_dir)

    assert "--exclusive" in alone
    assert "--exclusive" not in beside
    assert "--gres=gpu:1" in beside
    assert "--no-requeue" in beside
    assert not [a for a in no_gres if a.startswith("--gres")]


def test_the_batch_script_runs_the_node_runner_installed_or_in_the_image(tmp_path: Path) -> None:
    job_dir = JobDir.under(tmp_path / "shared", "abc")
    where = f"{tmp_path}/shared/jobs/abc"
    installed = SlurmOptions(shared_dir=tmp_path / "shared", python="/opt/llem/bin/python")
    apptainer = SlurmOptions(
        shared_dir=tmp_path / "shared",
        container_runtime="apptainer",
        container_image="/images/llem.sif",
    )
    pyxis = SlurmOptions(
        shared_dir=tmp_path / "shared",
        container_runtime="pyxis",
        container_image="ghcr.io/llem/llem:0.1",
        container_args=("--container-writable",),
    )

    lines = [batch_script(o, job_dir).splitlines()[-1] for o in (installed, apptainer, pyxis)]

    runner = f"-m llem_service.executors.slurm_node {where}"
    assert lines[0] == f"exec /opt/llem/bin/python {runner}"
    assert lines[1] == (
        f"exec apptainer exec --nv --bind={tmp_path}/shared /images/llem.sif python3 {runner}"
    )
    assert lines[2] == (
        "exec srun --ntasks=1 --container-image=ghcr.io/llem/llem:0.1 "
        f"--container-mounts={tmp_path}/shared:{tmp_path}/shared --container-writable "
        f"python3 {runner}"
    )
    with pytest.raises(ValueError, match="needs an image"):
        batch_script(SlurmOptions(shared_dir=tmp_path, container_runtime="pyxis"), job_dir)


def test_the_time_limit_defaults_to_the_experiment_timeout_plus_a_margin(tmp_path: Path) -> None:
    six_hours = options_from_settings(Settings(data_dir=tmp_path))
    unlimited = options_from_settings(Settings(data_dir=tmp_path, experiment_timeout_s=0))
    given = options_from_settings(Settings(data_dir=tmp_path, slurm_time_limit="30"))

    assert six_hours.time_limit == "6:15:00"
    assert unlimited.time_limit is None
    assert given.time_limit == "30"
    assert six_hours.shared_dir == (tmp_path / "slurm").absolute()


@pytest.mark.parametrize(
    ("gres", "count"),
    [
        ("gpu:a100:4(S:0-1)", 4),
        ("gpu:8", 8),
        ("gpu:h100:4(S:0),gpu:a100:2(S:1),shard:8", 6),
        ("(null)", 0),
        ("mps:100", 0),
    ],
)
def test_gpus_per_node_from_sinfos_gres(gres: str, count: int) -> None:
    assert gres_count(gres, "gpu") == count


def test_slurmrestd_answers_of_newer_apis_read_as_the_old_ones() -> None:
    old = {
        "job_id": 7,
        "job_state": "FAILED",
        "state_reason": "NonZeroExitCode",
        "nodes": "gpu01",
        "time_limit": 90,
        "exit_code": 9,  # a wait status: killed by signal 9
    }
    new = {
        "job_id": 7,
        "job_state": ["FAILED"],
        "state_reason": "NonZeroExitCode",
        "nodes": "gpu01",
        "time_limit": {"set": True, "infinite": False, "number": 90},
        "exit_code": {
            "status": ["SIGNALED"],
            "return_code": {"set": True, "number": 0},
            "signal": {"id": {"set": True, "number": 9}, "name": "KILL"},
        },
    }

    states = [_job_state(old), _job_state(new)]

    assert states[0] == states[1]
    assert states[0].describe() == (
        "Slurm job 7 is FAILED (reason: NonZeroExitCode) with exit code 0:9 on gpu01 of its "
        "1:30:00 time limit"
    )
    assert _job_state({"job_id": 8, "job_state": "COMPLETED", "exit_code": 256}).exit_code == "1:0"
    assert _job_state({"job_id": 9, "time_limit": {"set": False}}).time_limit == "UNLIMITED"


def test_sbatch_gets_none_of_the_services_secrets(tmp_path: Path) -> None:
    dump = tmp_path / "sbatch.env"
    sbatch = tmp_path / "bin" / "sbatch"
    sbatch.parent.mkdir()
    sbatch.write_text(f'#!/bin/sh\nenv > "{dump}"\necho 4242\n')
    sbatch.chmod(0o755)
    service_env = {
        "PATH": os.environ["PATH"],
        "SLURM_CONF": "/etc/slurm/slurm.conf",
        "LLEM_API_TOKEN": "api-secret",
        "LLEM_SLURM_RESTD_TOKEN": "jwt-secret",
        "llem_slurm_restd_token": "lower-case-secret",  # settings read any case
        "LLEM_SLURM_PARTITION": "gpu",
    }
    cli = SlurmCli(bin_dir=sbatch.parent, env=service_env)

    job_id = cli.submit(tmp_path / "job.sh", [])

    seen = dict(line.split("=", 1) for line in dump.read_text().splitlines() if "=" in line)
    assert job_id == "4242"
    assert not {"api-secret", "jwt-secret", "lower-case-secret"} & set(seen.values())
    assert seen["SLURM_CONF"] == "/etc/slurm/slurm.conf"
    assert seen["LLEM_SLURM_PARTITION"] == "gpu"  # settings that are no secret still go
    assert {"LLEM_API_TOKEN", "LLEM_SLURM_RESTD_TOKEN"} <= PRIVATE_ENV
