"""Many concurrent clients against a real server process on loopback, while an experiment runs.

Each simulated client has its own connection and loops for the run's length: it polls a job's
status (80%), lists jobs (15%) or submits an experiment (5%; they queue behind the running
one), then pauses about a polling interval. The clients run in their own process
(`tests.load.generator`); the figures are throughput, error rate and latency percentiles per
operation, as the clients saw them.

Beside them, ``LLEM_LOAD_DASHBOARDS`` open dashboards do what the jobs page and an experiment
page do (the job list every 3 s with the running job's event stream held open; the page, a
result and its power timeline), and a scraper reads ``/metrics`` every ``LLEM_LOAD_SCRAPE_S``:
the status p99 goal holds with them.

Knobs (environment): ``LLEM_LOAD_CLIENTS`` (200), ``LLEM_LOAD_DURATION_S`` (30),
``LLEM_LOAD_INTERVAL_S`` (1.0, each client's mean pause between requests),
``LLEM_LOAD_DASHBOARDS`` (5; 0 for none), ``LLEM_LOAD_SCRAPE_S`` (1.0; 0 for no scraper),
``LLEM_LOAD_STATUS_P99_MS`` (50, the goal asserted).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.load.generator import CLIENTS, DASHBOARDS, DURATION_S, SCRAPE_S, body
from tests.server_process import ROOT, ServerProcess

pytestmark = pytest.mark.load

STATUS_P99_LIMIT_MS = float(os.environ.get("LLEM_LOAD_STATUS_P99_MS", "50"))


def test_hundreds_of_clients_while_an_experiment_runs(
    server_process: Callable[..., ServerProcess], figures: Callable[[str, dict[str, Any]], None]
) -> None:
    server = server_process()
    with httpx.Client(base_url=server.url, timeout=10) as http:
        # A finished experiment, whose page the dashboards open (result and power timeline).
        finished = http.post("/v1/experiments", json=body(**{"fake.sleep_s": "1"})).json()["id"]
        deadline = time.monotonic() + 60
        while http.get(f"/v1/experiments/{finished}").json()["status"] != "succeeded":
            assert time.monotonic() < deadline, "the first experiment did not succeed"
            time.sleep(0.05)
        running = http.post("/v1/experiments", json=body(**{"fake.sleep_s": "600"})).json()["id"]
        job_ids = [running] + [
            http.post("/v1/experiments", json=body()).json()["id"] for _ in range(20)
        ]
        deadline = time.monotonic() + 30
        while http.get(f"/v1/experiments/{running}").json()["status"] != "running":
            assert time.monotonic() < deadline, "the experiment never started"
            time.sleep(0.05)

        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "tests.load.generator",
                server.url,
                "--finished",
                finished,
                *job_ids,
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=DURATION_S + 120,
            check=True,
        )
        report = json.loads(done.stdout)

        still = http.get(f"/v1/experiments/{running}").json()
        scrape = http.get("/metrics").text
        http.post(f"/v1/experiments/{running}/cancel")
    report["experiment_running_throughout"] = still["status"] == "running"
    figures("load", report)

    assert report["clients_connected"] == CLIENTS
    assert report["errors"] == 0, report["error_samples"]
    assert report["experiment_running_throughout"]
    assert report["operations"]["status"]["p99_ms"] < STATUS_P99_LIMIT_MS, report
    if SCRAPE_S > 0:
        assert report["operations"]["metrics"]["requests"] >= max(1, int(DURATION_S / SCRAPE_S / 2))
    if DASHBOARDS > 0:
        assert report["operations"]["dashboard_page"]["requests"] > 0
    # The running experiment's own sampler fed the GPU gauges while the load ran.
    assert 'source="experiment"' in scrape
    assert "llem_gpu_power_watts{" in scrape
    assert server.healthy()
