"""Slurm's view of the jobs llem follows, mirrored by one thread, and what an ended job means.

One thread asks Slurm about every followed job at once (``squeue --jobs=a,b,c``) every
``poll_s``, so a thousand running study points cost slurmctld one query per poll, not a
thousand. A job squeue no longer lists is asked about once more in full (``scontrol``, then
``sacct`` where the cluster keeps accounting). A job Slurm says it does not know is "missing"
from then on; a Slurm that cannot be reached says nothing about any job, and missing time
does not count while it is unreachable.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from llem_client import ProblemDetail

from llem_service.errors import Failure, Failures
from llem_service.executors.slurm_cli import SlurmApi, SlurmError, SlurmJobState

_log = logging.getLogger("llem.slurm")


@dataclass(frozen=True)
class Sighting:
    """What is known of one job.

    Attributes:
        state: Slurm's latest word on it; None before the first, or once Slurm forgot it.
        missing_s: How long Slurm has said it does not know the job (0 while it knows it).
        unreachable: Why Slurm could not be asked at the last poll, if it could not.
    """

    state: SlurmJobState | None
    missing_s: float = 0.0
    unreachable: str | None = None


class SlurmMonitor:
    """Mirrors Slurm's state of the jobs being watched.

    Args:
        api: Slurm.
        poll_s: Seconds between queries.
        clock: Monotonic clock.
    """

    def __init__(
        self, api: SlurmApi, poll_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.api = api
        self.poll_s = poll_s
        self.clock = clock
        self._lock = threading.Condition()
        self._watched: dict[str, int] = {}  # job id -> watchers
        self._states: dict[str, SlurmJobState] = {}
        self._missing_since: dict[str, float] = {}
        self._unreachable: str | None = None
        self._thread: threading.Thread | None = None

    def watch(self, job_id: str) -> None:
        with self._lock:
            self._watched[job_id] = self._watched.get(job_id, 0) + 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="llem-slurm-monitor", daemon=True
                )
                self._thread.start()
            self._lock.notify_all()

    def unwatch(self, job_id: str) -> None:
        with self._lock:
            left = self._watched.get(job_id, 0) - 1
            if left > 0:
                self._watched[job_id] = left
                return
            self._watched.pop(job_id, None)
            self._states.pop(job_id, None)
            self._missing_since.pop(job_id, None)

    def sighting(self, job_id: str) -> Sighting:
        with self._lock:
            since = self._missing_since.get(job_id)
            return Sighting(
                state=self._states.get(job_id),
                missing_s=0.0 if since is None else self.clock() - since,
                unreachable=self._unreachable,
            )

    def poll_once(self) -> None:
        """One query of every watched job (the thread does this every ``poll_s``)."""
        with self._lock:
            ids = sorted(self._watched)
        if not ids:
            return
        try:
            states = self.api.states(ids)
            for job_id in ids:
                if job_id not in states:
                    known = self.api.details(job_id)
                    if known is not None:
                        states[job_id] = known
        except SlurmError as exc:
            with self._lock:
                if self._unreachable is None:
                    _log.warning("cannot ask Slurm about %d job(s): %s", len(ids), exc)
                self._unreachable = str(exc)
                # Time Slurm could not be asked is no evidence that a job vanished.
                now = self.clock()
                for job_id in self._missing_since:
                    self._missing_since[job_id] = now
            return
        with self._lock:
            self._unreachable = None
            now = self.clock()
            for job_id in ids:
                if job_id in states:
                    self._states[job_id] = states[job_id]
                    self._missing_since.pop(job_id, None)
                else:
                    self._states.pop(job_id, None)
                    self._missing_since.setdefault(job_id, now)

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._watched:
                    self._lock.wait(timeout=self.poll_s)
                    continue
            try:
                self.poll_once()
            except Exception:  # the thread outlives any one bad answer
                _log.exception("Slurm status poll failed")
            time.sleep(self.poll_s)


def ended_failure(state: SlurmJobState) -> tuple[Failure, str]:
    """The failure kind of a job Slurm ended without an experiment outcome, and why."""
    said = state.describe()
    if state.state == "TIMEOUT":
        return Failures.SLURM_TIME_LIMIT, (
            f"{said}: Slurm stopped it at its time limit (LLEM_SLURM_TIME_LIMIT, or the "
            "partition's); raise the limit or shorten the experiment"
        )
    if state.state == "NODE_FAIL":
        return Failures.SLURM_NODE_FAILED, f"{said}: its node failed and Slurm did not requeue it"
    if state.state == "PREEMPTED":
        return Failures.SLURM_PREEMPTED, f"{said}: preempted, and Slurm did not requeue it"
    if state.state == "CANCELLED":
        return Failures.SLURM_CANCELLED, f"{said}: cancelled in Slurm, not through llem"
    if state.state == "OUT_OF_MEMORY":
        return Failures.OUT_OF_MEMORY, f"{said}: Slurm's memory limit stopped it"
    if state.state == "COMPLETED":
        return Failures.SLURM_JOB_FAILED, f"{said}, but its experiment left no outcome"
    return Failures.SLURM_JOB_FAILED, f"{said}"


def vanished_problem(job_id: str, missing_s: float, where: str) -> ProblemDetail:
    return Failures.SLURM_JOB_VANISHED.problem(
        f"Slurm job {job_id} is no longer known to Slurm (neither squeue nor sacct has had it "
        f"for {missing_s:.0f} s) and its experiment left no outcome in {where}"
    )
