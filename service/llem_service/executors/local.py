"""The local executor: each experiment in its own child process (spawn) on this host, so that
an exception, a CUDA OOM or a kill inside the experiment fails that job and never the server.

The child sees only the GPUs of its grant (``CUDA_VISIBLE_DEVICES``, set in the child before
anything imports CUDA), and inherits the descriptors that hold the grant's GPU locks
(`llem_service.jobs.gpu_locks`): a GPU stays locked until both the server and the experiment
are gone, so a server killed mid-run never lets another experiment onto a GPU still in use.

The child speaks to the parent over a one-way pipe: ``("progress", {...})`` and
``("telemetry", (GpuReading, ...))`` (the meter's latest readings, about once a second, for
live monitoring) any number of times, then exactly one
``("result", (json, timeseries columns or None))`` or
``("error", (failure slug, detail, traceback or None))``. Dying without either is itself an
outcome: the exit code or signal becomes the job's error.

Warm reuse: when the scheduler may follow a run with another that can reuse its model
(`RunContext.keep_warm`: consecutive points of a study), the child is given a second pipe and,
after a successful run, keeps the model loaded and waits on it for ``("run", (job id, config
json, baselines))``: the next experiment, with the same `loading_key`, runs in the same
process without loading (`run_experiment(reused_from=...)`, which resets KV caches, peak
memory counters and compiled graphs). ``("stop", None)`` or the pipe's end releases the model
and ends the child. A failed run ends it too: its state is not trusted for another.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing import reduction
from multiprocessing.connection import Connection
from typing import Any

from llem_client import ExperimentConfig, ExperimentResult, JobProgress, JobStatus

from llem_service.backends.base import BackendError, ConfigError, InferenceBackend, loading_key
from llem_service.energy.base import Baseline, EnergyMeter, MeterError
from llem_service.errors import Failures
from llem_service.executors.base import (
    WHOLE_HOST,
    GpuGrant,
    ProgressCallback,
    RunContext,
    RunningJob,
    RunOutcome,
    TelemetryCallback,
)
from llem_service.executors.telemetry import ForwardingMeter
from llem_service.experiment.run import run_experiment

#: After the meter fails (a lost GPU), how long the experiment may take to fail on its own at
#: its next counter mark before the child reports the failure and exits: a run can be stuck in
#: a CUDA call on a dead GPU, which no exception reaches.
METER_FAILURE_GRACE_S = 5.0
#: How often the child forwards the meter's latest readings to the server (live monitoring).
TELEMETRY_INTERVAL_S = 1.0


def _child_main(
    job_id: str,
    config_json: str,
    backend: InferenceBackend,
    meter: EnergyMeter,
    baselines: Sequence[Baseline],
    conn: Connection,
    cuda_visible_devices: str | None = None,
    commands: Connection | None = None,
    held_locks: Sequence[int] = (),
) -> None:
    """Entry point of the child process: one run, then more while ``commands`` sends them.
    ``held_locks``: inherited descriptors of GPU locks, kept open (and so locked) until this
    process ends."""
    for fd in held_locks:
        os.set_inheritable(fd, False)  # a helper process of torch's must not outlive us holding it
    if cuda_visible_devices is not None:
        # Before the backend imports torch: CUDA reads it once, at initialisation.
        os.environ["CUDA_VISIBLE_DEVICES"] = cuda_visible_devices
    # The server handles Ctrl-C; the child must not die of the terminal's SIGINT first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    send_lock = threading.Lock()

    def send(message: tuple[str, Any]) -> None:
        with send_lock:
            conn.send(message)

    _exit_when_orphaned()
    reused_from: str | None = None
    try:
        while True:
            kept = _run_one(
                job_id, config_json, backend, meter, baselines, send, reused_from, commands
            )
            if not kept or commands is None:
                return
            reused_from = job_id
            try:
                kind, payload = commands.recv()
            except EOFError:
                kind, payload = "stop", None
            if kind != "run":
                backend.close()
                return
            job_id, config_json, baselines = payload
    finally:
        with send_lock:
            conn.close()


def _run_one(
    job_id: str,
    config_json: str,
    backend: InferenceBackend,
    meter: EnergyMeter,
    baselines: Sequence[Baseline],
    send: Callable[[tuple[str, Any]], None],
    reused_from: str | None,
    commands: Connection | None,
) -> bool:
    """One experiment; report its outcome. True when it succeeded and kept its model loaded
    for a next run."""
    finished = threading.Event()

    def meter_failed(error: MeterError) -> None:
        def give_up() -> None:
            if finished.wait(METER_FAILURE_GRACE_S):
                return  # the experiment failed (or finished) by itself
            try:
                send(("error", (Failures.METER_ERROR.slug, str(error), None)))
            finally:
                os._exit(1)

        threading.Thread(target=give_up, name="llem-meter-watchdog", daemon=True).start()

    try:
        config = ExperimentConfig.model_validate_json(config_json)

        def report(progress: JobProgress) -> None:
            send(("progress", progress.model_dump(mode="json")))

        def forward(readings: Sequence[Any]) -> None:
            send(("telemetry", tuple(readings)))

        output = run_experiment(
            job_id,
            config,
            backend,
            ForwardingMeter(meter, forward, TELEMETRY_INTERVAL_S),
            report,
            baselines,
            meter_failed,
            reused_from=reused_from,
            keep_loaded=commands is not None,
        )
        finished.set()
        send(("result", (output.result.model_dump_json(), output.timeseries)))
        return commands is not None
    except ConfigError as exc:
        finished.set()
        send(("error", (Failures.CONFIG_ERROR.slug, str(exc), None)))
    except BackendError as exc:
        finished.set()
        send(("error", (Failures.BACKEND_ERROR.slug, str(exc), None)))
    except MeterError as exc:
        finished.set()
        send(("error", (Failures.METER_ERROR.slug, str(exc), None)))
    except BaseException as exc:
        finished.set()
        if _is_out_of_memory(exc):
            # No traceback: formatting one may need the memory that just ran out.
            said = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            detail = f"the experiment ran out of memory ({said})"
            send(("error", (Failures.OUT_OF_MEMORY.slug, detail, None)))
            return False
        send(
            (
                "error",
                (
                    Failures.EXPERIMENT_CRASHED.slug,
                    f"{type(exc).__name__}: {exc}",
                    traceback.format_exc(limit=20),
                ),
            )
        )
    return False


def _is_out_of_memory(exc: BaseException) -> bool:
    """Host memory (MemoryError) or device memory (torch's OutOfMemoryError, by name: the
    runner does not import torch)."""
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"


def _exit_when_orphaned(poll_s: float = 1.0) -> None:
    """End this child soon after the server that started it dies (SIGKILL, crash).

    Otherwise an orphaned experiment would keep the GPU busy, and the restarted server would
    start the next experiment next to it.
    """
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent:
                os._exit(70)

    threading.Thread(target=watch, name="llem-orphan-watch", daemon=True).start()


class _InheritedFd:
    """A descriptor the spawned child inherits as the same open file (not a copy of its
    contents): pickled through multiprocessing's `reduction.DupFd`, as a `Connection` is."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple[Callable[[Any], int], tuple[Any]]:
        return (_detach_fd, (reduction.DupFd(self.fd),))


