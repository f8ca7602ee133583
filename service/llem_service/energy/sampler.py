"""The power sampler: a process of its own that reads every metered GPU at a fixed interval.

A process, not a thread: the experiment's decode loop is Python-heavy, and a sampling thread
beside it competes for the GIL, stealing time from the workload and getting its rounds late
(Zeus polls from separate processes for the same reason). The process is started by the
meter's session (inside the experiment's process) before the measured window and stopped
after it; ``benchmarks/sampler_cost.py`` measures what each way costs the workload.

Each round reads every GPU's power (`PowerReader`: repeats and readings <= 0 W flagged, a
failed read a gap), temperature, SM clock, memory, utilisation and clock-event reasons, and
appends one typed row per GPU to the column files (`samples.ColumnWriter`). About once a
second it also lists the GPUs' compute processes (`ProcessTracker`) and reads the host's
RAPL counters (for their wrap-arounds). Rounds run on absolute deadlines (start + k x
interval), so a slow round delays only itself.

The process talks to the session over two one-way pipes: the session sends ``flush`` (when it
wants the samples so far, e.g. for a baseline) and ``stop``; the sampler answers ``ready``,
``flushed``, ``error`` (a lost GPU, at once, so ``on_failure`` can stop a run stuck on the dead
device) and, last, ``report`` (what it saw besides the samples). It exits by itself if the
experiment's process dies.

``mode="thread"`` runs the same loop in a thread of the experiment's process (kept to measure
what the process saves); ``mode="manual"`` takes rounds only when `PowerSampler.sample_once`
is called (tests on a manual clock).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import signal
import tempfile
import threading
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Literal

from llem_service.energy.base import MeterError
from llem_service.energy.host import RaplZone, read_zones
from llem_service.energy.nvml import GpuDevice, Nvml, NvmlGpuLost, NvmlLibrary
from llem_service.energy.processes import ProcessReport, ProcessTracker
from llem_service.energy.readings import (
    Clock,
    FieldChange,
    OptionalReader,
    PowerField,
    PowerReader,
    PowerStats,
    RetryPolicy,
)
from llem_service.energy.samples import (
    MISSING_INT,
    ROUND_COLUMNS,
    SAMPLE_COLUMNS,
    ColumnReader,
    ColumnWriter,
    Timeline,
)

SamplerMode = Literal["process", "thread", "manual"]

_OPTIONAL_FIELDS = (
    "temperature_c",
    "sm_clock_mhz",
    "memory_used_bytes",
    "utilization_pct",
    "clock_event_reasons",
)

#: How long the session waits for the sampler's process to start, answer or stop.
START_TIMEOUT_S = 60.0
REPLY_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class SamplerSpec:
    """Everything the sampler's process needs (picklable).

    Attributes:
        library: Returns pynvml (or a fake with its surface) inside the sampler's process.
        device_uuids: The GPUs, in the session's order.
        interval_s: Target time between rounds.
        power_fields: Each GPU's power field, as probed.
        refresh_s: Each power field's refresh period, where probed.
        directory: Where the column files go.
        own_pid: The experiment's process (for telling its own GPU contexts apart).
        host_zones: RAPL zones to read about once a second (wrap-arounds).
        slow_poll_s: Interval of the process listing and the RAPL reads.
        flush_rows: Rows gathered in memory before they go to disk.
    """

    library: Callable[[], NvmlLibrary]
    device_uuids: tuple[str, ...]
    interval_s: float
    power_fields: tuple[PowerField | None, ...]
    refresh_s: tuple[float | None, ...]
    directory: str
    own_pid: int
    host_zones: tuple[RaplZone, ...] = ()
    slow_poll_s: float = 1.0
    flush_rows: int = 4096
    policy: RetryPolicy = field(default_factory=RetryPolicy)


@dataclass
class DeviceReadReport:
    """What became of one GPU's readings."""

    device_uuid: str
    power: PowerStats
    failed_reads: dict[str, int]
    changes: list[FieldChange]


@dataclass
class SamplerReport:
    """What the sampler saw besides the samples themselves."""

    devices: list[DeviceReadReport]
    processes: ProcessReport
    host_reads: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    pid: int | None = None
    error: str | None = None

    @property
    def failed_reads(self) -> int:
        return sum(sum(d.failed_reads.values()) for d in self.devices)


