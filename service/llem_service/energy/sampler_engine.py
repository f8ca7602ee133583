"""One sampling round at a time, and the loop the sampler's process (or thread) runs.

`SamplerEngine` reads every metered GPU once per call (powers first, then the descriptive
fields), appends a typed row per GPU to the column files, and about once a second lists the
GPUs' processes and reads the host's RAPL counters. `run_loop` calls it on absolute deadlines
and answers the session's ``flush`` and ``stop``; `process_main` is the sampler process's entry
point. `llem_service.energy.sampler.PowerSampler` is the session's side.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

from llem_service.energy.base import MeterError
from llem_service.energy.field_readers import (
    Clock,
    FieldChange,
    OptionalReader,
    PowerField,
    PowerReader,
    PowerStats,
    RetryPolicy,
)
from llem_service.energy.host import RaplZone, read_zones
from llem_service.energy.nvml import GpuDevice, Nvml, NvmlGpuLost, NvmlLibrary
from llem_service.energy.processes import ProcessReport, ProcessTracker
from llem_service.energy.samples import MISSING_INT, ROUND_COLUMNS, SAMPLE_COLUMNS, ColumnWriter

#: The descriptive fields read after the powers, each GPU, each round.
OPTIONAL_FIELDS = (
    "temperature_c",
    "sm_clock_mhz",
    "memory_used_bytes",
    "utilization_pct",
    "clock_event_reasons",
)


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
            [OptionalReader(n, getattr(d, n), spec.policy, clock) for n in OPTIONAL_FIELDS]
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
            # Stamped right before the read, not at ``now``: listing the GPUs' processes took
            # milliseconds, and a stale stamp could sort this read before a mark's earlier one.
            read_at = self.clock()
            self.host_reads.append((read_at, read_zones(self.spec.host_zones)))

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
            if isinstance(message, tuple) and message[0] == "flush":
                engine.flush()
                events.send(("flushed", message[1], engine.samples.rows_written))
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


def open_engine(spec: SamplerSpec) -> tuple[Nvml, SamplerEngine]:
    """NVML opened and the engine on ``spec``'s GPUs; NVML closed again when that fails."""
    nvml = Nvml(spec.library()).open()
    try:
        devices = [nvml.device(uuid) for uuid in spec.device_uuids]
        return nvml, SamplerEngine(devices, spec, time.perf_counter, time.time)
    except BaseException:
        nvml.close()
        raise


def process_main(spec: SamplerSpec, control: Connection, events: Connection, parent: int) -> None:
    """Entry point of the sampler's process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the service handles Ctrl-C
    try:
        nvml, engine = open_engine(spec)
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
