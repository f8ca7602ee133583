"""The experiment on a Slurm compute node: ``python -m llem_service.executors.slurm_node <dir>``.

The batch script runs this (with the installed package, or inside the image through Apptainer
or Enroot/pyxis). It runs the experiment exactly as the service does on its own host: the
`LocalExecutor`, so a child process with the same backend, meter, baselines, timeout and
failure handling, on the GPUs Slurm gave the job (``CUDA_VISIBLE_DEVICES``, set by Slurm). Only
the way back differs: progress and the outcome go to the job's directory on the shared
filesystem (`llem_service.executors.slurm_files`).

On SIGTERM (scancel, the Slurm time limit, a preemption) the experiment is stopped and the
outcome says "terminated"; the service asks Slurm why. The exit status tells Slurm's
accounting what happened: 0 for a result, 1 for a failed experiment, 143 when terminated.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from llem_client import JobStatus

from llem_service.executors.base import RunContext
from llem_service.executors.local import LocalExecutor
from llem_service.executors.slurm_files import JobDir, NodeOutcome, Started

_log = logging.getLogger("llem.slurm.node")

EXIT_TERMINATED = 143


def run_on_node(job_dir: JobDir) -> int:
    """Run the job of ``job_dir`` here; its exit status."""
    run = job_dir.read_run()
    cancel = threading.Event()
    terminated = threading.Event()

    def on_term(signum: int, frame: FrameType | None) -> None:
        terminated.set()
        cancel.set()

    signal.signal(signal.SIGTERM, on_term)
    probe = run.meter.probe()
    gpus = tuple(d.uuid for d in probe.devices) if probe.available else ()
    job_dir.begin_attempt(
        Started(
            host=socket.gethostname(),
            gpus=gpus,
            pid=os.getpid(),
            started_at=time.time(),
            slurm_job_id=os.environ.get("SLURM_JOB_ID"),
            restarts=int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0),
        )
    )
    _log.info("job %s on %s, GPUs %s", run.job_id, socket.gethostname(), list(gpus) or "none")
    executor = LocalExecutor(
        run.backend, run.meter, cancel_grace_s=run.cancel_grace_s, timeout_s=run.timeout_s
    )
    context = RunContext(
        job_id=run.job_id,
        config=run.config,
        cancel=cancel,
        on_progress=job_dir.write_progress,
        baselines=run.baselines,
    )
    outcome = executor.run(context)
    stopped = terminated.is_set() and outcome.status is not JobStatus.SUCCEEDED
    job_dir.write_outcome(NodeOutcome(outcome, terminated=stopped))
    if stopped:
        return EXIT_TERMINATED
    return 0 if outcome.status is JobStatus.SUCCEEDED else 1


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.exit("usage: python -m llem_service.executors.slurm_node <job directory>")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    path = Path(args[0])
    sys.exit(run_on_node(JobDir(path, path.name)))


if __name__ == "__main__":
    main()
