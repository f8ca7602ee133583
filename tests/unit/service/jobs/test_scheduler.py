"""The real scheduler, child processes and client against a live server, fakes behind the
seams."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from llem_client import (
    AsyncClient,
    Client,
    ConflictError,
    Job,
    JobStatus,
    NotFoundError,
)
from llem_service.deps import get_energy_meter, get_inference_backend, replace
from llem_service.energy import NullEnergyMeter
from llem_service.jobs.store import SqliteJobStore

from tests.conftest import LiveServer, make_config
from tests.fakes import FAKE_DEVICE, FakeInferenceBackend, fake_meter

StartServer = Callable[..., LiveServer]


def wait_status(client: Client, job_id: str, status: JobStatus, timeout_s: float = 20) -> Job:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(job_id)
        if job.status is status:
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} is {client.get(job_id).status}, never {status}")


def test_submit_wait_result_with_exact_figures(start_server: StartServer) -> None:
    server = start_server(
        backend=FakeInferenceBackend(measured_time_s=2.0, input_tokens_per_request=8, sleep_s=0.3),
        meter=fake_meter(power_w=200.0, counter_period_s=0.001),
    )
    config = make_config(n_prompts=4, max_output_tokens=4, repeats=2)

    with Client(server.base_url) as client:
        job = client.wait(client.submit(config).id, timeout=30)
        result = client.result(job.id)

    assert job.status is JobStatus.SUCCEEDED
    assert result.config == config
    assert result.n_requests == 8
    assert (result.input_tokens, result.output_tokens, result.total_tokens) == (64, 32, 96)
    assert result.total_inference_time_sec == 4.0
    assert result.avg_tokens_per_second == 8.0
    assert result.requests_per_second == 2.0
    energy = result.energy
    assert energy is not None
    assert energy.energy_j is not None
    assert energy.energy_j.value == pytest.approx(
        200.0 * energy.window_s, abs=energy.energy_j.total
    )
    assert energy.energy_per_output_token_j is not None
    assert energy.energy_per_output_token_j.value == pytest.approx(energy.energy_j.value / 32)
    assert [r.output_tokens for r in result.repeats.per_repeat] == [16, 16]
    assert result.warmup_batches == 1
    assert result.environment.backend == "fake"
    assert result.environment.backend_versions == {"fake-backend": "1.0"}
    # the measured window is shorter than 10 counter updates' worth of trust, and says so
    assert "window_short" not in [w.code for w in result.warnings]  # 0.6 s at 1 ms updates
    assert result.timeseries == f"/v1/experiments/{job.id}/timeseries"
    assert (server.data_dir / "results" / f"{job.id}.json").is_file()
    assert (server.data_dir / "results" / f"{job.id}.timeseries.parquet").is_file()


def test_the_service_keeps_a_baseline_and_the_next_experiment_reuses_it(
    start_server: StartServer,
) -> None:
    server = start_server(meter=fake_meter(power_w=120.0))
    config = make_config(
        baseline={"enabled": True, "duration_s": 0.2, "max_age_s": 600, "settle_max_s": 0}
    )

    with Client(server.base_url) as client:
        first = client.result(client.wait(client.submit(config).id, timeout=30).id)
        second = client.result(client.wait(client.submit(config).id, timeout=30).id)

    assert first.energy is not None
    assert second.energy is not None
    (measured,) = first.energy.baselines
    (reused,) = second.energy.baselines
    assert (measured.reused, reused.reused) == (False, True), reused.method
    assert reused.device_uuid == FAKE_DEVICE.uuid
    assert reused.power_w == measured.power_w
    assert reused.measured_at == measured.measured_at


def test_a_gpu_lost_mid_run_fails_the_job_and_the_next_one_runs(
    start_server: StartServer,
) -> None:
    lost = fake_meter(lost_at_s=0.3)
    server = start_server(backend=FakeInferenceBackend(sleep_s=1.0), meter=lost)

    with Client(server.base_url) as client:
        failed = client.wait(client.submit(make_config(n_prompts=4, batch_size=1)).id, timeout=30)
        replace(server.app, get_energy_meter, lambda: fake_meter(power_w=300.0))
        ok = client.wait(client.submit(make_config(name="after")).id, timeout=30)

    assert failed.status is JobStatus.FAILED
    assert failed.error is not None
    assert failed.error.type == "urn:llem:problem:meter-error"
    assert "GPU is lost" in (failed.error.detail or "")
    assert ok.status is JobStatus.SUCCEEDED


def test_a_run_stuck_on_a_lost_gpu_is_stopped_with_the_meter_error(
    start_server: StartServer,
) -> None:
    # The backend "hangs" for two minutes, as a CUDA call on a dead GPU can; the meter's
    # failure must end the job long before that.
    server = start_server(
        backend=FakeInferenceBackend(sleep_s=120.0), meter=fake_meter(lost_at_s=0.3)
    )
    started = time.monotonic()

    with Client(server.base_url) as client:
        job = client.wait(client.submit(make_config(n_prompts=2, batch_size=2)).id, timeout=60)

    assert time.monotonic() - started < 30
    assert job.status is JobStatus.FAILED
    assert job.error is not None
    assert job.error.type == "urn:llem:problem:meter-error"
    assert "GPU is lost" in (job.error.detail or "")


def test_without_a_meter_energy_is_null_and_a_warning_says_why(
    start_server: StartServer,
) -> None:
    server = start_server(meter=NullEnergyMeter("no NVIDIA GPU on this host"))

    with Client(server.base_url) as client:
        job = client.wait(client.submit(make_config()).id, timeout=30)
        result = client.result(job.id)

    assert result.energy_meter_available is False
    assert result.energy is None
    assert result.timeseries is None
    assert [w.code for w in result.warnings] == ["energy_unavailable"]
    assert "no NVIDIA GPU on this host" in result.warnings[0].message


@pytest.mark.parametrize("phase", ["load", "warmup", "run"])
def test_a_failing_backend_fails_the_job_with_its_message(
    start_server: StartServer, phase: str
) -> None:
    server = start_server(
        backend=FakeInferenceBackend(fail_in=phase, error_message=f"broke in {phase}")  # type: ignore[arg-type]
    )

    with Client(server.base_url) as client:
        job = client.wait(client.submit(make_config()).id, timeout=30)
        with pytest.raises(ConflictError):
            client.result(job.id)

    assert job.status is JobStatus.FAILED
    assert job.error is not None
    assert job.error.detail == f"broke in {phase}"


def test_a_crashing_experiment_fails_its_job_and_the_next_one_runs(
    start_server: StartServer,
) -> None:
    server = start_server(backend=FakeInferenceBackend(crash_in="run", crash_exit_code=7))

    with Client(server.base_url) as client:
        crashed = client.wait(client.submit(make_config()).id, timeout=30)
        # The seams are resolved per job: from now on the backend is a healthy one.
        healthy_backend = FakeInferenceBackend()
        replace(server.app, get_inference_backend, lambda: healthy_backend)
        after = client.wait(client.submit(make_config()).id, timeout=30)
        healthy = httpx.get(f"{server.base_url}/healthz")

    assert crashed.status is JobStatus.FAILED
    assert crashed.error is not None
    assert "exited with code 7" in crashed.error.detail
    assert after.status is JobStatus.SUCCEEDED
    assert healthy.status_code == 200


def test_cancelling_a_running_job_stops_its_process(start_server: StartServer) -> None:
    server = start_server(backend=FakeInferenceBackend(sleep_s=60))

    with Client(server.base_url) as client:
        job_id = client.submit(make_config()).id
        wait_status(client, job_id, JobStatus.RUNNING)
        started = time.monotonic()
        accepted = client.cancel(job_id)
        final = client.wait(job_id, timeout=20)
        stopped_in = time.monotonic() - started

    assert accepted.status is JobStatus.RUNNING
    assert final.status is JobStatus.CANCELLED
    assert stopped_in < 15  # far less than the 60 s run: the child was stopped


def test_experiments_run_one_at_a_time_in_order(start_server: StartServer, tmp_path: Path) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    server = start_server(backend=FakeInferenceBackend(sleep_s=0.4, marker_dir=str(markers)))

    with Client(server.base_url) as client:
        ids = [client.submit(make_config()).id for _ in range(3)]
        jobs = [client.wait(job_id, timeout=60) for job_id in ids]

    assert all(job.status is JobStatus.SUCCEEDED for job in jobs)
    spans = []
    for marker in markers.iterdir():
        lines = dict(line.split() for line in marker.read_text().splitlines())
        spans.append((float(lines["start"]), float(lines["end"])))
    spans.sort()
    assert len(spans) == 3
    for (_, end), (next_start, _) in itertools.pairwise(spans):
        assert next_start >= end  # no overlap
    started = [job.started_at for job in jobs]
    assert started == sorted(started)  # type: ignore[type-var]


def test_events_stream_every_phase_until_the_end(start_server: StartServer) -> None:
    server = start_server(backend=FakeInferenceBackend(sleep_s=0.5))

    with Client(server.base_url) as client:
        job_id = client.submit(make_config(n_prompts=4, batch_size=1)).id
        seen = list(client.events(job_id))

    assert seen[-1].status is JobStatus.SUCCEEDED
    assert all(not job.status.terminal for job in seen[:-1])
    phases = [job.progress.phase for job in seen]
    assert "measuring" in phases
    counts = [job.progress.completed for job in seen if job.progress.phase == "measuring"]
    assert counts == sorted(counts)
    assert counts[-1] <= 4
    # Events coalesce: the last count may be overtaken by the phases after measuring.
    last_measuring = max(i for i, p in enumerate(phases) if p == "measuring")
    assert {"prefill", "saving", "done"} & set(phases[last_measuring + 1 :])


def test_restart_keeps_queued_jobs_fails_the_running_one_and_keeps_results(
    start_server: StartServer, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    first = start_server(data_dir=data_dir)
    with Client(first.base_url) as client:
        done = client.wait(client.submit(make_config()).id, timeout=30)
    first.stop()
    # What a killed server leaves behind: one job claimed (running), one still queued.
    store = SqliteJobStore(data_dir / "jobs.sqlite3")
    running = store.submit(make_config()).job.id
    queued = store.submit(make_config()).job.id
    store.claim(running)
    store.close()

    second = start_server(data_dir=data_dir)
    with Client(second.base_url) as client:
        interrupted = client.get(running)
        queued_job = client.wait(queued, timeout=30)
        old_result = client.result(done.id)

    assert interrupted.status is JobStatus.FAILED
    assert interrupted.error is not None
    assert "the server restarted" in interrupted.error.detail
    assert queued_job.status is JobStatus.SUCCEEDED
    assert old_result.experiment_id == done.id


def test_shutdown_during_a_run_marks_the_job_interrupted(start_server: StartServer) -> None:
    server = start_server(backend=FakeInferenceBackend(sleep_s=60))
    with Client(server.base_url) as client:
        job_id = client.submit(make_config()).id
        wait_status(client, job_id, JobStatus.RUNNING)

    server.stop()
    store = SqliteJobStore(server.data_dir / "jobs.sqlite3")
    job = store.get(job_id)
    store.close()

    assert job is not None
    assert job.status is JobStatus.FAILED
    assert job.error is not None
    assert "server shut down" in job.error.detail


def test_async_client_does_the_same(live_server: LiveServer) -> None:
    async def scenario() -> tuple[Job, int, str]:
        async with AsyncClient(live_server.base_url) as client:
            job = await client.wait((await client.submit(make_config())).id, timeout=30)
            result = await client.result(job.id)
            listed = await client.list(status="succeeded")
            try:
                await client.get("missing")
            except NotFoundError as exc:
                missing = exc.problem.title
            return job, result.output_tokens + len(listed.items), missing

    job, count, missing = asyncio.run(scenario())

    assert job.status is JobStatus.SUCCEEDED
    assert count == 16 + 1
    assert missing == "Job not found"
