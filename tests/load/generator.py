"""The load generator: simulated clients, each with its own connection, in their own process.

It runs apart from pytest so that the test process's own work (coverage tracing, above all)
never delays a client and shows up as server latency. ``python -m tests.load.generator URL
JOB_ID...`` prints the report as JSON; see `tests.load.test_load` for the knobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import random
import sys
import time
from collections import defaultdict
from typing import Any

import httpx

from tests.conftest import make_config

CLIENTS = int(os.environ.get("LLEM_LOAD_CLIENTS", "200"))
DURATION_S = float(os.environ.get("LLEM_LOAD_DURATION_S", "30"))
INTERVAL_S = float(os.environ.get("LLEM_LOAD_INTERVAL_S", "1.0"))
#: Open dashboards, each doing what the jobs page and an experiment page do (see `_dashboard`).
DASHBOARDS = int(os.environ.get("LLEM_LOAD_DASHBOARDS", "5"))
#: Seconds between two scrapes of /metrics (Prometheus's default is 15 s); 0: no scraper.
SCRAPE_S = float(os.environ.get("LLEM_LOAD_SCRAPE_S", "1.0"))
#: The dashboard's jobs page re-reads the list this often (ui/static/js/pages/jobs.js).
DASHBOARD_REFRESH_S = 3.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def body(**tags: str) -> dict[str, Any]:
    return make_config(tags=tags).model_dump(mode="json", exclude_unset=True)


async def _client(
    url: str,
    job_ids: list[str],
    stop_at: float,
    latencies: dict[str, list[float]],
    errors: list[str],
    connected: list[int],
    seed: int,
) -> None:
    rng = random.Random(seed)
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(base_url=url, timeout=10, limits=limits) as http:
        await http.get("/healthz")  # open this client's connection before the clock starts
        connected.append(1)
        await asyncio.sleep(rng.uniform(0, INTERVAL_S))  # spread the clients' phases
        while time.monotonic() < stop_at:
            roll = rng.random()
            if roll < 0.80:
                op, request = "status", http.get(f"/v1/experiments/{rng.choice(job_ids)}")
                expected = 200
            elif roll < 0.95:
                op, request = "list", http.get("/v1/experiments", params={"limit": 20})
                expected = 200
            else:
                op, request = "submit", http.post("/v1/experiments", json=body())
                expected = 202
            started = time.perf_counter()
            try:
                response = await request
            except httpx.HTTPError as exc:
                errors.append(f"{op}: {type(exc).__name__}: {exc}")
            else:
                latencies[op].append(time.perf_counter() - started)
                if response.status_code != expected:
                    errors.append(f"{op}: HTTP {response.status_code}: {response.text[:200]}")
            await asyncio.sleep(INTERVAL_S * rng.uniform(0.5, 1.5))


async def _timed(
    http: httpx.AsyncClient,
    op: str,
    path: str,
    latencies: dict[str, list[float]],
    errors: list[str],
) -> httpx.Response | None:
    started = time.perf_counter()
    try:
        response = await http.get(path)
    except httpx.HTTPError as exc:
        errors.append(f"{op}: {type(exc).__name__}: {exc}")
        return None
    latencies[op].append(time.perf_counter() - started)
    if response.status_code != 200:
        errors.append(f"{op}: HTTP {response.status_code}: {response.text[:200]}")
    return response


async def _follow_events(url: str, job_id: str, stop_at: float, errors: list[str]) -> None:
    """The running job's event stream, held open as the jobs page holds it."""
    async with httpx.AsyncClient(base_url=url, timeout=None) as http:
        try:
            async with http.stream("GET", f"/v1/experiments/{job_id}/events") as response:
                if response.status_code != 200:
                    errors.append(f"events: HTTP {response.status_code}")
                    return
                async for _ in response.aiter_lines():
                    if time.monotonic() > stop_at:
                        return
        except httpx.HTTPError as exc:
            errors.append(f"events: {type(exc).__name__}: {exc}")