class SamplerEngine:
    """One sampling round at a time, written to the column files. No threads, no sleeping:
    the loop (`run_loop`), a thread, or a test decides when rounds happen."""

    def __init__(
        self, devices: Sequence[GpuDevice], spec: SamplerSpec, clock: Clock, wall: Clock
    ) -> None:
        self.devices = list(devices)
        self.spec = spec
        self.clock = clock
        self.wall = wall
        directory = Path(spec.directory)
        self.samples = ColumnWriter(
            directory, SAMPLE_COLUMNS, prefix="sample_", flush_rows=spec.flush_rows
        )
        self.rounds = ColumnWriter(
            directory, ROUND_COLUMNS, prefix="round_", flush_rows=max(1, spec.flush_rows // 8)
        )
        self.power = [
            PowerReader(d, f, r, spec.policy, clock, wall)
            for d, f, r in zip(devices, spec.power_fields, spec.refresh_s, strict=True)
        ]
        self.optional = [
            [OptionalReader(n, getattr(d, n), spec.policy, clock) for n in _OPTIONAL_FIELDS]
            for d in devices
        ]
        self.processes = ProcessTracker(devices, spec.own_pid, spec.slow_poll_s)
        self.host_reads: list[tuple[float, dict[str, int]]] = []
        self._next_host: float | None = None

    def sample_once(self) -> None:
        """One round: read every GPU, append a row each, record the round's cost."""
        started = self.clock()
        cpu_started = time.thread_time()
        # Powers first, all GPUs together: they are what the round is for.
        powers = [reader.read() for reader in self.power]
        values = [[reader.read() for reader in optional] for optional in self.optional]
        rows = [
            (started, index, power_t, power_w, flag, *(MISSING_INT if v is None else v for v in vs))
            for index, ((power_w, power_t, flag), vs) in enumerate(zip(powers, values, strict=True))
        ]
        ended = self.clock()
        cpu = time.thread_time() - cpu_started
        for row in rows:
            self.samples.append(row)
        self.rounds.append((started, ended - started, cpu))

    def poll_slow(self) -> None:
        """The processes on the GPUs and the host's RAPL counters, when due."""
        now = self.clock()
        if self.processes.due(now):
            self.processes.poll(now, self.wall())
        if self.spec.host_zones and (self._next_host is None or now >= self._next_host):
            self._next_host = now + self.spec.slow_poll_s
            self.host_reads.append((now, read_zones(self.spec.host_zones)))

    def flush(self) -> None:
        self.samples.flush()
        self.rounds.flush()

    def report(self, error: str | None = None) -> SamplerReport:
        devices = [
            DeviceReadReport(
                device_uuid=d.uuid,
                power=p.stats,
                failed_reads={"power": p.stats.failed} | {r.name: r.failed for r in optional},
                changes=[*p.changes, *(c for r in optional for c in r.changes)],
            )
            for d, p, optional in zip(self.devices, self.power, self.optional, strict=True)
        ]
        return SamplerReport(
            devices=devices,
            processes=self.processes.report(),
            host_reads=list(self.host_reads),
            pid=os.getpid(),
            error=error,
        )


def run_loop(
    engine: SamplerEngine,
    control: Connection,
    events: Connection,
    *,
    parent_pid: int | None = None,
) -> bool:
    """Sample on absolute deadlines until told to stop, answering ``flush`` between rounds;
    then flush and send the report (after ``error`` on a failure). Returns False, at once,
    when the session is gone (its process died): nobody will read the files."""
    clock = engine.clock
    interval = engine.spec.interval_s
    start = clock()
    k = 0
    error: MeterError | None = None
    stopping = False
    while not stopping:
        try:
            engine.sample_once()
            engine.poll_slow()
        except Exception as exc:  # a lost GPU, or a bug: sampling must not die silently
            error = exc if isinstance(exc, MeterError) else MeterError(f"crashed: {exc!r}")
            break
        k += 1
        deadline = start + k * interval
        now = clock()
        if deadline < now:  # fell behind: skip missed rounds rather than burst
            k = int((now - start) / interval) + 1
            deadline = start + k * interval
        while True:
            if not control.poll(max(0.0, deadline - clock())):
                break
            try:
                message = control.recv()
            except (EOFError, OSError):
                return False  # the session's end of the pipe is gone: its process died
            if message == "flush":
                engine.flush()
                events.send(("flushed", engine.samples.rows_written))
            elif message == "stop":
                stopping = True
                break
        if parent_pid is not None and os.getppid() != parent_pid:
            return False  # orphaned: the experiment's process died
    engine.flush()
    if error is not None:
        events.send(("error", str(error), isinstance(error, NvmlGpuLost)))
    events.send(("report", engine.report(str(error) if error else None)))
    return True


def _process_main(spec: SamplerSpec, control: Connection, events: Connection, parent: int) -> None:
    """Entry point of the sampler's process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the service handles Ctrl-C
    try:
        nvml = Nvml(spec.library()).open()
        devices = [nvml.device(uuid) for uuid in spec.device_uuids]
        engine = SamplerEngine(devices, spec, time.perf_counter, time.time)
    except Exception as exc:
        events.send(("error", f"could not start: {exc}", isinstance(exc, NvmlGpuLost)))
        return
    events.send(("ready", os.getpid()))
    session_alive = False
    try:
        session_alive = run_loop(engine, control, events, parent_pid=parent)
    finally:
        nvml.close()
        if not session_alive:
            shutil.rmtree(spec.directory, ignore_errors=True)


class PowerSampler:
    """The session's handle on the sampler: start, flush, stop, and what it recorded.

    Args:
        spec: What to sample (``spec.directory`` is made here when empty).
        mode: ``process`` (the default), ``thread``, or ``manual``.
        clock: The session's clock. The process samples on ``time.perf_counter``, so a
            session with a process sampler must use it too.
        wall: Wall-clock seconds (for ageing NVML's timestamps in manual mode).
        devices: The session's GPUs, for ``manual`` mode (other modes open their own).
        on_failure: Called from the sampler's listener thread as soon as sampling fails.
    """

    def __init__(
        self,
        spec: SamplerSpec,
        *,
        mode: SamplerMode = "process",
        clock: Clock = time.perf_counter,
        wall: Clock = time.time,
        devices: Sequence[GpuDevice] = (),
        on_failure: Callable[[MeterError], None] | None = None,
    ) -> None:
        if mode == "process" and clock is not time.perf_counter:
            raise ValueError("a process sampler shares only time.perf_counter with its session")
        self.mode = mode
        self.spec = spec
        self.interval_s = spec.interval_s
        self.clock = clock
        self.on_failure = on_failure
        self.error: MeterError | None = None
        self.report: SamplerReport | None = None
        self.pid: int | None = None
        self._directory = Path(spec.directory)
        self._timeline = Timeline(spec.device_uuids)
        self._samples = ColumnReader(self._directory, SAMPLE_COLUMNS, prefix="sample_")
        self._rounds = ColumnReader(self._directory, ROUND_COLUMNS, prefix="round_")
        self._round_columns: dict[str, list[float]] = {name: [] for name, _ in ROUND_COLUMNS}
        self._flushed = threading.Event()
        self._reported = threading.Event()
        self._ready = threading.Event()
        self._engine: SamplerEngine | None = None
        self._worker: Any = None
        self._control: Connection | None = None
        self._listener: threading.Thread | None = None
        self._stopped = False
        if mode == "manual":
            self._engine = SamplerEngine(devices, spec, clock, wall)

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        if self.mode == "manual":
            return
        control_read, control_write = multiprocessing.Pipe(duplex=False)
        events_read, events_write = multiprocessing.Pipe(duplex=False)
        if self.mode == "process":
            context = multiprocessing.get_context("spawn")
            self._worker = context.Process(
                target=_process_main,
                args=(self.spec, control_read, events_write, os.getpid()),
                name="llem-power-sampler",
                daemon=False,
            )
            self._worker.start()
            control_read.close()
            events_write.close()
        else:
            nvml = Nvml(self.spec.library()).open()
            devices = [nvml.device(uuid) for uuid in self.spec.device_uuids]
            engine = SamplerEngine(devices, self.spec, self.clock, time.time)

            def loop() -> None:
                events_write.send(("ready", os.getpid()))
                try:
                    run_loop(engine, control_read, events_write)
                finally:
                    nvml.close()

            self._worker = threading.Thread(target=loop, name="llem-power-sampler", daemon=True)
            self._worker.start()
        self._control = control_write
        self._listener = threading.Thread(
            target=self._listen, args=(events_read,), name="llem-sampler-listener", daemon=True
        )
        self._listener.start()
        if not self._ready.wait(START_TIMEOUT_S) and self.error is None:
            self._fail(MeterError(f"the power sampler did not start within {START_TIMEOUT_S} s"))
        # A sampler that failed (a GPU lost as it started) is reported like one that fails
        # later: through on_failure now, and by the session's next mark.

    def _listen(self, events: Connection) -> None:
        """Blocks on the sampler's messages (releasing the GIL while it waits)."""
        while True:
            try:
                message = events.recv()
            except (EOFError, OSError):
                if not self._reported.is_set() and not self._stopped:
                    self._fail(MeterError("the power sampler's process ended unexpectedly"))
                self._reported.set()
                self._flushed.set()
                self._ready.set()
                return
            kind = message[0]
            if kind == "ready":
                self.pid = message[1]
                self._ready.set()
            elif kind == "flushed":
                self._flushed.set()
            elif kind == "error":
                self._fail(MeterError(f"power sampling failed: {message[1]}"))
                self._ready.set()
            elif kind == "report":
                self.report = message[1]
                self._reported.set()
                self._flushed.set()

    def _fail(self, error: MeterError) -> None:
        if self.error is None:
            self.error = error
            if self.on_failure is not None:
                self.on_failure(error)

    def sample_once(self) -> None:
        """One round now (``manual`` mode)."""
        if self._engine is None:
            raise RuntimeError("sample_once is for a manual sampler")
        self._engine.sample_once()
        self._engine.poll_slow()

    def _flush(self) -> None:
        """Make every row sampled so far readable from the files."""
        if self._engine is not None:
            self._engine.flush()
            return
        if self._control is None or self._reported.is_set():
            return
        self._flushed.clear()
        try:
            self._control.send("flush")
        except (BrokenPipeError, OSError):
            return
        self._flushed.wait(REPLY_TIMEOUT_S)

    def stop(self, timeout_s: float = REPLY_TIMEOUT_S) -> bool:
        """Stop sampling and collect the report. A process stuck inside NVML is killed after
        ``timeout_s``; a stuck thread is left behind (returns False then)."""
        if self._stopped:
            return True
        self._stopped = True
        if self._engine is not None:
            self._engine.flush()
            self.report = self._engine.report()
            return True
        if self._control is not None:
            with contextlib.suppress(BrokenPipeError, OSError):
                self._control.send("stop")
        self._reported.wait(timeout_s)
        worker = self._worker
        if isinstance(worker, threading.Thread):
            worker.join(timeout_s)
            return not worker.is_alive()
        if worker is not None:
            worker.join(timeout_s)
            if worker.is_alive():
                worker.kill()
                worker.join()
        return True

    def close(self) -> None:
        """Remove the column files (after `result`)."""
        shutil.rmtree(self._directory, ignore_errors=True)

    # -- what it recorded ---------------------------------------------------------------------

    def _read_new(self) -> None:
        raw = self._samples.read_new()
        if raw["t_s"]:
            self._timeline.extend_raw(raw)
        rounds = self._rounds.read_new()
        for name, column in rounds.items():
            self._round_columns[name].extend(column)

    def snapshot(self) -> Timeline:
        """The samples so far (flushed on request; the session's own copy grows)."""
        self._flush()
        self._read_new()
        return self._timeline

    def rounds(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Start time and wall cost of every round so far."""
        self._flush()
        self._read_new()
        return tuple(self._round_columns["t_s"]), tuple(self._round_columns["cost_s"])

    def round_cpu_s(self) -> list[float]:
        return list(self._round_columns["cpu_s"])

    @property
    def failed_reads(self) -> int:
        return self.report.failed_reads if self.report else 0

    @property
    def samples_bytes(self) -> int:
        """Bytes of samples read from the sampler's files so far."""
        row = sum(array(code).itemsize for _, code in SAMPLE_COLUMNS)
        return self._samples.rows_read * row


def make_directory(parent: str | None = None) -> str:
    """A fresh directory for one session's column files."""
    return tempfile.mkdtemp(prefix="llem-samples-", dir=parent)
