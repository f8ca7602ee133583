"""The Slurm executor (``LLEM_EXECUTOR=slurm``): each experiment is a Slurm batch job.

llem-service runs as the front door on a login or head node, with the same API, client,
studies and dashboard; Slurm decides where and when each experiment runs. For every job:

1. Its directory on the shared filesystem gets the experiment (`slurm_files.NodeRun`: config,
   backend, meter and the service's baselines) and a batch script (`batch_script`).
2. ``sbatch`` with ``--gres=<gres>:<gpus>``, ``--exclusive`` (by default), the partition,
   account and time limit of the settings, and the extra options (`sbatch_args`).
3. On the node, `llem_service.executors.slurm_node` runs the experiment as the service would
   on its own host, and writes progress and the outcome back into the directory.
4. The session mirrors Slurm's state (`SlurmMonitor`), relays progress and the node's
   placement, and returns the outcome: the node's, or, when the job ended without one, a
   failure that carries Slurm's state and reason (time limit, node failure, preemption,
   cancelled outside llem, vanished from Slurm's view) and the end of the job's output.

Cancel is ``scancel``. A server that shuts down leaves its Slurm jobs running (the session
returns ``running``), and the next one reattaches by the job's Slurm id (`Executor.reattach`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shlex
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from llem_client import ExperimentConfig, JobProgress, JobStatus

from llem_service.backends.base import InferenceBackend
from llem_service.energy.base import EnergyMeter
from llem_service.errors import Failures
from llem_service.executors.base import GpuGrant, RunContext, RunningJob, RunOutcome
from llem_service.executors.slurm_cli import SlurmApi, SlurmError, SlurmUnreachable
from llem_service.executors.slurm_files import JobDir, NodeRun, Started
from llem_service.executors.slurm_monitor import SlurmMonitor, ended_failure, vanished_problem
from llem_service.settings import Settings

_log = logging.getLogger("llem.slurm")

ContainerRuntime = Literal["none", "apptainer", "pyxis"]


@dataclass(frozen=True)
class SlurmOptions:
    """How jobs are submitted and followed (the ``LLEM_SLURM_*`` settings).

    Attributes:
        shared_dir: A directory the service and every compute node see at this same path.
        partition: ``--partition``; None: the cluster's default.
        account: ``--account``; None: the user's default.
        time_limit: ``--time`` in Slurm's format; None: the partition's default.
        exclusive: ``--exclusive`` for every job (a measurement alone on its node); a config's
            ``exclusive_host`` asks for it anyway.
        gres: The GPU gres name (``--gres=<gres>:<gpus>``); empty for nodes without GPUs.
        requeue: ``--requeue``: a node failure or a preemption puts the job back in the queue.
        extra_args: More sbatch options, as given.
        python: The Python on the nodes that has llem installed (``runtime`` none).
        container_runtime: none (the installed package), apptainer, or pyxis (Enroot).
        container_image: The image (a .sif file for apptainer, a reference for pyxis).
        container_args: More options of ``apptainer exec`` or ``srun`` (pyxis).
        poll_s: Seconds between Slurm status queries (and reads of the job directory).
        vanish_grace_s: How long Slurm may not know a job, with no outcome in its directory,
            before it is failed as vanished.
        outcome_grace_s: How long after Slurm says a job ended its outcome may take to show
            on the shared filesystem.
    """

    shared_dir: Path
    partition: str | None = None
    account: str | None = None
    time_limit: str | None = None
    exclusive: bool = True
    gres: str = "gpu"
    requeue: bool = True
    extra_args: tuple[str, ...] = ()
    python: str = sys.executable
    container_runtime: ContainerRuntime = "none"
    container_image: str | None = None
    container_args: tuple[str, ...] = ()
    poll_s: float = 5.0
    vanish_grace_s: float = 60.0
    outcome_grace_s: float = 10.0


def options_from_settings(settings: Settings) -> SlurmOptions:
    """`SlurmOptions` from the ``LLEM_SLURM_*`` settings."""
    time_limit = settings.slurm_time_limit
    if time_limit is None and settings.experiment_timeout_s > 0:
        # The experiment's own timeout fails it cleanly first; Slurm's limit is the backstop.
        minutes = math.ceil(settings.experiment_timeout_s / 60) + 15
        time_limit = f"{minutes // 60}:{minutes % 60:02d}:00"
    return SlurmOptions(
        shared_dir=(settings.slurm_shared_dir or settings.data_dir / "slurm").absolute(),
        partition=settings.slurm_partition or None,
        account=settings.slurm_account or None,
        time_limit=time_limit or None,
        exclusive=settings.slurm_exclusive,
        gres=settings.slurm_gres,
        requeue=settings.slurm_requeue,
        extra_args=tuple(shlex.split(settings.slurm_extra_args)),
        python=settings.slurm_python or sys.executable,
        container_runtime=settings.slurm_container_runtime,
        container_image=settings.slurm_container_image,
        container_args=tuple(shlex.split(settings.slurm_container_args)),
        poll_s=settings.slurm_poll_s,
        vanish_grace_s=settings.slurm_vanish_grace_s,
    )


def job_name(job_id: str) -> str:
    """The Slurm job name of an llem job: found again by name after a crash."""
    return f"llem-{job_id}"


def sbatch_args(options: SlurmOptions, config: ExperimentConfig, job_dir: JobDir) -> list[str]:
    """The options of the job's ``sbatch`` (the script comes last, added by the caller)."""
    args = [
        f"--job-name={job_name(job_dir.job_id)}",
        f"--output={job_dir.path}/slurm-%j.out",
        f"--chdir={job_dir.path}",
        "--nodes=1",
        "--ntasks=1",
    ]
    if options.gres:
        args.append(f"--gres={options.gres}:{config.gpus}")
    if options.exclusive or config.exclusive_host:
        args.append("--exclusive")
    if options.partition:
        args.append(f"--partition={options.partition}")
    if options.account:
        args.append(f"--account={options.account}")
    if options.time_limit:
        args.append(f"--time={options.time_limit}")
    args.append("--requeue" if options.requeue else "--no-requeue")
    args.extend(options.extra_args)
    return args


