"""What the Prometheus metrics cost the service: CPU time per HTTP request for the request
metrics middleware, and per scrape of /metrics, on this machine.

CPU time (``time.process_time``) rather than wall time, so the figure is the work itself and
not the scheduling of a shared machine. The middleware is timed around a do-nothing ASGI app,
once bare and once wrapped, over the same requests; a scrape is ``generate_latest`` of a
registry holding what a busy server would: ``--routes`` route templates x 3 statuses (with
their latency histograms), 5 job statuses, ``--gpus`` GPUs with live readings.

    .venv/bin/python benchmarks/metrics_cost.py [--requests 50000] [--gpus 8] [--routes 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llem_service.energy.readings import GpuReading
from llem_service.monitoring.gpus import GpuTelemetry
from llem_service.monitoring.http import RequestMetrics
from llem_service.monitoring.registry import ServiceMetrics
from prometheus_client import generate_latest

from tests.machine import machine

RESULTS = Path(__file__).parent / "results"


class _Route:
    path = "/v1/experiments/{job_id}"


async def _bare(scope: dict[str, Any], receive: Any, send: Any) -> None:
    scope["route"] = _Route()
    scope["endpoint"] = _bare
    scope["path_params"] = {"job_id": scope["path"].rsplit("/", 1)[-1]}
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def _cpu_per_request_s(app: Any, n: int) -> float:
    async def run() -> float:
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b""}

        async def send(message: dict[str, Any]) -> None:
            pass

        started = time.process_time()
        for i in range(n):
            scope = {"type": "http", "method": "GET", "path": f"/v1/experiments/{i:032x}"}
            await app(scope, receive, send)
        return (time.process_time() - started) / n

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--routes", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    telemetry = GpuTelemetry()
    metrics = ServiceMetrics(telemetry)
    wrapped = RequestMetrics(_bare, metrics)
    bare_s, wrapped_s = [], []
    for _ in range(args.repeats):
        bare_s.append(_cpu_per_request_s(_bare, args.requests))
        wrapped_s.append(_cpu_per_request_s(wrapped, args.requests))
    middleware_s = statistics.median(wrapped_s) - statistics.median(bare_s)

    for r in range(args.routes):
        for status in ("200", "404", "422"):
            metrics.http_requests.labels(f"/v1/route{r}/{{id}}", "GET", status).inc()
        for value in (0.001, 0.01, 0.1):
            metrics.http_duration.labels(f"/v1/route{r}/{{id}}", "GET").observe(value)
    now = time.time()
    telemetry.update(
        [
            GpuReading(f"GPU-{g:08d}", "Fake H100", now, 300.0, 10**9, 60, 1980, 90, 2**34)
            for g in range(args.gpus)
        ],
        "idle_poll",
    )
    scrapes = 200
    scrape_s = []
    size = 0
    for _ in range(args.repeats):
        started = time.process_time()
        for _ in range(scrapes):
            size = len(generate_latest(metrics.registry))
        scrape_s.append((time.process_time() - started) / scrapes)

    figures = {
        "middleware_cpu_per_request_us": round(middleware_s * 1e6, 2),
        "bare_app_cpu_per_request_us": round(statistics.median(bare_s) * 1e6, 2),
        "scrape_cpu_ms": round(statistics.median(scrape_s) * 1e3, 3),
        "scrape_bytes": size,
        "routes": args.routes,
        "gpus": args.gpus,
        "requests": args.requests,
        "repeats": args.repeats,
        "machine": machine(),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "metrics_cost.json").write_text(json.dumps(figures, indent=2) + "\n")
    (RESULTS / "metrics_cost.md").write_text(
        "# What the Prometheus metrics cost\n\n"
        f"`benchmarks/metrics_cost.py` on {figures['machine']['cpus']} CPUs "
        f"({figures['machine']['date']}, load {figures['machine']['load_average_1m']}), "
        "CPU time, median of "
        f"{args.repeats} runs:\n\n"
        "| what | cost |\n| --- | --- |\n"
        "| request metrics middleware, per request | "
        f"{figures['middleware_cpu_per_request_us']} us "
        f"(a do-nothing ASGI app alone: {figures['bare_app_cpu_per_request_us']} us) |\n"
        f"| one scrape of /metrics ({args.routes} routes x 3 statuses with histograms, "
        f"{args.gpus} GPUs) | {figures['scrape_cpu_ms']} ms, {size:,} bytes |\n"
    )
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