def _detach_fd(dup: Any) -> int:
    return int(dup.detach())


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "the experiment process did not exit"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        return f"the experiment process was killed by {name}{hint} before reporting a result"
    return f"the experiment process exited with code {exitcode} before reporting a result"


class LocalExecutor:
    """`Executor` that runs each experiment in a spawned child process on this host.

    Args:
        backend: Pickled into the child; see `InferenceBackend`.
        meter: Pickled into the child; see `EnergyMeter`.
        cancel_grace_s: After SIGTERM on cancel, wait this long before SIGKILL.
        poll_s: How often to look for cancellation while the child runs.
        timeout_s: Stop the child and fail the job if it has not reported a result after
            this many seconds (load and warm-up included); None: no limit.
        lock_fds: The descriptors holding a grant's GPU locks (`PerGpuPool.lock_fds`), which
            the child inherits; None when the pool holds no locks.
    """

    name = "local"

    def __init__(
        self,
        backend: InferenceBackend,
        meter: EnergyMeter,
        *,
        cancel_grace_s: float = 5.0,
        poll_s: float = 0.05,
        timeout_s: float | None = None,
        lock_fds: Callable[[GpuGrant], Sequence[int]] | None = None,
    ) -> None:
        self.backend = backend
        self.meter = meter
        self.cancel_grace_s = cancel_grace_s
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        self.lock_fds = lock_fds

    def unavailable_reason(self) -> str | None:
        return None  # a child process can always be started

    def open(self, grant: GpuGrant) -> LocalSession:
        return LocalSession(self, grant)

    def reattach(self, job: RunningJob) -> None:
        return None  # children end with the server that started them (`_exit_when_orphaned`)

    def run(self, context: RunContext, grant: GpuGrant = WHOLE_HOST) -> RunOutcome:
        """One experiment in a fresh child process on ``grant``; blocking."""
        session = LocalSession(self, grant)
        try:
            return session.run(context)
        finally:
            session.close()

    def _spawn(self, context: RunContext, grant: GpuGrant) -> _Child:
        ctx = multiprocessing.get_context("spawn")
        receiver, sender = ctx.Pipe(duplex=False)
        commands, command_end = ctx.Pipe(duplex=False) if context.keep_warm else (None, None)
        process = ctx.Process(
            target=_child_main,
            args=(
                context.job_id,
                context.config.model_dump_json(),
                self.backend,
                self.meter,
                context.baselines,
                sender,
                grant.cuda_visible_devices(),
                commands,
                [_InheritedFd(fd) for fd in (self.lock_fds(grant) if self.lock_fds else ())],
            ),
            name=f"llem-experiment-{context.job_id[:8]}",
        )
        process.start()
        sender.close()  # the child holds the only writer: EOF on our side means it is gone
        if commands is not None:
            commands.close()
        return _Child(process, receiver, command_end, loading_key(context.config))

    def _follow(
        self,
        process: multiprocessing.process.BaseProcess,
        receiver: Connection,
        on_progress: ProgressCallback,
        cancel: threading.Event,
        on_telemetry: TelemetryCallback,
    ) -> RunOutcome:
        deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
        while True:
            if cancel.is_set():
                self._stop(process)
                return RunOutcome(JobStatus.CANCELLED)
            if deadline is not None and time.monotonic() > deadline:
                self._stop(process)
                problem = Failures.TIMED_OUT.problem(
                    f"the experiment did not finish within {self.timeout_s:g} s "
                    "(LLEM_EXPERIMENT_TIMEOUT_S) and was stopped",
                )
                return RunOutcome(JobStatus.FAILED, error=problem)
            if not receiver.poll(self.poll_s):
                continue
            try:
                kind, payload = receiver.recv()
            except EOFError:
                process.join(timeout=5)
                problem = Failures.PROCESS_DIED.problem(_describe_exit(process.exitcode))
                return RunOutcome(JobStatus.FAILED, error=problem)
            if kind == "progress":
                on_progress(JobProgress.model_validate(payload))
            elif kind == "telemetry":
                on_telemetry(payload)
            elif kind == "result":
                result_json, timeseries = payload
                return RunOutcome(
                    JobStatus.SUCCEEDED,
                    result=ExperimentResult.model_validate_json(result_json),
                    timeseries=timeseries,
                )
            else:
                slug, detail, trace = payload
                extra = {"traceback": trace} if trace else {}
                return RunOutcome(
                    JobStatus.FAILED, error=Failures.by_slug(slug).problem(detail, **extra)
                )

    def _stop(self, process: multiprocessing.process.BaseProcess) -> None:
        process.terminate()
        process.join(timeout=self.cancel_grace_s)
        if process.is_alive():
            process.kill()
            process.join()


