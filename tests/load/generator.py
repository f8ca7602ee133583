"""The load generator: simulated clients, each with its own connection, in their own process.

It runs apart from pytest so that the test process's own work (coverage tracing, above all)
never delays a client and shows up as server latency. ``python -m tests.load.generator URL
JOB_ID...`` prints the report as JSON; see `tests.load.test_load` for the knobs.
"""

from __future__ import annotations

import asyncio
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


async def _run_load(url: str, job_ids: list[str]) -> dict[str, Any]:
    latencies: dict[str, list[float]] = defaultdict(list)
    errors: list[str] = []
    connected: list[int] = []
    stop_at = time.monotonic() + DURATION_S + INTERVAL_S
    started = time.monotonic()
    await asyncio.gather(
        *(
            _client(url, job_ids, stop_at, latencies, errors, connected, seed)
            for seed in range(CLIENTS)
        )
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
    url, *job_ids = sys.argv[1:]
    # The clients' own garbage collections would pause every request in flight and be counted
    # as server latency: this short-lived process does without.
    gc.disable()
    print(json.dumps(asyncio.run(_run_load(url, job_ids))))


if __name__ == "__main__":
    main()