def batch_script(options: SlurmOptions, job_dir: JobDir) -> str:
    """The batch script: the node-side runner on this job's directory."""
    run = ["-m", "llem_service.executors.slurm_node", str(job_dir.path)]
    if options.container_runtime == "none":
        command = [options.python, *run]
    elif not options.container_image:
        raise ValueError(f"LLEM_SLURM_CONTAINER_RUNTIME={options.container_runtime} needs an image")
    elif options.container_runtime == "apptainer":
        # --nv: the node's NVIDIA driver inside; the shared directory at the same path.
        command = [
            "apptainer",
            "exec",
            "--nv",
            f"--bind={options.shared_dir}",
            *options.container_args,
            options.container_image,
            "python3",
            *run,
        ]
    else:  # pyxis: Enroot through srun's --container-* options
        command = [
            "srun",
            "--ntasks=1",
            f"--container-image={options.container_image}",
            f"--container-mounts={options.shared_dir}:{options.shared_dir}",
            *options.container_args,
            "python3",
            *run,
        ]
    return (
        "#!/bin/bash\n"
        f"# llem job {job_dir.job_id}: one experiment, submitted by llem-service.\n"
        "set -eu\n"
        f"exec {shlex.join(command)}\n"
    )


class SlurmExecutor:
    """`Executor` that runs each experiment as a Slurm batch job.

    Args:
        api: Slurm (`SlurmCli`).
        options: How to submit and follow.
        backend: The backend each job runs with (pickled into its directory).
        meter: The energy meter each job runs with.
        timeout_s: The experiment's own limit on the node (as on a local host).
        cancel_grace_s: On the node, SIGTERM to SIGKILL of the experiment process.
        ping_ttl_s: How long an answer of ``scontrol ping`` is reused.
    """

    name = "slurm"

    def __init__(
        self,
        api: SlurmApi,
        options: SlurmOptions,
        backend: Callable[[], InferenceBackend],
        meter: Callable[[], EnergyMeter],
        *,
        timeout_s: float | None = None,
        cancel_grace_s: float = 5.0,
        ping_ttl_s: float = 5.0,
    ) -> None:
        self.api = api
        self.options = options
        self.backend = backend
        self.meter = meter
        self.timeout_s = timeout_s
        self.cancel_grace_s = cancel_grace_s
        self.ping_ttl_s = ping_ttl_s
        self.monitor = SlurmMonitor(api, options.poll_s)
        self._lock = threading.Lock()
        self._ping: tuple[float, str | None] | None = None
        self._gpus: tuple[float, int | None] | None = None

    def unavailable_reason(self) -> str | None:
        with self._lock:
            if self._ping is not None and time.monotonic() - self._ping[0] < self.ping_ttl_s:
                return self._ping[1]
        reason = self.api.ping()
        if reason is None and not _writable(self.options.shared_dir):
            reason = (
                f"the shared directory {self.options.shared_dir} (LLEM_SLURM_SHARED_DIR) is not "
                "a writable directory"
            )
        with self._lock:
            self._ping = (time.monotonic(), reason)
        return reason

    def max_gpus(self) -> int | None:
        """GPUs of the partition's biggest node (cached a minute); None without a gres, or
        when Slurm cannot say now (the submit is not refused for it)."""
        if not self.options.gres:
            return None
        with self._lock:
            if self._gpus is not None and time.monotonic() - self._gpus[0] < 60.0:
                return self._gpus[1]
        try:
            count: int | None = self.api.max_gpus_per_node(
                self.options.partition, self.options.gres
            )
        except SlurmError as exc:
            _log.warning("cannot read the partition's GPUs: %s", exc)
            return None
        with self._lock:
            self._gpus = (time.monotonic(), count)
        return count

    def open(self, grant: GpuGrant) -> SlurmSession:
        return SlurmSession(self)

    def reattach(self, job: RunningJob) -> SlurmSession:
        # A job without a Slurm id may have been submitted just before the crash: the session
        # looks for it by name before it submits anything.
        return SlurmSession(self, reattached=True)


