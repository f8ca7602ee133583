"""The fixed cost of a study point, with the model kept loaded between points and without.

Goal (issue 12): under 0.5 s per point with reuse, on the CPU with a tiny model (a single
experiment's fixed cost was about 3 s).

A real ``llem-service`` runs two studies of the same points on a tiny GPT-2, one with
``isolation: reuse`` and one with ``isolation: process``. A point's fixed cost is everything
it costs besides its measurement: the time from the end of the point before it to its own
end, less its measured window and warm-up (none here). That is scheduling, starting the
experiment process and loading the model (without reuse only), tokenizing, assembling and
saving the result. The first point of each study is left out (the model loads in both).

    .venv/bin/python benchmarks/study_overhead.py [--points 8]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from llem_client import Client

from tests.integration.conftest import build_gpt2
from tests.machine import machine

RESULTS = Path(__file__).parent / "results"


def _serve(models: Path, data: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "LLEM_PORT": str(port),
        "LLEM_DATA_DIR": str(data),
        "LLEM_MODEL_ROOTS": str(models),
        "LLEM_LOG_LEVEL": "warning",
    }
    bin_dir = Path(sys.executable).parent
    process = subprocess.Popen([str(bin_dir / "llem-service")], env=env)
    url = f"http://127.0.0.1:{port}"
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.1)


def _fixed_costs(client: Client, isolation: str, points: int) -> list[float]:
    study = client.submit_study(
        {
            "name": f"overhead-{isolation}",
            "base": {
                "model": "bench-gpt2",
                "precision": "fp32",
                "prompts": {"input_len": 16},
                "n_prompts": 4,
                "batch_size": 4,
                "max_output_tokens": 8,
                "warmup": {"batches": 0},
            },
            "sweep": {"prompts.seed": list(range(points))},
            "order": "sequential",
            "isolation": isolation,
        }
    )
    done = client.wait_study(study.id, timeout=600)
    assert done.status.value == "succeeded", done.model_dump_json()
    costs = []
    previous_end = None
    for run in done.runs:
        job = client.get(run.job_id)
        result = client.result(run.job_id)
        assert job.finished_at is not None
        if previous_end is not None:
            span_s = (job.finished_at - previous_end).total_seconds()
            costs.append(span_s - result.total_inference_time_sec - result.warmup_time_sec)
        previous_end = job.finished_at
    return costs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--points", type=int, default=8)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp())
    build_gpt2(root / "models" / "bench-gpt2")
    process, url = _serve(root / "models", root / "data")
    try:
        with Client(url) as client:
            by_mode: dict[str, Any] = {}
            for isolation in ("reuse", "process"):
                costs = _fixed_costs(client, isolation, args.points)
                by_mode[isolation] = {
                    "median_s": round(statistics.median(costs), 3),
                    "min_s": round(min(costs), 3),
                    "max_s": round(max(costs), 3),
                    "points_measured": len(costs),
                }
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    record = {
        "benchmark": "fixed cost per study point (end of the previous point to the end of this "
        "one, less its measured window and warm-up), tiny GPT-2 on the CPU",
        "goal": "under 0.5 s with reuse",
        "with_reuse": by_mode["reuse"],
        "without_reuse": by_mode["process"],
        "machine": machine(),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "study_overhead.json").write_text(json.dumps(record, indent=2) + "\n")
    reuse, fresh = by_mode["reuse"], by_mode["process"]
    (RESULTS / "study_overhead.md").write_text(
        "# Fixed cost per study point\n\n"
        f"{record['benchmark']}; {args.points} points per study, the first left out; "
        f"{record['machine']['cpus']} CPUs, {record['machine']['date']}.\n\n"
        "| isolation | median | min | max |\n| --- | --- | --- | --- |\n"
        f"| reuse (one process keeps the model) | {reuse['median_s']} s | {reuse['min_s']} s "
        f"| {reuse['max_s']} s |\n"
        f"| process (a fresh process per point) | {fresh['median_s']} s | {fresh['min_s']} s "
        f"| {fresh['max_s']} s |\n\n"
        f"Goal: {record['goal']}. Command: `.venv/bin/python benchmarks/study_overhead.py`.\n"
    )
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
