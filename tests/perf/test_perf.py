"""The service's own overheads against a committed baseline, with a tolerance.

Measured: submit-to-start (POST until the experiment's process is running and reporting),
status latency (GET of a job), and the CLI's start time (``llem-client --help``). Each check
fails when the median exceeds ``baseline x ratio + slack``; the ratio and slack absorb a shared
machine's noise, not a regression of the order of the figure itself.

``scripts/test -m perf --update-perf-baseline`` re-records the baseline
(``benchmarks/results/perf_baseline.json``) instead of checking against it.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.chaos.conftest import body, submit, wait_job
from tests.conftest import RESULTS_DIR
from tests.machine import machine
from tests.server_process import ServerProcess

pytestmark = pytest.mark.perf

BASELINE = RESULTS_DIR / "perf_baseline.json"
#: Allowed: median <= baseline x RATIO + SLACK_S[metric].
RATIO = 2.0
SLACK_S = {"submit_to_start_s": 0.100, "status_latency_s": 0.002, "cli_start_s": 0.050}


class Baseline:
    """Collects this run's medians; checks them, or writes them as the new baseline."""

    def __init__(self, update: bool) -> None:
        self.update = update
        self.recorded: dict[str, Any] = (
            json.loads(BASELINE.read_text()) if BASELINE.exists() else {}
        )
        self.measured: dict[str, dict[str, float]] = {}

    def check(self, metric: str, samples: list[float]) -> None:
        ordered = sorted(samples)
        figures = {
            "median_s": statistics.median(ordered),
            "p90_s": ordered[int(0.9 * (len(ordered) - 1))],
            "n": len(ordered),
        }
        self.measured[metric] = figures
        if self.update:
            return
        if metric not in self.recorded.get("metrics", {}):
            pytest.fail(f"no baseline for {metric}: run with --update-perf-baseline")
        base = self.recorded["metrics"][metric]["median_s"]
        allowed = base * RATIO + SLACK_S[metric]
        assert figures["median_s"] <= allowed, (
            f"{metric}: median {figures['median_s'] * 1000:.1f} ms exceeds the baseline "
            f"{base * 1000:.1f} ms x {RATIO} + {SLACK_S[metric] * 1000:.0f} ms"
        )

    def save(self) -> None:
        metrics = {**self.recorded.get("metrics", {}), **self.measured}
        document = {
            "metrics": metrics,
            "tolerance": {"ratio": RATIO, "slack_s": SLACK_S},
            "machine": machine(),
        }
        BASELINE.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")


@pytest.fixture(scope="module")
def baseline(request: pytest.FixtureRequest) -> Iterator[Baseline]:
    recorder = Baseline(bool(request.config.getoption("--update-perf-baseline")))
    yield recorder
    if recorder.update:
        recorder.save()


@pytest.fixture
def server(server_process: Callable[..., ServerProcess]) -> ServerProcess:
    return server_process()


def test_submit_to_start(server: ServerProcess, baseline: Baseline) -> None:
    samples = []
    with httpx.Client(base_url=server.url, timeout=30) as http:
        wait_job(http, submit(http))  # the first spawn warms the page cache
        for _ in range(10):
            started = time.perf_counter()
            job_id = http.post("/v1/experiments", json=body()).json()["id"]
            while True:
                job = http.get(f"/v1/experiments/{job_id}").json()
                if job["progress"]["phase"] not in {"queued", "starting"}:
                    break
                time.sleep(0.002)
            samples.append(time.perf_counter() - started)
            wait_job(http, job_id)

    baseline.check("submit_to_start_s", samples)


def test_status_latency(server: ServerProcess, baseline: Baseline) -> None:
    samples = []
    with httpx.Client(base_url=server.url, timeout=30) as http:
        job_id = submit(http, sleep_s="60")  # a running job: the scheduler is busy too
        for _ in range(300):
            started = time.perf_counter()
            response = http.get(f"/v1/experiments/{job_id}")
            samples.append(time.perf_counter() - started)
            assert response.status_code == 200
        http.post(f"/v1/experiments/{job_id}/cancel")

    baseline.check("status_latency_s", samples)


def test_cli_start_time(baseline: Baseline) -> None:
    cli = Path(sys.executable).parent / "llem-client"
    samples = []
    for _ in range(10):
        started = time.perf_counter()
        subprocess.run([str(cli), "--help"], capture_output=True, check=True, timeout=30)
        samples.append(time.perf_counter() - started)

    baseline.check("cli_start_s", samples)