class SlurmSession:
    """One job after another, each its own Slurm job (nothing is reused between them)."""

    def __init__(self, executor: SlurmExecutor, *, reattached: bool = False) -> None:
        self.executor = executor
        self.options = executor.options
        self.api = executor.api
        self.reattached = reattached

    def reusable_for(self, config: ExperimentConfig) -> bool:
        return False

    def close(self) -> None:
        pass  # nothing held here: the Slurm job is followed to its end inside `run`

    def run(self, context: RunContext) -> RunOutcome:
        job_dir = JobDir.under(self.options.shared_dir, context.job_id)
        ref = context.executor_ref
        try:
            if ref is None and self.reattached:
                ref = self._retry(context, lambda: self.api.find(job_name(context.job_id)))
            if ref is None:
                if context.detach.is_set():  # nothing submitted: the next server submits it
                    return RunOutcome(JobStatus.RUNNING)
                if context.cancel.is_set():
                    return RunOutcome(JobStatus.CANCELLED)
                ref = self._submit(context, job_dir)
                context.on_executor_ref(ref)
        except _Stopped as stop:
            return stop.outcome
        except SlurmError as exc:
            return RunOutcome(
                JobStatus.FAILED, error=Failures.SLURM_SUBMIT_FAILED.problem(str(exc))
            )
        self.executor.monitor.watch(ref)
        try:
            return _Follow(self, context, job_dir, ref).run()
        finally:
            self.executor.monitor.unwatch(ref)

    def _submit(self, context: RunContext, job_dir: JobDir) -> str:
        run = NodeRun(
            job_id=context.job_id,
            config_json=context.config.model_dump_json(),
            backend=self.executor.backend(),
            meter=self.executor.meter(),
            baselines=tuple(context.baselines),
            timeout_s=self.executor.timeout_s,
            cancel_grace_s=self.executor.cancel_grace_s,
        )
        job_dir.create(run, batch_script(self.options, job_dir))
        args = sbatch_args(self.options, context.config, job_dir)
        context.on_progress(JobProgress(phase="submitting"))

        def submit() -> str:
            # After an sbatch whose answer was lost, the job may be in Slurm already.
            found = self.api.find(job_name(context.job_id)) if attempts[0] else None
            attempts[0] += 1
            return found or self.api.submit(job_dir.path / JobDir.SCRIPT, args)

        attempts = [0]
        job_id = self._retry(context, submit)
        assert job_id is not None
        _log.info("job %s: Slurm job %s (%s)", context.job_id, job_id, shlex.join(args))
        return job_id

    def _retry(self, context: RunContext, call: Callable[[], str | None]) -> str | None:
        """``call`` until Slurm answers; a refusal (`SlurmError`) is raised at once."""
        while True:
            if context.detach.is_set():
                raise _Stopped(RunOutcome(JobStatus.RUNNING))
            try:
                return call()
            except SlurmUnreachable as exc:
                _log.warning("job %s: Slurm unreachable, retrying: %s", context.job_id, exc)
            if context.cancel.wait(self.options.poll_s):
                # A stopping server sets detach before cancel: leave an sbatch whose answer
                # was lost to the next server, which finds the job by name.
                if context.detach.is_set():
                    raise _Stopped(RunOutcome(JobStatus.RUNNING))
                raise _Stopped(RunOutcome(JobStatus.CANCELLED))


