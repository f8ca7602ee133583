"""A scripted Slurm controller: `SlurmApi` over jobs that run for real and end as tests say.

``sbatch`` (`FakeSlurm.submit`) queues a job; with ``run=True`` it starts at once, as slurmd
would start it: the job's real batch script in a real process (so the real node-side runner
runs the experiment and writes its outcome), with ``SLURM_JOB_ID`` and
``SLURM_RESTART_COUNT`` set and its output in the job's ``--output`` file. When the process
exits the job is COMPLETED (status 0) or FAILED, with Slurm's ``<code>:<signal>`` exit code.

The test plays the rest of Slurm: `finish` ends a job in any state with a reason (TIMEOUT,
NODE_FAIL, PREEMPTED; the process is killed as slurmd would: SIGTERM, then SIGKILL after
``kill_wait_s``), `requeue` puts a running job back in the queue and starts it again, `forget`
drops a job from the controller's memory (``MinJobAge`` passed, no accounting), and ``down``
makes the controller unreachable: every call but `ping` then raises `SlurmUnreachable`, after
``down_delay_s`` (a real client retries for seconds).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from llem_service.executors.slurm_cli import SlurmError, SlurmJobState, SlurmUnreachable

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class FakeSlurmJob:
    """One job in the scripted controller."""

    job_id: str
    name: str
    script: Path
    args: list[str]
    state: str = "PENDING"
    reason: str = "Priority"
    node: str = ""
    exit_code: str = ""
    restarts: int = 0
    forgotten: bool = False
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def output(self) -> Path:
        for arg in self.args:
            if arg.startswith("--output="):
                return Path(arg.removeprefix("--output=").replace("%j", self.job_id))
        return self.script.parent / f"slurm-{self.job_id}.out"


class FakeSlurm:
    """See the module docstring.

    Args:
        run: Start every submitted job at once, for real.
        node: The node jobs run on.
        max_gpus: GPUs of the partition's biggest node.
        kill_wait_s: SIGTERM to SIGKILL when a job is ended.
        down_delay_s: How long a call to an unreachable controller takes to fail.
    """

    def __init__(
        self,
        *,
        run: bool = True,
        node: str = "fake-node",
        max_gpus: int = 8,
        kill_wait_s: float = 5.0,
        down_delay_s: float = 0.0,
    ) -> None:
        self.run = run
        self.node = node
        self.max_gpus = max_gpus
        self.kill_wait_s = kill_wait_s
        self.down_delay_s = down_delay_s
        self.down: str | None = None
        self.refuse: str | None = None
        self.jobs: dict[str, FakeSlurmJob] = {}
        self.cancelled: list[str] = []
        self.squeue_calls = 0
        self._next = 1000
        self._lock = threading.RLock()

    # -- SlurmApi -----------------------------------------------------------------------------

    def ping(self) -> str | None:
        return None if self.down is None else f"slurmctld does not answer ({self.down})"

    def submit(self, script: Path, args: Sequence[str]) -> str:
        self._reachable()
        if self.refuse is not None:
            raise SlurmError(f"sbatch: error: {self.refuse}")
        with self._lock:
            self._next += 1
            job_id = str(self._next)
            name = next(a.removeprefix("--job-name=") for a in args if a.startswith("--job-name="))
            self.jobs[job_id] = FakeSlurmJob(job_id, name, script, list(args))
        if self.run:
            self.start(job_id)
        return job_id

    def states(self, job_ids: Sequence[str]) -> dict[str, SlurmJobState]:
        self._reachable()
        with self._lock:
            self.squeue_calls += 1
            self._reap()
            return {
                job_id: self._state(self.jobs[job_id])
                for job_id in job_ids
                if job_id in self.jobs and not self.jobs[job_id].forgotten
            }

    def details(self, job_id: str) -> SlurmJobState | None:
        self._reachable()
        with self._lock:
            self._reap()
            job = self.jobs.get(job_id)
            if job is None or job.forgotten:
                return None
            state = self._state(job)
            return SlurmJobState(
                state.job_id, state.state, state.reason, state.node, exit_code=job.exit_code
            )

    def find(self, name: str) -> str | None:
        self._reachable()
        with self._lock:
            ids = [j.job_id for j in self.jobs.values() if j.name == name and not j.forgotten]
        return max(ids, key=int) if ids else None

    def cancel(self, job_id: str) -> None:
        self._reachable()
        self.cancelled.append(job_id)
        self.finish(job_id, "CANCELLED", "None")

    def max_gpus_per_node(self, partition: str | None, gres: str) -> int:
        self._reachable()
        return self.max_gpus

    # -- the test's hand on the controller -----------------------------------------------------

    def start(self, job_id: str) -> None:
        """The job starts on the node: its batch script runs, for real."""
        with self._lock:
            job = self.jobs[job_id]
            job.state, job.reason, job.node = "RUNNING", "None", self.node
            env = {
                **os.environ,
                "SLURM_JOB_ID": job_id,
                "SLURM_RESTART_COUNT": str(job.restarts),
                "PYTHONPATH": str(ROOT),
            }
            with open(job.output(), "ab") as out:
                job.process = subprocess.Popen(
                    ["bash", str(job.script)],
                    cwd=job.script.parent,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )

    def finish(self, job_id: str, state: str, reason: str) -> None:
        """End the job as Slurm would for ``state`` (its processes stopped)."""
        with self._lock:
            job = self.jobs[job_id]
            self._stop(job)
            job.state, job.reason = state, reason

    def requeue(self, job_id: str, reason: str, *, start_after_s: float = 0.5) -> None:
        """A node failure or preemption with --requeue: back to PENDING, then run again."""
        with self._lock:
            job = self.jobs[job_id]
            self._stop(job)
            job.state, job.reason, job.restarts = "PENDING", reason, job.restarts + 1
        if self.run:
            threading.Timer(start_after_s, self.start, (job_id,)).start()

    def forget(self, job_id: str) -> None:
        """The controller no longer knows the job (MinJobAge passed, no accounting)."""
        with self._lock:
            self.jobs[job_id].forgotten = True

    def wait_state(self, job_id: str, state: str, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                self._reap()
                if self.jobs[job_id].state == state:
                    return
            assert time.monotonic() < deadline, f"job {job_id} never {state}"
            time.sleep(0.05)

    def close(self) -> None:
        """Stop whatever still runs."""
        with self._lock:
            for job in self.jobs.values():
                self._stop(job)

    # -- inside ------------------------------------------------------------------------------

    def _reachable(self) -> None:
        if self.down is not None:
            time.sleep(self.down_delay_s)
            raise SlurmUnreachable(
                f"slurm_load_jobs error: Unable to contact slurm controller ({self.down})"
            )

    def _state(self, job: FakeSlurmJob) -> SlurmJobState:
        return SlurmJobState(job.job_id, job.state, job.reason, job.node)

    def _reap(self) -> None:
        for job in self.jobs.values():
            if job.process is None or job.process.poll() is None:
                continue
            code = job.process.returncode
            job.process = None
            if job.state != "RUNNING":
                continue  # ended by the test
            job.state = "COMPLETED" if code == 0 else "FAILED"
            job.reason = "None" if code == 0 else "NonZeroExitCode"
            job.exit_code = f"{code}:0" if code >= 0 else f"0:{-code}"

    def _stop(self, job: FakeSlurmJob) -> None:
        process = job.process
        if process is None:
            return
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(self.kill_wait_s)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        job.process = None