async def _dashboard(
    url: str,
    running: str,
    finished: str,
    stop_at: float,
    latencies: dict[str, list[float]],
    errors: list[str],
    seed: int,
) -> None:
    """One open dashboard: the jobs page (the list every few seconds, the running job's event
    stream) and, every fourth refresh, an experiment page (the page, the job, its result and
    its power timeline as CSV)."""
    rng = random.Random(seed)
    stream = asyncio.create_task(_follow_events(url, running, stop_at, errors))
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        await asyncio.sleep(rng.uniform(0, DASHBOARD_REFRESH_S))
        n = 0
        while time.monotonic() < stop_at:
            await _timed(http, "dashboard_list", "/v1/experiments?limit=100", latencies, errors)
            if n % 4 == 0:
                for path in (
                    f"/ui/experiments/{finished}",
                    f"/v1/experiments/{finished}",
                    f"/v1/experiments/{finished}/result",
                    f"/v1/experiments/{finished}/timeseries?format=csv",
                ):
                    await _timed(http, "dashboard_page", path, latencies, errors)
            n += 1
            await asyncio.sleep(DASHBOARD_REFRESH_S * rng.uniform(0.9, 1.1))
    stream.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await stream


async def _scraper(
    url: str, stop_at: float, latencies: dict[str, list[float]], errors: list[str]
) -> None:
    """Prometheus, scraping far more often than it would."""
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        while time.monotonic() < stop_at:
            await _timed(http, "metrics", "/metrics", latencies, errors)
            await asyncio.sleep(max(0.0, min(SCRAPE_S, stop_at - time.monotonic())))


async def _run_load(url: str, job_ids: list[str], finished: str | None) -> dict[str, Any]:
    latencies: dict[str, list[float]] = defaultdict(list)
    errors: list[str] = []
    connected: list[int] = []
    stop_at = time.monotonic() + DURATION_S + INTERVAL_S
    started = time.monotonic()
    extra = []
    if finished is not None:
        extra = [
            _dashboard(url, job_ids[0], finished, stop_at, latencies, errors, seed)
            for seed in range(DASHBOARDS)
        ]
        if SCRAPE_S > 0:
            extra.append(_scraper(url, stop_at, latencies, errors))
    await asyncio.gather(
        *(
            _client(url, job_ids, stop_at, latencies, errors, connected, seed)
            for seed in range(CLIENTS)
        ),
        *extra,
    )
    elapsed_s = time.monotonic() - started
    requests = sum(len(v) for v in latencies.values()) + len(errors)
    per_op = {
        op: {
            "requests": len(values),
            "p50_ms": round(percentile(values, 0.50) * 1000, 2),
            "p90_ms": round(percentile(values, 0.90) * 1000, 2),
            "p99_ms": round(percentile(values, 0.99) * 1000, 2),
            "max_ms": round(max(values) * 1000, 2),
        }
        for op, values in sorted(latencies.items())
    }
    return {
        "clients": CLIENTS,
        "clients_connected": len(connected),
        "dashboards": DASHBOARDS if finished is not None else 0,
        "metrics_scrape_interval_s": SCRAPE_S if finished is not None and SCRAPE_S > 0 else None,
        "duration_s": round(elapsed_s, 1),
        "interval_s": INTERVAL_S,
        "requests": requests,
        "throughput_rps": round(requests / elapsed_s, 1),
        "errors": len(errors),
        "error_rate": len(errors) / requests if requests else 0.0,
        "error_samples": errors[:5],
        "operations": per_op,
    }


def main() -> None:
    """``URL [--finished JOB] JOB...``: the first JOB is the running one; with ``--finished``,
    dashboards and a /metrics scraper join the clients."""
    url, *job_ids = sys.argv[1:]
    finished = None
    if job_ids[:1] == ["--finished"]:
        finished, job_ids = job_ids[1], job_ids[2:]
    # The clients' own garbage collections would pause every request in flight and be counted
    # as server latency: this short-lived process does without.
    gc.disable()
    print(json.dumps(asyncio.run(_run_load(url, job_ids, finished))))


if __name__ == "__main__":
    main()