class _Stopped(Exception):
    def __init__(self, outcome: RunOutcome) -> None:
        self.outcome = outcome


class _Follow:
    """Follows one submitted Slurm job to its end (see `SlurmSession.run`)."""

    def __init__(self, session: SlurmSession, context: RunContext, job_dir: JobDir, ref: str):
        self.session = session
        self.context = context
        self.job_dir = job_dir
        self.ref = ref
        self.options = session.options
        self.monitor = session.executor.monitor
        self.cancel_sent = False
        self.started: Started | None = None
        self.progress: JobProgress | None = None
        self.ran = False
        self.ended_at: float | None = None

    def run(self) -> RunOutcome:
        while True:
            if self.context.detach.is_set():
                return RunOutcome(JobStatus.RUNNING)  # the job goes on; a new server follows it
            # A stopping server sets detach, then cancel: a cancel seen with detach is the
            # shutdown's, and the job is left running (checked next round), never scancelled.
            if (
                self.context.cancel.is_set()
                and not self.context.detach.is_set()
                and not self.cancel_sent
            ):
                self._cancel()
            self._relay()
            outcome = self._outcome()
            if outcome is not None:
                return outcome
            self._wait()

    def _cancel(self) -> None:
        try:
            self.session.api.cancel(self.ref)
            self.cancel_sent = True
            _log.info("job %s: scancel %s", self.context.job_id, self.ref)
        except SlurmError as exc:  # retried at the next round
            _log.warning("job %s: scancel %s failed: %s", self.context.job_id, self.ref, exc)

    def _relay(self) -> None:
        """Where the node started the job, and its progress, as the node wrote them."""
        started = self.job_dir.started()
        if started is not None and started != self.started:
            self.started = started
            self.context.on_placement(started.host, started.gpus, started.started_at)
        progress = self.job_dir.progress()
        if progress is not None and progress != self.progress:
            self.progress = progress
            self.context.on_progress(progress)

    def _outcome(self) -> RunOutcome | None:
        node = self.job_dir.outcome()
        if node is not None and not node.terminated:
            if self.cancel_sent and node.outcome.status is not JobStatus.SUCCEEDED:
                return RunOutcome(JobStatus.CANCELLED)
            return node.outcome
        sighting = self.monitor.sighting(self.ref)
        state = sighting.state
        if state is not None and state.active:
            self.ended_at = None
            self._pending_phase(state.state)
            return None
        if (
            state is None
            and sighting.unreachable is None
            and sighting.missing_s > (self.options.vanish_grace_s)
        ):
            if self.cancel_sent:
                return RunOutcome(JobStatus.CANCELLED)
            where = self.job_dir.path
            return RunOutcome(
                JobStatus.FAILED, error=vanished_problem(self.ref, sighting.missing_s, str(where))
            )
        if state is None:
            return None  # not seen yet, or Slurm unreachable: wait
        if self.cancel_sent:
            return RunOutcome(JobStatus.CANCELLED)
        # Ended without an outcome: give a shared filesystem a moment to show it.
        now = time.monotonic()
        self.ended_at = self.ended_at or now
        if now - self.ended_at < self.options.outcome_grace_s:
            return None
        with contextlib.suppress(SlurmError):
            state = self.session.api.details(self.ref) or state  # with the exit code
        failure, why = ended_failure(state)
        extra = {"slurm_state": state.state, "slurm_reason": state.reason}
        tail = self.job_dir.output_tail(self.ref)
        if tail:
            extra["slurm_output"] = tail
        return RunOutcome(JobStatus.FAILED, error=failure.problem(why, **extra))

    def _pending_phase(self, state: str) -> None:
        if state == "RUNNING":
            self.ran = True
            return
        if state in {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED"}:
            phase = "requeued" if self.ran or state.startswith("REQUEUE") else "pending"
            if self.progress is None or self.progress.phase != phase:
                self.progress = JobProgress(phase=phase)
                self.context.on_progress(self.progress)

    def _wait(self) -> None:
        """Until the next round, or sooner when there is a cancel to send or a detach."""
        deadline = time.monotonic() + self.options.poll_s
        while (left := deadline - time.monotonic()) > 0:
            if self.context.detach.is_set():
                return
            if self.context.cancel.is_set() and not self.cancel_sent:
                return
            time.sleep(min(0.2, left))


def _writable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)