@dataclass
class _Child:
    """An experiment process, the end of its pipe we read, and the end we send commands on
    (None: it serves one run only)."""

    process: multiprocessing.process.BaseProcess
    receiver: Connection
    commands: Connection | None
    key: str


class LocalSession:
    """A grant on this host. Each run starts a child process, unless the previous run's child
    kept its model for a run with the same `loading_key` (see the module docstring)."""

    def __init__(self, executor: LocalExecutor, grant: GpuGrant) -> None:
        self.executor = executor
        self.grant = grant
        self._warm: _Child | None = None

    def run(self, context: RunContext) -> RunOutcome:
        if context.cancel.is_set():
            return RunOutcome(JobStatus.CANCELLED)
        child = self._warm
        self._warm = None
        if child is not None and self._can_take(child, context.config):
            assert child.commands is not None
            try:
                child.commands.send(
                    ("run", (context.job_id, context.config.model_dump_json(), context.baselines))
                )
            except OSError:  # it died since: start afresh
                self._end(child)
                child = None
        elif child is not None:
            self._end(child)
            child = None
        if child is None:
            child = self.executor._spawn(context, self.grant)
        outcome = RunOutcome(JobStatus.FAILED)
        try:
            outcome = self.executor._follow(
                child.process,
                child.receiver,
                context.on_progress,
                context.cancel,
                context.on_telemetry,
            )
        finally:
            keep = (
                outcome.status is JobStatus.SUCCEEDED
                and context.keep_warm
                and child.commands is not None
                and child.process.is_alive()
            )
            if keep:
                child.key = loading_key(context.config)
                self._warm = child
            else:
                self._end(child)
        return outcome

    @staticmethod
    def _can_take(child: _Child, config: ExperimentConfig) -> bool:
        return (
            child.commands is not None
            and child.process.is_alive()
            and child.key == loading_key(config)
        )

    def reusable_for(self, config: ExperimentConfig) -> bool:
        return self._warm is not None and self._can_take(self._warm, config)

    def close(self) -> None:
        """End a child kept warm: it releases the model and exits."""
        child, self._warm = self._warm, None
        if child is not None:
            self._end(child)

    def _end(self, child: _Child) -> None:
        if child.commands is not None:
            with contextlib.suppress(OSError):  # already gone
                child.commands.send(("stop", None))
            child.commands.close()
            child.process.join(timeout=self.executor.cancel_grace_s)
        child.receiver.close()
        if child.process.is_alive():
            self.executor._stop(child.process)
        child.process.join()
        child.process.close()
