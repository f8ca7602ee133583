"""The service at the edges of its valid inputs: a thousand queued jobs, a config at the body
limit, a workload with thousands of progress events streamed to many subscribers, a quiet
stream kept open by keep-alives, and a large JSONL dataset."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from llem_client import AsyncClient, Job, JobStatus
from llem_service.backends.base import BackendError
from llem_service.backends.prompts import read_jsonl

from tests.chaos.conftest import body, submit, wait_job
from tests.server_process import ServerProcess

pytestmark = pytest.mark.stress

Figures = Callable[[str, dict[str, Any]], None]
QUEUED = 1000


def test_a_thousand_queued_jobs(
    server_process: Callable[..., ServerProcess], figures: Figures
) -> None:
    server = server_process()
    with httpx.Client(base_url=server.url, timeout=30) as http:
        running = submit(http, sleep_s="600")
        started = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            queued = list(pool.map(lambda _: submit(http), range(QUEUED)))
        submit_s = time.monotonic() - started

        info = http.get("/v1/info").json()
        started = time.monotonic()
        listed: list[str] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 100, **({"cursor": cursor} if cursor else {})}
            page = http.get("/v1/experiments", params=params).json()
            listed.extend(job["id"] for job in page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        list_s = time.monotonic() - started

        in_order = [job_id for job_id in reversed(listed) if job_id != running]  # oldest first
        keep = in_order[-10:]
        started = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            cancels = list(
                pool.map(lambda j: http.post(f"/v1/experiments/{j}/cancel"), in_order[:-10])
            )
        cancel_s = time.monotonic() - started
        http.post(f"/v1/experiments/{running}/cancel")
        started = time.monotonic()
        finished = [wait_job(http, job_id) for job_id in keep]
        drain_s = time.monotonic() - started
    figures(
        "stress_queue",
        {
            "jobs_queued": QUEUED,
            "submit_rate_per_s": round(QUEUED / submit_s),
            "list_all_pages_s": round(list_s, 2),
            "cancel_rate_per_s": round((QUEUED - 10) / cancel_s),
            "last_10_jobs_run_s": round(drain_s, 2),
        },
    )

    assert info["queue_length"] == QUEUED
    assert info["running_job"] == running
    assert len(listed) == len(set(listed)) == QUEUED + 1
    assert set(listed) == {running, *queued}
    assert all(r.status_code == 200 and r.json()["status"] == "cancelled" for r in cancels)
    assert [job["status"] for job in finished] == ["succeeded"] * 10
    started_at = [job["started_at"] for job in finished]
    assert started_at == sorted(started_at)  # they ran in submission order


def _config_of_size(size: int) -> dict[str, Any]:
    """A valid config whose JSON is close to ``size`` bytes: inline prompts of 4 KiB each."""
    config = body()
    prompt = "word " * 800
    overhead = len(json.dumps(config)) + 200
    n = (size - overhead) // (len(prompt) + 4)
    config["prompts"] = {"source": "inline", "prompts": [prompt] * n}
    return config


def test_a_config_just_under_the_body_limit_runs(
    server_process: Callable[..., ServerProcess], figures: Figures
) -> None:
    limit = 4 * 2**20  # the default LLEM_MAX_BODY_BYTES
    server = server_process()
    config = _config_of_size(limit - 2000)
    data = json.dumps(config).encode()
    headers = {"content-type": "application/json"}
    assert len(data) <= limit
    with httpx.Client(base_url=server.url, timeout=60) as http:
        started = time.monotonic()
        response = http.post("/v1/experiments", content=data, headers=headers)
        submit_s = time.monotonic() - started
        assert response.status_code == 202, response.text[:300]
        job = wait_job(http, response.json()["id"])
        result = http.get(f"/v1/experiments/{job['id']}/result")
        over = http.post("/v1/experiments", content=data + b" " * (limit - len(data) + 1))
    figures(
        "stress_large_config",
        {
            "body_bytes": len(data),
            "submit_s": round(submit_s, 3),
            "result_bytes": len(result.content),
        },
    )

    assert job["status"] == "succeeded"
    assert result.json()["config"]["prompts"] == config["prompts"]
    assert over.status_code == 413


def test_thousands_of_progress_events_to_many_subscribers(
    server_process: Callable[..., ServerProcess], figures: Figures
) -> None:
    server = server_process()
    n_prompts, subscribers = 3000, 20
    config = body(sleep_s="6")
    config.update(n_prompts=n_prompts, batch_size=1)

    async def watch(job_id: str) -> list[Job]:
        async with AsyncClient(server.url) as client:
            return [job async for job in client.events(job_id)]

    async def scenario() -> tuple[str, list[list[Job]]]:
        async with AsyncClient(server.url) as client:
            job = await client.submit(config)
        streams = await asyncio.gather(*(watch(job.id) for _ in range(subscribers)))
        return job.id, list(streams)

    started = time.monotonic()
    job_id, streams = asyncio.run(scenario())
    elapsed_s = time.monotonic() - started
    counts = [len(stream) for stream in streams]
    figures(
        "stress_sse",
        {
            "progress_updates": n_prompts,
            "subscribers": subscribers,
            "events_per_subscriber_min": min(counts),
            "events_per_subscriber_max": max(counts),
            "seconds": round(elapsed_s, 1),
        },
    )

    for stream in streams:
        assert stream[-1].id == job_id
        assert stream[-1].status is JobStatus.SUCCEEDED
        assert all(not job.status.terminal for job in stream[:-1])
        done = [j.progress.completed for j in stream if j.progress.phase == "measuring"]
        assert done == sorted(done)  # never backwards, whatever was coalesced
        assert len(stream) > 100  # the stream kept up, not one event at the end


def test_a_quiet_stream_stays_open_with_keepalives(
    server_process: Callable[..., ServerProcess],
) -> None:
    server = server_process(sse_keepalive_s="0.2")
    config = body(sleep_s="8")
    config.update(n_prompts=1, batch_size=1)
    lines: list[str] = []
    with httpx.Client(base_url=server.url, timeout=30) as http:
        job_id = http.post("/v1/experiments", json=config).json()["id"]
        with http.stream("GET", f"/v1/experiments/{job_id}/events") as stream:
            lines.extend(stream.iter_lines())

    keepalives = [line for line in lines if line.startswith(": keep-alive")]
    data = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    assert len(keepalives) >= 20  # ~8 s of silence at 0.2 s
    assert data[-1]["status"] == "succeeded"


def test_a_large_dataset_is_read_within_its_bound(tmp_path: Path, figures: Figures) -> None:
    path = tmp_path / "prompts.jsonl"
    line = json.dumps({"prompt": "lorem ipsum " * 16, "id": 0}) + "\n"
    n_lines = (64 * 2**20) // len(line)
    path.write_text(line * n_lines)
    size = path.stat().st_size

    started = time.monotonic()
    prompts = read_jsonl(path, "prompt", max_bytes=size)
    read_s = time.monotonic() - started
    with pytest.raises(BackendError, match="larger than the server's limit"):
        read_jsonl(path, "prompt", max_bytes=size - 1)
    figures("stress_dataset", {"bytes": size, "lines": n_lines, "read_s": round(read_s, 2)})

    assert len(prompts) == n_lines
