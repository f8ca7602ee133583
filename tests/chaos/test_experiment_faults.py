"""Faults of the experiment's own process, injected for real into a real server process:
SIGKILL from outside, a hang past the timeout, running out of memory. After each, the job
has failed with its reason, the process is gone, the next job runs and the server is healthy.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.chaos.conftest import (
    TRIALS,
    lost_results,
    pid_alive,
    record_trials,
    submit,
    wait_dead,
    wait_file,
    wait_job,
)
from tests.server_process import ServerProcess

pytestmark = pytest.mark.chaos

Figures = Callable[[str, dict[str, Any]], None]


def _after_fault(server: ServerProcess, http: httpx.Client, succeeded: list[str]) -> None:
    """The next job runs to the end, and the server still serves everything it finished."""
    healthy = wait_job(http, submit(http))
    assert healthy["status"] == "succeeded", healthy.get("error")
    succeeded.append(healthy["id"])
    assert server.healthy()


def test_experiment_killed_by_sigkill(
    server_process: Callable[..., ServerProcess], figures: Figures
) -> None:
    server = server_process()
    succeeded: list[str] = []
    started = time.monotonic()
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for trial in range(TRIALS):
            job_id = submit(http, sleep_s="60", pid_name=f"kill-{trial}")
            pid = int(wait_file(server.pid_dir / f"kill-{trial}.pid"))
            os.kill(pid, signal.SIGKILL)

            job = wait_job(http, job_id)
            assert job["status"] == "failed"
            assert "killed by SIGKILL" in job["error"]["detail"]
            wait_dead(pid)
            _after_fault(server, http, succeeded)
        lost = lost_results(http, succeeded)
    record_trials(figures, "chaos_experiment_sigkill", lost, started)


def test_experiment_hung_past_the_timeout(
    server_process: Callable[..., ServerProcess], figures: Figures
) -> None:
    # Long enough for the healthy job after each fault (load, warm-up, the measured window,
    # the counter-measured prefill passes and the sampler's process: about 1.5 s here, more
    # on a loaded machine), short enough that the hung one is stopped soon.
    server = server_process(experiment_timeout_s="4", cancel_grace_s="0.5")
    succeeded: list[str] = []
    started = time.monotonic()
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for trial in range(TRIALS):
            job_id = submit(http, fault="hang", pid_name=f"hang-{trial}")
            pid = int(wait_file(server.pid_dir / f"hang-{trial}.pid"))

            job = wait_job(http, job_id)
            assert job["status"] == "failed"
            assert "did not finish within 4 s" in job["error"]["detail"]
            assert not pid_alive(pid), "the hung process was left running"
            _after_fault(server, http, succeeded)
        lost = lost_results(http, succeeded)
    record_trials(figures, "chaos_experiment_hang", lost, started)


def test_experiment_out_of_memory(
    server_process: Callable[..., ServerProcess], figures: Figures
) -> None:
    server = server_process()
    succeeded: list[str] = []
    started = time.monotonic()
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for trial in range(TRIALS):
            job_id = submit(http, fault="oom", pid_name=f"oom-{trial}")
            pid = int(wait_file(server.pid_dir / f"oom-{trial}.pid"))

            job = wait_job(http, job_id)
            assert job["status"] == "failed"
            assert job["error"]["title"] == "Experiment ran out of memory"
            assert "MemoryError" in job["error"]["detail"]
            wait_dead(pid)
            _after_fault(server, http, succeeded)
        lost = lost_results(http, succeeded)
    record_trials(figures, "chaos_experiment_oom", lost, started)


@pytest.mark.parametrize("cue", ["lost", "power_not_supported"])
def test_nvml_fault_mid_run(
    server_process: Callable[..., ServerProcess], figures: Figures, tmp_path: Path, cue: str
) -> None:
    """The scripted GPU fails on cue while an experiment runs: a lost GPU fails the job with
    the meter's error; power readings turning NotSupported degrade the timeline, with a
    warning, and the counter's energy stands. Never a hang."""
    flag = tmp_path / "gpu-fault"
    server = server_process(test_gpu_cue_file=str(flag), test_gpu_cue=cue)
    succeeded: list[str] = []
    started = time.monotonic()
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for trial in range(TRIALS):
            job_id = submit(http, sleep_s="1.5", pid_name=f"nvml-{cue}-{trial}")
            wait_file(server.pid_dir / f"nvml-{cue}-{trial}.pid")
            flag.touch()
            job = wait_job(http, job_id, timeout_s=30)
            flag.unlink()
            if cue == "lost":
                assert job["status"] == "failed", job
                assert job["error"]["title"] == "Energy measurement failed"
                assert "GPU is lost" in job["error"]["detail"]
            else:
                assert job["status"] == "succeeded", job
                result = http.get(f"/v1/experiments/{job_id}/result").json()
                assert "sampler_read_errors" in [w["code"] for w in result["warnings"]]
                assert result["energy"]["energy_j"]["value"] > 0
                succeeded.append(job_id)
            _after_fault(server, http, succeeded)
        lost = lost_results(http, succeeded)
    record_trials(figures, f"chaos_nvml_{cue}", lost, started)
