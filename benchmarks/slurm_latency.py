"""Submit to start of an experiment under the Slurm executor, on a one-node Slurm cluster.

Issue 14 asks for the figure. A real ``llem-service`` (`tests.server_process`, the scripted
backend) with ``LLEM_EXECUTOR=slurm`` on the tier's one-node cluster (`tests.slurm.cluster`,
Debian's slurm-wlm; needs root). One experiment at a time, so nothing waits for a free node,
``--samples`` times:

- *submit*: the client's ``POST /v1/experiments`` is sent;
- *sbatch*: the batch script is written, just before sbatch (the scheduler took the job and
  the session built its directory);
- *node*: the node-side runner has started (``started.json``: Python up, the experiment
  unpickled, the meter probed), just before it starts the experiment's process;
- *measuring*: the experiment reports its measured phase (process started, model loaded,
  warmed up), as the service's job progress shows it.

Slurm's own scheduling here is event-driven (``sched/builtin``): a real cluster adds its queue
wait and its scheduler's interval on top, and a node's boot or prolog if it has them.

    sudo .venv/bin/python benchmarks/slurm_latency.py [--samples 10]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llem_client import Client, JobStatus

from tests.machine import machine
from tests.server_process import ROOT, ServerProcess
from tests.slurm.cluster import SlurmCluster

RESULTS = Path(__file__).parent / "results"

CONFIG = {
    "model": "scripted",
    "precision": "fp32",
    "prompts": {"input_len": 8},
    "n_prompts": 4,
    "batch_size": 2,
    "max_output_tokens": 4,
    "warmup": {"batches": 1},
    "baseline": {"enabled": False},
}


def sample(client: Client, shared: Path, poll_s: float) -> dict[str, float]:
    submitted = time.time()
    job_id = client.submit(CONFIG).id
    measuring = None
    while True:
        job = client.get(job_id)
        if measuring is None and job.progress.phase in {"measuring", "saving", "done"}:
            measuring = time.time()
        if job.status.terminal:
            break
        time.sleep(poll_s)
    assert job.status is JobStatus.SUCCEEDED, job.error
    job_dir = shared / "jobs" / job_id
    started = json.loads((job_dir / "started.json").read_text())
    sbatch = (job_dir / "job.sh").stat().st_mtime
    assert measuring is not None
    return {
        "submit_to_sbatch_s": sbatch - submitted,
        "sbatch_to_node_s": started["started_at"] - sbatch,
        "submit_to_node_s": started["started_at"] - submitted,
        "submit_to_measuring_s": measuring - submitted,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--poll-s", type=float, default=0.5, help="LLEM_SLURM_POLL_S")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="llem-slurm-latency-") as tmp:
        root = Path(tmp)
        cluster = SlurmCluster(root / "cluster")
        cluster.start()
        server = ServerProcess(
            root / "data",
            root / "pids",
            root / "server.log",
            {
                "SLURM_CONF": str(cluster.conf),
                "PYTHONPATH": str(ROOT),
                "LLEM_EXECUTOR": "slurm",
                "LLEM_SLURM_SHARED_DIR": str(root / "shared"),
                "LLEM_SLURM_GRES": "",
                "LLEM_SLURM_EXCLUSIVE": "false",
                "LLEM_SLURM_POLL_S": str(args.poll_s),
            },
        )
        try:
            server.start()
            with Client(server.url) as client:
                sample(client, root / "shared", 0.05)  # warm: the first imports fill caches
                samples = [sample(client, root / "shared", 0.05) for _ in range(args.samples)]
        finally:
            server.stop()
            cluster.stop()

    figures: dict[str, Any] = {"samples": args.samples, "slurm_poll_s": args.poll_s}
    for key in samples[0]:
        values = [s[key] for s in samples]
        figures[key] = {
            "median": round(statistics.median(values), 3),
            "min": round(min(values), 3),
            "max": round(max(values), 3),
        }
    figures["machine"] = machine()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "slurm_latency.json").write_text(json.dumps(figures, indent=2) + "\n")
    rows = "\n".join(
        f"| {label} | {figures[key]['median']} s | {figures[key]['min']} s | "
        f"{figures[key]['max']} s |"
        for key, label in (
            ("submit_to_sbatch_s", "submit to sbatch"),
            ("sbatch_to_node_s", "sbatch to the runner up on the node"),
            ("submit_to_node_s", "**submit to start on the node**"),
            ("submit_to_measuring_s", "submit to measuring (process, load, warm-up)"),
        )
    )
    (RESULTS / "slurm_latency.md").write_text(
        f"""# Submit to start under the Slurm executor

One experiment at a time through a real `llem-service` (`LLEM_EXECUTOR=slurm`, the scripted
backend) on a one-node Slurm {_slurm_version()} cluster on this machine (`sched/builtin`, no
queue wait); {args.samples} samples after one warm-up; {os.cpu_count()} CPUs,
{figures["machine"]["date"]}, load {figures["machine"]["load_average_1m"]} when it ended.

| span | median | min | max |
| --- | --- | --- | --- |
{rows}

A real cluster adds its queue wait and scheduler interval to "sbatch to the runner". Command:
`sudo .venv/bin/python benchmarks/slurm_latency.py --samples {args.samples}`.
"""
    )
    print(json.dumps(figures, indent=2))


def _slurm_version() -> str:
    import subprocess

    done = subprocess.run(
        ["dpkg-query", "--showformat=${Version}", "--show", "slurm-wlm"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or "(version unknown)"


if __name__ == "__main__":
    main()
