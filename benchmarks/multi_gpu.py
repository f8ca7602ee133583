"""A 32-point study on a host of 4 GPUs against the same study one GPU at a time.

Goal (issue 14): at least 3.5 times faster with 4 GPUs.

Two real ``llem-service`` processes (`tests.server_process`) on hosts of scripted GPUs: the
real NVML meter over the scripted NVML (``LLEM_TEST_GPUS``: 4, then 1) and the scripted
backend on the GPUs of each grant, whose measured run sleeps ``--point-s`` seconds (a stand-in
for the GPU's work; the process, the meter with its sampler, the scheduler, the result files
are all real). The same study runs on each: 32 points (``prompts.seed`` 0..31), one cycle, the
model kept loaded between points (the default). Wall time is from the study's submit to its
end; the ratio of the two is the speed-up.

    .venv/bin/python benchmarks/multi_gpu.py [--points 32] [--point-s 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llem_client import Client, StudyStatus

from tests.machine import machine
from tests.server_process import ServerProcess

RESULTS = Path(__file__).parent / "results"


def study_document(points: int, point_s: float) -> dict[str, Any]:
    return {
        "name": f"{points} points",
        "base": {
            "model": "scripted",
            "precision": "fp32",
            "prompts": {"input_len": 8},
            "n_prompts": 4,
            "batch_size": 2,
            "max_output_tokens": 4,
            "warmup": {"batches": 1},
            "baseline": {"enabled": False},
            "tags": {"fake.sleep_s": str(point_s)},
        },
        "sweep": {"prompts.seed": list(range(points))},
    }


def run_study(gpus: int, points: int, point_s: float, work: Path) -> dict[str, Any]:
    """Wall time of the study on a host of ``gpus`` scripted GPUs, and what ran at once."""
    root = work / f"gpus-{gpus}"
    server = ServerProcess(
        root / "data",
        root / "pids",
        root / "server.log",
        {"LLEM_TEST_GPUS": str(gpus), "LLEM_LOG_LEVEL": "warning"},
    )
    server.start()
    try:
        with Client(server.url, timeout=60) as client:
            started = time.perf_counter()
            study = client.submit_study(study_document(points, point_s))
            study = client.wait_study(study.id, timeout=3600, poll_interval_s=0.5)
            wall_s = time.perf_counter() - started
            assert study.status is StudyStatus.SUCCEEDED, [r.error for r in study.runs]
            placements = [client.result(run.job_id).placement for run in study.runs]
    finally:
        server.stop()
    used = {g for p in placements if p for g in p.gpus}
    most_beside = max(len(p.overlapping_experiments) for p in placements if p)
    return {
        "gpus": gpus,
        "wall_s": round(wall_s, 2),
        "per_point_s": round(wall_s / points, 3),
        "gpus_used": len(used),
        "most_experiments_beside_one": most_beside,
    }


def _row(host: str, figures: dict[str, Any]) -> str:
    return (
        f"| {host} | {figures['wall_s']} s | {figures['per_point_s']} s | "
        f"{figures['gpus_used']} | {figures['most_experiments_beside_one']} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--points", type=int, default=32)
    parser.add_argument("--point-s", type=float, default=3.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="llem-multi-gpu-") as tmp:
        four = run_study(4, args.points, args.point_s, Path(tmp))
        print(f"4 GPUs: {four}", flush=True)
        one = run_study(1, args.points, args.point_s, Path(tmp))
        print(f"1 GPU: {one}", flush=True)
    speedup = one["wall_s"] / four["wall_s"]
    figures = {
        "points": args.points,
        "point_s": args.point_s,
        "four_gpus": four,
        "one_gpu": one,
        "speedup": round(speedup, 2),
        "goal_speedup": 3.5,
        "machine": machine(),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "multi_gpu.json").write_text(json.dumps(figures, indent=2) + "\n")
    (RESULTS / "multi_gpu.md").write_text(
        f"""# A study on 4 GPUs against one GPU at a time

{args.points} points, each a scripted experiment whose measured run takes {args.point_s:g} s,
through a real `llem-service` on a host of scripted GPUs (the real NVML meter over the
scripted NVML, the scripted backend on the GPUs of each grant); {os.cpu_count()} CPUs,
{figures["machine"]["date"]}, load {figures["machine"]["load_average_1m"]} when it ended.

| host | wall time | per point | GPUs used | most experiments beside one |
| --- | --- | --- | --- | --- |
{_row("4 GPUs", four)}
{_row("1 GPU", one)}

Speed-up: **{speedup:.2f}x** (goal: at least 3.5x). Command:
`.venv/bin/python benchmarks/multi_gpu.py --points {args.points} --point-s {args.point_s:g}`.
"""
    )
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
